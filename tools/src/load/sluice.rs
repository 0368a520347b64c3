//! The `sluice://` driver: Sluice's native protocol through `sluice-client`. A workload's topic
//! is a file stream named after it (upper-cased) capturing `<topic>.*`; "partitions" are the
//! subjects `<topic>.0 ..`; publishes wait for the stream's acknowledgement (stored, and
//! fdatasynced under the default durability) unless acks=0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use sluice_client::{
    AckPolicy, Client, ConsumerConfig, FetchOptions, PublishOptions, Retention, StreamConfig,
};

use super::{now_ns, payload, payload_time, should_stop, Pacer, Stats, Workload};

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

/// Producers: each keeps up to `in_flight` publishes awaiting their acks.
pub async fn produce(addr: &str, w: &Workload, stats: Arc<Stats>) -> Result<(), String> {
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..w.producers.max(1) {
        let client = Client::connect(addr).await.map_err(|e| e.to_string())?;
        let (w, stats, sent) = (w.clone(), stats.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let pacer = Pacer::new(&w);
            let mut pending = FuturesUnordered::new();
            let mut i = 0u64;
            loop {
                if should_stop(&w, started, &sent) {
                    break;
                }
                while pending.len() >= w.in_flight.max(1) {
                    pending.next().await;
                }
                let n = sent.fetch_add(1, Ordering::Relaxed);
                if w.duration.is_none() && n >= w.count {
                    break;
                }
                let intended = pacer.wait(i).await;
                let subject = format!(
                    "{}.{}",
                    w.topic,
                    (n + p as u64) % w.partitions.max(1) as u64
                );
                let data = payload(w.message_bytes, n, intended);
                if w.acks == "0" {
                    if client.publish(&subject, &data).is_err() {
                        stats.error();
                    } else {
                        stats.record(data.len(), now_ns() - intended);
                    }
                } else {
                    let (c, stats) = (client.clone(), stats.clone());
                    let len = data.len();
                    pending.push(async move {
                        match c
                            .publish_ack(&subject, &data, PublishOptions::default())
                            .await
                        {
                            Ok(_) => stats.record(len, now_ns() - intended),
                            Err(_) => stats.error(),
                        }
                    });
                }
                i += 1;
            }
            while pending.next().await.is_some() {}
            if w.acks == "0" {
                let _ = client.ping().await;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

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
            let started = now_ns();
            while got.load(Ordering::Relaxed) < expect.load(Ordering::Relaxed) {
                let msgs = match client
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
                {
                    Ok(m) => m,
                    Err(_) => {
                        stats.error();
                        return;
                    }
                };
                let now = now_ns();
                for m in &msgs {
                    let lat = if e2e {
                        now.saturating_sub(payload_time(&m.data).unwrap_or(now))
                    } else {
                        now - started
                    };
                    stats.record(m.data.len(), lat);
                }
                got.fetch_add(msgs.len() as u64, Ordering::Relaxed);
            }
            let _ = client.delete_consumer(&name, &consumer).await;
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
