//! The partition log against a plain `Vec` model, on the simulated disk: random appends, reads
//! (by offset and by timestamp), truncations, retention, clean reopens and crashes that tear
//! every unsynced write. Under `fsync = always` no acknowledged batch may ever be lost.

use std::path::PathBuf;

use futures_lite::future::block_on;
use proptest::prelude::*;
use sluice_core::batch::{self, BatchBuilder, BatchHeader, Compression};
use sluice_core::Offset;
use sluice_storage::disk::{align_up, Disk};
use sluice_storage::{FsyncPolicy, Log, LogConfig, LogError, SimDisk};

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: usize,
        value_bytes: usize,
        codec: u8,
    },
    Read {
        at: u16,
        max_bytes: usize,
    },
    ByTime {
        at: u16,
    },
    Truncate {
        at: u16,
    },
    Retain,
    Reopen,
    Crash {
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..20, 0usize..3000, 0u8..3).prop_map(|(records, value_bytes, codec)| Op::Append { records, value_bytes, codec }),
        3 => (any::<u16>(), 1usize..40_000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => any::<u16>().prop_map(|at| Op::ByTime { at }),
        1 => any::<u16>().prop_map(|at| Op::Truncate { at }),
        1 => Just(Op::Retain),
        1 => Just(Op::Reopen),
        1 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
    ]
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes_max: 24 * 1024,
        segment_age_ms_max: None,
        retention_ms: None,
        retention_bytes: Some(100 * 1024),
        batch_bytes_max: 1 << 20,
        index_interval_bytes: 1024,
        write_buffer_bytes_max: 16 * 1024,
        fsync,
        // Smaller than the log: reads are answered from memory and from the disk.
        tail_cache_bytes: 8 * 1024,
        // Zeroes ahead of the active segment's end: crashes and reopens must cut them off.
        preallocate_bytes: 8 * 1024,
    }
}

/// One acknowledged batch as the model remembers it.
#[derive(Debug, Clone)]
struct Stored {
    bytes: Vec<u8>,
    header: BatchHeader,
}

fn make_batch(seq: u64, records: usize, value_bytes: usize, codec: u8) -> Vec<u8> {
    let codec = [Compression::None, Compression::Lz4, Compression::Zstd][codec as usize % 3];
    let ts0 = 1_000_000 + seq as i64 * 10;
    let mut b = BatchBuilder::new(codec, ts0);
    for r in 0..records {
        let value: Vec<u8> = (0..value_bytes)
            .map(|i| (seq as usize * 31 + r + i) as u8)
            .collect();
        b.push(
            ts0 + r as i64,
            Some(format!("{seq}-{r}").as_bytes()),
            Some(&value),
            &[],
        );
    }
    b.build()
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// `opened_under`: the policy the log is opened with (every open), `fsync` then set on it. A
/// log opened under `always` writes O_DSYNC; one switched to `always` later fdatasyncs.
async fn open_log(
    disk: &SimDisk,
    dir: &PathBuf,
    now: u64,
    opened_under: FsyncPolicy,
    fsync: FsyncPolicy,
) -> Log<SimDisk> {
    let log = Log::open(disk.clone(), dir, config(opened_under), now)
        .await
        .unwrap();
    log.set_config(config(fsync));
    log
}

async fn run(ops: Vec<Op>, fsync: FsyncPolicy, opened_under: FsyncPolicy) {
    let disk = SimDisk::new();
    let dir = PathBuf::from("/sim/topic-0");
    let mut now = 1_000u64;
    let mut log = open_log(&disk, &dir, now, opened_under, fsync).await;
    let mut model: Vec<Stored> = Vec::new();
    let mut seq = 0u64;
    for op in ops {
        now += 1;
        match op {
            Op::Append {
                records,
                value_bytes,
                codec,
            } => {
                let mut bytes = make_batch(seq, records, value_bytes, codec);
                seq += 1;
                let info = log.append(now, &mut bytes).await.unwrap();
                let expected = model
                    .last()
                    .map_or(log.start_offset().0.max(0), |s| s.header.last_offset() + 1);
                assert_eq!(info.base_offset.0, expected, "offsets are dense");
                assert_eq!(info.last_offset.0 - info.base_offset.0 + 1, records as i64);
                let header = batch::validate(&bytes).unwrap();
                model.push(Stored { bytes, header });
            }
            Op::Read { at, max_bytes } => {
                let Some((from, first)) = pick(&model, at) else {
                    continue;
                };
                let got = log.read(Offset(from), max_bytes).await.unwrap();
                let mut want = Vec::new();
                for s in &model[first..] {
                    if !want.is_empty() && want.len() + s.bytes.len() > max_bytes {
                        break;
                    }
                    want.extend_from_slice(&s.bytes);
                }
                // A read stops at a segment boundary; it must be a prefix of the model's answer
                // and hold at least the first batch.
                assert!(!got.is_empty(), "read at {from} returned nothing");
                assert!(
                    want.starts_with(&got),
                    "read at {from} diverges from the model"
                );
                // The in-memory tail, when it holds `from`, answers the same bytes.
                if let Some(cached) = log.read_cached(Offset(from), max_bytes).unwrap() {
                    assert!(!cached.is_empty(), "cached read at {from} returned nothing");
                    assert!(
                        want.starts_with(&cached),
                        "cached read at {from} diverges from the model"
                    );
                }
                // The zero-copy region starts at the same batch, holds at least all of it, and
                // agrees with the model byte for byte (it may end inside a later batch).
                let region = log
                    .read_region(Offset(from), max_bytes)
                    .await
                    .unwrap()
                    .expect("a region");
                let file = disk
                    .read_small(&region.path)
                    .await
                    .unwrap()
                    .expect("segment file");
                let bytes = &file[region.pos as usize..(region.pos + region.len) as usize];
                let first_len = BatchHeader::parse(&got).unwrap().total_bytes();
                assert!(bytes.len() >= first_len && bytes.len() <= max_bytes.max(first_len));
                let rest: Vec<u8> = model[first..]
                    .iter()
                    .flat_map(|s| s.bytes.iter().copied())
                    .collect();
                assert!(
                    rest.starts_with(bytes),
                    "region at {from} diverges from the model"
                );
                // Read with O_DIRECT instead of sent from the file: the same bytes.
                let direct = log
                    .read_region_bytes(Offset(from), max_bytes)
                    .await
                    .unwrap()
                    .expect("region bytes");
                assert_eq!(direct, bytes, "direct region read at {from}");
                // A span read starts at a batch at or before `from`'s and runs on as the log.
                let span = log
                    .read_span_bytes(Offset(from), max_bytes)
                    .await
                    .unwrap()
                    .expect("span bytes");
                assert!(!span.is_empty() && span.len() <= max_bytes.max(1));
                if span.len() >= 8 {
                    // baseOffset: the first 8 bytes of a batch.
                    let base = i64::from_be_bytes(span[..8].try_into().unwrap());
                    let k = model
                        .iter()
                        .position(|s| s.header.base_offset == base)
                        .expect("span starts at a batch");
                    assert!(k <= first, "span at {from} starts past its batch");
                    let from_k: Vec<u8> = model[k..]
                        .iter()
                        .flat_map(|s| s.bytes.iter().copied())
                        .collect();
                    assert!(
                        from_k.starts_with(&span),
                        "span at {from} diverges from the model"
                    );
                }
            }
            Op::ByTime { at } => {
                let Some((_, first)) = pick(&model, at) else {
                    continue;
                };
                let ts = model[first].header.base_timestamp + 1;
                let hit = log.offset_for_timestamp(ts).await.unwrap();
                let want = model
                    .iter()
                    .flat_map(|s| batch::records(&s.bytes, 1 << 24).unwrap())
                    .find(|r| r.timestamp >= ts);
                assert_eq!(
                    hit.map(|h| (h.offset.0, h.timestamp)),
                    want.map(|r| (r.offset, r.timestamp))
                );
            }
            Op::Truncate { at } => {
                let Some((to, _)) = pick(&model, at) else {
                    continue;
                };
                let end = log.truncate_to(Offset(to)).await.unwrap();
                model.retain(|s| s.header.last_offset() < to);
                let model_end = model.last().map_or(end.0, |s| s.header.last_offset() + 1);
                assert_eq!(end.0, model_end);
                assert_eq!(log.end_offset(), end);
            }
            Op::Retain => {
                log.enforce_retention(now).await.unwrap();
                let start = log.start_offset().0;
                model.retain(|s| s.header.base_offset >= start);
                // retention.bytes plus at most one sealed segment (24 KiB + one 60 KiB batch).
                assert!(log.size_bytes() <= 200 * 1024, "retention.bytes respected");
            }
            Op::Reopen => {
                log.sync(now).await.unwrap();
                drop(log);
                log = open_log(&disk, &dir, now, opened_under, fsync).await;
            }
            Op::Crash { mut seed } => {
                if fsync != FsyncPolicy::Always {
                    continue;
                }
                seed |= 1;
                drop(log);
                disk.crash(|_| xorshift(&mut seed).is_multiple_of(2));
                log = open_log(&disk, &dir, now, opened_under, fsync).await;
            }
        }
        check_whole(&log, &model).await;
    }
}

/// An offset inside the model's batches (`at` picks which) and the index of its batch.
fn pick(model: &[Stored], at: u16) -> Option<(i64, usize)> {
    if model.is_empty() {
        return None;
    }
    let i = at as usize % model.len();
    let h = &model[i].header;
    let span = h.last_offset() - h.base_offset + 1;
    Some((h.base_offset + (at as i64 / 7) % span, i))
}

async fn check_whole<D: sluice_storage::disk::Disk>(log: &Log<D>, model: &[Stored]) {
    let end = model.last().map(|s| s.header.last_offset() + 1);
    if let Some(end) = end {
        assert_eq!(log.end_offset().0, end, "log end offset");
        assert_eq!(
            log.acked_end().0,
            end,
            "everything appended is acknowledged"
        );
    }
    let mut all = Vec::new();
    let mut from = log.start_offset();
    loop {
        let chunk = log.read(from, 64 * 1024).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        let (batches, used) = batch::split_batches(&chunk, true);
        assert_eq!(used, chunk.len(), "reads return whole valid batches");
        from = Offset(batches.last().unwrap().0.last_offset() + 1);
        all.extend_from_slice(&chunk);
    }
    let want: Vec<u8> = model.iter().flat_map(|s| s.bytes.iter().copied()).collect();
    assert!(
        all == want,
        "log content ({} bytes) differs from model ({} bytes)",
        all.len(),
        want.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_agrees_with_model_fsync_always(ops in proptest::collection::vec(op(), 1..80)) {
        block_on(run(ops, FsyncPolicy::Always, FsyncPolicy::Always));
    }

    /// `always` set on a log opened under `never`: its segments are not O_DSYNC (until rolled)
    /// and fdatasyncs make its appends durable.
    #[test]
    fn log_agrees_with_model_fsync_always_set_after_open(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        block_on(run(ops, FsyncPolicy::Always, FsyncPolicy::Never));
    }

    #[test]
    fn log_agrees_with_model_fsync_never(ops in proptest::collection::vec(op(), 1..80)) {
        block_on(run(ops, FsyncPolicy::Never, FsyncPolicy::Never));
    }
}

#[test]
fn concurrent_appends_share_one_fsync() {
    block_on(async {
        let disk = SimDisk::new();
        let log = Log::open(disk.clone(), "/sim/p", config(FsyncPolicy::Always), 0)
            .await
            .unwrap();
        let syncs_before = disk.syncs();
        let appends = (0..64).map(|i| {
            let log = &log;
            async move {
                let mut b = make_batch(i, 2, 100, 0);
                log.append(1, &mut b).await.unwrap()
            }
        });
        let mut infos = futures::future::join_all(appends).await;
        infos.sort_by_key(|i| i.base_offset);
        for (i, info) in infos.iter().enumerate() {
            assert_eq!(info.base_offset.0, 2 * i as i64);
        }
        let syncs = disk.syncs() - syncs_before;
        assert!(
            syncs <= 4,
            "64 concurrent appends took {syncs} fsyncs; group commit expected"
        );
    });
}

#[test]
fn torn_unsynced_tail_is_cut_and_synced_data_survives() {
    for seed in 1..200u64 {
        block_on(async {
            let disk = SimDisk::new();
            let cfg = config(FsyncPolicy::Interval {
                interval_ms: 1_000_000,
            });
            let log = Log::open(disk.clone(), "/sim/p", cfg, 0).await.unwrap();
            let mut durable = Vec::new();
            for i in 0..10 {
                let mut b = make_batch(i, 3, 700, (i % 3) as u8);
                log.append(1, &mut b).await.unwrap();
                durable.extend_from_slice(&b);
            }
            log.sync(1).await.unwrap();
            let mut maybe = Vec::new();
            for i in 10..25 {
                let mut b = make_batch(i, 2, 900, 0);
                log.append(2, &mut b).await.unwrap();
                maybe.push(b);
            }
            drop(log);
            let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            disk.crash(|_| !xorshift(&mut s).is_multiple_of(3));
            let log = Log::open(disk.clone(), "/sim/p", cfg, 3).await.unwrap();
            let mut got = Vec::new();
            let mut from = Offset(0);
            while from < log.end_offset() {
                let chunk = log.read(from, 1 << 20).await.unwrap();
                let (batches, used) = batch::split_batches(&chunk, true);
                assert_eq!(used, chunk.len());
                from = Offset(batches.last().unwrap().0.last_offset() + 1);
                got.extend_from_slice(&chunk);
            }
            assert!(
                got.starts_with(&durable),
                "seed {seed}: synced batches lost"
            );
            // Whatever survived past them is a prefix of what was appended, batch by batch.
            let mut rest = &got[durable.len()..];
            for b in &maybe {
                if rest.is_empty() {
                    break;
                }
                assert!(
                    rest.starts_with(b),
                    "seed {seed}: recovered bytes that were never appended"
                );
                rest = &rest[b.len()..];
            }
            assert!(rest.is_empty());
            // The recovered log takes appends again at its end.
            let mut b = make_batch(99, 1, 10, 0);
            let info = log.append(4, &mut b).await.unwrap();
            assert_eq!(info.base_offset, from);
        });
    }
}

/// Under `always` the segment is opened O_DSYNC and its writes carry the flush; a segment
/// opened under another policy that became `always` later gets an fdatasync after each write.
/// Either way a failed flush poisons the log and its batch is never acknowledged.
#[test]
fn failed_fsync_poisons_the_log() {
    for (opened_under, op) in [
        (FsyncPolicy::Always, "write"),
        (FsyncPolicy::Never, "fdatasync"),
    ] {
        failed_fsync_poisons(opened_under, op);
    }
}

fn failed_fsync_poisons(opened_under: FsyncPolicy, failing_op: &str) {
    block_on(async {
        let disk = SimDisk::new();
        let log = Log::open(disk.clone(), "/sim/p", config(opened_under), 0)
            .await
            .unwrap();
        log.set_config(config(FsyncPolicy::Always));
        let mut b = make_batch(0, 1, 10, 0);
        log.append(1, &mut b).await.unwrap();
        disk.fail_sync_in(1);
        let mut b = make_batch(1, 1, 10, 0);
        match log.append(1, &mut b).await {
            Err(LogError::Io { op, .. }) => assert_eq!(op, failing_op),
            other => panic!("expected a failed {failing_op}, got {other:?}"),
        }
        assert!(log.is_poisoned());
        let mut b = make_batch(2, 1, 10, 0);
        assert!(matches!(
            log.append(1, &mut b).await,
            Err(LogError::Poisoned { .. })
        ));
        assert_eq!(
            log.acked_end(),
            Offset(1),
            "the failed batch is never acknowledged"
        );
        assert_eq!(
            log.read(Offset(0), 1 << 20).await.unwrap().len(),
            make_batch(0, 1, 10, 0).len()
        );
    });
}

#[test]
fn a_failed_preallocation_is_not_a_failed_append() {
    block_on(async {
        let disk = SimDisk::new();
        let log = Log::open(disk.clone(), "/sim/p", config(FsyncPolicy::Always), 0)
            .await
            .unwrap();
        // The first round writes the batch, then the zeroes ahead of it: the zeroes fail.
        disk.fail_write_in(2);
        let mut appended = Vec::new();
        for i in 0..10 {
            let mut b = make_batch(i, 1, 300, 0);
            log.append(1, &mut b).await.unwrap();
            appended.extend_from_slice(&b);
        }
        assert!(!log.is_poisoned());
        drop(log);
        disk.crash(|_| false);
        let log = Log::open(disk.clone(), "/sim/p", config(FsyncPolicy::Always), 2)
            .await
            .unwrap();
        assert_eq!(log.read(Offset(0), 1 << 20).await.unwrap(), appended);
    });
}

#[test]
fn failed_write_poisons_the_log() {
    block_on(async {
        let disk = SimDisk::new();
        let log = Log::open(disk.clone(), "/sim/p", config(FsyncPolicy::Never), 0)
            .await
            .unwrap();
        disk.fail_write_in(1);
        let mut b = make_batch(0, 1, 10, 0);
        assert!(matches!(
            log.append(1, &mut b).await,
            Err(LogError::Io { op: "write", .. })
        ));
        let mut b = make_batch(1, 1, 10, 0);
        assert!(matches!(
            log.append(1, &mut b).await,
            Err(LogError::Poisoned { .. })
        ));
        assert_eq!(log.acked_end(), Offset(0));
    });
}

#[test]
fn damaged_indexes_are_rebuilt_and_corrupt_batches_cut() {
    block_on(async {
        let disk = SimDisk::new();
        let dir = PathBuf::from("/sim/p");
        let cfg = config(FsyncPolicy::Always);
        let log = Log::open(disk.clone(), &dir, cfg, 0).await.unwrap();
        let mut all = Vec::new();
        for i in 0..60 {
            let mut b = make_batch(i, 2, 1500, 0);
            log.append(1, &mut b).await.unwrap();
            all.push(b);
        }
        assert!(log.segment_count() >= 4);
        drop(log);
        // Damage the index of the first segment: it is rebuilt from the segment.
        disk.corrupt(&dir.join(format!("{:020}.index", 0)), 10);
        let log = Log::open(disk.clone(), &dir, cfg, 2).await.unwrap();
        assert_eq!(log.end_offset(), Offset(120));
        let got = log.read(Offset(5), 1 << 20).await.unwrap();
        assert!(
            got.starts_with(&all[2]),
            "offset 5 lives in the third batch"
        );
        drop(log);
        // Flip a bit inside the active segment's 3rd-to-last batch: it and what follows go.
        let active_base = {
            let log = Log::open(disk.clone(), &dir, cfg, 3).await.unwrap();
            let end = log.end_offset().0;
            let bytes = log.read(Offset(end - 6), 1 << 20).await.unwrap();
            let h = BatchHeader::parse(&bytes).unwrap();
            assert_eq!(h.base_offset, end - 6);
            h.base_offset
        };
        let names: Vec<i64> = (0..200)
            .filter(|b| disk.file_len(&dir.join(format!("{b:020}.log"))).is_some())
            .collect();
        let last_base = *names.last().unwrap();
        let seg = dir.join(format!("{last_base:020}.log"));
        let seg_len = disk.file_len(&seg).unwrap();
        let batch_len = all[0].len();
        disk.corrupt(&seg, seg_len - 3 * batch_len + 100);
        let log = Log::open(disk.clone(), &dir, cfg, 4).await.unwrap();
        assert_eq!(
            log.end_offset().0,
            active_base,
            "corrupt batch and its successors are cut"
        );
    });
}

#[test]
fn retention_by_time_deletes_old_segments_only() {
    block_on(async {
        let disk = SimDisk::new();
        let mut cfg = config(FsyncPolicy::Never);
        cfg.retention_bytes = None;
        cfg.retention_ms = Some(1_000);
        let log = Log::open(disk, "/sim/p", cfg, 0).await.unwrap();
        for i in 0..40 {
            let mut b = make_batch(i, 2, 1500, 0);
            log.append(1, &mut b).await.unwrap();
        }
        let segments = log.segment_count();
        // Batch timestamps are ~1_000_000 + 10 * seq; everything sealed is older than now - 1s.
        assert_eq!(log.enforce_retention(1_000_000 + 100).await.unwrap(), 0);
        let deleted = log.enforce_retention(5_000_000).await.unwrap();
        assert_eq!(
            deleted,
            segments - 1,
            "all sealed segments expire, the active one stays"
        );
        assert!(log.start_offset().0 > 0);
        assert!(matches!(
            log.read(Offset(0), 100).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
    });
}

#[test]
fn rejects_bad_batches() {
    block_on(async {
        let log = Log::open(SimDisk::new(), "/sim/p", config(FsyncPolicy::Always), 0)
            .await
            .unwrap();
        let mut b = make_batch(0, 2, 10, 0);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(
            log.append(1, &mut b).await,
            Err(LogError::InvalidBatch(_))
        ));
        let mut big = make_batch(0, 1, 2 << 20, 0);
        assert!(matches!(
            log.append(1, &mut big).await,
            Err(LogError::BatchTooLarge { .. })
        ));
        assert_eq!(log.end_offset(), Offset(0));
    });
}

/// Appends are buffered in the order they arrive, also when one of them rolls the segment:
/// a stream assigns sequence numbers (and an idempotent producer checks its sequences) at
/// arrival, so an append overtaking another while the log rolls would store a message under
/// someone else's offset. (A stream logged "stored seq 975650 at offset 975648" at the first
/// 1 GiB roll of a benchmark run before this was fixed.)
#[test]
fn appends_keep_arrival_order_across_rolls() {
    block_on(async {
        let disk = SimDisk::new();
        let cfg = config(FsyncPolicy::Always);
        let log = Log::open(disk.clone(), "/sim/p", cfg, 0).await.unwrap();
        // All started at once, first polls in index order: index = arrival order.
        let batches: Vec<Vec<u8>> = (0..400u64)
            .map(|i| make_batch(i, 1, 200 + (i % 7) as usize * 300, 0))
            .collect();
        let appends = batches.iter().map(|b| log.append_ref(1, b));
        let infos: Vec<_> = futures::future::join_all(appends).await;
        assert!(log.segment_count() > 10, "the workload rolls segments");
        let mut prev = -1;
        for (i, info) in infos.into_iter().enumerate() {
            let info = info.unwrap();
            assert_eq!(
                info.base_offset.0,
                prev + 1,
                "append {i} was overtaken (or overtook) while the log rolled"
            );
            prev = info.last_offset.0;
        }
    });
}

#[test]
fn concurrent_appends_across_rolls_survive_a_crash() {
    for seed in 1..40u64 {
        block_on(async {
            let disk = SimDisk::new();
            let cfg = config(FsyncPolicy::Always);
            let log = Log::open(disk.clone(), "/sim/p", cfg, 0).await.unwrap();
            // Eight workers, each appending one batch after another, as producers do: new
            // appends keep arriving while a segment is being sealed.
            let workers = (0..8u64).map(|w| {
                let log = &log;
                async move {
                    let mut acked = Vec::new();
                    for j in 0..6u64 {
                        let i = w * 6 + j;
                        let mut b = make_batch(
                            i,
                            1 + (i * seed % 5) as usize,
                            ((i * 7919 + seed) % 6000) as usize,
                            0,
                        );
                        let info = log.append(1, &mut b).await.unwrap();
                        acked.push((info, b));
                    }
                    acked
                }
            });
            let acked: Vec<_> = futures::future::join_all(workers)
                .await
                .into_iter()
                .flatten()
                .collect();
            assert!(log.segment_count() > 3, "the workload rolls segments");
            drop(log);
            let mut s = seed | 1;
            disk.crash(|_| xorshift(&mut s).is_multiple_of(2));
            let log = Log::open(disk.clone(), "/sim/p", cfg, 2).await.unwrap();
            for (info, bytes) in acked {
                let got = log.read(info.base_offset, 1).await.unwrap();
                assert_eq!(
                    got, bytes,
                    "seed {seed}: acked batch at {} lost",
                    info.base_offset
                );
            }
        });
    }
}

#[test]
fn segments_roll_by_age() {
    block_on(async {
        let mut cfg = config(FsyncPolicy::Always);
        cfg.segment_age_ms_max = Some(100);
        let log = Log::open(SimDisk::new(), "/sim/p", cfg, 0).await.unwrap();
        let mut b = make_batch(0, 1, 10, 0);
        log.append(1_000, &mut b).await.unwrap();
        let mut b = make_batch(1, 1, 10, 0);
        log.append(1_050, &mut b).await.unwrap();
        assert_eq!(log.segment_count(), 1, "younger than segment.ms");
        let mut b = make_batch(2, 1, 10, 0);
        log.append(1_100, &mut b).await.unwrap();
        assert_eq!(
            log.segment_count(),
            2,
            "rolled once the segment reached segment.ms"
        );
    });
}

#[test]
fn parked_readers_wake_on_append() {
    block_on(async {
        let log = Log::open(SimDisk::new(), "/sim/p", config(FsyncPolicy::Always), 0)
            .await
            .unwrap();
        let woke = std::cell::Cell::new(false);
        let waiter = async {
            log.wait_for_acked_end_above(Offset(2)).await.unwrap();
            woke.set(true);
        };
        let writer = async {
            for i in 0..3 {
                let mut b = make_batch(i, 1, 10, 0);
                log.append(1, &mut b).await.unwrap();
                if i < 2 {
                    assert!(!woke.get(), "woke before offset 2 was acknowledged");
                }
            }
        };
        futures::future::join(waiter, writer).await;
        assert!(woke.get());
    });
}

#[test]
fn delete_records_moves_the_start_durably() {
    block_on(async {
        let disk = SimDisk::new();
        let dir = PathBuf::from("/sim/p");
        let cfg = config(FsyncPolicy::Always);
        let log = Log::open(disk.clone(), &dir, cfg, 0).await.unwrap();
        for i in 0..40 {
            let mut b = make_batch(i, 2, 1500, 0);
            log.append(1, &mut b).await.unwrap();
        }
        let segments = log.segment_count();
        assert!(matches!(
            log.delete_records_before(Offset(81)).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            log.delete_records_before(Offset(33)).await.unwrap(),
            Offset(33)
        );
        assert!(
            log.segment_count() < segments,
            "segments wholly below the start are deleted"
        );
        assert!(matches!(
            log.read(Offset(32), 1 << 20).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        let got = log.read(Offset(33), 1).await.unwrap();
        assert_eq!(
            BatchHeader::parse(&got).unwrap().base_offset,
            32,
            "batch holding 33"
        );
        assert_eq!(
            log.delete_records_before(Offset(10)).await.unwrap(),
            Offset(33),
            "never moves back"
        );
        drop(log);
        disk.crash(|_| false);
        let log = Log::open(disk.clone(), &dir, cfg, 2).await.unwrap();
        assert_eq!(log.start_offset(), Offset(33), "the start survives a crash");
        assert_eq!(log.end_offset(), Offset(80));
    });
}

#[test]
fn zeroes_are_preallocated_ahead_and_cut_by_rolls_and_recovery() {
    block_on(async {
        let disk = SimDisk::new();
        let cfg = LogConfig {
            segment_bytes_max: 256 * 1024,
            preallocate_bytes: 64 * 1024,
            ..config(FsyncPolicy::Always)
        };
        let first = PathBuf::from("/sim/p/00000000000000000000.log");
        let log = Log::open(disk.clone(), "/sim/p", cfg, 0).await.unwrap();
        let mut appended = Vec::new();
        for i in 0..20 {
            let mut b = make_batch(i, 2, 500, 0);
            log.append(1, &mut b).await.unwrap();
            appended.extend_from_slice(&b);
        }
        let logical = log.size_bytes() as usize;
        let file = disk.file_len(&first).unwrap();
        assert!(
            file >= logical + 16 * 1024,
            "the active segment holds zeroes past its {logical} bytes (file {file})"
        );
        // A crash keeps every block (data and zeroes): recovery reads the data and nothing
        // more, cuts the zeroes, and appends continue at the end.
        drop(log);
        disk.crash(|_| true);
        let log = Log::open(disk.clone(), "/sim/p", cfg, 2).await.unwrap();
        assert_eq!(log.end_offset(), Offset(40));
        assert_eq!(log.read(Offset(0), 1 << 20).await.unwrap(), appended);
        assert_eq!(disk.file_len(&first), Some(logical));
        // Filling past the segment limit rolls: the sealed segment ends at its last batch.
        let mut i = 20;
        let mut last = Vec::new();
        while log.segment_count() < 2 {
            let mut b = make_batch(i, 2, 500, 0);
            log.append(3, &mut b).await.unwrap();
            appended.extend_from_slice(&b);
            last = b;
            i += 1;
        }
        // The batch that rolled is alone in the new segment; every other one is sealed.
        assert_eq!(
            disk.file_len(&first),
            Some(appended.len() - last.len()),
            "the sealed segment's file is exactly its batches"
        );
        assert_eq!(log.size_bytes(), appended.len() as u64);
    });
}

/// A round longer than a quarter of the preallocation stretch writes no zeroes beside it (it
/// would outrun them at once): the file ends at its data. Small rounds after it preallocate
/// again, and everything reads back across a crash.
#[test]
fn large_rounds_write_no_zeroes() {
    block_on(async {
        let disk = SimDisk::new();
        let cfg = LogConfig {
            segment_bytes_max: 1 << 20,
            retention_bytes: None,
            write_buffer_bytes_max: 256 * 1024,
            preallocate_bytes: 64 * 1024,
            ..config(FsyncPolicy::Always)
        };
        let first = PathBuf::from("/sim/big/00000000000000000000.log");
        let log = Log::open(disk.clone(), "/sim/big", cfg, 0).await.unwrap();
        let mut appended = Vec::new();
        for i in 0..4 {
            // ~20 KiB a round: over a quarter of 64 KiB.
            let mut b = make_batch(i, 4, 5_000, 0);
            log.append(1, &mut b).await.unwrap();
            appended.extend_from_slice(&b);
            assert_eq!(
                disk.file_len(&first),
                Some(align_up(appended.len() as u64) as usize),
                "round {i}: the file ends at the block holding its last data"
            );
        }
        let mut b = make_batch(4, 2, 500, 0);
        log.append(1, &mut b).await.unwrap();
        appended.extend_from_slice(&b);
        let file = disk.file_len(&first).unwrap();
        assert!(
            file >= appended.len() + 32 * 1024,
            "a small round preallocates again (file {file}, data {})",
            appended.len()
        );
        drop(log);
        disk.crash(|_| true);
        let log = Log::open(disk.clone(), "/sim/big", cfg, 2).await.unwrap();
        assert_eq!(log.end_offset(), Offset(4 * 4 + 2));
        assert_eq!(log.read(Offset(0), 1 << 20).await.unwrap(), appended);
    });
}

/// A stamped append leaves the caller's bytes alone and stores the leader epoch and the
/// LogAppendTime in the log's copy, with a CRC that matches the rewritten header; the time
/// index then knows the batch by its append time, also after a reopen (read from the disk).
#[test]
fn stamps_go_into_the_logs_copy_with_a_fresh_crc() {
    use sluice_storage::Stamp;
    block_on(async {
        let disk = SimDisk::new();
        let dir = PathBuf::from("/sim/stamp");
        let mut log = open_log(&disk, &dir, 0, FsyncPolicy::Always, FsyncPolicy::Always).await;
        let plain = make_batch(0, 3, 100, 0);
        let stamped = make_batch(1, 2, 100, 1);
        for (b, stamp) in [
            (&plain, Stamp::default()),
            (
                &stamped,
                Stamp {
                    partition_leader_epoch: Some(7),
                    log_append_time_ms: Some(5_000_000),
                },
            ),
        ] {
            let before = b.clone();
            let header = batch::validate_for_append(b).unwrap();
            let info = log.buffer_stamped(1, b, header, stamp).await.unwrap();
            log.acked(1, info.last_offset).await.unwrap();
            assert_eq!(*b, before, "the caller's batch is not written to");
        }
        for reopen in [false, true] {
            if reopen {
                log.sync(2).await.unwrap();
                drop(log);
                log = open_log(&disk, &dir, 2, FsyncPolicy::Always, FsyncPolicy::Always).await;
            }
            let bytes = log.read(Offset(3), 1 << 20).await.unwrap();
            let h = batch::validate(&bytes).expect("the stored copy's CRC is valid");
            assert_eq!(h.base_offset, 3);
            assert_eq!(h.partition_leader_epoch, 7);
            assert_eq!(h.max_timestamp, 5_000_000);
            assert_ne!(h.attributes & 0x08, 0, "timestamp type LogAppendTime");
            assert_eq!(
                &bytes[61..h.total_bytes()],
                &stamped[61..],
                "records unchanged"
            );
            let first = log.read(Offset(0), 1 << 20).await.unwrap();
            let h0 = BatchHeader::parse(&first).unwrap();
            assert_eq!(
                &first[12..h0.total_bytes()],
                &plain[12..],
                "an empty stamp changes nothing"
            );
            // Records of the stamped batch carry create times near 1_000_010; by append time
            // it is the first batch at or after 4_000_000.
            let hit = log.offset_for_timestamp(4_000_000).await.unwrap().unwrap();
            assert_eq!(hit.offset, Offset(3));
        }
    });
}

/// Every acknowledged batch of the newest write rounds is answered from memory, byte for byte
/// what the disk holds, whether its round was one batch or many buffered together.
#[test]
fn the_newest_rounds_are_answered_from_memory() {
    block_on(async {
        let disk = SimDisk::new();
        let log = open_log(
            &disk,
            &PathBuf::from("/sim/tail"),
            0,
            FsyncPolicy::Always,
            FsyncPolicy::Always,
        )
        .await;
        // Round 1: one batch at a time; round 2: three buffered, then acknowledged together.
        let one = make_batch(0, 2, 300, 0);
        let h = batch::validate_for_append(&one).unwrap();
        let info = log.buffer_checked(1, &one, h).await.unwrap();
        log.acked(1, info.last_offset).await.unwrap();
        let mut last = info.last_offset;
        // (first offset, position in the segment) of each batch.
        let mut starts = vec![(0, 0), (2, one.len())];
        for seq in 1..4 {
            let b = make_batch(seq, 1, 500, 0);
            let h = batch::validate_for_append(&b).unwrap();
            last = log.buffer_checked(1, &b, h).await.unwrap().last_offset;
            starts.push((last.0 + 1, starts.last().unwrap().1 + b.len()));
        }
        log.acked(1, last).await.unwrap();
        let dir = PathBuf::from("/sim/tail");
        let name = disk
            .list(&dir)
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.ends_with(".log"))
            .unwrap();
        let file = disk.read_small(&dir.join(name)).await.unwrap().unwrap();
        for from in 0..=last.0 {
            let cached = log
                .read_cached(Offset(from), 1 << 20)
                .unwrap()
                .unwrap_or_else(|| panic!("offset {from} is not in the tail cache"));
            let (base, at) = *starts.iter().rev().find(|(o, _)| *o <= from).unwrap();
            assert_eq!(&cached[..], &file[at..at + cached.len()], "at {from}");
            assert_eq!(BatchHeader::parse(&cached).unwrap().base_offset, base);
        }
    });
}
