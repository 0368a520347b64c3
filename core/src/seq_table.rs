//! A stream's live sequences and a small fixed-size record per message, kept dense.
//!
//! Sequences are assigned consecutively, and removals come mostly from the front (limits, age,
//! work-queue acks in order), so an ordered map spends most of its memory on tree nodes: ~45
//! bytes per message for a 16-byte record. Here sequences live in aligned chunks of
//! [`CHUNK`] slots; a removed message leaves an empty slot until its chunk empties, and an
//! empty chunk is freed at once (interior) or dropped (front). Memory is one slot per sequence
//! of every chunk that still holds a live message (a chunk with one live message keeps all its
//! slots), so a sparse stream costs at most what a dense one of the same span does; a lookup is
//! two array indexings.

use std::collections::VecDeque;

/// Slots per chunk (a power of two).
pub const CHUNK: u64 = 1024;

/// A record stored per sequence, with a value that marks an empty slot (so a slot costs the
/// record's size and nothing more).
pub trait Slot: Copy {
    /// Never stored: an empty slot.
    const EMPTY: Self;
    fn is_empty_slot(&self) -> bool;
}

struct Chunk<T> {
    live: u32,
    slots: Box<[T]>,
}

pub struct SeqTable<T> {
    /// Chunk number (sequence / CHUNK) of `chunks[0]`.
    base: u64,
    chunks: VecDeque<Option<Chunk<T>>>,
    len: u64,
    /// Lowest live sequence (meaningful when `len > 0`).
    first: u64,
}

impl<T: Slot> Default for SeqTable<T> {
    fn default() -> Self {
        SeqTable::new()
    }
}

impl<T: Slot> std::fmt::Debug for SeqTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqTable")
            .field("len", &self.len)
            .field("first", &self.first())
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl<T: Slot> SeqTable<T> {
    pub fn new() -> Self {
        SeqTable {
            base: 0,
            chunks: VecDeque::new(),
            len: 0,
            first: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The lowest live sequence.
    pub fn first(&self) -> Option<u64> {
        (self.len > 0).then_some(self.first)
    }

    fn chunk(&self, seq: u64) -> Option<&Chunk<T>> {
        let c = (seq / CHUNK).checked_sub(self.base)?;
        self.chunks.get(c as usize)?.as_ref()
    }

    pub fn get(&self, seq: u64) -> Option<&T> {
        Some(&self.chunk(seq)?.slots[(seq % CHUNK) as usize]).filter(|v| !v.is_empty_slot())
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.get(seq).is_some()
    }

    /// Stores `value` (not [`Slot::EMPTY`]) at `seq`; returns the value it replaced, if any.
    pub fn insert(&mut self, seq: u64, value: T) -> Option<T> {
        debug_assert!(!value.is_empty_slot(), "the empty marker is not a value");
        let c = seq / CHUNK;
        if self.chunks.is_empty() {
            self.base = c;
        }
        while c < self.base {
            self.chunks.push_front(None);
            self.base -= 1;
        }
        let i = (c - self.base) as usize;
        if i >= self.chunks.len() {
            self.chunks.resize_with(i + 1, || None);
        }
        let chunk = self.chunks[i].get_or_insert_with(|| Chunk {
            live: 0,
            slots: vec![T::EMPTY; CHUNK as usize].into_boxed_slice(),
        });
        let slot = &mut chunk.slots[(seq % CHUNK) as usize];
        let old = Some(std::mem::replace(slot, value)).filter(|v| !v.is_empty_slot());
        if old.is_none() {
            chunk.live += 1;
            if self.len == 0 || seq < self.first {
                self.first = seq;
            }
            self.len += 1;
        }
        old
    }

    /// Forgets `seq`; returns its value if it was live.
    pub fn remove(&mut self, seq: u64) -> Option<T> {
        let i = (seq / CHUNK).checked_sub(self.base)? as usize;
        let chunk = self.chunks.get_mut(i)?.as_mut()?;
        let slot = &mut chunk.slots[(seq % CHUNK) as usize];
        if slot.is_empty_slot() {
            return None;
        }
        let old = std::mem::replace(slot, T::EMPTY);
        chunk.live -= 1;
        if chunk.live == 0 {
            self.chunks[i] = None;
        }
        self.len -= 1;
        while let Some(None) = self.chunks.front() {
            self.chunks.pop_front();
            self.base += 1;
        }
        if self.len == 0 {
            self.chunks.clear();
        } else if seq == self.first {
            self.first = self
                .range(seq + 1)
                .next()
                .map(|(s, _)| s)
                .expect("a live sequence above a removed first one");
        }
        Some(old)
    }

    /// Forgets every sequence below `cut`: whole chunks are dropped, only the chunk holding
    /// `cut` is cleared slot by slot. Returns how many live sequences went.
    pub fn remove_below(&mut self, cut: u64) -> u64 {
        let mut removed = 0;
        while let Some(front) = self.chunks.front_mut() {
            let start = self.base * CHUNK;
            if start >= cut {
                break;
            }
            if start + CHUNK <= cut {
                removed += front.as_ref().map_or(0, |c| c.live as u64);
                self.chunks.pop_front();
                self.base += 1;
                continue;
            }
            if let Some(c) = front {
                for slot in &mut c.slots[..(cut - start) as usize] {
                    if !slot.is_empty_slot() {
                        *slot = T::EMPTY;
                        c.live -= 1;
                        removed += 1;
                    }
                }
                if c.live == 0 {
                    *front = None;
                }
            }
            break;
        }
        while let Some(None) = self.chunks.front() {
            self.chunks.pop_front();
            self.base += 1;
        }
        self.len -= removed;
        if self.len == 0 {
            self.chunks.clear();
        } else if removed > 0 {
            self.first = self
                .range(cut)
                .next()
                .map(|(s, _)| s)
                .expect("live sequences above the cut");
        }
        removed
    }

    /// The first live sequence whose value satisfies `pred`, where `pred` is false for a
    /// prefix of the live values (in sequence order) and true after it: whole chunks are
    /// passed over on their last live value, so the cost is one check per chunk and one chunk's
    /// slots.
    pub fn first_where_sorted(&self, pred: impl Fn(&T) -> bool) -> Option<u64> {
        for (i, c) in self.chunks.iter().enumerate() {
            let Some(c) = c else { continue };
            let last = c.slots.iter().rev().find(|v| !v.is_empty_slot());
            if !last.is_some_and(&pred) {
                continue;
            }
            let slot = c
                .slots
                .iter()
                .position(|v| !v.is_empty_slot() && pred(v))
                .expect("the chunk's last live value matches");
            return Some((self.base + i as u64) * CHUNK + slot as u64);
        }
        None
    }

    /// Live sequences ≥ `from` with their values, ascending.
    pub fn range(&self, from: u64) -> Range<'_, T> {
        let from = from.max(self.base * CHUNK);
        Range {
            table: self,
            chunk: (from / CHUNK - self.base) as usize,
            slot: (from % CHUNK) as usize,
        }
    }

    /// All live sequences with their values, ascending (starting at the cached first one,
    /// not at the front chunk's first slot).
    pub fn iter(&self) -> Range<'_, T> {
        self.range(self.first().unwrap_or(0))
    }
}

pub struct Range<'a, T> {
    table: &'a SeqTable<T>,
    chunk: usize,
    slot: usize,
}

impl<'a, T: Slot> Iterator for Range<'a, T> {
    type Item = (u64, &'a T);

    fn next(&mut self) -> Option<Self::Item> {
        let chunks = &self.table.chunks;
        while self.chunk < chunks.len() {
            if let Some(c) = &chunks[self.chunk] {
                while self.slot < CHUNK as usize {
                    let s = self.slot;
                    self.slot += 1;
                    let v = &c.slots[s];
                    if !v.is_empty_slot() {
                        let seq = (self.table.base + self.chunk as u64) * CHUNK + s as u64;
                        return Some((seq, v));
                    }
                }
            }
            self.chunk += 1;
            self.slot = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    impl Slot for u32 {
        const EMPTY: u32 = u32::MAX;
        fn is_empty_slot(&self) -> bool {
            *self == u32::MAX
        }
    }

    /// A small deterministic generator (xorshift) for the model test.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn agrees_with_an_ordered_map() {
        for round in 0..20u64 {
            let mut seed = 0x9e37_79b9_7f4a_7c15 ^ round;
            let mut t: SeqTable<u32> = SeqTable::new();
            let mut m: BTreeMap<u64, u32> = BTreeMap::new();
            let mut next = 1 + rng(&mut seed) % 5000;
            for step in 0..20_000u32 {
                match rng(&mut seed) % 11 {
                    // Appends, sometimes with a gap.
                    0..=4 => {
                        if rng(&mut seed).is_multiple_of(20) {
                            next += rng(&mut seed) % 3000;
                        }
                        assert_eq!(t.insert(next, step), m.insert(next, step));
                        next += 1;
                    }
                    // Removals from the front.
                    5 | 6 => {
                        let first = m.keys().next().copied();
                        assert_eq!(t.first(), first);
                        if let Some(f) = first {
                            assert_eq!(t.remove(f), m.remove(&f));
                        }
                    }
                    // Interior removals, live or not.
                    7 | 8 => {
                        let s = rng(&mut seed) % (next + 10);
                        assert_eq!(t.remove(s), m.remove(&s));
                    }
                    // A cut of the front, now and then.
                    10 if rng(&mut seed).is_multiple_of(8) => {
                        let cut = t.first().unwrap_or(0) + rng(&mut seed) % (2 * CHUNK + 7);
                        let want = m.range(..cut).count() as u64;
                        m = m.split_off(&cut);
                        assert_eq!(t.remove_below(cut), want, "cut at {cut}");
                    }
                    // Lookups and ranges.
                    _ => {
                        let s = rng(&mut seed) % (next + 10);
                        assert_eq!(t.get(s), m.get(&s));
                        // Values are steps, which grow with the sequence: sorted.
                        let v = rng(&mut seed) as u32 % (step + 10);
                        assert_eq!(
                            t.first_where_sorted(|x| *x >= v),
                            m.iter().find(|(_, x)| **x >= v).map(|(k, _)| *k),
                            "first value ≥ {v}"
                        );
                        let got: Vec<_> = t.range(s).take(50).map(|(k, v)| (k, *v)).collect();
                        let want: Vec<_> = m.range(s..).take(50).map(|(k, v)| (*k, *v)).collect();
                        assert_eq!(got, want, "range from {s}");
                    }
                }
                assert_eq!(t.len(), m.len() as u64);
                assert_eq!(t.first(), m.keys().next().copied());
            }
            let all: Vec<_> = t.iter().map(|(k, v)| (k, *v)).collect();
            let want: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
            assert_eq!(all, want);
        }
    }

    #[test]
    fn empty_chunks_are_freed() {
        let mut t: SeqTable<u32> = SeqTable::new();
        for s in 1..=10 * CHUNK {
            t.insert(s, 1);
        }
        // Empty a middle chunk, then everything but the last sequence.
        for s in 3 * CHUNK..4 * CHUNK {
            t.remove(s);
        }
        assert!(t.chunks[(3 - t.base) as usize].is_none());
        for s in 1..10 * CHUNK {
            t.remove(s);
        }
        assert_eq!((t.len(), t.first()), (1, Some(10 * CHUNK)));
        assert_eq!(t.chunks.len(), 1);
        t.remove(10 * CHUNK);
        assert!(t.is_empty() && t.chunks.is_empty());
        // Inserting below the first chunk after the table emptied, and below a live one.
        t.insert(5 * CHUNK, 1);
        t.insert(2, 2);
        assert_eq!(
            t.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            vec![2, 5 * CHUNK]
        );
    }
}
