//! The `kv` binary: argument parsing and nothing else. `kv` alone is `kv serve`, and
//! `kv --port 4043` is `kv serve --port 4043`; each subcommand lives in `cli/`.

mod cli;

use std::process::ExitCode;

use argh::{FromArgs, TopLevelCommand};

/// kv: a distributed key-value server with the text protocol of Elixir's Mix and OTP
/// guide. Without a subcommand, serves: `kv --port 4043` is `kv serve --port 4043`.
#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help", "help"))]
struct Args {
    #[argh(subcommand)]
    command: Subcommand,
}

// Parsed once at start and moved once: the size of `serve`'s flags costs nothing, and
// argh cannot take a boxed subcommand.
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs)]
#[argh(subcommand)]
enum Subcommand {
    Serve(cli::serve::ServeArgs),
    Cli(cli::client::CliArgs),
    Top(cli::top::TopArgs),
    Bench(cli::bench::BenchArgs),
}

/// Exit status for bad usage: a flag argh or the configuration refuses.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = match std::env::args_os().skip(1).map(|arg| arg.into_string()).collect() {
        Ok(args) => args,
        Err(arg) => {
            eprintln!("kv: an argument is not UTF-8: {}", arg.to_string_lossy());
            return ExitCode::from(USAGE);
        }
    };
    if cli::asks_for_version(&args) {
        println!("kv {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let args = cli::with_default_command(&args);
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match parse(&words) {
        Ok(Args { command: Subcommand::Serve(args) }) => cli::serve::main(args),
        Ok(Args { command: Subcommand::Cli(args) }) => cli::client::main(args),
        Ok(Args { command: Subcommand::Top(args) }) => cli::top::main(args),
        Ok(Args { command: Subcommand::Bench(args) }) => cli::bench::main(args),
        Err(code) => code,
    }
}

/// Parses the arguments; help goes to stdout with status 0, a usage error to stderr
/// with status 2.
fn parse<T: TopLevelCommand>(words: &[&str]) -> Result<T, ExitCode> {
    T::from_args(&["kv"], words).map_err(|early_exit| match early_exit.status {
        Ok(()) => {
            println!("{}", early_exit.output);
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprintln!("kv: {}\nRun kv --help for more information.", early_exit.output.trim_end());
            ExitCode::from(USAGE)
        }
    })
}
