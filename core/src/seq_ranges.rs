//! A set of sequences kept as disjoint inclusive ranges: a stream's removed sequences, saved
//! with its state. Removals come in runs (a purge of the front, work-queue acks in order), so
//! a purge of millions of messages is one range, not millions of set entries (a `BTreeSet<u64>`
//! of them was ~100 MB for 7.7 M purged messages).

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqRanges {
    /// Range start → range end (inclusive); ranges neither overlap nor touch.
    ranges: BTreeMap<u64, u64>,
}

impl SeqRanges {
    pub fn insert(&mut self, seq: u64) {
        self.insert_range(seq, seq);
    }

    /// Adds every sequence in `lo..=hi` (nothing when `lo > hi`).
    pub fn insert_range(&mut self, mut lo: u64, mut hi: u64) {
        if lo > hi {
            return;
        }
        // A range starting at or before `lo` that reaches it (or ends just before it).
        if let Some((&s, &e)) = self.ranges.range(..=lo).next_back() {
            if e.saturating_add(1) >= lo {
                lo = s;
                hi = hi.max(e);
            }
        }
        // Ranges starting inside `lo..=hi + 1` merge into this one.
        let absorbed: Vec<(u64, u64)> = self
            .ranges
            .range(lo..=hi.saturating_add(1))
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in absorbed {
            self.ranges.remove(&s);
            hi = hi.max(e);
        }
        self.ranges.insert(lo, hi);
    }

    /// Forgets every sequence below `keep_from`.
    pub fn remove_below(&mut self, keep_from: u64) {
        let mut kept = self.ranges.split_off(&keep_from);
        if let Some((_, &e)) = self.ranges.iter().next_back() {
            if e >= keep_from {
                kept.insert(keep_from, e);
            }
        }
        self.ranges = kept;
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, e)| *e >= seq)
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|(s, e)| (*s, *e)).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn runs_merge_into_one_range() {
        let mut r = SeqRanges::default();
        r.insert_range(10, 20);
        r.insert(22);
        assert_eq!(r.ranges(), vec![(10, 20), (22, 22)]);
        r.insert(21);
        assert_eq!(r.ranges(), vec![(10, 22)]);
        r.insert_range(1, 1_000_000);
        assert_eq!(r.ranges(), vec![(1, 1_000_000)]);
        r.remove_below(500);
        assert_eq!(r.ranges(), vec![(500, 1_000_000)]);
        assert!(r.contains(500) && !r.contains(499) && !r.contains(1_000_001));
        r.remove_below(2_000_000);
        assert!(r.is_empty());
    }

    proptest! {
        /// Against a plain set of sequences.
        #[test]
        fn behaves_like_a_set(
            ops in proptest::collection::vec((0u8..3, 0u64..200, 0u64..30), 1..200)
        ) {
            let mut r = SeqRanges::default();
            let mut model = BTreeSet::new();
            for (op, a, len) in ops {
                match op {
                    0 => {
                        r.insert(a);
                        model.insert(a);
                    }
                    1 => {
                        r.insert_range(a, a + len);
                        model.extend(a..=a + len);
                    }
                    _ => {
                        r.remove_below(a);
                        model = model.split_off(&a);
                    }
                }
                let mut expect: Vec<(u64, u64)> = Vec::new();
                for &s in &model {
                    match expect.last_mut() {
                        Some((_, hi)) if *hi + 1 == s => *hi = s,
                        _ => expect.push((s, s)),
                    }
                }
                prop_assert_eq!(r.ranges(), expect);
                for probe in 0..240 {
                    prop_assert_eq!(r.contains(probe), model.contains(&probe));
                }
            }
        }
    }
}
