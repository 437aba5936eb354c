//! One partition's log: the segment being appended to, the records of the commit in
//! progress, and what a flusher needs to sync it without the partition's lock.
//!
//! A commit is one `write` of every record of a batch, made under the partition's lock
//! before the batch's changes are applied; if it fails, the file is cut back to where
//! it was, so a half-written commit never stays between two good ones. Syncing is
//! separate ([`LogSync`]): `always` syncs after the commit, before the replies go out;
//! `everysec` leaves it to the flusher thread; `no` leaves it to the kernel.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::record::{self, FileKind, Op};
use super::{FsyncPolicy, sync_dir};

/// How long a sync may run before writers wait for it, as Redis's `everysec` does: so
/// a disk that stalls makes writes slow instead of letting unsynced data pile up.
pub const STUCK_SYNC: Duration = Duration::from_secs(2);

/// The file name of segment or snapshot `seq`.
pub fn file_name(seq: u64, kind: FileKind) -> String {
    match kind {
        FileKind::Segment => format!("{seq:010}.log"),
        FileKind::Snapshot => format!("{seq:010}.snap"),
    }
}

/// The number and kind of a data file from its name (`0000000003.log` is segment 3),
/// the reverse of [`file_name`]; `None` for any other file.
pub fn parse_file_name(name: &str) -> Option<(u64, FileKind)> {
    if let Some(seq) = name.strip_suffix(".log") {
        return seq.parse().ok().map(|seq| (seq, FileKind::Segment));
    }
    name.strip_suffix(".snap")?.parse().ok().map(|seq| (seq, FileKind::Snapshot))
}

/// Creates segment `seq` in `dir`, header written and synced, the directory too.
pub fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let path = dir.join(file_name(seq, FileKind::Segment));
    let mut file = OpenOptions::new().create_new(true).append(true).open(&path)?;
    file.write_all(&record::header(FileKind::Segment))?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// What the flusher and the `always` path need, shared outside the partition's lock.
#[derive(Debug)]
pub struct LogSync {
    /// The segment now appended to (replaced on rotation).
    file: Mutex<Arc<File>>,
    /// Written since the last sync.
    dirty: AtomicBool,
    /// Held for the whole of a sync: a caller that finds nothing dirty may return only
    /// once a sync that began after its write has finished (see `sync_if_dirty`).
    syncing: Mutex<()>,
    /// When the running sync began, in ms since `epoch` plus one; 0 when none runs.
    syncing_since: AtomicU64,
    synced: Condvar,
    synced_lock: Mutex<()>,
    epoch: Instant,
    /// When the last sync finished, as `syncing_since`.
    last_sync: AtomicU64,
    /// Commits that waited for a stuck sync.
    pub delayed: AtomicU64,
    /// Bytes ever committed to the partition's log, across segments: a commit's
    /// records are the bytes between this counter's values before and after it.
    appended: AtomicU64,
    /// Every byte before this one was covered by a sync that succeeded.
    synced_through: AtomicU64,
    /// Bytes from `failed_from` to `failed_through` may have been lost by a sync that
    /// failed: Linux reports a failed write-back once and may then mark the pages
    /// clean, so a later sync that succeeds does not make them safe
    /// ([`LogSync::covers`]). One range covers every failure so far, so after two it
    /// may take in bytes confirmed between them: it errs towards saying "not synced".
    failed_from: AtomicU64,
    failed_through: AtomicU64,
    /// Failed syncs so far: a commit whose write overlapped one widens the failed
    /// range to take in its bytes ([`PartitionLog::commit`]).
    failures: AtomicU64,
    /// Why the last failed sync failed.
    failure: Mutex<String>,
    /// Fault injection (`DEBUG FAILSYNC`): the next sync fails without syncing.
    fail_next: AtomicBool,
}

impl LogSync {
    fn new(file: Arc<File>) -> Self {
        LogSync {
            file: Mutex::new(file),
            dirty: AtomicBool::new(false),
            syncing: Mutex::new(()),
            syncing_since: AtomicU64::new(0),
            synced: Condvar::new(),
            synced_lock: Mutex::new(()),
            epoch: Instant::now(),
            last_sync: AtomicU64::new(1),
            delayed: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            synced_through: AtomicU64::new(0),
            failed_from: AtomicU64::new(u64::MAX),
            failed_through: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failure: Mutex::new(String::new()),
            fail_next: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Syncs the current segment if anything was written since the last sync; on
    /// return, everything written before the call is on disk.
    ///
    /// Syncs are serialized: with `always`, a worker and a connection applying inline
    /// both sync the same log, and without the lock the second would find `dirty`
    /// already cleared by the first, whose sync is still running, and send its `OK`
    /// before its record is on disk.
    pub fn sync_if_dirty(&self) -> io::Result<()> {
        let _syncing = self.syncing.lock();
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        // Read after `dirty` was cleared: every byte counted here was written before
        // the sync below begins, so it covers them.
        let target = self.appended.load(Ordering::Acquire);
        let file = self.file.lock().clone();
        self.syncing_since.store(self.now_ms(), Ordering::Release);
        let result = if self.fail_next.swap(false, Ordering::AcqRel) {
            Err(io::Error::other("injected by DEBUG FAILSYNC"))
        } else {
            file.sync_data()
        };
        self.syncing_since.store(0, Ordering::Release);
        self.last_sync.store(self.now_ms(), Ordering::Relaxed);
        match &result {
            Ok(()) => {
                self.synced_through.fetch_max(target, Ordering::AcqRel);
            }
            Err(error) => {
                self.dirty.store(true, Ordering::Release);
                self.failed(error);
            }
        }
        let _guard = self.synced_lock.lock();
        self.synced.notify_all();
        result
    }

    /// Marks everything written so far as possibly lost: read after the failure, so
    /// that it takes in every byte the failed write-back may have dropped.
    fn failed(&self, error: &io::Error) {
        *self.failure.lock() = error.to_string();
        self.failed_from.fetch_min(self.synced_through.load(Ordering::SeqCst), Ordering::SeqCst);
        self.failed_through.fetch_max(self.appended.load(Ordering::SeqCst), Ordering::SeqCst);
        self.failures.fetch_add(1, Ordering::SeqCst);
    }

    /// Syncs `file` (a segment being retired) under the same lock as every other sync:
    /// the kernel reports a failed write-back to one sync only, so a sync of the same
    /// file running beside this one could report success for pages this one found
    /// lost, and settle its replies before the failure was recorded.
    fn sync_retired(&self, file: &File) -> io::Result<()> {
        let _syncing = self.syncing.lock();
        let result = file.sync_data();
        if let Err(error) = &result {
            self.failed(error);
        }
        result
    }

    /// Whether the bytes `start..end` of the log (as [`LogSync::appended`] counts them)
    /// are known to be on disk, after a sync that began once they were written: `Err`
    /// with the reason when a failed sync may have lost them, or none has covered them.
    pub fn covers(&self, start: u64, end: u64) -> Result<(), String> {
        if start < self.failed_through.load(Ordering::Acquire)
            && end > self.failed_from.load(Ordering::Acquire)
        {
            return Err(self.failure.lock().clone());
        }
        if self.synced_through.load(Ordering::Acquire) < end {
            return Err("not synced".to_string());
        }
        Ok(())
    }

    /// How many syncs of this log have failed.
    pub fn failed_syncs(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    /// Bytes ever committed to the log.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    /// Fault injection: the next sync that has something to sync fails.
    pub fn fail_next_sync(&self) {
        self.fail_next.store(true, Ordering::Release);
    }

    /// Waits while a sync has been running for longer than [`STUCK_SYNC`].
    fn wait_if_stuck(&self) {
        let since = self.syncing_since.load(Ordering::Acquire);
        if since == 0 || self.now_ms().saturating_sub(since) < STUCK_SYNC.as_millis() as u64 {
            return;
        }
        self.delayed.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.synced_lock.lock();
        while self.syncing_since.load(Ordering::Acquire) != 0 {
            self.synced.wait_for(&mut guard, Duration::from_millis(100));
        }
    }

    /// Milliseconds since the last sync finished.
    pub fn last_sync_age_ms(&self) -> u64 {
        self.now_ms().saturating_sub(self.last_sync.load(Ordering::Relaxed))
    }
}

/// One partition's log, owned under the partition's lock.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    policy: FsyncPolicy,
    file: Arc<File>,
    /// The segment appended to.
    seq: u64,
    /// Bytes of it known good: a failed commit is cut back to here.
    good_len: u64,
    /// Bytes of every live file of the partition, for the compaction trigger.
    total: u64,
    /// Records of the commit in progress.
    pending: Vec<u8>,
    /// A failed commit could not be cut back: the next commit tries again first.
    needs_trim: bool,
    sync: Arc<LogSync>,
}

impl PartitionLog {
    /// Appends to segment `seq` of `dir`, whose good length is `len`; the partition's
    /// live files hold `total` bytes in all.
    pub fn open(dir: &Path, seq: u64, len: u64, total: u64, policy: FsyncPolicy) -> io::Result<Self> {
        let path = dir.join(file_name(seq, FileKind::Segment));
        let file = Arc::new(OpenOptions::new().append(true).open(path)?);
        Ok(PartitionLog {
            dir: dir.to_path_buf(),
            policy,
            sync: Arc::new(LogSync::new(file.clone())),
            file,
            seq,
            good_len: len,
            total,
            pending: Vec::new(),
            needs_trim: false,
        })
    }

    /// The shared half, for the flusher and for syncing after a round.
    pub fn sync_handle(&self) -> Arc<LogSync> {
        self.sync.clone()
    }

    /// Bytes ever committed to this log ([`LogSync::appended`]).
    pub fn appended(&self) -> u64 {
        self.sync.appended()
    }

    /// The partition's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fsync policy.
    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// Bytes of every live file of the partition.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Adds one change to the commit in progress.
    #[inline]
    pub fn push(&mut self, op: &Op<'_>) {
        record::encode(op, &mut self.pending);
    }

    /// Writes the commit in progress with one `write`. On failure the segment is cut
    /// back to where it was and the reason returned; nothing of it stays.
    pub fn commit(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.sync.wait_if_stuck();
        let failures = self.sync.failures.load(Ordering::SeqCst);
        let result = self.trim_if_needed().and_then(|()| (&*self.file).write_all(&self.pending));
        let written = self.pending.len() as u64;
        self.pending.clear();
        if let Err(error) = result {
            self.needs_trim = true;
            let _ = self.trim_if_needed();
            return Err(error.to_string());
        }
        self.good_len += written;
        self.total += written;
        // Counted before `dirty` is set: a sync that sees `dirty` also sees the bytes.
        // Only this log's holder writes the counter.
        let appended = self.sync.appended.load(Ordering::SeqCst) + written;
        self.sync.appended.store(appended, Ordering::SeqCst);
        // A sync that failed while these bytes were being written counted the log
        // without them, though their pages may have been in its write-back.
        if self.sync.failures.load(Ordering::SeqCst) != failures {
            self.sync.failed_through.fetch_max(appended, Ordering::SeqCst);
        }
        self.sync.dirty.store(true, Ordering::Release);
        if self.pending.capacity() > 1024 * 1024 {
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// Cuts a segment a failed commit left long back to its good length.
    fn trim_if_needed(&mut self) -> io::Result<()> {
        if self.needs_trim {
            self.file.set_len(self.good_len)?;
            self.needs_trim = false;
        }
        Ok(())
    }

    /// Starts segment `seq + 1` and appends to it from now on; returns its number. The
    /// old segment stays as it is, for compaction to sync and later delete.
    pub fn rotate(&mut self) -> io::Result<u64> {
        self.trim_if_needed()?;
        // Synced before the next segment exists: a sync that runs after the switch
        // syncs the new segment only, and a `--fsync always` commit made just before
        // this rotation may not have been synced yet. Also, a crash must never leave a
        // torn record in a segment that is not the newest (load would call it damage).
        self.sync.sync_retired(&self.file)?;
        let next = self.seq + 1;
        let file = Arc::new(create_segment(&self.dir, next)?);
        self.file = file.clone();
        *self.sync.file.lock() = file;
        self.seq = next;
        self.good_len = record::HEADER_LEN as u64;
        self.total += self.good_len;
        Ok(next)
    }

    /// After compaction replaced the files before segment `from` with a snapshot of
    /// `snapshot_len` bytes: the live total is that plus the segments from `from` on.
    pub fn compacted(&mut self, from: u64, snapshot_len: u64) -> io::Result<()> {
        let mut total = snapshot_len;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some((seq, FileKind::Segment)) = parse_file_name(&name)
                && seq >= from
            {
                total += if seq == self.seq { self.good_len } else { entry.metadata()?.len() };
            }
        }
        self.total = total;
        Ok(())
    }
}

/// A fresh log in a new directory `kv-log-<tag>-<pid>` under the system's temporary
/// one, for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn test_log(tag: &str, policy: FsyncPolicy) -> (PartitionLog, PathBuf) {
    let dir = tests::temp_dir(tag);
    drop(create_segment(&dir, 1).unwrap());
    let header = record::HEADER_LEN as u64;
    (PartitionLog::open(&dir, 1, header, header, policy).unwrap(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kv-log-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Commits one record; the bytes it wrote, as `appended` counts them.
    fn commit_one(log: &mut PartitionLog) -> (u64, u64) {
        let start = log.appended();
        log.push(&Op::Put { bucket: b"b", key: b"k", value: b"v" });
        log.commit().unwrap();
        (start, log.appended())
    }

    #[test]
    fn bytes_a_failed_sync_may_have_lost_stay_unconfirmed_after_later_syncs_succeed() {
        let (mut log, dir) = test_log("covers", FsyncPolicy::Always);
        let first = commit_one(&mut log);
        log.sync.sync_if_dirty().unwrap();
        assert_eq!(log.sync.covers(first.0, first.1), Ok(()));

        let lost = commit_one(&mut log);
        assert_eq!(log.sync.covers(lost.0, lost.1), Err("not synced".to_string()), "before any sync");
        log.sync.fail_next_sync();
        assert!(log.sync.sync_if_dirty().is_err());
        assert!(log.sync.dirty.load(Ordering::Acquire), "a failed sync leaves the log dirty");
        // The retry succeeds, as Linux's does once it has reported the error; the bytes
        // the failure covered are still not known to be on disk.
        log.sync.sync_if_dirty().unwrap();
        let reason = Err("injected by DEBUG FAILSYNC".to_string());
        assert_eq!(log.sync.covers(lost.0, lost.1), reason);
        // What was confirmed before stays so; what is written after is confirmed.
        assert_eq!(log.sync.covers(first.0, first.1), Ok(()));
        let after = commit_one(&mut log);
        log.sync.sync_if_dirty().unwrap();
        assert_eq!(log.sync.covers(after.0, after.1), Ok(()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_commit_is_one_write_of_every_pending_record() {
        let dir = temp_dir("commit");
        drop(create_segment(&dir, 1).unwrap());
        let header = record::HEADER_LEN as u64;
        let mut log = PartitionLog::open(&dir, 1, header, header, FsyncPolicy::Always).unwrap();
        log.push(&Op::Create { bucket: b"b" });
        log.push(&Op::Put { bucket: b"b", key: b"k", value: b"v" });
        log.commit().unwrap();
        let bytes = fs::read(dir.join(file_name(1, FileKind::Segment))).unwrap();
        assert_eq!(bytes.len() as u64, log.total_bytes());
        assert!(log.sync.dirty.load(Ordering::Acquire));
        log.sync.sync_if_dirty().unwrap();
        assert!(!log.sync.dirty.load(Ordering::Acquire));
        let next = log.rotate().unwrap();
        assert_eq!(next, 2);
        assert!(dir.join(file_name(2, FileKind::Segment)).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
