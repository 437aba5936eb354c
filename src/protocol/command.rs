//! Request lines to [`Command`] values: words, parsing, and the HTTP guard.
//!
//! Words are bytes, not text: a bucket, key or value may hold any byte except ASCII
//! whitespace, so nothing here ever converts to `str`. Parsing never allocates: a
//! [`Command`] borrows the line it came from.

/// One parsed request. Borrowed from the line it was parsed from: parsing never
/// allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `CREATE <bucket>`
    Create {
        bucket: &'a [u8],
    },
    /// `PUT <bucket> <key> <value>`
    Put {
        bucket: &'a [u8],
        key: &'a [u8],
        value: &'a [u8],
    },
    /// `GET <bucket> <key>`
    Get {
        bucket: &'a [u8],
        key: &'a [u8],
    },
    /// `DELETE <bucket> <key>`
    Delete {
        bucket: &'a [u8],
        key: &'a [u8],
    },
    /// `DROP <bucket>`: the bucket and every key in it go; its subscribers hear
    /// `DROPPED` and their streams end.
    Drop {
        bucket: &'a [u8],
    },
    /// `PING`
    Ping,
    /// `STATS`
    Stats,
    /// `QUIT`
    Quit,
    /// `AUTH <password>`: on a server with `--password-file`, required before anything
    /// but `PING` and `QUIT`.
    Auth {
        password: &'a [u8],
    },
    /// `SUBSCRIBE <bucket>`: the connection becomes a stream of the bucket's changes.
    Subscribe {
        bucket: &'a [u8],
    },
    /// `DEBUG CRASH <bucket>`: the worker owning `<bucket>` panics while serving it.
    /// Served only by a server started with `--debug`; otherwise `UNKNOWN COMMAND`.
    DebugCrash {
        bucket: &'a [u8],
    },
    /// `DEBUG CRASH-CONNECTION`: the connection's own thread panics. `--debug` only.
    DebugCrashConnection,
    /// `DEBUG CRASH-ACCEPTOR`: the acceptor thread panics (and is restarted).
    /// `--debug` only.
    DebugCrashAcceptor,
    /// `DEBUG FAILSYNC`: the next sync of each partition's log fails, as a disk's
    /// write-back error would. `--debug` and `--data-dir` only.
    DebugFailSync,
    // What follows is only ever made by the RESP door (`resp/`), from Redis's hash
    // and string commands, and carried to a worker or a peer encoded (`request.rs`);
    // no text line parses to one. Each is about one bucket, so it has one owner.
    /// One field of `HSET`: creates the bucket if needed, answers 1 if the key is new,
    /// 0 if its value was replaced.
    HSet {
        bucket: &'a [u8],
        key: &'a [u8],
        value: &'a [u8],
    },
    /// `SET` of a plain string, stored in the `--resp-bucket`: creates the bucket if
    /// needed, answers `OK`.
    SetString {
        bucket: &'a [u8],
        key: &'a [u8],
        value: &'a [u8],
    },
    /// `HGET` (and a string's `GET`): the value, or nil for a missing bucket or key.
    HGet {
        bucket: &'a [u8],
        key: &'a [u8],
    },
    /// One field of `HDEL` (and a string's `DEL`): 1 if the key was there, else 0.
    HDel {
        bucket: &'a [u8],
        key: &'a [u8],
    },
    /// One field of `HEXISTS` (and a string's `EXISTS`): 1 or 0.
    HExists {
        bucket: &'a [u8],
        key: &'a [u8],
    },
    /// `HLEN`: how many keys the bucket holds (0 if it does not exist).
    HLen {
        bucket: &'a [u8],
    },
    /// `HGETALL`, `HKEYS`, `HVALS`: the bucket's pairs, keys or values.
    HGetAll {
        bucket: &'a [u8],
    },
    HKeys {
        bucket: &'a [u8],
    },
    HVals {
        bucket: &'a [u8],
    },
    /// `EXISTS` of a bucket: 1 or 0.
    Exists {
        bucket: &'a [u8],
    },
    /// `DEL` of a bucket: `DROP`, answering 1 if it existed, else 0.
    Del {
        bucket: &'a [u8],
    },
    /// `TYPE` of a bucket: `hash`, or `none`.
    Type {
        bucket: &'a [u8],
    },
    /// Anything else: an unknown word, a wrong number of words, an empty line.
    /// Not an error to propagate but a request like any other, answered
    /// `UNKNOWN COMMAND`.
    Unknown,
}

impl<'a> Command<'a> {
    /// True for the commands that change a partition: what a log must see.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Create { .. }
                | Command::Put { .. }
                | Command::Delete { .. }
                | Command::Drop { .. }
                | Command::HSet { .. }
                | Command::SetString { .. }
                | Command::HDel { .. }
                | Command::Del { .. }
        )
    }

    /// The bucket a request is about, for the commands that a partition serves.
    /// `None` for the commands a connection answers by itself.
    pub fn bucket(&self) -> Option<&'a [u8]> {
        match *self {
            Command::Create { bucket }
            | Command::Put { bucket, .. }
            | Command::Get { bucket, .. }
            | Command::Delete { bucket, .. }
            | Command::Drop { bucket }
            | Command::Subscribe { bucket }
            | Command::DebugCrash { bucket }
            | Command::HSet { bucket, .. }
            | Command::SetString { bucket, .. }
            | Command::HGet { bucket, .. }
            | Command::HDel { bucket, .. }
            | Command::HExists { bucket, .. }
            | Command::HLen { bucket }
            | Command::HGetAll { bucket }
            | Command::HKeys { bucket }
            | Command::HVals { bucket }
            | Command::Exists { bucket }
            | Command::Del { bucket }
            | Command::Type { bucket } => Some(bucket),
            Command::Ping
            | Command::Stats
            | Command::Quit
            | Command::Auth { .. }
            | Command::DebugCrashConnection
            | Command::DebugCrashAcceptor
            | Command::DebugFailSync
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
        (Some(bucket), None, None) if is(b"DROP") => Command::Drop { bucket },
        (Some(bucket), None, None) if is(b"SUBSCRIBE") => Command::Subscribe { bucket },
        (None, None, None) if is(b"PING") => Command::Ping,
        (None, None, None) if is(b"STATS") => Command::Stats,
        (None, None, None) if is(b"QUIT") => Command::Quit,
        (Some(password), None, None) if is(b"AUTH") => Command::Auth { password },
        (Some(what), Some(bucket), None) if is(b"DEBUG") && what.eq_ignore_ascii_case(b"CRASH") => {
            Command::DebugCrash { bucket }
        }
        (Some(what), None, None) if is(b"DEBUG") && what.eq_ignore_ascii_case(b"CRASH-CONNECTION") => {
            Command::DebugCrashConnection
        }
        (Some(what), None, None) if is(b"DEBUG") && what.eq_ignore_ascii_case(b"CRASH-ACCEPTOR") => {
            Command::DebugCrashAcceptor
        }
        (Some(what), None, None) if is(b"DEBUG") && what.eq_ignore_ascii_case(b"FAILSYNC") => {
            Command::DebugFailSync
        }
        _ => Command::Unknown,
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
            (b"AUTH hunter2", Command::Auth { password: b"hunter2" }),
            (b"auth hunter2\r\n", Command::Auth { password: b"hunter2" }),
            (b"AUTH", Command::Unknown),
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
            (b"DROP shopping", Command::Drop { bucket: b"shopping" }),
            (b"drop shopping", Command::Drop { bucket: b"shopping" }),
            (b"DROP", Command::Unknown),
            (b"DROP a b", Command::Unknown),
            (b"SUBSCRIBE b", Command::Subscribe { bucket: b"b" }),
            (b"subscribe b c", Command::Unknown),
            (b"DEBUG CRASH b", Command::DebugCrash { bucket: b"b" }),
            (b"debug crash-connection", Command::DebugCrashConnection),
            (b"DEBUG CRASH-ACCEPTOR", Command::DebugCrashAcceptor),
            (b"debug failsync", Command::DebugFailSync),
            (b"DEBUG FAILSYNC b", Command::Unknown),
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

    #[test]
    fn http_lines_are_recognised_by_their_first_word_only() {
        for line in [&b"POST / HTTP/1.1"[..], b"post /x", b"  Host: a", b"HOST: b", b"host:"] {
            assert!(is_http_request_line(line), "{:?}", String::from_utf8_lossy(line));
        }
        for line in [&b"GET / HTTP/1.1"[..], b"PUT post host: x", b"POSTS a", b"Host", b""] {
            assert!(!is_http_request_line(line), "{:?}", String::from_utf8_lossy(line));
        }
    }
}
