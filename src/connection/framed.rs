//! A node's link after a version-3 or 4 handshake: request frames in, reply frames out
//! (`protocol/peer_frame.rs`), through the same round, workers and shutdown rules as a
//! client's lines, except that a request read after the stop is answered `ERROR peer
//! <this node> unavailable`, what the other node's client is to be told of it.
//!
//! The other node forwards here only what this node owns, so a request for a bucket
//! owned elsewhere is a routing mismatch, answered and never forwarded again. Each
//! frame names the dialect its reply is written in, the asking client's; the round
//! writes each reply in it and frames it. A frame that is not one (an unknown dialect,
//! a length past the limit) means the link is out of step: the connection closes, and
//! the other node fails the requests it had sent on it as of unknown outcome.

use std::io;

use super::{Connection, Flow};
use crate::logcap::{Limiter, warn_limited};
use crate::protocol::{Command, ErrorKind, PeerFrame, Reply, peer_frame};
use crate::router::Route;
use crate::worker;

/// Out-of-step links, logged at most once a second with a count.
static BAD_FRAME: Limiter = Limiter::new();

/// First size of the frame buffer; it grows to the largest frame seen.
const INITIAL_FRAME_BUFFER: usize = 4 * 1024;

/// Request frames read from a node, and what is left of a partial one. The buffer is
/// zeroed once when it grows, never per read.
struct FrameReader {
    buf: Vec<u8>,
    /// Start of the bytes not yet taken.
    start: usize,
    /// End of the bytes read.
    end: usize,
    /// Largest frame accepted.
    max_frame: usize,
}

/// What the reader had.
enum Next<'a> {
    Frame(crate::protocol::Dialect, Command<'a>),
    /// Read more first.
    More,
    /// Out of step: close.
    Bad,
}

impl FrameReader {
    fn new(unframed: Vec<u8>, max_frame: usize) -> Self {
        let end = unframed.len();
        let mut buf = unframed;
        buf.resize(end.max(INITIAL_FRAME_BUFFER), 0);
        FrameReader { buf, start: 0, end, max_frame }
    }

    fn next(&mut self) -> Next<'_> {
        match peer_frame(&self.buf[self.start..self.end]) {
            PeerFrame::Request(dialect, command, used) => {
                self.start += used;
                Next::Frame(dialect, command)
            }
            PeerFrame::Partial { needs: Some(needs) } if needs > self.max_frame => Next::Bad,
            PeerFrame::Partial { .. } => Next::More,
            PeerFrame::Bad => Next::Bad,
        }
    }

    /// One read onto the end, after moving a partial frame to the front; the buffer
    /// doubles when a partial frame fills it.
    fn fill_from(&mut self, stream: &mut impl io::Read) -> io::Result<usize> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buf.len() {
            self.buf.resize(2 * self.buf.len(), 0);
        }
        let read = stream.read(&mut self.buf[self.end..])?;
        self.end += read;
        Ok(read)
    }
}

impl Connection<'_> {
    /// Serves request frames until the other node closes the link, the server stops,
    /// or a frame is out of step. `unframed`: bytes that came behind the handshake.
    pub(super) fn serve_framed(&mut self, unframed: Vec<u8>) -> io::Result<()> {
        self.round.set_framed();
        let config = &self.state.config;
        let max_frame = 3 * config.max_line.max(config.max_value) + 64;
        let mut reader = FrameReader::new(unframed, max_frame);
        loop {
            let stopping = self.state.is_stopping();
            // As a client's connection does, per read: the mode set when the link's
            // handshake was read would otherwise hold for the link's whole life.
            self.round.set_inline(self.state.may_apply_inline());
            let flow = self.serve_frames_read(&mut reader, stopping)?;
            self.finish_round()?;
            match flow {
                Some(Flow::Stream(handoff)) => return self.stream_events(handoff),
                Some(_) => return Ok(()),
                None if stopping => {
                    self.close_at_stop();
                    return Ok(());
                }
                None => {}
            }
            match reader.fill_from(&mut &*self.stream) {
                Ok(0) if self.state.is_stopping() => {
                    self.close_at_stop();
                    return Ok(());
                }
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Dispatches every whole frame the reader holds. `Some` ends the link.
    fn serve_frames_read(&mut self, reader: &mut FrameReader, stopping: bool) -> io::Result<Option<Flow>> {
        loop {
            let (dialect, command) = match reader.next() {
                Next::Frame(dialect, command) => (dialect, command),
                Next::More => return Ok(None),
                Next::Bad => {
                    warn_limited!(
                        BAD_FRAME,
                        "closing a node's link from {:?}: a frame out of step",
                        self.client
                    );
                    return Ok(Some(Flow::Close));
                }
            };
            self.commands += 1;
            self.round.set_dialect(dialect);
            if stopping {
                // The asking client is another node's, and that node is not stopping:
                // to it a request this node read after its stop is one its owner turned
                // away unread, `ERROR peer <this node> unavailable` (docs/CLUSTER.md).
                // `ERROR shutting down`, relayed, would say its own node was closing.
                let node = self.state.config.node.as_str();
                self.round.push_local(Reply::Error(ErrorKind::PeerUnavailable { peer: node }));
                continue;
            }
            if let Flow::Stream(handoff) = self.dispatch_frame(&command) {
                return Ok(Some(Flow::Stream(handoff)));
            }
            self.round.keep_bounded(&mut &*self.stream)?;
        }
    }

    /// One forwarded request: to the worker owning its bucket here; anything else is
    /// answered at once.
    fn dispatch_frame(&mut self, command: &Command<'_>) -> Flow {
        let Some(bucket) = command.bucket() else {
            let reply = if *command == Command::Ping { Reply::Pong } else { Reply::Unknown };
            self.round.push_local(reply);
            return Flow::Next;
        };
        match (self.state.routes.route(bucket), command) {
            (Route::Local, Command::Subscribe { .. }) => self.subscribe_here(command, bucket),
            (Route::Local, Command::DebugCrash { .. }) if !self.state.config.debug => {
                self.round.push_local(Reply::Unknown);
                Flow::Next
            }
            (Route::Local, _) => {
                let w = worker::worker_for(bucket, self.round.worker_count());
                self.round.push_worker(w, command);
                Flow::Next
            }
            _ => {
                self.misrouted(bucket);
                Flow::Next
            }
        }
    }
}
