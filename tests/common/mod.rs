//! Helpers shared by every black-box test file, and the one place they live: each test
//! file says `mod common;` and keeps no private copy of anything here.
//!
//! This file owns the deadline every wait shares, waiting on a condition, and picking
//! loopback ports; the rest is split by job:
//!
//! - [`conn`]: one raw client connection, exact bytes out and in, STATS parsing and the
//!   guide's sequence.
//! - [`server`]: an in-process server and waits on what its STATS say.
//! - [`child`]: the real `kv` binary as a child process, guarded and bounded.
//! - [`relay`]: a fault-injecting TCP relay between two nodes (drop replies, stall,
//!   reset on command).
//! - [`resp`]: the RESP door: servers with it open, `redis` crate connections in RESP2
//!   or RESP3, commands framed by hand and reply frames read off a raw connection.
//! - [`proc`]: what `/proc` says about a process (memory, descriptors, file limits).
//! - [`tcp`]: a client socket with a small receive buffer, and the server's side of a
//!   connection as `/proc/net/tcp` lists it (state, unacknowledged bytes).
//! - [`temp`]: temporary directories, removed when dropped.
//! - [`lib_paths`]: every `kv::` path below the crate root the tests use, so a move in
//!   `src/` is a one-line fix there.
//! - [`fuzzing`]: seeded randomness and the framing model, kept in `tests/fuzzing/`
//!   because the `cargo fuzz` target includes that file by path.
//!
//! Every wait here polls a condition against [`DEADLINE`] with a bounded number of
//! rounds; none is a bare sleep. Each test file compiles this module separately and
//! uses only part of it, hence the `dead_code` and `unused_imports` allowances.
#![allow(dead_code, unused_imports)]

pub mod child;
pub mod conn;
#[path = "../fuzzing/mod.rs"]
pub mod fuzzing;
pub mod lib_paths;
pub mod proc;
pub mod relay;
pub mod resp;
pub mod server;
pub mod tcp;
pub mod temp;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

pub use child::{
    ChildServer, Finished, cluster_node_command, kv_binary, kv_serve, run_to_end, run_to_end_within,
    start_cluster_node, start_kv_serve,
};
pub use conn::{
    Conn, GUIDE_SEQUENCE, assert_same_bytes, assert_same_bytes_in, run_guide_sequence, show, stat_of,
    stat_text_of,
};
pub use server::{
    bucket_on, start_server, start_server_with, start_server_with_workers, wait_for_connections,
};

/// How long any single wait in a test may take before the test fails. Generous: the
/// machine is small and shared, and a slow pass is fine where a hang is not.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds or [`DEADLINE`] passes; panics with `what` then.
/// The pause between polls doubles from 1 ms up to 50 ms, so the number of polls is
/// bounded too.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(1);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Where [`free_port`] looks: below Linux's ephemeral range (32768 and up by
/// default), so that no `connect` and no bind to port 0 (the tests make thousands)
/// can take a port between the moment it is found free and the moment a child kv
/// binds it, as happened with ports from the ephemeral range.
const FREE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port nothing listens on right now, and one no other call in this
/// process returned: each test binary starts at its own place in [`FREE_PORTS`]
/// (after its process id) and walks on from there.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(FREE_PORTS.end - FREE_PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = FREE_PORTS.start + offset as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FREE_PORTS:?}");
}

/// `127.0.0.1` and a [`free_port`].
pub fn free_loopback_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}

/// Waits until something accepts TCP connections on `addr`, and returns the accepted
/// connection.
pub fn wait_until_accepting(addr: SocketAddr) -> TcpStream {
    let mut stream = None;
    wait_until(&format!("something accepts on {addr}"), || {
        stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok();
        stream.is_some()
    });
    stream.unwrap()
}
