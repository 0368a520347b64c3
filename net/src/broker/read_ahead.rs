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

#[derive(Default)]
pub struct ReadAhead {
    /// Oldest first.
    entries: RefCell<VecDeque<Entry>>,
    /// The sum of the entries' `max_bytes`.
    held: Cell<usize>,
}

impl ReadAhead {
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
        if region.len() < max_bytes || max_bytes > READ_AHEAD_BUDGET_BYTES / 4 {
            return;
        }
        let Some(next) = batch::end_of_whole_batches(region) else {
            return;
        };
        if next <= offset || next >= p.log.acked_end().0 {
            return;
        }
        let mut entries = self.entries.borrow_mut();
        while self.held.get() + max_bytes > READ_AHEAD_BUDGET_BYTES {
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
