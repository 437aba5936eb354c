//! The listener, the connection threads, the limits and shutdown.
//!
//! One acceptor thread takes connections and gives each its own thread. A connection
//! thread reads what the socket has, cuts it into lines, answers the requests that
//! need no data (PING, STATS, QUIT, unknown commands, over-long lines) itself, and
//! groups the rest by owning worker: one [`Batch`] per worker per read. It sends the
//! batches, waits for all of them to come back, puts every reply back in request
//! order, and writes them all with one `write`. Replies are written before the next
//! read, so a client that never reads its replies stops being read: its memory is
//! bounded by one read's worth of requests. While a node has no more connections than
//! cores, a batch whose partition is free is applied by the connection thread itself
//! under the worker's locks ([`worker::apply_inline`]): at one request at a time the
//! hop to the worker and back was most of the cost.
//!
//! A request for a bucket another node owns (by the route table of `router.rs`) goes to
//! the connection's `peer::Forwarder` instead of a worker batch; the round's remote
//! requests are exchanged with the peers while the workers work, and their replies take
//! their place in request order like any other. A single node's table routes every
//! bucket here, so forwarding then costs one table lookup per request.
//!
//! This file owns sockets and threads; what a request means is in `protocol.rs` and
//! `worker.rs`, where it goes in `router.rs`, and how it gets there in `peer.rs`.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use std::panic::{self, AssertUnwindSafe};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::peer::{self, Forwarder, Hello, PeerConfig, Peers, RemoteSubscription};
use crate::protocol::{self, Command, Frame, LineReader};
use crate::router::{self, Cluster, Route, RouteTable};
use crate::subscribe;
use crate::supervisor::{
    AcceptorStart, ChildExit, Control, DEFAULT_MAX_RESTARTS, DEFAULT_MAX_SECONDS, RestartIntensity,
    StopReason, Supervisor,
};
use crate::worker::{self, Batch, WorkerShared};

/// Default port, the guide's.
pub const DEFAULT_PORT: u16 = 4040;

/// Default cap on open client connections.
///
/// Each connection is a thread with a small stack, so 10,000 fit a small host's
/// memory while staying under common `ulimit -n` and thread limits.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Stack size of a connection thread.
///
/// Threads default to 2 MiB of address space each; 10,000 idle connections reserve
/// 640 MiB with this size instead of 20 GiB (only touched pages are resident: two
/// pages per idle connection, whatever this size). Under strict overcommit
/// (`vm.overcommit_memory = 2`) the reservation is charged in full, so it matters.
///
/// Measured on this code (debug build, the whole `cargo test` suite): the kv
/// binary's deepest path, a `DEBUG CRASH-CONNECTION` panic logged by its panic hook
/// with `RUST_LOG=debug` plus STATS, a too-long line and a 60 KiB value, passes at
/// 16 KiB, the least Rust gives a thread. The deepest path of an in-process server
/// is a panic hook that captures and symbolizes a backtrace (Rust's default hook under
/// `RUST_BACKTRACE=1`, `tests/connection_stack.rs`): it overflows at 28 KiB and passes
/// at 32 KiB. Twice that, for code and hooks that grow. The same results with the
/// cluster, SUBSCRIBE and supervision code and tests merged; the peer prober threads
/// of `peer.rs`, which use this size too, passed the cluster tests at 16 KiB.
pub const CONNECTION_STACK_SIZE: usize = 64 * 1024;

/// Most requests a connection sends to the workers in one round. Bounds what one
/// client can make the server hold before its replies are written out: at most this
/// many replies, so even GETs of the largest values stay around 16 MiB, and typically
/// a few KiB. Large enough that a deep pipeline still shares each channel round trip
/// among hundreds of requests.
const MAX_REQUESTS_PER_ROUND: usize = 256;

/// Once this many reply bytes are waiting, they are written before more requests are
/// dispatched, so a pipeline of large GETs is not buffered whole.
const OUT_HIGH_WATER: usize = 256 * 1024;

/// Reply and request buffers larger than this are released after the round that
/// grew them, rather than kept for the connection's life.
const KEEP_BUFFER_BYTES: usize = 256 * 1024;

/// How long shutdown lets connection threads finish the requests they have read
/// before it closes their sockets under them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How long shutdown then waits for the workers to finish what is queued.
const WORKER_GRACE: Duration = Duration::from_secs(1);

/// Everything a server is started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub bind: IpAddr,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
    /// Number of worker threads, each owning one partition.
    pub workers: usize,
    /// Longest request line in bytes.
    pub max_line: usize,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// This node's name, reported by STATS; with a cluster, the node of the cluster
    /// this server is.
    pub node: String,
    /// The cluster this node is part of. `None` is the embedded default: this node on
    /// its own, owning every bucket.
    pub cluster: Option<Cluster>,
    /// How to reach the other nodes of the cluster.
    pub peer: PeerConfig,
    /// Close a connection that sends no complete request for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Most bytes of events a subscriber may leave unread before it is dropped.
    pub subscriber_backlog: usize,
    /// Serve the `DEBUG` fault-injection commands.
    pub debug: bool,
    /// Restart intensity: at most this many crashes ...
    pub max_restarts: u32,
    /// ... within this many seconds, or the supervisor gives up.
    pub max_seconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            workers: default_workers(),
            max_line: protocol::DEFAULT_MAX_LINE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            node: "kv".to_string(),
            cluster: None,
            peer: PeerConfig::default(),
            idle_timeout: None,
            subscriber_backlog: subscribe::DEFAULT_SUBSCRIBER_BACKLOG,
            debug: false,
            max_restarts: DEFAULT_MAX_RESTARTS,
            max_seconds: DEFAULT_MAX_SECONDS,
        }
    }
}

/// One worker per core: workers do little besides taking channel messages, so more
/// would only add context switches.
pub fn default_workers() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// State shared by the acceptor, every connection thread and STATS.
#[derive(Debug)]
struct State {
    config: Config,
    started: Instant,
    /// Each worker's partition and counters.
    workers: Vec<Arc<WorkerShared>>,
    /// Each worker's inbox. Taken (set to `None`) at shutdown so the workers exit
    /// once the last connection holding a clone is gone.
    inboxes: Mutex<Option<Vec<Sender<Batch>>>>,
    connections: AtomicUsize,
    connections_total: AtomicU64,
    rejected_connections: AtomicU64,
    commands_total: AtomicU64,
    shutting_down: AtomicBool,
    /// Set by `DEBUG CRASH-ACCEPTOR`: the acceptor panics at its next connection.
    crash_acceptor: AtomicBool,
    /// A handle on every open client socket, so shutdown can wake their threads.
    /// Shared with the connection rather than a `try_clone`: a duplicate descriptor per
    /// connection would halve how many connections the open-file limit allows.
    open: Mutex<HashMap<u64, Arc<TcpStream>>>,
    /// First byte of a bucket name -> who serves it.
    routes: RouteTable,
    /// The other nodes, for the buckets they own.
    peers: Peers,
}

/// A bound server, not yet accepting.
#[derive(Debug)]
pub struct Server {
    listener: Arc<TcpListener>,
    state: Arc<State>,
    worker_inboxes: Vec<Receiver<Batch>>,
}

impl Server {
    /// Binds the listening socket and prepares the partitions; nothing runs yet.
    pub fn bind(mut config: Config) -> io::Result<Server> {
        if config.workers == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "--workers must be at least 1"));
        }
        config.max_connections = fit_open_file_limit(config.max_connections);
        let listener = TcpListener::bind((config.bind, config.port))?;
        raise_backlog(&listener)?;
        // Without a cluster file, the embedded default: one node owning every byte.
        let standalone;
        let cluster = match &config.cluster {
            Some(cluster) => cluster,
            None => {
                standalone = Cluster::standalone(&config.node, listener.local_addr()?);
                &standalone
            }
        };
        let this = cluster
            .node_index(&config.node)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
        let routes = cluster.routes_for(this);
        let peers = Peers::start(cluster, this, &config.peer)?;
        let mut workers = Vec::with_capacity(config.workers);
        let mut inboxes = Vec::with_capacity(config.workers);
        let mut worker_inboxes = Vec::with_capacity(config.workers);
        for _ in 0..config.workers {
            let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
            workers.push(Arc::new(WorkerShared::default()));
            inboxes.push(inbox_tx);
            worker_inboxes.push(inbox_rx);
        }
        let state = Arc::new(State {
            config,
            started: Instant::now(),
            workers,
            inboxes: Mutex::new(Some(inboxes)),
            connections: AtomicUsize::new(0),
            connections_total: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            commands_total: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            crash_acceptor: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            routes,
            peers,
        });
        Ok(Server { listener: Arc::new(listener), state, worker_inboxes })
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs the server on this thread until it is stopped (by a [`Stopper`]) or its
    /// supervisor gives up, then shuts it down gracefully. Returns why it stopped.
    pub fn run(self) -> io::Result<StopReason> {
        let handle = self.spawn()?;
        Ok(handle.wait())
    }

    /// Starts the supervisor, which starts the workers and the acceptor, and returns
    /// a handle that stops the server when asked or dropped. This is how tests and
    /// benchmarks run a server.
    pub fn spawn(self) -> io::Result<ServerHandle> {
        let addr = self.local_addr()?;
        let Server { listener, state, worker_inboxes } = self;
        let (stop_tx, stop_rx) = crossbeam_channel::unbounded();
        let workers = state.workers.iter().cloned().zip(worker_inboxes).collect();
        let intensity =
            RestartIntensity::new(state.config.max_restarts, Duration::from_secs(state.config.max_seconds));
        let acceptor_state = state.clone();
        let acceptor_start: AcceptorStart = Box::new(move |exits| {
            let listener = listener.clone();
            let state = acceptor_state.clone();
            thread::Builder::new().name("kv-acceptor".into()).spawn(move || {
                let accepted = panic::catch_unwind(AssertUnwindSafe(|| accept_loop(&listener, &state)));
                let panic = accepted.err().map(|payload| worker::panic_message(&*payload));
                let _ = exits.send(ChildExit::Acceptor { panic });
            })
        });
        let (control, supervisor) = Supervisor::spawn(workers, acceptor_start, intensity, stop_tx.clone())?;
        log::info!(
            "kv listening on {addr} with {} workers (node {})",
            state.config.workers,
            state.config.node
        );
        Ok(ServerHandle {
            addr,
            state,
            stop_tx,
            stop_rx,
            control,
            supervisor: Some(supervisor),
            stopped: None,
        })
    }
}

/// Asks a running server to shut down gracefully; cheap to clone and to send to
/// another thread (the signal handler holds one).
#[derive(Debug, Clone)]
pub struct Stopper(Sender<StopReason>);

impl Stopper {
    /// Begins a graceful shutdown.
    pub fn stop(&self) {
        let _ = self.0.send(StopReason::Requested);
    }
}

/// A running server. Dropping it shuts the server down.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    state: Arc<State>,
    stop_tx: Sender<StopReason>,
    stop_rx: Receiver<StopReason>,
    control: Sender<Control>,
    supervisor: Option<JoinHandle<()>>,
    stopped: Option<StopReason>,
}

impl ServerHandle {
    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that can stop this server from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop_tx.clone())
    }

    /// Blocks until the server is asked to stop or its supervisor gives up, shuts it
    /// down, and says why it stopped.
    pub fn wait(mut self) -> StopReason {
        let reason = self.stop_rx.recv().unwrap_or(StopReason::Requested);
        self.stop(reason.clone());
        reason
    }

    /// If the supervisor has given up, why; the server then still needs shutting down.
    pub fn gave_up(&self) -> Option<String> {
        match self.stop_rx.try_recv() {
            Ok(StopReason::GaveUp(why)) => Some(why),
            _ => None,
        }
    }

    /// Shuts the server down gracefully: stops accepting, lets every connection
    /// finish the requests it has read (later ones get `ERROR shutting down`), closes
    /// the connections and lets the workers finish.
    pub fn shutdown(mut self) {
        self.stop(StopReason::Requested);
    }

    fn stop(&mut self, reason: StopReason) {
        let Some(supervisor) = self.supervisor.take() else {
            return;
        };
        log::info!("shutting down ({reason:?})");
        self.stopped = Some(reason);
        let state = &self.state;
        state.shutting_down.store(true, Ordering::SeqCst);
        state.peers.shutdown();
        // The acceptor is blocked in accept(): a connection to ourselves wakes it.
        let _ = TcpStream::connect_timeout(&wake_address(self.addr), Duration::from_secs(1));
        // Wake every connection blocked in read(): it answers what it has read and
        // closes (see Connection::serve).
        for stream in state.open.lock().values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while state.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        // Connections still there are stuck writing to clients that do not read.
        for stream in state.open.lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        state.inboxes.lock().take();
        let _ = self.control.send(Control::Stop(WORKER_GRACE));
        let _ = supervisor.join();
        log::info!("stopped");
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop(StopReason::Requested);
    }
}

/// Descriptors kept for everything that is not a client connection: the listener,
/// the standard streams, peer connections, whatever a library opens.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Makes room for `max_connections` in the process's open-file limit and returns how
/// many connections fit, each taking one descriptor.
///
/// The soft limit is commonly 1,024, far below the default cap. Raising it up to the
/// hard limit needs no privilege, as Redis does at start-up. If even the hard limit is
/// too low, the cap is lowered to fit, with a warning: a client over it then gets
/// `ERROR too many connections` at once, instead of waiting in the listen queue while
/// `accept` fails for want of a descriptor.
fn fit_open_file_limit(max_connections: usize) -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return max_connections;
    }
    let wanted = (max_connections as u64).saturating_add(RESERVED_DESCRIPTORS);
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit { rlim_cur: wanted.min(limit.rlim_max), rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    let fits = usize::try_from(limit.rlim_cur.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if fits >= max_connections {
        return max_connections;
    }
    let fits = fits.max(1);
    log::warn!(
        "the open-file limit ({}) leaves room for {fits} connections, not the {max_connections} asked for: \
         serving at most {fits} (raise `ulimit -n` for more)",
        limit.rlim_cur
    );
    fits
}

/// Pending-connection queue length asked of the kernel (capped by
/// `net.core.somaxconn`, 4096 on current Linux).
///
/// std's `bind` asks for 128: a burst of clients, such as a load generator opening
/// its connections, overflows that and each overflowing client waits a full second
/// for its SYN to be retried.
const LISTEN_BACKLOG: libc::c_int = 1024;

/// Calls `listen` again with [`LISTEN_BACKLOG`]; Linux updates the queue length of a
/// socket that is already listening.
fn raise_backlog(listener: &TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is a valid, listening TCP socket owned by `listener`.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The address to connect to in order to wake an acceptor bound to `addr`.
fn wake_address(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    for incoming in listener.incoming() {
        if state.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(stream) => stream,
            Err(error) => {
                // Typically out of file descriptors: back off instead of spinning.
                log::warn!("accept failed: {error}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if state.crash_acceptor.swap(false, Ordering::SeqCst) {
            panic!("DEBUG CRASH-ACCEPTOR requested");
        }
        let open = state.connections.fetch_add(1, Ordering::SeqCst);
        if open >= state.config.max_connections {
            state.connections.fetch_sub(1, Ordering::SeqCst);
            state.rejected_connections.fetch_add(1, Ordering::Relaxed);
            log::warn!("refusing a connection: {open} open, the limit");
            reject(&stream, protocol::TOO_MANY_CONNECTIONS);
            continue;
        }
        let id = state.connections_total.fetch_add(1, Ordering::Relaxed);
        let connection_state = state.clone();
        let spawned = thread::Builder::new()
            .name(format!("kv-conn-{id}"))
            .stack_size(CONNECTION_STACK_SIZE)
            .spawn(move || serve_connection(stream, id, connection_state));
        if let Err(error) = spawned {
            // The closure, and with it the stream, is dropped: the client sees a close.
            state.connections.fetch_sub(1, Ordering::SeqCst);
            log::error!("cannot start a connection thread: {error}");
        }
    }
}

/// Sends `line` to a connection we will not serve, then closes it.
///
/// Runs on the acceptor, so it never blocks: whatever the client already sent is
/// read and dropped first (closing a socket with unread input makes the kernel send
/// a reset, which can destroy our line before the client reads it).
fn reject(mut stream: &TcpStream, line: &[u8]) {
    use std::io::Read;
    if stream.set_nonblocking(true).is_ok() {
        let mut scratch = [0u8; 1024];
        for _ in 0..16 {
            match stream.read(&mut scratch) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }
    let _ = stream.write_all(line);
    let _ = stream.shutdown(Shutdown::Write);
}

/// Undoes a connection's registration when its thread ends, however it ends.
struct ConnectionGuard {
    id: u64,
    state: Arc<State>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.state.open.lock().remove(&self.id);
        self.state.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_connection(stream: TcpStream, id: u64, state: Arc<State>) {
    let guard = ConnectionGuard { id, state };
    let peer = stream.peer_addr().ok();
    log::debug!("connection {id} from {peer:?} opened");
    let stream = Arc::new(stream);
    guard.state.open.lock().insert(id, stream.clone());
    // Checked after registering: shutdown sets the flag before it walks `open`, so
    // either it saw this connection or this connection sees the flag.
    let inboxes = guard.state.inboxes.lock().clone();
    let Some(inboxes) = inboxes.filter(|_| !guard.state.shutting_down.load(Ordering::SeqCst)) else {
        reject(&stream, protocol::SHUTTING_DOWN);
        return;
    };
    let served =
        panic::catch_unwind(AssertUnwindSafe(|| Connection::new(stream, &guard.state, inboxes).serve()));
    match served {
        Ok(Ok(())) => log::debug!("connection {id} closed"),
        Ok(Err(error)) => log::debug!("connection {id} closed: {error}"),
        // The connection's handle was dropped while unwinding and the guard drops
        // the last one: only this client sees a close.
        Err(payload) => log::error!("connection {id} crashed: {}", worker::panic_message(&*payload)),
    }
}

/// Most open connections at which a connection applies its requests itself when the
/// partition is free: one per core, so a thread holding a partition lock is not
/// preempted by another connection's.
fn inline_connection_limit() -> usize {
    // Cached: finding the core count reads cgroup files, too slow for every round.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(default_workers)
}

/// Who answers one request of a round, in [`Connection::order`].
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The connection itself, from `local`.
    Local,
    /// The worker with this index.
    Worker(u32),
    /// The peer with this index, through the forwarder.
    Peer(u32),
}

/// Who is at the other end of a connection, as its first line says.
#[derive(Debug)]
enum Mode {
    /// A client: requests for other nodes' buckets are forwarded.
    Client,
    /// Another node (it opened with an accepted `KV-PEER-HELLO`): nothing is forwarded
    /// again; a bucket this node does not own is a routing mismatch.
    Peer,
    /// A node whose handshake was refused: every bucket request gets this line.
    Refused(Vec<u8>),
}

/// One client connection's buffers, reused for its whole life.
struct Connection<'s> {
    stream: Arc<TcpStream>,
    state: &'s State,
    inboxes: Vec<Sender<Batch>>,
    /// Where batches come back.
    replies: crossbeam_channel::Receiver<Batch>,
    /// Each worker's batch; `None` while it is with the worker.
    batches: Vec<Option<Batch>>,
    /// For each request of the round, in order: who answers it.
    order: Vec<Source>,
    /// Replies the connection wrote itself, and where each ends.
    local: Vec<u8>,
    local_ends: Vec<usize>,
    /// How many replies of each worker's batch have been copied out.
    cursors: Vec<usize>,
    /// Replies in request order, waiting to be written.
    out: Vec<u8>,
    /// Requests seen since the last flush to the shared counter.
    commands: u64,
    /// Requests for other nodes' buckets, and their replies.
    forwarder: Forwarder<'s>,
    mode: Mode,
}

impl<'s> Connection<'s> {
    fn new(stream: Arc<TcpStream>, state: &'s State, inboxes: Vec<Sender<Batch>>) -> Self {
        let workers = inboxes.len();
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(workers);
        Connection {
            stream,
            state,
            batches: (0..workers).map(|w| Some(Batch::new(w, reply_tx.clone()))).collect(),
            inboxes,
            replies: reply_rx,
            order: Vec::new(),
            local: Vec::new(),
            local_ends: Vec::new(),
            cursors: vec![0; workers],
            out: Vec::new(),
            commands: 0,
            forwarder: Forwarder::new(&state.peers),
            mode: Mode::Client,
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        self.stream.set_nodelay(true)?;
        let mut reader = LineReader::new(self.state.config.max_line);
        // Only the first line of a connection may be a peer handshake.
        let mut first_line = true;
        let mut idle = self.state.config.idle_timeout.map(IdleClock::new);
        if let Some(clock) = &idle {
            self.stream.set_read_timeout(Some(clock.limit))?;
        }
        loop {
            let stopping = self.state.shutting_down.load(Ordering::Relaxed);
            let read = match reader.fill_from(&mut &*self.stream) {
                Ok(read) => read,
                Err(error) if is_timeout(&error) => match &mut idle {
                    // Nothing came: idle for the whole limit, or wake when it runs out.
                    // Whatever a read does bring is served first (below), however late:
                    // it may have waited in the socket while this thread was busy.
                    Some(clock) => match clock.remaining() {
                        None => {
                            clock.expire();
                            return Ok(());
                        }
                        Some(left) => {
                            clock.shorten(&self.stream, left)?;
                            continue;
                        }
                    },
                    None => return Err(error),
                },
                Err(error) => return Err(error),
            };
            if read == 0 {
                // The client closed, or shutdown woke us: what we had is answered.
                return Ok(());
            }
            if stopping {
                // Read after shutdown began: refuse each complete line, then close.
                while reader.next_frame().is_some() {
                    self.answer_locally(protocol::SHUTTING_DOWN);
                }
                self.finish_round()?;
                close_after_last_reply(&self.stream);
                return Ok(());
            }
            let mut quit = false;
            let mut saw_request = false;
            while let Some(frame) = reader.next_frame() {
                self.commands += 1;
                saw_request = true;
                let is_first_line = std::mem::take(&mut first_line);
                let line = match frame {
                    Frame::Line(line) => line,
                    Frame::TooLong => {
                        self.answer_locally(protocol::LINE_TOO_LONG);
                        continue;
                    }
                };
                let command = protocol::parse(line);
                match command {
                    Command::Ping => self.answer_locally(protocol::PONG),
                    Command::Unknown if protocol::is_http_request_line(line) => {
                        // A browser was made to talk to us: answer what came before,
                        // run nothing after.
                        log::warn!(
                            "closing connection from {:?}: it sent an HTTP request (cross-protocol attack?)",
                            self.stream.peer_addr().ok()
                        );
                        self.finish_round()?;
                        return Ok(());
                    }
                    Command::Unknown if is_first_line => self.first_line_unknown(line),
                    Command::Unknown => self.answer_locally(protocol::UNKNOWN_COMMAND),
                    Command::Stats => {
                        // Replies before STATS must reflect the requests before it.
                        self.flush_round();
                        self.publish_command_count();
                        write_stats(self.state, &mut self.out);
                    }
                    Command::Quit => {
                        self.flush_round();
                        self.out.extend_from_slice(protocol::OK);
                        quit = true;
                        break;
                    }
                    Command::DebugCrash { .. }
                    | Command::DebugCrashConnection
                    | Command::DebugCrashAcceptor
                        if !self.state.config.debug =>
                    {
                        self.answer_locally(protocol::UNKNOWN_COMMAND)
                    }
                    Command::DebugCrashConnection => {
                        // Fault injection: only this connection's thread dies.
                        panic!("DEBUG CRASH-CONNECTION requested");
                    }
                    Command::DebugCrashAcceptor => {
                        // Fault injection: the acceptor panics on the next connection
                        // it takes, which we make ourselves to wake it.
                        self.state.crash_acceptor.store(true, Ordering::SeqCst);
                        let woke = self
                            .stream
                            .local_addr()
                            .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
                        self.answer_locally(if woke.is_ok() {
                            protocol::OK
                        } else {
                            b"ERROR cannot wake the acceptor\r\n"
                        });
                    }
                    Command::Subscribe { bucket } => match (self.state.routes.route(bucket), &self.mode) {
                        (Route::Local, Mode::Client | Mode::Peer) => {
                            let w = worker::worker_for(bucket, self.inboxes.len());
                            let (subscriber, subscription) =
                                subscribe::subscription(self.state.config.subscriber_backlog);
                            if let Some(batch) = &mut self.batches[w] {
                                batch.push_request(line);
                                batch.subscriber = Some(subscriber);
                            }
                            self.order.push(Source::Worker(w as u32));
                            // The worker registers it in its request order; its reply
                            // (nothing, or NOT FOUND) follows everything before it.
                            self.flush_round();
                            let refused = self.batches[w].as_mut().and_then(|batch| batch.subscriber.take());
                            if refused.is_none() {
                                if matches!(self.mode, Mode::Peer) {
                                    // Between nodes a subscription is acknowledged, so the
                                    // relaying node knows it took (see peer.rs).
                                    self.out.extend_from_slice(protocol::OK);
                                }
                                self.finish_round()?;
                                // From here on input is ignored and events are written.
                                return subscribe::stream_events(
                                    &self.stream,
                                    subscription,
                                    &self.state.shutting_down,
                                );
                            }
                        }
                        (Route::Peer(p), Mode::Client) => {
                            // As locally, the replies before it go first.
                            self.flush_round();
                            match self.state.peers.subscribe(usize::from(p), line) {
                                RemoteSubscription::Answered(reply) => self.answer_locally(&reply),
                                RemoteSubscription::Streaming { stream, pending } => {
                                    self.finish_round()?;
                                    return peer::relay_subscription(
                                        stream,
                                        pending,
                                        &self.stream,
                                        self.state.config.subscriber_backlog,
                                        &self.state.shutting_down,
                                        self.state.peers.unavailable_line(usize::from(p)),
                                    );
                                }
                            }
                        }
                        (route, _) => self.answer_misrouted(route, bucket),
                    },
                    Command::Create { bucket }
                    | Command::Put { bucket, .. }
                    | Command::Get { bucket, .. }
                    | Command::Delete { bucket, .. }
                    | Command::DebugCrash { bucket } => match (self.state.routes.route(bucket), &self.mode) {
                        (Route::Local, Mode::Client | Mode::Peer) => {
                            let w = worker::worker_for(bucket, self.inboxes.len());
                            if let Some(batch) = &mut self.batches[w] {
                                batch.push_request(line);
                            }
                            self.order.push(Source::Worker(w as u32));
                        }
                        (Route::Peer(p), Mode::Client) => {
                            let p = usize::from(p);
                            if self.forwarder.is_full_for(p, line.len()) {
                                self.flush_round();
                            }
                            self.forwarder.push(p, line, matches!(command, Command::Get { .. }));
                            self.order.push(Source::Peer(p as u32));
                        }
                        (route, _) => self.answer_misrouted(route, bucket),
                    },
                }
                if self.order.len() >= MAX_REQUESTS_PER_ROUND {
                    self.flush_round();
                }
                if self.out.len() >= OUT_HIGH_WATER {
                    (&*self.stream).write_all(&self.out)?;
                    self.out.clear();
                }
            }
            if let Some(clock) = &mut idle {
                if saw_request {
                    clock.reset(&self.stream)?;
                } else {
                    // Bytes but no whole request: the clock keeps running, so a client
                    // trickling a line that never ends is closed all the same.
                    match clock.remaining() {
                        None => {
                            clock.expire();
                            return Ok(());
                        }
                        Some(left) => clock.shorten(&self.stream, left)?,
                    }
                }
            }
            self.finish_round()?;
            if quit {
                close_after_last_reply(&self.stream);
                return Ok(());
            }
        }
    }

    fn answer_locally(&mut self, reply: &[u8]) {
        self.local.extend_from_slice(reply);
        self.local_ends.push(self.local.len());
        self.order.push(Source::Local);
    }

    /// An unknown command as a connection's first line: a peer handshake, or else
    /// `UNKNOWN COMMAND` as anywhere else.
    #[cold]
    fn first_line_unknown(&mut self, line: &[u8]) {
        match peer::check_hello(line, &self.state.config.node) {
            Hello::NotHello => self.answer_locally(protocol::UNKNOWN_COMMAND),
            Hello::Accepted => {
                self.mode = Mode::Peer;
                self.answer_locally(protocol::OK);
            }
            Hello::Refused(reply) => {
                log::warn!(
                    "refused a peer handshake: {:?} (answered {:?})",
                    String::from_utf8_lossy(line),
                    String::from_utf8_lossy(&reply).trim_end()
                );
                self.answer_locally(&reply);
                self.mode = Mode::Refused(reply);
            }
        }
    }

    /// A bucket request this connection cannot serve or forward: no node owns the
    /// bucket, it came from a peer for a bucket this node does not own, or it came
    /// from a peer whose handshake was refused.
    #[cold]
    fn answer_misrouted(&mut self, route: Route, bucket: &[u8]) {
        match &self.mode {
            Mode::Refused(reply) => self.local.extend_from_slice(reply),
            Mode::Peer => peer::write_routing_mismatch(&mut self.local, &self.state.config.node, bucket),
            Mode::Client => {
                debug_assert_eq!(route, Route::Unrouted);
                router::write_no_route(&mut self.local, bucket);
            }
        }
        self.local_ends.push(self.local.len());
        self.order.push(Source::Local);
    }

    /// Dispatches and collects the round, then writes every reply out.
    fn finish_round(&mut self) -> io::Result<()> {
        self.flush_round();
        if !self.out.is_empty() {
            (&*self.stream).write_all(&self.out)?;
            self.out.clear();
        }
        self.publish_command_count();
        self.release_large_buffers();
        Ok(())
    }

    /// Gives back buffers a burst made large (a round of big GETs can reach many MiB),
    /// so that an idle connection holds only small ones.
    fn release_large_buffers(&mut self) {
        let mut released = false;
        if self.out.capacity() > KEEP_BUFFER_BYTES {
            self.out = Vec::new();
            released = true;
        }
        for batch in self.batches.iter_mut().flatten() {
            released |= batch.release_large_buffers(KEEP_BUFFER_BYTES);
        }
        released |= self.forwarder.release_large_buffers(KEEP_BUFFER_BYTES);
        if released {
            give_freed_memory_back();
        }
    }

    /// Adds the requests counted since the last call to the shared total.
    fn publish_command_count(&mut self) {
        if self.commands > 0 {
            self.state.commands_total.fetch_add(self.commands, Ordering::Relaxed);
            self.commands = 0;
        }
    }

    /// Sends each worker its batch, waits for all of them, and appends the replies
    /// to `out` in request order.
    fn flush_round(&mut self) {
        if self.order.is_empty() {
            return;
        }
        let mut in_flight = 0;
        // Few connections: skip the worker hop when a partition is free (see
        // worker::apply_inline). Never with fault injection on, whose crashes must
        // happen on workers.
        let inline = !self.state.config.debug
            && self.state.connections.load(Ordering::Relaxed) <= inline_connection_limit();
        for (w, slot) in self.batches.iter_mut().enumerate() {
            if inline
                && let Some(batch) = slot.as_mut().filter(|batch| !batch.is_empty())
                && worker::apply_inline(&self.state.workers[w], batch)
            {
                continue;
            }
            if slot.as_ref().is_some_and(|batch| !batch.is_empty())
                && let Some(batch) = slot.take()
            {
                match self.inboxes[w].send(batch) {
                    Ok(()) => in_flight += 1,
                    Err(crossbeam_channel::SendError(mut batch)) => {
                        batch.answer_rest(protocol::WORKER_UNAVAILABLE);
                        *slot = Some(batch);
                    }
                }
            }
        }
        // While the workers work, this thread talks to the peers.
        self.forwarder.exchange();
        while in_flight > 0 {
            match worker::recv_spinning(&self.replies) {
                Ok(batch) => {
                    let w = batch.worker;
                    self.batches[w] = Some(batch);
                    in_flight -= 1;
                }
                // Cannot happen while we hold batches' senders; be safe anyway.
                Err(_) => break,
            }
        }
        self.assemble();
    }

    /// Copies every reply of the round into `out`, in request order, and empties
    /// the round's buffers.
    fn assemble(&mut self) {
        let mut local_index = 0;
        let mut local_start = 0;
        self.cursors.iter_mut().for_each(|c| *c = 0);
        for &source in &self.order {
            let w = match source {
                Source::Worker(w) => w as usize,
                Source::Local => {
                    let end = self.local_ends[local_index];
                    self.out.extend_from_slice(&self.local[local_start..end]);
                    local_start = end;
                    local_index += 1;
                    continue;
                }
                Source::Peer(p) => {
                    self.out.extend_from_slice(self.forwarder.next_reply(p as usize));
                    continue;
                }
            };
            let cursor = self.cursors[w];
            match &self.batches[w] {
                Some(batch) if cursor < batch.reply_ends.len() => {
                    let start = if cursor == 0 { 0 } else { batch.reply_ends[cursor - 1] };
                    let end = batch.reply_ends[cursor];
                    self.out.extend_from_slice(&batch.replies[start..end]);
                }
                // A batch that did not come back, or came back short.
                _ => self.out.extend_from_slice(protocol::WORKER_UNAVAILABLE),
            }
            self.cursors[w] = cursor + 1;
        }
        self.order.clear();
        self.local.clear();
        self.local_ends.clear();
        for batch in self.batches.iter_mut().flatten() {
            batch.clear();
        }
        self.forwarder.clear();
    }
}

/// Asks glibc's malloc to return free memory to the system. Freeing a large buffer
/// alone often does not: glibc keeps it in the freeing thread's arena. Called only
/// after a burst released buffers (a rare, cold path), never per request.
fn give_freed_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks malloc's own free lists; any pad is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Most input read and thrown away while closing after `QUIT` or at shutdown.
const CLOSE_DRAIN_BYTES: usize = 1024 * 1024;
/// Most time spent on that.
const CLOSE_DRAIN_TIME: Duration = Duration::from_secs(1);

/// Closes a connection whose last reply has been written, without losing it.
///
/// Closing a socket that still has unread input makes the kernel send a reset,
/// which throws away replies still in our send buffer: a client that pipelined
/// requests after `QUIT` would lose the replies to those before it. So: say we are
/// done writing, then read and drop what the client still sends until it closes
/// too, within a bound of bytes and time.
fn close_after_last_reply(stream: &TcpStream) {
    use std::io::Read;
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + CLOSE_DRAIN_TIME;
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < CLOSE_DRAIN_BYTES {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            break;
        };
        if stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match (&*stream).read(&mut scratch) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// When a connection last completed a request, for `--idle-timeout`.
struct IdleClock {
    limit: Duration,
    last_request: Instant,
    /// The socket's read timeout is shorter than `limit` (a partial line is pending).
    shortened: bool,
}

impl IdleClock {
    fn new(limit: Duration) -> Self {
        IdleClock { limit, last_request: Instant::now(), shortened: false }
    }

    /// A request completed: the full limit applies again. Touches the socket only
    /// if the timeout had been shortened, so the common path costs no syscall.
    fn reset(&mut self, stream: &TcpStream) -> io::Result<()> {
        self.last_request = Instant::now();
        if self.shortened {
            self.shortened = false;
            stream.set_read_timeout(Some(self.limit))?;
        }
        Ok(())
    }

    /// Wake up when the limit runs out rather than a full limit from now.
    fn shorten(&mut self, stream: &TcpStream, left: Duration) -> io::Result<()> {
        self.shortened = true;
        stream.set_read_timeout(Some(left))
    }

    /// The connection is closed for idleness: say so in the log.
    fn expire(&self) {
        log::debug!("closing a connection idle for {:?}", self.limit);
    }

    /// Time left before the connection counts as idle; `None` once it does.
    fn remaining(&self) -> Option<Duration> {
        self.limit.checked_sub(self.last_request.elapsed()).filter(|left| !left.is_zero())
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Appends the STATS reply: one `<name> <value>` line per figure, then `OK`.
fn write_stats(state: &State, out: &mut Vec<u8>) {
    use protocol::write_stat;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let buckets: usize = state.workers.iter().map(|w| w.stats.buckets.load(Ordering::Relaxed)).sum();
    let keys: usize = state.workers.iter().map(|w| w.stats.keys.load(Ordering::Relaxed)).sum();
    let restarts: u64 = state.workers.iter().map(|w| load(&w.stats.restarts)).sum();
    write_stat(out, "node", &state.config.node);
    write_stat(out, "uptime_s", state.started.elapsed().as_secs());
    write_stat(out, "connections", state.connections.load(Ordering::Relaxed));
    write_stat(out, "connections_total", load(&state.connections_total));
    write_stat(out, "rejected_connections", load(&state.rejected_connections));
    write_stat(out, "commands_total", load(&state.commands_total));
    write_stat(out, "buckets", buckets);
    write_stat(out, "keys", keys);
    write_stat(out, "workers", state.workers.len());
    write_stat(out, "worker_restarts", restarts);
    let subscribers: usize = state.workers.iter().map(|w| w.stats.subscribers.load(Ordering::Relaxed)).sum();
    let dropped: u64 = state.workers.iter().map(|w| load(&w.stats.subscribers_dropped)).sum();
    write_stat(out, "subscribers", subscribers);
    write_stat(out, "subscribers_dropped", dropped);
    // forwarded_total, peer_errors_total and the peer.<name>.* lines.
    state.peers.write_stats(out);
    let inboxes = state.inboxes.lock();
    for (i, worker) in state.workers.iter().enumerate() {
        let queue = inboxes.as_ref().map_or(0, |inboxes| inboxes[i].len());
        write_stat(out, &format!("worker.{i}.queue"), queue);
        write_stat(out, &format!("worker.{i}.buckets"), worker.stats.buckets.load(Ordering::Relaxed));
        write_stat(out, &format!("worker.{i}.keys"), worker.stats.keys.load(Ordering::Relaxed));
        write_stat(out, &format!("worker.{i}.restarts"), load(&worker.stats.restarts));
    }
    out.extend_from_slice(protocol::OK);
}
