//! The hot tail of a log kept in memory: the most recently appended batches, as they were
//! written (offsets assigned), so that tailing readers — the common case of a consumer a few
//! milliseconds behind its producers — are answered without touching the disk. Segments are
//! written with O_DIRECT and so are never in the page cache: without this, every tailing
//! fetch would read back from the device what was written a moment earlier (and a sendfile of
//! uncached data blocks the reactor thread on that read).
//!
//! Batches are copied into shared 256 KiB chunks (one allocation per chunk, not per batch);
//! the oldest are dropped once the cache holds more than its budget.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

const CHUNK_BYTES: usize = 256 << 10;

#[derive(Debug)]
pub struct TailCache {
    /// Cached batches in offset order: (base offset, last offset, bytes).
    batches: VecDeque<(i64, i64, Bytes)>,
    chunk: BytesMut,
    bytes: usize,
    budget: usize,
}

impl TailCache {
    pub fn new(budget: usize) -> TailCache {
        TailCache {
            batches: VecDeque::new(),
            chunk: BytesMut::new(),
            bytes: 0,
            budget,
        }
    }

    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
        self.evict();
    }

    /// Adds the batch `bytes` holding offsets `base..=last`, which must follow the last one
    /// cached (otherwise the cache starts over from it).
    pub fn push(&mut self, base: i64, last: i64, bytes: &[u8]) {
        if self.budget == 0 {
            return;
        }
        if self.batches.back().is_some_and(|(_, l, _)| l + 1 != base) {
            self.clear();
        }
        if self.chunk.capacity() - self.chunk.len() < bytes.len() {
            self.chunk = BytesMut::with_capacity(CHUNK_BYTES.max(bytes.len()));
        }
        self.chunk.extend_from_slice(bytes);
        let b = self.chunk.split().freeze();
        self.bytes += b.len();
        self.batches.push_back((base, last, b));
        self.evict();
    }

    fn evict(&mut self) {
        // Keep at least the newest batch, whatever its size.
        while self.bytes > self.budget && self.batches.len() > 1 {
            let (_, _, b) = self.batches.pop_front().expect("non-empty");
            self.bytes -= b.len();
        }
        if self.budget == 0 {
            self.clear();
        }
    }

    /// Forgets everything (truncation: cached offsets may be reassigned).
    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// The batches from the one holding `from` onward, below `end` (exclusive), up to
    /// `max_bytes` but always the whole first batch (KIP-74). `None` when `from` is not
    /// cached (the caller reads the disk); empty when nothing at or past `from` is below `end`.
    pub fn read(&self, from: i64, end: i64, max_bytes: usize) -> Option<Vec<Bytes>> {
        let first = self.batches.front()?;
        if from < first.0 {
            return None;
        }
        let last = self.batches.back().expect("non-empty");
        if from > last.1 {
            // Past what is cached: only answerable if nothing exists there yet.
            return (from >= end).then(Vec::new);
        }
        let i = self.batches.partition_point(|(_, l, _)| *l < from);
        let mut out = Vec::new();
        let mut total = 0;
        for (base, _, b) in self.batches.range(i..) {
            if *base >= end || (!out.is_empty() && total + b.len() > max_bytes) {
                break;
            }
            total += b.len();
            out.push(b.clone());
        }
        Some(out)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8, len: usize) -> Vec<u8> {
        vec![n; len]
    }

    #[test]
    fn serves_from_the_batch_holding_the_offset_up_to_the_limits() {
        let mut c = TailCache::new(1 << 20);
        c.push(0, 9, &batch(1, 100));
        c.push(10, 19, &batch(2, 100));
        c.push(20, 29, &batch(3, 100));
        let r = c.read(15, 30, 1000).unwrap();
        assert_eq!(r.iter().map(|b| b[0]).collect::<Vec<_>>(), vec![2, 3]);
        // Not past the acknowledged end.
        assert_eq!(c.read(15, 20, 1000).unwrap().len(), 1);
        // max_bytes, but always one whole batch.
        assert_eq!(c.read(0, 30, 150).unwrap().len(), 1);
        assert_eq!(c.read(0, 30, 10).unwrap().len(), 1);
        // At the end: nothing yet; unacknowledged: nothing.
        assert_eq!(c.read(30, 30, 1000), Some(vec![]));
        assert_eq!(c.read(20, 20, 1000), Some(vec![]));
    }

    #[test]
    fn evicts_the_oldest_past_the_budget_and_misses_below_it() {
        let mut c = TailCache::new(250);
        for i in 0..5 {
            c.push(i * 10, i * 10 + 9, &batch(i as u8, 100));
        }
        assert_eq!(c.bytes(), 200);
        assert_eq!(c.read(25, 50, 1000), None);
        assert_eq!(c.read(30, 50, 1000).unwrap().len(), 2);
        // A batch larger than the budget is kept alone.
        c.push(50, 59, &batch(9, 1000));
        assert_eq!(c.bytes(), 1000);
        assert_eq!(c.read(50, 60, 1).unwrap()[0].len(), 1000);
        // Budget 0: nothing is kept.
        c.set_budget(0);
        assert_eq!(c.read(50, 60, 1000), None);
    }

    #[test]
    fn a_gap_starts_over() {
        let mut c = TailCache::new(1 << 20);
        c.push(0, 9, &batch(1, 10));
        c.push(20, 29, &batch(2, 10));
        assert_eq!(c.read(0, 30, 100), None);
        assert_eq!(c.read(20, 30, 100).unwrap().len(), 1);
    }
}
