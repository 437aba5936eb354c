//! Warnings that clients and peers can provoke, kept from flooding the log: bytes they
//! control are quoted cut short ([`quote`]), and each kind of warning is logged at most
//! once per [`INTERVAL`], with a count of the ones held back ([`Limiter`]).
//!
//! Without this, 300 connections sending a 64 KiB refused handshake line each grew the
//! log by 97.6 MB in 0.7 s (issue 13). Plain data and atomics: no thread, no lock, no
//! I/O of its own.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most bytes of anything a client or a peer sent that a log line quotes.
pub const QUOTED_BYTES: usize = 80;

/// Least time between two log lines of one kind.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// `bytes` without a line end, lossily as text and debug-escaped, cut at
/// [`QUOTED_BYTES`] bytes (with `...` when cut).
pub fn quote(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let cut = &bytes[..bytes.len().min(QUOTED_BYTES)];
    let more = if cut.len() < bytes.len() { "..." } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

/// One kind of warning, logged at most once per [`INTERVAL`].
#[derive(Debug, Default)]
pub struct Limiter {
    /// Milliseconds since the process's first use of a limiter at the last line
    /// logged, plus one (0: never logged).
    last_ms: AtomicU64,
    /// Warnings held back since the last line logged.
    held_back: AtomicU64,
}

impl Limiter {
    /// A limiter that has logged nothing yet.
    pub const fn new() -> Limiter {
        Limiter { last_ms: AtomicU64::new(0), held_back: AtomicU64::new(0) }
    }

    /// `Some(n)` if a line may be logged now, `n` being how many were held back since
    /// the last one (say so in the line); `None` if this one is to be held back.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(now_ms())
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let interval = INTERVAL.as_millis() as u64;
        if last != 0 && now_ms + 1 < last + interval {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self.last_ms.compare_exchange(last, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            // Another thread logs this interval's line.
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

/// `" (n more like it held back)"` for a count `n` above 0, for the end of a line.
pub fn held_back(n: u64) -> String {
    if n == 0 { String::new() } else { format!(" ({n} more like it in the last second not logged)") }
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX - 1)
}

/// Logs at warn through a [`Limiter`]: the message is only formatted when the line is
/// logged, and ends with the count of lines held back.
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(held) = $limiter.allow() {
            log::warn!("{}{}", format_args!($($arg)+), $crate::logcap::held_back(held));
        }
    };
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let limiter = Limiter::new();
        assert_eq!(limiter.allow_at(5), Some(0));
        for ms in 6..100 {
            assert_eq!(limiter.allow_at(ms), None);
        }
        assert_eq!(limiter.allow_at(998), None);
        assert_eq!(limiter.allow_at(1005), Some(95));
        assert_eq!(limiter.allow_at(1006), None);
        assert_eq!(limiter.allow_at(5000), Some(1));
    }

    #[test]
    fn quoted_bytes_are_cut_and_escaped() {
        assert_eq!(quote(b"KV-PEER-HELLO 9 a b\r\n"), "\"KV-PEER-HELLO 9 a b\"");
        assert_eq!(quote(&[b'x'; 100]).len(), 80 + 2 + 3);
        assert_eq!(quote(b"a\x00b"), "\"a\\0b\"");
        let long = quote(&[b'y'; 70_000]);
        assert!(long.len() <= QUOTED_BYTES + 5, "{}", long.len());
        assert!(long.ends_with("..."));
    }
}
