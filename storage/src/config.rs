//! Per-log configuration, with Kafka's names in the docs of each field.

/// When appended data is made durable (fdatasync) and when an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// An append completes only after an fdatasync covering it. One fdatasync covers every batch
    /// that arrived while the previous one ran (group commit).
    Always,
    /// Appends complete once written; an fdatasync runs at most every `interval_ms`
    /// (Kafka's `flush.ms`), driven by appends and by [`crate::Log::tick`].
    Interval { interval_ms: u64 },
    /// Appends complete once written; fdatasync only when a segment is sealed or the log closes.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => match other.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(interval_ms)) => Ok(FsyncPolicy::Interval { interval_ms }),
                _ => Err(format!(
                    "invalid fsync policy '{s}': expected always, never or interval:MS"
                )),
            },
        }
    }
}

/// Configuration of one partition log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll to a new segment before the active one would exceed this size.
    pub segment_bytes_max: u64,
    /// `segment.ms`: roll a non-empty active segment this long after its first append.
    pub segment_age_ms_max: Option<u64>,
    /// `retention.ms`: delete sealed segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// `retention.bytes`: delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// `max.message.bytes`: the largest batch accepted.
    pub batch_bytes_max: usize,
    /// `index.interval.bytes`: bytes of log between two sparse index entries.
    pub index_interval_bytes: u32,
    /// Bytes an append may buffer ahead of the disk before appenders wait (backpressure).
    /// A single batch larger than this is still accepted, alone.
    pub write_buffer_bytes_max: usize,
    pub fsync: FsyncPolicy,
    /// Bytes of the most recently appended batches kept in memory for tailing readers (0:
    /// none); reads of older data go to the disk.
    pub tail_cache_bytes: usize,
    /// Zeroes written ahead of the active segment's end, at most this far (0: none). Appends
    /// then overwrite allocated blocks inside the file, so under `fsync = always` an
    /// fdatasync has no size or extent change to commit, and io_uring need not punt the
    /// O_DIRECT write to a worker thread. The stretch grows with the segment (from 64 KiB),
    /// so a quiet log preallocates little; a round writing more than a quarter of this takes
    /// none (it would outrun them); a roll cuts the zeroes off.
    pub preallocate_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_age_ms_max: Some(7 * 24 * 3600 * 1000),
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            batch_bytes_max: 1024 * 1024 + 12,
            index_interval_bytes: 4096,
            write_buffer_bytes_max: 4 << 20,
            fsync: FsyncPolicy::Always,
            tail_cache_bytes: 4 << 20,
            // 256 KiB: a stretch is written beside a round's data, and a 1 MiB one took 3–5 ms
            // on the device here, stalling that round and its neighbours' (Kafka e2e p99 after
            // a burst of big batches 6–8 ms with 1 MiB stretches, 3.9–4.1 ms with 256 KiB).
            // Stretches large enough to cover a saturated produce's ~2 MB rounds (up to 8 MiB,
            // not waited for) saved the io-wq thread but wrote every byte twice: no faster
            // (BENCHMARKS.md, twenty-third run); such rounds now take no zeroes at all
            // (twenty-fourth run).
            preallocate_bytes: 256 << 10,
        }
    }
}
