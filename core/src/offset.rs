//! Offsets: the position of a record in a partition log.

use std::fmt;

/// The offset of a record in a partition: dense, starting at 0, assigned by the log on append.
/// Kafka carries offsets as signed 64-bit integers; negative values never name a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub i64);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    pub fn value(self) -> i64 {
        self.0
    }

    /// The offset `n` records after this one.
    pub fn plus(self, n: i64) -> Offset {
        Offset(self.0 + n)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
