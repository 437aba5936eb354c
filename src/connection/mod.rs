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
//! losing replies) are `socket.rs`'s. A node's link that opened with a version-3 or 4
//! handshake carries frames after it, not lines: `framed.rs` serves it.

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::batch::Inboxes;
use crate::door::{self, Read};
use crate::forward::Forwarder;
use crate::gate::{self, Door, Password, Pending};
use crate::logcap::{Limiter, quote, warn_limited};
use crate::peer::RemoteSubscription;
use crate::protocol::{self, Command, ErrorKind, Frame, Hello, LineReader, Refusal, Reply, check_hello};
use crate::round::Round;
use crate::router::Route;
use crate::socket::{self, IdleClock};
use crate::state::{Seat, State};
use crate::subscribe::{self, RelayedEvents, Subscription};
use crate::{shutdown, stats, sys, worker};

/// How long a connection let in beyond the client cap, on the peer budget, has to
/// open with a node's handshake. A node sends it in the same write as its first
/// requests, right after connecting; a client that says nothing meanwhile is told
/// `ERROR too many connections` when this runs out.
const PEER_HELLO_WAIT: Duration = Duration::from_secs(1);

/// Refused handshakes and HTTP requests, logged at most once a second with a count.
static REFUSED_HELLO: Limiter = Limiter::new();
static HTTP_GUARD: Limiter = Limiter::new();

/// Serves one client connection until it closes, quits or becomes a stream that ends.
/// `seat` is the limit it counts against, which it moves when its first line shows it
/// is another node (`state.rs`).
pub(crate) fn serve(
    stream: Arc<TcpStream>,
    state: &State,
    seat: &Cell<Seat>,
    inboxes: Inboxes,
) -> io::Result<()> {
    Connection::new(stream, state, seat, inboxes).serve()
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
    /// A node sent a version-2 hello and was challenged: the next line must be its
    /// proof (`gate.rs`).
    Challenged(Box<Pending>),
}

mod framed;

/// What the connection does after a request.
enum Flow {
    /// Go on with the next request.
    Next,
    /// Answer what came before, then close (QUIT, the HTTP guard).
    Close,
    /// Answer what came before, then become this event stream.
    Stream(Handoff),
    /// A node's handshake was accepted: answer it, then read frames (`framed.rs`).
    Framed,
}

/// A subscription the connection hands itself over to.
enum Handoff {
    /// From this node's worker.
    Local(Subscription),
    /// Relayed from the node owning the bucket.
    Relayed { events: RelayedEvents, pending: Vec<u8> },
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
    /// The limit this connection counts against.
    seat: &'s Cell<Seat>,
    /// Let in on the peer budget: its first line must be an accepted handshake.
    on_probation: bool,
    /// The connection became an event stream (its losses are not replies).
    streaming: bool,
    /// The client's address and port, taken when the connection starts: after a reset
    /// the socket no longer knows it. For logs.
    peer: Option<SocketAddr>,
    /// The client's address, for protected mode, throttling and logs.
    client: Option<IpAddr>,
    /// Protected mode lets this connection in only as a node (`gate::Door`).
    nodes_only: bool,
    /// Its standing with `--password-file`.
    password: Password,
    /// The node's handshake said frames follow it (versions 3 and 4).
    framed_link: bool,
    /// Reply bytes the client had not acknowledged when the connection closed after
    /// its last reply (`socket::close_after_last_reply`); `None` until then.
    undelivered: Option<usize>,
}

impl<'s> Connection<'s> {
    fn new(stream: Arc<TcpStream>, state: &'s State, seat: &'s Cell<Seat>, inboxes: Inboxes) -> Self {
        let peer = stream.peer_addr().ok();
        let mut round = Round::new(&state.workers, inboxes, Forwarder::new(&state.peers));
        round.limit_replies(state.config.largest_value());
        Connection {
            state,
            round,
            mode: Mode::Client,
            first_line: true,
            commands: 0,
            seat,
            on_probation: seat.get() == Seat::Peer,
            streaming: false,
            peer,
            client: peer.map(|addr| addr.ip()),
            nodes_only: false,
            password: Password::new(state),
            framed_link: false,
            undelivered: None,
            stream,
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
        match gate::door(self.state, self.client) {
            Door::Open => {}
            Door::NodesOnly => self.nodes_only = true,
            Door::Refuse => {
                socket::reject(&self.stream, gate::refuse_at_door(self.state, self.client));
                return Ok(());
            }
        }
        self.stream.set_nodelay(true)?;
        let mut reader = LineReader::new(self.state.config.max_line);
        let limit = if self.on_probation { Some(PEER_HELLO_WAIT) } else { self.state.config.idle_timeout };
        let mut idle = match limit {
            Some(limit) => Some(IdleClock::start(&self.stream, limit)?),
            None => None,
        };
        loop {
            let stopping = self.state.is_stopping();
            match door::read(&self.stream, &mut reader, &mut self.round, &mut idle)? {
                Read::Bytes => {}
                Read::Again => continue,
                Read::Closed if self.on_probation => {
                    self.turn_away();
                    return Ok(());
                }
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
            if matches!(self.mode, Mode::Peer) && idle.is_some() {
                // Node-to-node connections are exempt from the client idle timeout:
                // the other node's pool keeps them for its next requests.
                idle = None;
                self.stream.set_read_timeout(None)?;
            }
            if let Some(clock) = &mut idle
                && clock.after_round(saw_request, &self.stream)?
            {
                return Ok(());
            }
            self.finish_round()?;
            match flow {
                Flow::Next => {}
                Flow::Close => {
                    self.close_after_last_reply(Instant::now() + socket::CLOSE_DRAIN_TIME);
                    return Ok(());
                }
                Flow::Stream(handoff) => return self.stream_events(handoff),
                Flow::Framed => return self.serve_framed(reader.take_unframed()),
            }
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
            if std::mem::take(&mut self.on_probation) && !self.is_accepted_hello(&frame) {
                self.turn_away();
                return Ok((Flow::Close, saw_request));
            }
            let flow = match frame {
                Frame::Line(line) if matches!(self.mode, Mode::Challenged(_)) => {
                    self.answer_proof(line);
                    self.close_if_refused_at_door()
                }
                // Let in for nodes only: the first line must be a handshake; a line too
                // long to be one is not a way past the door.
                Frame::Line(_) | Frame::TooLong
                    if first_line
                        && self.nodes_only
                        && !matches!(frame, Frame::Line(line) if self.is_hello(line)) =>
                {
                    let reply = gate::refuse_at_door(self.state, self.client);
                    self.round.push_local(reply);
                    Flow::Close
                }
                Frame::Line(line) => {
                    let flow = self.dispatch(line, first_line)?;
                    match flow {
                        Flow::Next if first_line => self.close_if_refused_at_door(),
                        flow => flow,
                    }
                }
                Frame::TooLong => {
                    self.round.push_local(Reply::Error(ErrorKind::LineTooLong));
                    Flow::Next
                }
            };
            // An accepted node that speaks frames: nothing after its handshake is a line.
            let flow = match flow {
                Flow::Next if self.framed_link && matches!(self.mode, Mode::Peer) => Flow::Framed,
                flow => flow,
            };
            if !matches!(flow, Flow::Next) {
                return Ok((flow, saw_request));
            }
            self.round.keep_bounded(&mut &*self.stream)?;
        }
        Ok((Flow::Next, saw_request))
    }

    /// Decides who answers one request line.
    fn dispatch(&mut self, line: &[u8], first_line: bool) -> io::Result<Flow> {
        let command = protocol::parse(line);
        let may_run = matches!(self.mode, Mode::Peer)
            || self.password.allows(&command)
            || (first_line && self.is_hello(line));
        if !may_run {
            return Ok(self.unauthenticated(line));
        }
        match command {
            Command::Ping => self.round.push_local(Reply::Pong),
            Command::Auth { password } => {
                let (reply, close) = self.password.attempt(self.state, self.client, password);
                self.round.push_local(reply);
                if close {
                    return Ok(Flow::Close);
                }
            }
            Command::Unknown if protocol::is_http_request_line(line) => {
                // A browser was made to talk to us: answer what came before, run
                // nothing after.
                warn_limited!(
                    HTTP_GUARD,
                    "closing connection from {:?}: it sent an HTTP request (cross-protocol attack?)",
                    self.peer
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
            Command::DebugCrash { .. }
            | Command::DebugCrashConnection
            | Command::DebugCrashAcceptor
            | Command::DebugFailSync
                if !self.state.config.debug =>
            {
                self.round.push_local(Reply::Unknown)
            }
            Command::DebugCrashConnection => self.crash_connection()?,
            Command::DebugCrashAcceptor => self.crash_acceptor(),
            Command::DebugFailSync => self.fail_next_syncs(),
            Command::Subscribe { bucket } => return Ok(self.subscribe(&command, bucket)),
            Command::Create { bucket }
            | Command::Put { bucket, .. }
            | Command::Get { bucket, .. }
            | Command::Delete { bucket, .. }
            | Command::Drop { bucket }
            | Command::DebugCrash { bucket } => self.route(&command, bucket),
            // Only the RESP door makes these; no line parses to one.
            _ => self.round.push_local(Reply::Unknown),
        }
        Ok(Flow::Next)
    }

    /// A request before `AUTH` on a server with a password (nodes that proved the
    /// cluster secret need none): refused, or the node's refusal if it failed to.
    #[cold]
    fn unauthenticated(&mut self, line: &[u8]) -> Flow {
        if protocol::is_http_request_line(line) {
            return Flow::Close;
        }
        let reply = match &self.mode {
            Mode::Refused(refusal) => refusal.reply(&self.state.config.node),
            _ => Reply::Error(ErrorKind::AuthenticationRequired),
        };
        self.round.push_local(reply);
        Flow::Next
    }

    /// A bucket request: to the worker that owns it here, or to the node that owns it.
    fn route(&mut self, command: &Command<'_>, bucket: &[u8]) {
        match (self.state.routes.route(bucket), &self.mode) {
            (Route::Local, Mode::Client | Mode::Peer) => {
                let w = worker::worker_for(bucket, self.round.worker_count());
                self.round.push_worker(w, command);
            }
            (Route::Peer(p), Mode::Client) => self.round.push_peer(usize::from(p), command),
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
            Mode::Challenged(_) => Reply::Error(ErrorKind::AuthenticationFailed),
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
            Hello::Accepted { framed } => match gate::v1_hello(self.state, self.client) {
                None => {
                    self.framed_link = framed;
                    self.accept_peer()
                }
                Some(refusal) => self.refuse_hello(line, refusal),
            },
            Hello::Authenticate { from, nonce, framed } => {
                self.framed_link = framed;
                // The challenge is this line's reply; nothing was asked before it.
                self.round.flush();
                match gate::challenge(self.state, self.client, from, nonce, self.round.output()) {
                    Ok(pending) => self.mode = Mode::Challenged(Box::new(pending)),
                    Err(refusal) => self.refuse_hello(line, refusal),
                }
            }
            Hello::Refused(refusal) => self.refuse_hello(line, refusal),
        }
    }

    /// The line after a challenge: the node's proof, accepted with `OK` or refused.
    #[cold]
    fn answer_proof(&mut self, line: &[u8]) {
        let Mode::Challenged(pending) = &self.mode else { return };
        match pending.check(self.state, self.client, line) {
            Ok(()) => self.accept_peer(),
            Err(refusal) => {
                self.round.push_local(refusal.reply(&self.state.config.node));
                self.mode = Mode::Refused(refusal);
            }
        }
    }

    /// After a refused handshake on a connection let in for nodes only, or on a peer
    /// seat (beyond the client cap): closes it, so that a refused handshake cannot hold
    /// the seat or go on to other commands.
    fn close_if_refused_at_door(&self) -> Flow {
        let on_peer_seat = self.seat.get() == Seat::Peer;
        if matches!(self.mode, Mode::Refused(_)) && (self.nodes_only || on_peer_seat) {
            Flow::Close
        } else {
            Flow::Next
        }
    }

    /// A node proved who it is (or no secret is asked for): it takes a peer seat.
    fn accept_peer(&mut self) {
        self.mode = Mode::Peer;
        self.seat.set(self.state.reseat(self.seat.get(), Seat::Peer));
        self.round.push_local(Reply::Ok);
    }

    /// Refuses a node's handshake: the refusal answers it and every request after it.
    #[cold]
    fn refuse_hello(&mut self, line: &[u8], refusal: Refusal) {
        let node = self.state.config.node.as_str();
        let reply = refusal.reply(node);
        warn_limited!(
            REFUSED_HELLO,
            "refused a peer handshake from {:?}: {} (answered {})",
            self.client,
            quote(line),
            quote(reply.to_string().as_bytes())
        );
        self.round.push_local(reply);
        self.mode = Mode::Refused(refusal);
    }

    /// True if `line` is a node's handshake, accepted or not.
    fn is_hello(&self, line: &[u8]) -> bool {
        check_hello(line, &self.state.config.node) != Hello::NotHello
    }

    /// True if `frame` is a handshake this node accepts.
    fn is_accepted_hello(&self, frame: &Frame<'_>) -> bool {
        matches!(
            frame,
            Frame::Line(line) if matches!(
                check_hello(line, &self.state.config.node),
                Hello::Accepted { .. } | Hello::Authenticate { .. }
            )
        )
    }

    /// A connection let in on the peer budget that is not a node: it gets what a
    /// client over the cap gets.
    #[cold]
    fn turn_away(&self) {
        self.state.counters.rejected_connections.fetch_add(1, Ordering::Relaxed);
        socket::reject(&self.stream, Reply::Error(ErrorKind::TooManyConnections));
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

    /// Fault injection: the next sync of every partition's log fails.
    fn fail_next_syncs(&mut self) {
        let mut logged = false;
        for worker in &self.state.workers {
            logged |= worker.fail_next_sync();
        }
        self.round.push_local(if logged { Reply::Ok } else { Reply::Error(ErrorKind::PersistenceOff) });
    }

    /// SUBSCRIBE: registered by the worker that owns the bucket here, or relayed from
    /// the node that owns it.
    fn subscribe(&mut self, command: &Command<'_>, bucket: &[u8]) -> Flow {
        match (self.state.routes.route(bucket), &self.mode) {
            (Route::Local, Mode::Client | Mode::Peer) => self.subscribe_here(command, bucket),
            (Route::Peer(p), Mode::Client) => self.subscribe_there(usize::from(p), bucket),
            _ => {
                self.misrouted(bucket);
                Flow::Next
            }
        }
    }

    fn subscribe_here(&mut self, command: &Command<'_>, bucket: &[u8]) -> Flow {
        let w = worker::worker_for(bucket, self.round.worker_count());
        let (subscriber, subscription) = subscribe::subscription(self.state.config.subscriber_backlog);
        self.round.push_subscribe(w, command, subscriber);
        // The worker registers it in its request order; its reply (nothing, or NOT
        // FOUND) follows everything before it.
        self.round.flush();
        if self.round.unregistered_subscriber(w).is_some() {
            return Flow::Next;
        }
        if matches!(self.mode, Mode::Peer) {
            // Between nodes a subscription is acknowledged, so the relaying node knows
            // it took (docs/CLUSTER.md). It serves one client from now on, so it counts
            // as one, and leaves the peer budget to forwarding.
            self.round.push_output(Reply::Ok);
            self.seat.set(self.state.reseat(self.seat.get(), Seat::Client));
        }
        Flow::Stream(Handoff::Local(subscription))
    }

    fn subscribe_there(&mut self, p: usize, bucket: &[u8]) -> Flow {
        // As locally, the replies before it go first.
        self.round.flush();
        // A relayed subscription holds a second socket, to the owner.
        if !self.state.take_socket() {
            self.state.counters.rejected_connections.fetch_add(1, Ordering::Relaxed);
            self.round.push_output(Reply::Error(ErrorKind::TooManyConnections));
            return Flow::Close;
        }
        let flow = self.relay_from(p, bucket);
        if !matches!(flow, Flow::Stream(_)) {
            self.state.release_socket();
        }
        flow
    }

    /// Sends the SUBSCRIBE to the owner; its socket is taken.
    fn relay_from(&mut self, p: usize, bucket: &[u8]) -> Flow {
        let peer = self.state.peers.get(p);
        match self.state.peers.subscribe(p, bucket, self.round.dialect()) {
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
        let _streaming = self.state.streaming_guard();
        let stop = &self.state.shutting_down;
        match handoff {
            Handoff::Local(subscription) => {
                let _counted = self.state.subscriber_guard();
                // A node of this build relays the frames and renders them for its client.
                let framed_peer = self.framed_link && matches!(self.mode, Mode::Peer);
                let render = if framed_peer { subscribe::Render::Frames } else { subscribe::Render::Text };
                let streamed = subscribe::stream_events(&self.stream, subscription, stop, &render);
                // The subscription's queue, maybe megabytes of events, is freed now.
                sys::give_freed_memory_back();
                streamed
            }
            Handoff::Relayed { events, pending } => {
                let _owner_socket = self.state.socket_taken();
                subscribe::stream_relayed(&self.stream, events, &pending, stop, &subscribe::Render::Text)
            }
        }
    }

    /// Shutdown began before this read: each complete line is refused, and so is
    /// every line still waiting in the socket (`shutdown::refuse_waiting`), then the
    /// connection closes.
    fn refuse_the_rest(&mut self, reader: &mut LineReader) -> io::Result<()> {
        let deadline = self.state.stop_deadline();
        self.commands += shutdown::refuse_waiting(reader, &mut self.round, &self.stream, deadline)?;
        self.publish_command_count();
        self.close_at_stop();
        Ok(())
    }

    /// Every request read has been answered: close once the client has taken the
    /// replies, or at the end of the shutdown grace.
    fn close_at_stop(&mut self) {
        self.close_after_last_reply(self.state.stop_deadline());
    }

    /// Closes after the last reply (`socket::close_after_last_reply`), keeping what
    /// the client had not acknowledged then for [`Connection::count_lost_replies`].
    fn close_after_last_reply(&mut self, deadline: Instant) {
        self.undelivered = Some(socket::close_after_last_reply(&self.stream, deadline));
    }

    /// At shutdown: logs and counts the replies this client never received.
    fn count_lost_replies(&self) {
        let ledger = self.round.ledger();
        shutdown::count_lost_replies(self.state, ledger, &self.stream, self.undelivered, self.peer);
    }

    /// Flushes the round and writes every reply out.
    fn finish_round(&mut self) -> io::Result<()> {
        self.round.finish(&mut &*self.stream)?;
        self.publish_command_count();
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
