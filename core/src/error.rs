//! Errors that describe bytes that do not form a valid record batch.

use thiserror::Error;

/// Why a byte range is not a valid Kafka RecordBatch v2. Every variant is an expected failure
/// (bad client bytes, a torn disk write), never a broken invariant.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch too short: {len} bytes, need at least {need}")]
    TooShort { len: usize, need: usize },
    #[error("batch length field says {declared} bytes but {actual} are present")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("invalid batch length field {batch_length}")]
    InvalidLength { batch_length: i32 },
    #[error("unsupported magic byte {magic} (only RecordBatch v2 is supported)")]
    UnsupportedMagic { magic: i8 },
    #[error("crc mismatch: expected {expected:#010x}, got {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("invalid record count {count} with last offset delta {last_offset_delta}")]
    InvalidRecordCount { count: i32, last_offset_delta: i32 },
    #[error("unknown compression codec {codec}")]
    UnknownCompression { codec: u8 },
    #[error("decompression failed ({codec}): {reason}")]
    Decompress { codec: &'static str, reason: String },
    #[error("decompressed batch exceeds {limit_bytes} bytes")]
    DecompressedTooLarge { limit_bytes: usize },
    #[error("malformed record {index}: {reason}")]
    MalformedRecord { index: usize, reason: &'static str },
}
