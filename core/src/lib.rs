//! Pure types and logic shared by every part of Sluice: the Kafka RecordBatch v2 format, offsets
//! and the errors that describe bad bytes.
//!
//! **Boundary.** No runtime, no files, no sockets. Everything here is a function of its inputs
//! (time, when it matters, is passed in), so the broker, the tools, the fuzz targets and the
//! tests all share one implementation of the bytes on the wire and on disk.
//!
//! **Architecture invariant.** Batch bytes are stored and served exactly as the producer sent
//! them. The only in-place edits are `baseOffset` and `partitionLeaderEpoch`, which are outside
//! the CRC; see [`batch`].

pub mod batch;
pub mod consumer;
pub mod consumer_group;
pub mod crc;
pub mod error;
pub mod group;
pub mod native;
pub mod offset;
pub mod producer;
pub mod seq_list;
pub mod seq_ranges;
pub mod seq_table;
pub mod slow_ops;
pub mod stream;
pub mod subject;

pub use batch::{BatchBuilder, BatchHeader, Compression, Record, RecordHeader, TimestampType};
pub use error::BatchError;

/// A hash map keyed by ahash (keyed per map, so still resistant to chosen keys) for the maps
/// looked up once or more per message: std's SipHash was 2–3% of a broker taking 1 KiB
/// publishes, spent hashing subjects.
pub type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
pub use offset::Offset;
