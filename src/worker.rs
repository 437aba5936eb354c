//! Worker threads: each owns one partition and applies the requests sent to it.
//!
//! A connection thread groups the requests of one read by owning worker and sends each
//! worker one [`Batch`]; the worker applies the whole batch under one lock of its
//! partition, writes every reply into the batch, and sends the batch back. So a
//! pipeline costs one channel round trip per worker per read, not one per request, and
//! the batch's buffers travel back and forth and are reused: the steady state
//! allocates nothing per request.
//!
//! The partition lives in an `Arc<Mutex<..>>` ([`WorkerShared`]) rather than on the
//! worker's stack so that it outlives the thread serving it: a replacement worker
//! started on the same [`WorkerShared`] and the same inbox carries on where the last
//! one stopped. Only the worker serving a partition takes its lock; STATS reads the
//! atomic counters in [`WorkerStats`] instead.
//!
//! This file must not do I/O on sockets: a worker only ever talks to channels.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, RecvError, Sender, TryRecvError};
use parking_lot::Mutex;

use crate::protocol::{self, Command};
use crate::store::{NoSuchBucket, Partition};

/// Requests from one connection for one worker, and, on the way back, the replies.
#[derive(Debug)]
pub struct Batch {
    /// Request lines, each ending in `\n`.
    pub requests: Vec<u8>,
    /// The replies, concatenated in request order.
    pub replies: Vec<u8>,
    /// Where each request's reply ends in `replies`: one entry per request.
    pub reply_ends: Vec<usize>,
    /// The owning connection's reply channel; the batch goes back on it.
    pub reply_to: Sender<Batch>,
    /// Index of the worker this batch is for; lets the connection put it back in
    /// its slot.
    pub worker: usize,
}

impl Batch {
    /// An empty batch for `worker` that returns to `reply_to`.
    pub fn new(worker: usize, reply_to: Sender<Batch>) -> Self {
        Batch { requests: Vec::new(), replies: Vec::new(), reply_ends: Vec::new(), reply_to, worker }
    }

    /// Adds one request line (without its newline).
    #[inline]
    pub fn push_request(&mut self, line: &[u8]) {
        self.requests.extend_from_slice(line);
        self.requests.push(b'\n');
    }

    /// True when the batch holds no request.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Empties the batch for reuse, keeping its buffers' capacity.
    pub fn clear(&mut self) {
        self.requests.clear();
        self.replies.clear();
        self.reply_ends.clear();
    }

    /// Applies every request in the batch to `partition`, in order, writing replies.
    pub fn apply(&mut self, partition: &mut Partition) {
        for line in self.requests.split(|&b| b == b'\n') {
            if line.is_empty() {
                // The split after the final '\n'; real request lines are never empty,
                // since the connection only forwards commands that name a bucket.
                continue;
            }
            apply(partition, protocol::parse(line), &mut self.replies);
            self.reply_ends.push(self.replies.len());
        }
    }
}

/// Applies one parsed command to `partition` and appends its reply to `out`.
///
/// Commands that are not about a bucket never reach a worker; if one does, it is
/// answered `UNKNOWN COMMAND` rather than trusted.
pub fn apply(partition: &mut Partition, command: Command<'_>, out: &mut Vec<u8>) {
    let result = match command {
        Command::Create { bucket } => {
            partition.create(bucket);
            Ok(())
        }
        Command::Put { bucket, key, value } => partition.put(bucket, key, value),
        Command::Delete { bucket, key } => partition.delete(bucket, key),
        Command::Get { bucket, key } => match partition.get(bucket, key) {
            Ok(value) => {
                protocol::write_value(out, value.unwrap_or(b""));
                return;
            }
            Err(NoSuchBucket) => Err(NoSuchBucket),
        },
        Command::Ping | Command::Stats | Command::Quit | Command::Unknown => {
            out.extend_from_slice(protocol::UNKNOWN_COMMAND);
            return;
        }
    };
    out.extend_from_slice(match result {
        Ok(()) => protocol::OK,
        Err(NoSuchBucket) => protocol::NOT_FOUND,
    });
}

/// Counters a worker publishes for STATS, updated once per batch, not per request.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Buckets in the partition.
    pub buckets: AtomicUsize,
    /// Keys in the partition.
    pub keys: AtomicUsize,
    /// Times this worker has been restarted after a crash.
    pub restarts: AtomicU64,
}

/// What outlives a worker thread: its partition and its counters.
#[derive(Debug, Default)]
pub struct WorkerShared {
    /// The buckets this worker owns.
    pub partition: Mutex<Partition>,
    /// Counters for STATS.
    pub stats: WorkerStats,
}

impl WorkerShared {
    fn publish(&self, partition: &Partition) {
        self.stats.buckets.store(partition.bucket_count(), Ordering::Relaxed);
        self.stats.keys.store(partition.key_count(), Ordering::Relaxed);
    }
}

/// How many times a thread about to block on a channel first yields and looks again.
///
/// At pipeline depth 1 nearly all the cost of a request is waking threads: a blocked
/// receiver costs a futex wake and a context switch. A message usually arrives within
/// a few microseconds, so yielding a few times first avoids most of those sleeps,
/// while `yield_now` (unlike a busy spin) still lets the sender run on a small host.
/// BENCHMARKS.md has the measurements behind the number.
pub const SPIN_TRIES: u32 = 16;

/// Receives from `channel`, yielding a few times before blocking (see [`SPIN_TRIES`]).
#[inline]
pub fn recv_spinning<T>(channel: &Receiver<T>) -> Result<T, RecvError> {
    for _ in 0..SPIN_TRIES {
        match channel.try_recv() {
            Ok(message) => return Ok(message),
            Err(TryRecvError::Disconnected) => return Err(RecvError),
            Err(TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    channel.recv()
}

/// Most batches a worker applies under one lock before sending replies back, so
/// one busy worker does not hold early clients' replies back for long.
const MAX_BATCHES_PER_LOCK: usize = 64;

/// The body of a worker thread: serve `inbox` until every sender is gone.
///
/// Returns when the inbox is closed and empty, which is a clean exit.
pub fn run(shared: Arc<WorkerShared>, inbox: Receiver<Batch>) {
    let mut done: Vec<Batch> = Vec::with_capacity(MAX_BATCHES_PER_LOCK);
    while let Ok(first) = recv_spinning(&inbox) {
        {
            let mut partition = shared.partition.lock();
            let mut batch = first;
            loop {
                batch.apply(&mut partition);
                done.push(batch);
                if done.len() == MAX_BATCHES_PER_LOCK {
                    break;
                }
                match inbox.try_recv() {
                    Ok(next) => batch = next,
                    Err(_) => break,
                }
            }
            shared.publish(&partition);
        }
        for batch in done.drain(..) {
            let reply_to = batch.reply_to.clone();
            // A connection that went away no longer wants its replies.
            let _ = reply_to.send(batch);
        }
    }
}

/// Which of `workers` owns `bucket`.
///
/// A fixed-seed ahash of the name, so the mapping is the same in every run of the
/// same build, which lets tests and operators find a bucket's worker.
#[inline]
pub fn worker_for(bucket: &[u8], workers: usize) -> usize {
    static SEEDS: std::sync::OnceLock<ahash::RandomState> = std::sync::OnceLock::new();
    let state = SEEDS.get_or_init(|| {
        ahash::RandomState::with_seeds(
            0x6b76_5f70_6172_7469,
            0x7469_6f6e_5f73_6565,
            0x645f_6f6e_655f_7477,
            0x6f5f_7468_7265_6521,
        )
    });
    (state.hash_one(bucket) % workers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_batch(partition: &mut Partition, lines: &[&[u8]]) -> Vec<Vec<u8>> {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(0, tx);
        for line in lines {
            batch.push_request(line);
        }
        batch.apply(partition);
        let mut start = 0;
        batch
            .reply_ends
            .iter()
            .map(|&end| {
                let reply = batch.replies[start..end].to_vec();
                start = end;
                reply
            })
            .collect()
    }

    #[test]
    fn a_batch_answers_each_request_in_order() {
        let mut p = Partition::new();
        let replies = run_batch(
            &mut p,
            &[
                b"GET shopping eggs",
                b"CREATE shopping",
                b"PUT shopping eggs 3",
                b"GET shopping eggs",
                b"DELETE shopping eggs",
                b"GET shopping eggs",
                b"PING",
            ],
        );
        let expected: [&[u8]; 7] = [
            b"NOT FOUND\r\n",
            b"OK\r\n",
            b"OK\r\n",
            b"3\r\nOK\r\n",
            b"OK\r\n",
            b"\r\nOK\r\n",
            b"UNKNOWN COMMAND\r\n",
        ];
        assert_eq!(replies, expected);
    }

    #[test]
    fn worker_serves_until_its_inbox_closes() {
        let shared = Arc::new(WorkerShared::default());
        let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || run(shared, inbox_rx))
        };
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(0, reply_tx);
        batch.push_request(b"CREATE b");
        batch.push_request(b"PUT b k v");
        inbox_tx.send(batch).unwrap();
        let batch = reply_rx.recv().unwrap();
        assert_eq!(batch.replies, b"OK\r\nOK\r\n");
        assert_eq!(shared.stats.keys.load(Ordering::Relaxed), 1);
        drop(inbox_tx);
        thread.join().unwrap();
        // The partition outlives the thread.
        assert_eq!(shared.partition.lock().get(b"b", b"k"), Ok(Some(&b"v"[..])));
    }

    #[test]
    fn worker_for_is_stable_and_in_range() {
        for n in 1..8 {
            for bucket in [&b"a"[..], b"shopping", b"\xff"] {
                let w = worker_for(bucket, n);
                assert!(w < n);
                assert_eq!(w, worker_for(bucket, n));
            }
        }
    }
}
