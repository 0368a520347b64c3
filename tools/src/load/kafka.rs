//! The `kafka://` driver: librdkafka through the `rdkafka` crate (feature `kafka`; librdkafka
//! is built from source, so this is kept out of the test build). The same client for every
//! Kafka-wire broker (Sluice, Tansu), so a ratio compares brokers, not clients.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::{now_ns, payload, record_received, should_stop, Pacer, Stats, Workload};

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

/// Records each delivery straight from librdkafka's delivery callback (no future per
/// message): the opaque carries the message's intended send time and size.
struct StatsContext {
    stats: Arc<Stats>,
}

impl rdkafka::ClientContext for StatsContext {}

impl rdkafka::producer::ProducerContext for StatsContext {
    type DeliveryOpaque = Box<(u64, usize)>;

    fn delivery(
        &self,
        result: &rdkafka::message::DeliveryResult<'_>,
        opaque: Self::DeliveryOpaque,
    ) {
        match result {
            Ok(_) => self.stats.record(opaque.1, now_ns() - opaque.0),
            Err(_) => self.stats.error(),
        }
    }
}

fn producer(
    addr: &str,
    w: &Workload,
    stats: Arc<Stats>,
) -> Result<ThreadedProducer<StatsContext>, String> {
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
        .set(
            "queue.buffering.max.messages",
            w.in_flight.max(1).to_string(),
        )
        .set("queue.buffering.max.kbytes", "2097151")
        .create_with_context(StatsContext { stats })
        .map_err(|e| e.to_string())
}

/// Producers: one thread each feeding librdkafka (whose own queue, `in_flight` messages
/// deep, is the only bound); deliveries are counted in its callback.
pub async fn produce(addr: &str, w: &Workload, stats: Arc<Stats>) -> Result<(), String> {
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut threads = Vec::new();
    for p in 0..w.producers.max(1) {
        let prod = producer(addr, w, stats.clone())?;
        let (w, stats, sent) = (w.clone(), stats.clone(), sent.clone());
        threads.push(tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            let pacer = Pacer::new(&w);
            let mut i = 0u64;
            loop {
                if should_stop(&w, started, &sent) {
                    break;
                }
                let n = sent.fetch_add(1, Ordering::Relaxed);
                if w.duration.is_none() && n >= w.count {
                    break;
                }
                let intended = if w.rate > 0.0 {
                    rt.block_on(pacer.wait(i))
                } else {
                    now_ns()
                };
                let data = payload(w.message_bytes, n, intended);
                let key = (w.keys > 0).then(|| format!("k{}", n % w.keys));
                let partition = ((n + p as u64) % w.partitions.max(1) as u64) as i32;
                let mut opaque = Box::new((intended, data.len()));
                loop {
                    let mut rec = BaseRecord::<String, Vec<u8>, Box<(u64, usize)>>::with_opaque_to(
                        &w.topic, opaque,
                    )
                    .payload(&data);
                    rec = match &key {
                        Some(k) => rec.key(k),
                        None => rec.partition(partition),
                    };
                    match prod.send(rec) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            opaque = r.delivery_opaque;
                            prod.poll(Duration::from_millis(1));
                        }
                        Err(_) => {
                            stats.error();
                            break;
                        }
                    }
                }
                i += 1;
            }
            let _ = prod.flush(Duration::from_secs(60));
        }));
    }
    for t in threads {
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
                record_received(&stats, m.payload().unwrap_or_default(), started, e2e);
                got.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
