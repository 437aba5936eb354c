//! The worst a connection thread's small stack (`CONNECTION_STACK_SIZE`, see `common::lib_paths`)
//! has to hold in this process: a panic on that thread whose hook captures and prints
//! a symbolized backtrace, as Rust's default hook does under `RUST_BACKTRACE=1` (an
//! embedding program, or a test, that enables it). The `kv` binary's own hook only
//! logs the message; `tests/hardening.rs` covers that path with debug logging.
//!
//! Its own test binary because a panic hook is process-wide.

mod common;

use std::backtrace::Backtrace;
use std::net::TcpStream;
use std::panic;
use std::sync::atomic::{AtomicUsize, Ordering};

use kv::Config;

use common::{Conn, show, start_server_with, wait_for_connections};

/// Backtraces taken on connection threads.
static CAPTURED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn connection_panic_that_symbolizes_a_backtrace_fits_the_connection_stack() {
    // `cargo test --release` builds with the release profile, which strips symbols:
    // nothing is resolved then, so there is nothing deep to fit.
    let own = Backtrace::force_capture().to_string();
    if !own.contains("connection_panic_that_symbolizes") {
        eprintln!(
            "skipped: this build's backtraces resolve no symbols (a stripped profile); run `cargo test`"
        );
        return;
    }
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let on_connection = std::thread::current().name().is_some_and(|name| name.starts_with("kv-conn-"));
        if on_connection {
            // Capturing and resolving symbols is the deepest thing a hook commonly
            // does. Formatted like the default hook's report, but kept out of the
            // test's output.
            let report = format!("thread panicked: {info}\n{}", Backtrace::force_capture());
            if report.contains("serve_connection") {
                CAPTURED.fetch_add(1, Ordering::SeqCst);
            }
        } else {
            previous(info);
        }
    }));

    let server = start_server_with(Config { port: 0, workers: 2, debug: true, ..Config::default() });
    let addr = server.addr();
    for _ in 0..2 {
        let mut crashing = Conn::from_stream(TcpStream::connect(addr).unwrap());
        crashing.send(b"DEBUG CRASH-CONNECTION\r\n");
        assert_eq!(show(&crashing.read_until_gone().0), "");
    }
    assert_eq!(
        CAPTURED.load(Ordering::SeqCst),
        2,
        "the hook resolved a backtrace on both connection threads"
    );

    // The same paths as the binary's test, in this process.
    let mut conn = Conn::connect(addr);
    assert_eq!(conn.stat("workers"), 2);
    conn.roundtrip(
        &[&b"PUT b k "[..], &vec![b'x'; 100 * 1024], b"\r\n"].concat(),
        b"ERROR line too long\r\n",
    );
    let value = vec![b'v'; 60 * 1024];
    conn.roundtrip(b"CREATE b\r\n", b"OK\r\n");
    conn.roundtrip(&[&b"PUT b k "[..], &value, b"\r\n"].concat(), b"OK\r\n");
    conn.roundtrip(b"GET b k\r\n", &[&value[..], b"\r\nOK\r\n"].concat());
    wait_for_connections(addr, 2);
}
