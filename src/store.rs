//! Buckets and partitions: the data itself, as plain structs.
//!
//! A [`Partition`] is the set of buckets one worker owns; a [`Bucket`] maps keys to
//! values. No threads, no locks, no I/O (one shared counter, for `--max-memory`): the worker that owns a partition wraps it in
//! a lock and applies requests to it; everything here is tested directly.
//!
//! Every mutating method leaves the partition whole wherever it could stop: a new
//! record is written to the arena before the index refers to it, and a rebuilt table
//! or arena replaces the old one in one assignment. So a panic raised before it
//! returns leaves the request either fully applied or not applied at all. The
//! supervisor relies on that to hand a crashed worker's partition to its replacement
//! as it is.
//!
//! [`Bucket`] is laid out for memory: one packed record per pair and an 8-byte index
//! slot, about 57 bytes per 12-byte key with a 32-byte value (see its docs).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The hasher for every map in the store: ahash, keyed per map (so a client cannot
/// pick keys that collide), and much faster than SipHash on short keys.
type Hasher = ahash::RandomState;

/// The answer to an operation on a bucket that was never created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSuchBucket;

/// One bucket's key-value pairs, stored compactly.
///
/// A general-purpose map of `Box<[u8]>` to `Box<[u8]>` costs about 125 bytes for a
/// 12-byte key and a 32-byte value: two heap allocations, each rounded up and carrying
/// the allocator's header, plus two fat pointers per slot. Here each pair is instead
/// one record packed into a per-bucket byte arena, `[key len][value len][key][value]`
/// with LEB128 lengths (46 bytes for that pair), and the index is an open-addressing
/// table of 8-byte slots. A slot holds the record's offset in the arena (40 bits) and
/// 24 other bits of the key's hash, so a probe compares keys only when those bits
/// agree: one arena read per lookup in the common case.
///
/// The table uses linear probing, grows by half when more than 4/5 full (so it is
/// never less than about half full), and deletes by shifting the following slots back
/// (no tombstones). A value overwritten with one of the same length is written in
/// place; otherwise the new record goes to the end of the arena and the old one
/// becomes garbage, which is reclaimed by compacting the arena once it is more than
/// half garbage. Amortised, every operation is O(1); a compaction or a growth is
/// O(keys) once in a while.
///
/// All of it is safe code: records are found by offset, never by pointer.
#[derive(Default)]
pub struct Bucket {
    /// Index: 0 for an empty slot, else `tag << OFFSET_BITS | (offset + 1)`.
    slots: Vec<u64>,
    /// The records, back to back; some may be garbage (see `garbage`).
    arena: Vec<u8>,
    /// Keys in the bucket.
    len: usize,
    /// Bytes of `arena` that no slot refers to any more.
    garbage: usize,
    /// Counts the times records moved in the arena (compaction, or emptying), so a
    /// reader walking the arena between locks knows to start again.
    moves: u32,
    hasher: Hasher,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("len", &self.len)
            .field("slots", &self.slots.len())
            .field("arena", &self.arena.len())
            .field("garbage", &self.garbage)
            .finish()
    }
}

/// Bits of a slot that hold the record's offset (plus one): arenas up to 1 TiB.
const OFFSET_BITS: u32 = 40;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
/// The rest of a slot: that many low bits of the key's hash. The table position uses
/// the high bits, so the two are independent.
const TAG_MASK: u64 = (1 << (64 - OFFSET_BITS)) - 1;
/// Smallest table, allocated by the first insert.
const MIN_SLOTS: usize = 8;
/// Arenas smaller than this are never compacted: not worth the copy.
const MIN_COMPACT: usize = 4096;

/// Most keys a table of `slots` slots holds before it grows: 4/5 full keeps linear
/// probing short (about 3 probes for a hit, 13 for a miss in the worst case).
fn max_len(slots: usize) -> usize {
    slots / 5 * 4 + slots % 5 * 4 / 5
}

/// The table position of `hash` in a table of `slots` slots: the high bits of the
/// hash scaled to the table size, so any size works, not only powers of two.
#[inline]
fn home(hash: u64, slots: usize) -> usize {
    ((hash as u128 * slots as u128) >> 64) as usize
}

#[inline]
fn slot_offset(slot: u64) -> usize {
    ((slot & OFFSET_MASK) - 1) as usize
}

/// A slot for the record at `offset` of a key with `hash`.
#[inline]
fn make_slot(hash: u64, offset: usize) -> u64 {
    let offset = offset as u64 + 1;
    // A terabyte in one bucket would need more than this machine class has memory;
    // fail loudly rather than corrupt the index.
    assert!(offset <= OFFSET_MASK, "bucket arena over 1 TiB");
    (hash & TAG_MASK) << OFFSET_BITS | offset
}

#[inline]
fn slot_tag(slot: u64) -> u64 {
    slot >> OFFSET_BITS
}

/// Appends `n` as LEB128: 7 bits per byte, high bit set on all but the last.
#[inline]
fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Bytes of a LEB128 number.
#[inline]
fn varint_len(n: usize) -> usize {
    (usize::BITS - (n | 1).leading_zeros()).div_ceil(7) as usize
}

/// Bytes of a record for a key and a value of these lengths.
#[inline]
fn record_len(key_len: usize, value_len: usize) -> usize {
    varint_len(key_len) + varint_len(value_len) + key_len + value_len
}

/// Reads a LEB128 number at `*at`, moving `*at` past it.
#[inline]
fn read_varint(bytes: &[u8], at: &mut usize) -> usize {
    let mut n = 0usize;
    let mut shift = 0;
    loop {
        let byte = bytes[*at];
        *at += 1;
        n |= ((byte & 0x7f) as usize) << shift;
        if byte < 0x80 {
            return n;
        }
        shift += 7;
    }
}

/// Where a record's parts lie in the arena.
#[derive(Debug, Clone, Copy)]
struct Record {
    key_start: usize,
    key_len: usize,
    value_len: usize,
    /// Whole record, lengths included.
    size: usize,
}

impl Record {
    fn value_start(&self) -> usize {
        self.key_start + self.key_len
    }
}

impl Bucket {
    #[inline]
    fn record(&self, offset: usize) -> Record {
        let mut at = offset;
        let key_len = read_varint(&self.arena, &mut at);
        let value_len = read_varint(&self.arena, &mut at);
        Record { key_start: at, key_len, value_len, size: at - offset + key_len + value_len }
    }

    #[inline]
    fn key_of(&self, slot: u64) -> &[u8] {
        let record = self.record(slot_offset(slot));
        &self.arena[record.key_start..record.key_start + record.key_len]
    }

    /// Appends a record to the arena and returns its offset.
    fn append(&mut self, key: &[u8], value: &[u8]) -> usize {
        let offset = self.arena.len();
        push_varint(&mut self.arena, key.len());
        push_varint(&mut self.arena, value.len());
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
        offset
    }

    /// The slot index holding `key`, if any.
    #[inline]
    fn find(&self, key: &[u8], hash: u64) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let tag = hash & TAG_MASK;
        let mut i = home(hash, n);
        // The table is never full, so an empty slot ends every probe; the count is a
        // guard, not a limit that is ever reached.
        for _ in 0..n {
            let slot = self.slots[i];
            if slot == 0 {
                return None;
            }
            if slot_tag(slot) == tag && self.key_of(slot) == key {
                return Some(i);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        None
    }

    /// Puts `slot` in the first empty slot from its home in `slots`.
    fn place(slots: &mut [u64], hash: u64, slot: u64) {
        let n = slots.len();
        let mut i = home(hash, n);
        while slots[i] != 0 {
            i += 1;
            if i == n {
                i = 0;
            }
        }
        slots[i] = slot;
    }

    /// The table size that holds one more key: the next size up by half.
    fn grown_slots(&self) -> usize {
        let mut n = self.slots.len().max(MIN_SLOTS);
        while max_len(n) < self.len + 1 {
            n += n / 2;
        }
        n
    }

    /// Rebuilds the table with `n` slots (see [`Bucket::grown_slots`]).
    fn grow_to(&mut self, n: usize) {
        let mut slots = vec![0u64; n];
        for &slot in self.slots.iter().filter(|&&slot| slot != 0) {
            let hash = self.hasher.hash_one(self.key_of(slot));
            Self::place(&mut slots, hash, slot);
        }
        self.slots = slots;
    }

    /// Copies the live records into a new arena of exactly their size, once garbage
    /// is more than half of the arena.
    fn maybe_compact(&mut self) {
        if self.arena.len() < MIN_COMPACT || self.garbage * 2 <= self.arena.len() {
            return;
        }
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        let mut slots = self.slots.clone();
        for slot in slots.iter_mut().filter(|slot| **slot != 0) {
            let offset = slot_offset(*slot);
            let record = self.record(offset);
            let new_offset = arena.len();
            arena.extend_from_slice(&self.arena[offset..offset + record.size]);
            *slot = slot_tag(*slot) << OFFSET_BITS | (new_offset as u64 + 1);
        }
        // Both replaced together: the bucket is never seen half compacted.
        self.arena = arena;
        self.slots = slots;
        self.garbage = 0;
        self.moves = self.moves.wrapping_add(1);
    }

    /// The value stored under `key`.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let i = self.find(key, self.hasher.hash_one(key))?;
        let record = self.record(slot_offset(self.slots[i]));
        Some(&self.arena[record.value_start()..record.value_start() + record.value_len])
    }

    /// Stores `value` under `key`, replacing any value there. Returns true if the key
    /// is new.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> bool {
        self.put_within(key, value, usize::MAX).unwrap_or(false)
    }

    /// [`Bucket::put`], unless that would make the bucket allocate more than `room`
    /// bytes: then nothing changes and the answer is `None`. An overwrite of the same
    /// length needs no room; an arena that would double past `room` grows only as far
    /// as `room` allows.
    pub fn put_within(&mut self, key: &[u8], value: &[u8], room: usize) -> Option<bool> {
        let hash = self.hasher.hash_one(key);
        let needed = record_len(key.len(), value.len());
        if let Some(i) = self.find(key, hash) {
            let offset = slot_offset(self.slots[i]);
            let record = self.record(offset);
            if record.value_len == value.len() {
                let start = record.value_start();
                self.arena[start..start + value.len()].copy_from_slice(value);
            } else {
                self.reserve_arena(needed, room)?;
                let new_offset = self.append(key, value);
                self.slots[i] = make_slot(hash, new_offset);
                self.garbage += record.size;
                self.maybe_compact();
            }
            return Some(false);
        }
        let grown = (self.len + 1 > max_len(self.slots.len())).then(|| self.grown_slots());
        let table_bytes = grown.map_or(0, |n| (n - self.slots.len()) * 8);
        self.reserve_arena(needed, room.checked_sub(table_bytes)?)?;
        if let Some(n) = grown {
            self.grow_to(n);
        }
        let offset = self.append(key, value);
        Self::place(&mut self.slots, hash, make_slot(hash, offset));
        self.len += 1;
        Some(true)
    }

    /// Makes room in the arena for `needed` more bytes, allocating at most `room`
    /// more: doubling as usual, or less when doubling would pass `room`. `None` (and
    /// nothing allocated) when even `needed` does not fit.
    fn reserve_arena(&mut self, needed: usize, room: usize) -> Option<()> {
        let (len, capacity) = (self.arena.len(), self.arena.capacity());
        if len + needed <= capacity {
            return Some(());
        }
        // The most Vec's own growth (doubling) can allocate for this record.
        let doubled = (capacity * 2).max(len + needed).max(8);
        if doubled - capacity <= room {
            return Some(());
        }
        let target = capacity.saturating_add(room);
        if target < len + needed {
            return None;
        }
        self.arena.reserve_exact(target - len);
        Some(())
    }

    /// Removes `key`. Returns true if it was there.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        let Some(mut hole) = self.find(key, self.hasher.hash_one(key)) else {
            return false;
        };
        self.garbage += self.record(slot_offset(self.slots[hole])).size;
        // Backward-shift deletion: move later slots of the same run into the hole
        // when their home is at or before it, so no probe ever stops early.
        let n = self.slots.len();
        let mut i = hole;
        loop {
            i = if i + 1 == n { 0 } else { i + 1 };
            let slot = self.slots[i];
            if slot == 0 {
                break;
            }
            let home = home(self.hasher.hash_one(self.key_of(slot)), n);
            // Distance travelled from home to i, and from home to the hole, wrapping.
            let from_home = (i + n - home) % n;
            let hole_from_home = (hole + n - home) % n;
            if hole_from_home <= from_home {
                self.slots[hole] = slot;
                hole = i;
            }
        }
        self.slots[hole] = 0;
        self.len -= 1;
        if self.len == 0 {
            // An emptied bucket gives its memory back.
            let moves = self.moves.wrapping_add(1);
            *self = Bucket { hasher: std::mem::take(&mut self.hasher), moves, ..Bucket::default() };
        } else {
            self.maybe_compact();
        }
        true
    }

    /// Calls `each` with the live pairs whose records start at arena offset `from` or
    /// later, in arena order, until about `max_bytes` of records are visited. Returns
    /// where to go on from, or `None` when the arena is done.
    ///
    /// For reading a bucket in chunks between locks: a record never moves in the arena
    /// unless [`Bucket::moves`] changes, so a reader that sees it unchanged between two
    /// chunks misses no pair that was left alone meanwhile (a changed pair may be seen
    /// old or new, or be appended further on).
    pub fn pairs_from(
        &self,
        from: usize,
        max_bytes: usize,
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> Option<usize> {
        let mut at = from;
        while at < self.arena.len() {
            if at - from >= max_bytes {
                return Some(at);
            }
            let record = self.record(at);
            let key = &self.arena[record.key_start..record.key_start + record.key_len];
            let live =
                self.find(key, self.hasher.hash_one(key)).is_some_and(|i| slot_offset(self.slots[i]) == at);
            if live {
                each(key, &self.arena[record.value_start()..record.value_start() + record.value_len]);
            }
            at += record.size;
        }
        None
    }

    /// Bytes of live records in the arena: about what the bucket's pairs take in a
    /// snapshot.
    pub fn live_bytes(&self) -> usize {
        self.arena.len() - self.garbage
    }

    /// How many times records have moved in the arena (see [`Bucket::pairs_from`]).
    pub fn moves(&self) -> u32 {
        self.moves
    }

    /// Number of keys in the bucket.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the bucket holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory the bucket holds: table, arena and garbage (capacity, not
    /// length). For tests and for judging the layout.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 8 + self.arena.capacity()
    }
}

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
        let new = bucket.put_within(key, value, room).ok_or(WriteError::OutOfMemory)?;
        self.bytes = self.bytes - before + bucket.heap_bytes();
        self.keys += usize::from(new);
        Ok(())
    }

    /// Removes `key` from `bucket`; a missing key is not an error.
    pub fn delete(&mut self, bucket: &[u8], key: &[u8]) -> Result<(), NoSuchBucket> {
        let (_, bucket) = self.buckets.get_mut(bucket).ok_or(NoSuchBucket)?;
        let before = bucket.heap_bytes();
        if bucket.delete(key) {
            self.keys -= 1;
            self.bytes = self.bytes - before + bucket.heap_bytes();
        }
        Ok(())
    }

    /// Removes `bucket` and every key in it.
    pub fn drop_bucket(&mut self, bucket: &[u8]) -> Result<(), NoSuchBucket> {
        let (name, (_, dropped)) = self.buckets.remove_entry(bucket).ok_or(NoSuchBucket)?;
        self.keys -= dropped.len();
        self.bytes -= BUCKET_ENTRY_BYTES + name.len() + dropped.heap_bytes();
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
        self.buckets.drain().map(|(name, (_, bucket))| (name, bucket)).collect()
    }

    /// Takes the bucket called `name` out, if it exists.
    pub fn take_bucket(&mut self, name: &[u8]) -> Option<Bucket> {
        let (_, bucket) = self.buckets.remove(name)?;
        self.keys -= bucket.len();
        self.bytes -= BUCKET_ENTRY_BYTES + name.len() + bucket.heap_bytes();
        Some(bucket)
    }

    /// Puts a bucket taken from another partition in, replacing one of the same name.
    pub fn insert_bucket(&mut self, name: Box<[u8]>, bucket: Bucket) {
        self.next_id += 1;
        self.keys += bucket.len();
        self.bytes += BUCKET_ENTRY_BYTES + name.len() + bucket.heap_bytes();
        let name_len = name.len();
        if let Some((_, old)) = self.buckets.insert(name, (self.next_id, bucket)) {
            self.keys -= old.len();
            self.bytes -= BUCKET_ENTRY_BYTES + name_len + old.heap_bytes();
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
        assert_eq!(record_len(127, 128), 1 + 2 + 127 + 128);
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

    /// A tiny deterministic generator for the model tests.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn bucket_matches_a_model_through_random_puts_overwrites_and_deletes() {
        let mut bucket = Bucket::default();
        let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut state = 0x2545_f491_4f6c_dd1d;
        for step in 0..60_000u64 {
            let r = next(&mut state);
            let key = format!("k{}", r % 3000).into_bytes();
            match (r >> 20) % 10 {
                0..=5 => {
                    // Values of varying length force records to move and the arena
                    // to be compacted.
                    let len = ((r >> 32) % 40) as usize + if step % 997 == 0 { 300 } else { 1 };
                    let value = vec![b'a' + (step % 26) as u8; len];
                    let new = bucket.put(&key, &value);
                    assert_eq!(new, model.insert(key.clone(), value).is_none());
                }
                6..=7 => assert_eq!(bucket.delete(&key), model.remove(&key).is_some()),
                _ => assert_eq!(bucket.get(&key), model.get(&key).map(|v| &v[..])),
            }
            assert_eq!(bucket.len(), model.len());
        }
        for (key, value) in &model {
            assert_eq!(bucket.get(key), Some(&value[..]));
        }
        // Garbage never exceeds half the arena (beyond the small-arena threshold).
        assert!(bucket.garbage * 2 <= bucket.arena.len().max(MIN_COMPACT));
        for key in model.keys() {
            assert!(bucket.delete(key));
        }
        assert!(bucket.is_empty());
        assert_eq!(bucket.heap_bytes(), 0, "an emptied bucket keeps no memory");
        assert_eq!(bucket.get(b"k1"), None);
    }

    #[test]
    fn delete_keeps_every_other_key_of_a_probe_run_reachable() {
        // Many keys in a small table make long runs; delete from the middle of them.
        let mut bucket = Bucket::default();
        let keys: Vec<Vec<u8>> = (0..500).map(|i| format!("{i}").into_bytes()).collect();
        for key in &keys {
            bucket.put(key, key);
        }
        for key in keys.iter().step_by(3) {
            assert!(bucket.delete(key));
        }
        for (i, key) in keys.iter().enumerate() {
            let expected = if i % 3 == 0 { None } else { Some(&key[..]) };
            assert_eq!(bucket.get(key), expected, "key {i}");
        }
    }

    #[test]
    fn long_keys_and_values_use_multi_byte_lengths() {
        let mut bucket = Bucket::default();
        let key = vec![b'k'; 200];
        let value = vec![0u8; 70_000];
        assert!(bucket.put(&key, &value));
        assert!(bucket.put(b"short", b"v"));
        assert_eq!(bucket.get(&key), Some(&value[..]));
        assert_eq!(bucket.get(b"short"), Some(&b"v"[..]));
        assert_eq!(bucket.get(&key[..199]), None);
        let mut lengths = Vec::new();
        for n in [0, 1, 127, 128, 16_383, 16_384, 1 << 40] {
            lengths.clear();
            push_varint(&mut lengths, n);
            let mut at = 0;
            assert_eq!(read_varint(&lengths, &mut at), n);
            assert_eq!(at, lengths.len());
        }
    }

    #[test]
    fn a_million_small_pairs_fit_in_64_bytes_each() {
        // The layout's promise, measured on the structure itself (RSS, which also
        // counts the allocator, is in BENCHMARKS.md). 16 buckets of 62,500 keys.
        let mut buckets: Vec<Bucket> = (0..16).map(|_| Bucket::default()).collect();
        let value = [b'v'; 32];
        for i in 0..1_000_000u64 {
            buckets[(i % 16) as usize].put(format!("key:{i:08}").as_bytes(), &value);
        }
        let bytes: usize = buckets.iter().map(Bucket::heap_bytes).sum();
        let per_key = bytes as f64 / 1e6;
        eprintln!("bucket layout: {per_key:.1} bytes per key");
        assert!(per_key <= 64.0, "{per_key} bytes per key");
        assert_eq!(buckets[3].get(b"key:00000003"), Some(&value[..]));
    }
}
