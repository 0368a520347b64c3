//! Idempotent-producer state of one partition: for each producer id, its epoch and the last
//! five batches it wrote (as Kafka keeps), so that a retried batch is recognised as a duplicate
//! and a gap in sequence numbers is refused.
//!
//! Snapshot format (little state, written at clean shutdown and periodically):
//! ```text
//!  0  4  magic "SLPS"
//!  4  8  log offset the snapshot is valid up to (exclusive)
//!  12 4  producer count N
//!  ..    N * { pid i64, epoch i16, batch count u8, batches * { first_seq i32, last_seq i32,
//!                                                              base_offset i64 } }
//!  ..  4  CRC-32C of everything before it
//! ```

use crate::batch::BatchHeader;

/// Batches remembered per producer (Kafka's `NUM_BATCHES_TO_RETAIN`).
pub const BATCHES_RETAINED: usize = 5;

/// What the producer state says about a batch about to be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerCheck {
    /// Not an idempotent batch, or the next one in sequence: append it.
    Append,
    /// The same batch was appended before at this base offset: acknowledge it again, append
    /// nothing (`None` while the first copy is still being written).
    Duplicate { base_offset: Option<i64> },
    /// The batch's epoch is older than the producer's current one (INVALID_PRODUCER_EPOCH).
    FencedEpoch,
    /// A gap or a step back in sequence numbers (OUT_OF_ORDER_SEQUENCE_NUMBER).
    OutOfOrder,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// (first_seq, last_seq, base_offset), oldest first; base_offset -1 while being written.
    pub batches: Vec<(i32, i32, i64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: crate::FastMap<i64, ProducerEntry>,
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Checks a batch against the state, and if it is to be appended, records it (with its
    /// offset unknown until [`ProducerStates::set_offset`]). Check and record happen together
    /// so that two pipelined batches of one producer are judged in order.
    pub fn check_and_record(&mut self, h: &BatchHeader) -> ProducerCheck {
        if h.producer_id < 0 {
            return ProducerCheck::Append;
        }
        let first = h.base_sequence;
        let last = last_sequence(h);
        let entry = match self.producers.get_mut(&h.producer_id) {
            None => {
                if first != 0 {
                    return ProducerCheck::OutOfOrder;
                }
                self.producers.insert(
                    h.producer_id,
                    ProducerEntry {
                        epoch: h.producer_epoch,
                        batches: vec![(first, last, -1)],
                    },
                );
                return ProducerCheck::Append;
            }
            Some(e) => e,
        };
        if h.producer_epoch < entry.epoch {
            return ProducerCheck::FencedEpoch;
        }
        if h.producer_epoch > entry.epoch {
            // A new epoch restarts sequences at 0.
            if first != 0 {
                return ProducerCheck::OutOfOrder;
            }
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
            entry.batches.push((first, last, -1));
            return ProducerCheck::Append;
        }
        if let Some(&(_, _, off)) = entry
            .batches
            .iter()
            .find(|&&(f, l, _)| f == first && l == last)
        {
            return ProducerCheck::Duplicate {
                base_offset: (off >= 0).then_some(off),
            };
        }
        let expected = entry
            .batches
            .last()
            .map_or(0, |&(_, l, _)| if l == i32::MAX { 0 } else { l + 1 });
        if first != expected {
            return ProducerCheck::OutOfOrder;
        }
        entry.batches.push((first, last, -1));
        if entry.batches.len() > BATCHES_RETAINED {
            entry.batches.remove(0);
        }
        ProducerCheck::Append
    }

    /// Fills in where a recorded batch landed.
    pub fn set_offset(&mut self, h: &BatchHeader, base_offset: i64) {
        if let Some(e) = self.producers.get_mut(&h.producer_id) {
            let last = last_sequence(h);
            if let Some(b) = e
                .batches
                .iter_mut()
                .find(|b| b.0 == h.base_sequence && b.1 == last)
            {
                b.2 = base_offset;
            }
        }
    }

    /// Forgets a recorded batch whose append failed (so that a retry is not taken for a
    /// duplicate of nothing).
    pub fn forget(&mut self, h: &BatchHeader) {
        if let Some(e) = self.producers.get_mut(&h.producer_id) {
            let last = last_sequence(h);
            e.batches
                .retain(|b| !(b.0 == h.base_sequence && b.1 == last && b.2 < 0));
        }
    }

    /// Rebuilds state from a batch already in the log (recovery replay).
    pub fn replay(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 {
            return;
        }
        let last = last_sequence(h);
        let e = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch > e.epoch {
            e.batches.clear();
        }
        if h.producer_epoch >= e.epoch || e.batches.is_empty() {
            e.epoch = h.producer_epoch;
        }
        e.batches.push((h.base_sequence, last, h.base_offset));
        if e.batches.len() > BATCHES_RETAINED {
            e.batches.remove(0);
        }
    }

    pub fn encode_snapshot(&self, upto_offset: i64) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"SLPS");
        out.extend_from_slice(&upto_offset.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut pids: Vec<_> = self.producers.keys().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            let e = &self.producers[&pid];
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            let done: Vec<_> = e.batches.iter().filter(|b| b.2 >= 0).collect();
            out.push(done.len() as u8);
            for &&(f, l, o) in &done {
                out.extend_from_slice(&f.to_be_bytes());
                out.extend_from_slice(&l.to_be_bytes());
                out.extend_from_slice(&o.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a snapshot; `None` if damaged.
    pub fn decode_snapshot(bytes: &[u8]) -> Option<(ProducerStates, i64)> {
        if bytes.len() < 20 || &bytes[0..4] != b"SLPS" {
            return None;
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let upto = i64::from_be_bytes(body[4..12].try_into().ok()?);
        let count = u32::from_be_bytes(body[12..16].try_into().ok()?) as usize;
        let mut pos = 16;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = body.get(pos..pos + n)?;
            pos += n;
            Some(s)
        };
        let mut producers = crate::FastMap::default();
        for _ in 0..count {
            let pid = i64::from_be_bytes(take(8)?.try_into().ok()?);
            let epoch = i16::from_be_bytes(take(2)?.try_into().ok()?);
            let n = take(1)?[0] as usize;
            if n > BATCHES_RETAINED {
                return None;
            }
            let mut batches = Vec::with_capacity(n);
            for _ in 0..n {
                let f = i32::from_be_bytes(take(4)?.try_into().ok()?);
                let l = i32::from_be_bytes(take(4)?.try_into().ok()?);
                let o = i64::from_be_bytes(take(8)?.try_into().ok()?);
                batches.push((f, l, o));
            }
            producers.insert(pid, ProducerEntry { epoch, batches });
        }
        if pos != body.len() {
            return None;
        }
        Some((ProducerStates { producers }, upto))
    }
}

fn last_sequence(h: &BatchHeader) -> i32 {
    let last = h.base_sequence as i64 + h.last_offset_delta as i64;
    if last > i32::MAX as i64 {
        (last - i32::MAX as i64 - 1) as i32
    } else {
        last as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, Compression};

    fn header(pid: i64, epoch: i16, seq: i32, n: usize) -> BatchHeader {
        let mut b = BatchBuilder::new(Compression::None, 0).producer(pid, epoch, seq);
        for _ in 0..n {
            b.push(0, None, Some(b"x"), &[]);
        }
        BatchHeader::parse(&b.build()).unwrap()
    }

    #[test]
    fn sequences_duplicates_and_epochs() {
        let mut s = ProducerStates::default();
        let a = header(7, 0, 0, 3);
        assert_eq!(s.check_and_record(&a), ProducerCheck::Append);
        s.set_offset(&a, 100);
        assert_eq!(
            s.check_and_record(&a),
            ProducerCheck::Duplicate {
                base_offset: Some(100)
            }
        );
        assert_eq!(
            s.check_and_record(&header(7, 0, 4, 1)),
            ProducerCheck::OutOfOrder
        );
        let b = header(7, 0, 3, 2);
        assert_eq!(s.check_and_record(&b), ProducerCheck::Append);
        assert_eq!(
            s.check_and_record(&b),
            ProducerCheck::Duplicate { base_offset: None }
        );
        assert_eq!(
            s.check_and_record(&header(7, 1, 5, 1)),
            ProducerCheck::OutOfOrder
        );
        assert_eq!(
            s.check_and_record(&header(7, 1, 0, 1)),
            ProducerCheck::Append
        );
        assert_eq!(
            s.check_and_record(&header(7, 0, 5, 1)),
            ProducerCheck::FencedEpoch
        );
        assert_eq!(
            s.check_and_record(&header(8, 0, 3, 1)),
            ProducerCheck::OutOfOrder
        );
        assert_eq!(
            s.check_and_record(&header(-1, -1, -1, 1)),
            ProducerCheck::Append
        );
    }

    #[test]
    fn snapshot_round_trips() {
        let mut s = ProducerStates::default();
        for i in 0..8 {
            let mut h = header(9, 2, i * 2, 2);
            h.base_offset = i as i64 * 10;
            s.replay(&h);
        }
        let bytes = s.encode_snapshot(80);
        let (back, upto) = ProducerStates::decode_snapshot(&bytes).unwrap();
        assert_eq!((back, upto), (s, 80));
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(ProducerStates::decode_snapshot(&bad).is_none());
    }
}
