//! The `kv` binary's own behaviour, one regression test per fix of the binary side:
//! exit statuses and messages a person can see, `serve` as the default command,
//! `--version`, `kv cli`'s exit status and SUBSCRIBE streams, and `kv top`.
//!
//! The real binary runs as a child process against servers on 127.0.0.1 (in this
//! process, or as a child on port 0); every wait is on a condition with a deadline.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::thread;

use common::{ChildServer, Finished, free_port, kv_binary, run_to_end, show, start_server, wait_until};
use kv::Client;

/// `kv` with `args`, run to its end with no input.
fn kv(args: &[&str]) -> Finished {
    let mut command = kv_binary();
    command.args(args);
    run_to_end(command, b"")
}

fn stdout(finished: &Finished) -> String {
    String::from_utf8_lossy(&finished.stdout).into_owned()
}

fn stderr(finished: &Finished) -> String {
    String::from_utf8_lossy(&finished.stderr).into_owned()
}

fn client(addr: &str) -> Client {
    let client = Client::connect(addr).unwrap();
    client.set_timeout(Some(common::DEADLINE)).unwrap();
    client
}

#[test]
fn runtime_errors_reach_stderr_even_with_rust_log_off() {
    // A configuration error: status 2, and the reason on stderr although logging is off.
    let mut command = kv_binary();
    command.env("RUST_LOG", "off").args(["serve", "--port", "0", "--workers", "0"]);
    let finished = run_to_end(command, b"");
    assert_eq!(finished.status.code(), Some(2), "{}", stderr(&finished));
    assert!(stderr(&finished).contains("kv: --workers must be at least 1"), "{}", stderr(&finished));

    // A runtime failure: the port is taken. Status 1, and the reason on stderr.
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut command = kv_binary();
    command.env("RUST_LOG", "off").args(["serve", "--port", &port]);
    let finished = run_to_end(command, b"");
    assert_eq!(finished.status.code(), Some(1), "{}", stderr(&finished));
    assert!(
        stderr(&finished).contains(&format!("kv: cannot start on 127.0.0.1:{port}")),
        "{}",
        stderr(&finished)
    );
}

#[test]
fn bad_usage_and_bad_configuration_exit_with_status_2() {
    let cluster_file = std::env::temp_dir().join(format!("kv-cli-test-{}.conf", std::process::id()));
    std::fs::write(&cluster_file, "a 127.0.0.1:1 a-m\nb 127.0.0.1:2 n-z\n").unwrap();
    let cluster = cluster_file.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["serve", "--no-such-flag"], "--no-such-flag"),
        (&["--no-such-flag"], "--no-such-flag"),
        (&["serve", "--port", "0", "--max-line", "0"], "kv: --max-line must be at least 1"),
        (&["serve", "--port", "0", "--cluster", cluster], "kv: --cluster needs --node"),
        (&["serve", "--port", "0", "--cluster", cluster, "--node", "c"], "kv: "),
        (&["serve", "--port", "0", "--peer-timeout", "0"], "kv: --peer-timeout"),
    ];
    for (args, message) in cases {
        let finished = kv(args);
        assert_eq!(finished.status.code(), Some(2), "kv {args:?}: {}", stderr(&finished));
        assert!(stderr(&finished).contains(message), "kv {args:?}: {}", stderr(&finished));
    }
    let _ = std::fs::remove_file(&cluster_file);
    let mut command = kv_binary();
    command.env("PORT", "notaport");
    let finished = run_to_end(command, b"");
    assert_eq!(finished.status.code(), Some(2), "{}", stderr(&finished));
    assert!(stderr(&finished).contains("kv: PORT must be a port number"), "{}", stderr(&finished));
}

#[test]
fn serve_flags_work_without_the_word_serve() {
    for args in [&["--port", "0", "--workers", "3"][..], &["serve", "--port", "0", "--workers", "3"]] {
        let mut command = kv_binary();
        command.args(args);
        let server = ChildServer::start(command);
        let mut client = client(&server.addr().to_string());
        assert_eq!(client.stat("workers").unwrap(), 3, "kv {args:?}");
    }
}

#[test]
fn version_flag_prints_the_version() {
    for flag in ["--version", "-V"] {
        let finished = kv(&[flag]);
        assert!(finished.status.success(), "kv {flag}: {}", stderr(&finished));
        assert_eq!(stdout(&finished), format!("kv {}\n", env!("CARGO_PKG_VERSION")));
    }
    for args in
        [&["-h"][..], &["--help"], &["serve", "-h"], &["cli", "--help"], &["top", "-h"], &["bench", "-h"]]
    {
        let finished = kv(args);
        assert!(finished.status.success(), "kv {args:?}: {}", stderr(&finished));
        assert!(stdout(&finished).contains("Usage: kv"), "kv {args:?}: {}", stdout(&finished));
    }
}

#[test]
fn serve_help_states_the_library_defaults() {
    // The defaults are written once, in kv::config; the help text must not drift.
    let help = stdout(&kv(&["serve", "--help"]));
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    // Every number stated as a default: "(default 65536)", "(default 8388608, 8 MiB)",
    // and the port's "else 4040;".
    let stated: Vec<u64> = help
        .split("default ")
        .chain(help.split("else "))
        .skip(1)
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    for default in [
        kv::config::DEFAULT_PORT as u64,
        kv::protocol::DEFAULT_MAX_LINE as u64,
        kv::config::DEFAULT_MAX_CONNECTIONS as u64,
        kv::config::DEFAULT_SUBSCRIBER_BACKLOG as u64,
        kv::config::DEFAULT_MAX_RESTARTS as u64,
        kv::config::DEFAULT_MAX_SECONDS,
        kv::config::DEFAULT_PEER_CONNECT_TIMEOUT.as_secs(),
        kv::config::DEFAULT_PEER_TIMEOUT.as_secs(),
        kv::config::DEFAULT_PEER_BACKOFF_MAX.as_secs(),
        kv::config::DEFAULT_PEER_CONNECTIONS as u64,
    ] {
        assert!(stated.contains(&default), "kv serve --help does not state the default {default}: {help}");
    }
}

#[test]
fn cli_exits_nonzero_on_not_found() {
    let server = start_server();
    let addr = server.addr().to_string();
    let finished = kv(&["cli", "--addr", &addr, "GET", "nosuch", "k"]);
    assert_eq!(finished.status.code(), Some(1));
    assert_eq!(show(&finished.stdout), "NOT FOUND\\n");
    let finished = kv(&["cli", "--addr", &addr, "FROB", "nosuch"]);
    assert_eq!(finished.status.code(), Some(1));
    assert_eq!(show(&finished.stdout), "UNKNOWN COMMAND\\n");
    let finished = kv(&["cli", "--addr", &addr, "PING"]);
    assert_eq!(finished.status.code(), Some(0));

    // Standard input: every line is still sent; the status says one reply was an error.
    let mut command = kv_binary();
    command.args(["cli", "--addr", &addr]);
    let finished = run_to_end(command, b"GET nosuch k\nCREATE b\nPING\n");
    assert_eq!(finished.status.code(), Some(1), "{}", stderr(&finished));
    assert_eq!(show(&finished.stdout), "NOT FOUND\\nOK\\nPONG\\n");
    let mut command = kv_binary();
    command.args(["cli", "--addr", &addr]);
    let finished = run_to_end(command, b"CREATE b\nPING\n");
    assert_eq!(finished.status.code(), Some(0), "{}", stderr(&finished));
}

/// Runs `kv cli --addr ADDR SUBSCRIBE <bucket>` on a thread; join it for the result.
fn subscribe_in_background(addr: &str, bucket: &str) -> thread::JoinHandle<Finished> {
    let mut command: Command = kv_binary();
    command.args(["cli", "--addr", addr, "SUBSCRIBE", bucket]);
    thread::spawn(move || run_to_end(command, b""))
}

#[test]
fn cli_follows_a_subscription_until_the_bucket_is_dropped() {
    let server = start_server();
    let addr = server.addr().to_string();
    let mut client = client(&addr);
    client.create("b").unwrap();
    let subscriber = subscribe_in_background(&addr, "b");
    wait_until("the kv cli subscriber is registered", || client.stat("subscribers").unwrap() == 1);
    client.put("b", "eggs", "3").unwrap();
    client.delete("b", "eggs").unwrap();
    client.drop_bucket("b").unwrap();
    let finished = subscriber.join().unwrap();
    assert_eq!(finished.status.code(), Some(0), "{}", stderr(&finished));
    assert_eq!(show(&finished.stdout), "eggs SET TO 3\\neggs DELETED\\nDROPPED\\n");
}

#[test]
fn cli_subscription_ended_other_than_by_a_drop_exits_nonzero() {
    let server = start_server();
    let addr = server.addr().to_string();
    let mut client = client(&addr);
    client.create("b").unwrap();
    let subscriber = subscribe_in_background(&addr, "b");
    wait_until("the kv cli subscriber is registered", || client.stat("subscribers").unwrap() == 1);
    client.put("b", "eggs", "3").unwrap();
    drop(client);
    server.shutdown();
    let finished = subscriber.join().unwrap();
    assert_ne!(finished.status.code(), Some(0), "{}", show(&finished.stdout));
    assert!(show(&finished.stdout).starts_with("eggs SET TO 3\\n"), "{}", show(&finished.stdout));
}

#[test]
fn cli_exits_nonzero_when_subscribe_finds_no_bucket() {
    let server = start_server();
    let finished = kv(&["cli", "--addr", &server.addr().to_string(), "SUBSCRIBE", "nosuch"]);
    assert_eq!(finished.status.code(), Some(1), "{}", stderr(&finished));
    assert_eq!(show(&finished.stdout), "NOT FOUND\\n");
}

#[test]
fn top_once_against_an_unreachable_node_exits_nonzero() {
    let addr = format!("127.0.0.1:{}", free_port());
    let finished = kv(&["top", "--once", "--interval", "0.05", "--addr", &addr]);
    assert_eq!(finished.status.code(), Some(1), "{}", stderr(&finished));
    assert!(stdout(&finished).contains(&format!("node ? at {addr}: unreachable")), "{}", stdout(&finished));
}

#[test]
fn top_does_not_count_its_own_polls() {
    // An idle node: the only commands it serves are top's own two STATS.
    let server = start_server();
    let addr = server.addr().to_string();
    let finished = kv(&["top", "--once", "--interval", "0.2", "--addr", &addr]);
    assert_eq!(finished.status.code(), Some(0), "{}", stderr(&finished));
    let frame = stdout(&finished);
    assert!(frame.contains(&format!("node kv at {addr}")), "{frame}");
    assert!(frame.contains("commands/s 0 "), "{frame}");
}

#[test]
fn top_interval_message_states_the_range_it_accepts() {
    for bad in ["0", "3601", "nan"] {
        let finished = kv(&["top", "--once", "--interval", bad]);
        assert_eq!(finished.status.code(), Some(2), "--interval {bad}");
        assert!(
            stderr(&finished).contains("--interval must be more than 0 and at most 3600 seconds"),
            "{}",
            stderr(&finished)
        );
    }
}
