//! Who may talk to kv (issue 14), over real TCP on 127.0.0.1: nodes proving the
//! cluster secret to each other, fake peers (plain sockets) replaying and reflecting
//! handshakes, the per-address throttle, client `AUTH`, and protected mode.
//!
//! Real clusters are `kv` child processes (`tests/common`); single nodes played
//! against by a fake peer run in this process. No bare sleeps: every wait polls a
//! condition against the shared deadline, and every loop is bounded.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Instant;

use kv::{Config, ServerHandle};

use common::lib_paths::{
    AUTH_BURST, AUTH_RATE, Cluster, Command, Dialect, HANDSHAKE_BURST, HANDSHAKE_RATE, NONCE_LEN, Role,
    Secret, Transcript, auth_hello_line, parse_challenge, proof_line, push_peer_frame,
};
use common::temp::TempFile;
use common::{
    ChildServer, Conn, cluster_node_command, free_loopback_addr, start_cluster_node, start_server_with,
    wait_until,
};

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=";
const OTHER_SECRET: &str = "b3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXItMTI=";

/// A secret file holding `secret`, private to its owner.
fn secret_file(tag: &str, secret: &str) -> TempFile {
    let file = TempFile::new(&format!("auth-{tag}"), &format!("{secret}\n"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

/// Starts node `name` of the cluster in `file` at `addr`, with `secret` if any.
fn node(file: &Path, name: &str, addr: SocketAddr, secret: Option<&TempFile>) -> ChildServer {
    let path = secret.map(|s| s.path().to_str().unwrap().to_string());
    let mut extra = vec!["--peer-timeout", "2", "--peer-backoff-max", "0.5"];
    if let Some(path) = &path {
        extra.extend(["--cluster-secret-file", path.as_str()]);
    }
    start_cluster_node(cluster_node_command(file, name, &extra), addr)
}

/// Two nodes: `a` owns a-m, `b` n-z; each with its secret, if any.
fn pair(
    tag: &str,
    a_secret: Option<&TempFile>,
    b_secret: Option<&TempFile>,
) -> (TempFile, ChildServer, ChildServer) {
    let (a, b) = (free_loopback_addr(), free_loopback_addr());
    let file = TempFile::new(&format!("auth-{tag}"), &format!("a {a} a-m\nb {b} n-z\n"));
    let node_a = node(file.path(), "a", a, a_secret);
    let node_b = node(file.path(), "b", b, b_secret);
    (file, node_a, node_b)
}

#[test]
fn the_right_secret_forwards() {
    let secret = secret_file("right", SECRET);
    // The secret named by the cluster file's own line, as docs/SECURITY.md shows.
    let (a, b) = (free_loopback_addr(), free_loopback_addr());
    let text = format!("secret-file {}\na {a} a-m\nb {b} n-z\n", secret.path().display());
    let file = TempFile::new("auth-right-cluster", &text);
    let (_na, _nb) = (node(file.path(), "a", a, None), node(file.path(), "b", b, None));
    let mut client = Conn::connect(a);
    client.roundtrip(b"CREATE nuts\r\nPUT nuts k 1\r\nGET nuts k\r\n", b"OK\r\nOK\r\n1\r\nOK\r\n");
    let mut at_b = Conn::connect(b);
    at_b.roundtrip(b"GET nuts k\r\n", b"1\r\nOK\r\n");
    assert_eq!(at_b.stat("peer_auth_failures"), 0);
    assert_eq!(client.stat("forwarded_total"), 3);
}

/// Sends one request for b's bucket through a and checks the exact refusal, and that
/// b never saw the bucket.
fn assert_refused_through(a: SocketAddr, b: SocketAddr, refusal: &[u8]) {
    let mut client = Conn::connect(a);
    let expected = [refusal, refusal].concat();
    client.roundtrip(b"CREATE nuts\r\nPUT nuts k 1\r\n", &expected);
    client.roundtrip(b"PING\r\n", b"PONG\r\n");
    let mut at_b = Conn::connect(b);
    at_b.roundtrip(b"GET nuts k\r\n", b"NOT FOUND\r\n");
    assert_eq!(at_b.stat("buckets"), 0, "nothing was forwarded");
}

#[test]
fn a_wrong_secret_is_refused_and_never_forwards() {
    let (one, two) = (secret_file("wrong-1", SECRET), secret_file("wrong-2", OTHER_SECRET));
    let (_file, na, nb) = pair("wrong", Some(&one), Some(&two));
    assert_refused_through(
        na.addr(),
        nb.addr(),
        b"ERROR authentication failed: peer b did not prove the cluster secret\r\n",
    );
    assert!(Conn::connect(na.addr()).stat("peer_auth_failures") >= 1);
}

#[test]
fn a_secret_on_the_connecting_side_only_is_refused_by_the_other() {
    let secret = secret_file("a-only", SECRET);
    let (_file, na, nb) = pair("a-only", Some(&secret), None);
    assert_refused_through(
        na.addr(),
        nb.addr(),
        b"ERROR authentication failed: node b has no cluster secret but the connecting node has one\r\n",
    );
    assert!(Conn::connect(nb.addr()).stat("peer_auth_failures") >= 1);
}

#[test]
fn a_missing_secret_is_refused_by_a_node_with_one() {
    let secret = secret_file("b-only", SECRET);
    let (_file, na, nb) = pair("b-only", None, Some(&secret));
    assert_refused_through(
        na.addr(),
        nb.addr(),
        b"ERROR authentication failed: node b has a cluster secret and the connecting node has none\r\n",
    );
    assert!(Conn::connect(nb.addr()).stat("peer_auth_failures") >= 1);
}

#[test]
fn three_nodes_forward_between_the_two_with_the_secret_and_refuse_the_third() {
    let secret = secret_file("trio", SECRET);
    let addrs: [SocketAddr; 3] = std::array::from_fn(|_| free_loopback_addr());
    let text = format!("a {} a-h\nb {} i-p\nc {} q-z\n", addrs[0], addrs[1], addrs[2]);
    let file = TempFile::new("auth-trio", &text);
    let _a = node(file.path(), "a", addrs[0], Some(&secret));
    let _b = node(file.path(), "b", addrs[1], Some(&secret));
    let _c = node(file.path(), "c", addrs[2], None);
    let mut client = Conn::connect(addrs[0]);
    client.roundtrip(b"CREATE apple\r\nCREATE kiwi\r\n", b"OK\r\nOK\r\n");
    client.roundtrip(
        b"CREATE tomato\r\n",
        b"ERROR authentication failed: node c has no cluster secret but the connecting node has one\r\n",
    );
    let mut subscriber = Conn::connect(addrs[0]);
    subscriber.roundtrip(
        b"SUBSCRIBE tomato\r\n",
        b"ERROR authentication failed: node c has no cluster secret but the connecting node has one\r\n",
    );
    let mut from_c = Conn::connect(addrs[2]);
    from_c.roundtrip(
        b"CREATE kiwi\r\n",
        b"ERROR authentication failed: node b has a cluster secret and the connecting node has none\r\n",
    );
    assert_eq!(Conn::connect(addrs[2]).stat("buckets"), 0);
}

/// A node `b` with `secret`, in a cluster where `a` is elsewhere, in this process.
fn node_b_with(secret: &str) -> ServerHandle {
    let cluster = Cluster::parse("two.conf", "a 127.0.0.1:1 a-m\nb 127.0.0.1:2 n-z\n").unwrap();
    start_server_with(Config {
        port: 0,
        workers: 1,
        node: "b".into(),
        cluster: Some(cluster),
        cluster_secret: Some(Secret::new(secret.as_bytes())),
        ..Config::default()
    })
}

/// Plays node `a` with `secret` against `b`: sends the hello, reads the challenge and
/// checks b's proof, returns the connection and a's proof line.
fn fake_handshake(b: SocketAddr, secret: &str) -> (Conn, Vec<u8>, Vec<u8>) {
    let nonce = [7u8; NONCE_LEN];
    let hello = v2_hello("a", "b", &nonce);
    let mut conn = Conn::connect(b);
    conn.send(&hello);
    let challenge = conn.read_line();
    let (responder_nonce, proof) = parse_challenge(&challenge).expect("a challenge");
    let transcript =
        Transcript { from: b"a", to: b"b", initiator_nonce: &nonce, responder_nonce: &responder_nonce };
    let secret = Secret::new(secret.as_bytes());
    assert!(transcript.verify(&secret, Role::Responder, &proof), "b proves the secret");
    (conn, hello, proof_line(&transcript.proof(&secret, Role::Initiator)))
}

/// The version-2 handshake of an earlier build, whose requests are text lines: what
/// these tests play, so that they can speak lines after it. A node of this build
/// sends version 4, then frames (the last test here plays that).
fn v2_hello(from: &str, to: &str, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let hello = auth_hello_line(from, to, nonce);
    let v4 = b"KV-PEER-HELLO 4 ";
    assert!(hello.starts_with(v4));
    [&b"KV-PEER-HELLO 2 "[..], &hello[v4.len()..]].concat()
}

fn addr_of(server: &ServerHandle) -> SocketAddr {
    server.addr()
}

#[test]
fn a_recorded_handshake_replayed_by_a_fake_peer_is_refused() {
    let server = node_b_with(SECRET);
    let b = addr_of(&server);
    let (mut conn, hello, proof) = fake_handshake(b, SECRET);
    conn.send(&[&proof[..], b"CREATE nuts\n"].concat());
    conn.expect(b"OK\r\nOK\r\n");
    // The same bytes again, on a new connection: b's nonce is fresh, so the proof is stale.
    let mut replay = Conn::connect(b);
    replay.send(&hello);
    assert!(parse_challenge(&replay.read_line()).is_some());
    replay.send(&[&proof[..], b"PUT nuts k 1\n"].concat());
    replay.expect(b"ERROR authentication failed\r\nERROR authentication failed\r\n");
    let mut client = Conn::connect(b);
    client.roundtrip(b"GET nuts k\r\n", b"\r\nOK\r\n");
    assert_eq!(client.stat("peer_auth_failures"), 1);
}

#[test]
fn a_reflected_challenge_is_refused() {
    let server = node_b_with(SECRET);
    let b = addr_of(&server);
    let mut conn = Conn::connect(b);
    conn.send(&v2_hello("a", "b", &[1; NONCE_LEN]));
    let challenge = conn.read_line();
    let (_, their_proof) = parse_challenge(&challenge).expect("a challenge");
    // b's own proof sent back as a's: it proves the responder's side, not ours.
    conn.send(&[&proof_line(&their_proof)[..], b"CREATE nuts\n"].concat());
    conn.expect(b"ERROR authentication failed\r\nERROR authentication failed\r\n");
    let mut client = Conn::connect(b);
    assert_eq!(client.stat("buckets"), 0);
}

#[test]
fn a_version_1_hello_to_a_node_with_a_secret_is_refused() {
    let server = node_b_with(SECRET);
    let mut conn = Conn::connect(addr_of(&server));
    let refusal: &[u8] =
        b"ERROR authentication failed: node b has a cluster secret and the connecting node has none\r\n";
    conn.roundtrip(b"KV-PEER-HELLO 1 a b\nCREATE nuts\n", &[refusal, refusal].concat());
}

#[test]
fn failed_handshakes_are_throttled_per_address() {
    let server = node_b_with(SECRET);
    let b = addr_of(&server);
    let throttled: &[u8] =
        b"ERROR authentication failed: too many failed handshakes from this address, try again later\r\n";
    let started = Instant::now();
    let (mut challenged, mut refused) = (0u32, 0u32);
    for _ in 0..500 {
        let mut conn = Conn::connect(b);
        conn.send(&v2_hello("a", "b", &[3; NONCE_LEN]));
        let line = conn.read_line();
        if line == throttled {
            refused += 1;
            break;
        }
        assert!(parse_challenge(&line).is_some(), "{}", common::show(&line));
        challenged += 1;
        conn.send(&proof_line(&[0; 32]));
        conn.expect(b"ERROR authentication failed\r\n");
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(refused, 1, "the address was throttled within 500 attempts");
    // At most the burst, plus what the elapsed time earned back, plus one in flight.
    let allowed = HANDSHAKE_BURST + elapsed * HANDSHAKE_RATE + 1.0;
    assert!(f64::from(challenged) <= allowed, "{challenged} proofs checked in {elapsed:.2}s");
}

fn password_server(bind: IpAddr, password: Option<&str>) -> ServerHandle {
    start_server_with(Config {
        bind,
        port: 0,
        workers: 1,
        password: password.map(|p| Secret::new(p.as_bytes())),
        ..Config::default()
    })
}

#[test]
fn auth_before_and_after() {
    let server = password_server(IpAddr::V4(Ipv4Addr::LOCALHOST), Some("hunter2"));
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    conn.roundtrip(b"CREATE shopping\r\n", b"ERROR authentication required\r\n");
    conn.roundtrip(b"STATS\r\n", b"ERROR authentication required\r\n");
    conn.roundtrip(b"NONSENSE\r\n", b"ERROR authentication required\r\n");
    conn.roundtrip(b"AUTH hunter3\r\n", b"ERROR invalid password\r\n");
    conn.roundtrip(b"AUTH hunter2\r\n", b"OK\r\n");
    conn.roundtrip(b"CREATE shopping\r\nPUT shopping eggs 3\r\n", b"OK\r\nOK\r\n");
    assert_eq!(conn.stat("auth_failures"), 1);
    let mut other = Conn::connect(server.addr());
    other.roundtrip(b"GET shopping eggs\r\n", b"ERROR authentication required\r\n");
    other.roundtrip(b"QUIT\r\n", b"OK\r\n");
    assert_eq!(other.read_to_close(), b"");
}

#[test]
fn ten_failed_auths_close_the_connection() {
    let server = password_server(IpAddr::V4(Ipv4Addr::LOCALHOST), Some("hunter2"));
    let mut conn = Conn::connect(server.addr());
    conn.send(&b"AUTH wrong\r\n".repeat(12));
    let (got, _reset) = conn.read_until_gone();
    assert_eq!(got, b"ERROR invalid password\r\n".repeat(10));
}

const AUTH_THROTTLED: &[u8] = b"ERROR too many failed AUTH attempts from this address, try again later\r\n";

/// One `AUTH` on a new connection from 127.0.0.1: its reply line.
fn auth_once(addr: SocketAddr, password: &str) -> Vec<u8> {
    let mut conn = Conn::connect(addr);
    conn.send(format!("AUTH {password}\r\n").as_bytes());
    conn.read_line()
}

/// Fails `AUTH` on new connections until the address is throttled; how many failed.
fn fail_until_throttled(addr: SocketAddr) -> u32 {
    for failed in 0..500 {
        let line = auth_once(addr, "wrong");
        if line == AUTH_THROTTLED {
            return failed;
        }
        assert_eq!(line, b"ERROR invalid password\r\n");
    }
    panic!("the address was not throttled within 500 failed AUTHs");
}

#[test]
fn failed_auths_are_throttled_per_address_over_all_its_connections() {
    let server = password_server(IpAddr::V4(Ipv4Addr::LOCALHOST), Some("hunter2"));
    // One wrong password per connection: neither the per-connection delay nor its
    // limit of ten ever applies, only the address's allowance.
    let started = Instant::now();
    let failed = fail_until_throttled(server.addr());
    let elapsed = started.elapsed().as_secs_f64();
    assert!(f64::from(failed) >= AUTH_BURST, "only {failed} failures before the throttle");
    let allowed = AUTH_BURST + elapsed * AUTH_RATE + 1.0;
    assert!(f64::from(failed) <= allowed, "{failed} passwords checked in {elapsed:.2}s");

    // While throttled, the right password is not looked at either: a guesser learns
    // nothing. (The address earns an attempt back each 1/AUTH_RATE s, so a probe can
    // land just after one came back; a few rounds make that a non-event.)
    let mut refused = false;
    for _ in 0..5 {
        if auth_once(server.addr(), "hunter2") == AUTH_THROTTLED {
            refused = true;
            break;
        }
        fail_until_throttled(server.addr());
    }
    assert!(refused, "the right password was checked while the address was throttled");

    // The right password takes no allowance: once one attempt is earned back, it works.
    wait_until("the address has earned an attempt back", || auth_once(server.addr(), "hunter2") == b"OK\r\n");
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"AUTH hunter2\r\n", b"OK\r\n");
    assert!(conn.stat("auth_failures") > u64::from(failed), "throttled attempts count as failures");
}

#[test]
fn auth_without_a_password_set_is_an_error() {
    let server = password_server(IpAddr::V4(Ipv4Addr::LOCALHOST), None);
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"AUTH x\r\nPING\r\n", b"ERROR AUTH given but no password is set\r\nPONG\r\n");
}

#[test]
fn protected_mode_still_serves_loopback_clients_on_a_wildcard_bind() {
    let server = password_server(IpAddr::V4(Ipv4Addr::UNSPECIFIED), None);
    let port = server.addr().port();
    let mut conn = Conn::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    conn.roundtrip(b"PING\r\nCREATE shopping\r\n", b"PONG\r\nOK\r\n");
    assert_eq!(conn.stat("protected_mode_rejections"), 0);
}

#[test]
fn kv_cli_and_kv_top_authenticate_with_a_password_file() {
    let server = password_server(IpAddr::V4(Ipv4Addr::LOCALHOST), Some("hunter2"));
    let addr = server.addr().to_string();
    let password = secret_file("cli-password", "hunter2");
    let with_password = |tool: &str, args: &[&str]| {
        let mut command = common::kv_binary();
        command
            .args([tool, "--addr", &addr, "--password-file", password.path().to_str().unwrap()])
            .args(args);
        common::run_to_end(command, b"")
    };
    let done = with_password("cli", &["PUT", "x", "k", "v"]);
    assert!(!done.status.success(), "PUT into a missing bucket is NOT FOUND");
    assert_eq!(done.stdout, b"NOT FOUND\n");
    let done = with_password("cli", &["CREATE", "x"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(done.stdout, b"OK\n");
    let done = with_password("top", &["--once", "--interval", "0.1"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("buckets 1"),
        "{}",
        String::from_utf8_lossy(&done.stdout)
    );
    // Without the password: refused, and kv cli says so with a non-zero status.
    let mut command = common::kv_binary();
    command.args(["cli", "--addr", &addr, "CREATE", "y"]);
    let done = common::run_to_end(command, b"");
    assert!(!done.status.success());
    assert_eq!(done.stdout, b"ERROR authentication required\n");
}

/// Regression: a node peer needs no `AUTH`, and a standalone node with a password (no
/// secret) accepted a version-1 hello, so claiming to be a peer got around the password.
#[test]
fn a_version_1_hello_does_not_get_around_the_password() {
    let server = password_server(IpAddr::V4(Ipv4Addr::LOCALHOST), Some("hunter2"));
    let mut conn = Conn::connect(server.addr());
    conn.send(b"KV-PEER-HELLO 1 x kv\r\nCREATE stolen\r\nPUT stolen k v\r\n");
    let got = conn.read_line();
    assert_eq!(got, b"ERROR authentication failed\r\n", "{}", common::show(&got));
    for _ in 0..2 {
        let refused = conn.read_line();
        assert!(refused.starts_with(b"ERROR "), "nothing runs after it: {}", common::show(&refused));
    }
    let mut owner = Conn::connect(server.addr());
    owner.roundtrip(b"AUTH hunter2\r\nGET stolen k\r\n", b"OK\r\nNOT FOUND\r\n");
}

/// Regression: a connection let in on a peer seat (the client cap full) whose proof
/// was refused kept the seat, and could go on sending PING to hold it.
#[test]
fn a_refused_handshake_on_a_peer_seat_is_closed() {
    let cluster = Cluster::parse("two.conf", "a 127.0.0.1:1 a-m\nb 127.0.0.1:2 n-z\n").unwrap();
    let server = start_server_with(Config {
        port: 0,
        workers: 1,
        node: "b".into(),
        cluster: Some(cluster),
        cluster_secret: Some(Secret::new(SECRET.as_bytes())),
        max_connections: 1,
        ..Config::default()
    });
    let mut client = Conn::connect(server.addr());
    client.roundtrip(b"PING\r\n", b"PONG\r\n");
    // The client cap is full: the next connection gets a peer seat, on condition.
    let nonce = [9u8; NONCE_LEN];
    let mut intruder = Conn::connect(server.addr());
    intruder.send(&v2_hello("a", "b", &nonce));
    assert!(parse_challenge(&intruder.read_line()).is_some(), "a challenge");
    intruder.send(b"KV-PEER-PROOF 00\r\nPING\r\n");
    let rest = intruder.read_to_close();
    assert_eq!(common::show(&rest), common::show(b"ERROR authentication failed\r\n"), "no PONG: closed");
    client.roundtrip(b"PING\r\n", b"PONG\r\n");
}

#[test]
fn a_version_4_handshake_is_followed_by_frames_that_carry_any_bytes() {
    let server = node_b_with(SECRET);
    let b = addr_of(&server);
    let nonce = [5u8; NONCE_LEN];
    let mut conn = Conn::connect(b);
    conn.send(&auth_hello_line("a", "b", &nonce));
    let (responder_nonce, proof) = parse_challenge(&conn.read_line()).expect("a challenge");
    let transcript =
        Transcript { from: b"a", to: b"b", initiator_nonce: &nonce, responder_nonce: &responder_nonce };
    let secret = Secret::new(SECRET.as_bytes());
    assert!(transcript.verify(&secret, Role::Responder, &proof));
    let mut requests = proof_line(&transcript.proof(&secret, Role::Initiator));
    let value: &[u8] = b"a b\r\nc\0";
    for command in [
        Command::Create { bucket: b"nuts" },
        Command::Put { bucket: b"nuts", key: b"k", value },
        Command::HGet { bucket: b"nuts", key: b"k" },
        Command::Get { bucket: b"apple", key: b"k" },
    ] {
        let dialect = if matches!(command, Command::HGet { .. }) { Dialect::Resp2 } else { Dialect::Text };
        push_peer_frame(&command, dialect, &mut requests);
    }
    conn.send(&requests);
    conn.expect(b"OK\r\n");
    let mut replies = Vec::new();
    for _ in 0..4 {
        let len = u32::from_le_bytes(conn.read_exact_bytes(4).try_into().unwrap()) as usize;
        replies.push(conn.read_exact_bytes(len));
    }
    assert_eq!(replies[0], b"OK\r\n");
    assert_eq!(replies[1], b"OK\r\n");
    assert_eq!(replies[2], [&b"$7\r\n"[..], value, b"\r\n"].concat(), "the value, byte for byte, in RESP");
    assert_eq!(replies[3], b"ERROR routing mismatch: node b does not own bucket apple\r\n");
}
