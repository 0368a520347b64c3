//! `sluice-bench`: Sluice's load generator. Every figure it prints comes from a run on this
//! machine; compare against a baseline measured in the same invocation (`--compare-fio`).
//!
//! Modes:
//! - `storage`: append batches straight into a partition log (no network), measuring MB/s and
//!   the latency of each acknowledged append.
//! - `produce`, `consume` (from a backlog), `e2e` (producers and consumers together, latency
//!   from a timestamp in each payload): one workload against `kafka://`, `sluice://` or
//!   `nats://` targets (see [`load`]).
//! - `chart`: several runs' JSON reports in one SVG.
//! - `compare`: Sluice and its peers on loopback, one table of ratios (see [`compare`]).

mod compare;
mod load;
mod load_cmd;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use sluice_core::batch::{BatchBuilder, Compression};
use sluice_storage::{run_local, wall_clock_ms, DmaDisk, FsyncPolicy, Log, LogConfig};

#[derive(Parser)]
#[command(name = "sluice-bench", version, about = "Sluice load generator")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Append batches to a partition log on DIR and report throughput and append latency.
    Storage(StorageArgs),
    /// Producers only: throughput and publish-to-ack latency.
    Produce(load_cmd::LoadArgs),
    /// Consumers reading a backlog (--backlog, produced first and not timed).
    Consume(load_cmd::LoadArgs),
    /// Producers and consumers together: end-to-end latency (use --rate for a fixed rate).
    E2e(load_cmd::LoadArgs),
    /// Put several runs' --json reports in one SVG chart.
    Chart {
        inputs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "sluice-bench")]
        title: String,
    },
    /// Start Sluice and its peers on loopback, run the same workloads against each, print ratios.
    Compare(compare::CompareArgs),
}

#[derive(clap::Args)]
struct StorageArgs {
    /// Directory to write in (a fresh subdirectory is created and removed).
    #[arg(long)]
    dir: PathBuf,
    /// Total bytes to append, e.g. 1GiB, 512MiB, 1000000.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    bytes: u64,
    /// Size of each batch, e.g. 1MiB, 16KiB.
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    batch_bytes: u64,
    /// always | never | interval:MS
    #[arg(long, default_value = "always")]
    fsync: FsyncPolicy,
    /// Appends in flight at once (producers sharing the log).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Write a JSON report to FILE.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Bytes the log may buffer ahead of the disk (the largest single write).
    #[arg(long, default_value = "4MiB", value_parser = parse_bytes)]
    write_buffer: u64,
    /// Also run `fio --rw=write --bs=1M --direct=1` over the same size in DIR, alternating with
    /// the log runs, and print the log's throughput as a ratio of fio's (medians).
    #[arg(long)]
    compare_fio: bool,
    /// Runs of the log (and of fio, with --compare-fio), alternated; medians are reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

/// mimalloc for the load generator's own (Rust) allocations: glibc's malloc and free, with
/// frees on other threads than the mallocs, profiled as 45% of its CPU in a native produce run.
/// The same for every system measured; librdkafka's C allocations keep glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Storage(args) => storage(args),
        Mode::Produce(a) => load_cmd::load_mode("produce", a),
        Mode::Consume(a) => load_cmd::load_mode("consume", a),
        Mode::E2e(a) => load_cmd::load_mode("e2e", a),
        Mode::Chart { inputs, out, title } => load_cmd::chart(&inputs, &out, &title),
        Mode::Compare(a) => compare::compare(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("sluice-bench: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `1GiB`, `64MiB`, `4KiB`, `1GB`, `1000` into bytes.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(format!("unknown size unit '{u}' in '{s}'")),
    };
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("size '{s}' out of range"))
}

struct StorageReport {
    bytes: u64,
    batches: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

fn storage(args: StorageArgs) -> Result<(), String> {
    if args.batch_bytes < 128 || args.batch_bytes > 256 << 20 {
        return Err("--batch-bytes must be between 128 B and 256 MiB".into());
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    // The disk's speed drifts on a shared machine: alternate fio and log runs and compare
    // medians, so both see the same conditions.
    let mut fio_runs = Vec::new();
    let mut reports = Vec::new();
    for _ in 0..args.repeat.max(1) {
        if args.compare_fio {
            fio_runs.push(run_fio(&args.dir, args.bytes)?);
        }
        let work = args
            .dir
            .join(format!("sluice-bench-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let report =
            run_local("sluice-bench", storage_run(&work, &args)).map_err(|e| e.to_string())??;
        let _ = std::fs::remove_dir_all(&work);
        let mb_s = report.bytes as f64 / report.elapsed.as_secs_f64() / 1e6;
        if args.repeat > 1 {
            eprintln!(
                "run {}: log {mb_s:.1} MB/s{}",
                reports.len() + 1,
                fio_runs
                    .last()
                    .map(|f| format!(", fio {f:.1} MB/s"))
                    .unwrap_or_default()
            );
        }
        reports.push((mb_s, report));
    }
    let fio_mb_s = (!fio_runs.is_empty()).then(|| median(&mut fio_runs));
    reports.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mb_s, report) = reports.swap_remove(reports.len() / 2);
    let secs = report.elapsed.as_secs_f64();
    let h = &report.latency_us;
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "storage fsync={:?} batch={}B concurrency={}: {} batches, {:.1} MB in {:.2}s = {:.1} MB/s ({:.0} batches/s)",
        args.fsync,
        args.batch_bytes,
        args.concurrency,
        report.batches,
        report.bytes as f64 / 1e6,
        secs,
        mb_s,
        report.batches as f64 / secs
    );
    println!(
        "append latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max() as f64 / 1000.0
    );
    if let Some(fio) = fio_mb_s {
        println!(
            "fio O_DIRECT sequential write (bs=1M) in the same run: {:.1} MB/s; log/fio = {:.2} (medians of {} alternated runs)",
            fio,
            mb_s / fio,
            args.repeat.max(1)
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "mode": "storage",
            "fsync": format!("{:?}", args.fsync),
            "batch_bytes": args.batch_bytes,
            "concurrency": args.concurrency,
            "bytes": report.bytes,
            "batches": report.batches,
            "seconds": secs,
            "mb_per_s": mb_s,
            "latency_ms": {
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                "max": h.max() as f64 / 1000.0,
            },
            "fio_mb_per_s": fio_mb_s,
            "repeat": args.repeat.max(1),
            "ratio_to_fio": fio_mb_s.map(|f| mb_s / f),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json).expect("json"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

async fn storage_run(dir: &Path, args: &StorageArgs) -> Result<StorageReport, String> {
    let config = LogConfig {
        fsync: args.fsync,
        batch_bytes_max: args.batch_bytes as usize + 4096,
        write_buffer_bytes_max: args.write_buffer as usize,
        ..LogConfig::default()
    };
    let log = Rc::new(
        Log::open(DmaDisk, dir, config, wall_clock_ms())
            .await
            .map_err(|e| e.to_string())?,
    );
    // One pre-built batch per producer, reused: the log rewrites only its base offset.
    let value_bytes = args.batch_bytes as usize - 80;
    let template = {
        let mut b = BatchBuilder::new(Compression::None, wall_clock_ms() as i64);
        let value: Vec<u8> = (0..value_bytes).map(|i| (i * 31 % 251) as u8).collect();
        b.push(wall_clock_ms() as i64, Some(b"bench"), Some(&value), &[]);
        b.build()
    };
    let total_batches = args.bytes.div_ceil(template.len() as u64);
    let issued = Rc::new(Cell::new(0u64));
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    let start = Instant::now();
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (log, issued, hist) = (log.clone(), issued.clone(), hist.clone());
            let mut batch = template.clone();
            glommio::spawn_local(async move {
                while issued.get() < total_batches {
                    issued.set(issued.get() + 1);
                    let t0 = Instant::now();
                    log.append(wall_clock_ms(), &mut batch)
                        .await
                        .map_err(|e| e.to_string())?;
                    let us = t0.elapsed().as_micros() as u64;
                    hist.borrow_mut().saturating_record(us.max(1));
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    let elapsed = start.elapsed();
    log.sync(wall_clock_ms()).await.map_err(|e| e.to_string())?;
    let latency_us = hist.borrow().clone();
    Ok(StorageReport {
        bytes: total_batches * template.len() as u64,
        batches: total_batches,
        elapsed,
        latency_us,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// fio's sequential O_DIRECT write bandwidth in MB/s over `bytes` in `dir`.
pub(crate) fn run_fio(dir: &Path, bytes: u64) -> Result<f64, String> {
    let v = fio_json(
        dir,
        &["--name=seqwrite", "--rw=write", "--bs=1M", "--direct=1"],
        bytes,
    )?;
    fio_mb_per_s(&v, "write")
}

/// A fio job's bandwidth in MB/s for `rw` ("read" or "write").
fn fio_mb_per_s(v: &serde_json::Value, rw: &str) -> Result<f64, String> {
    let bw = v["jobs"][0][rw]["bw_bytes"]
        .as_f64()
        .ok_or_else(|| format!("fio output has no jobs[0].{rw}.bw_bytes"))?;
    Ok(bw / 1e6)
}

/// fio's sequential O_DIRECT read bandwidth in MB/s over `bytes` in `dir` (1 MiB reads, 8 in
/// flight on io_uring: about what a backlog replay keeps in flight).
pub(crate) fn run_fio_read(dir: &Path, bytes: u64) -> Result<f64, String> {
    let v = fio_json(
        dir,
        &[
            "--name=seqread",
            "--rw=read",
            "--bs=1M",
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=8",
        ],
        bytes,
    )?;
    fio_mb_per_s(&v, "read")
}

/// The device under a durable write pattern, as a log with fsync before the ack uses it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DurableCeiling {
    /// Sequential O_DIRECT 1 MiB writes, each followed by fdatasync (MB/s).
    pub mb_per_s: f64,
    /// 64 KiB O_DIRECT writes each followed by fdatasync at a fixed 50 MB/s: completion
    /// latency of the write and of the fdatasync, p50 and p99 (ms).
    pub write_p50_ms: f64,
    pub write_p99_ms: f64,
    pub sync_p50_ms: f64,
    pub sync_p99_ms: f64,
    /// The slowest write and fdatasync of that run (ms): the device's own stalls, which hold
    /// up every acknowledgement under fsync-before-ack while they last.
    pub write_max_ms: f64,
    pub sync_max_ms: f64,
    /// How long that run lasted.
    pub latency_run: std::time::Duration,
}

/// `latency_run`: how long the 50 MB/s latency probe runs (a device's stalls are rare: the
/// probe lasts as long as the latency workload it accompanies).
pub(crate) fn run_fio_durable(
    dir: &Path,
    latency_run: std::time::Duration,
) -> Result<DurableCeiling, String> {
    let bw = fio_json(
        dir,
        &[
            "--name=syncwrite",
            "--rw=write",
            "--bs=1M",
            "--direct=1",
            "--fdatasync=1",
        ],
        1 << 30,
    )?;
    let lat = fio_json(
        dir,
        &[
            "--name=syncwrite50",
            "--rw=write",
            "--bs=64k",
            "--direct=1",
            "--fdatasync=1",
            "--rate=50m",
            &format!("--runtime={}", latency_run.as_secs().max(1)),
            "--time_based",
        ],
        256 << 20,
    )?;
    let job = &lat["jobs"][0];
    // A latency of the job, in ms, at a JSON pointer into it.
    let ms = |pointer: &str| -> Result<f64, String> {
        job.pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .map(|ns| ns / 1e6)
            .ok_or_else(|| format!("fio output has no {pointer}"))
    };
    Ok(DurableCeiling {
        mb_per_s: fio_mb_per_s(&bw, "write")?,
        write_p50_ms: ms("/write/clat_ns/percentile/50.000000")?,
        write_p99_ms: ms("/write/clat_ns/percentile/99.000000")?,
        sync_p50_ms: ms("/sync/lat_ns/percentile/50.000000")?,
        sync_p99_ms: ms("/sync/lat_ns/percentile/99.000000")?,
        write_max_ms: ms("/write/clat_ns/max")?,
        sync_max_ms: ms("/sync/lat_ns/max")?,
        latency_run,
    })
}

/// Runs fio on a scratch file in `dir` (removed after) and returns its JSON report.
fn fio_json(dir: &Path, args: &[&str], bytes: u64) -> Result<serde_json::Value, String> {
    let file = dir.join(format!("sluice-bench-fio-{}.dat", std::process::id()));
    let out = std::process::Command::new("fio")
        .args(args)
        .arg("--output-format=json")
        .arg(format!("--size={bytes}"))
        .arg(format!("--filename={}", file.display()))
        .output()
        .map_err(|e| format!("cannot run fio (apt-get install fio): {e}"))?;
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        return Err(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cannot parse fio output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("16KiB"), Ok(16 << 10));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        assert!(parse_bytes("1XB").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("GiB").is_err());
    }
}
