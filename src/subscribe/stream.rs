//! Writing a subscription's events to its client: one loop for a local subscription
//! (events from the owning worker, read from the bucket's event log) and for a
//! relayed one (event lines from the owning node, over a socket).
//!
//! The loop is "write what the client takes, drop it when too far behind": a client
//! that does not read must pin neither this thread nor more than the backlog limit of
//! memory (a local subscription holds at most [`CHUNK`] of its own; the rest stays in
//! the log it shares). A relay's writes wait at most [`WRITE_WAIT`], so the loop keeps
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
use crate::protocol::{DROPPED_LINE, Resp, trim_line_end, write_bulk, write_push_len};

/// How a stream's events reach its client.
#[derive(Debug, Clone)]
pub enum Render {
    /// As they are: the text door's event lines (and between nodes).
    Text,
    /// As RESP pub/sub `message` frames on `bucket`, the line's text as the payload.
    Resp { proto: Resp, bucket: Vec<u8> },
}

impl Render {
    /// Moves the complete event lines at the front of `raw` into `pending` as `message`
    /// frames; returns how many bytes of `raw` that took.
    fn frame_lines(proto: Resp, bucket: &[u8], raw: &[u8], pending: &mut Vec<u8>) -> usize {
        let mut at = 0;
        while let Some(end) = raw[at..].iter().position(|&b| b == b'\n') {
            let line = trim_line_end(&raw[at..at + end + 1]);
            write_push_len(pending, 3, proto);
            write_bulk(pending, b"message");
            write_bulk(pending, bucket);
            write_bulk(pending, line);
            at += end + 1;
        }
        at
    }
}

/// How long the loop waits for events before it looks at the client and at shutdown.
const CLIENT_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How long one write to a relayed subscriber may block. Short, so that while the
/// client is not reading the loop keeps draining the owner and reaches the limit (and
/// drops the client) in seconds rather than minutes. A local subscriber waits
/// [`CLIENT_CHECK_INTERVAL`]: the worker measures how far behind it is, so its loop
/// has nothing to take meanwhile, and 100 stuck subscribers woke 5,000 times a second.
const WRITE_WAIT: Duration = Duration::from_millis(20);

/// Most event bytes gathered from the source at once.
const CHUNK: usize = 64 * 1024;

/// What a source had to give.
enum Fill {
    /// Events were appended.
    Got,
    /// Nothing within the wait.
    Nothing,
    /// The source ended; these are its last words for the client, if any.
    Ended(Option<Vec<u8>>),
}

/// Where a stream's events come from.
trait Source {
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
}

/// Why a stream was cut: the client fell too far behind.
fn dropped() -> io::Error {
    io::Error::other("subscriber dropped: too far behind")
}

/// Writes `source`'s events to `client` until the source ends, the client goes away or
/// falls too far behind, or `stop` is set (shutdown).
///
/// With a RESP render the source's bytes are framed before they are written, and
/// counted as written (for the backlog) when framed: the difference is at most what
/// one fill takes ([`CHUNK`]).
fn stream(client: &TcpStream, source: &mut dyn Source, stop: &AtomicBool, render: &Render) -> io::Result<()> {
    client.set_write_timeout(Some(source.write_wait()))?;
    let mut pending: Vec<u8> = Vec::new();
    let mut raw: Vec<u8> = Vec::new();
    loop {
        let written = write_some(client, &pending)?;
        pending.drain(..written);
        if matches!(render, Render::Text) {
            source.written(written);
        }
        if source.too_far_behind(pending.len()) {
            return Err(dropped());
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let wait = if pending.is_empty() { CLIENT_CHECK_INTERVAL } else { WRITE_WAIT };
        let into = if matches!(render, Render::Text) { &mut pending } else { &mut raw };
        let filled = source.fill(into, wait)?;
        if let Render::Resp { proto, bucket } = render {
            let framed = Render::frame_lines(*proto, bucket, &raw, &mut pending);
            raw.drain(..framed);
            source.written(framed);
        }
        match filled {
            Fill::Got => {}
            Fill::Nothing => {
                if pending.is_empty() && client_gone(client)? {
                    return Ok(());
                }
            }
            Fill::Ended(last_words) => {
                pending.extend(last_words.unwrap_or_default());
                client.set_write_timeout(Some(CLIENT_CHECK_INTERVAL))?;
                let _ = (&*client).write_all(&pending);
                return Ok(());
            }
        }
    }
}

/// Writes as much of `bytes` as the client takes within the write timeout per write.
fn write_some(client: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
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
        Ok(match self.cursor.take(out, CHUNK, wait) {
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
    /// The last bytes relayed, to see whether the stream ended with `DROPPED`.
    tail: Vec<u8>,
    /// The owner socket's read timeout now, so it is set only when it changes.
    read_timeout: Option<Duration>,
}

impl RelayedEvents {
    /// Events from `owner`, for a client allowed `limit` bytes behind.
    pub fn new(owner: TcpStream, limit: usize, owner_lost: Vec<u8>) -> Self {
        RelayedEvents { owner, limit, owner_lost, tail: Vec::new(), read_timeout: None }
    }

    /// Remembers the end of what was relayed (enough to hold `DROPPED\r\n` after a
    /// line end).
    fn remember_tail(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(&bytes[bytes.len().saturating_sub(DROPPED_LINE.len() + 1)..]);
        let excess = self.tail.len().saturating_sub(DROPPED_LINE.len() + 1);
        self.tail.drain(..excess);
    }

    fn ended_by_drop(&self) -> bool {
        self.tail.ends_with(DROPPED_LINE) && (self.tail.len() == DROPPED_LINE.len() || self.tail[0] == b'\n')
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
                self.remember_tail(&chunk[..read]);
                Ok(Fill::Got)
            }
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Ok(Fill::Nothing)
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(Fill::Nothing),
            // The owner ended the stream.
            _ if self.ended_by_drop() => Ok(Fill::Ended(None)),
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
                    self.events.remember_tail(bytes);
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
    use std::net::TcpListener;

    #[test]
    fn a_relay_tells_a_dropped_bucket_from_a_lost_owner() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let owner = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut events = RelayedEvents::new(owner, 1024, b"ERROR peer n unavailable\r\n".to_vec());
        events.remember_tail(b"k SET TO 1\r\nDRO");
        assert!(!events.ended_by_drop());
        events.remember_tail(b"PPED\r\n");
        assert!(events.ended_by_drop());
        events.remember_tail(b"xDROPPED\r\n");
        assert!(!events.ended_by_drop(), "a key named xDROPPED is not the event");
    }
}
