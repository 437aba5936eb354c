//! The frames nodes exchange after the handshake (version 3 and 4 hellos): a request
//! is the dialect its reply is to be written in, then the [`Command`] encoded
//! (`request.rs`); a reply is `[u32 LE length][bytes]`, the bytes exactly what the
//! asking client is to receive.
//!
//! The owner writes the reply in the client's dialect, so the forwarding node relays
//! it without reading it: a RESP client's `HGETALL` crosses a node as RESP, a text
//! client's GET as text. Frames carry any bytes, which a text line cannot.

use super::command::Command;
use super::reply::{Dialect, ERROR_PREFIX};
use super::request::{encode_request, request_len};
use super::resp_write::write_error;
use super::shape::trim_line_end;

/// Bytes of a reply frame's length prefix.
pub const REPLY_HEAD: usize = 4;

impl Dialect {
    /// The byte that names this dialect in a request frame.
    fn code(self) -> u8 {
        match self {
            Dialect::Text => 0,
            Dialect::Resp2 => 2,
            Dialect::Resp3 => 3,
        }
    }

    fn from_code(code: u8) -> Option<Dialect> {
        match code {
            0 => Some(Dialect::Text),
            2 => Some(Dialect::Resp2),
            3 => Some(Dialect::Resp3),
            _ => None,
        }
    }
}

/// Appends a request frame for `command`, to be answered in `dialect`.
pub fn push_peer_frame(command: &Command<'_>, dialect: Dialect, out: &mut Vec<u8>) {
    out.push(dialect.code());
    encode_request(command, out);
}

/// What is at the start of a buffer of request frames.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerFrame<'a> {
    /// A whole frame, and how many bytes it took.
    Request(Dialect, Command<'a>, usize),
    /// Not all of it has arrived. `needs`: the frame's whole length, once known.
    Partial { needs: Option<usize> },
    /// Not a frame: an unknown dialect. The link is out of step and must close.
    Bad,
}

/// Reads the request frame at the start of `bytes`.
///
/// ```
/// use kv::protocol::{Command, Dialect, PeerFrame, peer_frame, push_peer_frame};
///
/// let mut out = Vec::new();
/// push_peer_frame(&Command::Get { bucket: b"b", key: b"k" }, Dialect::Resp3, &mut out);
/// assert_eq!(peer_frame(&out), PeerFrame::Request(Dialect::Resp3, Command::Get { bucket: b"b", key: b"k" }, out.len()));
/// assert!(matches!(peer_frame(&out[..3]), PeerFrame::Partial { needs: None }));
/// ```
pub fn peer_frame(bytes: &[u8]) -> PeerFrame<'_> {
    let Some((&code, rest)) = bytes.split_first() else { return PeerFrame::Partial { needs: None } };
    let Some(dialect) = Dialect::from_code(code) else { return PeerFrame::Bad };
    let Some(len) = request_len(rest) else { return PeerFrame::Partial { needs: None } };
    match super::request::decode_request(rest) {
        Some((command, used)) => PeerFrame::Request(dialect, command, 1 + used),
        None => PeerFrame::Partial { needs: Some(1 + len) },
    }
}

/// Starts a reply frame in `out`; returns where, for [`end_reply_frame`].
#[inline]
pub fn begin_reply_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; REPLY_HEAD]);
    start
}

/// Ends the reply frame begun at `start`: what was written since is its body.
#[inline]
pub fn end_reply_frame(out: &mut [u8], start: usize) {
    let len = u32::try_from(out.len() - start - REPLY_HEAD).unwrap_or(u32::MAX);
    out[start..start + REPLY_HEAD].copy_from_slice(&len.to_le_bytes());
}

/// The length of the reply frame's body at the start of `bytes`, once its prefix is
/// there.
pub fn reply_frame_len(bytes: &[u8]) -> Option<usize> {
    let head: [u8; REPLY_HEAD] = bytes.get(..REPLY_HEAD)?.try_into().ok()?;
    Some(u32::from_le_bytes(head) as usize)
}

/// Writes a text door error line (`ERROR <text>\r\n`, as a peer refusing a handshake
/// sends it) in `dialect`: as it is, or as RESP's `-ERR <text>`.
pub fn relay_error_line(line: &[u8], dialect: Dialect, out: &mut Vec<u8>) {
    if dialect == Dialect::Text {
        out.extend_from_slice(line);
        return;
    }
    let text = trim_line_end(line);
    let text = text.strip_prefix(ERROR_PREFIX).unwrap_or(text);
    write_error(out, &[b"ERR ", text].concat());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames_come_back_whole_or_not_at_all() {
        let mut out = Vec::new();
        let command = Command::Put { bucket: b"b", key: b"k", value: b"a\r\nb" };
        push_peer_frame(&command, Dialect::Text, &mut out);
        for end in 0..out.len() {
            assert!(matches!(peer_frame(&out[..end]), PeerFrame::Partial { .. }), "{end}");
        }
        assert_eq!(peer_frame(&out), PeerFrame::Request(Dialect::Text, command, out.len()));
        assert_eq!(peer_frame(&[9, 0, 0, 0, 0]), PeerFrame::Bad);
    }

    #[test]
    fn reply_frames_carry_their_length() {
        let mut out = Vec::new();
        let start = begin_reply_frame(&mut out);
        out.extend_from_slice(b"OK\r\n");
        end_reply_frame(&mut out, start);
        assert_eq!(out, b"\x04\x00\x00\x00OK\r\n");
        assert_eq!(reply_frame_len(&out), Some(4));
        assert_eq!(reply_frame_len(&out[..3]), None);
    }

    #[test]
    fn a_refusal_line_is_relayed_in_the_clients_dialect() {
        let line = b"ERROR routing mismatch: this is node a, not b\r\n";
        let mut out = Vec::new();
        relay_error_line(line, Dialect::Text, &mut out);
        relay_error_line(line, Dialect::Resp2, &mut out);
        assert_eq!(
            out,
            b"ERROR routing mismatch: this is node a, not b\r\n-ERR routing mismatch: this is node a, not b\r\n"
        );
    }
}
