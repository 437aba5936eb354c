//! The `kv` binary: argument parsing and nothing else. `kv` alone is `kv serve`;
//! `kv bench` lives in `bench.rs`.

use std::io::{self, BufRead, Write};
use std::net::IpAddr;
use std::process::ExitCode;

use argh::FromArgs;

use kv::StopReason;
use kv::client::{Client, ReplyShape};
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

/// Run the server (the default).
#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
struct ServeArgs {
    /// address to listen on (default 127.0.0.1; use 0.0.0.0 to accept remote clients)
    #[argh(option, default = "IpAddr::from([127, 0, 0, 1])")]
    bind: IpAddr,
    /// port to listen on (default: the PORT environment variable, else 4040; 0 picks a free port)
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
            bind: IpAddr::from([127, 0, 0, 1]),
            port: None,
            workers: None,
            max_line: kv::protocol::DEFAULT_MAX_LINE,
            max_connections: server::DEFAULT_MAX_CONNECTIONS,
            idle_timeout: 0,
            subscriber_backlog: kv::subscribe::DEFAULT_SUBSCRIBER_BACKLOG,
            max_restarts: kv::supervisor::DEFAULT_MAX_RESTARTS,
            max_seconds: kv::supervisor::DEFAULT_MAX_SECONDS,
            debug: false,
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
    let port = match args.port {
        Some(port) => port,
        None => match std::env::var("PORT") {
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
    if args.max_line == 0 || args.max_connections == 0 {
        log::error!("--max-line and --max-connections must be at least 1");
        return ExitCode::from(2);
    }
    let config = Config {
        bind: args.bind,
        port,
        workers: args.workers.unwrap_or_else(server::default_workers),
        max_line: args.max_line,
        max_connections: args.max_connections,
        debug: args.debug,
        subscriber_backlog: args.subscriber_backlog,
        idle_timeout: (args.idle_timeout > 0).then(|| std::time::Duration::from_secs(args.idle_timeout)),
        max_restarts: args.max_restarts,
        max_seconds: args.max_seconds,
        ..Config::default()
    };
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(error) => {
            log::error!("cannot start on {}:{port}: {error}", args.bind);
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
