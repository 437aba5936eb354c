//! [`Event`]s, the changes streamed to a bucket's subscribers, and their bytes: the
//! frame a bucket's event log keeps them in (and a node sends a relaying node), the text
//! door's line, and the RESP door's `message` frame.
//!
//! The log keeps frames, not lines, because the RESP door stores any bytes: a frame
//! carries a value with a line end in it, and each subscriber's stream renders the
//! frames for its own door. The text line says when an event cannot be shown on one.

use super::reply::{is_representable, line};
use super::resp_write::{Resp, write_bulk, write_bulk_head, write_push_len};

/// One change streamed to a bucket's subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A PUT: `<key> SET TO <value>`.
    Set { key: &'a [u8], value: &'a [u8] },
    /// A DELETE: `<key> DELETED`.
    Deleted { key: &'a [u8] },
    /// A DROP of the whole bucket: `DROPPED`; the stream ends after it.
    Dropped,
}

/// The words between a key and a value in a PUT's event, and after a key in a DELETE's.
const SET_TO: &[u8] = b" SET TO ";
const DELETED: &[u8] = b" DELETED";

/// The line an event gets when its key or value cannot be shown on one line.
const NOT_REPRESENTABLE_EVENT: &[u8] =
    b"ERROR event not representable in the text protocol (use the RESP port)";

/// The text of [`Event::Dropped`].
const DROPPED_LINE: &[u8] = b"DROPPED\r\n";

/// Bytes of an event frame's head: its length, its kind, its key's length.
const FRAME_HEAD: usize = 4 + 1 + 4;

/// What is at the start of a buffer of event frames.
#[derive(Debug, PartialEq, Eq)]
pub enum EventFrame<'a> {
    /// A whole event, and how many bytes it took.
    Event(Event<'a>, usize),
    /// Not all of it yet.
    Partial,
    /// Not an event frame (from a peer out of step).
    Bad,
}

impl Event<'_> {
    /// Appends the event as a frame: `[u32 LE length of the rest][kind][u32 LE key
    /// length][key][value]`.
    ///
    /// ```
    /// use kv::protocol::{Event, EventFrame};
    ///
    /// let mut log = Vec::new();
    /// Event::Set { key: b"k", value: b"a\r\nb" }.write_frame(&mut log);
    /// assert_eq!(Event::read_frame(&log), EventFrame::Event(Event::Set { key: b"k", value: b"a\r\nb" }, log.len()));
    /// ```
    #[inline]
    pub fn write_frame(&self, out: &mut Vec<u8>) {
        let (kind, key, value): (u8, &[u8], &[u8]) = match *self {
            Event::Set { key, value } => (1, key, value),
            Event::Deleted { key } => (2, key, b""),
            Event::Dropped => (3, b"", b""),
        };
        let body = FRAME_HEAD - 4 + key.len() + value.len();
        out.reserve(4 + body);
        out.extend_from_slice(&u32::try_from(body).unwrap_or(u32::MAX).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(value);
    }

    /// Appends the text door's line for the event; one saying so for an event whose
    /// key or value a line cannot hold.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        match *self {
            Event::Set { key, value } if !is_representable(key) || !is_representable(value) => {
                line(out, &[NOT_REPRESENTABLE_EVENT])
            }
            Event::Deleted { key } if !is_representable(key) => line(out, &[NOT_REPRESENTABLE_EVENT]),
            Event::Set { key, value } => line(out, &[key, SET_TO, value]),
            Event::Deleted { key } => line(out, &[key, DELETED]),
            Event::Dropped => out.extend_from_slice(DROPPED_LINE),
        }
    }

    /// Appends the RESP door's `message` frame on channel `bucket`: the payload is the
    /// text door's line without its line end, with the key and value as they are.
    pub fn write_message(&self, bucket: &[u8], proto: Resp, out: &mut Vec<u8>) {
        write_push_len(out, 3, proto);
        write_bulk(out, b"message");
        write_bulk(out, bucket);
        let (key, middle, value): (&[u8], &[u8], &[u8]) = match *self {
            Event::Set { key, value } => (key, SET_TO, value),
            Event::Deleted { key } => (key, DELETED, b""),
            Event::Dropped => (b"", b"DROPPED", b""),
        };
        write_bulk_head(out, key.len() + middle.len() + value.len());
        for part in [key, middle, value] {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The event's line in the text door, as one buffer.
    ///
    /// ```
    /// use kv::protocol::Event;
    ///
    /// assert_eq!(Event::Set { key: b"eggs", value: b"3" }.to_text(), b"eggs SET TO 3\r\n");
    /// assert_eq!(Event::Deleted { key: b"eggs" }.to_text(), b"eggs DELETED\r\n");
    /// assert_eq!(Event::Dropped.to_text(), b"DROPPED\r\n");
    /// ```
    pub fn to_text(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_text(&mut out);
        out
    }
}

impl<'a> Event<'a> {
    /// The length of the event frame starting `bytes`, once its length prefix is
    /// there: how much of a log must be held to read that event whole.
    pub fn frame_len(bytes: &[u8]) -> Option<usize> {
        let head = bytes.get(..4)?;
        Some(4 + u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize)
    }

    /// Reads the event frame at the start of `bytes`.
    pub fn read_frame(bytes: &'a [u8]) -> EventFrame<'a> {
        let (Some(head), Some(len)) = (bytes.get(..FRAME_HEAD), Self::frame_len(bytes)) else {
            return EventFrame::Partial;
        };
        let body = len - 4;
        let key_len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
        if body < FRAME_HEAD - 4 || key_len > body - (FRAME_HEAD - 4) {
            return EventFrame::Bad;
        }
        let Some(frame) = bytes.get(..4 + body) else { return EventFrame::Partial };
        let (key, value) = frame[FRAME_HEAD..].split_at(key_len);
        let event = match head[4] {
            1 => Event::Set { key, value },
            2 if value.is_empty() => Event::Deleted { key },
            3 if key.is_empty() && value.is_empty() => Event::Dropped,
            _ => return EventFrame::Bad,
        };
        EventFrame::Event(event, 4 + body)
    }

    /// Reads an event line back (with or without its line end). A key may be any word,
    /// `ERROR` included, so a subscriber tells an event from an error reply by this,
    /// not by the first word.
    ///
    /// ```
    /// use kv::protocol::Event;
    ///
    /// assert_eq!(Event::from_text(b"ERROR SET TO 3\r\n"), Some(Event::Set { key: b"ERROR", value: b"3" }));
    /// assert_eq!(Event::from_text(b"NOT FOUND\r\n"), None);
    /// ```
    pub fn from_text(line: &'a [u8]) -> Option<Event<'a>> {
        let line = super::shape::trim_line_end(line);
        if line == super::shape::trim_line_end(DROPPED_LINE) {
            return Some(Event::Dropped);
        }
        if let Some(key) = line.strip_suffix(DELETED).filter(|key| is_word(key)) {
            return Some(Event::Deleted { key });
        }
        let at = line.windows(SET_TO.len()).position(|window| window == SET_TO)?;
        let (key, value) = (&line[..at], &line[at + SET_TO.len()..]);
        (is_word(key) && is_word(value)).then_some(Event::Set { key, value })
    }
}

/// True for one word: non-empty, no protocol whitespace.
fn is_word(bytes: &[u8]) -> bool {
    !bytes.is_empty() && !bytes.iter().any(|&b| super::command::is_space(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_frame_comes_back_whole_or_not_at_all() {
        for event in [
            Event::Set { key: b"k", value: b"a b\r\nc\0" },
            Event::Set { key: b"", value: b"" },
            Event::Deleted { key: b"k k" },
            Event::Dropped,
        ] {
            let mut frame = Vec::new();
            event.write_frame(&mut frame);
            for end in 0..frame.len() {
                assert_eq!(Event::read_frame(&frame[..end]), EventFrame::Partial, "{event:?} {end}");
            }
            assert_eq!(Event::read_frame(&frame), EventFrame::Event(event, frame.len()));
        }
        let mut bad = Vec::new();
        Event::Deleted { key: b"k" }.write_frame(&mut bad);
        bad[4] = 9;
        assert_eq!(Event::read_frame(&bad), EventFrame::Bad);
        assert_eq!(Event::read_frame(&[0, 0, 0, 0, 1, 0, 0, 0, 0]), EventFrame::Bad);
    }

    #[test]
    fn each_door_renders_an_event_its_way() {
        let set = Event::Set { key: b"eggs", value: b"3" };
        assert_eq!(set.to_text(), b"eggs SET TO 3\r\n");
        let mut out = Vec::new();
        set.write_message(b"shopping", Resp::V3, &mut out);
        assert_eq!(out, b">3\r\n$7\r\nmessage\r\n$8\r\nshopping\r\n$13\r\neggs SET TO 3\r\n");
        let binary = Event::Set { key: b"eggs", value: b"a\r\nb" };
        assert_eq!(
            binary.to_text(),
            b"ERROR event not representable in the text protocol (use the RESP port)\r\n"
        );
        // An empty value or key is not a word a line can show.
        for empty in [Event::Set { key: b"eggs", value: b"" }, Event::Set { key: b"", value: b"3" }] {
            let shown = empty.to_text();
            assert_eq!(shown, b"ERROR event not representable in the text protocol (use the RESP port)\r\n");
        }
        out.clear();
        binary.write_message(b"s", Resp::V2, &mut out);
        assert_eq!(out, b"*3\r\n$7\r\nmessage\r\n$1\r\ns\r\n$16\r\neggs SET TO a\r\nb\r\n");
    }
}
