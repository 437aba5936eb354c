//! Several subscriptions on one connection (the RESP door's `SUBSCRIBE a b ...`): one
//! thread writes the events of every bucket its client follows, local or relayed from
//! the node that owns it, and waits for all of them and for the client in one `poll`.
//!
//! A local subscription rings the connection's [`Bell`] when its log has events
//! (`event_log.rs`, [`Cursor::arm`](super::event_log::Cursor::arm)); a relayed one
//! makes its owner's socket readable. Each bucket's events are rendered whole into
//! one output, so messages of different buckets interleave only between messages.
//! The rules of the one-bucket loop (`stream.rs`) hold per bucket: a local
//! subscription takes no more from its log while a chunk waits for the client (the
//! worker drops it past its backlog), a relay keeps draining its owner and the
//! connection is dropped once more than the backlog waits unwritten. What the client
//! sends is the caller's ([`MuxInput`]): it may answer, unsubscribe buckets, or hand
//! back buckets to subscribe to.

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::Subscription;
use super::event_log::Take;
use super::stream::{CHUNK, CLIENT_CHECK_INTERVAL, Render, take_limit, too_far_behind, write_some};
use crate::sys::{self, Bell, PollFd};

/// Anything an entry holds for its life and lets go of when it ends (its count in
/// STATS `subscribers`, the descriptor budget's share for a relay's owner socket).
pub trait Held {}
impl<T> Held for T {}

/// What a turn of [`Streams::run`] ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The client is gone, asked to close, or every stream ended (the buckets were
    /// dropped, the server is stopping): close the connection.
    Gone,
    /// The client unsubscribed from everything: it serves commands again.
    Unsubscribed,
    /// The client asked for these buckets too: subscribe, then run again.
    Subscribe(Vec<Vec<u8>>),
}

/// What a subscribed client's input asked for, as [`MuxInput::check`] found it.
#[derive(Debug, PartialEq, Eq)]
pub enum Asked {
    /// Nothing for the loop: go on.
    Go,
    /// End the loop with this step.
    End(Step),
}

/// A subscribed client's input: read without blocking; replies go to
/// [`Streams::output`], in order with the events.
pub trait MuxInput {
    fn check(&mut self, client: &TcpStream, streams: &mut Streams<'_>) -> io::Result<Asked>;
}

/// Where one bucket's events come from.
enum Feed {
    Local(Subscription),
    Relayed {
        owner: TcpStream,
        /// Told to the client if the owner ends the stream other than by a DROP.
        owner_lost: Vec<u8>,
    },
}

/// One followed bucket.
struct Entry<'s> {
    bucket: Vec<u8>,
    render: Render,
    feed: Feed,
    _held: Box<dyn Held + 's>,
    /// Event bytes taken and not yet rendered (at most a partial frame, or a chunk
    /// for a relay).
    raw: Vec<u8>,
}

/// What filling an entry found.
enum Filled {
    Nothing,
    Got,
    /// The bucket was dropped: its `DROPPED` is rendered, and the entry is over.
    Dropped,
    /// The stream ended otherwise (the server is stopping, the owner was lost).
    Ended,
}

/// Every bucket one connection follows, and what waits to be written to it.
pub struct Streams<'s> {
    entries: Vec<Entry<'s>>,
    /// The buckets of `entries`, so that a bucket is looked up without a scan: one
    /// `SUBSCRIBE` may name hundreds of thousands, each looked up as it is added.
    followed: HashSet<Vec<u8>>,
    output: Vec<u8>,
    bell: Arc<Bell>,
    /// Most bytes a relay's events may wait unwritten (`--subscriber-backlog`).
    limit: usize,
    /// Counts this connection if it is dropped past `limit` (STATS
    /// `subscribers_dropped`).
    dropped: &'s AtomicU64,
    /// The client closed its sending side: its socket stays readable (at its end),
    /// so the wait no longer watches it for input.
    half_closed: bool,
}

impl<'s> Streams<'s> {
    /// No buckets yet; `bell` is the connection's, `limit` the backlog, `dropped`
    /// the count a drop past it adds to.
    pub fn new(bell: Bell, limit: usize, dropped: &'s AtomicU64) -> Self {
        let bell = Arc::new(bell);
        Streams {
            entries: Vec::new(),
            followed: HashSet::new(),
            output: Vec::new(),
            bell,
            limit,
            dropped,
            half_closed: false,
        }
    }

    /// Follows a local subscription of `bucket`, rendered as `render`; `held` lives
    /// as long as it.
    pub fn add_local(
        &mut self,
        bucket: &[u8],
        subscription: Subscription,
        held: Box<dyn Held + 's>,
        render: Render,
    ) {
        self.push(bucket, Feed::Local(subscription), held, render, Vec::new());
    }

    /// Follows `bucket`'s events from the node that owns it: `first` are those that
    /// came with its acknowledgement; `held` lives as long as the relay.
    pub fn add_relayed(
        &mut self,
        bucket: &[u8],
        owner: TcpStream,
        first: Vec<u8>,
        owner_lost: Vec<u8>,
        held: Box<dyn Held + 's>,
        render: Render,
    ) {
        self.push(bucket, Feed::Relayed { owner, owner_lost }, held, render, first);
    }

    fn push(&mut self, bucket: &[u8], feed: Feed, held: Box<dyn Held + 's>, render: Render, raw: Vec<u8>) {
        self.followed.insert(bucket.to_vec());
        self.entries.push(Entry { bucket: bucket.to_vec(), render, feed, _held: held, raw });
    }

    /// Stops following each of `buckets`, in one pass over the entries (a pass per
    /// bucket would be time n squared for `UNSUBSCRIBE` of n). Returns, for each, how
    /// many buckets are followed after it: one not followed, or named again, leaves the
    /// count as it was.
    pub fn remove_each<'b>(&mut self, buckets: impl IntoIterator<Item = &'b [u8]>) -> Vec<usize> {
        let mut gone = HashSet::new();
        let mut left = self.entries.len();
        let counts = buckets
            .into_iter()
            .map(|bucket| {
                if let Some(bucket) = self.followed.take(bucket) {
                    gone.insert(bucket);
                    left -= 1;
                }
                left
            })
            .collect();
        if !gone.is_empty() {
            self.entries.retain(|entry| !gone.contains(&entry.bucket));
        }
        counts
    }

    /// Stops following every bucket; returns their names, in the order followed.
    pub fn remove_all(&mut self) -> Vec<Vec<u8>> {
        self.followed.clear();
        self.entries.drain(..).map(|entry| entry.bucket).collect()
    }

    pub fn follows(&self, bucket: &[u8]) -> bool {
        self.followed.contains(bucket)
    }

    /// Buckets followed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The client closed its sending side (a read of 0): its stream goes on, as the
    /// text door's does, but there is no more input to wait for.
    pub fn client_half_closed(&mut self) {
        self.half_closed = true;
    }

    /// Bytes for the client after everything before them.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    /// Writes events and what `input` answers to `client` until the client is gone
    /// or falls too far behind (an error), every stream ends, `stop` is set, or the
    /// input ends the turn. What is left unwritten is written before it returns,
    /// waiting up to [`CLIENT_CHECK_INTERVAL`]: for a step that keeps the connection
    /// (more buckets, back to commands), with its errors.
    pub fn run(
        &mut self,
        client: &TcpStream,
        stop: &AtomicBool,
        input: &mut dyn MuxInput,
    ) -> io::Result<Step> {
        client.set_nonblocking(true)?;
        let step = self.turns(client, stop, input);
        client.set_nonblocking(false)?;
        client.set_write_timeout(Some(CLIENT_CHECK_INTERVAL))?;
        let written = (&*client).write_all(&self.output);
        self.output.clear();
        match step? {
            Step::Gone => Ok(Step::Gone),
            step => written.map(|()| step),
        }
    }

    fn turns(&mut self, client: &TcpStream, stop: &AtomicBool, input: &mut dyn MuxInput) -> io::Result<Step> {
        loop {
            self.write_now(client)?;
            if stop.load(Ordering::Relaxed) {
                self.fill_at_stop();
                return Ok(Step::Gone);
            }
            let (got, ended) = self.fill()?;
            if ended {
                return Ok(Step::Gone);
            }
            if let Asked::End(step) = input.check(client, self)? {
                return Ok(step);
            }
            // A relay keeps draining its owner while the client is stuck; local
            // entries add at most two chunks (their logs keep the rest, and their
            // workers drop them past the backlog).
            if self.unsent() > self.limit.saturating_add(2 * CHUNK) {
                // The connection's own drop (its replies, a relay's events); a worker
                // counts those it drops.
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(too_far_behind());
            }
            if got || !self.arm() {
                continue;
            }
            self.wait(client)?;
        }
    }

    /// Bytes of events the client has not been sent: its output, and, while the
    /// client leaves some of that unwritten, what its local buckets' logs hold past
    /// its cursors. Each bucket's worker drops it past the backlog in that bucket
    /// alone; this counts them together, so that following many buckets does not
    /// multiply what one client may leave unread.
    fn unsent(&self) -> usize {
        if self.output.is_empty() {
            return 0;
        }
        let logs = self.entries.iter().map(|entry| match &entry.feed {
            Feed::Local(subscription) => subscription.cursor.behind(),
            Feed::Relayed { .. } => 0,
        });
        let logs = usize::try_from(logs.sum::<u64>()).unwrap_or(usize::MAX);
        self.output.len().saturating_add(logs)
    }

    /// At shutdown: renders what every entry has now (the events of writes
    /// acknowledged before the stop) for `run` to write, without waiting on any. An
    /// owner that has closed too gets no owner-lost line, as in the text door's stream,
    /// and does not keep the entries after it from giving theirs. An entry that fails
    /// here gives nothing: the connection is closing anyway.
    fn fill_at_stop(&mut self) {
        for entry in &mut self.entries {
            let _ = entry.take(&mut self.output);
        }
    }

    /// Writes what the client takes now.
    fn write_now(&mut self, client: &TcpStream) -> io::Result<()> {
        let written = write_some(client, &self.output)?;
        self.output.drain(..written);
        Ok(())
    }

    /// Takes and renders what every entry has now. Returns whether anything came,
    /// and whether the connection is over: a stream ended other than by a drop, or
    /// the last bucket was dropped.
    fn fill(&mut self) -> io::Result<(bool, bool)> {
        let mut got = false;
        let mut i = 0;
        while i < self.entries.len() {
            let entry = &mut self.entries[i];
            match entry.fill(&mut self.output)? {
                Filled::Nothing => i += 1,
                Filled::Got => {
                    got = true;
                    i += 1;
                }
                Filled::Dropped => {
                    got = true;
                    let entry = self.entries.remove(i);
                    self.followed.remove(&entry.bucket);
                    if self.entries.is_empty() {
                        return Ok((true, true));
                    }
                }
                Filled::Ended => return Ok((got, true)),
            }
        }
        Ok((got, false))
    }

    /// Asks every local log with room for more to ring the bell; false if one has
    /// something to take already.
    fn arm(&self) -> bool {
        let room = self.output.len() < CHUNK;
        for entry in &self.entries {
            if let Feed::Local(subscription) = &entry.feed
                && room
                && !subscription.cursor.arm(&self.bell)
            {
                return false;
            }
        }
        true
    }

    /// Waits for the bell, a relay's owner, or the client (its input, or room for
    /// what waits to be written), at most [`CLIENT_CHECK_INTERVAL`].
    fn wait(&self, client: &TcpStream) -> io::Result<()> {
        let mut fds = Vec::with_capacity(self.entries.len() + 2);
        let (read, write) = (!self.half_closed, !self.output.is_empty());
        fds.push(match (read, write) {
            (false, false) => PollFd::ignored(),
            _ => PollFd::new(client.as_raw_fd(), read, write),
        });
        fds.push(PollFd::new(self.bell.fd(), true, false));
        for entry in &self.entries {
            if let Feed::Relayed { owner, .. } = &entry.feed {
                fds.push(PollFd::new(owner.as_raw_fd(), true, false));
            }
        }
        sys::poll(&mut fds, CLIENT_CHECK_INTERVAL)?;
        self.bell.clear();
        Ok(())
    }
}

impl Entry<'_> {
    /// Takes what the source has now and renders the whole frames of it into `out`;
    /// an owner that closed other than by a drop gets its owner-lost line after them.
    fn fill(&mut self, out: &mut Vec<u8>) -> io::Result<Filled> {
        let (took, dropped) = self.take(out)?;
        Ok(match took {
            _ if dropped => Filled::Dropped,
            Take::Got => Filled::Got,
            Take::Nothing => Filled::Nothing,
            Take::Ended => {
                if let Feed::Relayed { owner_lost, .. } = &self.feed {
                    out.extend_from_slice(owner_lost);
                }
                Filled::Ended
            }
        })
    }

    /// Takes what the source has now and renders the whole frames of it into `out`:
    /// what the take came to, and whether a `DROPPED` was among them.
    fn take(&mut self, out: &mut Vec<u8>) -> io::Result<(Take, bool)> {
        let took = match &mut self.feed {
            Feed::Local(subscription) => {
                if subscription.cursor.dropped.load(Ordering::Acquire) {
                    return Err(too_far_behind());
                }
                // A client that has not taken a chunk gets no more: the log keeps it.
                let limit = take_limit(&self.raw);
                if out.len() >= CHUNK || self.raw.len() >= limit {
                    return Ok((Take::Nothing, false));
                }
                subscription.cursor.take_now(&mut self.raw, limit)
            }
            Feed::Relayed { owner, .. } => read_owner(owner, &mut self.raw),
        };
        let (used, dropped) = self.render.render(&self.raw, out)?;
        self.raw.drain(..used);
        if let Feed::Local(subscription) = &self.feed {
            subscription.cursor.written.fetch_add(used as u64, Ordering::AcqRel);
        }
        Ok((took, dropped))
    }
}

/// One read of what the owner sent, without waiting; `Ended` when it closed or failed.
fn read_owner(owner: &TcpStream, raw: &mut Vec<u8>) -> Take {
    let mut chunk = [0u8; 16 * 1024];
    match sys::recv_now(owner, &mut chunk) {
        Ok(Some(0)) | Err(_) => Take::Ended,
        Ok(Some(n)) => {
            raw.extend_from_slice(&chunk[..n]);
            Take::Got
        }
        Ok(None) => Take::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Event;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    /// A client that asks for nothing.
    struct Quiet;

    impl MuxInput for Quiet {
        fn check(&mut self, _: &TcpStream, _: &mut Streams<'_>) -> io::Result<Asked> {
            Ok(Asked::Go)
        }
    }

    /// Both ends of one loopback connection: (the far end, the near end).
    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let far = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, _) = listener.accept().unwrap();
        (far, near)
    }

    /// Waits (at most 10 s) until `stream` has bytes to read or has been closed: a
    /// blocking peek returns as soon as either is true.
    fn wait_readable(stream: &TcpStream) {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = stream.peek(&mut [0u8; 1]);
        stream.set_read_timeout(None).unwrap();
    }

    #[test]
    fn at_shutdown_every_bucket_gives_its_events_and_a_closed_owner_no_last_words() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (owner_a_side, owner_a) = pair(&listener);
        let (mut owner_b_side, owner_b) = pair(&listener);
        let (mut client_side, client) = pair(&listener);
        // Bucket a's owner is stopping too; bucket b's sent an event first.
        drop(owner_a_side);
        let mut event = Vec::new();
        Event::Set { key: b"k", value: b"1" }.write_frame(&mut event);
        owner_b_side.write_all(&event).unwrap();
        wait_readable(&owner_a);
        wait_readable(&owner_b);
        let dropped = AtomicU64::new(0);
        let mut streams = Streams::new(Bell::new().unwrap(), 1 << 20, &dropped);
        streams.add_relayed(b"a", owner_a, Vec::new(), b"LOST a\r\n".to_vec(), Box::new(()), Render::Text);
        streams.add_relayed(b"b", owner_b, Vec::new(), b"LOST b\r\n".to_vec(), Box::new(()), Render::Text);
        let step = streams.run(&client, &AtomicBool::new(true), &mut Quiet).unwrap();
        assert_eq!(step, Step::Gone);
        drop(streams);
        drop(client);
        let mut got = Vec::new();
        client_side.read_to_end(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), "k SET TO 1\r\n");
    }
}
