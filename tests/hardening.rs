//! The server against hostile and careless clients, over real TCP: the connection cap
//! and the open-file limit behind it, the idle timeout, the cross-protocol (HTTP)
//! guard, a client that pipelines without reading, the deepest paths a connection
//! thread's small stack must hold, and seeded random input thrown at a live server.
//! (Thousands of simultaneous connections under the cap are `tests/load.rs`'s.)
//!
//! Where a process boundary matters (memory read from /proc, flags, a crash that would
//! take the process down) the real `kv` binary runs as a child; elsewhere the server runs
//! in this process. Nothing here measures speed.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use kv::Config;

use common::fuzzing::{self, RefFrame, Rng, reference_frames, words_of};
use common::lib_paths::DEFAULT_MAX_LINE;
use common::proc::{file_limits_of, peak_rss_of, rss_of};
use common::resp::{bulk, child_resp_addr, command};
use common::{
    ChildServer, Conn, assert_same_bytes_in, kv_serve, show, start_kv_serve, start_server_with,
    wait_for_connections, wait_until,
};

// ---------------------------------------------------------------------------------
// The connection cap.

/// Also covers what `tests/load.rs` checked with a cap of 2 in this process: once an
/// admitted client leaves, its slot is given to a newcomer.
#[test]
fn with_max_connections_50_the_51st_client_is_refused_the_first_50_keep_working_and_a_freed_slot_is_reused() {
    let server = start_kv_serve(&["--max-connections", "50", "--workers", "2"]);
    let addr = server.addr();
    let mut admitted: Vec<Conn> = (0..50).map(|_| Conn::connect(addr)).collect();
    // A PONG proves each one was admitted, not refused.
    for conn in &mut admitted {
        conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    }

    let mut extra = Conn::connect(addr);
    assert_eq!(show(&extra.read_to_close()), show(b"ERROR too many connections\r\n"));

    // The first fifty are unaffected: each writes, and each reads another's write.
    admitted[0].roundtrip(b"CREATE capped\r\n", b"OK\r\n");
    for (i, conn) in admitted.iter_mut().enumerate() {
        conn.roundtrip(format!("PUT capped k{i} v{i}\r\n").as_bytes(), b"OK\r\n");
    }
    for (i, conn) in admitted.iter_mut().enumerate() {
        let other = (i + 1) % 50;
        conn.roundtrip(
            format!("GET capped k{other}\r\n").as_bytes(),
            format!("v{other}\r\nOK\r\n").as_bytes(),
        );
    }
    let stats = admitted[49].stats();
    assert_eq!(common::stat_of(&stats, "connections"), 50);
    assert_eq!(common::stat_of(&stats, "connections_total"), 50);
    assert_eq!(common::stat_of(&stats, "rejected_connections"), 1);
    assert_eq!(common::stat_of(&stats, "keys"), 50);

    // Once one leaves, a newcomer is served again; until the server has noticed, a
    // newcomer is refused with exactly the same line.
    drop(admitted.pop());
    let mut next = None;
    wait_until("a connection is admitted again", || {
        let mut conn = Conn::connect(addr);
        conn.send(b"PING\r\n");
        let reply = conn.read_line();
        if reply == b"PONG\r\n" {
            next = Some(conn);
            true
        } else {
            assert_eq!(show(&reply), show(b"ERROR too many connections\r\n"));
            false
        }
    });
    let mut next = next.unwrap();
    next.roundtrip(b"GET capped k0\r\n", b"v0\r\nOK\r\n");
    let stats = next.stats();
    assert_eq!(common::stat_of(&stats, "connections"), 50);
    assert!(common::stat_of(&stats, "rejected_connections") >= 1);
    // The other 49 are still admitted and served.
    for (i, conn) in admitted.iter_mut().enumerate() {
        conn.roundtrip(format!("GET capped k{i}\r\n").as_bytes(), format!("v{i}\r\nOK\r\n").as_bytes());
    }
}

/// A child `kv serve` whose open-file limits start at `soft` and `hard`.
#[allow(unsafe_code)] // pre_exec has no safe form; see the SAFETY note.
fn start_child_with_file_limit(soft: u64, hard: u64, flags: &[&str]) -> ChildServer {
    use std::os::unix::process::CommandExt;
    let mut command = kv_serve(flags);
    // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    ChildServer::start(command)
}

#[test]
fn server_raises_a_low_soft_open_file_limit_to_fit_its_connection_cap() {
    let (_, our_hard) = file_limits_of(std::process::id());
    let server = start_child_with_file_limit(256, our_hard, &["--max-connections", "5000"]);
    // 5,000 connections plus 64 descriptors kept for everything else.
    assert_eq!(file_limits_of(server.pid()), (5_064.min(our_hard), our_hard));
    Conn::connect(server.addr()).roundtrip(b"PING\r\n", b"PONG\r\n");
}

#[test]
fn hard_open_file_limit_below_the_cap_lowers_the_cap_so_extra_clients_are_refused_not_stalled() {
    // 128 descriptors, 64 of them kept for the server's own use: room for 64 clients,
    // although the cap asked for is the default 10,000.
    let server = start_child_with_file_limit(128, 128, &["--workers", "2"]);
    let addr = server.addr();
    let mut admitted: Vec<Conn> = (0..64).map(|_| Conn::connect(addr)).collect();
    for conn in &mut admitted {
        conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    }
    let mut extra = Conn::connect(addr);
    assert_eq!(show(&extra.read_to_close()), show(b"ERROR too many connections\r\n"));
    let stats = admitted[0].stats();
    assert_eq!(common::stat_of(&stats, "connections"), 64);
    assert_eq!(common::stat_of(&stats, "rejected_connections"), 1);
}

// ---------------------------------------------------------------------------------
// The idle timeout.

#[test]
fn idle_timeout_closes_idle_and_trickling_connections_but_not_an_active_one() {
    let limit = Duration::from_secs(1);
    let server = start_server_with(Config { port: 0, idle_timeout: Some(limit), ..Config::default() });
    let addr = server.addr();
    let mut setup = Conn::connect(addr);
    setup.roundtrip(b"CREATE idle\r\n", b"OK\r\n");
    drop(setup);

    // Active: a request every 150 ms, for well over three times the limit. The gap
    // leaves 850 ms of scheduling slack on a loaded machine.
    let active = thread::spawn(move || {
        let mut conn = Conn::connect(addr);
        let started = Instant::now();
        for i in 0..24 {
            // Pacing, not waiting for a condition: the gap is what is under test.
            thread::sleep(Duration::from_millis(150));
            conn.roundtrip(format!("PUT idle active {i}\r\n").as_bytes(), b"OK\r\n");
        }
        assert!(started.elapsed() > 3 * limit);
        conn.roundtrip(b"GET idle active\r\n", b"23\r\nOK\r\n");
    });

    // Trickler: a byte every 200 ms, never a newline, so never a complete request.
    let trickle_started = Instant::now();
    let mut trickler = Conn::connect(addr);
    trickler.send(b"PUT idle trickled ");
    let mut trickle_writer = trickler.try_clone_stream();
    let stop_trickling = Arc::new(AtomicBool::new(false));
    let stop = stop_trickling.clone();
    let trickling = thread::spawn(move || {
        for _ in 0..100 {
            if stop.load(Ordering::SeqCst) || trickle_writer.write_all(b"x").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
    });

    // Idle: one request, then silence.
    let mut idle = Conn::connect(addr);
    idle.roundtrip(b"PING\r\n", b"PONG\r\n");
    let idle_since = Instant::now();
    let (rest, _) = idle.read_until_gone();
    assert_eq!(show(&rest), "", "an idle connection is closed without a word");
    assert!(idle_since.elapsed() >= limit, "closed after {:?}, before the limit", idle_since.elapsed());

    let (rest, _) = trickler.read_until_gone();
    assert_eq!(show(&rest), "");
    assert!(trickle_started.elapsed() >= limit);
    stop_trickling.store(true, Ordering::SeqCst);
    trickling.join().unwrap();

    active.join().unwrap();
    // The trickled line never completed, so nothing of it was stored.
    let mut check = Conn::connect(addr);
    check.roundtrip(b"GET idle trickled\r\n", b"\r\nOK\r\n");
    // Every other connection is gone.
    wait_until("only the checking connection is left", || check.stat("connections") == 1);
}

#[test]
fn idle_timeout_spares_a_client_that_reads_its_replies_slowly() {
    // Regression: the server checked the clock before serving what a read brought, so a
    // request that had waited in the socket while the connection thread was blocked
    // writing (or merely descheduled) past the limit was dropped with the connection.
    let limit = Duration::from_secs(1);
    let server = start_server_with(Config { port: 0, idle_timeout: Some(limit), ..Config::default() });
    let mut conn = Conn::connect(server.addr());
    let value = vec![b'v'; 60 * 1024];
    // The long PUT also grows the connection's read buffer past 64 KiB, so the GETs
    // below arrive in one read and make one round.
    conn.roundtrip(&[&b"CREATE big\r\nPUT big k "[..], &value, b"\r\n"].concat(), b"OK\r\nOK\r\n");
    // 15 MiB of replies: more than the socket buffers of a client that does not read,
    // so the server blocks writing them.
    conn.send(&b"GET big k\r\n".repeat(250));
    let reply = [&value[..], b"\r\nOK\r\n"].concat();
    assert_eq!(conn.read_exact_bytes(1), b"v", "the server is writing");
    // A request arrives while it is blocked, and the client is slow to read: busy, not
    // idle.
    conn.send(b"PING\r\n");
    thread::sleep(limit + limit / 2);
    assert_eq!(conn.read_exact_bytes(reply.len() - 1), reply[1..]);
    for _ in 1..250 {
        conn.expect(&reply);
    }
    conn.expect(b"PONG\r\n");
    conn.roundtrip(b"PING\r\n", b"PONG\r\n");
}

// ---------------------------------------------------------------------------------
// The cross-protocol guard.

/// Regression: the guard closed the socket with the rest of the HTTP request unread,
/// so the kernel reset the connection and threw away replies still in the send buffer:
/// 100 pipelined GETs of 60 KB then a POST lost part of their replies in 10 runs of 20.
#[test]
fn the_http_guard_drops_no_reply_to_the_requests_before_it() {
    let server = start_server_with(Config { port: 0, workers: 2, ..Config::default() });
    let value = "v".repeat(60 * 1024);
    let mut setup = Conn::connect(server.addr());
    setup.roundtrip(format!("CREATE big\r\nPUT big k {value}\r\n").as_bytes(), b"OK\r\nOK\r\n");
    let one_reply = format!("{value}\r\nOK\r\n");
    for run in 0..5 {
        let mut conn = Conn::connect(server.addr());
        let mut payload = "GET big k\r\n".repeat(100);
        payload.push_str("POST / HTTP/1.1\r\nHost: 127.0.0.1:4040\r\nContent-Length: 4096\r\n\r\n");
        payload.push_str(&"x".repeat(4096));
        conn.send(payload.as_bytes());
        let (got, reset) = conn.read_until_gone();
        assert!(!reset, "run {run}: reset after {} of {} reply bytes", got.len(), 100 * one_reply.len());
        assert_same_bytes_in(&got, one_reply.repeat(100).as_bytes(), &format!("run {run}"));
    }
}

#[test]
fn http_post_or_host_line_closes_the_connection_and_nothing_after_it_runs() {
    let server = start_server_with(Config { port: 0, workers: 2, ..Config::default() });
    let addr = server.addr();
    let mut control = Conn::connect(addr);
    control.roundtrip(b"CREATE control\r\nPUT control k safe\r\n", b"OK\r\nOK\r\n");

    // (what a browser or an attacker sends in one write, the replies due before the close)
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1:4040\r\nContent-Type: text/plain\r\n\
              Content-Length: 60\r\n\r\nCREATE web1\r\nPUT web1 k v\r\nPUT control k hacked\r\n",
            b"",
        ),
        (b"post /form HTTP/1.0\nCREATE web2\nPUT control k hacked\n", b""),
        (b"Host: localhost:4040\r\nCREATE web3\r\nPUT control k hacked\r\n", b""),
        (b"  HOST:   evil.example\r\nCREATE web4\r\n", b""),
        // A browser's GET: its first line is a well-formed GET of bucket "/", then the
        // Host: header closes the connection before the body's lines.
        (
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:4040\r\n\r\nCREATE web5\r\nDELETE control k\r\n",
            b"NOT FOUND\r\n",
        ),
        // Requests before the guard line are answered; none after it runs.
        (
            b"PING\r\nCREATE early\r\nPOST /x HTTP/1.1\r\nCREATE web6\r\nPUT control k hacked\r\n",
            b"PONG\r\nOK\r\n",
        ),
    ];
    for (payload, replies) in cases {
        let mut conn = Conn::connect(addr);
        conn.send(payload);
        let (got, reset) = conn.read_until_gone();
        assert!(!reset, "a reset after {} for {}", show(&got), show(payload));
        assert_same_bytes_in(&got, replies, &format!("replies to {}", show(payload)));
    }
    // The guard line in one write and the commands in the next, as a browser may send
    // headers and body: the connection is gone before the body arrives.
    let mut conn = Conn::connect(addr);
    conn.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let _ = conn.try_clone_stream().write_all(b"CREATE web7\r\nPUT control k hacked\r\n");
    let (got, _) = conn.read_until_gone();
    assert_eq!(show(&got), "");

    // None of the commands after a guard line ran.
    for bucket in ["web1", "web2", "web3", "web4", "web5", "web6", "web7"] {
        control.roundtrip(format!("GET {bucket} k\r\n").as_bytes(), b"NOT FOUND\r\n");
    }
    control.roundtrip(b"GET control k\r\n", b"safe\r\nOK\r\n");
    // The one before a guard line did.
    control.roundtrip(b"GET early k\r\n", b"\r\nOK\r\n");
    // POST and Host: count only as a line's first word.
    control.roundtrip(b"PUT control post host:\r\n", b"OK\r\n");
    control.roundtrip(b"GET control post\r\n", b"host:\r\nOK\r\n");
}

// ---------------------------------------------------------------------------------
// Bounded memory for a client that never reads.

#[test]
fn client_pipelining_50_mib_of_gets_without_reading_keeps_server_memory_bounded() {
    const TOTAL: u64 = 50 * 1024 * 1024;
    const RSS_BOUND: u64 = 200 * 1024 * 1024;
    let server = start_kv_serve(&["--workers", "2"]);
    let addr = server.addr();
    let value = vec![b'v'; 1024];
    let mut other = Conn::connect(addr);
    other.roundtrip(b"CREATE big\r\n", b"OK\r\n");
    other.roundtrip(&[&b"PUT big k "[..], &value, b"\r\n"].concat(), b"OK\r\n");
    let rss_before = rss_of(server.pid());

    // Every 10-byte GET asks for a 1 KiB reply: 50 MiB of them would be 5 GiB of
    // replies if the server kept reading.
    let greedy = TcpStream::connect(addr).unwrap();
    let mut writer = greedy.try_clone().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let sent_by_writer = sent.clone();
    let writing = thread::spawn(move || {
        let chunk = b"GET big k\n".repeat(6_553);
        while sent_by_writer.load(Ordering::SeqCst) < TOTAL {
            // Fails once the test shuts the socket down under a blocked write.
            if writer.write_all(&chunk).is_err() {
                return;
            }
            sent_by_writer.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    });

    // Wait until the writer is stuck (the server stopped reading) or done.
    let mut last = (0, Instant::now());
    let mut peak = 0;
    wait_until("the greedy client's writes stall or finish", || {
        peak = peak.max(rss_of(server.pid()));
        let now = sent.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
        now >= TOTAL || last.1.elapsed() > Duration::from_secs(1)
    });

    // Meanwhile everyone else is served, from the same bucket.
    for i in 0..50 {
        other.roundtrip(b"PING\r\n", b"PONG\r\n");
        other.roundtrip(format!("PUT big other{i} {i}\r\n").as_bytes(), b"OK\r\n");
        other.roundtrip(b"GET big k\r\n", &[&value[..], b"\r\nOK\r\n"].concat());
        peak = peak.max(rss_of(server.pid()));
    }
    let mut newcomer = Conn::connect(addr);
    newcomer.roundtrip(b"GET big other49\r\n", b"49\r\nOK\r\n");
    peak = peak.max(rss_of(server.pid()));

    // The replies that did come are whole and in order.
    let mut greedy_reader = Conn::from_stream(greedy.try_clone().unwrap());
    let reply = [&value[..], b"\r\nOK\r\n"].concat();
    for _ in 0..1_000 {
        greedy_reader.expect(&reply);
    }
    // Unblocks the writer; closing every handle then lets the server's blocked write
    // fail, so its thread ends.
    greedy.shutdown(Shutdown::Both).unwrap();
    writing.join().unwrap();
    drop(greedy_reader);
    drop(greedy);
    eprintln!(
        "greedy client wrote {} MiB before stalling; server RSS {} MiB before, {} MiB at most",
        sent.load(Ordering::SeqCst) >> 20,
        rss_before >> 20,
        peak >> 20
    );
    assert!(peak < RSS_BOUND, "server RSS reached {} MiB", peak >> 20);
    assert!(sent.load(Ordering::SeqCst) < TOTAL, "the server read all 50 MiB without the client reading");
    // `other`, `newcomer` and the one polling.
    wait_for_connections(addr, 3);
    newcomer.roundtrip(b"PING\r\n", b"PONG\r\n");
}

/// Regression: a round took 256 requests whatever their replies, so 256 GETs of a
/// 512 KiB value (the RESP door takes up to 1 MiB) made a 128 MiB round, and 256
/// `HGETALL`s as many copies of the bucket; the server held each twice (the batch's
/// replies and the output) and peaked near 300 MiB here. A round now ends once its
/// replies could pass 16 MiB of values, and a whole-bucket read is a round of its own.
#[test]
fn a_pipeline_of_large_reads_makes_no_round_larger_than_its_reply_budget_on_either_door() {
    const PEAK_BOUND: u64 = 100 * 1024 * 1024;
    const READS: usize = 300;
    let server = start_kv_serve(&["--workers", "2", "--resp-port", "0"]);
    let (text, resp) = (server.addr(), child_resp_addr(&server));
    let value = vec![b'v'; 512 * 1024];
    let mut setup = Conn::connect(resp);
    setup.roundtrip(&command(&[b"HSET", b"big", b"k", &value]), b":1\r\n");

    // 60 KiB of PINGs first grow the server's read buffer to its 64 KiB, so the
    // reads after them come in whole reads of hundreds of requests.
    let warm_up = b"PING\r\n".repeat(10_000);
    let text_get = LargeReads {
        what: "text GET",
        addr: text,
        read: b"GET big k\r\n".to_vec(),
        pong: b"PONG\r\n".to_vec(),
        reply: [&value[..], b"\r\nOK\r\n"].concat(),
    };
    let resp_read =
        |what, read| LargeReads { what, addr: resp, read, pong: b"+PONG\r\n".to_vec(), reply: vec![] };
    let hget =
        LargeReads { reply: bulk(&value), ..resp_read("RESP HGET", command(&[b"HGET", b"big", b"k"])) };
    let hgetall = LargeReads {
        reply: [&b"*2\r\n"[..], &bulk(b"k"), &bulk(&value)].concat(),
        ..resp_read("RESP HGETALL", command(&[b"HGETALL", b"big"]))
    };
    for reads in [text_get, hget, hgetall] {
        let mut conn = Conn::connect(reads.addr);
        conn.send(&[warm_up.clone(), reads.read.repeat(READS)].concat());
        conn.expect(&reads.pong.repeat(10_000));
        for _ in 0..READS {
            conn.expect(&reads.reply);
        }
        let (peak, what) = (peak_rss_of(server.pid()), reads.what);
        eprintln!("after {READS} pipelined {what}s of 512 KiB: server peak RSS {} MiB", peak >> 20);
        assert!(peak < PEAK_BOUND, "{what}: server RSS peaked at {} MiB", peak >> 20);
    }
}

/// One kind of large read pipelined at a door, and what each is answered.
struct LargeReads {
    what: &'static str,
    addr: SocketAddr,
    read: Vec<u8>,
    pong: Vec<u8>,
    reply: Vec<u8>,
}

// ---------------------------------------------------------------------------------
// The deepest paths of a connection thread, for CONNECTION_STACK_SIZE.

#[test]
fn deepest_connection_paths_run_on_the_connection_stack_with_debug_logging() {
    // Debug logging on every connection event, and a panic formatted by the logging
    // panic hook: the most stack a connection thread uses. A stack overflow would kill
    // the whole process, which the later requests would notice.
    let mut command = kv_serve(&["--debug", "--workers", "2"]);
    command.env("RUST_LOG", "debug");
    let server = ChildServer::start(command);
    let addr = server.addr();

    for _ in 0..3 {
        let mut crashing = Conn::connect(addr);
        crashing.send(b"DEBUG CRASH-CONNECTION\r\n");
        let (got, _) = crashing.read_until_gone();
        assert_eq!(show(&got), "", "a crashed connection is closed without a reply");
    }

    let mut conn = Conn::connect(addr);
    let stats = conn.stats();
    assert_eq!(common::stat_of(&stats, "workers"), 2);
    let too_long = [&b"PUT b k "[..], &vec![b'x'; 100 * 1024], b"\r\n"].concat();
    conn.roundtrip(&too_long, b"ERROR line too long\r\n");
    let value = vec![b'v'; 60 * 1024];
    conn.roundtrip(b"CREATE b\r\n", b"OK\r\n");
    conn.roundtrip(&[&b"PUT b k "[..], &value, b"\r\n"].concat(), b"OK\r\n");
    conn.roundtrip(b"GET b k\r\n", &[&value[..], b"\r\nOK\r\n"].concat());
    // A worker crash, answered on the connection's thread.
    conn.roundtrip(b"DEBUG CRASH b\r\n", b"ERROR worker crashed\r\n");

    // The process survived all of it.
    let mut fresh = Conn::connect(addr);
    fresh.roundtrip(b"GET b k\r\n", &[&value[..], b"\r\nOK\r\n"].concat());
    assert_eq!(fresh.stat("worker_restarts"), 1);
    wait_for_connections(addr, 3);
}

// ---------------------------------------------------------------------------------
// Random input.

/// What the protocol says must come back for one framed request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Due {
    /// `OK`.
    Ok,
    /// `OK` when the bucket exists, else `NOT FOUND`.
    OkOrNotFound,
    /// A value line then `OK`, or `NOT FOUND`.
    Value,
    Pong,
    Stats,
    Unknown,
    TooLong,
    /// `OK`, then the server closes.
    Quit,
    /// The cross-protocol guard: the server closes without a reply.
    HttpClose,
}

/// Random-test model of one request: what is due, and the bucket it needs if any.
fn due_for(frame: &RefFrame) -> (Due, Option<Vec<u8>>) {
    let line = match frame {
        RefFrame::TooLong => return (Due::TooLong, None),
        RefFrame::Line(line) => line,
    };
    let words = words_of(line);
    let Some(first) = words.first() else { return (Due::Unknown, None) };
    let is = |known: &[u8]| first.eq_ignore_ascii_case(known);
    if is(b"POST") || is(b"Host:") {
        return (Due::HttpClose, None);
    }
    let bucket = words.get(1).map(|bucket| bucket.to_vec());
    match words.len() {
        2 if is(b"CREATE") => (Due::Ok, None),
        4 if is(b"PUT") => (Due::OkOrNotFound, bucket),
        3 if is(b"DELETE") => (Due::OkOrNotFound, bucket),
        3 if is(b"GET") => (Due::Value, bucket),
        1 if is(b"PING") => (Due::Pong, None),
        1 if is(b"STATS") => (Due::Stats, None),
        1 if is(b"QUIT") => (Due::Quit, None),
        _ => (Due::Unknown, None),
    }
}

const RANDOM_MAX_LINE: usize = 200;
/// Buckets created before the random traffic starts, and some that may never exist.
const CREATED: &[&str] = &["f0", "f1", "f2", "f3"];
const MAYBE: &[&str] = &["g0", "g1"];
const KEYS: &[&str] = &["k0", "k1", "k2", "k3", "k4", "k5", "\u{e9}", "k\u{2003}"];

/// A word in random case, as the protocol matches command words in any case.
fn random_case(rng: &mut Rng, word: &str) -> Vec<u8> {
    word.bytes().map(|b| if rng.chance(30) { b.to_ascii_lowercase() } else { b }).collect()
}

/// Whitespace between words: mostly one space, sometimes runs of any protocol space.
fn separator(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(80) { b" ".to_vec() } else { rng.bytes_from(b" \t\x0b\x0c\r", 1, 4) }
}

/// One random request line, mostly valid, with its line end.
fn random_line(rng: &mut Rng) -> Vec<u8> {
    let bucket = |rng: &mut Rng| {
        let names = if rng.chance(85) { CREATED } else { MAYBE };
        rng.pick(names).as_bytes().to_vec()
    };
    let key = |rng: &mut Rng| rng.pick(KEYS).as_bytes().to_vec();
    let value = |rng: &mut Rng| {
        let len = rng.between(1, 12);
        // Any byte but whitespace, including NUL and bytes that are not UTF-8.
        (0..len)
            .map(|_| {
                loop {
                    let b = rng.next_u64() as u8;
                    if !fuzzing::is_protocol_space(b) {
                        break b;
                    }
                }
            })
            .collect::<Vec<u8>>()
    };
    let mut words: Vec<Vec<u8>> = match rng.below(100) {
        0..=19 => vec![random_case(rng, "PUT"), bucket(rng), key(rng), value(rng)],
        20..=39 => vec![random_case(rng, "GET"), bucket(rng), key(rng)],
        40..=47 => vec![random_case(rng, "DELETE"), bucket(rng), key(rng)],
        48..=51 => vec![random_case(rng, "CREATE"), bucket(rng)],
        52..=57 => vec![random_case(rng, "PING")],
        58..=59 => vec![random_case(rng, "STATS")],
        // Wrong number of words.
        60..=64 => {
            let word = rng.pick(&["PUT", "GET", "DELETE", "CREATE", "PING", "QUIT"]);
            let mut words = vec![random_case(rng, word)];
            words.extend((0..rng.below(6)).map(|_| key(rng)));
            words
        }
        // Unknown words, including near misses and the debug commands (not enabled).
        65..=69 => {
            let word = rng.pick(&["PUTS", "GETT", "DEBUG", "HELLO", "SET", "DEL", "P0ST", "HOST"]);
            vec![random_case(rng, word), bucket(rng), b"CRASH-CONNECTION".to_vec()]
        }
        // Empty or blank.
        70..=73 => vec![rng.bytes_from(b" \t\x0b\x0c", 0, 3)],
        // Printable junk and whitespace, no newline.
        74..=81 => vec![rng.bytes_from(b"abcPUTGET DELETE\t\r\x0bxyz0123456789", 1, 40)],
        // Over the limit, or just at it; some look like a PUT whose value is too long.
        82..=87 => {
            let mut line = if rng.chance(50) { b"PUT f0 k0 ".to_vec() } else { Vec::new() };
            line.extend(rng.bytes_from(b"xyzXYZ\r", RANDOM_MAX_LINE - 10, RANDOM_MAX_LINE + 300));
            vec![line]
        }
        // Raw bytes of any value, newlines included: they cut lines anywhere.
        _ => vec![rng.any_bytes(1, 64)],
    };
    let mut line = Vec::new();
    if rng.chance(10) {
        line.extend(separator(rng));
    }
    for (i, word) in words.drain(..).enumerate() {
        if i > 0 {
            line.extend(separator(rng));
        }
        line.extend(word);
    }
    line.extend_from_slice(if rng.chance(50) { b"\r\n" } else { b"\n" });
    line
}

/// A (bucket, key) pair as sent.
type BucketKey = (Vec<u8>, Vec<u8>);

/// One connection's worth of random traffic: the bytes to send and the frames the
/// server will see, cut after the first frame that ends the connection.
struct Session {
    bytes: Vec<u8>,
    frames: Vec<RefFrame>,
}

fn random_session(rng: &mut Rng) -> Session {
    let mut bytes = Vec::new();
    for _ in 0..rng.between(50, 400) {
        bytes.extend(random_line(rng));
    }
    match rng.below(10) {
        0 | 1 => bytes.extend(random_case(rng, "QUIT\r\n")),
        2 => {
            let guard: &[&[u8]] = &[b"POST / HTTP/1.1\r\n", b"host: 127.0.0.1:4040\r\n"];
            let line: &[u8] = rng.pick(guard);
            bytes.extend_from_slice(line)
        }
        _ => {}
    }
    // Ends whatever line is open, then a PING whose PONG marks the end.
    bytes.extend_from_slice(b"\r\nPING\r\n");
    let mut frames = Vec::new();
    for (frame, end) in reference_frames(&bytes, RANDOM_MAX_LINE) {
        let (due, _) = due_for(&frame);
        frames.push(frame);
        if matches!(due, Due::Quit | Due::HttpClose) {
            bytes.truncate(end);
            break;
        }
    }
    Session { bytes, frames }
}

/// Sends `session` in random chunks from another thread and checks every reply's shape
/// against the model. Returns each GET's ((bucket, key), value) for the caller to check
/// against the values that were ever PUT.
fn run_session(addr: SocketAddr, session: &Session, rng: &mut Rng) -> Vec<(BucketKey, Vec<u8>)> {
    let mut conn = Conn::connect(addr);
    let mut writer = conn.try_clone_stream();
    let bytes = session.bytes.clone();
    let mut chunk_rng = Rng::new(rng.next_u64());
    let writing = thread::spawn(move || {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = if chunk_rng.chance(20) { chunk_rng.between(1, 8) } else { chunk_rng.between(1, 4096) };
            let n = n.min(rest.len());
            writer.write_all(&rest[..n]).expect("send random traffic");
            rest = &rest[n..];
        }
    });
    let mut got_values = Vec::new();
    let mut created: HashSet<Vec<u8>> = CREATED.iter().map(|b| b.as_bytes().to_vec()).collect();
    for (i, frame) in session.frames.iter().enumerate() {
        let (due, bucket) = due_for(frame);
        let context = || format!("frame {i} {frame:?}, due {due:?}");
        let must_exist = bucket.as_ref().is_some_and(|bucket| created.contains(bucket));
        match due {
            Due::Ok => {
                assert_eq!(show(&conn.read_line()), "OK\\r\\n", "{}", context());
                if let RefFrame::Line(line) = frame {
                    created.insert(words_of(line)[1].to_vec());
                }
            }
            Due::OkOrNotFound => {
                let line = conn.read_line();
                let allowed: &[&[u8]] =
                    if must_exist { &[b"OK\r\n"] } else { &[b"OK\r\n", b"NOT FOUND\r\n"] };
                assert!(allowed.contains(&&line[..]), "{}: got {}", context(), show(&line));
            }
            Due::Value => {
                let line = conn.read_line();
                if line == b"NOT FOUND\r\n" && !must_exist {
                    continue;
                }
                let value =
                    line.strip_suffix(b"\r\n").unwrap_or_else(|| panic!("{}: {}", context(), show(&line)));
                assert!(
                    !value.iter().any(|&b| fuzzing::is_protocol_space(b)),
                    "{}: value line {}",
                    context(),
                    show(&line)
                );
                assert_eq!(show(&conn.read_line()), "OK\\r\\n", "{}", context());
                let RefFrame::Line(request) = frame else { unreachable!() };
                let words = words_of(request);
                got_values.push(((words[1].to_vec(), words[2].to_vec()), value.to_vec()));
            }
            Due::Pong => assert_eq!(show(&conn.read_line()), "PONG\\r\\n", "{}", context()),
            Due::Stats => {
                let stats = conn.read_stats_reply();
                assert_eq!(common::stat_of(&stats, "worker_restarts"), 0);
            }
            Due::Unknown => assert_eq!(show(&conn.read_line()), "UNKNOWN COMMAND\\r\\n", "{}", context()),
            Due::TooLong => assert_eq!(show(&conn.read_line()), "ERROR line too long\\r\\n", "{}", context()),
            Due::Quit => {
                assert_eq!(show(&conn.read_line()), "OK\\r\\n", "{}", context());
                assert_eq!(show(&conn.read_to_close()), "", "after QUIT");
            }
            Due::HttpClose => assert_eq!(show(&conn.read_to_close()), "", "after an HTTP line"),
        }
    }
    writing.join().unwrap();
    got_values
}

#[test]
fn random_bytes_and_lines_from_several_clients_get_well_formed_replies_and_spare_other_data() {
    const SEEDS: [u64; 6] = [1, 2, 0x5eed, 0xdead_beef, 20_240_601, u64::MAX];
    const CLIENTS: usize = 4;
    const SESSIONS: usize = 3;
    let server =
        start_server_with(Config { port: 0, workers: 3, max_line: RANDOM_MAX_LINE, ..Config::default() });
    let addr = server.addr();

    // The control client's data, which no random line may touch.
    let mut control = Conn::connect(addr);
    let mut setup = b"CREATE control\r\n".to_vec();
    for bucket in CREATED {
        setup.extend_from_slice(format!("CREATE {bucket}\r\n").as_bytes());
    }
    for i in 0..200 {
        setup.extend_from_slice(format!("PUT control key{i} value{i}\r\n").as_bytes());
    }
    let replies = b"OK\r\n".repeat(1 + CREATED.len() + 200);
    assert_same_bytes_in(&control.pipeline(setup, replies.len()), &replies, "the control client's setup");

    // Every (bucket, key) -> value any request so far may have stored.
    let mut puts: HashMap<BucketKey, HashSet<Vec<u8>>> = HashMap::new();
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        let plans: Vec<(Vec<Session>, Rng)> = (0..CLIENTS)
            .map(|_| ((0..SESSIONS).map(|_| random_session(&mut rng)).collect(), Rng::new(rng.next_u64())))
            .collect();
        let mut frames_sent = 0;
        let mut dues: HashMap<Due, usize> = HashMap::new();
        for (sessions, _) in &plans {
            for session in sessions {
                frames_sent += session.frames.len();
                for frame in &session.frames {
                    *dues.entry(due_for(frame).0).or_default() += 1;
                    let RefFrame::Line(line) = frame else { continue };
                    let words = words_of(line);
                    assert!(words.get(1) != Some(&&b"control"[..]), "seed {seed} generated {}", show(line));
                    // A subscription would turn the connection into an event stream
                    // that the model does not predict; the generator never writes one.
                    assert!(
                        !words.first().is_some_and(|word| word.eq_ignore_ascii_case(b"SUBSCRIBE")),
                        "seed {seed} generated {}",
                        show(line)
                    );
                    if due_for(frame).0 == Due::OkOrNotFound && words.len() == 4 {
                        let stored = (words[1].to_vec(), words[2].to_vec());
                        puts.entry(stored).or_default().insert(words[3].to_vec());
                    }
                }
            }
        }
        eprintln!("seed {seed}: {frames_sent} requests: {dues:?}");
        assert!(frames_sent > 1_000, "seed {seed}: only {frames_sent} requests");
        let clients: Vec<_> = plans
            .into_iter()
            .map(|(sessions, mut rng)| {
                thread::spawn(move || {
                    sessions
                        .iter()
                        .flat_map(|session| run_session(addr, session, &mut rng))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for client in clients {
            for ((bucket, key), value) in client.join().unwrap() {
                if value.is_empty() {
                    continue;
                }
                let stored = puts.get(&(bucket.clone(), key.clone()));
                assert!(
                    stored.is_some_and(|values| values.contains(&value)),
                    "seed {seed}: GET {} {} returned {}, which no request stored there",
                    show(&bucket),
                    show(&key),
                    show(&value)
                );
            }
        }
        // Still answering, and the control client's data is intact.
        let mut requests = Vec::new();
        let mut expected = Vec::new();
        for i in 0..200 {
            requests.extend_from_slice(format!("GET control key{i}\r\n").as_bytes());
            expected.extend_from_slice(format!("value{i}\r\nOK\r\n").as_bytes());
        }
        let got = control.pipeline(requests, expected.len());
        assert_same_bytes_in(&got, &expected, &format!("the control client's data after seed {seed}"));
    }
    let stats = control.stats();
    assert_eq!(common::stat_of(&stats, "worker_restarts"), 0);
    assert!(common::stat_of(&stats, "commands_total") > SEEDS.len() as u64 * 1_000);
    wait_for_connections(addr, 2);
}

/// The fuzz target's checks (`fuzz/`), run in every `cargo test` over seeded inputs:
/// streams rich in the bytes that matter to framing, limits from 0 to 64 and the
/// default, each cut into random chunks.
#[test]
fn line_reader_frames_random_streams_in_random_chunks_as_the_protocol_says() {
    let mut rng = Rng::new(0xf4a3);
    for round in 0..3_000 {
        let len = if rng.chance(5) { rng.between(0, 70_000) } else { rng.between(0, 600) };
        let stream: Vec<u8> = (0..len)
            .map(|_| match rng.below(10) {
                0 => b'\n',
                1 => b'\r',
                2 => b' ',
                3..=5 => rng.pick(b"PUTGETposthost:\t\x0b\x0c"),
                _ => rng.next_u64() as u8,
            })
            .collect();
        let max_line = if rng.chance(10) { DEFAULT_MAX_LINE } else { rng.below(65) };
        let seed = rng.next_u64();
        let checked = std::panic::catch_unwind(|| fuzzing::check_line_reader(&stream, max_line, seed));
        assert!(checked.is_ok(), "round {round}: {len} bytes, limit {max_line}, chunking seed {seed}");
    }
}

/// Regression: a round of large GETs grew a connection's reply buffers to many MiB
/// and they stayed that size for the connection's life, so idle connections that
/// once read a burst held about 15 MiB each.
#[test]
fn buffers_grown_by_a_burst_of_large_gets_are_released_afterwards() {
    let server = start_kv_serve(&["--workers", "2"]);
    let addr = server.addr();
    let value = "v".repeat(60 * 1024);
    let mut setup = Conn::connect(addr);
    setup.roundtrip(format!("CREATE big\r\nPUT big k {value}\r\n").as_bytes(), b"OK\r\nOK\r\n");
    let before = rss_of(server.pid());
    let reply = format!("{value}\r\nOK\r\n");
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut conn = Conn::connect(addr);
        let got = conn.pipeline(b"GET big k\r\n".repeat(256), reply.len() * 256);
        assert!(got == reply.repeat(256).into_bytes(), "replies differ");
        idle.push(conn);
    }
    // Kept, the buffers of 20 connections held about 384 MiB here; released, about
    // 105 MiB stays with malloc's per-thread arenas. The last replies can reach the
    // client just before its server thread releases the buffers: poll.
    let limit = 200 * 1024 * 1024;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut grown = u64::MAX;
    while Instant::now() < deadline {
        grown = rss_of(server.pid()).saturating_sub(before);
        if grown < limit {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(grown < limit, "RSS grew by {} MiB for 20 idle connections", grown >> 20);
    setup.roundtrip(b"PING\r\n", b"PONG\r\n");
    drop(idle);
}
