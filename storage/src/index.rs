//! Sparse indexes of one segment: offset → file position and timestamp → offset.
//!
//! An entry is added every `index.interval.bytes` of log, as in Kafka. In memory while the
//! segment is active; written next to the segment when it is sealed, in this format:
//!
//! ```text
//!  0   4  magic "SLIX" (offset index) or "SLTI" (time index)
//!  4   2  version (1)
//!  6   4  entry count N
//!  10  8  segment size in bytes the index describes
//!  18  8  last offset in the segment
//!  26  8  max timestamp in the segment
//!  34  N * entry   offset index: rel_offset u32, position u32
//!                  time index:   timestamp i64, rel_offset u32
//!  ..  4  CRC-32C of everything before it
//! ```
//! An index that fails any check is rebuilt by scanning its segment.

/// In-memory sparse indexes of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    /// (offset relative to the segment base, byte position of the batch), increasing.
    pub offsets: Vec<(u32, u32)>,
    /// (max timestamp so far, offset relative to base of the batch that reached it), increasing.
    pub times: Vec<(i64, u32)>,
    bytes_since_entry: u32,
}

/// What an index file says about its segment besides the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSummary {
    pub segment_bytes: u64,
    pub last_offset: i64,
    pub max_timestamp: i64,
}

const OFFSET_MAGIC: &[u8; 4] = b"SLIX";
const TIME_MAGIC: &[u8; 4] = b"SLTI";
const HEADER_BYTES: usize = 34;

impl SegmentIndex {
    /// Records a batch of `len` bytes at `pos` whose base offset is `base_rel`;
    /// `max_timestamp` is the segment's max timestamp including this batch.
    pub fn on_batch(
        &mut self,
        base_rel: u32,
        pos: u32,
        len: u32,
        max_timestamp: i64,
        interval_bytes: u32,
    ) {
        if self.offsets.is_empty() || self.bytes_since_entry >= interval_bytes {
            self.offsets.push((base_rel, pos));
            if self.times.last().is_none_or(|&(ts, _)| max_timestamp > ts) {
                self.times.push((max_timestamp, base_rel));
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry = self.bytes_since_entry.saturating_add(len);
    }

    /// Position to start scanning at for relative offset `rel`: the greatest entry at or below it.
    pub fn position_for(&self, rel: u32) -> u32 {
        match self.offsets.partition_point(|&(o, _)| o <= rel) {
            0 => 0,
            i => self.offsets[i - 1].1,
        }
    }

    /// When a batch starting exactly at relative offset `rel` is indexed: its position, and
    /// the position of the next indexed batch (where it ends at the latest), if any.
    pub fn batch_at(&self, rel: u32) -> Option<(u32, Option<u32>)> {
        let i = self.offsets.partition_point(|&(o, _)| o < rel);
        match self.offsets.get(i) {
            Some(&(o, pos)) if o == rel => Some((pos, self.offsets.get(i + 1).map(|e| e.1))),
            _ => None,
        }
    }

    /// Relative offset to start scanning at for the first record with timestamp >= `ts`: every
    /// batch before the returned one has only smaller timestamps.
    pub fn offset_for_timestamp(&self, ts: i64) -> u32 {
        match self.times.partition_point(|&(t, _)| t < ts) {
            0 => 0,
            i => self.times[i - 1].1,
        }
    }

    /// Drops entries at or past relative offset `rel` (after a truncation).
    pub fn truncate(&mut self, rel: u32) {
        self.offsets.retain(|&(o, _)| o < rel);
        self.times.retain(|&(_, o)| o < rel);
        self.bytes_since_entry = u32::MAX;
    }

    pub fn encode_offsets(&self, summary: IndexSummary) -> Vec<u8> {
        let mut out = header(OFFSET_MAGIC, self.offsets.len(), summary);
        for &(o, p) in &self.offsets {
            out.extend_from_slice(&o.to_be_bytes());
            out.extend_from_slice(&p.to_be_bytes());
        }
        seal(out)
    }

    pub fn encode_times(&self, summary: IndexSummary) -> Vec<u8> {
        let mut out = header(TIME_MAGIC, self.times.len(), summary);
        for &(t, o) in &self.times {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&o.to_be_bytes());
        }
        seal(out)
    }

    /// Decodes both index files; `None` if either is damaged or they disagree.
    pub fn decode(offsets: &[u8], times: &[u8]) -> Option<(SegmentIndex, IndexSummary)> {
        let (summary, offset_entries) = open(offsets, OFFSET_MAGIC, 8)?;
        let (time_summary, time_entries) = open(times, TIME_MAGIC, 12)?;
        if summary != time_summary {
            return None;
        }
        let offsets: Vec<(u32, u32)> = offset_entries
            .chunks_exact(8)
            .map(|c| (be_u32(&c[0..4]), be_u32(&c[4..8])))
            .collect();
        let times: Vec<(i64, u32)> = time_entries
            .chunks_exact(12)
            .map(|c| {
                let ts = i64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                (ts, be_u32(&c[8..12]))
            })
            .collect();
        let increasing = offsets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
            && times
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
            && offsets
                .iter()
                .all(|&(_, p)| (p as u64) < summary.segment_bytes.max(1));
        if !increasing {
            return None;
        }
        Some((
            SegmentIndex {
                offsets,
                times,
                bytes_since_entry: u32::MAX,
            },
            summary,
        ))
    }
}

fn header(magic: &[u8; 4], count: usize, s: IndexSummary) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + count * 12 + 4);
    out.extend_from_slice(magic);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(count as u32).to_be_bytes());
    out.extend_from_slice(&s.segment_bytes.to_be_bytes());
    out.extend_from_slice(&s.last_offset.to_be_bytes());
    out.extend_from_slice(&s.max_timestamp.to_be_bytes());
    out
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn open<'a>(
    bytes: &'a [u8],
    magic: &[u8; 4],
    entry_bytes: usize,
) -> Option<(IndexSummary, &'a [u8])> {
    if bytes.len() < HEADER_BYTES + 4 || &bytes[0..4] != magic || bytes[4..6] != 1u16.to_be_bytes()
    {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != be_u32(crc) {
        return None;
    }
    let count = be_u32(&body[6..10]) as usize;
    let entries = &body[HEADER_BYTES..];
    if entries.len() != count.checked_mul(entry_bytes)? {
        return None;
    }
    let summary = IndexSummary {
        segment_bytes: u64::from_be_bytes(body[10..18].try_into().ok()?),
        last_offset: i64::from_be_bytes(body[18..26].try_into().ok()?),
        max_timestamp: i64::from_be_bytes(body[26..34].try_into().ok()?),
    };
    Some((summary, entries))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        let mut idx = SegmentIndex::default();
        let mut pos = 0;
        for i in 0..100u32 {
            idx.on_batch(i * 10, pos, 1000, 1_000 + (i as i64 % 7) * i as i64, 4096);
            pos += 1000;
        }
        idx
    }

    #[test]
    fn lookups_return_the_entry_at_or_below() {
        let idx = sample();
        assert_eq!(idx.offsets[0], (0, 0));
        assert_eq!(idx.offsets[1], (50, 5000));
        assert_eq!(idx.position_for(0), 0);
        assert_eq!(idx.position_for(49), 0);
        assert_eq!(idx.position_for(50), 5000);
        assert_eq!(idx.position_for(57), 5000);
        assert_eq!(idx.batch_at(50), Some((5000, Some(10_000))));
        assert_eq!(idx.batch_at(0), Some((0, Some(5000))));
        assert_eq!(idx.batch_at(57), None);
        assert_eq!(idx.batch_at(10), None, "a batch, but not indexed");
        let last = *idx.offsets.last().unwrap();
        assert_eq!(idx.batch_at(last.0), Some((last.1, None)));
        assert_eq!(idx.offset_for_timestamp(i64::MIN), 0);
        let last = *idx.times.last().unwrap();
        assert!(idx.offset_for_timestamp(last.0 + 1) == last.1);
    }

    #[test]
    fn files_round_trip_and_damage_is_detected() {
        let idx = sample();
        let s = IndexSummary {
            segment_bytes: 100_000,
            last_offset: 999,
            max_timestamp: 5,
        };
        let (o, t) = (idx.encode_offsets(s), idx.encode_times(s));
        let (back, summary) = SegmentIndex::decode(&o, &t).unwrap();
        assert_eq!(
            (back.offsets, back.times, summary),
            (idx.offsets, idx.times, s)
        );
        for at in [0, 7, 20, o.len() / 2, o.len() - 1] {
            let mut bad = o.clone();
            bad[at] ^= 1;
            assert!(SegmentIndex::decode(&bad, &t).is_none(), "flip at {at}");
        }
        assert!(SegmentIndex::decode(&o[..o.len() - 3], &t).is_none());
        assert!(SegmentIndex::decode(&o, &o).is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
                                       b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = SegmentIndex::decode(&a, &b);
        }
    }
}
