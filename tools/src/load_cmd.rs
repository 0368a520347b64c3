//! `sluice-bench produce|consume|e2e|chart`: network load runs against one target.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::load::{self, ProcWatch, Report, Stats, Steal, Target, Workload};

#[derive(clap::Args, Clone)]
pub struct LoadArgs {
    /// kafka://HOST:PORT, sluice://HOST:PORT or nats://HOST:PORT
    #[arg(long)]
    pub target: Target,
    /// Topic (Kafka) or stream subject prefix (Sluice, NATS)
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Message size, e.g. 1KiB
    #[arg(long, default_value = "1KiB", value_parser = crate::parse_bytes)]
    pub size: u64,
    /// Messages to send (ignored with --duration)
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Run for this long instead of a count, e.g. 30s
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Partitions (Kafka) or subjects (Sluice, NATS)
    #[arg(long, default_value_t = 6)]
    pub partitions: usize,
    /// Distinct message keys (0: none; Kafka)
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
    /// 0, 1 or all
    #[arg(long, default_value = "all")]
    pub acks: String,
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u64,
    #[arg(long, default_value = "1MiB", value_parser = crate::parse_bytes)]
    pub batch_bytes: u64,
    /// none, gzip, snappy, lz4, zstd (Kafka)
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Target rate: messages/s (e.g. 50000) or bytes/s (e.g. 50MB/s); 0 = unpaced
    #[arg(long, default_value = "0")]
    pub rate: String,
    /// Measured time starts after this (e.g. 5s)
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Publishes awaiting their acks, per producer
    #[arg(long, default_value_t = 1024)]
    pub in_flight: usize,
    /// Consume mode: backlog to produce first (not timed), e.g. 2GiB
    #[arg(long, value_parser = crate::parse_bytes)]
    pub backlog: Option<u64>,
    /// Sample CPU and peak RSS of this broker process
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Write the report as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG chart (throughput over time, latency percentiles) here
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Label of the system in reports (default: the target's scheme)
    #[arg(long)]
    pub system: Option<String>,
    /// Use the existing topic/stream as is
    #[arg(long)]
    pub no_prepare: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().map_err(|_| format!("invalid duration '{s}'"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in '{s}' (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

impl LoadArgs {
    pub fn workload(&self, name: &str) -> Result<Workload, String> {
        if self.size < 16 || self.size > 64 << 20 {
            return Err("--size must be between 16 B and 64 MiB".into());
        }
        if !["0", "1", "all"].contains(&self.acks.as_str()) {
            return Err("--acks must be 0, 1 or all".into());
        }
        let rate = if let Some(b) = self.rate.strip_suffix("/s") {
            crate::parse_bytes(b)? as f64 / self.size as f64
        } else {
            self.rate
                .parse::<f64>()
                .map_err(|_| format!("invalid --rate '{}' (msgs/s, or e.g. 50MB/s)", self.rate))?
        };
        Ok(Workload {
            name: name.into(),
            message_bytes: self.size as usize,
            count: self.count,
            duration: self.duration,
            producers: self.producers.max(1),
            consumers: self.consumers.max(1),
            partitions: self.partitions.max(1),
            keys: self.keys,
            acks: self.acks.clone(),
            linger_ms: self.linger_ms,
            batch_bytes: self.batch_bytes as usize,
            compression: self.compression.clone(),
            rate,
            warmup: self.warmup,
            in_flight: self.in_flight.max(1),
            topic: self.topic.clone(),
        })
    }
}

/// The load's tokio runtime: one worker per CPU the process may run on (`taskset`, or
/// `compare`'s `--load-cpus`, which pins before calling this). Two workers sharing one pinned
/// core preempted each other in the middle of a connection's writes and reads: native e2e at
/// 50 MB/s had p99 13.7 / 12.9 ms with two workers on CPU 0 against 4.7 / 3.5 ms with one
/// (alternating, same broker).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

pub async fn prepare(t: &Target, w: &Workload) -> Result<(), String> {
    match t {
        Target::Sluice(a) => load::sluice::prepare(a, w).await,
        #[cfg(feature = "nats")]
        Target::Nats(a) => load::nats::prepare(&format!("nats://{a}"), w).await,
        #[cfg(feature = "kafka")]
        Target::Kafka(a) => load::kafka::prepare(a, w).await,
        #[allow(unreachable_patterns)]
        other => Err(unsupported(other)),
    }
}

fn unsupported(t: &Target) -> String {
    format!(
        "this sluice-bench was built without the {} driver (cargo build -p sluice-tools --features peers)",
        t.label()
    )
}

pub async fn produce(t: &Target, w: &Workload, stats: Arc<Stats>) -> Result<(), String> {
    match t {
        Target::Sluice(a) => load::sluice::produce(a, w, stats).await,
        #[cfg(feature = "nats")]
        Target::Nats(a) => load::nats::produce(&format!("nats://{a}"), w, stats).await,
        #[cfg(feature = "kafka")]
        Target::Kafka(a) => load::kafka::produce(a, w, stats).await,
        #[allow(unreachable_patterns)]
        other => Err(unsupported(other)),
    }
}

pub async fn consume(
    t: &Target,
    w: &Workload,
    stats: Arc<Stats>,
    expect: Arc<AtomicU64>,
    e2e: bool,
) -> Result<(), String> {
    match t {
        Target::Sluice(a) => load::sluice::consume(a, w, stats, expect, e2e).await,
        #[cfg(feature = "nats")]
        Target::Nats(a) => load::nats::consume(&format!("nats://{a}"), w, stats, expect, e2e).await,
        #[cfg(feature = "kafka")]
        Target::Kafka(a) => load::kafka::consume(a, w, stats, expect, e2e).await,
        #[allow(unreachable_patterns)]
        other => Err(unsupported(other)),
    }
}

/// One run of `mode` (produce, consume, e2e) against `target`.
pub async fn run(
    mode: &str,
    target: &Target,
    w: &Workload,
    system: &str,
    backlog: Option<u64>,
    prepare_first: bool,
    broker_pid: Option<u32>,
) -> Result<Report, String> {
    if prepare_first {
        prepare(target, w).await?;
    }
    match mode {
        "produce" => {
            let watch = broker_pid.map(ProcWatch::start);
            let steal = Steal::start();
            let stats = Stats::new(w.warmup);
            let progress = stats.progress(format!("{system} produce"));
            let t0 = Instant::now();
            let r = produce(target, w, stats.clone()).await;
            let elapsed = t0.elapsed().saturating_sub(w.warmup);
            stats.done.store(true, Ordering::Relaxed);
            let _ = progress.join();
            r?;
            Ok(Report::from_stats(
                &w.name,
                mode,
                system,
                &stats,
                elapsed,
                watch.map(|x| x.finish()),
                steal.pct(),
            ))
        }
        "consume" => {
            // The backlog is produced first, unpaced and untimed.
            let bytes = backlog.unwrap_or(w.count * w.message_bytes as u64);
            let fill = Workload {
                count: bytes.div_ceil(w.message_bytes as u64),
                duration: None,
                rate: 0.0,
                warmup: Duration::ZERO,
                producers: w.producers.max(2),
                ..w.clone()
            };
            let filled = Stats::new(Duration::ZERO);
            let progress = filled.progress(format!("{system} filling backlog"));
            let r = produce(target, &fill, filled.clone()).await;
            filled.done.store(true, Ordering::Relaxed);
            let _ = progress.join();
            r?;
            let expect = Arc::new(AtomicU64::new(filled.messages.load(Ordering::Relaxed)));
            let watch = broker_pid.map(ProcWatch::start);
            let steal = Steal::start();
            let stats = Stats::new(Duration::ZERO);
            let progress = stats.progress(format!("{system} consume"));
            let t0 = Instant::now();
            let r = consume(target, w, stats.clone(), expect, false).await;
            let elapsed = t0.elapsed();
            stats.done.store(true, Ordering::Relaxed);
            let _ = progress.join();
            r?;
            Ok(Report::from_stats(
                &w.name,
                mode,
                system,
                &stats,
                elapsed,
                watch.map(|x| x.finish()),
                steal.pct(),
            ))
        }
        "e2e" => {
            let watch = broker_pid.map(ProcWatch::start);
            let steal = Steal::start();
            let stats = Stats::new(w.warmup);
            let sent = Stats::new(w.warmup);
            let progress = stats.progress(format!("{system} e2e"));
            let t0 = Instant::now();
            let (t2, w2, s2) = (target.clone(), w.clone(), stats.clone());
            // Consumers first; they stop once they saw what the producers got acknowledged.
            let expect = Arc::new(AtomicU64::new(u64::MAX));
            let e2 = expect.clone();
            let consumers = tokio::spawn(async move { consume(&t2, &w2, s2, e2, true).await });
            tokio::time::sleep(Duration::from_millis(500)).await;
            let r = produce(target, w, sent.clone()).await;
            expect.store(sent.series_total(), Ordering::Relaxed);
            let c = tokio::time::timeout(Duration::from_secs(30), consumers).await;
            let elapsed = t0.elapsed().saturating_sub(w.warmup);
            stats.done.store(true, Ordering::Relaxed);
            let _ = progress.join();
            r?;
            match c {
                Ok(Ok(r)) => r?,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => {
                    eprintln!("{system} e2e: consumers did not receive every message within 30 s")
                }
            }
            Ok(Report::from_stats(
                &w.name,
                mode,
                system,
                &stats,
                elapsed,
                watch.map(|x| x.finish()),
                steal.pct(),
            ))
        }
        other => Err(format!("unknown mode {other}")),
    }
}

pub fn write_outputs(
    r: &Report,
    json: Option<&PathBuf>,
    chart: Option<&PathBuf>,
) -> Result<(), String> {
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_string_pretty(&r.to_json()).expect("json"))
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if let Some(p) = chart {
        let svg = load::chart::svg(
            &format!("{} {}", r.workload, r.mode),
            std::slice::from_ref(r),
        );
        std::fs::write(p, svg).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(())
}

pub fn load_mode(mode: &str, a: LoadArgs) -> Result<(), String> {
    let w = a.workload(mode)?;
    let system = a
        .system
        .clone()
        .unwrap_or_else(|| a.target.label().to_string());
    let rt = runtime()?;
    let r = rt.block_on(run(
        mode,
        &a.target,
        &w,
        &system,
        a.backlog,
        !a.no_prepare,
        a.broker_pid,
    ))?;
    r.print();
    write_outputs(&r, a.json.as_ref(), a.chart.as_ref())
}

/// `sluice-bench chart A.json B.json … --out chart.svg`: several runs in one chart.
pub fn chart(inputs: &[PathBuf], out: &PathBuf, title: &str) -> Result<(), String> {
    let mut reports = Vec::new();
    for p in inputs {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        reports.push(
            Report::from_json(&v).ok_or_else(|| format!("{} is not a run report", p.display()))?,
        );
    }
    std::fs::write(out, load::chart::svg(title, &reports))
        .map_err(|e| format!("{}: {e}", out.display()))
}
