//! One round of a connection: the requests of one read, grouped by who answers them,
//! sent off together, and their replies put back in request order.
//!
//! A request is answered by the connection itself ([`Round::push_local`]), by the
//! worker owning its bucket (one [`Batch`] per worker per round), or by the peer node
//! owning it (through the [`Forwarder`], one exchange per peer per round).
//! [`Round::flush`] sends each worker its batch (or applies it on this thread when the
//! partition is free and the server allows it), exchanges with the peers while the
//! workers work, waits for every batch, and copies every reply into the output in
//! request order. The connection then writes the output with one `write`.
//!
//! A plain struct over channels: tested below with real workers and no sockets.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::Receiver;

use crate::batch::{self, Batch, Inboxes};
use crate::forward::Forwarder;
use crate::protocol::{self, Command, Dialect, Gather, Reply};
use crate::socket::Ledger;
use crate::subscribe::Subscriber;
use crate::sys;
use crate::worker::{self, Inline, WorkerShared};

/// Reply and request buffers larger than this are released after the round that
/// grew them, rather than kept for the connection's life.
const KEEP_BUFFER_BYTES: usize = 256 * 1024;

/// Most requests a round holds: once a read's requests reach it, the round is
/// flushed before more are taken ([`Round::keep_bounded`]). Bounds what one client
/// can make the server hold before its replies are written out: at most this many
/// replies, so even GETs of the largest values stay around 16 MiB, and typically a
/// few KiB. Large enough that a deep pipeline still shares each channel round trip
/// among hundreds of requests.
const MAX_REQUESTS_PER_ROUND: usize = 256;

/// Most bytes of values one round's replies may hold, as far as the requests tell:
/// once the next request's reply could take the round past it, the round is flushed
/// first ([`Round::push_worker`], [`Round::push_peer`]). A read of one key counts as
/// the longest value it could return: its partition's bound on the longest value it
/// holds (`Partition::largest_value`, which falls again once long values are gone), or
/// one written earlier in the round, never more than the server takes
/// ([`Round::limit_replies`]); a read of a peer's bucket counts as the latter. A
/// whole-bucket read (`HGETALL`, `HKEYS`, `HVALS`) counts as all of it, so it is a
/// round of its own. Without it 256 GETs of a 1 MiB value, each asked in a few bytes,
/// made one round of 256 MiB, and 256 `HGETALL`s as many copies of the bucket; a
/// client that then stopped reading kept twice that resident. With values of 64 KiB
/// or less (and with small values above all) reads keep their 256 to a round; after
/// a longer value has left, with values under 64 KiB (the bound is a size class's top).
const ROUND_REPLY_BUDGET: usize = 16 * 1024 * 1024;

/// Once this many reply bytes wait, they are written before more requests are
/// dispatched ([`Round::keep_bounded`]), so a pipeline of large GETs is not buffered
/// whole.
const OUT_HIGH_WATER: usize = 256 * 1024;

/// Most bytes of part replies a group gathers ([`Round::push_group`]): past it, the
/// command is answered with an error instead (`MGET` of many large values). A
/// group's first part is always taken whole, so one value of any size allowed by
/// `--max-value` still comes back. Without it one `MGET k k k ...` of a few KiB could
/// make a connection hold several copies of a reply of many GiB.
pub const MAX_GATHERED_BYTES: usize = 64 * 1024 * 1024;

/// Round buffers larger than this are released once the connection goes idle (its
/// next read would block): an idle connection keeps only small buffers, whatever its
/// last burst was. 2 KiB holds a round of 256 small replies, so steady small traffic
/// never reallocates.
const IDLE_KEEP_BYTES: usize = 2 * 1024;

/// A group whose reply is being gathered: possibly across rounds, as a command with
/// more parts than [`MAX_REQUESTS_PER_ROUND`] is flushed in pieces.
#[derive(Debug, Clone, Copy)]
struct Gathering {
    how: Gather,
    /// Parts whose replies are still to be gathered.
    left: usize,
    /// The gathered parts passed [`MAX_GATHERED_BYTES`]: the reply is an error.
    too_large: bool,
}

/// Who answers one request of a round.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The connection itself, from `local`.
    Local,
    /// The worker with this index.
    Worker(u32),
    /// The peer with this index, through the forwarder.
    Peer(u32),
}

/// A connection's round buffers, reused for its whole life.
pub(crate) struct Round<'s> {
    workers: &'s [Arc<WorkerShared>],
    inboxes: Inboxes,
    /// Where batches come back; made with the batches.
    replies: Option<Receiver<Batch>>,
    /// Each worker's batch; `None` while it is with the worker. Empty until the
    /// connection's first request for a worker (see [`Round::make_batches`]).
    batches: Vec<Option<Batch>>,
    /// For each request of the round, in order: who answers it.
    order: Vec<Source>,
    /// Replies the connection wrote itself, and where each ends.
    local: Vec<u8>,
    local_ends: Vec<usize>,
    /// How many replies of each worker's batch have been copied out; made with the
    /// batches.
    cursors: Vec<usize>,
    /// Requests for other nodes' buckets, and their replies.
    forwarder: Forwarder<'s>,
    /// Replies in request order, waiting to be written.
    out: Vec<u8>,
    /// When batches may be applied on this thread (see `worker::apply_inline`).
    inline: Inline,
    /// Replies in `out`.
    out_replies: usize,
    /// What has been written to the client so far.
    ledger: Ledger,
    /// A round since the last idle release moved more than [`IDLE_KEEP_BYTES`] of
    /// requests or replies, so buffers may have grown.
    grown: bool,
    /// Request bytes pushed to the workers this round.
    pushed: usize,
    /// The most bytes of values this round's replies may hold ([`ROUND_REPLY_BUDGET`]).
    reply_bound: usize,
    /// The largest value a read may return ([`Round::limit_replies`]).
    largest_value: usize,
    /// The longest value a write of this round stores: a read after it in the same
    /// round may return it before its partition's count says so.
    written_this_round: usize,
    /// How replies are written: the connection's dialect.
    dialect: Dialect,
    /// Each reply goes out as a reply frame (the connection is another node's).
    framed: bool,
    /// Requests whose replies are gathered into one (the RESP door's multi-key
    /// commands): where in `order` each group starts, how many parts, and how.
    groups: Vec<(usize, usize, Gather)>,
    /// Parts of the last group pushed that are still to be pushed.
    parts_to_push: usize,
    /// The group being gathered, if its parts did not all fit in one round.
    gathering: Option<Gathering>,
    /// A group's part replies while they are gathered, and where each ends.
    parts: Vec<u8>,
    part_ends: Vec<usize>,
}

impl<'s> Round<'s> {
    /// A round over `workers` (reached through `inboxes`) and `forwarder`'s peers.
    pub fn new(workers: &'s [Arc<WorkerShared>], inboxes: Inboxes, forwarder: Forwarder<'s>) -> Self {
        Round {
            workers,
            batches: Vec::new(),
            inboxes,
            replies: None,
            order: Vec::new(),
            local: Vec::new(),
            local_ends: Vec::new(),
            cursors: Vec::new(),
            forwarder,
            out: Vec::new(),
            inline: Inline::Never,
            out_replies: 0,
            ledger: Ledger::default(),
            grown: false,
            pushed: 0,
            reply_bound: 0,
            largest_value: 0,
            written_this_round: 0,
            dialect: Dialect::Text,
            framed: false,
            groups: Vec::new(),
            parts_to_push: 0,
            gathering: None,
            parts: Vec::new(),
            part_ends: Vec::new(),
        }
    }

    /// Makes every worker's batch and the channel they come back on, at the first
    /// request for a worker: a connection that has not asked a worker anything yet
    /// (a fresh one, or one that only asks what the connection answers itself) holds
    /// none of them (issue 15's memory per idle connection). Once made they stay. The
    /// round keeps no sender of its own, so the channel closes if every batch were lost
    /// (see [`Round::collect`]).
    #[cold]
    fn make_batches(&mut self) {
        let count = self.inboxes.len();
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(count);
        self.batches = (0..count)
            .map(|w| {
                let mut batch = Batch::new(w, reply_tx.clone());
                batch.set_dialect(self.dialect);
                Some(batch)
            })
            .collect();
        self.cursors = vec![0; count];
        self.replies = Some(reply_rx);
    }

    /// Values may be up to `largest_value` bytes (the larger of `--max-line` and
    /// `--max-value`): a round holds no more value reads than fit
    /// [`ROUND_REPLY_BUDGET`]. Until this is called only the request count bounds it.
    pub fn limit_replies(&mut self, largest_value: usize) {
        self.largest_value = largest_value;
    }

    /// The dialect replies are written in from now on. Flushes first if it changes, so
    /// that a round is in one dialect.
    pub fn set_dialect(&mut self, dialect: Dialect) {
        if dialect == self.dialect {
            return;
        }
        self.flush();
        self.dialect = dialect;
        for batch in self.batches.iter_mut().flatten() {
            batch.set_dialect(dialect);
        }
    }

    /// The connection's dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// From now on each reply goes out as a reply frame (`protocol/peer_frame.rs`).
    pub fn set_framed(&mut self) {
        self.flush();
        self.framed = true;
    }

    /// The next `parts` requests pushed are answered with one reply, gathered from
    /// theirs as `how` says (`protocol/gather.rs`). They are pushed one after the
    /// other, with nothing else between them; every [`MAX_REQUESTS_PER_ROUND`] of
    /// them the round is flushed, so a command of many parts holds no more than a
    /// round of replies and what it has gathered (about [`MAX_GATHERED_BYTES`] plus
    /// one part, and as much again while the gathered reply is written out).
    pub fn push_group(&mut self, parts: usize, how: Gather) {
        debug_assert_eq!(self.parts_to_push, 0, "a group inside a group");
        self.groups.push((self.order.len(), parts, how));
        self.parts_to_push = parts;
    }

    /// After each push: counts a group's part, and flushes a round that a group
    /// has filled (between commands [`Round::keep_bounded`] does).
    #[inline]
    fn pushed_one(&mut self) {
        if self.parts_to_push > 0 {
            self.parts_to_push -= 1;
            if self.parts_to_push > 0 && self.order.len() >= MAX_REQUESTS_PER_ROUND {
                self.flush();
            }
        }
    }

    /// When the next flushes may apply batches on this thread.
    pub fn set_inline(&mut self, inline: Inline) {
        self.inline = inline;
    }

    /// How many workers there are.
    pub fn worker_count(&self) -> usize {
        self.inboxes.len()
    }

    /// A request the connection answers itself, in its place in the order.
    pub fn push_local(&mut self, reply: Reply<'_>) {
        reply.write(self.dialect, &mut self.local);
        self.local_ends.push(self.local.len());
        self.order.push(Source::Local);
        self.pushed_one();
    }

    /// A reply the connection wrote itself, as bytes (the RESP door's own answers).
    pub fn push_local_bytes(&mut self, reply: &[u8]) {
        self.local.extend_from_slice(reply);
        self.local_ends.push(self.local.len());
        self.order.push(Source::Local);
        self.pushed_one();
    }

    /// A request for worker `w`.
    pub fn push_worker(&mut self, w: usize, command: &Command<'_>) {
        let stats = &self.workers[w].stats;
        self.make_room_for(command, || stats.largest_value.load(Ordering::Relaxed));
        if self.batches.is_empty() {
            self.make_batches();
        }
        if let Some(batch) = &mut self.batches[w] {
            batch.push_request(command);
        }
        self.pushed += request_size(command);
        self.order.push(Source::Worker(w as u32));
        self.pushed_one();
    }

    /// A `SUBSCRIBE` for worker `w`, with the subscriber it is to register.
    pub fn push_subscribe(&mut self, w: usize, command: &Command<'_>, subscriber: Subscriber) {
        if self.batches.is_empty() {
            self.make_batches();
        }
        if let Some(batch) = &mut self.batches[w] {
            batch.push_subscribe(command, subscriber);
        }
        self.order.push(Source::Worker(w as u32));
    }

    /// After a flush: the subscriber worker `w` did not register (no such bucket).
    pub fn unregistered_subscriber(&mut self, w: usize) -> Option<Subscriber> {
        self.batches.get_mut(w)?.as_mut().and_then(Batch::take_unregistered_subscriber)
    }

    /// A request for peer `p`. A full exchange is flushed first.
    pub fn push_peer(&mut self, p: usize, command: &Command<'_>) {
        if self.forwarder.is_full_for(p, request_size(command)) {
            self.flush();
        }
        self.make_room_for(command, || usize::MAX);
        self.forwarder.push(p, command, self.dialect);
        self.order.push(Source::Peer(p as u32));
        self.pushed_one();
    }

    /// Flushes the round first if `command`'s reply could take it past
    /// [`ROUND_REPLY_BUDGET`]; then counts that reply in. `held` says at least the
    /// longest value the owner's partition holds, as the worker last published it
    /// (`usize::MAX` when unknown: a peer's); it is asked only for a read of one key.
    fn make_room_for(&mut self, command: &Command<'_>, held: impl FnOnce() -> usize) {
        let bound = match command {
            Command::Get { .. } | Command::HGet { .. } => {
                held().max(self.written_this_round).min(self.largest_value)
            }
            // A whole bucket, bounded only by the bucket: a round of its own.
            Command::HGetAll { .. } | Command::HKeys { .. } | Command::HVals { .. } => ROUND_REPLY_BUDGET,
            _ => 0,
        };
        if !self.order.is_empty() && self.reply_bound.saturating_add(bound) > ROUND_REPLY_BUDGET {
            self.flush();
        }
        self.reply_bound = self.reply_bound.saturating_add(bound);
        // After the flush, which starts the count of the round this write joins.
        if let Some(value) = written_value(command) {
            self.written_this_round = self.written_this_round.max(value.len());
        }
    }

    /// Appends a reply straight to the output: for requests answered after a flush,
    /// when everything before them is in the output already.
    pub fn push_output(&mut self, reply: Reply<'_>) {
        debug_assert!(self.order.is_empty() && self.gathering.is_none());
        let frame = self.framed.then(|| protocol::begin_reply_frame(&mut self.out));
        reply.write(self.dialect, &mut self.out);
        if let Some(start) = frame {
            protocol::end_reply_frame(&mut self.out, start);
        }
        self.out_replies += 1;
    }

    /// For one STATS-style reply the connection builds itself, straight to the output.
    pub fn output(&mut self) -> &mut Vec<u8> {
        self.out_replies += 1;
        &mut self.out
    }

    /// Writes the output to `sink` and empties it, entering what was and was not
    /// written in the [`Ledger`].
    pub fn write_output(&mut self, sink: &mut impl Write) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut written = 0;
        let result = loop {
            if written == self.out.len() {
                break Ok(());
            }
            match sink.write(&self.out[written..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break Err(error),
            }
        };
        // Replies are not told apart in `out`: a failed write counts its share.
        let whole = self.out_replies * written / self.out.len();
        self.ledger.wrote(written, whole);
        self.ledger.not_written(self.out_replies - whole);
        self.out.clear();
        self.out_replies = 0;
        result
    }

    /// Called by a connection loop after each command it pushes: flushes a round
    /// that has reached [`MAX_REQUESTS_PER_ROUND`] and writes the output to `sink`
    /// once it passes [`OUT_HIGH_WATER`], so that one read's pipeline, however deep,
    /// keeps neither unbounded. (Within a command of many parts, the round is flushed
    /// as it fills: [`Round::push_group`].)
    pub fn keep_bounded(&mut self, sink: &mut impl Write) -> io::Result<()> {
        if self.order.len() >= MAX_REQUESTS_PER_ROUND {
            self.flush();
        }
        if self.out.len() >= OUT_HIGH_WATER {
            self.write_output(sink)?;
        }
        Ok(())
    }

    /// The end of a read's round: flushes it, writes every reply to `sink`, and gives
    /// back the buffers a burst made large.
    pub fn finish(&mut self, sink: &mut impl Write) -> io::Result<()> {
        self.flush();
        self.write_output(sink)?;
        self.release_large_buffers();
        Ok(())
    }

    /// What has been written to the client so far.
    pub fn ledger(&self) -> Ledger {
        self.ledger
    }

    /// Sends each worker its batch, exchanges with the peers, waits for every batch,
    /// and appends the replies to the output in request order.
    pub fn flush(&mut self) {
        if self.order.is_empty() {
            return;
        }
        let in_flight = self.dispatch();
        // While the workers work, this thread talks to the peers.
        self.forwarder.exchange();
        self.collect(in_flight);
        self.assemble();
    }

    /// Applies or sends every non-empty batch; returns how many went to workers.
    fn dispatch(&mut self) -> usize {
        let mut in_flight = 0;
        let wait = match self.inline {
            Inline::Never => None,
            Inline::IfFree => Some(false),
            Inline::SmallRounds => (self.order.len() <= worker::INLINE_WAIT_MAX_REQUESTS).then_some(true),
        };
        for (w, slot) in self.batches.iter_mut().enumerate() {
            let Some(batch) = slot.as_mut().filter(|batch| !batch.is_empty()) else { continue };
            if let Some(wait) = wait
                && worker::apply_inline(&self.workers[w], batch, wait)
            {
                // With `--fsync always`, its records are synced before its replies go out.
                self.workers[w].sync_replies([batch]);
                continue;
            }
            let Some(batch) = slot.take() else { continue };
            match self.inboxes[w].send(batch) {
                Ok(()) => in_flight += 1,
                Err(crossbeam_channel::SendError(mut batch)) => {
                    batch.answer_rest(batch::UNSERVED);
                    *slot = Some(batch);
                }
            }
        }
        in_flight
    }

    /// Waits for `in_flight` batches to come back to their slots.
    fn collect(&mut self, mut in_flight: usize) {
        let Some(replies) = &self.replies else { return };
        while in_flight > 0 {
            match worker::recv_spinning(replies) {
                Ok(batch) => {
                    let w = batch.worker();
                    self.batches[w] = Some(batch);
                    in_flight -= 1;
                }
                // Only once every batch of this connection is gone. Nothing may drop a
                // batch instead of sending it back (workers, the drainer and the syncers
                // all send it back, even at shutdown): recv would wait on the others.
                Err(_) => break,
            }
        }
    }

    /// Copies every reply of the round into the output, in request order (gathering
    /// each group's parts into one reply), and empties the round's buffers. A group
    /// whose parts go on in the next round stays in `gathering`.
    fn assemble(&mut self) {
        let (mut local_index, mut local_start) = (0, 0);
        self.cursors.iter_mut().for_each(|c| *c = 0);
        let mut groups = std::mem::take(&mut self.groups);
        let mut next_group = groups.iter().copied().peekable();
        let mut order = std::mem::take(&mut self.order);
        for (index, &source) in order.iter().enumerate() {
            if self.gathering.is_none()
                && let Some(&(at, parts, how)) = next_group.peek()
                && at == index
            {
                next_group.next();
                if parts > 0 {
                    self.gathering = Some(Gathering { how, left: parts, too_large: false });
                }
            }
            let gathering = self.gathering.is_some();
            let into = if gathering { &mut self.parts } else { &mut self.out };
            let frame = (self.framed && !gathering).then(|| protocol::begin_reply_frame(into));
            match source {
                Source::Local => {
                    let end = self.local_ends[local_index];
                    into.extend_from_slice(&self.local[local_start..end]);
                    local_start = end;
                    local_index += 1;
                }
                Source::Peer(p) => self.forwarder.next_reply(p as usize, into),
                Source::Worker(w) => {
                    let w = w as usize;
                    // A batch that did not come back, or came back short.
                    match self.batches[w].as_ref().and_then(|batch| batch.reply(self.cursors[w])) {
                        Some(reply) => into.extend_from_slice(reply),
                        None => batch::UNSERVED.write(self.dialect, into),
                    }
                    self.cursors[w] += 1;
                }
            }
            if let Some(start) = frame {
                if into.len() == start + protocol::REPLY_HEAD {
                    // No reply (a SUBSCRIBE that took): no frame either.
                    into.truncate(start);
                } else {
                    protocol::end_reply_frame(into, start);
                }
            }
            if gathering {
                self.gathered_part();
            } else {
                self.out_replies += 1;
            }
        }
        // A group pushed after the last request of this round (a full exchange was
        // flushed at its first part) starts in the next one.
        let done = order.len();
        groups.retain_mut(|(at, _, _)| {
            let waiting = *at >= done;
            *at = at.saturating_sub(done);
            waiting
        });
        self.groups = groups;
        self.grown |= self.out.len() > IDLE_KEEP_BYTES
            || self.pushed > IDLE_KEEP_BYTES
            || self.parts.capacity() > IDLE_KEEP_BYTES;
        self.pushed = 0;
        self.reply_bound = 0;
        self.written_this_round = 0;
        order.clear();
        self.order = order;
        self.local.clear();
        self.local_ends.clear();
        for batch in self.batches.iter_mut().flatten() {
            batch.clear();
        }
        self.forwarder.clear();
    }

    /// A group's part reply has been appended to `parts`: once the group's last part
    /// is in, its one reply goes to the output. Past [`MAX_GATHERED_BYTES`] (beyond
    /// the first part) the parts are dropped as they come, and the reply is an error.
    fn gathered_part(&mut self) {
        let Some(group) = &mut self.gathering else { return };
        self.part_ends.push(self.parts.len());
        group.left -= 1;
        if group.too_large || (self.parts.len() > MAX_GATHERED_BYTES && self.part_ends.len() > 1) {
            group.too_large = true;
            self.parts.clear();
            self.part_ends.clear();
        }
        if group.left > 0 {
            return;
        }
        if group.too_large {
            let text =
                format!("ERR reply too large: over {} MiB; ask for fewer keys", MAX_GATHERED_BYTES >> 20);
            protocol::write_error(&mut self.out, text.as_bytes());
        } else {
            protocol::gather(group.how, &self.parts, &self.part_ends, &mut self.out);
        }
        self.gathering = None;
        self.parts.clear();
        self.part_ends.clear();
        self.out_replies += 1;
    }

    /// Gives back buffers a burst made large (a round of big GETs can reach many MiB),
    /// so that an idle connection holds only small ones.
    pub fn release_large_buffers(&mut self) {
        let mut released = false;
        if self.out.capacity() > KEEP_BUFFER_BYTES {
            self.out = Vec::new();
            released = true;
        }
        if self.gathering.is_none() && self.parts.capacity() > KEEP_BUFFER_BYTES {
            self.parts = Vec::new();
            self.part_ends = Vec::new();
            released = true;
        }
        for batch in self.batches.iter_mut().flatten() {
            released |= batch.release_large_buffers(KEEP_BUFFER_BYTES);
        }
        released |= self.forwarder.release_large_buffers(KEEP_BUFFER_BYTES);
        sys::note_round_served();
        if released {
            sys::give_freed_memory_back();
        }
    }

    /// True when a burst may have left buffers larger than an idle connection keeps,
    /// or the thread's first round left stack pages it does not need while idle
    /// (`sys::stack_to_give_back`): the connection then looks for more input without
    /// waiting, and calls [`Round::release_idle_buffers`] if there is none.
    pub fn holds_burst_buffers(&self) -> bool {
        self.grown || sys::stack_to_give_back()
    }

    /// The connection is idle: gives back every buffer larger than
    /// [`IDLE_KEEP_BYTES`], so that it costs what a fresh one does.
    #[cold]
    pub fn release_idle_buffers(&mut self) {
        // After an ordinary first round only the stack has anything to give back:
        // malloc is not asked to trim for every new connection.
        let burst = self.grown || !sys::stack_to_give_back();
        self.grown = false;
        shrink(&mut self.out);
        shrink(&mut self.local);
        shrink(&mut self.local_ends);
        shrink(&mut self.order);
        shrink(&mut self.parts);
        for batch in self.batches.iter_mut().flatten() {
            batch.release_large_buffers(IDLE_KEEP_BYTES);
        }
        self.forwarder.release_large_buffers(IDLE_KEEP_BYTES);
        if burst {
            sys::give_freed_memory_back();
        }
        // Last, from the shallowest frame this path has: the burst's deeper frames,
        // and those of the first round, stay resident otherwise.
        sys::give_unused_stack_back();
    }
}

/// About how many bytes `command` takes in a batch or an exchange.
fn request_size(command: &Command<'_>) -> usize {
    let (bucket, rest) = match *command {
        Command::Put { key, value, .. }
        | Command::HSet { key, value, .. }
        | Command::SetString { key, value, .. } => (command.bucket(), key.len() + value.len()),
        Command::Get { key, .. }
        | Command::Delete { key, .. }
        | Command::HGet { key, .. }
        | Command::HDel { key, .. }
        | Command::HExists { key, .. } => (command.bucket(), key.len()),
        _ => (command.bucket(), 0),
    };
    bucket.map_or(0, <[u8]>::len) + rest + 17
}

/// The value `command` stores, if it is a write of one.
fn written_value<'c>(command: &Command<'c>) -> Option<&'c [u8]> {
    match command {
        Command::Put { value, .. } | Command::HSet { value, .. } | Command::SetString { value, .. } => {
            Some(value)
        }
        _ => None,
    }
}

/// Frees an empty buffer's memory if it holds more than [`IDLE_KEEP_BYTES`].
fn shrink<T>(buffer: &mut Vec<T>) {
    if buffer.is_empty() && buffer.capacity() * std::mem::size_of::<T>() > IDLE_KEEP_BYTES {
        *buffer = Vec::new();
    }
}

#[cfg(test)]
#[path = "round_tests.rs"]
mod tests;
