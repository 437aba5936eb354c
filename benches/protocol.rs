//! Criterion benchmarks of the pure protocol code: parsing one line, and framing a
//! deep pipeline with `LineReader`. Results read as lines per second.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kv::protocol::{Frame, LineReader, parse};

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    let lines: [(&str, &[u8]); 4] = [
        ("get", b"GET b7 key:00012345"),
        ("put_32b", b"PUT b7 key:00012345 0123456789abcdef0123456789abcdef"),
        ("put_lowercase_spaced", b"  put   b7  key:00012345  0123456789abcdef0123456789abcdef \r"),
        ("unknown", b"FLUSHALL now please"),
    ];
    for (name, line) in lines {
        group.bench_function(name, |b| b.iter(|| parse(black_box(line))));
    }
    group.finish();
}

fn bench_line_reader(c: &mut Criterion) {
    let mut group = c.benchmark_group("line_reader");
    // One read's worth of pipelined requests, as a connection sees it.
    let mut input = Vec::new();
    let lines = 256u64;
    for i in 0..lines {
        if i % 2 == 0 {
            input.extend_from_slice(format!("GET b{} key:{:08}\r\n", i % 16, i).as_bytes());
        } else {
            input
                .extend_from_slice(format!("PUT b{} key:{:08} {}\r\n", i % 16, i, "v".repeat(32)).as_bytes());
        }
    }
    group.throughput(Throughput::Elements(lines));
    let mut reader = LineReader::new(kv::protocol::DEFAULT_MAX_LINE);
    group.bench_function("frame_256_pipelined", |b| {
        b.iter(|| {
            let mut rest: &[u8] = &input;
            let mut bytes = 0;
            while !rest.is_empty() {
                let taken = reader.push(rest);
                rest = &rest[taken..];
                while let Some(frame) = reader.next_frame() {
                    if let Frame::Line(line) = frame {
                        bytes += line.len();
                    }
                }
            }
            black_box(bytes)
        })
    });
    group.bench_function("frame_and_parse_256_pipelined", |b| {
        b.iter(|| {
            let mut rest: &[u8] = &input;
            let mut buckets = 0;
            while !rest.is_empty() {
                let taken = reader.push(rest);
                rest = &rest[taken..];
                while let Some(frame) = reader.next_frame() {
                    if let Frame::Line(line) = frame {
                        buckets += parse(line).bucket().map_or(0, |bucket| bucket.len());
                    }
                }
            }
            black_box(buckets)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Modest settings: the whole `cargo bench` should take minutes on 2 cores.
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_parse, bench_line_reader
}
criterion_main!(benches);
