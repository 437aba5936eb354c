//! The wire protocol as pure functions: bytes in, [`Command`] out; replies out as bytes.
//!
//! This file owns framing ([`LineReader`]: where a request line starts and ends, and
//! what happens to a line over the limit), parsing ([`parse`]: one line to one
//! [`Command`]) and the exact bytes of every reply. It does no I/O beyond filling its
//! buffer from a `Read` it is handed, starts no threads and holds no locks, so all of
//! it is tested without sockets. The contract it implements is `docs/PROTOCOL.md`.
//!
//! Words are bytes, not text: a bucket, key or value may hold any byte except ASCII
//! whitespace, so nothing here ever converts to `str`.

use std::io::{self, Read};

/// The reply to every successful write and to `CREATE`.
pub const OK: &[u8] = b"OK\r\n";
/// The reply to an unknown command word, a wrong number of words or an empty line.
pub const UNKNOWN_COMMAND: &[u8] = b"UNKNOWN COMMAND\r\n";
/// The reply to GET, PUT or DELETE on a bucket that was never created.
pub const NOT_FOUND: &[u8] = b"NOT FOUND\r\n";
/// The reply to `PING`.
pub const PONG: &[u8] = b"PONG\r\n";
/// The reply to a line longer than the configured limit.
pub const LINE_TOO_LONG: &[u8] = b"ERROR line too long\r\n";
/// The line a client gets when the server is at its connection limit.
pub const TOO_MANY_CONNECTIONS: &[u8] = b"ERROR too many connections\r\n";

/// The reply to requests that arrive once the server has begun shutting down.
pub const SHUTTING_DOWN: &[u8] = b"ERROR shutting down\r\n";
/// The reply to the request a worker was serving when it crashed.
pub const WORKER_CRASHED: &[u8] = b"ERROR worker crashed\r\n";
/// The reply to requests whose worker cannot be reached (its inbox is closed); a
/// safety net that a running server never needs.
pub const WORKER_UNAVAILABLE: &[u8] = b"ERROR worker unavailable\r\n";

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

/// One parsed request. Borrowed from the line it was parsed from: parsing never
/// allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `CREATE <bucket>`
    Create { bucket: &'a [u8] },
    /// `PUT <bucket> <key> <value>`
    Put { bucket: &'a [u8], key: &'a [u8], value: &'a [u8] },
    /// `GET <bucket> <key>`
    Get { bucket: &'a [u8], key: &'a [u8] },
    /// `DELETE <bucket> <key>`
    Delete { bucket: &'a [u8], key: &'a [u8] },
    /// `PING`
    Ping,
    /// `STATS`
    Stats,
    /// `QUIT`
    Quit,
    /// `SUBSCRIBE <bucket>`: the connection becomes a stream of the bucket's changes.
    Subscribe { bucket: &'a [u8] },
    /// `DEBUG CRASH <bucket>`: the worker owning `<bucket>` panics while serving it.
    /// Served only by a server started with `--debug`; otherwise `UNKNOWN COMMAND`.
    DebugCrash { bucket: &'a [u8] },
    /// `DEBUG CRASH-CONNECTION`: the connection's own thread panics. `--debug` only.
    DebugCrashConnection,
    /// `DEBUG CRASH-ACCEPTOR`: the acceptor thread panics (and is restarted).
    /// `--debug` only.
    DebugCrashAcceptor,
    /// Anything else: an unknown word, a wrong number of words, an empty line.
    /// Not an error to propagate but a request like any other, answered
    /// `UNKNOWN COMMAND`.
    Unknown,
}

impl<'a> Command<'a> {
    /// The bucket a request is about, for the commands that a partition serves.
    /// `None` for the commands a connection answers by itself.
    pub fn bucket(&self) -> Option<&'a [u8]> {
        match *self {
            Command::Create { bucket }
            | Command::Put { bucket, .. }
            | Command::Get { bucket, .. }
            | Command::Delete { bucket, .. }
            | Command::Subscribe { bucket }
            | Command::DebugCrash { bucket } => Some(bucket),
            Command::Ping
            | Command::Stats
            | Command::Quit
            | Command::DebugCrashConnection
            | Command::DebugCrashAcceptor
            | Command::Unknown => None,
        }
    }
}

/// The protocol's whitespace: space, tab, `\n`, `\v`, `\f`, `\r`.
///
/// Not `u8::is_ascii_whitespace`, which leaves out `\v` (0x0B); the guide's server
/// splits on it, so we do too.
#[inline]
pub fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Iterator over the words of a line: maximal runs of non-whitespace bytes.
#[derive(Debug, Clone)]
pub struct Words<'a> {
    rest: &'a [u8],
}

/// Splits `line` into words on protocol whitespace, ignoring leading, trailing and
/// repeated whitespace.
///
/// ```
/// let words: Vec<&[u8]> = kv::protocol::words(b"  PUT\tshopping  milk 1 ").collect();
/// assert_eq!(words, [&b"PUT"[..], b"shopping", b"milk", b"1"]);
/// ```
pub fn words(line: &[u8]) -> Words<'_> {
    Words { rest: line }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|&b| !is_space(b))?;
        let rest = &self.rest[start..];
        let len = rest.iter().position(|&b| is_space(b)).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(len);
        self.rest = tail;
        Some(word)
    }
}

/// Parses one request line (with or without its `\r\n`) into a [`Command`].
///
/// The command word matches in any case; the rest of the words are taken as they are.
/// Anything that is not exactly one known command with its number of words is
/// [`Command::Unknown`].
///
/// ```
/// use kv::protocol::{parse, Command};
///
/// assert_eq!(parse(b"CREATE shopping"), Command::Create { bucket: b"shopping" });
/// assert_eq!(
///     parse(b"  put   shopping  milk  1 \r\n"),
///     Command::Put { bucket: b"shopping", key: b"milk", value: b"1" },
/// );
/// assert_eq!(parse(b"GET shopping eggs"), Command::Get { bucket: b"shopping", key: b"eggs" });
/// assert_eq!(parse(b"DELETE shopping eggs"), Command::Delete { bucket: b"shopping", key: b"eggs" });
/// assert_eq!(parse(b"UNKNOWN shopping"), Command::Unknown);
/// assert_eq!(parse(b"GET shopping"), Command::Unknown); // one word short
/// assert_eq!(parse(b""), Command::Unknown);
/// ```
pub fn parse(line: &[u8]) -> Command<'_> {
    let mut words = words(line);
    let Some(name) = words.next() else {
        return Command::Unknown;
    };
    // At most four words matter; a fifth makes any command Unknown.
    let a = words.next();
    let b = words.next();
    let c = words.next();
    let extra = words.next().is_some();
    if extra {
        return Command::Unknown;
    }
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    match (a, b, c) {
        (Some(bucket), Some(key), Some(value)) if is(b"PUT") => Command::Put { bucket, key, value },
        (Some(bucket), Some(key), None) if is(b"GET") => Command::Get { bucket, key },
        (Some(bucket), Some(key), None) if is(b"DELETE") => Command::Delete { bucket, key },
        (Some(bucket), None, None) if is(b"CREATE") => Command::Create { bucket },
        (Some(bucket), None, None) if is(b"SUBSCRIBE") => Command::Subscribe { bucket },
        (None, None, None) if is(b"PING") => Command::Ping,
        (None, None, None) if is(b"STATS") => Command::Stats,
        (None, None, None) if is(b"QUIT") => Command::Quit,
        (Some(what), Some(bucket), None) if is(b"DEBUG") && what.eq_ignore_ascii_case(b"CRASH") => {
            Command::DebugCrash { bucket }
        }
        (Some(what), None, None) if is(b"DEBUG") && what.eq_ignore_ascii_case(b"CRASH-CONNECTION") => {
            Command::DebugCrashConnection
        }
        (Some(what), None, None) if is(b"DEBUG") && what.eq_ignore_ascii_case(b"CRASH-ACCEPTOR") => {
            Command::DebugCrashAcceptor
        }
        _ => Command::Unknown,
    }
}

/// Appends the reply to a GET that found `value`: the value line, then `OK`.
#[inline]
pub fn write_value(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(OK);
}

/// Appends one `<name> <value>\r\n` STATS line.
pub fn write_stat(out: &mut Vec<u8>, name: &str, value: impl std::fmt::Display) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{name} {value}\r\n");
}

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
    buf: Vec<u8>,
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
/// 1 KiB rather than 4: the buffer is the largest allocation an idle connection owns,
/// and glibc's `calloc` clears all of it, so every byte is resident. Measured with
/// `benches/idle_connections.py` (10,000 idle connections, release build), RSS per
/// connection fell from 15.1 KiB to 12.1 KiB. A longer request or a deep pipeline
/// grows the buffer on its first read (it doubles while reads fill it), once per
/// connection.
const INITIAL_READ_BUFFER: usize = 1024;

/// The buffer doubles up to this size while reads keep filling it, so a client that
/// pipelines deeply is served in large reads (fewer syscalls, larger batches).
/// Separately, a single line may grow it up to the line limit.
const READ_AHEAD_MAX: usize = 64 * 1024;

impl LineReader {
    /// A reader for lines of at most `max_line` bytes (not counting `\r\n`).
    pub fn new(max_line: usize) -> Self {
        let max_line = max_line.clamp(1, MAX_MAX_LINE);
        LineReader {
            buf: vec![0; INITIAL_READ_BUFFER.min(max_line + 2).max(64)],
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
        self.buf.resize(new_len, 0);
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

/// True for a line that starts like an HTTP request carrying a body: its first word
/// is `POST` or `Host:` (any case).
///
/// A web page can make a browser send such a request to `127.0.0.1:4040`, and the
/// body's lines would run as commands (the cross-protocol attack Redis guards
/// against the same way). No kv command starts with either word.
///
/// ```
/// assert!(kv::protocol::is_http_request_line(b"POST / HTTP/1.1"));
/// assert!(kv::protocol::is_http_request_line(b"host: 127.0.0.1:4040"));
/// assert!(!kv::protocol::is_http_request_line(b"PUT posts host: 1"));
/// ```
pub fn is_http_request_line(line: &[u8]) -> bool {
    words(line)
        .next()
        .is_some_and(|first| first.eq_ignore_ascii_case(b"POST") || first.eq_ignore_ascii_case(b"Host:"))
}

#[inline]
fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases: &[(&[u8], Command)] = &[
            (b"CREATE shopping", Command::Create { bucket: b"shopping" }),
            (b"create shopping", Command::Create { bucket: b"shopping" }),
            (b"CrEaTe shopping\r\n", Command::Create { bucket: b"shopping" }),
            (b"PUT shopping milk 1", Command::Put { bucket: b"shopping", key: b"milk", value: b"1" }),
            (b"  PUT   shopping  milk  1 ", Command::Put { bucket: b"shopping", key: b"milk", value: b"1" }),
            (
                b"PUT\tshopping\x0bmilk\x0c1\r",
                Command::Put { bucket: b"shopping", key: b"milk", value: b"1" },
            ),
            (b"GET shopping eggs", Command::Get { bucket: b"shopping", key: b"eggs" }),
            (b"get shopping eggs", Command::Get { bucket: b"shopping", key: b"eggs" }),
            (b"DELETE shopping eggs", Command::Delete { bucket: b"shopping", key: b"eggs" }),
            (b"PING", Command::Ping),
            (b"ping", Command::Ping),
            (b"STATS", Command::Stats),
            (b"QUIT", Command::Quit),
            (b"quit\r\n", Command::Quit),
            // Unknown words, wrong arity, empty and blank lines.
            (b"UNKNOWN shopping", Command::Unknown),
            (b"", Command::Unknown),
            (b"   \t ", Command::Unknown),
            (b"\r\n", Command::Unknown),
            (b"CREATE", Command::Unknown),
            (b"CREATE a b", Command::Unknown),
            (b"PUT shopping milk", Command::Unknown),
            (b"PUT shopping milk 1 2", Command::Unknown),
            (b"GET shopping", Command::Unknown),
            (b"GET shopping eggs more", Command::Unknown),
            (b"DELETE shopping", Command::Unknown),
            (b"PING now", Command::Unknown),
            (b"STATS all", Command::Unknown),
            (b"QUIT now", Command::Unknown),
            (b"PUTS shopping milk 1", Command::Unknown),
            (b"SUBSCRIBE b", Command::Subscribe { bucket: b"b" }),
            (b"subscribe b c", Command::Unknown),
            (b"DEBUG CRASH b", Command::DebugCrash { bucket: b"b" }),
            (b"debug crash-connection", Command::DebugCrashConnection),
            (b"DEBUG CRASH-ACCEPTOR", Command::DebugCrashAcceptor),
            (b"DEBUG CRASH", Command::Unknown),
            (b"DEBUG b", Command::Unknown),
            // Command words are ASCII: a Unicode space is part of the word.
            ("PUT\u{2003}shopping milk 1".as_bytes(), Command::Unknown),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line), *expected, "line {:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn words_are_bytes_not_text() {
        assert_eq!(
            parse(b"PUT \xff\xfe k\x00ey \xc3\xa9"),
            Command::Put { bucket: b"\xff\xfe", key: b"k\x00ey", value: b"\xc3\xa9" }
        );
    }

    #[test]
    fn bucket_of_each_command() {
        assert_eq!(parse(b"GET b k").bucket(), Some(&b"b"[..]));
        assert_eq!(parse(b"CREATE b").bucket(), Some(&b"b"[..]));
        assert_eq!(parse(b"PING").bucket(), None);
        assert_eq!(parse(b"nonsense").bucket(), None);
    }

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
    fn http_lines_are_recognised_by_their_first_word_only() {
        for line in [&b"POST / HTTP/1.1"[..], b"post /x", b"  Host: a", b"HOST: b", b"host:"] {
            assert!(is_http_request_line(line), "{:?}", String::from_utf8_lossy(line));
        }
        for line in [&b"GET / HTTP/1.1"[..], b"PUT post host: x", b"POSTS a", b"Host", b""] {
            assert!(!is_http_request_line(line), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn write_value_and_stat() {
        let mut out = Vec::new();
        write_value(&mut out, b"3");
        write_value(&mut out, b"");
        write_stat(&mut out, "keys", 12);
        assert_eq!(out, b"3\r\nOK\r\n\r\nOK\r\nkeys 12\r\n");
    }
}
