//! Buckets and partitions: the data itself, as plain structs.
//!
//! A [`Partition`] is the set of buckets one worker owns; a [`Bucket`] (`bucket.rs`)
//! maps keys to values. No threads, no locks, no I/O (one shared counter, for
//! `--max-memory`): the worker that owns a partition wraps it in a lock and applies
//! requests to it; everything here is tested directly.
//!
//! Every mutating method leaves the partition whole wherever it could stop: a new
//! record is written to the arena before the index refers to it, and a rebuilt table
//! or arena replaces the old one in one assignment. So a panic raised before it
//! returns leaves the request either fully applied or not applied at all. The
//! supervisor relies on that to hand a crashed worker's partition to its replacement
//! as it is.

mod bucket;
mod sizes;

pub use bucket::Bucket;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bucket::Hasher;
use sizes::ValueSizes;

/// The answer to an operation on a bucket that was never created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSuchBucket;

/// The buckets one worker owns, with running counts for STATS and for
/// `--max-memory`.
#[derive(Debug, Default)]
pub struct Partition {
    buckets: HashMap<Box<[u8]>, (u64, Bucket), Hasher>,
    keys: usize,
    /// The id the next created bucket gets: a bucket dropped and created again is
    /// another bucket to a reader walking the partition between locks.
    next_id: u64,
    /// Bytes the buckets hold ([`Bucket::heap_bytes`] plus [`BUCKET_ENTRY_BYTES`] and
    /// the name of each), kept up to date by every change.
    bytes: usize,
    /// Most bytes the whole node's store may hold.
    limit: Option<usize>,
    /// What every partition of the node holds together, each adding its changes
    /// ([`Partition::publish_memory`]); read only when there is a limit.
    node_total: Arc<AtomicUsize>,
    /// What this partition last added to `node_total`.
    published: usize,
    /// The values held, counted by size class: with `longest_stored`, the bound on
    /// the longest value one read of one key can return ([`Partition::largest_value`]),
    /// which falls when long values are overwritten, deleted or dropped.
    sizes: ValueSizes,
    /// The longest value stored here since the partition was made. It never falls,
    /// but it is exact while that value is held, where `sizes` may be up to twice it.
    longest_stored: usize,
}

/// What an empty bucket costs beyond its name: its entry in the partition's map.
pub const BUCKET_ENTRY_BYTES: usize = std::mem::size_of::<(Box<[u8]>, (u64, Bucket))>() + 8;

/// Why a write was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The bucket does not exist.
    NoSuchBucket,
    /// It would take the store past its memory limit.
    OutOfMemory,
}

impl Partition {
    /// An empty partition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates `bucket` if it does not exist. An existing bucket keeps its data.
    pub fn create(&mut self, bucket: &[u8]) {
        if !self.buckets.contains_key(bucket) {
            self.next_id += 1;
            self.bytes += BUCKET_ENTRY_BYTES + bucket.len();
            self.buckets.insert(bucket.into(), (self.next_id, Bucket::default()));
        }
    }

    /// [`Partition::create`] within the memory limit.
    pub fn create_within_limit(&mut self, bucket: &[u8]) -> Result<(), WriteError> {
        if !self.buckets.contains_key(bucket) && BUCKET_ENTRY_BYTES + bucket.len() > self.room() {
            return Err(WriteError::OutOfMemory);
        }
        self.create(bucket);
        Ok(())
    }

    /// True if `bucket` exists.
    pub fn contains(&self, bucket: &[u8]) -> bool {
        self.buckets.contains_key(bucket)
    }

    /// The value under `key` in `bucket`; `Ok(None)` for a missing key.
    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<&[u8]>, NoSuchBucket> {
        let (_, bucket) = self.buckets.get(bucket).ok_or(NoSuchBucket)?;
        Ok(bucket.get(key))
    }

    /// Stores `value` under `key` in `bucket`, overwriting, whatever the memory limit
    /// says (for loading data the node already held).
    pub fn put(&mut self, bucket: &[u8], key: &[u8], value: &[u8]) -> Result<(), NoSuchBucket> {
        self.put_with_room(bucket, key, value, usize::MAX).map_err(|_| NoSuchBucket)
    }

    /// [`Partition::put`] within the memory limit: refused, changing nothing, when the
    /// bucket would have to allocate past it.
    pub fn put_within_limit(&mut self, bucket: &[u8], key: &[u8], value: &[u8]) -> Result<(), WriteError> {
        let room = self.room();
        self.put_with_room(bucket, key, value, room)
    }

    fn put_with_room(
        &mut self,
        bucket: &[u8],
        key: &[u8],
        value: &[u8],
        room: usize,
    ) -> Result<(), WriteError> {
        let (_, bucket) = self.buckets.get_mut(bucket).ok_or(WriteError::NoSuchBucket)?;
        let before = bucket.heap_bytes();
        let replaced = bucket.put_within(key, value, room).ok_or(WriteError::OutOfMemory)?;
        self.bytes = self.bytes - before + bucket.heap_bytes();
        self.count_put(value.len(), replaced);
        Ok(())
    }

    /// Counts a value of `len` bytes stored in place of one of `replaced` bytes (`None`:
    /// under a new key).
    #[inline]
    fn count_put(&mut self, len: usize, replaced: Option<usize>) {
        match replaced {
            Some(old) => self.sizes.remove(old),
            None => self.keys += 1,
        }
        self.sizes.add(len);
        self.longest_stored = self.longest_stored.max(len);
    }

    /// The bucket called `name`, if it exists.
    pub fn bucket(&self, name: &[u8]) -> Option<&Bucket> {
        self.buckets.get(name).map(|(_, bucket)| bucket)
    }

    /// Stores `value` under `key`, creating `bucket` first if it does not exist, within
    /// the memory limit. Returns true if the key is new. A refused put leaves a bucket
    /// it created in place (empty), as a `CREATE` then a refused `PUT` would.
    pub fn upsert_within_limit(
        &mut self,
        bucket: &[u8],
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, WriteError> {
        self.create_within_limit(bucket)?;
        let room = self.room();
        let (_, found) = self.buckets.get_mut(bucket).ok_or(WriteError::NoSuchBucket)?;
        let before = found.heap_bytes();
        let replaced = found.put_within(key, value, room).ok_or(WriteError::OutOfMemory)?;
        self.bytes = self.bytes - before + found.heap_bytes();
        self.count_put(value.len(), replaced);
        Ok(replaced.is_none())
    }

    /// At least the longest value this partition holds: the most one read of one key
    /// can return, which bounds how many such reads a connection's round takes
    /// (`round.rs`). Never below it (the round's memory bound rests on that), and less
    /// than twice it, so it falls again once long values are gone. Read by the worker
    /// when it publishes, once per batch.
    pub fn largest_value(&self) -> usize {
        self.sizes.bound().min(self.longest_stored)
    }

    /// Removes `key` from `bucket`; returns whether it was there.
    pub fn remove(&mut self, bucket: &[u8], key: &[u8]) -> Result<bool, NoSuchBucket> {
        let (_, bucket) = self.buckets.get_mut(bucket).ok_or(NoSuchBucket)?;
        let before = bucket.heap_bytes();
        let Some(len) = bucket.remove(key) else { return Ok(false) };
        self.keys -= 1;
        self.bytes = self.bytes - before + bucket.heap_bytes();
        self.sizes.remove(len);
        Ok(true)
    }

    /// Removes `key` from `bucket`; a missing key is not an error.
    pub fn delete(&mut self, bucket: &[u8], key: &[u8]) -> Result<(), NoSuchBucket> {
        self.remove(bucket, key).map(|_| ())
    }

    /// Removes `bucket` and every key in it: O(its keys), to count their values out of
    /// the size classes (as many as the puts that counted them in).
    pub fn drop_bucket(&mut self, bucket: &[u8]) -> Result<(), NoSuchBucket> {
        let (name, (_, dropped)) = self.buckets.remove_entry(bucket).ok_or(NoSuchBucket)?;
        self.keys -= dropped.len();
        self.bytes -= BUCKET_ENTRY_BYTES + name.len() + dropped.heap_bytes();
        self.sizes.remove_bucket(&dropped);
        Ok(())
    }

    /// Bytes of live data: about the size of a snapshot of the partition. O(buckets).
    pub fn live_bytes(&self) -> usize {
        self.buckets.iter().map(|(name, (_, bucket))| name.len() + bucket.live_bytes()).sum()
    }

    /// Every bucket's name and id, for a reader walking the partition between locks.
    pub fn bucket_ids(&self) -> Vec<(Box<[u8]>, u64)> {
        self.buckets.iter().map(|(name, (id, _))| (name.clone(), *id)).collect()
    }

    /// The bucket called `name`, if it exists and still has id `id`.
    pub fn bucket_with_id(&self, name: &[u8], id: u64) -> Option<&Bucket> {
        self.buckets.get(name).filter(|(found, _)| *found == id).map(|(_, bucket)| bucket)
    }

    /// Takes every bucket out, for moving them to other partitions.
    pub fn take_buckets(&mut self) -> Vec<(Box<[u8]>, Bucket)> {
        self.keys = 0;
        self.bytes = 0;
        self.sizes = ValueSizes::default();
        self.buckets.drain().map(|(name, (_, bucket))| (name, bucket)).collect()
    }

    /// Takes the bucket called `name` out, if it exists.
    pub fn take_bucket(&mut self, name: &[u8]) -> Option<Bucket> {
        let (_, bucket) = self.buckets.remove(name)?;
        self.keys -= bucket.len();
        self.bytes -= BUCKET_ENTRY_BYTES + name.len() + bucket.heap_bytes();
        self.sizes.remove_bucket(&bucket);
        Some(bucket)
    }

    /// Puts a bucket taken from another partition in, replacing one of the same name.
    pub fn insert_bucket(&mut self, name: Box<[u8]>, bucket: Bucket) {
        bucket.each_value_len(|len| {
            self.sizes.add(len);
            self.longest_stored = self.longest_stored.max(len);
        });
        self.next_id += 1;
        self.keys += bucket.len();
        self.bytes += BUCKET_ENTRY_BYTES + name.len() + bucket.heap_bytes();
        let name_len = name.len();
        if let Some((_, old)) = self.buckets.insert(name, (self.next_id, bucket)) {
            self.keys -= old.len();
            self.bytes -= BUCKET_ENTRY_BYTES + name_len + old.heap_bytes();
            self.sizes.remove_bucket(&old);
        }
    }

    /// Number of buckets.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Number of keys over all buckets.
    pub fn key_count(&self) -> usize {
        self.keys
    }

    /// Bytes this partition's buckets hold, as the store counts them.
    pub fn memory_used(&self) -> usize {
        self.bytes
    }

    /// Sets the node's memory limit (`None`: no limit), shared with the node's other
    /// partitions through `node_total`.
    pub fn set_memory_limit(&mut self, limit: Option<usize>, node_total: Arc<AtomicUsize>) {
        self.limit = limit;
        self.node_total = node_total;
        self.published = 0;
        self.publish_memory();
    }

    /// Adds this partition's change since the last call to the node's total: once
    /// per batch, not per write, so the node may pass its limit by what one batch
    /// per worker stores.
    pub fn publish_memory(&mut self) {
        if self.bytes >= self.published {
            self.node_total.fetch_add(self.bytes - self.published, Ordering::Relaxed);
        } else {
            self.node_total.fetch_sub(self.published - self.bytes, Ordering::Relaxed);
        }
        self.published = self.bytes;
    }

    /// Bytes that may still be allocated under the limit.
    fn room(&self) -> usize {
        let Some(limit) = self.limit else { return usize::MAX };
        let elsewhere = self.node_total.load(Ordering::Relaxed).saturating_sub(self.published);
        limit.saturating_sub(self.bytes.saturating_add(elsewhere))
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
    fn dropping_a_bucket_takes_its_keys_and_only_its_keys() {
        let mut p = Partition::new();
        p.create(b"a");
        p.create(b"b");
        p.put(b"a", b"k1", b"1").unwrap();
        p.put(b"a", b"k2", b"2").unwrap();
        p.put(b"b", b"k1", b"3").unwrap();
        assert_eq!(p.drop_bucket(b"a"), Ok(()));
        assert_eq!(p.key_count(), 1);
        assert_eq!(p.bucket_count(), 1);
        assert_eq!(p.get(b"a", b"k1"), Err(NoSuchBucket));
        assert_eq!(p.get(b"b", b"k1"), Ok(Some(&b"3"[..])));
        assert_eq!(p.drop_bucket(b"a"), Err(NoSuchBucket));
        p.create(b"a");
        assert_eq!(p.get(b"a", b"k1"), Ok(None), "a re-created bucket starts empty");
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
    fn memory_used_follows_every_change_and_returns_to_zero() {
        let mut p = Partition::new();
        p.create(b"a");
        for (puts, deletes) in [(2000, 0), (0, 1000)] {
            (0..puts).for_each(|i| p.put(b"a", format!("k{i}").as_bytes(), &[b'v'; 100]).unwrap());
            (0..deletes).for_each(|i| p.delete(b"a", format!("k{i}").as_bytes()).unwrap());
            assert_eq!(p.memory_used(), BUCKET_ENTRY_BYTES + 1 + p.buckets[&b"a"[..]].1.heap_bytes());
        }
        p.drop_bucket(b"a").unwrap();
        assert_eq!(p.memory_used(), 0);
    }

    const MIB: usize = 1 << 20;

    /// A partition holding 100-byte values in bucket `small` and in bucket `big`, and one
    /// value of 1 MiB under `big`'s key `k`.
    fn with_one_long_value() -> Partition {
        let mut p = Partition::new();
        p.create(b"small");
        p.create(b"big");
        p.put(b"small", b"k", &[b's'; 100]).unwrap();
        p.put(b"big", b"s", &[b's'; 100]).unwrap();
        p.put(b"big", b"k", &vec![b'v'; MIB]).unwrap();
        assert!(p.largest_value() >= MIB);
        p
    }

    #[test]
    fn largest_value_falls_when_the_long_value_leaves_whichever_way_it_goes() {
        type Leave = fn(&mut Partition);
        let ways: [(&str, Leave); 8] = [
            ("overwritten", |p| p.put(b"big", b"k", b"short").unwrap()),
            ("upserted over", |p| assert_eq!(p.upsert_within_limit(b"big", b"k", b"short"), Ok(false))),
            ("deleted", |p| p.delete(b"big", b"k").unwrap()),
            ("removed", |p| assert_eq!(p.remove(b"big", b"k"), Ok(true))),
            ("dropped with its bucket", |p| p.drop_bucket(b"big").unwrap()),
            ("taken out with its bucket", |p| assert!(p.take_bucket(b"big").is_some())),
            ("replaced with its bucket", |p| p.insert_bucket(b"big"[..].into(), Bucket::default())),
            ("taken out with every bucket", |p| {
                let taken = p.take_buckets();
                p.insert_bucket(
                    b"small"[..].into(),
                    taken.into_iter().find(|(n, _)| &**n == b"small").unwrap().1,
                );
            }),
        ];
        for (how, leave) in ways {
            let mut p = with_one_long_value();
            leave(&mut p);
            // 100 bytes is in the class of 64 to 127.
            assert_eq!(p.largest_value(), 127, "1 MiB value {how}");
        }
        let mut p = with_one_long_value();
        p.delete(b"big", b"k").unwrap();
        p.delete(b"big", b"s").unwrap();
        p.drop_bucket(b"small").unwrap();
        assert_eq!(p.largest_value(), 0, "nothing held");
    }

    #[test]
    fn a_bucket_moved_to_another_partition_takes_its_long_value_along() {
        let mut from = with_one_long_value();
        let mut to = Partition::new();
        let bucket = from.take_bucket(b"big").unwrap();
        to.insert_bucket(b"big"[..].into(), bucket);
        assert_eq!(from.largest_value(), 127);
        assert!(to.largest_value() >= MIB);
        assert_eq!(to.get(b"big", b"k").map(|v| v.map(<[u8]>::len)), Ok(Some(MIB)));
        // While the longest value ever stored is still held, the figure is exact.
        assert_eq!(with_one_long_value().largest_value(), MIB);
    }

    /// A tiny deterministic generator for the model test.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// What the model says the longest value of a partition is.
    fn longest(model: &HashMap<(u8, u8), usize>) -> usize {
        model.values().copied().max().unwrap_or(0)
    }

    #[test]
    fn largest_value_is_never_below_the_longest_value_held_and_falls_to_within_twice_it() {
        const BUCKETS: [&[u8]; 3] = [b"a", b"b", b"c"];
        let long = vec![b'v'; 200_000];
        // Two partitions, buckets moving between them; each modelled as (bucket, key) to
        // the value's length.
        let mut parts = [Partition::new(), Partition::new()];
        let mut models: [HashMap<(u8, u8), usize>; 2] = [HashMap::new(), HashMap::new()];
        let mut home = [0usize; 3];
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for step in 0..5000 {
            let r = next(&mut state);
            let (b, key) = ((r % 3) as u8, ((r >> 8) % 20) as u8);
            let p = home[b as usize];
            let name = BUCKETS[b as usize];
            parts[p].create(name);
            match (r >> 16) % 20 {
                0..=10 => {
                    // Mostly short values, now and then a long one in any class.
                    let len = match (r >> 24) % 16 {
                        0 => ((r >> 32) as usize) % long.len(),
                        _ => ((r >> 32) % 64) as usize,
                    };
                    parts[p].put(name, &[key], &long[..len]).unwrap();
                    models[p].insert((b, key), len);
                }
                11..=17 => {
                    parts[p].delete(name, &[key]).unwrap();
                    models[p].remove(&(b, key));
                }
                18 => {
                    parts[p].drop_bucket(name).unwrap();
                    models[p].retain(|&(held, _), _| held != b);
                }
                _ => {
                    let bucket = parts[p].take_bucket(name).unwrap();
                    parts[1 - p].insert_bucket(name.into(), bucket);
                    let moved: Vec<_> = models[p].extract_if(|&(held, _), _| held == b).collect();
                    models[1 - p].extend(moved);
                    home[b as usize] = 1 - p;
                }
            }
            for (part, model) in parts.iter().zip(&models) {
                let (bound, held) = (part.largest_value(), longest(model));
                assert!(bound >= held, "step {step}: bound {bound} below a value of {held}");
                assert!(bound <= (2 * held).saturating_sub(1), "step {step}: bound {bound} for {held}");
            }
        }
    }

    #[test]
    fn writes_past_the_memory_limit_are_refused_while_reads_and_deletes_still_work() {
        const LIMIT: usize = 256 * 1024;
        let mut p = Partition::new();
        let node_total = Arc::new(AtomicUsize::new(0));
        p.set_memory_limit(Some(LIMIT), node_total.clone());
        p.create_within_limit(b"b").unwrap();
        let value = [b'v'; 1000];
        let mut stored = 0;
        while p.put_within_limit(b"b", format!("k{stored}").as_bytes(), &value).is_ok() {
            stored += 1;
            assert!(stored < 10_000, "the limit never bit");
        }
        assert!(p.memory_used() <= LIMIT, "{} bytes held", p.memory_used());
        // The arena grows by less than doubling near the limit: most of it is used.
        assert!(stored * 1000 > LIMIT / 2, "only {stored} values fit");
        assert_eq!(p.put_within_limit(b"b", b"new", &value), Err(WriteError::OutOfMemory));
        assert_eq!(p.create_within_limit(b"another"), Err(WriteError::OutOfMemory));
        assert_eq!(p.put_within_limit(b"b", b"k0", &[b'w'; 1000]), Ok(()), "same size: in place");
        assert_eq!(p.get(b"b", b"k1"), Ok(Some(&value[..])));
        for i in 0..stored {
            p.delete(b"b", format!("k{i}").as_bytes()).unwrap();
        }
        assert_eq!(p.put_within_limit(b"b", b"new", &value), Ok(()), "room again after deletes");
        node_total.fetch_add(LIMIT, Ordering::Relaxed);
        assert_eq!(p.put_within_limit(b"b", b"more", &value), Err(WriteError::OutOfMemory));
    }
}
