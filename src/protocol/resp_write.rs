//! RESP reply encoders: each appends one RESP2 or RESP3 value (or an aggregate's
//! header) to a `Vec<u8>`.
//!
//! They are the RESP door's only way to put a reply on the wire, so every frame they
//! write is well formed whatever bytes they are handed: an error or simple string
//! cannot carry a line break, and lengths are always the real ones. They allocate
//! nothing beyond growing `out`: numbers are formatted on the stack, never with
//! `format!`, because a reply is written per command on the hot path.
//!
//! Where RESP2 and RESP3 differ (nil, maps, sets, pushes, booleans, verbatim strings),
//! the encoder takes the connection's [`Resp`] version and writes what a client of that
//! version expects, as Redis does.

/// The protocol version a connection speaks: RESP2 until `HELLO 3` switches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resp {
    V2,
    V3,
}

/// Longest decimal form of an `i64` or a `u64`: twenty digits, or a sign and nineteen.
const MAX_DIGITS: usize = 20;

/// `+text\r\n`. Any `\r` or `\n` in `text` becomes a space so the frame cannot break.
pub fn write_simple(out: &mut Vec<u8>, text: &[u8]) {
    write_line(out, b'+', text);
}

/// `-text\r\n`, `text` starting with its code (`b"ERR no such key"`). Any `\r` or `\n`
/// in `text` becomes a space so the frame cannot break.
///
/// ```
/// use kv::protocol::write_error;
///
/// let mut out = Vec::new();
/// write_error(&mut out, b"ERR bad\r\nthing");
/// assert_eq!(out, b"-ERR bad  thing\r\n");
/// ```
pub fn write_error(out: &mut Vec<u8>, text: &[u8]) {
    write_line(out, b'-', text);
}

/// `:n\r\n`.
pub fn write_integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    push_i64(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `$len\r\nbytes\r\n`: binary-safe.
///
/// ```
/// use kv::protocol::write_bulk;
///
/// let mut out = Vec::new();
/// write_bulk(&mut out, b"a\r\nb");
/// assert_eq!(out, b"$4\r\na\r\nb\r\n");
/// ```
pub fn write_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    write_len(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// `$<len>\r\n`: the head of a bulk string whose `len` bytes the caller writes next,
/// then `\r\n` (for a bulk made of several parts, without joining them first).
pub fn write_bulk_head(out: &mut Vec<u8>, len: usize) {
    write_len(out, b'$', len);
}

/// The absent value: `$-1\r\n` (RESP2's null bulk) or `_\r\n`.
pub fn write_nil(out: &mut Vec<u8>, proto: Resp) {
    out.extend_from_slice(match proto {
        Resp::V2 => b"$-1\r\n",
        Resp::V3 => b"_\r\n",
    });
}

/// `*n\r\n`: an array of `n` values, which the caller writes next.
pub fn write_array_len(out: &mut Vec<u8>, n: usize) {
    write_len(out, b'*', n);
}

/// A map of `pairs` key-value pairs, which the caller writes next (key, value, ...):
/// `%pairs\r\n`, or in RESP2 a flat array `*{2*pairs}\r\n`.
///
/// ```
/// use kv::protocol::{Resp, write_map_len};
///
/// let mut out = Vec::new();
/// write_map_len(&mut out, 2, Resp::V2);
/// write_map_len(&mut out, 2, Resp::V3);
/// assert_eq!(out, b"*4\r\n%2\r\n");
/// ```
pub fn write_map_len(out: &mut Vec<u8>, pairs: usize, proto: Resp) {
    match proto {
        Resp::V2 => write_len(out, b'*', pairs.saturating_mul(2)),
        Resp::V3 => write_len(out, b'%', pairs),
    }
}

/// An out-of-band push of `n` values (pub/sub messages): `>n\r\n`, or in RESP2 an
/// array `*n\r\n`.
pub fn write_push_len(out: &mut Vec<u8>, n: usize, proto: Resp) {
    write_len(out, if proto == Resp::V3 { b'>' } else { b'*' }, n);
}

/// Text meant for a human, with its `format` (`b"txt"` or `b"mkd"`):
/// `=len\r\nfmt:text\r\n`, or in RESP2 a plain bulk of `text` (as Redis sends it).
pub fn write_verbatim(out: &mut Vec<u8>, format: &[u8; 3], text: &[u8], proto: Resp) {
    match proto {
        Resp::V2 => write_bulk(out, text),
        Resp::V3 => {
            write_len(out, b'=', text.len().saturating_add(4));
            out.extend_from_slice(format);
            out.push(b':');
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// `<kind>text\r\n` with line breaks in `text` replaced by spaces.
fn write_line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.push(kind);
    out.extend(text.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

/// `<kind>n\r\n`: a length header.
fn write_len(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    // usize is at most 64 bits on every target kv builds for.
    write_decimal(out, n as u64);
    out.extend_from_slice(b"\r\n");
}

/// Appends the decimal digits of `n`, through a stack buffer (no allocation): for
/// every length RESP writes, and for `kv bench`'s requests.
pub fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; MAX_DIGITS];
    let mut at = MAX_DIGITS;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The decimal form of `n`, `i64::MIN` included.
fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_decimal(out, n.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out);
        out
    }

    #[test]
    fn simple_and_error_lines_cannot_break_their_frame() {
        assert_eq!(written(|o| write_simple(o, b"OK")), b"+OK\r\n");
        assert_eq!(written(|o| write_simple(o, b"a\r\nb\nc\r")), b"+a  b c \r\n");
        assert_eq!(written(|o| write_error(o, b"ERR no such key")), b"-ERR no such key\r\n");
        assert_eq!(written(|o| write_error(o, b"ERR x\ny")), b"-ERR x y\r\n");
        assert_eq!(written(|o| write_simple(o, b"")), b"+\r\n");
    }

    #[test]
    fn integers_cover_the_whole_range() {
        assert_eq!(written(|o| write_integer(o, 0)), b":0\r\n");
        assert_eq!(written(|o| write_integer(o, 7)), b":7\r\n");
        assert_eq!(written(|o| write_integer(o, -42)), b":-42\r\n");
        assert_eq!(written(|o| write_integer(o, i64::MAX)), b":9223372036854775807\r\n");
        assert_eq!(written(|o| write_integer(o, i64::MIN)), b":-9223372036854775808\r\n");
        assert_eq!(written(|o| write_decimal(o, u64::MAX)), b"18446744073709551615");
    }

    #[test]
    fn bulks_are_binary_safe() {
        assert_eq!(written(|o| write_bulk(o, b"")), b"$0\r\n\r\n");
        assert_eq!(written(|o| write_bulk(o, b"\0\r\n")), b"$3\r\n\0\r\n\r\n");
        let big = vec![b'v'; 12_345];
        let out = written(|o| write_bulk(o, &big));
        assert!(out.starts_with(b"$12345\r\nvvv"));
        assert_eq!(out.len(), b"$12345\r\n".len() + 12_345 + 2);
    }

    #[test]
    fn nils_follow_the_version() {
        assert_eq!(written(|o| write_nil(o, Resp::V2)), b"$-1\r\n");
        assert_eq!(written(|o| write_nil(o, Resp::V3)), b"_\r\n");
    }

    #[test]
    fn aggregate_headers_follow_the_version() {
        assert_eq!(written(|o| write_array_len(o, 0)), b"*0\r\n");
        assert_eq!(written(|o| write_array_len(o, 3)), b"*3\r\n");
        assert_eq!(written(|o| write_map_len(o, 3, Resp::V2)), b"*6\r\n");
        assert_eq!(written(|o| write_map_len(o, 3, Resp::V3)), b"%3\r\n");
        assert_eq!(written(|o| write_push_len(o, 3, Resp::V2)), b"*3\r\n");
        assert_eq!(written(|o| write_push_len(o, 3, Resp::V3)), b">3\r\n");
    }

    #[test]
    fn verbatim_is_a_plain_bulk_in_resp2() {
        assert_eq!(written(|o| write_verbatim(o, b"txt", b"hi\r\n", Resp::V3)), b"=8\r\ntxt:hi\r\n\r\n");
        assert_eq!(written(|o| write_verbatim(o, b"mkd", b"", Resp::V3)), b"=4\r\nmkd:\r\n");
        assert_eq!(written(|o| write_verbatim(o, b"txt", b"hi", Resp::V2)), b"$2\r\nhi\r\n");
    }

    #[test]
    fn encoders_append_without_touching_what_is_there() {
        let mut out = b"keep".to_vec();
        write_simple(&mut out, b"PONG");
        write_integer(&mut out, 1);
        assert_eq!(out, b"keep+PONG\r\n:1\r\n");
    }
}
