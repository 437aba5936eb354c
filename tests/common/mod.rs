//! Helpers shared by the black-box tests: start a server (in this process or as the
//! real `kv` binary), talk to it with raw bytes, and wait on conditions with a deadline.
//!
//! The tests assert on the exact bytes of the protocol, so the connection helper here
//! deliberately knows nothing about reply shapes beyond "read N bytes" and "read one
//! line": a test states the bytes it expects and [`Conn::expect`] reads exactly that
//! many and compares. Every read has a deadline, so a server that answers too little
//! fails a test instead of hanging it, and every child process is killed by a guard.
//!
//! Each test file compiles this module separately and uses only part of it, hence the
//! `dead_code` allowance.
#![allow(dead_code, unsafe_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kv::{Config, Server, ServerHandle};

/// How long any single wait in a test may take before the test fails. Generous: the
/// machine is small and shared, and a slow pass is fine where a hang is not.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// An in-process server on 127.0.0.1 and a free port, with default settings.
pub fn start_server() -> ServerHandle {
    start_server_with(Config { port: 0, ..Config::default() })
}

/// An in-process server with `workers` workers, so that tests spreading buckets over
/// several workers do not depend on the machine's core count.
pub fn start_server_with_workers(workers: usize) -> ServerHandle {
    start_server_with(Config { port: 0, workers, ..Config::default() })
}

/// An in-process server with the given configuration (its port should be 0).
pub fn start_server_with(config: Config) -> ServerHandle {
    Server::bind(config).expect("bind the server").spawn().expect("start the server")
}

/// One raw client connection: bytes out, bytes in, every read bounded by [`DEADLINE`].
pub struct Conn {
    stream: TcpStream,
    /// Bytes received but not yet handed to the test.
    pending: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect to the server");
        Conn::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Conn {
        stream.set_nodelay(true).unwrap();
        // A short socket timeout lets the read loops check the overall deadline.
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        Conn { stream, pending: Vec::new() }
    }

    /// A second handle on the same socket, e.g. to write from another thread.
    pub fn try_clone_stream(&self) -> TcpStream {
        self.stream.try_clone().unwrap()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the server");
    }

    /// Reads more bytes into `pending`. Returns false at end of stream; panics when
    /// `deadline` passes first.
    fn fill(&mut self, deadline: Instant, waiting_for: &dyn Fn() -> String) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    assert!(Instant::now() < deadline, "timed out waiting for {}", waiting_for());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read failed while waiting for {}: {e}", waiting_for()),
            }
        }
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        while self.pending.len() < n {
            let have = self.pending.len();
            let more = self.fill(deadline, &|| format!("{n} bytes (have {have})"));
            assert!(more, "server closed after {} of {n} bytes: {}", self.pending.len(), show(&self.pending));
        }
        self.pending.drain(..n).collect()
    }

    /// Reads one line, including its `\n`.
    pub fn read_line(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                return self.pending.drain(..=end).collect();
            }
            let more = self.fill(deadline, &|| "a line".to_string());
            assert!(more, "server closed in the middle of a line: {}", show(&self.pending));
        }
    }

    /// Reads exactly as many bytes as `expected` holds and asserts they are equal.
    pub fn expect(&mut self, expected: &[u8]) {
        let got = self.read_exact_bytes(expected.len());
        assert_eq!(show(&got), show(expected));
    }

    /// Sends `request` and asserts the reply is exactly `reply`.
    pub fn roundtrip(&mut self, request: &[u8], reply: &[u8]) {
        self.send(request);
        let got = self.read_exact_bytes(reply.len());
        assert_eq!(show(&got), show(reply), "reply to {}", show(request));
    }

    /// Sends `requests` in one write from another thread while this one reads exactly
    /// `reply_len` bytes, so a pipeline larger than the socket buffers cannot deadlock
    /// the two sides. Returns the bytes read.
    pub fn pipeline(&mut self, requests: Vec<u8>, reply_len: usize) -> Vec<u8> {
        let mut writer = self.try_clone_stream();
        let writing = thread::spawn(move || writer.write_all(&requests));
        let got = self.read_exact_bytes(reply_len);
        writing.join().unwrap().expect("write the pipeline");
        got
    }

    /// Reads until the server closes the connection and returns everything read.
    /// A reset fails the test: the server is expected to close cleanly.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return std::mem::take(&mut self.pending),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    assert!(Instant::now() < deadline, "the server did not close the connection");
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read failed instead of a clean close: {e}"),
            }
        }
    }

    /// Reads until the connection ends, by a close or by a reset, and returns what was
    /// read and whether it ended with a reset. For clients whose connection a server
    /// may drop with their input unread (the kernel then sends a reset).
    pub fn read_until_gone(&mut self) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return (std::mem::take(&mut self.pending), false),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    assert!(Instant::now() < deadline, "the server neither closed nor reset the connection");
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return (std::mem::take(&mut self.pending), true),
            }
        }
    }

    /// Sends STATS and returns its lines as (name, value) pairs, checking the reply's
    /// shape on the way: `name value` lines, then `OK`.
    pub fn stats(&mut self) -> Vec<(String, String)> {
        self.send(b"STATS\r\n");
        self.read_stats_reply()
    }

    /// Reads one STATS reply (see [`Conn::stats`]).
    pub fn read_stats_reply(&mut self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for _ in 0..10_000 {
            let line = self.read_line();
            if line == b"OK\r\n" {
                return pairs;
            }
            let text = std::str::from_utf8(&line).expect("STATS lines are text");
            let body =
                text.strip_suffix("\r\n").unwrap_or_else(|| panic!("STATS line without \\r\\n: {text:?}"));
            let (name, value) = body.split_once(' ').unwrap_or_else(|| panic!("STATS line {body:?}"));
            assert!(!name.is_empty() && !value.is_empty(), "STATS line {body:?}");
            assert!(!value.contains(char::is_whitespace), "STATS value is not one word: {body:?}");
            pairs.push((name.to_string(), value.to_string()));
        }
        panic!("STATS reply never ended with OK");
    }

    /// One numeric STATS figure.
    pub fn stat(&mut self, name: &str) -> u64 {
        stat_of(&self.stats(), name)
    }
}

/// The numeric value of `name` in a STATS reply.
pub fn stat_of(stats: &[(String, String)], name: &str) -> u64 {
    let (_, value) =
        stats.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("STATS has no {name}: {stats:?}"));
    value.parse().unwrap_or_else(|_| panic!("STATS {name} is not a number: {value}"))
}

/// Polls `condition` until it holds or [`DEADLINE`] passes; panics with `what` then.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(1);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Polls a fresh connection's STATS until `connections` is `expected` (the polling
/// connection itself included).
pub fn wait_for_connections(addr: SocketAddr, expected: u64) {
    let mut conn = Conn::connect(addr);
    wait_until(&format!("STATS connections is {expected}"), || conn.stat("connections") == expected);
}

/// A bucket name starting with `prefix` that worker `worker` of `workers` owns, so a
/// test can aim requests (and crashes) at one worker.
pub fn bucket_on(worker: usize, workers: usize, prefix: &str) -> String {
    assert!(worker < workers);
    for i in 0..100_000 {
        let name = format!("{prefix}{i}");
        if kv::worker::worker_for(name.as_bytes(), workers) == worker {
            return name;
        }
    }
    panic!("no bucket named {prefix}<n> lands on worker {worker} of {workers}");
}

/// Bytes shown readably in assertion messages, shortened when long.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).escape_debug().to_string();
    if bytes.len() > MAX { format!("{text}... ({} bytes)", bytes.len()) } else { text }
}

/// Asserts two long byte strings are equal, reporting the first difference instead of
/// printing both whole.
pub fn assert_same_bytes(got: &[u8], expected: &[u8]) {
    if got == expected {
        return;
    }
    let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
    let from = at.saturating_sub(40);
    panic!(
        "bytes differ at offset {at} (got {} bytes, expected {}):\n got: {}\nwant: {}",
        got.len(),
        expected.len(),
        show(&got[from..got.len().min(at + 80)]),
        show(&expected[from..expected.len().min(at + 80)]),
    );
}

/// The guide's integration test as (request, reply) pairs, without line ends.
pub const GUIDE_SEQUENCE: &[(&[u8], &[u8])] = &[
    (b"UNKNOWN shopping", b"UNKNOWN COMMAND\r\n"),
    (b"GET shopping eggs", b"NOT FOUND\r\n"),
    (b"CREATE shopping", b"OK\r\n"),
    (b"PUT shopping eggs 3", b"OK\r\n"),
    (b"GET shopping eggs", b"3\r\nOK\r\n"),
    (b"DELETE shopping eggs", b"OK\r\n"),
    (b"GET shopping eggs", b"\r\nOK\r\n"),
];

/// Runs [`GUIDE_SEQUENCE`] on `conn`, ending each request with `line_end`.
pub fn run_guide_sequence(conn: &mut Conn, line_end: &[u8]) {
    for (request, reply) in GUIDE_SEQUENCE {
        conn.roundtrip(&[request, line_end].concat(), reply);
    }
}

/// The `kv` binary under test.
pub fn kv_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kv"));
    // The start-up line is logged at info, the binary's default level; make sure a
    // RUST_LOG in the environment running the tests does not hide it.
    command.env_remove("RUST_LOG");
    command
}

/// A `kv` server running as a child process. Killed and reaped when dropped.
pub struct ChildServer {
    child: Child,
    addr: SocketAddr,
    /// Every line the child has logged on stderr so far.
    log: Arc<Mutex<Vec<String>>>,
    /// Drains the child's stderr to its end so the child never blocks on a full pipe.
    stderr_thread: Option<JoinHandle<()>>,
}

impl ChildServer {
    /// Starts `command` and waits for its `kv listening on ADDR` line on stderr.
    pub fn start(mut command: Command) -> ChildServer {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the kv binary");
        let stderr = child.stderr.take().unwrap();
        let (addr_tx, addr_rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log_lines = log.clone();
        let stderr_thread = thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split_once("kv listening on ").map(|(_, rest)| rest) {
                    let word = rest.split_whitespace().next().unwrap_or("");
                    if let (Some(tx), Ok(addr)) = (addr_tx.take(), word.parse::<SocketAddr>()) {
                        let _ = tx.send(addr);
                    }
                }
                log_lines.lock().unwrap().push(line);
            }
        });
        let mut server = ChildServer {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
            stderr_thread: Some(stderr_thread),
        };
        match addr_rx.recv_timeout(DEADLINE) {
            Ok(addr) => server.addr = addr,
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                panic!("kv never logged `kv listening on ADDR` (exit status so far: {status:?})");
            }
        }
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The child's process id, e.g. to read its memory use from `/proc/<pid>/status`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines the child has logged so far that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|line| line.contains(needle)).cloned().collect()
    }

    /// Everything the child has logged so far, for failure messages.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends the child a real signal (SIGTERM, SIGINT, ...).
    pub fn signal(&mut self, signal: libc::c_int) {
        // Only while it has not been reaped: after that its pid may belong to another
        // process.
        assert!(self.child.try_wait().unwrap().is_none(), "the kv process has already exited");
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed: {}", std::io::Error::last_os_error());
    }

    /// The exit status if the child exits within `within`, polling; `None` if it is
    /// still running then.
    pub fn wait_for_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The exit status if the child has already exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(thread) = self.stderr_thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a finished child process left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `command` to completion with `stdin` as its input, killing it if it outlives
/// [`DEADLINE`].
pub fn run_to_end(mut command: Command, stdin: &[u8]) -> Finished {
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the kv binary");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
        // Dropping `input` closes the child's stdin.
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the kv process did not exit within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Finished { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}
