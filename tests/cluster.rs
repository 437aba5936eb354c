//! A cluster of real `kv` processes on loopback, spoken to over real TCP.
//!
//! Each test writes its own cluster file (in the system temp directory, under a name no
//! other test or run uses), picks free ports by binding port 0 and letting go, starts
//! one `kv serve` per node and waits until each accepts. Every node is a
//! [`ChildServer`] from `tests/common`, killed when dropped, so a failing test leaves
//! nothing running. Waits poll a condition against a deadline; none is a bare sleep.
//!
//! The three-node cluster: `a` owns buckets starting a-h, `b` i-p, `c` q-z. Anything
//! else (capitals, digits, ...) has no owner.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use kv::Client;

use common::lib_paths::{Cluster, DOWN_AFTER_FAILURES, PeerConfig, ReplyShape};
use common::temp::TempFile;
use common::{
    ChildServer, Conn, DEADLINE, free_loopback_addr, kv_binary, run_to_end, show, start_server_with,
    wait_until,
};
use common::{cluster_node_command, start_cluster_node};

/// The request timeout the nodes run with in these tests, in seconds.
const PEER_TIMEOUT_S: f64 = 1.0;

/// Starts node `name` of the cluster in `file`, which gives it `addr`, and waits until
/// it accepts connections there.
fn start_node(file: &Path, name: &str, addr: SocketAddr) -> ChildServer {
    start_cluster_node(
        cluster_node_command(
            file,
            name,
            &["--peer-timeout", &PEER_TIMEOUT_S.to_string(), "--peer-backoff-max", "0.5"],
        ),
        addr,
    )
}

fn temp_file(tag: &str, text: &str) -> TempFile {
    TempFile::new(&format!("cluster-{tag}"), text)
}

/// Three nodes: a owns a-h, b owns i-p, c owns q-z.
struct Trio {
    file: TempFile,
    addrs: [SocketAddr; 3],
    nodes: [Option<ChildServer>; 3],
}

const NAMES: [&str; 3] = ["a", "b", "c"];

/// One bucket owned by each node, in node order.
const OWNED: [&str; 3] = ["apple", "kiwi", "tomato"];

fn start_trio(tag: &str) -> Trio {
    let addrs: [SocketAddr; 3] = std::array::from_fn(|_| free_loopback_addr());
    let text = format!(
        "# test cluster\n\
         a {} a-h\n\
         b {} i-p   # the middle\n\
         c {} q-z\n",
        addrs[0], addrs[1], addrs[2]
    );
    let file = temp_file(tag, &text);
    let nodes = std::array::from_fn(|i| Some(start_node(file.path(), NAMES[i], addrs[i])));
    Trio { file, addrs, nodes }
}

fn connect(addr: SocketAddr) -> Client {
    let client = Client::connect(addr).unwrap();
    client.set_timeout(Some(DEADLINE)).unwrap();
    client
}

/// Sends one request line and returns the raw reply.
fn ask(client: &mut Client, line: &str) -> Vec<u8> {
    client.request(line.as_bytes()).unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One STATS figure of the node at `addr`, as text.
fn stat(addr: SocketAddr, name: &str) -> String {
    Conn::connect(addr).stat_text(name)
}

#[test]
fn every_command_works_through_every_node_for_every_owner() {
    let trio = start_trio("every");
    for (via, &addr) in trio.addrs.iter().enumerate() {
        let mut client = connect(addr);
        for (owner, base) in OWNED.iter().enumerate() {
            // A bucket of its own per entry node, so the runs do not see each other.
            let bucket = format!("{base}_via_{}", NAMES[via]);
            let context = format!("through {} for {}'s bucket {bucket}", NAMES[via], NAMES[owner]);
            // The guide's session, byte for byte.
            let steps: [(String, &[u8]); 9] = [
                (format!("GET {bucket} eggs"), b"NOT FOUND\r\n"),
                (format!("PUT {bucket} eggs 3"), b"NOT FOUND\r\n"),
                (format!("DELETE {bucket} eggs"), b"NOT FOUND\r\n"),
                (format!("CREATE {bucket}"), b"OK\r\n"),
                (format!("PUT {bucket} eggs 3"), b"OK\r\n"),
                (format!("GET {bucket} eggs"), b"3\r\nOK\r\n"),
                (format!("DELETE {bucket} eggs"), b"OK\r\n"),
                (format!("GET {bucket} eggs"), b"\r\nOK\r\n"),
                (format!("create {bucket}"), b"OK\r\n"),
            ];
            for (request, expected) in &steps {
                assert_eq!(text(&ask(&mut client, request)), text(expected), "{request} {context}");
            }
            assert_eq!(ask(&mut client, &format!("put {bucket} milk 1")), b"OK\r\n", "{context}");
        }
        assert_eq!(ask(&mut client, "UNKNOWN shopping"), b"UNKNOWN COMMAND\r\n");
        assert_eq!(ask(&mut client, "PING"), b"PONG\r\n");
    }
    // Written through one node, read through the others.
    for (via, _) in trio.addrs.iter().enumerate() {
        for (owner, base) in OWNED.iter().enumerate() {
            let bucket = format!("{base}_via_{}", NAMES[via]);
            for &reader in &trio.addrs {
                let reply = ask(&mut connect(reader), &format!("GET {bucket} milk"));
                assert_eq!(
                    text(&reply),
                    "1\r\nOK\r\n",
                    "{bucket} (owned by {}) read through {reader}",
                    NAMES[owner]
                );
            }
        }
    }
    // Each bucket lives on its owner only: 3 buckets per owner, one from each entry node.
    for (i, &addr) in trio.addrs.iter().enumerate() {
        assert_eq!(stat(addr, "buckets"), "3", "node {}", NAMES[i]);
        assert_eq!(stat(addr, "node"), NAMES[i]);
    }
    // Forwarding is counted, per peer and in total.
    let a = trio.addrs[0];
    let forwarded_b: u64 = stat(a, "peer.b.forwarded").parse().unwrap();
    let forwarded_c: u64 = stat(a, "peer.c.forwarded").parse().unwrap();
    let total: u64 = stat(a, "forwarded_total").parse().unwrap();
    assert!(forwarded_b >= 10 && forwarded_c >= 10, "b {forwarded_b} c {forwarded_c}");
    assert_eq!(total, forwarded_b + forwarded_c);
    assert_eq!(stat(a, "peer.b.state"), "up");
    assert_eq!(stat(a, "peer_errors_total"), "0");
    drop(trio.file);
}

#[test]
fn one_pipelined_write_mixing_all_owners_is_answered_in_order() {
    let trio = start_trio("pipeline");
    let mut requests = String::new();
    let mut expected = String::new();
    let mut expect = |request: &str, reply: &str| {
        requests.push_str(request);
        requests.push_str("\r\n");
        expected.push_str(reply);
    };
    for bucket in OWNED {
        expect(&format!("CREATE {bucket}"), "OK\r\n");
    }
    for round in 0..50 {
        for (i, bucket) in OWNED.iter().enumerate() {
            expect(&format!("PUT {bucket} k{round} v{round}_{i}"), "OK\r\n");
        }
        expect("PING", "PONG\r\n");
        for (i, bucket) in OWNED.iter().rev().enumerate() {
            let owner = 2 - i;
            expect(&format!("GET {bucket} k{round}"), &format!("v{round}_{owner}\r\nOK\r\n"));
        }
        expect(&format!("GET Unowned k{round}"), "ERROR no route for bucket Unowned\r\n");
        expect(&format!("DELETE {} k{round}", OWNED[round % 3]), "OK\r\n");
        expect(&format!("GET {} k{round}", OWNED[round % 3]), "\r\nOK\r\n");
        expect(&format!("GET nobody_{round} k"), "NOT FOUND\r\n");
    }
    for &addr in &trio.addrs {
        let mut conn = Conn::connect(addr);
        // All of it in one write.
        conn.send(requests.as_bytes());
        conn.expect(expected.as_bytes());
        // Nothing more than one reply per request.
        conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    }
}

#[test]
fn a_dead_node_is_reported_and_forwarding_resumes_when_it_returns() {
    let mut trio = start_trio("kill");
    let [a, b, c] = trio.addrs;
    for &addr in &[a, b] {
        assert_eq!(ask(&mut connect(addr), "CREATE tomato"), b"OK\r\n");
    }
    trio.nodes[2].take().unwrap().kill();

    // Its buckets answer an error within the timeout plus a margin; the connection
    // keeps serving, and the other nodes' buckets keep working through both survivors.
    for &via in &[a, b] {
        let mut client = connect(via);
        for _ in 0..DOWN_AFTER_FAILURES + 1 {
            let started = Instant::now();
            let reply = ask(&mut client, "GET tomato k");
            let took = started.elapsed();
            assert_eq!(text(&reply), "ERROR peer c unavailable\r\n", "through {via}");
            assert!(took < Duration::from_secs_f64(PEER_TIMEOUT_S + 0.5 + 5.0), "took {took:?}");
            assert_eq!(ask(&mut client, "CREATE apple"), b"OK\r\n");
            assert_eq!(ask(&mut client, "CREATE kiwi"), b"OK\r\n");
            assert_eq!(ask(&mut client, "PUT kiwi k 1"), b"OK\r\n");
            assert_eq!(ask(&mut client, "GET apple k"), b"\r\nOK\r\n");
        }
        // After repeated failures the peer is down, and said so.
        assert_eq!(stat(via, "peer.c.state"), "down");
        assert!(stat(via, "peer_errors_total").parse::<u64>().unwrap() >= 3);
        // The survivors still see each other up.
        let other = if via == a { "b" } else { "a" };
        assert_eq!(stat(via, &format!("peer.{other}.state")), "up");
    }

    // Restart c on the same address. Nothing else is restarted, and no client traffic
    // is needed for the others to notice: node b's prober marks c up by itself.
    trio.nodes[2] = Some(start_node(trio.file.path(), "c", c));
    wait_until("b sees c come back", || stat(b, "peer.c.state") == "up");
    // Forwarding resumes through both: the restarted node has lost its data, so the
    // bucket is recreated first.
    wait_until("forwarding from a to c resumes", || {
        let reply = ask(&mut connect(a), "CREATE tomato");
        if reply == b"OK\r\n" {
            return true;
        }
        assert_eq!(text(&reply), "ERROR peer c unavailable\r\n");
        false
    });
    assert_eq!(ask(&mut connect(a), "PUT tomato k red"), b"OK\r\n");
    assert_eq!(ask(&mut connect(b), "GET tomato k"), b"red\r\nOK\r\n");
    assert_eq!(ask(&mut connect(c), "GET tomato k"), b"red\r\nOK\r\n");
}

#[test]
fn nodes_with_disagreeing_files_answer_an_error_not_a_loop() {
    let x = free_loopback_addr();
    let y = free_loopback_addr();
    // x's file gives n-z to y; y's file gives n-z to x.
    let file_x = temp_file("disagree-x", &format!("x {x} a-m\ny {y} n-z\n"));
    let file_y = temp_file("disagree-y", &format!("x {x} n-z\ny {y} a-m\n"));
    let _x = start_node(file_x.path(), "x", x);
    let _y = start_node(file_y.path(), "y", y);
    for (via, bucket, expected) in [
        (x, "nuts", "ERROR routing mismatch: node y does not own bucket nuts\r\n"),
        (y, "nuts", "ERROR routing mismatch: node x does not own bucket nuts\r\n"),
    ] {
        // The peer's own error line, relayed: not a timeout (which would answer
        // "ERROR peer ... unavailable") and not a hang (the client's read would fail).
        let mut client = connect(via);
        assert_eq!(text(&ask(&mut client, &format!("CREATE {bucket}"))), expected, "through {via}");
        assert_eq!(text(&ask(&mut client, &format!("GET {bucket} k"))), expected, "through {via}");
        assert_eq!(ask(&mut client, "PING"), b"PONG\r\n");
    }
    // What both files agree on still works: x owns a-m in x's file and y's file says
    // y owns a-m, so through y, `apple` is y's own.
    assert_eq!(ask(&mut connect(y), "CREATE apple"), b"OK\r\n");
}

#[test]
fn a_forwarded_request_is_never_forwarded_again() {
    let trio = start_trio("hop");
    let mut conn = Conn::connect(trio.addrs[0]);
    // What node b sends when it opens a connection to node a, then requests for a
    // bucket of c, of nobody, and of a itself.
    conn.roundtrip(
        b"KV-PEER-HELLO 1 b a\nGET tomato k\nGET Zed k\nCREATE apple\nPING\n",
        b"OK\r\n\
        ERROR routing mismatch: node a does not own bucket tomato\r\n\
        ERROR routing mismatch: node a does not own bucket Zed\r\n\
        OK\r\n\
        PONG\r\n",
    );

    // A handshake meant for another node is refused, and so is everything after it.
    let mut conn = Conn::connect(trio.addrs[0]);
    let refusal = "ERROR routing mismatch: this is node a, not c\r\n";
    conn.roundtrip(
        b"KV-PEER-HELLO 1 b c\nCREATE apple\nPING\n",
        format!("{refusal}{refusal}PONG\r\n").as_bytes(),
    );

    // Anywhere but on the first line, the handshake is just an unknown command.
    let mut client = connect(trio.addrs[0]);
    assert_eq!(ask(&mut client, "PING"), b"PONG\r\n");
    assert_eq!(ask(&mut client, "KV-PEER-HELLO 1 b a"), b"UNKNOWN COMMAND\r\n");
    assert_eq!(ask(&mut client, "CREATE tomato"), b"OK\r\n", "still forwarded");
}

#[test]
fn a_bucket_nobody_owns_is_an_error_and_the_connection_still_serves() {
    let trio = start_trio("unrouted");
    for &addr in &trio.addrs {
        let mut client = connect(addr);
        assert_eq!(ask(&mut client, "CREATE Shopping"), b"ERROR no route for bucket Shopping\r\n");
        assert_eq!(ask(&mut client, "PUT 42 k v"), b"ERROR no route for bucket 42\r\n");
        assert_eq!(
            ask(&mut client, "GET \u{e9}t\u{e9} k"),
            "ERROR no route for bucket \u{e9}t\u{e9}\r\n".as_bytes()
        );
        assert_eq!(ask(&mut client, "DELETE _x k"), b"ERROR no route for bucket _x\r\n");
        assert_eq!(ask(&mut client, "PING"), b"PONG\r\n");
        assert_eq!(ask(&mut client, "CREATE shopping"), b"OK\r\n");
        assert_eq!(ask(&mut client, "GET shopping k"), b"\r\nOK\r\n");
    }
}

/// Runs `kv serve` with `args` and returns its exit status and standard error; fails
/// the test if it is still running after the deadline.
fn serve_expecting_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut command = kv_binary();
    command.arg("serve").args(args);
    let finished = run_to_end(command, b"");
    (finished.status, String::from_utf8_lossy(&finished.stderr).into_owned())
}

#[test]
fn a_bad_cluster_file_stops_the_node_with_a_message_naming_the_line() {
    let cases = [
        ("overlap", "foo 127.0.0.1:4040 a-m\nbar 127.0.0.1:4041 m-z\n", "line 2: overlapping ranges: byte m"),
        ("syntax", "# fine\nfoo 127.0.0.1:4040 a-m\nbar 127.0.0.1:4041 n-z x\n", "line 3: bad range"),
        ("address", "foo 127.0.0.1:4040 a-m\nbar nowhere n-z\n", "line 2: bad address \"nowhere\""),
        (
            "duplicate-name",
            "foo 127.0.0.1:4040 a-m\nfoo 127.0.0.1:4041 n-z\n",
            "line 2: duplicate node name foo",
        ),
        (
            "duplicate-address",
            "foo 127.0.0.1:4040 a-m\n\nbar 127.0.0.1:4040 n-z\n",
            "line 3: duplicate address",
        ),
        ("backwards", "foo 127.0.0.1:4040 m-a\n", "line 1: range m-a runs backwards"),
    ];
    for (tag, contents, message) in cases {
        let file = temp_file(tag, contents);
        let path = file.path().to_str().unwrap();
        // --port 0, so that a broken check would not take a real port.
        let (status, stderr) = serve_expecting_exit(&["--cluster", path, "--node", "foo", "--port", "0"]);
        assert!(!status.success(), "{tag}: exited {status}");
        assert!(stderr.contains(message), "{tag}: stderr {stderr:?} lacks {message:?}");
        assert!(stderr.contains(path), "{tag}: stderr {stderr:?} does not name the file");
    }

    // A --node the file does not name, a missing file, and --cluster without --node.
    let file = temp_file("unknown-node", "foo 127.0.0.1:4040 a-m\n");
    let path = file.path().to_str().unwrap();
    let (status, stderr) = serve_expecting_exit(&["--cluster", path, "--node", "baz", "--port", "0"]);
    assert!(!status.success());
    assert!(stderr.contains("--node \"baz\" is not in the cluster file; it names foo"), "{stderr}");
    let (status, stderr) = serve_expecting_exit(&["--cluster", path, "--port", "0"]);
    assert!(!status.success());
    assert!(stderr.contains("--cluster needs --node"), "{stderr}");
    let missing = format!("{path}.missing");
    let (status, stderr) = serve_expecting_exit(&["--cluster", &missing, "--node", "foo", "--port", "0"]);
    assert!(!status.success());
    assert!(stderr.contains("cannot read the cluster file"), "{stderr}");
}

#[test]
fn bind_and_port_override_the_files_address() {
    // The file says port 1 (not ours to take); --port 0 overrides it, and the node
    // reports where it really listens on standard error.
    let file = temp_file("override", "solo 127.0.0.1:1 0x00-0xFF\n");
    let mut command = kv_binary();
    command.args(["serve", "--workers", "1", "--node", "solo", "--port", "0", "--cluster"]).arg(file.path());
    // ChildServer::start waits for the `kv listening on ADDR` line and reads ADDR from it.
    let node = ChildServer::start(command);
    let addr = node.addr();
    assert_eq!(addr.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    assert_ne!(addr.port(), 1);
    let mut client = connect(addr);
    assert_eq!(ask(&mut client, "CREATE Anything"), b"OK\r\n");
    assert_eq!(stat(addr, "node"), "solo");
    assert_eq!(stat(addr, "forwarded_total"), "0");
}

#[test]
fn a_peer_that_never_answers_times_out_and_the_connection_keeps_serving() {
    // Node "stuck" is this test: it accepts connections and reads, but never answers.
    let stuck = TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let swallow = thread::spawn(move || {
        let Ok((mut stream, _)) = stuck.accept() else { return };
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    });
    let a = free_loopback_addr();
    let file = temp_file("stuck", &format!("a {a} a-m\nstuck {stuck_addr} n-z\n"));
    let node = start_node(file.path(), "a", a);
    let mut client = connect(a);
    let started = Instant::now();
    assert_eq!(ask(&mut client, "GET nuts k"), b"ERROR peer stuck unavailable\r\n");
    let took = started.elapsed();
    assert!(took < Duration::from_secs_f64(PEER_TIMEOUT_S + 5.0), "took {took:?}");
    assert_eq!(ask(&mut client, "CREATE apple"), b"OK\r\n");
    assert_eq!(ask(&mut client, "PING"), b"PONG\r\n");
    node.kill();
    // The node's connection closes with it, which ends the swallowing thread.
    swallow.join().unwrap();
}

#[test]
fn large_values_through_a_peer_in_one_pipeline() {
    let trio = start_trio("large");
    let [a, _, c] = trio.addrs;
    // 200 PUTs of 40 KiB values and a GET of each, interleaved, to c's bucket through
    // a: megabytes each way, far more than any socket buffer, in one pipeline.
    let value: String = (0..40 * 1024).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let mut requests = String::from("CREATE tomato\r\n");
    let mut expected = String::from("OK\r\n");
    for i in 0..200 {
        requests.push_str(&format!("PUT tomato k{i} {i}{value}\r\nGET tomato k{i}\r\n"));
        expected.push_str(&format!("OK\r\n{i}{value}\r\nOK\r\n"));
    }
    let mut conn = Conn::connect(a);
    // Conn::pipeline writes on its own thread: the server answers while it reads, so a
    // client that wrote everything before reading could itself block.
    let requests_len = requests.len();
    let replies = conn.pipeline(requests.into_bytes(), expected.len());
    common::assert_same_bytes_in(
        &replies,
        expected.as_bytes(),
        &format!("replies to {requests_len} bytes of requests"),
    );
    assert_eq!(stat(a, "peer_errors_total"), "0");
    assert_eq!(ask(&mut connect(c), "GET tomato k199"), format!("199{value}\r\nOK\r\n").as_bytes());
}

#[test]
fn a_node_probing_a_dead_peer_still_shuts_down_promptly() {
    let me = free_loopback_addr();
    let gone = free_loopback_addr();
    let cluster = Cluster::parse("in-process", &format!("me {me} a-m\ngone {gone} n-z\n")).unwrap();
    let peer = PeerConfig {
        connect_timeout: Duration::from_millis(500),
        timeout: Duration::from_secs(1),
        max_backoff: Duration::from_millis(200),
        ..PeerConfig::default()
    };
    let config = kv::Config {
        port: 0,
        workers: 1,
        node: "me".into(),
        cluster: Some(cluster),
        peer,
        ..kv::Config::default()
    };
    let server = start_server_with(config);
    let mut client = connect(server.addr());
    for _ in 0..DOWN_AFTER_FAILURES {
        assert_eq!(ask(&mut client, "GET nuts k"), b"ERROR peer gone unavailable\r\n");
    }
    assert_eq!(stat(server.addr(), "peer.gone.state"), "down");
    drop(client);
    // The prober is now at work; shutting down must not wait on it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        server.shutdown();
        let _ = done_tx.send(());
    });
    done_rx.recv_timeout(DEADLINE).expect("shutdown did not finish");
}

#[test]
fn subscribe_through_any_node_streams_writes_made_through_every_node() {
    let trio = start_trio("subscribe");
    let [a, b, c] = trio.addrs;
    let mut subscriber = Conn::connect(a);
    // c owns tomato, which does not exist yet: NOT FOUND, and the connection serves on.
    subscriber.roundtrip(
        b"SUBSCRIBE tomato\r\nPING\r\nSUBSCRIBE Tomato\r\n",
        b"NOT FOUND\r\nPONG\r\nERROR no route for bucket Tomato\r\n",
    );

    assert_eq!(ask(&mut connect(b), "CREATE tomato"), b"OK\r\n");
    // The reply before SUBSCRIBE comes first; the line after it is ignored, not run.
    subscriber.roundtrip(b"GET tomato k\r\nSUBSCRIBE tomato\r\nPUT tomato ignored 1\r\n", b"\r\nOK\r\n");
    wait_until("c has registered the subscription", || stat(c, "subscribers") == "1");
    assert_eq!(stat(a, "subscribers"), "0", "a relays; c, the owner, holds the subscription");
    // Both streaming connections count as such: the client's on a, a's link on c.
    wait_until("a counts the relaying connection", || stat(a, "streaming_connections") == "1");
    assert_eq!(stat(c, "streaming_connections"), "1");

    // Writes through every node, including straight to the owner, reach the stream in
    // the order the owner applied them.
    assert_eq!(ask(&mut connect(b), "PUT tomato k 1"), b"OK\r\n");
    assert_eq!(ask(&mut connect(c), "PUT tomato j 2"), b"OK\r\n");
    assert_eq!(ask(&mut connect(a), "DELETE tomato k"), b"OK\r\n");
    let mut pipeline = connect(b);
    pipeline.send_raw(b"PUT tomato x 1\r\nPUT kiwi x 1\r\nPUT tomato x 2\r\n").unwrap();
    subscriber.expect(b"k SET TO 1\r\nj SET TO 2\r\nk DELETED\r\nx SET TO 1\r\nx SET TO 2\r\n");
    assert_eq!(ask(&mut connect(c), "GET tomato ignored"), b"\r\nOK\r\n");

    // A subscriber that leaves is forgotten by the owner too.
    drop(subscriber);
    wait_until("c has dropped the subscription", || {
        // An event makes the owner notice a subscriber that is gone, if nothing else did.
        let _ = ask(&mut connect(c), "PUT tomato poke 1");
        stat(c, "subscribers") == "0"
    });
}

#[test]
fn drop_through_any_node_ends_relayed_and_local_streams_with_dropped_only() {
    let trio = start_trio("drop");
    let [a, b, c] = trio.addrs;
    // c owns tomato.
    assert_eq!(ask(&mut connect(a), "CREATE tomato"), b"OK\r\n");
    assert_eq!(ask(&mut connect(b), "PUT tomato k 1"), b"OK\r\n");
    let mut relayed = Conn::connect(a);
    let mut local = Conn::connect(c);
    for subscriber in [&mut relayed, &mut local] {
        subscriber.send(b"SUBSCRIBE tomato\r\n");
    }
    wait_until("c holds both subscriptions", || stat(c, "subscribers") == "2");
    assert_eq!(ask(&mut connect(b), "PUT tomato k 2"), b"OK\r\n");
    assert_eq!(ask(&mut connect(b), "DROP tomato"), b"OK\r\n");
    for subscriber in [&mut relayed, &mut local] {
        // DROPPED, then a clean close: no "peer unavailable" line after it.
        common::assert_same_bytes(&subscriber.read_to_close(), b"k SET TO 2\r\nDROPPED\r\n");
    }
    assert_eq!(ask(&mut connect(a), "GET tomato k"), b"NOT FOUND\r\n");
    assert_eq!(ask(&mut connect(a), "DROP tomato"), b"NOT FOUND\r\n");
    wait_until("c holds no subscription", || stat(c, "subscribers") == "0");
}

#[test]
fn subscribers_on_the_owner_and_elsewhere_see_writes_from_a_third_node_exactly_once_in_order() {
    let mut trio = start_trio("subscribe-three");
    let [a, b, c] = trio.addrs;
    assert_eq!(ask(&mut connect(a), "CREATE tomato"), b"OK\r\n");
    let mut on_owner = Conn::connect(c);
    let mut elsewhere = Conn::connect(a);
    for subscriber in [&mut on_owner, &mut elsewhere] {
        subscriber.send(b"SUBSCRIBE tomato\r\n");
    }
    wait_until("c holds both subscriptions", || stat(c, "subscribers") == "2");

    // 300 changes in one pipeline through b, which owns neither the bucket nor a
    // subscriber.
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for i in 0..300 {
        if i % 4 == 3 {
            requests.extend_from_slice(format!("DELETE tomato k{}\r\n", i - 1).as_bytes());
            expected.extend_from_slice(format!("k{} DELETED\r\n", i - 1).as_bytes());
        } else {
            requests.extend_from_slice(format!("PUT tomato k{i} v{i}\r\n").as_bytes());
            expected.extend_from_slice(format!("k{i} SET TO v{i}\r\n").as_bytes());
        }
    }
    let mut writer = connect(b);
    writer.send_raw(&requests).unwrap();
    for _ in 0..300 {
        let mut reply = Vec::new();
        writer.read_reply(ReplyShape::Line, &mut reply).unwrap();
        assert_eq!(reply, b"OK\r\n");
    }
    on_owner.expect(&expected);
    elsewhere.expect(&expected);

    // The owner goes down: the relayed subscriber hears why, then the connection ends.
    if let Some(owner) = trio.nodes[2].take() {
        owner.kill();
    }
    elsewhere.expect(b"ERROR peer c unavailable\r\n");
    let (rest, _) = elsewhere.read_until_gone();
    assert!(rest.is_empty(), "nothing after the error line: {}", show(&rest));
    // a itself carries on.
    assert_eq!(ask(&mut connect(a), "PING"), b"PONG\r\n");
}

#[test]
fn kv_top_once_shows_every_field_of_two_nodes() {
    let trio = start_trio("top");
    let [a, b, _] = trio.addrs;
    // Some traffic, a restart-free worker table and a forwarded request to show.
    assert_eq!(ask(&mut connect(a), "CREATE kiwi"), b"OK\r\n");
    let mut command = kv_binary();
    command.args(["top", "--once", "--interval", "0.2", "--addr", &a.to_string(), "--addr", &b.to_string()]);
    let output = run_to_end(command, b"");
    assert!(output.status.success(), "{:?}: {}{}", output.status, show(&output.stdout), show(&output.stderr));
    let frame = String::from_utf8_lossy(&output.stdout);
    for (node, addr) in [("a", a), ("b", b)] {
        assert!(frame.contains(&format!("node {node} at {addr}   up ")), "{frame}");
    }
    for field in [
        "connections ",
        "commands/s ",
        "buckets ",
        "keys ",
        "worker restarts ",
        "forwarded ",
        "peer errors ",
        "subscribers ",
        "queue",
        "restarts",
        "state",
    ] {
        assert!(frame.matches(field).count() >= 2, "{field:?} once per node in:\n{frame}");
    }
    // Each node lists its two peers, both up; no field is missing ("-").
    for peer_line in ["  b ", "  c ", "  a "] {
        assert!(
            frame.lines().any(|l| l.starts_with(peer_line) && l.contains(" up ")),
            "{peer_line:?} in:\n{frame}"
        );
    }
    assert!(!frame.contains(" - "), "a field is missing:\n{frame}");
    assert!(!frame.contains("unreachable"), "{frame}");
}
