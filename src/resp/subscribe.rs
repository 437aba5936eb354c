//! `SUBSCRIBE` through the RESP door: buckets' changes as Redis pub/sub `message`
//! frames (RESP2 arrays, RESP3 pushes) whose payload is the text door's event line,
//! `eggs SET TO 3`, from this node's workers or relayed from the owning nodes.
//!
//! `SUBSCRIBE a b ...` follows several buckets on one connection, and more can be
//! added while subscribed (`subscribe/mux.rs` waits for all of them at once). While
//! subscribed the connection answers `PING`, `SUBSCRIBE`, `UNSUBSCRIBE [bucket ...]`
//! (after the last one it serves commands again) and `QUIT`, as Redis does in RESP2;
//! anything else gets an error. A bucket that does not exist, or whose owner cannot
//! be reached, gets an error in place of its confirmation. The connection closes when
//! the last bucket it follows is dropped. The worker's side, the backlog and dropping
//! a subscriber that falls behind are `subscribe/`'s.

use std::io::{self, Write};
use std::net::TcpStream;

use super::{Flow, RespConnection};
use crate::peer::RemoteSubscription;
use crate::protocol::{
    Args, Command, ErrorKind, Reply, Resp, RespFrame, RespReader, write_bulk, write_error, write_integer,
    write_nil, write_push_len, write_simple,
};
use crate::router::Route;
use crate::socket::ReadNow;
use crate::subscribe::{self, Asked, MuxInput, Render, Step, Streams};
use crate::{sys, worker};

/// Most bytes of input one look at a subscribed client reads, so that a client
/// sending without pause cannot keep the stream from its events.
const MAX_INPUT_PER_CHECK: usize = 64 * 1024;

/// A subscribed RESP client's input: `PING`, `UNSUBSCRIBE` and `QUIT` are answered in
/// order with the events, `SUBSCRIBE` is handed back to the connection; the rest is
/// refused.
struct Subscribed<'r> {
    reader: &'r mut RespReader,
    proto: Resp,
    /// `--max-value`, named in the error for a bulk over it.
    max_value: usize,
}

impl MuxInput for Subscribed<'_> {
    fn check(&mut self, client: &TcpStream, streams: &mut Streams<'_>) -> io::Result<Asked> {
        let mut read = 0;
        loop {
            while let Some(frame) = self.reader.next_frame() {
                let asked = match frame {
                    RespFrame::Command(args) => answer(args, self.proto, streams),
                    RespFrame::TooLarge => {
                        write_error(streams.output(), super::too_large(self.max_value).as_bytes());
                        Asked::Go
                    }
                    RespFrame::ProtocolError(what) => {
                        write_error(streams.output(), format!("ERR Protocol error: {what}").as_bytes());
                        Asked::End(Step::Gone)
                    }
                };
                if asked != Asked::Go {
                    return Ok(asked);
                }
            }
            if read >= MAX_INPUT_PER_CHECK {
                return Ok(Asked::Go);
            }
            match self.reader.fill_from(&mut ReadNow(client)) {
                // Half-closed: the stream goes on, as the text door's does.
                Ok(0) => {
                    streams.client_half_closed();
                    return Ok(Asked::Go);
                }
                Ok(n) => read += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(Asked::Go),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(Asked::End(Step::Gone)),
            }
        }
    }
}

/// Answers one command of a subscribed client.
fn answer(args: Args<'_>, proto: Resp, streams: &mut Streams<'_>) -> Asked {
    let name = args.get(0).unwrap_or_default().to_ascii_lowercase();
    let out = streams.output();
    match name.as_slice() {
        b"ping" if args.len() > 2 => {
            write_error(out, b"ERR wrong number of arguments for 'ping' command");
            Asked::Go
        }
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
            Asked::Go
        }
        b"unsubscribe" => unsubscribe(&args, proto, streams),
        b"subscribe" if args.len() > 1 => Asked::End(Step::Subscribe(
            (1..args.len()).filter_map(|i| args.get(i)).map(<[u8]>::to_vec).collect(),
        )),
        b"subscribe" => {
            write_error(out, b"ERR wrong number of arguments for 'subscribe' command");
            Asked::Go
        }
        b"quit" => {
            write_simple(out, b"OK");
            Asked::End(Step::Gone)
        }
        _ => {
            let shown = &name[..name.len().min(64)];
            let text = [
                &b"ERR Can't execute '"[..],
                shown,
                b"': only PING, SUBSCRIBE, UNSUBSCRIBE and QUIT while subscribed",
            ];
            write_error(out, &text.concat());
            Asked::Go
        }
    }
}

/// `UNSUBSCRIBE [bucket ...]`: one frame per bucket named (every bucket followed, if
/// none is), each with how many remain after it; after the last, the connection
/// serves commands again.
fn unsubscribe(args: &Args<'_>, proto: Resp, streams: &mut Streams<'_>) -> Asked {
    if args.len() == 1 {
        let all = streams.remove_all();
        for (i, bucket) in all.iter().enumerate() {
            write_unsubscribed(streams.output(), Some(bucket), (all.len() - i - 1) as i64, proto);
        }
    } else {
        let named = || (1..args.len()).filter_map(|i| args.get(i));
        let counts = streams.remove_each(named());
        for (bucket, left) in named().zip(counts) {
            write_unsubscribed(streams.output(), Some(bucket), left as i64, proto);
        }
    }
    if streams.is_empty() { Asked::End(Step::Unsubscribed) } else { Asked::Go }
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

impl<'s> RespConnection<'s> {
    /// `SUBSCRIBE bucket [bucket ...]`: the connection follows the buckets once the
    /// replies before it are written.
    pub(super) fn subscribe(&mut self, args: Args<'_>) -> Flow {
        if args.len() < 2 {
            self.push_error(b"ERR wrong number of arguments for 'subscribe' command");
            return Flow::Next;
        }
        Flow::Subscribe((1..args.len()).filter_map(|i| args.get(i)).map(<[u8]>::to_vec).collect())
    }

    /// Subscribes to `buckets` and streams their events until the connection is over
    /// (true) or every subscription is gone after `UNSUBSCRIBE`, or none took (false:
    /// the connection serves commands again, `reader` holding what the client sent
    /// meanwhile).
    pub(super) fn stream_events(&mut self, buckets: &[Vec<u8>], reader: &mut RespReader) -> io::Result<bool> {
        // The bell is a descriptor of the budget, as every socket is.
        let bell = match self.state.take_socket().then(sys::Bell::new) {
            Some(Ok(bell)) => bell,
            Some(Err(error)) => {
                self.state.release_socket();
                log::warn!("cannot make a subscriber's bell: {error}");
                self.round.push_local(Reply::Error(ErrorKind::TooManyConnections));
                return self.finish_round().map(|()| false);
            }
            None => {
                self.round.push_local(Reply::Error(ErrorKind::TooManyConnections));
                return self.finish_round().map(|()| false);
            }
        };
        let _bell_socket = self.state.socket_taken();
        let _streaming = self.state.streaming_guard();
        subscribe::cap_send_buffer(&self.stream);
        let dropped = &self.state.counters.subscribers_dropped;
        let mut streams = Streams::new(bell, self.state.config.subscriber_backlog, dropped);
        let stream = self.stream.clone();
        let stop = &self.state.shutting_down;
        let mut asked = buckets.to_vec();
        let over = loop {
            if let Err(error) = self.open_all(&asked, &mut streams) {
                break Err(error);
            }
            if streams.is_empty() {
                break (&*stream).write_all(streams.output()).map(|()| false);
            }
            let max_value = self.state.config.max_value;
            let mut input = Subscribed { reader: &mut *reader, proto: self.proto, max_value };
            match streams.run(&stream, stop, &mut input) {
                Ok(Step::Subscribe(more)) => asked = more,
                Ok(Step::Unsubscribed) => break Ok(false),
                Ok(Step::Gone) => break Ok(true),
                Err(error) => break Err(error),
            }
        };
        drop(streams);
        sys::give_freed_memory_back();
        over
    }

    /// Subscribes to each of `buckets` not followed yet; each gets its confirmation
    /// (how many are followed now) or the error that says why not, in order.
    fn open_all(&mut self, buckets: &[Vec<u8>], streams: &mut Streams<'s>) -> io::Result<()> {
        for bucket in buckets {
            if !streams.follows(bucket) {
                self.open(bucket, streams);
            }
            if streams.follows(bucket) {
                let count = streams.len() as i64;
                self.push_own(|out, proto| write_confirmation(out, b"subscribe", Some(bucket), count, proto));
            }
            self.round.flush();
            self.round.write_output(streams.output())?;
        }
        Ok(())
    }

    /// Subscribes to `bucket`, locally or at the node owning it; a failure is pushed
    /// to the round as its reply.
    fn open(&mut self, bucket: &[u8], streams: &mut Streams<'s>) {
        match self.state.routes.route(bucket) {
            Route::Local => {
                let w = worker::worker_for(bucket, self.round.worker_count());
                let (subscriber, subscription) =
                    subscribe::subscription(self.state.config.subscriber_backlog);
                self.round.push_subscribe(w, &Command::Subscribe { bucket }, subscriber);
                self.round.flush();
                if self.round.unregistered_subscriber(w).is_none() {
                    let render = Render::Resp { proto: self.proto, bucket: bucket.to_vec() };
                    let counted = Box::new(self.state.subscriber_guard());
                    streams.add_local(bucket, subscription, counted, render);
                }
            }
            Route::Peer(p) => self.relay_from(usize::from(p), bucket, streams),
            Route::Unrouted => self.round.push_local(Reply::Error(ErrorKind::NoRoute { bucket })),
        }
    }

    /// Subscribes at the node owning `bucket`, to relay its events.
    fn relay_from(&mut self, p: usize, bucket: &[u8], streams: &mut Streams<'s>) {
        if !self.state.take_socket() {
            self.round.push_local(Reply::Error(ErrorKind::TooManyConnections));
            return;
        }
        let peer = self.state.peers.get(p);
        let dialect = self.round.dialect();
        match self.state.peers.subscribe(p, bucket, dialect) {
            RemoteSubscription::Answered(reply) => {
                self.state.release_socket();
                self.round.push_local_bytes(&reply);
            }
            RemoteSubscription::Unavailable => {
                self.state.release_socket();
                self.round.push_local(peer.unavailable());
            }
            RemoteSubscription::Streaming { stream, pending } => {
                let held = Box::new(self.state.socket_taken());
                let mut owner_lost = Vec::new();
                peer.unavailable().write(dialect, &mut owner_lost);
                let render = Render::Resp { proto: self.proto, bucket: bucket.to_vec() };
                streams.add_relayed(bucket, stream, pending, owner_lost, held, render);
            }
        }
    }
}
