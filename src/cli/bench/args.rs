//! `kv bench`'s flags and their check: what a run is asked to do.
//!
//! Kept apart from the run so that the report and the run both read the flags without
//! reading each other; `check_args` is the one place a bad flag is refused (exit 2).

use std::fmt;
use std::path::PathBuf;

use argh::FromArgs;

use super::wire::Proto;

/// Run a closed-loop load against a kv, Redis or memcached server and report
/// throughput, latency percentiles and read-back errors. Each connection has its own
/// thread; every value read back is verified.
#[derive(FromArgs, Debug, Clone)]
#[argh(
    subcommand,
    name = "bench",
    help_triggers("-h", "--help", "help"),
    note = "Every GET's value is checked. Values are derived from the key and a per-run seed, so \
            every write of a key in one run writes the same bytes. hits: the GET found this run's \
            value. misses: it found nothing, and no write of the key by this run had been \
            acknowledged when it was sent. stale: it found another value, and no write of the key \
            by this run had been acknowledged when it was sent (a value left by an earlier run or \
            another client; not an error). mismatches: anything else, an error. Only GETs sent \
            after --warmup are counted; a mismatch during warm-up still counts as an error."
)]
pub(crate) struct BenchArgs {
    /// server address (default 127.0.0.1:4040)
    #[argh(option, default = "String::from(\"127.0.0.1:4040\")")]
    pub(crate) addr: String,
    /// wire protocol: kv (also `text`: kv's text door), redis (RESP2 SET/GET, or
    /// HSET/HGET with --hash; a Redis server or kv's RESP door) or memcached (text
    /// set/get) (default kv)
    #[argh(option, default = "Proto::Kv")]
    pub(crate) proto: Proto,
    /// redis only: HSET/HGET on the --buckets buckets instead of SET/GET on plain
    /// keys. On kv's RESP door this is the text door's load (buckets spread over the
    /// workers); SET/GET keys all live in one bucket (`kv serve --resp-bucket`), so
    /// on one worker
    #[argh(switch)]
    pub(crate) hash: bool,
    /// connections, each driven by its own thread (default 8)
    #[argh(option, default = "8")]
    pub(crate) conns: usize,
    /// requests in flight per connection: each round writes this many, then reads
    /// every reply (default 1)
    #[argh(option, default = "1")]
    pub(crate) pipeline: usize,
    /// hard bound on the run after warm-up, in seconds, fractions allowed (default 10)
    #[argh(option, default = "10.0")]
    pub(crate) duration: f64,
    /// seconds of load before measuring starts; requests sent during it are not
    /// counted (default 0)
    #[argh(option, default = "0.0")]
    pub(crate) warmup: f64,
    /// stop after this many requests over all connections, warm-up included
    /// (default: no cap, run for --duration)
    #[argh(option)]
    pub(crate) requests: Option<u64>,
    /// number of distinct keys, each request picking one uniformly (default 100000)
    #[argh(option, default = "100_000")]
    pub(crate) keys: u64,
    /// bytes per value (default 32)
    #[argh(option, default = "32")]
    pub(crate) value_size: usize,
    /// fraction of requests that are GETs, 0 to 1; the rest are PUT/SET (default 0.5)
    #[argh(option, default = "0.5")]
    pub(crate) get_ratio: f64,
    /// kv and redis --hash: buckets the keys are spread over (kv: created before the
    /// run; HSET creates its own) (default 16)
    #[argh(option, default = "16")]
    pub(crate) buckets: usize,
    /// kv and redis --hash: bucket names are this prefix and a number, `b0`, `b1`, ... by
    /// default; in a cluster, a prefix another node owns measures forwarding
    #[argh(option, default = "String::from(\"b\")")]
    pub(crate) bucket_prefix: String,
    /// write every key once, in key order, then stop (fills a server before a run;
    /// ignores --get-ratio and --requests, still bounded by --duration)
    #[argh(switch)]
    pub(crate) fill: bool,
    /// seed for key choice and values (default: from the clock, so values differ
    /// between runs)
    #[argh(option)]
    pub(crate) seed: Option<u64>,
    /// print one line of JSON instead of the human-readable summary, for scripts
    #[argh(switch)]
    pub(crate) json: bool,
    /// a file holding the server's password (`kv serve --password-file`, or Redis's
    /// requirepass): every connection sends AUTH with it first
    #[argh(option)]
    pub(crate) password_file: Option<PathBuf>,
}

/// Why a run could not start.
#[derive(Debug)]
pub(crate) struct BenchError(pub(crate) String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

/// Checks the flags before anything connects; an error is bad usage.
pub(crate) fn check_args(args: &BenchArgs) -> Result<(), BenchError> {
    let fail = |text: &str| Err(BenchError(text.to_string()));
    if args.conns == 0 || args.pipeline == 0 {
        return fail("--conns and --pipeline must be at least 1");
    }
    if args.keys == 0 {
        return fail("--keys must be at least 1");
    }
    if args.value_size == 0 {
        return fail("--value-size must be at least 1 (kv cannot store an empty value)");
    }
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 86_400.0) {
        return fail("--duration must be more than 0 and at most 86400 seconds");
    }
    if !(args.warmup.is_finite() && args.warmup >= 0.0 && args.warmup <= 86_400.0) {
        return fail("--warmup must be 0 to 86400 seconds");
    }
    if !(0.0..=1.0).contains(&args.get_ratio) {
        return fail("--get-ratio must be between 0 and 1");
    }
    if args.buckets == 0 {
        return fail("--buckets must be at least 1");
    }
    if args.password_file.is_some() && args.proto == Proto::Memcached {
        return fail("--password-file is for kv and Redis: memcached's text protocol has no AUTH");
    }
    if args.bucket_prefix.bytes().any(kv::protocol::is_space) {
        return fail("--bucket-prefix cannot hold whitespace");
    }
    if args.hash && args.proto != Proto::Redis {
        return fail("--hash is for --proto redis only");
    }
    Ok(())
}

impl BenchArgs {
    /// Whether the load names buckets: kv's always, Redis's with `--hash`.
    pub(crate) fn uses_buckets(&self) -> bool {
        self.proto == Proto::Kv || (self.proto == Proto::Redis && self.hash)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Flags for a small run, for the other files' tests.
    pub(crate) fn args() -> BenchArgs {
        BenchArgs {
            addr: String::new(),
            proto: Proto::Kv,
            hash: false,
            conns: 1,
            pipeline: 16,
            duration: 1.0,
            warmup: 0.0,
            requests: Some(40),
            keys: 10,
            value_size: 1,
            get_ratio: 0.5,
            buckets: 1,
            bucket_prefix: "b".to_string(),
            fill: false,
            seed: Some(1),
            json: false,
            password_file: None,
        }
    }

    #[test]
    fn hash_is_refused_outside_redis_and_text_names_kv() {
        let mut args = args();
        args.hash = true;
        assert!(check_args(&args).is_err());
        args.proto = Proto::Redis;
        assert!(check_args(&args).is_ok());
        assert!(args.uses_buckets());
        args.hash = false;
        assert!(!args.uses_buckets());
        assert_eq!("text".parse::<Proto>(), Ok(Proto::Kv));
    }
}
