//! Everything a server is started with: [`Config`], its defaults (written here once),
//! and [`ConfigError`], why a configuration is refused.
//!
//! The binary builds a `Config` from its flags on top of [`Config::default`]; tests and
//! benchmarks build one directly. [`Config::validate`] is the one place that decides
//! what is acceptable, so the flags, the tests and `Server::bind` cannot disagree.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::thread;
use std::time::Duration;

use std::path::PathBuf;

use crate::auth::{MIN_SECRET_LEN, Secret};
use crate::persist::FsyncPolicy;
use crate::protocol::{DEFAULT_MAX_LINE, MAX_MAX_LINE};
use crate::router::{Cluster, ClusterError};

/// Default port, the guide's.
pub const DEFAULT_PORT: u16 = 4040;

/// Default cap on open client connections.
///
/// Each connection is a thread with a small stack, so 10,000 fit a small host's
/// memory while staying under common `ulimit -n` and thread limits.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default most bytes of events a subscriber may have unwritten before it is dropped.
///
/// 8 MiB holds over 100,000 typical events: room for a slow reader to catch up after
/// a burst, while a stuck one cannot pin more than that.
pub const DEFAULT_SUBSCRIBER_BACKLOG: usize = 8 * 1024 * 1024;

/// Default most restarts within the window (Elixir's default `max_restarts`).
pub const DEFAULT_MAX_RESTARTS: u32 = 3;

/// Default window for counting restarts, in seconds (Elixir's `max_seconds`).
pub const DEFAULT_MAX_SECONDS: u64 = 5;

/// Default node name, reported by STATS when there is no cluster file.
pub const DEFAULT_NODE: &str = "kv";

/// Largest value the RESP door takes (`--max-value`): 1 MiB, memcached's item size.
/// A RESP connection holds up to a few of these while it reads a command.
pub const DEFAULT_MAX_VALUE: usize = 1024 * 1024;

/// Largest `--max-value` accepted: past it one client could make a connection hold
/// gigabytes, and the node-to-node frames' lengths stay far from `u32::MAX`.
pub const MAX_MAX_VALUE: usize = 512 * 1024 * 1024;

/// The bucket the RESP door keeps plain strings in (`SET`, `GET`, `MGET`, ...):
/// `--resp-bucket`. It lives on whichever node owns that name.
pub const DEFAULT_RESP_BUCKET: &str = "strings";

/// Stack size of a connection thread (and of the peer prober threads).
///
/// Threads default to 2 MiB of address space each; 10,000 idle connections reserve
/// 640 MiB with this size instead of 20 GiB (only touched pages are resident: two
/// pages per idle connection, whatever this size). Under strict overcommit
/// (`vm.overcommit_memory = 2`) the reservation is charged in full, so it matters.
///
/// Measured (debug build, the whole `cargo test` suite): the kv binary's deepest path,
/// a `DEBUG CRASH-CONNECTION` panic logged by its panic hook with `RUST_LOG=debug`
/// plus STATS, a too-long line and a 60 KiB value, passes at 16 KiB, the least Rust
/// gives a thread. The deepest path of an in-process server is a panic hook that
/// captures and symbolizes a backtrace (Rust's default hook under
/// `RUST_BACKTRACE=1`, `tests/connection_stack.rs`): it overflows at 28 KiB and passes
/// at 32 KiB. Twice that, for code and hooks that grow.
pub const CONNECTION_STACK_SIZE: usize = 64 * 1024;

/// Default bound on opening a connection to a peer (`--peer-connect-timeout`).
///
/// One second is many round trips even between data centres, and short enough that a
/// client waiting on a peer that silently drops packets is answered soon.
pub const DEFAULT_PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Default bound on one forwarded read's round trip (`--peer-timeout`): from sending the
/// requests to having every reply. Five seconds, the guide's `Task.await` default.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Default cap on the probe backoff (`--peer-backoff-max`): a peer back after a long
/// outage is noticed within about this long.
pub const DEFAULT_PEER_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Default bound on open connections to one peer (`--peer-connections`).
///
/// A connection carries one pipelined exchange at a time, so this is how many client
/// connections can wait on one peer at once; more only adds threads on the peer. When all
/// are busy a client waits for one (within its request timeout) instead of opening more.
pub const DEFAULT_PEER_CONNECTIONS: usize = 32;

/// Default size a partition's log may reach before it is compacted, if that is also
/// more than twice its live data: Redis's `auto-aof-rewrite-min-size` is 64 MiB too.
pub const DEFAULT_COMPACT_MIN_BYTES: u64 = 64 * 1024 * 1024;
/// Default `--shutdown-grace`: how long a stopping server gives each client to read
/// the replies to what it had sent, before closing its connection anyway.
///
/// Ten seconds: a client that is reading drains megabytes in that time, and a service
/// manager's stop timeout (systemd's default is 90 s) is far longer.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Longest any configured timeout may be: longer is a typo, and deadlines computed
/// from it must not overflow.
pub const LONGEST_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

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
            connect_timeout: DEFAULT_PEER_CONNECT_TIMEOUT,
            timeout: DEFAULT_PEER_TIMEOUT,
            max_backoff: DEFAULT_PEER_BACKOFF_MAX,
            connections: DEFAULT_PEER_CONNECTIONS,
        }
    }
}

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
    /// Where to keep the data; `None` keeps it in memory only.
    pub data_dir: Option<PathBuf>,
    /// When logged changes are synced to disk.
    pub fsync: FsyncPolicy,
    /// Start even if a log is damaged, keeping what precedes the damage.
    pub repair: bool,
    /// A partition's log is compacted past this size (and twice its live data).
    pub compact_min_bytes: u64,
    /// Most bytes the store may hold, as it counts them (`None`: no limit).
    pub max_memory: Option<usize>,
    /// How long shutdown waits for clients to read their replies.
    pub shutdown_grace: Duration,
    /// The cluster secret nodes prove to each other (`--cluster-secret-file`, or the
    /// cluster file's `secret-file` line); `None`: the version-1 handshake, unproven.
    pub cluster_secret: Option<Secret>,
    /// The password clients must `AUTH` with (`--password-file`); `None`: none.
    pub password: Option<Secret>,
    /// Protected mode (`--protected-mode`): listening on a non-loopback address without
    /// a password, serve loopback clients only.
    pub protected_mode: bool,
    /// The RESP door's port (`--resp-port`); `None`: no RESP door. 0 picks a free one.
    pub resp_port: Option<u16>,
    /// Where the RESP door keeps plain strings (`--resp-bucket`).
    pub resp_bucket: Vec<u8>,
    /// Largest value, in bytes, the RESP door takes (`--max-value`).
    pub max_value: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            workers: default_workers(),
            max_line: DEFAULT_MAX_LINE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            node: DEFAULT_NODE.to_string(),
            cluster: None,
            peer: PeerConfig::default(),
            idle_timeout: None,
            subscriber_backlog: DEFAULT_SUBSCRIBER_BACKLOG,
            debug: false,
            max_restarts: DEFAULT_MAX_RESTARTS,
            max_seconds: DEFAULT_MAX_SECONDS,
            data_dir: None,
            fsync: FsyncPolicy::default(),
            repair: false,
            compact_min_bytes: DEFAULT_COMPACT_MIN_BYTES,
            max_memory: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            cluster_secret: None,
            password: None,
            protected_mode: true,
            resp_port: None,
            resp_bucket: DEFAULT_RESP_BUCKET.as_bytes().to_vec(),
            max_value: DEFAULT_MAX_VALUE,
        }
    }
}

/// One worker per core: workers do little besides taking channel messages, so more
/// would only add context switches.
pub fn default_workers() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// The core count, found once: finding it reads cgroup files, too slow for a hot path.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(default_workers)
}

/// True for a node name: lowercase ASCII letters, digits and `_`, so that it reads as
/// one word in STATS names and error lines.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Config {
    /// The largest value a read may return: a text `PUT` stores up to `--max-line`
    /// bytes, the RESP door (here or at a node forwarding to this one) up to
    /// `--max-value`.
    pub fn largest_value(&self) -> usize {
        self.max_line.max(self.max_value)
    }

    /// Checks every setting; the first one wrong is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least_one = [
            ("--workers", self.workers),
            ("--max-line", self.max_line),
            ("--max-connections", self.max_connections),
            ("--peer-connections", self.peer.connections),
            ("--subscriber-backlog", self.subscriber_backlog),
            ("--compact-min-bytes", usize::try_from(self.compact_min_bytes).unwrap_or(usize::MAX)),
            ("--max-memory", self.max_memory.unwrap_or(1)),
            ("--max-value", self.max_value),
            ("--resp-bucket", self.resp_bucket.len()),
        ];
        if let Some((flag, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Zero(flag));
        }
        if self.max_line > MAX_MAX_LINE {
            return Err(ConfigError::MaxLineTooLarge(self.max_line));
        }
        if self.max_value > MAX_MAX_VALUE {
            return Err(ConfigError::MaxValueTooLarge(self.max_value));
        }
        if !is_node_name(&self.node) {
            return Err(ConfigError::BadNodeName(self.node.clone()));
        }
        let timeouts = [
            ("--peer-connect-timeout", Some(self.peer.connect_timeout)),
            ("--peer-timeout", Some(self.peer.timeout)),
            ("--peer-backoff-max", Some(self.peer.max_backoff)),
            ("--idle-timeout", self.idle_timeout),
            ("--shutdown-grace", Some(self.shutdown_grace)),
        ];
        for (flag, timeout) in timeouts {
            if let Some(timeout) = timeout.filter(|t| t.is_zero() || *t > LONGEST_TIMEOUT) {
                return Err(ConfigError::BadTimeout { flag, timeout });
            }
        }
        if self.repair && self.data_dir.is_none() {
            return Err(ConfigError::RepairWithoutDataDir);
        }
        if let Some(cluster) = &self.cluster {
            cluster.node_index(&self.node).map_err(ConfigError::Cluster)?;
        }
        self.validate_auth()
    }

    /// The issue-14 settings: a secret long enough, a password not empty, and no
    /// password in a cluster whose nodes cannot prove who they are.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        if let Some(secret) = self.cluster_secret.as_ref().filter(|s| s.len() < MIN_SECRET_LEN) {
            return Err(ConfigError::SecretTooShort(secret.len()));
        }
        if self.password.as_ref().is_some_and(Secret::is_empty) {
            return Err(ConfigError::EmptyPassword);
        }
        let has_peers = self.cluster.as_ref().is_some_and(|cluster| cluster.nodes().len() > 1);
        if self.password.is_some() && has_peers && self.cluster_secret.is_none() {
            return Err(ConfigError::PasswordNeedsSecret);
        }
        Ok(())
    }
}

/// Why a configuration was refused. Its `Display` is the message `kv serve` prints
/// before exiting with status 2.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting that must be at least 1 is 0; the flag that sets it.
    Zero(&'static str),
    /// `--max-line` is over [`MAX_MAX_LINE`].
    MaxLineTooLarge(usize),
    /// `--max-value` is over [`MAX_MAX_VALUE`].
    MaxValueTooLarge(usize),
    /// `--node` is not a node name.
    BadNodeName(String),
    /// A timeout is zero or longer than a day.
    BadTimeout { flag: &'static str, timeout: Duration },
    /// `--cluster` without `--node`.
    ClusterNeedsNode(String),
    /// The cluster file is wrong, or does not describe `--node`.
    Cluster(ClusterError),
    /// The `PORT` environment variable is not a port.
    BadPortVariable(String),
    /// `--repair` without `--data-dir`.
    RepairWithoutDataDir,
    /// The cluster secret has fewer than [`MIN_SECRET_LEN`] bytes.
    SecretTooShort(usize),
    /// The password file holds nothing but whitespace.
    EmptyPassword,
    /// A password in a cluster without a secret: a client could skip `AUTH` by
    /// claiming to be a node with the unproven version-1 handshake.
    PasswordNeedsSecret,
    /// A secret or password file could not be read: its flag, path and the error.
    SecretFile { flag: &'static str, path: PathBuf, error: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Zero(flag) => write!(f, "{flag} must be at least 1"),
            ConfigError::MaxLineTooLarge(max) => {
                write!(f, "--max-line {max} is too large: at most {MAX_MAX_LINE} (1 GiB)")
            }
            ConfigError::MaxValueTooLarge(max) => {
                write!(f, "--max-value {max} is too large: at most {MAX_MAX_VALUE} (512 MiB)")
            }
            ConfigError::BadNodeName(name) => {
                write!(f, "--node {name:?}: use lowercase ASCII letters, digits and '_'")
            }
            ConfigError::BadTimeout { flag, timeout } => {
                write!(f, "{flag} {timeout:?}: expected more than 0 and at most a day")
            }
            ConfigError::ClusterNeedsNode(file) => {
                write!(f, "--cluster needs --node NAME: which node of {file} this is")
            }
            ConfigError::Cluster(error) => write!(f, "{error}"),
            ConfigError::BadPortVariable(text) => write!(f, "PORT must be a port number, not {text:?}"),
            ConfigError::RepairWithoutDataDir => {
                f.write_str("--repair needs --data-dir: there is nothing to repair")
            }
            ConfigError::SecretTooShort(len) => write!(
                f,
                "the cluster secret has {len} bytes, fewer than {MIN_SECRET_LEN}: make one with \
                 `head -c 32 /dev/urandom | base64 > secret`"
            ),
            ConfigError::EmptyPassword => f.write_str("--password-file: the file holds no password"),
            ConfigError::PasswordNeedsSecret => f.write_str(
                "--password-file in a cluster needs a cluster secret (--cluster-secret-file or a \
                 `secret-file` line): without one any client could claim to be a node and skip AUTH",
            ),
            ConfigError::SecretFile { flag, path, error } => {
                write!(f, "{flag} {}: cannot read it: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ClusterError> for ConfigError {
    fn from(error: ClusterError) -> Self {
        ConfigError::Cluster(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: Vec<(Config, &str)> = vec![
            (Config { workers: 0, ..Config::default() }, "--workers must be at least 1"),
            (Config { max_line: 0, ..Config::default() }, "--max-line must be at least 1"),
            (
                Config { max_line: MAX_MAX_LINE + 1, ..Config::default() },
                "--max-line 1073741825 is too large",
            ),
            (Config { node: "Foo".into(), ..Config::default() }, "--node \"Foo\""),
            (
                Config { idle_timeout: Some(Duration::ZERO), ..Config::default() },
                "--idle-timeout 0ns: expected more than 0",
            ),
            (
                Config {
                    peer: PeerConfig { timeout: Duration::from_secs(u64::MAX), ..PeerConfig::default() },
                    ..Config::default()
                },
                "--peer-timeout",
            ),
            (Config { max_memory: Some(0), ..Config::default() }, "--max-memory must be at least 1"),
            (
                Config { shutdown_grace: Duration::ZERO, ..Config::default() },
                "--shutdown-grace 0ns: expected more than 0",
            ),
            (
                Config { cluster_secret: Some(Secret::new(b"short")), ..Config::default() },
                "the cluster secret has 5 bytes",
            ),
            (
                Config { password: Some(Secret::new(b" \n")), ..Config::default() },
                "--password-file: the file",
            ),
            (
                Config {
                    password: Some(Secret::new(b"pw")),
                    cluster: Some(
                        Cluster::parse("c.conf", "a 127.0.0.1:1 a-m\nb 127.0.0.1:2 n-z\n").unwrap(),
                    ),
                    node: "a".into(),
                    ..Config::default()
                },
                "--password-file in a cluster needs a cluster secret",
            ),
        ];
        for (config, message) in cases {
            let error = config.validate().expect_err(message).to_string();
            assert!(error.starts_with(message), "{error:?} should start with {message:?}");
        }
    }

    #[test]
    fn a_node_the_cluster_file_does_not_name_is_refused() {
        let cluster = Cluster::parse("c.conf", "a 127.0.0.1:1 a-m\nb 127.0.0.1:2 n-z\n").unwrap();
        let config = Config { cluster: Some(cluster), node: "c".into(), ..Config::default() };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("c.conf"), "{error}");
    }
}
