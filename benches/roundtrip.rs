//! Criterion benchmark of a whole request over loopback TCP against an in-process
//! server: one connection, pipeline depth 1 and 16, half GET and half PUT. Results
//! read as requests per second; at depth 1 this is mostly the cost of waking threads.

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

fn bench_roundtrip(c: &mut Criterion) {
    let server = kv::Server::bind(kv::Config { port: 0, ..Default::default() })
        .and_then(|server| server.spawn())
        .expect("start an in-process server");
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    stream.write_all(b"CREATE b\r\n").unwrap();
    read_replies(&mut stream, &mut buf, 1);

    let mut group = c.benchmark_group("roundtrip");
    for depth in [1usize, 16] {
        // Half PUT, half GET, on a few keys; one write carries the whole pipeline.
        let mut requests = Vec::new();
        for i in 0..depth.max(2) {
            if i % 2 == 0 {
                requests.extend_from_slice(
                    format!("PUT b key:{i:08} 0123456789abcdef0123456789abcdef\r\n").as_bytes(),
                );
            } else {
                requests.extend_from_slice(format!("GET b key:{:08}\r\n", i - 1).as_bytes());
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
        group.bench_with_input(BenchmarkId::new("one_connection_pipeline", depth), &depth, |b, &depth| {
            let mut round = 0;
            b.iter(|| {
                stream.write_all(rounds[round % rounds.len()]).unwrap();
                read_replies(&mut stream, &mut buf, depth);
                round += 1;
            })
        });
    }
    group.finish();
    drop(stream);
    server.shutdown();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_roundtrip
}
criterion_main!(benches);
