//! Fuzz target: arbitrary bytes, cut into arbitrary chunks, through
//! `kv::protocol::RespReader`, the RESP door's request reader.
//!
//! The input's first byte picks the limits (small ones reach the too-large and skip
//! paths with short inputs), the next eight seed the chunking, the rest is the stream.
//! The checks: no panic; the frames are the same whether the stream arrives whole or
//! in random chunks (framing depends on the bytes, never on how reads cut them);
//! every command has an argument and none longer than its limit;
//! nothing comes out after a protocol error; an emptied reader can give its buffer
//! back.
#![no_main]

use kv::protocol::{MAX_INLINE, RespFrame, RespReader};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

/// One frame, owned, so frames of two runs can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Command(Vec<Vec<u8>>),
    TooLarge,
    Error(&'static str),
}

fuzz_target!(|data: &[u8]| {
    let Some((&limit_byte, rest)) = data.split_first() else { return };
    let (seed, stream) = rest.split_at(rest.len().min(8));
    let mut seed_bytes = [0u8; 8];
    seed_bytes[..seed.len()].copy_from_slice(seed);
    let (max_value, max_command) = limits_for(limit_byte);
    let whole = frames(stream, max_value, max_command, None);
    let mut rng = fuzzing::Rng::new(u64::from_le_bytes(seed_bytes));
    let chunked = frames(stream, max_value, max_command, Some(&mut rng));
    assert_eq!(whole, chunked, "framing depends on how the stream is cut");
});

/// Mostly tiny limits, sometimes kv's defaults.
fn limits_for(byte: u8) -> (usize, usize) {
    match byte {
        0..=239 => (usize::from(byte % 16), usize::from(byte / 16) * 8),
        _ => (1024 * 1024, 2 * 1024 * 1024),
    }
}

/// The frames of `stream`, pushed whole or (with `rng`) in random chunks.
fn frames(
    stream: &[u8],
    max_value: usize,
    max_command: usize,
    mut rng: Option<&mut fuzzing::Rng>,
) -> Vec<Got> {
    let mut reader = RespReader::new(max_value, max_command);
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let size = rng.as_mut().map_or(rest.len(), |rng| rng.between(1, rest.len().min(64)));
        let taken = reader.push(&rest[..size]);
        rest = &rest[taken..];
        drain(&mut reader, &mut out, max_value);
    }
    drain(&mut reader, &mut out, max_value);
    if !reader.has_partial() {
        reader.release_buffer();
        assert!(!reader.holds_grown_buffer());
    }
    out
}

fn drain(reader: &mut RespReader, out: &mut Vec<Got>, max_value: usize) {
    // An inline argument is bounded by the inline limit, a bulk by the value limit.
    let longest = max_value.max(MAX_INLINE);
    while let Some(frame) = reader.next_frame() {
        assert!(!matches!(out.last(), Some(Got::Error(_))), "a frame after a protocol error");
        out.push(match frame {
            RespFrame::Command(args) => {
                assert!(!args.is_empty() && args.iter().count() == args.len());
                assert!(args.iter().all(|arg| arg.len() <= longest));
                Got::Command(args.iter().map(<[u8]>::to_vec).collect())
            }
            RespFrame::TooLarge => Got::TooLarge,
            RespFrame::ProtocolError(text) => Got::Error(text),
        });
    }
}
