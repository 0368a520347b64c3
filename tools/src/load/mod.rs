//! Load generation against a broker over a network protocol: one [`Workload`] definition,
//! driven through the client library of the target's protocol — `kafka://` (librdkafka, the
//! `rdkafka` crate; feature `kafka`), `sluice://` (Sluice's Rust client) or `nats://`
//! (async-nats, JetStream; feature `nats`).
//!
//! Latency is measured against each message's *intended* send time when a rate is set (a
//! fixed-rate schedule), so a stalled broker shows up in the percentiles instead of silently
//! slowing the generator (no coordinated omission). End-to-end latency comes from a timestamp
//! the producer writes into each payload.

pub mod chart;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
pub mod sluice;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// What to run, whatever the target.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub message_bytes: usize,
    /// Messages to send (per run, all producers together); 0 with `duration`.
    pub count: u64,
    pub duration: Option<Duration>,
    pub producers: usize,
    pub consumers: usize,
    /// Kafka partitions; subjects for Sluice and NATS (`<topic>.<i>`).
    pub partitions: usize,
    /// Distinct keys (0: no keys).
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub keys: u64,
    /// acks: 0, 1 or all (Kafka); Sluice/NATS always wait for the stored ack unless 0.
    pub acks: String,
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub linger_ms: u64,
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub batch_bytes: usize,
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub compression: String,
    /// Messages per second over all producers (0: as fast as possible).
    pub rate: f64,
    pub warmup: Duration,
    /// Messages in flight per producer awaiting their ack.
    pub in_flight: usize,
    pub topic: String,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            name: "run".into(),
            message_bytes: 1024,
            count: 100_000,
            duration: None,
            producers: 1,
            consumers: 1,
            partitions: 6,
            keys: 0,
            acks: "all".into(),
            linger_ms: 1,
            batch_bytes: 1 << 20,
            compression: "none".into(),
            rate: 0.0,
            warmup: Duration::ZERO,
            in_flight: 1024,
            topic: "bench".into(),
        }
    }
}

/// A broker address with its protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Kafka(String),
    Sluice(String),
    Nats(String),
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        let (scheme, addr) = s.split_once("://").ok_or_else(|| {
            format!("target '{s}' needs a scheme: kafka://, sluice:// or nats://")
        })?;
        if addr.is_empty() {
            return Err(format!("target '{s}' has no address"));
        }
        match scheme {
            "kafka" => Ok(Target::Kafka(addr.into())),
            "sluice" => Ok(Target::Sluice(addr.into())),
            "nats" => Ok(Target::Nats(addr.into())),
            o => Err(format!("unknown scheme '{o}' (kafka, sluice, nats)")),
        }
    }
}

impl Target {
    pub fn label(&self) -> &'static str {
        match self {
            Target::Kafka(_) => "kafka",
            Target::Sluice(_) => "sluice",
            Target::Nats(_) => "nats",
        }
    }
}

/// Nanoseconds since this process started (what payloads carry for end-to-end latency).
pub fn now_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A payload of `bytes` (≥ 16) that carries its send time and sequence number.
pub fn payload(bytes: usize, seq: u64, sent_ns: u64) -> Vec<u8> {
    let mut p = vec![b'x'; bytes.max(16)];
    p[..8].copy_from_slice(&sent_ns.to_le_bytes());
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    p
}

pub fn payload_time(p: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(p.get(..8)?.try_into().ok()?))
}

/// One second of a run.
#[derive(Debug, Clone, Copy, Default)]
struct Second {
    messages: u64,
    max_us: u64,
}

/// Shared measurement of one run: counts, bytes, a latency histogram (µs), per-second series
/// of throughput and of the slowest latency (where a tail spike happened), and the warm-up cut.
pub struct Stats {
    pub started: Instant,
    warmup: Duration,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    /// Per second since the start, warm-up included: messages completed, and the largest
    /// latency (µs) among them.
    series: Mutex<Vec<Second>>,
    pub done: AtomicBool,
}

impl Stats {
    pub fn new(warmup: Duration) -> Arc<Stats> {
        Arc::new(Stats {
            started: Instant::now(),
            warmup,
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds")),
            series: Mutex::new(Vec::new()),
            done: AtomicBool::new(false),
        })
    }

    /// Several messages completed: `bytes` in all, one latency each (one clock read and one
    /// lock per call, not per message).
    pub fn record_many(&self, bytes: u64, latencies_ns: &[u64]) {
        if latencies_ns.is_empty() {
            return;
        }
        let n = latencies_ns.len() as u64;
        let elapsed = self.started.elapsed();
        {
            let sec = elapsed.as_secs() as usize;
            let mut s = self.series.lock().unwrap();
            if s.len() <= sec {
                s.resize(sec + 1, Second::default());
            }
            s[sec].messages += n;
            let worst = latencies_ns.iter().max().copied().unwrap_or(0) / 1000;
            s[sec].max_us = s[sec].max_us.max(worst);
        }
        if elapsed < self.warmup {
            return;
        }
        self.messages.fetch_add(n, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let mut h = self.latency_us.lock().unwrap();
        for l in latencies_ns {
            let us = (l / 1000).max(1);
            let _ = h.record(us.min(600_000_000));
        }
    }

    /// Every message completed, warm-up included.
    pub fn series_total(&self) -> u64 {
        self.series.lock().unwrap().iter().map(|s| s.messages).sum()
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Prints a progress line every second until `done`.
    pub fn progress(self: &Arc<Self>, label: String) -> std::thread::JoinHandle<()> {
        let s = self.clone();
        std::thread::spawn(move || {
            let mut last = 0u64;
            while !s.done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let t = s.started.elapsed();
                if t.as_millis() % 1000 >= 200 {
                    continue;
                }
                let total = s.series_total();
                eprint!(
                    "\r{label}: {:>4}s {:>10} msgs {:>9.0} msgs/s   ",
                    t.as_secs(),
                    total,
                    (total - last) as f64
                );
                last = total;
            }
            eprintln!();
        })
    }
}

/// A broker process whose CPU and memory are sampled during a run.
pub struct ProcWatch {
    pid: u32,
    cpu_start: f64,
    rss_max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl ProcWatch {
    pub fn start(pid: u32) -> ProcWatch {
        let rss_max = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (rss_max.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    r.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        ProcWatch {
            pid,
            cpu_start: cpu_seconds(pid).unwrap_or(0.0),
            rss_max,
            stop,
            thread: Some(thread),
        }
    }

    /// (CPU seconds used since start, peak RSS in KiB).
    pub fn finish(mut self) -> (f64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let cpu = cpu_seconds(self.pid).unwrap_or(self.cpu_start) - self.cpu_start;
        (cpu, self.rss_max.load(Ordering::Relaxed))
    }
}

/// The hypervisor's share of this machine's CPU time (steal) over a run: on a shared virtual
/// machine, time the vCPUs were runnable but not running. Stolen stretches of milliseconds
/// land in the latency tail of whatever was in flight, so every report states it.
pub struct Steal {
    ticks: u64,
    at: Instant,
}

/// (steal ticks summed over CPUs, number of CPUs) from /proc/stat.
fn steal_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let (mut ticks, mut cpus) = (0, 0);
    for l in stat.lines() {
        let mut f = l.split_whitespace();
        match f.next() {
            Some(c) if c.starts_with("cpu") && c.len() > 3 => {
                // user nice system idle iowait irq softirq steal
                ticks += f.nth(7)?.parse::<u64>().ok()?;
                cpus += 1;
            }
            _ => {}
        }
    }
    (cpus > 0).then_some((ticks, cpus))
}

impl Steal {
    pub fn start() -> Steal {
        Steal {
            ticks: steal_ticks().map_or(0, |t| t.0),
            at: Instant::now(),
        }
    }

    /// Percent of all CPUs' time stolen since `start`.
    pub fn pct(&self) -> Option<f64> {
        let (ticks, cpus) = steal_ticks()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let stolen = ticks.saturating_sub(self.ticks) as f64 / hz;
        Some(100.0 * stolen / (self.at.elapsed().as_secs_f64() * cpus as f64).max(1e-9))
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub workload: String,
    pub mode: String,
    pub system: String,
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latency_ms: Vec<(f64, f64)>,
    pub max_ms: f64,
    pub series: Vec<u64>,
    /// The slowest latency (ms) of each second.
    pub series_max_ms: Vec<f64>,
    /// The series' first seconds, this long, are the warm-up (not in the latencies above).
    pub warmup_s: f64,
    pub cpu_s: Option<f64>,
    pub rss_kib_max: Option<u64>,
    /// Percent of the machine's CPU time taken by the hypervisor during the run.
    pub steal_pct: Option<f64>,
}

pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

impl Report {
    pub fn from_stats(
        workload: &str,
        mode: &str,
        system: &str,
        stats: &Stats,
        measured: Duration,
        proc_stats: Option<(f64, u64)>,
        steal_pct: Option<f64>,
    ) -> Report {
        let h = stats.latency_us.lock().unwrap();
        let series = stats.series.lock().unwrap();
        let q = |p: f64| h.value_at_quantile(p / 100.0) as f64 / 1000.0;
        Report {
            workload: workload.into(),
            mode: mode.into(),
            system: system.into(),
            messages: stats.messages.load(Ordering::Relaxed),
            bytes: stats.bytes.load(Ordering::Relaxed),
            errors: stats.errors.load(Ordering::Relaxed),
            seconds: measured.as_secs_f64(),
            latency_ms: PERCENTILES.iter().map(|p| (*p, q(*p))).collect(),
            max_ms: h.max() as f64 / 1000.0,
            series: series.iter().map(|s| s.messages).collect(),
            series_max_ms: series.iter().map(|s| s.max_us as f64 / 1000.0).collect(),
            warmup_s: stats.warmup.as_secs_f64(),
            cpu_s: proc_stats.map(|p| p.0),
            rss_kib_max: proc_stats.map(|p| p.1),
            steal_pct,
        }
    }

    pub fn msgs_per_s(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }

    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    pub fn pct(&self, p: f64) -> f64 {
        self.latency_ms
            .iter()
            .find(|(q, _)| (*q - p).abs() < 1e-9)
            .map_or(0.0, |(_, v)| *v)
    }

    pub fn print(&self) {
        let name = if self.workload == self.mode {
            self.mode.clone()
        } else {
            format!("{} {}", self.workload, self.mode)
        };
        println!(
            "{} on {}: {} msgs in {:.2} s = {:.0} msgs/s, {:.1} MB/s{}",
            name,
            self.system,
            self.messages,
            self.seconds,
            self.msgs_per_s(),
            self.mb_per_s(),
            if self.errors > 0 {
                format!(", {} errors", self.errors)
            } else {
                String::new()
            }
        );
        let pcts: Vec<String> = self
            .latency_ms
            .iter()
            .map(|(p, v)| format!("p{p} {v:.3}"))
            .collect();
        println!("  latency ms: {} max {:.3}", pcts.join(" "), self.max_ms);
        // Over the measured seconds only: the warm-up's are in the series (and the chart).
        if let Some((sec, worst)) = self
            .series_max_ms
            .iter()
            .enumerate()
            .skip(self.warmup_s.ceil() as usize)
            .max_by(|a, b| a.1.total_cmp(b.1))
        {
            println!("  slowest second: {sec} s after the start (max {worst:.3} ms)");
        }
        if let (Some(cpu), Some(rss)) = (self.cpu_s, self.rss_kib_max) {
            println!(
                "  broker: {cpu:.2} CPU s ({:.3} CPU s per GB), peak RSS {} MiB",
                cpu / (self.bytes as f64 / 1e9).max(1e-9),
                rss / 1024
            );
        }
        if let Some(st) = self.steal_pct {
            println!("  cpu steal (hypervisor): {st:.1}% of the machine's CPU time");
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "workload": self.workload,
            "mode": self.mode,
            "system": self.system,
            "messages": self.messages,
            "bytes": self.bytes,
            "errors": self.errors,
            "seconds": self.seconds,
            "msgs_per_s": self.msgs_per_s(),
            "mb_per_s": self.mb_per_s(),
            "p50_ms": self.pct(50.0),
            "p90_ms": self.pct(90.0),
            "p99_ms": self.pct(99.0),
            "p999_ms": self.pct(99.9),
            "p9999_ms": self.pct(99.99),
            "max_ms": self.max_ms,
            "cpu_s": self.cpu_s,
            "rss_kib_max": self.rss_kib_max,
            "steal_pct": self.steal_pct,
            "series_msgs_per_s": self.series,
            "series_max_ms": self.series_max_ms,
            "warmup_s": self.warmup_s,
        })
    }

    pub fn from_json(v: &Value) -> Option<Report> {
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
        Some(Report {
            workload: v.get("workload")?.as_str()?.into(),
            mode: v.get("mode")?.as_str()?.into(),
            system: v.get("system")?.as_str()?.into(),
            messages: v.get("messages")?.as_u64()?,
            bytes: v.get("bytes")?.as_u64()?,
            errors: v.get("errors").and_then(|e| e.as_u64()).unwrap_or(0),
            seconds: f("seconds")?,
            latency_ms: vec![
                (50.0, f("p50_ms")?),
                (90.0, f("p90_ms")?),
                (99.0, f("p99_ms")?),
                (99.9, f("p999_ms")?),
                (99.99, f("p9999_ms")?),
            ],
            max_ms: f("max_ms")?,
            series: v
                .get("series_msgs_per_s")?
                .as_array()?
                .iter()
                .filter_map(|x| x.as_u64())
                .collect(),
            // Reports written before the series existed have none.
            series_max_ms: v
                .get("series_max_ms")
                .and_then(|x| x.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default(),
            warmup_s: f("warmup_s").unwrap_or(0.0),
            cpu_s: f("cpu_s"),
            rss_kib_max: v.get("rss_kib_max").and_then(|x| x.as_u64()),
            steal_pct: f("steal_pct"),
        })
    }
}

/// Paces one producer: the intended send time of its `i`-th message under the workload's
/// rate (shared by `producers`), or `None` when unpaced.
pub struct Pacer {
    start: Instant,
    interval_ns: Option<f64>,
}

impl Pacer {
    pub fn new(w: &Workload) -> Pacer {
        Pacer {
            start: Instant::now(),
            interval_ns: (w.rate > 0.0).then(|| 1e9 * w.producers as f64 / w.rate),
        }
    }

    /// When message `i` is due (`None`: unpaced, always now).
    fn slot(&self, i: u64) -> Option<Instant> {
        self.interval_ns
            .map(|iv| self.start + Duration::from_nanos((iv * i as f64) as u64))
    }

    /// Whether message `i`'s slot has come (always, unpaced).
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub fn due(&self, i: u64) -> bool {
        self.slot(i).is_none_or(|due| due <= Instant::now())
    }

    /// Message `i`'s intended send time (ns, process clock): its slot, or now when unpaced.
    pub fn intended_ns(&self, i: u64) -> u64 {
        let late = self.slot(i).map_or(0, |due| {
            Instant::now().saturating_duration_since(due).as_nanos()
        });
        now_ns() - late as u64
    }

    /// Waits for message `i`'s slot; returns its intended send time (ns, process clock).
    pub async fn wait(&self, i: u64) -> u64 {
        if let Some(due) = self.slot(i).filter(|due| *due > Instant::now()) {
            tokio::time::sleep_until(due.into()).await;
        }
        self.intended_ns(i)
    }

    /// [`Pacer::wait`] for a plain thread (the librdkafka producers).
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub fn wait_blocking(&self, i: u64) -> u64 {
        if let Some(due) = self.slot(i) {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        self.intended_ns(i)
    }
}

/// Runs one producer task per client: each paces its messages (`Pacer`), keeps up to
/// `w.in_flight` of them awaiting their acks, and records each ack's latency from the
/// message's intended send time. `send(client, subject, payload)` publishes one message and
/// resolves once it is acknowledged (`Err` counts as an error).
pub async fn produce_with<C, F, Fut>(
    w: &Workload,
    stats: Arc<Stats>,
    clients: Vec<C>,
    send: F,
) -> Result<(), String>
where
    C: Clone + Send + 'static,
    F: Fn(C, String, Vec<u8>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), ()>> + Send + 'static,
{
    use futures::stream::{FuturesUnordered, StreamExt};
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, client) in clients.into_iter().enumerate() {
        let (w, stats, sent, send) = (w.clone(), stats.clone(), sent.clone(), send.clone());
        tasks.push(tokio::spawn(async move {
            let pacer = Pacer::new(&w);
            let mut pending = FuturesUnordered::new();
            // Acks are added to the stats a batch at a time (one clock read and lock per
            // batch): whenever nothing else is ready, and every RECEIPTS_BATCH acks.
            let mut acks = Receipts::measured();
            let take = |acks: &mut Receipts, outcome: Option<(usize, u64)>| match outcome {
                Some((len, latency)) => {
                    acks.record(len, latency);
                    if acks.len() >= RECEIPTS_BATCH {
                        acks.flush(&stats);
                    }
                }
                None => stats.error(),
            };
            let mut i = 0u64;
            loop {
                // The clock is read every STOP_CHECK_EVERY messages, not per message.
                if i.is_multiple_of(STOP_CHECK_EVERY) && should_stop(&w, started, &sent) {
                    break;
                }
                while pending.len() >= w.in_flight.max(1) {
                    acks.flush(&stats);
                    if let Some(a) = pending.next().await {
                        take(&mut acks, a);
                    }
                }
                let n = sent.fetch_add(1, Ordering::Relaxed);
                if w.duration.is_none() && n >= w.count {
                    break;
                }
                // Acks are recorded when they arrive, also while waiting for the next slot.
                let intended = loop {
                    tokio::select! {
                        biased;
                        Some(a) = pending.next(), if !pending.is_empty() => take(&mut acks, a),
                        t = pacer.wait(i) => break t,
                    }
                };
                let subject = format!(
                    "{}.{}",
                    w.topic,
                    (n + p as u64) % w.partitions.max(1) as u64
                );
                let data = payload(w.message_bytes, n, intended);
                let (len, ack) = (data.len(), send(client.clone(), subject, data));
                pending.push(async move { ack.await.ok().map(|()| (len, now_ns() - intended)) });
                while let Some(Some(a)) = futures::FutureExt::now_or_never(pending.next()) {
                    take(&mut acks, a);
                }
                if w.rate > 0.0 {
                    // Paced runs wait between messages: their acks are recorded before.
                    acks.flush(&stats);
                }
                i += 1;
            }
            while let Some(a) = pending.next().await {
                take(&mut acks, a);
            }
            acks.flush(&stats);
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// How often (in messages) a producer loop asks [`should_stop`]: a count-bounded run stops by
/// its own count check, a timed one overshoots by at most this many messages.
const STOP_CHECK_EVERY: u64 = 64;

/// Receipts (or acks) a per-message loop gathers before adding them to its stats.
pub const RECEIPTS_BATCH: usize = 256;

/// Messages one consumer received (or one producer got acknowledged), added to its [`Stats`] a
/// batch at a time. Latency is the time from the payload's timestamp (e2e, read per message),
/// from the consumer's start (backlog reads, read once per batch), or as measured (acks).
pub struct Receipts {
    started_ns: u64,
    e2e: bool,
    latencies: Vec<u64>,
    bytes: u64,
}

impl Receipts {
    pub fn new(started_ns: u64, e2e: bool) -> Receipts {
        Receipts {
            started_ns,
            e2e,
            latencies: Vec::with_capacity(1024),
            bytes: 0,
        }
    }

    /// For latencies measured by the caller ([`Receipts::record`]).
    pub fn measured() -> Receipts {
        Receipts::new(0, true)
    }

    pub fn add(&mut self, data: &[u8]) {
        let latency = if self.e2e {
            let now = now_ns();
            now.saturating_sub(payload_time(data).unwrap_or(now))
        } else {
            0
        };
        self.record(data.len(), latency);
    }

    /// One message of `bytes` with a known latency.
    pub fn record(&mut self, bytes: usize, latency_ns: u64) {
        self.bytes += bytes as u64;
        self.latencies.push(latency_ns);
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.latencies.len()
    }

    pub fn flush(&mut self, stats: &Stats) {
        if !self.e2e {
            let lat = now_ns().saturating_sub(self.started_ns);
            self.latencies.iter_mut().for_each(|l| *l = lat);
        }
        stats.record_many(self.bytes, &self.latencies);
        self.latencies.clear();
        self.bytes = 0;
    }
}

/// A consumer that receives nothing for this long stops with an error: the broker is gone or
/// stuck, and a client that retries forever must not hang the run.
pub const CONSUME_STALL: Duration = Duration::from_secs(60);

/// How long a consumer loop waits for its client's next message before it adds what it has
/// to the stats and checks again.
const RECEIVE_POLL: Duration = Duration::from_millis(500);

/// The bookkeeping of a consumer that takes messages one at a time from a client's stream
/// (`sluice-client`'s and async-nats' `messages()`): receipts into the stats a batch at a
/// time, the run's shared count, and giving up after [`CONSUME_STALL`] without a message.
pub struct Drain<'a> {
    label: &'static str,
    stats: &'a Stats,
    got: &'a AtomicU64,
    expect: &'a AtomicU64,
    receipts: Receipts,
    /// When a message last arrived, as of the last idle check (no clock read per message).
    progress: Instant,
    /// Messages since the last idle check.
    since_check: u64,
    /// Nothing arrived for [`CONSUME_STALL`].
    stalled: bool,
}

impl<'a> Drain<'a> {
    pub fn new(
        label: &'static str,
        stats: &'a Stats,
        got: &'a AtomicU64,
        expect: &'a AtomicU64,
        e2e: bool,
    ) -> Drain<'a> {
        Drain {
            label,
            stats,
            got,
            expect,
            receipts: Receipts::new(now_ns(), e2e),
            progress: Instant::now(),
            since_check: 0,
            stalled: false,
        }
    }

    /// Whether to wait for another message: the run wants more and messages keep coming.
    fn wants_more(&self) -> bool {
        !self.stalled && self.got.load(Ordering::Relaxed) < self.expect.load(Ordering::Relaxed)
    }

    fn received(&mut self, payload: &[u8]) {
        self.receipts.add(payload);
        if self.receipts.len() >= RECEIPTS_BATCH {
            self.receipts.flush(self.stats);
        }
        self.got.fetch_add(1, Ordering::Relaxed);
        self.since_check += 1;
    }

    /// Takes the messages of `msgs` (a client's `messages()`) until the run has what it wants,
    /// the stream ends or [`CONSUME_STALL`] passes without a message; an error is counted and
    /// reading goes on (async-nats reports some, a missed heartbeat say, and continues).
    pub async fn run<T, E: std::fmt::Display>(
        &mut self,
        msgs: impl futures::Stream<Item = Result<T, E>>,
        payload: impl Fn(&T) -> &[u8],
    ) {
        use futures::StreamExt;
        let mut msgs = std::pin::pin!(msgs);
        while self.wants_more() {
            // A message already at hand is taken without arming a timer (a clock read and a
            // timer entry per message were ~8% of the load's CPU in a backlog read).
            let next = match futures::FutureExt::now_or_never(msgs.next()) {
                Some(m) => Ok(m),
                None => tokio::time::timeout(RECEIVE_POLL, msgs.next()).await,
            };
            match next {
                Ok(Some(Ok(m))) => self.received(payload(&m)),
                Ok(Some(Err(e))) => self.error(e),
                Ok(None) => break,
                Err(_) => self.idle(),
            }
        }
    }

    /// The client's stream reported an error.
    pub fn error(&mut self, e: impl std::fmt::Display) {
        eprintln!("{} consumer: {e}", self.label);
        self.stats.error();
    }

    /// Nothing arrived within [`RECEIVE_POLL`]; after [`CONSUME_STALL`] of that, give up.
    fn idle(&mut self) {
        self.receipts.flush(self.stats);
        if self.since_check > 0 {
            self.since_check = 0;
            self.progress = Instant::now();
        } else if self.progress.elapsed() > CONSUME_STALL {
            eprintln!(
                "{} consumer: nothing received for {CONSUME_STALL:?}, giving up",
                self.label
            );
            self.stats.error();
            self.stalled = true;
        }
    }
}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        self.receipts.flush(self.stats);
    }
}

/// Whether a producer should stop: count reached or duration over.
pub fn should_stop(w: &Workload, started: Instant, sent_total: &AtomicU64) -> bool {
    if let Some(d) = w.duration {
        return started.elapsed() >= d + w.warmup;
    }
    sent_total.load(Ordering::Relaxed) >= w.count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            "kafka://h:1".parse::<Target>(),
            Ok(Target::Kafka("h:1".into()))
        );
        assert_eq!(
            "sluice://h:2".parse::<Target>(),
            Ok(Target::Sluice("h:2".into()))
        );
        assert_eq!(
            "nats://h:3".parse::<Target>(),
            Ok(Target::Nats("h:3".into()))
        );
        assert!("h:1".parse::<Target>().is_err());
        assert!("amqp://h:1".parse::<Target>().is_err());
        assert!("kafka://".parse::<Target>().is_err());
    }

    #[test]
    fn payload_carries_time_and_reports_round_trip() {
        let p = payload(1024, 7, 123_456);
        assert_eq!((p.len(), payload_time(&p)), (1024, Some(123_456)));
        let stats = Stats::new(Duration::ZERO);
        for i in 1..=100u64 {
            stats.record_many(1024, &[i * 1_000_000]);
        }
        let r = Report::from_stats(
            "w",
            "produce",
            "sys",
            &stats,
            Duration::from_secs(2),
            Some((1.5, 2048)),
            Some(3.25),
        );
        assert_eq!((r.messages, r.bytes), (100, 102_400));
        assert!((r.msgs_per_s() - 50.0).abs() < 1e-9);
        assert!((r.pct(50.0) - 50.0).abs() < 0.1, "{}", r.pct(50.0));
        assert!((r.pct(99.0) - 99.0).abs() < 0.1);
        let back = Report::from_json(&r.to_json()).unwrap();
        assert_eq!(
            (
                back.messages,
                back.system.as_str(),
                back.rss_kib_max,
                back.steal_pct
            ),
            (100, "sys", Some(2048), Some(3.25))
        );
        let svg = chart::svg("t", &[r, back]);
        assert!(
            svg.starts_with("<svg")
                && svg.contains("polyline")
                && svg.trim_end().ends_with("</svg>")
        );
    }

    #[test]
    fn steal_is_read_from_proc_stat() {
        let s = Steal::start();
        std::thread::sleep(Duration::from_millis(20));
        let pct = s.pct().expect("/proc/stat has per-CPU lines");
        assert!((0.0..=100.0).contains(&pct), "{pct}");
    }

    #[test]
    fn warmup_is_not_measured() {
        let stats = Stats::new(Duration::from_secs(3600));
        stats.record_many(10, &[1000]);
        assert_eq!(stats.messages.load(Ordering::Relaxed), 0);
        assert_eq!(stats.series_total(), 1);
        let r = Report::from_stats("w", "e2e", "s", &stats, Duration::from_secs(1), None, None);
        let back = Report::from_json(&r.to_json()).unwrap();
        assert_eq!(
            back.warmup_s, 3600.0,
            "the report says which seconds were warm-up"
        );
    }

    #[test]
    fn each_second_keeps_its_slowest_latency_through_json() {
        let stats = Stats::new(Duration::ZERO);
        stats.record_many(30, &[2_000_000, 9_000_000, 1_000_000]);
        stats.record_many(10, &[4_000_000]);
        let r = Report::from_stats("w", "e2e", "s", &stats, Duration::from_secs(1), None, None);
        assert_eq!(r.series_max_ms, vec![9.0]);
        let back = Report::from_json(&r.to_json()).unwrap();
        assert_eq!(back.series_max_ms, vec![9.0]);
        assert_eq!(back.series, vec![4]);
    }
}
