//! Supervision, fault injection and graceful shutdown, seen from outside: crashed
//! workers come back with their data, no client's fault reaches another client, the
//! restart intensity ends the process when crashes come too fast (and only then), and
//! SIGTERM or SIGINT end it cleanly.
//!
//! Crashes are injected with the `--debug` commands (`DEBUG CRASH <bucket>`,
//! `DEBUG CRASH-CONNECTION`, `DEBUG CRASH-ACCEPTOR`). In-process servers cover what
//! clients see; the real binary, as a child process, covers exit statuses, signals
//! and the log. Workers are aimed at with `worker_for` (via `common::lib_paths`), so every test
//! knows which worker a crash hits whatever the machine's core count.
//!
//! Nothing here asserts on speed except the "exit within 5 s" after a signal;
//! the restart-time test prints its figures (run it with `--nocapture`).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kv::{Config, ServerHandle, StopReason};

use common::lib_paths::worker_for;
use common::{
    ChildServer, Conn, DEADLINE, assert_same_bytes, bucket_on, kv_serve, show, start_server_with,
    start_server_with_workers, stat_of, wait_until,
};

const CRASHED: &[u8] = b"ERROR worker crashed\r\n";
const SHUTTING_DOWN: &[u8] = b"ERROR shutting down\r\n";

/// An in-process server with the DEBUG commands on and room for `max_restarts`
/// crashes within the default window.
fn debug_server(workers: usize, max_restarts: u32) -> ServerHandle {
    start_server_with(Config { port: 0, workers, debug: true, max_restarts, ..Config::default() })
}

/// Waits until STATS reports `name` equal to `expected`. Restart counters move
/// just after the client sees `ERROR worker crashed` (the supervisor counts the
/// restart once it hears of the death), so they are waited for, not read once.
fn wait_for_stat(conn: &mut Conn, name: &str, expected: u64) {
    let mut last = None;
    wait_until(&format!("STATS {name} is {expected} (last seen {last:?})"), || {
        let value = conn.stat(name);
        last = Some(value);
        value == expected
    });
}

#[test]
fn ten_thousand_keys_survive_a_crash_of_every_worker_in_turn() {
    const WORKERS: usize = 4;
    const BUCKETS: usize = 100;
    const KEYS: usize = 10_000;
    let server = debug_server(WORKERS, 10);
    let mut conn = Conn::connect(server.addr());

    // Key i lives in bucket i % BUCKETS, so bucket b holds key b among others.
    let mut load = Vec::new();
    let mut acks = Vec::new();
    for b in 0..BUCKETS {
        load.extend_from_slice(format!("CREATE bucket{b}\r\n").as_bytes());
        acks.extend_from_slice(b"OK\r\n");
    }
    for i in 0..KEYS {
        load.extend_from_slice(format!("PUT bucket{} key{i} value{i}\r\n", i % BUCKETS).as_bytes());
        acks.extend_from_slice(b"OK\r\n");
    }
    let got = conn.pipeline(load, acks.len());
    assert_same_bytes(&got, &acks);
    assert_eq!(conn.stat("keys"), KEYS as u64);

    for w in 0..WORKERS {
        let b = (0..BUCKETS)
            .find(|b| worker_for(format!("bucket{b}").as_bytes(), WORKERS) == w)
            .unwrap_or_else(|| panic!("none of the {BUCKETS} buckets landed on worker {w}"));
        conn.roundtrip(format!("DEBUG CRASH bucket{b}\r\n").as_bytes(), CRASHED);
        // The replacement serves the very bucket the crash was aimed at.
        conn.roundtrip(
            format!("GET bucket{b} key{b}\r\n").as_bytes(),
            format!("value{b}\r\nOK\r\n").as_bytes(),
        );
    }

    let mut reads = Vec::new();
    let mut values = Vec::new();
    for i in 0..KEYS {
        reads.extend_from_slice(format!("GET bucket{} key{i}\r\n", i % BUCKETS).as_bytes());
        values.extend_from_slice(format!("value{i}\r\nOK\r\n").as_bytes());
    }
    let got = conn.pipeline(reads, values.len());
    assert_same_bytes(&got, &values);

    wait_for_stat(&mut conn, "worker_restarts", WORKERS as u64);
    let stats = conn.stats();
    for w in 0..WORKERS {
        assert_eq!(stat_of(&stats, &format!("worker.{w}.restarts")), 1, "worker {w}: {stats:?}");
    }
    assert_eq!(stat_of(&stats, "keys"), KEYS as u64);
    assert_eq!(stat_of(&stats, "buckets"), BUCKETS as u64);
    conn.roundtrip(b"PING\r\n", b"PONG\r\n");
}

/// What one concurrent writer saw.
struct Writer {
    conn: Conn,
    bucket: String,
    /// Key numbers whose PUT was answered `OK`.
    acked: Vec<usize>,
    /// Key numbers whose PUT was answered `ERROR worker crashed`.
    failed: Vec<usize>,
}

/// Sets a flag when dropped, so the writers stop even if the crashing thread fails.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Each concurrent writer writes at least this many keys, and goes on until the
/// crashes are over, so the crashes always fall in the middle of the writing.
const MIN_PUTS: usize = 100;
const MAX_PUTS: usize = 5_000;

/// Writer `c`: PUTs `k{i}` = `v{c}-{i}` into `bucket` one request at a time, at least
/// `MIN_PUTS` of them and then on until `stop` (at most `MAX_PUTS`), counting every
/// acknowledged PUT in `acked_total`. Any reply but `OK` or a crash fails the test.
fn write_until_stopped(
    addr: SocketAddr,
    c: usize,
    bucket: String,
    acked_total: &AtomicUsize,
    stop: &AtomicBool,
) -> Writer {
    let mut writer = Writer { conn: Conn::connect(addr), bucket, acked: Vec::new(), failed: Vec::new() };
    let deadline = Instant::now() + DEADLINE;
    for i in 0..MAX_PUTS {
        if i >= MIN_PUTS && stop.load(Ordering::SeqCst) {
            break;
        }
        assert!(Instant::now() < deadline, "writer {c} still writing after {DEADLINE:?}");
        writer.conn.send(format!("PUT {} k{i} v{c}-{i}\r\n", writer.bucket).as_bytes());
        let reply = writer.conn.read_line();
        if reply == b"OK\r\n" {
            writer.acked.push(i);
            acked_total.fetch_add(1, Ordering::SeqCst);
        } else if reply == CRASHED {
            writer.failed.push(i);
        } else {
            panic!("writer {c}: PUT k{i} got {}", show(&reply));
        }
    }
    writer
}

/// Crashes the worker that serves `target` `crashes` times, the n-th once the writers
/// have `n * step` PUTs acknowledged, then waits for `step` more so that the writing
/// goes on after the last crash.
fn crash_between_acknowledged_puts(
    crasher: &mut Conn,
    target: &str,
    crashes: usize,
    step: usize,
    acked_total: &AtomicUsize,
) {
    for n in 1..=crashes {
        wait_until(&format!("the writers have {} PUTs acknowledged", n * step), || {
            acked_total.load(Ordering::SeqCst) >= n * step
        });
        crasher.roundtrip(format!("DEBUG CRASH {target}\r\n").as_bytes(), CRASHED);
    }
    wait_until("the writers go on after the last crash", || {
        acked_total.load(Ordering::SeqCst) >= (crashes + 1) * step
    });
}

/// Checks writer `c` after the crashes: at most `crashes` PUTs failed, every
/// acknowledged PUT reads back with its value, every failed one is wholly there or
/// wholly absent, and the writer's own connection still serves. Returns the failures.
fn check_writer_lost_nothing_acknowledged(
    check: &mut Conn,
    c: usize,
    writer: &mut Writer,
    crashes: usize,
) -> usize {
    // At most the request in flight at each crash failed.
    assert!(
        writer.failed.len() <= crashes,
        "writer {c} saw {} failures: {:?}",
        writer.failed.len(),
        writer.failed
    );
    // Every acknowledged PUT reads back with its value, in one pipeline.
    let mut reads = Vec::new();
    let mut values = Vec::new();
    for &i in &writer.acked {
        reads.extend_from_slice(format!("GET {} k{i}\r\n", writer.bucket).as_bytes());
        values.extend_from_slice(format!("v{c}-{i}\r\nOK\r\n").as_bytes());
    }
    let got = check.pipeline(reads, values.len());
    assert_same_bytes(&got, &values);
    // A PUT that failed either happened or did not: nothing in between.
    for &i in &writer.failed {
        check.send(format!("GET {} k{i}\r\n", writer.bucket).as_bytes());
        let value = check.read_line();
        check.expect(b"OK\r\n");
        assert!(
            value == b"\r\n" || value == format!("v{c}-{i}\r\n").as_bytes(),
            "writer {c}: failed PUT k{i} left {}",
            show(&value)
        );
    }
    // The writer's own connection is still usable.
    let last = *writer.acked.last().expect("every writer had PUTs acknowledged");
    writer.conn.roundtrip(
        format!("GET {} k{last}\r\n", writer.bucket).as_bytes(),
        format!("v{c}-{last}\r\nOK\r\n").as_bytes(),
    );
    writer.conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    writer.failed.len()
}

#[test]
fn crashes_during_sixteen_concurrent_writers_lose_no_acknowledged_put() {
    const WORKERS: usize = 4;
    const CLIENTS: usize = 16;
    const CRASHES: usize = 3;
    /// Acknowledged PUTs (over all writers) between one crash and the next.
    const STEP: usize = CLIENTS * 20;
    let victim = 1;
    let server = debug_server(WORKERS, 10);
    let addr = server.addr();

    // Half the writers use buckets of the worker that crashes, so their requests
    // queue behind the crashes; the others are spread over every worker.
    let buckets: Vec<String> = (0..CLIENTS)
        .map(|c| {
            let w = if c % 2 == 0 { victim } else { (c / 2) % WORKERS };
            bucket_on(w, WORKERS, &format!("client{c}-"))
        })
        .collect();
    let mut setup = Conn::connect(addr);
    for bucket in &buckets {
        setup.roundtrip(format!("CREATE {bucket}\r\n").as_bytes(), b"OK\r\n");
    }

    let acked_total = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = buckets
        .iter()
        .enumerate()
        .map(|(c, bucket)| {
            let bucket = bucket.clone();
            let acked_total = acked_total.clone();
            let stop = stop.clone();
            thread::spawn(move || write_until_stopped(addr, c, bucket, &acked_total, &stop))
        })
        .collect();

    {
        let _stop_writers = SetOnDrop(stop.clone());
        let mut crasher = Conn::connect(addr);
        let target = bucket_on(victim, WORKERS, "crash-target-");
        crash_between_acknowledged_puts(&mut crasher, &target, CRASHES, STEP, &acked_total);
    }
    let mut writers: Vec<Writer> = writers.into_iter().map(|w| w.join().unwrap()).collect();

    let mut check = Conn::connect(addr);
    let mut failed_total = 0;
    for (c, writer) in writers.iter_mut().enumerate() {
        failed_total += check_writer_lost_nothing_acknowledged(&mut check, c, writer, CRASHES);
    }
    let acked: usize = writers.iter().map(|w| w.acked.len()).sum();
    eprintln!("{CLIENTS} writers: {acked} PUTs acknowledged, {failed_total} answered `ERROR worker crashed`");

    wait_for_stat(&mut check, "worker_restarts", CRASHES as u64);
    let stats = check.stats();
    for w in 0..WORKERS {
        let expected = if w == victim { CRASHES } else { 0 };
        assert_eq!(stat_of(&stats, &format!("worker.{w}.restarts")), expected as u64, "worker {w}");
    }
    let keys = stat_of(&stats, "keys") as usize;
    assert!((acked..=acked + failed_total).contains(&keys), "{keys} keys after {acked} acknowledged PUTs");
}

#[test]
fn pipeline_around_a_crash_is_answered_in_order_and_requests_after_it_are_applied() {
    let server = debug_server(2, 10);
    let a = bucket_on(0, 2, "a");
    let b = bucket_on(1, 2, "b");
    let mut conn = Conn::connect(server.addr());

    let mut requests = Vec::new();
    let mut expected = Vec::new();
    let mut push = |request: String, reply: &[u8]| {
        requests.extend_from_slice(request.as_bytes());
        requests.extend_from_slice(b"\r\n");
        expected.extend_from_slice(reply);
    };
    push(format!("CREATE {a}"), b"OK\r\n");
    push(format!("CREATE {b}"), b"OK\r\n");
    push(format!("PUT {a} k 1"), b"OK\r\n");
    push(format!("PUT {b} k 1"), b"OK\r\n");
    push(format!("GET {a} k"), b"1\r\nOK\r\n");
    push(format!("DEBUG CRASH {a}"), CRASHED);
    push(format!("PUT {a} k 2"), b"OK\r\n");
    push(format!("PUT {b} k 2"), b"OK\r\n");
    push(format!("GET {a} k"), b"2\r\nOK\r\n");
    push(format!("GET {b} k"), b"2\r\nOK\r\n");
    push(format!("DEBUG CRASH {b}"), CRASHED);
    // Worker 0's replacement is still finishing the batch its predecessor left: it
    // crashes too, and its own replacement takes over the rest.
    push(format!("DEBUG CRASH {a}"), CRASHED);
    push(format!("GET {a} k"), b"2\r\nOK\r\n");
    push(format!("DELETE {b} k"), b"OK\r\n");
    push(format!("GET {b} k"), b"\r\nOK\r\n");
    push("PING".to_string(), b"PONG\r\n");
    let got = conn.pipeline(requests, expected.len());
    assert_same_bytes(&got, &expected);

    // A longer tail after a crash, over several rounds of the connection.
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    requests.extend_from_slice(format!("DEBUG CRASH {a}\r\n").as_bytes());
    expected.extend_from_slice(CRASHED);
    for i in 0..600 {
        let bucket = if i % 3 == 0 { &b } else { &a };
        requests.extend_from_slice(format!("PUT {bucket} n{i} {i}\r\n").as_bytes());
        expected.extend_from_slice(b"OK\r\n");
    }
    for i in 0..600 {
        let bucket = if i % 3 == 0 { &b } else { &a };
        requests.extend_from_slice(format!("GET {bucket} n{i}\r\n").as_bytes());
        expected.extend_from_slice(format!("{i}\r\nOK\r\n").as_bytes());
    }
    let got = conn.pipeline(requests, expected.len());
    assert_same_bytes(&got, &expected);

    wait_for_stat(&mut conn, "worker_restarts", 4);
    let stats = conn.stats();
    assert_eq!(stat_of(&stats, "worker.0.restarts"), 3);
    assert_eq!(stat_of(&stats, "worker.1.restarts"), 1);
    conn.roundtrip(format!("GET {a} k\r\n").as_bytes(), b"2\r\nOK\r\n");
}

#[test]
fn in_process_server_gives_up_past_max_restarts_and_answers_what_the_dead_worker_held() {
    let server = debug_server(2, 0);
    let addr = server.addr();
    let a = bucket_on(0, 2, "a");
    let (reason_tx, reason_rx) = mpsc::channel();
    let waiting = thread::spawn(move || {
        let _ = reason_tx.send(server.wait());
    });
    let mut conn = Conn::connect(addr);
    // One small write, so one batch: the requests behind the fatal crash have no
    // worker left to serve them and must still be answered.
    let requests = format!("CREATE {a}\r\nPUT {a} k v\r\nDEBUG CRASH {a}\r\nGET {a} k\r\nPUT {a} k w\r\n");
    let expected = [&b"OK\r\nOK\r\n"[..], CRASHED, CRASHED, CRASHED].concat();
    let got = conn.pipeline(requests.into_bytes(), expected.len());
    assert_same_bytes(&got, &expected);
    let reason =
        reason_rx.recv_timeout(DEADLINE).expect("ServerHandle::wait() returns once the supervisor gives up");
    match reason {
        StopReason::GaveUp(why) => assert!(why.contains("worker 0"), "give-up reason: {why}"),
        other => panic!("expected GaveUp, got {other:?}"),
    }
    waiting.join().unwrap();
    assert_eq!(show(&conn.read_to_close()), "");
}

/// After the supervisor gives up, a dead worker's inbox still takes batches until
/// shutdown closes it. Regression: nothing served them, so such a client got no
/// reply, and shutdown waited out its whole grace period for that connection.
#[test]
fn after_giving_up_a_request_for_the_dead_worker_gets_an_error_not_silence() {
    let server = debug_server(2, 0);
    let addr = server.addr();
    let a = bucket_on(0, 2, "a");
    let mut conn = Conn::connect(addr);
    conn.roundtrip(format!("DEBUG CRASH {a}\r\n").as_bytes(), CRASHED);
    wait_until("the supervisor gives up", || server.gave_up().is_some());
    let mut late = Conn::connect(addr);
    late.roundtrip(format!("GET {a} k\r\n").as_bytes(), CRASHED);
    // The other worker still serves until shutdown.
    let b = bucket_on(1, 2, "b");
    late.roundtrip(format!("CREATE {b}\r\n").as_bytes(), b"OK\r\n");
    let started = Instant::now();
    server.shutdown();
    let (got, _) = late.read_until_gone();
    assert_eq!(show(&got), "", "after {:?}", started.elapsed());
}

/// Regression: `gave_up()` took the supervisor's stop message off the channel, so a
/// later `wait()` blocked forever.
#[test]
fn gave_up_leaves_the_stop_for_wait() {
    let server = debug_server(2, 0);
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(format!("DEBUG CRASH {}\r\n", bucket_on(0, 2, "a")).as_bytes(), CRASHED);
    wait_until("the supervisor gives up", || server.gave_up().is_some());
    assert!(server.gave_up().is_some(), "asking twice gives the same answer");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(server.wait());
    });
    let reason = done_rx.recv_timeout(common::DEADLINE).expect("wait() returns after gave_up()");
    assert!(matches!(reason, kv::StopReason::GaveUp(_)), "{reason:?}");
}

/// Regression: `DEBUG CRASH-CONNECTION` after other requests in one read killed the
/// connection before their replies were written.
#[test]
fn debug_crash_connection_in_a_pipeline_answers_the_requests_before_it() {
    let server = debug_server(2, 3);
    let mut conn = Conn::connect(server.addr());
    conn.send(b"CREATE p\r\nPUT p k 1\r\nDEBUG CRASH-CONNECTION\r\nPUT p k 2\r\n");
    common::assert_same_bytes(&conn.read_to_close(), b"OK\r\nOK\r\n");
    Conn::connect(server.addr()).roundtrip(b"GET p k\r\n", b"1\r\nOK\r\n");
}

#[test]
fn kv_serve_exits_with_status_1_at_the_fourth_crash_within_the_window() {
    // Default restart intensity: 3 restarts within 5 s.
    let mut server = ChildServer::start(kv_serve(&["--debug", "--workers", "2"]));
    let mut conn = Conn::connect(server.addr());
    let target = bucket_on(0, 2, "t");
    for n in 1..=3 {
        conn.roundtrip(format!("DEBUG CRASH {target}\r\n").as_bytes(), CRASHED);
        wait_for_stat(&mut conn, "worker_restarts", n);
    }
    conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    assert!(server.exited().is_none(), "three crashes are within the intensity");

    conn.roundtrip(format!("DEBUG CRASH {target}\r\n").as_bytes(), CRASHED);
    let status = server.wait_for_exit(DEADLINE).unwrap_or_else(|| {
        panic!("kv still running after a fourth crash; log:\n{}", server.log_text());
    });
    assert_eq!(status.code(), Some(1), "{status:?}; log:\n{}", server.log_text());
    assert_eq!(show(&conn.read_to_close()), "");
    wait_until("the log says the supervisor gave up", || !server.log_lines_with("giving up").is_empty());
}

#[test]
fn kv_serve_keeps_serving_when_crashes_are_spread_beyond_the_window() {
    const WINDOW: Duration = Duration::from_secs(1);
    let mut server = ChildServer::start(kv_serve(&[
        "--debug",
        "--workers",
        "2",
        "--max-restarts",
        "1",
        "--max-seconds",
        "1",
    ]));
    let mut conn = Conn::connect(server.addr());
    let target = bucket_on(0, 2, "t");
    conn.roundtrip(format!("CREATE {target}\r\nPUT {target} k v\r\n").as_bytes(), b"OK\r\nOK\r\n");
    // One crash per window is allowed; three crashes, each more than a window after
    // the supervisor counted the one before, never exceed it.
    for n in 1..=3 {
        conn.roundtrip(format!("DEBUG CRASH {target}\r\n").as_bytes(), CRASHED);
        wait_for_stat(&mut conn, "worker_restarts", n);
        let counted = Instant::now();
        conn.roundtrip(format!("GET {target} k\r\n").as_bytes(), b"v\r\nOK\r\n");
        if n < 3 {
            wait_until("a window has passed, still serving", || {
                conn.roundtrip(b"PING\r\n", b"PONG\r\n");
                counted.elapsed() > WINDOW + WINDOW / 5
            });
        }
    }
    assert!(server.exited().is_none(), "kv exited; log:\n{}", server.log_text());
    conn.roundtrip(b"PING\r\n", b"PONG\r\n");

    // The same settings do give up when two crashes fall into one window: two crash
    // lines in one write reach the worker microseconds apart.
    conn.send(format!("DEBUG CRASH {target}\r\nDEBUG CRASH {target}\r\n").as_bytes());
    conn.expect(&[CRASHED, CRASHED].concat());
    let status = server.wait_for_exit(DEADLINE).expect("kv gives up at two crashes within one window");
    assert_eq!(status.code(), Some(1));
}

#[test]
fn connection_thread_panic_closes_that_connection_only() {
    let server = debug_server(2, 3);
    let addr = server.addr();
    let mut others: Vec<Conn> = (0..3).map(|_| Conn::connect(addr)).collect();
    others[0].roundtrip(b"CREATE b\r\nPUT b k v\r\n", b"OK\r\nOK\r\n");
    for conn in &mut others {
        conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    }
    let mut doomed = Conn::connect(addr);
    doomed.roundtrip(b"GET b k\r\n", b"v\r\nOK\r\n");
    assert_eq!(others[0].stat("connections"), 4);

    doomed.send(b"DEBUG CRASH-CONNECTION\r\n");
    assert_eq!(show(&doomed.read_to_close()), "", "the crashed connection closes without a reply");

    for conn in &mut others {
        conn.roundtrip(b"GET b k\r\n", b"v\r\nOK\r\n");
    }
    let mut fresh = Conn::connect(addr);
    fresh.roundtrip(b"PUT b k w\r\nGET b k\r\n", b"OK\r\nw\r\nOK\r\n");
    wait_for_stat(&mut others[0], "connections", 4);
    assert_eq!(others[1].stat("worker_restarts"), 0, "a connection crash is not a worker crash");
}

#[test]
fn acceptor_panic_is_restarted_and_new_connections_are_accepted() {
    let server = debug_server(2, 3);
    let addr = server.addr();
    let mut conn = Conn::connect(addr);
    let mut fresh = Vec::new();
    for round in 0..2 {
        conn.roundtrip(b"DEBUG CRASH-ACCEPTOR\r\n", b"OK\r\n");
        let mut next = Conn::connect(addr);
        next.roundtrip(format!("CREATE r{round}\r\nPING\r\n").as_bytes(), b"OK\r\nPONG\r\n");
        fresh.push(next);
        conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    }
    for c in &mut fresh {
        c.roundtrip(b"PING\r\n", b"PONG\r\n");
    }
    // The connections the acceptor crashed on were its own wake-ups, never clients.
    wait_for_stat(&mut conn, "connections", 3);
    assert_eq!(conn.stat("worker_restarts"), 0);
}

#[test]
fn debug_commands_without_debug_are_unknown_commands_and_change_nothing() {
    let server = start_server_with_workers(2);
    let addr = server.addr();
    let mut conn = Conn::connect(addr);
    conn.roundtrip(b"CREATE x\r\nPUT x k v\r\n", b"OK\r\nOK\r\n");
    for line in [
        &b"DEBUG CRASH x\r\n"[..],
        b"debug crash x\r\n",
        b"DEBUG CRASH never-created\r\n",
        b"DEBUG CRASH-CONNECTION\r\n",
        b"DEBUG CRASH-ACCEPTOR\r\n",
    ] {
        conn.roundtrip(line, b"UNKNOWN COMMAND\r\n");
    }
    conn.roundtrip(b"GET x k\r\n", b"v\r\nOK\r\n");
    let mut fresh = Conn::connect(addr);
    fresh.roundtrip(b"GET x k\r\n", b"v\r\nOK\r\n");
    let stats = conn.stats();
    assert_eq!(stat_of(&stats, "worker_restarts"), 0);
    assert_eq!(stat_of(&stats, "connections"), 2);
}

#[test]
fn kv_serve_without_debug_answers_debug_crash_with_unknown_command() {
    let mut server = ChildServer::start(kv_serve(&["--workers", "2"]));
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"CREATE x\r\n", b"OK\r\n");
    for _ in 0..5 {
        conn.roundtrip(b"DEBUG CRASH x\r\n", b"UNKNOWN COMMAND\r\n");
    }
    conn.roundtrip(
        b"DEBUG CRASH-CONNECTION\r\nDEBUG CRASH-ACCEPTOR\r\n",
        b"UNKNOWN COMMAND\r\nUNKNOWN COMMAND\r\n",
    );
    let mut fresh = Conn::connect(server.addr());
    fresh.roundtrip(b"PING\r\n", b"PONG\r\n");
    assert_eq!(conn.stat("worker_restarts"), 0);
    assert!(server.exited().is_none());
}

#[test]
fn malformed_debug_lines_with_debug_are_unknown_commands() {
    let server = debug_server(2, 0);
    let mut conn = Conn::connect(server.addr());
    for line in [
        &b"DEBUG\r\n"[..],
        b"DEBUG CRASH\r\n",
        b"DEBUG CRASH a b\r\n",
        b"DEBUG CRASHX a\r\n",
        b"DEBUG FOO\r\n",
        b"DEBUG CRASH-CONNECTION now\r\n",
        b"DEBUG CRASH-ACCEPTOR now\r\n",
        b"CRASH a\r\n",
    ] {
        conn.roundtrip(line, b"UNKNOWN COMMAND\r\n");
    }
    // With max_restarts 0 a single crash would have ended the server.
    assert!(server.gave_up().is_none());
    assert_eq!(conn.stat("worker_restarts"), 0);
    conn.roundtrip(b"PING\r\n", b"PONG\r\n");
}

/// Starts the binary, connects 50 clients that then sit idle, sends `signal`, and
/// checks the process exits 0 within 5 s and every idle client sees a close.
fn signal_with_idle_clients_exits_zero(signal: libc::c_int, name: &str) {
    const IDLE: usize = 50;
    let mut server = ChildServer::start(kv_serve(&["--workers", "2"]));
    let addr = server.addr();
    let mut idle: Vec<Conn> = (0..IDLE).map(|_| Conn::connect(addr)).collect();
    for conn in &mut idle {
        conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    }
    let sent = Instant::now();
    server.signal(signal);
    let status = server.wait_for_exit(DEADLINE).unwrap_or_else(|| {
        panic!("kv still running {DEADLINE:?} after {name}; log:\n{}", server.log_text());
    });
    let took = sent.elapsed();
    eprintln!("{name} with {IDLE} idle clients: exit status {status:?} after {took:?}");
    assert_eq!(status.code(), Some(0), "{status:?}; log:\n{}", server.log_text());
    assert!(took < Duration::from_secs(5), "exit took {took:?} after {name}");
    for conn in &mut idle {
        let rest = conn.read_to_close();
        assert!(rest.is_empty() || rest == SHUTTING_DOWN, "an idle client got {}", show(&rest));
    }
    assert!(!server.log_lines_with(&format!("{name} received")).is_empty(), "log:\n{}", server.log_text());
}

#[test]
fn sigterm_with_fifty_idle_clients_exits_zero_within_five_seconds() {
    signal_with_idle_clients_exits_zero(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_with_fifty_idle_clients_exits_zero_within_five_seconds() {
    signal_with_idle_clients_exits_zero(libc::SIGINT, "SIGINT");
}

#[test]
fn sigterm_with_a_client_that_never_reads_its_replies_still_exits_zero() {
    const GETS: usize = 400;
    let mut server = ChildServer::start(kv_serve(&["--workers", "2", "--shutdown-grace", "2"]));
    let mut stuck = Conn::connect(server.addr());
    let big = "x".repeat(60_000);
    stuck.roundtrip(format!("CREATE b\r\nPUT b k {big}\r\n").as_bytes(), b"OK\r\nOK\r\n");
    // About 24 MB of replies that this client never reads: more than the socket
    // buffers hold, so its connection thread ends up blocked writing.
    stuck.send("GET b k\r\n".repeat(GETS).as_bytes());
    let mut idle = Conn::connect(server.addr());
    idle.roundtrip(b"PING\r\n", b"PONG\r\n");
    let sent = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_for_exit(DEADLINE).unwrap_or_else(|| {
        panic!("kv still running after SIGTERM; log:\n{}", server.log_text());
    });
    eprintln!("SIGTERM with a client that never reads: exit status {status:?} after {:?}", sent.elapsed());
    assert_eq!(status.code(), Some(0), "{status:?}; log:\n{}", server.log_text());
    let rest = idle.read_to_close();
    assert!(rest.is_empty() || rest == SHUTTING_DOWN, "the idle client got {}", show(&rest));
    // The stuck client gets whole replies up to where the server gave up on it.
    let (got, _) = stuck.read_until_gone();
    let reply = format!("{big}\r\nOK\r\n");
    assert!(got.len() < GETS * reply.len(), "all {GETS} replies arrived: the client was never stuck");
    let whole = got.len() / reply.len();
    assert_same_bytes(&got[..whole * reply.len()], reply.repeat(whole).as_bytes());
}

/// Checks the replies a client got to `sent` pipelined PUTs around a shutdown:
/// `OK`s, then possibly `ERROR shutting down`s, never an `OK` after one, and nothing
/// else. A connection that ended with a reset may have lost its tail, even part of a
/// reply. Returns how many of each came.
fn check_replies_around_shutdown(got: &[u8], sent: usize, reset: bool) -> (usize, usize) {
    let mut rest = got;
    let (mut ok, mut refused) = (0, 0);
    while !rest.is_empty() {
        if let Some(tail) = rest.strip_prefix(b"OK\r\n") {
            assert_eq!(refused, 0, "OK after ERROR shutting down, at reply {}", ok + refused);
            ok += 1;
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix(SHUTTING_DOWN) {
            refused += 1;
            rest = tail;
        } else {
            let partial = b"OK\r\n".starts_with(rest) || SHUTTING_DOWN.starts_with(rest);
            assert!(reset && partial, "unexpected reply {} at reply {}", show(rest), ok + refused);
            break;
        }
    }
    assert!(ok + refused <= sent, "{} replies to {sent} requests", ok + refused);
    (ok, refused)
}

#[test]
fn sigterm_answers_a_pipeline_sent_just_before_it_and_closes_idle_clients() {
    const PUTS: usize = 20_000;
    let mut server = ChildServer::start(kv_serve(&["--workers", "2"]));
    let addr: SocketAddr = server.addr();
    let mut idle: Vec<Conn> = (0..5).map(|_| Conn::connect(addr)).collect();
    for conn in &mut idle {
        conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    }
    let mut busy = Conn::connect(addr);
    busy.roundtrip(b"CREATE p\r\n", b"OK\r\n");
    let mut requests = Vec::new();
    for i in 0..PUTS {
        requests.extend_from_slice(format!("PUT p k{i} v{i}\r\n").as_bytes());
    }
    let mut writer = busy.try_clone_stream();
    let reader = thread::spawn(move || busy.read_until_gone());
    // The signal goes out once half the pipeline is written, while the rest is on
    // its way; the server may by then have answered all, some or none of it.
    let (half_tx, half_rx) = mpsc::channel();
    let writing = thread::spawn(move || {
        let (first, second) = requests.split_at(requests.len() / 2);
        let first_ok = writer.write_all(first).is_ok();
        let _ = half_tx.send(());
        // Once the server closes, the rest may fail to go out: that is allowed.
        first_ok && writer.write_all(second).is_ok()
    });
    half_rx.recv_timeout(DEADLINE).expect("half the pipeline written");
    server.signal(libc::SIGTERM);
    let status = server.wait_for_exit(DEADLINE).unwrap_or_else(|| {
        panic!("kv still running after SIGTERM; log:\n{}", server.log_text());
    });
    assert_eq!(status.code(), Some(0), "{status:?}; log:\n{}", server.log_text());
    let wrote_all = writing.join().unwrap();
    let (got, reset) = reader.join().unwrap();
    let (ok, refused) = check_replies_around_shutdown(&got, PUTS, reset);
    eprintln!(
        "SIGTERM mid-pipeline: {ok} OK, {refused} `ERROR shutting down`, {} unanswered of {PUTS} \
         (whole pipeline written: {wrote_all}, ended by reset: {reset})",
        PUTS - ok - refused
    );
    for conn in &mut idle {
        let rest = conn.read_to_close();
        assert!(rest.is_empty() || rest == SHUTTING_DOWN, "an idle client got {}", show(&rest));
    }
}

/// Parses a `Duration`'s `Debug` text as the server logs it (`12.3µs`, `1.2ms`, ...).
fn parse_logged_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let nanos = match unit {
        "ns" => number,
        "µs" => number * 1e3,
        "ms" => number * 1e6,
        "s" => number * 1e9,
        _ => return None,
    };
    Some(Duration::from_nanos(nanos as u64))
}

/// Minimum, median and maximum of `times`, for printing.
fn summary(times: &mut [Duration]) -> String {
    times.sort_unstable();
    let at = |q: usize| times[(times.len() - 1) * q / 100];
    format!("min {:?}, median {:?}, max {:?} (n = {})", at(0), at(50), at(100), times.len())
}

/// Not a speed assertion: restarts are checked for correctness, and the time a
/// client waits for a restarted worker is printed. See the figures with
/// `cargo test --release --test supervision restart_times -- --nocapture`.
#[test]
fn restart_times_as_a_client_sees_them_and_as_the_log_reports_them() {
    const ROUNDS: usize = 20;
    let mut server = ChildServer::start(kv_serve(&[
        "--debug",
        "--workers",
        "2",
        "--max-restarts",
        "1000",
        "--max-seconds",
        "1",
    ]));
    let mut conn = Conn::connect(server.addr());
    // The child's bucket-to-worker hash is seeded in that process: STATS says which
    // worker took the bucket.
    let t = "t";
    let on_worker_1 = conn.stat("worker.1.buckets");
    conn.roundtrip(format!("CREATE {t}\r\nPUT {t} k v\r\n").as_bytes(), b"OK\r\nOK\r\n");
    let w = conn.stat("worker.1.buckets") - on_worker_1;
    let crash = format!("DEBUG CRASH {t}\r\n");
    let get = format!("GET {t} k\r\n");
    let both = format!("{crash}{get}");
    let mut plain_get = Vec::new();
    let mut crash_then_get = Vec::new();
    let mut crash_and_get_pipelined = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        conn.roundtrip(get.as_bytes(), b"v\r\nOK\r\n");
        plain_get.push(start.elapsed());

        // The GET goes out as soon as the crash is answered, so it usually waits in
        // the inbox for the replacement.
        let start = Instant::now();
        conn.roundtrip(crash.as_bytes(), CRASHED);
        conn.roundtrip(get.as_bytes(), b"v\r\nOK\r\n");
        crash_then_get.push(start.elapsed());

        // The GET travels in the crashed batch: the replacement finishes it.
        let start = Instant::now();
        conn.roundtrip(both.as_bytes(), &[CRASHED, b"v\r\nOK\r\n"].concat());
        crash_and_get_pipelined.push(start.elapsed());
    }
    wait_for_stat(&mut conn, &format!("worker.{w}.restarts"), 2 * ROUNDS as u64);
    assert!(server.exited().is_none());
    let mut logged = Vec::new();
    wait_until("the log has a `restarted in` line per crash", || {
        logged = server.log_lines_with(&format!("worker {w} restarted in "));
        logged.len() == 2 * ROUNDS
    });
    let mut logged_times: Vec<Duration> = logged
        .iter()
        .map(|line| {
            let text = line.rsplit("restarted in ").next().unwrap_or("").trim();
            parse_logged_duration(text).unwrap_or_else(|| panic!("cannot read the time in {line:?}"))
        })
        .collect();
    eprintln!("log, first restart: {}", logged[0]);
    eprintln!("GET without a crash:                  {}", summary(&mut plain_get));
    eprintln!("DEBUG CRASH, then GET answered:       {}", summary(&mut crash_then_get));
    eprintln!("DEBUG CRASH + GET in one write:       {}", summary(&mut crash_and_get_pipelined));
    eprintln!("supervisor's `worker 0 restarted in`: {}", summary(&mut logged_times));
}
