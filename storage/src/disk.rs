//! The disk seen by the log: the only place where its I/O leaves pure code. Two
//! implementations: [`crate::dma::DmaDisk`] (glommio, O_DIRECT, io_uring) for the broker and
//! [`crate::sim::SimDisk`] (memory, with torn writes and failing fsyncs on demand) for tests.

use std::io;
use std::path::Path;

/// O_DIRECT alignment of file positions, lengths and buffers.
pub const ALIGN: usize = 4096;

pub fn align_down(v: u64) -> u64 {
    v & !(ALIGN as u64 - 1)
}

pub fn align_up(v: u64) -> u64 {
    align_down(v + ALIGN as u64 - 1)
}

/// A buffer suitable for O_DIRECT writes: aligned in memory, its length a multiple of [`ALIGN`].
pub trait IoBuf {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Shrinks the buffer to its first `len` bytes (`len` aligned).
    fn trim(&mut self, len: usize);
}

#[allow(async_fn_in_trait)]
pub trait Disk {
    type File: DiskFile;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`.
    async fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` for O_DIRECT reads and writes, creating it if missing. With `dsync`, every
    /// write completes only once it is durable, with whatever metadata reading it back needs
    /// (O_DSYNC): the write and its flush are one request, no separate fdatasync.
    async fn open(&self, path: &Path, dsync: bool) -> io::Result<Self::File>;
    async fn remove(&self, path: &Path) -> io::Result<()>;
    /// Reads a whole small file; `None` when it does not exist.
    async fn read_small(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Replaces `path` atomically and durably (temporary file, fdatasync, rename, directory sync).
    async fn write_small_atomic(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()>;
    /// Makes creations and removals of entries in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

#[allow(async_fn_in_trait)]
pub trait DiskFile {
    type Buf: IoBuf;

    /// An aligned buffer of `len` bytes (`len` aligned); its contents are unspecified.
    fn alloc(&self, len: usize) -> Self::Buf;
    /// Writes all of `buf` at `pos` (aligned).
    async fn write_at(&self, buf: Self::Buf, pos: u64) -> io::Result<()>;
    /// Writes `len` zero bytes at `pos` (both aligned).
    async fn write_zeroes_at(&self, pos: u64, len: usize) -> io::Result<()> {
        let mut z = self.alloc(len);
        z.bytes_mut().fill(0);
        self.write_at(z, pos).await
    }
    /// Reads up to `len` bytes at `pos`; fewer at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>>;
    async fn sync(&self) -> io::Result<()>;
    /// Opened with `dsync`: each completed write is durable.
    fn dsync(&self) -> bool;
    async fn truncate(&self, len: u64) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
}
