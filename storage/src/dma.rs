//! [`Disk`] on glommio: O_DIRECT segment files through io_uring. The only module of this crate
//! that knows about glommio; it must run inside a glommio executor.

use std::io;
use std::path::Path;

use glommio::io::{BufferedFile, Directory, DmaBuffer, DmaFile, OpenOptions};

use crate::disk::{Disk, DiskFile, IoBuf};

/// The production disk. Stateless: every log on a shard can share it.
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaDisk;

pub struct DmaSegmentFile {
    file: DmaFile,
    dsync: bool,
}

impl IoBuf for DmaBuffer {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }

    fn trim(&mut self, len: usize) {
        self.trim_to_size(len)
    }
}

/// glommio opens, renames and removes relative to descriptor -1 rather than the working
/// directory, so a relative path fails with EBADF: every path handed to it is made absolute
/// first (`sluice serve` with the default `./sluice-data` did not start).
fn absolute(path: &Path) -> io::Result<std::path::PathBuf> {
    std::path::absolute(path)
}

fn glommio_io(e: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(e)
}

impl Disk for DmaDisk {
    type File = DmaSegmentFile;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Startup-only metadata call; a blocking mkdir is acceptable here.
        std::fs::create_dir_all(dir)?;
        prime_iopoll_probe(dir).await
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    async fn open(&self, path: &Path, dsync: bool) -> io::Result<DmaSegmentFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(if dsync { libc::O_DSYNC } else { 0 })
            .dma_open(absolute(path)?)
            .await
            .map_err(glommio_io)?;
        Ok(DmaSegmentFile { file, dsync })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(absolute(path)?)
            .await
            .map_err(glommio_io)
    }

    async fn read_small(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let file = match BufferedFile::open(absolute(path)?).await {
            Ok(f) => f,
            Err(e) => {
                let e = glommio_io(e);
                return if e.kind() == io::ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                };
            }
        };
        let size = file.file_size().await.map_err(glommio_io)? as usize;
        let read = file.read_at(0, size).await.map_err(glommio_io)?;
        let bytes = read.to_vec();
        file.close().await.map_err(glommio_io)?;
        Ok(Some(bytes))
    }

    async fn write_small_atomic(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let path = absolute(path)?;
        let tmp = std::path::PathBuf::from(format!("{}.tmp", path.display()));
        let file = BufferedFile::create(&tmp).await.map_err(glommio_io)?;
        let len = bytes.len();
        let written = file.write_at(bytes, 0).await.map_err(glommio_io)?;
        if written != len {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        file.fdatasync().await.map_err(glommio_io)?;
        file.close().await.map_err(glommio_io)?;
        glommio::io::rename(&tmp, &path).await.map_err(glommio_io)?;
        self.sync_dir(path.parent().unwrap_or(Path::new("."))).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let d = Directory::open(absolute(dir)?).await.map_err(glommio_io)?;
        d.sync().await.map_err(glommio_io)?;
        d.close().await.map_err(glommio_io)
    }
}

impl DiskFile for DmaSegmentFile {
    type Buf = DmaBuffer;

    fn alloc(&self, len: usize) -> DmaBuffer {
        self.file.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<()> {
        let len = buf.len();
        let written = self.file.write_at(buf, pos).await.map_err(glommio_io)?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {len} bytes at {pos}"),
            ));
        }
        Ok(())
    }

    /// From one zeroed buffer per thread and length, shared by every write of it: a log's
    /// preallocation writes a stretch of one size over and over (zeroing a fresh buffer for
    /// each was 3.5% of the broker's CPU in a native produce).
    async fn write_zeroes_at(&self, pos: u64, len: usize) -> io::Result<()> {
        thread_local! {
            static ZEROES: std::cell::RefCell<Option<std::rc::Rc<DmaBuffer>>> =
                const { std::cell::RefCell::new(None) };
        }
        let zeroes = ZEROES.with(|z| {
            let mut z = z.borrow_mut();
            match &*z {
                Some(b) if b.len() == len => b.clone(),
                _ => {
                    let mut b = self.file.alloc_dma_buffer(len);
                    b.as_bytes_mut().fill(0);
                    let b = std::rc::Rc::new(b);
                    *z = Some(b.clone());
                    b
                }
            }
        });
        let written = self
            .file
            .write_rc_at(zeroes, pos)
            .await
            .map_err(glommio_io)?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {len} zero bytes at {pos}"),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let read = self.file.read_at(pos, len).await.map_err(glommio_io)?;
        Ok(read.to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(glommio_io)
    }

    fn dsync(&self) -> bool {
        self.dsync
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(glommio_io)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(glommio_io)
    }
}

/// glommio decides once per block device whether O_DIRECT reads may use the io_uring poll
/// ring, by reading the first block of the first DMA file opened there. If that file is empty
/// the read "succeeds" and the poll ring is chosen even on devices without poll queues; every
/// later read of real data then fails with EOPNOTSUPP. So before the first real file on a
/// device, open a scratch file that holds a block of data, making the probe meaningful.
/// (Found when a broker restarted on a data dir whose first opened segment was empty.)
pub async fn prime_iopoll_probe(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // glommio caches the probe per thread (per executor), so priming is per thread too.
    thread_local!(static PRIMED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) });
    let dev = std::fs::metadata(dir)?.dev();
    if PRIMED.with(|p| p.borrow().contains(&dev)) {
        return Ok(());
    }
    PRIMED.with(|p| p.borrow_mut().push(dev));
    let probe = dir.join(format!(
        ".sluice-iopoll-probe-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    {
        // On disk and out of the page cache, like any segment written with O_DIRECT: with
        // dirty cached pages the probe read was seen to succeed on the poll ring anyway.
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(&[0x5au8; 8192])?;
        f.sync_all()?;
        // SAFETY: advisory call on an open fd.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    let opened = DmaFile::open(absolute(&probe)?).await.map_err(glommio_io);
    let _ = std::fs::remove_file(&probe);
    opened?.close().await.map_err(glommio_io)
}

/// How often an executor started by [`run_local`] wakes even with nothing to do.
pub const REACTOR_HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(20);

/// Runs `fut` to completion on a new glommio executor on the calling thread, with a small
/// io_memory so that many executors fit in the default 8 MiB locked-memory limit.
///
/// A heartbeat timer wakes the reactor every [`REACTOR_HEARTBEAT`]: glommio's reactor was
/// seen asleep in `io_uring_enter` with the work it waited for already done (`sluice log dump`
/// hung once in ~80 runs of a debug build; a ptrace attach, which interrupts the wait, let it
/// finish at once). A reactor that wakes on a timer collects such a completion on its next
/// turn instead of never.
pub fn run_local<T>(name: &str, fut: impl std::future::Future<Output = T>) -> io::Result<T> {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name(name)
        .io_memory(1 << 20)
        .make()
        .map_err(|e| io::Error::other(format!("cannot start glommio executor: {e}")))?;
    Ok(ex.run(async move {
        let heartbeat = glommio::spawn_local(async {
            loop {
                glommio::timer::sleep(REACTOR_HEARTBEAT).await;
            }
        });
        let out = fut.await;
        heartbeat.cancel().await;
        out
    }))
}

/// Milliseconds since the Unix epoch: the clock the I/O edge passes into the log.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Tells the C allocator to serve large aligned blocks (the write buffers of every log) from
/// its heap and to keep freed memory, instead of mapping and unmapping them on every flush: a
/// fresh mapping costs a page fault per 4 KiB, which profiled as the largest cost of the write
/// path. Call once at process start.
pub fn keep_io_buffers_mapped() {
    // SAFETY: mallopt only changes allocator tunables; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared zero buffers: writes of one length reuse a buffer, another length gets its own,
    /// and every one lands as zeroes over what was there.
    #[test]
    fn zero_writes_overwrite_with_zeroes() {
        let dir = std::env::temp_dir().join(format!("sluice-dma-zeroes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("seg.log");
        let result = run_local("zeroes-test", async {
            prime_iopoll_probe(&dir).await.unwrap();
            let file = DmaDisk.open(&path, true).await.unwrap();
            let mut junk = file.alloc(256 << 10);
            junk.bytes_mut().fill(0xa5);
            file.write_at(junk, 0).await.unwrap();
            file.write_zeroes_at(8192, 64 << 10).await.unwrap();
            file.write_zeroes_at(128 << 10, 64 << 10).await.unwrap();
            file.write_zeroes_at(200 << 10, 8192).await.unwrap();
            let bytes = file.read_at(0, 256 << 10).await.unwrap();
            file.truncate(0).await.unwrap();
            bytes
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let zeroed = |i: usize| {
            (8192..8192 + (64 << 10)).contains(&i)
                || ((128 << 10)..(192 << 10)).contains(&i)
                || ((200 << 10)..(200 << 10) + 8192).contains(&i)
        };
        assert_eq!(result.len(), 256 << 10);
        for (i, b) in result.iter().enumerate() {
            assert_eq!(*b, if zeroed(i) { 0 } else { 0xa5 }, "byte {i}");
        }
    }
}
