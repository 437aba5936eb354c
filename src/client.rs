//! A blocking client for kv's protocol, used by `kv cli`, the tests and the bench.
//!
//! It knows the shape of every reply (one line, a value line then `OK`, or STATS's
//! lines up to `OK`), so it can read exactly one reply per request and also relay raw
//! replies for `kv cli`. It owns one TCP connection and nothing else.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::protocol::{self, Command};

/// What can go wrong with a request.
#[derive(Debug)]
pub enum Error {
    /// The connection failed or closed.
    Io(io::Error),
    /// The bucket does not exist (`NOT FOUND`).
    NotFound,
    /// The server did not understand the request (`UNKNOWN COMMAND`).
    UnknownCommand,
    /// The server answered an `ERROR` line; the text after `ERROR `.
    Server(String),
    /// A word was empty or held whitespace, so it cannot be sent.
    InvalidWord,
    /// The server's reply did not have the expected shape.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(error) => write!(f, "connection error: {error}"),
            Error::NotFound => f.write_str("bucket not found"),
            Error::UnknownCommand => f.write_str("server answered UNKNOWN COMMAND"),
            Error::Server(text) => write!(f, "server error: {text}"),
            Error::InvalidWord => {
                f.write_str("a bucket, key or value must be non-empty and hold no whitespace")
            }
            Error::Protocol(text) => write!(f, "unexpected reply: {text}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Error::Io(error)
    }
}

/// Result of a client call.
pub type Result<T> = std::result::Result<T, Error>;

/// How a request's reply is laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    /// One line.
    Line,
    /// GET: a value line then `OK`, unless the first line is an error.
    Value,
    /// STATS: lines up to `OK`, unless the first line is an error.
    Lines,
}

impl ReplyShape {
    /// The shape of the reply to `line`.
    pub fn of(line: &[u8]) -> ReplyShape {
        match protocol::parse(line) {
            Command::Get { .. } => ReplyShape::Value,
            Command::Stats => ReplyShape::Lines,
            _ => ReplyShape::Line,
        }
    }
}

/// True for a line that ends a reply by itself whatever the request: the fixed error
/// lines. A value can never be one of them, since values hold no whitespace.
fn is_error_line(line: &[u8]) -> bool {
    let line = trim_line_end(line);
    line == b"NOT FOUND" || line == b"UNKNOWN COMMAND" || line.starts_with(b"ERROR ")
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A blocking connection to a kv server.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: Vec<u8>,
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        Ok(Client { reader: BufReader::new(stream), writer, line: Vec::new() })
    }

    /// Bounds how long a call waits for the server (`None`: forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.writer.set_read_timeout(timeout)?;
        self.writer.set_write_timeout(timeout)?;
        Ok(())
    }

    /// Sends one request line (a newline is added) and returns its raw reply bytes.
    pub fn request(&mut self, line: &[u8]) -> Result<Vec<u8>> {
        let mut request = Vec::with_capacity(line.len() + 2);
        request.extend_from_slice(line);
        request.extend_from_slice(b"\r\n");
        self.writer.write_all(&request)?;
        let mut reply = Vec::new();
        self.read_reply(ReplyShape::of(line), &mut reply)?;
        Ok(reply)
    }

    /// Sends raw bytes without waiting for anything (for pipelining).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes)?;
        Ok(())
    }

    /// Reads one reply of the given shape, appending its raw bytes to `reply`.
    pub fn read_reply(&mut self, shape: ReplyShape, reply: &mut Vec<u8>) -> Result<()> {
        self.read_line()?;
        reply.extend_from_slice(&self.line);
        if shape == ReplyShape::Line || is_error_line(&self.line) {
            return Ok(());
        }
        if shape == ReplyShape::Value {
            self.read_line()?;
            reply.extend_from_slice(&self.line);
            return Ok(());
        }
        // Lines: until OK.
        let mut line_is_ok = trim_line_end(&self.line) == b"OK";
        while !line_is_ok {
            line_is_ok = trim_line_end(self.read_line()?) == b"OK";
            reply.extend_from_slice(&self.line);
        }
        Ok(())
    }

    /// Reads one line into `self.line`; an end of stream is an error.
    fn read_line(&mut self) -> Result<&[u8]> {
        self.line.clear();
        let n = self.reader.read_until(b'\n', &mut self.line)?;
        if n == 0 || !self.line.ends_with(b"\n") {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )));
        }
        Ok(&self.line)
    }

    fn simple(&mut self, words: &[&[u8]]) -> Result<()> {
        let reply = self.request(&join_words(words)?)?;
        expect_ok(&reply)
    }

    /// `CREATE bucket`.
    pub fn create(&mut self, bucket: impl AsRef<[u8]>) -> Result<()> {
        self.simple(&[b"CREATE", bucket.as_ref()])
    }

    /// `PUT bucket key value`.
    pub fn put(
        &mut self,
        bucket: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<()> {
        self.simple(&[b"PUT", bucket.as_ref(), key.as_ref(), value.as_ref()])
    }

    /// `DELETE bucket key`.
    pub fn delete(&mut self, bucket: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Result<()> {
        self.simple(&[b"DELETE", bucket.as_ref(), key.as_ref()])
    }

    /// `GET bucket key`: `None` for a missing key (the server's empty value line).
    pub fn get(&mut self, bucket: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        let reply = self.request(&join_words(&[b"GET", bucket.as_ref(), key.as_ref()])?)?;
        check_error(&reply)?;
        let Some(value_end) = reply.iter().position(|&b| b == b'\n') else {
            return Err(Error::Protocol(String::from_utf8_lossy(&reply).into_owned()));
        };
        if trim_line_end(&reply[value_end + 1..]) != b"OK" {
            return Err(Error::Protocol(String::from_utf8_lossy(&reply).into_owned()));
        }
        let value = trim_line_end(&reply[..=value_end]);
        Ok(if value.is_empty() { None } else { Some(value.to_vec()) })
    }

    /// `PING`.
    pub fn ping(&mut self) -> Result<()> {
        let reply = self.request(b"PING")?;
        check_error(&reply)?;
        if reply != b"PONG\r\n" {
            return Err(Error::Protocol(String::from_utf8_lossy(&reply).into_owned()));
        }
        Ok(())
    }

    /// `STATS`, as (name, value) pairs in the server's order.
    pub fn stats(&mut self) -> Result<Vec<(String, String)>> {
        let reply = self.request(b"STATS")?;
        check_error(&reply)?;
        let text = String::from_utf8_lossy(&reply);
        let mut pairs = Vec::new();
        for line in text.lines() {
            if line == "OK" {
                break;
            }
            let (name, value) =
                line.split_once(' ').ok_or_else(|| Error::Protocol(format!("bad STATS line {line:?}")))?;
            pairs.push((name.to_string(), value.to_string()));
        }
        Ok(pairs)
    }

    /// One STATS figure by name, parsed as a number.
    pub fn stat(&mut self, name: &str) -> Result<u64> {
        let stats = self.stats()?;
        let value = stats
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| Error::Protocol(format!("STATS has no {name}")))?;
        value.1.parse().map_err(|_| Error::Protocol(format!("STATS {name} is not a number: {}", value.1)))
    }

    /// `QUIT`: the server answers OK and closes.
    pub fn quit(mut self) -> Result<()> {
        let reply = self.request(b"QUIT")?;
        expect_ok(&reply)
    }
}

fn join_words(words: &[&[u8]]) -> Result<Vec<u8>> {
    let mut line = Vec::new();
    for (i, word) in words.iter().enumerate() {
        if word.is_empty() || word.iter().any(|&b| protocol::is_space(b)) {
            return Err(Error::InvalidWord);
        }
        if i > 0 {
            line.push(b' ');
        }
        line.extend_from_slice(word);
    }
    Ok(line)
}

fn check_error(reply: &[u8]) -> Result<()> {
    let line = trim_line_end(reply);
    if line == b"NOT FOUND" {
        Err(Error::NotFound)
    } else if line == b"UNKNOWN COMMAND" {
        Err(Error::UnknownCommand)
    } else if let Some(text) = line.strip_prefix(b"ERROR ") {
        Err(Error::Server(String::from_utf8_lossy(text).into_owned()))
    } else {
        Ok(())
    }
}

fn expect_ok(reply: &[u8]) -> Result<()> {
    check_error(reply)?;
    if reply == protocol::OK {
        Ok(())
    } else {
        Err(Error::Protocol(String::from_utf8_lossy(reply).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_shapes() {
        assert_eq!(ReplyShape::of(b"get a b"), ReplyShape::Value);
        assert_eq!(ReplyShape::of(b"STATS"), ReplyShape::Lines);
        assert_eq!(ReplyShape::of(b"PUT a b c"), ReplyShape::Line);
        assert_eq!(ReplyShape::of(b"GET a"), ReplyShape::Line);
    }

    #[test]
    fn error_lines_end_any_reply() {
        assert!(is_error_line(b"NOT FOUND\r\n"));
        assert!(is_error_line(b"ERROR line too long\r\n"));
        assert!(!is_error_line(b"ERROR\r\n"));
        assert!(!is_error_line(b"value\r\n"));
    }

    #[test]
    fn words_with_whitespace_are_refused() {
        assert!(matches!(join_words(&[b"PUT", b"a b"]), Err(Error::InvalidWord)));
        assert!(matches!(join_words(&[b"PUT", b""]), Err(Error::InvalidWord)));
        assert_eq!(join_words(&[b"GET", b"a", b"b"]).unwrap(), b"GET a b");
    }
}
