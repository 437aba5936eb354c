//! The `kv` binary as an operator and a netcat user meet it: `kv serve`, bare `kv`
//! with the `PORT` environment variable, a bad `PORT`, and `kv cli` with a command
//! on the command line or many on standard input. Servers run as child processes
//! under a guard that kills them; their address comes from the `kv listening on ADDR`
//! line they log at start-up.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::{
    ChildServer, Conn, free_port, kv_binary, run_guide_sequence, run_to_end, show, start_kv_serve,
    start_server, wait_until_accepting,
};

#[test]
fn kv_serve_on_port_0_answers_the_guide_sequence() {
    let server = start_kv_serve(&[]);
    assert!(server.addr().ip().is_loopback(), "kv serves on loopback by default, not {}", server.addr());
    assert_ne!(server.addr().port(), 0);
    let mut conn = Conn::connect(server.addr());
    run_guide_sequence(&mut conn, b"\r\n");
    conn.roundtrip(b"PING\r\n", b"PONG\r\n");
}

#[test]
fn kv_serve_workers_flag_sets_the_worker_count() {
    let server = start_kv_serve(&["--workers", "3"]);
    let mut conn = Conn::connect(server.addr());
    let stats = conn.stats();
    assert_eq!(common::stat_of(&stats, "workers"), 3);
    assert!(stats.iter().any(|(name, _)| name == "worker.2.queue"));
}

#[test]
fn kv_serve_max_line_flag_sets_the_line_limit() {
    let server = start_kv_serve(&["--max-line", "16"]);
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"CREATE b\r\n", b"OK\r\n");
    conn.roundtrip(b"PUT b k 12345678\r\n", b"OK\r\n"); // 16 bytes: at the limit
    conn.roundtrip(b"PUT b k 123456789\r\n", b"ERROR line too long\r\n");
    conn.roundtrip(b"GET b k\r\n", b"12345678\r\nOK\r\n");
}

#[test]
fn bare_kv_listens_on_the_port_environment_variable() {
    let port = free_port();
    let mut command = kv_binary();
    command.env("PORT", port.to_string());
    let server = ChildServer::start(command);
    assert_eq!(server.addr().port(), port);
    // It really accepts there, not just says so.
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut conn = Conn::from_stream(wait_until_accepting(addr));
    conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    run_guide_sequence(&mut conn, b"\n");
}

#[test]
fn kv_serve_with_a_port_variable_that_is_not_a_number_exits_with_an_error() {
    for bad in ["notaport", "70000", "-1", ""] {
        let mut command = kv_binary();
        command.arg("serve").env("PORT", bad);
        let finished = run_to_end(command, b"");
        assert!(!finished.status.success(), "PORT={bad:?} must fail, got {:?}", finished.status);
        let stderr = String::from_utf8_lossy(&finished.stderr);
        assert!(stderr.contains("PORT"), "the error names PORT for {bad:?}: {stderr}");
    }
}

#[test]
fn kv_cli_sends_its_words_as_one_command_and_prints_the_reply() {
    let server = start_server();
    let addr = server.addr().to_string();
    let mut command = kv_binary();
    command.args(["cli", "--addr", &addr, "PING"]);
    let finished = run_to_end(command, b"");
    assert!(finished.status.success(), "{:?}: {}", finished.status, show(&finished.stderr));
    assert_eq!(show(&finished.stdout), "PONG\\n");

    let mut command = kv_binary();
    command.args(["cli", "--addr", &addr, "CREATE", "shopping"]);
    assert_eq!(show(&run_to_end(command, b"").stdout), "OK\\n");
    let mut command = kv_binary();
    command.args(["cli", "--addr", &addr, "PUT", "shopping", "eggs", "3"]);
    assert_eq!(show(&run_to_end(command, b"").stdout), "OK\\n");
    let mut command = kv_binary();
    command.args(["cli", "--addr", &addr, "GET", "shopping", "eggs"]);
    assert_eq!(show(&run_to_end(command, b"").stdout), "3\\nOK\\n");
    let mut command = kv_binary();
    command.args(["cli", "--addr", &addr, "GET", "shopping", "milk"]);
    assert_eq!(show(&run_to_end(command, b"").stdout), "\\nOK\\n");

    // STATS: all of its lines, up to and including OK.
    let mut command = kv_binary();
    command.args(["cli", "--addr", &addr, "STATS"]);
    let stdout = String::from_utf8(run_to_end(command, b"").stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.last(), Some(&"OK"), "{stdout}");
    assert!(lines.contains(&"keys 1") && lines.contains(&"buckets 1"), "{stdout}");
    assert!(lines.len() > 12, "{stdout}");
}

#[test]
fn kv_cli_reads_commands_from_stdin_and_prints_each_reply() {
    let server = start_server();
    let mut command = kv_binary();
    command.args(["cli", "--addr", &server.addr().to_string()]);
    let input = b"UNKNOWN shopping\nGET shopping eggs\nCREATE shopping\nPUT shopping eggs 3\n\
                  GET shopping eggs\nGET shopping milk\nSTATS\nDELETE shopping eggs\r\n\
                  GET shopping eggs\nPING\n";
    let finished = run_to_end(command, input);
    // UNKNOWN COMMAND and NOT FOUND came back: every line is still answered, status 1.
    assert_eq!(finished.status.code(), Some(1), "{:?}: {}", finished.status, show(&finished.stderr));
    let stdout = String::from_utf8(finished.stdout).unwrap();

    // STATS prints a variable block of `name value` lines ending in `OK`; everything
    // around it is exact.
    let before = "UNKNOWN COMMAND\nNOT FOUND\nOK\nOK\n3\nOK\n\nOK\n";
    let rest = stdout.strip_prefix(before).unwrap_or_else(|| panic!("replies before STATS: {stdout:?}"));
    let stats_end = rest.find("\nOK\n").expect("STATS ends with OK") + "\nOK\n".len();
    assert!(!rest.starts_with("OK\n"), "STATS printed no lines");
    let (stats, after) = rest.split_at(stats_end);
    for line in stats.lines().filter(|line| *line != "OK") {
        let (name, value) = line.split_once(' ').unwrap_or_else(|| panic!("STATS line {line:?}"));
        assert!(!name.is_empty() && !value.is_empty() && !value.contains(' '), "STATS line {line:?}");
    }
    assert!(stats.lines().any(|line| line == "keys 1"), "STATS after one PUT: {stats}");
    assert!(stats.lines().any(|line| line == "buckets 1"), "{stats}");
    assert_eq!(after, "OK\n\nOK\nPONG\n");
}

#[test]
fn kv_cli_stops_after_quit() {
    let server = start_server();
    let mut command = kv_binary();
    command.args(["cli", "--addr", &server.addr().to_string()]);
    let finished = run_to_end(command, b"PING\nQUIT\nPING\n");
    assert!(finished.status.success(), "{:?}: {}", finished.status, show(&finished.stderr));
    assert_eq!(show(&finished.stdout), "PONG\\nOK\\n");
}

#[test]
fn kv_cli_without_a_server_exits_with_an_error() {
    // A port nothing listens on: bound and released.
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = kv_binary();
    command.args(["cli", "--addr", &addr, "PING"]);
    let finished = run_to_end(command, b"");
    assert!(!finished.status.success());
    assert!(finished.stdout.is_empty());
    assert!(!finished.stderr.is_empty(), "says why it failed");
}

#[test]
fn kv_serve_refuses_zero_workers_zero_max_line_and_unknown_flags() {
    for args in [
        &["serve", "--port", "0", "--workers", "0"][..],
        &["serve", "--port", "0", "--max-line", "0"],
        &["serve", "--port", "0", "--max-connections", "0"],
        &["serve", "--port", "notaport"],
        &["serve", "--no-such-flag"],
    ] {
        let mut command = kv_binary();
        command.args(args);
        let finished = run_to_end(command, b"");
        assert!(!finished.status.success(), "kv {args:?} must fail, got {:?}", finished.status);
        assert!(!finished.stderr.is_empty(), "kv {args:?} says why on stderr");
    }
}
