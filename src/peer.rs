//! Connections to the other nodes of the cluster: forwarding, timeouts, down and up.
//!
//! A connection thread that reads requests for buckets another node owns hands them to
//! its [`Forwarder`], one [`Exchange`] per peer per read. At the end of the read the
//! forwarder writes each peer's requests with ONE write on a pooled connection, then
//! reads the replies back and the connection relays them unchanged, in request order
//! with its local replies. The worker batches of the same read are in flight meanwhile,
//! so local and remote work overlap.
//!
//! # Between nodes: the protocol itself, plus one handshake line
//! A node speaks to a peer in the ordinary client protocol. The one addition is the first
//! line of every node-to-node connection:
//!
//! ```text
//! KV-PEER-HELLO 1 <from-node> <to-node>
//! ```
//!
//! It marks the connection as coming from a node, which changes one thing: a request on
//! it for a bucket the receiving node does not own is answered
//! `ERROR routing mismatch: node <this> does not own bucket <bucket>` instead of being
//! forwarded again. So a request crosses at most one hop, and two nodes whose cluster
//! files disagree answer an error line instead of bouncing the request between them.
//! The receiver answers the handshake `OK` when `<to-node>` is its own name. Otherwise
//! (the sender's file gives this address to another node, or the version is unknown) it
//! answers `ERROR routing mismatch: this is node <this>, not <to-node>` and then gives
//! that same line to every request on the connection, so the error reaches the client
//! and nothing is served from a node the sender did not mean.
//!
//! Why a client will not trip over it: it counts only as the very first line of a
//! connection, only in exactly this spelling (case-sensitive, unlike commands), and the
//! word is nothing a person types by accident; anywhere else it is an unknown command
//! as before. A client that does send it on purpose gains nothing but the loss of
//! forwarding on its own connection.
//!
//! Replies need no extra framing: a GET's reply is a value line and `OK`, every other
//! reply is one line, and the error lines (`NOT FOUND`, `UNKNOWN COMMAND`, `ERROR ...`)
//! hold a space, which a value never does. So the forwarder knows where each reply ends.
//!
//! The one reply that differs between nodes is SUBSCRIBE's. To a client, a subscription
//! that succeeds is not acknowledged: the connection simply becomes a stream. On a peer
//! connection the owner first answers `OK`, so the node relaying the stream can tell a
//! subscription that took from one whose `NOT FOUND` has not arrived yet. A remote
//! SUBSCRIBE gets a connection of its own ([`Peers::subscribe`]), outside the pool, and
//! its events are relayed to the client ([`relay_subscription`]) until either end
//! closes.
//!
//! # Faults
//! A peer that refuses, resets, closes or does not answer within the request timeout
//! fails the whole exchange: every request of it not yet answered gets
//! `ERROR peer <name> unavailable`, and the client connection carries on. After
//! [`DOWN_AFTER_FAILURES`] failed exchanges in a row the peer is marked down: its
//! requests fail at once, without a connect attempt, and its prober thread (one per
//! peer, idle while the peer is up) tries `KV-PEER-HELLO` + `PING` with backoff from
//! [`FIRST_BACKOFF`], doubling, up to the configured cap. The first probe answered
//! `PONG` marks the peer up again, with no client traffic needed.
//!
//! This file owns sockets to peers and the prober threads. It knows nothing of workers
//! or of the client connection beyond the request lines it is given.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::protocol;
use crate::router::Cluster;

/// The first word of the handshake line that opens a node-to-node connection.
pub const HELLO_WORD: &[u8] = b"KV-PEER-HELLO";

/// The version of the node-to-node conversation this build speaks, the handshake's
/// second word. Bumped if forwarding ever needs more than the client protocol.
pub const PEER_PROTOCOL_VERSION: &[u8] = b"1";

/// Default bound on opening a connection to a peer (`--peer-connect-timeout`).
///
/// One second is many round trips even between data centres, and short enough that a
/// client waiting on a peer that silently drops packets is answered soon.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Default bound on one forwarded read's round trip (`--peer-timeout`): from sending the
/// requests to having every reply. Five seconds, the guide's `Task.await` default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// First wait before probing a peer that was marked down; doubled after every failed
/// probe up to the configured cap. 100 ms notices a quick restart quickly without
/// hammering a peer that stays down.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Default cap on the probe backoff (`--peer-backoff-max`): a peer back after a long
/// outage is noticed within about this long.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Default bound on open connections to one peer (`--peer-connections`).
///
/// A connection carries one pipelined exchange at a time, so this is how many client
/// connections can wait on one peer at once; more only adds threads on the peer. When all
/// are busy a client waits for one (within its request timeout) instead of opening more.
pub const DEFAULT_CONNECTIONS_PER_PEER: usize = 32;

/// Failed exchanges in a row after which a peer is marked down.
///
/// More than one, so that a single reset connection (say, to a peer that restarted)
/// does not make every client fail fast for a backoff period; small, so that a dead
/// peer costs clients a timeout only a few times.
pub const DOWN_AFTER_FAILURES: u32 = 3;

/// Most request bytes sent to a peer in one exchange; a read with more for one peer
/// is split into several rounds.
///
/// The forwarder writes a whole exchange before it reads any reply. If the requests did
/// not fit in the kernel's socket buffers, a peer blocked on writing replies we are not
/// yet reading would stop reading requests, and both sides would wait for the timeout.
/// Socket buffers are at least this large by default on the systems we run on. (An
/// exchange may still be one longer line on its own: the peer reads a whole line before
/// it answers it, so one line cannot deadlock.)
pub const MAX_EXCHANGE_BYTES: usize = 16 * 1024;

/// How far a socket's read timeout may be from the time left before it is reset: a
/// `setsockopt` per read would be a syscall per read, so reads within this much of the
/// exchange's deadline share one setting.
const TIMEOUT_SLACK: Duration = Duration::from_millis(10);

/// Bytes to make room for before each read of replies.
const READ_CHUNK: usize = 16 * 1024;

/// How long a relayed subscription waits on the owner before it looks at the client and
/// at shutdown, as the local stream does.
const RELAY_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How long one write to a relayed subscriber may block. Short, so that while the
/// client is not reading the relay keeps taking events from the owner and reaches its
/// limit (and drops the client) in seconds rather than minutes.
const RELAY_WRITE_WAIT: Duration = Duration::from_millis(20);

/// How a node reaches its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Bound on opening one connection.
    pub connect_timeout: Duration,
    /// Bound on one exchange, from the write to the last reply.
    pub timeout: Duration,
    /// Cap on the probe backoff once a peer is down.
    pub max_backoff: Duration,
    /// Most open connections to one peer.
    pub connections: usize,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            max_backoff: DEFAULT_MAX_BACKOFF,
            connections: DEFAULT_CONNECTIONS_PER_PEER,
        }
    }
}

/// What the receiving side makes of a connection's first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not a handshake: an ordinary client request.
    NotHello,
    /// A node speaking to this node by its right name: answer `OK`, never forward.
    Accepted,
    /// A node that means another node, or speaks another version: answer this line to
    /// the handshake and to every request after it.
    Refused(Vec<u8>),
}

/// Checks whether `line`, the first of a connection, is a peer handshake meant for the
/// node called `node`.
///
/// ```
/// use kv::peer::{check_hello, Hello};
///
/// assert_eq!(check_hello(b"KV-PEER-HELLO 1 foo bar", "bar"), Hello::Accepted);
/// assert_eq!(
///     check_hello(b"KV-PEER-HELLO 1 foo bar", "baz"),
///     Hello::Refused(b"ERROR routing mismatch: this is node baz, not bar\r\n".to_vec()),
/// );
/// assert_eq!(check_hello(b"kv-peer-hello 1 foo bar", "bar"), Hello::NotHello);
/// assert_eq!(check_hello(b"GET shopping eggs", "bar"), Hello::NotHello);
/// ```
pub fn check_hello(line: &[u8], node: &str) -> Hello {
    let mut words = protocol::words(line);
    if words.next() != Some(HELLO_WORD) {
        return Hello::NotHello;
    }
    let (version, from, to, extra) = (words.next(), words.next(), words.next(), words.next());
    match (version, from, to, extra) {
        (Some(PEER_PROTOCOL_VERSION), Some(_), Some(to), None) if to == node.as_bytes() => Hello::Accepted,
        (Some(PEER_PROTOCOL_VERSION), Some(_), Some(to), None) => {
            let mut reply = format!("ERROR routing mismatch: this is node {node}, not ").into_bytes();
            reply.extend_from_slice(to);
            reply.extend_from_slice(b"\r\n");
            Hello::Refused(reply)
        }
        _ => Hello::Refused(
            format!("ERROR routing mismatch: node {node} does not understand this peer handshake\r\n")
                .into_bytes(),
        ),
    }
}

/// Appends the reply to a forwarded request for a bucket this node does not own.
pub fn write_routing_mismatch(out: &mut Vec<u8>, node: &str, bucket: &[u8]) {
    out.extend_from_slice(b"ERROR routing mismatch: node ");
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(b" does not own bucket ");
    out.extend_from_slice(bucket);
    out.extend_from_slice(b"\r\n");
}

/// True for a reply line that is complete by itself whatever the request. A value can
/// never be one, since values hold no whitespace and these all hold a space.
fn is_error_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line == b"NOT FOUND" || line == b"UNKNOWN COMMAND" || line.starts_with(b"ERROR ")
}

/// Length of the first line of `bytes`, `\n` included, if it is complete.
fn line_len(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n').map(|at| at + 1)
}

/// Why an exchange with a peer failed.
#[derive(Debug)]
enum Failure {
    /// The connection could not be opened.
    Connect(io::Error),
    /// A read or write failed.
    Io(io::Error),
    /// The peer did not answer in time.
    TimedOut,
    /// The peer closed the connection.
    Closed,
    /// The peer answered something that is not a reply to what was sent.
    Protocol(String),
    /// Every connection to the peer was busy for the whole timeout. Not the peer's
    /// fault, so it does not count towards marking it down.
    Busy,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(error) => write!(f, "cannot connect: {error}"),
            Failure::Io(error) => write!(f, "{error}"),
            Failure::TimedOut => f.write_str("timed out"),
            Failure::Closed => f.write_str("connection closed"),
            Failure::Protocol(text) => write!(f, "unexpected reply: {text}"),
            Failure::Busy => f.write_str("all connections busy"),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::TimedOut,
            _ => Failure::Io(error),
        }
    }
}

/// One open connection to a peer.
#[derive(Debug)]
struct PeerConn {
    stream: TcpStream,
    /// The read timeout currently set on the socket.
    read_timeout: Duration,
    /// The handshake was sent but its reply not yet read.
    hello_pending: bool,
    /// Taken from the pool rather than just opened: it may have died while idle.
    reused: bool,
}

impl PeerConn {
    /// Writes `requests`, preceded by the handshake line if the connection is new, as
    /// one write where the kernel takes it all.
    fn send(&mut self, hello: &[u8], requests: &[u8]) -> Result<(), Failure> {
        if !self.hello_pending {
            self.stream.write_all(requests)?;
            return Ok(());
        }
        let written = self.stream.write_vectored(&[IoSlice::new(hello), IoSlice::new(requests)])?;
        if written == 0 {
            return Err(Failure::Closed);
        }
        if written < hello.len() {
            self.stream.write_all(&hello[written..])?;
            self.stream.write_all(requests)?;
        } else {
            self.stream.write_all(&requests[written - hello.len()..])?;
        }
        Ok(())
    }

    /// Reads until `exchange` has one reply per request (or fails). Returns how the
    /// handshake went on a new connection; a reused one was accepted before.
    fn read_replies(&mut self, exchange: &mut Exchange, deadline: Deadline) -> Result<Hello, Failure> {
        let mut hello = Hello::Accepted;
        // Where the first reply not yet accounted for starts.
        let mut start = exchange.reply_ends.last().copied().unwrap_or(0);
        loop {
            while self.hello_pending {
                let Some(len) = line_len(&exchange.replies[start..]) else { break };
                let line = &exchange.replies[start..start + len];
                if line == protocol::OK {
                    // Accepted.
                } else if line.starts_with(b"ERROR ") {
                    hello = Hello::Refused(line.to_vec());
                } else {
                    return Err(Failure::Protocol(format!(
                        "handshake answered {:?}; is this a kv node of this version?",
                        String::from_utf8_lossy(line).trim_end()
                    )));
                }
                exchange.replies.drain(start..start + len);
                self.hello_pending = false;
            }
            while !self.hello_pending && exchange.reply_ends.len() < exchange.gets.len() {
                let is_get = exchange.gets[exchange.reply_ends.len()];
                match reply_len(&exchange.replies[start..], is_get)? {
                    Some(len) => {
                        start += len;
                        exchange.reply_ends.push(start);
                    }
                    None => break,
                }
            }
            if !self.hello_pending && exchange.reply_ends.len() == exchange.gets.len() {
                if start != exchange.replies.len() {
                    return Err(Failure::Protocol("more replies than requests".to_string()));
                }
                return Ok(hello);
            }
            self.read_more(&mut exchange.replies, deadline)?;
        }
    }

    /// One read of more reply bytes onto the end of `buffer`, within the deadline.
    fn read_more(&mut self, buffer: &mut Vec<u8>, deadline: Deadline) -> Result<(), Failure> {
        let now = Instant::now();
        if now >= deadline.hard {
            return Err(Failure::TimedOut);
        }
        // Past the soft deadline, replies already in the socket are still taken (another
        // peer may have used up the time), but nothing more is waited for.
        let wait = deadline.soft.saturating_duration_since(now).max(Duration::from_millis(1));
        if self.read_timeout.abs_diff(wait) > TIMEOUT_SLACK {
            self.stream.set_read_timeout(Some(wait))?;
            self.read_timeout = wait;
        }
        let len = buffer.len();
        buffer.resize(len + READ_CHUNK, 0);
        let result = match read_spinning(&self.stream, &mut buffer[len..]) {
            Some(read) => Ok(read),
            None => self.stream.read(&mut buffer[len..]),
        };
        let read = match &result {
            Ok(read) => *read,
            Err(_) => 0,
        };
        buffer.truncate(len + read);
        match result {
            Ok(0) => Err(Failure::Closed),
            Ok(_) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// Non-blocking reads a connection waiting on a peer tries before it blocks.
///
/// Measured with `cargo run --release --example forward_throughput` (forwarded over
/// local, same run, two runs each): without spinning 0.13-0.29 at depth 1 and
/// 0.28-0.36 at depth 16; with 16 tries 0.42-0.49 and 0.37-0.50; 64 tries were no
/// better than 16. BENCHMARKS.md has the table.
const PEER_SPIN_TRIES: u32 = 16;

/// Tries a few non-blocking reads, yielding between them, before the caller blocks:
/// a peer usually answers within tens of microseconds, and catching its reply
/// without going to sleep saves this thread a wake-up (see worker::SPIN_TRIES for the
/// same trick on channels). `None`: nothing came, block as usual.
fn read_spinning(stream: &TcpStream, buffer: &mut [u8]) -> Option<usize> {
    use std::os::fd::AsRawFd;
    for _ in 0..PEER_SPIN_TRIES {
        // SAFETY: the descriptor belongs to `stream` and `buffer` is valid for writes
        // of its length.
        let read = unsafe {
            libc::recv(stream.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT)
        };
        if read > 0 {
            return Some(read as usize);
        }
        if read == 0 {
            return Some(0);
        }
        std::thread::yield_now();
    }
    None
}

/// Length of the first complete reply in `bytes`, if it is all there.
fn reply_len(bytes: &[u8], is_get: bool) -> Result<Option<usize>, Failure> {
    let Some(first) = line_len(bytes) else { return Ok(None) };
    if !is_get || is_error_line(&bytes[..first]) {
        return Ok(Some(first));
    }
    let Some(second) = line_len(&bytes[first..]) else { return Ok(None) };
    if &bytes[first..first + second] != protocol::OK {
        return Err(Failure::Protocol("a GET reply without OK after its value".to_string()));
    }
    Ok(Some(first + second))
}

/// When an exchange must be over. The soft deadline is the request timeout; past it,
/// replies already received are still read, up to the hard one.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    soft: Instant,
    hard: Instant,
}

impl Deadline {
    fn after(timeout: Duration) -> Deadline {
        let now = Instant::now();
        Deadline { soft: now + timeout, hard: now + timeout + timeout }
    }
}

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
    /// `ERROR peer <name> unavailable\r\n`, built once.
    unavailable: Vec<u8>,
    /// The handshake line this node opens every connection to the peer with.
    hello: Vec<u8>,
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
}

impl Peer {
    fn new(from: &str, name: &str, addr: SocketAddr, config: PeerConfig) -> Peer {
        Peer {
            name: name.to_string(),
            addr,
            config,
            unavailable: format!("ERROR peer {name} unavailable\r\n").into_bytes(),
            hello: [
                HELLO_WORD,
                b" ",
                PEER_PROTOCOL_VERSION,
                b" ",
                from.as_bytes(),
                b" ",
                name.as_bytes(),
                b"\n",
            ]
            .concat(),
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            forwarded: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
            stopping: Mutex::new(false),
            wake: Condvar::new(),
            refusal_logged: AtomicBool::new(false),
        }
    }

    /// The peer's name in the cluster file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ERROR peer <name> unavailable\r\n`.
    pub fn unavailable_line(&self) -> &[u8] {
        &self.unavailable
    }

    /// Where the peer listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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
    fn checkout(&self, deadline: Deadline) -> Result<PeerConn, Failure> {
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
    fn connect(&self, deadline: Deadline) -> Result<PeerConn, Failure> {
        let left = deadline.soft.saturating_duration_since(Instant::now());
        let timeout = self.config.connect_timeout.min(left);
        if timeout.is_zero() {
            return Err(Failure::TimedOut);
        }
        let stream = TcpStream::connect_timeout(&self.addr, timeout).map_err(Failure::Connect)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.config.timeout))?;
        stream.set_write_timeout(Some(self.config.timeout))?;
        Ok(PeerConn { stream, read_timeout: self.config.timeout, hello_pending: true, reused: false })
    }

    /// Puts a connection that finished an exchange cleanly back in the pool.
    fn checkin(&self, conn: PeerConn) {
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
    fn discard(&self, conn: PeerConn) {
        drop(conn);
        self.release_slot();
    }

    fn release_slot(&self) {
        self.pool.lock().open -= 1;
        self.returned.notify_one();
    }

    /// Sends the exchange's requests on a pooled or new connection. A reused connection
    /// that fails is assumed to have died while idle and is replaced once.
    fn send(&self, exchange: &mut Exchange, deadline: Deadline) -> Result<(), Failure> {
        let mut conn = self.checkout(deadline)?;
        let mut result = conn.send(&self.hello, &exchange.requests);
        if result.is_err() && conn.reused {
            result =
                self.replace(&mut conn, deadline).and_then(|()| conn.send(&self.hello, &exchange.requests));
        }
        match result {
            Ok(()) => {
                exchange.conn = Some(conn);
                Ok(())
            }
            Err(failure) => {
                self.discard(conn);
                Err(failure)
            }
        }
    }

    /// Swaps a dead connection for a new one in the same pool slot.
    fn replace(&self, conn: &mut PeerConn, deadline: Deadline) -> Result<(), Failure> {
        *conn = self.connect(deadline)?;
        Ok(())
    }

    /// Reads the exchange's replies. If a reused connection fails before a single reply
    /// byte arrives, it had most likely died while idle (the peer restarted), so the
    /// requests are sent again on a new connection, once. The four bucket commands are
    /// idempotent as to the data, so a request the dead connection did deliver is
    /// harmless to repeat, with two caveats for the rare case that the peer applied
    /// the batch and then died before replying: subscribers see such a PUT or DELETE
    /// twice, and a repeated PUT can overwrite another client's write made in between.
    /// (A peer's `--idle-timeout` closes idle pooled connections too; this is what
    /// makes that invisible to clients.)
    fn receive(&self, exchange: &mut Exchange, mut conn: PeerConn, deadline: Deadline) {
        let mut result = conn.read_replies(exchange, deadline);
        if result.is_err() && conn.reused && exchange.replies.is_empty() {
            result = self
                .replace(&mut conn, deadline)
                .and_then(|()| conn.send(&self.hello, &exchange.requests))
                .and_then(|()| conn.read_replies(exchange, deadline));
        }
        match result {
            Ok(Hello::Accepted) | Ok(Hello::NotHello) => {
                self.succeeded();
                self.checkin(conn);
            }
            Ok(Hello::Refused(line)) => {
                // The replies are the peer's own error lines: relay them, but do not keep
                // a connection the peer will refuse everything on.
                if !self.refusal_logged.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "peer {} at {} refused this node's handshake: {}; check that every node has \
                         the same cluster file",
                        self.name,
                        self.addr,
                        String::from_utf8_lossy(&line).trim_end()
                    );
                }
                self.discard(conn);
            }
            Err(failure) => {
                self.discard(conn);
                self.fail(exchange, &failure);
            }
        }
    }

    fn succeeded(&self) {
        // Read first: in the steady state this stays a shared read of the cache line.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Answers every request of the exchange not answered yet with `ERROR peer <name>
    /// unavailable`, and counts the failure towards marking the peer down.
    fn fail(&self, exchange: &mut Exchange, failure: &Failure) {
        let answered = exchange.reply_ends.last().copied().unwrap_or(0);
        exchange.replies.truncate(answered);
        let missing = exchange.gets.len() - exchange.reply_ends.len();
        for _ in 0..missing {
            exchange.replies.extend_from_slice(&self.unavailable);
            exchange.reply_ends.push(exchange.replies.len());
        }
        self.errors.fetch_add(missing as u64, Ordering::Relaxed);
        log::debug!(
            "peer {} at {}: {failure}; {missing} requests answered unavailable",
            self.name,
            self.addr
        );
        self.count_failure(failure);
    }

    /// Counts a failed exchange towards marking the peer down, and marks it down after
    /// [`DOWN_AFTER_FAILURES`] in a row.
    fn count_failure(&self, failure: &Failure) {
        if matches!(failure, Failure::Busy) {
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

    /// Answers every request of the exchange unavailable without trying: the peer is
    /// down and its prober will say when it is back.
    fn fail_fast(&self, exchange: &mut Exchange) {
        for _ in 0..exchange.gets.len() {
            exchange.replies.extend_from_slice(&self.unavailable);
            exchange.reply_ends.push(exchange.replies.len());
        }
        self.errors.fetch_add(exchange.gets.len() as u64, Ordering::Relaxed);
    }

    /// Sends `SUBSCRIBE <bucket>` (the request line `line`) on a connection of its own.
    fn subscribe(&self, line: &[u8]) -> RemoteSubscription {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        if !self.is_up() {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return RemoteSubscription::Answered(self.unavailable.clone());
        }
        match self.try_subscribe(line) {
            Ok(outcome) => {
                self.succeeded();
                outcome
            }
            Err(failure) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                log::debug!("peer {} at {}: SUBSCRIBE failed: {failure}", self.name, self.addr);
                self.count_failure(&failure);
                RemoteSubscription::Answered(self.unavailable.clone())
            }
        }
    }

    fn try_subscribe(&self, line: &[u8]) -> Result<RemoteSubscription, Failure> {
        let deadline = Deadline::after(self.config.timeout);
        let mut conn = self.connect(deadline)?;
        conn.send(&self.hello, &[line, b"\n"].concat())?;
        let mut buffer = Vec::new();
        let mut start = 0;
        loop {
            while let Some(len) = line_len(&buffer[start..]) {
                let reply = &buffer[start..start + len];
                let is_ok = reply == protocol::OK;
                if conn.hello_pending {
                    conn.hello_pending = false;
                    if is_ok {
                        start += len;
                        continue;
                    }
                    if !reply.starts_with(b"ERROR ") {
                        return Err(Failure::Protocol(format!(
                            "handshake answered {:?}",
                            String::from_utf8_lossy(reply).trim_end()
                        )));
                    }
                    // Refused: the SUBSCRIBE gets the same line; relay it.
                    return Ok(RemoteSubscription::Answered(reply.to_vec()));
                }
                if !is_ok {
                    // NOT FOUND, or an ERROR line: the reply, and no stream.
                    return Ok(RemoteSubscription::Answered(reply.to_vec()));
                }
                // Events that came right behind the acknowledgement go first.
                let pending = buffer[start + len..].to_vec();
                return Ok(RemoteSubscription::Streaming { stream: conn.stream, pending });
            }
            conn.read_more(&mut buffer, deadline)?;
        }
    }

    /// One probe: connect, handshake, `PING`. The connection is returned for the pool.
    fn probe(&self) -> Result<PeerConn, Failure> {
        let deadline = Deadline::after(self.config.timeout);
        let mut conn = self.connect(deadline)?;
        let mut exchange = Exchange::default();
        exchange.push(b"PING", false);
        conn.send(&self.hello, &exchange.requests)?;
        match conn.read_replies(&mut exchange, deadline)? {
            Hello::Refused(line) => Err(Failure::Protocol(format!(
                "handshake refused: {}",
                String::from_utf8_lossy(&line).trim_end()
            ))),
            _ if exchange.replies != protocol::PONG => Err(Failure::Protocol(format!(
                "PING answered {:?}",
                String::from_utf8_lossy(&exchange.replies)
            ))),
            _ => Ok(conn),
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
    pub fn none() -> Peers {
        Peers::default()
    }

    /// The peers of node `this` of `cluster`, each with an idle prober thread.
    /// No connection is opened until a request needs one.
    pub fn start(cluster: &Cluster, this: usize, config: &PeerConfig) -> io::Result<Peers> {
        let from = &cluster.nodes()[this].name;
        let list: Vec<Arc<Peer>> = cluster
            .peers_of(this)
            .map(|node| Arc::new(Peer::new(from, &node.name, node.addr, config.clone())))
            .collect();
        let peers = Peers { list, timeout: config.timeout, probers: Mutex::new(Vec::new()) };
        for peer in &peers.list {
            let prober = peer.clone();
            let handle = thread::Builder::new()
                .name(format!("kv-probe-{}", peer.name))
                .stack_size(crate::server::CONNECTION_STACK_SIZE)
                .spawn(move || prober.probe_loop())?;
            peers.probers.lock().push(handle);
        }
        Ok(peers)
    }

    /// Sends `line`, a `SUBSCRIBE <bucket>` for a bucket `peer` owns, to that peer on a
    /// connection of its own. Never fails as a whole: a failure is answered
    /// `ERROR peer <name> unavailable`.
    pub fn subscribe(&self, peer: usize, line: &[u8]) -> RemoteSubscription {
        self.list[peer].subscribe(line)
    }

    /// `ERROR peer <name> unavailable\r\n` for peer `peer`.
    pub fn unavailable_line(&self, peer: usize) -> &[u8] {
        self.list[peer].unavailable_line()
    }

    /// How many peers there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True for a node on its own.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
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

    /// Appends the STATS lines about forwarding: `forwarded_total`,
    /// `peer_errors_total`, then `peer.<name>.state` (`up` or `down`),
    /// `peer.<name>.forwarded` and `peer.<name>.errors` for each peer.
    pub fn write_stats(&self, out: &mut Vec<u8>) {
        use protocol::write_stat;
        write_stat(out, "forwarded_total", self.iter().map(Peer::forwarded).sum::<u64>());
        write_stat(out, "peer_errors_total", self.iter().map(Peer::errors).sum::<u64>());
        for peer in self.iter() {
            write_stat(out, &format!("peer.{}.state", peer.name), if peer.is_up() { "up" } else { "down" });
            write_stat(out, &format!("peer.{}.forwarded", peer.name), peer.forwarded());
            write_stat(out, &format!("peer.{}.errors", peer.name), peer.errors());
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
    /// One reply line instead of a stream: `NOT FOUND`, or an `ERROR` line.
    Answered(Vec<u8>),
}

/// Relays a subscription's events from the owning node to the client until the owner
/// ends the stream, the client goes away or this node shuts down. When the owner ends
/// it (it went down, or dropped us), the client gets `owner_lost` (the peer's
/// `ERROR peer <name> unavailable` line) and is closed.
///
/// Like a local subscriber, a client that does not read must not pin memory: once
/// `limit` bytes of events wait for it, it is dropped. The owner's own limit protects
/// the owner from a relay that falls behind.
pub fn relay_subscription(
    owner: TcpStream,
    mut pending: Vec<u8>,
    client: &TcpStream,
    limit: usize,
    stop: &AtomicBool,
    owner_lost: &[u8],
) -> io::Result<()> {
    owner.set_read_timeout(Some(RELAY_CHECK_INTERVAL))?;
    client.set_write_timeout(Some(RELAY_WRITE_WAIT))?;
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        // As much of what waits as the client takes now.
        while !pending.is_empty() {
            match (&*client).write(&pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    pending.drain(..written);
                }
                Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    break;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        if pending.len() > limit {
            return Err(io::Error::other("relayed subscriber dropped: too far behind"));
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match (&owner).read(&mut chunk) {
            Ok(read) if read > 0 => pending.extend_from_slice(&chunk[..read]),
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if pending.is_empty() && crate::subscribe::client_gone(client)? {
                    return Ok(());
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            // The owner ended the stream (it went down, dropped the subscription, or
            // is shutting down): so does this node, after what is pending and a
            // line saying why.
            _ => {
                if !stop.load(Ordering::Relaxed) {
                    pending.extend_from_slice(owner_lost);
                }
                client.set_write_timeout(Some(RELAY_CHECK_INTERVAL))?;
                let _ = (&*client).write_all(&pending);
                return Ok(());
            }
        }
    }
}

/// One read's requests for one peer and, after [`Forwarder::exchange`], their replies.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Request lines, each ending in `\n`.
    requests: Vec<u8>,
    /// For each request: is it a GET (whose reply is two lines)?
    gets: Vec<bool>,
    /// The replies, concatenated in request order.
    replies: Vec<u8>,
    /// Where each reply ends in `replies`.
    reply_ends: Vec<usize>,
    /// How many replies have been taken by [`Forwarder::next_reply`].
    cursor: usize,
    /// The connection the requests went out on, until the replies are in.
    conn: Option<PeerConn>,
}

impl Exchange {
    fn push(&mut self, line: &[u8], is_get: bool) {
        self.requests.extend_from_slice(line);
        self.requests.push(b'\n');
        self.gets.push(is_get);
    }

    fn clear(&mut self) {
        self.requests.clear();
        self.gets.clear();
        self.replies.clear();
        self.reply_ends.clear();
        self.cursor = 0;
    }
}

/// A connection thread's forwarding state: one [`Exchange`] per peer, reused for the
/// connection's life.
#[derive(Debug)]
pub struct Forwarder<'p> {
    peers: &'p Peers,
    exchanges: Vec<Exchange>,
    /// Some exchange holds requests.
    pending: bool,
}

impl<'p> Forwarder<'p> {
    /// A forwarder to `peers`. Allocates nothing when there are none.
    pub fn new(peers: &'p Peers) -> Self {
        Forwarder {
            peers,
            exchanges: peers.list.iter().map(|_| Exchange::default()).collect(),
            pending: false,
        }
    }

    /// True if a request line of `len` bytes for `peer` should wait for the next round:
    /// its exchange already holds requests and would pass [`MAX_EXCHANGE_BYTES`].
    #[inline]
    pub fn is_full_for(&self, peer: usize, len: usize) -> bool {
        let requests = &self.exchanges[peer].requests;
        !requests.is_empty() && requests.len() + len + 1 > MAX_EXCHANGE_BYTES
    }

    /// Frees reply buffers a burst grew past `keep` bytes (they are empty between
    /// rounds). Returns true if any was freed.
    pub fn release_large_buffers(&mut self, keep: usize) -> bool {
        let mut released = false;
        for exchange in &mut self.exchanges {
            if exchange.replies.capacity() > keep {
                exchange.replies = Vec::new();
                released = true;
            }
        }
        released
    }

    /// Queues one request line (without its newline) for `peer`.
    #[inline]
    pub fn push(&mut self, peer: usize, line: &[u8], is_get: bool) {
        self.exchanges[peer].push(line, is_get);
        self.pending = true;
    }

    /// Sends every queued request and reads every reply: first one write per peer, then
    /// the replies peer by peer, all within the request timeout. Failures become
    /// `ERROR peer <name> unavailable` replies; this never fails as a whole.
    pub fn exchange(&mut self) {
        if !self.pending {
            return;
        }
        self.pending = false;
        let deadline = Deadline::after(self.peers.timeout);
        for (peer, exchange) in self.peers.list.iter().zip(&mut self.exchanges) {
            if exchange.gets.is_empty() {
                continue;
            }
            peer.forwarded.fetch_add(exchange.gets.len() as u64, Ordering::Relaxed);
            if !peer.is_up() {
                peer.fail_fast(exchange);
                continue;
            }
            if let Err(failure) = peer.send(exchange, deadline) {
                peer.fail(exchange, &failure);
            }
        }
        for (peer, exchange) in self.peers.list.iter().zip(&mut self.exchanges) {
            if let Some(conn) = exchange.conn.take() {
                peer.receive(exchange, conn, deadline);
            }
        }
    }

    /// The next reply from `peer` of this round, in request order.
    #[inline]
    pub fn next_reply(&mut self, peer: usize) -> &[u8] {
        let exchange = &mut self.exchanges[peer];
        let index = exchange.cursor;
        exchange.cursor += 1;
        match exchange.reply_ends.get(index) {
            Some(&end) => {
                let start = if index == 0 { 0 } else { exchange.reply_ends[index - 1] };
                &exchange.replies[start..end]
            }
            // Not reached: every request of an exchange gets a reply or a failure line.
            None => &self.peers.list[peer].unavailable,
        }
    }

    /// Empties every exchange for the next round, keeping buffers.
    pub fn clear(&mut self) {
        for exchange in &mut self.exchanges {
            if !exchange.gets.is_empty() {
                exchange.clear();
            }
        }
    }
}

impl Drop for Forwarder<'_> {
    fn drop(&mut self) {
        // Only a panic between send and receive leaves a connection here; its pool slot
        // must still be given back.
        for (peer, exchange) in self.peers.list.iter().zip(&mut self.exchanges) {
            if let Some(conn) = exchange.conn.take() {
                peer.discard(conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn replies_are_framed_by_shape() {
        assert_eq!(reply_len(b"OK\r\n", false).unwrap(), Some(4));
        assert_eq!(reply_len(b"OK\r", false).unwrap(), None);
        assert_eq!(reply_len(b"3\r\nOK\r\nOK\r\n", true).unwrap(), Some(7));
        assert_eq!(reply_len(b"3\r\nO", true).unwrap(), None);
        assert_eq!(reply_len(b"\r\nOK\r\n", true).unwrap(), Some(6));
        assert_eq!(reply_len(b"NOT FOUND\r\nOK\r\n", true).unwrap(), Some(11));
        assert_eq!(reply_len(b"ERROR peer x unavailable\r\n", true).unwrap(), Some(26));
        // A value may be the bare word ERROR: it has no space, so it is a value.
        assert_eq!(reply_len(b"ERROR\r\nOK\r\n", true).unwrap(), Some(11));
        assert!(reply_len(b"3\r\nPONG\r\n", true).is_err());
    }

    #[test]
    fn hello_variants() {
        assert_eq!(check_hello(b"KV-PEER-HELLO 1 a b", "b"), Hello::Accepted);
        assert_eq!(check_hello(b"  KV-PEER-HELLO\t1 a b ", "b"), Hello::Accepted);
        assert!(matches!(check_hello(b"KV-PEER-HELLO 2 a b", "b"), Hello::Refused(_)));
        assert!(matches!(check_hello(b"KV-PEER-HELLO 1 a", "b"), Hello::Refused(_)));
        assert!(matches!(check_hello(b"KV-PEER-HELLO 1 a b c", "b"), Hello::Refused(_)));
        assert_eq!(check_hello(b"KV-PEER-HELLOX 1 a b", "b"), Hello::NotHello);
        assert_eq!(check_hello(b"", "b"), Hello::NotHello);
    }

    #[test]
    fn routing_mismatch_line() {
        let mut out = Vec::new();
        write_routing_mismatch(&mut out, "foo", b"nuts");
        assert_eq!(out, b"ERROR routing mismatch: node foo does not own bucket nuts\r\n");
    }

    fn one_peer(addr: SocketAddr, config: PeerConfig) -> Peers {
        let text = format!("me 127.0.0.1:1 a\nthem {addr} b\n");
        let cluster = Cluster::parse("test", &text).unwrap();
        Peers::start(&cluster, 0, &config).unwrap()
    }

    /// A fake peer: accepts one connection, checks the handshake, answers `replies`.
    fn fake_peer(replies: &'static [u8]) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut received = Vec::new();
            let mut buf = [0u8; 4096];
            // Read until the handshake and two requests are in.
            while received.iter().filter(|&&b| b == b'\n').count() < 3 {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0);
                received.extend_from_slice(&buf[..n]);
            }
            stream.write_all(replies).unwrap();
            received
        });
        (addr, thread)
    }

    #[test]
    fn an_exchange_is_one_handshake_and_the_requests_then_the_replies() {
        let (addr, fake) = fake_peer(b"OK\r\nOK\r\nv\r\nOK\r\n");
        let peers = one_peer(addr, PeerConfig::default());
        let mut forwarder = Forwarder::new(&peers);
        forwarder.push(0, b"PUT b k v", false);
        forwarder.push(0, b"GET b k", true);
        forwarder.exchange();
        assert_eq!(forwarder.next_reply(0), b"OK\r\n");
        assert_eq!(forwarder.next_reply(0), b"v\r\nOK\r\n");
        let received = fake.join().unwrap();
        assert_eq!(received, b"KV-PEER-HELLO 1 me them\nPUT b k v\nGET b k\n");
        let peer = peers.iter().next().unwrap();
        assert_eq!(peer.forwarded(), 2);
        assert_eq!(peer.errors(), 0);
        assert_eq!(peers.list[0].pool.lock().idle.len(), 1, "the connection is kept for reuse");
    }

    /// Reads from `stream` until `lines` lines have arrived; returns them.
    fn read_lines(stream: &mut TcpStream, lines: usize) -> Vec<u8> {
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while received.iter().filter(|&&b| b == b'\n').count() < lines {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&received));
            received.extend_from_slice(&buf[..n]);
        }
        received
    }

    #[test]
    fn a_pooled_connection_that_died_while_idle_is_replaced_without_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let fake = thread::spawn(move || {
            // First connection: one exchange, then the peer "restarts" and drops it.
            let (mut first, _) = listener.accept().unwrap();
            assert_eq!(read_lines(&mut first, 2), b"KV-PEER-HELLO 1 me them\nCREATE b\n");
            first.write_all(b"OK\r\nOK\r\n").unwrap();
            drop(first);
            closed_tx.send(()).unwrap();
            // The forwarder comes back on a new connection, with a new handshake.
            let (mut second, _) = listener.accept().unwrap();
            assert_eq!(read_lines(&mut second, 2), b"KV-PEER-HELLO 1 me them\nGET b k\n");
            second.write_all(b"OK\r\nv\r\nOK\r\n").unwrap();
            let third = read_lines(&mut second, 1);
            second.write_all(b"PONG\r\n").unwrap();
            third
        });
        let peers = one_peer(addr, PeerConfig::default());
        let mut forwarder = Forwarder::new(&peers);
        forwarder.push(0, b"CREATE b", false);
        forwarder.exchange();
        assert_eq!(forwarder.next_reply(0), b"OK\r\n");
        forwarder.clear();
        closed_rx.recv().unwrap();
        forwarder.push(0, b"GET b k", true);
        forwarder.exchange();
        assert_eq!(forwarder.next_reply(0), b"v\r\nOK\r\n");
        forwarder.clear();
        let peer = &peers.list[0];
        assert_eq!(peer.errors(), 0);
        assert_eq!(peer.failures.load(Ordering::Relaxed), 0);
        assert_eq!(peer.pool.lock().open, 1, "the dead connection's slot was reused");
        // The new connection went back to the pool and carries the next exchange.
        forwarder.push(0, b"PING", false);
        forwarder.exchange();
        assert_eq!(forwarder.next_reply(0), b"PONG\r\n");
        assert_eq!(fake.join().unwrap(), b"PING\n", "no new handshake: the same connection");
    }

    #[test]
    fn a_refused_handshake_relays_the_peers_error_lines() {
        let (addr, fake) = fake_peer(
            b"ERROR routing mismatch: this is node x, not them\r\n\
              ERROR routing mismatch: this is node x, not them\r\n\
              ERROR routing mismatch: this is node x, not them\r\n",
        );
        let peers = one_peer(addr, PeerConfig::default());
        let mut forwarder = Forwarder::new(&peers);
        forwarder.push(0, b"CREATE b", false);
        forwarder.push(0, b"GET b k", true);
        forwarder.exchange();
        assert_eq!(forwarder.next_reply(0), b"ERROR routing mismatch: this is node x, not them\r\n");
        assert_eq!(forwarder.next_reply(0), b"ERROR routing mismatch: this is node x, not them\r\n");
        fake.join().unwrap();
        assert_eq!(peers.list[0].pool.lock().open, 0, "a refused connection is not kept");
    }

    #[test]
    fn a_silent_peer_times_out_and_is_marked_down_after_repeated_failures() {
        // Accepts (the kernel does, via the backlog) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = PeerConfig { timeout: Duration::from_millis(50), ..PeerConfig::default() };
        let peers = one_peer(addr, config);
        let mut forwarder = Forwarder::new(&peers);
        for round in 1..=DOWN_AFTER_FAILURES {
            forwarder.push(0, b"GET b k", true);
            forwarder.exchange();
            assert_eq!(forwarder.next_reply(0), b"ERROR peer them unavailable\r\n", "round {round}");
            forwarder.clear();
        }
        let peer = &peers.list[0];
        assert!(!peer.is_up());
        assert_eq!(peer.errors(), u64::from(DOWN_AFTER_FAILURES));
        let mut stats = Vec::new();
        peers.write_stats(&mut stats);
        let stats = String::from_utf8(stats).unwrap();
        assert!(stats.contains("peer.them.state down\r\n"), "{stats}");
        assert!(stats.contains("peer_errors_total 3\r\n"), "{stats}");
        drop(listener);
    }

    #[test]
    fn a_refused_connection_fails_every_request() {
        // Bind then drop, so nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let peers = one_peer(addr, PeerConfig::default());
        let mut forwarder = Forwarder::new(&peers);
        forwarder.push(0, b"PUT b k v", false);
        forwarder.push(0, b"DELETE b k", false);
        forwarder.exchange();
        assert_eq!(forwarder.next_reply(0), b"ERROR peer them unavailable\r\n");
        assert_eq!(forwarder.next_reply(0), b"ERROR peer them unavailable\r\n");
        assert_eq!(peers.list[0].pool.lock().open, 0);
    }

    #[test]
    fn exchanges_are_split_before_they_pass_the_byte_limit() {
        let peers = one_peer("127.0.0.1:9".parse().unwrap(), PeerConfig::default());
        let mut forwarder = Forwarder::new(&peers);
        let line = vec![b'x'; 1000];
        assert!(!forwarder.is_full_for(0, 100_000), "an empty exchange takes any one line");
        let mut pushed = 0;
        while !forwarder.is_full_for(0, line.len()) {
            forwarder.push(0, &line, false);
            pushed += 1;
        }
        assert_eq!(pushed, MAX_EXCHANGE_BYTES / 1001);
    }

    #[test]
    fn no_peers_means_no_threads_and_no_exchanges() {
        let peers = Peers::none();
        let forwarder = Forwarder::new(&peers);
        assert!(forwarder.exchanges.is_empty());
        assert!(peers.probers.lock().is_empty());
        let mut stats = Vec::new();
        peers.write_stats(&mut stats);
        assert_eq!(stats, b"forwarded_total 0\r\npeer_errors_total 0\r\n");
    }
}
