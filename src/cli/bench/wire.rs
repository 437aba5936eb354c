//! The bench's bytes on the wire: requests written and replies parsed, for kv's
//! protocol, RESP2 (`SET`/`GET`, or `HSET`/`HGET` on buckets) and memcached's text
//! protocol (`set`/`get`), plus the keys and values of a run and the verdict on a value
//! read back.
//!
//! Pure functions on byte buffers, so each protocol's framing is tested without a
//! server. kv's replies are read with the library's `ReplyLine` and RESP replies are
//! framed by the library's `resp_value_len`, so this file never spells kv's reply words
//! nor re-implements RESP framing; the threads that use all this live in `run.rs`.

use std::fmt;
use std::str::FromStr;

use kv::protocol::{self, ReplyLine, resp_value_len};

/// Which wire protocol the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    /// kv's own line protocol (the text door): `PUT b k v` / `GET b k`.
    Kv,
    /// Redis's RESP2: `SET k v` / `GET k`, or `HSET b k v` / `HGET b k` with `--hash`,
    /// as arrays of bulk strings. Speaks to Redis or to kv's RESP door.
    Redis,
    /// memcached's text protocol: `set k 0 0 n` + data / `get k`.
    Memcached,
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "kv" | "text" => Ok(Proto::Kv),
            "redis" | "resp" => Ok(Proto::Redis),
            "memcached" | "memcache" => Ok(Proto::Memcached),
            _ => Err(format!("unknown protocol {text:?}: use kv (or text), redis or memcached")),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Kv => "kv",
            Proto::Redis => "redis",
            Proto::Memcached => "memcached",
        })
    }
}

/// The two operations of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// A read: kv `GET`, Redis `GET` or `HGET`, memcached `get`.
    Get,
    /// A write: kv `PUT`, Redis `SET` or `HSET`, memcached `set`.
    Set,
}

/// Writes `key` number `index` into `out`: `key:` and at least 8 digits, so every key
/// of a run has the same length.
#[inline]
pub(crate) fn write_key(out: &mut Vec<u8>, index: u64) {
    let (bytes, len) = key(index);
    out.extend_from_slice(&bytes[..len]);
}

/// Key number `index` in a stack buffer, and its length.
#[inline]
fn key(index: u64) -> ([u8; 24], usize) {
    let mut digits = [b'0'; 20];
    let mut n = index;
    let mut at = digits.len();
    while n > 0 {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = at.min(digits.len() - 8);
    let mut bytes = [0u8; 24];
    bytes[..4].copy_from_slice(b"key:");
    let len = 4 + digits.len() - start;
    bytes[4..len].copy_from_slice(&digits[start..]);
    (bytes, len)
}

/// `n` in decimal, without allocating.
fn write_decimal(out: &mut Vec<u8>, n: usize) {
    protocol::write_decimal(out, n as u64);
}

/// The 64 bytes values are made of: no whitespace, nothing any of the protocols treats
/// specially.
const VALUE_ALPHABET: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";

/// One step of SplitMix64: a fast, well-mixed 64-bit generator.
#[inline]
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Appends the value every write of key `index` carries in the run with `seed`.
#[inline]
pub(crate) fn write_value(out: &mut Vec<u8>, seed: u64, index: u64, size: usize) {
    let mut state = seed ^ index.wrapping_mul(0xd6e8_feb8_6659_fd93);
    let mut left = size;
    while left > 0 {
        let bits = splitmix(&mut state);
        for i in 0..left.min(10) {
            out.push(VALUE_ALPHABET[((bits >> (i * 6)) & 63) as usize]);
        }
        left -= left.min(10);
    }
}

/// The kv bucket names of a run: `prefix` and a number, `b0`, `b1`, ... by default.
pub(crate) fn bucket_names(prefix: &str, buckets: usize) -> Vec<Vec<u8>> {
    (0..buckets.max(1))
        .map(|bucket| {
            let mut name = prefix.as_bytes().to_vec();
            write_decimal(&mut name, bucket);
            name
        })
        .collect()
}

/// Appends one request of `proto` for key `index` to `out`.
///
/// `bucket` is the kv bucket of the key: kv needs one; Redis writes `HSET`/`HGET` on
/// it if there is one and `SET`/`GET` if not; memcached ignores it.
pub(crate) fn write_request(
    out: &mut Vec<u8>,
    proto: Proto,
    op: Op,
    bucket: Option<&[u8]>,
    index: u64,
    value: &[u8],
) {
    match (proto, op) {
        (Proto::Kv, Op::Get) => {
            out.extend_from_slice(b"GET ");
            out.extend_from_slice(bucket.unwrap_or_default());
            out.push(b' ');
            write_key(out, index);
            out.extend_from_slice(b"\r\n");
        }
        (Proto::Kv, Op::Set) => {
            out.extend_from_slice(b"PUT ");
            out.extend_from_slice(bucket.unwrap_or_default());
            out.push(b' ');
            write_key(out, index);
            out.push(b' ');
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        (Proto::Redis, op) => {
            let (key, len) = key(index);
            let key = &key[..len];
            // The parts after the command name; the key and value are on the stack or
            // borrowed, so a request allocates nothing once `out` has grown.
            let (head, parts): (&[u8], &[&[u8]]) = match (op, bucket) {
                (Op::Get, None) => (b"*2\r\n$3\r\nGET\r\n", &[key]),
                (Op::Set, None) => (b"*3\r\n$3\r\nSET\r\n", &[key, value]),
                (Op::Get, Some(bucket)) => (b"*3\r\n$4\r\nHGET\r\n", &[bucket, key]),
                (Op::Set, Some(bucket)) => (b"*4\r\n$4\r\nHSET\r\n", &[bucket, key, value]),
            };
            out.extend_from_slice(head);
            for part in parts {
                out.push(b'$');
                write_decimal(out, part.len());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
        }
        (Proto::Memcached, Op::Get) => {
            out.extend_from_slice(b"get ");
            write_key(out, index);
            out.extend_from_slice(b"\r\n");
        }
        (Proto::Memcached, Op::Set) => {
            out.extend_from_slice(b"set ");
            write_key(out, index);
            out.extend_from_slice(b" 0 0 ");
            write_decimal(out, value.len());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// One reply, as the bench sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply<'a> {
    /// A write was acknowledged.
    Stored,
    /// A GET found this value.
    Value(&'a [u8]),
    /// A GET found no value for the key.
    Missing,
    /// The server refused the request; the error line without its line end.
    Error(&'a [u8]),
}

/// A reply the bench cannot make sense of; the connection cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadReply(pub(crate) String);

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected reply: {}", self.0)
    }
}

fn bad(bytes: &[u8]) -> BadReply {
    let shown = &bytes[..bytes.len().min(80)];
    BadReply(format!("{:?}", String::from_utf8_lossy(shown)))
}

/// The first line of `buf` without its line end, and the bytes it takes with its `\n`.
fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let newline = buf.iter().position(|&b| b == b'\n')?;
    let text = &buf[..newline];
    Some((text.strip_suffix(b"\r").unwrap_or(text), newline + 1))
}

/// Parses one reply to `op` from the front of `buf`.
///
/// `Ok(None)` means the reply is not complete yet; `Ok(Some((reply, used)))` gives
/// the reply and the number of bytes it took.
pub(crate) fn parse_reply(proto: Proto, op: Op, buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, BadReply> {
    match proto {
        Proto::Kv => parse_kv(op, buf),
        Proto::Redis => parse_redis(op, buf),
        Proto::Memcached => parse_memcached(op, buf),
    }
}

fn parse_kv(op: Op, buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, BadReply> {
    let Some((first, used)) = line(buf) else { return Ok(None) };
    let first_line = ReplyLine::of(first);
    if first_line.is_error() {
        return Ok(Some((Reply::Error(first), used)));
    }
    match op {
        Op::Set if first_line == ReplyLine::Ok => Ok(Some((Reply::Stored, used))),
        Op::Set => Err(bad(first)),
        Op::Get => {
            let Some((second, more)) = line(&buf[used..]) else { return Ok(None) };
            if ReplyLine::of(second) != ReplyLine::Ok {
                return Err(bad(&buf[..used + more]));
            }
            let reply = if first.is_empty() { Reply::Missing } else { Reply::Value(first) };
            Ok(Some((reply, used + more)))
        }
    }
}

/// One RESP reply, framed by the library's `resp_value_len`. A write is acknowledged
/// by `+OK` (`SET`) or an integer (`HSET`: the number of new fields); a read answers a
/// bulk string, or a null (`$-1`, or RESP3's `_`) for a missing key.
fn parse_redis(op: Op, buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, BadReply> {
    let len = match resp_value_len(buf) {
        Ok(Some(len)) => len,
        Ok(None) => return Ok(None),
        Err(error) => {
            let shown = &buf[..buf.len().min(80)];
            return Err(BadReply(format!("{} in {:?}", error.reason(), String::from_utf8_lossy(shown))));
        }
    };
    // A complete value ends with \r\n, so it is at least 3 bytes long.
    let value = &buf[..len];
    let reply = match (value[0], op) {
        (b'-', _) => Reply::Error(&value[..len - 2]),
        (b'+', Op::Set) if value == b"+OK\r\n" => Reply::Stored,
        (b':', Op::Set) => Reply::Stored,
        (b'$', Op::Get) if value == b"$-1\r\n" => Reply::Missing,
        (b'_', Op::Get) => Reply::Missing,
        (b'$', Op::Get) => {
            let header = value.iter().position(|&b| b == b'\n').map_or(len, |newline| newline + 1);
            Reply::Value(&value[header.min(len - 2)..len - 2])
        }
        _ => return Err(bad(value)),
    };
    Ok(Some((reply, len)))
}

/// The `len` bytes of a length-prefixed value starting at `start`, which must be
/// followed by `\r\n`, and where what follows them begins; `None` until all of it is
/// in `buf`.
fn payload(buf: &[u8], start: usize, len: usize) -> Result<Option<(&[u8], usize)>, BadReply> {
    let Some(end) = start.checked_add(len).filter(|end| end.checked_add(2).is_some()) else {
        return Err(bad(&buf[..start]));
    };
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(bad(&buf[..end + 2]));
    }
    Ok(Some((&buf[start..end], end + 2)))
}

fn parse_memcached(op: Op, buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, BadReply> {
    let Some((first, used)) = line(buf) else { return Ok(None) };
    if first == b"ERROR"
        || first == b"NOT_STORED"
        || first.starts_with(b"CLIENT_ERROR")
        || first.starts_with(b"SERVER_ERROR")
    {
        return Ok(Some((Reply::Error(first), used)));
    }
    match op {
        Op::Set if first == b"STORED" => Ok(Some((Reply::Stored, used))),
        Op::Get if first == b"END" => Ok(Some((Reply::Missing, used))),
        Op::Get if first.starts_with(b"VALUE ") => {
            // VALUE <key> <flags> <bytes> [<cas>]
            let len: usize = first
                .split(|&b| b == b' ')
                .nth(3)
                .and_then(|word| std::str::from_utf8(word).ok())
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| bad(first))?;
            let Some((value, end)) = payload(buf, used, len)? else { return Ok(None) };
            let Some((last, more)) = line(&buf[end..]) else { return Ok(None) };
            if last != b"END" {
                return Err(bad(&buf[..end + more]));
            }
            Ok(Some((Reply::Value(value), end + more)))
        }
        _ => Err(bad(first)),
    }
}

/// How a value read back compares with what this run wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The value this run writes for the key.
    Hit,
    /// No value, and this run had not yet written the key when the GET was sent.
    Miss,
    /// Some other value, and this run had not yet written the key: left by an
    /// earlier run (or another client). Not an error of the server's.
    Stale,
    /// Wrong: a value other than ours, or none, after our write was acknowledged.
    Mismatch,
}

/// Judges a GET's result. `written` says whether a write of this key had been
/// acknowledged before the GET was sent; `got` is `None` for a missing key.
pub(crate) fn verdict(expected: &[u8], got: Option<&[u8]>, written: bool) -> Verdict {
    match got {
        Some(value) if value == expected => Verdict::Hit,
        None if !written => Verdict::Miss,
        Some(_) if !written => Verdict::Stale,
        _ => Verdict::Mismatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_of_each_protocol() {
        let mut out = Vec::new();
        write_request(&mut out, Proto::Kv, Op::Set, Some(b"b3"), 42, b"v1");
        write_request(&mut out, Proto::Kv, Op::Get, Some(b"b3"), 42, b"");
        assert_eq!(out, b"PUT b3 key:00000042 v1\r\nGET b3 key:00000042\r\n");
        assert_eq!(bucket_names("zz", 3), [&b"zz0"[..], b"zz1", b"zz2"]);
        out.clear();
        write_request(&mut out, Proto::Redis, Op::Set, None, 7, b"abc");
        write_request(&mut out, Proto::Redis, Op::Get, None, 7, b"");
        assert_eq!(
            out,
            &b"*3\r\n$3\r\nSET\r\n$12\r\nkey:00000007\r\n$3\r\nabc\r\n*2\r\n$3\r\nGET\r\n$12\r\nkey:00000007\r\n"[..]
        );
        out.clear();
        write_request(&mut out, Proto::Redis, Op::Set, Some(b"b10"), 7, b"abc");
        write_request(&mut out, Proto::Redis, Op::Get, Some(b"b10"), 7, b"");
        assert_eq!(
            out,
            &b"*4\r\n$4\r\nHSET\r\n$3\r\nb10\r\n$12\r\nkey:00000007\r\n$3\r\nabc\r\n\
               *3\r\n$4\r\nHGET\r\n$3\r\nb10\r\n$12\r\nkey:00000007\r\n"[..]
        );
        out.clear();
        write_request(&mut out, Proto::Memcached, Op::Set, None, 123_456_789, b"abc");
        write_request(&mut out, Proto::Memcached, Op::Get, None, 123_456_789, b"");
        assert_eq!(out, b"set key:123456789 0 0 3\r\nabc\r\nget key:123456789\r\n");
    }

    #[test]
    fn values_are_deterministic_per_key_and_seed() {
        let make = |seed, key| {
            let mut v = Vec::new();
            write_value(&mut v, seed, key, 32);
            v
        };
        assert_eq!(make(1, 5), make(1, 5));
        assert_ne!(make(1, 5), make(1, 6));
        assert_ne!(make(1, 5), make(2, 5));
        let v = make(9, 9);
        assert_eq!(v.len(), 32);
        assert!(v.iter().all(|b| VALUE_ALPHABET.contains(b)));
        let mut odd = Vec::new();
        write_value(&mut odd, 9, 9, 13);
        assert_eq!(odd.len(), 13);
        assert_eq!(odd[..10], v[..10]);
    }

    fn text(reply: kv::protocol::Reply<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        reply.write_text(&mut out);
        out
    }

    #[test]
    fn kv_replies() {
        fn p(op: Op, bytes: &[u8]) -> Result<Option<(Reply<'_>, usize)>, BadReply> {
            parse_reply(Proto::Kv, op, bytes)
        }
        assert_eq!(p(Op::Set, b"OK\r\nrest"), Ok(Some((Reply::Stored, 4))));
        assert_eq!(p(Op::Get, b"3\r\nOK\r\n"), Ok(Some((Reply::Value(b"3"), 7))));
        assert_eq!(p(Op::Get, b"\r\nOK\r\n"), Ok(Some((Reply::Missing, 6))));
        // kv's error replies, written by the library rather than spelt here.
        let not_found = text(kv::protocol::Reply::NotFound);
        let too_long = text(kv::protocol::Reply::Error(kv::protocol::ErrorKind::LineTooLong));
        let unknown = text(kv::protocol::Reply::Unknown);
        for error in [&not_found, &too_long, &unknown] {
            let line = &error[..error.len() - 2];
            assert_eq!(p(Op::Get, error), Ok(Some((Reply::Error(line), error.len()))));
            assert_eq!(p(Op::Set, error), Ok(Some((Reply::Error(line), error.len()))));
        }
        // Incomplete replies wait for more bytes.
        assert_eq!(p(Op::Get, b"3\r\nOK"), Ok(None));
        assert_eq!(p(Op::Get, b"3\r"), Ok(None));
        assert_eq!(p(Op::Set, b""), Ok(None));
        // Nonsense is an error, not a value.
        assert!(p(Op::Set, b"STORED\r\n").is_err());
        assert!(p(Op::Get, b"3\r\n3\r\n").is_err());
    }

    #[test]
    fn redis_replies() {
        let p = |op, bytes: &'static [u8]| parse_reply(Proto::Redis, op, bytes);
        assert_eq!(p(Op::Set, b"+OK\r\n"), Ok(Some((Reply::Stored, 5))));
        assert_eq!(p(Op::Get, b"$3\r\nabc\r\n$-1\r\n"), Ok(Some((Reply::Value(b"abc"), 9))));
        assert_eq!(p(Op::Get, b"$-1\r\n"), Ok(Some((Reply::Missing, 5))));
        assert_eq!(p(Op::Get, b"$0\r\n\r\n"), Ok(Some((Reply::Value(b""), 6))));
        // A bulk string may hold \r\n inside; its length decides.
        assert_eq!(p(Op::Get, b"$4\r\na\r\nb\r\n"), Ok(Some((Reply::Value(b"a\r\nb"), 10))));
        assert_eq!(p(Op::Set, b"-ERR wrong\r\n"), Ok(Some((Reply::Error(b"-ERR wrong"), 12))));
        assert_eq!(p(Op::Get, b"-ERR wrong\r\n"), Ok(Some((Reply::Error(b"-ERR wrong"), 12))));
        assert_eq!(p(Op::Get, b"$3\r\nab"), Ok(None));
        assert_eq!(p(Op::Get, b"$3\r\nabc\r"), Ok(None));
        assert!(p(Op::Get, b"$x\r\n").is_err());
        assert!(p(Op::Get, b"$3\r\nabcd\r\n").is_err());
        assert!(p(Op::Set, b"$3\r\nabc\r\n").is_err());
        assert!(p(Op::Get, b":1\r\n").is_err());
        // HSET answers how many fields were new; either count acknowledges the write.
        assert_eq!(p(Op::Set, b":1\r\n:0\r\n"), Ok(Some((Reply::Stored, 4))));
        assert_eq!(p(Op::Set, b":0\r\n"), Ok(Some((Reply::Stored, 4))));
        assert_eq!(p(Op::Get, b"_\r\n"), Ok(Some((Reply::Missing, 3))));
        // Framing errors name what is wrong.
        let error = p(Op::Get, b"hello\r\n").unwrap_err();
        assert!(error.0.contains("unknown type byte"), "{error}");
        assert!(p(Op::Set, b"+QUEUED\r\n").is_err());
    }

    #[test]
    fn memcached_replies() {
        let p = |op, bytes: &'static [u8]| parse_reply(Proto::Memcached, op, bytes);
        assert_eq!(p(Op::Set, b"STORED\r\n"), Ok(Some((Reply::Stored, 8))));
        assert_eq!(p(Op::Get, b"END\r\n"), Ok(Some((Reply::Missing, 5))));
        assert_eq!(p(Op::Get, b"VALUE k 0 3\r\nabc\r\nEND\r\n"), Ok(Some((Reply::Value(b"abc"), 23))));
        assert_eq!(p(Op::Get, b"VALUE k 0 3 99\r\nabc\r\nEND\r\n"), Ok(Some((Reply::Value(b"abc"), 26))));
        assert_eq!(
            p(Op::Set, b"SERVER_ERROR out of memory\r\n").map(|r| r.map(|(r, _)| r)),
            Ok(Some(Reply::Error(b"SERVER_ERROR out of memory")))
        );
        assert_eq!(p(Op::Get, b"ERROR\r\n"), Ok(Some((Reply::Error(b"ERROR"), 7))));
        assert_eq!(p(Op::Get, b"VALUE k 0 3\r\nabc\r\nEN"), Ok(None));
        assert_eq!(p(Op::Get, b"VALUE k 0 3\r\nab"), Ok(None));
        assert!(p(Op::Get, b"VALUE k 0 x\r\n").is_err());
        assert!(p(Op::Get, b"VALUE k 0 3\r\nabc\r\nVALUE\r\n").is_err());
        assert!(p(Op::Set, b"END\r\n").is_err());
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(b"v", Some(b"v"), true), Verdict::Hit);
        assert_eq!(verdict(b"v", Some(b"v"), false), Verdict::Hit);
        assert_eq!(verdict(b"v", None, false), Verdict::Miss);
        assert_eq!(verdict(b"v", Some(b"old"), false), Verdict::Stale);
        assert_eq!(verdict(b"v", Some(b"w"), true), Verdict::Mismatch);
        assert_eq!(verdict(b"v", None, true), Verdict::Mismatch);
    }
}
