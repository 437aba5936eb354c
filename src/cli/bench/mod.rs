//! `kv bench`: a multi-threaded, closed-loop load generator for kv, Redis and memcached.
//!
//! Each connection has its own thread, which sends `--pipeline` requests, waits for all
//! their replies, and goes again until the deadline or the request cap. The same load
//! speaks kv's protocol, RESP2 (`SET`/`GET`) or memcached's text protocol (`set`/`get`),
//! so one tool measures all three servers the same way (redis-benchmark is
//! single-threaded and would measure itself on a busy host).
//!
//! Every value read back is checked. Values are derived from the key and a per-run
//! seed, so every write of a key in one run writes the same bytes: once a write of a
//! key has been acknowledged, any later GET of it must return exactly those bytes, and
//! anything else is a mismatch. Before that, a GET may find nothing (not a mismatch)
//! or a value an earlier run left (counted as stale, not a mismatch).
//!
//! Latency goes into a small log-bucketed [`Histogram`] (no dependency): each request's
//! latency runs from the write of its pipeline to the moment its reply is parsed.
//!
//! This file owns the load generator and the reply parsers of the three protocols; the
//! kv server itself is untouched by it, and it shares nothing with it but the wire.

use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use argh::FromArgs;

/// Run a closed-loop load against a kv, Redis or memcached server and report
/// throughput, latency percentiles and read-back errors. Each connection has its own
/// thread; every value read back is verified.
#[derive(FromArgs, Debug, Clone)]
#[argh(subcommand, name = "bench")]
pub struct BenchArgs {
    /// server address (default 127.0.0.1:4040)
    #[argh(option, default = "String::from(\"127.0.0.1:4040\")")]
    pub addr: String,
    /// wire protocol: kv, redis (RESP2 SET/GET) or memcached (text set/get) (default kv)
    #[argh(option, default = "Proto::Kv")]
    pub proto: Proto,
    /// connections, each driven by its own thread (default 8)
    #[argh(option, default = "8")]
    pub conns: usize,
    /// requests in flight per connection: each round writes this many, then reads
    /// every reply (default 1)
    #[argh(option, default = "1")]
    pub pipeline: usize,
    /// hard bound on the run after warm-up, in seconds, fractions allowed (default 10)
    #[argh(option, default = "10.0")]
    pub duration: f64,
    /// seconds of load before measuring starts; requests sent during it are not
    /// counted (default 0)
    #[argh(option, default = "0.0")]
    pub warmup: f64,
    /// stop after this many requests over all connections, warm-up included
    /// (default: no cap, run for --duration)
    #[argh(option)]
    pub requests: Option<u64>,
    /// number of distinct keys, each request picking one uniformly (default 100000)
    #[argh(option, default = "100_000")]
    pub keys: u64,
    /// bytes per value (default 32)
    #[argh(option, default = "32")]
    pub value_size: usize,
    /// fraction of requests that are GETs, 0 to 1; the rest are PUT/SET (default 0.5)
    #[argh(option, default = "0.5")]
    pub get_ratio: f64,
    /// kv only: buckets the keys are spread over, created before the run (default 16)
    #[argh(option, default = "16")]
    pub buckets: usize,
    /// kv only: bucket names are this prefix and a number, `b0`, `b1`, ... by
    /// default; in a cluster, a prefix another node owns measures forwarding
    #[argh(option, default = "String::from(\"b\")")]
    pub bucket_prefix: String,
    /// write every key once, in key order, then stop (fills a server before a run;
    /// ignores --get-ratio and --requests, still bounded by --duration)
    #[argh(switch)]
    pub fill: bool,
    /// seed for key choice and values (default: from the clock, so values differ
    /// between runs)
    #[argh(option)]
    pub seed: Option<u64>,
    /// print one line of JSON instead of the human-readable summary, for scripts
    #[argh(switch)]
    pub json: bool,
}

/// Which wire protocol the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// kv's own line protocol: `PUT b k v` / `GET b k`.
    Kv,
    /// Redis's RESP2: `SET k v` / `GET k` as arrays of bulk strings.
    Redis,
    /// memcached's text protocol: `set k 0 0 n` + data / `get k`.
    Memcached,
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "kv" => Ok(Proto::Kv),
            "redis" | "resp" => Ok(Proto::Redis),
            "memcached" | "memcache" => Ok(Proto::Memcached),
            _ => Err(format!("unknown protocol {text:?}: use kv, redis or memcached")),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Kv => "kv",
            Proto::Redis => "redis",
            Proto::Memcached => "memcached",
        })
    }
}

/// The two operations of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read: kv `GET`, Redis `GET`, memcached `get`.
    Get,
    /// A write: kv `PUT`, Redis `SET`, memcached `set`.
    Set,
}

// ---------------------------------------------------------------------------------
// Histogram

/// Sub-buckets per power of two: latencies are kept to within 1/32 (about 3%).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any `u64`: values below `SUB` exactly, then `SUB` per octave.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// A log-bucketed histogram of `u64` samples (nanoseconds here).
///
/// Values below 32 are kept exactly; above that each power of two is cut into 32
/// equal sub-buckets, so a reported quantile is at most about 3% above the true one.
/// It is a fixed array of counters: recording is a few instructions and never
/// allocates, and per-thread histograms merge by adding counters.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: Box::new([0; BUCKETS]), total: 0, min: u64::MAX, max: 0, sum: 0 }
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bucket holding `value`.
    fn index(value: u64) -> usize {
        if value < SUB {
            return value as usize;
        }
        let exponent = 63 - value.leading_zeros(); // >= SUB_BITS
        let shift = exponent - SUB_BITS;
        let mantissa = value >> shift; // in [SUB, 2 * SUB)
        ((shift as u64 + 1) * SUB + (mantissa - SUB)) as usize
    }

    /// The largest value that lands in bucket `index`.
    fn upper_bound(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB {
            return index;
        }
        let shift = index / SUB - 1;
        let mantissa = SUB + index % SUB;
        // The top bucket's bound is u64::MAX; compute it without overflowing.
        ((mantissa as u128 + 1) << shift).saturating_sub(1).min(u64::MAX as u128) as u64
    }

    /// Adds one sample.
    #[inline]
    pub fn record(&mut self, value: u64) {
        self.counts[Self::index(value)] += 1;
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value as u128;
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest sample (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Smallest sample (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 { 0 } else { self.min }
    }

    /// Mean of the samples (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.sum as f64 / self.total as f64 }
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket holding the
    /// sample of rank `ceil(q * count)`, but never above the largest sample. 0 when
    /// empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::upper_bound(index).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

// ---------------------------------------------------------------------------------
// Requests and replies

/// Writes `key` number `index` into `out`: `key:` and at least 8 digits, so every key
/// of a run has the same length.
#[inline]
pub fn write_key(out: &mut Vec<u8>, index: u64) {
    let (bytes, len) = key(index);
    out.extend_from_slice(&bytes[..len]);
}

/// Key number `index` in a stack buffer, and its length.
#[inline]
fn key(index: u64) -> ([u8; 24], usize) {
    let mut digits = [b'0'; 20];
    let mut n = index;
    let mut at = digits.len();
    while n > 0 {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = at.min(digits.len() - 8);
    let mut bytes = [0u8; 24];
    bytes[..4].copy_from_slice(b"key:");
    let len = 4 + digits.len() - start;
    bytes[4..len].copy_from_slice(&digits[start..]);
    (bytes, len)
}

fn write_decimal(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut n = n;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The 64 bytes values are made of: no whitespace, nothing any of the protocols treats
/// specially.
const VALUE_ALPHABET: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";

/// One step of SplitMix64: a fast, well-mixed 64-bit generator.
#[inline]
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Appends the value every write of key `index` carries in the run with `seed`.
#[inline]
pub fn write_value(out: &mut Vec<u8>, seed: u64, index: u64, size: usize) {
    let mut state = seed ^ index.wrapping_mul(0xd6e8_feb8_6659_fd93);
    let mut left = size;
    while left > 0 {
        let bits = splitmix(&mut state);
        for i in 0..left.min(10) {
            out.push(VALUE_ALPHABET[((bits >> (i * 6)) & 63) as usize]);
        }
        left -= left.min(10);
    }
}

/// The kv bucket names of a run: `prefix` and a number, `b0`, `b1`, ... by default.
pub fn bucket_names(prefix: &str, buckets: usize) -> Vec<Vec<u8>> {
    (0..buckets.max(1))
        .map(|bucket| {
            let mut name = prefix.as_bytes().to_vec();
            write_decimal(&mut name, bucket);
            name
        })
        .collect()
}

/// Appends one request of `proto` for key `index` to `out`.
/// `bucket` is used by kv only.
pub fn write_request(out: &mut Vec<u8>, proto: Proto, op: Op, bucket: &[u8], index: u64, value: &[u8]) {
    match (proto, op) {
        (Proto::Kv, Op::Get) => {
            out.extend_from_slice(b"GET ");
            out.extend_from_slice(bucket);
            out.push(b' ');
            write_key(out, index);
            out.extend_from_slice(b"\r\n");
        }
        (Proto::Kv, Op::Set) => {
            out.extend_from_slice(b"PUT ");
            out.extend_from_slice(bucket);
            out.push(b' ');
            write_key(out, index);
            out.push(b' ');
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        (Proto::Redis, op) => {
            let (key, len) = key(index);
            let key = &key[..len];
            let (head, parts): (&[u8], &[&[u8]]) = match op {
                Op::Get => (b"*2\r\n$3\r\nGET\r\n", &[key]),
                Op::Set => (b"*3\r\n$3\r\nSET\r\n", &[key, value]),
            };
            out.extend_from_slice(head);
            for part in parts {
                out.push(b'$');
                write_decimal(out, part.len());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
        }
        (Proto::Memcached, Op::Get) => {
            out.extend_from_slice(b"get ");
            write_key(out, index);
            out.extend_from_slice(b"\r\n");
        }
        (Proto::Memcached, Op::Set) => {
            out.extend_from_slice(b"set ");
            write_key(out, index);
            out.extend_from_slice(b" 0 0 ");
            write_decimal(out, value.len());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// One reply, as the bench sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A write was acknowledged.
    Stored,
    /// A GET found this value.
    Value(&'a [u8]),
    /// A GET found no value for the key.
    Missing,
    /// The server refused the request; the error line without its line end.
    Error(&'a [u8]),
}

/// A reply the bench cannot make sense of; the connection cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReply(pub String);

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected reply: {}", self.0)
    }
}

fn bad(bytes: &[u8]) -> BadReply {
    let shown = &bytes[..bytes.len().min(80)];
    BadReply(format!("{:?}", String::from_utf8_lossy(shown)))
}

/// The first line of `buf` without its line end, and the bytes it takes with its `\n`.
fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let newline = buf.iter().position(|&b| b == b'\n')?;
    let text = &buf[..newline];
    Some((text.strip_suffix(b"\r").unwrap_or(text), newline + 1))
}

/// Parses one reply to `op` from the front of `buf`.
///
/// `Ok(None)` means the reply is not complete yet; `Ok(Some((reply, used)))` gives
/// the reply and the number of bytes it took.
pub fn parse_reply(proto: Proto, op: Op, buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, BadReply> {
    match proto {
        Proto::Kv => parse_kv(op, buf),
        Proto::Redis => parse_redis(op, buf),
        Proto::Memcached => parse_memcached(op, buf),
    }
}

fn parse_kv(op: Op, buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, BadReply> {
    let Some((first, used)) = line(buf) else { return Ok(None) };
    if first == b"NOT FOUND" || first == b"UNKNOWN COMMAND" || first.starts_with(b"ERROR ") {
        return Ok(Some((Reply::Error(first), used)));
    }
    match op {
        Op::Set if first == b"OK" => Ok(Some((Reply::Stored, used))),
        Op::Set => Err(bad(first)),
        Op::Get => {
            let Some((second, more)) = line(&buf[used..]) else { return Ok(None) };
            if second != b"OK" {
                return Err(bad(&buf[..used + more]));
            }
            let reply = if first.is_empty() { Reply::Missing } else { Reply::Value(first) };
            Ok(Some((reply, used + more)))
        }
    }
}

fn parse_redis(op: Op, buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, BadReply> {
    let Some((first, used)) = line(buf) else { return Ok(None) };
    match (first.first(), op) {
        (Some(b'-'), _) => Ok(Some((Reply::Error(first), used))),
        (Some(b'+'), Op::Set) if first == b"+OK" => Ok(Some((Reply::Stored, used))),
        (Some(b'$'), Op::Get) => {
            if first == b"$-1" {
                return Ok(Some((Reply::Missing, used)));
            }
            let len: usize = std::str::from_utf8(&first[1..])
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| bad(first))?;
            let Some((value, end)) = payload(buf, used, len)? else { return Ok(None) };
            Ok(Some((Reply::Value(value), end)))
        }
        _ => Err(bad(first)),
    }
}

/// The `len` bytes of a length-prefixed value starting at `start`, which must be
/// followed by `\r\n`, and where what follows them begins; `None` until all of it is
/// in `buf`.
fn payload(buf: &[u8], start: usize, len: usize) -> Result<Option<(&[u8], usize)>, BadReply> {
    let Some(end) = start.checked_add(len).filter(|end| end.checked_add(2).is_some()) else {
        return Err(bad(&buf[..start]));
    };
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(bad(&buf[..end + 2]));
    }
    Ok(Some((&buf[start..end], end + 2)))
}

fn parse_memcached(op: Op, buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, BadReply> {
    let Some((first, used)) = line(buf) else { return Ok(None) };
    if first == b"ERROR"
        || first == b"NOT_STORED"
        || first.starts_with(b"CLIENT_ERROR")
        || first.starts_with(b"SERVER_ERROR")
    {
        return Ok(Some((Reply::Error(first), used)));
    }
    match op {
        Op::Set if first == b"STORED" => Ok(Some((Reply::Stored, used))),
        Op::Get if first == b"END" => Ok(Some((Reply::Missing, used))),
        Op::Get if first.starts_with(b"VALUE ") => {
            // VALUE <key> <flags> <bytes> [<cas>]
            let len: usize = first
                .split(|&b| b == b' ')
                .nth(3)
                .and_then(|word| std::str::from_utf8(word).ok())
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| bad(first))?;
            let Some((value, end)) = payload(buf, used, len)? else { return Ok(None) };
            let Some((last, more)) = line(&buf[end..]) else { return Ok(None) };
            if last != b"END" {
                return Err(bad(&buf[..end + more]));
            }
            Ok(Some((Reply::Value(value), end + more)))
        }
        _ => Err(bad(first)),
    }
}

/// How a value read back compares with what this run wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The value this run writes for the key.
    Hit,
    /// No value, and this run had not yet written the key when the GET was sent.
    Miss,
    /// Some other value, and this run had not yet written the key: left by an
    /// earlier run (or another client). Not an error of the server's.
    Stale,
    /// Wrong: a value other than ours, or none, after our write was acknowledged.
    Mismatch,
}

/// Judges a GET's result. `written` says whether a write of this key had been
/// acknowledged before the GET was sent; `got` is `None` for a missing key.
pub fn verdict(expected: &[u8], got: Option<&[u8]>, written: bool) -> Verdict {
    match got {
        Some(value) if value == expected => Verdict::Hit,
        None if !written => Verdict::Miss,
        Some(_) if !written => Verdict::Stale,
        _ => Verdict::Mismatch,
    }
}

// ---------------------------------------------------------------------------------
// The run

/// Why a run could not start.
#[derive(Debug)]
pub struct BenchError(pub String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

/// Most mismatch and error samples kept for the report.
const MAX_SAMPLES: usize = 10;

/// How long a blocked read waits before the thread looks at the deadline again. A
/// stalled server thus delays the end of a run by at most this much.
const READ_POLL: Duration = Duration::from_millis(250);

/// Extra time after the deadline for replies already asked for; then they are given
/// up on and counted as errors.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Everything counted by one connection, then by the whole run.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Requests answered inside the measured window.
    pub ops: u64,
    /// Of those, GETs and writes.
    pub gets: u64,
    pub sets: u64,
    /// GET verdicts (all of them, warm-up included: correctness has no warm-up).
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub mismatches: u64,
    /// Error replies, broken connections and replies never received.
    pub errors: u64,
    /// Latency of each measured request, in nanoseconds.
    pub latency: Histogram,
    /// When this connection's last measured reply arrived.
    pub last_reply: Option<Instant>,
    /// A few mismatches and errors, described.
    pub samples: Vec<String>,
}

impl Tally {
    fn sample(&mut self, text: String) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(text);
        }
    }

    fn merge(&mut self, other: Tally) {
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
}

/// The result of a run.
#[derive(Debug)]
pub struct Report {
    /// Totals over all connections.
    pub tally: Tally,
    /// Length of the measured window: from the end of warm-up to the last reply.
    pub elapsed: Duration,
    /// The seed the run used.
    pub seed: u64,
}

impl Report {
    /// Measured requests per second.
    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.tally.ops as f64 / secs } else { 0.0 }
    }
}

/// What every connection thread reads.
struct Plan<'a> {
    args: &'a BenchArgs,
    seed: u64,
    /// One bit per key: set once a write of the key has been acknowledged.
    written: Vec<AtomicU64>,
    /// Requests handed out so far, for --requests and --fill.
    claimed: AtomicU64,
    measure_from: Instant,
    deadline: Instant,
}

impl Plan<'_> {
    fn is_written(&self, key: u64) -> bool {
        self.written[(key / 64) as usize].load(Ordering::Acquire) & (1 << (key % 64)) != 0
    }

    fn mark_written(&self, key: u64) {
        let word = &self.written[(key / 64) as usize];
        let bit = 1 << (key % 64);
        // Read first: after the first write this is a shared read, not a contended
        // read-modify-write on every PUT.
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::Release);
        }
    }

    /// How many requests the next round may send: the pipeline depth, less whatever
    /// the cap has left. For --fill, also the first key of the round.
    fn claim(&self) -> (u64, usize) {
        let depth = self.args.pipeline as u64;
        let cap = if self.args.fill { Some(self.args.keys) } else { self.args.requests };
        match cap {
            None => (0, self.args.pipeline),
            Some(cap) => {
                let first = self.claimed.fetch_add(depth, Ordering::Relaxed);
                (first, cap.saturating_sub(first).min(depth) as usize)
            }
        }
    }
}

/// One request of a round, remembered until its reply comes.
#[derive(Debug, Clone, Copy)]
struct Pending {
    op: Op,
    key: u64,
    written: bool,
}

/// A connection's receive buffer.
struct Inbox {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Inbox {
    fn new() -> Self {
        Inbox { buf: vec![0; 64 * 1024], start: 0, end: 0 }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes, making room first. Times out after [`READ_POLL`] (the socket's
    /// read timeout) so the caller can check its deadline.
    fn fill(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // One reply is bigger than the buffer (a large value): grow.
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = stream.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
        }
        self.end += n;
        Ok(n)
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Counts one reply: its verdict if it is a GET's, or the error.
fn judge(tally: &mut Tally, plan: &Plan<'_>, request: &Pending, reply: Reply<'_>, scratch: &mut Vec<u8>) {
    let got = match reply {
        Reply::Stored => return,
        Reply::Error(line) => {
            tally.errors += 1;
            tally.sample(format!("error reply: {}", String::from_utf8_lossy(line)));
            return;
        }
        Reply::Value(value) => Some(value),
        Reply::Missing => None,
    };
    scratch.clear();
    write_value(scratch, plan.seed, request.key, plan.args.value_size);
    match verdict(scratch, got, request.written) {
        Verdict::Hit => tally.hits += 1,
        Verdict::Miss => tally.misses += 1,
        Verdict::Stale => tally.stale += 1,
        Verdict::Mismatch => {
            tally.mismatches += 1;
            let mut key = Vec::new();
            write_key(&mut key, request.key);
            tally.sample(format!(
                "mismatch: {} expected {} got {}",
                String::from_utf8_lossy(&key),
                String::from_utf8_lossy(scratch),
                got.map_or("nothing".into(), String::from_utf8_lossy)
            ));
        }
    }
}

/// The body of one connection's thread.
fn drive(plan: &Plan<'_>, mut stream: TcpStream, thread: u64) -> Tally {
    let args = plan.args;
    let mut tally = Tally::default();
    let mut rng = plan.seed ^ thread.wrapping_mul(0xa076_1d64_78bd_642f) ^ 0x5851_f42d_4c95_7f2d;
    let mut out = Vec::with_capacity(args.pipeline * (args.value_size + 64));
    let mut pending: Vec<Pending> = Vec::with_capacity(args.pipeline);
    let mut value = Vec::with_capacity(args.value_size);
    let mut inbox = Inbox::new();
    // GETs are chosen by comparing a random u64 with this threshold.
    let get_threshold = (args.get_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let buckets = bucket_names(&args.bucket_prefix, args.buckets);
    // No reply of ours comes near this: a value and a few dozen bytes of framing.
    let max_reply = (args.value_size + 1024).max(64 * 1024);
    loop {
        if Instant::now() >= plan.deadline {
            break;
        }
        let (first_key, depth) = plan.claim();
        if depth == 0 {
            break;
        }
        out.clear();
        pending.clear();
        for i in 0..depth as u64 {
            let (op, key) = if args.fill {
                (Op::Set, first_key + i)
            } else {
                let op = if args.get_ratio >= 1.0 || splitmix(&mut rng) < get_threshold {
                    Op::Get
                } else {
                    Op::Set
                };
                (op, splitmix(&mut rng) % args.keys)
            };
            value.clear();
            if op == Op::Set {
                write_value(&mut value, plan.seed, key, args.value_size);
            }
            let bucket = &buckets[(key % buckets.len() as u64) as usize];
            write_request(&mut out, args.proto, op, bucket, key, &value);
            pending.push(Pending { op, key, written: op == Op::Get && plan.is_written(key) });
        }
        let sent = Instant::now();
        let measured = sent >= plan.measure_from;
        if let Err(error) = stream.write_all(&out) {
            tally.errors += pending.len() as u64;
            tally.sample(format!("write failed: {error}"));
            return tally;
        }
        for request in &pending {
            // Read until this request's reply is complete.
            let (stored, used) = loop {
                match parse_reply(args.proto, request.op, inbox.pending()) {
                    Ok(Some((reply, used))) => {
                        let stored = reply == Reply::Stored;
                        judge(&mut tally, plan, request, reply, &mut value);
                        break (stored, used);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tally.errors += 1;
                        tally.sample(error.to_string());
                        return tally;
                    }
                }
                // Bounded in time even against a server that trickles bytes forever,
                // and in memory against one that never ends a reply.
                if Instant::now() >= plan.deadline + DRAIN_GRACE {
                    tally.errors += 1;
                    tally.sample("no complete reply before the deadline".to_string());
                    return tally;
                }
                if inbox.pending().len() > max_reply {
                    tally.errors += 1;
                    tally.sample(format!("a reply longer than {max_reply} bytes"));
                    return tally;
                }
                match inbox.fill(&mut stream) {
                    Ok(_) => {}
                    Err(error) if is_timeout(&error) => {}
                    Err(error) => {
                        tally.errors += 1;
                        tally.sample(format!("read failed: {error}"));
                        return tally;
                    }
                }
            };
            inbox.consume(used);
            if stored {
                plan.mark_written(request.key);
            }
            if measured {
                let now = Instant::now();
                tally.latency.record(now.duration_since(sent).as_nanos() as u64);
                tally.last_reply = Some(now);
                tally.ops += 1;
                match request.op {
                    Op::Get => tally.gets += 1,
                    Op::Set => tally.sets += 1,
                }
            }
        }
    }
    tally
}

fn check_args(args: &BenchArgs) -> Result<(), BenchError> {
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
    if args.bucket_prefix.bytes().any(crate::protocol::is_space) {
        return fail("--bucket-prefix cannot hold whitespace");
    }
    Ok(())
}

/// Runs the load described by `args` and returns what it measured.
pub fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    check_args(args)?;
    let addr: SocketAddr = args
        .addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| BenchError(format!("cannot resolve {}", args.addr)))?;
    let seed = args.seed.unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(1, |d| d.as_nanos() as u64)
    });
    let connect = || -> Result<TcpStream, BenchError> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|error| BenchError(format!("cannot connect to {addr}: {error}")))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(READ_POLL)))
            .map_err(|error| BenchError(format!("cannot set up the connection to {addr}: {error}")))?;
        Ok(stream)
    };
    if args.proto == Proto::Kv {
        create_buckets(addr, &bucket_names(&args.bucket_prefix, args.buckets))?;
    }
    let streams = (0..args.conns).map(|_| connect()).collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let plan = Plan {
        args,
        seed,
        written: (0..args.keys.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        claimed: AtomicU64::new(0),
        measure_from,
        deadline: measure_from + Duration::from_secs_f64(args.duration),
    };
    let mut total = Tally::default();
    std::thread::scope(|scope| {
        let threads: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, stream)| {
                let plan = &plan;
                std::thread::Builder::new()
                    .name(format!("kv-bench-{i}"))
                    .spawn_scoped(scope, move || drive(plan, stream, i as u64))
            })
            .collect();
        for thread in threads {
            match thread {
                Ok(handle) => match handle.join() {
                    Ok(tally) => total.merge(tally),
                    Err(_) => {
                        total.errors += 1;
                        total.sample("a connection thread panicked".to_string());
                    }
                },
                Err(error) => {
                    total.errors += 1;
                    total.sample(format!("cannot start a connection thread: {error}"));
                }
            }
        }
    });
    let elapsed =
        total.last_reply.map_or(Duration::ZERO, |last| last.saturating_duration_since(measure_from));
    Ok(Report { tally: total, elapsed, seed })
}

/// Creates the kv buckets of the run.
fn create_buckets(addr: SocketAddr, names: &[Vec<u8>]) -> Result<(), BenchError> {
    let mut client = crate::Client::connect(addr)
        .map_err(|error| BenchError(format!("cannot connect to {addr}: {error}")))?;
    client
        .set_timeout(Some(Duration::from_secs(5)))
        .map_err(|error| BenchError(format!("cannot set a timeout: {error}")))?;
    for name in names {
        client
            .create(name)
            .map_err(|error| BenchError(format!("CREATE {}: {error}", String::from_utf8_lossy(name))))?;
    }
    Ok(())
}

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

/// The one-line JSON summary printed by `--json`.
pub fn json_line(args: &BenchArgs, report: &Report) -> String {
    let t = &report.tally;
    let h = &t.latency;
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "{{\"proto\":\"{}\",\"conns\":{},\"pipeline\":{},\"get_ratio\":{},\"keys\":{},\"value_size\":{},\
         \"buckets\":{},\"seed\":{},\"elapsed_s\":{:.3},\"ops\":{},\"ops_per_sec\":{:.0},\"gets\":{},\
         \"sets\":{},\"hits\":{},\"misses\":{},\"stale\":{},\"mismatches\":{},\"errors\":{},\
         \"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1},\"mean_us\":{:.1}}}",
        args.proto,
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
pub fn summary(args: &BenchArgs, report: &Report) -> String {
    let t = &report.tally;
    let h = &t.latency;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "kv bench: {} at {}, {} conns x pipeline {}, {:.0}% GET, {} keys, {}-byte values{}",
        args.proto,
        args.addr,
        args.conns,
        args.pipeline,
        args.get_ratio * 100.0,
        args.keys,
        args.value_size,
        if args.proto == Proto::Kv { format!(", {} buckets", args.buckets) } else { String::new() },
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
    let _ = writeln!(
        s,
        "verified    {} GETs: {} hits, {} misses, {} stale, {} mismatches; {} errors",
        t.hits + t.misses + t.stale + t.mismatches,
        t.hits,
        t.misses,
        t.stale,
        t.mismatches,
        t.errors
    );
    for sample in &t.samples {
        let _ = writeln!(s, "  {sample}");
    }
    s
}

/// `kv bench`: runs and prints. Fails (exit 1) on any mismatch or error, so scripts
/// notice a wrong answer as well as a slow one.
pub fn main(args: BenchArgs) -> ExitCode {
    let report = match run(&args) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("kv bench: {error}");
            return ExitCode::from(2);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_indexes_are_continuous_and_bounds_hold() {
        // Every value lies at or below its bucket's upper bound and above the
        // previous bucket's.
        let mut values: Vec<u64> = (0..5000).collect();
        values.extend([1 << 20, (1 << 20) + 1, 123_456_789, u64::MAX / 3, u64::MAX - 1, u64::MAX]);
        for v in values {
            let i = Histogram::index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(v <= Histogram::upper_bound(i), "{v} above bound of {i}");
            if i > 0 {
                assert!(v > Histogram::upper_bound(i - 1), "{v} not above bound of {}", i - 1);
            }
        }
        assert_eq!(Histogram::index(31), 31);
        assert_eq!(Histogram::index(32), 32);
        assert_eq!(Histogram::index(63), 63);
        assert_eq!(Histogram::index(64), 64);
        assert_eq!(Histogram::index(65), 64);
        assert_eq!(Histogram::upper_bound(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn histogram_quantiles_within_three_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 100_000);
        for (q, exact) in [(0.5, 50_000_000f64), (0.99, 99_000_000.0), (0.999, 99_900_000.0)] {
            let got = h.quantile(q) as f64;
            assert!(got >= exact && got <= exact * 1.032, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.quantile(1.0), 100_000_000);
        // The lowest bucket's bound, within 1/32 of the smallest sample.
        assert!((1000..=1032).contains(&h.quantile(0.0)), "{}", h.quantile(0.0));
        assert_eq!(h.min(), 1000);
        assert!((h.mean() - 50_000_500.0).abs() < 1.0);
    }

    #[test]
    fn histogram_small_values_are_exact_and_merge_adds() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        assert_eq!(a.quantile(0.5), 0);
        a.record(3);
        a.record(3);
        b.record(7);
        b.record(20);
        a.merge(&b);
        assert_eq!(a.count(), 4);
        assert_eq!(a.quantile(0.5), 3);
        assert_eq!(a.quantile(0.75), 7);
        assert_eq!(a.quantile(1.0), 20);
        assert_eq!(a.max(), 20);
        assert_eq!(a.min(), 3);
    }

    #[test]
    fn requests_of_each_protocol() {
        let mut out = Vec::new();
        write_request(&mut out, Proto::Kv, Op::Set, b"b3", 42, b"v1");
        write_request(&mut out, Proto::Kv, Op::Get, b"b3", 42, b"");
        assert_eq!(out, b"PUT b3 key:00000042 v1\r\nGET b3 key:00000042\r\n");
        assert_eq!(bucket_names("zz", 3), [&b"zz0"[..], b"zz1", b"zz2"]);
        out.clear();
        write_request(&mut out, Proto::Redis, Op::Set, b"", 7, b"abc");
        write_request(&mut out, Proto::Redis, Op::Get, b"", 7, b"");
        assert_eq!(
            out,
            &b"*3\r\n$3\r\nSET\r\n$12\r\nkey:00000007\r\n$3\r\nabc\r\n*2\r\n$3\r\nGET\r\n$12\r\nkey:00000007\r\n"[..]
        );
        out.clear();
        write_request(&mut out, Proto::Memcached, Op::Set, b"", 123_456_789, b"abc");
        write_request(&mut out, Proto::Memcached, Op::Get, b"", 123_456_789, b"");
        assert_eq!(out, b"set key:123456789 0 0 3\r\nabc\r\nget key:123456789\r\n");
    }

    #[test]
    fn values_are_deterministic_per_key_and_seed() {
        let make = |seed, key| {
            let mut v = Vec::new();
            write_value(&mut v, seed, key, 32);
            v
        };
        assert_eq!(make(1, 5), make(1, 5));
        assert_ne!(make(1, 5), make(1, 6));
        assert_ne!(make(1, 5), make(2, 5));
        let v = make(9, 9);
        assert_eq!(v.len(), 32);
        assert!(v.iter().all(|b| VALUE_ALPHABET.contains(b)));
        let mut odd = Vec::new();
        write_value(&mut odd, 9, 9, 13);
        assert_eq!(odd.len(), 13);
        assert_eq!(odd[..10], v[..10]);
    }

    #[test]
    fn kv_replies() {
        let p = |op, bytes: &'static [u8]| parse_reply(Proto::Kv, op, bytes);
        assert_eq!(p(Op::Set, b"OK\r\nrest"), Ok(Some((Reply::Stored, 4))));
        assert_eq!(p(Op::Get, b"3\r\nOK\r\n"), Ok(Some((Reply::Value(b"3"), 7))));
        assert_eq!(p(Op::Get, b"\r\nOK\r\n"), Ok(Some((Reply::Missing, 6))));
        assert_eq!(p(Op::Get, b"NOT FOUND\r\n"), Ok(Some((Reply::Error(b"NOT FOUND"), 11))));
        assert_eq!(
            p(Op::Set, b"ERROR line too long\r\n"),
            Ok(Some((Reply::Error(b"ERROR line too long"), 21)))
        );
        // Incomplete replies wait for more bytes.
        assert_eq!(p(Op::Get, b"3\r\nOK"), Ok(None));
        assert_eq!(p(Op::Get, b"3\r"), Ok(None));
        assert_eq!(p(Op::Set, b""), Ok(None));
        // Nonsense is an error, not a value.
        assert!(p(Op::Set, b"STORED\r\n").is_err());
        assert!(p(Op::Get, b"3\r\n3\r\n").is_err());
    }

    #[test]
    fn redis_replies() {
        let p = |op, bytes: &'static [u8]| parse_reply(Proto::Redis, op, bytes);
        assert_eq!(p(Op::Set, b"+OK\r\n"), Ok(Some((Reply::Stored, 5))));
        assert_eq!(p(Op::Get, b"$3\r\nabc\r\n$-1\r\n"), Ok(Some((Reply::Value(b"abc"), 9))));
        assert_eq!(p(Op::Get, b"$-1\r\n"), Ok(Some((Reply::Missing, 5))));
        assert_eq!(p(Op::Get, b"$0\r\n\r\n"), Ok(Some((Reply::Value(b""), 6))));
        // A bulk string may hold \r\n inside; its length decides.
        assert_eq!(p(Op::Get, b"$4\r\na\r\nb\r\n"), Ok(Some((Reply::Value(b"a\r\nb"), 10))));
        assert_eq!(p(Op::Set, b"-ERR wrong\r\n"), Ok(Some((Reply::Error(b"-ERR wrong"), 12))));
        assert_eq!(p(Op::Get, b"$3\r\nab"), Ok(None));
        assert_eq!(p(Op::Get, b"$3\r\nabc\r"), Ok(None));
        assert!(p(Op::Get, b"$x\r\n").is_err());
        assert!(p(Op::Get, b"$3\r\nabcd\r\n").is_err());
        assert!(p(Op::Set, b"$3\r\nabc\r\n").is_err());
        assert!(p(Op::Get, b":1\r\n").is_err());
    }

    #[test]
    fn memcached_replies() {
        let p = |op, bytes: &'static [u8]| parse_reply(Proto::Memcached, op, bytes);
        assert_eq!(p(Op::Set, b"STORED\r\n"), Ok(Some((Reply::Stored, 8))));
        assert_eq!(p(Op::Get, b"END\r\n"), Ok(Some((Reply::Missing, 5))));
        assert_eq!(p(Op::Get, b"VALUE k 0 3\r\nabc\r\nEND\r\n"), Ok(Some((Reply::Value(b"abc"), 23))));
        assert_eq!(p(Op::Get, b"VALUE k 0 3 99\r\nabc\r\nEND\r\n"), Ok(Some((Reply::Value(b"abc"), 26))));
        assert_eq!(
            p(Op::Set, b"SERVER_ERROR out of memory\r\n").map(|r| r.map(|(r, _)| r)),
            Ok(Some(Reply::Error(b"SERVER_ERROR out of memory")))
        );
        assert_eq!(p(Op::Get, b"ERROR\r\n"), Ok(Some((Reply::Error(b"ERROR"), 7))));
        assert_eq!(p(Op::Get, b"VALUE k 0 3\r\nabc\r\nEN"), Ok(None));
        assert_eq!(p(Op::Get, b"VALUE k 0 3\r\nab"), Ok(None));
        assert!(p(Op::Get, b"VALUE k 0 x\r\n").is_err());
        assert!(p(Op::Get, b"VALUE k 0 3\r\nabc\r\nVALUE\r\n").is_err());
        assert!(p(Op::Set, b"END\r\n").is_err());
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(b"v", Some(b"v"), true), Verdict::Hit);
        assert_eq!(verdict(b"v", Some(b"v"), false), Verdict::Hit);
        assert_eq!(verdict(b"v", None, false), Verdict::Miss);
        assert_eq!(verdict(b"v", Some(b"old"), false), Verdict::Stale);
        assert_eq!(verdict(b"v", Some(b"w"), true), Verdict::Mismatch);
        assert_eq!(verdict(b"v", None, true), Verdict::Mismatch);
    }

    #[test]
    fn request_cap_is_shared_exactly() {
        let args = BenchArgs {
            addr: String::new(),
            proto: Proto::Kv,
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
        };
        let now = Instant::now();
        let plan = Plan {
            args: &args,
            seed: 1,
            written: (0..1).map(|_| AtomicU64::new(0)).collect(),
            claimed: AtomicU64::new(0),
            measure_from: now,
            deadline: now,
        };
        let depths: Vec<usize> = (0..5).map(|_| plan.claim().1).collect();
        assert_eq!(depths, [16, 16, 8, 0, 0]);
        assert!(!plan.is_written(9));
        plan.mark_written(9);
        assert!(plan.is_written(9));
        assert!(!plan.is_written(8));
    }
}
