//! The `sluice://` driver: Sluice's native protocol through `sluice-client`. A workload's topic
//! is a file stream named after it (upper-cased) capturing `<topic>.*`; "partitions" are the
//! subjects `<topic>.0 ..`; publishes wait for the stream's acknowledgement (stored, and
//! fdatasynced under the default durability) unless acks=0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_client::{
    AckPolicy, Client, ConsumerConfig, FetchOptions, PublishOptions, Retention, StreamConfig,
};

use super::{now_ns, produce_with, Receipts, Stats, Workload};

fn stream_name(w: &Workload) -> String {
    w.topic.to_uppercase().replace(['.', '*', '>'], "_")
}

pub async fn prepare(addr: &str, w: &Workload) -> Result<(), String> {
    let c = Client::connect(addr).await.map_err(|e| e.to_string())?;
    let name = stream_name(w);
    let _ = c.delete_stream(&name).await;
    c.add_stream(StreamConfig {
        name,
        subjects: vec![format!("{}.*", w.topic)],
        retention: Retention::Limits,
        duplicate_window_ms: 0,
        ..StreamConfig::default()
    })
    .await
    .map_err(|e| format!("creating the stream: {e}"))?;
    Ok(())
}

/// Producers: each keeps up to `in_flight` publishes awaiting their acks (acks=0: counted
/// when sent, followed by one round trip at the end).
pub async fn produce(addr: &str, w: &Workload, stats: Arc<Stats>) -> Result<(), String> {
    let mut clients = Vec::new();
    for _ in 0..w.producers.max(1) {
        clients.push(Client::connect(addr).await.map_err(|e| e.to_string())?);
    }
    let fire_and_forget = w.acks == "0";
    produce_with(
        w,
        stats,
        clients.clone(),
        move |c: Client, subject, data| async move {
            if fire_and_forget {
                c.publish(&subject, &data).map_err(drop)
            } else {
                c.publish_ack(&subject, &data, PublishOptions::default())
                    .await
                    .map(drop)
                    .map_err(drop)
            }
        },
    )
    .await?;
    if fire_and_forget {
        for c in clients {
            let _ = c.ping().await;
        }
    }
    Ok(())
}

/// Pull requests each consumer keeps outstanding.
const FETCH_DEPTH: usize = 3;

/// Consumers: pull consumers (ack none) sharing the stream's subjects round-robin, reading
/// until `expect` messages arrived in total. With `e2e`, latency is now − the payload's send
/// time; otherwise the time since the run started.
pub async fn consume(
    addr: &str,
    w: &Workload,
    stats: Arc<Stats>,
    expect: Arc<AtomicU64>,
    e2e: bool,
) -> Result<(), String> {
    let name = stream_name(w);
    let got = Arc::new(AtomicU64::new(0));
    let n = w.consumers.max(1);
    let mut tasks = Vec::new();
    for k in 0..n {
        let client = Client::connect(addr).await.map_err(|e| e.to_string())?;
        let filters: Vec<String> = (0..w.partitions.max(1))
            .filter(|p| p % n == k)
            .map(|p| format!("{}.{p}", w.topic))
            .collect();
        let consumer = format!("bench-{k}-{}", now_ns());
        client
            .add_consumer(
                &name,
                ConsumerConfig {
                    durable_name: consumer.clone(),
                    ack_policy: AckPolicy::None,
                    filter_subjects: if n == 1 { Vec::new() } else { filters },
                    max_ack_pending: -1,
                    ..ConsumerConfig::default()
                },
            )
            .await
            .map_err(|e| format!("creating consumer: {e}"))?;
        let (stats, got, name, expect) = (stats.clone(), got.clone(), name.clone(), expect.clone());
        tasks.push(tokio::spawn(async move {
            use futures::stream::{FuturesUnordered, StreamExt};
            let mut receipts = Receipts::new(now_ns(), e2e);
            let fetch = || {
                let (client, name, consumer) = (client.clone(), name.clone(), consumer.clone());
                async move {
                    client
                        .fetch(
                            &name,
                            &consumer,
                            FetchOptions {
                                batch: 1000,
                                max_bytes: 4 << 20,
                                expires: std::time::Duration::from_millis(500),
                                no_wait: false,
                            },
                        )
                        .await
                }
            };
            // Pull requests stay queued at the server (FETCH_DEPTH of them), as a JetStream
            // client's `messages()` keeps its pull requests outstanding: the next batch is
            // read while this one travels.
            let mut inflight: FuturesUnordered<_> = (0..FETCH_DEPTH).map(|_| fetch()).collect();
            while let Some(r) = inflight.next().await {
                let msgs = match r {
                    Ok(m) => m,
                    Err(_) => {
                        stats.error();
                        return;
                    }
                };
                for m in &msgs {
                    receipts.add(&m.data);
                }
                receipts.flush(&stats);
                got.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                if got.load(Ordering::Relaxed) < expect.load(Ordering::Relaxed) {
                    inflight.push(fetch());
                }
            }
            let _ = client.delete_consumer(&name, &consumer).await;
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
