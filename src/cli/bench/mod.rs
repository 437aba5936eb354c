//! `kv bench`: a multi-threaded, closed-loop load generator for kv, Redis and memcached.
//!
//! The same load speaks kv's protocol, RESP2 (`SET`/`GET`, or `HSET`/`HGET` on buckets
//! with `--hash`) or memcached's text protocol
//! (`set`/`get`), so one tool measures all three servers the same way (redis-benchmark
//! is single-threaded and would measure itself on a busy host). Every value read back
//! is checked; see `run.rs` for what is counted when.
//!
//! A tool, not part of the server: it lives on the binary side and shares nothing
//! with the server but the wire and the library's client. This file owns the exit
//! status; the parts are
//! - `histogram.rs`: the latency histogram;
//! - `wire.rs`: requests written and replies parsed, per protocol; keys and values;
//! - `args.rs`: the flags, and the check that refuses bad ones;
//! - `run.rs`: the plan and the connection threads;
//! - `login.rs`: `AUTH` on every connection, with `--password-file`;
//! - `report.rs`: the tally and the report printed at the end.

mod args;
mod histogram;
mod login;
mod report;
mod run;
mod wire;

use std::process::ExitCode;

pub(crate) use args::BenchArgs;
use args::check_args;
use report::{json_line, summary};
use run::run;

/// `kv bench`: runs and prints. Exits 2 on bad flags, 1 if the run cannot start or
/// finds any mismatch or error, so scripts notice a wrong answer as well as a slow one.
pub(crate) fn main(args: BenchArgs) -> ExitCode {
    if let Err(error) = check_args(&args) {
        eprintln!("kv bench: {error}");
        return ExitCode::from(2);
    }
    let report = match run(&args) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("kv bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", json_line(&args, &report));
        for sample in &report.tally.samples {
            eprintln!("kv bench: {sample}");
        }
    } else {
        print!("{}", summary(&args, &report));
    }
    if report.tally.mismatches > 0 || report.tally.errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
