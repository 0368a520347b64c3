//! A SIGTERM while publishes cross shards: the broker stops cleanly (exit 0, no abort) and
//! every publish it acknowledged is there after the restart.
//!
//! Streams S0 and S2 are homed on shard 0, S1 and S3 on shard 1 (FNV-1a of the name, two
//! shards), so whichever shard a connection lands on, half its publishes are forwarded to the
//! other shard and their answers come back across: the path that aborted the broker at
//! shutdown when a task's waker was dropped from the other shard's thread.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{Client, Publish, Retention, StreamConfig};
use sluice_tests::{multi_thread_runtime, sluice_bin, Broker, TestDir};

const STREAMS: [&str; 4] = ["S0", "S1", "S2", "S3"];

#[test]
fn sigterm_under_cross_shard_publishing_stops_cleanly_and_keeps_what_was_acked() {
    let dir = TestDir::new("clean-stop");
    let mut broker = Broker::start(&dir.0, &[]);
    let rt = multi_thread_runtime();
    // (stream, seq) of every acknowledged publish.
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    for round in 0..4u64 {
        rt.block_on(async {
            let mut tasks = Vec::new();
            // Four connections, each publishing batches to every stream until the broker goes.
            for t in 0..4usize {
                let c = Client::connect(&broker.native).await.unwrap();
                if round == 0 && t == 0 {
                    for name in STREAMS {
                        c.add_stream(StreamConfig {
                            name: name.into(),
                            subjects: vec![format!("{}.*", name.to_lowercase())],
                            retention: Retention::Limits,
                            ..StreamConfig::default()
                        })
                        .await
                        .unwrap();
                    }
                }
                let acked = acked.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0u64.. {
                        let s = (t + i as usize) % STREAMS.len();
                        let subject = format!("{}.{t}", STREAMS[s].to_lowercase());
                        let bodies: Vec<String> =
                            (0..64).map(|k| format!("r{round}-t{t}-{i}-{k}")).collect();
                        let batch: Vec<Publish> = bodies
                            .iter()
                            .map(|b| Publish {
                                subject: &subject,
                                data: b.as_bytes(),
                                opts: Default::default(),
                            })
                            .collect();
                        let Ok(answers) = c.publish_batch(&batch).await else {
                            return;
                        };
                        let mut acked = acked.lock().unwrap();
                        for answer in answers {
                            match answer {
                                Ok(ack) => acked.push((s, ack.seq)),
                                Err(_) => return,
                            }
                        }
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(400 + round * 150)).await;
            assert_eq!(
                broker.stop(),
                Some(0),
                "round {round}: the broker did not stop cleanly under cross-shard load"
            );
            for t in tasks {
                let _ = t.await;
            }
        });
        broker.restart();
        rt.block_on(async {
            let c = Client::connect(&broker.native).await.unwrap();
            let acked = acked.lock().unwrap().clone();
            for (s, name) in STREAMS.iter().enumerate() {
                let seqs: Vec<u64> = acked
                    .iter()
                    .filter(|(i, _)| *i == s)
                    .map(|(_, q)| *q)
                    .collect();
                assert!(
                    seqs.len() >= 64,
                    "round {round}: stream {name} had only {} acknowledged publishes",
                    seqs.len()
                );
                let info = c.stream_info(name, "").await.unwrap();
                let max = *seqs.iter().max().unwrap();
                assert!(
                    info.state.last_seq >= max,
                    "round {round}: stream {name} ends at {} but {max} was acknowledged",
                    info.state.last_seq
                );
                assert!(
                    info.state.messages >= seqs.len() as u64,
                    "round {round}: stream {name} holds {} messages, {} were acknowledged",
                    info.state.messages,
                    seqs.len()
                );
            }
        });
    }
    assert_eq!(broker.stop(), Some(0));
}

/// A shard that cannot open what it owns fails the start with a plain error, and the shards
/// that did start stop too (they used to wait forever for it at the shutdown barriers, with
/// SIGTERM blocked).
#[test]
fn a_shard_that_cannot_open_its_data_fails_the_start_instead_of_hanging() {
    let dir = TestDir::new("clean-stop-bad-shard");
    let mut broker = Broker::start(&dir.0, &[]);
    multi_thread_runtime().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        // S1 is homed on shard 1 (see the top of this file).
        c.add_stream(StreamConfig {
            name: "S1".into(),
            subjects: vec!["s1.*".into()],
            ..StreamConfig::default()
        })
        .await
        .unwrap();
        c.publish_ack("s1.a", b"x", Default::default())
            .await
            .unwrap();
    });
    assert_eq!(broker.stop(), Some(0));
    // Its log directory replaced by a file: shard 1 cannot open it, shard 0 can start.
    let log_dir = find_dir(&dir.0, "S1-0").expect("the stream's log directory");
    std::fs::remove_dir_all(&log_dir).unwrap();
    std::fs::write(&log_dir, b"not a directory").unwrap();
    let mut child = std::process::Command::new(sluice_bin())
        .args(["serve", "--data-dir"])
        .arg(&dir.0)
        .args([
            "--kafka-listen",
            &broker.kafka,
            "--native-listen",
            &broker.native,
        ])
        .args(["--shards", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the broker neither started nor exited within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("shard 1") && err.contains("S1-0"),
        "stderr: {err}"
    );
}

fn find_dir(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(root).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == name) {
                return Some(path);
            }
            if let Some(found) = find_dir(&path, name) {
                return Some(found);
            }
        }
    }
    None
}
