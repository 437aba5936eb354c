//! What the text and RESP connection loops share about reading requests: a door's
//! reader as they use it, and one read that first gives a burst's buffers back when
//! the client has gone quiet, and keeps the idle clock.
//!
//! The framing itself is each door's (`protocol/frame.rs`, `protocol/resp_frame.rs`);
//! this file only moves bytes into it, so both doors wait, idle and release memory the
//! same way.

use std::io;
use std::net::TcpStream;

use crate::protocol::{LineReader, RespReader};
use crate::round::Round;
use crate::socket::{self, IdleClock};

/// A door's request reader, as its connection loop and the stop see it.
pub(crate) trait Reader {
    /// One read from `source` into the reader's buffer; 0 is the end of the stream.
    fn fill_from(&mut self, source: &mut dyn io::Read) -> io::Result<usize>;
    /// True when the buffer has grown past its first size and holds nothing.
    fn holds_grown_buffer(&self) -> bool;
    /// Goes back to a first-size buffer if it holds nothing.
    fn release_buffer(&mut self);
    /// Takes the next whole request, unlooked at; false when there is none (what the
    /// stop refuses, `shutdown::refuse_waiting`).
    fn take_request(&mut self) -> bool;
}

impl Reader for LineReader {
    fn fill_from(&mut self, source: &mut dyn io::Read) -> io::Result<usize> {
        LineReader::fill_from(self, source)
    }
    fn holds_grown_buffer(&self) -> bool {
        LineReader::holds_grown_buffer(self)
    }
    fn release_buffer(&mut self) {
        LineReader::release_buffer(self)
    }
    fn take_request(&mut self) -> bool {
        self.next_frame().is_some()
    }
}

impl Reader for RespReader {
    fn fill_from(&mut self, source: &mut dyn io::Read) -> io::Result<usize> {
        RespReader::fill_from(self, source)
    }
    fn holds_grown_buffer(&self) -> bool {
        RespReader::holds_grown_buffer(self)
    }
    fn release_buffer(&mut self) {
        RespReader::release_buffer(self)
    }
    fn take_request(&mut self) -> bool {
        self.next_frame().is_some()
    }
}

/// What one read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// Bytes to frame.
    Bytes,
    /// Nothing, and the connection goes on (the idle clock was shortened, or a signal
    /// cut the read short).
    Again,
    /// The connection is over: the client closed, shutdown woke us, or it was idle.
    Closed,
}

/// One read from `stream` into `reader`. Whatever a read brings is served, however
/// late: it may have waited in the socket while the thread was busy. After a burst it
/// looks without waiting first: if the client has gone quiet, the burst's buffers
/// (the reader's and the round's) go back before the thread blocks.
pub(crate) fn read(
    stream: &TcpStream,
    reader: &mut impl Reader,
    round: &mut Round<'_>,
    idle: &mut Option<IdleClock>,
) -> io::Result<Read> {
    if round.holds_burst_buffers() || reader.holds_grown_buffer() {
        match reader.fill_from(&mut socket::ReadNow(stream)) {
            Ok(0) => return Ok(Read::Closed),
            Ok(_) => return Ok(Read::Bytes),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                round.release_idle_buffers();
                reader.release_buffer();
            }
            Err(error) => return Err(error),
        }
    }
    match reader.fill_from(&mut &*stream) {
        // The client closed, or shutdown woke us: what we had is answered.
        Ok(0) => Ok(Read::Closed),
        Ok(_) => Ok(Read::Bytes),
        Err(error) if socket::is_timeout(&error) => match idle {
            Some(clock) => Ok(if clock.expired(stream)? { Read::Closed } else { Read::Again }),
            None => Err(error),
        },
        Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(Read::Again),
        Err(error) => Err(error),
    }
}
