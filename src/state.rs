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

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::batch::Batch;
use crate::config::{self, Config};
use crate::peer::Peers;
use crate::router::RouteTable;
use crate::worker::WorkerShared;

/// State shared by the acceptor, every connection thread and STATS.
#[derive(Debug)]
pub(crate) struct State {
    pub config: Config,
    pub started: Instant,
    /// Each worker's partition and counters.
    pub workers: Vec<Arc<WorkerShared>>,
    /// Each worker's inbox. Taken (set to `None`) at shutdown so the workers exit
    /// once the last connection holding a clone is gone.
    pub inboxes: Mutex<Option<Vec<Sender<Batch>>>>,
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
    /// When the shutdown grace ends; set (once) before `shutting_down`.
    pub stop_deadline: OnceLock<Instant>,
}

/// The server-wide counters of STATS.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections: AtomicUsize,
    pub connections_total: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub commands_total: AtomicU64,
    /// Subscriptions streaming now, on this node's own buckets.
    pub subscribers: AtomicUsize,
    /// Replies to requests read before the stop that clients had not received when
    /// the shutdown grace ended (see `shutdown.rs`).
    pub replies_lost: AtomicU64,
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

    /// True while a connection may apply a batch itself when the partition is free
    /// (see `worker::apply_inline`): no more connections than cores, so a thread holding
    /// a partition lock is not preempted by another connection's. Never with fault
    /// injection on, whose crashes must happen on workers.
    #[inline]
    pub fn may_apply_inline(&self) -> bool {
        !self.config.debug && self.counters.connections.load(Ordering::Relaxed) <= config::cores()
    }

    /// Counts a subscription streaming from this node until the guard is dropped.
    pub fn subscriber_guard(&self) -> SubscriberGuard<'_> {
        self.counters.subscribers.fetch_add(1, Ordering::Relaxed);
        SubscriberGuard(&self.counters.subscribers)
    }
}

/// Holds one count of [`Counters::subscribers`] while a subscription streams.
pub(crate) struct SubscriberGuard<'a>(&'a AtomicUsize);

impl Drop for SubscriberGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
