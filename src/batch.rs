//! [`Batch`]: the requests one connection sends one worker in one round, and on the way
//! back their replies.
//!
//! A batch travels connection -> worker -> connection over channels and is reused for
//! the connection's life, so the steady state allocates nothing per request. Its
//! fields are private: a request goes in with [`Batch::push_request`], a reply comes out
//! with [`Batch::reply`], and the cursor that lets a replacement worker resume a batch a
//! crashed one left half done is kept consistent here and nowhere else.

use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::apply;
use crate::persist::{FsyncPolicy, LogSync, Op, PartitionLog};
use crate::protocol::{self, Command, Dialect, ErrorKind, Reply};
use crate::store::Partition;
use crate::subscribe::{Subscriber, Subscriptions};

/// Every worker's inbox, in worker order: one list the connections share, so a
/// connection holds a reference to it rather than a copy.
pub type Inboxes = Arc<[Sender<Batch>]>;

/// Requests from one connection for one worker, and, on the way back, the replies.
#[derive(Debug)]
pub struct Batch {
    /// Requests, each a [`Command`] encoded by `protocol::encode_request`: a text line
    /// could not carry the RESP door's values.
    requests: Vec<u8>,
    /// How the replies are written: the asking connection's dialect.
    dialect: Dialect,
    /// The replies, concatenated in request order.
    replies: Vec<u8>,
    /// Where each request's reply ends in `replies`: one entry per answered request.
    reply_ends: Vec<usize>,
    /// The owning connection's reply channel; the batch goes back on it.
    reply_to: Sender<Batch>,
    /// Index of the worker this batch is for.
    worker: usize,
    /// Where the next request to apply starts in `requests`. Everything before it has
    /// its reply in `replies`.
    cursor: usize,
    /// The subscriber to register if the batch holds a `SUBSCRIBE`. The worker takes
    /// it when it registers it and leaves it when the bucket does not exist.
    subscriber: Option<Subscriber>,
    /// While logging ahead: buckets the batch creates or drops, as (start, length) in
    /// `requests` and whether they exist after. Reused, so logging allocates nothing
    /// per request.
    overlay: Vec<(usize, usize, bool)>,
    /// While logging ahead: for each request of the stretch, whether its record was
    /// logged; then where the ones logged but not applied start.
    logged: Vec<bool>,
    unapplied: Vec<usize>,
    /// With `--fsync always`: the bytes of the log this batch's commits wrote, as
    /// [`LogSync::appended`] counts them, until [`Batch::settle_sync`] checks them.
    log_span: Option<(u64, u64)>,
    /// With `--fsync always`: the replies (by index) of the writes applied and logged
    /// since the last [`Batch::settle_sync`], which say the write is on disk.
    unsynced: Vec<u32>,
}

impl Batch {
    /// An empty batch for `worker` that returns to `reply_to`.
    pub fn new(worker: usize, reply_to: Sender<Batch>) -> Self {
        Batch {
            requests: Vec::new(),
            dialect: Dialect::Text,
            replies: Vec::new(),
            reply_ends: Vec::new(),
            reply_to,
            worker,
            cursor: 0,
            subscriber: None,
            overlay: Vec::new(),
            logged: Vec::new(),
            unapplied: Vec::new(),
            log_span: None,
            unsynced: Vec::new(),
        }
    }

    /// The worker this batch is for.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Adds one request.
    #[inline]
    pub fn push_request(&mut self, command: &Command<'_>) {
        protocol::encode_request(command, &mut self.requests);
    }

    /// Adds a `SUBSCRIBE` with the subscriber the worker is to register.
    pub fn push_subscribe(&mut self, command: &Command<'_>, subscriber: Subscriber) {
        self.push_request(command);
        self.subscriber = Some(subscriber);
    }

    /// Sets how this batch's replies are written (while it is empty).
    pub fn set_dialect(&mut self, dialect: Dialect) {
        debug_assert!(self.requests.is_empty());
        self.dialect = dialect;
    }

    /// The subscriber the worker did not register (its bucket does not exist), if any.
    pub fn take_unregistered_subscriber(&mut self) -> Option<Subscriber> {
        self.subscriber.take()
    }

    /// True when a subscription waits to be registered: only a worker does that.
    pub fn has_subscriber(&self) -> bool {
        self.subscriber.is_some()
    }

    /// True when the batch holds no request.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// True when every request has its reply.
    pub fn is_done(&self) -> bool {
        self.cursor >= self.requests.len()
    }

    /// Number of requests answered so far.
    pub fn reply_count(&self) -> usize {
        self.reply_ends.len()
    }

    /// The reply to request `index` of the batch, if it has one.
    #[inline]
    pub fn reply(&self, index: usize) -> Option<&[u8]> {
        let end = *self.reply_ends.get(index)?;
        let start = if index == 0 { 0 } else { self.reply_ends[index - 1] };
        Some(&self.replies[start..end])
    }

    /// Empties the batch for reuse, keeping its buffers' capacity.
    pub fn clear(&mut self) {
        self.requests.clear();
        self.replies.clear();
        self.reply_ends.clear();
        self.cursor = 0;
        self.overlay.clear();
        self.logged.clear();
        self.unapplied.clear();
        self.log_span = None;
        self.unsynced.clear();
    }

    /// Frees buffers that grew beyond `keep` bytes (they are empty between rounds).
    /// Returns true if any was freed.
    pub fn release_large_buffers(&mut self, keep: usize) -> bool {
        let mut released = false;
        if self.replies.capacity() > keep {
            self.replies = Vec::new();
            released = true;
        }
        if self.requests.capacity() > keep {
            self.requests = Vec::new();
            released = true;
        }
        if self.reply_ends.capacity() * std::mem::size_of::<usize>() > keep {
            self.reply_ends = Vec::new();
            released = true;
        }
        released
    }

    /// Applies the requests from the cursor on to `partition`, in order, writing
    /// replies and streaming every change to `subscriptions`. If applying one panics,
    /// the cursor still points at it and `replies` may hold part of its reply:
    /// [`Batch::answer_crashed`] or [`Batch::discard_partial_reply`] repair that.
    ///
    /// With a `log`, each stretch of requests is logged before it is applied: first the
    /// records of the writes that will succeed are gathered and written with one
    /// `write` (see `Batch::log_ahead`), then the stretch is applied. If the write
    /// fails, the stretch's writes are not applied but answered `ERROR persistence
    /// failed: <reason>`, and its reads are served as usual. Returns how many writes
    /// were refused so.
    pub fn apply(
        &mut self,
        partition: &mut Partition,
        subscriptions: &mut Subscriptions,
        mut log: Option<&mut PartitionLog>,
    ) -> u64 {
        let mut refused = 0;
        // With `always`, the replies wait for a sync that covers what this call logs.
        if let Some(log) = log.as_deref().filter(|log| log.policy() == FsyncPolicy::Always) {
            let now = log.appended();
            self.log_span = Some(self.log_span.map_or((now, now), |(start, _)| (start, now)));
        }
        while !self.is_done() {
            let (end, failure) = match log.as_deref_mut() {
                None => (self.requests.len(), None),
                Some(log) => {
                    let end = self.log_ahead(partition, log);
                    let failure = log.commit().err();
                    // Before applying: a crash while applying still settles its span.
                    self.extend_log_span(log);
                    (end, failure)
                }
            };
            refused += self.apply_until(partition, subscriptions, end, failure.as_deref());
            if let Some(log) = log.as_deref_mut()
                && !self.unapplied.is_empty()
            {
                self.log_final_state(partition, log);
                self.extend_log_span(log);
            }
        }
        refused
    }

    /// With `--fsync always`: takes what `log` holds now into the span to settle.
    fn extend_log_span(&mut self, log: &PartitionLog) {
        if let Some((start, _)) = self.log_span {
            self.log_span = Some((start, log.appended()));
        }
    }

    /// After a crash: logs the state of what the writes logged ahead but not applied
    /// name (see [`Batch::answer_crashed`]), so that a restart does not apply them.
    /// Call with the partition's locks held.
    ///
    /// A crash may come anywhere in a stretch that was logged ahead whole, so every
    /// write not yet applied, from the cursor on, counts: what a replacement worker
    /// then applies, it logs again after this.
    pub fn settle(&mut self, partition: &Partition, log: Option<&mut PartitionLog>) {
        let mut at = self.cursor;
        while at < self.requests.len() {
            let (command, next) = request_at(&self.requests, at);
            if command.is_write() {
                self.unapplied.push(at);
            }
            at = next;
        }
        match log {
            Some(log) if !self.unapplied.is_empty() => self.log_final_state(partition, log),
            _ => self.unapplied.clear(),
        }
    }

    /// Logs the state, now, of what the writes logged ahead but then refused (past
    /// `--max-memory`, or into a bucket whose CREATE was refused) name: replayed after
    /// the stretch's records, it undoes them. A failure to write it is logged loudly:
    /// the log then holds a change the node does not.
    fn log_final_state(&mut self, partition: &Partition, log: &mut PartitionLog) {
        for &at in &self.unapplied {
            let (command, _) = request_at(&self.requests, at);
            let op = match command {
                Command::Put { bucket, key, .. }
                | Command::Delete { bucket, key }
                | Command::HSet { bucket, key, .. }
                | Command::SetString { bucket, key, .. }
                | Command::HDel { bucket, key } => match partition.get(bucket, key) {
                    Ok(Some(value)) => Op::Put { bucket, key, value },
                    Ok(None) => Op::Delete { bucket, key },
                    Err(_) => Op::Drop { bucket },
                },
                Command::Create { bucket } | Command::Drop { bucket } | Command::Del { bucket }
                    if partition.contains(bucket) =>
                {
                    Op::Create { bucket }
                }
                Command::Create { bucket } | Command::Drop { bucket } | Command::Del { bucket } => {
                    Op::Drop { bucket }
                }
                _ => continue,
            };
            log.push(&op);
        }
        self.unapplied.clear();
        if let Err(reason) = log.commit() {
            log::error!("could not log the state after refused writes ({reason}); a restart may show them");
        }
    }

    /// Applies the requests from the cursor up to byte `end` of `requests`; with a
    /// `failure`, refuses their writes instead. Returns how many it refused.
    fn apply_until(
        &mut self,
        partition: &mut Partition,
        subscriptions: &mut Subscriptions,
        end: usize,
        failure: Option<&str>,
    ) -> u64 {
        let mut refused = 0;
        let mut index = 0;
        while self.cursor < end {
            let (command, next) = request_at(&self.requests, self.cursor);
            match failure {
                Some(reason) if command.is_write() => {
                    Reply::Error(ErrorKind::PersistenceFailed { reason })
                        .write(self.dialect, &mut self.replies);
                    refused += 1;
                }
                _ => {
                    let reply = apply::apply(partition, subscriptions, command, &mut self.subscriber);
                    if self.logged.get(index).copied().unwrap_or(false) {
                        if reply.is_refusal() {
                            self.unapplied.push(self.cursor);
                        } else if self.log_span.is_some() {
                            self.unsynced.push(self.reply_ends.len() as u32);
                        }
                    }
                    reply.write(self.dialect, &mut self.replies);
                }
            }
            self.reply_ends.push(self.replies.len());
            self.cursor = next;
            index += 1;
        }
        self.logged.clear();
        refused
    }

    /// Gathers in `log` the record of every write from the cursor on that will
    /// succeed, working out which buckets exist as the requests before it will leave
    /// them. Stops after a `DEBUG CRASH`, so that what is logged is exactly what gets
    /// applied before the crash. Returns where the stretch ends in `requests`.
    fn log_ahead(&mut self, partition: &Partition, log: &mut PartitionLog) -> usize {
        self.overlay.clear();
        self.logged.clear();
        let mut at = self.cursor;
        while at < self.requests.len() {
            let (command, next) = request_at(&self.requests, at);
            let exists = |bucket: &[u8], overlay: &[(usize, usize, bool)]| {
                let known = overlay.iter().rev().find(|(s, l, _)| &self.requests[*s..*s + *l] == bucket);
                known.map_or_else(|| partition.contains(bucket), |(_, _, exists)| *exists)
            };
            let (logged, now) = match command {
                Command::Create { bucket } => (!exists(bucket, &self.overlay), Some((bucket, true))),
                Command::Put { bucket, .. }
                | Command::Delete { bucket, .. }
                | Command::HDel { bucket, .. } => (exists(bucket, &self.overlay), None),
                Command::Drop { bucket } | Command::Del { bucket } => {
                    (exists(bucket, &self.overlay), Some((bucket, false)))
                }
                // Creates its bucket when it must: that is logged first.
                Command::HSet { bucket, .. } | Command::SetString { bucket, .. } => {
                    if !exists(bucket, &self.overlay) {
                        log.push(&Op::Create { bucket });
                    }
                    (true, Some((bucket, true)))
                }
                Command::DebugCrash { .. } => return next,
                _ => (false, None),
            };
            if logged && let Some(op) = Op::of(&command) {
                log.push(&op);
            }
            self.logged.push(logged);
            if let Some((bucket, exists)) = now {
                let start = bucket.as_ptr() as usize - self.requests.as_ptr() as usize;
                self.overlay.push((start, bucket.len(), exists));
            }
            at = next;
        }
        at
    }

    /// Answers the request at the cursor with `reply` and moves past it: what a
    /// worker that crashed while serving that request leaves for its client.
    pub fn answer_crashed(&mut self, reply: Reply<'_>) {
        self.discard_partial_reply();
        if self.is_done() {
            return;
        }
        let (command, next) = request_at(&self.requests, self.cursor);
        if command.is_write() {
            // Its record may have been logged ahead of it: [`Batch::settle`] logs the
            // state it names, as it is, after it.
            self.unapplied.push(self.cursor);
        }
        reply.write(self.dialect, &mut self.replies);
        self.reply_ends.push(self.replies.len());
        self.cursor = next;
    }

    /// Drops what a panic left of the reply to the request at the cursor.
    pub fn discard_partial_reply(&mut self) {
        let complete = self.reply_ends.last().copied().unwrap_or(0);
        self.replies.truncate(complete);
    }

    /// Answers every request not yet answered with `reply` (used when no worker is
    /// left to serve them).
    pub fn answer_rest(&mut self, reply: Reply<'_>) {
        while !self.is_done() {
            self.answer_crashed(reply);
        }
    }

    /// With `--fsync always`, once `sync` has synced: if the records this batch logged
    /// are not known to be on disk (the sync failed, or an earlier failed one may have
    /// lost them), the replies of its applied writes become
    /// `ERROR applied but not synced to disk: <reason>`, so that no `OK` promises what
    /// the disk did not confirm. Reads keep their replies. Returns how many it changed.
    pub fn settle_sync(&mut self, sync: &LogSync) -> usize {
        let Some((start, end)) = self.log_span.take() else { return 0 };
        if self.unsynced.is_empty() {
            return 0;
        }
        let changed = match sync.covers(start, end) {
            Ok(()) => 0,
            Err(reason) => self.answer_unsynced(&reason),
        };
        self.unsynced.clear();
        changed
    }

    /// Rewrites the replies listed in `unsynced` as [`ErrorKind::NotSynced`]. Rare:
    /// it copies the replies once.
    #[cold]
    fn answer_unsynced(&mut self, reason: &str) -> usize {
        let old = std::mem::take(&mut self.replies);
        let mut start = 0;
        let mut listed = self.unsynced.iter().peekable();
        for (index, end) in self.reply_ends.iter_mut().enumerate() {
            if listed.next_if(|&&i| i as usize == index).is_some() {
                Reply::Error(ErrorKind::NotSynced { reason }).write(self.dialect, &mut self.replies);
            } else {
                self.replies.extend_from_slice(&old[start..*end]);
            }
            start = *end;
            *end = self.replies.len();
        }
        // What a panic left of a reply not yet complete stays after the last one.
        self.replies.extend_from_slice(&old[start..]);
        self.unsynced.len()
    }

    /// Returns the batch to its connection. A connection that went away no longer
    /// wants its replies, so a failed send is not an error.
    pub fn send_back(self) {
        let reply_to = self.reply_to.clone();
        let _ = reply_to.send(self);
    }
}

/// The reply every request of a batch gets when no worker serves it.
pub const UNSERVED: Reply<'static> = Reply::Error(ErrorKind::WorkerUnavailable);

/// The request starting at `cursor` in `requests`, and where the next starts. The
/// batch encoded them itself, so a request cut short is a bug: it reads as Unknown and
/// ends the batch rather than panicking.
fn request_at(requests: &[u8], cursor: usize) -> (Command<'_>, usize) {
    match protocol::decode_request(&requests[cursor..]) {
        Some((command, len)) => (command, cursor + len),
        None => (Command::Unknown, requests.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replies of a batch applied to `partition`, one per request line.
    pub(crate) fn run_batch(partition: &mut Partition, lines: &[&[u8]]) -> Vec<Vec<u8>> {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(0, tx);
        for line in lines {
            batch.push_request(&protocol::parse(line));
        }
        batch.apply(partition, &mut Subscriptions::default(), None);
        (0..batch.reply_count()).map(|i| batch.reply(i).unwrap_or_default().to_vec()).collect()
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
                b"DROP shopping",
                b"GET shopping eggs",
                b"DROP shopping",
            ],
        );
        let expected: [&[u8]; 10] = [
            b"NOT FOUND\r\n",
            b"OK\r\n",
            b"OK\r\n",
            b"3\r\nOK\r\n",
            b"OK\r\n",
            b"\r\nOK\r\n",
            b"UNKNOWN COMMAND\r\n",
            b"OK\r\n",
            b"NOT FOUND\r\n",
            b"NOT FOUND\r\n",
        ];
        assert_eq!(replies, expected);
    }

    #[test]
    fn answer_rest_fills_every_unanswered_request() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let mut batch = Batch::new(3, tx);
        batch.push_request(&protocol::parse(b"CREATE a"));
        batch.push_request(&protocol::parse(b"GET a k"));
        batch.answer_rest(UNSERVED);
        assert_eq!(batch.reply_count(), 2);
        assert_eq!(batch.reply(1), Some(&b"ERROR worker unavailable\r\n"[..]));
        assert_eq!(batch.reply(2), None);
        assert_eq!(batch.worker(), 3);
    }
}
