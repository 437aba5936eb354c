//! Reading replies back: where one reply ends in a byte stream, and what its first
//! line says. Used by every reader of kv's replies: the client, the forwarder relaying
//! a peer's replies, and `kv bench`.
//!
//! The rule: a reply is one line, except that a GET's is a value line then `OK` and
//! STATS's is lines up to `OK`; an error line (`NOT FOUND`, `UNKNOWN COMMAND`,
//! `ERROR ...`) ends any reply by itself. A value can never be mistaken for an error
//! line because every error line holds a space and a value holds none.
//!
//! Each shape also says which lines can be a reply at all: a write's reply is `OK` or
//! an error line, a GET's value is one word. Bytes that fit no reply of the expected
//! shape are a [`BadReply`], so a reader that is not talking to kv (or is out of step)
//! finds out instead of passing the bytes on as someone's answer.

use std::fmt;

use crate::logcap::quote as shown;

use super::command::{Command, parse};
use super::reply::{ERROR_PREFIX, NOT_FOUND_WORDS, OK_WORD, UNKNOWN_WORDS};

/// How a request's reply is laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    /// One line, any line (`PING`'s `PONG`, `UNKNOWN COMMAND`, ...).
    Line,
    /// GET: a value line then `OK`, unless the first line is an error.
    Value,
    /// STATS: lines up to `OK`, unless the first line is an error.
    Lines,
    /// CREATE, PUT, DELETE, DROP: `OK`, or an error line. Anything else is a
    /// [`BadReply`].
    Status,
}

impl ReplyShape {
    /// The shape of the reply to `command`.
    pub fn of(command: &Command<'_>) -> ReplyShape {
        match command {
            Command::Get { .. } => ReplyShape::Value,
            Command::Stats => ReplyShape::Lines,
            Command::Create { .. } | Command::Put { .. } | Command::Delete { .. } | Command::Drop { .. } => {
                ReplyShape::Status
            }
            _ => ReplyShape::Line,
        }
    }

    /// The shape of the reply to the request line `line`.
    ///
    /// ```
    /// use kv::protocol::ReplyShape;
    ///
    /// assert_eq!(ReplyShape::of_line(b"get a b"), ReplyShape::Value);
    /// assert_eq!(ReplyShape::of_line(b"STATS"), ReplyShape::Lines);
    /// assert_eq!(ReplyShape::of_line(b"PUT a k v"), ReplyShape::Status);
    /// assert_eq!(ReplyShape::of_line(b"GET a"), ReplyShape::Line); // UNKNOWN COMMAND
    /// ```
    pub fn of_line(line: &[u8]) -> ReplyShape {
        ReplyShape::of(&parse(line))
    }
}

/// What one reply line says, read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyLine<'a> {
    /// `OK`.
    Ok,
    /// `NOT FOUND`.
    NotFound,
    /// `UNKNOWN COMMAND`.
    Unknown,
    /// `ERROR <text>`: the text.
    Error(&'a [u8]),
    /// Anything else: a value, `PONG`, a STATS line, an event.
    Other(&'a [u8]),
}

impl<'a> ReplyLine<'a> {
    /// Reads one line, with or without its `\r\n`.
    ///
    /// ```
    /// use kv::protocol::ReplyLine;
    ///
    /// assert_eq!(ReplyLine::of(b"ERROR peer n1 unavailable\r\n"), ReplyLine::Error(b"peer n1 unavailable"));
    /// assert_eq!(ReplyLine::of(b"ERROR\r\n"), ReplyLine::Other(b"ERROR")); // a value
    /// ```
    pub fn of(line: &'a [u8]) -> ReplyLine<'a> {
        let line = trim_line_end(line);
        if line == OK_WORD {
            ReplyLine::Ok
        } else if line == NOT_FOUND_WORDS {
            ReplyLine::NotFound
        } else if line == UNKNOWN_WORDS {
            ReplyLine::Unknown
        } else if let Some(text) = line.strip_prefix(ERROR_PREFIX) {
            ReplyLine::Error(text)
        } else {
            ReplyLine::Other(line)
        }
    }

    /// True for the lines that end any reply by themselves.
    pub fn is_error(&self) -> bool {
        matches!(self, ReplyLine::NotFound | ReplyLine::Unknown | ReplyLine::Error(_))
    }
}

/// `line` without its `\n` and a `\r` before it.
pub fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Replies that cannot be a kv reply of the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReply(pub String);

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadReply {}

/// Length of the first line of `bytes`, `\n` included, if it is complete.
#[inline]
pub fn line_len(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n').map(|at| at + 1)
}

/// Length of the first complete reply of `shape` in `bytes`; `None` while more bytes
/// are needed; a [`BadReply`] if the bytes cannot be a reply of that shape.
///
/// ```
/// use kv::protocol::{ReplyShape, reply_len};
///
/// assert_eq!(reply_len(b"3\r\nOK\r\nOK\r\n", ReplyShape::Value), Ok(Some(7)));
/// assert_eq!(reply_len(b"NOT FOUND\r\nOK\r\n", ReplyShape::Value), Ok(Some(11)));
/// assert_eq!(reply_len(b"keys 1\r\nOK", ReplyShape::Lines), Ok(None));
/// assert!(reply_len(b"hello there\r\n", ReplyShape::Status).is_err());
/// ```
pub fn reply_len(bytes: &[u8], shape: ReplyShape) -> Result<Option<usize>, BadReply> {
    let Some(first) = line_len(bytes) else { return Ok(None) };
    let first_line = ReplyLine::of(&bytes[..first]);
    if shape == ReplyShape::Line || first_line.is_error() {
        return Ok(Some(first));
    }
    if shape == ReplyShape::Status {
        if first_line != ReplyLine::Ok {
            return Err(BadReply(format!("{} where OK or an error line belongs", shown(&bytes[..first]))));
        }
        return Ok(Some(first));
    }
    if shape == ReplyShape::Value {
        if trim_line_end(&bytes[..first]).iter().any(|&b| super::command::is_space(b)) {
            return Err(BadReply(format!("{} where a value belongs", shown(&bytes[..first]))));
        }
        let Some(second) = line_len(&bytes[first..]) else { return Ok(None) };
        if ReplyLine::of(&bytes[first..first + second]) != ReplyLine::Ok {
            return Err(BadReply("a GET reply without OK after its value".to_string()));
        }
        return Ok(Some(first + second));
    }
    // Lines: up to and including the first OK.
    let mut end = 0;
    while let Some(len) = line_len(&bytes[end..]) {
        let is_ok = ReplyLine::of(&bytes[end..end + len]) == ReplyLine::Ok;
        end += len;
        if is_ok {
            return Ok(Some(end));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_framed_by_shape() {
        use ReplyShape::*;
        assert_eq!(reply_len(b"OK\r\n", Line), Ok(Some(4)));
        assert_eq!(reply_len(b"OK\r", Line), Ok(None));
        assert_eq!(reply_len(b"3\r\nOK\r\nOK\r\n", Value), Ok(Some(7)));
        assert_eq!(reply_len(b"3\r\nO", Value), Ok(None));
        assert_eq!(reply_len(b"\r\nOK\r\n", Value), Ok(Some(6)));
        assert_eq!(reply_len(b"NOT FOUND\r\nOK\r\n", Value), Ok(Some(11)));
        assert_eq!(reply_len(b"ERROR peer x unavailable\r\n", Value), Ok(Some(26)));
        // A value may be the bare word ERROR: it has no space, so it is a value.
        assert_eq!(reply_len(b"ERROR\r\nOK\r\n", Value), Ok(Some(11)));
        assert!(reply_len(b"3\r\nPONG\r\n", Value).is_err());
        assert_eq!(reply_len(b"a 1\r\nb 2\r\nOK\r\nPONG\r\n", Lines), Ok(Some(14)));
        assert_eq!(reply_len(b"UNKNOWN COMMAND\r\n", Lines), Ok(Some(17)));
    }

    /// Regression: a non-kv "peer" answering a forwarded PUT with any line had that
    /// line relayed to the client as the PUT's reply.
    #[test]
    fn a_write_is_answered_ok_or_an_error_line_and_nothing_else() {
        use ReplyShape::*;
        assert_eq!(ReplyShape::of_line(b"create b"), Status);
        assert_eq!(ReplyShape::of_line(b"DELETE b k"), Status);
        assert_eq!(ReplyShape::of_line(b"DROP b"), Status);
        for good in
            [&b"OK\r\n"[..], b"NOT FOUND\r\n", b"UNKNOWN COMMAND\r\n", b"ERROR peer x unavailable\r\n"]
        {
            assert_eq!(reply_len(good, Status), Ok(Some(good.len())), "{}", shown(good));
        }
        for bad in [&b"PONG\r\n"[..], b"v\r\n", b"HTTP/1.1 200 OK\r\n", b"ERROR\r\n", b"OKAY\r\n"] {
            assert!(reply_len(bad, Status).is_err(), "{}", shown(bad));
        }
        // A value is one word: a line with a space is no GET's value.
        assert!(reply_len(b"hello world\r\nOK\r\n", Value).is_err());
        let long = [b'x'; 500];
        let error = reply_len(&[&b"a "[..], &long, b"\r\n"].concat(), Status).unwrap_err();
        assert!(error.0.len() < 150, "a bad reply is quoted cut short: {error}");
    }

    #[test]
    fn reply_lines_are_read_by_their_words() {
        assert_eq!(ReplyLine::of(b"OK\r\n"), ReplyLine::Ok);
        assert_eq!(ReplyLine::of(b"NOT FOUND"), ReplyLine::NotFound);
        assert_eq!(ReplyLine::of(b"UNKNOWN COMMAND\n"), ReplyLine::Unknown);
        assert_eq!(ReplyLine::of(b"ERROR line too long\r\n"), ReplyLine::Error(b"line too long"));
        assert!(!ReplyLine::of(b"ERROR\r\n").is_error());
        assert!(!ReplyLine::of(b"value\r\n").is_error());
    }

    #[test]
    fn every_reply_written_is_framed_as_one_reply() {
        use super::super::reply::{ErrorKind, Reply};
        let replies = [
            (Reply::Ok, ReplyShape::Line),
            (Reply::Value(b"v"), ReplyShape::Value),
            (Reply::NotFound, ReplyShape::Value),
            (Reply::Unknown, ReplyShape::Lines),
            (Reply::Error(ErrorKind::PeerUnavailable { peer: "n" }), ReplyShape::Value),
        ];
        for (reply, shape) in replies {
            let mut bytes = Vec::new();
            reply.write_text(&mut bytes);
            let len = bytes.len();
            bytes.extend_from_slice(b"PONG\r\n");
            assert_eq!(reply_len(&bytes, shape), Ok(Some(len)), "{reply:?}");
        }
    }
}
