//! One raw client connection: exact bytes out, exact bytes in, every read bounded by
//! [`DEADLINE`]; STATS replies parsed and checked for shape; the guide's sequence; and
//! showing and comparing bytes in assertion messages.
//!
//! The tests assert on the exact bytes of the protocol, so [`Conn`] knows nothing about
//! reply shapes beyond "read N bytes" and "read one line": a test states the bytes it
//! expects and [`Conn::expect`] reads exactly that many and compares them byte for
//! byte ([`show`] is only for messages: it is lossy and shortened).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::DEADLINE;

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

    /// True if nothing arrives within `within` (a bounded wait on a condition: that
    /// the server stays silent). What does arrive is kept for the next read.
    pub fn nothing_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut chunk = [0u8; 4096];
        while self.pending.is_empty() && Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("read failed while expecting silence: {e}"),
            }
        }
        self.pending.is_empty()
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
    #[track_caller]
    pub fn expect(&mut self, expected: &[u8]) {
        let got = self.read_exact_bytes(expected.len());
        assert_same_bytes(&got, expected);
    }

    /// Sends `request` and asserts the reply is exactly `reply`.
    #[track_caller]
    pub fn roundtrip(&mut self, request: &[u8], reply: &[u8]) {
        self.send(request);
        let got = self.read_exact_bytes(reply.len());
        if got != reply {
            assert_same_bytes_in(&got, reply, &format!("the reply to {}", show(request)));
        }
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
    /// may drop with their input unread (the kernel then answers that input with a
    /// reset). Any other read error fails the test.
    pub fn read_until_gone(&mut self) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return (std::mem::take(&mut self.pending), false),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    return (std::mem::take(&mut self.pending), true);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    assert!(Instant::now() < deadline, "the server neither closed nor reset the connection");
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read failed while waiting for a close or a reset: {e}"),
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

    /// One STATS figure as text, for the ones that are words (`node`, `peer.<n>.state`).
    pub fn stat_text(&mut self, name: &str) -> String {
        stat_text_of(&self.stats(), name)
    }
}

/// The value of `name` in a STATS reply, as text.
pub fn stat_text_of(stats: &[(String, String)], name: &str) -> String {
    let (_, value) =
        stats.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("STATS has no {name}: {stats:?}"));
    value.clone()
}

/// The numeric value of `name` in a STATS reply.
pub fn stat_of(stats: &[(String, String)], name: &str) -> u64 {
    let value = stat_text_of(stats, name);
    value.parse().unwrap_or_else(|_| panic!("STATS {name} is not a number: {value}"))
}

/// Bytes shown readably in assertion messages, shortened when long.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).escape_debug().to_string();
    if bytes.len() > MAX { format!("{text}... ({} bytes)", bytes.len()) } else { text }
}

/// Asserts two byte strings are equal, byte for byte, reporting the first difference
/// instead of printing both whole.
#[track_caller]
pub fn assert_same_bytes(got: &[u8], expected: &[u8]) {
    assert_same_bytes_in(got, expected, "");
}

/// [`assert_same_bytes`], naming what the bytes are in the failure message.
#[track_caller]
pub fn assert_same_bytes_in(got: &[u8], expected: &[u8], what: &str) {
    if got == expected {
        return;
    }
    let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
    let from = at.saturating_sub(40);
    panic!(
        "{what}{}bytes differ at offset {at} (got {} bytes, expected {}):\n got: {}\nwant: {}",
        if what.is_empty() { "" } else { ": " },
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
