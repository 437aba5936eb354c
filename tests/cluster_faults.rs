//! Trust under faults between nodes (issue 13): each test is named after what broke.
//!
//! Two real `kv` processes on loopback, `a` owning buckets a-m and `b` owning n-z.
//! Node a reaches b through a fault-injecting relay (`tests/common/relay.rs`) that
//! drops replies, stalls or resets links when the test says, so every fault happens at
//! a known point; where a frozen process matters, b is stopped with SIGSTOP. Waits poll
//! a condition against a deadline; none is a bare sleep.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::lib_paths::{Command, Dialect, push_peer_frame};
use common::relay::{Mode, Relay};
use common::tcp::{connect_with_receive_buffer, server_side};
use common::temp::TempFile;
use common::{ChildServer, Conn, free_loopback_addr, show, wait_until};
use common::{cluster_node_command, start_cluster_node};

fn temp_file(tag: &str, text: &str) -> TempFile {
    TempFile::new(&format!("faults-{tag}"), text)
}

/// `kv serve` for node `name` of `file`, with short peer timeouts and `extra` flags.
fn start_node(file: &TempFile, name: &str, addr: SocketAddr, extra: &[&str]) -> ChildServer {
    start_node_with(file, name, addr, extra, None)
}

/// [`start_node`], with open-file limits (soft and hard) of `file_limit` if given.
#[allow(unsafe_code)] // pre_exec has no safe form; see the SAFETY note.
fn start_node_with(
    file: &TempFile,
    name: &str,
    addr: SocketAddr,
    extra: &[&str],
    file_limit: Option<u64>,
) -> ChildServer {
    use std::os::unix::process::CommandExt;
    let mut command =
        cluster_node_command(file.path(), name, &["--peer-timeout", "1", "--peer-backoff-max", "0.3"]);
    command.args(extra);
    if let Some(n) = file_limit {
        // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    start_cluster_node(command, addr)
}

/// Nodes a and b, a reaching b through `relay`.
struct Pair {
    a: ChildServer,
    b: ChildServer,
    relay: Relay,
    _files: [TempFile; 2],
}

fn start_pair(tag: &str, a_flags: &[&str], b_flags: &[&str]) -> Pair {
    let (a_addr, b_addr) = (free_loopback_addr(), free_loopback_addr());
    let relay = Relay::start(b_addr);
    let b_file = temp_file(&format!("{tag}-b"), &format!("a {a_addr} a-m\nb {b_addr} n-z\n"));
    let a_file = temp_file(&format!("{tag}-a"), &format!("a {a_addr} a-m\nb {} n-z\n", relay.addr()));
    let b = start_node(&b_file, "b", b_addr, b_flags);
    let a = start_node(&a_file, "a", a_addr, a_flags);
    Pair { a, b, relay, _files: [a_file, b_file] }
}

/// A subscriber to `bucket` on `node`, once its subscription is registered.
fn subscribe(node: SocketAddr, bucket: &str, already: u64) -> Conn {
    let mut subscriber = Conn::connect(node);
    subscriber.send(format!("SUBSCRIBE {bucket}\r\n").as_bytes());
    let mut control = Conn::connect(node);
    wait_until("the subscription is registered", || control.stat("subscribers") == already + 1);
    subscriber
}

/// Regression: a pooled connection that died after the owner applied `PUT shopping
/// eggs v1` but before its OK arrived made the forwarder send v1 again, over v2 that
/// another client had written and been told OK about: subscribers saw v1 | v2 | v1 and
/// v2 was lost.
#[test]
fn a_put_whose_ok_was_lost_is_not_sent_again_over_a_later_acknowledged_write() {
    let pair = start_pair("lost-ok", &[], &[]);
    let (a, b) = (pair.a.addr(), pair.b.addr());
    let mut client = Conn::connect(a);
    client.roundtrip(b"CREATE shopping\r\n", b"OK\r\n");
    let mut subscriber = subscribe(b, "shopping", 0);

    pair.relay.set(Mode::DropReplies);
    client.send(b"PUT shopping eggs v1\r\n");
    subscriber.expect(b"eggs SET TO v1\r\n");
    wait_until("the relay has thrown the OK away", || pair.relay.dropped_reply_bytes() >= 4);
    Conn::connect(b).roundtrip(b"PUT shopping eggs v2\r\n", b"OK\r\n");
    subscriber.expect(b"eggs SET TO v2\r\n");
    pair.relay.set(Mode::Pass);
    pair.relay.reset_all();

    // v1 was applied, but a cannot know that: it says so rather than guessing.
    client.expect(b"ERROR peer b unavailable: outcome unknown\r\n");
    // Nothing was sent again: the next change streamed is the next write.
    client.roundtrip(b"PUT shopping marker 1\r\n", b"OK\r\n");
    subscriber.expect(b"marker SET TO 1\r\n");
    client.roundtrip(b"GET shopping eggs\r\n", b"v2\r\nOK\r\n");
}

/// Regression: with the owner stopped (SIGSTOP), writes were answered `ERROR peer b
/// unavailable` and applied after SIGCONT anyway, about one run in five twice (an
/// early read timeout on a reused connection, then a resend).
#[test]
fn writes_to_a_stopped_owner_are_outcome_unknown_and_applied_at_most_once() {
    let mut pair = start_pair("stopped", &[], &[]);
    let (a, b) = (pair.a.addr(), pair.b.addr());
    let mut client = Conn::connect(a);
    client.roundtrip(b"CREATE shopping\r\nPUT shopping eggs v0\r\n", b"OK\r\nOK\r\n");
    let mut subscriber = subscribe(b, "shopping", 0);

    pair.b.signal(libc::SIGSTOP);
    let pid = pair.b.pid();
    wait_until("every thread of b is stopped", || common::proc::all_threads_stopped(pid));
    // Sent, then timed out: a write may have been applied, a read says nothing.
    client.roundtrip(
        b"PUT shopping eggs v1\r\nGET shopping eggs\r\nDELETE shopping gone\r\n",
        b"ERROR peer b unavailable: outcome unknown\r\n\
          ERROR peer b unavailable\r\n\
          ERROR peer b unavailable: outcome unknown\r\n",
    );
    for i in 2..4 {
        client.roundtrip(
            format!("PUT shopping eggs v{i}\r\n").as_bytes(),
            b"ERROR peer b unavailable: outcome unknown\r\n",
        );
    }
    // Marked down: writes now fail before anything is sent, so they never happen.
    assert_eq!(Conn::connect(a).stat_text("peer.b.state"), "down");
    client.roundtrip(b"PUT shopping never 1\r\n", b"ERROR peer b unavailable\r\n");
    pair.b.signal(libc::SIGCONT);

    // Each write sent before a timeout was applied once, on its own connection (so in
    // any order among them); the one refused while b was down, never.
    let mut events: Vec<Vec<u8>> = (0..4).map(|_| subscriber.read_line()).collect();
    events.sort();
    let expected: Vec<&[u8]> =
        vec![b"eggs SET TO v1\r\n", b"eggs SET TO v2\r\n", b"eggs SET TO v3\r\n", b"gone DELETED\r\n"];
    assert_eq!(events, expected, "{:?}", events.iter().map(|e| show(e)).collect::<Vec<_>>());
    wait_until("a sees b up again", || Conn::connect(a).stat_text("peer.b.state") == "up");
    client.roundtrip(b"PUT shopping marker 1\r\n", b"OK\r\n");
    subscriber.expect(b"marker SET TO 1\r\n");
    client.roundtrip(b"GET shopping never\r\n", b"\r\nOK\r\n");
}

/// Regression: an owner at its `--max-connections` cap answered 118 of 120 forwarded
/// GETs `ERROR peer b unavailable`, flapping up and down, because connections from
/// nodes counted towards the client cap.
#[test]
fn an_owner_full_of_idle_clients_still_serves_forwarded_requests() {
    let pair = start_pair("full", &[], &["--max-connections", "8", "--peer-connections", "4"]);
    let (a, b) = (pair.a.addr(), pair.b.addr());
    Conn::connect(a).roundtrip(b"CREATE shopping\r\nPUT shopping eggs 3\r\n", b"OK\r\nOK\r\n");
    let mut idle: Vec<Conn> = (0..8).map(|_| Conn::connect(b)).collect();
    wait_until("b is full", || {
        let mut extra = Conn::connect(b);
        extra.send(b"PING\r\n");
        extra.read_line() == b"ERROR too many connections\r\n"
    });
    let mut client = Conn::connect(a);
    for _ in 0..120 {
        client.roundtrip(b"GET shopping eggs\r\n", b"3\r\nOK\r\n");
    }
    assert_eq!(Conn::connect(a).stat_text("peer_errors_total"), "0");
    // A client let in on the peer budget without a handshake is turned away at its
    // first line, with the line every client over the cap gets.
    let mut sneaky = Conn::connect(b);
    sneaky.send(b"GET shopping eggs\r\n");
    assert_eq!(sneaky.read_to_close(), b"ERROR too many connections\r\n");
    for conn in &mut idle {
        conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    }
}

/// Regression: node-to-node connections were closed by the owner's client
/// `--idle-timeout`, and counted as clients.
#[test]
fn connections_from_nodes_outlive_the_client_idle_timeout() {
    let pair = start_pair("idle", &[], &["--idle-timeout", "1"]);
    let (a, b) = (pair.a.addr(), pair.b.addr());
    Conn::connect(a).roundtrip(b"CREATE shopping\r\n", b"OK\r\n");
    // A client left idle as long is closed: the timeout has run out since.
    let mut idle_client = Conn::connect(b);
    idle_client.roundtrip(b"PING\r\n", b"PONG\r\n");
    assert_eq!(idle_client.read_to_close(), b"");
    let mut stats = Conn::connect(b);
    assert_eq!(stats.stat("peer_connections"), 1);
    assert_eq!(stats.stat("connections"), 1, "only this STATS connection is a client");
    let links = pair.relay.links();
    Conn::connect(a).roundtrip(b"GET shopping eggs\r\n", b"\r\nOK\r\n");
    assert_eq!(pair.relay.links(), links, "the pooled connection was still open and reused");
}

/// Regression: a relayed SUBSCRIBE holds two descriptors but the cap counted one: at
/// `ulimit -n 128`, 62 relayed subscribers left new clients waiting silently in the
/// listen queue while `accept failed: Too many open files` was logged about 97 times
/// a second, and three such failures marked a healthy peer down.
#[test]
fn relayed_subscribers_cannot_exhaust_descriptors_and_leave_clients_in_silence() {
    let (a_addr, b_addr) = (free_loopback_addr(), free_loopback_addr());
    let file = temp_file("descriptors", &format!("a {a_addr} a-m\nb {b_addr} n-z\n"));
    let a = start_node(&file, "a", a_addr, &[]);
    let b = start_node_with(&file, "b", b_addr, &["--peer-connections", "4"], Some(128));
    Conn::connect(a.addr()).roundtrip(b"CREATE apple\r\n", b"OK\r\n");
    let mut owner = Conn::connect(a.addr());
    // Subscribe through b until b says it is full; each subscription is relayed.
    let mut subscribers = Vec::new();
    let refusal = loop {
        assert!(subscribers.len() < 100, "128 descriptors cannot hold 100 relayed subscribers");
        let mut conn = Conn::connect(b.addr());
        conn.send(b"SUBSCRIBE apple\r\n");
        let expected = subscribers.len() as u64 + 1;
        let mut answered = false;
        wait_until("the subscription is relayed or refused", || {
            answered = !conn.nothing_within(Duration::from_millis(20));
            answered || owner.stat("subscribers") == expected
        });
        if answered {
            break conn.read_line();
        }
        subscribers.push(conn);
    };
    assert_eq!(show(&refusal), show(b"ERROR too many connections\r\n"), "after {}", subscribers.len());
    assert!(subscribers.len() >= 10, "only {} relayed subscribers fit", subscribers.len());
    eprintln!("{} relayed subscribers fit in 128 descriptors", subscribers.len());
    // New clients are told, not left in the listen queue, without sending a thing.
    for _ in 0..3 {
        let mut late = Conn::connect(b.addr());
        assert_eq!(show(&late.read_line()), show(b"ERROR too many connections\r\n"));
    }
    // The subscriptions still stream, and b never mistook its own limits for a's death.
    Conn::connect(a.addr()).roundtrip(b"PUT apple k 1\r\n", b"OK\r\n");
    for subscriber in &mut subscribers {
        subscriber.expect(b"k SET TO 1\r\n");
    }
    assert!(b.log_lines_with("marked down").is_empty(), "{}", b.log_text());
    assert!(b.log_lines_with("accept failed").len() <= 2, "{}", b.log_text());
}

/// Regression: a "peer" that is no kv node could have any line it sent relayed as
/// the reply to a forwarded CREATE or PUT.
#[test]
fn lines_from_a_peer_that_is_not_kv_are_not_relayed_as_replies() {
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap();
    fake.set_nonblocking(true).unwrap();
    let answering = thread::spawn(move || {
        let deadline = Instant::now() + common::DEADLINE;
        let mut served = 0;
        while served < 3 && Instant::now() < deadline {
            let Ok((mut stream, _)) = fake.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(b"OK\r\nhello there\r\nwelcome to my server\r\n");
            served += 1;
        }
    });
    let a_addr = free_loopback_addr();
    let file = temp_file("not-kv", &format!("a {a_addr} a-m\nfake {fake_addr} n-z\n"));
    let a = start_node(&file, "a", a_addr, &[]);
    let mut client = Conn::connect(a.addr());
    client.roundtrip(b"PUT nuts k v\r\n", b"ERROR peer fake unavailable: outcome unknown\r\n");
    client.roundtrip(b"CREATE nuts\r\n", b"ERROR peer fake unavailable: outcome unknown\r\n");
    client.roundtrip(b"GET nuts k\r\n", b"ERROR peer fake unavailable\r\n");
    client.roundtrip(b"PING\r\n", b"PONG\r\n");
    answering.join().unwrap();
}

/// Regression: a refused `KV-PEER-HELLO` was logged at warn with its whole line: 300
/// connections sending 19.5 MB grew the log by 97.6 MB in 0.7 s.
#[test]
fn refused_handshakes_do_not_flood_the_log() {
    let node = common::start_kv_serve(&["--workers", "1"]);
    let junk = "y".repeat(60_000);
    let started = Instant::now();
    for _ in 0..100 {
        let mut conn = Conn::connect(node.addr());
        conn.send(format!("KV-PEER-HELLO 1 x {junk}\r\n").as_bytes());
        let reply = conn.read_line();
        assert!(reply.starts_with(b"ERROR routing mismatch: this is node kv, not yyy"), "{}", show(&reply));
    }
    let seconds = started.elapsed().as_secs() as usize;
    let lines = node.log_lines_with("refused a peer handshake");
    assert!(!lines.is_empty());
    assert!(lines.len() <= seconds + 2, "{} lines in {seconds} s", lines.len());
    assert!(lines.iter().all(|line| line.len() < 400), "a line quotes at most 80 bytes of input");
    wait_until("the held-back count is logged", || {
        let mut conn = Conn::connect(node.addr());
        conn.send(b"KV-PEER-HELLO 2 x kv\r\n");
        conn.read_line();
        !node.log_lines_with("more like it in the last second not logged").is_empty()
    });
}

/// Regression: a subscriber that closed its sending side (`nc -N`) lost its stream at
/// the next check, as if it had gone.
#[test]
fn a_subscriber_that_half_closes_keeps_receiving_events() {
    let node = common::start_kv_serve(&["--workers", "1"]);
    let mut writer = Conn::connect(node.addr());
    writer.roundtrip(b"CREATE s\r\n", b"OK\r\n");
    let mut subscriber = subscribe(node.addr(), "s", 0);
    subscriber.try_clone_stream().shutdown(std::net::Shutdown::Write).unwrap();
    // The stream looks at its client twice a second when idle: give it three looks.
    for i in 0..3 {
        assert!(subscriber.nothing_within(Duration::from_millis(600)), "no event yet");
        writer.roundtrip(format!("PUT s k {i}\r\n").as_bytes(), b"OK\r\n");
        subscriber.expect(format!("k SET TO {i}\r\n").as_bytes());
    }
    assert_eq!(writer.stat("subscribers"), 1);
}

/// While a peer stalls, requests for local buckets in the same pipeline wait for it:
/// replies keep request order (docs/CLUSTER.md, "Order under a stall", says why and
/// what that costs).
#[test]
fn local_requests_behind_a_stalled_peer_keep_their_order() {
    let pair = start_pair("stall", &[], &[]);
    let mut client = Conn::connect(pair.a.addr());
    client.roundtrip(b"CREATE shopping\r\n", b"OK\r\n");
    pair.relay.set(Mode::Stall);
    let started = Instant::now();
    client.roundtrip(
        b"CREATE apple\r\nGET shopping eggs\r\nPUT apple k 1\r\n",
        b"OK\r\nERROR peer b unavailable\r\nOK\r\n",
    );
    // Not an assertion, a figure for docs/CLUSTER.md: about --peer-timeout (1 s).
    eprintln!("local replies behind a stalled peer took {:?}", started.elapsed());
    pair.relay.set(Mode::Pass);
}

/// Regression: a peer's socket write timeout bounded each write call, not the exchange,
/// so a peer that read a large request slowly, but kept reading, held the client for
/// as long as it read (31 s for 24 MiB with `--peer-timeout 1`) instead of failing
/// the request at the timeout.
#[test]
fn a_large_request_to_a_peer_that_reads_slowly_fails_within_the_peer_timeout() {
    // Long lines on both nodes; 16 MiB is more than loopback buffers take at once.
    let long_lines = ["--max-line", "33554432"];
    let pair = start_pair("trickle", &long_lines, &long_lines);
    let mut client = Conn::connect(pair.a.addr());
    client.roundtrip(b"CREATE shopping\r\n", b"OK\r\n");
    pair.relay.set(Mode::Trickle);
    client.send(&[b"PUT shopping k ", &vec![b'v'; 16 << 20][..], b"\r\n"].concat());
    let sent = Instant::now();
    client.expect(b"ERROR peer b unavailable: outcome unknown\r\n");
    // Reading the rest at the trickle's pace would take over a minute; the margin over
    // the timeout is for a debug build taking the 16 MiB line on a busy machine.
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(10), "answered after {took:?} with --peer-timeout 1");
    pair.relay.set(Mode::Pass);
    client.roundtrip(b"CREATE apple\r\n", b"OK\r\n");
}

/// Regression: a forwarded request the owner read after its stop began was answered
/// `ERROR shutting down`, and the forwarding node relayed that line: its client, whose
/// own node was not stopping, was told what means "this server is closing your
/// connection", for a request that only did not reach a serving owner.
#[test]
fn a_request_an_owner_reads_after_its_stop_is_answered_unavailable() {
    let (a_addr, b_addr) = (free_loopback_addr(), free_loopback_addr());
    let file = temp_file("stopping-b", &format!("a {a_addr} a-m\nb {b_addr} n-z\n"));
    let mut b = start_node(&file, "b", b_addr, &["--max-line", "2000000"]);
    let value = vec![b'v'; 1_000_000];
    let mut setup = Conn::connect(b_addr);
    setup.roundtrip(b"CREATE shopping\r\n", b"OK\r\n");
    setup.roundtrip(&[b"PUT shopping k ", &value[..], b"\r\n"].concat(), b"OK\r\n");

    // Play node a on a link with a small receive buffer: b's link is busy writing the
    // GETs' 12 MB of replies, and reads nothing more until they are taken.
    let SocketAddr::V4(b_v4) = b_addr else { panic!("b listens on IPv4 loopback") };
    let stream = connect_with_receive_buffer(b_v4, 4096);
    let link_addr = stream.local_addr().unwrap();
    let mut link = Conn::from_stream(stream);
    let (gets, mut requests) = (12, b"KV-PEER-HELLO 3 a b\n".to_vec());
    for _ in 0..gets {
        push_peer_frame(&Command::Get { bucket: b"shopping", key: b"k" }, Dialect::Text, &mut requests);
    }
    link.send(&requests);
    wait_until("b's link is writing replies", || {
        server_side(b_addr, link_addr).is_some_and(|(_, sent)| sent > 0)
    });
    let mut put = Vec::new();
    push_peer_frame(
        &Command::Put { bucket: b"shopping", key: b"late", value: b"1" },
        Dialect::Text,
        &mut put,
    );
    link.send(&put);
    b.signal(libc::SIGTERM);
    wait_until("b has begun its stop", || !b.log_lines_with("kv::server] shutting down").is_empty());

    link.expect(b"OK\r\n");
    let mut next_reply = || {
        let len = u32::from_le_bytes(link.read_exact_bytes(4).try_into().unwrap());
        link.read_exact_bytes(len as usize)
    };
    let (got, unavailable) = ([&value[..], b"\r\nOK\r\n"].concat(), b"ERROR peer b unavailable\r\n");
    // The GETs read before the stop are answered; any read after it is turned away, as
    // the PUT is.
    for i in 0..gets {
        let reply = next_reply();
        assert!(reply == got || reply == unavailable, "GET {i}: {}", show(&reply[..reply.len().min(80)]));
    }
    assert_eq!(show(&next_reply()), show(unavailable));
}

/// Regression: a node stopped while a client's request waited on a stalled owner, with
/// `--peer-timeout` longer than `--shutdown-grace`, exited under that connection and
/// logged "every request read before the stop was answered"; the client got no reply.
#[test]
fn a_stop_that_outlasts_a_wait_on_a_peer_does_not_claim_every_request_answered() {
    let (a_addr, b_addr) = (free_loopback_addr(), free_loopback_addr());
    let file = temp_file("grace", &format!("a {a_addr} a-m\nb {b_addr} n-z\n"));
    let mut b = start_node(&file, "b", b_addr, &[]);
    let flags = ["--peer-timeout", "30", "--shutdown-grace", "1"];
    let mut a = start_cluster_node(cluster_node_command(file.path(), "a", &flags), a_addr);
    let mut client = Conn::connect(a_addr);
    client.roundtrip(b"CREATE shopping\r\n", b"OK\r\n");
    b.signal(libc::SIGSTOP);
    wait_until("b is stopped", || common::proc::all_threads_stopped(b.pid()));
    client.send(b"PUT shopping k 1\r\n");
    let mut control = Conn::connect(a_addr);
    wait_until("a has forwarded the PUT", || control.stat("forwarded_total") == 2);
    a.signal(libc::SIGTERM);
    assert!(a.wait_for_exit(common::DEADLINE).is_some(), "a exits after its grace");
    wait_until("a's last line is logged", || !a.log_lines_with("kv::server] stopped").is_empty());
    b.signal(libc::SIGCONT);
    let claimed = a.log_lines_with("every request read before the stop was answered");
    assert!(claimed.is_empty(), "{claimed:?}; the log:\n{}", a.log_text());
    assert!(!a.log_lines_with("replies to requests read before the stop were lost").is_empty());
}

/// Sanity of the relay itself: passes bytes both ways untouched.
#[test]
fn the_relay_passes_bytes_untouched() {
    let node = common::start_kv_serve(&["--workers", "1"]);
    let relay = Relay::start(node.addr());
    let mut conn = Conn::from_stream(TcpStream::connect(relay.addr()).unwrap());
    conn.roundtrip(b"PING\r\nCREATE x\r\n", b"PONG\r\nOK\r\n");
}
