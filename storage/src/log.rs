//! The partition log: segments of RecordBatch v2 bytes, group-committed O_DIRECT appends,
//! reads by offset and by timestamp, recovery, retention and truncation.
//!
//! **Write path.** An append validates the batch, assigns its offsets in place and copies it
//! into the active segment's aligned tail buffer; it then waits until the batch is acknowledged
//! under the fsync policy. Whichever waiter finds the disk idle becomes the writer for everybody:
//! it writes all buffered bytes in one aligned write (rewriting the partial last block of the
//! previous write). Under `always` a segment is opened O_DSYNC, so that write is also its
//! fdatasync; a segment opened before the policy became `always` gets an fdatasync after each
//! write instead, covering every batch written before it. At most one write and one fdatasync
//! are in flight per log (`writing`, `syncing`): writes to a file never reorder, and the next
//! write overlaps the previous batch's fdatasync.
//!
//! **Architecture invariant.** Nothing is acknowledged, and no reader sees a batch, before
//! `acked_end` passes it: under `always` that is once durable (an O_DSYNC write or an
//! fdatasync after it), otherwise after the write.
//! After a failed write or fsync the log is poisoned: it never acknowledges again.
//!
//! **Borrowing rule.** `state` is a `RefCell`; no borrow is held across an `.await` (plan under
//! the borrow, drop it, do the I/O, then apply the result under a new borrow).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sluice_core::batch::{self, BatchHeader, HEADER_BYTES};
use sluice_core::slow_ops::SlowOps;
use sluice_core::Offset;

use crate::config::{FsyncPolicy, LogConfig};
use crate::disk::{align_down, align_up, Disk, DiskFile, IoBuf, ALIGN};
use crate::error::LogError;
use crate::index::{IndexSummary, SegmentIndex};
use crate::notify::Notify;
use crate::tail_cache::TailCache;
use bytes::Bytes;

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
}

/// What the log writes into its own copy of a batch besides the offsets: the broker's fields
/// of a Kafka batch header, so that a caller holding the batch in a shared (immutable) buffer
/// does not copy it just to stamp it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// `partitionLeaderEpoch` (outside the CRC).
    pub partition_leader_epoch: Option<i32>,
    /// `LogAppendTime`: the timestamp-type attribute and `maxTimestamp` (inside the CRC, which
    /// is recomputed); the time index then uses this time.
    pub log_append_time_ms: Option<i64>,
}

/// A record found by [`Log::offset_for_timestamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampHit {
    pub offset: Offset,
    pub timestamp: i64,
}

/// A partition log on a [`Disk`].
pub struct Log<D: Disk> {
    disk: D,
    dir: PathBuf,
    config: Cell<LogConfig>,
    state: RefCell<State<D::File>>,
    changed: Notify,
    /// Appends waiting for their batch to be acknowledged, by (last offset, id). Woken
    /// selectively (see [`Log::wake_ack_waiters`]): with thousands of small appends in flight,
    /// waking all of them on every write and fdatasync completion cost more than the I/O.
    ack_waiters: RefCell<BTreeMap<(i64, u64), std::task::Waker>>,
    next_waiter: Cell<u64>,
    /// The newest batches, for tailing readers (see [`TailCache`]).
    cache: RefCell<TailCache>,
}

/// A write or fdatasync taking this long (ms) is reported in the broker's log, at most once
/// per [`SLOW_IO_REPORT_MS`] per thread (a shard's logs share one report, so a stalled device
/// under thousands of partitions still makes one line per shard and interval).
const SLOW_IO_MS: u64 = 100;
const SLOW_IO_REPORT_MS: u64 = 10_000;

thread_local! {
    static SLOW_IO: RefCell<SlowOps> = const { RefCell::new(SlowOps::new(SLOW_IO_MS, SLOW_IO_REPORT_MS)) };
}

/// Waits in [`Log::ack_waiters`] until woken (then the caller re-checks the log's state).
struct AckWait<'a, D: Disk> {
    log: &'a Log<D>,
    key: (i64, u64),
    registered: bool,
    /// Returned Ready: the wake was consumed.
    done: bool,
}

impl<D: Disk> std::future::Future for AckWait<'_, D> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let mut waiters = self.log.ack_waiters.borrow_mut();
        if !self.registered {
            waiters.insert(self.key, cx.waker().clone());
            drop(waiters);
            self.registered = true;
            return std::task::Poll::Pending;
        }
        match waiters.get_mut(&self.key) {
            // Woken: the waker removed us.
            None => {
                drop(waiters);
                self.done = true;
                std::task::Poll::Ready(())
            }
            Some(w) => {
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
                std::task::Poll::Pending
            }
        }
    }
}

impl<D: Disk> Drop for AckWait<'_, D> {
    fn drop(&mut self) {
        if self.registered && !self.done {
            let present = self
                .log
                .ack_waiters
                .borrow_mut()
                .remove(&self.key)
                .is_some();
            if !present {
                // Woken, but dropped before acting on it (a cancelled append): pass the wake
                // on, or the I/O round it was to drive would wait for the next event.
                self.log.wake_ack_waiters();
            }
        }
    }
}

struct Segment<F> {
    base: i64,
    file: Rc<F>,
    /// Logical size: every byte appended, including bytes still in the tail buffer.
    size: u64,
    next_offset: i64,
    max_timestamp: i64,
    index: SegmentIndex,
    first_append_ms: Option<u64>,
}

struct Tail<B> {
    buf: B,
    /// File position of `buf[0]` (aligned).
    file_pos: u64,
    /// Bytes of `buf` holding log data.
    fill: usize,
    /// Bytes at the start of `buf` already on disk (the partial block of the previous write).
    written: usize,
}

struct State<F: DiskFile> {
    segments: BTreeMap<i64, Segment<F>>,
    log_start: i64,
    next_offset: i64,
    tail: Tail<F::Buf>,
    /// Offsets below this are written to their segment file.
    written_offset: i64,
    /// Offsets below this are covered by an fdatasync.
    synced_offset: i64,
    /// Byte positions in the active segment matching `written_offset` / `synced_offset`.
    written_pos: u64,
    synced_pos: u64,
    /// The active segment file holds written blocks (data or preallocated zeroes) up to here.
    alloc_pos: u64,
    /// A write of the tail is in flight (or a roll/truncation holds the log).
    writing: bool,
    /// An fdatasync is in flight (or a roll/truncation holds the log).
    syncing: bool,
    /// A roll or truncation is replacing the active segment: appends (and retention) wait, so
    /// that no batch lands in a tail that is about to be discarded.
    appends_blocked: bool,
    /// FIFO of appends waiting for buffer space: tickets issued, and the one now served.
    space_tickets_issued: u64,
    space_ticket_serving: u64,
    poisoned: Option<String>,
    last_sync_ms: u64,
}

const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// A read of `max_bytes` asks the disk for this much more: the sparse index points up to
/// `index.interval.bytes` before the wanted offset, and the last batch may run past the limit.
const READ_SLACK_BYTES: usize = 64 << 10;
/// Largest single read of a sized reader.
const MAX_READ_CHUNK_BYTES: usize = 16 << 20;
/// File holding the log start offset when DeleteRecords moved it inside a segment.
const START_CHECKPOINT: &str = "log-start-offset";
const TAIL_BYTES_MIN: usize = 64 << 10;

/// Which I/O role a task takes on a log. At most one write and one fdatasync run at a time;
/// `Exclusive` (roll, truncation) takes both and holds appends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Write,
    Sync,
    Exclusive,
}

impl<F: DiskFile> State<F> {
    /// Takes `claim` if it is free; the caller must then run [`Log::claimed`].
    fn claim(&mut self, claim: Claim) -> Option<Claim> {
        match claim {
            Claim::Write if !self.writing => self.writing = true,
            Claim::Sync if !self.syncing => self.syncing = true,
            Claim::Exclusive if !self.writing && !self.syncing => {
                self.writing = true;
                self.syncing = true;
                self.appends_blocked = true;
            }
            _ => return None,
        }
        Some(claim)
    }

    fn release(&mut self, claim: Claim) {
        match claim {
            Claim::Write => {
                assert!(self.writing, "release of an untaken write claim");
                self.writing = false;
            }
            Claim::Sync => {
                assert!(self.syncing, "release of an untaken sync claim");
                self.syncing = false;
            }
            Claim::Exclusive => {
                assert!(self.writing && self.syncing && self.appends_blocked);
                self.writing = false;
                self.syncing = false;
                self.appends_blocked = false;
            }
        }
    }

    fn active(&self) -> &Segment<F> {
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment<F> {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has a segment")
    }

    fn acked_end(&self, policy: FsyncPolicy) -> i64 {
        match policy {
            FsyncPolicy::Always => self.synced_offset,
            _ => self.written_offset,
        }
    }

    /// End of the acknowledged bytes in the active segment.
    fn acked_pos(&self, policy: FsyncPolicy) -> u64 {
        match policy {
            FsyncPolicy::Always => self.synced_pos,
            _ => self.written_pos,
        }
    }

    fn has_unwritten(&self) -> bool {
        self.tail.fill > self.tail.written
    }
}

impl<D: Disk> Log<D> {
    /// Opens (or creates) the log in `dir`, recovering from whatever a crash left: every
    /// batch of the active segment is CRC-checked and a torn or corrupt tail is cut off; sealed
    /// segments whose index files are missing or damaged are rescanned and reindexed.
    pub async fn open(
        disk: D,
        dir: impl Into<PathBuf>,
        config: LogConfig,
        now_ms: u64,
    ) -> Result<Log<D>, LogError> {
        let dir = dir.into();
        assert!(
            config.segment_bytes_max <= u32::MAX as u64,
            "segment.bytes must fit u32"
        );
        disk.create_dir_all(&dir)
            .await
            .map_err(|e| LogError::io("create dir", &dir, e))?;
        let names = disk
            .list(&dir)
            .await
            .map_err(|e| LogError::io("list", &dir, e))?;
        let mut bases: Vec<i64> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".log")?.parse().ok())
            .collect();
        bases.sort_unstable();
        for name in names.iter().filter(|n| n.ends_with(".tmp")) {
            let path = dir.join(name);
            disk.remove(&path)
                .await
                .map_err(|e| LogError::io("remove", &path, e))?;
        }

        let mut segments: BTreeMap<i64, Segment<D::File>> = BTreeMap::new();
        let mut expected_next: Option<i64> = None;
        let mut cut = false;
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(&dir, base, "log");
            if cut || expected_next.is_some_and(|n| base < n) {
                // Everything after a corrupt or overlapping segment is unreachable.
                remove_segment_files(&disk, &dir, base).await?;
                continue;
            }
            // The last segment becomes the active one, written to again.
            let last = i + 1 == bases.len();
            let file = disk
                .open(&path, last && dsync_writes(&config))
                .await
                .map_err(|e| LogError::io("open", &path, e))?;
            let file_bytes = file
                .size()
                .await
                .map_err(|e| LogError::io("stat", &path, e))?;
            let mut trusted = None;
            if !last {
                trusted = load_index(&disk, &dir, base, file_bytes).await?;
            }
            let segment = match trusted {
                Some((index, summary)) => Segment {
                    base,
                    file: Rc::new(file),
                    size: summary.segment_bytes,
                    next_offset: summary.last_offset + 1,
                    max_timestamp: summary.max_timestamp,
                    index,
                    first_append_ms: None,
                },
                None => {
                    let scan =
                        scan_segment(&file, &path, base, file_bytes, config.index_interval_bytes)
                            .await?;
                    if scan.valid_bytes < file_bytes {
                        file.truncate(scan.valid_bytes)
                            .await
                            .map_err(|e| LogError::io("truncate", &path, e))?;
                        file.sync()
                            .await
                            .map_err(|e| LogError::io("fdatasync", &path, e))?;
                    }
                    if !last && scan.next_offset != bases[i + 1] {
                        // A sealed segment lost batches: later segments no longer follow on.
                        cut = true;
                    }
                    let segment = Segment {
                        base,
                        file: Rc::new(file),
                        size: scan.valid_bytes,
                        next_offset: scan.next_offset,
                        max_timestamp: scan.max_timestamp,
                        index: scan.index,
                        first_append_ms: (scan.valid_bytes > 0).then_some(now_ms),
                    };
                    if !last && !cut {
                        write_index(&disk, &dir, &segment).await?;
                    }
                    segment
                }
            };
            expected_next = Some(segment.next_offset);
            segments.insert(base, segment);
        }
        // Index files of the segment that is now active are stale as soon as it grows.
        if let Some((&base, _)) = segments.iter().next_back() {
            remove_index_files(&disk, &dir, base).await?;
        }
        if segments.is_empty() {
            let segment = create_segment(&disk, &dir, 0, &config).await?;
            segments.insert(0, segment);
        }
        let first_base = *segments.keys().next().expect("at least one segment");
        let active = segments.values().next_back().expect("at least one segment");
        // DeleteRecords may have moved the start past the first segment's base.
        let checkpoint = dir.join(START_CHECKPOINT);
        let log_start = match disk.read_small(&checkpoint).await {
            Ok(Some(bytes)) => decode_start_checkpoint(&bytes)
                .map_or(first_base, |s| s.clamp(first_base, active.next_offset)),
            Ok(None) => first_base,
            Err(e) => return Err(LogError::io("read", &checkpoint, e)),
        };
        let next_offset = active.next_offset;
        let active_size = active.size;
        let tail = load_tail(active, &segment_path(&dir, active.base, "log")).await?;
        Ok(Log {
            disk,
            dir,
            config: Cell::new(config),
            state: RefCell::new(State {
                segments,
                log_start,
                next_offset,
                tail,
                written_offset: next_offset,
                synced_offset: next_offset,
                written_pos: active_size,
                synced_pos: active_size,
                alloc_pos: active_size,
                writing: false,
                syncing: false,
                appends_blocked: false,
                space_tickets_issued: 0,
                space_ticket_serving: 0,
                poisoned: None,
                last_sync_ms: now_ms,
            }),
            changed: Notify::default(),
            ack_waiters: RefCell::new(BTreeMap::new()),
            next_waiter: Cell::new(0),
            cache: RefCell::new(TailCache::new(config.tail_cache_bytes)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> LogConfig {
        self.config.get()
    }

    /// Applies new settings (a topic's configs changed). Takes effect for the next append,
    /// roll, fsync decision and retention pass.
    pub fn set_config(&self, config: LogConfig) {
        assert!(
            config.segment_bytes_max <= u32::MAX as u64,
            "segment.bytes must fit u32"
        );
        self.config.set(config);
        self.cache.borrow_mut().set_budget(config.tail_cache_bytes);
        self.wake_ack_waiters();
    }

    /// Wakes the appends that can make progress: every one now acknowledged (or all, if the
    /// log is poisoned), plus the first one whose batch still needs a write and the first one
    /// that needs an fdatasync — they take the next I/O round for everyone.
    fn wake_ack_waiters(&self) {
        let Ok(st) = self.state.try_borrow() else {
            return;
        };
        let policy = self.config.get().fsync;
        let (acked, written, poisoned) = (
            st.acked_end(policy),
            st.written_offset,
            st.poisoned.is_some(),
        );
        drop(st);
        let mut waiters = self.ack_waiters.borrow_mut();
        let mut wake = Vec::new();
        if poisoned {
            wake.extend(std::mem::take(&mut *waiters).into_values());
        } else {
            let rest = waiters.split_off(&(acked, 0));
            wake.extend(std::mem::replace(&mut *waiters, rest).into_values());
            if let Some(k) = waiters.range((written, 0)..).next().map(|(k, _)| *k) {
                wake.extend(waiters.remove(&k));
            }
            if let Some(k) = waiters.range(..(written, 0)).next().map(|(k, _)| *k) {
                wake.extend(waiters.remove(&k));
            }
        }
        drop(waiters);
        for w in wake {
            w.wake();
        }
    }

    /// The first offset still in the log.
    pub fn start_offset(&self) -> Offset {
        Offset(self.state.borrow().log_start)
    }

    /// The offset the next appended record gets (log end offset).
    pub fn end_offset(&self) -> Offset {
        Offset(self.state.borrow().next_offset)
    }

    /// Offsets below this are acknowledged under the fsync policy, and readable.
    pub fn acked_end(&self) -> Offset {
        Offset(self.state.borrow().acked_end(self.config.get().fsync))
    }

    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    pub fn size_bytes(&self) -> u64 {
        self.state.borrow().segments.values().map(|s| s.size).sum()
    }

    pub fn is_poisoned(&self) -> bool {
        self.state.borrow().poisoned.is_some()
    }

    /// Appends one batch (as a producer sent it) and waits until it is acknowledged under the
    /// fsync policy. Offsets are written into `batch` in place.
    pub async fn append(&self, now_ms: u64, batch: &mut [u8]) -> Result<AppendInfo, LogError> {
        let info = self.append_ref(now_ms, batch).await?;
        batch::set_base_offset(batch, info.base_offset);
        Ok(info)
    }

    /// [`Log::append`] of a batch the caller cannot lend mutably (a shared frame buffer): the
    /// offsets are written into the log's own copy.
    pub async fn append_ref(&self, now_ms: u64, batch: &[u8]) -> Result<AppendInfo, LogError> {
        self.check_size(batch)?;
        let header = batch::validate_for_append(batch)?;
        self.append_stamped(now_ms, batch, header, Stamp::default())
            .await
    }

    /// [`Log::append_ref`] of a batch the caller already ran through
    /// [`batch::validate_for_append`] (`header`), with `stamp` written into the log's copy
    /// ([`Log::buffer_stamped`]).
    pub async fn append_stamped(
        &self,
        now_ms: u64,
        batch: &[u8],
        header: BatchHeader,
        stamp: Stamp,
    ) -> Result<AppendInfo, LogError> {
        let info = self.buffer_stamped(now_ms, batch, header, stamp).await?;
        self.acked(now_ms, info.last_offset).await?;
        Ok(info)
    }

    /// The first half of [`Log::append_ref`]: takes the batch into the log (offsets assigned,
    /// in the order of the calls' first polls) without waiting for it to be written. Several
    /// batches buffered back to back are then acknowledged by one [`Log::acked`] of the last.
    pub async fn buffer_ref(&self, now_ms: u64, batch: &[u8]) -> Result<AppendInfo, LogError> {
        self.check_size(batch)?;
        let header = batch::validate_for_append(batch)?;
        self.buffer_checked(now_ms, batch, header).await
    }

    fn check_size(&self, batch: &[u8]) -> Result<(), LogError> {
        let max_bytes = self.config.get().batch_bytes_max;
        if batch.len() > max_bytes {
            return Err(LogError::BatchTooLarge {
                bytes: batch.len(),
                max_bytes,
            });
        }
        Ok(())
    }

    /// [`Log::buffer_ref`] of a batch the caller has run through
    /// [`batch::validate_for_append`] (`header` is its answer): the CRC is not computed twice.
    pub async fn buffer_checked(
        &self,
        now_ms: u64,
        batch: &[u8],
        header: BatchHeader,
    ) -> Result<AppendInfo, LogError> {
        self.buffer_stamped(now_ms, batch, header, Stamp::default())
            .await
    }

    /// [`Log::buffer_checked`] that also writes `stamp` into the log's copy of the batch.
    pub async fn buffer_stamped(
        &self,
        now_ms: u64,
        batch: &[u8],
        header: BatchHeader,
        stamp: Stamp,
    ) -> Result<AppendInfo, LogError> {
        self.check_size(batch)?;
        // Appends that must wait for buffer space queue in arrival order (tickets), so that a
        // stream of fresh appends cannot starve one that is waiting.
        let mut ticket: Option<u64> = None;
        let buffered = async {
            loop {
                let wait = self.changed.notified();
                let claim = {
                    let mut st = self.state.borrow_mut();
                    self.check_poison(&st)?;
                    let my_turn =
                        ticket.unwrap_or(st.space_tickets_issued) == st.space_ticket_serving;
                    if !my_turn || st.appends_blocked {
                        if ticket.is_none() {
                            ticket = Some(st.space_tickets_issued);
                            st.space_tickets_issued += 1;
                        }
                        None
                    } else if self.needs_roll(&st, now_ms, batch.len(), header.last_offset_delta) {
                        // A roll needs the log to itself; appends that would land in the old
                        // segment's tail are held back meanwhile. The roller keeps its place
                        // in line (a ticket, served next), so those that arrive during the
                        // roll cannot overtake it.
                        if ticket.is_none() {
                            ticket = Some(st.space_tickets_issued);
                            st.space_tickets_issued += 1;
                        }
                        st.claim(Claim::Exclusive)
                    } else if let Some(info) =
                        self.try_buffer(&mut st, now_ms, batch, &header, stamp)
                    {
                        return Ok::<AppendInfo, LogError>(info);
                    } else {
                        if ticket.is_none() {
                            ticket = Some(st.space_tickets_issued);
                            st.space_tickets_issued += 1;
                        }
                        st.claim(Claim::Write)
                    }
                };
                match claim {
                    Some(Claim::Exclusive) => {
                        self.claimed(Claim::Exclusive, self.roll(now_ms)).await?
                    }
                    Some(c) => self.claimed(c, self.write_round()).await?,
                    None => wait.await,
                }
            }
        }
        .await;
        if let Some(t) = ticket {
            let mut st = self.state.borrow_mut();
            assert_eq!(st.space_ticket_serving, t, "tickets are served in order");
            st.space_ticket_serving += 1;
            drop(st);
            self.changed.notify_all();
        }
        buffered
    }

    /// Resolves once everything up to `last_offset` is acknowledged under the fsync policy
    /// (written; under `always` also fdatasynced), taking the write and sync rounds it needs.
    pub async fn acked(&self, now_ms: u64, last_offset: Offset) -> Result<(), LogError> {
        self.wait_acked(now_ms, last_offset.0).await?;
        if let FsyncPolicy::Interval { .. } = self.config.get().fsync {
            self.tick(now_ms).await?;
        }
        Ok(())
    }

    /// Resolves once offset `offset` is acknowledged (for parked fetches: data past it exists).
    pub async fn wait_for_acked_end_above(&self, offset: Offset) -> Result<(), LogError> {
        loop {
            let wait = self.changed.notified();
            {
                let st = self.state.borrow();
                self.check_poison(&st)?;
                if st.acked_end(self.config.get().fsync) > offset.0 {
                    return Ok(());
                }
            }
            wait.await;
        }
    }

    /// Periodic work: the `interval` fsync policy's fdatasync when due.
    pub async fn tick(&self, now_ms: u64) -> Result<(), LogError> {
        let FsyncPolicy::Interval { interval_ms } = self.config.get().fsync else {
            return Ok(());
        };
        let claim = {
            let mut st = self.state.borrow_mut();
            let due = st.synced_offset < st.written_offset
                && now_ms.saturating_sub(st.last_sync_ms) >= interval_ms
                && st.poisoned.is_none();
            if due {
                st.claim(Claim::Sync)
            } else {
                None
            }
        };
        if claim.is_some() {
            self.claimed(Claim::Sync, self.sync_round(now_ms)).await?;
        }
        Ok(())
    }

    /// Writes and fdatasyncs everything appended so far, whatever the policy (clean shutdown).
    pub async fn sync(&self, now_ms: u64) -> Result<(), LogError> {
        loop {
            let wait = self.changed.notified();
            let claim = {
                let mut st = self.state.borrow_mut();
                self.check_poison(&st)?;
                if st.has_unwritten() {
                    st.claim(Claim::Write)
                } else if st.synced_offset < st.written_offset {
                    st.claim(Claim::Sync)
                } else if !st.writing && !st.syncing {
                    return Ok(());
                } else {
                    None
                }
            };
            match claim {
                Some(Claim::Write) => self.claimed(Claim::Write, self.write_round()).await?,
                Some(c) => self.claimed(c, self.sync_round(now_ms)).await?,
                None => wait.await,
            }
        }
    }

    /// Reads the batches holding offsets `from` onward, up to `max_bytes` (but always the whole
    /// first batch, as Kafka does since KIP-74). Returns stored bytes, each batch CRC-checked.
    /// Empty when nothing at or past `from` is acknowledged yet.
    pub async fn read(&self, from: Offset, max_bytes: usize) -> Result<Vec<u8>, LogError> {
        let mut from = from.0;
        let acked = self.readable_from(from)?;
        if let Some(parts) = self.cache.borrow_mut().read(from, acked, max_bytes) {
            return Ok(parts.concat());
        }
        // Sized once: batches are appended without regrowing (and recopying) the buffer.
        let mut out = Vec::with_capacity(max_bytes.min(MAX_READ_CHUNK_BYTES));
        while from < acked {
            let Some(plan) = self.plan_read(from) else {
                break;
            };
            let seg_next = plan.segment_end;
            let mut cursor = BatchCursor::new(plan.file, plan.path, plan.pos, plan.limit)
                .chunk(max_bytes.saturating_add(READ_SLACK_BYTES));
            while let Some((header, _)) = cursor.next().await? {
                if header.base_offset >= acked {
                    return Ok(out);
                }
                if header.last_offset() < from {
                    continue;
                }
                let bytes = cursor.current();
                if !out.is_empty() && out.len() + bytes.len() > max_bytes {
                    return Ok(out);
                }
                batch::validate(bytes).map_err(|e| cursor.corrupt(e.to_string()))?;
                out.extend_from_slice(bytes);
            }
            if !out.is_empty() {
                break;
            }
            // Nothing at or past `from` in this segment: continue in the next one.
            from = seg_next.max(from + 1);
        }
        Ok(out)
    }

    /// [`Log::read`] answered from the in-memory tail only (a single cached batch is shared,
    /// not copied), or `None` when `from` is older than what is cached and the disk must be
    /// read.
    pub fn read_cached(&self, from: Offset, max_bytes: usize) -> Result<Option<Bytes>, LogError> {
        let acked = self.readable_from(from.0)?;
        let parts = self.cache.borrow_mut().read(from.0, acked, max_bytes);
        Ok(parts.map(|mut p| match p.len() {
            1 => p.pop().expect("one part"),
            _ => Bytes::from(p.concat()),
        }))
    }

    /// Like [`Log::read`], but answers with the file region to send rather than the bytes, for
    /// zero-copy fetch (sendfile): the region starts at the batch holding `from` and runs for
    /// up to `max_bytes` (at least that whole first batch, KIP-74), never past the acknowledged
    /// end. As in Kafka, the region may end inside a batch; clients drop a partial last batch.
    /// Only batch headers are read to find it. `None` when nothing at or past `from` is
    /// acknowledged yet.
    pub async fn read_region(
        &self,
        from: Offset,
        max_bytes: usize,
    ) -> Result<Option<FileRegion>, LogError> {
        Ok(self.find_region(from, max_bytes).await?.map(|(_, r)| r))
    }

    /// The bytes of [`Log::read_region`]'s region, read from the device in one O_DIRECT read
    /// (no page cache, no per-batch check: what a sendfile of the region would send).
    pub async fn read_region_bytes(
        &self,
        from: Offset,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>, LogError> {
        let Some((file, region)) = self.find_region(from, max_bytes).await? else {
            return Ok(None);
        };
        read_whole(&*file, &region.path, region.pos, region.len)
            .await
            .map(Some)
    }

    /// Like [`Log::read_region_bytes`], but the read starts at the indexed batch at or before
    /// `from` rather than at the batch holding it, so no batch header is read from the device
    /// first (that walk took ~0.6 ms of each ~1.6 ms native fetch read here): the caller skips
    /// the batches before `from`, about `index_interval_bytes` of them. It may also end before
    /// `from`'s batch when that is far past the index entry; the caller then reads exactly.
    /// `None` when nothing at or past `from` is acknowledged yet.
    pub async fn read_span_bytes(
        &self,
        from: Offset,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>, LogError> {
        let acked = self.readable_from(from.0)?;
        if from.0 >= acked {
            return Ok(None);
        }
        let Some(plan) = self.plan_read(from.0) else {
            return Ok(None);
        };
        let limit = plan.acked_limit.unwrap_or(plan.limit);
        if from.0 >= plan.segment_end || limit <= plan.pos {
            return self.read_region_bytes(from, max_bytes).await;
        }
        let len = (max_bytes as u64).min(limit - plan.pos);
        read_whole(&*plan.file, &plan.path, plan.pos, len)
            .await
            .map(Some)
    }

    async fn find_region(
        &self,
        from: Offset,
        max_bytes: usize,
    ) -> Result<Option<(Rc<D::File>, FileRegion)>, LogError> {
        let mut from = from.0;
        let acked = self.readable_from(from)?;
        while from < acked {
            let Some(plan) = self.plan_read(from) else {
                return Ok(None);
            };
            // In the active segment only the acknowledged bytes may be sent.
            let limit = plan.acked_limit.unwrap_or(plan.limit);
            // A consumer's next fetch usually starts at an indexed batch: when that batch
            // surely fits in `max_bytes`, the region is known without reading a header from
            // the device (the batch starts at `from` < acked, so it lies within `limit`).
            if let Some(end_max) = plan.first_batch_end_max {
                if limit > plan.pos && end_max.min(limit) - plan.pos <= max_bytes as u64 {
                    let region = FileRegion {
                        path: plan.path,
                        pos: plan.pos,
                        len: (max_bytes as u64).min(limit - plan.pos),
                    };
                    return Ok(Some((plan.file, region)));
                }
            }
            let mut walker = HeaderWalker::new(&*plan.file, &plan.path, plan.pos, limit);
            while let Some((h, pos)) = walker.next().await? {
                if h.base_offset >= acked {
                    return Ok(None);
                }
                if h.last_offset() < from {
                    continue;
                }
                let avail = limit - pos;
                let first = (h.total_bytes() as u64).min(avail);
                let region = FileRegion {
                    path: plan.path.clone(),
                    pos,
                    len: (max_bytes as u64).min(avail).max(first),
                };
                drop(walker);
                return Ok(Some((plan.file, region)));
            }
            from = plan.segment_end.max(from + 1);
        }
        Ok(None)
    }

    /// Checks that `from` lies in [log start, log end] and returns the acknowledged end.
    fn readable_from(&self, from: i64) -> Result<i64, LogError> {
        let st = self.state.borrow();
        if from < st.log_start || from > st.next_offset {
            return Err(LogError::OffsetOutOfRange {
                offset: Offset(from),
                start: Offset(st.log_start),
                end: Offset(st.next_offset),
            });
        }
        Ok(st.acked_end(self.config.get().fsync))
    }

    /// The first record whose timestamp is at or after `timestamp` (ListOffsets by time).
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<TimestampHit>, LogError> {
        let (plans, acked) = {
            let st = self.state.borrow();
            let acked = st.acked_end(self.config.get().fsync);
            let plans: Vec<_> = st
                .segments
                .values()
                .filter(|s| s.max_timestamp >= timestamp && s.base < acked)
                .map(|s| {
                    let rel = s.index.offset_for_timestamp(timestamp);
                    let pos = s.index.position_for(rel);
                    (
                        s.file.clone(),
                        segment_path(&self.dir, s.base, "log"),
                        pos,
                        s.size,
                    )
                })
                .collect();
            (plans, acked)
        };
        for (file, path, pos, limit) in plans {
            let mut cursor = BatchCursor::new(file, path, pos as u64, limit);
            while let Some((header, _)) = cursor.next().await? {
                if header.base_offset >= acked {
                    return Ok(None);
                }
                if header.max_timestamp < timestamp {
                    continue;
                }
                let records = batch::records(cursor.current(), 64 << 20)
                    .map_err(|e| cursor.corrupt(e.to_string()))?;
                if let Some(r) = records.iter().find(|r| r.timestamp >= timestamp) {
                    return Ok(Some(TimestampHit {
                        offset: Offset(r.offset),
                        timestamp: r.timestamp,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Deletes whole sealed segments past `retention.ms` or beyond `retention.bytes`, oldest
    /// first. Returns how many were deleted.
    pub async fn enforce_retention(&self, now_ms: u64) -> Result<usize, LogError> {
        let doomed: Vec<i64> = {
            let st = self.state.borrow();
            if st.appends_blocked {
                return Ok(0);
            }
            let mut total: u64 = st.segments.values().map(|s| s.size).sum();
            let sealed = st.segments.len() - 1;
            let mut doomed = Vec::new();
            for seg in st.segments.values().take(sealed) {
                let expired = self.config.get().retention_ms.is_some_and(|ms| {
                    seg.max_timestamp >= 0
                        && seg.max_timestamp.saturating_add(ms as i64) < now_ms as i64
                });
                let oversized = self
                    .config
                    .get()
                    .retention_bytes
                    .is_some_and(|max| total.saturating_sub(seg.size) >= max);
                if !(expired || oversized) {
                    break;
                }
                total -= seg.size;
                doomed.push(seg.base);
            }
            doomed
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        {
            let mut st = self.state.borrow_mut();
            for base in &doomed {
                st.segments.remove(base);
            }
            let first = *st.segments.keys().next().expect("the active segment stays");
            st.log_start = st.log_start.max(first);
        }
        for &base in &doomed {
            remove_segment_files(&self.disk, &self.dir, base).await?;
        }
        self.disk
            .sync_dir(&self.dir)
            .await
            .map_err(|e| LogError::io("sync dir", &self.dir, e))?;
        Ok(doomed.len())
    }

    /// Moves the log start offset to `offset` (Kafka's DeleteRecords): records below it are no
    /// longer served, and segments wholly below it are deleted. The new start is made durable
    /// before it is used. `offset` may not pass the acknowledged end. Returns the new start.
    pub async fn delete_records_before(&self, offset: Offset) -> Result<Offset, LogError> {
        let (start, acked, end) = {
            let st = self.state.borrow();
            (
                st.log_start,
                st.acked_end(self.config.get().fsync),
                st.next_offset,
            )
        };
        if offset.0 > acked || offset.0 < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: Offset(start),
                end: Offset(end),
            });
        }
        if offset.0 <= start {
            return Ok(Offset(start));
        }
        let path = self.dir.join(START_CHECKPOINT);
        self.disk
            .write_small_atomic(&path, encode_start_checkpoint(offset.0))
            .await
            .map_err(|e| LogError::io("write", &path, e))?;
        let doomed: Vec<i64> = {
            let mut st = self.state.borrow_mut();
            st.log_start = st.log_start.max(offset.0);
            let sealed = st.segments.len() - 1;
            let doomed: Vec<i64> = st
                .segments
                .values()
                .take(sealed)
                .take_while(|s| s.next_offset <= offset.0)
                .map(|s| s.base)
                .collect();
            if st.appends_blocked {
                Vec::new() // a roll or truncation is reshaping segments; retention gets them later
            } else {
                for b in &doomed {
                    st.segments.remove(b);
                }
                doomed
            }
        };
        for &base in &doomed {
            remove_segment_files(&self.disk, &self.dir, base).await?;
        }
        if !doomed.is_empty() {
            self.disk
                .sync_dir(&self.dir)
                .await
                .map_err(|e| LogError::io("sync dir", &self.dir, e))?;
        }
        Ok(Offset(self.state.borrow().log_start))
    }

    /// Removes every batch holding an offset at or past `offset` (a batch that straddles it goes
    /// whole, as in Kafka). Returns the new end offset.
    pub async fn truncate_to(&self, offset: Offset) -> Result<Offset, LogError> {
        loop {
            let wait = self.changed.notified();
            {
                let mut st = self.state.borrow_mut();
                self.check_poison(&st)?;
                if st.claim(Claim::Exclusive).is_some() {
                    break;
                }
            }
            wait.await;
        }
        self.claimed(Claim::Exclusive, async {
            self.write_round().await?;
            self.truncate_locked(offset.0).await
        })
        .await
    }

    // ---- helpers ----

    fn check_poison(&self, st: &State<D::File>) -> Result<(), LogError> {
        match &st.poisoned {
            Some(cause) => Err(LogError::Poisoned {
                dir: self.dir.display().to_string(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Runs `work` under `claim` (already taken with [`State::claim`]), then releases it and
    /// wakes every waiter. An I/O failure poisons the log: from then on nothing is acknowledged.
    async fn claimed<T>(
        &self,
        claim: Claim,
        work: impl std::future::Future<Output = Result<T, LogError>>,
    ) -> Result<T, LogError> {
        let result = work.await;
        {
            let mut st = self.state.borrow_mut();
            st.release(claim);
            if let Err(e) = &result {
                if matches!(e, LogError::Io { .. }) && st.poisoned.is_none() {
                    st.poisoned = Some(e.to_string());
                }
            }
        }
        self.changed.notify_all();
        self.wake_ack_waiters();
        result
    }

    fn needs_roll(&self, st: &State<D::File>, now_ms: u64, len: usize, delta: i32) -> bool {
        let active = st.active();
        if active.size == 0 {
            return false;
        }
        let too_big = active.size + len as u64 > self.config.get().segment_bytes_max;
        let too_old = match (self.config.get().segment_age_ms_max, active.first_append_ms) {
            (Some(max), Some(first)) => now_ms.saturating_sub(first) >= max,
            _ => false,
        };
        let rel_overflow = st.next_offset + delta as i64 - active.base >= u32::MAX as i64;
        too_big || too_old || rel_overflow
    }

    /// Copies the batch into the tail buffer if it fits (growing the buffer when allowed) and
    /// assigns its offsets. `None` when buffered data must be written first.
    fn try_buffer(
        &self,
        st: &mut State<D::File>,
        now_ms: u64,
        batch: &[u8],
        header: &BatchHeader,
        stamp: Stamp,
    ) -> Option<AppendInfo> {
        let len = batch.len();
        let need = st.tail.fill + len;
        if need > st.tail.buf.bytes().len() {
            let max = align_up(self.config.get().write_buffer_bytes_max as u64) as usize;
            let grow_to = if need <= max {
                (st.tail.buf.bytes().len() * 2).clamp(align_up(need as u64) as usize, max)
            } else if !st.has_unwritten() {
                align_up(need as u64) as usize
            } else {
                return None;
            };
            let active_file = st.active().file.clone();
            let mut bigger = active_file.alloc(grow_to);
            bigger.bytes_mut()[..st.tail.fill]
                .copy_from_slice(&st.tail.buf.bytes()[..st.tail.fill]);
            st.tail.buf = bigger;
        }
        let base = st.next_offset;
        let fill = st.tail.fill;
        // From the batch as received: the copy is only written, never read back here.
        let append_time = stamp
            .log_append_time_ms
            .map(|time| (time, batch::AppendTimeStamp::of(batch, time)));
        let copy = &mut st.tail.buf.bytes_mut()[fill..fill + len];
        copy.copy_from_slice(batch);
        batch::set_base_offset(copy, Offset(base));
        if let Some(epoch) = stamp.partition_leader_epoch {
            batch::set_partition_leader_epoch(copy, epoch);
        }
        let mut max_timestamp = header.max_timestamp;
        if let Some((time, stamped)) = append_time {
            stamped.write_to(copy);
            max_timestamp = time;
        }
        let last = base + header.last_offset_delta as i64;
        self.cache.borrow_mut().push(base, last, copy);
        st.tail.fill += len;
        st.next_offset = last + 1;
        let interval = self.config.get().index_interval_bytes;
        let active = st.active_mut();
        let pos = active.size;
        active.size += len as u64;
        active.next_offset = last + 1;
        active.max_timestamp = active.max_timestamp.max(max_timestamp);
        active.first_append_ms.get_or_insert(now_ms);
        let max_ts = active.max_timestamp;
        active.index.on_batch(
            (base - active.base) as u32,
            pos as u32,
            len as u32,
            max_ts,
            interval,
        );
        Some(AppendInfo {
            base_offset: Offset(base),
            last_offset: Offset(last),
        })
    }

    async fn wait_acked(&self, now_ms: u64, last_offset: i64) -> Result<(), LogError> {
        loop {
            let id = self.next_waiter.get();
            self.next_waiter.set(id + 1);
            let wait = AckWait {
                log: self,
                key: (last_offset, id),
                registered: false,
                done: false,
            };
            let claim = {
                let mut st = self.state.borrow_mut();
                if st.acked_end(self.config.get().fsync) > last_offset {
                    return Ok(());
                }
                self.check_poison(&st)?;
                if st.written_offset <= last_offset {
                    // Our batch is still in the tail: write it (and whatever joined it).
                    if st.has_unwritten() {
                        st.claim(Claim::Write)
                    } else {
                        None
                    }
                } else {
                    // Written, not yet synced (`always`): one fdatasync for everybody written.
                    st.claim(Claim::Sync)
                }
            };
            match claim {
                Some(Claim::Write) => self.claimed(Claim::Write, self.write_round()).await?,
                Some(c) => self.claimed(c, self.sync_round(now_ms)).await?,
                None => wait.await,
            }
        }
    }

    /// Writes the tail's buffered bytes in one aligned write. Caller holds [`Claim::Write`].
    async fn write_round(&self) -> Result<(), LogError> {
        let write = {
            let mut st = self.state.borrow_mut();
            self.check_poison(&st)?;
            self.take_tail_for_write(&mut st)
        };
        let Some((file, buf, pos, upto, upto_pos)) = write else {
            return Ok(());
        };
        let end = pos + buf.bytes().len() as u64;
        let zeroes = self.preallocation(pos, end);
        let data = file.write_at(buf, pos);
        let ahead = async {
            match zeroes {
                Some((at, len)) => file
                    .write_zeroes_at(at, len)
                    .await
                    .map(|()| at + len as u64),
                None => Ok(end),
            }
        };
        let started = std::time::Instant::now();
        let (data, ahead) = futures_lite::future::zip(data, ahead).await;
        self.note_io(
            if file.dsync() {
                "O_DSYNC write"
            } else {
                "write"
            },
            started,
        );
        data.map_err(|e| LogError::io("write", &self.active_path(), e))?;
        // Zeroes are an optimisation: when they cannot be written (a full disk), appends go on
        // extending the file as without them, and the data write decides the log's fate.
        let alloc = ahead.unwrap_or(end);
        let mut st = self.state.borrow_mut();
        assert!(st.written_offset <= upto, "writes complete in order");
        st.written_offset = upto;
        st.written_pos = upto_pos;
        if file.dsync() && upto > st.synced_offset {
            st.synced_offset = upto;
            st.synced_pos = upto_pos;
        }
        st.alloc_pos = st.alloc_pos.max(end).max(alloc);
        Ok(())
    }

    /// The zeroes a write of `pos..end` takes along, written beside it (a disjoint range past
    /// it, in the same round under the write claim): once less than half a stretch is left,
    /// the next stretch — a quarter of the segment so far, between 64 KiB and
    /// `preallocate_bytes` (a quiet log preallocates little, and no round waits on a long
    /// zero write) — never past the segment size limit.
    ///
    /// None for a write longer than a quarter of `preallocate_bytes` (or two blocks): rounds
    /// that size would run past a stretch within a round or two, so every round would extend
    /// the file anyway and also wait for a zero write (itself extending, serialised behind
    /// the data in the same file's io-wq queue). Traced in a saturated native produce (~2 MB
    /// rounds): one 256 KiB zero write per round, finishing ~0.7 ms after the data; without
    /// them native produce +0.4–18% (five pairs) and the Kafka-wire produce's broker CPU −15%
    /// (BENCHMARKS.md, twenty-fourth run).
    fn preallocation(&self, pos: u64, end: u64) -> Option<(u64, usize)> {
        let config = self.config.get();
        // A write of one or two blocks (the partial last block rewritten, and a little more)
        // always counts as small, whatever the stretch.
        let small = (config.preallocate_bytes / 4).max(2 * ALIGN as u64);
        if config.preallocate_bytes == 0 || end - pos > small {
            return None;
        }
        let st = self.state.borrow();
        let from = st.alloc_pos.max(end);
        let chunk = align_up((end / 4).max(64 << 10).min(config.preallocate_bytes));
        if from >= end + chunk / 2 {
            return None;
        }
        let limit = align_up(config.segment_bytes_max);
        let len = chunk.min(limit.saturating_sub(from));
        (len > 0).then_some((from, len as usize))
    }

    /// One fdatasync of the active segment, covering everything written before it started.
    /// Caller holds [`Claim::Sync`].
    async fn sync_round(&self, now_ms: u64) -> Result<(), LogError> {
        let (file, upto, upto_pos) = {
            let st = self.state.borrow();
            self.check_poison(&st)?;
            (st.active().file.clone(), st.written_offset, st.written_pos)
        };
        if upto <= self.state.borrow().synced_offset {
            return Ok(());
        }
        let started = std::time::Instant::now();
        file.sync()
            .await
            .map_err(|e| LogError::io("fdatasync", &self.active_path(), e))?;
        self.note_io("fdatasync", started);
        let mut st = self.state.borrow_mut();
        if upto > st.synced_offset {
            st.synced_offset = upto;
            st.synced_pos = upto_pos;
        }
        st.last_sync_ms = now_ms;
        Ok(())
    }

    /// Takes the tail's unwritten bytes as an aligned buffer to write, leaving in its place a
    /// fresh tail that starts with the partial last block.
    #[allow(clippy::type_complexity)]
    fn take_tail_for_write(
        &self,
        st: &mut State<D::File>,
    ) -> Option<(Rc<D::File>, <D::File as DiskFile>::Buf, u64, i64, u64)> {
        if !st.has_unwritten() {
            return None;
        }
        let file = st.active().file.clone();
        let fill = st.tail.fill;
        let keep_from = align_down(fill as u64) as usize;
        let keep = fill - keep_from;
        let cap = st
            .tail
            .buf
            .bytes()
            .len()
            .min(align_up(self.config.get().write_buffer_bytes_max as u64) as usize)
            .max(TAIL_BYTES_MIN);
        let mut next = file.alloc(cap);
        next.bytes_mut()[..keep].copy_from_slice(&st.tail.buf.bytes()[keep_from..fill]);
        let new_tail = Tail {
            buf: next,
            file_pos: st.tail.file_pos + keep_from as u64,
            fill: keep,
            written: keep,
        };
        let mut old = std::mem::replace(&mut st.tail, new_tail);
        let write_len = align_up(fill as u64) as usize;
        old.buf.bytes_mut()[fill..write_len].fill(0);
        old.buf.trim(write_len);
        Some((
            file,
            old.buf,
            old.file_pos,
            st.next_offset,
            old.file_pos + fill as u64,
        ))
    }

    /// Reports a slow write or fdatasync of the active segment (rate-limited, see [`SlowOps`]):
    /// under `acks=all` every acknowledged write waits for the device, so a stalling device
    /// is what producers and consumers see as tail latency.
    fn note_io(&self, op: &str, started: std::time::Instant) {
        let took_ms = started.elapsed().as_millis() as u64;
        if took_ms < SLOW_IO_MS {
            return;
        }
        let report = SLOW_IO.with(|s| s.borrow_mut().record(took_ms, crate::wall_clock_ms()));
        if let Some(r) = report {
            eprintln!(
                "sluice: slow disk: {} write(s) or fdatasync(s) took {SLOW_IO_MS} ms or more since \
                 the last report, the slowest {} ms; the latest: {op} of {}, {took_ms} ms",
                r.count,
                r.slowest_ms,
                self.active_path().display()
            );
        }
    }

    fn active_path(&self) -> PathBuf {
        segment_path(&self.dir, self.state.borrow().active().base, "log")
    }

    /// Seals the active segment (written, cut to its logical size, fdatasynced, indexed) and
    /// starts a new one at the log end. Caller holds [`Claim::Exclusive`].
    async fn roll(&self, now_ms: u64) -> Result<(), LogError> {
        self.write_round().await?;
        let (file, size, path) = {
            let st = self.state.borrow();
            let a = st.active();
            (
                a.file.clone(),
                a.size,
                segment_path(&self.dir, a.base, "log"),
            )
        };
        file.truncate(size)
            .await
            .map_err(|e| LogError::io("truncate", &path, e))?;
        file.sync()
            .await
            .map_err(|e| LogError::io("fdatasync", &path, e))?;
        let (base, offsets, times) = {
            let st = self.state.borrow();
            let active = st.active();
            let summary = summary_of(active);
            (
                active.base,
                active.index.encode_offsets(summary),
                active.index.encode_times(summary),
            )
        };
        write_index_bytes(&self.disk, &self.dir, base, offsets, times).await?;
        let base = self.state.borrow().next_offset;
        let segment = create_segment(&self.disk, &self.dir, base, &self.config.get()).await?;
        let tail = Tail {
            buf: segment.file.alloc(TAIL_BYTES_MIN),
            file_pos: 0,
            fill: 0,
            written: 0,
        };
        let mut st = self.state.borrow_mut();
        st.segments.insert(base, segment);
        st.tail = tail;
        st.written_offset = base;
        st.synced_offset = base;
        st.written_pos = 0;
        st.synced_pos = 0;
        st.alloc_pos = 0;
        st.last_sync_ms = now_ms;
        Ok(())
    }

    async fn truncate_locked(&self, target: i64) -> Result<Offset, LogError> {
        let (doomed, keep) = {
            let st = self.state.borrow();
            if target >= st.next_offset {
                return Ok(Offset(st.next_offset));
            }
            // Offsets from `target` on will be assigned again.
            self.cache.borrow_mut().clear();
            let doomed: Vec<i64> = st.segments.range(target..).map(|(&b, _)| b).collect();
            let keep = st.segments.range(..target).next_back().map(|(&b, s)| {
                (
                    b,
                    s.file.clone(),
                    s.index.position_for((target - b) as u32),
                    s.size,
                )
            });
            (doomed, keep)
        };
        // Find where the first batch holding `target` or later starts in the kept segment.
        let mut cut = None;
        if let Some((base, file, pos, size)) = &keep {
            let path = segment_path(&self.dir, *base, "log");
            let mut cursor = BatchCursor::new(file.clone(), path, *pos as u64, *size);
            let mut at = *size;
            while let Some((header, hpos)) = cursor.next().await? {
                if header.last_offset() >= target {
                    at = hpos;
                    break;
                }
            }
            cut = Some((*base, file.clone(), at));
        }
        {
            let mut st = self.state.borrow_mut();
            for b in &doomed {
                st.segments.remove(b);
            }
        }
        for &b in &doomed {
            remove_segment_files(&self.disk, &self.dir, b).await?;
        }
        let segment = match cut {
            Some((base, file, at)) => {
                let path = segment_path(&self.dir, base, "log");
                file.truncate(at)
                    .await
                    .map_err(|e| LogError::io("truncate", &path, e))?;
                file.sync()
                    .await
                    .map_err(|e| LogError::io("fdatasync", &path, e))?;
                remove_index_files(&self.disk, &self.dir, base).await?;
                let scan = scan_segment(
                    &*file,
                    &path,
                    base,
                    at,
                    self.config.get().index_interval_bytes,
                )
                .await?;
                assert_eq!(scan.valid_bytes, at, "truncated segment rescans to its cut");
                let seg = self
                    .state
                    .borrow_mut()
                    .segments
                    .remove(&base)
                    .expect("kept segment");
                Segment {
                    size: at,
                    next_offset: scan.next_offset,
                    max_timestamp: scan.max_timestamp,
                    index: scan.index,
                    ..seg
                }
            }
            // Everything goes: start over at `target`.
            None => create_segment(&self.disk, &self.dir, target, &self.config.get()).await?,
        };
        self.disk
            .sync_dir(&self.dir)
            .await
            .map_err(|e| LogError::io("sync dir", &self.dir, e))?;
        let tail = load_tail(&segment, &segment_path(&self.dir, segment.base, "log")).await?;
        let mut st = self.state.borrow_mut();
        let end = segment.next_offset;
        let segment_size = segment.size;
        st.segments.insert(segment.base, segment);
        let first = *st.segments.keys().next().expect("a segment");
        st.log_start = st.log_start.clamp(first, end);
        let size = segment_size;
        st.next_offset = end;
        st.tail = tail;
        st.written_offset = end;
        st.synced_offset = end;
        st.written_pos = size;
        st.synced_pos = size;
        st.alloc_pos = size;
        Ok(Offset(end))
    }

    fn plan_read(&self, from: i64) -> Option<ReadPlan<D::File>> {
        let st = self.state.borrow();
        let (_, seg) = st.segments.range(..=from).next_back()?;
        let active = seg.base == st.active().base;
        let rel = (from - seg.base) as u32;
        let (pos, first_batch_end_max) = match seg.index.batch_at(rel) {
            Some((pos, next)) => (pos as u64, Some(next.map_or(seg.size, u64::from))),
            None => (seg.index.position_for(rel) as u64, None),
        };
        Some(ReadPlan {
            file: seg.file.clone(),
            path: segment_path(&self.dir, seg.base, "log"),
            pos,
            first_batch_end_max,
            limit: seg.size,
            acked_limit: active.then(|| st.acked_pos(self.config.get().fsync)),
            segment_end: seg.next_offset,
        })
    }
}

/// Bytes of a segment file to send as they are (zero-copy fetch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRegion {
    pub path: PathBuf,
    pub pos: u64,
    pub len: u64,
}

/// Walks batch headers from an indexed position, reading small windows (not the batches).
struct HeaderWalker<'a, F> {
    file: &'a F,
    path: &'a Path,
    pos: u64,
    limit: u64,
    window: Vec<u8>,
    window_pos: u64,
}

const HEADER_WINDOW_BYTES: usize = 16 << 10;

impl<'a, F: DiskFile> HeaderWalker<'a, F> {
    fn new(file: &'a F, path: &'a Path, pos: u64, limit: u64) -> Self {
        HeaderWalker {
            file,
            path,
            pos,
            limit,
            window: Vec::new(),
            window_pos: 0,
        }
    }

    async fn next(&mut self) -> Result<Option<(BatchHeader, u64)>, LogError> {
        if self.pos + HEADER_BYTES as u64 > self.limit {
            return Ok(None);
        }
        let in_window = self.pos >= self.window_pos
            && self.pos + HEADER_BYTES as u64 <= self.window_pos + self.window.len() as u64;
        if !in_window {
            let want = HEADER_WINDOW_BYTES.min((self.limit - self.pos) as usize);
            self.window = self
                .file
                .read_at(self.pos, want)
                .await
                .map_err(|e| LogError::io("read", self.path, e))?;
            self.window_pos = self.pos;
        }
        let at = (self.pos - self.window_pos) as usize;
        let header = BatchHeader::parse(&self.window[at..]).map_err(|e| LogError::Corrupt {
            segment: self.path.display().to_string(),
            pos: self.pos,
            reason: e.to_string(),
        })?;
        let pos = self.pos;
        self.pos += header.total_bytes() as u64;
        Ok(Some((header, pos)))
    }
}

/// Where a read starts: the segment holding the offset and the indexed position before it.
struct ReadPlan<F> {
    file: Rc<F>,
    path: PathBuf,
    pos: u64,
    /// Set when the batch at `pos` starts exactly at the planned offset (an indexed batch):
    /// where that batch ends at the latest (the next indexed batch, else the segment's end).
    first_batch_end_max: Option<u64>,
    limit: u64,
    /// For the active segment: where its acknowledged bytes end.
    acked_limit: Option<u64>,
    segment_end: i64,
}

/// Reads consecutive batches of one segment file in large chunks.
struct BatchCursor<F> {
    file: Rc<F>,
    path: PathBuf,
    /// File position of `buf[0]`.
    buf_pos: u64,
    buf: Vec<u8>,
    /// Position in `buf` of the next batch.
    at: usize,
    /// Range in `buf` of the batch returned last.
    current: std::ops::Range<usize>,
    limit: u64,
    /// Bytes read per refill (at least the batch that needs them).
    chunk: usize,
}

impl<F: DiskFile> BatchCursor<F> {
    fn new(file: Rc<F>, path: PathBuf, pos: u64, limit: u64) -> Self {
        BatchCursor {
            file,
            path,
            buf_pos: pos,
            buf: Vec::new(),
            at: 0,
            current: 0..0,
            limit,
            chunk: SCAN_CHUNK_BYTES,
        }
    }

    /// Reads `bytes` per refill instead of [`SCAN_CHUNK_BYTES`]: a reader that knows how much
    /// it wants gets it in one read rather than in overlapping chunks.
    fn chunk(mut self, bytes: usize) -> Self {
        self.chunk = bytes.clamp(HEADER_BYTES, MAX_READ_CHUNK_BYTES);
        self
    }

    /// The next complete, well-formed batch header and its file position; `None` at `limit`
    /// or where bytes stop forming a batch (end of the written part of the file).
    async fn next(&mut self) -> Result<Option<(BatchHeader, u64)>, LogError> {
        let pos = self.buf_pos + self.at as u64;
        if pos + HEADER_BYTES as u64 > self.limit {
            return Ok(None);
        }
        if self.buf.len() < self.at + HEADER_BYTES {
            self.refill(HEADER_BYTES).await?;
        }
        let header = match BatchHeader::parse(&self.buf[self.at..]) {
            Ok(h) => h,
            Err(_) => return Ok(None),
        };
        let total = header.total_bytes();
        if pos + total as u64 > self.limit {
            return Ok(None);
        }
        if self.buf.len() < self.at + total {
            self.refill(total).await?;
            if self.buf.len() < total {
                return Ok(None);
            }
        }
        self.current = self.at..self.at + total;
        self.at += total;
        Ok(Some((header, pos)))
    }

    fn current(&self) -> &[u8] {
        &self.buf[self.current.clone()]
    }

    fn corrupt(&self, reason: String) -> LogError {
        LogError::Corrupt {
            segment: self.path.display().to_string(),
            pos: self.buf_pos + self.current.start as u64,
            reason,
        }
    }

    /// Makes `buf` start at the next batch and hold at least `need` bytes (if the file has them).
    async fn refill(&mut self, need: usize) -> Result<(), LogError> {
        let pos = self.buf_pos + self.at as u64;
        let want = need
            .max(self.chunk)
            .min((self.limit - pos) as usize)
            .max(need);
        let bytes = self
            .file
            .read_at(pos, want)
            .await
            .map_err(|e| LogError::io("read", &self.path, e))?;
        self.buf = bytes;
        self.buf_pos = pos;
        self.at = 0;
        Ok(())
    }
}

struct Scan {
    valid_bytes: u64,
    next_offset: i64,
    max_timestamp: i64,
    index: SegmentIndex,
}

/// Reads a whole segment, checking every batch's CRC and that offsets follow on from `base`.
/// Stops at the first byte that breaks either: what follows is a torn or corrupt tail.
async fn scan_segment<F: DiskFile>(
    file: &F,
    path: &Path,
    base: i64,
    file_bytes: u64,
    interval_bytes: u32,
) -> Result<Scan, LogError> {
    let mut scan = Scan {
        valid_bytes: 0,
        next_offset: base,
        max_timestamp: -1,
        index: SegmentIndex::default(),
    };
    let mut pos: u64 = 0;
    loop {
        let want = SCAN_CHUNK_BYTES.min((file_bytes - pos) as usize);
        if want < HEADER_BYTES {
            break;
        }
        let chunk = file
            .read_at(pos, want)
            .await
            .map_err(|e| LogError::io("read", path, e))?;
        let (batches, used) = batch::split_batches(&chunk, true);
        let mut stop = false;
        for (header, range) in &batches {
            if header.base_offset != scan.next_offset
                || header.records_count < 1
                || (header.last_offset() - base) >= u32::MAX as i64
            {
                stop = true;
                break;
            }
            scan.max_timestamp = scan.max_timestamp.max(header.max_timestamp);
            scan.index.on_batch(
                (header.base_offset - base) as u32,
                (pos + range.start as u64) as u32,
                range.len() as u32,
                scan.max_timestamp,
                interval_bytes,
            );
            scan.next_offset = header.last_offset() + 1;
            scan.valid_bytes = pos + range.end as u64;
        }
        if stop || used == 0 {
            // A batch larger than the chunk: retry with a chunk that holds it.
            if !stop && used == 0 {
                if let Ok(h) = BatchHeader::parse(&chunk) {
                    let total = h.total_bytes() as u64;
                    if total > want as u64 && pos + total <= file_bytes {
                        let big = file
                            .read_at(pos, total as usize)
                            .await
                            .map_err(|e| LogError::io("read", path, e))?;
                        let (b, u) = batch::split_batches(&big, true);
                        if let Some((header, _)) = b.first() {
                            if header.base_offset == scan.next_offset && header.records_count >= 1 {
                                scan.max_timestamp = scan.max_timestamp.max(header.max_timestamp);
                                scan.index.on_batch(
                                    (header.base_offset - base) as u32,
                                    pos as u32,
                                    u as u32,
                                    scan.max_timestamp,
                                    interval_bytes,
                                );
                                scan.next_offset = header.last_offset() + 1;
                                pos += u as u64;
                                scan.valid_bytes = pos;
                                continue;
                            }
                        }
                    }
                }
            }
            break;
        }
        pos += used as u64;
    }
    Ok(scan)
}

fn encode_start_checkpoint(offset: i64) -> Vec<u8> {
    let mut out = offset.to_be_bytes().to_vec();
    out.extend_from_slice(&crc32c::crc32c(&out).to_be_bytes());
    out
}

fn decode_start_checkpoint(bytes: &[u8]) -> Option<i64> {
    let (v, crc) = (bytes.get(0..8)?, bytes.get(8..12)?);
    if bytes.len() != 12 || crc32c::crc32c(v).to_be_bytes() != crc {
        return None;
    }
    Some(i64::from_be_bytes(v.try_into().ok()?))
}

/// Reads exactly `len` bytes of a segment at `pos`: fewer means the segment ended inside a
/// region known to be there (truncated under the reader).
async fn read_whole<F: DiskFile>(
    file: &F,
    path: &Path,
    pos: u64,
    len: u64,
) -> Result<Vec<u8>, LogError> {
    let bytes = file
        .read_at(pos, len as usize)
        .await
        .map_err(|e| LogError::io("read", path, e))?;
    if (bytes.len() as u64) < len {
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "segment ended inside a fetch region",
        );
        return Err(LogError::io("read", path, eof));
    }
    Ok(bytes)
}

fn segment_path(dir: &Path, base: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

fn summary_of<F>(seg: &Segment<F>) -> IndexSummary {
    IndexSummary {
        segment_bytes: seg.size,
        last_offset: seg.next_offset - 1,
        max_timestamp: seg.max_timestamp,
    }
}

async fn load_index<D: Disk>(
    disk: &D,
    dir: &Path,
    base: i64,
    file_bytes: u64,
) -> Result<Option<(SegmentIndex, IndexSummary)>, LogError> {
    let offsets_path = segment_path(dir, base, "index");
    let times_path = segment_path(dir, base, "timeindex");
    let offsets = disk
        .read_small(&offsets_path)
        .await
        .map_err(|e| LogError::io("read", &offsets_path, e))?;
    let times = disk
        .read_small(&times_path)
        .await
        .map_err(|e| LogError::io("read", &times_path, e))?;
    let (Some(offsets), Some(times)) = (offsets, times) else {
        return Ok(None);
    };
    Ok(SegmentIndex::decode(&offsets, &times)
        .filter(|(_, s)| s.segment_bytes == file_bytes && s.last_offset >= base))
}

async fn write_index<D: Disk>(
    disk: &D,
    dir: &Path,
    seg: &Segment<D::File>,
) -> Result<(), LogError> {
    let summary = summary_of(seg);
    write_index_bytes(
        disk,
        dir,
        seg.base,
        seg.index.encode_offsets(summary),
        seg.index.encode_times(summary),
    )
    .await
}

async fn write_index_bytes<D: Disk>(
    disk: &D,
    dir: &Path,
    base: i64,
    offsets: Vec<u8>,
    times: Vec<u8>,
) -> Result<(), LogError> {
    let p = segment_path(dir, base, "index");
    disk.write_small_atomic(&p, offsets)
        .await
        .map_err(|e| LogError::io("write index", &p, e))?;
    let p = segment_path(dir, base, "timeindex");
    disk.write_small_atomic(&p, times)
        .await
        .map_err(|e| LogError::io("write index", &p, e))
}

async fn remove_index_files<D: Disk>(disk: &D, dir: &Path, base: i64) -> Result<(), LogError> {
    for ext in ["index", "timeindex"] {
        let p = segment_path(dir, base, ext);
        match disk.remove(&p).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io("remove", &p, e)),
        }
    }
    Ok(())
}

async fn remove_segment_files<D: Disk>(disk: &D, dir: &Path, base: i64) -> Result<(), LogError> {
    remove_index_files(disk, dir, base).await?;
    let p = segment_path(dir, base, "log");
    match disk.remove(&p).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io("remove", &p, e)),
    }
}

/// Segments written under [`FsyncPolicy::Always`] are opened `dsync`: each write is its own
/// fdatasync (one io_uring request, where a write then an fdatasync took two, the second
/// handed to an io-wq worker thread). A policy changed later takes effect at the next segment;
/// until then sync rounds cover a segment opened without it.
fn dsync_writes(config: &LogConfig) -> bool {
    config.fsync == FsyncPolicy::Always
}

async fn create_segment<D: Disk>(
    disk: &D,
    dir: &Path,
    base: i64,
    config: &LogConfig,
) -> Result<Segment<D::File>, LogError> {
    let path = segment_path(dir, base, "log");
    let file = disk
        .open(&path, dsync_writes(config))
        .await
        .map_err(|e| LogError::io("create", &path, e))?;
    file.truncate(0)
        .await
        .map_err(|e| LogError::io("truncate", &path, e))?;
    disk.sync_dir(dir)
        .await
        .map_err(|e| LogError::io("sync dir", dir, e))?;
    Ok(Segment {
        base,
        file: Rc::new(file),
        size: 0,
        next_offset: base,
        max_timestamp: -1,
        index: SegmentIndex::default(),
        first_append_ms: None,
    })
}

/// A tail buffer for `seg` holding its partial last block, ready for more appends.
async fn load_tail<F: DiskFile>(seg: &Segment<F>, path: &Path) -> Result<Tail<F::Buf>, LogError> {
    let file_pos = align_down(seg.size);
    let keep = (seg.size - file_pos) as usize;
    let mut buf = seg.file.alloc(TAIL_BYTES_MIN);
    if keep > 0 {
        let bytes = seg
            .file
            .read_at(file_pos, keep)
            .await
            .map_err(|e| LogError::io("read", path, e))?;
        if bytes.len() != keep {
            return Err(LogError::Corrupt {
                segment: path.display().to_string(),
                pos: file_pos,
                reason: format!("file ends before its recovered size {}", seg.size),
            });
        }
        buf.bytes_mut()[..keep].copy_from_slice(&bytes);
    }
    Ok(Tail {
        buf,
        file_pos,
        fill: keep,
        written: keep,
    })
}
