//! Errors of the partition log.

use std::io;

use sluice_core::{BatchError, Offset};
use thiserror::Error;

/// What can go wrong on a partition log. Expected failures only: broken invariants are asserts.
#[derive(Debug, Error)]
pub enum LogError {
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("batch of {bytes} bytes exceeds max.message.bytes {max_bytes}")]
    BatchTooLarge { bytes: usize, max_bytes: usize },
    #[error("offset {offset} out of range [{start}, {end}]")]
    OffsetOutOfRange {
        offset: Offset,
        start: Offset,
        end: Offset,
    },
    #[error("log {dir} is poisoned by an earlier I/O failure ({cause}); it accepts no writes")]
    Poisoned { dir: String, cause: String },
    #[error("{op} failed on {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("corrupt data in {segment} at byte {pos}: {reason}")]
    Corrupt {
        segment: String,
        pos: u64,
        reason: String,
    },
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: io::Error) -> LogError {
        LogError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}
