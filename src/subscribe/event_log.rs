//! A bucket's event log: the bytes of its events, appended once by the worker that
//! owns the bucket and read by every subscriber's connection thread through a cursor
//! of its own, so that an event costs the worker the same whatever the number of
//! subscribers.
//!
//! Offsets count bytes of the bucket's stream since the log was made. The worker
//! stages a batch's events in [`BucketLog`] without any lock and appends them to the
//! shared [`EventLog`] with one lock per batch, waking only the readers that wait for
//! events: a reader stuck writing to its client costs it nothing. Every reader is
//! looked at (gone? more than its limit behind?) only when one could have crossed its
//! limit, one has left, or the log grew by [`CHECK_EVERY`]; the log then drops what
//! every live cursor has read. This file owns no thread and does no I/O.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::sys::Bell;

/// Growth of the log between two looks at its readers when none is near its limit:
/// it bounds the bytes every reader has already read that the log still holds, and
/// makes the look (one pass over the readers) cost a fraction of a nanosecond per
/// event byte.
pub const CHECK_EVERY: u64 = 64 * 1024;

/// Capacity the log and the staging buffer keep when (nearly) empty; beyond it memory
/// goes back to the allocator.
const KEEP: usize = 64 * 1024;

/// The shared half: bytes and who waits for them.
#[derive(Debug, Default)]
pub struct EventLog {
    state: Mutex<LogState>,
    more: Condvar,
    /// `state.ended`, readable without the lock: a reader with no room for more
    /// events (its client is not reading) then returns without taking the lock.
    ended: AtomicBool,
}

#[derive(Debug, Default)]
struct LogState {
    /// The bytes from offset `start` on.
    bytes: VecDeque<u8>,
    start: u64,
    /// No event will follow (the bucket was dropped, or its worker let go).
    ended: bool,
    /// Readers blocked waiting for events: the only ones an append wakes.
    waiting: usize,
    /// Readers whose clients left since the worker last looked.
    left: usize,
    /// Readers registered and neither gone, dropped nor let go: when the last one
    /// leaves, the bytes go at once, not at the bucket's next write.
    live: usize,
    /// Readers that wait in `poll` for several logs at once ([`Cursor::arm`]), with
    /// their bells: each is rung once, at the next append or the end, and must arm
    /// again after.
    armed: Vec<(Arc<Cursor>, Arc<Bell>)>,
}

impl LogState {
    /// Stops counting `cursor` as live, if it still was; true if it was.
    fn release(&mut self, cursor: &Cursor) -> bool {
        // A branch, not `self.live -= usize::from(swap)`: rustc 1.95.0 dropped that
        // subtraction in release builds when `live` was read next (in `leave`), and the
        // log was never freed; `cargo test --release` caught it.
        if !cursor.counted.swap(false, Ordering::AcqRel) {
            return false;
        }
        self.live -= 1;
        true
    }

    fn head(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Copies bytes `from..from + n` (offsets) to `out`.
    fn copy(&self, from: u64, n: usize, out: &mut Vec<u8>) {
        let from = usize::try_from(from - self.start).unwrap_or(usize::MAX);
        let end = from + n;
        let (front, back) = self.bytes.as_slices();
        if from < front.len() {
            out.extend_from_slice(&front[from..end.min(front.len())]);
        }
        if end > front.len() {
            out.extend_from_slice(&back[from.saturating_sub(front.len())..end - front.len()]);
        }
    }
}

/// One subscriber's place in its bucket's log, seen by both ends.
#[derive(Debug, Default)]
pub struct Cursor {
    /// Set by the worker when it registers the subscriber.
    log: OnceLock<Arc<EventLog>>,
    /// Offset copied out up to; changed only under the log's lock.
    read: AtomicU64,
    /// Offset written to the client up to.
    pub(super) written: AtomicU64,
    /// The worker dropped this subscriber: too far behind.
    pub(super) dropped: AtomicBool,
    /// The connection's end is gone (the client left): the worker may forget it.
    gone: AtomicBool,
    /// Counted in the log's `live`; cleared (under the log's lock) by whoever removes
    /// it first, the worker or the leaving connection.
    counted: AtomicBool,
    /// The worker's end was let go without being registered: no event will come.
    abandoned: AtomicBool,
    /// In the log's `armed` list; changed only under the log's lock.
    armed: AtomicBool,
}

/// What a reader got.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Bytes were appended.
    Got,
    /// Nothing (yet), or no room for more.
    Nothing,
    /// Everything was read and no event will follow.
    Ended,
}

impl Cursor {
    /// Appends to `out` the events after the cursor, while `out` is under `max` bytes
    /// (all of them once the log has ended, so a stream ends after a bounded drain);
    /// if there is none and `out` is empty, waits up to `wait` for some.
    pub fn take(&self, out: &mut Vec<u8>, max: usize, wait: Duration) -> Take {
        let Some(log) = self.log.get() else {
            if self.abandoned.load(Ordering::Acquire) {
                return Take::Ended;
            }
            // Not registered yet: the connection streams only after it is.
            std::thread::sleep(wait.min(Duration::from_millis(10)));
            return Take::Nothing;
        };
        if out.len() >= max && !log.ended.load(Ordering::Acquire) {
            return Take::Nothing;
        }
        let mut state = log.state.lock();
        if let Some(took) = self.take_locked(&state, out, max) {
            return took;
        }
        if !out.is_empty() {
            return Take::Nothing;
        }
        state.waiting += 1;
        log.more.wait_for(&mut state, wait);
        state.waiting -= 1;
        self.take_locked(&state, out, max).unwrap_or(Take::Nothing)
    }

    /// Bytes of events in the log not yet rendered for the client: how far behind
    /// this reader is (0 before it is registered).
    pub fn behind(&self) -> u64 {
        let Some(log) = self.log.get() else { return 0 };
        let head = log.state.lock().head();
        head.saturating_sub(self.written.load(Ordering::Acquire))
    }

    /// Appends to `out` the events after the cursor there are now, while `out` is
    /// under `max` bytes (all of them once the log has ended), without waiting.
    pub fn take_now(&self, out: &mut Vec<u8>, max: usize) -> Take {
        let Some(log) = self.log.get() else {
            let abandoned = self.abandoned.load(Ordering::Acquire);
            return if abandoned { Take::Ended } else { Take::Nothing };
        };
        if out.len() >= max && !log.ended.load(Ordering::Acquire) {
            return Take::Nothing;
        }
        let state = log.state.lock();
        self.take_locked(&state, out, max).unwrap_or(Take::Nothing)
    }

    /// Asks for `bell` to be rung at the log's next append or end, for a reader that
    /// waits on several logs in one `poll`. False, and nothing asked, when there is
    /// already something to take (or to notice: the end, being dropped).
    pub fn arm(self: &Arc<Self>, bell: &Arc<Bell>) -> bool {
        let Some(log) = self.log.get() else {
            // Not registered yet (it is by the time a connection streams), or let go.
            return !self.abandoned.load(Ordering::Acquire);
        };
        let mut state = log.state.lock();
        let read = self.read.load(Ordering::Relaxed);
        if state.ended || self.dropped.load(Ordering::Acquire) || read < state.start || read < state.head() {
            return false;
        }
        if !self.armed.swap(true, Ordering::AcqRel) {
            state.armed.push((self.clone(), bell.clone()));
        }
        true
    }

    /// What there is to take now; `None` if the reader should wait.
    fn take_locked(&self, state: &LogState, out: &mut Vec<u8>, max: usize) -> Option<Take> {
        let read = self.read.load(Ordering::Relaxed);
        if self.dropped.load(Ordering::Acquire) || read < state.start {
            // The stream loop sees `dropped` and ends the stream.
            self.dropped.store(true, Ordering::Release);
            return Some(Take::Nothing);
        }
        let head = state.head();
        if read < head {
            let room = if state.ended { usize::MAX } else { max.saturating_sub(out.len()) };
            if room == 0 {
                return Some(Take::Nothing);
            }
            let n = usize::try_from(head - read).unwrap_or(usize::MAX).min(room);
            state.copy(read, n, out);
            self.read.store(read + n as u64, Ordering::Relaxed);
            return Some(Take::Got);
        }
        state.ended.then_some(Take::Ended)
    }

    /// The client left: the worker forgets this cursor at its next look; if it was
    /// the last live one, the log lets go of its bytes now.
    pub fn leave(&self) {
        let Some(log) = self.log.get() else {
            self.gone.store(true, Ordering::Release);
            return;
        };
        let mut state = log.state.lock();
        self.gone.store(true, Ordering::Release);
        state.left += 1;
        if self.armed.swap(false, Ordering::AcqRel) {
            // Its bell (a descriptor) goes with the connection, not at the next write.
            state.armed.retain(|(armed, _)| !std::ptr::eq(&**armed, self));
        }
        if state.release(self) && state.live == 0 && !state.ended {
            let head = state.head();
            state.bytes = VecDeque::new();
            state.start = head;
        }
    }

    /// The worker's end is let go; if it was never registered, the stream ends.
    pub fn abandon(&self) {
        if self.log.get().is_none() {
            self.abandoned.store(true, Ordering::Release);
        }
    }

    pub(super) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }
}

/// A registered reader: its cursor and how far behind it may fall.
#[derive(Debug)]
struct Reader {
    cursor: Arc<Cursor>,
    limit: u64,
}

/// What a flush did to the readers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Readers removed: left, dropped, or let go at the end.
    pub removed: usize,
    /// Of those, dropped for falling more than their limit behind.
    pub dropped: usize,
    /// Waiting readers were woken (one notification, whatever their number).
    pub woke: bool,
    /// The readers were looked at one by one.
    pub looked: bool,
}

/// The worker's end of a bucket's log.
#[derive(Debug, Default)]
pub struct BucketLog {
    log: Arc<EventLog>,
    /// This batch's events, not yet appended.
    staged: Vec<u8>,
    /// The log's head after the last flush (the worker is its only writer).
    flushed: u64,
    readers: Vec<Reader>,
    /// The head at which the readers are next looked at.
    next_check: u64,
}

impl BucketLog {
    /// Registers `cursor`: it reads every event staged from now on, none before.
    pub fn attach(&mut self, cursor: Arc<Cursor>, limit: usize) {
        let head = self.flushed + self.staged.len() as u64;
        cursor.read.store(head, Ordering::Relaxed);
        cursor.written.store(head, Ordering::Relaxed);
        // A cursor is attached once, by the worker that registers its subscriber.
        let _ = cursor.log.set(self.log.clone());
        let mut state = self.log.state.lock();
        // A subscriber that left before it was attached is not counted: nothing would
        // ever release it.
        if !cursor.is_gone() {
            cursor.counted.store(true, Ordering::Release);
            state.live += 1;
        }
        drop(state);
        let limit = limit as u64;
        self.next_check = self.next_check.min(head.saturating_add(limit).saturating_add(1));
        self.readers.push(Reader { cursor, limit });
    }

    /// Where the worker writes this batch's event lines.
    #[inline]
    pub fn staged(&mut self) -> &mut Vec<u8> {
        &mut self.staged
    }

    /// Readers registered and not yet found gone, dropped or let go.
    pub fn readers(&self) -> usize {
        self.readers.len()
    }

    /// Removes readers whose clients left; returns how many.
    pub fn forget_gone(&mut self) -> usize {
        let before = self.readers.len();
        self.readers.retain(|reader| !reader.cursor.is_gone());
        before - self.readers.len()
    }

    /// Appends the staged events to the log and wakes the readers waiting for them;
    /// with `end`, no event follows and every reader is let go (each still reads what
    /// the log holds for it).
    pub fn flush(&mut self, end: bool) -> Flushed {
        let log = self.log.clone();
        let mut state = log.state.lock();
        state.bytes.extend(self.staged.iter());
        self.flushed += self.staged.len() as u64;
        self.staged.clear();
        if self.staged.capacity() > KEEP {
            self.staged = Vec::new();
        }
        let mut flushed = Flushed::default();
        if end {
            state.ended = true;
            log.ended.store(true, Ordering::Release);
            flushed.removed = self.readers.len();
            for reader in self.readers.drain(..) {
                state.release(&reader.cursor);
            }
        } else if state.left > 0 || self.flushed >= self.next_check {
            flushed = self.look(&mut state);
        }
        let wake = state.waiting > 0;
        let armed = if state.armed.is_empty() { Vec::new() } else { std::mem::take(&mut state.armed) };
        for (cursor, _) in &armed {
            cursor.armed.store(false, Ordering::Release);
        }
        drop(state);
        if wake {
            log.more.notify_all();
            flushed.woke = true;
        }
        for (_, bell) in armed {
            bell.ring();
        }
        flushed
    }

    /// Forgets readers that left, drops those too far behind, and lets go of what
    /// every remaining one has read.
    fn look(&mut self, state: &mut LogState) -> Flushed {
        let head = state.head();
        let before = self.readers.len();
        let mut dropped = 0;
        self.readers.retain(|reader| {
            if reader.cursor.is_gone() {
                return false;
            }
            let behind = head.saturating_sub(reader.cursor.written.load(Ordering::Acquire));
            if behind > reader.limit {
                reader.cursor.dropped.store(true, Ordering::Release);
                state.release(&reader.cursor);
                dropped += 1;
                return false;
            }
            true
        });
        state.left = 0;
        let min_read = self.readers.iter().map(|r| r.cursor.read.load(Ordering::Relaxed)).min();
        let trim = min_read.unwrap_or(head).min(head).saturating_sub(state.start);
        state.bytes.drain(..usize::try_from(trim).unwrap_or(usize::MAX));
        state.start += trim;
        if state.bytes.capacity() > KEEP && state.bytes.capacity() > 4 * state.bytes.len() {
            let keep = 2 * state.bytes.len();
            state.bytes.shrink_to(keep);
        }
        let next_limit = self
            .readers
            .iter()
            .map(|r| r.cursor.written.load(Ordering::Acquire).saturating_add(r.limit).saturating_add(1))
            .min();
        self.next_check = next_limit.unwrap_or(u64::MAX).min(head + CHECK_EVERY);
        Flushed { removed: before - self.readers.len(), dropped, woke: false, looked: true }
    }

    /// Readers blocked in [`Cursor::take`] waiting for events.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.log.state.lock().waiting
    }

    /// Bytes the log now holds, and its capacity.
    #[cfg(test)]
    pub fn held(&self) -> (usize, usize) {
        let state = self.log.state.lock();
        (state.bytes.len(), state.bytes.capacity())
    }
}

impl Drop for BucketLog {
    /// A worker that lets go of a bucket's log ends its streams, as closing a channel
    /// would.
    fn drop(&mut self) {
        if !self.log.state.lock().ended {
            self.flush(true);
        }
    }
}
