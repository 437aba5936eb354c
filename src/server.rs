//! The server as a whole: binding, starting, and stopping gracefully.
//!
//! [`Server::bind`] checks the configuration, binds the listening socket and prepares
//! the partitions; [`Server::spawn`] starts the supervisor, which starts the workers
//! and the acceptor (`acceptor.rs`), which gives each connection a thread
//! (`connection.rs`). [`ServerHandle`] stops it all: no new connections, every
//! connection answers what it has read (within `--shutdown-grace`, `shutdown.rs`),
//! the workers finish what is queued.
//!
//! The library leaves the host process alone: it reads the open-file limit to fit the
//! connection cap under it, but raising that limit, and taking over SIGINT and
//! SIGTERM, is the binary's decision (`sys.rs`, `signals.rs`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::acceptor::{self, Listeners};
use crate::batch::Batch;
use crate::housekeeping::{self, Housekeeping};
use crate::peer::Peers;
use crate::persist::{self, DataDirConfig};
use crate::router::{Cluster, Route, RouteTable};
use crate::shutdown;
use crate::state::{Budget, Counters, DataState, State};
use crate::supervisor::{AcceptorStart, ChildExit, Control, RestartIntensity, StopReason, Supervisor};
use crate::sys;
use crate::worker::{self, WorkerShared};
use crate::{Config, ConfigError};

/// How long shutdown then waits for the workers to finish what is queued.
const WORKER_GRACE: Duration = Duration::from_secs(1);

/// Pending-connection queue length asked of the kernel (capped by
/// `net.core.somaxconn`, 4096 on current Linux).
///
/// std's `bind` asks for 128: a burst of clients, such as a load generator opening
/// its connections, overflows that and each overflowing client waits a full second
/// for its SYN to be retried.
const LISTEN_BACKLOG: i32 = 1024;

/// Descriptors kept for everything that is not a client connection: the listener,
/// the standard streams, peer connections, whatever a library opens.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// A bound server, not yet accepting.
#[derive(Debug)]
pub struct Server {
    listeners: Arc<Listeners>,
    state: Arc<State>,
    worker_inboxes: Vec<Receiver<Batch>>,
}

impl Server {
    /// Checks the configuration, binds the listening socket and prepares the
    /// partitions; nothing runs yet. A configuration [`Config::validate`] refuses is an
    /// `InvalidInput` error whose inner error is the [`ConfigError`].
    pub fn bind(mut config: Config) -> io::Result<Server> {
        config.validate().map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        config.max_connections = fit_open_file_limit(config.max_connections);
        let listener = TcpListener::bind((config.bind, config.port))?;
        sys::set_listen_backlog(&listener, LISTEN_BACKLOG)?;
        let resp = match config.resp_port {
            Some(port) => {
                let resp = TcpListener::bind((config.bind, port))?;
                sys::set_listen_backlog(&resp, LISTEN_BACKLOG)?;
                // Polled with the text door's on one thread: an accept must not block
                // on a connection that went away after the poll.
                resp.set_nonblocking(true)?;
                Some(resp)
            }
            None => None,
        };
        if resp.is_some() {
            listener.set_nonblocking(true)?;
        }
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
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, ConfigError::Cluster(error)))?;
        warn_if_unauthenticated(&config, cluster);
        let routes = cluster.routes_for(this);
        let (workers, data) = load_workers(&config, &routes)?;
        let peers = Peers::start(cluster, this, &config.peer, config.cluster_secret.as_ref())?;
        let free_descriptors = sys::open_file_limit().map(|limit| limit.saturating_sub(RESERVED_DESCRIPTORS));
        let budget = Budget::new(&config, peers.iter().count(), free_descriptors);
        let mut inboxes = Vec::with_capacity(config.workers);
        let mut worker_inboxes = Vec::with_capacity(config.workers);
        // Every partition counts its memory against the node's one limit.
        let memory_total = Arc::new(AtomicUsize::new(0));
        for worker in &workers {
            worker.partition.lock().set_memory_limit(config.max_memory, memory_total.clone());
        }
        for _ in 0..config.workers {
            let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
            inboxes.push(inbox_tx);
            worker_inboxes.push(inbox_rx);
        }
        let state = Arc::new(State {
            config,
            started: Instant::now(),
            workers,
            inboxes: Mutex::new(Some(inboxes.into())),
            counters: Counters::default(),
            shutting_down: AtomicBool::new(false),
            crash_acceptor: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            routes,
            peers,
            data,
            budget,
            stop_deadline: OnceLock::new(),
            handshake_throttle: crate::auth::Throttle::handshakes(),
            auth_throttle: crate::auth::Throttle::auths(),
        });
        let listeners = Arc::new(Listeners { text: listener, resp });
        Ok(Server { listeners, state, worker_inboxes })
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listeners.text.local_addr()
    }

    /// The RESP door's address, if it has one (`--resp-port`).
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.listeners.resp.as_ref().and_then(|l| l.local_addr().ok())
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
        let resp_addr = self.resp_addr();
        let Server { listeners, state, worker_inboxes } = self;
        let (stop_tx, stop_rx) = crossbeam_channel::unbounded();
        let workers = state.workers.iter().cloned().zip(worker_inboxes).collect();
        let intensity =
            RestartIntensity::new(state.config.max_restarts, Duration::from_secs(state.config.max_seconds));
        let acceptor_state = state.clone();
        let acceptor_start: AcceptorStart = Box::new(move |exits| {
            let listeners = listeners.clone();
            let state = acceptor_state.clone();
            thread::Builder::new().name("kv-acceptor".into()).spawn(move || {
                let accepted =
                    panic::catch_unwind(AssertUnwindSafe(|| acceptor::accept_loop(&listeners, &state)));
                let panic = accepted.err().map(|payload| worker::panic_message(&*payload));
                let _ = exits.send(ChildExit::Acceptor { panic });
            })
        });
        // Before the workers: with `always` they hand drains to the syncers, and if
        // this fails nothing has started yet.
        let housekeeping = match &state.data {
            Some(_) => {
                Some(Housekeeping::start(&state.workers, state.config.fsync, state.config.compact_min_bytes)?)
            }
            None => None,
        };
        let (control, supervisor) = Supervisor::spawn(workers, acceptor_start, intensity, stop_tx.clone())?;
        log::info!(
            "kv listening on {addr} with {} workers (node {})",
            state.config.workers,
            state.config.node
        );
        if let Some(resp_addr) = resp_addr {
            log::info!("kv's RESP door listening on {resp_addr}");
        }
        Ok(ServerHandle {
            addr,
            resp_addr,
            state,
            stop_tx,
            stop_rx,
            control,
            supervisor: Some(supervisor),
            received: Mutex::new(None),
            housekeeping,
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
    resp_addr: Option<SocketAddr>,
    state: Arc<State>,
    stop_tx: Sender<StopReason>,
    stop_rx: Receiver<StopReason>,
    control: Sender<Control>,
    supervisor: Option<JoinHandle<()>>,
    /// A stop message [`ServerHandle::gave_up`] took off the channel, kept for
    /// [`ServerHandle::wait`].
    received: Mutex<Option<StopReason>>,
    /// With a data directory: the flusher and the compactor.
    housekeeping: Option<Housekeeping>,
}

impl ServerHandle {
    /// Where the RESP door listens, if the server has one (`--resp-port`).
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp_addr
    }

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
        let received = self.received.lock().take();
        let reason = received.unwrap_or_else(|| self.stop_rx.recv().unwrap_or(StopReason::Requested));
        self.stop(reason.clone());
        reason
    }

    /// If the supervisor has given up, why; the server then still needs shutting down.
    /// Asking does not use the answer up: a later [`ServerHandle::wait`] still sees it.
    pub fn gave_up(&self) -> Option<String> {
        let mut received = self.received.lock();
        if received.is_none() {
            *received = self.stop_rx.try_recv().ok();
        }
        match &*received {
            Some(StopReason::GaveUp(why)) => Some(why.clone()),
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
        let state = &self.state;
        // The deadline first: a connection that sees the flag reads it.
        state.stop_deadline();
        state.shutting_down.store(true, Ordering::SeqCst);
        // After the flag: whoever reads this line knows every connection will see it.
        log::info!("shutting down ({reason:?})");
        state.peers.shutdown();
        // The acceptor is blocked in accept(): a connection to ourselves wakes it.
        let _ = TcpStream::connect_timeout(&wake_address(self.addr), Duration::from_secs(1));
        shutdown::close_connections(state);
        state.inboxes.lock().take();
        let _ = self.control.send(Control::Stop(WORKER_GRACE));
        let _ = supervisor.join();
        // Every change applied is written; with a data directory, now synced too,
        // whatever the policy, before the process may exit.
        if let Some(mut housekeeping) = self.housekeeping.take() {
            housekeeping.stop();
        }
        for worker in &state.workers {
            housekeeping::finish_synced(worker);
            worker.sync_now();
        }
        log::info!("stopped");
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop(StopReason::Requested);
    }
}

/// Each worker's state: empty partitions, or with `--data-dir` what the data directory
/// holds, each bucket given to the worker that owns it now.
fn load_workers(
    config: &Config,
    routes: &RouteTable,
) -> io::Result<(Vec<Arc<WorkerShared>>, Option<DataState>)> {
    let Some(root) = &config.data_dir else {
        return Ok(((0..config.workers).map(|_| Arc::new(WorkerShared::default())).collect(), None));
    };
    // The seed the data was placed with, so that it loads where it was (unless this
    // process already placed buckets with another, as several in-process servers do).
    if let Some(seed) = persist::stored_seed(root) {
        worker::use_worker_seed(seed);
    }
    let data_config = DataDirConfig {
        root: root.clone(),
        policy: config.fsync,
        repair: config.repair,
        seed: worker::worker_seed(),
    };
    let workers = config.workers;
    let place = move |bucket: &[u8]| match routes.route(bucket) {
        Route::Local => Some(worker::worker_for(bucket, workers)),
        _ => None,
    };
    let opened = persist::open(&data_config, workers, &place)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
    let keys: usize = opened.partitions.iter().map(|p| p.key_count()).sum();
    log::info!(
        "loaded {keys} keys from {} in {:?} (fsync {})",
        root.display(),
        opened.load_time,
        config.fsync
    );
    let shared = opened
        .partitions
        .into_iter()
        .zip(opened.logs)
        .map(|(partition, log)| Arc::new(WorkerShared::new(partition, Some(log))))
        .collect();
    Ok((shared, Some(DataState { _lock: opened.lock, load_time: opened.load_time })))
}

/// Warns once, loudly, when nodes on other hosts would talk without a cluster secret:
/// anyone who can reach the port could then claim to be a node (docs/SECURITY.md).
fn warn_if_unauthenticated(config: &Config, cluster: &Cluster) {
    let remote = cluster.nodes().iter().find(|node| !crate::auth::is_loopback(node.addr.ip()));
    if let (None, Some(node)) = (&config.cluster_secret, remote) {
        log::warn!(
            "NO CLUSTER SECRET: node {} is at {}, not on loopback, and nodes will accept any \
             connection that claims to be a node. Set one with a `secret-file PATH` line in {} or \
             --cluster-secret-file (see docs/SECURITY.md)",
            node.name,
            node.addr,
            cluster.file()
        );
    }
}

/// How many of `max_connections` fit the process's open-file limit, each taking one
/// descriptor. A cap that does not fit is lowered, with a warning: a client over it
/// then gets `ERROR too many connections` at once, instead of waiting in the listen
/// queue while `accept` fails for want of a descriptor. (The binary raises the limit
/// first, as far as the hard limit allows: `sys::raise_open_file_limit`.)
fn fit_open_file_limit(max_connections: usize) -> usize {
    let Some(limit) = sys::open_file_limit() else { return max_connections };
    let fits = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if fits >= max_connections {
        return max_connections;
    }
    let fits = fits.max(1);
    log::warn!(
        "the open-file limit ({limit}) leaves room for {fits} connections, not the {max_connections} asked for: \
         serving at most {fits} (raise `ulimit -n` for more)"
    );
    fits
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
