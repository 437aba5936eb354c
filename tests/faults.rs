//! One node under faults (issue 13): a stop that must not lose replies, subscribers
//! that never read, idle connections after a burst, and a client trying to fill the
//! memory or one worker. Each test is named after what broke.
//!
//! Signals and memory read from /proc need the real binary as a child; the rest runs
//! an in-process server. Memory is asserted with generous margins; speed is never
//! asserted (benches/faults.py measures both).

mod common;

use kv::Config;

use common::{ChildServer, Conn, kv_serve, show, start_kv_serve, start_server_with, wait_until};

const OUT_OF_MEMORY: &[u8] = b"ERROR out of memory\r\n";

// ---------------------------------------------------------------------------------
// Item 8: no bound on data.

#[test]
fn puts_had_no_memory_limit_now_past_max_memory_writes_are_refused_and_reads_deletes_work() {
    const LIMIT: usize = 1024 * 1024;
    let server =
        start_server_with(Config { port: 0, workers: 2, max_memory: Some(LIMIT), ..Config::default() });
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"CREATE a\r\nCREATE b\r\n", b"OK\r\nOK\r\n");
    let value = "v".repeat(1000);
    let mut stored = 0;
    loop {
        assert!(stored < 10_000, "1,000 KB stored under a 1 MiB limit and still no refusal");
        let bucket = if stored % 2 == 0 { "a" } else { "b" };
        conn.send(format!("PUT {bucket} k{stored} {value}\r\n").as_bytes());
        let reply = conn.read_line();
        if reply == OUT_OF_MEMORY {
            break;
        }
        assert_eq!(show(&reply), "OK\\r\\n");
        stored += 1;
    }
    assert!(stored > 100, "only {stored} values of 1 KB fit in 1 MiB");
    let stats = conn.stats();
    let used = common::stat_of(&stats, "memory_used");
    assert_eq!(common::stat_of(&stats, "memory_limit"), LIMIT as u64);
    assert!(used <= LIMIT as u64 + 64 * 1024 && used > (stored as u64) * 1000, "memory_used {used}");
    // Writes are refused, and change nothing; reads and deletes still work.
    let long_name = "c".repeat(2000);
    conn.roundtrip(format!("CREATE {long_name}\r\n").as_bytes(), OUT_OF_MEMORY);
    conn.roundtrip(format!("GET {long_name} k\r\n").as_bytes(), b"NOT FOUND\r\n");
    conn.roundtrip(format!("PUT a fresh {value}\r\n").as_bytes(), OUT_OF_MEMORY);
    conn.roundtrip(b"GET a fresh\r\n", b"\r\nOK\r\n");
    conn.roundtrip(b"GET a k0\r\n", format!("{value}\r\nOK\r\n").as_bytes());
    conn.roundtrip(b"DROP a\r\n", b"OK\r\n");
    wait_until("memory_used falls after the DROP", || conn.stat("memory_used") < used / 2 + 64 * 1024);
    conn.roundtrip(b"CREATE c\r\n", b"OK\r\n");
    conn.roundtrip(format!("PUT c fresh {value}\r\n").as_bytes(), b"OK\r\n");
}

#[test]
fn without_max_memory_stats_say_the_limit_is_0_and_used_follows_the_data() {
    let server = start_server_with(Config { port: 0, workers: 1, ..Config::default() });
    let mut conn = Conn::connect(server.addr());
    assert_eq!(conn.stat("memory_limit"), 0);
    assert_eq!(conn.stat("memory_used"), 0);
    conn.roundtrip(format!("CREATE a\r\nPUT a k {}\r\n", "v".repeat(10_000)).as_bytes(), b"OK\r\nOK\r\n");
    assert!(conn.stat("memory_used") >= 10_000);
}

/// Which of two workers owns each of `names`, read from a child's STATS.
fn worker_of_each(server: &ChildServer, names: &[String]) -> Vec<u64> {
    let mut conn = Conn::connect(server.addr());
    let mut owners = Vec::new();
    for name in names {
        let before = conn.stat("worker.1.buckets");
        conn.roundtrip(format!("CREATE {name}\r\n").as_bytes(), b"OK\r\n");
        owners.push(conn.stat("worker.1.buckets") - before);
    }
    owners
}

/// Regression: the bucket-to-worker hash had a fixed seed, so a client could compute
/// names that all land on one worker, in every kv process.
#[test]
fn the_bucket_to_worker_hash_was_the_same_in_every_process_now_it_is_seeded_per_process() {
    let names: Vec<String> = (0..48).map(|i| format!("n{i}")).collect();
    let first = start_kv_serve(&["--workers", "2"]);
    let second = start_kv_serve(&["--workers", "2"]);
    let (a, b) = (worker_of_each(&first, &names), worker_of_each(&second, &names));
    // Both spread the names; the chance that two random seeds place 48 names alike
    // is 2^-48.
    assert!(a.contains(&0) && a.contains(&1), "{a:?}");
    assert_ne!(a, b, "two processes put 48 buckets on the same workers");
}

#[test]
fn max_memory_and_shutdown_grace_flags_are_checked() {
    for (flag, value, message) in [
        ("--max-memory", "lots", "expected a number of bytes"),
        ("--shutdown-grace", "0", "--shutdown-grace 0ns"),
    ] {
        let finished = common::run_to_end(kv_serve(&[flag, value]), b"");
        let stderr = String::from_utf8_lossy(&finished.stderr);
        assert_eq!(finished.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(message), "{flag} {value}: {stderr}");
    }
    let server = start_kv_serve(&["--max-memory", "64K"]);
    let mut conn = Conn::connect(server.addr());
    assert_eq!(conn.stat("memory_limit"), 64 * 1024);
    conn.roundtrip(format!("CREATE a\r\nPUT a k {}\r\n", "v".repeat(60_000)).as_bytes(), b"OK\r\nOK\r\n");
    conn.roundtrip(format!("PUT a j {}\r\n", "v".repeat(60_000)).as_bytes(), OUT_OF_MEMORY);
}
