//! [`SimDisk`]: an in-memory disk for tests that keeps what an fdatasync made durable apart from
//! what was only written, so a test can "crash" it at any moment and see what a real disk might
//! have kept: every write since the last sync survives, vanishes or survives in part (4 KiB
//! blocks, independently), and directory entries not yet synced are forgotten. A completed write
//! of a file opened `dsync` is durable. It can also fail the n-th write or fsync from now (a
//! `dsync` write counts as both), as a dying disk does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::disk::{Disk, DiskFile, IoBuf, ALIGN};

#[derive(Clone, Default)]
pub struct SimDisk {
    inner: Rc<RefCell<Inner>>,
}

#[derive(Default)]
struct Inner {
    files: HashMap<u64, FileData>,
    names: HashMap<PathBuf, u64>,
    durable_names: HashMap<PathBuf, u64>,
    next_id: u64,
    fail_write_in: Option<u32>,
    fail_sync_in: Option<u32>,
    syncs: u64,
}

#[derive(Default, Clone)]
struct FileData {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<PendingOp>,
}

#[derive(Clone)]
enum PendingOp {
    /// `durable`: a write of a `dsync` file, on the platter once it completed.
    Write {
        pos: u64,
        data: Vec<u8>,
        durable: bool,
    },
    Truncate {
        len: u64,
    },
}

pub struct SimFile {
    inner: Rc<RefCell<Inner>>,
    id: u64,
    dsync: bool,
}

pub struct SimBuf(Vec<u8>);

impl IoBuf for SimBuf {
    fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    fn trim(&mut self, len: usize) {
        assert!(len <= self.0.len());
        self.0.truncate(len)
    }
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// The `n`-th write from now (1 = the next) fails with EIO.
    pub fn fail_write_in(&self, n: u32) {
        self.inner.borrow_mut().fail_write_in = Some(n);
    }

    /// The `n`-th fsync from now (1 = the next) fails with EIO.
    pub fn fail_sync_in(&self, n: u32) {
        self.inner.borrow_mut().fail_sync_in = Some(n);
    }

    pub fn syncs(&self) -> u64 {
        self.inner.borrow().syncs
    }

    /// Power loss. `keep(i)` decides, for the i-th unsynced 4 KiB block or truncation, whether
    /// it reached the platter. Open handles must not be used afterwards.
    pub fn crash(&self, mut keep: impl FnMut(u64) -> bool) {
        let mut inner = self.inner.borrow_mut();
        let mut decision = 0u64;
        for file in inner.files.values_mut() {
            let mut disk = file.durable.clone();
            for op in file.pending.drain(..) {
                match op {
                    PendingOp::Truncate { len } => {
                        decision += 1;
                        if keep(decision) {
                            disk.resize(len as usize, 0);
                        }
                    }
                    PendingOp::Write { pos, data, durable } => {
                        for (i, block) in data.chunks(ALIGN).enumerate() {
                            if !durable {
                                decision += 1;
                            }
                            if durable || keep(decision) {
                                let at = pos as usize + i * ALIGN;
                                if disk.len() < at + block.len() {
                                    disk.resize(at + block.len(), 0);
                                }
                                disk[at..at + block.len()].copy_from_slice(block);
                            }
                        }
                    }
                }
            }
            file.durable = disk.clone();
            file.current = disk;
        }
        inner.names = inner.durable_names.clone();
        inner.fail_write_in = None;
        inner.fail_sync_in = None;
    }

    /// Flips one bit of a file's durable and current bytes (bit rot).
    pub fn corrupt(&self, path: &Path, pos: usize) {
        let mut inner = self.inner.borrow_mut();
        let id = inner.names[path];
        let f = inner.files.get_mut(&id).expect("named file exists");
        f.current[pos] ^= 0x10;
        f.durable[pos] ^= 0x10;
    }

    pub fn file_len(&self, path: &Path) -> Option<usize> {
        let inner = self.inner.borrow();
        inner
            .names
            .get(path)
            .map(|id| inner.files[id].current.len())
    }

    fn trip(counter: &mut Option<u32>) -> bool {
        match counter {
            Some(1) => {
                *counter = None;
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
}

/// Completes on its second poll, like a real I/O that is not done at submission: other tasks
/// get to run (and to buffer appends) meanwhile.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO on {what}"))
}

impl Disk for SimDisk {
    type File = SimFile;

    async fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let inner = self.inner.borrow();
        Ok(inner
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .map(|p| {
                p.file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect())
    }

    async fn open(&self, path: &Path, dsync: bool) -> io::Result<SimFile> {
        let mut inner = self.inner.borrow_mut();
        let id = match inner.names.get(path) {
            Some(&id) => id,
            None => {
                inner.next_id += 1;
                let id = inner.next_id;
                inner.files.insert(id, FileData::default());
                inner.names.insert(path.to_path_buf(), id);
                id
            }
        };
        Ok(SimFile {
            inner: self.inner.clone(),
            id,
            dsync,
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        match self.inner.borrow_mut().names.remove(path) {
            Some(_) => Ok(()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    async fn read_small(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let inner = self.inner.borrow();
        Ok(inner
            .names
            .get(path)
            .map(|id| inner.files[id].current.clone()))
    }

    async fn write_small_atomic(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let mut inner = self.inner.borrow_mut();
        if Self::trip(&mut inner.fail_sync_in) {
            return Err(eio("fsync"));
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.files.insert(
            id,
            FileData {
                durable: bytes.clone(),
                current: bytes,
                pending: Vec::new(),
            },
        );
        inner.names.insert(path.to_path_buf(), id);
        inner.durable_names.insert(path.to_path_buf(), id);
        Ok(())
    }

    async fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut inner = self.inner.borrow_mut();
        inner.durable_names = inner.names.clone();
        Ok(())
    }
}

impl DiskFile for SimFile {
    type Buf = SimBuf;

    fn alloc(&self, len: usize) -> SimBuf {
        assert!(len.is_multiple_of(ALIGN), "unaligned buffer length {len}");
        SimBuf(vec![0xAB; len])
    }

    async fn write_at(&self, buf: SimBuf, pos: u64) -> io::Result<()> {
        YieldOnce(false).await;
        assert!(
            pos.is_multiple_of(ALIGN as u64),
            "unaligned O_DIRECT write at {pos}"
        );
        assert!(
            buf.0.len().is_multiple_of(ALIGN),
            "unaligned O_DIRECT length {}",
            buf.0.len()
        );
        let mut inner = self.inner.borrow_mut();
        if SimDisk::trip(&mut inner.fail_write_in) {
            return Err(eio("write"));
        }
        // A `dsync` write carries its own flush: it fails as that flush would.
        if self.dsync {
            inner.syncs += 1;
            if SimDisk::trip(&mut inner.fail_sync_in) {
                return Err(eio("write (O_DSYNC)"));
            }
        }
        let f = inner.files.get_mut(&self.id).expect("open file exists");
        let end = pos as usize + buf.0.len();
        if f.current.len() < end {
            f.current.resize(end, 0);
        }
        f.current[pos as usize..end].copy_from_slice(&buf.0);
        f.pending.push(PendingOp::Write {
            pos,
            data: buf.0,
            durable: self.dsync,
        });
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let inner = self.inner.borrow();
        let f = &inner.files[&self.id];
        let start = (pos as usize).min(f.current.len());
        let end = (pos as usize + len).min(f.current.len());
        Ok(f.current[start..end].to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        YieldOnce(false).await;
        let mut inner = self.inner.borrow_mut();
        inner.syncs += 1;
        if SimDisk::trip(&mut inner.fail_sync_in) {
            return Err(eio("fsync"));
        }
        let f = inner.files.get_mut(&self.id).expect("open file exists");
        f.durable = f.current.clone();
        f.pending.clear();
        Ok(())
    }

    fn dsync(&self) -> bool {
        self.dsync
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        let mut inner = self.inner.borrow_mut();
        let f = inner.files.get_mut(&self.id).expect("open file exists");
        f.current.resize(len as usize, 0);
        f.pending.push(PendingOp::Truncate { len });
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.inner.borrow().files[&self.id].current.len() as u64)
    }
}
