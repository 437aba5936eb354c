//! Criterion benchmarks of a partition on its own: GET hits and misses, overwriting
//! PUTs, PUTs of new keys, and a worker batch applied under one lock. Results read as
//! operations per second.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kv::batch::Batch;
use kv::store::Partition;
use kv::subscribe::Subscriptions;

const KEYS: usize = 100_000;
const VALUE: &[u8] = b"0123456789abcdef0123456789abcdef";

fn keys() -> Vec<Vec<u8>> {
    (0..KEYS).map(|i| format!("key:{i:08}").into_bytes()).collect()
}

fn filled(keys: &[Vec<u8>]) -> Partition {
    let mut partition = Partition::new();
    partition.create(b"b");
    for key in keys {
        partition.put(b"b", key, VALUE).unwrap();
    }
    partition
}

fn bench_partition(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("partition");
    group.throughput(Throughput::Elements(1));
    let mut partition = filled(&keys);
    // A stride through the keys, so successive operations touch different cache lines.
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 7919) % KEYS;
        i
    };
    group
        .bench_function("get_hit_100k", |b| b.iter(|| black_box(partition.get(b"b", &keys[next()]).is_ok())));
    group.bench_function("get_miss", |b| b.iter(|| black_box(partition.get(b"b", b"key:missing").is_ok())));
    group.bench_function("put_overwrite_100k", |b| b.iter(|| partition.put(b"b", &keys[next()], VALUE)));
    group.bench_function("get_no_such_bucket", |b| {
        b.iter(|| black_box(partition.get(b"nope", b"k").is_err()))
    });
    group.finish();

    let mut group = c.benchmark_group("partition_fill");
    let fresh = 10_000;
    group.throughput(Throughput::Elements(fresh as u64));
    group.bench_function("put_new_10k", |b| {
        b.iter_batched(
            || {
                let mut partition = Partition::new();
                partition.create(b"b");
                partition
            },
            |mut partition| {
                for key in &keys[..fresh] {
                    partition.put(b"b", key, VALUE).unwrap();
                }
                partition
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_batch(c: &mut Criterion) {
    let keys = keys();
    let mut partition = filled(&keys);
    let mut group = c.benchmark_group("worker_batch");
    let depth = 16;
    group.throughput(Throughput::Elements(depth as u64));
    let (tx, _rx) = crossbeam_channel::unbounded();
    let mut batch = Batch::new(0, tx);
    let mut subscriptions = Subscriptions::default();
    let mut lines = Vec::new();
    for (n, key) in keys.iter().step_by(997).take(depth).enumerate() {
        let key = String::from_utf8_lossy(key);
        lines.push(if n % 2 == 0 { format!("GET b {key}") } else { format!("PUT b {key} v{n}") });
    }
    group.bench_function("apply_16_mixed", |b| {
        b.iter(|| {
            batch.clear();
            for line in &lines {
                batch.push_request(&kv::protocol::parse(line.as_bytes()));
            }
            batch.apply(&mut partition, &mut subscriptions, None);
            black_box(batch.reply_count())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_partition, bench_batch
}
criterion_main!(benches);
