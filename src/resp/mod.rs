//! The RESP door (`--resp-port`): Redis clients, redis-cli and redis-benchmark talk to
//! kv in RESP2 or RESP3, on the same workers, routing, forwarding, limits, persistence
//! and shutdown rules as the text door.
//!
//! ```text
//!  read ─▶ RespReader ─▶ commands.rs: a Redis command ─▶ kv Commands (one per bucket
//!                        or key), pushed to the round like the text door's, or an
//!                        answer of the connection's own (tooling.rs: HELLO, INFO, ...)
//!        ◀── one write ◀── Round::flush, the replies written in RESP, a multi-key
//!                          command's parts gathered into one reply
//! ```
//!
//! Buckets are Redis hashes; plain strings live in one bucket (`--resp-bucket`).
//! docs/RESP.md is the user's side of it. A malformed frame gets `-ERR Protocol
//! error: ...` and a close, as Redis does; a bulk over `--max-value` gets an error
//! and the connection stays in step.

mod commands;
mod subscribe;
mod tooling;

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use crate::batch::Inboxes;
use crate::door::{self, Read};
use crate::forward::Forwarder;
use crate::gate::{self, Door, Password};
use crate::protocol::{Dialect, Resp, RespFrame, RespReader, write_error};
use crate::round::Round;
use crate::shutdown;
use crate::socket::{self, IdleClock};
use crate::state::State;

/// Serves one RESP connection until it closes, quits or its stream ends.
pub(crate) fn serve(stream: Arc<TcpStream>, state: &State, id: u64, inboxes: Inboxes) -> io::Result<()> {
    RespConnection::new(stream, state, id, inboxes).serve()
}

/// The error text for a command over the limits ([`RespFrame::TooLarge`]), subscribed
/// or not.
fn too_large(max_value: usize) -> String {
    format!("ERR value too large: over --max-value {max_value} bytes")
}

/// What the connection does after a command.
pub(crate) enum Flow {
    Next,
    /// Answer what came before, then close (QUIT, a protocol error).
    Close,
    /// Answer what came before, then stream these buckets' events.
    Subscribe(Vec<Vec<u8>>),
}

/// One RESP connection and its buffers, reused for its whole life.
pub(crate) struct RespConnection<'s> {
    stream: Arc<TcpStream>,
    state: &'s State,
    round: Round<'s>,
    /// RESP2 until `HELLO 3`.
    proto: Resp,
    password: Password,
    /// The client's address and port, taken when the connection starts: after a reset
    /// the socket no longer knows it. For logs.
    peer: Option<SocketAddr>,
    client: Option<IpAddr>,
    /// The connection's number, `CLIENT ID` and `HELLO`'s `id`.
    id: u64,
    /// `CLIENT SETNAME`.
    name: Option<Vec<u8>>,
    /// Requests seen since the last flush to the shared counter.
    commands: u64,
    /// Scratch for the replies the connection writes itself.
    scratch: Vec<u8>,
    /// Streaming events (SUBSCRIBE): what is lost then is no reply.
    streaming: bool,
    /// Reply bytes the client had not acknowledged when the connection closed after
    /// its last reply (`socket::close_after_last_reply`); `None` until then.
    undelivered: Option<usize>,
}

impl<'s> RespConnection<'s> {
    fn new(stream: Arc<TcpStream>, state: &'s State, id: u64, inboxes: Inboxes) -> Self {
        let mut round = Round::new(&state.workers, inboxes, Forwarder::new(&state.peers));
        round.set_dialect(Dialect::Resp2);
        round.limit_replies(state.config.largest_value());
        let peer = stream.peer_addr().ok();
        RespConnection {
            round,
            state,
            proto: Resp::V2,
            password: Password::new(state),
            peer,
            client: peer.map(|addr| addr.ip()),
            id,
            name: None,
            commands: 0,
            scratch: Vec::new(),
            streaming: false,
            undelivered: None,
            stream,
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        let served = self.serve_commands();
        if self.state.is_stopping() && !self.streaming {
            let ledger = self.round.ledger();
            shutdown::count_lost_replies(self.state, ledger, &self.stream, self.undelivered, self.peer);
        }
        served
    }

    fn serve_commands(&mut self) -> io::Result<()> {
        if gate::door(self.state, self.client) != Door::Open {
            // Protected mode: the RESP door has no node handshake to let in.
            let reply = gate::refuse_at_door(self.state, self.client);
            socket::reject_in(&self.stream, reply, Dialect::Resp2);
            return Ok(());
        }
        self.stream.set_nodelay(true)?;
        let config = &self.state.config;
        let max_command = 4 * config.max_value.max(config.max_line) + 64 * 1024;
        let mut reader = RespReader::new(config.max_value, max_command);
        let mut idle = match config.idle_timeout {
            Some(limit) => Some(IdleClock::start(&self.stream, limit)?),
            None => None,
        };
        // After an UNSUBSCRIBE, commands may already wait in the reader.
        let mut buffered = false;
        loop {
            let stopping = self.state.is_stopping();
            if !std::mem::take(&mut buffered) && !self.read(&mut reader, &mut idle)? {
                if self.state.is_stopping() {
                    self.close_at_stop();
                }
                return Ok(());
            }
            if stopping {
                return self.refuse_the_rest(&mut reader);
            }
            self.round.set_inline(self.state.may_apply_inline());
            let (flow, saw_command) = self.serve_frames(&mut reader)?;
            if let Some(clock) = &mut idle
                && clock.after_round(saw_command, &self.stream)?
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
                Flow::Subscribe(buckets) => {
                    self.streaming = true;
                    if self.stream_events(&buckets, &mut reader)? {
                        return Ok(());
                    }
                    self.streaming = false;
                    buffered = true;
                }
            }
        }
    }

    /// One read into `reader` (`door::read`), again until it brings bytes; false
    /// when the connection is over (the client closed, shutdown woke us, or it was
    /// idle too long).
    fn read(&mut self, reader: &mut RespReader, idle: &mut Option<IdleClock>) -> io::Result<bool> {
        loop {
            match door::read(&self.stream, reader, &mut self.round, idle)? {
                Read::Bytes => return Ok(true),
                Read::Again => {}
                Read::Closed => return Ok(false),
            }
        }
    }

    /// Dispatches every complete command in `reader`.
    fn serve_frames(&mut self, reader: &mut RespReader) -> io::Result<(Flow, bool)> {
        let mut saw_command = false;
        while let Some(frame) = reader.next_frame() {
            saw_command = true;
            self.commands += 1;
            let flow = match frame {
                RespFrame::Command(args) => self.dispatch(args),
                RespFrame::TooLarge => {
                    self.push_error(too_large(self.state.config.max_value).as_bytes());
                    Flow::Next
                }
                RespFrame::ProtocolError(what) => {
                    self.push_error(format!("ERR Protocol error: {what}").as_bytes());
                    Flow::Close
                }
            };
            if !matches!(flow, Flow::Next) {
                return Ok((flow, saw_command));
            }
            self.round.keep_bounded(&mut &*self.stream)?;
        }
        Ok((Flow::Next, saw_command))
    }

    /// An error reply of the connection's own, in its place in the order.
    fn push_error(&mut self, text: &[u8]) {
        self.scratch.clear();
        write_error(&mut self.scratch, text);
        self.round.push_local_bytes(&self.scratch);
    }

    /// A reply the connection writes itself with `write`, in its place in the order.
    fn push_own(&mut self, write: impl FnOnce(&mut Vec<u8>, Resp)) {
        self.scratch.clear();
        write(&mut self.scratch, self.proto);
        self.round.push_local_bytes(&self.scratch);
    }

    /// Shutdown began before this read: every whole command, read or still waiting
    /// in the socket, gets `-ERR shutting down` (`shutdown::refuse_waiting`), then the
    /// connection closes.
    fn refuse_the_rest(&mut self, reader: &mut RespReader) -> io::Result<()> {
        let deadline = self.state.stop_deadline();
        self.commands += shutdown::refuse_waiting(reader, &mut self.round, &self.stream, deadline)?;
        self.publish_command_count();
        self.close_at_stop();
        Ok(())
    }

    fn close_at_stop(&mut self) {
        self.close_after_last_reply(self.state.stop_deadline());
    }

    /// Closes after the last reply (`socket::close_after_last_reply`), keeping what
    /// the client had not acknowledged then for counting lost replies at shutdown.
    fn close_after_last_reply(&mut self, deadline: Instant) {
        self.undelivered = Some(socket::close_after_last_reply(&self.stream, deadline));
    }

    /// Flushes the round and writes every reply out.
    fn finish_round(&mut self) -> io::Result<()> {
        self.round.finish(&mut &*self.stream)?;
        self.publish_command_count();
        Ok(())
    }
}
