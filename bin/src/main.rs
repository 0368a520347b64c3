//! `sluice`: the broker binary and its command-line tools.
//!
//! `sluice serve` runs the broker (see `sluice serve --help`); `sluice log append|dump` exercise
//! and inspect one partition-log directory with the same storage code the broker uses;
//! `sluice group ls|describe` show consumer groups and their lag.

mod group_cmd;
mod kafka_client;
mod native_cmd;

use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

use clap::{Parser, Subcommand};
use sluice_core::batch::{self, BatchBuilder, Compression};
use sluice_core::Offset;
use sluice_storage::{run_local, wall_clock_ms, DmaDisk, FsyncPolicy, Log, LogConfig};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice message broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: a single node with the Kafka protocol on --kafka-listen.
    Serve(ServeArgs),
    /// Partition-log tools: write test data into a log directory, or dump one.
    #[command(subcommand)]
    Log(LogCommand),
    /// Consumer groups: list them, or show members, committed offsets and lag.
    #[command(subcommand)]
    Group(group_cmd::GroupCommand),
    /// Streams (native protocol): add, info, ls, purge, rm, get.
    Stream {
        #[command(flatten)]
        server: native_cmd::Server,
        #[command(subcommand)]
        cmd: native_cmd::StreamCommand,
    },
    /// Stream consumers (native protocol): add, info, ls, next, rm.
    Consumer {
        #[command(flatten)]
        server: native_cmd::Server,
        #[command(subcommand)]
        cmd: native_cmd::ConsumerCommand,
    },
    /// Publish a message (stored if a stream captures the subject).
    Pub {
        #[command(flatten)]
        server: native_cmd::Server,
        #[command(flatten)]
        args: native_cmd::PubArgs,
    },
    /// Subscribe to a subject (wildcards `*` and `>`), printing messages.
    Sub {
        #[command(flatten)]
        server: native_cmd::Server,
        #[command(flatten)]
        args: native_cmd::SubArgs,
    },
    /// Send a request and print the first reply.
    Req {
        #[command(flatten)]
        server: native_cmd::Server,
        #[command(flatten)]
        args: native_cmd::ReqArgs,
    },
    /// Answer requests on a subject (--echo: with their own body).
    Reply {
        #[command(flatten)]
        server: native_cmd::Server,
        #[command(flatten)]
        args: native_cmd::ReplyArgs,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Append generated batches to the log in DIR, printing one `ack` line per acknowledged
    /// batch. Batch k carries records whose values are derived from k, so `dump --verify`
    /// can check every byte.
    Append {
        #[arg(long)]
        dir: PathBuf,
        /// Batches to append (0 = until killed).
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Records per batch.
        #[arg(long, default_value_t = 4)]
        records: u32,
        /// Largest value size in bytes; each batch draws its size from its sequence number.
        #[arg(long, default_value_t = 16384)]
        value_bytes_max: usize,
        /// always | never | interval:MS
        #[arg(long, default_value = "always")]
        fsync: FsyncPolicy,
        /// Appends in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 1 << 30)]
        segment_bytes: u64,
        /// Sequence number of the first generated batch.
        #[arg(long, default_value_t = 0)]
        first_seq: u64,
        /// Print `ack SEQ BASE LAST` for every acknowledged batch.
        #[arg(long)]
        print_acks: bool,
    },
    /// Print every batch of the log in DIR (one JSON object per line with --json).
    Dump {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
        /// Check that each batch holds exactly what `log append` generated for it.
        #[arg(long)]
        verify: bool,
        #[arg(long, default_value_t = 4)]
        records: u32,
        #[arg(long, default_value_t = 16384)]
        value_bytes_max: usize,
    },
}

/// Flags of `sluice serve`. Each has a key of the same name (with `_`) in the --config file;
/// flags given on the command line win.
#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML file with any of the keys below, plus a [topic_defaults] table of topic configs
    /// (Kafka names, e.g. "retention.ms" = "86400000").
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where logs and metadata live [default: ./sluice-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Kafka listener [default: 0.0.0.0:9092]
    #[arg(long)]
    kafka_listen: Option<String>,
    /// host:port clients are told to connect to [default: 127.0.0.1:<listen port>]
    #[arg(long)]
    advertised_kafka: Option<String>,
    /// Native-protocol listener, or "off" [default: 0.0.0.0:7575]
    #[arg(long)]
    native_listen: Option<String>,
    /// Shards (pinned executors) [default: one per core]
    #[arg(long)]
    shards: Option<usize>,
    /// auto.create.topics.enable [default: true]
    #[arg(long)]
    auto_create_topics: Option<bool>,
    /// num.partitions of auto-created topics [default: 1]
    #[arg(long)]
    num_partitions: Option<i32>,
    /// socket.request.max.bytes [default: 104857600]
    #[arg(long)]
    socket_request_max_bytes: Option<usize>,
    /// Older-than-tail fetches: sendfile through the page cache (true) or O_DIRECT reads on io_uring, copied (false) [default: false]
    #[arg(long)]
    fetch_zero_copy: Option<bool>,
    /// group.min.session.timeout.ms [default: 6000]
    #[arg(long)]
    group_min_session_timeout_ms: Option<i32>,
    /// group.consumer.session.timeout.ms of KIP-848 groups [default: 45000]
    #[arg(long)]
    group_consumer_session_timeout_ms: Option<u64>,
    /// group.consumer.heartbeat.interval.ms of KIP-848 groups [default: 5000]
    #[arg(long)]
    group_consumer_heartbeat_interval_ms: Option<i32>,
    /// offsets.retention.minutes: offsets of empty groups expire this long after their commit
    /// [default: 10080]
    #[arg(long)]
    offsets_retention_minutes: Option<u64>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    data_dir: Option<PathBuf>,
    kafka_listen: Option<String>,
    advertised_kafka: Option<String>,
    native_listen: Option<String>,
    shards: Option<usize>,
    auto_create_topics: Option<bool>,
    num_partitions: Option<i32>,
    socket_request_max_bytes: Option<usize>,
    fetch_zero_copy: Option<bool>,
    group_min_session_timeout_ms: Option<i32>,
    group_consumer_session_timeout_ms: Option<u64>,
    group_consumer_heartbeat_interval_ms: Option<i32>,
    offsets_retention_minutes: Option<u64>,
    #[serde(default)]
    topic_defaults: std::collections::BTreeMap<String, String>,
}

fn serve_config(args: ServeArgs) -> Result<sluice_net::broker::config::BrokerConfig, String> {
    use sluice_net::broker::config::{validate_topic_config, BrokerConfig};
    let file: ServeFile = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => ServeFile::default(),
    };
    let mut c = BrokerConfig::default();
    if let Some(d) = args.data_dir.or(file.data_dir) {
        c.data_dir = d;
    }
    if let Some(l) = args.kafka_listen.or(file.kafka_listen) {
        c.kafka_listen = l
            .parse()
            .map_err(|e| format!("invalid kafka listen address '{l}': {e}"))?;
    }
    c.advertised_port = c.kafka_listen.port();
    match args.native_listen.or(file.native_listen).as_deref() {
        None => {}
        Some("off") => c.native_listen = None,
        Some(l) => {
            c.native_listen = Some(
                l.parse()
                    .map_err(|e| format!("invalid native listen address '{l}': {e}"))?,
            )
        }
    }
    match args.advertised_kafka.or(file.advertised_kafka) {
        Some(a) => {
            let (host, port) = a
                .rsplit_once(':')
                .ok_or_else(|| format!("invalid advertised address '{a}': expected host:port"))?;
            c.advertised_host = host.to_string();
            c.advertised_port = port
                .parse()
                .map_err(|_| format!("invalid port in advertised address '{a}'"))?;
        }
        None if !c.kafka_listen.ip().is_unspecified() => {
            c.advertised_host = c.kafka_listen.ip().to_string();
        }
        None => {}
    }
    c.shards = args
        .shards
        .or(file.shards)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if c.shards == 0 || c.shards > 256 {
        return Err(format!(
            "--shards must be between 1 and 256, got {}",
            c.shards
        ));
    }
    if let Some(v) = args.auto_create_topics.or(file.auto_create_topics) {
        c.auto_create_topics = v;
    }
    if let Some(v) = args.num_partitions.or(file.num_partitions) {
        if v < 1 {
            return Err(format!("--num-partitions must be at least 1, got {v}"));
        }
        c.default_partitions = v;
    }
    if let Some(v) = args
        .socket_request_max_bytes
        .or(file.socket_request_max_bytes)
    {
        c.request_bytes_max = v;
    }
    if let Some(v) = args.fetch_zero_copy.or(file.fetch_zero_copy) {
        c.fetch_zero_copy = v;
    }
    if let Some(v) = args
        .group_min_session_timeout_ms
        .or(file.group_min_session_timeout_ms)
    {
        if v < 1 {
            return Err(format!(
                "--group-min-session-timeout-ms must be positive, got {v}"
            ));
        }
        c.group_min_session_timeout_ms = v;
    }
    if let Some(v) = args
        .group_consumer_session_timeout_ms
        .or(file.group_consumer_session_timeout_ms)
    {
        if v < 1 {
            return Err("--group-consumer-session-timeout-ms must be positive".into());
        }
        c.group_consumer_session_timeout_ms = v;
    }
    if let Some(v) = args
        .group_consumer_heartbeat_interval_ms
        .or(file.group_consumer_heartbeat_interval_ms)
    {
        if v < 1 || v as u64 >= c.group_consumer_session_timeout_ms {
            return Err(format!(
                "--group-consumer-heartbeat-interval-ms must be positive and below the session \
                 timeout ({} ms), got {v}",
                c.group_consumer_session_timeout_ms
            ));
        }
        c.group_consumer_heartbeat_interval_ms = v;
    }
    if let Some(v) = args
        .offsets_retention_minutes
        .or(file.offsets_retention_minutes)
    {
        if v < 1 {
            return Err("--offsets-retention-minutes must be at least 1".into());
        }
        c.offsets_retention_ms = v * 60_000;
    }
    for (k, v) in &file.topic_defaults {
        validate_topic_config(k, v).map_err(|e| format!("topic_defaults: {e}"))?;
    }
    c.topic_defaults = file.topic_defaults;
    Ok(c)
}

fn main() -> ExitCode {
    sluice_storage::dma::keep_io_buffers_mapped();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve_config(args).and_then(sluice_net::broker::serve),
        Command::Log(cmd) => run_local("sluice-log", log_command(cmd))
            .map_err(|e| e.to_string())
            .and_then(|r| r),
        Command::Group(cmd) => group_cmd::run(cmd),
        Command::Stream { server, cmd } => native_cmd::run(server, native_cmd::Native::Stream(cmd)),
        Command::Consumer { server, cmd } => {
            native_cmd::run(server, native_cmd::Native::Consumer(cmd))
        }
        Command::Pub { server, args } => native_cmd::run(server, native_cmd::Native::Pub(args)),
        Command::Sub { server, args } => native_cmd::run(server, native_cmd::Native::Sub(args)),
        Command::Req { server, args } => native_cmd::run(server, native_cmd::Native::Req(args)),
        Command::Reply { server, args } => native_cmd::run(server, native_cmd::Native::Reply(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("sluice: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn log_command(cmd: LogCommand) -> Result<(), String> {
    match cmd {
        LogCommand::Append {
            dir,
            count,
            records,
            value_bytes_max,
            fsync,
            concurrency,
            segment_bytes,
            first_seq,
            print_acks,
        } => {
            let config = LogConfig {
                fsync,
                segment_bytes_max: segment_bytes,
                batch_bytes_max: 64 << 20,
                ..LogConfig::default()
            };
            let log = Rc::new(
                Log::open(DmaDisk, &dir, config, wall_clock_ms())
                    .await
                    .map_err(|e| e.to_string())?,
            );
            let records = records.max(1);
            let next = Rc::new(Cell::new(first_seq));
            let end = if count == 0 {
                u64::MAX
            } else {
                first_seq + count
            };
            let workers = (0..concurrency.max(1)).map(|_| {
                let log = log.clone();
                let next = next.clone();
                glommio::spawn_local(async move {
                    loop {
                        let seq = next.get();
                        if seq >= end {
                            return Ok::<(), String>(());
                        }
                        next.set(seq + 1);
                        let mut b = generated_batch(seq, records, value_bytes_max);
                        let info = log
                            .append(wall_clock_ms(), &mut b)
                            .await
                            .map_err(|e| format!("append of batch {seq} failed: {e}"))?;
                        if print_acks {
                            let mut out = std::io::stdout().lock();
                            // A closed pipe means the reader is gone; stop quietly then.
                            if writeln!(out, "ack {seq} {} {}", info.base_offset, info.last_offset)
                                .and_then(|_| out.flush())
                                .is_err()
                            {
                                return Ok(());
                            }
                        }
                    }
                })
            });
            let workers: Vec<_> = workers.collect();
            for w in workers {
                w.await?;
            }
            log.sync(wall_clock_ms()).await.map_err(|e| e.to_string())
        }
        LogCommand::Dump {
            dir,
            json,
            verify,
            records,
            value_bytes_max,
        } => {
            if !dir.is_dir() {
                return Err(format!("{} is not a directory", dir.display()));
            }
            let log = Log::open(DmaDisk, &dir, LogConfig::default(), wall_clock_ms())
                .await
                .map_err(|e| e.to_string())?;
            let mut from = log.start_offset();
            let mut out = std::io::stdout().lock();
            let mut batches = 0u64;
            while from < log.end_offset() {
                let bytes = log.read(from, 1 << 20).await.map_err(|e| e.to_string())?;
                if bytes.is_empty() {
                    break;
                }
                let (found, _) = batch::split_batches(&bytes, true);
                for (h, range) in found {
                    let seq = generated_seq(&bytes[range.clone()]);
                    if verify {
                        let seq = seq.ok_or_else(|| {
                            format!(
                                "batch at offset {} was not generated by `log append`",
                                h.base_offset
                            )
                        })?;
                        let want = {
                            let mut b = generated_batch(seq, records.max(1), value_bytes_max);
                            batch::set_base_offset(&mut b, Offset(h.base_offset));
                            b
                        };
                        if bytes[range.clone()] != want[..] {
                            return Err(format!(
                                "batch at offset {} does not hold generated batch {seq}",
                                h.base_offset
                            ));
                        }
                    }
                    let line = if json {
                        serde_json::json!({
                            "base_offset": h.base_offset, "last_offset": h.last_offset(), "seq": seq,
                            "bytes": range.len(), "records": h.records_count,
                            "max_timestamp": h.max_timestamp, "crc": h.crc,
                            "compression": h.compression().map(|c| c.name()).unwrap_or("?"),
                        })
                        .to_string()
                    } else {
                        format!(
                            "offset {}..={} bytes {} records {} max_ts {} crc {:#010x}",
                            h.base_offset,
                            h.last_offset(),
                            range.len(),
                            h.records_count,
                            h.max_timestamp,
                            h.crc
                        )
                    };
                    writeln!(out, "{line}").map_err(|e| e.to_string())?;
                    batches += 1;
                    from = Offset(h.last_offset() + 1);
                }
            }
            eprintln!(
                "{batches} batches, offsets {}..{}",
                log.start_offset(),
                log.end_offset()
            );
            Ok(())
        }
    }
}

/// The sequence number `log append` put in the first record's key (`seq-N-0`).
fn generated_seq(bytes: &[u8]) -> Option<u64> {
    let records = batch::records(bytes, 256 << 20).ok()?;
    let key = records.first()?.key.as_ref()?;
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix("seq-")?.strip_suffix("-0")?.parse().ok()
}

/// The batch `log append` writes as its `seq`-th: sizes and bytes follow from `seq` alone.
fn generated_batch(seq: u64, records: u32, value_bytes_max: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None, 1_700_000_000_000 + seq as i64);
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for r in 0..records {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x as usize) % (value_bytes_max + 1);
        let value: Vec<u8> = (0..len)
            .map(|i| (seq as usize ^ (i * 7 + r as usize)) as u8)
            .collect();
        b.push(
            1_700_000_000_000 + seq as i64,
            Some(format!("seq-{seq}-{r}").as_bytes()),
            Some(&value),
            &[],
        );
    }
    b.build()
}
