//! Fetch read-ahead for consumers replaying a backlog from disk.
//!
//! A Kafka consumer keeps one fetch in flight per broker (librdkafka, the Java client): it
//! asks for the next region only once the last response is in. A fetch of data older than the
//! log's in-memory tail waits for its O_DIRECT reads, so the device idled while the response
//! travelled and the client parsed it, and the client idled while the device read. After a
//! fetch read a region from disk, the region the consumer will ask for next (it continues at
//! the first batch the region cut, with the same size cap) is read in the background, and the
//! one after it once that is read ([`READ_AHEAD_DEPTH`]), so the next fetch finds its region
//! read. The page cache's read-ahead, which this replaces for O_DIRECT segments, does the same
//! for buffered files.
//!
//! Per shard, bounded: at most [`READ_AHEAD_BUDGET_BYTES`] of regions read or being read, the
//! least recently used consumer's dropped first (dropping a read in flight cancels it). A
//! region is used only by a fetch for exactly its partition, offset and size cap, and only
//! while its offset is still in the log (retention or DeleteRecords may have moved the start
//! past it since).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use glommio::Task;
use sluice_core::batch;
use sluice_core::Offset;
use sluice_storage::LogError;

use super::partition::Partition;

/// Regions read ahead (or being read) per shard, at most: a few consumers' worth of
/// `max.partition.fetch.bytes` (1 MiB by default in Kafka's clients) over a topic's partitions.
pub const READ_AHEAD_BUDGET_BYTES: usize = 64 << 20;

/// Regions read ahead of one consumer of one partition: two, so that the device reads the one
/// after next while the next is being sent (one left the device idle about half the time).
pub const READ_AHEAD_DEPTH: usize = 2;

type Read = Result<Option<Vec<u8>>, LogError>;

/// Where the region after a region starts, once the region is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum After {
    Reading,
    At(i64),
    /// Not cut by the cap, or nothing acknowledged after it: the consumer has caught up.
    End,
}

struct Region {
    offset: i64,
    read: Task<Read>,
    after: Rc<Cell<After>>,
}

/// Consecutive regions of one partition for one fetch size cap (one consumer): the front is
/// what its next fetch asks for.
struct Stream {
    part: Rc<Partition>,
    max_bytes: usize,
    regions: VecDeque<Region>,
}

impl Stream {
    fn of(&self, p: &Partition) -> bool {
        self.part.topic == p.topic && self.part.index == p.index
    }
}

struct Inner {
    /// Least recently used first.
    streams: RefCell<Vec<Stream>>,
    /// Bytes of the regions held or being read (each counted at its cap).
    held: Cell<usize>,
    budget: usize,
    this: Weak<Inner>,
}

pub struct ReadAhead {
    inner: Rc<Inner>,
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead::with_budget(READ_AHEAD_BUDGET_BYTES)
    }
}

impl ReadAhead {
    pub fn with_budget(budget: usize) -> ReadAhead {
        ReadAhead {
            inner: Rc::new_cyclic(|this| Inner {
                streams: RefCell::default(),
                held: Cell::new(0),
                budget,
                this: this.clone(),
            }),
        }
    }

    /// The region read ahead for exactly this fetch, if any (removed: a region serves one
    /// fetch). Regions of the partition at or behind `offset` that do not serve it are
    /// dropped (that consumer has moved on, or changed its cap); those further on are kept
    /// (another consumer's).
    pub fn take(&self, p: &Partition, offset: i64, max_bytes: usize) -> Option<Task<Read>> {
        let inner = &self.inner;
        let start = p.log.start_offset().0;
        let mut streams = inner.streams.borrow_mut();
        let mut found = None;
        for st in streams.iter_mut().filter(|st| st.of(p)) {
            while let Some(r) = st.regions.front() {
                if r.offset > offset && r.offset >= start {
                    break;
                }
                let r = st.regions.pop_front().expect("front exists");
                inner.held.set(inner.held.get() - st.max_bytes);
                if found.is_none() && r.offset == offset && st.max_bytes == max_bytes {
                    found = (offset >= start).then_some(r.read);
                }
            }
        }
        streams.retain(|st| !st.regions.is_empty());
        found
    }

    /// After a fetch read `region` (the bytes at `offset` onward, up to `max_bytes`) from disk:
    /// when it was cut by the size cap and more is acknowledged, makes sure the regions the
    /// consumer's next fetches will ask for are being read.
    pub fn follow(&self, p: &Rc<Partition>, offset: i64, max_bytes: usize, region: &[u8]) {
        let inner = &self.inner;
        if max_bytes > inner.budget / (2 * READ_AHEAD_DEPTH) {
            return;
        }
        let Some(next) = region_after(p, offset, max_bytes, region) else {
            return;
        };
        let mut streams = inner.streams.borrow_mut();
        let at = streams.iter().position(|st| {
            st.of(p)
                && st.max_bytes == max_bytes
                && st.regions.front().map(|r| r.offset) == Some(next)
        });
        let mut st = match at {
            Some(i) => streams.remove(i),
            None => {
                let mut st = Stream {
                    part: p.clone(),
                    max_bytes,
                    regions: VecDeque::new(),
                };
                inner.read(&mut streams, &mut st, next);
                st
            }
        };
        inner.top_up(&mut streams, &mut st);
        if !st.regions.is_empty() {
            streams.push(st);
        }
    }

    /// Regions held or being read (for tests).
    pub fn len(&self) -> usize {
        self.inner
            .streams
            .borrow()
            .iter()
            .map(|st| st.regions.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.streams.borrow().is_empty()
    }
}

/// Where the consumer that read `region` (from `offset`, capped at `max_bytes`) fetches next:
/// at the first batch the cap cut. `None` when the cap did not cut it or nothing acknowledged
/// follows (the consumer has caught up).
fn region_after(p: &Partition, offset: i64, max_bytes: usize, region: &[u8]) -> Option<i64> {
    if region.len() < max_bytes {
        return None;
    }
    batch::end_of_whole_batches(region).filter(|&n| n > offset && n < p.log.acked_end().0)
}

impl Inner {
    /// Reads ahead after the stream's last region while it is shorter than the depth and
    /// where the last region ends is known (a region being read tops its stream up when done).
    fn top_up(&self, streams: &mut Vec<Stream>, st: &mut Stream) {
        while st.regions.len() < READ_AHEAD_DEPTH {
            let Some(last) = st.regions.back() else {
                return;
            };
            match last.after.get() {
                After::At(next) if next < st.part.log.acked_end().0 => self.read(streams, st, next),
                _ => return,
            }
        }
    }

    /// Starts reading the region at `offset` into `st`, within the budget (the least recently
    /// used other streams give way).
    fn read(&self, streams: &mut Vec<Stream>, st: &mut Stream, offset: i64) {
        while self.held.get() + st.max_bytes > self.budget && !streams.is_empty() {
            let old = streams.remove(0);
            self.held
                .set(self.held.get() - old.max_bytes * old.regions.len());
        }
        if self.held.get() + st.max_bytes > self.budget {
            return;
        }
        let (part, max, this) = (st.part.clone(), st.max_bytes, self.this.clone());
        let after = Rc::new(Cell::new(After::Reading));
        let done = after.clone();
        let read = glommio::spawn_local(async move {
            let read = part.log.read_region_bytes(Offset(offset), max).await;
            let next = match &read {
                Ok(Some(r)) => region_after(&part, offset, max, r),
                _ => None,
            };
            done.set(next.map_or(After::End, After::At));
            if let Some(inner) = this.upgrade() {
                inner.read_done(&part, max, offset);
            }
            read
        });
        self.held.set(self.held.get() + st.max_bytes);
        st.regions.push_back(Region {
            offset,
            read,
            after,
        });
    }

    /// A region finished reading: its stream may read further ahead.
    fn read_done(&self, p: &Partition, max_bytes: usize, offset: i64) {
        let mut streams = self.streams.borrow_mut();
        let at = streams.iter().position(|st| {
            st.of(p)
                && st.max_bytes == max_bytes
                && st.regions.back().map(|r| r.offset) == Some(offset)
        });
        if let Some(i) = at {
            let mut st = streams.remove(i);
            self.top_up(&mut streams, &mut st);
            streams.push(st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::config::TopicConfig;
    use sluice_core::batch::{BatchBuilder, Compression};
    use sluice_storage::{run_local, LogConfig};

    /// A log of 40 batches of 4 records of 1 KiB: regions of 16 KiB cut every fourth batch.
    async fn partition(dir: &std::path::Path) -> Rc<Partition> {
        let config = TopicConfig {
            log: LogConfig::default(),
            log_append_time: false,
        };
        let p = Partition::open(dir.to_path_buf(), "t", 0, &config, 1)
            .await
            .unwrap();
        for _ in 0..40 {
            let mut b = BatchBuilder::new(Compression::None, 1);
            for i in 0..4 {
                b.push(i, None, Some(&[i as u8; 1024]), &[]);
            }
            p.produce(&b.build(), 1).await.unwrap();
        }
        p.log.sync(1).await.unwrap();
        assert_eq!(p.log.acked_end(), Offset(160));
        Rc::new(p)
    }

    async fn region(p: &Partition, offset: i64, max: usize) -> Vec<u8> {
        p.log
            .read_region_bytes(Offset(offset), max)
            .await
            .unwrap()
            .unwrap()
    }

    /// Lets the reads in flight finish (and chain).
    async fn settle() {
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
    }

    #[test]
    fn the_next_regions_are_read_ahead_and_serve_exactly_those_fetches() {
        let dir = std::env::temp_dir().join(format!("sluice-read-ahead-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        run_local("read-ahead-test", async {
            let p = partition(&dir).await;
            let ra = ReadAhead::with_budget(64 << 10);
            let max = 10_000;
            let first = region(&p, 0, max).await;
            assert_eq!(first.len(), max, "the region is cut by the cap");
            let next = batch::end_of_whole_batches(&first).unwrap();
            assert_eq!(next, 8, "two whole batches of four records fit");

            // A region that was not cut (the end of the log) is not followed.
            let last = region(&p, 156, max).await;
            ra.follow(&p, 156, max, &last);
            assert!(ra.is_empty());

            ra.follow(&p, 0, max, &first);
            assert_eq!(ra.len(), 1);
            assert!(ra.take(&p, next, max + 1).is_none(), "another cap: no hit");
            assert!(ra.is_empty(), "...and the stale region is dropped");

            // Read ahead two regions deep: the second starts once the first is read.
            ra.follow(&p, 0, max, &first);
            settle().await;
            assert_eq!(ra.len(), READ_AHEAD_DEPTH);
            let ahead = ra
                .take(&p, next, max)
                .expect("the fetch that follows is a hit");
            let got = ahead.await.unwrap().unwrap();
            assert_eq!(got, region(&p, next, max).await, "the same bytes as a read");
            assert_eq!(ra.len(), 1, "a region serves one fetch");
            ra.follow(&p, next, max, &got);
            settle().await;
            assert_eq!(ra.len(), 2, "topped up to the depth again");
            let second = ra.take(&p, 16, max).expect("the region after is a hit too");
            assert_eq!(second.await.unwrap().unwrap(), region(&p, 16, max).await);

            // Other consumers' streams: 64 KiB holds six regions of 10 000 bytes, so the
            // least recently used stream (the one at 24) gives way.
            for at in [40, 80, 120] {
                ra.follow(&p, at, max, &region(&p, at, max).await);
                settle().await;
            }
            assert_eq!(ra.len(), 6);
            assert!(ra.take(&p, 24, max).is_none(), "an evicted region");
            assert_eq!(ra.len(), 6, "regions further on stay (another consumer's)");
            let hit = ra.take(&p, 48, max).expect("another consumer's region");
            assert_eq!(hit.await.unwrap().unwrap(), region(&p, 48, max).await);
            assert_eq!(ra.len(), 5);

            // Once retention or DeleteRecords moved the log start past it, a region is not used.
            p.log.delete_records_before(Offset(130)).await.unwrap();
            assert!(ra.take(&p, 128, max).is_none());
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
