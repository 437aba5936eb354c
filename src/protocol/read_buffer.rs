//! [`ReadBuffer`]: a connection reader's buffer, which starts inside the reader and
//! moves to the heap only when a read needs more room.
//!
//! Both doors' readers (`frame.rs`, `resp_frame.rs`) own one. An idle connection's
//! reader is the largest thing it would otherwise allocate, and glibc's `calloc` makes
//! every byte of a zeroed buffer resident; kept inline, the first [`FIRST_LEN`] bytes
//! live in the connection thread's stack frame, whose pages are resident anyway
//! (issue 15: RSS per idle connection).

use std::ops::{Deref, DerefMut};

/// Bytes the buffer holds before it first grows: any ordinary request line or command.
pub const FIRST_LEN: usize = 256;

/// Largest buffer kept while its connection is idle; a larger one, a burst's, goes
/// back. Without this margin a client that pipelines a few hundred bytes every round
/// (redis-benchmark `-P 16`) would have its buffer given back and grown again each
/// round: a `malloc`, a `free` and one more look at the socket per round.
pub const KEPT_WHEN_IDLE: usize = 4 * 1024;

/// A byte buffer of a settable length: inline up to [`FIRST_LEN`], then on the heap.
#[derive(Debug)]
pub struct ReadBuffer {
    /// The first bytes, while the buffer has not grown.
    first: [u8; FIRST_LEN],
    /// The length in use of `first`; at most [`FIRST_LEN`].
    first_len: usize,
    /// The buffer once it has grown; empty before.
    grown: Vec<u8>,
}

impl ReadBuffer {
    /// A zeroed buffer of `len` bytes, inline if `len` is at most [`FIRST_LEN`].
    pub fn new(len: usize) -> Self {
        let mut buffer =
            ReadBuffer { first: [0; FIRST_LEN], first_len: len.min(FIRST_LEN), grown: Vec::new() };
        if len > FIRST_LEN {
            buffer.grow(len);
        }
        buffer
    }

    /// Grows the buffer to `len` bytes (the new ones zeroed), keeping its contents; a
    /// `len` no larger than the buffer changes nothing.
    pub fn grow(&mut self, len: usize) {
        if len <= self.len() {
            return;
        }
        if self.grown.is_empty() {
            if len <= FIRST_LEN {
                // Bytes left from before a `shrink_to` are not shown as new ones.
                self.first[self.first_len..len].fill(0);
                self.first_len = len;
                return;
            }
            self.grown.reserve_exact(len);
            self.grown.extend_from_slice(&self.first[..self.first_len]);
        }
        self.grown.resize(len, 0);
    }

    /// True when the buffer has grown past what an idle connection keeps
    /// ([`KEPT_WHEN_IDLE`]).
    pub fn worth_giving_back(&self) -> bool {
        self.grown.len() > KEPT_WHEN_IDLE
    }

    /// True when the buffer has moved to the heap.
    #[cfg(test)]
    pub fn has_grown(&self) -> bool {
        !self.grown.is_empty()
    }

    /// Bytes the buffer holds memory for.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        if self.grown.is_empty() { FIRST_LEN } else { self.grown.capacity() }
    }

    /// Goes back to an inline buffer of `len` bytes (at most [`FIRST_LEN`]), giving the
    /// heap one back. The contents are not kept.
    pub fn shrink_to(&mut self, len: usize) {
        self.grown = Vec::new();
        self.first_len = len.min(FIRST_LEN);
    }
}

impl Deref for ReadBuffer {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        if self.grown.is_empty() { &self.first[..self.first_len] } else { &self.grown }
    }
}

impl DerefMut for ReadBuffer {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.grown.is_empty() { &mut self.first[..self.first_len] } else { &mut self.grown }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_keeps_its_bytes_when_it_moves_to_the_heap_and_goes_back_inline() {
        let mut buffer = ReadBuffer::new(64);
        assert_eq!((buffer.len(), buffer.has_grown()), (64, false));
        buffer[..5].copy_from_slice(b"hello");
        buffer.grow(200);
        assert_eq!((buffer.len(), buffer.has_grown()), (200, false));
        buffer[100..104].copy_from_slice(b"OLD!");
        buffer.grow(1000);
        assert_eq!((buffer.len(), buffer.has_grown()), (1000, true));
        assert!(!buffer.worth_giving_back(), "a small grown buffer is kept");
        assert_eq!(&buffer[..5], b"hello");
        assert_eq!(&buffer[100..104], b"OLD!");
        assert!(buffer[104..].iter().all(|&b| b == 0));
        buffer.grow(500);
        assert_eq!(buffer.len(), 1000, "growing to less changes nothing");
        buffer.grow(KEPT_WHEN_IDLE + 1);
        assert!(buffer.worth_giving_back());
        buffer.shrink_to(64);
        assert_eq!((buffer.len(), buffer.has_grown()), (64, false));
        buffer.grow(200);
        assert!(buffer[64..].iter().all(|&b| b == 0), "no bytes from before the shrink");
        assert_eq!(ReadBuffer::new(4096).len(), 4096);
    }
}
