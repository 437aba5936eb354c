//! Seeded randomness and a reference model of request framing, shared by the randomized
//! tests (`tests/hardening.rs`, `tests/soak.rs`) and the `cargo fuzz` target
//! (`fuzz/fuzz_targets/line_reader.rs`, which includes this file by path).
//!
//! The generator is SplitMix64: a few lines, no dependency, and every run with the same
//! seed sends the same bytes, so a failure is reproduced by rerunning the test.
//!
//! The framing model is written from `docs/PROTOCOL.md` alone, independently of
//! `kv::protocol::LineReader`, so comparing the two ([`check_line_reader`]) checks the
//! reader instead of restating it.
#![allow(dead_code)]

use kv::protocol::{self, Command, Frame, LineReader};

/// SplitMix64: a tiny, fast, well-mixed generator. Not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0). The modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent as usize
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// Between `low` and `high` bytes (inclusive) drawn from `alphabet`.
    pub fn bytes_from(&mut self, alphabet: &[u8], low: usize, high: usize) -> Vec<u8> {
        let len = self.between(low, high);
        (0..len).map(|_| self.pick(alphabet)).collect()
    }

    /// Between `low` and `high` bytes (inclusive) of any value.
    pub fn any_bytes(&mut self, low: usize, high: usize) -> Vec<u8> {
        let len = self.between(low, high);
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// The protocol's whitespace (docs/PROTOCOL.md, "Framing"): space, tab, `\r`, `\n`,
/// `\v`, `\f`.
pub fn is_protocol_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

/// The words of a line.
pub fn words_of(line: &[u8]) -> Vec<&[u8]> {
    line.split(|&b| is_protocol_space(b)).filter(|word| !word.is_empty()).collect()
}

/// What a reader must report for a stream, as the protocol defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefFrame {
    /// A line, without its `\n` and without one `\r` right before it.
    Line(Vec<u8>),
    /// A line longer than the limit.
    TooLong,
}

/// The frames of `stream` under a limit of `max_line` bytes, each with the offset just
/// past the input that completes it.
///
/// Every `\n` ends one line; a `\r` right before it is not part of the line; a line of
/// more than `max_line` bytes is one `TooLong`. An unfinished line at the end of the
/// stream is reported only if it is already too long: past `max_line` bytes plus the
/// `\r` it may still end with, nothing that follows can bring it back under the limit.
pub fn reference_frames(stream: &[u8], max_line: usize) -> Vec<(RefFrame, usize)> {
    let mut frames = Vec::new();
    let mut start = 0;
    while let Some(offset) = stream[start..].iter().position(|&b| b == b'\n') {
        let newline = start + offset;
        let mut line = &stream[start..newline];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        let frame = if line.len() > max_line { RefFrame::TooLong } else { RefFrame::Line(line.to_vec()) };
        frames.push((frame, newline + 1));
        start = newline + 1;
    }
    if stream.len() - start > max_line + 1 {
        frames.push((RefFrame::TooLong, start + max_line + 2));
    }
    frames
}

/// Feeds `stream` to a [`LineReader`] with a limit of `max_line`, in chunks whose sizes
/// `seed` picks, and parses every line. Panics unless the frames are exactly
/// [`reference_frames`], every line is within the limit and free of `\n`, and every
/// parsed word is a non-empty run of non-space bytes. Parsing must not panic either.
pub fn check_line_reader(stream: &[u8], max_line: usize, seed: u64) {
    let mut reader = LineReader::new(max_line);
    // The reader raises a limit of 0 to 1; the model follows what it reports.
    let limit = reader.max_line();
    let mut chunks = Rng::new(seed);
    let mut frames = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let want = match chunks.below(4) {
            0 => 1,
            1 => chunks.between(1, 16),
            2 => chunks.between(1, 4096),
            _ => rest.len(),
        };
        let taken = reader.push(&rest[..want.min(rest.len())]);
        rest = &rest[taken..];
        while let Some(frame) = reader.next_frame() {
            frames.push(match frame {
                Frame::Line(line) => {
                    assert!(line.len() <= limit, "a line of {} bytes passed a limit of {limit}", line.len());
                    assert!(!line.contains(&b'\n'), "a line holds a newline");
                    check_parse(line);
                    RefFrame::Line(line.to_vec())
                }
                Frame::TooLong => RefFrame::TooLong,
            });
        }
    }
    let expected: Vec<RefFrame> =
        reference_frames(stream, limit).into_iter().map(|(frame, _)| frame).collect();
    assert_eq!(frames, expected, "limit {limit}, chunking seed {seed}");
}

/// Parses `line` and checks the words of the result against the protocol's rules.
fn check_parse(line: &[u8]) {
    let word = |word: &[u8]| !word.is_empty() && !word.iter().any(|&b| is_protocol_space(b));
    match protocol::parse(line) {
        Command::Put { bucket, key, value } => assert!(word(bucket) && word(key) && word(value)),
        Command::Get { bucket, key } | Command::Delete { bucket, key } => assert!(word(bucket) && word(key)),
        Command::Create { bucket }
        | Command::Drop { bucket }
        | Command::Subscribe { bucket }
        | Command::DebugCrash { bucket } => {
            assert!(word(bucket))
        }
        Command::Auth { password } => assert!(word(password)),
        Command::Ping
        | Command::Stats
        | Command::Quit
        | Command::DebugCrashConnection
        | Command::DebugCrashAcceptor
        | Command::Unknown => {}
        // The RESP door's operations: no text line may parse to one.
        other => panic!("a text line parsed to a RESP-only command: {other:?}"),
    }
    let _ = protocol::is_http_request_line(line);
}
