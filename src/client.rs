//! A blocking client for kv's protocol, used by `kv cli`, the tests and the bench.
//!
//! It reads exactly one reply per request by the reply's shape (`protocol/shape.rs`),
//! so it can also relay raw replies for `kv cli`, and it bounds how much one reply may
//! take. It owns one TCP connection and nothing else.

use std::fmt;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::protocol::{self, ReplyLine, trim_line_end};

pub use crate::protocol::ReplyShape;

/// What can go wrong with a request.
#[derive(Debug)]
pub enum Error {
    /// The connection failed or closed.
    Io(io::Error),
    /// The bucket does not exist.
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

/// Default most bytes one reply may take before the client gives up on it: room for
/// any value a server with the default 64 KiB line limit holds many times over, and
/// for STATS of a large cluster, while a server that never ends a reply cannot make
/// the client hold more. [`Client::set_max_reply`] changes it.
pub const DEFAULT_MAX_REPLY: usize = 64 * 1024 * 1024;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A blocking connection to a kv server.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    /// Bytes read and not yet handed out, from `start`.
    buf: Vec<u8>,
    start: usize,
    max_reply: usize,
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Client { stream, buf: Vec::new(), start: 0, max_reply: DEFAULT_MAX_REPLY })
    }

    /// Bounds how long a call waits for the server (`None`: forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)?;
        Ok(())
    }

    /// Bounds the bytes of one reply (default [`DEFAULT_MAX_REPLY`]).
    pub fn set_max_reply(&mut self, bytes: usize) {
        self.max_reply = bytes.max(1);
    }

    /// Sends one request line (a newline is added) and returns its raw reply bytes.
    pub fn request(&mut self, line: &[u8]) -> Result<Vec<u8>> {
        let mut request = Vec::with_capacity(line.len() + 2);
        request.extend_from_slice(line);
        request.extend_from_slice(b"\r\n");
        self.stream.write_all(&request)?;
        let mut reply = Vec::new();
        self.read_reply(ReplyShape::of_line(line), &mut reply)?;
        Ok(reply)
    }

    /// Sends raw bytes without waiting for anything (for pipelining).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads one reply of the given shape, appending its raw bytes to `reply`.
    pub fn read_reply(&mut self, shape: ReplyShape, reply: &mut Vec<u8>) -> Result<()> {
        loop {
            let unread = &self.buf[self.start..];
            if let Some(len) = protocol::reply_len(unread, shape).map_err(|bad| Error::Protocol(bad.0))? {
                reply.extend_from_slice(&unread[..len]);
                self.start += len;
                return Ok(());
            }
            self.fill()?;
        }
    }

    /// Reads one line (an event of a SUBSCRIBE stream), appending it to `line`.
    pub fn read_line(&mut self, line: &mut Vec<u8>) -> Result<()> {
        self.read_reply(ReplyShape::Line, line)
    }

    /// Reads more bytes from the server; an end of stream or a reply past the bound
    /// is an error.
    fn fill(&mut self) -> Result<()> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.len() >= self.max_reply {
            return Err(Error::Protocol(format!("a reply longer than {} bytes", self.max_reply)));
        }
        // Into the buffer's spare room, not zeroed first as `resize` then `read` would.
        let read = loop {
            match crate::sys::recv_append(&self.stream, &mut self.buf, READ_CHUNK, false) {
                // A signal for this process (a child's exit, say) is not the server's doing.
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                read => break read,
            }
        };
        match read {
            Ok(0) => {
                Err(Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")))
            }
            Ok(_) => Ok(()),
            Err(error) => Err(Error::Io(error)),
        }
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

    /// `DROP bucket`.
    pub fn drop_bucket(&mut self, bucket: impl AsRef<[u8]>) -> Result<()> {
        self.simple(&[b"DROP", bucket.as_ref()])
    }

    /// `GET bucket key`: `None` for a missing key (the server's empty value line).
    pub fn get(&mut self, bucket: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        let reply = self.request(&join_words(&[b"GET", bucket.as_ref(), key.as_ref()])?)?;
        check_error(&reply)?;
        // A complete Value reply that is not an error: a value line, then OK.
        let value_end = protocol::line_len(&reply).unwrap_or(reply.len());
        let value = trim_line_end(&reply[..value_end]);
        Ok(if value.is_empty() { None } else { Some(value.to_vec()) })
    }

    /// `AUTH <password>`, for a server started with `--password-file`.
    pub fn auth(&mut self, password: &[u8]) -> Result<()> {
        self.simple(&[b"AUTH", password])
    }

    /// `PING`.
    pub fn ping(&mut self) -> Result<()> {
        let reply = self.request(b"PING")?;
        check_error(&reply)?;
        if ReplyLine::of(&reply) != ReplyLine::Other(b"PONG") {
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
            if ReplyLine::of(line.as_bytes()) == ReplyLine::Ok {
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

/// The error a reply's first line reports, if it is an error line.
fn check_error(reply: &[u8]) -> Result<()> {
    match ReplyLine::of(reply.split_inclusive(|&b| b == b'\n').next().unwrap_or(reply)) {
        ReplyLine::NotFound => Err(Error::NotFound),
        ReplyLine::Unknown => Err(Error::UnknownCommand),
        ReplyLine::Error(text) => Err(Error::Server(String::from_utf8_lossy(text).into_owned())),
        ReplyLine::Ok | ReplyLine::Other(_) => Ok(()),
    }
}

fn expect_ok(reply: &[u8]) -> Result<()> {
    check_error(reply)?;
    if ReplyLine::of(reply) == ReplyLine::Ok {
        Ok(())
    } else {
        Err(Error::Protocol(String::from_utf8_lossy(reply).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_become_errors() {
        assert!(matches!(check_error(b"NOT FOUND\r\n"), Err(Error::NotFound)));
        assert!(matches!(check_error(b"UNKNOWN COMMAND\r\n"), Err(Error::UnknownCommand)));
        assert!(
            matches!(check_error(b"ERROR line too long\r\n"), Err(Error::Server(text)) if text == "line too long")
        );
        assert!(check_error(b"ERROR\r\nOK\r\n").is_ok(), "a value that reads ERROR");
    }

    #[test]
    fn words_with_whitespace_are_refused() {
        assert!(matches!(join_words(&[b"PUT", b"a b"]), Err(Error::InvalidWord)));
        assert!(matches!(join_words(&[b"PUT", b""]), Err(Error::InvalidWord)));
        assert_eq!(join_words(&[b"GET", b"a", b"b"]).unwrap(), b"GET a b");
    }

    #[test]
    fn a_reply_that_never_ends_is_refused_at_the_bound() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = Client::connect(listener.local_addr().unwrap()).unwrap();
        client.set_timeout(Some(Duration::from_secs(20))).unwrap();
        client.set_max_reply(64 * 1024);
        let (mut server, _) = listener.accept().unwrap();
        let writer = std::thread::spawn(move || {
            // STATS-like lines without the closing OK, more than the bound.
            let lines = b"x 1\r\n".repeat(40_000);
            let _ = server.write_all(&lines);
            server
        });
        client.send_raw(b"STATS\r\n").unwrap();
        let mut reply = Vec::new();
        let error = client.read_reply(ReplyShape::Lines, &mut reply).unwrap_err();
        assert!(matches!(error, Error::Protocol(ref text) if text.contains("longer than")), "{error}");
        drop(writer.join());
    }
}
