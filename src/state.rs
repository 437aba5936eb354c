//! What a running server's threads share: the configuration, each worker's partition
//! and inbox, the route table and the peers, the open sockets, and the counters STATS
//! reports.
//!
//! It sits below every module that uses it (the acceptor, the connections, STATS and
//! the server handle), so nothing imports upward. It does no I/O and starts no threads.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;

use crate::batch::Inboxes;
use crate::config::{self, Config};
use crate::peer::Peers;
use crate::router::RouteTable;
use crate::worker::{Inline, WorkerShared};

/// State shared by the acceptor, every connection thread and STATS.
#[derive(Debug)]
pub(crate) struct State {
    pub config: Config,
    pub started: Instant,
    /// Each worker's partition and counters.
    pub workers: Vec<Arc<WorkerShared>>,
    /// Each worker's inbox. Taken (set to `None`) at shutdown so the workers exit
    /// once the last connection holding a clone is gone.
    pub inboxes: Mutex<Option<Inboxes>>,
    pub counters: Counters,
    pub shutting_down: AtomicBool,
    /// Set by `DEBUG CRASH-ACCEPTOR`: the acceptor panics at its next connection.
    pub crash_acceptor: AtomicBool,
    /// A handle on every open client socket, so shutdown can wake their threads.
    /// Shared with the connection rather than a `try_clone`: a duplicate descriptor per
    /// connection would halve how many connections the open-file limit allows.
    pub open: Mutex<HashMap<u64, Arc<TcpStream>>>,
    /// First byte of a bucket name -> who serves it.
    pub routes: RouteTable,
    /// The other nodes, for the buckets they own.
    pub peers: Peers,
    /// With `--data-dir`: the directory's lock and how loading went.
    pub data: Option<DataState>,
    /// How many sockets of each kind may be open (issue 13).
    pub budget: Budget,
    /// When the shutdown grace ends; set (once) before `shutting_down`.
    pub stop_deadline: OnceLock<Instant>,
    /// Failed node handshakes per source address (issue 14).
    pub handshake_throttle: crate::auth::Throttle,
    /// Failed client `AUTH`s per source address.
    pub auth_throttle: crate::auth::Throttle,
}

/// What a server keeps of its data directory once loaded.
#[derive(Debug)]
pub(crate) struct DataState {
    /// Held for the server's life: a second process refuses the directory.
    pub _lock: crate::persist::DirLock,
    pub load_time: std::time::Duration,
}

/// How many sockets this node may hold open, beyond `--max-connections` clients.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Connections other nodes opened to this one: `--peer-connections` per peer,
    /// counted apart from the client cap so that clients cannot crowd forwarding out.
    pub peers: usize,
    /// Every socket the acceptor takes and every relayed subscription's second
    /// socket together: the descriptors the open-file limit leaves once the reserve
    /// and this node's own pools to its peers are set aside.
    pub sockets: usize,
}

impl Budget {
    /// The budget of a node with `config` and `peers` other nodes, when the open-file
    /// limit less the server's reserve leaves `descriptors` (`None`: no limit known).
    pub fn new(config: &Config, peers: usize, descriptors: Option<u64>) -> Budget {
        let pools = config.peer.connections.saturating_mul(peers);
        let sockets = descriptors.map_or(usize::MAX, |free| {
            usize::try_from(free).unwrap_or(usize::MAX).saturating_sub(pools).max(1)
        });
        Budget { peers: pools, sockets }
    }
}

/// Which limit an open connection counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seat {
    /// `--max-connections`: a client, or a connection not yet known to be a node.
    Client,
    /// The peer budget: a connection that opened with an accepted handshake, or was
    /// let in beyond the client cap on condition that it does.
    Peer,
}

/// The server-wide counters of STATS.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections: AtomicUsize,
    pub connections_total: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub commands_total: AtomicU64,
    /// Subscriptions streaming now, on this node's own buckets: one per bucket a
    /// connection follows (STATS `subscribers`).
    pub subscribers: AtomicUsize,
    /// Subscribers a connection dropped itself, since start: its own unwritten
    /// replies and relayed events passed the backlog (STATS `subscribers_dropped`
    /// adds the workers' drops, those of local subscriptions behind on their logs).
    pub subscribers_dropped: AtomicU64,
    /// Connections streaming events now, whatever they follow and wherever it lives:
    /// they apply no batches (see [`State::may_apply_inline`]).
    pub streaming: AtomicUsize,
    /// Connections from other nodes open now ([`Seat::Peer`]).
    pub peer_connections: AtomicUsize,
    /// Sockets open now against [`Budget::sockets`].
    pub sockets: AtomicUsize,
    /// Replies to requests read before the stop that clients had not received when
    /// the shutdown grace ended (see `shutdown.rs`).
    pub replies_lost: AtomicU64,
    /// Failed `AUTH` attempts.
    pub auth_failures: AtomicU64,
    /// Node handshakes this node refused: a wrong, missing or unexpected proof or
    /// secret, or a throttled address.
    pub peer_auth_failures: AtomicU64,
    /// Clients turned away by protected mode.
    pub protected_mode_rejections: AtomicU64,
}

impl State {
    /// True once shutdown has begun.
    #[inline]
    pub fn is_stopping(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// When a stopping server closes the connections still open: the end of the
    /// shutdown grace (a grace from now if the stop has not set it).
    pub fn stop_deadline(&self) -> Instant {
        *self.stop_deadline.get_or_init(|| Instant::now() + self.config.shutdown_grace)
    }

    /// When a connection may apply a batch itself (see `worker::apply_inline`): when
    /// the partition is free while there are no more connections that apply batches
    /// than cores, so that a thread holding a partition lock is rarely preempted by
    /// another connection's; with more, for shallow rounds only, waiting for the lock.
    /// Connections streaming events never apply a batch, so they do not count, once
    /// each however many buckets they follow. Never with
    /// fault injection on, whose crashes must happen on workers.
    #[inline]
    pub fn may_apply_inline(&self) -> Inline {
        let connections = self.counters.connections.load(Ordering::Relaxed);
        let streaming = self.counters.streaming.load(Ordering::Relaxed);
        if self.config.debug {
            Inline::Never
        } else if connections.saturating_sub(streaming) <= config::cores() {
            Inline::IfFree
        } else {
            Inline::SmallRounds
        }
    }

    /// Takes one socket of [`Budget::sockets`]; false when none is left.
    pub fn take_socket(&self) -> bool {
        let budget = self.budget.sockets;
        self.counters
            .sockets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < budget).then_some(n + 1))
            .is_ok()
    }

    pub fn release_socket(&self) {
        self.counters.sockets.fetch_sub(1, Ordering::SeqCst);
    }

    /// A seat for a connection just accepted, its socket taken: a client's while
    /// fewer than `--max-connections` are open, else a peer's if the peer budget has
    /// room (the connection must then open with a handshake), else none.
    pub fn admit(&self) -> Option<Seat> {
        if !self.take_socket() {
            return None;
        }
        let max = self.config.max_connections;
        let counters = &self.counters;
        if counters
            .connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .is_ok()
        {
            return Some(Seat::Client);
        }
        if self.take_peer_seat() {
            return Some(Seat::Peer);
        }
        self.release_socket();
        None
    }

    fn take_peer_seat(&self) -> bool {
        let budget = self.budget.peers;
        self.counters
            .peer_connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < budget).then_some(n + 1))
            .is_ok()
    }

    /// Moves a connection to seat `to`. A client becomes a peer only while the peer
    /// budget has room (otherwise it stays a client, which is no worse); a peer
    /// becomes a client (a relayed subscription, serving one client) always. Returns
    /// the seat it has now.
    pub fn reseat(&self, from: Seat, to: Seat) -> Seat {
        match (from, to) {
            (Seat::Client, Seat::Peer) if self.take_peer_seat() => {
                self.counters.connections.fetch_sub(1, Ordering::SeqCst);
                Seat::Peer
            }
            (Seat::Peer, Seat::Client) => {
                self.counters.connections.fetch_add(1, Ordering::SeqCst);
                self.counters.peer_connections.fetch_sub(1, Ordering::SeqCst);
                Seat::Client
            }
            _ => from,
        }
    }

    /// A connection in `seat` closed: its seat and its socket are free again.
    pub fn leave(&self, seat: Seat) {
        let count = match seat {
            Seat::Client => &self.counters.connections,
            Seat::Peer => &self.counters.peer_connections,
        };
        count.fetch_sub(1, Ordering::SeqCst);
        self.release_socket();
    }

    /// Gives back a socket taken with [`State::take_socket`] when dropped.
    pub fn socket_taken(&self) -> SocketTaken<'_> {
        SocketTaken(self)
    }

    /// Counts a subscription streaming from this node until the guard is dropped.
    pub fn subscriber_guard(&self) -> Counted<'_> {
        Counted::new(&self.counters.subscribers)
    }

    /// Counts a connection streaming events until the guard is dropped.
    pub fn streaming_guard(&self) -> Counted<'_> {
        Counted::new(&self.counters.streaming)
    }
}

/// A socket of [`Budget::sockets`], given back when dropped (also while unwinding).
pub(crate) struct SocketTaken<'a>(&'a State);

impl Drop for SocketTaken<'_> {
    fn drop(&mut self) {
        self.0.release_socket();
    }
}

/// Holds one count of a gauge of [`Counters`] (`subscribers`, `streaming`) while it
/// lives, and gives it back when dropped (also while unwinding).
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
