//! Forwarded versus local throughput, measured in one run.
//!
//! Starts two nodes in this process, `foo` (owns a-m) and `bar` (owns n-z), plus a
//! standalone node without a cluster, then drives one client connection to `foo` with
//! pipelined GETs: of a bucket `foo` owns (served locally) and of one `bar` owns (every
//! request forwarded to `bar` and the reply relayed). Prints requests per second for each
//! pipeline depth.
//!
//! ```sh
//! cargo run --release --example forward_throughput [SECONDS_PER_CASE]
//! ```
//!
//! Everything shares one machine, so the figures compare paths, not hosts: the forwarded
//! path does the local path's work twice (on `foo` and on `bar`) plus a TCP hop.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use kv::client::{Client, ReplyShape};
use kv::router::Cluster;
use kv::{Config, Server, ServerHandle};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn start(node: &str, port: u16, cluster: Option<Cluster>) -> ServerHandle {
    let config = Config { port, node: node.to_string(), cluster, workers: 1, ..Config::default() };
    Server::bind(config)
        .and_then(Server::spawn)
        .unwrap_or_else(|error| panic!("cannot start {node}: {error}"))
}

/// Requests per second for `depth`-deep pipelines of `GET bucket k` for `seconds`.
fn measure(addr: SocketAddr, bucket: &str, depth: usize, seconds: f64) -> f64 {
    let mut client = Client::connect(addr).expect("connect");
    client.request(format!("CREATE {bucket}").as_bytes()).expect("create");
    client.request(format!("PUT {bucket} k value").as_bytes()).expect("put");
    let pipeline = format!("GET {bucket} k\r\n").repeat(depth).into_bytes();
    let mut reply = Vec::new();
    let run = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < run {
        client.send_raw(&pipeline).expect("send");
        for _ in 0..depth {
            reply.clear();
            client.read_reply(ReplyShape::Value, &mut reply).expect("reply");
        }
        assert_eq!(reply, b"value\r\nOK\r\n", "through {addr} for {bucket}");
        done += depth as u64;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let (foo_port, bar_port) = (free_port(), free_port());
    let text = format!("foo 127.0.0.1:{foo_port} a-m\nbar 127.0.0.1:{bar_port} n-z\n");
    let cluster = Cluster::parse("(forward_throughput)", &text).expect("cluster");
    let foo_node = start("foo", foo_port, Some(cluster.clone()));
    let _bar = start("bar", bar_port, Some(cluster));
    let alone = start("alone", 0, None);
    println!(
        "{:>6}  {:>14}  {:>14}  {:>14}  {:>9}",
        "depth", "standalone/s", "local/s", "forwarded/s", "fwd/local"
    );
    for depth in [1, 16, 128, 1024] {
        let standalone = measure(alone.addr(), "apple", depth, seconds);
        let local = measure(foo_node.addr(), "apple", depth, seconds);
        let forwarded = measure(foo_node.addr(), "nuts", depth, seconds);
        println!(
            "{depth:>6}  {standalone:>14.0}  {local:>14.0}  {forwarded:>14.0}  {:>9.2}",
            forwarded / local
        );
    }
}
