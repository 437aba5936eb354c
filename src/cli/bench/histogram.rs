//! The bench's latency histogram: log-bucketed counters, no dependency.
//!
//! Kept apart from the load generator because it is pure arithmetic with its own
//! invariants (every value at or below its bucket's bound, quantiles within about 3%),
//! tested here without sockets or threads. It knows nothing of requests or protocols.

use std::fmt;

/// Sub-buckets per power of two: latencies are kept to within 1/32 (about 3%).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any `u64`: values below `SUB` exactly, then `SUB` per octave.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// A log-bucketed histogram of `u64` samples (nanoseconds here).
///
/// Values below 32 are kept exactly; above that each power of two is cut into 32
/// equal sub-buckets, so a reported quantile is at most about 3% above the true one.
/// It is a fixed array of counters: recording is a few instructions and never
/// allocates, and per-thread histograms merge by adding counters.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: Box::new([0; BUCKETS]), total: 0, min: u64::MAX, max: 0, sum: 0 }
    }
}

impl Histogram {
    /// An empty histogram.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The bucket holding `value`.
    fn index(value: u64) -> usize {
        if value < SUB {
            return value as usize;
        }
        let exponent = 63 - value.leading_zeros(); // >= SUB_BITS
        let shift = exponent - SUB_BITS;
        let mantissa = value >> shift; // in [SUB, 2 * SUB)
        ((shift as u64 + 1) * SUB + (mantissa - SUB)) as usize
    }

    /// The largest value that lands in bucket `index`.
    fn upper_bound(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB {
            return index;
        }
        let shift = index / SUB - 1;
        let mantissa = SUB + index % SUB;
        // The top bucket's bound is u64::MAX; compute it without overflowing.
        ((mantissa as u128 + 1) << shift).saturating_sub(1).min(u64::MAX as u128) as u64
    }

    /// Adds one sample.
    #[inline]
    pub(crate) fn record(&mut self, value: u64) {
        self.counts[Self::index(value)] += 1;
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value as u128;
    }

    /// Adds every sample of `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Number of samples.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// Largest sample (0 when empty).
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// Smallest sample (0 when empty).
    #[cfg(test)]
    pub(crate) fn min(&self) -> u64 {
        if self.total == 0 { 0 } else { self.min }
    }

    /// Mean of the samples (0 when empty).
    pub(crate) fn mean(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.sum as f64 / self.total as f64 }
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket holding the
    /// sample of rank `ceil(q * count)`, but never above the largest sample. 0 when
    /// empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::upper_bound(index).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_indexes_are_continuous_and_bounds_hold() {
        // Every value lies at or below its bucket's upper bound and above the
        // previous bucket's.
        let mut values: Vec<u64> = (0..5000).collect();
        values.extend([1 << 20, (1 << 20) + 1, 123_456_789, u64::MAX / 3, u64::MAX - 1, u64::MAX]);
        for v in values {
            let i = Histogram::index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(v <= Histogram::upper_bound(i), "{v} above bound of {i}");
            if i > 0 {
                assert!(v > Histogram::upper_bound(i - 1), "{v} not above bound of {}", i - 1);
            }
        }
        assert_eq!(Histogram::index(31), 31);
        assert_eq!(Histogram::index(32), 32);
        assert_eq!(Histogram::index(63), 63);
        assert_eq!(Histogram::index(64), 64);
        assert_eq!(Histogram::index(65), 64);
        assert_eq!(Histogram::upper_bound(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn histogram_quantiles_within_three_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 100_000);
        for (q, exact) in [(0.5, 50_000_000f64), (0.99, 99_000_000.0), (0.999, 99_900_000.0)] {
            let got = h.quantile(q) as f64;
            assert!(got >= exact && got <= exact * 1.032, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.quantile(1.0), 100_000_000);
        // The lowest bucket's bound, within 1/32 of the smallest sample.
        assert!((1000..=1032).contains(&h.quantile(0.0)), "{}", h.quantile(0.0));
        assert_eq!(h.min(), 1000);
        assert!((h.mean() - 50_000_500.0).abs() < 1.0);
    }

    #[test]
    fn histogram_small_values_are_exact_and_merge_adds() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        assert_eq!(a.quantile(0.5), 0);
        a.record(3);
        a.record(3);
        b.record(7);
        b.record(20);
        a.merge(&b);
        assert_eq!(a.count(), 4);
        assert_eq!(a.quantile(0.5), 3);
        assert_eq!(a.quantile(0.75), 7);
        assert_eq!(a.quantile(1.0), 20);
        assert_eq!(a.max(), 20);
        assert_eq!(a.min(), 3);
    }
}
