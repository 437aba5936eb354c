//! The other nodes of the cluster: a pool of connections to each, and its health.
//!
//! Each [`Peer`] keeps lazily opened, pooled connections (`conn.rs`), counts failed
//! exchanges, and after [`DOWN_AFTER_FAILURES`] in a row marks the peer down: its
//! requests then fail at once, without a connect attempt, and its prober thread (one
//! per peer, idle while the peer is up) tries `KV-PEER-HELLO` + `PING` with backoff
//! from [`FIRST_BACKOFF`], doubling, up to the configured cap. The first probe answered
//! `PONG` marks the peer up again, with no client traffic needed.
//!
//! What goes over these connections, and what a client is told when it fails, is the
//! forwarder's business (`forward.rs`); a SUBSCRIBE for another node's bucket gets a
//! connection of its own here ([`Peers::subscribe`]) and is streamed by `subscribe/`.
//! This folder owns sockets to peers and the prober threads; it knows nothing of
//! workers or of client connections.

mod conn;
mod handshake;

pub(crate) use conn::{Deadline, Failure, HelloReply, PeerConn};

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::auth::Secret;
use crate::config::{CONNECTION_STACK_SIZE, PeerConfig};
use crate::logcap::{Limiter, quote, warn_limited};
use crate::protocol::{self, Command, Dialect, ErrorKind, Reply, Stats, hello_line};
use crate::router::Cluster;

/// First wait before probing a peer that was marked down; doubled after every failed
/// probe up to the configured cap. 100 ms notices a quick restart quickly without
/// hammering a peer that stays down.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Failed exchanges in a row after which a peer is marked down.
///
/// More than one, so that a single reset connection (say, to a peer that restarted)
/// does not make every client fail fast for a backoff period; small, so that a dead
/// peer costs clients a timeout only a few times.
pub const DOWN_AFTER_FAILURES: u32 = 3;

/// Connections in reserve for one peer.
#[derive(Debug, Default)]
struct Pool {
    idle: Vec<PeerConn>,
    /// Connections open to the peer, idle or in use.
    open: usize,
}

/// One other node, its connections and its counters.
#[derive(Debug)]
pub struct Peer {
    name: String,
    addr: SocketAddr,
    config: PeerConfig,
    /// This node's name.
    from: String,
    /// The cluster secret: with it, every connection opens with the version-2
    /// challenge-response (`handshake.rs`); without it, with [`Peer::hello`].
    secret: Option<Secret>,
    /// The version-1 handshake line.
    hello: Vec<u8>,
    /// Connections on which the peer failed to prove the secret.
    auth_failures: AtomicU64,
    up: AtomicBool,
    /// Failed exchanges since the last one that worked.
    failures: AtomicU32,
    forwarded: AtomicU64,
    errors: AtomicU64,
    pool: Mutex<Pool>,
    /// Signalled when a connection goes back to the pool or is closed.
    returned: Condvar,
    /// True once the node shuts down; the prober waits on `wake` under this lock.
    stopping: Mutex<bool>,
    wake: Condvar,
    /// A refused handshake is logged once per peer, not once per request round.
    refusal_logged: AtomicBool,
    /// Connections the peer turned away (full, stopping) are logged at most once a
    /// second.
    turned_away: Limiter,
}

impl Peer {
    fn new(from: &str, name: &str, addr: SocketAddr, config: PeerConfig, secret: Option<Secret>) -> Peer {
        Peer {
            name: name.to_string(),
            addr,
            config,
            from: from.to_string(),
            secret,
            hello: hello_line(from, name),
            auth_failures: AtomicU64::new(0),
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            forwarded: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
            stopping: Mutex::new(false),
            wake: Condvar::new(),
            refusal_logged: AtomicBool::new(false),
            turned_away: Limiter::new(),
        }
    }

    /// What a request gets when this peer cannot be reached: `ERROR peer <name>
    /// unavailable`.
    pub fn unavailable(&self) -> Reply<'_> {
        Reply::Error(ErrorKind::PeerUnavailable { peer: &self.name })
    }

    /// What a write gets when it was sent to this peer but no reply came back: `ERROR
    /// peer <name> unavailable: outcome unknown`.
    pub fn outcome_unknown(&self) -> Reply<'_> {
        Reply::Error(ErrorKind::PeerOutcomeUnknown { peer: &self.name })
    }

    /// Logs a failed exchange: at debug when it is the peer's failure (counting it
    /// towards marking the peer down says it at warn soon enough), at warn, at most
    /// once a second, when the peer turned us away for a reason of its own.
    pub(crate) fn log_failure(&self, failure: &Failure, answered: usize) {
        if matches!(failure, Failure::Full | Failure::Rejected(_)) {
            warn_limited!(
                self.turned_away,
                "peer {} at {} turned a connection away: {failure}; {answered} requests answered unavailable",
                self.name,
                self.addr
            );
        } else {
            log::debug!(
                "peer {} at {}: {failure}; {answered} requests answered unavailable",
                self.name,
                self.addr
            );
        }
    }

    /// Counts `n` requests sent to this peer, or failed trying.
    pub(crate) fn count_forwarded(&self, n: usize) {
        self.forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts `n` requests answered unavailable.
    pub(crate) fn count_errors(&self, n: usize) {
        self.errors.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Logs, once per peer until it is next marked up, that it refused our handshake.
    pub(crate) fn log_refusal(&self, line: &[u8]) {
        if !self.refusal_logged.swap(true, Ordering::Relaxed) {
            log::warn!(
                "peer {} at {} refused this node's handshake: {}; check that every node has \
                 the same cluster file",
                self.name,
                self.addr,
                quote(line)
            );
        }
    }

    /// False while the peer is marked down.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Requests sent to this peer, or failed trying.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Requests answered `ERROR peer <name> unavailable`.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// An idle connection, or a new one if fewer than the limit are open, waiting for
    /// one to come back otherwise.
    pub(crate) fn checkout(&self, deadline: Deadline) -> Result<PeerConn, Failure> {
        let mut pool = self.pool.lock();
        loop {
            if let Some(mut conn) = pool.idle.pop() {
                conn.reused = true;
                return Ok(conn);
            }
            if pool.open < self.config.connections {
                pool.open += 1;
                break;
            }
            if self.returned.wait_until(&mut pool, deadline.soft).timed_out() {
                return Err(Failure::Busy);
            }
        }
        drop(pool);
        self.connect(deadline).inspect_err(|_| self.release_slot())
    }

    /// Opens a connection (its pool slot already counted).
    pub(crate) fn connect(&self, deadline: Deadline) -> Result<PeerConn, Failure> {
        let left = deadline.soft.saturating_duration_since(Instant::now());
        let timeout = self.config.connect_timeout.min(left);
        if timeout.is_zero() {
            return Err(Failure::TimedOut);
        }
        let stream = TcpStream::connect_timeout(&self.addr, timeout).map_err(Failure::Connect)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.config.timeout))?;
        stream.set_write_timeout(Some(self.config.timeout))?;
        let mut conn = PeerConn::new(stream, self.config.timeout, self.hello.clone());
        if let Some(secret) = &self.secret {
            let names = (self.from.as_str(), self.name.as_str());
            handshake::authenticate(&mut conn, secret, names, deadline, &self.auth_failures)?;
        }
        Ok(conn)
    }

    /// Swaps a dead connection for a new one in the same pool slot.
    pub(crate) fn replace(&self, conn: &mut PeerConn, deadline: Deadline) -> Result<(), Failure> {
        *conn = self.connect(deadline)?;
        Ok(())
    }

    /// Puts a connection that finished an exchange cleanly back in the pool.
    pub(crate) fn checkin(&self, conn: PeerConn) {
        let mut pool = self.pool.lock();
        if self.is_up() {
            pool.idle.push(conn);
        } else {
            // Marked down meanwhile: its connections are suspect.
            pool.open -= 1;
        }
        drop(pool);
        self.returned.notify_one();
    }

    /// Closes a connection that is broken or out of step.
    pub(crate) fn discard(&self, conn: PeerConn) {
        drop(conn);
        self.release_slot();
    }

    fn release_slot(&self) {
        self.pool.lock().open -= 1;
        self.returned.notify_one();
    }

    pub(crate) fn succeeded(&self) {
        // Read first: in the steady state this stays a shared read of the cache line.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failed exchange towards marking the peer down, and marks it down after
    /// [`DOWN_AFTER_FAILURES`] in a row.
    pub(crate) fn count_failure(&self, failure: &Failure) {
        if failure.is_local_or_busy() {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= DOWN_AFTER_FAILURES && self.up.swap(false, Ordering::AcqRel) {
            log::warn!(
                "peer {} at {} marked down after {failures} failed exchanges in a row (last: {failure})",
                self.name,
                self.addr
            );
            let idle = std::mem::take(&mut self.pool.lock().idle);
            for conn in idle {
                self.discard(conn);
            }
            let _stopping = self.stopping.lock();
            self.wake.notify_all();
        }
    }

    /// Sends `SUBSCRIBE <bucket>` on a connection of its own; its reply, and the
    /// events, in `dialect`.
    fn subscribe(&self, bucket: &[u8], dialect: Dialect) -> RemoteSubscription {
        self.count_forwarded(1);
        if !self.is_up() {
            self.count_errors(1);
            return RemoteSubscription::Unavailable;
        }
        match self.try_subscribe(bucket, dialect) {
            Ok(outcome) => {
                self.succeeded();
                outcome
            }
            Err(failure) => {
                self.count_errors(1);
                self.log_failure(&failure, 1);
                self.count_failure(&failure);
                RemoteSubscription::Unavailable
            }
        }
    }

    /// Between nodes a subscription that takes is acknowledged `OK` (see docs/CLUSTER.md),
    /// so the replies to read are the handshake's line, then one reply frame; the
    /// events follow as event frames (`subscribe/`).
    fn try_subscribe(&self, bucket: &[u8], dialect: Dialect) -> Result<RemoteSubscription, Failure> {
        let deadline = Deadline::after(self.config.timeout);
        let refused = |line: &[u8]| {
            let mut reply = Vec::new();
            protocol::relay_error_line(line, dialect, &mut reply);
            Ok(RemoteSubscription::Answered(reply))
        };
        let mut conn = match self.connect(deadline) {
            // The peer refused this node's handshake (issue 14): the SUBSCRIBE gets the
            // refusal line, as a forwarded request does.
            Err(Failure::Refused(line)) => return refused(&line),
            connected => connected?,
        };
        let mut request = Vec::new();
        protocol::push_peer_frame(&Command::Subscribe { bucket }, dialect, &mut request);
        conn.send(&request, deadline)?;
        let (mut buffer, mut spans) = (Vec::new(), Vec::new());
        if let HelloReply::Refused(line) = conn.read_frames(&mut buffer, &mut spans, 1, deadline)? {
            return refused(&line);
        }
        let (start, end) = spans[0];
        let mut ok = Vec::new();
        Reply::Ok.write(dialect, &mut ok);
        if buffer[start..end] != ok[..] {
            // Not found, or an error: the reply, and no stream.
            return Ok(RemoteSubscription::Answered(buffer[start..end].to_vec()));
        }
        // Events that came right behind the acknowledgement go first.
        let pending = buffer[end..].to_vec();
        Ok(RemoteSubscription::Streaming { stream: conn.stream, pending })
    }

    /// One probe: connect, handshake, `PING`. The connection is returned for the pool.
    fn probe(&self) -> Result<PeerConn, Failure> {
        let deadline = Deadline::after(self.config.timeout);
        let mut conn = self.connect(deadline)?;
        let mut request = Vec::new();
        protocol::push_peer_frame(&Command::Ping, Dialect::Text, &mut request);
        conn.send(&request, deadline)?;
        let (mut replies, mut spans) = (Vec::new(), Vec::new());
        match conn.read_replies(&mut replies, &mut spans, 1, deadline)? {
            HelloReply::Refused(line) => {
                Err(Failure::Protocol(format!("handshake refused: {}", quote(&line))))
            }
            HelloReply::Accepted if &replies[spans[0].0..spans[0].1] != b"PONG\r\n" => {
                Err(Failure::Protocol(format!("PING answered {}", quote(&replies))))
            }
            HelloReply::Accepted => Ok(conn),
        }
    }

    /// The prober thread: idle while the peer is up; while it is down, probes with
    /// backoff until a probe succeeds, then marks it up.
    fn probe_loop(&self) {
        loop {
            {
                let mut stopping = self.stopping.lock();
                while !*stopping && self.is_up() {
                    self.wake.wait(&mut stopping);
                }
                if *stopping {
                    return;
                }
            }
            let mut backoff = FIRST_BACKOFF.min(self.config.max_backoff);
            loop {
                {
                    let mut stopping = self.stopping.lock();
                    if !*stopping {
                        self.wake.wait_for(&mut stopping, backoff);
                    }
                    if *stopping {
                        return;
                    }
                }
                match self.probe() {
                    Ok(conn) => {
                        self.failures.store(0, Ordering::Relaxed);
                        self.up.store(true, Ordering::Release);
                        self.refusal_logged.store(false, Ordering::Relaxed);
                        log::info!("peer {} at {} is up again", self.name, self.addr);
                        let mut pool = self.pool.lock();
                        if pool.open < self.config.connections {
                            pool.open += 1;
                            pool.idle.push(conn);
                        }
                        break;
                    }
                    Err(failure) => {
                        log::debug!("probe of peer {} at {}: {failure}", self.name, self.addr);
                        backoff = (backoff * 2).min(self.config.max_backoff);
                    }
                }
            }
        }
    }

    /// Idle connections, open connections and failures in a row, for tests.
    #[cfg(test)]
    pub(crate) fn pool_state(&self) -> (usize, usize, u32) {
        let pool = self.pool.lock();
        (pool.idle.len(), pool.open, self.failures.load(Ordering::Relaxed))
    }

    fn stop(&self) {
        *self.stopping.lock() = true;
        self.wake.notify_all();
    }
}

/// Every peer of this node, in the order [`Route::Peer`](crate::router::Route::Peer)
/// indexes them, and their prober threads.
#[derive(Debug, Default)]
pub struct Peers {
    list: Vec<Arc<Peer>>,
    timeout: Duration,
    probers: Mutex<Vec<JoinHandle<()>>>,
}

impl Peers {
    /// No peers: a node on its own.
    #[cfg(test)]
    pub fn none() -> Peers {
        Peers::default()
    }

    /// The peers of node `this` of `cluster`, each with an idle prober thread.
    /// No connection is opened until a request needs one.
    pub fn start(
        cluster: &Cluster,
        this: usize,
        config: &PeerConfig,
        secret: Option<&Secret>,
    ) -> io::Result<Peers> {
        let from = &cluster.nodes()[this].name;
        let list: Vec<Arc<Peer>> = cluster
            .peers_of(this)
            .map(|node| Arc::new(Peer::new(from, &node.name, node.addr, config.clone(), secret.cloned())))
            .collect();
        let peers = Peers { list, timeout: config.timeout, probers: Mutex::new(Vec::new()) };
        for peer in &peers.list {
            let prober = peer.clone();
            let handle = thread::Builder::new()
                .name(format!("kv-probe-{}", peer.name))
                .stack_size(CONNECTION_STACK_SIZE)
                .spawn(move || prober.probe_loop())?;
            peers.probers.lock().push(handle);
        }
        Ok(peers)
    }

    /// Sends `line`, a `SUBSCRIBE <bucket>` for a bucket `peer` owns, to that peer on a
    /// connection of its own.
    pub fn subscribe(&self, peer: usize, bucket: &[u8], dialect: Dialect) -> RemoteSubscription {
        self.list[peer].subscribe(bucket, dialect)
    }

    /// Peer `peer`, by its index in the route table.
    pub fn get(&self, peer: usize) -> &Peer {
        &self.list[peer]
    }

    /// Connections on which a peer failed to prove the cluster secret.
    pub fn auth_failures(&self) -> u64 {
        self.iter().map(|peer| peer.auth_failures.load(Ordering::Relaxed)).sum()
    }

    /// The bound on one exchange with any peer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The peers, in route order.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.list.iter().map(|peer| &**peer)
    }

    /// Tells the prober threads to stop. Idempotent and quick: an idle prober exits at
    /// once, but one in the middle of a probe finishes it first (up to the peer
    /// timeouts), and shutting down the server must not wait for that. Such a thread
    /// touches nothing but its own peer, so it is let go rather than joined.
    pub fn shutdown(&self) {
        for peer in &self.list {
            peer.stop();
        }
        let mut probers = self.probers.lock();
        for handle in std::mem::take(&mut *probers) {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }

    /// Adds the STATS lines about forwarding: `forwarded_total`, `peer_errors_total`,
    /// then `peer.<name>.state` (`up` or `down`), `peer.<name>.forwarded` and
    /// `peer.<name>.errors` for each peer.
    pub fn add_stats(&self, stats: &mut Stats) {
        stats.push("forwarded_total", self.iter().map(Peer::forwarded).sum::<u64>());
        stats.push("peer_errors_total", self.iter().map(Peer::errors).sum::<u64>());
        for peer in self.iter() {
            stats.push(format!("peer.{}.state", peer.name), if peer.is_up() { "up" } else { "down" });
            stats.push(format!("peer.{}.forwarded", peer.name), peer.forwarded());
            stats.push(format!("peer.{}.errors", peer.name), peer.errors());
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What became of a SUBSCRIBE sent to the node that owns the bucket.
#[derive(Debug)]
pub enum RemoteSubscription {
    /// The owner registered it: relay `stream` to the client, `pending` first.
    Streaming { stream: TcpStream, pending: Vec<u8> },
    /// The owner's one reply line instead of a stream: not found, or an error line.
    Answered(Vec<u8>),
    /// The owner could not be reached: answer [`Peer::unavailable`].
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_peers_means_no_threads() {
        let peers = Peers::none();
        assert!(peers.probers.lock().is_empty());
        assert_eq!(peers.iter().count(), 0);
    }
}
