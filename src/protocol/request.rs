//! [`Command`] values as bytes, for carrying them where a text line cannot: in a
//! [`Batch`](crate::batch::Batch) to a worker, and in a frame to a peer node.
//!
//! A text line cannot hold a value with a space or a line end in it, and the RESP door
//! stores any bytes, so past the door a request travels length-prefixed:
//!
//! ```text
//!  [u32 LE: length of what follows] [op: u8] ([u32 LE: field length] [field bytes])*
//! ```
//!
//! with as many fields as the op has (bucket, key, value, in that order). Decoding is
//! total: bytes from a peer that are not a command this node knows decode to
//! [`Command::Unknown`], never a panic. Encoding never allocates beyond growing `out`.

use super::command::Command;

/// Bytes of the length prefix before each encoded command.
pub const REQUEST_HEAD: usize = 4;

/// Appends `command`, encoded, to `out`.
///
/// ```
/// use kv::protocol::{Command, decode_request, encode_request};
///
/// let mut out = Vec::new();
/// encode_request(&Command::Put { bucket: b"b", key: b"a key", value: b"line\r\nend\0" }, &mut out);
/// encode_request(&Command::Ping, &mut out);
/// let (first, used) = decode_request(&out).unwrap();
/// assert_eq!(first, Command::Put { bucket: b"b", key: b"a key", value: b"line\r\nend\0" });
/// assert_eq!(decode_request(&out[used..]).unwrap().0, Command::Ping);
/// ```
pub fn encode_request(command: &Command<'_>, out: &mut Vec<u8>) {
    let (op, fields) = op_and_fields(command);
    let start = out.len();
    out.extend_from_slice(&[0; REQUEST_HEAD]);
    out.push(op);
    for field in fields.iter().flatten() {
        out.extend_from_slice(&len_u32(field.len()).to_le_bytes());
        out.extend_from_slice(field);
    }
    let body = len_u32(out.len() - start - REQUEST_HEAD);
    out[start..start + REQUEST_HEAD].copy_from_slice(&body.to_le_bytes());
}

/// The length of the whole encoded command at the start of `bytes` (its prefix
/// included), once its prefix is there; `None` before.
pub fn request_len(bytes: &[u8]) -> Option<usize> {
    let head: [u8; REQUEST_HEAD] = bytes.get(..REQUEST_HEAD)?.try_into().ok()?;
    Some(REQUEST_HEAD + u32::from_le_bytes(head) as usize)
}

/// The command at the start of `bytes` and how many bytes it took; `None` if the bytes
/// end before it does. A complete but malformed encoding is [`Command::Unknown`].
pub fn decode_request(bytes: &[u8]) -> Option<(Command<'_>, usize)> {
    let len = request_len(bytes)?;
    let body = bytes.get(REQUEST_HEAD..len)?;
    Some((decode_body(body), len))
}

/// A command from its op and fields (the bytes after the length prefix).
fn decode_body(body: &[u8]) -> Command<'_> {
    let Some((&op, mut rest)) = body.split_first() else { return Command::Unknown };
    let mut fields: [&[u8]; 3] = [b""; 3];
    let mut count = 0;
    while !rest.is_empty() {
        let Some(head) = rest.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok()) else {
            return Command::Unknown;
        };
        let len = u32::from_le_bytes(head) as usize;
        let Some(field) = rest.get(4..4 + len) else { return Command::Unknown };
        if count == fields.len() {
            return Command::Unknown;
        }
        fields[count] = field;
        count += 1;
        rest = &rest[4 + len..];
    }
    command_of(op, &fields[..count])
}

/// The command an op names with these fields; a wrong number of fields is Unknown.
fn command_of<'a>(op: u8, fields: &[&'a [u8]]) -> Command<'a> {
    match (op, fields) {
        (1, &[bucket]) => Command::Create { bucket },
        (2, &[bucket, key, value]) => Command::Put { bucket, key, value },
        (3, &[bucket, key]) => Command::Get { bucket, key },
        (4, &[bucket, key]) => Command::Delete { bucket, key },
        (5, &[bucket]) => Command::Drop { bucket },
        (6, &[bucket]) => Command::Subscribe { bucket },
        (7, &[bucket]) => Command::DebugCrash { bucket },
        (8, &[bucket, key, value]) => Command::HSet { bucket, key, value },
        (9, &[bucket, key, value]) => Command::SetString { bucket, key, value },
        (10, &[bucket, key]) => Command::HGet { bucket, key },
        (11, &[bucket, key]) => Command::HDel { bucket, key },
        (12, &[bucket, key]) => Command::HExists { bucket, key },
        (13, &[bucket]) => Command::HLen { bucket },
        (14, &[bucket]) => Command::HGetAll { bucket },
        (15, &[bucket]) => Command::HKeys { bucket },
        (16, &[bucket]) => Command::HVals { bucket },
        (17, &[bucket]) => Command::Exists { bucket },
        (18, &[bucket]) => Command::Del { bucket },
        (19, &[bucket]) => Command::Type { bucket },
        (20, &[]) => Command::Ping,
        (21, &[]) => Command::Stats,
        (22, &[]) => Command::Quit,
        (23, &[password]) => Command::Auth { password },
        (24, &[]) => Command::DebugCrashConnection,
        (25, &[]) => Command::DebugCrashAcceptor,
        (26, &[]) => Command::DebugFailSync,
        _ => Command::Unknown,
    }
}

/// A command's op and its fields, the inverse of [`command_of`].
fn op_and_fields<'a>(command: &Command<'a>) -> (u8, [Option<&'a [u8]>; 3]) {
    let one = |b| [Some(b), None, None];
    let two = |b, k| [Some(b), Some(k), None];
    let three = |b, k, v| [Some(b), Some(k), Some(v)];
    match *command {
        Command::Create { bucket } => (1, one(bucket)),
        Command::Put { bucket, key, value } => (2, three(bucket, key, value)),
        Command::Get { bucket, key } => (3, two(bucket, key)),
        Command::Delete { bucket, key } => (4, two(bucket, key)),
        Command::Drop { bucket } => (5, one(bucket)),
        Command::Subscribe { bucket } => (6, one(bucket)),
        Command::DebugCrash { bucket } => (7, one(bucket)),
        Command::HSet { bucket, key, value } => (8, three(bucket, key, value)),
        Command::SetString { bucket, key, value } => (9, three(bucket, key, value)),
        Command::HGet { bucket, key } => (10, two(bucket, key)),
        Command::HDel { bucket, key } => (11, two(bucket, key)),
        Command::HExists { bucket, key } => (12, two(bucket, key)),
        Command::HLen { bucket } => (13, one(bucket)),
        Command::HGetAll { bucket } => (14, one(bucket)),
        Command::HKeys { bucket } => (15, one(bucket)),
        Command::HVals { bucket } => (16, one(bucket)),
        Command::Exists { bucket } => (17, one(bucket)),
        Command::Del { bucket } => (18, one(bucket)),
        Command::Type { bucket } => (19, one(bucket)),
        Command::Ping => (20, [None; 3]),
        Command::Stats => (21, [None; 3]),
        Command::Quit => (22, [None; 3]),
        Command::Auth { password } => (23, one(password)),
        Command::DebugCrashConnection => (24, [None; 3]),
        Command::DebugCrashAcceptor => (25, [None; 3]),
        Command::DebugFailSync => (26, [None; 3]),
        Command::Unknown => (0, [None; 3]),
    }
}

/// A length as the encoding's `u32`. Every field is bounded far below 4 GiB by the
/// doors' limits (`--max-line`, `--max-value`); one past it would be a bug, so it is
/// clamped rather than wrapped, and then decodes as malformed.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(command: Command<'_>) {
        let mut out = Vec::new();
        encode_request(&command, &mut out);
        assert_eq!(request_len(&out), Some(out.len()));
        assert_eq!(decode_request(&out), Some((command, out.len())), "{command:?}");
    }

    #[test]
    fn every_command_comes_back_as_it_went() {
        let (b, k, v): (&[u8], &[u8], &[u8]) = (b"b u\r\ncket", b"k\0ey", b"");
        for command in [
            Command::Create { bucket: b },
            Command::Put { bucket: b, key: k, value: v },
            Command::Get { bucket: b, key: k },
            Command::Delete { bucket: b, key: k },
            Command::Drop { bucket: b },
            Command::Subscribe { bucket: b },
            Command::DebugCrash { bucket: b },
            Command::HSet { bucket: b, key: k, value: b"\xff" },
            Command::SetString { bucket: b, key: k, value: v },
            Command::HGet { bucket: b, key: k },
            Command::HDel { bucket: b, key: k },
            Command::HExists { bucket: b, key: k },
            Command::HLen { bucket: b },
            Command::HGetAll { bucket: b },
            Command::HKeys { bucket: b },
            Command::HVals { bucket: b },
            Command::Exists { bucket: b },
            Command::Del { bucket: b },
            Command::Type { bucket: b },
            Command::Ping,
            Command::Stats,
            Command::Quit,
            Command::Auth { password: k },
            Command::DebugCrashConnection,
            Command::DebugCrashAcceptor,
            Command::DebugFailSync,
            Command::Unknown,
        ] {
            round_trip(command);
        }
    }

    #[test]
    fn an_unfinished_command_is_not_decoded() {
        let mut out = Vec::new();
        encode_request(&Command::Get { bucket: b"b", key: b"k" }, &mut out);
        for end in 0..out.len() {
            assert_eq!(decode_request(&out[..end]), None, "{end}");
        }
    }

    #[test]
    fn malformed_bodies_are_unknown_not_a_panic() {
        let cases: &[&[u8]] = &[
            b"\x00\x00\x00\x00",                             // no op
            b"\x01\x00\x00\x00\x63",                         // unknown op 99
            b"\x01\x00\x00\x00\x01",                         // CREATE without a bucket
            b"\x07\x00\x00\x00\x01\x09\x00\x00\x00\x61\x62", // field longer than the body
            b"\x03\x00\x00\x00\x01\x00\x00",                 // half a field length
        ];
        for bytes in cases {
            let (command, used) = decode_request(bytes).unwrap();
            assert_eq!((command, used), (Command::Unknown, bytes.len()), "{bytes:?}");
        }
        // Four fields: more than any op has.
        let mut body = vec![2u8];
        for _ in 0..4 {
            body.extend_from_slice(&1u32.to_le_bytes());
            body.push(b'x');
        }
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        assert_eq!(decode_request(&bytes).unwrap().0, Command::Unknown);
    }
}
