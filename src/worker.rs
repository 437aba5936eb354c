//! Worker threads: each owns one partition and applies the requests sent to it.
//!
//! A connection thread groups the requests of one read by owning worker and sends each
//! worker one [`Batch`]; the worker applies the whole batch under one lock of its
//! partition, writes every reply into the batch, and sends the batch back. So a
//! pipeline costs one channel round trip per worker per read, not one per request.
//! `apply.rs` is the one place where a request meets the partition: every mutation
//! passes through it, whichever thread applies the batch.
//!
//! The partition lives in an `Arc<Mutex<..>>` ([`WorkerShared`]) rather than on the
//! worker's stack so that it outlives the thread serving it: a replacement worker
//! started on the same [`WorkerShared`] and the same inbox carries on where the last
//! one stopped. Besides the worker, only a connection thread applying a batch itself
//! ([`apply_inline`], while the server has no more connections than cores) takes its
//! lock; STATS reads the atomic counters in [`WorkerStats`] instead.
//!
//! A panic while applying a request leaves the partition as if that request had
//! either happened or not: every store operation checks first and changes the
//! partition in one step (see `store.rs`), the injected `DEBUG CRASH` panics before
//! touching anything, and parking_lot's mutex is released, not poisoned, while the
//! thread unwinds. [`run`] catches the panic, repairs the batch's replies
//! ([`Batch::answer_crashed`]) and reports the crash for the supervisor.
//!
//! This file must not do I/O on sockets: a worker only ever talks to channels.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, RecvError, TryRecvError};
use parking_lot::Mutex;

use crate::batch::Batch;
use crate::protocol::{ErrorKind, Reply};
use crate::store::Partition;
use crate::subscribe::Subscriptions;

/// Counters a worker publishes for STATS, updated once per batch, not per request.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Buckets in the partition.
    pub buckets: AtomicUsize,
    /// Keys in the partition.
    pub keys: AtomicUsize,
    /// Times this worker has been restarted after a crash.
    pub restarts: AtomicU64,
    /// Subscribers dropped for falling too far behind.
    pub subscribers_dropped: AtomicU64,
    /// Bytes the partition holds, as the store counts them (`--max-memory`).
    pub memory: AtomicUsize,
}

/// What outlives a worker thread: its partition and its counters.
#[derive(Debug, Default)]
pub struct WorkerShared {
    /// The buckets this worker owns.
    pub partition: Mutex<Partition>,
    /// Who streams which bucket's changes. Locked together with the partition, and
    /// only by the worker.
    pub subscriptions: Mutex<Subscriptions>,
    /// Counters for STATS.
    pub stats: WorkerStats,
}

impl WorkerShared {
    fn publish(&self, partition: &mut Partition, subscriptions: &Subscriptions) {
        self.stats.buckets.store(partition.bucket_count(), Ordering::Relaxed);
        self.stats.keys.store(partition.key_count(), Ordering::Relaxed);
        self.stats.subscribers_dropped.store(subscriptions.dropped_total(), Ordering::Relaxed);
        partition.publish_memory();
        self.stats.memory.store(partition.memory_used(), Ordering::Relaxed);
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

/// Applies `batch` on the calling (connection) thread instead of its worker's, if
/// the worker's partition is free this instant. Returns true when every request of
/// the batch has its reply; false leaves the batch to be sent to the worker as usual.
///
/// The worker hop is the whole cost of a request at pipeline depth 1 (two thread
/// hand-offs per request; BENCHMARKS.md, "What the worker hop costs"), so a
/// connection may skip it, but only while the server has no more connections than
/// cores (the caller checks): with more, a connection thread holding a partition
/// lock gets preempted and everyone queues behind it (p99 went up 7-10x in the
/// experiment), while the worker batching many connections' requests per lock is
/// what wins there anyway.
///
/// Same locks, same order of application as the worker: to every other client the
/// request looks served by the worker. Batches that register a subscription always
/// go to the worker. If applying panics, the partial reply is dropped and false is
/// returned: the worker then replays the failed request from the batch's cursor and
/// crashes on it the supervised way (`ERROR worker crashed`, restart counted).
pub fn apply_inline(shared: &WorkerShared, batch: &mut Batch) -> bool {
    if batch.has_subscriber() {
        return false;
    }
    let Some(mut partition) = shared.partition.try_lock() else {
        return false;
    };
    let Some(mut subscriptions) = shared.subscriptions.try_lock() else {
        return false;
    };
    let applied = panic::catch_unwind(AssertUnwindSafe(|| {
        batch.apply(&mut partition, &mut subscriptions);
        shared.publish(&mut partition, &subscriptions);
    }));
    if applied.is_err() {
        batch.discard_partial_reply();
        return false;
    }
    true
}

/// Most batches a worker applies under one lock before sending replies back, so
/// one busy worker does not hold early clients' replies back for long.
const MAX_BATCHES_PER_LOCK: usize = 64;

/// How a worker thread's run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every sender of its inbox is gone: the server is shutting down. Not a crash,
    /// and not to be restarted.
    Clean,
    /// It panicked. Every batch it had finished has been sent back; the request it
    /// was serving has been answered `ERROR worker crashed`.
    Crashed {
        /// The panic message.
        message: String,
        /// The batch it was in the middle of, if requests after the failed one are
        /// still unanswered: the replacement must serve it before its inbox.
        unfinished: Option<Batch>,
    },
}

/// Batches a worker holds outside its inbox. Kept outside the unwinding code so
/// that after a panic nothing a client waits for is lost.
#[derive(Debug, Default)]
struct InHand {
    /// Applied, replies written, not yet sent back.
    done: Vec<Batch>,
    /// Being applied.
    current: Option<Batch>,
}

/// The body of a worker thread: serve `pending` (a batch a crashed predecessor left
/// half done), then `inbox` until every sender is gone.
///
/// Never unwinds: a panic while serving is caught here and turned into
/// [`Outcome::Crashed`], after the batches in hand have been dealt with, so that the
/// supervisor can start a replacement on the same partition and inbox.
pub fn run(shared: &WorkerShared, inbox: &Receiver<Batch>, pending: Option<Batch>) -> Outcome {
    let mut in_hand = InHand { done: Vec::with_capacity(MAX_BATCHES_PER_LOCK), current: pending };
    let served = panic::catch_unwind(AssertUnwindSafe(|| serve(shared, inbox, &mut in_hand)));
    match served {
        Ok(()) => Outcome::Clean,
        Err(payload) => {
            let message = panic_message(&*payload);
            for batch in in_hand.done.drain(..) {
                batch.send_back();
            }
            let unfinished = in_hand.current.take().and_then(|mut batch| {
                batch.answer_crashed(CRASHED);
                if batch.is_done() {
                    batch.send_back();
                    None
                } else {
                    Some(batch)
                }
            });
            Outcome::Crashed { message, unfinished }
        }
    }
}

fn serve(shared: &WorkerShared, inbox: &Receiver<Batch>, in_hand: &mut InHand) {
    loop {
        if in_hand.current.is_none() {
            match recv_spinning(inbox) {
                Ok(batch) => in_hand.current = Some(batch),
                Err(RecvError) => return,
            }
        }
        {
            let mut partition = shared.partition.lock();
            let mut subscriptions = shared.subscriptions.lock();
            while let Some(batch) = in_hand.current.as_mut() {
                batch.apply(&mut partition, &mut subscriptions);
                in_hand.done.extend(in_hand.current.take());
                if in_hand.done.len() == MAX_BATCHES_PER_LOCK {
                    break;
                }
                in_hand.current = inbox.try_recv().ok();
            }
            shared.publish(&mut partition, &subscriptions);
        }
        for batch in in_hand.done.drain(..) {
            batch.send_back();
        }
    }
}

/// The reply to the request a worker was serving when it crashed, and to every request
/// for a worker that will not be restarted.
pub const CRASHED: Reply<'static> = Reply::Error(ErrorKind::WorkerCrashed);

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// Which of `workers` owns `bucket`: the one function every part of kv asks.
///
/// An ahash of the name under seeds drawn once per process, so that a client cannot
/// pick names that all land on one worker; the mapping holds for the life of the
/// process, not across restarts (anything stored by worker must be placed again by
/// this function when it is loaded).
#[inline]
pub fn worker_for(bucket: &[u8], workers: usize) -> usize {
    static SEEDS: std::sync::OnceLock<ahash::RandomState> = std::sync::OnceLock::new();
    let state = SEEDS.get_or_init(ahash::RandomState::new);
    (state.hash_one(bucket) % workers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Every reply of a batch, concatenated.
    fn replies_of(batch: &Batch) -> Vec<u8> {
        (0..batch.reply_count()).flat_map(|i| batch.reply(i).unwrap_or_default().to_vec()).collect()
    }

    #[test]
    fn worker_serves_until_its_inbox_closes() {
        let shared = Arc::new(WorkerShared::default());
        let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || run(&shared, &inbox_rx, None))
        };
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(0, reply_tx);
        batch.push_request(b"CREATE b");
        batch.push_request(b"PUT b k v");
        inbox_tx.send(batch).unwrap();
        let batch = reply_rx.recv().unwrap();
        assert_eq!(replies_of(&batch), b"OK\r\nOK\r\n");
        assert_eq!(shared.stats.keys.load(Ordering::Relaxed), 1);
        drop(inbox_tx);
        assert!(matches!(thread.join().unwrap(), Outcome::Clean));
        // The partition outlives the thread.
        assert_eq!(shared.partition.lock().get(b"b", b"k"), Ok(Some(&b"v"[..])));
    }

    #[test]
    fn a_crash_answers_the_request_in_flight_and_hands_on_the_rest() {
        let shared = WorkerShared::default();
        let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(0, reply_tx);
        for line in [&b"CREATE b"[..], b"PUT b k 1", b"DEBUG CRASH b", b"PUT b k 2", b"GET b k"] {
            batch.push_request(line);
        }
        inbox_tx.send(batch).unwrap();
        let Outcome::Crashed { message, unfinished } = run(&shared, &inbox_rx, None) else {
            panic!("the worker should have crashed");
        };
        assert!(message.contains("DEBUG CRASH"));
        assert!(reply_rx.is_empty(), "a half-done batch must not go back early");
        // The replacement finishes the batch; the first PUT happened, the crash did not
        // undo it, and the requests after the crash are served.
        drop(inbox_tx);
        assert!(matches!(run(&shared, &inbox_rx, unfinished), Outcome::Clean));
        let batch = reply_rx.try_recv().unwrap();
        assert_eq!(replies_of(&batch), b"OK\r\nOK\r\nERROR worker crashed\r\nOK\r\n2\r\nOK\r\n");
        assert_eq!(batch.reply_count(), 5);
    }

    #[test]
    fn apply_inline_serves_a_batch_when_the_partition_is_free_and_not_when_held() {
        let shared = WorkerShared::default();
        let (reply_tx, _reply_rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(0, reply_tx);
        for line in [&b"CREATE shopping"[..], b"PUT shopping eggs 3", b"GET shopping eggs"] {
            batch.push_request(line);
        }
        {
            let _held = shared.partition.lock();
            assert!(!apply_inline(&shared, &mut batch), "a held partition must be left to the worker");
            assert_eq!(batch.reply_count(), 0);
        }
        assert!(apply_inline(&shared, &mut batch));
        assert_eq!(replies_of(&batch), b"OK\r\nOK\r\n3\r\nOK\r\n");
        assert_eq!(shared.stats.keys.load(Ordering::Relaxed), 1, "STATS figures are published");
    }

    #[test]
    fn a_crash_inline_is_replayed_by_the_worker_as_a_worker_crash() {
        let shared = WorkerShared::default();
        let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(0, reply_tx);
        for line in [&b"CREATE b"[..], b"PUT b k 1", b"DEBUG CRASH b", b"GET b k"] {
            batch.push_request(line);
        }
        assert!(!apply_inline(&shared, &mut batch));
        // The requests before the crash are applied and answered, nothing after.
        assert_eq!(replies_of(&batch), b"OK\r\nOK\r\n");
        assert_eq!(batch.reply_count(), 2);
        // The locks were released while unwinding.
        assert_eq!(shared.partition.try_lock().map(|p| p.key_count()), Some(1));
        // The connection sends it to the worker, which crashes on the same request,
        // and its replacement finishes the batch.
        inbox_tx.send(batch).unwrap();
        let Outcome::Crashed { unfinished, .. } = run(&shared, &inbox_rx, None) else {
            panic!("the worker should have crashed on the replayed request");
        };
        drop(inbox_tx);
        assert!(matches!(run(&shared, &inbox_rx, unfinished), Outcome::Clean));
        let batch = reply_rx.try_recv().unwrap();
        assert_eq!(replies_of(&batch), b"OK\r\nOK\r\nERROR worker crashed\r\n1\r\nOK\r\n");
    }

    #[test]
    fn a_crash_at_the_last_request_sends_the_batch_back_at_once() {
        let shared = WorkerShared::default();
        let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let mut finished = Batch::new(0, reply_tx.clone());
        finished.push_request(b"CREATE a");
        let mut crashing = Batch::new(0, reply_tx);
        crashing.push_request(b"DEBUG CRASH a");
        inbox_tx.send(finished).unwrap();
        inbox_tx.send(crashing).unwrap();
        let Outcome::Crashed { unfinished, .. } = run(&shared, &inbox_rx, None) else {
            panic!("the worker should have crashed");
        };
        assert!(unfinished.is_none());
        let replies: Vec<Vec<u8>> = reply_rx.try_iter().map(|b| replies_of(&b)).collect();
        assert_eq!(replies, [b"OK\r\n".to_vec(), b"ERROR worker crashed\r\n".to_vec()]);
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
