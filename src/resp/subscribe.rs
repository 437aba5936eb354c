//! `SUBSCRIBE` through the RESP door: a bucket's changes as Redis pub/sub `message`
//! frames (RESP2 arrays, RESP3 pushes) whose payload is the text door's event line,
//! `eggs SET TO 3`, from this node's worker or relayed from the owning node.
//!
//! A subscribed connection follows one bucket (`SUBSCRIBE a b` is an error). While
//! subscribed it answers `PING`, `UNSUBSCRIBE` (after which it serves commands again)
//! and `QUIT`, as Redis does in RESP2; anything else gets an error. It closes when the
//! bucket is dropped. The worker's side, the backlog and dropping a subscriber that
//! falls behind are `subscribe/`'s.

use std::io;
use std::net::TcpStream;

use super::{Flow, RespConnection};
use crate::peer::RemoteSubscription;
use crate::protocol::{
    Args, Command, ErrorKind, Reply, Resp, RespFrame, RespReader, write_bulk, write_error, write_integer,
    write_nil, write_push_len, write_simple,
};
use crate::router::Route;
use crate::socket::ReadNow;
use crate::subscribe::{self, Input, RelayedEvents, Render, Verdict};
use crate::{sys, worker};

/// Most bytes of input one look at a subscribed client reads, so that a client
/// sending without pause cannot keep the stream from its events.
const MAX_INPUT_PER_CHECK: usize = 64 * 1024;

/// A subscribed RESP client's input: `PING`, `UNSUBSCRIBE` and `QUIT` are answered in
/// order with the events; the rest is refused.
struct Subscribed<'r> {
    reader: &'r mut RespReader,
    proto: Resp,
    bucket: &'r [u8],
}

impl Input for Subscribed<'_> {
    fn check(&mut self, client: &TcpStream, out: &mut Vec<u8>) -> io::Result<Verdict> {
        let (proto, bucket) = (self.proto, self.bucket);
        let mut read = 0;
        while read < MAX_INPUT_PER_CHECK {
            match self.reader.fill_from(&mut ReadNow(client)) {
                // Half-closed: the stream goes on, as the text door's does.
                Ok(0) => break,
                Ok(n) => read += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(Verdict::Gone),
            }
            while let Some(frame) = self.reader.next_frame() {
                let verdict = match frame {
                    RespFrame::Command(args) => answer(args, proto, bucket, out),
                    RespFrame::TooLarge => {
                        write_error(out, b"ERR value too large");
                        Verdict::Go
                    }
                    RespFrame::ProtocolError(what) => {
                        write_error(out, format!("ERR Protocol error: {what}").as_bytes());
                        Verdict::Gone
                    }
                };
                if verdict != Verdict::Go {
                    return Ok(verdict);
                }
            }
        }
        Ok(Verdict::Go)
    }

    fn every_turn(&self) -> bool {
        true
    }
}

/// Answers one command of a subscribed client.
fn answer(args: Args<'_>, proto: Resp, bucket: &[u8], out: &mut Vec<u8>) -> Verdict {
    let name = args.get(0).unwrap_or_default().to_ascii_lowercase();
    match name.as_slice() {
        b"ping" => {
            let message = args.get(1).unwrap_or_default();
            match proto {
                // RESP2's subscribed PING answers a pub/sub-shaped frame.
                Resp::V2 => {
                    write_push_len(out, 2, proto);
                    write_bulk(out, b"pong");
                    write_bulk(out, message);
                }
                Resp::V3 if args.len() > 1 => write_bulk(out, message),
                Resp::V3 => write_simple(out, b"PONG"),
            }
            Verdict::Go
        }
        b"unsubscribe" => {
            let ours = args.len() == 1 || (1..args.len()).any(|i| args.get(i) == Some(bucket));
            for other in (1..args.len()).filter_map(|i| args.get(i)).filter(|b| *b != bucket) {
                write_unsubscribed(out, Some(other), 1, proto);
            }
            if ours {
                write_unsubscribed(out, Some(bucket), 0, proto);
                Verdict::Unsubscribed
            } else {
                Verdict::Go
            }
        }
        b"quit" => {
            write_simple(out, b"OK");
            Verdict::Gone
        }
        b"subscribe" => {
            write_error(out, b"ERR kv subscribes a connection to one bucket: UNSUBSCRIBE first");
            Verdict::Go
        }
        _ => {
            let shown = &name[..name.len().min(64)];
            let text =
                [&b"ERR Can't execute '"[..], shown, b"': only PING, UNSUBSCRIBE and QUIT while subscribed"];
            write_error(out, &text.concat());
            Verdict::Go
        }
    }
}

/// Writes the frame Redis answers `SUBSCRIBE` (`kind` = `subscribe`) or `UNSUBSCRIBE`
/// with: the kind, the channel (nil for none) and how many remain subscribed.
fn write_confirmation(out: &mut Vec<u8>, kind: &[u8], channel: Option<&[u8]>, count: i64, proto: Resp) {
    write_push_len(out, 3, proto);
    write_bulk(out, kind);
    match channel {
        Some(channel) => write_bulk(out, channel),
        None => write_nil(out, proto),
    }
    write_integer(out, count);
}

/// `UNSUBSCRIBE`'s frame.
pub(super) fn write_unsubscribed(out: &mut Vec<u8>, channel: Option<&[u8]>, count: i64, proto: Resp) {
    write_confirmation(out, b"unsubscribe", channel, count, proto);
}

impl RespConnection<'_> {
    /// `SUBSCRIBE bucket`: the connection becomes the bucket's stream once the replies
    /// before it are written.
    pub(super) fn subscribe(&mut self, args: Args<'_>) -> Flow {
        if args.len() != 2 {
            self.push_error(b"ERR kv subscribes a connection to one bucket: SUBSCRIBE <bucket>");
            return Flow::Next;
        }
        Flow::Subscribe(args.get(1).unwrap_or_default().to_vec())
    }

    /// Subscribes to `bucket` and streams its events until the stream ends (true); if
    /// the subscription did not take (no such bucket, the owner unreachable) the reply
    /// says why, and after an `UNSUBSCRIBE` the connection goes on serving commands
    /// (false). `reader` holds what the client sends meanwhile.
    pub(super) fn stream_events(&mut self, bucket: &[u8], reader: &mut RespReader) -> io::Result<bool> {
        let bucket = bucket.to_vec();
        let render = Render::Resp { proto: self.proto, bucket: bucket.clone() };
        let mut input = Subscribed { reader, proto: self.proto, bucket: &bucket };
        let stop = &self.state.shutting_down;
        match self.state.routes.route(&bucket) {
            Route::Local => {
                let w = worker::worker_for(&bucket, self.round.worker_count());
                let (subscriber, subscription) =
                    subscribe::subscription(self.state.config.subscriber_backlog);
                self.round.push_subscribe(w, &Command::Subscribe { bucket: &bucket }, subscriber);
                self.round.flush();
                if self.round.unregistered_subscriber(w).is_some() {
                    return self.finish_round().map(|()| false);
                }
                self.confirm(&bucket)?;
                let _counted = self.state.subscriber_guard();
                let streamed =
                    subscribe::stream_events(&self.stream, subscription, stop, &render, &mut input);
                sys::give_freed_memory_back();
                streamed.map(|verdict| verdict != Verdict::Unsubscribed)
            }
            Route::Peer(p) => self.relay_from(usize::from(p), &bucket, &render, &mut input),
            Route::Unrouted => {
                self.round.push_local(Reply::Error(ErrorKind::NoRoute { bucket: &bucket }));
                self.finish_round().map(|()| false)
            }
        }
    }

    /// The subscription took: its confirmation frame, after everything before it.
    fn confirm(&mut self, bucket: &[u8]) -> io::Result<()> {
        self.push_own(|out, proto| write_confirmation(out, b"subscribe", Some(bucket), 1, proto));
        self.finish_round()
    }

    /// Subscribes at the node owning `bucket` and relays its events.
    fn relay_from(
        &mut self,
        p: usize,
        bucket: &[u8],
        render: &Render,
        input: &mut Subscribed<'_>,
    ) -> io::Result<bool> {
        if !self.state.take_socket() {
            self.round.push_local(Reply::Error(ErrorKind::TooManyConnections));
            return self.finish_round().map(|()| false);
        }
        let peer = self.state.peers.get(p);
        let dialect = self.round.dialect();
        match self.state.peers.subscribe(p, bucket, dialect) {
            RemoteSubscription::Answered(reply) => {
                self.state.release_socket();
                self.round.push_local_bytes(&reply);
                self.finish_round().map(|()| false)
            }
            RemoteSubscription::Unavailable => {
                self.state.release_socket();
                self.round.push_local(peer.unavailable());
                self.finish_round().map(|()| false)
            }
            RemoteSubscription::Streaming { stream, pending } => {
                let _owner_socket = self.state.socket_taken();
                self.confirm(bucket)?;
                let mut owner_lost = Vec::new();
                peer.unavailable().write(dialect, &mut owner_lost);
                let events = RelayedEvents::new(stream, self.state.config.subscriber_backlog, owner_lost);
                let stop = &self.state.shutting_down;
                let verdict = subscribe::stream_relayed(&self.stream, events, &pending, stop, render, input)?;
                Ok(verdict != Verdict::Unsubscribed)
            }
        }
    }
}
