//! One RESP reply gathered from the replies of a command's parts.
//!
//! A RESP command can be about several buckets or keys (`DEL a b`, `MGET`, `HSET b f1
//! v1 f2 v2`); the RESP door sends one [`Command`](super::Command) per bucket or key, so
//! that each goes to its owner like any other request, and the connection's round
//! gathers their replies into the one reply Redis would give. The parts' replies are
//! already RESP; gathering reads them back only as far as it must.

use super::reply::{NOT_SYNCED, OUTCOME_UNKNOWN};
use super::resp_write::{write_array_len, write_integer, write_simple};

/// How a group's part replies become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gather {
    /// Integers summed: `DEL`, `EXISTS`, `HDEL`, a multi-field `HSET`.
    Sum,
    /// An array of the parts' replies: `MGET`, `HMGET`.
    Array,
    /// `+OK` once every part said `OK`: `MSET`.
    AllOk,
    /// `TYPE`: the bucket's type (`+hash` or `+none`) then whether the strings bucket
    /// has the key (`:1` or `:0`).
    Type,
}

/// Writes the reply gathered from the parts in `parts` (part `i` ends at `ends[i]`) to
/// `out`. If a part failed, the reply is one error, as Redis answers a command: a
/// failure that may have been applied (`outcome unknown`, `applied but not synced`)
/// before one that was not, else the first. When other parts were served, it says so,
/// since a write among them happened and an error must not hide that (`-ERR peer b
/// unavailable; the command's other parts were served, writes among them applied`). A
/// plain `unavailable` with no note means no part was applied.
///
/// ```
/// use kv::protocol::{Gather, gather};
///
/// let parts = b":1\r\n:0\r\n:1\r\n";
/// let mut out = Vec::new();
/// gather(Gather::Sum, parts, &[4, 8, 12], &mut out);
/// assert_eq!(out, b":2\r\n");
/// ```
pub fn gather(how: Gather, parts: &[u8], ends: &[usize], out: &mut Vec<u8>) {
    let part = |i: usize| &parts[if i == 0 { 0 } else { ends[i - 1] }..ends[i]];
    let count = ends.len();
    let failed = |reply: &&[u8]| reply.first() == Some(&b'-');
    if let Some(first) = (0..count).map(part).find(failed) {
        let reply = (0..count).map(part).filter(failed).find(|r| may_have_been_applied(r)).unwrap_or(first);
        if !(0..count).map(part).any(|p| !failed(&p)) {
            out.extend_from_slice(reply);
            return;
        }
        out.extend_from_slice(reply.strip_suffix(b"\r\n").unwrap_or(reply));
        out.extend_from_slice(b"; the command's other parts were served, writes among them applied\r\n");
        return;
    }
    match how {
        Gather::Sum => write_integer(out, (0..count).map(|i| integer(part(i))).sum()),
        Gather::Array => {
            write_array_len(out, count);
            out.extend_from_slice(&parts[..ends.last().copied().unwrap_or(0)]);
        }
        Gather::AllOk => write_simple(out, b"OK"),
        Gather::Type => {
            let word: &[u8] = match (count > 0 && part(0) == b"+hash\r\n", count > 1 && integer(part(1)) > 0)
            {
                (true, _) => b"hash",
                (false, true) => b"string",
                (false, false) => b"none",
            };
            write_simple(out, word);
        }
    }
}

/// Whether a part's error says its write may have happened, in the words
/// `protocol/reply.rs` writes it with.
fn may_have_been_applied(reply: &[u8]) -> bool {
    let text = reply.strip_suffix(b"\r\n").unwrap_or(reply);
    text.ends_with(OUTCOME_UNKNOWN) || text.windows(NOT_SYNCED.len()).any(|w| w == NOT_SYNCED)
}

/// The value of a `:<n>\r\n` reply; anything else counts 0.
fn integer(reply: &[u8]) -> i64 {
    let digits = reply.strip_prefix(b":").and_then(|r| r.strip_suffix(b"\r\n")).unwrap_or(b"");
    std::str::from_utf8(digits).ok().and_then(|d| d.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(how: Gather, parts: &[&[u8]]) -> Vec<u8> {
        let mut all = Vec::new();
        let mut ends = Vec::new();
        for part in parts {
            all.extend_from_slice(part);
            ends.push(all.len());
        }
        let mut out = Vec::new();
        gather(how, &all, &ends, &mut out);
        out
    }

    #[test]
    fn each_way_of_gathering() {
        assert_eq!(gathered(Gather::Sum, &[b":1\r\n", b":1\r\n"]), b":2\r\n");
        assert_eq!(gathered(Gather::Sum, &[]), b":0\r\n");
        assert_eq!(gathered(Gather::Array, &[b"$1\r\na\r\n", b"_\r\n"]), b"*2\r\n$1\r\na\r\n_\r\n");
        assert_eq!(gathered(Gather::AllOk, &[b"+OK\r\n", b"+OK\r\n"]), b"+OK\r\n");
        assert_eq!(gathered(Gather::Type, &[b"+hash\r\n", b":1\r\n"]), b"+hash\r\n");
        assert_eq!(gathered(Gather::Type, &[b"+none\r\n", b":1\r\n"]), b"+string\r\n");
        assert_eq!(gathered(Gather::Type, &[b"+none\r\n", b":0\r\n"]), b"+none\r\n");
    }

    #[test]
    fn a_failure_that_may_have_been_applied_is_the_reply_before_one_that_was_not() {
        let unknown: &[u8] = b"-ERR peer n2 unavailable: outcome unknown\r\n";
        let not_synced: &[u8] = b"-ERR applied but not synced to disk: Input/output error\r\n";
        for maybe in [unknown, not_synced] {
            let parts: [&[u8]; 2] = [b"-ERR peer n1 unavailable\r\n", maybe];
            assert_eq!(gathered(Gather::Sum, &parts), maybe);
        }
    }

    #[test]
    fn the_first_failed_part_is_the_reply_saying_whether_others_were_served() {
        let parts: [&[u8]; 3] = [b":1\r\n", b"-ERR peer n1 unavailable\r\n", b"-ERR out of memory\r\n"];
        let partly: &[u8] =
            b"-ERR peer n1 unavailable; the command's other parts were served, writes among them applied\r\n";
        let none: [&[u8]; 2] = [b"-ERR peer n1 unavailable\r\n", b"-ERR out of memory\r\n"];
        for how in [Gather::Sum, Gather::Array, Gather::AllOk, Gather::Type] {
            assert_eq!(gathered(how, &parts), partly, "{how:?}");
            assert_eq!(gathered(how, &none), b"-ERR peer n1 unavailable\r\n", "{how:?}");
        }
    }
}
