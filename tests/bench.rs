//! `kv bench` end to end: the real binary against a real server over loopback TCP.
//!
//! One test shows a clean run is clean (work done, nothing wrong); another that the
//! verification can fail, against a fake server that answers every GET wrongly; one
//! that `--proto redis` runs clean against kv's RESP door, strings and hashes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use kv::Config;

use common::{Conn, kv_binary, run_to_end_within, start_server_with};

/// Runs `kv bench` with `args`; returns whether it exited 0 and its stdout and stderr.
/// Every run here passes `--duration 30`, so 60 s is ample before the run is killed.
fn kv_bench(args: &[&str]) -> (bool, String, String) {
    let mut command = kv_binary();
    command.arg("bench").args(args);
    let finished = run_to_end_within(command, b"", Duration::from_secs(60));
    (
        finished.status.success(),
        String::from_utf8(finished.stdout).expect("kv bench prints text"),
        String::from_utf8(finished.stderr).expect("kv bench logs text"),
    )
}

/// The number after `"name":` in a one-line JSON summary.
fn field(json: &str, name: &str) -> f64 {
    let key = format!("\"{name}\":");
    let start = json.find(&key).unwrap_or_else(|| panic!("no {name} in {json}")) + key.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].parse().unwrap()
}

#[test]
fn bench_against_kv_does_work_and_finds_no_mismatch() {
    let server = start_server_with(Config { port: 0, workers: 2, ..Config::default() });
    let addr = server.addr().to_string();
    let (ok, stdout, stderr) = kv_bench(&[
        "--addr",
        &addr,
        "--requests",
        "4000",
        "--conns",
        "3",
        "--pipeline",
        "5",
        "--keys",
        "50",
        "--buckets",
        "4",
        "--duration",
        "30",
        "--json",
    ]);
    assert!(ok, "kv bench failed: {stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(field(&stdout, "ops"), 4000.0);
    assert_eq!(field(&stdout, "gets") + field(&stdout, "sets"), 4000.0);
    assert!(field(&stdout, "ops_per_sec") > 0.0);
    assert_eq!(field(&stdout, "mismatches"), 0.0);
    assert_eq!(field(&stdout, "errors"), 0.0);
    // 50 keys and about 2000 GETs: most GETs find a value written by this run.
    assert!(field(&stdout, "hits") > 1000.0, "{stdout}");
    assert!(field(&stdout, "p99_us") >= field(&stdout, "p50_us"));
    // The buckets exist and hold the keys written.
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"CREATE b3\r\n", b"OK\r\n");
    let keys = conn.stat("keys");
    assert!(keys > 0 && keys <= 50, "{keys}");
}

#[test]
fn bench_counts_wrong_values_as_mismatches() {
    // A server that acknowledges every write and answers every GET with "x".
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = std::thread::spawn(move || {
        // kv bench makes one connection for CREATE, then one per --conns.
        for _ in 0..2 {
            let (stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            for _ in 0..10_000 {
                line.clear();
                if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                    break;
                }
                let reply: &[u8] = if line.starts_with(b"GET ") { b"x\r\nOK\r\n" } else { b"OK\r\n" };
                if writer.write_all(reply).is_err() {
                    break;
                }
            }
        }
    });
    let (ok, stdout, stderr) = kv_bench(&[
        "--addr",
        &addr,
        "--requests",
        "200",
        "--conns",
        "1",
        "--keys",
        "5",
        "--buckets",
        "1",
        "--duration",
        "30",
        "--json",
    ]);
    fake.join().unwrap();
    assert!(!ok, "a run with mismatches must fail");
    assert!(field(&stdout, "mismatches") > 0.0, "{stdout}");
    assert_eq!(field(&stdout, "hits"), 0.0);
    assert!(stderr.contains("mismatch: key:0000000"), "{stderr}");
    assert!(stderr.contains("got x"), "{stderr}");
}

#[test]
fn bench_gives_up_on_a_reply_that_never_ends() {
    // A server that answers CREATE, then streams bytes without ever ending a line.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = std::thread::spawn(move || {
        let (create, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(create.try_clone().unwrap());
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).unwrap();
        (&create).write_all(b"OK\r\n").unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let chunk = [b'x'; 16 * 1024];
        // Stops when the bench closes the connection, or after 16 MiB at most.
        for _ in 0..1024 {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let (ok, stdout, stderr) = kv_bench(&[
        "--addr",
        &addr,
        "--requests",
        "1",
        "--conns",
        "1",
        "--buckets",
        "1",
        "--duration",
        "30",
        "--json",
    ]);
    fake.join().unwrap();
    assert!(!ok);
    assert_eq!(field(&stdout, "errors"), 1.0, "{stdout}");
    assert!(stderr.contains("a reply longer than 65536 bytes"), "{stderr}");
}

#[test]
fn bench_verified_counts_only_the_measured_phase() {
    // Half a second of warm-up does GETs too; the verified GETs must be the measured ones.
    let server =
        kv::Server::bind(kv::Config { port: 0, workers: 2, ..Default::default() }).unwrap().spawn().unwrap();
    let addr = server.addr().to_string();
    let (ok, stdout, stderr) = kv_bench(&[
        "--addr",
        &addr,
        "--conns",
        "2",
        "--keys",
        "50",
        "--buckets",
        "2",
        "--warmup",
        "0.5",
        "--duration",
        "0.5",
        "--json",
    ]);
    assert!(ok, "kv bench failed: {stdout}{stderr}");
    let verified = field(&stdout, "hits")
        + field(&stdout, "misses")
        + field(&stdout, "stale")
        + field(&stdout, "mismatches");
    assert!(field(&stdout, "gets") > 0.0, "{stdout}");
    assert_eq!(verified, field(&stdout, "gets"), "{stdout}");
}

#[test]
fn bench_explains_stale_in_its_help_and_summary() {
    let (ok, stdout, _) = kv_bench(&["--help"]);
    assert!(ok);
    let help = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("stale: it found another value"), "{help}");
    let server =
        kv::Server::bind(kv::Config { port: 0, workers: 1, ..Default::default() }).unwrap().spawn().unwrap();
    let addr = server.addr().to_string();
    let (ok, stdout, stderr) =
        kv_bench(&["--addr", &addr, "--conns", "1", "--requests", "100", "--keys", "10", "--buckets", "1"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("verified    "), "{stdout}");
    assert!(stdout.contains("stale: a GET sent before any write of its key by this run"), "{stdout}");
}

#[test]
fn bench_speaks_resp_to_the_resp_door_strings_and_hashes() {
    let server = start_server_with(Config { port: 0, resp_port: Some(0), workers: 2, ..Config::default() });
    let resp = server.resp_addr().expect("the RESP door is open").to_string();
    let mut conn = Conn::connect(server.addr());
    let mut keys_before = conn.stat("keys");
    // SET/GET: the strings bucket; then HSET/HGET on 4 buckets, which HSET creates.
    for extra in [&[][..], &["--hash", "--buckets", "4"][..]] {
        let mut args = vec![
            "--addr",
            &resp,
            "--proto",
            "redis",
            "--requests",
            "2000",
            "--conns",
            "2",
            "--pipeline",
            "8",
            "--keys",
            "40",
            "--duration",
            "30",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = kv_bench(&args);
        assert!(ok, "kv bench {args:?} failed: {stdout}{stderr}");
        assert_eq!(field(&stdout, "ops"), 2000.0, "{stdout}");
        assert_eq!(field(&stdout, "errors"), 0.0, "{stdout}");
        assert_eq!(field(&stdout, "mismatches"), 0.0, "{stdout}");
        // 40 keys and about 1000 GETs: most find a value this run wrote.
        assert!(field(&stdout, "hits") > 500.0, "{stdout}");
        // The text door sees what the RESP door stored.
        let keys = conn.stat("keys");
        assert!(keys > keys_before && keys <= keys_before + 40, "{keys_before} -> {keys}");
        keys_before = keys;
    }
}

#[test]
fn bench_signs_in_with_a_password_file_at_both_doors_and_stops_when_refused() {
    use std::os::unix::fs::PermissionsExt;
    let password = Some(kv::auth::Secret::new(b"hunter2"));
    let server =
        start_server_with(Config { port: 0, resp_port: Some(0), workers: 2, password, ..Config::default() });
    let file = |tag: &str, secret: &str| {
        let file = common::temp::TempFile::new(tag, &format!("{secret}\n"));
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        file
    };
    let (right, wrong) = (file("bench-password", "hunter2"), file("bench-wrong", "hunter3"));
    let text = server.addr().to_string();
    let resp = server.resp_addr().expect("the RESP door is open").to_string();
    for (addr, proto) in [(&text, "kv"), (&resp, "redis")] {
        let run = |password: &common::temp::TempFile| {
            let path = password.path().to_str().unwrap();
            kv_bench(&[
                "--addr",
                addr,
                "--proto",
                proto,
                "--password-file",
                path,
                "--requests",
                "400",
                "--conns",
                "2",
                "--keys",
                "20",
                "--duration",
                "30",
                "--json",
            ])
        };
        let (ok, stdout, stderr) = run(&right);
        assert!(ok, "kv bench --proto {proto} failed: {stdout}{stderr}");
        assert_eq!(field(&stdout, "ops"), 400.0, "{stdout}");
        assert_eq!(field(&stdout, "errors"), 0.0, "{stdout}");
        let (ok, stdout, stderr) = run(&wrong);
        assert!(!ok, "a refused AUTH stops the run: {stdout}");
        assert!(stderr.contains("invalid password"), "--proto {proto}: {stderr}");
    }
}
