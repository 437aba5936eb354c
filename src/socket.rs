//! A client socket's manners: closing without losing replies, turning a client away
//! with one line, the idle clock of `--idle-timeout`, and the [`Ledger`] of what was
//! written, for counting what a close at the end of the shutdown grace lost.
//!
//! Closing a socket that still has unread input makes the kernel send a reset, which
//! throws away replies still in our send buffer; so does data arriving after our FIN
//! on a socket whose reading a stop has shut. So a close reads and drops what the
//! client still sends until the client's kernel has acknowledged every byte we wrote
//! (after which a reset loses nothing), within a deadline, and only then says we are
//! done writing. Our FIN, once sent, counts in the kernel's tally of unacknowledged
//! bytes ([`undelivered`] takes it out): it is no reply, and a client that resets
//! before acknowledging it has still received every reply.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::protocol::{Dialect, Reply};
use crate::sys::{self, TcpState};

/// How long a close after `QUIT` (or the HTTP guard) waits for the client to take its
/// last replies.
pub(crate) const CLOSE_DRAIN_TIME: Duration = Duration::from_secs(1);

/// How often a close looks again at what the client has not yet acknowledged.
const CLOSE_POLL: Duration = Duration::from_millis(10);

/// Closes a connection whose last reply has been written, without losing it: read and
/// drop what the client still sends until its kernel has acknowledged every reply
/// byte we wrote, the connection is over (the client reset it), or `deadline` passes;
/// only then say we are done writing. Returns how many reply bytes were still
/// unacknowledged then (0: nothing was lost).
///
/// The FIN waits for the acknowledgements because a stop has already shut our
/// reading (`shutdown.rs`): once a socket whose reading is shut has sent its FIN, the
/// kernel answers any further data from the client with a reset, which throws away
/// every reply not yet acknowledged. A client that pipelines while kv stops would lose
/// the replies to writes kv applied. Before the FIN its data is only queued.
pub(crate) fn close_after_last_reply(stream: &TcpStream, deadline: Instant) -> usize {
    let unacknowledged = wait_for_acknowledgements(stream, deadline);
    let _ = stream.shutdown(Shutdown::Write);
    unacknowledged
}

/// The wait of [`close_after_last_reply`], our FIN not yet sent.
fn wait_for_acknowledgements(stream: &TcpStream, deadline: Instant) -> usize {
    let mut scratch = [0u8; 4096];
    let mut reading = true;
    loop {
        let pending = undelivered(stream, false);
        if pending.bytes == 0 || pending.over {
            return pending.bytes;
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return pending.bytes;
        };
        let wait = left.min(CLOSE_POLL);
        if !reading || stream.set_read_timeout(Some(wait)).is_err() {
            thread::sleep(wait);
            continue;
        }
        match (&*stream).read(&mut scratch) {
            // The client closed its end (or shutdown stopped our reading): wait for
            // the acknowledgements without reading.
            Ok(0) => reading = false,
            Ok(_) => {}
            Err(error) if is_timeout(&error) || error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return undelivered(stream, false).bytes,
        }
    }
}

/// Reply bytes a connection wrote that its client's kernel has not acknowledged, and
/// whether it still may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Undelivered {
    /// Bytes written and not acknowledged, our FIN not counted.
    pub bytes: usize,
    /// The connection is over (reset, or closed both ways): none of `bytes` will be
    /// acknowledged now.
    pub over: bool,
}

/// What `stream`'s client has not acknowledged of the replies written to it.
/// `fin_queued`: we shut down writing on it ourselves, so the kernel counts our FIN
/// as one more byte (also known from the connection's state while it lasts, but not
/// once a reset has closed it).
pub(crate) fn undelivered(stream: &TcpStream, fin_queued: bool) -> Undelivered {
    let unsent = sys::unsent_bytes(stream).unwrap_or(0);
    // Unknown, it is taken as open: waited on, never counted as over.
    let state = sys::tcp_state(stream).unwrap_or(TcpState::Open);
    undelivered_of(unsent, state, fin_queued)
}

/// [`undelivered`], from the kernel's count of unacknowledged bytes and the state.
fn undelivered_of(unsent: usize, state: TcpState, fin_queued: bool) -> Undelivered {
    let fin_counted = fin_queued || state == TcpState::FinUnacknowledged;
    let bytes = if fin_counted { unsent.saturating_sub(1) } else { unsent };
    Undelivered { bytes, over: state == TcpState::Over }
}

/// A socket read as a [`Read`] that never waits: nothing there yet is `WouldBlock`.
pub(crate) struct ReadNow<'a>(pub &'a TcpStream);

impl Read for ReadNow<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        sys::recv_now(self.0, buffer)?.ok_or_else(|| io::ErrorKind::WouldBlock.into())
    }
}

/// What a connection has written, so that replies lost at a forced close can be
/// counted: every reply handed to the socket, and those that never were.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Ledger {
    /// Bytes handed to the socket.
    bytes: u64,
    /// Replies handed to the socket whole.
    replies: u64,
    /// Replies that were never handed over (a write failed before them).
    unwritten: u64,
}

impl Ledger {
    /// `replies` replies in `bytes` bytes went to the socket.
    pub fn wrote(&mut self, bytes: usize, replies: usize) {
        self.bytes += bytes as u64;
        self.replies += replies as u64;
    }

    /// `replies` replies could not be written.
    pub fn not_written(&mut self, replies: usize) {
        self.unwritten += replies as u64;
    }

    /// Replies the client has not received when `unsent` bytes of what was written
    /// are still unacknowledged: those never written, and as many as the unsent bytes
    /// hold at this connection's average reply size (rounded up).
    pub fn lost(&self, unsent: usize) -> u64 {
        let unsent = (unsent as u64).min(self.bytes);
        let in_socket = if unsent == 0 { 0 } else { (unsent * self.replies).div_ceil(self.bytes).max(1) };
        self.unwritten + in_socket
    }
}

/// Sends `reply` to a connection we will not serve, then closes it.
///
/// Runs on the acceptor, so it never blocks: whatever the client already sent is
/// read and dropped first.
pub(crate) fn reject(stream: &TcpStream, reply: Reply<'_>) {
    reject_in(stream, reply, Dialect::Text);
}

/// [`reject`], with the reply written in `dialect` (the RESP door's).
pub(crate) fn reject_in(mut stream: &TcpStream, reply: Reply<'_>, dialect: Dialect) {
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
    reply.write(dialect, &mut line);
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

    /// After a read's round: `saw_request` resets the clock ([`IdleClock::reset`]);
    /// a round without a whole request checks it ([`IdleClock::expired`]). True when
    /// the connection has been idle for the whole limit and is to be closed.
    pub fn after_round(&mut self, saw_request: bool, stream: &TcpStream) -> io::Result<bool> {
        if saw_request {
            self.reset(stream)?;
            Ok(false)
        } else {
            self.expired(stream)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_counts_unwritten_replies_and_those_left_in_the_socket() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.lost(0), 0);
        ledger.wrote(400, 100);
        assert_eq!(ledger.lost(0), 0, "everything acknowledged");
        assert_eq!(ledger.lost(40), 10);
        assert_eq!(ledger.lost(1), 1, "part of a reply is a lost reply");
        ledger.not_written(7);
        assert_eq!(ledger.lost(0), 7);
        assert_eq!(ledger.lost(10_000), 107, "never more than was written");
    }

    #[test]
    fn our_fin_is_not_an_undelivered_reply_byte() {
        let fin_only = undelivered_of(1, TcpState::FinUnacknowledged, true);
        assert_eq!(fin_only, Undelivered { bytes: 0, over: false });
        // A reset after every reply byte was acknowledged, but not the FIN: the kernel
        // counts the FIN for good, and it is still no reply.
        assert_eq!(undelivered_of(1, TcpState::Over, true), Undelivered { bytes: 0, over: true });
        assert_eq!(undelivered_of(41, TcpState::Over, true), Undelivered { bytes: 40, over: true });
        // Reset before we shut down writing: no FIN was ever counted.
        assert_eq!(undelivered_of(40, TcpState::Over, false), Undelivered { bytes: 40, over: true });
        // Shut down by the end of the grace, not by us: the state says the FIN is counted.
        assert_eq!(undelivered_of(41, TcpState::FinUnacknowledged, false).bytes, 40);
        assert_eq!(undelivered_of(40, TcpState::Open, false), Undelivered { bytes: 40, over: false });
        assert_eq!(undelivered_of(0, TcpState::FinAcknowledged, true).bytes, 0);
    }
}
