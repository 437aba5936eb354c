//! The `kv` binary: argument parsing and nothing else. `kv` alone is `kv serve`;
//! `kv bench` lives in `bench.rs`.

use std::io::{self, BufRead, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;

use kv::StopReason;
use kv::client::{Client, ReplyShape};
use kv::peer::{self, PeerConfig};
use kv::router::Cluster;
use kv::server::{self, Config, Server};

/// kv: a distributed key-value server with the text protocol of Elixir's Mix and OTP
/// guide. Without a subcommand, serves with default settings.
#[derive(FromArgs)]
struct Args {
    #[argh(subcommand)]
    command: Option<Subcommand>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Subcommand {
    Serve(ServeArgs),
    Cli(CliArgs),
    Top(TopArgs),
    Bench(kv::bench::BenchArgs),
}

/// Watch nodes live: connections, commands per second, worker queues and restarts,
/// peers and subscribers, redrawn every interval.
#[derive(FromArgs)]
#[argh(subcommand, name = "top")]
struct TopArgs {
    /// a node to watch; repeat for several (default 127.0.0.1:4040)
    #[argh(option)]
    addr: Vec<String>,
    /// seconds between frames (default 1)
    #[argh(option, default = "1.0")]
    interval: f64,
    /// print one frame (two samples one interval apart, for rates) and exit
    #[argh(switch)]
    once: bool,
}

/// Run the server (the default). With --cluster FILE --node NAME it runs as node NAME of
/// the cluster that FILE describes, listening on that node's address from the file
/// unless --bind or --port say otherwise.
#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
struct ServeArgs {
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
    /// longest request line in bytes; longer lines get "ERROR line too long" (default 65536)
    #[argh(option, default = "kv::protocol::DEFAULT_MAX_LINE")]
    max_line: usize,
    /// most client connections open at once; one more gets "ERROR too many connections" (default 10000)
    #[argh(option, default = "server::DEFAULT_MAX_CONNECTIONS")]
    max_connections: usize,
    /// close a connection that sends no complete request for this many seconds; 0 = never
    /// (default 0, as in Redis and memcached)
    #[argh(option, default = "0")]
    idle_timeout: u64,
    /// most bytes of events a SUBSCRIBE connection may leave unread before it is dropped
    /// (default 8388608, 8 MiB)
    #[argh(option, default = "kv::subscribe::DEFAULT_SUBSCRIBER_BACKLOG")]
    subscriber_backlog: usize,
    /// restart intensity: if workers crash more than this many times within --max-seconds, the
    /// server gives up and exits with status 1 (default 3)
    #[argh(option, default = "kv::supervisor::DEFAULT_MAX_RESTARTS")]
    max_restarts: u32,
    /// the window, in seconds, for --max-restarts (default 5)
    #[argh(option, default = "kv::supervisor::DEFAULT_MAX_SECONDS")]
    max_seconds: u64,
    /// enable fault injection: DEBUG CRASH <bucket> panics the worker owning <bucket>,
    /// DEBUG CRASH-CONNECTION panics the connection's thread (never in production)
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
    /// seconds to wait for a peer node's replies before answering "ERROR peer <name>
    /// unavailable" (default 5)
    #[argh(option, from_str_fn(parse_seconds))]
    peer_timeout: Option<Duration>,
    /// longest wait in seconds between probes of a peer node that is down (default 5)
    #[argh(option, from_str_fn(parse_seconds))]
    peer_backoff_max: Option<Duration>,
    /// most connections open to one peer node at once (default 32)
    #[argh(option)]
    peer_connections: Option<usize>,
}

/// Parses a positive number of seconds, such as `1` or `0.25`.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    // A day bounds every timeout: longer is a typo, and deadlines computed from it
    // must not overflow.
    const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);
    match text.parse::<f64>().ok().and_then(|secs| Duration::try_from_secs_f64(secs).ok()) {
        Some(duration) if !duration.is_zero() && duration <= LONGEST => Ok(duration),
        _ => Err(format!("expected a positive number of seconds, at most a day, not {text:?}")),
    }
}

/// Send commands to a server and print the replies: the words given as one command,
/// or else one command per line of standard input.
#[derive(FromArgs)]
#[argh(subcommand, name = "cli")]
struct CliArgs {
    /// server address (default 127.0.0.1:4040)
    #[argh(option, default = "String::from(\"127.0.0.1:4040\")")]
    addr: String,
    /// the command to send, e.g. `PUT shopping eggs 3`; none: read commands from stdin
    #[argh(positional, greedy)]
    words: Vec<String>,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    match args.command {
        None => serve(ServeArgs {
            bind: None,
            port: None,
            workers: None,
            max_line: kv::protocol::DEFAULT_MAX_LINE,
            max_connections: server::DEFAULT_MAX_CONNECTIONS,
            idle_timeout: 0,
            subscriber_backlog: kv::subscribe::DEFAULT_SUBSCRIBER_BACKLOG,
            max_restarts: kv::supervisor::DEFAULT_MAX_RESTARTS,
            max_seconds: kv::supervisor::DEFAULT_MAX_SECONDS,
            debug: false,
            cluster: None,
            node: None,
            peer_connect_timeout: None,
            peer_timeout: None,
            peer_backoff_max: None,
            peer_connections: None,
        }),
        Some(Subcommand::Serve(serve_args)) => serve(serve_args),
        Some(Subcommand::Cli(cli_args)) => cli(cli_args),
        Some(Subcommand::Top(top_args)) => top(top_args),
        Some(Subcommand::Bench(bench_args)) => kv::bench::main(bench_args),
    }
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging();
    // Before any thread exists, so that only the signal thread ever sees them.
    if let Err(error) = kv::signals::block_shutdown_signals() {
        log::error!("cannot set up signal handling: {error}");
        return ExitCode::FAILURE;
    }
    std::panic::set_hook(Box::new(|info| log::error!("{info}")));
    // With a cluster file, this node's entry says where to listen; --bind and --port
    // override its halves (say, 0.0.0.0 to listen on every interface at the file's port).
    let mut cluster = None;
    let mut node = args.node.clone().unwrap_or_else(|| Config::default().node);
    // STATS reports the name as one word; the cluster file holds names to the same rule.
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        log::error!("--node {node:?}: use lowercase ASCII letters, digits and '_'");
        return ExitCode::from(2);
    }
    let mut listen = None;
    if let Some(path) = &args.cluster {
        let Some(name) = &args.node else {
            log::error!("--cluster needs --node NAME: which node of {} this is", path.display());
            return ExitCode::from(2);
        };
        let loaded = Cluster::load(path).and_then(|c| c.node_index(name).map(|index| (c, index)));
        match loaded {
            Ok((loaded, index)) => {
                listen = Some(loaded.nodes()[index].addr);
                node = name.clone();
                cluster = Some(loaded);
            }
            Err(error) => {
                log::error!("{error}");
                return ExitCode::from(2);
            }
        }
    }
    let bind = args.bind.or(listen.map(|addr| addr.ip())).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let port = match (args.port, listen) {
        (Some(port), _) => port,
        (None, Some(addr)) => addr.port(),
        (None, None) => match std::env::var("PORT") {
            Ok(text) => match text.trim().parse() {
                Ok(port) => port,
                Err(_) => {
                    log::error!("PORT must be a port number, not {text:?}");
                    return ExitCode::from(2);
                }
            },
            Err(_) => server::DEFAULT_PORT,
        },
    };
    if args.max_line == 0 || args.max_connections == 0 || args.peer_connections == Some(0) {
        log::error!("--max-line, --max-connections and --peer-connections must be at least 1");
        return ExitCode::from(2);
    }
    if args.max_line > kv::protocol::MAX_MAX_LINE {
        log::error!("--max-line must be at most {} (1 GiB)", kv::protocol::MAX_MAX_LINE);
        return ExitCode::from(2);
    }
    let peer = PeerConfig {
        connect_timeout: args.peer_connect_timeout.unwrap_or(peer::DEFAULT_CONNECT_TIMEOUT),
        timeout: args.peer_timeout.unwrap_or(peer::DEFAULT_TIMEOUT),
        max_backoff: args.peer_backoff_max.unwrap_or(peer::DEFAULT_MAX_BACKOFF),
        connections: args.peer_connections.unwrap_or(peer::DEFAULT_CONNECTIONS_PER_PEER),
    };
    let config = Config {
        bind,
        port,
        workers: args.workers.unwrap_or_else(server::default_workers),
        max_line: args.max_line,
        max_connections: args.max_connections,
        debug: args.debug,
        subscriber_backlog: args.subscriber_backlog,
        idle_timeout: (args.idle_timeout > 0).then(|| std::time::Duration::from_secs(args.idle_timeout)),
        max_restarts: args.max_restarts,
        max_seconds: args.max_seconds,
        node,
        cluster,
        peer,
    };
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(error) => {
            log::error!("cannot start on {bind}:{port}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let handle = match server.spawn() {
        Ok(handle) => handle,
        Err(error) => {
            log::error!("cannot start the server: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = kv::signals::stop_on_signals(handle.stopper()) {
        log::error!("cannot start the signal thread: {error}");
        return ExitCode::FAILURE;
    }
    match handle.wait() {
        StopReason::Requested => ExitCode::SUCCESS,
        StopReason::GaveUp(why) => {
            log::error!("exiting: {why}");
            ExitCode::FAILURE
        }
    }
}

fn cli(args: CliArgs) -> ExitCode {
    let mut client = match Client::connect(&args.addr) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("kv cli: cannot connect to {}: {error}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let stdout = io::stdout();
    let mut stdout = stdout.lock();
    if !args.words.is_empty() {
        let line = args.words.join(" ");
        return match client.request(line.as_bytes()) {
            Ok(reply) => {
                print_reply(&mut stdout, &reply);
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("kv cli: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let stdin = io::stdin();
    let mut stdin = stdin.lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(error) => {
                eprintln!("kv cli: reading stdin: {error}");
                return ExitCode::FAILURE;
            }
        }
        let request = line.strip_suffix(b"\n").unwrap_or(&line);
        let request = request.strip_suffix(b"\r").unwrap_or(request);
        let shape = ReplyShape::of(request);
        let mut reply = Vec::new();
        let sent = client.send_raw(&[request, b"\r\n"].concat());
        if let Err(error) = sent.and_then(|()| client.read_reply(shape, &mut reply)) {
            eprintln!("kv cli: {error}");
            return ExitCode::FAILURE;
        }
        print_reply(&mut stdout, &reply);
        if kv::protocol::parse(request) == kv::protocol::Command::Quit {
            return ExitCode::SUCCESS;
        }
    }
}

fn top(args: TopArgs) -> ExitCode {
    let addrs = if args.addr.is_empty() { vec!["127.0.0.1:4040".to_string()] } else { args.addr };
    if !(args.interval.is_finite() && args.interval > 0.0 && args.interval <= 3600.0) {
        eprintln!("kv top: --interval must be between 0 and 3600 seconds");
        return ExitCode::from(2);
    }
    let interval = std::time::Duration::from_secs_f64(args.interval);
    match kv::top::run(&addrs, interval, args.once, &mut io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        // The terminal went away (for example `kv top | head`): not an error.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kv top: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a raw reply with `\n` line ends, as a terminal expects.
fn print_reply(out: &mut impl Write, reply: &[u8]) {
    let text: Vec<u8> = reply.iter().copied().filter(|&b| b != b'\r').collect();
    let _ = out.write_all(&text);
    let _ = out.flush();
}
