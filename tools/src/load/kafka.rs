//! The `kafka://` driver: librdkafka through the `rdkafka` crate (feature `kafka`; librdkafka
//! is built from source, so this is kept out of the test build). The same client for every
//! Kafka-wire broker (Sluice, Tansu), so a ratio compares brokers, not clients.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::bindings as rdsys;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::{now_ns, should_stop, Pacer, Receipts, Stats, Workload, CONSUME_STALL, RECEIPTS_BATCH};

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
/// message): the opaque carries the message's intended send time (ns, process clock).
struct StatsContext {
    stats: Arc<Stats>,
    message_bytes: usize,
    room: Room,
    /// Deliveries not yet added to `stats` (a lock of `stats` and a clock read per batch, not
    /// per message), and when the oldest of them was acknowledged.
    acked: std::sync::Mutex<(Receipts, u64)>,
}

/// Deliveries wait at most this long in [`StatsContext::acked`] before reaching the stats.
const ACKED_FLUSH_NS: u64 = 5_000_000;

impl StatsContext {
    fn flush_acked(&self) {
        self.acked.lock().unwrap().0.flush(&self.stats);
    }
}

/// How a producing thread waits for room in librdkafka's full queue: it parks, and the next
/// delivery report unparks it. (Polling for that, `BaseProducer::poll(1 ms)`, spins: its
/// deadline loop polls with the remaining time truncated to whole milliseconds — 0 — so the
/// thread busy-waited for the whole millisecond, over half of the load core in a profile.)
#[derive(Default)]
struct Room {
    waiter: std::sync::Mutex<Option<std::thread::Thread>>,
    waiting: std::sync::atomic::AtomicBool,
}

impl Room {
    /// Announces that this thread is about to wait: a delivery from now on unparks it. The
    /// caller then sends again and [`Room::park`]s only if the queue is still full.
    fn arm(&self) {
        let mut w = self.waiter.lock().unwrap();
        if w.is_none() {
            *w = Some(std::thread::current());
        }
        drop(w);
        self.waiting.store(true, Ordering::SeqCst);
    }

    /// Parks until a delivery since [`Room::arm`] (at once if one came already), at most 10 ms.
    fn park(&self) {
        std::thread::park_timeout(Duration::from_millis(10));
        self.waiting.store(false, Ordering::SeqCst);
    }

    /// The queue had room after all: no wait.
    fn park_cancel(&self) {
        self.waiting.store(false, Ordering::SeqCst);
    }

    fn delivered(&self) {
        if self.waiting.load(Ordering::Relaxed) && self.waiting.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.waiter.lock().unwrap().as_ref() {
                t.unpark();
            }
        }
    }
}

impl rdkafka::ClientContext for StatsContext {}

impl rdkafka::producer::ProducerContext for StatsContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, intended: usize) {
        self.room.delivered();
        match result {
            Ok(_) => {
                let now = now_ns();
                let mut acked = self.acked.lock().unwrap();
                let (receipts, oldest) = &mut *acked;
                if receipts.len() == 0 {
                    *oldest = now;
                }
                receipts.record(self.message_bytes, now.saturating_sub(intended as u64));
                if receipts.len() >= RECEIPTS_BATCH || now - *oldest >= ACKED_FLUSH_NS {
                    receipts.flush(&self.stats);
                }
            }
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
        .create_with_context(StatsContext {
            stats,
            message_bytes: w.message_bytes.max(16),
            room: Room::default(),
            acked: std::sync::Mutex::new((Receipts::measured(), 0)),
        })
        .map_err(|e| e.to_string())
}

/// librdkafka's RD_KAFKA_PARTITION_UA (a macro, not in the bindings): let the partitioner choose.
const PARTITION_UA: i32 = -1;

/// Messages handed to librdkafka per `rd_kafka_produce_batch` call.
const PRODUCE_BATCH: usize = 256;

/// A topic handle of librdkafka (`rd_kafka_topic_t`), released on drop.
struct RawTopic(*mut rdsys::rd_kafka_topic_t);

impl Drop for RawTopic {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_topic_new and released exactly once, before the client.
        unsafe { rdsys::rd_kafka_topic_destroy(self.0) }
    }
}

/// Producers: one thread each feeding librdkafka (whose own queue, `in_flight` messages
/// deep, is the only bound); deliveries are counted in its callback.
///
/// Messages are enqueued with librdkafka's batch API (`rd_kafka_produce_batch`, copied,
/// per-message partitions) from one reused buffer: the generator's own cost per message is
/// writing its 16-byte header, so the figure measures librdkafka and the broker, not the
/// load generator's allocator.
pub async fn produce(addr: &str, w: &Workload, stats: Arc<Stats>) -> Result<(), String> {
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut threads = Vec::new();
    for p in 0..w.producers.max(1) {
        let prod = producer(addr, w, stats.clone())?;
        let (w, stats, sent) = (w.clone(), stats.clone(), sent.clone());
        threads.push(tokio::task::spawn_blocking(move || {
            produce_thread(&prod, &w, &stats, &sent, started, p as u64);
            let _ = prod.flush(Duration::from_secs(60));
            prod.context().flush_acked();
        }));
    }
    for t in threads {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn produce_thread(
    prod: &ThreadedProducer<StatsContext>,
    w: &Workload,
    stats: &Stats,
    sent: &AtomicU64,
    started: Instant,
    p: u64,
) {
    let topic_name = std::ffi::CString::new(w.topic.as_str()).expect("topic without NUL");
    // SAFETY: the client outlives the topic handle (dropped at the end of this function).
    let rkt = RawTopic(unsafe {
        rdsys::rd_kafka_topic_new(
            prod.client().native_ptr(),
            topic_name.as_ptr(),
            std::ptr::null_mut(),
        )
    });
    let size = w.message_bytes.max(16);
    let mut buf = vec![b'x'; size * PRODUCE_BATCH];
    let keys: Vec<String> = (0..w.keys).map(|k| format!("k{k}")).collect();
    let partitions = w.partitions.max(1) as u64;
    let pacer = Pacer::new(w);
    // SAFETY: rd_kafka_message_t is a plain C struct; zeroed is its empty value.
    let mut msgs: Vec<rdsys::rd_kafka_message_t> = (0..PRODUCE_BATCH)
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    let mut i = 0u64;
    loop {
        if should_stop(w, started, sent) {
            break;
        }
        // How many messages go now: paced runs take those already due (at least one).
        let mut take = PRODUCE_BATCH;
        if w.rate > 0.0 {
            pacer.wait_blocking(i);
            take = (1..PRODUCE_BATCH)
                .take_while(|k| pacer.due(i + *k as u64))
                .count()
                + 1;
        }
        let first = sent.fetch_add(take as u64, Ordering::Relaxed);
        if w.duration.is_none() {
            if first >= w.count {
                break;
            }
            take = take.min((w.count - first) as usize);
        }
        for k in 0..take {
            let n = first + k as u64;
            let intended = pacer.intended_ns(i + k as u64);
            let data = &mut buf[k * size..(k + 1) * size];
            data[..8].copy_from_slice(&intended.to_le_bytes());
            data[8..16].copy_from_slice(&n.to_le_bytes());
            let m = &mut msgs[k];
            m.err = rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
            m.payload = data.as_mut_ptr().cast();
            m.len = size;
            m._private = intended as usize as *mut std::ffi::c_void;
            if keys.is_empty() {
                m.partition = ((n + p) % partitions) as i32;
                m.key = std::ptr::null_mut();
                m.key_len = 0;
            } else {
                let key = &keys[(n % w.keys) as usize];
                m.partition = PARTITION_UA;
                m.key = key.as_ptr() as *mut _;
                m.key_len = key.len();
            }
        }
        if keys.is_empty() {
            // One call per partition with the partition given: librdkafka enqueues such a run
            // under one partition lock instead of partitioning and locking per message.
            let batch = &mut msgs[..take];
            batch.sort_by_key(|m| m.partition);
            let mut start = 0;
            while start < batch.len() {
                let q = batch[start].partition;
                let end = start + batch[start..].partition_point(|m| m.partition == q);
                enqueue(prod, &rkt, &mut batch[start..end], q, stats);
                start = end;
            }
        } else {
            enqueue(prod, &rkt, &mut msgs[..take], PARTITION_UA, stats);
        }
        i += take as u64;
    }
}

/// Hands `msgs` to librdkafka for `partition` (`PARTITION_UA`: each message's own, or the
/// partitioner's), waiting for room (see [`Room`]) while its queue is full.
fn enqueue(
    prod: &ThreadedProducer<StatsContext>,
    rkt: &RawTopic,
    msgs: &mut [rdsys::rd_kafka_message_t],
    partition: i32,
    stats: &Stats,
) {
    let room = &prod.context().room;
    let mut rest = msgs;
    loop {
        rest = produce_some(rkt, rest, partition, stats);
        if rest.is_empty() {
            return;
        }
        room.arm();
        rest = produce_some(rkt, rest, partition, stats);
        if rest.is_empty() {
            room.park_cancel();
            return;
        }
        room.park();
    }
}

/// One `rd_kafka_produce_batch` call: returns the messages refused for a full queue (the first
/// such refusal and everything after it), ready to go again; other failures count as errors.
fn produce_some<'m>(
    rkt: &RawTopic,
    msgs: &'m mut [rdsys::rd_kafka_message_t],
    partition: i32,
    stats: &Stats,
) -> &'m mut [rdsys::rd_kafka_message_t] {
    use rdsys::rd_kafka_resp_err_t as E;
    let flags = if partition == PARTITION_UA {
        rdsys::RD_KAFKA_MSG_F_COPY | rdsys::RD_KAFKA_MSG_F_PARTITION
    } else {
        rdsys::RD_KAFKA_MSG_F_COPY
    };
    // SAFETY: the messages point into buffers that outlive the call; with MSG_F_COPY
    // librdkafka copies payloads and keys before returning.
    unsafe {
        rdsys::rd_kafka_produce_batch(
            rkt.0,
            partition,
            flags,
            msgs.as_mut_ptr(),
            msgs.len() as i32,
        );
    }
    let full = msgs
        .iter()
        .position(|m| m.err == E::RD_KAFKA_RESP_ERR__QUEUE_FULL)
        .unwrap_or(msgs.len());
    let (sent, rest) = msgs.split_at_mut(full);
    for m in sent.iter() {
        if m.err != E::RD_KAFKA_RESP_ERR_NO_ERROR {
            stats.error();
        }
    }
    for m in rest.iter_mut() {
        m.err = E::RD_KAFKA_RESP_ERR_NO_ERROR;
    }
    rest
}

/// Messages taken from librdkafka's consumer queue per `rd_kafka_consume_batch_queue` call.
const CONSUME_BATCH: usize = 1024;

/// librdkafka's consumer queue of a client (`rd_kafka_queue_t`), released on drop.
struct RawQueue(*mut rdsys::rd_kafka_queue_t);

impl Drop for RawQueue {
    fn drop(&mut self) {
        // SAFETY: from rd_kafka_queue_get_consumer, released exactly once, before the client.
        unsafe { rdsys::rd_kafka_queue_destroy(self.0) }
    }
}

/// Consumers: one thread each draining librdkafka's consumer queue a batch at a time
/// (`rd_kafka_consume_batch_queue`: one queue lock and wake-up per batch, not per message;
/// no clock read per message), reading until `expect` messages arrived in total.
pub async fn consume(
    addr: &str,
    w: &Workload,
    stats: Arc<Stats>,
    expect: Arc<AtomicU64>,
    e2e: bool,
) -> Result<(), String> {
    let got = Arc::new(AtomicU64::new(0));
    let n = w.consumers.max(1);
    let mut threads = Vec::new();
    for k in 0..n {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", addr)
            .set("group.id", format!("bench-{}", now_ns()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .set("queued.min.messages", "100000")
            // 4 MiB per partition and fetch (librdkafka's default is 1 MiB): fewer round trips
            // for a consumer catching up; the same for every Kafka-wire system measured.
            .set("max.partition.fetch.bytes", (4 << 20).to_string())
            .create()
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for p in (0..w.partitions.max(1)).filter(|p| p % n == k) {
            // An explicit offset, not `Offset::Beginning`: librdkafka resolves BEGINNING with a
            // ListOffsets request sent from a retry timer (500 ms) when the partition's leader
            // is not known yet at assign, so an e2e run's consumer started fetching 0.5–1 s
            // late and its catching up landed in the measured latencies (every Kafka-wire
            // system alike). The topic is fresh in every mode; should offset 0 be gone,
            // `auto.offset.reset=earliest` (set above) starts at the earliest offset.
            let offset = Offset::Offset(0);
            tpl.add_partition_offset(&w.topic, p as i32, offset)
                .map_err(|e| e.to_string())?;
        }
        c.assign(&tpl).map_err(|e| e.to_string())?;
        let (stats, got, expect) = (stats.clone(), got.clone(), expect.clone());
        threads.push(tokio::task::spawn_blocking(move || {
            // SAFETY: the client outlives the queue handle (dropped first, below).
            let queue =
                RawQueue(unsafe { rdsys::rd_kafka_queue_get_consumer(c.client().native_ptr()) });
            let mut batch: Vec<*mut rdsys::rd_kafka_message_t> =
                vec![std::ptr::null_mut(); CONSUME_BATCH];
            let mut receipts = Receipts::new(now_ns(), e2e);
            let mut progress = Instant::now();
            while got.load(Ordering::Relaxed) < expect.load(Ordering::Relaxed) {
                // What is queued now, without waiting (the call waits for a whole batch when
                // given a timeout); when nothing is, wait for one message (up to 100 ms).
                // SAFETY: `batch` has room for CONSUME_BATCH pointers; librdkafka fills the
                // first `taken` and hands their ownership to us.
                let mut taken = unsafe {
                    rdsys::rd_kafka_consume_batch_queue(
                        queue.0,
                        0,
                        batch.as_mut_ptr(),
                        CONSUME_BATCH,
                    )
                };
                if taken == 0 {
                    receipts.flush(&stats);
                    // SAFETY: as above, room for one.
                    taken = unsafe {
                        rdsys::rd_kafka_consume_batch_queue(queue.0, 100, batch.as_mut_ptr(), 1)
                    };
                }
                if taken < 0 {
                    stats.error();
                    break;
                }
                let mut received = 0u64;
                for &m in &batch[..taken as usize] {
                    // SAFETY: a message librdkafka handed us, destroyed exactly once below.
                    let msg = unsafe { &*m };
                    if msg.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                        let data = if msg.payload.is_null() {
                            &[][..]
                        } else {
                            // SAFETY: librdkafka's payload pointer and length, valid until
                            // the message is destroyed.
                            unsafe { std::slice::from_raw_parts(msg.payload as *const u8, msg.len) }
                        };
                        receipts.add(data);
                        received += 1;
                    } else {
                        stats.error();
                    }
                    // SAFETY: see above.
                    unsafe { rdsys::rd_kafka_message_destroy(m) };
                }
                if received > 0 {
                    got.fetch_add(received, Ordering::Relaxed);
                    progress = Instant::now();
                }
                if receipts.len() >= RECEIPTS_BATCH {
                    receipts.flush(&stats);
                }
                // librdkafka retries a dead broker forever: give up rather than hang the run.
                if received == 0 && progress.elapsed() > CONSUME_STALL {
                    eprintln!("kafka consumer: nothing received for {CONSUME_STALL:?}, giving up");
                    stats.error();
                    break;
                }
            }
            receipts.flush(&stats);
            drop(queue);
            drop(c);
        }));
    }
    for t in threads {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
