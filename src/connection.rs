//! One client connection's loop: read what the socket has, cut it into lines, decide
//! who answers each request, and write the replies of the whole read with one write.
//!
//! ```text
//!  read ─▶ LineReader ─▶ dispatch: answer here (PING, STATS, QUIT, errors)
//!                                  or push to the round (worker, or peer node)
//!        ◀── one write ◀── Round::flush (send, collect, reorder; round.rs)
//! ```
//!
//! Replies are written before the next read, so a client that never reads its replies
//! stops being read: its memory is bounded by one read's worth of requests. A
//! SUBSCRIBE turns the connection into an event stream (`subscribe/`), after the
//! replies to everything before it. The socket's manners (idle clock, closing without
//! losing replies) are `socket.rs`'s.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::batch::Batch;
use crate::forward::Forwarder;
use crate::peer::RemoteSubscription;
use crate::protocol::{
    self, Command, ErrorKind, Frame, Hello, LineReader, Refusal, Reply, ReplyShape, check_hello,
};
use crate::round::Round;
use crate::router::Route;
use crate::socket::{self, IdleClock};
use crate::state::State;
use crate::subscribe::{self, RelayedEvents, Subscription};
use crate::{stats, sys, worker};

/// Most requests a connection sends to the workers in one round. Bounds what one
/// client can make the server hold before its replies are written out: at most this
/// many replies, so even GETs of the largest values stay around 16 MiB, and typically
/// a few KiB. Large enough that a deep pipeline still shares each channel round trip
/// among hundreds of requests.
const MAX_REQUESTS_PER_ROUND: usize = 256;

/// Most request bytes a connection reads after the stop to answer them `ERROR
/// shutting down`: a client that keeps sending cannot hold the shutdown for the whole
/// grace. Beyond it the connection closes as soon as its replies are taken.
const REFUSE_AT_STOP_BYTES: usize = 1024 * 1024;

/// Once this many reply bytes are waiting, they are written before more requests are
/// dispatched, so a pipeline of large GETs is not buffered whole.
const OUT_HIGH_WATER: usize = 256 * 1024;

/// Serves one client connection until it closes, quits or becomes a stream that ends.
pub(crate) fn serve(stream: Arc<TcpStream>, state: &State, inboxes: Vec<Sender<Batch>>) -> io::Result<()> {
    Connection::new(stream, state, inboxes).serve()
}

/// Who is at the other end of a connection, as its first line says.
#[derive(Debug)]
enum Mode {
    /// A client: requests for other nodes' buckets are forwarded.
    Client,
    /// Another node (it opened with an accepted handshake): nothing is forwarded again;
    /// a bucket this node does not own is a routing mismatch.
    Peer,
    /// A node whose handshake was refused: every bucket request gets the refusal.
    Refused(Refusal),
}

/// What the connection does after a request.
enum Flow {
    /// Go on with the next request.
    Next,
    /// Answer what came before, then close (QUIT, the HTTP guard).
    Close,
    /// Answer what came before, then become this event stream.
    Stream(Handoff),
}

/// A subscription the connection hands itself over to.
enum Handoff {
    /// From this node's worker.
    Local(Subscription),
    /// Relayed from the node owning the bucket.
    Relayed { events: RelayedEvents, pending: Vec<u8> },
}

/// What one read brought.
enum Read {
    /// Bytes to frame.
    Bytes,
    /// Nothing, and the connection goes on (the idle clock was shortened).
    Again,
    /// The connection is over: the client closed, shutdown woke us, or it was idle.
    Closed,
}

/// One client connection and its buffers, reused for its whole life.
struct Connection<'s> {
    stream: Arc<TcpStream>,
    state: &'s State,
    round: Round<'s>,
    mode: Mode,
    /// Only the first line of a connection may be a peer handshake.
    first_line: bool,
    /// Requests seen since the last flush to the shared counter.
    commands: u64,
    /// The connection became an event stream (its losses are not replies).
    streaming: bool,
}

impl<'s> Connection<'s> {
    fn new(stream: Arc<TcpStream>, state: &'s State, inboxes: Vec<Sender<Batch>>) -> Self {
        Connection {
            stream,
            state,
            round: Round::new(&state.workers, inboxes, Forwarder::new(&state.peers)),
            mode: Mode::Client,
            first_line: true,
            commands: 0,
            streaming: false,
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        let served = self.serve_requests();
        if self.state.is_stopping() && !self.streaming {
            self.count_lost_replies();
        }
        served
    }

    fn serve_requests(&mut self) -> io::Result<()> {
        self.stream.set_nodelay(true)?;
        let mut reader = LineReader::new(self.state.config.max_line);
        let mut idle = match self.state.config.idle_timeout {
            Some(limit) => Some(IdleClock::start(&self.stream, limit)?),
            None => None,
        };
        loop {
            let stopping = self.state.is_stopping();
            match self.read(&mut reader, &mut idle)? {
                Read::Bytes => {}
                Read::Again => continue,
                // Shutdown woke us: everything read has been answered.
                Read::Closed if self.state.is_stopping() => {
                    self.close_at_stop();
                    return Ok(());
                }
                Read::Closed => return Ok(()),
            }
            if stopping {
                return self.refuse_the_rest(&mut reader);
            }
            self.round.set_inline(self.state.may_apply_inline());
            let (flow, saw_request) = self.serve_frames(&mut reader)?;
            if let Some(clock) = &mut idle {
                if saw_request {
                    clock.reset(&self.stream)?;
                } else if clock.expired(&self.stream)? {
                    return Ok(());
                }
            }
            self.finish_round()?;
            match flow {
                Flow::Next => {}
                Flow::Close => {
                    socket::close_after_last_reply(&self.stream, Instant::now() + socket::CLOSE_DRAIN_TIME);
                    return Ok(());
                }
                Flow::Stream(handoff) => return self.stream_events(handoff),
            }
        }
    }

    /// One read into `reader`. Whatever a read brings is served, however late: it may
    /// have waited in the socket while this thread was busy.
    fn read(&mut self, reader: &mut LineReader, idle: &mut Option<IdleClock>) -> io::Result<Read> {
        if self.round.holds_burst_buffers() || reader.holds_grown_buffer() {
            // After a burst, look without waiting: if the client has gone quiet, give
            // the burst's buffers back before blocking.
            match reader.fill_from(&mut socket::ReadNow(&self.stream)) {
                Ok(0) => return Ok(Read::Closed),
                Ok(_) => return Ok(Read::Bytes),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.round.release_idle_buffers();
                    reader.release_buffer();
                }
                Err(error) => return Err(error),
            }
        }
        match reader.fill_from(&mut &*self.stream) {
            // The client closed, or shutdown woke us: what we had is answered.
            Ok(0) => Ok(Read::Closed),
            Ok(_) => Ok(Read::Bytes),
            Err(error) if socket::is_timeout(&error) => match idle {
                Some(clock) => Ok(if clock.expired(&self.stream)? { Read::Closed } else { Read::Again }),
                None => Err(error),
            },
            Err(error) => Err(error),
        }
    }

    /// Dispatches every complete line in `reader`. Returns how the connection goes on
    /// and whether a whole request arrived.
    fn serve_frames(&mut self, reader: &mut LineReader) -> io::Result<(Flow, bool)> {
        let mut saw_request = false;
        while let Some(frame) = reader.next_frame() {
            self.commands += 1;
            saw_request = true;
            let first_line = std::mem::take(&mut self.first_line);
            let flow = match frame {
                Frame::Line(line) => self.dispatch(line, first_line)?,
                Frame::TooLong => {
                    self.round.push_local(Reply::Error(ErrorKind::LineTooLong));
                    Flow::Next
                }
            };
            if !matches!(flow, Flow::Next) {
                return Ok((flow, saw_request));
            }
            if self.round.len() >= MAX_REQUESTS_PER_ROUND {
                self.round.flush();
            }
            if self.round.output_len() >= OUT_HIGH_WATER {
                self.round.write_output(&mut &*self.stream)?;
            }
        }
        Ok((Flow::Next, saw_request))
    }

    /// Decides who answers one request line.
    fn dispatch(&mut self, line: &[u8], first_line: bool) -> io::Result<Flow> {
        let command = protocol::parse(line);
        match command {
            Command::Ping => self.round.push_local(Reply::Pong),
            Command::Unknown if protocol::is_http_request_line(line) => {
                // A browser was made to talk to us: answer what came before, run
                // nothing after.
                log::warn!(
                    "closing connection from {:?}: it sent an HTTP request (cross-protocol attack?)",
                    self.stream.peer_addr().ok()
                );
                return Ok(Flow::Close);
            }
            Command::Unknown if first_line => self.first_line_unknown(line),
            Command::Unknown => self.round.push_local(Reply::Unknown),
            Command::Stats => self.stats(),
            Command::Quit => {
                self.round.flush();
                self.round.push_output(Reply::Ok);
                return Ok(Flow::Close);
            }
            Command::DebugCrash { .. } | Command::DebugCrashConnection | Command::DebugCrashAcceptor
                if !self.state.config.debug =>
            {
                self.round.push_local(Reply::Unknown)
            }
            Command::DebugCrashConnection => self.crash_connection()?,
            Command::DebugCrashAcceptor => self.crash_acceptor(),
            Command::Subscribe { bucket } => return Ok(self.subscribe(line, bucket)),
            Command::Create { bucket }
            | Command::Put { bucket, .. }
            | Command::Get { bucket, .. }
            | Command::Delete { bucket, .. }
            | Command::Drop { bucket }
            | Command::DebugCrash { bucket } => self.route(&command, line, bucket),
        }
        Ok(Flow::Next)
    }

    /// A bucket request: to the worker that owns it here, or to the node that owns it.
    fn route(&mut self, command: &Command<'_>, line: &[u8], bucket: &[u8]) {
        match (self.state.routes.route(bucket), &self.mode) {
            (Route::Local, Mode::Client | Mode::Peer) => {
                let w = worker::worker_for(bucket, self.round.worker_count());
                self.round.push_worker(w, line);
            }
            (Route::Peer(p), Mode::Client) => {
                self.round.push_peer(usize::from(p), line, ReplyShape::of(command))
            }
            _ => self.misrouted(bucket),
        }
    }

    /// A bucket request this connection cannot serve or forward: no node owns the
    /// bucket, it came from a peer for a bucket this node does not own, or it came
    /// from a peer whose handshake was refused.
    #[cold]
    fn misrouted(&mut self, bucket: &[u8]) {
        let node = self.state.config.node.as_str();
        let reply = match &self.mode {
            Mode::Refused(refusal) => refusal.reply(node),
            Mode::Peer => Reply::Error(ErrorKind::NotOwner { node, bucket }),
            Mode::Client => Reply::Error(ErrorKind::NoRoute { bucket }),
        };
        self.round.push_local(reply);
    }

    /// An unknown command as a connection's first line: a peer handshake, or else
    /// `UNKNOWN COMMAND` as anywhere else.
    #[cold]
    fn first_line_unknown(&mut self, line: &[u8]) {
        let node = self.state.config.node.as_str();
        match check_hello(line, node) {
            Hello::NotHello => self.round.push_local(Reply::Unknown),
            Hello::Accepted => {
                self.mode = Mode::Peer;
                self.round.push_local(Reply::Ok);
            }
            Hello::Refused(refusal) => {
                let reply = refusal.reply(node);
                log::warn!(
                    "refused a peer handshake: {:?} (answered {reply})",
                    String::from_utf8_lossy(line)
                );
                self.round.push_local(reply);
                self.mode = Mode::Refused(refusal);
            }
        }
    }

    /// STATS: after the replies before it, which it must reflect.
    fn stats(&mut self) {
        self.round.flush();
        self.publish_command_count();
        stats::collect(self.state).write_text(self.round.output());
    }

    /// Fault injection: only this connection's thread dies, after answering what came
    /// before.
    fn crash_connection(&mut self) -> io::Result<()> {
        self.round.flush();
        self.round.write_output(&mut &*self.stream)?;
        panic!("DEBUG CRASH-CONNECTION requested");
    }

    /// Fault injection: the acceptor panics on the next connection it takes, which we
    /// make ourselves to wake it.
    fn crash_acceptor(&mut self) {
        self.state.crash_acceptor.store(true, Ordering::SeqCst);
        let woke = self
            .stream
            .local_addr()
            .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
        self.round.push_local(if woke.is_ok() {
            Reply::Ok
        } else {
            Reply::Error(ErrorKind::CannotWakeAcceptor)
        });
    }

    /// SUBSCRIBE: registered by the worker that owns the bucket here, or relayed from
    /// the node that owns it.
    fn subscribe(&mut self, line: &[u8], bucket: &[u8]) -> Flow {
        match (self.state.routes.route(bucket), &self.mode) {
            (Route::Local, Mode::Client | Mode::Peer) => self.subscribe_here(line, bucket),
            (Route::Peer(p), Mode::Client) => self.subscribe_there(usize::from(p), line),
            _ => {
                self.misrouted(bucket);
                Flow::Next
            }
        }
    }

    fn subscribe_here(&mut self, line: &[u8], bucket: &[u8]) -> Flow {
        let w = worker::worker_for(bucket, self.round.worker_count());
        let (subscriber, subscription) = subscribe::subscription(self.state.config.subscriber_backlog);
        self.round.push_subscribe(w, line, subscriber);
        // The worker registers it in its request order; its reply (nothing, or NOT
        // FOUND) follows everything before it.
        self.round.flush();
        if self.round.unregistered_subscriber(w).is_some() {
            return Flow::Next;
        }
        if matches!(self.mode, Mode::Peer) {
            // Between nodes a subscription is acknowledged, so the relaying node knows
            // it took (docs/CLUSTER.md).
            self.round.push_output(Reply::Ok);
        }
        Flow::Stream(Handoff::Local(subscription))
    }

    fn subscribe_there(&mut self, p: usize, line: &[u8]) -> Flow {
        // As locally, the replies before it go first.
        self.round.flush();
        let peer = self.state.peers.get(p);
        match self.state.peers.subscribe(p, line) {
            RemoteSubscription::Answered(reply) => self.round.output().extend_from_slice(&reply),
            RemoteSubscription::Unavailable => self.round.push_output(peer.unavailable()),
            RemoteSubscription::Streaming { stream, pending } => {
                let mut owner_lost = Vec::new();
                peer.unavailable().write_text(&mut owner_lost);
                let events = RelayedEvents::new(stream, self.state.config.subscriber_backlog, owner_lost);
                return Flow::Stream(Handoff::Relayed { events, pending });
            }
        }
        Flow::Next
    }

    /// From here on input is ignored and events are written.
    fn stream_events(&mut self, handoff: Handoff) -> io::Result<()> {
        self.streaming = true;
        let stop = &self.state.shutting_down;
        match handoff {
            Handoff::Local(subscription) => {
                let _counted = self.state.subscriber_guard();
                let streamed = subscribe::stream_events(&self.stream, subscription, stop);
                // The subscription's queue, maybe megabytes of events, is freed now.
                sys::give_freed_memory_back();
                streamed
            }
            Handoff::Relayed { events, pending } => {
                subscribe::stream_relayed(&self.stream, events, &pending, stop)
            }
        }
    }

    /// Shutdown began before this read: each complete line is refused, and so is
    /// every line still waiting in the socket (up to [`REFUSE_AT_STOP_BYTES`] and the
    /// end of the grace), then the connection closes.
    fn refuse_the_rest(&mut self, reader: &mut LineReader) -> io::Result<()> {
        let deadline = self.state.stop_deadline();
        let mut refused = 0;
        loop {
            while reader.next_frame().is_some() {
                self.commands += 1;
                self.round.push_local(Reply::Error(ErrorKind::ShuttingDown));
            }
            self.finish_round()?;
            if refused >= REFUSE_AT_STOP_BYTES || Instant::now() >= deadline {
                break;
            }
            // Shutdown stopped the socket's reading: this never blocks, and ends at
            // what the socket holds.
            match reader.fill_from(&mut &*self.stream) {
                Ok(0) => break,
                Ok(n) => refused += n,
                Err(error) if socket::is_timeout(&error) => break,
                Err(error) => return Err(error),
            }
        }
        self.close_at_stop();
        Ok(())
    }

    /// Every request read has been answered: close once the client has taken the
    /// replies, or at the end of the shutdown grace.
    fn close_at_stop(&mut self) {
        socket::close_after_last_reply(&self.stream, self.state.stop_deadline());
    }

    /// At shutdown: logs and counts the replies this client never received.
    #[cold]
    fn count_lost_replies(&self) {
        let unsent = sys::unsent_bytes(&self.stream).unwrap_or(0);
        let lost = self.round.ledger().lost(unsent);
        if lost > 0 {
            log::warn!(
                "closed the connection from {:?} at shutdown: about {lost} replies ({unsent} bytes) not received",
                self.stream.peer_addr().ok()
            );
            self.state.counters.replies_lost.fetch_add(lost, Ordering::SeqCst);
        }
    }

    /// Flushes the round and writes every reply out.
    fn finish_round(&mut self) -> io::Result<()> {
        self.round.flush();
        self.round.write_output(&mut &*self.stream)?;
        self.publish_command_count();
        self.round.release_large_buffers();
        Ok(())
    }

    /// Adds the requests counted since the last call to the shared total.
    fn publish_command_count(&mut self) {
        if self.commands > 0 {
            self.state.counters.commands_total.fetch_add(self.commands, Ordering::Relaxed);
            self.commands = 0;
        }
    }
}
