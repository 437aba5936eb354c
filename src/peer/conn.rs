//! One open connection to a peer: the handshake it opens with, one write of a round's
//! requests, and reading the replies back by their shape within a deadline.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::protocol::{ReplyLine, ReplyShape, line_len, reply_len};
use crate::sys;

/// How far a socket's read timeout may be from the time left before it is reset: a
/// `setsockopt` per read would be a syscall per read, so reads within this much of the
/// exchange's deadline share one setting.
const TIMEOUT_SLACK: Duration = Duration::from_millis(10);

/// Bytes to make room for before each read of replies.
const READ_CHUNK: usize = 16 * 1024;

/// Non-blocking reads a connection waiting on a peer tries before it blocks.
///
/// Measured with `cargo run --release --example forward_throughput` (forwarded over
/// local, same run, two runs each): without spinning 0.13-0.29 at depth 1 and
/// 0.28-0.36 at depth 16; with 16 tries 0.42-0.49 and 0.37-0.50; 64 tries were no
/// better than 16. BENCHMARKS.md has the table.
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
    /// The read timeout currently set on the socket.
    read_timeout: Duration,
    /// The handshake was sent but its reply not yet read.
    pub hello_pending: bool,
    /// Taken from the pool rather than just opened: it may have died while idle.
    pub reused: bool,
}

impl PeerConn {
    /// A new connection whose handshake is still to be sent.
    pub fn new(stream: TcpStream, read_timeout: Duration) -> PeerConn {
        PeerConn { stream, read_timeout, hello_pending: true, reused: false }
    }

    /// Writes `requests`, preceded by the handshake line if the connection is new, as
    /// one write where the kernel takes it all.
    pub fn send(&mut self, hello: &[u8], requests: &[u8]) -> Result<(), Failure> {
        if !self.hello_pending {
            self.stream.write_all(requests)?;
            return Ok(());
        }
        let written = self.stream.write_vectored(&[IoSlice::new(hello), IoSlice::new(requests)])?;
        if written == 0 {
            return Err(Failure::Closed);
        }
        if written < hello.len() {
            self.stream.write_all(&hello[written..])?;
            self.stream.write_all(requests)?;
        } else {
            self.stream.write_all(&requests[written - hello.len()..])?;
        }
        Ok(())
    }

    /// Reads until there is one reply per entry of `shapes` in `replies` (each ending
    /// recorded in `reply_ends`), or fails. Returns how the handshake went on a new
    /// connection; a reused one was accepted before.
    pub fn read_replies(
        &mut self,
        replies: &mut Vec<u8>,
        reply_ends: &mut Vec<usize>,
        shapes: &[ReplyShape],
        deadline: Deadline,
    ) -> Result<HelloReply, Failure> {
        let mut hello = HelloReply::Accepted;
        // Where the first reply not yet accounted for starts.
        let mut start = reply_ends.last().copied().unwrap_or(0);
        loop {
            if self.hello_pending
                && let Some(len) = line_len(&replies[start..])
            {
                hello = read_hello(&replies[start..start + len])?;
                replies.drain(start..start + len);
                self.hello_pending = false;
            }
            while !self.hello_pending && reply_ends.len() < shapes.len() {
                let shape = shapes[reply_ends.len()];
                match reply_len(&replies[start..], shape).map_err(|bad| Failure::Protocol(bad.0))? {
                    Some(len) => {
                        start += len;
                        reply_ends.push(start);
                    }
                    None => break,
                }
            }
            if !self.hello_pending && reply_ends.len() == shapes.len() {
                if start != replies.len() {
                    return Err(Failure::Protocol("more replies than requests".to_string()));
                }
                return Ok(hello);
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
        let len = buffer.len();
        buffer.resize(len + READ_CHUNK, 0);
        let result = match read_spinning(&self.stream, &mut buffer[len..]) {
            Ok(Some(read)) => Ok(read),
            Ok(None) => self.stream.read(&mut buffer[len..]),
            Err(error) => Err(error),
        };
        let read = *result.as_ref().unwrap_or(&0);
        buffer.truncate(len + read);
        match result {
            Ok(0) => Err(Failure::Closed),
            Ok(_) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// What the first reply line on a new connection says about the handshake.
pub fn read_hello(line: &[u8]) -> Result<HelloReply, Failure> {
    match ReplyLine::of(line) {
        ReplyLine::Ok => Ok(HelloReply::Accepted),
        ReplyLine::Error(_) => Ok(HelloReply::Refused(line.to_vec())),
        _ => Err(Failure::Protocol(format!(
            "handshake answered {:?}; is this a kv node of this version?",
            String::from_utf8_lossy(line).trim_end()
        ))),
    }
}

/// Tries a few non-blocking reads, yielding between them, before the caller blocks:
/// a peer usually answers within tens of microseconds, and catching its reply
/// without going to sleep saves this thread a wake-up (see worker::SPIN_TRIES for the
/// same trick on channels). `Ok(None)`: nothing came, block as usual.
fn read_spinning(stream: &TcpStream, buffer: &mut [u8]) -> io::Result<Option<usize>> {
    for _ in 0..PEER_SPIN_TRIES {
        if let Some(read) = sys::recv_now(stream, buffer)? {
            return Ok(Some(read));
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
    }
}
