//! Writing a subscription's events to its client: one loop for a local subscription
//! (events from the owning worker, read from the bucket's event log) and for a
//! relayed one (event lines from the owning node, over a socket). This is the text
//! door's, and a node's relaying for another: one bucket per connection. The RESP
//! door follows several buckets at once with `mux.rs`, on the same rules.
//!
//! The loop is "write what the client takes, drop it when too far behind": a client
//! that does not read must pin neither this thread nor more than the backlog limit of
//! memory (a local subscription holds at most [`CHUNK`] of its own, or one larger
//! event; the rest stays in the log it shares). A relay's writes wait at most [`WRITE_WAIT`], so the loop keeps
//! draining the owner while the client is stuck; how far behind is too far is the
//! source's call ([`Source::too_far_behind`]). Input from the client is read and
//! ignored, and a client whose connection was reset is noticed within
//! [`CLIENT_CHECK_INTERVAL`]; one that only closed its sending side keeps its stream
//! (see [`client_gone`]).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Subscription;
use super::event_log::Take;
use crate::protocol::{Event, EventFrame, Resp};

/// How a stream's events reach its client. The bucket's log keeps them as frames
/// (`protocol/event.rs`); each stream renders them for its door.
#[derive(Debug, Clone)]
pub enum Render {
    /// The text door's lines.
    Text,
    /// RESP pub/sub `message` frames on channel `bucket`.
    Resp { proto: Resp, bucket: Vec<u8> },
    /// The frames as they are: to a node relaying the stream to its client.
    Frames,
}

impl Render {
    /// Renders the whole event frames at the front of `raw` into `out`; returns how
    /// many bytes of `raw` they took, and whether one was `DROPPED` (the last event of
    /// a stream). `Err` for bytes that are not event frames.
    pub(super) fn render(&self, raw: &[u8], out: &mut Vec<u8>) -> io::Result<(usize, bool)> {
        let (mut at, mut dropped) = (0, false);
        loop {
            match Event::read_frame(&raw[at..]) {
                EventFrame::Event(event, used) => {
                    match self {
                        Render::Text => event.write_text(out),
                        Render::Resp { proto, bucket } => event.write_message(bucket, *proto, out),
                        Render::Frames => out.extend_from_slice(&raw[at..at + used]),
                    }
                    dropped |= event == Event::Dropped;
                    at += used;
                }
                EventFrame::Partial => return Ok((at, dropped)),
                EventFrame::Bad => return Err(io::Error::other("events out of step")),
            }
        }
    }
}

/// How long the loop waits for events before it looks at the client and at shutdown.
pub(super) const CLIENT_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How long one write to a relayed subscriber may block. Short, so that while the
/// client is not reading the loop keeps draining the owner and reaches the limit (and
/// drops the client) in seconds rather than minutes. A local subscriber waits
/// [`CLIENT_CHECK_INTERVAL`]: the worker measures how far behind it is, so its loop
/// has nothing to take meanwhile, and 100 stuck subscribers woke 5,000 times a second.
const WRITE_WAIT: Duration = Duration::from_millis(20);

/// Most event bytes gathered from the source at once.
pub(super) const CHUNK: usize = 64 * 1024;

/// What a source had to give.
pub(super) enum Fill {
    /// Events were appended.
    Got,
    /// Nothing within the wait.
    Nothing,
    /// The source ended; these are its last words for the client, if any.
    Ended(Option<Vec<u8>>),
}

/// Where a stream's events come from.
pub(super) trait Source {
    /// Waits up to `wait` for events and appends them to `out`.
    fn fill(&mut self, out: &mut Vec<u8>, wait: Duration) -> io::Result<Fill>;
    /// `n` bytes of what was appended have been written to the client.
    fn written(&mut self, n: usize);
    /// True when the client is too far behind and must be dropped; `pending` is what
    /// this loop holds unwritten.
    fn too_far_behind(&self, pending: usize) -> bool;
    /// How long one write may block.
    fn write_wait(&self) -> Duration {
        WRITE_WAIT
    }
    /// True when what the client has not taken stays in the source (a local
    /// subscription's shared log), so the loop holds at most [`CHUNK`] of it; a relay
    /// instead keeps draining its owner and holds the backlog itself.
    fn holds_backlog(&self) -> bool {
        false
    }
}

/// Why a stream was cut: the client fell too far behind.
pub(super) fn too_far_behind() -> io::Error {
    io::Error::other("subscriber dropped: too far behind")
}

/// How many bytes of its log a local subscription may hold taken but not rendered,
/// `raw` being what it holds: a chunk, or the whole event frame at its front if that is
/// longer. Only whole events are rendered, and a value may be up to `--max-value`
/// (1 MiB): capped at a chunk, such an event could never be rendered.
pub(super) fn take_limit(raw: &[u8]) -> usize {
    CHUNK.max(Event::frame_len(raw).unwrap_or(0))
}

/// Writes `source`'s events to `client`, rendered as `render` says, until the source
/// ends, the client goes away or falls too far behind, or `stop` is set (shutdown).
///
/// Events are counted as written (for the backlog) when rendered: the difference is at
/// most what one fill takes ([`CHUNK`]). A source that ends after a `DROPPED` ends the
/// stream without its last words (those are for a lost owner).
pub(super) fn stream(
    client: &TcpStream,
    source: &mut dyn Source,
    stop: &AtomicBool,
    render: &Render,
) -> io::Result<()> {
    client.set_write_timeout(Some(source.write_wait()))?;
    let (mut pending, mut raw): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    let mut dropped = false;
    loop {
        let written = write_some(client, &pending)?;
        pending.drain(..written);
        if source.too_far_behind(pending.len() + raw.len()) {
            return Err(too_far_behind());
        }
        if stop.load(Ordering::Relaxed) {
            return flush_at_stop(client, source, render, pending, raw);
        }
        let wait = if pending.is_empty() { CLIENT_CHECK_INTERVAL } else { WRITE_WAIT };
        // A client that has not taken a chunk gets no more from a source that keeps the
        // backlog: the next turn's write waits for it instead.
        let filled = if source.holds_backlog() && (pending.len() >= CHUNK || raw.len() >= take_limit(&raw)) {
            Fill::Nothing
        } else {
            source.fill(&mut raw, wait)?
        };
        let (used, saw_dropped) = render.render(&raw, &mut pending)?;
        raw.drain(..used);
        source.written(used);
        dropped |= saw_dropped;
        let idle = matches!(filled, Fill::Nothing) && pending.is_empty();
        if let Fill::Ended(last_words) = filled {
            if !dropped {
                pending.extend(last_words.unwrap_or_default());
            }
            client.set_write_timeout(Some(CLIENT_CHECK_INTERVAL))?;
            let _ = (&*client).write_all(&pending);
            return Ok(());
        }
        // Input is read and ignored; only a reset ends the stream.
        if idle && client_gone(client)? {
            return Ok(());
        }
    }
}

/// Most fills the last flush at shutdown makes, each waiting at most [`STOP_WAIT`].
const STOP_FILLS: usize = 16;

/// How long one fill of the last flush waits: long enough for a relay's owner to hand
/// over what it already sent, short enough that shutdown does not wait on quiet ones.
const STOP_WAIT: Duration = Duration::from_millis(1);

/// At shutdown: writes the events the source already holds (those of writes that
/// were acknowledged before the stop), at most [`CHUNK`] more, then ends the stream
/// without last words. Each write to the client waits at most
/// [`CLIENT_CHECK_INTERVAL`]; a client that keeps taking a little is cut off by the
/// shutdown grace, which closes every connection.
fn flush_at_stop(
    client: &TcpStream,
    source: &mut dyn Source,
    render: &Render,
    mut pending: Vec<u8>,
    mut raw: Vec<u8>,
) -> io::Result<()> {
    for _ in 0..STOP_FILLS {
        let full = pending.len() >= CHUNK || raw.len() >= take_limit(&raw);
        if full || !matches!(source.fill(&mut raw, STOP_WAIT)?, Fill::Got) {
            break;
        }
    }
    let (used, _) = render.render(&raw, &mut pending)?;
    source.written(used);
    client.set_write_timeout(Some(CLIENT_CHECK_INTERVAL))?;
    let _ = (&*client).write_all(&pending);
    Ok(())
}

/// Writes as much of `bytes` as the client takes within the write timeout per write.
pub(super) fn write_some(client: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match (&*client).write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                break;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(written)
}

/// A local subscription: events are read from the bucket's log through the cursor,
/// and the worker says when the client is too far behind.
impl Source for Subscription {
    fn fill(&mut self, out: &mut Vec<u8>, wait: Duration) -> io::Result<Fill> {
        Ok(match self.cursor.take(out, take_limit(out), wait) {
            Take::Got => Fill::Got,
            Take::Nothing => Fill::Nothing,
            // The worker let it go: the bucket was dropped (DROPPED was the last
            // event), or the server is shutting down.
            Take::Ended => Fill::Ended(None),
        })
    }

    fn written(&mut self, n: usize) {
        self.cursor.written.fetch_add(n as u64, Ordering::AcqRel);
    }

    fn too_far_behind(&self, _pending: usize) -> bool {
        self.cursor.dropped.load(Ordering::Acquire)
    }

    fn write_wait(&self) -> Duration {
        CLIENT_CHECK_INTERVAL
    }

    fn holds_backlog(&self) -> bool {
        true
    }
}

/// Writes a local subscription's events to `client` until the client goes away, the
/// worker drops or ends the subscription, or `stop` is set (shutdown).
pub fn stream_events(
    client: &TcpStream,
    mut subscription: Subscription,
    stop: &AtomicBool,
    render: &Render,
) -> io::Result<()> {
    stream(client, &mut subscription, stop, render)
}

/// A subscription relayed from the node that owns the bucket.
#[derive(Debug)]
pub struct RelayedEvents {
    owner: TcpStream,
    /// Most bytes the client may leave unread before it is dropped.
    limit: usize,
    /// Told to the client if the owner ends the stream other than by a DROP (it went
    /// down or dropped us): the `ERROR peer <name> unavailable` line.
    owner_lost: Vec<u8>,
    /// The owner socket's read timeout now, so it is set only when it changes.
    read_timeout: Option<Duration>,
}

impl RelayedEvents {
    /// Events from `owner`, for a client allowed `limit` bytes behind.
    pub fn new(owner: TcpStream, limit: usize, owner_lost: Vec<u8>) -> Self {
        RelayedEvents { owner, limit, owner_lost, read_timeout: None }
    }
}

impl Source for RelayedEvents {
    fn fill(&mut self, out: &mut Vec<u8>, wait: Duration) -> io::Result<Fill> {
        if self.read_timeout != Some(wait) {
            self.owner.set_read_timeout(Some(wait))?;
            self.read_timeout = Some(wait);
        }
        let mut chunk = [0u8; 16 * 1024];
        match (&self.owner).read(&mut chunk) {
            Ok(read) if read > 0 => {
                out.extend_from_slice(&chunk[..read]);
                Ok(Fill::Got)
            }
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Ok(Fill::Nothing)
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(Fill::Nothing),
            // The owner ended the stream: after a DROPPED, the stream's own end;
            // otherwise the owner was lost (`stream` tells which).
            _ => Ok(Fill::Ended(Some(self.owner_lost.clone()))),
        }
    }

    fn written(&mut self, _n: usize) {}

    fn too_far_behind(&self, pending: usize) -> bool {
        pending > self.limit
    }
}

/// Relays a subscription's events from the owning node to `client` until the owner
/// ends the stream, the client goes away or falls too far behind, or `stop` is set.
/// `pending` are events that arrived with the owner's acknowledgement. When the owner
/// ends the stream without a `DROPPED` (it went down, or dropped us), the client gets
/// the owner-lost line and is closed; at shutdown it is closed without one.
pub fn stream_relayed(
    client: &TcpStream,
    mut events: RelayedEvents,
    pending: &[u8],
    stop: &AtomicBool,
    render: &Render,
) -> io::Result<()> {
    // What came with the acknowledgement is written like any event.
    struct First<'a> {
        events: &'a mut RelayedEvents,
        first: Option<&'a [u8]>,
    }
    impl Source for First<'_> {
        fn fill(&mut self, out: &mut Vec<u8>, wait: Duration) -> io::Result<Fill> {
            match self.first.take() {
                Some(bytes) if !bytes.is_empty() => {
                    out.extend_from_slice(bytes);
                    Ok(Fill::Got)
                }
                _ => self.events.fill(out, wait),
            }
        }
        fn written(&mut self, n: usize) {
            self.events.written(n);
        }
        fn too_far_behind(&self, pending: usize) -> bool {
            self.events.too_far_behind(pending)
        }
    }
    stream(client, &mut First { events: &mut events, first: Some(pending) }, stop, render)
}

/// Most bytes of ignored input one check reads, so that a client sending without
/// pause cannot keep its thread here instead of writing events.
const MAX_IGNORED_PER_CHECK: usize = 256 * 1024;

/// True if the client is gone: its connection was reset or failed. Reads (and
/// ignores) what it sent, up to `MAX_IGNORED_PER_CHECK`.
///
/// A read of 0 is not "gone": it means the client closed its sending side (`nc -N`
/// at the end of its input, `shutdown(SHUT_WR)`), and a half-closed subscriber still
/// reads its events. A client that closed both sides is found out by the next event
/// written to it: its kernel answers with a reset, and the write or read after that
/// fails.
pub fn client_gone(stream: &TcpStream) -> io::Result<bool> {
    stream.set_nonblocking(true)?;
    let mut scratch = [0u8; 4096];
    let mut ignored = 0;
    let gone = loop {
        if ignored >= MAX_IGNORED_PER_CHECK {
            break false;
        }
        match (&*stream).read(&mut scratch) {
            Ok(0) => break false,
            Ok(n) => ignored += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break false,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break true,
        }
    };
    stream.set_nonblocking(false)?;
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_tells_a_dropped_bucket_from_a_lost_owner() {
        let mut frames = Vec::new();
        Event::Set { key: b"k", value: b"1" }.write_frame(&mut frames);
        let mut out = Vec::new();
        let (used, dropped) = Render::Text.render(&frames, &mut out).unwrap();
        assert_eq!((used, dropped, out.as_slice()), (frames.len(), false, &b"k SET TO 1\r\n"[..]));
        Event::Dropped.write_frame(&mut frames);
        out.clear();
        let (_, dropped) = Render::Text.render(&frames, &mut out).unwrap();
        assert!(dropped);
        assert_eq!(out, b"k SET TO 1\r\nDROPPED\r\n");
        // A key named DROPPED is an event like any other.
        out.clear();
        let mut tricky = Vec::new();
        Event::Deleted { key: b"DROPPED" }.write_frame(&mut tricky);
        assert!(!Render::Text.render(&tricky, &mut out).unwrap().1);
    }

    #[test]
    fn events_render_for_each_door_and_a_partial_frame_waits() {
        let mut frames = Vec::new();
        Event::Set { key: b"k", value: b"a b" }.write_frame(&mut frames);
        let whole = frames.len();
        Event::Deleted { key: b"k" }.write_frame(&mut frames);
        let cut = &frames[..frames.len() - 1];
        let mut out = Vec::new();
        let resp = Render::Resp { proto: Resp::V2, bucket: b"b".to_vec() };
        assert_eq!(resp.render(cut, &mut out).unwrap(), (whole, false));
        assert_eq!(out, b"*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$12\r\nk SET TO a b\r\n");
        out.clear();
        assert_eq!(Render::Frames.render(&frames, &mut out).unwrap(), (frames.len(), false));
        assert_eq!(out, frames);
        assert!(Render::Text.render(&[0, 0, 0, 0, 9, 0, 0, 0, 0], &mut out).is_err());
    }

    #[test]
    fn at_shutdown_events_already_received_still_reach_the_client() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut owner_side = TcpStream::connect(addr).unwrap();
        let (owner, _) = listener.accept().unwrap();
        let mut client_side = TcpStream::connect(addr).unwrap();
        let (client, _) = listener.accept().unwrap();
        let (mut first, mut later) = (Vec::new(), Vec::new());
        Event::Set { key: b"k", value: b"1" }.write_frame(&mut first);
        Event::Deleted { key: b"k" }.write_frame(&mut later);
        owner_side.write_all(&later).unwrap();
        let events = RelayedEvents::new(owner, 1 << 20, b"ERROR peer p unavailable\r\n".to_vec());
        // The stop is set before the loop's first turn.
        stream_relayed(&client, events, &first, &AtomicBool::new(true), &Render::Text).unwrap();
        drop(client);
        let mut got = Vec::new();
        client_side.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"k SET TO 1\r\nk DELETED\r\n");
    }
}
