//! Framing: where a request line starts and ends in a byte stream, and what happens
//! to a line over the limit.
//!
//! [`LineReader`] does no I/O beyond filling its buffer from a `Read` it is handed, so
//! it is tested without sockets.

use std::io::{self, Read};

use super::read_buffer::{self, ReadBuffer};

/// Default longest request line, in bytes, not counting its `\r\n`.
///
/// 64 KiB is what the protocol promises: room for a 60 KiB value with its bucket and
/// key, while one hostile client can make the server hold at most this much of an
/// unfinished line.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// Largest line limit accepted. A server holds up to the limit per connection, so a
/// limit beyond this is a mistake, and keeping it small keeps buffer arithmetic far
/// from overflow.
pub const MAX_MAX_LINE: usize = 1024 * 1024 * 1024;

/// One framing event from a [`LineReader`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line, without its `\n` and without a `\r` right before it.
    Line(&'a [u8]),
    /// A line longer than the limit. Reported once, as soon as the reader knows; the
    /// rest of that line is discarded up to its `\n` and nothing of it is returned.
    TooLong,
}

/// Cuts a byte stream into request lines, enforcing the line limit.
///
/// It owns one buffer that grows on demand from a small start up to the limit (so an
/// idle connection costs little) and is reused for the connection's life. A line over
/// the limit is reported as [`Frame::TooLong`] once and then skipped up to its `\n`,
/// however long it goes on: memory never exceeds the limit plus one read.
///
/// ```
/// use kv::protocol::{Frame, LineReader};
///
/// let mut reader = LineReader::new(8);
/// let mut input: &[u8] = b"PING\r\nthis line is too long\nQUIT\n";
/// let mut frames = Vec::new();
/// while reader.fill_from(&mut input).unwrap() > 0 {
///     while let Some(frame) = reader.next_frame() {
///         frames.push(match frame {
///             Frame::Line(line) => line.to_vec(),
///             Frame::TooLong => b"<too long>".to_vec(),
///         });
///     }
/// }
/// assert_eq!(frames, [&b"PING"[..], b"<too long>", b"QUIT"]);
/// ```
#[derive(Debug)]
pub struct LineReader {
    buf: ReadBuffer,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// End of the valid bytes in `buf`.
    end: usize,
    /// Bytes from `start` already known to hold no `\n`, so a partial line is not
    /// rescanned from its beginning on every read.
    scanned: usize,
    /// Inside a too-long line: drop bytes until the next `\n`.
    discarding: bool,
    /// The last read filled all free space: the client has more, read bigger.
    last_read_filled: bool,
    max_line: usize,
}

/// First size of a connection's read buffer: enough for any ordinary request, small
/// enough that ten thousand idle connections cost little.
///
/// 256 bytes, kept inside the reader (`read_buffer.rs`): the buffer was the largest
/// allocation an idle connection owned, and glibc's `calloc` makes all of it resident.
/// Measured with `benches/idle_connections.py`: 4 KiB to 1 KiB took RSS per idle
/// connection from 15.1 to 12.1 KiB, and 1 KiB on the heap to 256 bytes inline took
/// another KiB (BENCHMARKS.md). A longer request or a deep pipeline grows the buffer on
/// its first read (it doubles while reads fill it), and an idle connection gives back
/// one grown past `read_buffer::KEPT_WHEN_IDLE`.
const INITIAL_READ_BUFFER: usize = read_buffer::FIRST_LEN;

/// The buffer doubles up to this size while reads keep filling it, so a client that
/// pipelines deeply is served in large reads (fewer syscalls, larger batches).
/// Separately, a single line may grow it up to the line limit.
const READ_AHEAD_MAX: usize = 64 * 1024;

impl LineReader {
    /// A reader for lines of at most `max_line` bytes (not counting `\r\n`).
    pub fn new(max_line: usize) -> Self {
        let max_line = max_line.clamp(1, MAX_MAX_LINE);
        LineReader {
            buf: ReadBuffer::new(initial_len(max_line)),
            start: 0,
            end: 0,
            scanned: 0,
            discarding: false,
            last_read_filled: false,
            max_line,
        }
    }

    /// The configured limit.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// True when the buffer has grown past what an idle connection keeps
    /// (`read_buffer::KEPT_WHEN_IDLE`) and holds nothing: it can be given back
    /// ([`LineReader::release_buffer`]).
    pub fn holds_grown_buffer(&self) -> bool {
        self.start == self.end && self.buf.worth_giving_back()
    }

    /// Goes back to a buffer of the first size if the current one holds nothing, so
    /// that an idle connection keeps no burst-sized buffer. The next burst grows it
    /// again, doubling per filled read.
    pub fn release_buffer(&mut self) {
        if self.holds_grown_buffer() {
            self.buf.shrink_to(initial_len(self.max_line));
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
            self.last_read_filled = false;
        }
    }

    /// Takes the bytes read but not yet framed: for a connection that stops reading
    /// lines (a node's link switches to frames after its handshake).
    pub fn take_unframed(&mut self) -> Vec<u8> {
        let rest = self.buf[self.start..self.end].to_vec();
        self.start = self.end;
        self.scanned = 0;
        rest
    }

    /// Reads once from `source` into free buffer space, making room first. Returns
    /// the number of bytes read; 0 means end of stream.
    pub fn fill_from<R: Read + ?Sized>(&mut self, source: &mut R) -> io::Result<usize> {
        self.make_room();
        let free = self.buf.len() - self.end;
        let n = source.read(&mut self.buf[self.end..])?;
        self.end += n;
        self.last_read_filled = n == free;
        Ok(n)
    }

    /// Copies `bytes` in as if they had been read (used by the fuzzer and tests).
    /// Returns how many bytes were taken; call [`next_frame`](Self::next_frame) until
    /// it returns `None` before pushing the rest.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        self.make_room();
        let n = bytes.len().min(self.buf.len() - self.end);
        self.buf[self.end..self.end + n].copy_from_slice(&bytes[..n]);
        self.end += n;
        n
    }

    /// Ensures there is free space after `end`: moves a partial line to the front,
    /// and grows the buffer when a partial line fills it (up to the line limit) or
    /// when the last read filled it (up to [`READ_AHEAD_MAX`]).
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
        }
        let read_ahead = self.last_read_filled && self.buf.len() < READ_AHEAD_MAX;
        if self.end < self.buf.len() && !read_ahead {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end < self.buf.len() && !read_ahead {
                return;
            }
        }
        // A full buffer holds one partial line still within the limit (next_frame
        // would have discarded it otherwise): it may grow toward limit + "\r\n".
        let partial_fills = self.end == self.buf.len();
        let limit = if partial_fills { (self.max_line + 2).max(READ_AHEAD_MAX) } else { READ_AHEAD_MAX };
        let new_len = (self.buf.len() * 2).min(limit).max(self.buf.len() + usize::from(partial_fills));
        self.buf.grow(new_len);
    }

    /// The next complete line or limit violation in the buffer, or `None` when more
    /// input is needed.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        loop {
            let pending = &self.buf[self.start + self.scanned..self.end];
            match memchr_newline(pending) {
                Some(offset) => {
                    let newline = self.start + self.scanned + offset;
                    let line_start = self.start;
                    self.start = newline + 1;
                    self.scanned = 0;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    let mut line_end = newline;
                    if line_end > line_start && self.buf[line_end - 1] == b'\r' {
                        line_end -= 1;
                    }
                    if line_end - line_start > self.max_line {
                        return Some(Frame::TooLong);
                    }
                    return Some(Frame::Line(&self.buf[line_start..line_end]));
                }
                None => {
                    if self.discarding {
                        self.start = self.end;
                        self.scanned = 0;
                        return None;
                    }
                    let partial = self.end - self.start;
                    // limit + 1 allows the `\r` of a line exactly at the limit.
                    if partial > self.max_line + 1 {
                        self.discarding = true;
                        self.start = self.end;
                        self.scanned = 0;
                        return Some(Frame::TooLong);
                    }
                    self.scanned = partial;
                    return None;
                }
            }
        }
    }
}

/// A reader's first buffer size for lines of at most `max_line` bytes.
fn initial_len(max_line: usize) -> usize {
    INITIAL_READ_BUFFER.min(max_line + 2).max(64)
}

#[inline]
fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(max_line: usize, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut reader = LineReader::new(max_line);
        let mut out = Vec::new();
        for chunk in chunks {
            let mut rest = *chunk;
            while !rest.is_empty() {
                let taken = reader.push(rest);
                rest = &rest[taken..];
                while let Some(frame) = reader.next_frame() {
                    out.push(match frame {
                        Frame::Line(line) => line.to_vec(),
                        Frame::TooLong => b"!".to_vec(),
                    });
                }
            }
        }
        out
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        assert_eq!(
            frames_of(100, &[b"PI", b"NG\r", b"\nGET a", b" b\n"]),
            [b"PING".to_vec(), b"GET a b".to_vec()]
        );
    }

    #[test]
    fn only_a_cr_right_before_lf_is_dropped() {
        assert_eq!(frames_of(100, &[b"a\rb\r\r\n"]), [b"a\rb\r".to_vec()]);
    }

    #[test]
    fn line_at_the_limit_passes_and_one_over_fails() {
        let at = vec![b'x'; 10];
        let over = [b'y'; 11];
        let input = [&at[..], b"\r\n", &over[..], b"\r\n", b"after\n"].concat();
        assert_eq!(frames_of(10, &[&input]), [at.clone(), b"!".to_vec(), b"after".to_vec()]);
    }

    #[test]
    fn too_long_line_is_reported_once_and_discarded_to_its_newline() {
        let long = vec![b'z'; 10_000];
        let input = [&b"PING\n"[..], &long, b"\nQUIT\n"].concat();
        // Fed in small chunks so the limit is hit before the newline arrives.
        let chunks: Vec<&[u8]> = input.chunks(7).collect();
        assert_eq!(frames_of(64, &chunks), [b"PING".to_vec(), b"!".to_vec(), b"QUIT".to_vec()]);
    }

    #[test]
    fn buffer_grows_only_up_to_the_limit() {
        let mut reader = LineReader::new(100_000);
        let long = vec![b'a'; 90_000];
        let mut rest = &long[..];
        while !rest.is_empty() {
            let n = reader.push(rest);
            rest = &rest[n..];
            assert!(reader.next_frame().is_none());
        }
        reader.push(b"\n");
        assert_eq!(reader.next_frame(), Some(Frame::Line(&long[..])));
        assert!(reader.buf.len() <= 100_002);
    }

    #[test]
    fn buffer_reads_ahead_while_reads_fill_it_and_stops_at_its_cap() {
        let mut reader = LineReader::new(DEFAULT_MAX_LINE);
        assert_eq!(reader.buf.len(), INITIAL_READ_BUFFER);
        let pipeline = b"PING\n".repeat(100_000);
        let mut source = &pipeline[..];
        let mut lines = 0;
        while reader.fill_from(&mut source).unwrap() > 0 {
            while let Some(frame) = reader.next_frame() {
                assert_eq!(frame, Frame::Line(b"PING"));
                lines += 1;
            }
        }
        assert_eq!(lines, 100_000);
        assert_eq!(reader.buf.len(), READ_AHEAD_MAX);
    }

    #[test]
    fn a_buffer_grown_by_a_small_pipeline_is_kept_while_idle() {
        let mut reader = LineReader::new(DEFAULT_MAX_LINE);
        let pipeline = b"PUT bucket key value\r\n".repeat(40);
        let mut source = &pipeline[..];
        let mut lines = 0;
        while reader.fill_from(&mut source).unwrap() > 0 {
            while let Some(Frame::Line(_)) = reader.next_frame() {
                lines += 1;
            }
        }
        assert_eq!(lines, 40);
        assert!(reader.buf.len() > INITIAL_READ_BUFFER, "the pipeline grew the buffer");
        assert!(!reader.holds_grown_buffer(), "and it is kept for the next round");
    }

    #[test]
    fn a_grown_buffer_goes_back_to_its_first_size_only_when_empty() {
        let mut reader = LineReader::new(DEFAULT_MAX_LINE);
        let long = [vec![b'a'; 50_000], b"\npartial".to_vec()].concat();
        let mut source = &long[..];
        while reader.fill_from(&mut source).unwrap() > 0 {}
        assert!(matches!(reader.next_frame(), Some(Frame::Line(line)) if line.len() == 50_000));
        assert!(reader.next_frame().is_none());
        assert!(!reader.holds_grown_buffer(), "a partial line is kept");
        reader.release_buffer();
        reader.push(b"\n");
        assert_eq!(reader.next_frame(), Some(Frame::Line(b"partial")));
        assert!(reader.holds_grown_buffer());
        reader.release_buffer();
        assert_eq!(reader.buf.len(), INITIAL_READ_BUFFER);
        reader.push(b"PING\n");
        assert_eq!(reader.next_frame(), Some(Frame::Line(b"PING")));
    }
}
