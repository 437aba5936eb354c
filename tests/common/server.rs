//! In-process servers on 127.0.0.1 and a port the kernel picks, what their STATS say
//! about open connections, and picking buckets by the worker that owns them.

use std::net::SocketAddr;

use kv::{Config, Server, ServerHandle};

use super::lib_paths::worker_for;
use super::{Conn, wait_until};

/// An in-process server on 127.0.0.1 and a free port, with default settings.
pub fn start_server() -> ServerHandle {
    start_server_with(Config { port: 0, ..Config::default() })
}

/// An in-process server with `workers` workers, so that tests spreading buckets over
/// several workers do not depend on the machine's core count.
pub fn start_server_with_workers(workers: usize) -> ServerHandle {
    start_server_with(Config { port: 0, workers, ..Config::default() })
}

/// An in-process server with the given configuration (its port should be 0).
pub fn start_server_with(config: Config) -> ServerHandle {
    Server::bind(config).expect("bind the server").spawn().expect("start the server")
}

/// Polls a fresh connection's STATS until `connections` is `expected` (the polling
/// connection itself included).
pub fn wait_for_connections(addr: SocketAddr, expected: u64) {
    let mut conn = Conn::connect(addr);
    wait_until(&format!("STATS connections is {expected}"), || conn.stat("connections") == expected);
}

/// A bucket name starting with `prefix` that worker `worker` of `workers` owns, so a
/// test can aim requests (and crashes) at one worker. Only for servers in this
/// process: the bucket-to-worker hash is seeded per process, so a child `kv` places
/// buckets its own way (its STATS `worker.<i>.buckets` say where).
pub fn bucket_on(worker: usize, workers: usize, prefix: &str) -> String {
    assert!(worker < workers);
    for i in 0..100_000 {
        let name = format!("{prefix}{i}");
        if worker_for(name.as_bytes(), workers) == worker {
            return name;
        }
    }
    panic!("no bucket named {prefix}<n> lands on worker {worker} of {workers}");
}
