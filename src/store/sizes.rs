//! [`ValueSizes`]: how many of a partition's values fall in each power-of-two size
//! class, so that the bound on the longest value a read may return falls again when
//! long values leave. Plain counters, no threads, no I/O; tested with the partition.

use super::Bucket;

/// Size classes: class `k` holds the lengths of bit length `k`, `[2^(k-1), 2^k)`, and
/// class 0 the empty value, so every `usize` has one.
const CLASSES: usize = usize::BITS as usize + 1;

/// The class of a value of `len` bytes.
#[inline]
fn class(len: usize) -> usize {
    (usize::BITS - len.leading_zeros()) as usize
}

/// Counts of the values a partition holds, by size class.
///
/// A write changes one or two counters and, when a class fills or empties, one bit of
/// `occupied` (no allocation, no scan), so [`ValueSizes::bound`] is one instruction:
/// it is published after every batch (`worker.rs`), and at pipeline depth 1 a batch is
/// one request. The bound is the longest
/// length of the highest class that holds a value: never below the longest value held
/// (the round's memory bound depends on that), and less than twice it.
#[derive(Debug, Clone)]
pub(super) struct ValueSizes {
    counts: [usize; CLASSES],
    /// Bit `k` set while class `k` holds a value.
    occupied: u128,
}

impl Default for ValueSizes {
    fn default() -> Self {
        ValueSizes { counts: [0; CLASSES], occupied: 0 }
    }
}

impl ValueSizes {
    /// Counts a value of `len` bytes in.
    #[inline]
    pub(super) fn add(&mut self, len: usize) {
        let k = class(len);
        self.counts[k] += 1;
        self.occupied |= 1 << k;
    }

    /// Counts out a value of `len` bytes that was counted in. (Counting out one that
    /// was not is a bug; in a release build the counter wraps to a huge count, which
    /// keeps the bound high rather than letting it fall below a value still held.)
    #[inline]
    pub(super) fn remove(&mut self, len: usize) {
        let k = class(len);
        self.counts[k] -= 1;
        if self.counts[k] == 0 {
            self.occupied &= !(1 << k);
        }
    }

    /// Counts out every value of `bucket`: O(its keys), as many as the puts that
    /// counted them in, so O(1) per write amortised.
    pub(super) fn remove_bucket(&mut self, bucket: &Bucket) {
        bucket.each_value_len(|len| self.remove(len));
    }

    /// At least the longest value counted, and less than twice it; 0 when none.
    pub(super) fn bound(&self) -> usize {
        // No value, or only empty ones (class 0).
        if self.occupied <= 1 {
            return 0;
        }
        let k = (u128::BITS - 1 - self.occupied.leading_zeros()) as usize;
        usize::MAX >> (usize::BITS as usize - k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_is_bounded_by_its_longest_length() {
        let mut sizes = ValueSizes::default();
        assert_eq!(sizes.bound(), 0);
        for (len, bound) in [(0, 0), (1, 1), (2, 3), (3, 3), (4, 7), (1 << 20, (1 << 21) - 1)] {
            sizes.add(len);
            assert_eq!(sizes.bound(), bound, "after a value of {len}");
        }
        sizes.add(usize::MAX);
        assert_eq!(sizes.bound(), usize::MAX);
        sizes.remove(usize::MAX);
        sizes.remove(1 << 20);
        assert_eq!(sizes.bound(), 7, "falls to the next class that holds a value");
        for len in [4, 3, 2, 1] {
            sizes.remove(len);
        }
        assert_eq!(sizes.bound(), 0, "an empty value is 0 bytes long");
    }
}
