//! The partition log: everything Sluice stores goes through a [`Log`].
//!
//! A log is a directory of segments, each a file `<base_offset>.log` of Kafka RecordBatch v2
//! bytes exactly as producers sent them (with the broker's offsets written in), plus a sparse
//! offset index (`.index`) and time index (`.timeindex`) written when the segment is sealed.
//!
//! **Boundary.** The log logic ([`log`]) talks to storage only through the [`disk::Disk`]
//! trait. [`dma::DmaDisk`] implements it with glommio's O_DIRECT files on io_uring (the only
//! glommio code in this crate); [`sim::SimDisk`] implements it in memory and can tear unsynced
//! writes and fail fsyncs, so tests run the very same log code through crashes and disk faults
//! without a runtime.
//!
//! **Invariants.** Offsets are dense and assigned here. A batch is acknowledged, and visible to
//! readers, only once it is written (and, under [`FsyncPolicy::Always`], fdatasynced). A failed
//! write or fsync poisons the log. Recovery never serves a byte past the first batch that fails
//! its CRC.

pub mod config;
pub mod disk;
pub mod dma;
pub mod error;
pub mod index;
pub mod log;

pub mod notify;
pub mod sim;
pub mod tail_cache;

pub use config::{FsyncPolicy, LogConfig};
pub use dma::{run_local, wall_clock_ms, DmaDisk};
pub use error::LogError;
pub use log::{AppendInfo, FileRegion, Log, Stamp, TimestampHit};
pub use sim::SimDisk;
