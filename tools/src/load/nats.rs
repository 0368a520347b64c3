//! The `nats://` driver: NATS JetStream through async-nats. A workload's topic is a file
//! stream named after it (upper-cased) on `<topic>.*`; publishes wait for the JetStream ack
//! (with `in_flight` acks outstanding per producer); consumers are pull consumers with
//! AckPolicy::None reading the stream's subjects round-robin.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use async_nats::jetstream::{self, consumer, stream};

use super::{now_ns, produce_with, Drain, Stats, Workload};

fn stream_name(w: &Workload) -> String {
    w.topic.to_uppercase().replace(['.', '*', '>'], "_")
}

async fn connect(addr: &str) -> Result<jetstream::Context, String> {
    let c = async_nats::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to nats://{addr}: {e}"))?;
    Ok(jetstream::new(c))
}

pub async fn prepare(addr: &str, w: &Workload) -> Result<(), String> {
    let js = connect(addr).await?;
    let name = stream_name(w);
    let _ = js.delete_stream(&name).await;
    js.create_stream(stream::Config {
        name,
        subjects: vec![format!("{}.*", w.topic)],
        storage: stream::StorageType::File,
        duplicate_window: std::time::Duration::from_secs(0),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("creating the stream: {e}"))?;
    Ok(())
}

pub async fn produce(addr: &str, w: &Workload, stats: Arc<Stats>) -> Result<(), String> {
    let mut clients = Vec::new();
    for _ in 0..w.producers.max(1) {
        clients.push(connect(addr).await?);
    }
    produce_with(
        w,
        stats,
        clients,
        |js: jetstream::Context, subject, data| async move {
            let ack = js.publish(subject, data.into()).await.map_err(drop)?;
            ack.await.map(drop).map_err(drop)
        },
    )
    .await
}

pub async fn consume(
    addr: &str,
    w: &Workload,
    stats: Arc<Stats>,
    expect: Arc<AtomicU64>,
    e2e: bool,
) -> Result<(), String> {
    let got = Arc::new(AtomicU64::new(0));
    let n = w.consumers.max(1);
    let mut tasks = Vec::new();
    for k in 0..n {
        let js = connect(addr).await?;
        let s = js
            .get_stream(stream_name(w))
            .await
            .map_err(|e| format!("stream: {e}"))?;
        let filters: Vec<String> = (0..w.partitions.max(1))
            .filter(|p| p % n == k)
            .map(|p| format!("{}.{p}", w.topic))
            .collect();
        let name = format!("bench-{k}-{}", now_ns());
        let c = s
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name),
                ack_policy: consumer::AckPolicy::None,
                filter_subjects: if n == 1 { Vec::new() } else { filters },
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating consumer: {e}"))?;
        let (stats, got, expect) = (stats.clone(), got.clone(), expect.clone());
        tasks.push(tokio::spawn(async move {
            let mut drain = Drain::new("nats", &stats, &got, &expect, e2e);
            let msgs = match c.messages().await {
                Ok(m) => m,
                Err(e) => return drain.error(e),
            };
            drain.run(msgs, |m| &m.payload).await;
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
