//! RESP request framing: where one Redis-protocol command starts and ends in a byte
//! stream, its arguments, and what happens to a command over the limits.
//!
//! This is the RESP door's counterpart of `frame.rs`: [`RespReader`] owns one reusable
//! buffer, does no I/O beyond filling it from a `Read` it is handed, and hands out each
//! command's arguments as spans borrowed from that buffer, so parsing a command
//! allocates nothing. It knows nothing of what a command means; the connection decides.
//!
//! Two request forms are read, as Redis reads them:
//! - multibulk: `*<n>\r\n` then `n` bulk strings `$<len>\r\n<bytes>\r\n` (binary-safe);
//! - inline: any request not starting with `*` is one line split into words, with
//!   Redis's double- and single-quoted arguments (`sdssplitargs`), so `PING` typed into
//!   `nc` works.
//!
//! Memory is bounded: the buffer holds at most one unfinished command (at most
//! `max(max_command, MAX_INLINE)` plus a header) and one read, and grows only as bytes
//! arrive, never to what a header announces; a command over a limit is skipped as its
//! bytes arrive, never buffered, and a bulk over [`MAX_BULK`] is a protocol error.

use std::fmt;
use std::io::{self, Read};

use super::command::is_space;
use super::read_buffer::{self, ReadBuffer};

/// Longest inline request line, in bytes before its `\n`: Redis's
/// `PROTO_INLINE_MAX_SIZE`. Inline requests are for humans at a terminal; anything
/// longer is a client that is not speaking RESP (a TLS handshake, a binary upload), and
/// bounding it keeps such a client from making the server buffer without end.
pub const MAX_INLINE: usize = 64 * 1024;

/// Most elements a multibulk request may announce: Redis's limit for unauthenticated
/// clients. A count is only a promise, and nothing is reserved for it, but a larger one
/// is certainly not a real command.
pub const MAX_MULTIBULK: i64 = 1024 * 1024;

/// Longest bulk a header may announce, whatever the limits: Redis's default
/// `proto-max-bulk-len`. A bulk between `max_value` and this is skipped as it arrives
/// (the command gets an error, the connection stays); a longer one is no real request,
/// and skipping it would discard the stream for good, so it is a protocol error. A
/// command limit above it (a huge `--max-value`) raises it.
pub const MAX_BULK: usize = 512 * 1024 * 1024;

/// Longest `*<n>` or `$<len>` header line, `\r\n` included. Twenty digits hold any
/// 64-bit count, so 64 bytes is generous; without a bound a client could send digits
/// forever and have them buffered.
const MAX_HEADER: usize = 64;

/// First size of a connection's read buffer, as for the text door's `LineReader`: kept
/// inside the reader (`read_buffer.rs`), so an idle connection allocates none, and
/// grown on the first read that needs more.
const INITIAL_READ_BUFFER: usize = read_buffer::FIRST_LEN;

/// The buffer doubles up to this size while reads keep filling it, so a deep pipeline
/// is served in large reads. Separately, one command may grow it up to its limit.
const READ_AHEAD_MAX: usize = 64 * 1024;

/// Argument spans a reader keeps across [`RespReader::release_buffer`]: enough for any
/// ordinary command, so only an unusual one leaves a larger vector to give back.
const SPANS_KEPT: usize = 16;

/// One framing event from a [`RespReader`].
#[derive(Debug, PartialEq, Eq)]
pub enum RespFrame<'a> {
    /// A complete command: its arguments, the first being the command name.
    Command(Args<'a>),
    /// A command with a bulk (or an inline argument) over `max_value`, or a total over
    /// `max_command`. Reported once per such command; the reader then discards the
    /// rest of it without buffering it (staying in step) and goes on with the next.
    TooLarge,
    /// Malformed framing. The connection answers `-ERR Protocol error: <text>` and
    /// closes; the reader returns nothing more after this.
    ProtocolError(&'static str),
}

/// The arguments of one command, borrowed from the reader's buffer until its next call.
/// Two are equal when their arguments are.
#[derive(Clone, Copy)]
pub struct Args<'a> {
    /// The command's bytes, from its first byte.
    bytes: &'a [u8],
    /// Each argument's start and end in `bytes`.
    spans: &'a [(usize, usize)],
}

impl<'a> Args<'a> {
    /// Number of arguments, the command name included.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True for no arguments (the reader never returns such a command).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Argument `i`, the command name being 0.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        let &(start, end) = self.spans.get(i)?;
        self.bytes.get(start..end)
    }

    /// The arguments in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let bytes = self.bytes;
        self.spans.iter().map(move |&(start, end)| &bytes[start..end])
    }
}

impl PartialEq for Args<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Args<'_> {}

impl fmt::Debug for Args<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(String::from_utf8_lossy)).finish()
    }
}

/// Where the reader is within the stream. Offsets (`pos`, spans) count from `start`, so
/// moving a partial command to the front of the buffer leaves them valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between commands (or inside an inline line, `pos` bytes of it scanned).
    Idle,
    /// In a multibulk with `left` elements still to read; `pos` is the next header.
    Elements { left: usize },
    /// A bulk header read: its `len` data bytes and `\r\n` start at `pos`.
    Bulk { left: usize, len: usize },
    /// Discarding a too-large command: `data` more bytes of the current bulk (its
    /// `\r\n` included), then `left` more elements. Nothing of it is buffered.
    Skip { left: usize, data: usize },
    /// A protocol error was reported: nothing more is read.
    Failed,
}

/// What one parsing step found.
enum Step {
    /// More input is needed.
    More,
    /// Progress was made (or an empty command skipped): step again.
    Again,
    /// A complete command of this many bytes from `start`; its spans are ready.
    Command(usize),
    TooLarge,
    Error(&'static str),
}

/// Cuts a byte stream into RESP commands, enforcing the value and command limits.
///
/// ```
/// use kv::protocol::{RespFrame, RespReader};
///
/// let mut reader = RespReader::new(1024, 4096);
/// reader.push(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n");
/// let mut names = Vec::new();
/// while let Some(RespFrame::Command(args)) = reader.next_frame() {
///     names.push(args.get(0).unwrap().to_vec());
/// }
/// assert_eq!(names, [&b"GET"[..], b"PING"]);
/// ```
#[derive(Debug)]
pub struct RespReader {
    buf: ReadBuffer,
    /// Start of the unconsumed bytes in `buf`: the current command's first byte.
    start: usize,
    /// End of the valid bytes in `buf`.
    end: usize,
    /// Parse progress within the current command, from `start` (see [`State`]).
    pos: usize,
    state: State,
    /// The current command's argument spans, from `start`; reused across commands.
    spans: Vec<(usize, usize)>,
    /// The last read filled all free space: the client has more, read bigger.
    last_read_filled: bool,
    max_value: usize,
    max_command: usize,
}

impl RespReader {
    /// A reader accepting bulks of at most `max_value` bytes and commands of at most
    /// `max_command` bytes (all their bulks and framing). Inline requests have their own
    /// limit, [`MAX_INLINE`], whatever `max_command` is: the buffer may hold the larger.
    pub fn new(max_value: usize, max_command: usize) -> Self {
        RespReader {
            buf: ReadBuffer::new(INITIAL_READ_BUFFER),
            start: 0,
            end: 0,
            pos: 0,
            state: State::Idle,
            spans: Vec::new(),
            last_read_filled: false,
            max_value,
            max_command: max_command.max(1),
        }
    }

    /// Most bytes of one unfinished command the buffer may have to hold before the
    /// reader can decide: a command within the limit plus the next header, or an inline
    /// line at its limit plus its `\r`.
    fn hold_limit(&self) -> usize {
        self.max_command.max(MAX_INLINE).saturating_add(2 * MAX_HEADER)
    }

    /// True when the buffer (or the span list) has grown past what an idle connection
    /// keeps (`read_buffer::KEPT_WHEN_IDLE`, [`SPANS_KEPT`]) and holds nothing: it can
    /// be given back ([`RespReader::release_buffer`]).
    pub fn holds_grown_buffer(&self) -> bool {
        let grown = self.buf.worth_giving_back() || self.spans.capacity() > SPANS_KEPT;
        grown && self.start == self.end && matches!(self.state, State::Idle | State::Skip { .. })
    }

    /// Goes back to a buffer of the first size if the current one holds nothing, so an
    /// idle connection keeps no burst-sized buffer.
    pub fn release_buffer(&mut self) {
        if self.holds_grown_buffer() {
            // Either may be what grew: a small buffer stays, as a small span list does.
            if self.buf.worth_giving_back() {
                self.buf.shrink_to(INITIAL_READ_BUFFER);
            }
            self.spans.clear();
            self.spans.shrink_to(SPANS_KEPT);
            self.start = 0;
            self.end = 0;
            self.pos = 0;
            self.last_read_filled = false;
        }
    }

    /// True while the stream is inside a command: bytes of an unfinished one are
    /// buffered, or the rest of a too-large one is still to be skipped.
    pub fn has_partial(&self) -> bool {
        match self.state {
            State::Failed => false,
            State::Skip { .. } => true,
            _ => self.start < self.end,
        }
    }

    /// Reads once from `source` into free buffer space, making room first. Returns the
    /// number of bytes read; 0 means end of stream.
    pub fn fill_from<R: Read + ?Sized>(&mut self, source: &mut R) -> io::Result<usize> {
        self.make_room();
        let free = self.buf.len() - self.end;
        let n = source.read(&mut self.buf[self.end..])?;
        self.end += n;
        self.last_read_filled = n == free;
        Ok(n)
    }

    /// Copies `bytes` in as if they had been read (for tests and the fuzzer). Returns
    /// how many were taken; call [`next_frame`](Self::next_frame) until it returns
    /// `None` before pushing the rest.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        self.make_room();
        let n = bytes.len().min(self.buf.len() - self.end);
        self.buf[self.end..self.end + n].copy_from_slice(&bytes[..n]);
        self.end += n;
        n
    }

    /// Ensures free space after `end`: moves a partial command to the front, and grows
    /// the buffer when the partial command fills it (toward what it needs, up to the
    /// hold limit) or when the last read filled it (up to [`READ_AHEAD_MAX`]).
    fn make_room(&mut self) {
        // After a protocol error nothing more is parsed, so nothing more is kept.
        if self.start == self.end || self.state == State::Failed {
            self.start = 0;
            self.end = 0;
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
        let partial_fills = self.end == self.buf.len();
        let limit = if partial_fills { self.hold_limit().max(READ_AHEAD_MAX) } else { READ_AHEAD_MAX };
        // The buffer doubles only once what arrived fills it, so it is never more than
        // twice the bytes received: a header announcing a large bulk costs nothing until
        // the bulk's bytes come (a client announcing 1 MiB and stalling pins what it
        // sent, not 1 MiB). A bulk of known length caps the step at its end.
        let needed = match self.state {
            State::Bulk { len, .. } if partial_fills => self.pos + len + 2,
            _ => usize::MAX,
        };
        let grown = (self.buf.len() * 2).min(needed).min(limit);
        self.buf.grow(grown.max(self.buf.len() + usize::from(partial_fills)));
    }

    /// The next complete command, limit violation or protocol error in the buffer, or
    /// `None` when more input is needed (and always after a protocol error).
    pub fn next_frame(&mut self) -> Option<RespFrame<'_>> {
        loop {
            match self.step() {
                Step::More => return None,
                Step::Again => continue,
                Step::TooLarge => return Some(RespFrame::TooLarge),
                Step::Error(text) => {
                    self.state = State::Failed;
                    self.start = 0;
                    self.end = 0;
                    return Some(RespFrame::ProtocolError(text));
                }
                Step::Command(len) => {
                    let first = self.start;
                    self.start += len;
                    self.pos = 0;
                    self.state = State::Idle;
                    let bytes = &self.buf[first..first + len];
                    return Some(RespFrame::Command(Args { bytes, spans: &self.spans }));
                }
            }
        }
    }

    /// One parsing step from the current state.
    fn step(&mut self) -> Step {
        match self.state {
            State::Failed => Step::More,
            State::Idle if self.start == self.end => Step::More,
            State::Idle if self.buf[self.start] == b'*' => self.multibulk_header(),
            State::Idle => self.inline(),
            State::Elements { left: 0 } => Step::Command(self.pos),
            State::Elements { left } => self.bulk_header(left),
            State::Bulk { left, len } => self.bulk_data(left, len),
            State::Skip { left, data } => self.skip(left, data),
        }
    }

    /// `*<n>\r\n` at `start`: a multibulk of `n` elements begins.
    fn multibulk_header(&mut self) -> Step {
        let header = &self.buf[self.start..self.end];
        let (count, header_len) =
            match read_header(header, "too big mbulk count string", "invalid multibulk length") {
                Ok(Some(read)) => read,
                Ok(None) => return Step::More,
                Err(text) => return Step::Error(text),
            };
        if count > MAX_MULTIBULK {
            return Step::Error("invalid multibulk length");
        }
        if count <= 0 {
            // `*0` and `*-1` (Redis skips any count <= 0) are empty commands.
            self.start += header_len;
            return Step::Again;
        }
        self.spans.clear();
        self.pos = header_len;
        // `count` is at most MAX_MULTIBULK, so it fits any usize kv runs on.
        self.state = State::Elements { left: count as usize };
        Step::Again
    }

    /// `$<len>\r\n` at `pos`: the next element's header, or a limit crossed.
    fn bulk_header(&mut self, left: usize) -> Step {
        let (len, header_len) = match self.read_bulk_len(self.start + self.pos) {
            Ok(Some(read)) => read,
            Ok(None) => return Step::More,
            Err(text) => return Step::Error(text),
        };
        let data_end = self.pos.saturating_add(header_len).saturating_add(len).saturating_add(2);
        if len > self.max_value || data_end > self.max_command {
            // Everything before this bulk's data is dropped now; the rest as it comes.
            self.start += self.pos + header_len;
            self.pos = 0;
            self.state = State::Skip { left: left - 1, data: len.saturating_add(2) };
            return Step::TooLarge;
        }
        self.pos += header_len;
        self.state = State::Bulk { left, len };
        Step::Again
    }

    /// A bulk header at `at`: its length and the header's size, `None` if incomplete.
    /// The expected-`$` text is fixed because frames carry `&'static str`; Redis also
    /// names the byte it got.
    fn read_bulk_len(&self, at: usize) -> Result<Option<(usize, usize)>, &'static str> {
        let header = &self.buf[at..self.end];
        match header.first() {
            None => return Ok(None),
            Some(b'$') => {}
            Some(_) => return Err("expected '$'"),
        }
        match read_header(header, "too big bulk count string", "invalid bulk length")? {
            None => Ok(None),
            Some((len, header_len)) => match usize::try_from(len) {
                Ok(len) if len <= MAX_BULK.max(self.max_command) => Ok(Some((len, header_len))),
                _ => Err("invalid bulk length"),
            },
        }
    }

    /// A bulk's data and `\r\n` at `pos`, once all of it has arrived.
    fn bulk_data(&mut self, left: usize, len: usize) -> Step {
        let data = self.start + self.pos;
        if self.end - data < len + 2 {
            return Step::More;
        }
        if &self.buf[data + len..data + len + 2] != b"\r\n" {
            return Step::Error("expected CRLF after bulk data");
        }
        self.spans.push((self.pos, self.pos + len));
        self.pos += len + 2;
        self.state = State::Elements { left: left - 1 };
        Step::Again
    }

    /// Drops the rest of a too-large command as it arrives: `data` bytes of the
    /// current bulk (checking its closing `\r\n`), then `left` more elements.
    fn skip(&mut self, left: usize, mut data: usize) -> Step {
        while data > 0 && self.start < self.end {
            if data > 2 {
                let n = (data - 2).min(self.end - self.start);
                self.start += n;
                data -= n;
            } else {
                let expected = if data == 2 { b'\r' } else { b'\n' };
                if self.buf[self.start] != expected {
                    return Step::Error("expected CRLF after bulk data");
                }
                self.start += 1;
                data -= 1;
            }
        }
        if data > 0 {
            self.state = State::Skip { left, data };
            return Step::More;
        }
        if left == 0 {
            self.state = State::Idle;
            return Step::Again;
        }
        match self.read_bulk_len(self.start) {
            Ok(Some((len, header_len))) => {
                self.start += header_len;
                self.state = State::Skip { left: left - 1, data: len.saturating_add(2) };
                Step::Again
            }
            Ok(None) => {
                self.state = State::Skip { left, data: 0 };
                Step::More
            }
            Err(text) => Step::Error(text),
        }
    }

    /// An inline request: one line at `start`, split into arguments once its `\n` has
    /// arrived. `pos` bytes of it are known to hold no `\n`, so a line arriving in
    /// pieces is scanned once.
    fn inline(&mut self) -> Step {
        let scan_from = self.start + self.pos;
        let Some(offset) = self.buf[scan_from..self.end].iter().position(|&b| b == b'\n') else {
            self.pos = self.end - self.start;
            // A last `\r` may be the line end's: it is not counted until a byte follows.
            if line_end(&self.buf[self.start..self.end]) > MAX_INLINE {
                return Step::Error("too big inline request");
            }
            return Step::More;
        };
        let newline = scan_from + offset;
        let words_end = self.start + line_end(&self.buf[self.start..newline]);
        if words_end - self.start > MAX_INLINE {
            return Step::Error("too big inline request");
        }
        self.spans.clear();
        if !split_args(&mut self.buf[self.start..words_end], &mut self.spans) {
            return Step::Error("unbalanced quotes in request");
        }
        let len = newline + 1 - self.start;
        if self.spans.is_empty() || self.inline_too_large() {
            // An empty line is skipped; one with an argument over `max_value` is
            // answered as a bulk over it is, and the next line read.
            let too_large = !self.spans.is_empty();
            self.start += len;
            self.pos = 0;
            return if too_large { Step::TooLarge } else { Step::Again };
        }
        Step::Command(len)
    }

    /// True when an argument of the inline line just split is over `max_value`: an
    /// inline value is held to the limit a bulk is.
    fn inline_too_large(&self) -> bool {
        self.spans.iter().any(|&(start, end)| end - start > self.max_value)
    }
}

/// Where an inline line's words end: before its last byte if that is a `\r` (the line
/// end's, or one to be taken as such).
fn line_end(line: &[u8]) -> usize {
    match line.last() {
        Some(b'\r') => line.len() - 1,
        _ => line.len(),
    }
}

/// A `*<n>\r\n` or `$<len>\r\n` header at the start of `bytes` (its first byte being
/// the type): the number and the header's length, or `None` if its `\n` has not
/// arrived. `too_long` is the error for a header past [`MAX_HEADER`], `invalid` for
/// anything but a number and `\r\n`.
fn read_header(
    bytes: &[u8],
    too_long: &'static str,
    invalid: &'static str,
) -> Result<Option<(i64, usize)>, &'static str> {
    let window = &bytes[..bytes.len().min(MAX_HEADER)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= MAX_HEADER { Err(too_long) } else { Ok(None) };
    };
    match window[..newline].strip_suffix(b"\r") {
        Some(line) => parse_number(&line[1..]).map(|n| Some((n, newline + 1))).ok_or(invalid),
        None => Err(invalid),
    }
}

/// A decimal number as Redis's `string2ll` reads it: an optional `-`, digits, no
/// leading zero (except `0` itself), no sign on zero, no overflow.
pub(crate) fn parse_number(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, digits),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        n = n.checked_mul(10)?;
        n = if negative { n.checked_sub(d)? } else { n.checked_add(d)? };
    }
    Some(n)
}

/// Splits an inline line into arguments the way Redis's `sdssplitargs` does, in place:
/// unescaped arguments are written over the line (never longer than their source),
/// and their spans pushed to `spans`. False for unbalanced quotes, or a closing quote
/// followed by anything but a space.
///
/// Outside quotes, words are separated by whitespace and a quote starts a quoted part.
/// In double quotes `\n \r \t \b \a`, `\xHH` and `\<any>` are escapes; in single
/// quotes only `\'` is.
fn split_args(line: &mut [u8], spans: &mut Vec<(usize, usize)>) -> bool {
    let mut read = 0;
    let mut write = 0;
    loop {
        while read < line.len() && is_space(line[read]) {
            read += 1;
        }
        if read == line.len() {
            return true;
        }
        let arg_start = write;
        let Some((next_read, next_write)) = split_one(line, read, write) else {
            return false;
        };
        (read, write) = (next_read, next_write);
        spans.push((arg_start, write));
    }
}

/// How [`split_one`] is reading the current argument.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Double,
    Single,
}

/// One argument from `line[read..]`, written at `line[write..]`: the new read and write
/// positions, or `None` for unbalanced quotes.
fn split_one(line: &mut [u8], mut read: usize, mut write: usize) -> Option<(usize, usize)> {
    let mut quote = Quote::None;
    loop {
        let Some(&byte) = line.get(read) else {
            return (quote == Quote::None).then_some((read, write));
        };
        let (out, used) = match quote {
            Quote::None if is_space(byte) => return Some((read, write)),
            Quote::None if byte == b'"' || byte == b'\'' => {
                quote = if byte == b'"' { Quote::Double } else { Quote::Single };
                read += 1;
                continue;
            }
            Quote::None => (byte, 1),
            Quote::Double if byte == b'"' => return closing_quote(line, read, write),
            Quote::Single if byte == b'\'' => return closing_quote(line, read, write),
            Quote::Double => unescape_double(&line[read..]),
            Quote::Single if line[read..].starts_with(b"\\'") => (b'\'', 2),
            Quote::Single => (byte, 1),
        };
        line[write] = out;
        write += 1;
        read += used;
    }
}

/// A closing quote at `read` ends its argument, and must be followed by a space or the
/// end of the line.
fn closing_quote(line: &[u8], read: usize, write: usize) -> Option<(usize, usize)> {
    line.get(read + 1).is_none_or(|&b| is_space(b)).then_some((read + 1, write))
}

/// The byte a double-quoted sequence at the start of `rest` (never empty) stands for,
/// and how many bytes it takes.
fn unescape_double(rest: &[u8]) -> (u8, usize) {
    match rest {
        [b'\\', b'x', high, low, ..] if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
            ((hex_value(*high) << 4) | hex_value(*low), 4)
        }
        [b'\\', escaped, ..] => {
            let byte = match escaped {
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'b' => 0x08,
                b'a' => 0x07,
                other => *other,
            };
            (byte, 2)
        }
        [byte, ..] => (*byte, 1),
        [] => (0, 1),
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
#[path = "resp_frame_tests.rs"]
mod tests;
