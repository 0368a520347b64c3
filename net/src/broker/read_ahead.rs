//! Fetch read-ahead for consumers replaying a backlog from disk.
//!
//! A Kafka consumer keeps one fetch in flight per broker (librdkafka, the Java client): it
//! asks for the next region only once the last response is in. A fetch of data older than the
//! log's in-memory tail waits for its O_DIRECT reads, so the device idled while the response
//! travelled and the client parsed it, and the client idled while the device read. After a
//! fetch read a region from disk, the region the consumer will ask for next (it continues at
//! the first batch the region cut, with the same size cap) is read in the background, so the
//! next fetch finds it read. The page cache's read-ahead, which this replaces for O_DIRECT
//! segments, does the same for buffered files.
//!
//! Per shard, bounded: at most [`READ_AHEAD_BUDGET_BYTES`] of regions read or being read, the
//! oldest dropped first (dropping a read in flight cancels it). A region is used only by a
//! fetch for exactly its partition, offset and size cap, and only while its offset is still
//! in the log (retention or DeleteRecords may have moved the start past it since).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use glommio::Task;
use sluice_core::batch;
use sluice_core::Offset;
use sluice_storage::LogError;

use super::partition::Partition;

/// Regions read ahead (or being read) per shard, at most: a few consumers' worth of
/// `max.partition.fetch.bytes` (1 MiB by default in Kafka's clients) over a topic's partitions.
pub const READ_AHEAD_BUDGET_BYTES: usize = 64 << 20;

type Read = Result<Option<Vec<u8>>, LogError>;

struct Entry {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    read: Task<Read>,
}

pub struct ReadAhead {
    /// Oldest first.
    entries: RefCell<VecDeque<Entry>>,
    /// The sum of the entries' `max_bytes`.
    held: Cell<usize>,
    budget: usize,
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead::with_budget(READ_AHEAD_BUDGET_BYTES)
    }
}

impl ReadAhead {
    pub fn with_budget(budget: usize) -> ReadAhead {
        ReadAhead {
            entries: RefCell::default(),
            held: Cell::new(0),
            budget,
        }
    }

    /// The region read ahead for exactly this fetch, if any (removed: a region serves one
    /// fetch). Entries of the same partition behind `offset` are dropped: that consumer has
    /// moved past them.
    pub fn take(&self, p: &Partition, offset: i64, max_bytes: usize) -> Option<Task<Read>> {
        let start = p.log.start_offset().0;
        let mut entries = self.entries.borrow_mut();
        let mut found = None;
        let mut i = 0;
        while i < entries.len() {
            let e = &entries[i];
            let ours = e.topic == p.topic && e.partition == p.index;
            // Kept: other partitions', and this one's further on (another consumer's).
            if !ours || (e.offset > offset && e.offset >= start) {
                i += 1;
                continue;
            }
            let e = entries.remove(i).expect("index in range");
            self.held.set(self.held.get() - e.max_bytes);
            if found.is_none() && e.offset == offset && e.max_bytes == max_bytes && offset >= start
            {
                found = Some(e.read);
            }
        }
        found
    }

    /// After a fetch read `region` (the bytes at `offset` onward, up to `max_bytes`) from disk:
    /// when it was cut by the size cap and more is acknowledged, starts reading the region the
    /// consumer's next fetch will ask for.
    pub fn follow(&self, p: &Rc<Partition>, offset: i64, max_bytes: usize, region: &[u8]) {
        if region.len() < max_bytes || max_bytes > self.budget / 4 {
            return;
        }
        let Some(next) = batch::end_of_whole_batches(region) else {
            return;
        };
        if next <= offset || next >= p.log.acked_end().0 {
            return;
        }
        let mut entries = self.entries.borrow_mut();
        while self.held.get() + max_bytes > self.budget {
            let Some(old) = entries.pop_front() else {
                break;
            };
            self.held.set(self.held.get() - old.max_bytes);
        }
        let part = p.clone();
        let read = glommio::spawn_local(async move {
            part.log.read_region_bytes(Offset(next), max_bytes).await
        });
        entries.push_back(Entry {
            topic: p.topic.clone(),
            partition: p.index,
            offset: next,
            max_bytes,
            read,
        });
        self.held.set(self.held.get() + max_bytes);
    }

    /// Regions held or being read (for tests and stats).
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
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
            p.produce(b.build(), 1).await.unwrap();
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

    #[test]
    fn the_next_region_is_read_ahead_and_serves_exactly_that_fetch() {
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
            ra.follow(&p, 0, max, &first);
            let ahead = ra.take(&p, next, max).expect("the fetch that follows is a hit");
            let got = ahead.await.unwrap().unwrap();
            assert_eq!(got, region(&p, next, max).await, "the same bytes as a read");
            assert!(ra.is_empty(), "a region serves one fetch");

            // The budget holds at most 64 KiB / 10 000 = 6 regions: the oldest go first.
            for offset in (0..40).step_by(4) {
                let r = region(&p, offset, max).await;
                ra.follow(&p, offset, max, &r);
            }
            // Held: the regions at 24, 28, .., 44 (each follow reads from two batches on).
            assert_eq!(ra.len(), 6);
            assert!(ra.take(&p, 20, max).is_none(), "an evicted region");
            assert_eq!(ra.len(), 6, "regions further on stay (another consumer's)");
            assert!(ra.take(&p, 30, max).is_none());
            assert_eq!(ra.len(), 4, "regions behind a fetch are dropped");

            // Once retention or DeleteRecords moved the log start past it, a region is not used.
            ra.follow(&p, 100, max, &region(&p, 100, max).await);
            let next = batch::end_of_whole_batches(&region(&p, 100, max).await).unwrap();
            p.log.delete_records_before(Offset(next + 1)).await.unwrap();
            assert!(ra.take(&p, next, max).is_none());
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
