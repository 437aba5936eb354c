//! What a run counted, and the report printed at the end: the human summary, with what
//! each verdict means, or one line of JSON for scripts.
//!
//! The connection threads (`run.rs`) fill a [`Tally`] each; they are merged here.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::args::BenchArgs;
use super::histogram::Histogram;

/// Most mismatch and error samples kept for the report.
const MAX_SAMPLES: usize = 10;

/// What the summary says `stale` means; also in `kv bench --help`.
pub(crate) const STALE_MEANS: &str = "stale: a GET sent before any write of its key by this run had been \
     acknowledged found a value other than this run's, left by an earlier run or another client; \
     every write of a key in one run carries the same bytes, so this is not an error";

/// Everything counted by one connection, then by the whole run.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    /// Requests answered inside the measured window.
    pub(crate) ops: u64,
    /// Of those, GETs and writes.
    pub(crate) gets: u64,
    pub(crate) sets: u64,
    /// Verdicts on the measured GETs that got a value or a miss (not on warm-up GETs:
    /// the `verified` line and `gets` count the same window).
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) stale: u64,
    pub(crate) mismatches: u64,
    /// Error replies, broken connections, replies never received, and wrong values
    /// read during warm-up: whatever makes the run fail, warm-up included.
    pub(crate) errors: u64,
    /// Latency of each measured request, in nanoseconds.
    pub(crate) latency: Histogram,
    /// When this connection's last measured reply arrived.
    pub(crate) last_reply: Option<Instant>,
    /// A few mismatches and errors, described.
    pub(crate) samples: Vec<String>,
}

impl Tally {
    /// Keeps `text` if fewer than [`MAX_SAMPLES`] are kept.
    pub(crate) fn sample(&mut self, text: String) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(text);
        }
    }

    /// Adds every count of `other`.
    pub(crate) fn merge(&mut self, other: Tally) {
        self.ops += other.ops;
        self.gets += other.gets;
        self.sets += other.sets;
        self.hits += other.hits;
        self.misses += other.misses;
        self.stale += other.stale;
        self.mismatches += other.mismatches;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
        self.last_reply = self.last_reply.max(other.last_reply);
        for sample in other.samples {
            self.sample(sample);
        }
    }

    /// GETs given a verdict: measured GETs less those answered with an error.
    pub(crate) fn verified(&self) -> u64 {
        self.hits + self.misses + self.stale + self.mismatches
    }
}

/// The result of a run.
#[derive(Debug)]
pub(crate) struct Report {
    /// Totals over all connections.
    pub(crate) tally: Tally,
    /// Length of the measured window: from the end of warm-up to the last reply.
    pub(crate) elapsed: Duration,
    /// The seed the run used.
    pub(crate) seed: u64,
}

impl Report {
    /// Measured requests per second.
    pub(crate) fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.tally.ops as f64 / secs } else { 0.0 }
    }
}

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

/// The one-line JSON summary printed by `--json`.
pub(crate) fn json_line(args: &BenchArgs, report: &Report) -> String {
    let t = &report.tally;
    let h = &t.latency;
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "{{\"proto\":\"{}\",\"hash\":{},\"conns\":{},\"pipeline\":{},\"get_ratio\":{},\"keys\":{},\"value_size\":{},\
         \"buckets\":{},\"seed\":{},\"elapsed_s\":{:.3},\"ops\":{},\"ops_per_sec\":{:.0},\"gets\":{},\
         \"sets\":{},\"hits\":{},\"misses\":{},\"stale\":{},\"mismatches\":{},\"errors\":{},\
         \"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1},\"mean_us\":{:.1}}}",
        args.proto,
        args.hash,
        args.conns,
        args.pipeline,
        args.get_ratio,
        args.keys,
        args.value_size,
        args.buckets,
        report.seed,
        report.elapsed.as_secs_f64(),
        t.ops,
        report.ops_per_sec(),
        t.gets,
        t.sets,
        t.hits,
        t.misses,
        t.stale,
        t.mismatches,
        t.errors,
        micros(h.quantile(0.50)),
        micros(h.quantile(0.99)),
        micros(h.quantile(0.999)),
        micros(h.max()),
        h.mean() / 1000.0,
    );
    s
}

/// The human-readable summary.
pub(crate) fn summary(args: &BenchArgs, report: &Report) -> String {
    let t = &report.tally;
    let h = &t.latency;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "kv bench: {}{} at {}, {} conns x pipeline {}, {:.0}% GET, {} keys, {}-byte values{}",
        args.proto,
        if args.hash { " (HSET/HGET)" } else { "" },
        args.addr,
        args.conns,
        args.pipeline,
        args.get_ratio * 100.0,
        args.keys,
        args.value_size,
        if args.uses_buckets() { format!(", {} buckets", args.buckets) } else { String::new() },
    );
    let _ = writeln!(
        s,
        "measured    {:.2} s after {:.2} s warm-up{}",
        report.elapsed.as_secs_f64(),
        args.warmup,
        if args.fill { " (fill)" } else { "" }
    );
    let _ = writeln!(
        s,
        "throughput  {:.0} ops/s ({} ops: {} GET, {} PUT/SET)",
        report.ops_per_sec(),
        t.ops,
        t.gets,
        t.sets
    );
    let _ = writeln!(
        s,
        "latency     p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us  mean {:.1} us",
        micros(h.quantile(0.50)),
        micros(h.quantile(0.99)),
        micros(h.quantile(0.999)),
        micros(h.max()),
        h.mean() / 1000.0
    );
    s.push_str(&verified_lines(t));
    s
}

/// The `verified` line, what `stale` means, and the samples of what went wrong.
fn verified_lines(t: &Tally) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "verified    {} measured GETs: {} hits, {} misses, {} stale, {} mismatches; {} errors",
        t.verified(),
        t.hits,
        t.misses,
        t.stale,
        t.mismatches,
        t.errors
    );
    let _ = writeln!(s, "            ({STALE_MEANS})");
    for sample in &t.samples {
        let _ = writeln!(s, "  {sample}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::args::tests::args;

    #[test]
    fn the_summary_says_what_stale_means() {
        let report =
            Report { tally: Tally { stale: 2, ..Tally::default() }, elapsed: Duration::ZERO, seed: 1 };
        let text = summary(&args(), &report);
        assert!(text.contains("2 stale"), "{text}");
        assert!(text.contains("stale: a GET sent before any write of its key by this run"), "{text}");
    }
}
