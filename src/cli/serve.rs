//! `kv serve` (and bare `kv`): flags to a [`Config`], then the server's life.
//!
//! The flags override [`Config::default`] and nothing else, so every default is
//! written once, in `config.rs`; what is acceptable is [`Config::validate`]'s to say.
//! This file owns what only a process does: reading `PORT`, loading the cluster file,
//! raising the open-file limit, fixing malloc's mmap threshold, taking over SIGINT,
//! SIGTERM and SIGHUP, and turning each way of failing into a message on stderr and
//! an exit status: 2 for a bad flag, a bad `PORT` or a bad cluster file, 1 for a
//! failure at run time. Those messages are printed, not logged, so `RUST_LOG=off`
//! cannot hide why the server did not start.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use kv::config::{Config, ConfigError};
use kv::persist::FsyncPolicy;
use kv::router::Cluster;
use kv::server::RESERVED_DESCRIPTORS;
use kv::{Server, StopReason};

/// Run the server (the default: `kv --port 4041` is `kv serve --port 4041`). With
/// --cluster FILE --node NAME it runs as node NAME of the cluster that FILE describes,
/// listening on that node's address from the file unless --bind or --port say
/// otherwise.
#[derive(FromArgs, Debug, Default)]
#[argh(subcommand, name = "serve", help_triggers("-h", "--help", "help"))]
pub(crate) struct ServeArgs {
    /// address to listen on (default 127.0.0.1, or with --cluster the IP of this node's
    /// address in the file; use 0.0.0.0 to accept remote clients)
    #[argh(option)]
    bind: Option<IpAddr>,
    /// port to listen on (default: with --cluster the port of this node's address in the
    /// file, else the PORT environment variable, else 4040; 0 picks a free port)
    #[argh(option)]
    port: Option<u16>,
    /// number of worker threads, each owning a partition of the buckets (default: number of cores)
    #[argh(option)]
    workers: Option<usize>,
    /// longest request line in bytes; a longer line is answered with an error (default 65536)
    #[argh(option)]
    max_line: Option<usize>,
    /// also serve Redis clients (RESP2 and RESP3) on this port, e.g. 6380; 0 picks a free
    /// port (default: no RESP door)
    #[argh(option)]
    resp_port: Option<u16>,
    /// the bucket the RESP door keeps plain strings (SET, GET, MSET, MGET) in (default
    /// strings)
    #[argh(option)]
    resp_bucket: Option<String>,
    /// largest value in bytes the RESP door takes; a longer one is answered with an error
    /// (default 1048576, 1 MiB)
    #[argh(option)]
    max_value: Option<usize>,
    /// most client connections open at once; one more is refused with an error (default 10000)
    #[argh(option)]
    max_connections: Option<usize>,
    /// close a connection that sends no complete request for this many seconds; 0 = never
    /// (default 0, as in Redis and memcached)
    #[argh(option)]
    idle_timeout: Option<u64>,
    /// most bytes of events a SUBSCRIBE connection may leave unread before it is dropped
    /// (default 8388608, 8 MiB)
    #[argh(option)]
    subscriber_backlog: Option<usize>,
    /// restart intensity: if workers crash more than this many times within --max-seconds, the
    /// server gives up and exits with status 1 (default 3)
    #[argh(option)]
    max_restarts: Option<u32>,
    /// the window, in seconds, for --max-restarts (default 5)
    #[argh(option)]
    max_seconds: Option<u64>,
    /// enable fault injection: DEBUG CRASH <bucket> panics the worker owning <bucket>,
    /// DEBUG CRASH-CONNECTION panics the connection's thread, DEBUG FAILSYNC fails
    /// each log's next sync (never in production)
    #[argh(switch)]
    debug: bool,
    /// the cluster file: one line per node, `name IP:PORT ranges` (see docs/CLUSTER.md);
    /// without it this node owns every bucket
    #[argh(option)]
    cluster: Option<PathBuf>,
    /// which node of the cluster file this is (required with --cluster; without it, only
    /// the name STATS reports, default "kv")
    #[argh(option)]
    node: Option<String>,
    /// seconds to wait for a connection to a peer node (default 1)
    #[argh(option, from_str_fn(parse_seconds))]
    peer_connect_timeout: Option<Duration>,
    /// seconds to wait for a peer node's replies before answering that the peer is
    /// unavailable (default 5)
    #[argh(option, from_str_fn(parse_seconds))]
    peer_timeout: Option<Duration>,
    /// longest wait in seconds between probes of a peer node that is down (default 5)
    #[argh(option, from_str_fn(parse_seconds))]
    peer_backoff_max: Option<Duration>,
    /// most connections open to one peer node at once (default 32)
    #[argh(option)]
    peer_connections: Option<usize>,
    /// keep the data in this directory, so a restart brings it back (default: in memory only)
    #[argh(option)]
    data_dir: Option<PathBuf>,
    /// with --data-dir, when changes are synced to disk: always (before each OK),
    /// everysec (at most about 2 s lost in a crash) or no (default everysec)
    #[argh(option)]
    fsync: Option<FsyncPolicy>,
    /// with --data-dir, start even if a log is damaged: keep what precedes the damage and
    /// move the damaged file aside
    #[argh(switch)]
    repair: bool,
    /// with --data-dir, compact a partition's log once it passes this many bytes and twice
    /// its live data (default 67108864, 64 MiB)
    #[argh(option)]
    compact_min_bytes: Option<u64>,
    /// most bytes the store may hold, such as 268435456 or 256M (K, M, G: powers of
    /// 1024); a CREATE or PUT past it gets `ERROR out of memory`; 0 = no limit (default 0)
    #[argh(option, from_str_fn(parse_bytes))]
    max_memory: Option<usize>,
    /// seconds a stopping server waits for clients to read the replies to what they had
    /// sent, before closing their connections anyway (default 10)
    #[argh(option, from_str_fn(parse_seconds))]
    shutdown_grace: Option<Duration>,
    /// file holding the cluster secret nodes prove to each other (overrides the cluster
    /// file's `secret-file` line; see docs/SECURITY.md); never give a secret on the
    /// command line
    #[argh(option)]
    cluster_secret_file: Option<PathBuf>,
    /// file holding the password clients must send with `AUTH <password>` first
    #[argh(option)]
    password_file: Option<PathBuf>,
    /// yes or no: listening on a non-loopback address without a password, serve only
    /// loopback clients (default yes, as Redis does)
    #[argh(option, from_str_fn(parse_yes_no))]
    protected_mode: Option<bool>,
}

fn parse_yes_no(text: &str) -> Result<bool, String> {
    match text {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("expected yes or no, not {text:?}")),
    }
}

/// Parses a number of seconds, such as `1` or `0.25`. Only the syntax is checked here:
/// whether the duration is acceptable is [`Config::validate`]'s to say, so a number
/// too large for a `Duration` becomes the longest one, for it to refuse.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs >= 0.0 => Ok(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)),
        _ => Err(format!("expected a number of seconds, not {text:?}")),
    }
}

/// Parses a number of bytes with an optional `K`, `M` or `G` (powers of 1024), such as
/// `268435456` or `256M`. Too large for a `usize` is an error.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let (digits, unit) = match text.trim().char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.trim().split_at(at),
        None => (text.trim(), ""),
    };
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(format!("expected a number of bytes such as 256M, not {text:?}")),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("expected a number of bytes such as 256M, not {text:?}"))
}

/// Why `kv serve` did not start, and so how it exits.
#[derive(Debug)]
pub(crate) enum StartError {
    /// Bad flags, `PORT` or cluster file (a [`ConfigError`]'s text): exit status 2.
    Config(String),
    /// Anything else: exit status 1.
    Runtime(String),
}

impl StartError {
    /// Prints `kv: <why>` on stderr (whatever `RUST_LOG` says) and gives the status.
    fn report(self) -> ExitCode {
        match self {
            StartError::Config(text) => {
                eprintln!("kv: {text}");
                ExitCode::from(2)
            }
            StartError::Runtime(text) => {
                eprintln!("kv: {text}");
                ExitCode::FAILURE
            }
        }
    }
}

/// The `PORT` environment variable, as `config` reads it.
type PortVariable = Option<String>;

/// Builds the server's configuration: [`Config::default`], overridden by the flags, the
/// cluster file and `PORT`, then validated.
pub(crate) fn config(args: ServeArgs, port_variable: PortVariable) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    let listen = match &args.cluster {
        Some(path) => Some(load_cluster(&mut config, path, args.node.as_deref())?),
        None => None,
    };
    if let Some(node) = args.node {
        config.node = node;
    }
    config.bind = args.bind.or(listen.map(|addr| addr.ip())).unwrap_or(config.bind);
    config.port = match (args.port, listen, port_variable) {
        (Some(port), _, _) => port,
        (None, Some(addr), _) => addr.port(),
        (None, None, Some(text)) => text.trim().parse().map_err(|_| ConfigError::BadPortVariable(text))?,
        (None, None, None) => config.port,
    };
    set(&mut config.workers, args.workers);
    set(&mut config.max_line, args.max_line);
    set(&mut config.max_value, args.max_value);
    config.resp_port = args.resp_port;
    if let Some(bucket) = args.resp_bucket {
        config.resp_bucket = bucket.into_bytes();
    }
    set(&mut config.max_connections, args.max_connections);
    set(&mut config.subscriber_backlog, args.subscriber_backlog);
    set(&mut config.max_restarts, args.max_restarts);
    set(&mut config.max_seconds, args.max_seconds);
    set(&mut config.peer.connect_timeout, args.peer_connect_timeout);
    set(&mut config.peer.timeout, args.peer_timeout);
    set(&mut config.peer.max_backoff, args.peer_backoff_max);
    set(&mut config.peer.connections, args.peer_connections);
    if let Some(seconds) = args.idle_timeout {
        // 0 is the flag's "never", which the configuration spells `None`.
        config.idle_timeout = (seconds > 0).then(|| Duration::from_secs(seconds));
    }
    if let Some(bytes) = args.max_memory {
        // 0 is the flag's "no limit", which the configuration spells `None`.
        config.max_memory = (bytes > 0).then_some(bytes);
    }
    set(&mut config.shutdown_grace, args.shutdown_grace);
    config.debug = args.debug;
    config.data_dir = args.data_dir;
    set(&mut config.fsync, args.fsync);
    config.repair = args.repair;
    set(&mut config.compact_min_bytes, args.compact_min_bytes);
    set(&mut config.protected_mode, args.protected_mode);
    let secret_file = args
        .cluster_secret_file
        .or_else(|| config.cluster.as_ref().and_then(|cluster| cluster.secret_file().map(Path::to_path_buf)));
    if let Some(path) = secret_file {
        config.cluster_secret = Some(read_secret("--cluster-secret-file", &path)?);
    }
    if let Some(path) = args.password_file {
        config.password = Some(read_secret("--password-file", &path)?);
    }
    config.validate()?;
    Ok(config)
}

/// Reads a secret or password file, warning when others may read it.
fn read_secret(flag: &'static str, path: &Path) -> Result<kv::auth::Secret, ConfigError> {
    let file = kv::auth::Secret::read_file(path).map_err(|error| ConfigError::SecretFile {
        flag,
        path: path.to_path_buf(),
        error: error.to_string(),
    })?;
    if file.readable_by_others {
        log::warn!(
            "{flag} {}: the file is readable by group or others; `chmod 600 {}` keeps the secret yours",
            path.display(),
            path.display()
        );
    }
    Ok(file.secret)
}

/// Overrides `field` with the flag's value, if the flag was given.
fn set<T>(field: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *field = value;
    }
}

/// Loads the cluster file into `config`; returns the address the file gives `node`.
fn load_cluster(config: &mut Config, path: &Path, node: Option<&str>) -> Result<SocketAddr, ConfigError> {
    let Some(node) = node else {
        return Err(ConfigError::ClusterNeedsNode(path.display().to_string()));
    };
    let cluster = Cluster::load(path)?;
    let index = cluster.node_index(node)?;
    let addr = cluster.nodes()[index].addr;
    config.cluster = Some(cluster);
    Ok(addr)
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

/// `kv serve`: runs until a signal or the supervisor gives up.
pub(crate) fn main(args: ServeArgs) -> ExitCode {
    init_logging();
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}

fn serve(args: ServeArgs) -> Result<(), StartError> {
    // Before any thread exists, so that only the signal thread ever sees them.
    kv::signals::block_shutdown_signals()
        .map_err(|error| StartError::Runtime(format!("cannot set up signal handling: {error}")))?;
    kv::sys::fix_malloc_mmap_threshold();
    std::panic::set_hook(Box::new(|info| log::error!("{info}")));
    let config =
        config(args, std::env::var("PORT").ok()).map_err(|error| StartError::Config(error.to_string()))?;
    raise_open_file_limit(config.max_connections);
    let (bind, port) = (config.bind, config.port);
    let server = Server::bind(config).map_err(|error| {
        // Server::bind validates again; a refusal there is still a configuration error.
        match error.get_ref().and_then(|inner| inner.downcast_ref::<ConfigError>()) {
            Some(config_error) => StartError::Config(config_error.to_string()),
            None => StartError::Runtime(format!("cannot start on {bind}:{port}: {error}")),
        }
    })?;
    let handle =
        server.spawn().map_err(|error| StartError::Runtime(format!("cannot start the server: {error}")))?;
    kv::signals::stop_on_signals(handle.stopper())
        .map_err(|error| StartError::Runtime(format!("cannot start the signal thread: {error}")))?;
    match handle.wait() {
        StopReason::Requested => Ok(()),
        StopReason::GaveUp(why) => Err(StartError::Runtime(format!("exiting: {why}"))),
    }
}

/// Raises the open-file limit to fit `max_connections` client connections and the
/// descriptors the server keeps for itself. The library does not touch process limits;
/// if this fails the server fits its connection cap under the limit it finds.
fn raise_open_file_limit(max_connections: usize) {
    let wanted = (max_connections as u64).saturating_add(RESERVED_DESCRIPTORS);
    if let Err(error) = kv::sys::raise_open_file_limit(wanted) {
        log::warn!("cannot raise the open-file limit to {wanted}: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_k_m_and_g_suffixes_and_refuse_the_rest() {
        assert_eq!(parse_bytes("268435456"), Ok(268_435_456));
        assert_eq!(parse_bytes("256M"), Ok(256 << 20));
        assert_eq!(parse_bytes("64k"), Ok(64 << 10));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("0"), Ok(0));
        for bad in ["", "M", "12X", "-1", "1.5G", "99999999999999999999G"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
