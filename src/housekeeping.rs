//! The persistence threads: the flusher, which syncs every partition's log once a
//! second under `--fsync everysec`; under `--fsync always`, one syncer per partition,
//! which syncs once for every drain its worker handed over and then sends their
//! replies (group commit); and the compactor, which replaces a partition's old
//! segments with a snapshot once they grow past their limit.
//!
//! Compaction never forks and never copies the data whole: it starts a new segment
//! under the partition's lock, then writes the snapshot in chunks of about
//! `persist::CHUNK_BYTES`, taking the lock for one chunk at a time, so a write waits at
//! most one chunk's copy. Why a snapshot written while writes go on is safe to replay is
//! in `persist/mod.rs`.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::persist::{FileKind, FsyncPolicy, SnapshotWriter, bucket_records, parse_file_name};
use crate::worker::WorkerShared;

/// How often the flusher syncs and the compactor looks at log sizes.
const TICK: Duration = Duration::from_secs(1);

/// How long the compactor leaves a partition alone after a compaction failed.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// The running persistence threads; dropping it stops them.
#[derive(Debug)]
pub(crate) struct Housekeeping {
    stop: Option<Sender<()>>,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Housekeeping {
    /// Starts the flusher (with `everysec`) and the compactor for `workers`' logs.
    pub fn start(workers: &[Arc<WorkerShared>], policy: FsyncPolicy, compact_min: u64) -> io::Result<Self> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let stopping = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if policy == FsyncPolicy::EverySec {
            let (workers, stop) = (workers.to_vec(), stop_rx.clone());
            threads.push(
                thread::Builder::new()
                    .name("kv-flusher".into())
                    .spawn(move || flush_loop(&workers, &stop))?,
            );
        }
        for (p, worker) in workers.iter().enumerate() {
            let Some(batches) = worker.synced_batches.lock().take() else { continue };
            let (worker, flag) = (worker.clone(), stopping.clone());
            threads.push(thread::Builder::new().name(format!("kv-syncer-{p}")).spawn(move || {
                sync_loop(&worker, &batches, &flag);
                // Put back, so that a drain handed over after this thread stopped
                // is still there for `finish_synced` instead of lost.
                *worker.synced_batches.lock() = Some(batches);
            })?);
        }
        let (workers, stop, flag) = (workers.to_vec(), stop_rx, stopping.clone());
        threads.push(
            thread::Builder::new()
                .name("kv-compactor".into())
                .spawn(move || compact_loop(&workers, &stop, &flag, compact_min))?,
        );
        Ok(Housekeeping { stop: Some(stop_tx), stopping, threads })
    }

    /// Stops every thread (a compaction under way is abandoned: its unfinished
    /// snapshot is removed, every other file left as it was) and waits for them.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Housekeeping {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Syncs every log that was written to, once a second, until stopped.
fn flush_loop(workers: &[Arc<WorkerShared>], stop: &Receiver<()>) {
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(TICK) {
        for worker in workers {
            worker.sync_now();
        }
    }
}

/// With `--fsync always`, a partition's group commit: takes every drain the worker has
/// handed over since the last sync, syncs once, and sends their batches back. While it
/// syncs, the worker applies the next drains, which the next sync covers together.
/// Stops once told to and nothing is left.
fn sync_loop(worker: &WorkerShared, drains: &Receiver<Vec<crate::batch::Batch>>, stopping: &AtomicBool) {
    let mut ready = Vec::new();
    loop {
        match drains.recv_timeout(TICK) {
            Ok(drain) => ready.push(drain),
            Err(RecvTimeoutError::Timeout) if stopping.load(Ordering::Relaxed) => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        ready.extend(drains.try_iter());
        worker.sync_replies(ready.iter_mut().flatten());
        for batch in ready.drain(..).flatten() {
            batch.send_back();
        }
    }
}

/// At the very end of a stop: syncs and sends back any drain handed to `worker`'s
/// syncer after it stopped (a worker still busy when the syncer gave up waiting).
pub(crate) fn finish_synced(worker: &WorkerShared) {
    let mut left: Vec<Vec<crate::batch::Batch>> = match worker.synced_batches.lock().as_ref() {
        Some(drains) => drains.try_iter().collect(),
        None => return,
    };
    worker.sync_replies(left.iter_mut().flatten());
    for batch in left.into_iter().flatten() {
        batch.send_back();
    }
}

/// Compacts each partition whose log has outgrown its limit, or whose log a sync
/// failed to write since its last compaction, until stopped.
///
/// After a failed sync the records it covered may be gone from the disk though the
/// file still shows them (the kernel may drop pages whose write-back failed); a
/// snapshot of the partition, written from memory and synced, replaces those files,
/// so once it succeeds every write the partition holds is on disk again.
fn compact_loop(workers: &[Arc<WorkerShared>], stop: &Receiver<()>, stopping: &AtomicBool, compact_min: u64) {
    let mut failed_at: Vec<Option<Instant>> = vec![None; workers.len()];
    // Failed syncs of each log already answered by a compaction.
    let mut mended: Vec<u64> = workers.iter().map(|worker| failed_syncs(worker)).collect();
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(TICK) {
        for (p, worker) in workers.iter().enumerate() {
            let failed_syncs = failed_syncs(worker);
            if failed_at[p].is_some_and(|at| at.elapsed() < RETRY_AFTER)
                || (failed_syncs == mended[p] && !needs_compaction(worker, compact_min))
            {
                continue;
            }
            let started = Instant::now();
            match compact(worker, stopping) {
                Ok(true) => {
                    failed_at[p] = None;
                    mended[p] = failed_syncs;
                    worker.stats.compactions.fetch_add(1, Ordering::Relaxed);
                    log::info!("compacted partition {p} in {:?}", started.elapsed());
                }
                Ok(false) => return,
                Err(error) => {
                    failed_at[p] = Some(Instant::now());
                    log::error!("compaction of partition {p} failed (retrying in {RETRY_AFTER:?}): {error}");
                }
            }
        }
    }
}

/// How many syncs of `worker`'s log have failed (0 without a log).
fn failed_syncs(worker: &WorkerShared) -> u64 {
    worker.sync.as_ref().map_or(0, |(sync, _)| sync.failed_syncs())
}

/// True when `worker`'s log is past `compact_min` bytes and twice its live data.
fn needs_compaction(worker: &WorkerShared, compact_min: u64) -> bool {
    let log_bytes = worker.stats.log_bytes.load(Ordering::Relaxed);
    if worker.sync.is_none() || log_bytes <= compact_min {
        return false;
    }
    let live = worker.partition.lock().live_bytes() as u64;
    log_bytes > live.saturating_mul(2)
}

/// One compaction of `worker`'s partition. Ok(false): abandoned because the server
/// is stopping. On an error or an abandon the snapshot's temporary file is removed
/// (`SnapshotWriter` does it when dropped), so retries do not fill the disk.
fn compact(worker: &WorkerShared, stopping: &AtomicBool) -> io::Result<bool> {
    // Synced first, so that the sync `rotate` makes under the lock has little left.
    worker.sync_now();
    let (from, dir, buckets) = {
        let partition = worker.partition.lock();
        let mut log = worker.log.lock();
        let Some(log) = log.as_mut() else { return Ok(true) };
        (log.rotate()?, log.dir().to_path_buf(), partition.bucket_ids())
    };
    // The segments before `from` are complete; what they hold must be on disk before
    // the snapshot can stand in for them.
    sync_segments_before(&dir, from)?;
    let mut writer = SnapshotWriter::create(&dir, from)?;
    let mut chunk = Vec::new();
    for (name, id) in buckets {
        let (mut at, mut moves) = (None, None);
        loop {
            if stopping.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let next = {
                let partition = worker.partition.lock();
                let Some(bucket) = partition.bucket_with_id(&name, id) else { break };
                if moves.is_some_and(|moved| moved != bucket.moves()) {
                    // Records moved in the arena: read the bucket again from the start.
                    at = Some(0);
                }
                moves = Some(bucket.moves());
                bucket_records(&partition, &name, id, at, &mut chunk)
            };
            writer.write(&chunk)?;
            chunk.clear();
            match next {
                Some(next) => at = Some(next),
                None => break,
            }
        }
    }
    let snapshot_len = writer.publish()?;
    remove_before(&dir, from);
    if let Some(log) = worker.log.lock().as_mut() {
        log.compacted(from, snapshot_len)?;
        worker.stats.log_bytes.store(log.total_bytes(), Ordering::Relaxed);
    }
    Ok(true)
}

/// The number and kind of a data file at `path`.
fn data_file(path: &Path) -> Option<(u64, FileKind)> {
    parse_file_name(path.file_name()?.to_str()?)
}

fn sync_segments_before(dir: &Path, from: u64) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some((seq, FileKind::Segment)) = data_file(&path)
            && seq < from
        {
            fs::File::open(&path)?.sync_data()?;
        }
    }
    Ok(())
}

/// Removes the segments and snapshots the snapshot `from` replaces. A file left by a
/// failure here is removed at the next load.
fn remove_before(dir: &Path, from: u64) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if data_file(&path).is_some_and(|(seq, _)| seq < from) {
            let _ = fs::remove_file(&path);
        }
    }
}
