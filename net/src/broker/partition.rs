//! One partition on its owner shard: the log plus the idempotent-producer state.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;

use sluice_core::batch;
use sluice_core::producer::{ProducerCheck, ProducerStates};
use sluice_core::Offset;
use std::os::fd::{AsRawFd, OwnedFd};

use sluice_storage::{DmaDisk, FileRegion, Log, LogError, Stamp};

use super::config::TopicConfig;
use crate::kafka::errors as ec;

pub struct Partition {
    pub topic: String,
    pub index: i32,
    pub log: Log<DmaDisk>,
    dir: PathBuf,
    producers: RefCell<ProducerStates>,
    log_append_time: Cell<bool>,
    /// Buffered read descriptors of recently fetched segments, for sendfile (most recent last).
    read_fds: RefCell<Vec<(PathBuf, std::fs::File)>>,
}

/// How far past a sendfile fetch's region the kernel is asked to read ahead.
const FETCH_READ_AHEAD_BYTES: u64 = 8 << 20;

/// Segment descriptors kept open per partition for zero-copy fetch.
const READ_FDS_MAX: usize = 4;

/// The outcome of a produce to one partition: base offset and log-append time, or a Kafka
/// error code.
pub type ProduceResult = Result<(i64, i64), i16>;

const SNAPSHOT_FILE: &str = "producer.snapshot";

impl Partition {
    /// Opens the partition's log (recovering it) and rebuilds producer state: from the snapshot
    /// written at the last clean shutdown if it matches the log, else by replaying the log.
    pub async fn open(
        dir: PathBuf,
        topic: &str,
        index: i32,
        config: &TopicConfig,
        now_ms: u64,
    ) -> Result<Partition, LogError> {
        let log = Log::open(DmaDisk, &dir, config.log, now_ms).await?;
        let snapshot = std::fs::read(dir.join(SNAPSHOT_FILE))
            .ok()
            .and_then(|b| ProducerStates::decode_snapshot(&b));
        // A snapshot is only good for the log it was taken from; it is removed once loaded so
        // that a crash later never pairs it with a log that moved on.
        let _ = std::fs::remove_file(dir.join(SNAPSHOT_FILE));
        let (mut states, from) = match snapshot {
            Some((s, upto)) if upto == log.end_offset().0 => (s, upto),
            _ => (ProducerStates::default(), log.start_offset().0),
        };
        let mut from = Offset(from);
        while from < log.acked_end() {
            let bytes = log.read(from, 4 << 20).await?;
            if bytes.is_empty() {
                break;
            }
            let (found, _) = batch::split_batches(&bytes, false);
            for (h, _) in &found {
                states.replay(h);
                from = Offset(h.last_offset() + 1);
            }
        }
        Ok(Partition {
            topic: topic.to_string(),
            index,
            log,
            dir,
            producers: RefCell::new(states),
            log_append_time: Cell::new(config.log_append_time),
            read_fds: RefCell::new(Vec::new()),
        })
    }

    pub fn apply_config(&self, config: &TopicConfig) {
        self.log.set_config(config.log);
        self.log_append_time.set(config.log_append_time);
    }

    /// Appends one producer batch (Kafka allows exactly one per partition in a v2 produce).
    /// `bytes` may be a view of the request's frame: the leader epoch and a LogAppendTime are
    /// written into the log's own copy, and the CRC is checked once.
    pub async fn produce(&self, bytes: &[u8], now_ms: u64) -> ProduceResult {
        if bytes.len() > self.log.config().batch_bytes_max {
            return Err(ec::MESSAGE_TOO_LARGE);
        }
        let header = match batch::validate_for_append(bytes) {
            Ok(h) if h.total_bytes() == bytes.len() => h,
            Ok(_) => return Err(ec::INVALID_RECORD),
            Err(_) => {
                // More than one batch, or a damaged one.
                let (found, used) = batch::split_batches(bytes, true);
                return Err(if found.len() > 1 && used == bytes.len() {
                    ec::INVALID_RECORD
                } else {
                    ec::CORRUPT_MESSAGE
                });
            }
        };
        let stamp = Stamp {
            partition_leader_epoch: Some(0),
            log_append_time_ms: self.log_append_time.get().then_some(now_ms as i64),
        };
        let append_time = stamp.log_append_time_ms.unwrap_or(-1);
        match self.producers.borrow_mut().check_and_record(&header) {
            ProducerCheck::Append => {}
            ProducerCheck::Duplicate {
                base_offset: Some(o),
            } => return Ok((o, append_time)),
            ProducerCheck::Duplicate { base_offset: None } => return Err(ec::REQUEST_TIMED_OUT),
            ProducerCheck::FencedEpoch => return Err(ec::INVALID_PRODUCER_EPOCH),
            ProducerCheck::OutOfOrder => return Err(ec::OUT_OF_ORDER_SEQUENCE_NUMBER),
        }
        match self.log.append_stamped(now_ms, bytes, header, stamp).await {
            Ok(info) => {
                self.producers
                    .borrow_mut()
                    .set_offset(&header, info.base_offset.0);
                Ok((info.base_offset.0, append_time))
            }
            Err(e) => {
                self.producers.borrow_mut().forget(&header);
                Err(log_error_code(&e))
            }
        }
    }

    /// A descriptor of `region`'s segment for sendfile: a duplicate of a cached buffered fd,
    /// so the response owns (and closes) it even if the segment is deleted meanwhile. Asks the
    /// kernel to read the region and the next [`FETCH_READ_AHEAD_BYTES`] in, since O_DIRECT
    /// appends leave nothing in the page cache: a consumer catching up finds its next fetch
    /// already read while this one is sent, instead of sendfile waiting on the disk.
    pub fn region_fd(&self, region: &FileRegion) -> std::io::Result<OwnedFd> {
        use std::os::fd::AsFd;
        let mut fds = self.read_fds.borrow_mut();
        let i = match fds.iter().position(|(p, _)| *p == region.path) {
            Some(i) => i,
            None => {
                if fds.len() == READ_FDS_MAX {
                    fds.remove(0);
                }
                fds.push((region.path.clone(), std::fs::File::open(&region.path)?));
                fds.len() - 1
            }
        };
        let entry = fds.remove(i);
        let fd = entry.1.as_fd().try_clone_to_owned()?;
        fds.push(entry);
        // SAFETY: advisory call on a valid descriptor.
        unsafe {
            libc::posix_fadvise(
                fd.as_raw_fd(),
                region.pos as i64,
                (region.len + FETCH_READ_AHEAD_BYTES) as i64,
                libc::POSIX_FADV_WILLNEED,
            );
        }
        Ok(fd)
    }

    /// Syncs the log and writes the producer-state snapshot (clean shutdown).
    pub async fn close(&self, now_ms: u64) -> Result<(), LogError> {
        self.log.sync(now_ms).await?;
        let snapshot = self
            .producers
            .borrow()
            .encode_snapshot(self.log.end_offset().0);
        let tmp = self.dir.join("producer.snapshot.tmp");
        std::fs::write(&tmp, snapshot)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, self.dir.join(SNAPSHOT_FILE)))
            .map_err(|e| LogError::Io {
                op: "write producer snapshot",
                path: tmp.display().to_string(),
                source: e,
            })
    }
}

pub fn log_error_code(e: &LogError) -> i16 {
    match e {
        LogError::InvalidBatch(_) => ec::CORRUPT_MESSAGE,
        LogError::BatchTooLarge { .. } => ec::MESSAGE_TOO_LARGE,
        LogError::OffsetOutOfRange { .. } => ec::OFFSET_OUT_OF_RANGE,
        LogError::Poisoned { .. } | LogError::Io { .. } | LogError::Corrupt { .. } => {
            ec::KAFKA_STORAGE_ERROR
        }
    }
}
