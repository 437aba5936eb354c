//! Criterion benchmark of a whole request over loopback TCP against in-process servers:
//! one connection, pipeline depth 1 and 16, half GET and half PUT, served locally, and
//! the same forwarded from one node of a two-node cluster to the other. Results read
//! as requests per second; at depth 1 this is mostly the cost of waking threads.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Reads from `stream` until `replies` complete replies (counted by their `OK\r\n`
/// end: every reply to these PUTs and GETs ends with one) have arrived.
fn read_replies(stream: &mut TcpStream, buf: &mut [u8], replies: usize) {
    let mut seen = 0;
    let mut tail = [0u8; 3];
    while seen < replies {
        let n = stream.read(buf).expect("read from the server");
        assert!(n > 0, "server closed the connection");
        for &byte in &buf[..n] {
            if byte == b'\n' && tail == *b"OK\r" {
                seen += 1;
            }
            tail = [tail[1], tail[2], byte];
        }
    }
}

/// Connects to `addr` and creates `bucket`.
fn connect(addr: std::net::SocketAddr, bucket: &str, buf: &mut [u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(format!("CREATE {bucket}\r\n").as_bytes()).unwrap();
    read_replies(&mut stream, buf, 1);
    stream
}

/// Benchmarks depth 1 and 16 on `stream` with requests for `bucket`, as `name`.
fn bench_depths(c: &mut Criterion, name: &str, stream: &mut TcpStream, bucket: &str, buf: &mut [u8]) {
    let mut group = c.benchmark_group("roundtrip");
    for depth in [1usize, 16] {
        // Half PUT, half GET, on a few keys; one write carries the whole pipeline.
        let mut requests = Vec::new();
        for i in 0..depth.max(2) {
            if i % 2 == 0 {
                requests.extend_from_slice(
                    format!("PUT {bucket} key:{i:08} 0123456789abcdef0123456789abcdef\r\n").as_bytes(),
                );
            } else {
                requests.extend_from_slice(format!("GET {bucket} key:{:08}\r\n", i - 1).as_bytes());
            }
        }
        // At depth 1, alternate a PUT round and a GET round.
        let rounds: Vec<&[u8]> = if depth == 1 {
            let split = requests.iter().position(|&b| b == b'\n').unwrap() + 1;
            vec![&requests[..split], &requests[split..]]
        } else {
            vec![&requests[..]]
        };
        group.throughput(Throughput::Elements(depth as u64));
        group.bench_with_input(BenchmarkId::new(name, depth), &depth, |b, &depth| {
            let mut round = 0;
            b.iter(|| {
                stream.write_all(rounds[round % rounds.len()]).unwrap();
                read_replies(stream, buf, depth);
                round += 1;
            })
        });
    }
    group.finish();
}

fn bench_roundtrip(c: &mut Criterion) {
    let mut buf = vec![0u8; 64 * 1024];
    let server = kv::Server::bind(kv::Config { port: 0, ..Default::default() })
        .and_then(|server| server.spawn())
        .expect("start an in-process server");
    let mut stream = connect(server.addr(), "b", &mut buf);
    bench_depths(c, "one_connection_pipeline", &mut stream, "b", &mut buf);
    drop(stream);
    server.shutdown();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The same load sent to node foo for a bucket node bar owns: every request is
/// forwarded to bar and its reply relayed.
fn bench_forwarded(c: &mut Criterion) {
    let mut buf = vec![0u8; 64 * 1024];
    let (foo_port, bar_port) = (free_port(), free_port());
    let text = format!("foo 127.0.0.1:{foo_port} a-m\nbar 127.0.0.1:{bar_port} n-z\n");
    let cluster = kv::router::Cluster::parse("(roundtrip bench)", &text).expect("cluster");
    let start = |node: &str, port| {
        let config =
            kv::Config { port, node: node.to_string(), cluster: Some(cluster.clone()), ..Default::default() };
        kv::Server::bind(config).and_then(|server| server.spawn()).expect("start a node")
    };
    let foo_node = start("foo", foo_port);
    let bar_node = start("bar", bar_port);
    let mut stream = connect(foo_node.addr(), "x", &mut buf);
    bench_depths(c, "forwarded_one_connection_pipeline", &mut stream, "x", &mut buf);
    drop(stream);
    foo_node.shutdown();
    bar_node.shutdown();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_roundtrip, bench_forwarded
}
criterion_main!(benches);
