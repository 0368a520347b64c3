//! The `kafka://` driver: librdkafka through the `rdkafka` crate (feature `kafka`; librdkafka
//! is built from source, so this is kept out of the test build). The same client for every
//! Kafka-wire broker (Sluice, Tansu), so a ratio compares brokers, not clients.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{now_ns, payload, payload_time, should_stop, Pacer, Stats, Workload};

pub async fn prepare(addr: &str, w: &Workload) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .map_err(|e| e.to_string())?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = admin.delete_topics(&[&w.topic], &opts).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for attempt in 0..20 {
        let topic = NewTopic::new(
            &w.topic,
            w.partitions.max(1) as i32,
            TopicReplication::Fixed(1),
        );
        let r = admin
            .create_topics(&[topic], &opts)
            .await
            .map_err(|e| e.to_string())?;
        match r.first() {
            Some(Ok(_)) => return Ok(()),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) if attempt < 19 => {
                // A deletion still in progress.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(Err((_, code))) => return Err(format!("creating topic {}: {code}", w.topic)),
            None => return Err("no answer to CreateTopics".into()),
        }
    }
    Err(format!("topic {} could not be recreated", w.topic))
}

fn producer(addr: &str, w: &Workload) -> Result<FutureProducer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("acks", &w.acks)
        .set("linger.ms", w.linger_ms.to_string())
        .set("batch.size", w.batch_bytes.to_string())
        .set("compression.type", &w.compression)
        .set(
            "enable.idempotence",
            if w.acks == "all" { "true" } else { "false" },
        )
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .map_err(|e| e.to_string())
}

pub async fn produce(addr: &str, w: &Workload, stats: Arc<Stats>) -> Result<(), String> {
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..w.producers.max(1) {
        let prod = producer(addr, w)?;
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
                let data = payload(w.message_bytes, n, intended);
                let key = (w.keys > 0).then(|| format!("k{}", n % w.keys));
                let partition = ((n + p as u64) % w.partitions.max(1) as u64) as i32;
                loop {
                    let mut rec = FutureRecord::<String, Vec<u8>>::to(&w.topic).payload(&data);
                    if let Some(k) = &key {
                        rec = rec.key(k);
                    } else {
                        rec = rec.partition(partition);
                    }
                    match prod.send_result(rec) {
                        Ok(fut) => {
                            let (stats, len) = (stats.clone(), data.len());
                            pending.push(async move {
                                match fut.await {
                                    Ok(Ok(_)) => stats.record(len, now_ns() - intended),
                                    _ => stats.error(),
                                }
                            });
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            if pending.next().await.is_none() {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                        Err(_) => {
                            stats.error();
                            break;
                        }
                    }
                }
                i += 1;
            }
            while pending.next().await.is_some() {}
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
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
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", addr)
            .set("group.id", format!("bench-{}", now_ns()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "100")
            .set("queued.min.messages", "100000")
            .create()
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for p in (0..w.partitions.max(1)).filter(|p| p % n == k) {
            let offset = Offset::Beginning; // the topic is fresh in every mode
            tpl.add_partition_offset(&w.topic, p as i32, offset)
                .map_err(|e| e.to_string())?;
        }
        c.assign(&tpl).map_err(|e| e.to_string())?;
        let (stats, got, expect) = (stats.clone(), got.clone(), expect.clone());
        tasks.push(tokio::spawn(async move {
            let started = now_ns();
            while got.load(Ordering::Relaxed) < expect.load(Ordering::Relaxed) {
                let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await
                else {
                    continue;
                };
                let data = m.payload().unwrap_or_default();
                let now = now_ns();
                let lat = if e2e {
                    now.saturating_sub(payload_time(data).unwrap_or(now))
                } else {
                    now - started
                };
                stats.record(data.len(), lat);
                got.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
