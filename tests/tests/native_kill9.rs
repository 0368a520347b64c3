//! Durability of stream publishes: every publish acknowledged before a kill -9 of the broker
//! is there after the restart, byte for byte, under the sequence it was acknowledged with;
//! consumer acks survive too (at worst a message is redelivered, never lost).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{Client, ConsumerConfig, FetchOptions, Retention, StreamConfig};
use sluice_tests::{multi_thread_runtime, Broker, TestDir};

/// (sequence, body) of every acknowledged publish.
type Acked = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

#[test]
fn acknowledged_publishes_survive_kill9() {
    let dir = TestDir::new("native-kill9");
    let mut broker = Broker::start(&dir.0, &[]);
    let rt = multi_thread_runtime();
    let acked: Acked = Arc::default();
    for round in 0..3 {
        rt.block_on(async {
            let c = Client::connect(&broker.native).await.unwrap();
            if round == 0 {
                c.add_stream(StreamConfig {
                    name: "K".into(),
                    subjects: vec!["k.*".into()],
                    retention: Retention::Limits,
                    ..StreamConfig::default()
                })
                .await
                .unwrap();
            }
            // 16 publishers in flight until the broker dies under them.
            let mut tasks = Vec::new();
            for t in 0..16u32 {
                let (c, acked) = (c.clone(), acked.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0u32.. {
                        let data = format!("r{round}-t{t}-{i}-{}", "x".repeat((i % 50) as usize));
                        match c
                            .publish_ack(&format!("k.{t}"), data.as_bytes(), Default::default())
                            .await
                        {
                            Ok(ack) => acked.lock().unwrap().push((ack.seq, data.into_bytes())),
                            Err(_) => return,
                        }
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(700 + round * 300)).await;
            broker.kill9();
            for t in tasks {
                let _ = t.await;
            }
        });
        broker.restart();
        rt.block_on(async {
            let c = Client::connect(&broker.native).await.unwrap();
            let acked = acked.lock().unwrap().clone();
            assert!(
                acked.len() > 100,
                "only {} publishes were acknowledged",
                acked.len()
            );
            let info = c.stream_info("K", "").await.unwrap();
            let max = acked.iter().map(|(s, _)| *s).max().unwrap();
            assert!(
                info.state.last_seq >= max,
                "last seq {} < acked {max}",
                info.state.last_seq
            );
            // Checked by 32 concurrent readers.
            let mut checks = Vec::new();
            for chunk in acked.chunks(acked.len().div_ceil(32)) {
                let (c, chunk) = (c.clone(), chunk.to_vec());
                checks.push(tokio::spawn(async move {
                    for (seq, data) in chunk {
                        let m = c
                            .get_msg("K", seq)
                            .await
                            .unwrap_or_else(|e| panic!("seq {seq}: {e}"));
                        assert_eq!(m.data, data, "seq {seq}");
                    }
                }));
            }
            for t in checks {
                t.await.unwrap();
            }
        });
    }
    // Consumer state: acks made before a kill are kept or redelivered, nothing is skipped.
    rt.block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_consumer(
            "K",
            ConsumerConfig {
                durable_name: "d".into(),
                ack_wait_ms: 60_000,
                max_ack_pending: -1,
                ..ConsumerConfig::default()
            },
        )
        .await
        .unwrap();
        let got = c
            .fetch(
                "K",
                "d",
                FetchOptions {
                    batch: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        for m in &got {
            m.ack_sync().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(400)).await; // state saved every 100 ms
    });
    broker.kill9();
    broker.restart();
    rt.block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        let ci = c.consumer_info("K", "d").await.unwrap();
        assert_eq!(ci.delivered.stream_seq, 100);
        assert_eq!(ci.num_ack_pending, 0);
        let next = c
            .fetch(
                "K",
                "d",
                FetchOptions {
                    batch: 1,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(next[0].meta.as_ref().unwrap().stream_seq, 101);
    });
}
