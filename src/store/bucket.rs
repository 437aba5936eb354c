//! [`Bucket`]: one bucket's key-value pairs, laid out for memory: one packed record per
//! pair in a byte arena and an 8-byte index slot, about 57 bytes per 12-byte key with a
//! 32-byte value. Plain data, no threads, no locks, no I/O; tested directly.
//!
//! Every mutating method leaves the bucket whole wherever it could stop: a new record
//! is written to the arena before the index refers to it, and a rebuilt table or arena
//! replaces the old one in one assignment.

/// The hasher for every map in the store: ahash, keyed per map (so a client cannot
/// pick keys that collide), and much faster than SipHash on short keys.
pub(super) type Hasher = ahash::RandomState;

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

/// How a reply reads a bucket (`HGETALL`, `HKEYS`, `HVALS` through the RESP door).
impl crate::protocol::Fields for Bucket {
    fn count(&self) -> usize {
        self.len()
    }

    fn each_pair(&self, each: &mut dyn FnMut(&[u8], &[u8])) {
        self.pairs_from(0, usize::MAX, each);
    }
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
        matches!(self.put_within(key, value, usize::MAX), Some(None))
    }

    /// [`Bucket::put`], unless that would make the bucket allocate more than `room`
    /// bytes: then nothing changes and the answer is `None`. Otherwise the answer is
    /// the length of the value replaced, `None` for a new key (the partition counts
    /// values by length, `sizes.rs`). An overwrite of the same length needs no room; an
    /// arena that would double past `room` grows only as far as `room` allows.
    pub fn put_within(&mut self, key: &[u8], value: &[u8], room: usize) -> Option<Option<usize>> {
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
            return Some(Some(record.value_len));
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
        Some(None)
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
        self.remove(key).is_some()
    }

    /// Removes `key`. Returns the length of the value it held, if it was there.
    pub fn remove(&mut self, key: &[u8]) -> Option<usize> {
        let mut hole = self.find(key, self.hasher.hash_one(key))?;
        let record = self.record(slot_offset(self.slots[hole]));
        self.garbage += record.size;
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
        Some(record.value_len)
    }

    /// Calls `each` with the length of every value in the bucket, in no order: from
    /// the table, so without hashing a key (unlike [`Bucket::pairs_from`], which must
    /// tell live records from garbage).
    pub fn each_value_len(&self, mut each: impl FnMut(usize)) {
        for &slot in self.slots.iter().filter(|&&slot| slot != 0) {
            each(self.record(slot_offset(slot)).value_len);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn pairs_from_reads_every_pair_in_chunks_and_moves_says_when_to_start_again() {
        let mut bucket = Bucket::default();
        for i in 0..1000 {
            bucket.put(format!("k{i}").as_bytes(), b"0123456789");
        }
        // In small chunks, every live pair once.
        let mut seen = Vec::new();
        let mut at = Some(0);
        while let Some(from) = at {
            at = bucket.pairs_from(from, 256, |key, _| seen.push(key.to_vec()));
        }
        assert_eq!(seen.len(), 1000);
        // Rewriting most pairs at another length leaves garbage, and compaction moves
        // the records: a reader walking the arena must start again.
        let moves = bucket.moves();
        for i in 0..900 {
            bucket.put(format!("k{i}").as_bytes(), b"x");
        }
        assert_ne!(bucket.moves(), moves, "compacting the arena counts as a move");
        let mut again = 0;
        let mut at = Some(0);
        while let Some(from) = at {
            at = bucket.pairs_from(from, 256, |_, _| again += 1);
        }
        assert_eq!(again, 1000, "no pair missed, none twice");
    }

    #[test]
    fn record_lengths_count_their_varints() {
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
                    let replaced = bucket.put_within(&key, &value, usize::MAX);
                    assert_eq!(replaced, Some(model.insert(key.clone(), value).map(|old| old.len())));
                }
                6..=7 => assert_eq!(bucket.remove(&key), model.remove(&key).map(|old| old.len())),
                _ => assert_eq!(bucket.get(&key), model.get(&key).map(|v| &v[..])),
            }
            assert_eq!(bucket.len(), model.len());
        }
        for (key, value) in &model {
            assert_eq!(bucket.get(key), Some(&value[..]));
        }
        let mut lengths = Vec::new();
        bucket.each_value_len(|len| lengths.push(len));
        let mut expected: Vec<usize> = model.values().map(Vec::len).collect();
        lengths.sort_unstable();
        expected.sort_unstable();
        assert_eq!(lengths, expected, "each_value_len sees every live value once");
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
