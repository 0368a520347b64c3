//! One subject's live sequences, ascending, in 4 bytes each.
//!
//! A stream's per-subject index holds every live sequence once more (the [`SeqTable`] holds
//! them by sequence); as plain `u64`s that was 8 bytes per stored message, up to 16 with a
//! growing deque's spare room. Sequences of one subject are stored here as `u32` offsets from a
//! base — a subject's live messages rarely span more than 4 G sequences — and in full only when
//! they do (the list rebases on its first live sequence first, and narrows again once the span
//! fits).
//!
//! [`SeqTable`]: crate::seq_table::SeqTable

use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub enum SeqList {
    /// Every sequence is `base + offset`.
    Narrow { base: u64, offs: VecDeque<u32> },
    /// Live sequences spanning more than `u32::MAX`.
    Wide(VecDeque<u64>),
}

impl Default for SeqList {
    fn default() -> Self {
        SeqList::Narrow {
            base: 0,
            offs: VecDeque::new(),
        }
    }
}

impl SeqList {
    pub fn len(&self) -> usize {
        match self {
            SeqList::Narrow { offs, .. } => offs.len(),
            SeqList::Wide(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Option<u64> {
        match self {
            SeqList::Narrow { base, offs } => offs.get(i).map(|o| base + *o as u64),
            SeqList::Wide(v) => v.get(i).copied(),
        }
    }

    pub fn first(&self) -> Option<u64> {
        self.get(0)
    }

    pub fn last(&self) -> Option<u64> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// Appends `seq`, which must be above every sequence in the list.
    pub fn push(&mut self, seq: u64) {
        debug_assert!(self.last().is_none_or(|l| l < seq), "ascending pushes");
        match self {
            SeqList::Narrow { base, offs } => {
                if offs.is_empty() {
                    *base = seq;
                }
                if let Ok(o) = u32::try_from(seq - *base) {
                    offs.push_back(o);
                    return;
                }
                // Rebase on the first live sequence, if that makes room.
                let first = *base + offs[0] as u64;
                if seq - first <= u32::MAX as u64 {
                    let shift = offs[0];
                    offs.iter_mut().for_each(|o| *o -= shift);
                    *base = first;
                    offs.push_back((seq - first) as u32);
                    return;
                }
                let mut wide: VecDeque<u64> = offs.iter().map(|o| *base + *o as u64).collect();
                wide.push_back(seq);
                *self = SeqList::Wide(wide);
            }
            SeqList::Wide(v) => v.push_back(seq),
        }
    }

    /// The number of leading sequences for which `pred` holds (`pred` must be true for a
    /// prefix and false after it, as for `slice::partition_point`).
    pub fn partition_point(&self, mut pred: impl FnMut(u64) -> bool) -> usize {
        match self {
            SeqList::Narrow { base, offs } => offs.partition_point(|o| pred(base + *o as u64)),
            SeqList::Wide(v) => v.partition_point(|s| pred(*s)),
        }
    }

    /// Removes `seq`; false if it was not in the list.
    pub fn remove(&mut self, seq: u64) -> bool {
        let i = self.partition_point(|s| s < seq);
        if self.get(i) != Some(seq) {
            return false;
        }
        match self {
            SeqList::Narrow { offs, .. } => {
                offs.remove(i);
            }
            SeqList::Wide(v) => {
                v.remove(i);
            }
        }
        self.tidy();
        true
    }

    /// Removes the first `n` sequences (all of them if there are fewer).
    pub fn drain_front(&mut self, n: usize) {
        let n = n.min(self.len());
        match self {
            SeqList::Narrow { offs, .. } => {
                offs.drain(..n);
            }
            SeqList::Wide(v) => {
                v.drain(..n);
            }
        }
        self.tidy();
    }

    /// The sequences in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len()).map(|i| self.get(i).expect("in range"))
    }

    /// After a removal: an empty list gives its memory back, a wide one whose span fits again
    /// narrows, and a deque left mostly empty shrinks.
    fn tidy(&mut self) {
        if self.is_empty() {
            *self = SeqList::default();
            return;
        }
        if let SeqList::Wide(v) = self {
            let (first, last) = (v[0], v[v.len() - 1]);
            if last - first <= u32::MAX as u64 {
                let offs = v.iter().map(|s| (s - first) as u32).collect();
                *self = SeqList::Narrow { base: first, offs };
                return;
            }
        }
        let (len, cap) = match self {
            SeqList::Narrow { offs, .. } => (offs.len(), offs.capacity()),
            SeqList::Wide(v) => (v.len(), v.capacity()),
        };
        if cap >= 64 && len < cap / 4 {
            match self {
                SeqList::Narrow { offs, .. } => offs.shrink_to(len * 2),
                SeqList::Wide(v) => v.shrink_to(len * 2),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn spans_beyond_u32_go_wide_and_narrow_again() {
        let mut l = SeqList::default();
        l.push(10);
        l.push(20);
        assert!(matches!(l, SeqList::Narrow { .. }));
        // Rebasing on the first live sequence makes room for this one.
        l.remove(10);
        l.push(20 + u32::MAX as u64);
        assert!(matches!(l, SeqList::Narrow { .. }));
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![20, 20 + u32::MAX as u64]);
        // No room even after rebasing: wide.
        let far = 20 + u32::MAX as u64 + 5;
        l.push(far);
        assert!(matches!(l, SeqList::Wide(_)));
        assert_eq!(l.first(), Some(20));
        assert_eq!(l.last(), Some(far));
        // The old one goes: narrow again.
        assert!(l.remove(20));
        assert!(matches!(l, SeqList::Narrow { .. }));
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            vec![20 + u32::MAX as u64, far]
        );
        assert!(!l.remove(20));
    }

    proptest! {
        /// Against an ordered set: pushes of ascending sequences (with gaps of any size),
        /// removals anywhere, and the lookups the stream makes.
        #[test]
        fn behaves_like_an_ordered_set(
            ops in proptest::collection::vec(
                prop_oneof![
                    (1u64..1000).prop_map(|g| (true, g)),
                    (1u64..3).prop_map(|_| (true, u32::MAX as u64 / 2)),
                    (0u64..1000).prop_map(|i| (false, i)),
                    (0u64..5).prop_map(|i| (false, u64::MAX - i)),
                ],
                1..300,
            )
        ) {
            let mut l = SeqList::default();
            let mut model = BTreeSet::new();
            let mut next = 1u64;
            for (push, n) in ops {
                if push {
                    next += n;
                    l.push(next);
                    model.insert(next);
                } else if n > u64::MAX - 5 {
                    let k = (u64::MAX - n) as usize * 3;
                    l.drain_front(k);
                    for _ in 0..k {
                        model.pop_first();
                    }
                } else if !model.is_empty() {
                    let victim = *model.iter().nth(n as usize % model.len()).unwrap();
                    prop_assert!(l.remove(victim));
                    model.remove(&victim);
                    prop_assert!(!l.remove(victim));
                }
                prop_assert_eq!(l.len(), model.len());
                prop_assert_eq!(l.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
                let probe = next / 2;
                prop_assert_eq!(l.partition_point(|s| s < probe), model.range(..probe).count());
                prop_assert_eq!(l.first(), model.first().copied());
                prop_assert_eq!(l.last(), model.last().copied());
            }
        }
    }
}
