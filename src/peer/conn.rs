//! One open connection to a peer: the handshake it opens with, one write of a round's
//! request frames, and reading the reply frames back within a deadline.
//!
//! It also answers the question the forwarder's at-most-once rule hangs on: did any
//! byte of the requests leave ([`PeerConn::wrote_any`]), and had the peer already
//! closed an idle connection before we wrote to it ([`PeerConn::closed_while_idle`]).

use std::fmt;
use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::logcap::quote;
use crate::protocol::{
    ErrorKind, REPLY_HEAD, Reply, ReplyLine, is_auth_failure, is_routing_mismatch, line_len, reply_frame_len,
    trim_line_end,
};
use crate::sys;

/// How far a socket's read timeout may be from the time left before it is reset: a
/// `setsockopt` per read would be a syscall per read, so reads within this much of the
/// exchange's deadline share one setting.
const TIMEOUT_SLACK: Duration = Duration::from_millis(10);

/// Bytes to make room for before each read of replies.
const READ_CHUNK: usize = 16 * 1024;

/// Largest reply frame taken from a peer. A reply is one request's answer, at most a
/// bucket's whole contents (`HGETALL`); a length past this means the link is out of
/// step, not a reply to buffer.
const MAX_REPLY_FRAME: usize = 1 << 30;

/// Non-blocking reads a connection waiting on a peer tries before it blocks.
///
/// Measured with `cargo run --release --example forward_throughput` (forwarded over
/// local, same run, two runs each): without spinning 0.13-0.29 at depth 1 and
/// 0.28-0.36 at depth 16; with 16 tries 0.42-0.49 and 0.37-0.50; 64 tries were no
/// better than 16. BENCHMARKS.md has the table. Spinning only while the node has no
/// more connections than cores was tried with two node processes at 8 connections on
/// 2 cores: no difference in CPU per request or throughput beyond the noise
/// (benches/results/16-forward-depth1.md), so every wait spins.
const PEER_SPIN_TRIES: u32 = 16;

/// Why an exchange with a peer failed.
#[derive(Debug)]
pub enum Failure {
    /// The connection could not be opened.
    Connect(io::Error),
    /// A read or write failed.
    Io(io::Error),
    /// The peer did not answer in time.
    TimedOut,
    /// The peer closed the connection.
    Closed,
    /// The peer answered something that is not a reply to what was sent.
    Protocol(String),
    /// Every connection to the peer was busy for the whole timeout. Not the peer's
    /// fault, so it does not count towards marking it down.
    Busy,
    /// The peer is at its connection limits and turned the connection away unread
    /// (`ERROR too many connections`). Nothing sent on it was applied; the peer is
    /// healthy, so this does not count towards marking it down.
    Full,
    /// The peer turned the connection away before reading a request for another
    /// reason (`ERROR shutting down`): its error text. Nothing sent on it was applied.
    Rejected(String),
    /// The handshake was refused before any request was sent (node authentication,
    /// `peer/handshake.rs`): the error line to relay to every request, the peer's or
    /// this node's own when the peer failed to prove the secret.
    Refused(Vec<u8>),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(error) => write!(f, "cannot connect: {error}"),
            Failure::Io(error) => write!(f, "{error}"),
            Failure::TimedOut => f.write_str("timed out"),
            Failure::Closed => f.write_str("connection closed"),
            Failure::Protocol(text) => write!(f, "unexpected reply: {text}"),
            Failure::Busy => f.write_str("all connections busy"),
            Failure::Full => f.write_str("the peer is at its connection limit"),
            Failure::Rejected(text) => write!(f, "connection turned away by the peer: {text}"),
            Failure::Refused(line) => write!(f, "handshake refused: {}", quote(line)),
        }
    }
}

impl Failure {
    /// True for failures that say nothing about the peer's health: every pooled
    /// connection was busy, the peer was full, or this process ran out of descriptors.
    /// They do not count towards marking the peer down.
    pub fn is_local_or_busy(&self) -> bool {
        match self {
            Failure::Busy | Failure::Full => true,
            Failure::Connect(error) | Failure::Io(error) => {
                matches!(
                    error.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                )
            }
            _ => false,
        }
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::TimedOut,
            _ => Failure::Io(error),
        }
    }
}

/// When an exchange must be over. The soft deadline is the request timeout; past it,
/// replies already received are still read, up to the hard one.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub soft: Instant,
    pub hard: Instant,
}

impl Deadline {
    /// A deadline `timeout` from now. A timeout too large for the clock is taken as
    /// "a very long time" rather than overflowing.
    pub fn after(timeout: Duration) -> Deadline {
        let now = Instant::now();
        let far = |t: Duration| now.checked_add(t).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
        Deadline { soft: far(timeout), hard: far(timeout.saturating_mul(2)) }
    }
}

/// What the handshake's reply said, once read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloReply {
    /// `OK` (or the connection was accepted before).
    Accepted,
    /// The peer refused us; its error line, which it will give every request too.
    Refused(Vec<u8>),
}

/// One open connection to a peer.
#[derive(Debug)]
pub struct PeerConn {
    pub stream: TcpStream,
    /// The read and write timeouts currently set on the socket.
    read_timeout: Duration,
    write_timeout: Duration,
    /// The line to open the connection's first write with: the version-1 handshake,
    /// or the version-2 proof once the challenge is answered (`handshake.rs`).
    pub hello: Vec<u8>,
    /// The handshake was sent but its reply not yet read.
    pub hello_pending: bool,
    /// Taken from the pool rather than just opened: it may have died while idle.
    pub reused: bool,
    /// Some byte of the current requests was handed to the kernel.
    wrote: bool,
}

impl PeerConn {
    /// A new connection whose handshake line `hello` is still to be sent; `timeout` is
    /// what its socket's read and write timeouts are set to.
    pub fn new(stream: TcpStream, timeout: Duration, hello: Vec<u8>) -> PeerConn {
        PeerConn {
            stream,
            read_timeout: timeout,
            write_timeout: timeout,
            hello,
            hello_pending: true,
            reused: false,
            wrote: false,
        }
    }

    /// True if some byte of the last [`PeerConn::send`] may have reached the peer. A
    /// send that failed before its first byte left delivered nothing.
    pub fn wrote_any(&self) -> bool {
        self.wrote
    }

    /// True if an idle pooled connection can no longer carry requests: the peer closed
    /// or reset it while it sat in the pool, or sent bytes nobody asked for. One
    /// non-blocking `recv` per exchange, on reused connections only. A kv node sends
    /// its FIN only once it has stopped serving the connection (it closed an idle
    /// connection, or is shutting down), so requests written after it would never be
    /// applied: such a connection is replaced before anything is written to it.
    pub fn closed_while_idle(&self) -> bool {
        let mut byte = [0u8; 1];
        !matches!(sys::recv_now(&self.stream, &mut byte), Ok(None))
    }

    /// Writes `requests`, preceded by the handshake line if the connection is new, as
    /// one write where the kernel takes it all, and fails once the soft deadline has
    /// passed. [`PeerConn::wrote_any`] says afterwards whether any of it left.
    pub fn send(&mut self, requests: &[u8], deadline: Deadline) -> Result<(), Failure> {
        self.wrote = false;
        let hello: &[u8] = if self.hello_pending { &self.hello } else { &[] };
        let (mut hello_at, mut request_at) = (0, 0);
        while request_at < requests.len() || hello_at < hello.len() {
            limit_write(&self.stream, &mut self.write_timeout, deadline)?;
            let slices = [IoSlice::new(&hello[hello_at..]), IoSlice::new(&requests[request_at..])];
            let written = match self.stream.write_vectored(&slices) {
                Ok(0) => return Err(Failure::Closed),
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // As for reads: the socket's timeout may end up to TIMEOUT_SLACK early.
                Err(error) if crate::socket::is_timeout(&error) && Instant::now() < deadline.soft => continue,
                Err(error) => return Err(error.into()),
            };
            self.wrote = true;
            let into_hello = written.min(hello.len() - hello_at);
            hello_at += into_hello;
            request_at += written - into_hello;
        }
        Ok(())
    }

    /// Reads until `replies` holds `count` reply frames (where each reply's bytes are
    /// recorded in `spans`), or fails. Returns how the handshake went on a new
    /// connection; a reused one was accepted before. A refused handshake returns at
    /// once: the peer answers nothing else on that connection. Bytes past the last
    /// reply are a protocol error: the peer answered more than was asked.
    pub fn read_replies(
        &mut self,
        replies: &mut Vec<u8>,
        spans: &mut Vec<(usize, usize)>,
        count: usize,
        deadline: Deadline,
    ) -> Result<HelloReply, Failure> {
        let hello = self.read_frames(replies, spans, count, deadline)?;
        if hello == HelloReply::Accepted && spans.last().map_or(0, |span| span.1) != replies.len() {
            return Err(Failure::Protocol("more replies than requests".to_string()));
        }
        Ok(hello)
    }

    /// [`PeerConn::read_replies`], leaving whatever follows the last reply in
    /// `replies` (a subscription's first events).
    pub fn read_frames(
        &mut self,
        replies: &mut Vec<u8>,
        spans: &mut Vec<(usize, usize)>,
        count: usize,
        deadline: Deadline,
    ) -> Result<HelloReply, Failure> {
        // Where the first byte not yet accounted for is.
        let mut start = spans.last().map_or(0, |span| span.1);
        loop {
            if self.hello_pending
                && let Some(len) = line_len(&replies[start..])
            {
                let hello = read_hello(&replies[start..start + len])?;
                self.hello_pending = false;
                if let HelloReply::Refused(_) = hello {
                    return Ok(hello);
                }
                start += len;
            }
            while !self.hello_pending && spans.len() < count {
                let Some(len) = reply_frame_len(&replies[start..]) else { break };
                if len > MAX_REPLY_FRAME {
                    return Err(Failure::Protocol(format!("a reply frame of {len} bytes")));
                }
                let body = start + REPLY_HEAD;
                if replies.len() < body + len {
                    break;
                }
                spans.push((body, body + len));
                start = body + len;
            }
            if !self.hello_pending && spans.len() == count {
                return Ok(HelloReply::Accepted);
            }
            self.read_more(replies, deadline)?;
        }
    }

    /// One read of more reply bytes onto the end of `buffer`, within the deadline.
    pub fn read_more(&mut self, buffer: &mut Vec<u8>, deadline: Deadline) -> Result<(), Failure> {
        let now = Instant::now();
        if now >= deadline.hard {
            return Err(Failure::TimedOut);
        }
        // Past the soft deadline, replies already in the socket are still taken (another
        // peer may have used up the time), but nothing more is waited for.
        let wait = deadline.soft.saturating_duration_since(now).max(Duration::from_millis(1));
        if self.read_timeout.abs_diff(wait) > TIMEOUT_SLACK {
            self.stream.set_read_timeout(Some(wait))?;
            self.read_timeout = wait;
        }
        let result = match read_spinning(&self.stream, buffer) {
            Ok(Some(read)) => Ok(read),
            Ok(None) => sys::recv_append(&self.stream, buffer, READ_CHUNK, false),
            Err(error) => Err(error),
        };
        match result {
            Ok(0) => Err(Failure::Closed),
            Ok(_) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(()),
            // The socket's timeout may be up to TIMEOUT_SLACK shorter than the time
            // that was left: a timeout before the deadline is not one.
            Err(error) if crate::socket::is_timeout(&error) && Instant::now() < deadline.soft => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// Sets `stream`'s write timeout, now `timeout`, to the time left before the soft
/// deadline, or fails once it has passed. A socket's timeout bounds one write call
/// only, and a peer that reads slowly lets each call take a little: with the fixed
/// `--peer-timeout`, a large exchange to such a peer went on for as long as the peer
/// kept reading, far past the deadline.
fn limit_write(stream: &TcpStream, timeout: &mut Duration, deadline: Deadline) -> Result<(), Failure> {
    let left = deadline.soft.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Failure::TimedOut);
    }
    if timeout.abs_diff(left) > TIMEOUT_SLACK {
        stream.set_write_timeout(Some(left))?;
        *timeout = left;
    }
    Ok(())
}

/// True for the line a node at its connection cap answers with.
fn is_too_many_connections(line: &[u8]) -> bool {
    let mut full = Vec::new();
    Reply::Error(ErrorKind::TooManyConnections).write_text(&mut full);
    trim_line_end(line) == trim_line_end(&full)
}

/// What the first reply line on a new connection says about the handshake. Only a
/// routing refusal is the peer's answer to relay; any other error line (too many
/// connections, shutting down) means the peer turned the connection away unread.
pub fn read_hello(line: &[u8]) -> Result<HelloReply, Failure> {
    match ReplyLine::of(line) {
        ReplyLine::Ok => Ok(HelloReply::Accepted),
        ReplyLine::Error(text) if is_routing_mismatch(text) || is_auth_failure(text) => {
            Ok(HelloReply::Refused(line.to_vec()))
        }
        ReplyLine::Error(_) if is_too_many_connections(line) => Err(Failure::Full),
        ReplyLine::Error(text) => Err(Failure::Rejected(quote(text))),
        _ => Err(Failure::Protocol(format!(
            "handshake answered {}; is this a kv node of this version?",
            quote(line)
        ))),
    }
}

/// Tries a few non-blocking reads, yielding between them, before the caller blocks:
/// a peer usually answers within tens of microseconds, and catching its reply
/// without going to sleep saves this thread a wake-up (see worker::SPIN_TRIES for the
/// same trick on channels). `Ok(None)`: nothing came, block as usual.
fn read_spinning(stream: &TcpStream, buffer: &mut Vec<u8>) -> io::Result<Option<usize>> {
    for _ in 0..PEER_SPIN_TRIES {
        match sys::recv_append(stream, buffer, READ_CHUNK, true) {
            Ok(read) => return Ok(Some(read)),
            Err(error) if sys::nothing_yet(&error) => {}
            Err(error) => return Err(error),
        }
        std::thread::yield_now();
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_from_a_huge_timeout_does_not_overflow() {
        let deadline = Deadline::after(Duration::MAX);
        assert!(deadline.hard >= deadline.soft);
        assert!(deadline.soft > Instant::now());
    }

    #[test]
    fn handshake_replies() {
        assert_eq!(read_hello(b"OK\r\n").unwrap(), HelloReply::Accepted);
        assert!(matches!(read_hello(b"ERROR routing mismatch: x\r\n"), Ok(HelloReply::Refused(_))));
        assert!(read_hello(b"PONG\r\n").is_err());
        assert!(matches!(read_hello(b"ERROR authentication failed\r\n"), Ok(HelloReply::Refused(_))));
    }

    /// Regression: an owner at its connection cap answered the handshake `ERROR too
    /// many connections`, which was taken for a refusal of this node and relayed.
    #[test]
    fn a_full_peer_is_a_rejection_not_a_refusal() {
        let full = read_hello(b"ERROR too many connections\r\n").unwrap_err();
        assert!(matches!(full, Failure::Full), "{full:?}");
        assert!(full.is_local_or_busy(), "a full peer is not a dead one");
        let stopping = read_hello(b"ERROR shutting down\r\n").unwrap_err();
        assert!(!stopping.is_local_or_busy());
        let long = [b"ERROR ".as_slice(), &[b'x'; 500], b"\r\n"].concat();
        assert!(read_hello(&long).unwrap_err().to_string().len() < 150, "quoted cut short");
    }
}
