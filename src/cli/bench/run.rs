//! The bench's run: the plan every connection thread shares, and the threads that
//! drive the load and fill a tally each (`report.rs`).
//!
//! Each connection has its own thread, which sends up to `--pipeline` requests,
//! reads every reply, and goes again until the deadline or the request cap. The bytes
//! of each request and the parsing of each reply are `wire.rs`'s; latency goes into
//! `histogram.rs`. What is counted, and when:
//!
//! - a request whose pipeline was written at or after the end of warm-up is *measured*:
//!   it counts in `ops`, `gets`/`sets` and the latency histogram, and a GET's verdict
//!   (hit, miss, stale, mismatch) counts in the `verified` line;
//! - a request written during warm-up counts nowhere, except that a wrong value or an
//!   error reply is still an error: correctness has no warm-up.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kv::Client;

use super::args::{BenchArgs, BenchError, check_args};
use super::login::{auth_request, log_in};
use super::report::{Report, Tally};
use super::wire::{
    BadReply, Op, Proto, Reply, Verdict, bucket_names, parse_reply, splitmix, verdict, write_key,
    write_request, write_value,
};

/// How long a blocked read waits before the thread looks at the deadline again. A
/// stalled server thus delays the end of a run by at most this much.
const READ_POLL: Duration = Duration::from_millis(250);

/// Extra time after the deadline for replies already asked for; then they are given
/// up on and counted as errors.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

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
    /// A write of the key had been acknowledged before this GET was sent.
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
        let n = loop {
            match stream.read(&mut self.buf[self.end..]) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                read => break read?,
            }
        };
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

/// Counts one reply: its verdict if it is a measured GET's, the error if it is one.
fn judge(
    tally: &mut Tally,
    plan: &Plan<'_>,
    request: &Pending,
    reply: Reply<'_>,
    measured: bool,
    scratch: &mut Vec<u8>,
) {
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
    let judged = verdict(scratch, got, request.written);
    if judged == Verdict::Mismatch {
        let mut key = Vec::new();
        write_key(&mut key, request.key);
        tally.sample(format!(
            "mismatch{}: {} expected {} got {}",
            if measured { "" } else { " during warm-up" },
            String::from_utf8_lossy(&key),
            String::from_utf8_lossy(scratch),
            got.map_or("nothing".into(), String::from_utf8_lossy)
        ));
    }
    match (judged, measured) {
        (Verdict::Mismatch, false) => tally.errors += 1,
        (_, false) => {}
        (Verdict::Hit, true) => tally.hits += 1,
        (Verdict::Miss, true) => tally.misses += 1,
        (Verdict::Stale, true) => tally.stale += 1,
        (Verdict::Mismatch, true) => tally.mismatches += 1,
    }
}

/// The connection cannot go on; why has been counted in the tally.
struct Stopped;

/// One connection's thread: its socket, buffers and tally.
struct Driver<'p, 'a> {
    plan: &'p Plan<'a>,
    stream: TcpStream,
    inbox: Inbox,
    tally: Tally,
    rng: u64,
    out: Vec<u8>,
    pending: Vec<Pending>,
    /// A value being written, or the value a GET should find.
    scratch: Vec<u8>,
    buckets: Vec<Vec<u8>>,
    /// GETs are chosen by comparing a random u64 with this threshold.
    get_threshold: u64,
    /// No reply of ours comes near this: a value and a few dozen bytes of framing.
    max_reply: usize,
}

impl<'p, 'a> Driver<'p, 'a> {
    fn new(plan: &'p Plan<'a>, stream: TcpStream, thread: u64) -> Self {
        let args = plan.args;
        Driver {
            plan,
            stream,
            inbox: Inbox::new(),
            tally: Tally::default(),
            rng: plan.seed ^ thread.wrapping_mul(0xa076_1d64_78bd_642f) ^ 0x5851_f42d_4c95_7f2d,
            out: Vec::with_capacity(args.pipeline * (args.value_size + 64)),
            pending: Vec::with_capacity(args.pipeline),
            scratch: Vec::with_capacity(args.value_size),
            buckets: bucket_names(&args.bucket_prefix, args.buckets),
            get_threshold: (args.get_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
            max_reply: (args.value_size + 1024).max(64 * 1024),
        }
    }

    /// Counts `count` errors with one sample, and stops the connection.
    fn fail(&mut self, count: u64, text: String) -> Stopped {
        self.tally.errors += count;
        self.tally.sample(text);
        Stopped
    }

    /// Writes the requests of one round into `out`.
    fn write_round(&mut self, first_key: u64, depth: usize) {
        let args = self.plan.args;
        self.out.clear();
        self.pending.clear();
        for i in 0..depth as u64 {
            let (op, key) = if args.fill {
                (Op::Set, first_key + i)
            } else {
                let op = if args.get_ratio >= 1.0 || splitmix(&mut self.rng) < self.get_threshold {
                    Op::Get
                } else {
                    Op::Set
                };
                (op, splitmix(&mut self.rng) % args.keys)
            };
            self.scratch.clear();
            if op == Op::Set {
                write_value(&mut self.scratch, self.plan.seed, key, args.value_size);
            }
            let bucket = args
                .uses_buckets()
                .then(|| self.buckets[(key % self.buckets.len() as u64) as usize].as_slice());
            write_request(&mut self.out, args.proto, op, bucket, key, &self.scratch);
            self.pending.push(Pending { op, key, written: op == Op::Get && self.plan.is_written(key) });
        }
    }

    /// Sends the round written and reads every reply.
    fn round(&mut self) -> Result<(), Stopped> {
        let sent = Instant::now();
        let measured = sent >= self.plan.measure_from;
        if let Err(error) = self.stream.write_all(&self.out) {
            return Err(self.fail(self.pending.len() as u64, format!("write failed: {error}")));
        }
        for at in 0..self.pending.len() {
            let request = self.pending[at];
            if self.read_reply(&request, measured)? {
                self.plan.mark_written(request.key);
            }
            if measured {
                let now = Instant::now();
                self.tally.latency.record(now.duration_since(sent).as_nanos() as u64);
                self.tally.last_reply = Some(now);
                self.tally.ops += 1;
                match request.op {
                    Op::Get => self.tally.gets += 1,
                    Op::Set => self.tally.sets += 1,
                }
            }
        }
        Ok(())
    }

    /// Reads until the reply to `request` is complete and judges it; true if it
    /// acknowledged a write.
    fn read_reply(&mut self, request: &Pending, measured: bool) -> Result<bool, Stopped> {
        let proto = self.plan.args.proto;
        loop {
            match parse_reply(proto, request.op, self.inbox.pending()) {
                Ok(Some((reply, used))) => {
                    let stored = reply == Reply::Stored;
                    judge(&mut self.tally, self.plan, request, reply, measured, &mut self.scratch);
                    self.inbox.consume(used);
                    return Ok(stored);
                }
                Ok(None) => {}
                Err(BadReply(text)) => return Err(self.fail(1, format!("unexpected reply: {text}"))),
            }
            // Bounded in time even against a server that trickles bytes forever, and
            // in memory against one that never ends a reply.
            if Instant::now() >= self.plan.deadline + DRAIN_GRACE {
                return Err(self.fail(1, "no complete reply before the deadline".to_string()));
            }
            if self.inbox.pending().len() > self.max_reply {
                return Err(self.fail(1, format!("a reply longer than {} bytes", self.max_reply)));
            }
            match self.inbox.fill(&mut self.stream) {
                Ok(_) => {}
                Err(error) if is_timeout(&error) => {}
                Err(error) => return Err(self.fail(1, format!("read failed: {error}"))),
            }
        }
    }
}

/// The body of one connection's thread.
fn drive(plan: &Plan<'_>, stream: TcpStream, thread: u64) -> Tally {
    let mut driver = Driver::new(plan, stream, thread);
    while Instant::now() < plan.deadline {
        let (first_key, depth) = plan.claim();
        if depth == 0 {
            break;
        }
        driver.write_round(first_key, depth);
        if driver.round().is_err() {
            break;
        }
    }
    driver.tally
}

/// Opens one load connection, signed in with `login` (an `AUTH` request) if given.
fn connect(addr: SocketAddr, login: Option<&[u8]>) -> Result<TcpStream, BenchError> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|error| BenchError(format!("cannot connect to {addr}: {error}")))?;
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(READ_POLL)))
        .map_err(|error| BenchError(format!("cannot set up the connection to {addr}: {error}")))?;
    if let Some(request) = login {
        log_in(&mut stream, request).map_err(|BenchError(error)| BenchError(format!("{addr}: {error}")))?;
    }
    Ok(stream)
}

/// The password in `--password-file`, if one was given.
fn read_password(args: &BenchArgs) -> Result<Option<kv::auth::Secret>, BenchError> {
    let Some(path) = &args.password_file else { return Ok(None) };
    let file = kv::auth::Secret::read_file(path)
        .map_err(|error| BenchError(format!("--password-file {}: {error}", path.display())))?;
    Ok(Some(file.secret))
}

/// Runs the load described by `args` and returns what it measured.
pub(crate) fn run(args: &BenchArgs) -> Result<Report, BenchError> {
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
    let password = read_password(args)?;
    if args.proto == Proto::Kv {
        create_buckets(addr, password.as_ref(), &bucket_names(&args.bucket_prefix, args.buckets))?;
    }
    let login = password.and_then(|secret| auth_request(args.proto, secret.as_bytes()));
    let streams = (0..args.conns).map(|_| connect(addr, login.as_deref())).collect::<Result<Vec<_>, _>>()?;
    let measure_from = Instant::now() + Duration::from_secs_f64(args.warmup);
    let plan = Plan {
        args,
        seed,
        written: (0..args.keys.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        claimed: AtomicU64::new(0),
        measure_from,
        deadline: measure_from + Duration::from_secs_f64(args.duration),
    };
    let tally = run_threads(&plan, streams);
    let elapsed =
        tally.last_reply.map_or(Duration::ZERO, |last| last.saturating_duration_since(measure_from));
    Ok(Report { tally, elapsed, seed })
}

/// Drives each connection on its own thread and adds up their tallies.
fn run_threads(plan: &Plan<'_>, streams: Vec<TcpStream>) -> Tally {
    let mut total = Tally::default();
    std::thread::scope(|scope| {
        let threads: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, stream)| {
                std::thread::Builder::new()
                    .name(format!("kv-bench-{i}"))
                    .spawn_scoped(scope, move || drive(plan, stream, i as u64))
            })
            .collect();
        for thread in threads {
            match thread.map(|handle| handle.join()) {
                Ok(Ok(tally)) => total.merge(tally),
                Ok(Err(_)) => {
                    total.errors += 1;
                    total.sample("a connection thread panicked".to_string());
                }
                Err(error) => {
                    total.errors += 1;
                    total.sample(format!("cannot start a connection thread: {error}"));
                }
            }
        }
    });
    total
}

/// Creates the kv buckets of the run.
fn create_buckets(
    addr: SocketAddr,
    password: Option<&kv::auth::Secret>,
    names: &[Vec<u8>],
) -> Result<(), BenchError> {
    let mut client =
        Client::connect(addr).map_err(|error| BenchError(format!("cannot connect to {addr}: {error}")))?;
    client
        .set_timeout(Some(Duration::from_secs(5)))
        .map_err(|error| BenchError(format!("cannot set a timeout: {error}")))?;
    if let Some(secret) = password {
        client.auth(secret.as_bytes()).map_err(|error| BenchError(format!("AUTH to {addr}: {error}")))?;
    }
    for name in names {
        client
            .create(name)
            .map_err(|error| BenchError(format!("CREATE {}: {error}", String::from_utf8_lossy(name))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::args::tests::args;

    fn plan(args: &BenchArgs) -> Plan<'_> {
        let now = Instant::now();
        Plan {
            args,
            seed: 1,
            written: (0..1).map(|_| AtomicU64::new(0)).collect(),
            claimed: AtomicU64::new(0),
            measure_from: now,
            deadline: now,
        }
    }

    #[test]
    fn request_cap_is_shared_exactly() {
        let args = args();
        let plan = plan(&args);
        let depths: Vec<usize> = (0..5).map(|_| plan.claim().1).collect();
        assert_eq!(depths, [16, 16, 8, 0, 0]);
        assert!(!plan.is_written(9));
        plan.mark_written(9);
        assert!(plan.is_written(9));
        assert!(!plan.is_written(8));
    }

    #[test]
    fn warm_up_gets_are_not_verified_but_a_wrong_value_is_still_an_error() {
        let args = args();
        let plan = plan(&args);
        let mut tally = Tally::default();
        let mut scratch = Vec::new();
        let mut ours = Vec::new();
        write_value(&mut ours, plan.seed, 3, args.value_size);
        let get = Pending { op: Op::Get, key: 3, written: true };
        judge(&mut tally, &plan, &get, Reply::Value(&ours), false, &mut scratch);
        judge(&mut tally, &plan, &get, Reply::Missing, false, &mut scratch);
        assert_eq!((tally.verified(), tally.errors), (0, 1), "{tally:?}");
        assert!(tally.samples[0].starts_with("mismatch during warm-up: key:00000003"), "{tally:?}");
        judge(&mut tally, &plan, &get, Reply::Value(&ours), true, &mut scratch);
        judge(&mut tally, &plan, &get, Reply::Missing, true, &mut scratch);
        assert_eq!((tally.hits, tally.mismatches, tally.verified(), tally.errors), (1, 1, 2, 1));
    }
}
