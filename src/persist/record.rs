//! The bytes of a log: a versioned file header, then records that each carry a CRC32
//! and their lengths, so a reader can tell a whole record from a torn or damaged one.
//!
//! ```text
//! file:    "KVDATA" 0x00 kind  version(u32 LE)            16 bytes, then records
//! record:  crc32(u32) len(u32) | op(u8) blen(u32) klen(u32) vlen(u32) bucket key value
//!                              '----------------- len bytes, covered by the crc -----'
//! ```
//!
//! Bitcask's layout (a checksum and lengths before each record), with fixed-width
//! lengths: a record is found without scanning, and a length that does not add up is
//! damage, not a reason to read gigabytes. Pure functions; no I/O.

use crate::protocol::Command;

/// The first bytes of every file kv writes into a data directory.
const MAGIC: &[u8; 6] = b"KVDATA";

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Bytes of a file header.
pub const HEADER_LEN: usize = 16;

/// Bytes of a record before its body: the CRC and the body length.
const FRAME_LEN: usize = 8;

/// Bytes of a body before its words: the op and three lengths.
const BODY_HEAD_LEN: usize = 13;

/// Largest body a reader accepts: bigger is damage (a value is at most the 1 GiB line
/// limit), and a reader must not allocate what a torn length claims.
const MAX_BODY: usize = 3 * 1024 * 1024 * 1024 / 2;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// An append-only segment of a partition's log.
    Segment = 1,
    /// A snapshot of a partition, written by compaction.
    Snapshot = 2,
}

/// The header of a file of `kind`.
pub fn header(kind: FileKind) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..6].copy_from_slice(MAGIC);
    out[7] = kind as u8;
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out
}

/// Checks a file's header; the problem, if any, in words.
pub fn check_header(bytes: &[u8], kind: FileKind) -> Result<(), String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("a header of {} bytes, not {HEADER_LEN}", bytes.len()));
    }
    if &bytes[..6] != MAGIC || bytes[7] != kind as u8 {
        return Err("not a kv data file of this kind".to_string());
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(format!("format version {version}; this build reads version {VERSION}"));
    }
    Ok(())
}

/// One logged change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    Create { bucket: &'a [u8] },
    Put { bucket: &'a [u8], key: &'a [u8], value: &'a [u8] },
    Delete { bucket: &'a [u8], key: &'a [u8] },
    Drop { bucket: &'a [u8] },
}

impl<'a> Op<'a> {
    /// The change a command makes, for the commands that change a partition.
    pub fn of(command: &Command<'a>) -> Option<Op<'a>> {
        match *command {
            Command::Create { bucket } => Some(Op::Create { bucket }),
            Command::Put { bucket, key, value }
            | Command::HSet { bucket, key, value }
            | Command::SetString { bucket, key, value } => Some(Op::Put { bucket, key, value }),
            Command::Delete { bucket, key } | Command::HDel { bucket, key } => {
                Some(Op::Delete { bucket, key })
            }
            Command::Drop { bucket } | Command::Del { bucket } => Some(Op::Drop { bucket }),
            _ => None,
        }
    }

    fn parts(&self) -> (u8, &'a [u8], &'a [u8], &'a [u8]) {
        match *self {
            Op::Create { bucket } => (1, bucket, b"", b""),
            Op::Put { bucket, key, value } => (2, bucket, key, value),
            Op::Delete { bucket, key } => (3, bucket, key, b""),
            Op::Drop { bucket } => (4, bucket, b"", b""),
        }
    }
}

/// Appends one record of `op` to `out`.
pub fn encode(op: &Op<'_>, out: &mut Vec<u8>) {
    let (code, bucket, key, value) = op.parts();
    let body_len = BODY_HEAD_LEN + bucket.len() + key.len() + value.len();
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.push(code);
    for part in [bucket, key, value] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
    }
    for part in [bucket, key, value] {
        out.extend_from_slice(part);
    }
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// What is at some offset of a file's records.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<'a> {
    /// A whole, valid record and its length in bytes.
    Record(Op<'a>, usize),
    /// The bytes end inside a record: a torn tail, if this is the end of the file.
    Torn,
    /// A record whose checksum or lengths do not add up.
    Damaged(String),
}

fn le32(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
}

/// Reads the record at the start of `bytes`; `None` at the end.
pub fn decode(bytes: &[u8]) -> Option<Read<'_>> {
    if bytes.is_empty() {
        return None;
    }
    if bytes.len() < FRAME_LEN {
        return Some(Read::Torn);
    }
    let body_len = le32(bytes, 4);
    if !(BODY_HEAD_LEN..=MAX_BODY).contains(&body_len) {
        return Some(Read::Damaged(format!("a record length of {body_len}")));
    }
    let Some(framed) = bytes.get(..FRAME_LEN + body_len) else {
        return Some(Read::Torn);
    };
    if crc32fast::hash(&framed[4..]) != le32(framed, 0) as u32 {
        return Some(Read::Damaged("a record whose checksum fails".to_string()));
    }
    Some(parse_body(&framed[FRAME_LEN..]).map_or_else(Read::Damaged, |op| Read::Record(op, framed.len())))
}

/// True if, from some offset of `bytes`, whole valid records run to its end (the last
/// of them may be cut short, as a crash leaves one): what the records after a damaged
/// length look like. A lone record inside other bytes (a value that holds a record,
/// in a write a crash cut short) does not count. Cheap tests of a record's lengths
/// come before its checksum, and checksums over `budget` bytes in all: past that, the
/// answer is true, the cautious one for a caller deciding whether what precedes is the
/// last thing in a file.
pub fn records_run_to_the_end(bytes: &[u8], budget: usize) -> bool {
    let mut spent = 0usize;
    for at in 0..bytes.len() {
        let Some(framed) = plausible_frame(&bytes[at..]) else { continue };
        spent = spent.saturating_add(framed.len());
        if spent > budget {
            return true;
        }
        if crc32fast::hash(&framed[4..]) != le32(framed, 0) as u32
            || parse_body(&framed[FRAME_LEN..]).is_err()
        {
            continue;
        }
        match run_to_the_end(&bytes[at + framed.len()..], &mut spent, budget) {
            Some(true) => return true,
            Some(false) => {}
            None => return true,
        }
    }
    false
}

/// Whether the records from the start of `bytes` run to its end, whole or with a last
/// one cut short; `None` when checking them would pass `budget` (with what was
/// `spent` before).
fn run_to_the_end(bytes: &[u8], spent: &mut usize, budget: usize) -> Option<bool> {
    let mut at = 0;
    loop {
        match decode(&bytes[at..]) {
            None | Some(Read::Torn) => return Some(true),
            Some(Read::Damaged(_)) => return Some(false),
            Some(Read::Record(_, len)) => {
                *spent = spent.saturating_add(len);
                if *spent > budget {
                    return None;
                }
                at += len;
            }
        }
    }
}

/// The bytes of the record at the start of `bytes` if its lengths add up and it fits.
fn plausible_frame(bytes: &[u8]) -> Option<&[u8]> {
    let body_len = le32(bytes.get(..FRAME_LEN)?, 4);
    if !(BODY_HEAD_LEN..=MAX_BODY).contains(&body_len) {
        return None;
    }
    let framed = bytes.get(..FRAME_LEN + body_len)?;
    let body = &framed[FRAME_LEN..];
    let parts = [le32(body, 1), le32(body, 5), le32(body, 9)];
    let sum = parts.iter().try_fold(BODY_HEAD_LEN, |sum, &part| sum.checked_add(part));
    (matches!(body[0], 1..=4) && sum == Some(body_len)).then_some(framed)
}

/// The op of a body whose checksum held.
fn parse_body(body: &[u8]) -> Result<Op<'_>, String> {
    let (blen, klen, vlen) = (le32(body, 1), le32(body, 5), le32(body, 9));
    if BODY_HEAD_LEN + blen + klen + vlen != body.len() {
        return Err("a record whose lengths do not add up".to_string());
    }
    let bucket = &body[BODY_HEAD_LEN..BODY_HEAD_LEN + blen];
    let key = &body[BODY_HEAD_LEN + blen..BODY_HEAD_LEN + blen + klen];
    let value = &body[BODY_HEAD_LEN + blen + klen..];
    match body[0] {
        1 => Ok(Op::Create { bucket }),
        2 => Ok(Op::Put { bucket, key, value }),
        3 => Ok(Op::Delete { bucket, key }),
        4 => Ok(Op::Drop { bucket }),
        other => Err(format!("a record of unknown kind {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ops() -> Vec<Op<'static>> {
        vec![
            Op::Create { bucket: b"shopping" },
            Op::Put { bucket: b"shopping", key: b"eggs", value: b"3" },
            Op::Put { bucket: b"\xff", key: b"k\x00", value: b"" },
            Op::Delete { bucket: b"shopping", key: b"eggs" },
            Op::Drop { bucket: b"shopping" },
        ]
    }

    #[test]
    fn records_read_back_as_written() {
        let mut bytes = Vec::new();
        for op in all_ops() {
            encode(&op, &mut bytes);
        }
        let mut at = 0;
        let mut read = Vec::new();
        while let Some(Read::Record(op, len)) = decode(&bytes[at..]) {
            read.push(op);
            at += len;
        }
        assert_eq!(read, all_ops());
        assert_eq!(at, bytes.len());
    }

    #[test]
    fn a_record_cut_at_every_offset_is_torn_never_damaged_or_whole() {
        let mut bytes = Vec::new();
        encode(&Op::Put { bucket: b"b", key: b"key", value: b"value" }, &mut bytes);
        for cut in 1..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Some(Read::Torn), "cut at {cut}");
        }
        assert!(matches!(decode(&bytes), Some(Read::Record(..))));
    }

    #[test]
    fn a_flipped_bit_anywhere_is_damage() {
        let mut bytes = Vec::new();
        encode(&Op::Put { bucket: b"b", key: b"key", value: b"value" }, &mut bytes);
        for at in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut bad = bytes.clone();
                bad[at] ^= bit;
                let read = decode(&bad);
                assert!(
                    matches!(read, Some(Read::Damaged(_)) | Some(Read::Torn)),
                    "byte {at} bit {bit:#x}: {read:?}"
                );
            }
        }
    }

    #[test]
    fn headers_name_their_kind_and_version() {
        assert_eq!(check_header(&header(FileKind::Segment), FileKind::Segment), Ok(()));
        assert!(check_header(&header(FileKind::Snapshot), FileKind::Segment).is_err());
        let mut newer = header(FileKind::Segment);
        newer[8] = 2;
        assert!(check_header(&newer, FileKind::Segment).unwrap_err().contains("version 2"));
        assert!(check_header(b"KVDA", FileKind::Segment).is_err());
    }

    #[test]
    fn records_running_to_the_end_are_found_at_any_offset_and_garbage_holds_none() {
        let mut record = Vec::new();
        encode(&Op::Put { bucket: b"b", key: b"key", value: b"value" }, &mut record);
        for lead in [0, 1, 7, 300] {
            let bytes = [vec![0xab; lead], record.clone()].concat();
            assert!(records_run_to_the_end(&bytes, usize::MAX), "after {lead} bytes");
            // Followed by more records, the last of them cut short by a crash.
            let more = [bytes.clone(), record.clone(), record[..record.len() - 3].to_vec()].concat();
            assert!(records_run_to_the_end(&more, usize::MAX), "after {lead} bytes, then more");
        }
        assert!(!records_run_to_the_end(&record[1..], usize::MAX), "a record cut at its start");
        assert!(!records_run_to_the_end(&[0xab; 4096], usize::MAX));
        assert!(!records_run_to_the_end(&[0; 4096], usize::MAX));
        // A budget too small for one checksum answers true: the cautious answer.
        assert!(records_run_to_the_end(&record, 1));
    }

    /// A value holding a whole record, in a write a crash cut short, is no sign of
    /// records after a damaged length: what follows the inner record in the value
    /// does not read as records.
    #[test]
    fn a_record_inside_other_bytes_is_not_records_running_to_the_end() {
        let mut inner = Vec::new();
        encode(&Op::Put { bucket: b"b", key: b"key", value: b"value" }, &mut inner);
        let value = [b"before ".to_vec(), inner, vec![0xab; 5000]].concat();
        let mut outer = Vec::new();
        encode(&Op::Put { bucket: b"b", key: b"big", value: &value }, &mut outer);
        for cut in [40, 200, outer.len() - 1] {
            assert!(!records_run_to_the_end(&outer[1..cut], usize::MAX), "cut at {cut}");
        }
    }
}
