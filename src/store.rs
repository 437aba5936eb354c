//! Buckets and partitions: the data itself, as plain structs.
//!
//! A [`Partition`] is the set of buckets one worker owns; a [`Bucket`] maps keys to
//! values. No threads, no locks, no I/O: the worker that owns a partition wraps it in
//! a lock and applies requests to it; everything here is tested directly.
//!
//! Every mutating method changes the partition in one step (one map insert or remove)
//! after all of its checks have passed, so a panic raised before it returns leaves the
//! request either fully applied or not applied at all. The supervisor relies on that
//! to hand a crashed worker's partition to its replacement as it is.

use std::collections::HashMap;

/// The hasher for every map in the store: ahash, keyed per map (so a client cannot
/// pick keys that collide), and much faster than SipHash on short keys.
type Hasher = ahash::RandomState;

/// The answer to an operation on a bucket that was never created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSuchBucket;

/// One bucket's key-value pairs.
#[derive(Debug, Default)]
pub struct Bucket {
    entries: HashMap<Box<[u8]>, Box<[u8]>, Hasher>,
}

impl Bucket {
    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(|value| &**value)
    }

    /// Stores `value` under `key`, replacing any value there. Returns true if the key
    /// is new.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> bool {
        match self.entries.get_mut(key) {
            Some(slot) => {
                if slot.len() == value.len() {
                    slot.copy_from_slice(value);
                } else {
                    *slot = value.into();
                }
                false
            }
            None => {
                self.entries.insert(key.into(), value.into());
                true
            }
        }
    }

    /// Removes `key`. Returns true if it was there.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Number of keys in the bucket.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the bucket holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The buckets one worker owns, with running counts for STATS.
#[derive(Debug, Default)]
pub struct Partition {
    buckets: HashMap<Box<[u8]>, Bucket, Hasher>,
    keys: usize,
}

impl Partition {
    /// An empty partition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates `bucket` if it does not exist. An existing bucket keeps its data.
    pub fn create(&mut self, bucket: &[u8]) {
        if !self.buckets.contains_key(bucket) {
            self.buckets.insert(bucket.into(), Bucket::default());
        }
    }

    /// True if `bucket` exists.
    pub fn contains(&self, bucket: &[u8]) -> bool {
        self.buckets.contains_key(bucket)
    }

    /// The value under `key` in `bucket`; `Ok(None)` for a missing key.
    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<&[u8]>, NoSuchBucket> {
        let bucket = self.buckets.get(bucket).ok_or(NoSuchBucket)?;
        Ok(bucket.get(key))
    }

    /// Stores `value` under `key` in `bucket`, overwriting.
    pub fn put(&mut self, bucket: &[u8], key: &[u8], value: &[u8]) -> Result<(), NoSuchBucket> {
        let bucket = self.buckets.get_mut(bucket).ok_or(NoSuchBucket)?;
        if bucket.put(key, value) {
            self.keys += 1;
        }
        Ok(())
    }

    /// Removes `key` from `bucket`; a missing key is not an error.
    pub fn delete(&mut self, bucket: &[u8], key: &[u8]) -> Result<(), NoSuchBucket> {
        let bucket = self.buckets.get_mut(bucket).ok_or(NoSuchBucket)?;
        if bucket.delete(key) {
            self.keys -= 1;
        }
        Ok(())
    }

    /// Number of buckets.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Number of keys over all buckets.
    pub fn key_count(&self) -> usize {
        self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_bucket_is_an_error_for_every_key_operation() {
        let mut p = Partition::new();
        assert_eq!(p.get(b"shopping", b"eggs"), Err(NoSuchBucket));
        assert_eq!(p.put(b"shopping", b"eggs", b"3"), Err(NoSuchBucket));
        assert_eq!(p.delete(b"shopping", b"eggs"), Err(NoSuchBucket));
        assert_eq!(p.bucket_count(), 0);
    }

    #[test]
    fn the_guides_session() {
        let mut p = Partition::new();
        p.create(b"shopping");
        assert_eq!(p.put(b"shopping", b"eggs", b"3"), Ok(()));
        assert_eq!(p.get(b"shopping", b"eggs"), Ok(Some(&b"3"[..])));
        assert_eq!(p.delete(b"shopping", b"eggs"), Ok(()));
        assert_eq!(p.get(b"shopping", b"eggs"), Ok(None));
    }

    #[test]
    fn create_twice_keeps_the_data() {
        let mut p = Partition::new();
        p.create(b"b");
        p.put(b"b", b"k", b"v").unwrap();
        p.create(b"b");
        assert_eq!(p.get(b"b", b"k"), Ok(Some(&b"v"[..])));
        assert_eq!(p.bucket_count(), 1);
        assert_eq!(p.key_count(), 1);
    }

    #[test]
    fn put_overwrites_with_shorter_longer_and_equal_values() {
        let mut p = Partition::new();
        p.create(b"b");
        for value in [&b"12345"[..], b"1", b"123456789", b"abcdefghi"] {
            p.put(b"b", b"k", value).unwrap();
            assert_eq!(p.get(b"b", b"k"), Ok(Some(value)));
        }
        assert_eq!(p.key_count(), 1);
    }

    #[test]
    fn key_count_follows_puts_and_deletes() {
        let mut p = Partition::new();
        p.create(b"a");
        p.create(b"b");
        p.put(b"a", b"k", b"1").unwrap();
        p.put(b"b", b"k", b"1").unwrap();
        p.put(b"b", b"j", b"1").unwrap();
        assert_eq!(p.key_count(), 3);
        p.delete(b"b", b"k").unwrap();
        p.delete(b"b", b"k").unwrap();
        p.delete(b"b", b"missing").unwrap();
        assert_eq!(p.key_count(), 2);
        assert_eq!(p.bucket_count(), 2);
    }

    #[test]
    fn buckets_are_separate_namespaces() {
        let mut p = Partition::new();
        p.create(b"a");
        p.create(b"b");
        p.put(b"a", b"k", b"in a").unwrap();
        assert_eq!(p.get(b"b", b"k"), Ok(None));
        assert!(p.contains(b"a"));
        assert!(!p.contains(b"c"));
    }

    #[test]
    fn empty_and_binary_values() {
        let mut b = Bucket::default();
        assert!(b.is_empty());
        assert!(b.put(b"\xff", b""));
        assert_eq!(b.get(b"\xff"), Some(&b""[..]));
        assert!(!b.put(b"\xff", b"\x00\x01"));
        assert_eq!(b.len(), 1);
        assert!(b.delete(b"\xff"));
        assert!(!b.delete(b"\xff"));
    }
}
