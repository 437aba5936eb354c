//! A client socket's manners: closing without losing replies, turning a client away
//! with one line, and the idle clock of `--idle-timeout`.
//!
//! Closing a socket that still has unread input makes the kernel send a reset, which
//! throws away replies still in our send buffer. Every close here reads what the
//! client still sends first, within a bound of bytes and time.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::protocol::Reply;

/// Most input read and thrown away while closing after `QUIT` or at shutdown.
const CLOSE_DRAIN_BYTES: usize = 1024 * 1024;
/// Most time spent on that.
const CLOSE_DRAIN_TIME: Duration = Duration::from_secs(1);

/// Closes a connection whose last reply has been written, without losing it: say we
/// are done writing, then read and drop what the client still sends until it closes
/// too, within a bound of bytes and time.
pub(crate) fn close_after_last_reply(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + CLOSE_DRAIN_TIME;
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < CLOSE_DRAIN_BYTES {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            break;
        };
        if stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match (&*stream).read(&mut scratch) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Sends `reply` to a connection we will not serve, then closes it.
///
/// Runs on the acceptor, so it never blocks: whatever the client already sent is
/// read and dropped first.
pub(crate) fn reject(mut stream: &TcpStream, reply: Reply<'_>) {
    if stream.set_nonblocking(true).is_ok() {
        let mut scratch = [0u8; 1024];
        for _ in 0..16 {
            match stream.read(&mut scratch) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }
    let mut line = Vec::new();
    reply.write_text(&mut line);
    let _ = stream.write_all(&line);
    let _ = stream.shutdown(Shutdown::Write);
}

/// True for the errors a read timeout gives.
pub(crate) fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// When a connection last completed a request, for `--idle-timeout`.
pub(crate) struct IdleClock {
    limit: Duration,
    last_request: Instant,
    /// The socket's read timeout is shorter than `limit` (a partial line is pending).
    shortened: bool,
}

impl IdleClock {
    /// Starts the clock and gives the socket its read timeout.
    pub fn start(stream: &TcpStream, limit: Duration) -> io::Result<Self> {
        stream.set_read_timeout(Some(limit))?;
        Ok(IdleClock { limit, last_request: Instant::now(), shortened: false })
    }

    /// A request completed: the full limit applies again. Touches the socket only
    /// if the timeout had been shortened, so the common path costs no syscall.
    pub fn reset(&mut self, stream: &TcpStream) -> io::Result<()> {
        self.last_request = Instant::now();
        if self.shortened {
            self.shortened = false;
            stream.set_read_timeout(Some(self.limit))?;
        }
        Ok(())
    }

    /// A read ended without a whole request. True when the connection has now been
    /// idle for the whole limit (and is to be closed); otherwise the socket wakes its
    /// reader when the limit runs out rather than a full limit from now, so a client
    /// trickling a line that never ends is closed all the same.
    pub fn expired(&mut self, stream: &TcpStream) -> io::Result<bool> {
        match self.limit.checked_sub(self.last_request.elapsed()).filter(|left| !left.is_zero()) {
            None => {
                log::debug!("closing a connection idle for {:?}", self.limit);
                Ok(true)
            }
            Some(left) => {
                self.shortened = true;
                stream.set_read_timeout(Some(left))?;
                Ok(false)
            }
        }
    }
}
