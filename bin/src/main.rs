//! `sluice`: the broker binary and its command-line tools.
//!
//! Today it carries the partition-log tools (`sluice log append|dump`), which exercise and
//! inspect a log directory with the same storage code the broker uses; `serve` arrives with the
//! Kafka-wire broker.

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
    /// Partition-log tools: write test data into a log directory, or dump one.
    #[command(subcommand)]
    Log(LogCommand),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Log(cmd) => run_local("sluice-log", log_command(cmd)).map_err(|e| e.to_string()),
    };
    match result.and_then(|r| r) {
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
