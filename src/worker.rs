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
//! one stopped. Besides the worker, a connection thread applying a batch itself
//! ([`apply_inline`], while the server has no more connections than cores) and the
//! compactor (`housekeeping.rs`, one chunk at a time) take its lock; STATS reads the
//! atomic counters in [`WorkerStats`] instead.
//!
//! A panic while applying a request leaves the partition as if that request had
//! either happened or not: every store operation checks first and changes the
//! partition in one step (see `store/`), the injected `DEBUG CRASH` panics before
//! touching anything, and parking_lot's mutex is released, not poisoned, while the
//! thread unwinds. [`run`] catches the panic, repairs the batch's replies
//! ([`Batch::answer_crashed`]) and reports the crash for the supervisor.
//!
//! This file must not do I/O on sockets: a worker only ever talks to channels.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, RecvError, Sender, TryRecvError};
use parking_lot::Mutex;

use std::sync::Arc;

use crate::batch::Batch;
use crate::persist::{FsyncPolicy, LogSync, PartitionLog};
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
    /// Writes refused because their record could not reach the log.
    pub persistence_errors: AtomicU64,
    /// Bytes of the partition's live log files.
    pub log_bytes: AtomicU64,
    /// Compactions finished.
    pub compactions: AtomicU64,
    /// Bytes the partition holds, as the store counts them (`--max-memory`).
    pub memory: AtomicUsize,
    /// At least the longest value the partition holds ([`Partition::largest_value`]:
    /// it falls once long values are gone), for a connection bounding its round's
    /// replies without the partition's lock.
    pub largest_value: AtomicUsize,
}

/// What outlives a worker thread: its partition, its log and its counters.
#[derive(Debug, Default)]
pub struct WorkerShared {
    /// The buckets this worker owns.
    pub partition: Mutex<Partition>,
    /// Who streams which bucket's changes. Locked together with the partition.
    pub subscriptions: Mutex<Subscriptions>,
    /// The partition's log, with a data directory; locked together with the partition,
    /// after it, so a change and its record are one critical section.
    pub log: Mutex<Option<PartitionLog>>,
    /// The log's shared half, for syncing without the partition's lock.
    pub sync: Option<(Arc<LogSync>, FsyncPolicy)>,
    /// With `--fsync always`: where the worker hands each drain's batches, to go back
    /// once a sync covers them (`housekeeping.rs` runs the syncer), so the worker
    /// applies the next drain while the last one syncs.
    pub syncer: Option<Sender<Vec<Batch>>>,
    /// The syncer's end, taken once by the thread that runs it.
    pub synced_batches: Mutex<Option<Receiver<Vec<Batch>>>>,
    /// Counters for STATS.
    pub stats: WorkerStats,
}

impl WorkerShared {
    /// A worker's state over `partition`, logged to `log` when there is one.
    pub fn new(partition: Partition, log: Option<PartitionLog>) -> Self {
        let sync = log.as_ref().map(|log| (log.sync_handle(), log.policy()));
        let (syncer, synced_batches) = match &sync {
            Some((_, FsyncPolicy::Always)) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                (Some(tx), Mutex::new(Some(rx)))
            }
            _ => (None, Mutex::new(None)),
        };
        let mut shared =
            WorkerShared { log: Mutex::new(None), sync, syncer, synced_batches, ..WorkerShared::default() };
        // STATS shows what was loaded before the first request reaches this worker.
        let mut partition = partition;
        shared.publish(&mut partition, &mut Subscriptions::default(), log.as_ref());
        shared.partition = Mutex::new(partition);
        shared.log = Mutex::new(log);
        shared
    }

    /// Publishes what a drain did: its events to the subscribers (one lock per bucket
    /// written to, whatever the number of events and subscribers), its counters to
    /// STATS. Runs before the drain's replies go out.
    fn publish(
        &self,
        partition: &mut Partition,
        subscriptions: &mut Subscriptions,
        log: Option<&PartitionLog>,
    ) {
        subscriptions.flush();
        self.stats.buckets.store(partition.bucket_count(), Ordering::Relaxed);
        self.stats.keys.store(partition.key_count(), Ordering::Relaxed);
        self.stats.largest_value.store(partition.largest_value(), Ordering::Relaxed);
        self.stats.subscribers_dropped.store(subscriptions.dropped_total(), Ordering::Relaxed);
        partition.publish_memory();
        self.stats.memory.store(partition.memory_used(), Ordering::Relaxed);
        if let Some(log) = log {
            self.stats.log_bytes.store(log.total_bytes(), Ordering::Relaxed);
        }
    }

    /// Applies `batch` under the partition's locks, already held, and counts what the
    /// log refused.
    fn apply_locked(
        &self,
        batch: &mut Batch,
        partition: &mut Partition,
        subscriptions: &mut Subscriptions,
        log: &mut Option<PartitionLog>,
    ) {
        let refused = batch.apply(partition, subscriptions, log.as_mut());
        if refused > 0 {
            self.stats.persistence_errors.fetch_add(refused, Ordering::Relaxed);
        }
    }

    /// With `--fsync always`: syncs what this partition's log wrote, before the replies
    /// of `batches`, which wrote it, go out. If the sync fails (or an earlier failure
    /// may have lost their records), their writes' replies say so instead of `OK`
    /// ([`Batch::settle_sync`]): the writes stay applied, only not known to be on disk.
    pub fn sync_replies<'b>(&self, batches: impl IntoIterator<Item = &'b mut Batch>) {
        let Some((sync, FsyncPolicy::Always)) = &self.sync else { return };
        self.sync_now();
        let unsynced: usize = batches.into_iter().map(|batch| batch.settle_sync(sync)).sum();
        if unsynced > 0 {
            log::error!("{unsynced} applied writes answered as not synced to disk");
        }
    }

    /// Syncs this partition's log if it was written to, whatever the policy; a
    /// failure is logged and counted.
    pub fn sync_now(&self) {
        if let Some((sync, _)) = &self.sync
            && let Err(error) = sync.sync_if_dirty()
        {
            self.stats.persistence_errors.fetch_add(1, Ordering::Relaxed);
            log::error!("fsync of a partition log failed: {error}");
        }
    }

    /// Fault injection (`DEBUG FAILSYNC`): the next sync of this partition's log fails.
    /// False without a log.
    pub fn fail_next_sync(&self) -> bool {
        let Some((sync, _)) = &self.sync else { return false };
        sync.fail_next_sync();
        true
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

/// When a connection may apply a batch on its own thread ([`apply_inline`]); the
/// server chooses by how many connections are open (`state.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inline {
    /// Never: every batch goes to its worker (fault injection is on).
    Never,
    /// When the worker's partition is free this instant (no more connections than
    /// cores); otherwise the batch goes to the worker.
    IfFree,
    /// Rounds of at most [`INLINE_WAIT_MAX_REQUESTS`] requests wait for the partition
    /// and apply here; larger rounds go to the workers (more connections than cores).
    SmallRounds,
}

/// Most requests in a round that a connection applies itself, waiting for the
/// partition's lock, when there are more connections than cores.
///
/// At depth 1 the worker hop is two thread hand-offs and about two more yields for
/// one request: applying it on the connection thread leaves the one wake-up a thread
/// per connection cannot avoid (its socket), for a third less CPU per request. Deeper
/// rounds stay with the workers: 64 connections waiting for the lock with 4 requests
/// each convoyed (p99 1.6 ms to 16-19 ms, with or without a fair unlock), while one
/// worker draining many connections' batches under one lock is what batching is for.
/// BENCHMARKS.md, "Cost per request (issue 15)".
pub const INLINE_WAIT_MAX_REQUESTS: usize = 1;

/// Applies `batch` on the calling (connection) thread instead of its worker's: if the
/// worker's partition is free this instant, or, with `wait`, once it is. Returns true
/// when every request of the batch has its reply; false leaves the batch to be sent
/// to the worker as usual.
///
/// The worker hop is the whole cost of a request at pipeline depth 1 (two thread
/// hand-offs per request; BENCHMARKS.md, "What the worker hop costs"), so a
/// connection may skip it ([`Inline`] says when; the caller checks). Falling back to
/// the worker when the lock is taken is right while there are no more connections
/// than cores; with more, it makes a request wait for a worker's wake-up behind the
/// holder (p99 up 3-10x; BENCHMARKS.md, "Cost per request (issue 15)"), so shallow rounds wait for the lock.
///
/// Same locks, same order of application as the worker: to every other client the
/// request looks served by the worker. Batches that register a subscription always
/// go to the worker. If applying panics, the partial reply is dropped and false is
/// returned: the worker then replays the failed request from the batch's cursor and
/// crashes on it the supervised way (`ERROR worker crashed`, restart counted).
pub fn apply_inline(shared: &WorkerShared, batch: &mut Batch, wait: bool) -> bool {
    if batch.has_subscriber() {
        return false;
    }
    let Some(mut partition) = lock_or_try(&shared.partition, wait) else {
        return false;
    };
    let Some(mut subscriptions) = lock_or_try(&shared.subscriptions, wait) else {
        return false;
    };
    let Some(mut log) = lock_or_try(&shared.log, wait) else {
        return false;
    };
    let applied = panic::catch_unwind(AssertUnwindSafe(|| {
        shared.apply_locked(batch, &mut partition, &mut subscriptions, &mut log);
        shared.publish(&mut partition, &mut subscriptions, log.as_ref());
    }));
    if applied.is_err() {
        batch.discard_partial_reply();
        return false;
    }
    true
}

/// `mutex`'s guard: waiting for it with `wait`, else only if it is free now.
fn lock_or_try<T>(mutex: &Mutex<T>, wait: bool) -> Option<parking_lot::MutexGuard<'_, T>> {
    if wait { Some(mutex.lock()) } else { mutex.try_lock() }
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
        unfinished: Option<Box<Batch>>,
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
            let mut crashed = in_hand.current.take();
            if let Some(batch) = crashed.as_mut() {
                batch.answer_crashed(CRASHED);
                // The locks were released while unwinding.
                let partition = shared.partition.lock();
                batch.settle(&partition, shared.log.lock().as_mut());
            }
            // What the finished batches (and the crashed one, before the crash) wrote
            // is synced before their replies go out, as `serve` does.
            shared.sync_replies(in_hand.done.iter_mut().chain(crashed.as_mut()));
            // So are the events of the changes applied before the crash.
            shared.subscriptions.lock().flush();
            for batch in in_hand.done.drain(..) {
                batch.send_back();
            }
            let unfinished = crashed.and_then(|batch| {
                if batch.is_done() {
                    batch.send_back();
                    None
                } else {
                    Some(Box::new(batch))
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
            let mut log = shared.log.lock();
            while let Some(batch) = in_hand.current.as_mut() {
                shared.apply_locked(batch, &mut partition, &mut subscriptions, &mut log);
                in_hand.done.extend(in_hand.current.take());
                if in_hand.done.len() == MAX_BATCHES_PER_LOCK {
                    break;
                }
                in_hand.current = inbox.try_recv().ok();
            }
            shared.publish(&mut partition, &mut subscriptions, log.as_ref());
        }
        send_back_synced(shared, &mut in_hand.done);
    }
}

/// Sends a drain's batches back once what they wrote is synced, if the policy asks for
/// that: through the syncer when there is one (the worker goes on meanwhile), else
/// with one sync here for the whole drain, outside the lock, before any reply.
fn send_back_synced(shared: &WorkerShared, done: &mut Vec<Batch>) {
    if let Some(syncer) = &shared.syncer {
        match syncer.send(std::mem::replace(done, Vec::with_capacity(MAX_BATCHES_PER_LOCK))) {
            Ok(()) => return,
            // No syncer running (it is started with the server): sync here.
            Err(crossbeam_channel::SendError(batches)) => *done = batches,
        }
    }
    shared.sync_replies(done.iter_mut());
    for batch in done.drain(..) {
        batch.send_back();
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

/// The seeds of [`worker_for`]'s hash, and the number they are made from.
struct Placement {
    seed: u64,
    hasher: ahash::RandomState,
}

impl Placement {
    #[inline]
    fn worker_for(&self, bucket: &[u8], workers: usize) -> usize {
        (self.hasher.hash_one(bucket) % workers.max(1) as u64) as usize
    }
}

static PLACEMENT: std::sync::OnceLock<Placement> = std::sync::OnceLock::new();

fn placement(seed: u64) -> Placement {
    let hasher = ahash::RandomState::with_seeds(
        seed,
        seed.rotate_left(17) ^ 0x6b76_5f70_6172_7469,
        seed.rotate_left(31) ^ 0x7469_6f6e_5f73_6565,
        seed.rotate_left(47) ^ 0x645f_6f6e_655f_7477,
    );
    Placement { seed, hasher }
}

/// The seed [`worker_for`] hashes with: drawn at random the first time it is asked
/// for, unless [`use_worker_seed`] set it first.
pub fn worker_seed() -> u64 {
    PLACEMENT.get_or_init(random_placement).seed
}

fn random_placement() -> Placement {
    placement(ahash::RandomState::new().hash_one(std::process::id()))
}

/// Makes [`worker_for`] hash with `seed`, if nothing has used it yet: a data directory
/// keeps the seed it was written with, so a restart finds every bucket where it was
/// and need not move the data. Returns false if another seed was already in use.
pub fn use_worker_seed(seed: u64) -> bool {
    PLACEMENT.get_or_init(|| placement(seed)).seed == seed
}

/// Which of `workers` owns `bucket`: the one function every part of kv asks.
///
/// An ahash of the name under a seed chosen once per process (or kept by its data
/// directory), so that a client cannot pick names that all land on one worker.
/// Anything stored by worker is placed again by this function when it is loaded.
#[inline]
pub fn worker_for(bucket: &[u8], workers: usize) -> usize {
    PLACEMENT.get_or_init(random_placement).worker_for(bucket, workers)
}

/// What [`worker_for`] answers in a process whose seed is `seed` (another kv's, read
/// from its data directory with `persist::stored_seed`): for a test or a tool that
/// must know where that process keeps a bucket.
pub fn worker_for_seed(seed: u64, bucket: &[u8], workers: usize) -> usize {
    placement(seed).worker_for(bucket, workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reply of a batch, concatenated.
    fn replies_of(batch: &Batch) -> Vec<u8> {
        (0..batch.reply_count()).flat_map(|i| batch.reply(i).unwrap_or_default().to_vec()).collect()
    }

    #[test]
    fn worker_for_seed_places_as_the_process_does_under_its_seed() {
        let seed = worker_seed();
        for bucket in [&b"a"[..], b"shopping", b"\xff\x00", b""] {
            for workers in [1, 2, 3, 8] {
                assert_eq!(worker_for_seed(seed, bucket, workers), worker_for(bucket, workers));
            }
        }
        let spread: std::collections::HashSet<usize> =
            (0..64u8).map(|b| worker_for_seed(seed ^ 1, &[b], 4)).collect();
        assert_eq!(spread.len(), 4, "another seed still spreads buckets over every worker");
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
        batch.push_request(&crate::protocol::parse(b"CREATE b"));
        batch.push_request(&crate::protocol::parse(b"PUT b k v"));
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
            batch.push_request(&crate::protocol::parse(line));
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
        assert!(matches!(run(&shared, &inbox_rx, unfinished.map(|batch| *batch)), Outcome::Clean));
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
            batch.push_request(&crate::protocol::parse(line));
        }
        {
            let _held = shared.partition.lock();
            assert!(!apply_inline(&shared, &mut batch, false), "a held partition must be left to the worker");
            assert_eq!(batch.reply_count(), 0);
        }
        assert!(apply_inline(&shared, &mut batch, false));
        assert_eq!(replies_of(&batch), b"OK\r\nOK\r\n3\r\nOK\r\n");
        assert_eq!(shared.stats.keys.load(Ordering::Relaxed), 1, "STATS figures are published");
    }

    #[test]
    fn apply_inline_with_wait_serves_a_batch_once_the_holder_lets_go() {
        let shared = Arc::new(WorkerShared::default());
        let (reply_tx, _reply_rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(0, reply_tx);
        batch.push_request(&crate::protocol::parse(b"CREATE shopping"));
        let held = shared.partition.lock();
        let waiting = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let served = apply_inline(&shared, &mut batch, true);
                (served, replies_of(&batch))
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiting.is_finished(), "it must wait for the partition, not skip it");
        drop(held);
        assert_eq!(waiting.join().unwrap(), (true, b"OK\r\n".to_vec()));
    }

    #[test]
    fn under_fsync_always_a_failed_sync_turns_the_applied_writes_replies_into_errors() {
        use crate::protocol::Command;
        let (log, dir) = crate::persist::test_log("worker-failsync", FsyncPolicy::Always);
        let shared = WorkerShared::new(Partition::new(), Some(log));
        let (reply_tx, _reply_rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(0, reply_tx);
        batch.set_dialect(crate::protocol::Dialect::Resp2);
        let (b, k) = (&b"b"[..], &b"k"[..]);
        for command in [
            Command::HSet { bucket: b, key: k, value: b"1" },
            Command::HGet { bucket: b, key: k },
            Command::HDel { bucket: b, key: b"missing" },
            Command::Del { bucket: b"nothing" },
        ] {
            batch.push_request(&command);
        }
        // The path of a connection applying its batch itself.
        assert!(shared.fail_next_sync());
        assert!(apply_inline(&shared, &mut batch, true));
        shared.sync_replies([&mut batch]);
        let not_synced: &[u8] = b"-ERR applied but not synced to disk: injected by DEBUG FAILSYNC\r\n";
        // The writes that reached the log are answered so, even one that changed
        // nothing (HDEL of a missing field); the read keeps its reply, and so does the
        // write that logged nothing (DEL of a missing bucket).
        let expected = [not_synced, b"$1\r\n1\r\n", not_synced, b":0\r\n"].concat();
        assert_eq!(replies_of(&batch), expected);
        assert_eq!(shared.partition.lock().get(b, k), Ok(Some(&b"1"[..])), "the write stays applied");
        assert_eq!(shared.stats.persistence_errors.load(Ordering::Relaxed), 1);

        // The next sync succeeds: its writes are answered as usual.
        batch.clear();
        batch.push_request(&Command::HSet { bucket: b, key: k, value: b"2" });
        assert!(apply_inline(&shared, &mut batch, true));
        shared.sync_replies([&mut batch]);
        assert_eq!(replies_of(&batch), b":0\r\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_sync_reaches_the_writes_a_crashed_batch_applied_before_its_crash() {
        let (log, dir) = crate::persist::test_log("worker-failsync-crash", FsyncPolicy::Always);
        let shared = WorkerShared::new(Partition::new(), Some(log));
        let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(0, reply_tx);
        for line in [&b"CREATE b"[..], b"PUT b k 1", b"DEBUG CRASH b"] {
            batch.push_request(&crate::protocol::parse(line));
        }
        inbox_tx.send(batch).unwrap();
        drop(inbox_tx);
        assert!(shared.fail_next_sync());
        assert!(matches!(run(&shared, &inbox_rx, None), Outcome::Crashed { unfinished: None, .. }));
        let not_synced = b"ERROR applied but not synced to disk: injected by DEBUG FAILSYNC\r\n";
        let expected = [&not_synced[..], not_synced, b"ERROR worker crashed\r\n"].concat();
        assert_eq!(replies_of(&reply_rx.try_recv().unwrap()), expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_crash_inline_is_replayed_by_the_worker_as_a_worker_crash() {
        let shared = WorkerShared::default();
        let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(0, reply_tx);
        for line in [&b"CREATE b"[..], b"PUT b k 1", b"DEBUG CRASH b", b"GET b k"] {
            batch.push_request(&crate::protocol::parse(line));
        }
        assert!(!apply_inline(&shared, &mut batch, true));
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
        assert!(matches!(run(&shared, &inbox_rx, unfinished.map(|batch| *batch)), Outcome::Clean));
        let batch = reply_rx.try_recv().unwrap();
        assert_eq!(replies_of(&batch), b"OK\r\nOK\r\nERROR worker crashed\r\n1\r\nOK\r\n");
    }

    #[test]
    fn a_crash_at_the_last_request_sends_the_batch_back_at_once() {
        let shared = WorkerShared::default();
        let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let mut finished = Batch::new(0, reply_tx.clone());
        finished.push_request(&crate::protocol::parse(b"CREATE a"));
        let mut crashing = Batch::new(0, reply_tx);
        crashing.push_request(&crate::protocol::parse(b"DEBUG CRASH a"));
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
