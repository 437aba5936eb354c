//! Forwarded versus local throughput, measured in one run.
//!
//! Starts two nodes in this process, `foo` (owns a-m) and `bar` (owns n-z), plus a
//! standalone node without a cluster, then drives one client connection to `foo` with
//! pipelined GETs: of a bucket `foo` owns (served locally) and of one `bar` owns (every
//! request forwarded to `bar` and the reply relayed). Prints requests per second for each
//! pipeline depth; the standalone node's figure shows what routing costs a node on
//! its own. SECONDS_PER_CASE (default 2) is split into short alternating slices.
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

/// Turns each path takes per pipeline depth.
const SLICES: u32 = 20;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn start(node: &str, port: u16, cluster: Option<Cluster>) -> ServerHandle {
    let config = Config { port, node: node.to_string(), cluster, workers: 1, ..Config::default() };
    Server::bind(config)
        .and_then(Server::spawn)
        .unwrap_or_else(|error| panic!("cannot start {node}: {error}"))
}

/// One client connection driving `depth`-deep pipelines of `GET bucket k`.
struct Driver {
    client: Client,
    pipeline: Vec<u8>,
    depth: usize,
    reply: Vec<u8>,
    done: u64,
    busy: Duration,
}

impl Driver {
    fn new(addr: SocketAddr, bucket: &str, depth: usize) -> Driver {
        let mut client = Client::connect(addr).expect("connect");
        client.request(format!("CREATE {bucket}").as_bytes()).expect("create");
        client.request(format!("PUT {bucket} k value").as_bytes()).expect("put");
        let pipeline = format!("GET {bucket} k\r\n").repeat(depth).into_bytes();
        Driver { client, pipeline, depth, reply: Vec::new(), done: 0, busy: Duration::ZERO }
    }

    /// Runs pipelines for `slice`, adding to the totals.
    fn run(&mut self, slice: Duration) {
        let started = Instant::now();
        while started.elapsed() < slice {
            self.client.send_raw(&self.pipeline).expect("send");
            for _ in 0..self.depth {
                self.reply.clear();
                self.client.read_reply(ReplyShape::Value, &mut self.reply).expect("reply");
            }
            assert_eq!(self.reply, b"value\r\nOK\r\n");
            self.done += self.depth as u64;
        }
        self.busy += started.elapsed();
    }

    fn rate(&self) -> f64 {
        self.done as f64 / self.busy.as_secs_f64()
    }
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
    // The three paths take turns in short slices, so a change in the machine's load
    // during the run affects them alike and the ratio stays fair.
    let slice = Duration::from_secs_f64(seconds / SLICES as f64);
    for depth in [1, 16, 128, 1024] {
        let mut standalone = Driver::new(alone.addr(), "apple", depth);
        let mut local = Driver::new(foo_node.addr(), "apple", depth);
        let mut forwarded = Driver::new(foo_node.addr(), "nuts", depth);
        for _ in 0..SLICES {
            standalone.run(slice);
            local.run(slice);
            forwarded.run(slice);
        }
        let (standalone, local, forwarded) = (standalone.rate(), local.rate(), forwarded.rate());
        println!(
            "{depth:>6}  {standalone:>14.0}  {local:>14.0}  {forwarded:>14.0}  {:>9.2}",
            forwarded / local
        );
    }
}
