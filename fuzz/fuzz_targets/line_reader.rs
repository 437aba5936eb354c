//! Fuzz target: arbitrary bytes, cut into arbitrary chunks, through
//! `kv::protocol::LineReader` and `kv::protocol::parse`.
//!
//! The input's first byte picks the line limit (small limits reach the too-long paths
//! with short inputs), the next eight seed the chunking, the rest is the stream. The
//! checks live in `tests/fuzzing/mod.rs` (`check_line_reader`), shared with the
//! in-tree randomized test: the frames must be exactly those of a reference model
//! written from the protocol text, whatever the chunking; no line is longer than the
//! limit or holds a `\n`; parsing any line never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

fuzz_target!(|data: &[u8]| {
    let Some((&limit_byte, rest)) = data.split_first() else { return };
    let (seed, stream) = rest.split_at(rest.len().min(8));
    let mut seed_bytes = [0u8; 8];
    seed_bytes[..seed.len()].copy_from_slice(seed);
    fuzzing::check_line_reader(stream, max_line_for(limit_byte), u64::from_le_bytes(seed_bytes));
});

/// Mostly tiny limits, sometimes the default one.
fn max_line_for(byte: u8) -> usize {
    match byte {
        0..=239 => usize::from(byte % 64),
        _ => kv::protocol::DEFAULT_MAX_LINE,
    }
}
