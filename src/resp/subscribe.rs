//! `SUBSCRIBE` through the RESP door: a bucket's changes as Redis pub/sub `message`
//! frames (RESP2 arrays, RESP3 pushes) whose payload is the text door's event line,
//! `eggs SET TO 3`, from this node's worker or relayed from the owning node.
//!
//! As in the text door, a subscribed connection is a stream: one bucket per
//! connection, input ignored from then on, closed when the bucket is dropped. The
//! worker's side, the backlog and dropping a subscriber that falls behind are
//! `subscribe/`'s.

use std::io;

use super::{Flow, RespConnection};
use crate::peer::RemoteSubscription;
use crate::protocol::{
    Args, Command, ErrorKind, Reply, Resp, write_bulk, write_integer, write_nil, write_push_len,
};
use crate::router::Route;
use crate::subscribe::{self, RelayedEvents, Render};
use crate::{sys, worker};

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
    /// says why and the connection goes on serving commands (false).
    pub(super) fn stream_events(&mut self, bucket: &[u8]) -> io::Result<bool> {
        let bucket = bucket.to_vec();
        let render = Render::Resp { proto: self.proto, bucket: bucket.clone() };
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
                let streamed = subscribe::stream_events(&self.stream, subscription, stop, &render);
                sys::give_freed_memory_back();
                streamed.map(|()| true)
            }
            Route::Peer(p) => self.relay_from(usize::from(p), &bucket, &render),
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
    fn relay_from(&mut self, p: usize, bucket: &[u8], render: &Render) -> io::Result<bool> {
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
                subscribe::stream_relayed(&self.stream, events, &pending, stop, render).map(|()| true)
            }
        }
    }
}
