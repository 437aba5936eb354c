//! [`Reply`] values in RESP, the bytes the RESP door (`resp/`) answers with.
//!
//! Where a reply has a Redis counterpart it takes its form: `OK` is `+OK`, a missing
//! value is RESP2's null bulk or RESP3's `_`, `HGETALL` is a map in RESP3 and a flat
//! array in RESP2. kv's own errors keep their text after `-ERR ` (docs/RESP.md lists
//! them), except the two that Redis clients know by their code.

use super::reply::{ErrorKind, Fields, Part, Reply};
use super::resp_write::{
    Resp, write_array_len, write_bulk, write_error, write_integer, write_map_len, write_nil, write_simple,
};

/// Appends `reply` in RESP version `proto`.
///
/// ```
/// use kv::protocol::{Dialect, ErrorKind, Reply};
///
/// let mut out = Vec::new();
/// Reply::Integer(2).write(Dialect::Resp2, &mut out);
/// Reply::Nil.write(Dialect::Resp2, &mut out);
/// Reply::Nil.write(Dialect::Resp3, &mut out);
/// Reply::Error(ErrorKind::PeerUnavailable { peer: "n1" }).write(Dialect::Resp2, &mut out);
/// assert_eq!(out, b":2\r\n$-1\r\n_\r\n-ERR peer n1 unavailable\r\n");
/// ```
pub fn write_resp(reply: &Reply<'_>, proto: Resp, out: &mut Vec<u8>) {
    match *reply {
        Reply::Ok => write_simple(out, b"OK"),
        Reply::Pong => write_simple(out, b"PONG"),
        Reply::Status(word) => write_simple(out, word.as_bytes()),
        Reply::Value(value) | Reply::Bulk(value) => write_bulk(out, value),
        Reply::Integer(n) => write_integer(out, n),
        Reply::Nil => write_nil(out, proto),
        Reply::NotFound => write_error(out, b"ERR no such bucket"),
        Reply::Unknown => write_error(out, b"ERR unknown command"),
        Reply::Subscribed => {}
        Reply::Error(kind) => write_resp_error(&kind, out),
        Reply::Fields(fields, part) => write_fields(fields, part, proto, out),
    }
}

/// `-<CODE> <text>`: `NOAUTH` and `WRONGPASS` where Redis uses them, `ERR` otherwise.
#[cold]
pub fn write_resp_error(kind: &ErrorKind<'_>, out: &mut Vec<u8>) {
    let code: &[u8] = match kind {
        ErrorKind::AuthenticationRequired => b"NOAUTH ",
        ErrorKind::InvalidPassword => b"WRONGPASS ",
        _ => b"ERR ",
    };
    let text = [code, &kind.text()].concat();
    write_error(out, &text);
}

/// A bucket's pairs as a map, or its keys or values as an array.
fn write_fields(fields: Option<&dyn Fields>, part: Part, proto: Resp, out: &mut Vec<u8>) {
    let count = fields.map_or(0, |f| f.count());
    match part {
        Part::Pairs => write_map_len(out, count, proto),
        Part::Keys | Part::Values => write_array_len(out, count),
    }
    let Some(fields) = fields else { return };
    fields.each_pair(&mut |key, value| match part {
        Part::Pairs => {
            write_bulk(out, key);
            write_bulk(out, value);
        }
        Part::Keys => write_bulk(out, key),
        Part::Values => write_bulk(out, value),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Dialect;

    struct Two;

    impl Fields for Two {
        fn count(&self) -> usize {
            2
        }
        fn each_pair(&self, each: &mut dyn FnMut(&[u8], &[u8])) {
            each(b"a", b"1");
            each(b"b", b"x y");
        }
    }

    fn resp(reply: Reply<'_>, dialect: Dialect) -> Vec<u8> {
        let mut out = Vec::new();
        reply.write(dialect, &mut out);
        out
    }

    #[test]
    fn replies_in_resp2_and_resp3() {
        use Dialect::{Resp2, Resp3};
        let cases: &[(Reply, Dialect, &[u8])] = &[
            (Reply::Ok, Resp2, b"+OK\r\n"),
            (Reply::Pong, Resp3, b"+PONG\r\n"),
            (Reply::Status("hash"), Resp2, b"+hash\r\n"),
            (Reply::Bulk(b"a\r\nb"), Resp2, b"$4\r\na\r\nb\r\n"),
            (Reply::Integer(-3), Resp3, b":-3\r\n"),
            (Reply::Nil, Resp2, b"$-1\r\n"),
            (Reply::Nil, Resp3, b"_\r\n"),
            (Reply::Subscribed, Resp2, b""),
            (Reply::Error(ErrorKind::OutOfMemory), Resp2, b"-ERR out of memory\r\n"),
            (
                Reply::Error(ErrorKind::NoRoute { bucket: b"a\r\nb" }),
                Resp2,
                b"-ERR no route for bucket a  b\r\n",
            ),
            (Reply::Error(ErrorKind::AuthenticationRequired), Resp3, b"-NOAUTH authentication required\r\n"),
            (Reply::Error(ErrorKind::InvalidPassword), Resp2, b"-WRONGPASS invalid password\r\n"),
            (
                Reply::Fields(Some(&Two), Part::Pairs),
                Resp2,
                b"*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$3\r\nx y\r\n",
            ),
            (
                Reply::Fields(Some(&Two), Part::Pairs),
                Resp3,
                b"%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$3\r\nx y\r\n",
            ),
            (Reply::Fields(Some(&Two), Part::Keys), Resp3, b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
            (Reply::Fields(Some(&Two), Part::Values), Resp2, b"*2\r\n$1\r\n1\r\n$3\r\nx y\r\n"),
            (Reply::Fields(None, Part::Pairs), Resp3, b"%0\r\n"),
            (Reply::Fields(None, Part::Keys), Resp2, b"*0\r\n"),
        ];
        for (reply, dialect, bytes) in cases {
            assert_eq!(resp(*reply, *dialect), *bytes, "{reply:?} {dialect:?}");
        }
    }

    #[test]
    fn the_text_door_refuses_what_it_cannot_frame() {
        assert_eq!(
            resp(Reply::Value(b"a b"), Dialect::Text),
            b"ERROR value not representable in the text protocol (use the RESP port)\r\n"
        );
        assert_eq!(resp(Reply::Value(b""), Dialect::Text), b"\r\nOK\r\n");
        assert_eq!(resp(Reply::Integer(1), Dialect::Text), b"UNKNOWN COMMAND\r\n");
    }
}
