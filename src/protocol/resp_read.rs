//! Reading RESP replies back: where the first complete value in a byte stream ends.
//!
//! Used by whoever reads the RESP door's replies (tests, `kv bench`, a client): it
//! splits a stream of replies without building them, so it allocates nothing and does
//! not recurse (a hostile `*1\r\n*1\r\n...` cannot overflow the stack). It checks the
//! framing, not the meaning: bytes that are not RESP are a [`BadResp`], so a reader
//! that is out of step finds out instead of passing garbage on as a reply.

use std::fmt;

use super::resp_frame::parse_number;

/// Why bytes are not a RESP value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResp {
    reason: &'static str,
}

impl BadResp {
    /// What is wrong, in a few words.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for BadResp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed RESP reply: {}", self.reason)
    }
}

impl std::error::Error for BadResp {}

fn bad<T>(reason: &'static str) -> Result<T, BadResp> {
    Err(BadResp { reason })
}

/// The length of the first complete RESP value (any type, RESP2 or RESP3, nested
/// aggregates included) at the start of `bytes`, or `None` if it is incomplete.
///
/// An attribute (`|`) is counted with the value it annotates, since a reader wants
/// both together. Streamed strings and aggregates (`$?`, `*?`) are a [`BadResp`]:
/// Redis never sends them, and neither does kv.
///
/// ```
/// use kv::protocol::resp_value_len;
///
/// let replies = b"*2\r\n$1\r\na\r\n:5\r\n+OK\r\n";
/// assert_eq!(resp_value_len(replies), Ok(Some(15)));
/// assert_eq!(resp_value_len(&replies[15..]), Ok(Some(5)));
/// assert_eq!(resp_value_len(b"$5\r\nab"), Ok(None));
/// assert!(resp_value_len(b"hello\r\n").is_err());
/// ```
pub fn resp_value_len(bytes: &[u8]) -> Result<Option<usize>, BadResp> {
    // Values still to read: an aggregate's header adds its elements.
    let mut pending: usize = 1;
    let mut at = 0;
    while pending > 0 {
        let Some((len, children, is_value)) = read_element(&bytes[at..])? else {
            return Ok(None);
        };
        at += len;
        pending = pending.checked_add(children).ok_or(BadResp { reason: "aggregate too large" })?;
        pending -= usize::from(is_value);
    }
    Ok(Some(at))
}

/// One element's own bytes at the start of `bytes`: its length (header and, for a
/// string, its data), how many elements follow as its children, and whether it counts
/// as a value (an attribute does not: the value it annotates follows). `None` if
/// incomplete.
fn read_element(bytes: &[u8]) -> Result<Option<(usize, usize, bool)>, BadResp> {
    // The type byte is checked before waiting for the line, so a reader out of step
    // finds out at once.
    match bytes.first() {
        None => return Ok(None),
        Some(b'+' | b'-' | b':' | b'(' | b',' | b'_' | b'#' | b'$' | b'!' | b'=') => {}
        Some(b'*' | b'~' | b'>' | b'%' | b'|') => {}
        Some(_) => return bad("unknown type byte"),
    }
    let Some(line_len) = line_len(bytes)? else {
        return Ok(None);
    };
    let body = &bytes[1..line_len - 2];
    let scalar = |valid: bool| if valid { Ok(Some((line_len, 0, true))) } else { bad("bad scalar") };
    match bytes[0] {
        b'+' | b'-' => scalar(true),
        b':' => scalar(parse_number(body).is_some()),
        b'(' => scalar(is_big_number(body)),
        b',' => scalar(!body.is_empty()),
        b'_' => scalar(body.is_empty()),
        b'#' => scalar(body == b"t" || body == b"f"),
        // RESP2's null bulk and null array.
        b'$' | b'*' if body == b"-1" => scalar(true),
        b'$' | b'!' | b'=' => blob(bytes, line_len, body),
        b'*' | b'~' | b'>' => aggregate(line_len, body, 1, true),
        b'%' => aggregate(line_len, body, 2, true),
        b'|' => aggregate(line_len, body, 2, false),
        _ => bad("unknown type byte"),
    }
}

/// The length of the `\r\n`-terminated line at the start of `bytes`, `None` if its
/// `\n` has not arrived. A bare `\n` is malformed.
fn line_len(bytes: &[u8]) -> Result<Option<usize>, BadResp> {
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    if newline < 2 || bytes[newline - 1] != b'\r' {
        return bad("line not ended by CRLF");
    }
    Ok(Some(newline + 1))
}

/// A string with a length header (`$`, `!`, `=`): the header then its data and `\r\n`.
fn blob(bytes: &[u8], header_len: usize, body: &[u8]) -> Result<Option<(usize, usize, bool)>, BadResp> {
    let len = match parse_number(body) {
        Some(len) => usize::try_from(len).or(bad("bad string length"))?,
        None => return bad("bad string length"),
    };
    if bytes[0] == b'=' && len < 4 {
        return bad("verbatim string without its format");
    }
    let end = header_len.checked_add(len).and_then(|n| n.checked_add(2));
    let Some(end) = end.filter(|&end| end <= bytes.len()) else {
        return Ok(None);
    };
    if &bytes[end - 2..end] != b"\r\n" {
        return bad("string not followed by CRLF");
    }
    Ok(Some((end, 0, true)))
}

/// An aggregate header: `count` entries of `per_entry` elements each follow.
fn aggregate(
    header_len: usize,
    body: &[u8],
    per_entry: usize,
    is_value: bool,
) -> Result<Option<(usize, usize, bool)>, BadResp> {
    match parse_number(body) {
        Some(count) => {
            let count = usize::try_from(count).or(bad("bad aggregate length"))?;
            let children = count.checked_mul(per_entry).ok_or(BadResp { reason: "aggregate too large" })?;
            Ok(Some((header_len, children, is_value)))
        }
        None => bad("bad aggregate length"),
    }
}

/// RESP3's big number: an optional `-` then digits.
fn is_big_number(body: &[u8]) -> bool {
    let digits = body.strip_prefix(b"-").unwrap_or(body);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::resp_write::*;

    fn len_of(bytes: &[u8]) -> Result<Option<usize>, BadResp> {
        resp_value_len(bytes)
    }

    #[test]
    fn every_scalar_type_is_measured() {
        for value in [
            &b"+OK\r\n"[..],
            b"-ERR no\r\n",
            b":-12\r\n",
            b"_\r\n",
            b"#t\r\n",
            b",3.25\r\n",
            b"(-1234567890123456789012\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"$4\r\na\r\nb\r\n",
            b"!3\r\nERR\r\n",
            b"=8\r\ntxt:hi\r\n\r\n",
        ] {
            let stream = [value, b"+next\r\n"].concat();
            assert_eq!(len_of(&stream), Ok(Some(value.len())), "{:?}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn nested_aggregates_are_measured_whole() {
        let value = b"*2\r\n%1\r\n+k\r\n~2\r\n:1\r\n$1\r\nx\r\n>1\r\n*-1\r\n";
        let stream = [&value[..], b":9\r\n"].concat();
        assert_eq!(len_of(&stream), Ok(Some(value.len())));
        assert_eq!(len_of(b"*0\r\n:1\r\n"), Ok(Some(4)));
    }

    #[test]
    fn an_attribute_is_counted_with_its_value() {
        let value = b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n";
        assert_eq!(len_of(value), Ok(Some(value.len())));
        assert_eq!(len_of(&value[..14]), Ok(None));
    }

    #[test]
    fn every_proper_prefix_is_incomplete() {
        let value = b"*3\r\n$3\r\nSET\r\n%1\r\n+a\r\n=5\r\ntxt:x\r\n:7\r\n";
        for cut in 0..value.len() {
            assert_eq!(len_of(&value[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(len_of(value), Ok(Some(value.len())));
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            &b"hello\r\n"[..],
            b"+OK\n",
            b":12a\r\n",
            b":\r\n",
            b"#x\r\n",
            b"_x\r\n",
            b"$-2\r\n",
            b"$x\r\n",
            b"$3\r\nabcd\r\n",
            b"=2\r\nab\r\n",
            b"*-2\r\n",
            b"%-1\r\n",
            b"$?\r\n",
            b"*?\r\n",
            b"*1\r\n?\r\n",
        ] {
            assert!(len_of(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(len_of(b"x").unwrap_err().to_string(), "malformed RESP reply: unknown type byte");
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let deep = [b"*1\r\n".repeat(100_000), b":1\r\n".to_vec()].concat();
        assert_eq!(len_of(&deep), Ok(Some(deep.len())));
        assert_eq!(len_of(&deep[..deep.len() - 1]), Ok(None));
    }

    #[test]
    fn a_huge_count_is_not_an_overflow() {
        assert_eq!(len_of(b"*9223372036854775807\r\n:1\r\n"), Ok(None));
        let nested = b"*9223372036854775807\r\n".repeat(3);
        assert_eq!(len_of(&nested).unwrap_err().reason(), "aggregate too large");
    }

    #[test]
    fn what_the_encoders_write_reads_back() {
        for proto in [Resp::V2, Resp::V3] {
            let mut out = Vec::new();
            write_map_len(&mut out, 2, proto);
            write_bulk(&mut out, b"k\r\n");
            write_nil(&mut out, proto);
            write_simple(&mut out, b"s");
            // A set and a boolean, as RESP3 servers send them (kv writes neither).
            out.extend_from_slice(if proto == Resp::V3 { b"~3\r\n#t\r\n" } else { b"*3\r\n:1\r\n" });
            write_integer(&mut out, i64::MIN);
            write_verbatim(&mut out, b"txt", b"t", proto);
            let first = out.len();
            write_push_len(&mut out, 1, proto);
            out.extend_from_slice(if proto == Resp::V3 { b"_\r\n" } else { b"*-1\r\n" });
            write_error(&mut out, b"ERR e");
            assert_eq!(len_of(&out), Ok(Some(first)), "{proto:?}");
            let second = len_of(&out[first..]).unwrap().unwrap();
            assert_eq!(len_of(&out[first + second..]), Ok(Some(out.len() - first - second)));
        }
    }
}
