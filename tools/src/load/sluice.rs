//! The `sluice://` driver: Sluice's native protocol through `sluice-client`. A workload's topic
//! is a file stream named after it (upper-cased) capturing `<topic>.*`; "partitions" are the
//! subjects `<topic>.0 ..`; publishes wait for the stream's acknowledgement (stored, and
//! fdatasynced under the default durability) unless acks=0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_client::{
    AckPolicy, Client, ConsumerConfig, MessagesOptions, Publish, PublishOptions, Retention,
    StreamConfig,
};

use super::{
    now_ns, payload, produce_with, should_stop, Drain, Pacer, Receipts, Stats, Workload,
    RECEIPTS_BATCH,
};

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

/// Producers: each keeps up to `in_flight` publishes awaiting their acks, sent in batches
/// (`Client::publish_batch`, see [`produce_batched`]); acks=0: fire-and-forget publishes,
/// counted when sent, followed by one round trip at the end.
pub async fn produce(addr: &str, w: &Workload, stats: Arc<Stats>) -> Result<(), String> {
    let mut clients = Vec::new();
    for _ in 0..w.producers.max(1) {
        clients.push(Client::connect(addr).await.map_err(|e| e.to_string())?);
    }
    if w.acks != "0" {
        return produce_batched(w, stats, clients).await;
    }
    produce_with(
        w,
        stats,
        clients.clone(),
        move |c: Client, subject, data| async move { c.publish(&subject, &data).map_err(drop) },
    )
    .await?;
    for c in clients {
        let _ = c.ping().await;
    }
    Ok(())
}

/// Messages per `publish_batch`: `batch_bytes` worth, at most a quarter of `in_flight` (so
/// that several batches are in flight), at least one.
fn batch_messages(w: &Workload) -> usize {
    (w.batch_bytes / w.message_bytes.max(1)).clamp(1, (w.in_flight / 4).max(1))
}

/// One producer task per client, each keeping up to `in_flight` messages awaiting their acks
/// in batches of [`batch_messages`]. Paced runs send the messages whose slots have come (at
/// least one, each stamped with its own slot), so latency is still measured from each
/// message's intended send time. Every message is still its own stream message with its own
/// ack; a batch saves the per-message future, wake-up and write of `publish_ack`.
async fn produce_batched(
    w: &Workload,
    stats: Arc<Stats>,
    clients: Vec<Client>,
) -> Result<(), String> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let sent = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let partitions = w.partitions.max(1) as u64;
    let subjects: Arc<Vec<String>> = Arc::new(
        (0..partitions)
            .map(|k| format!("{}.{k}", w.topic))
            .collect(),
    );
    let per_batch = batch_messages(w);
    let mut tasks = Vec::new();
    for (p, client) in clients.into_iter().enumerate() {
        let (w, stats, sent, subjects) = (w.clone(), stats.clone(), sent.clone(), subjects.clone());
        tasks.push(tokio::spawn(async move {
            let pacer = Pacer::new(&w);
            let mut pending = FuturesUnordered::new();
            let mut in_flight = 0usize;
            let mut acks = Receipts::measured();
            // A batch's outcome: per message its length and latency, or None (an error).
            // Returns how many messages the batch had.
            let take = |acks: &mut Receipts, done: Vec<Option<(usize, u64)>>| {
                let n = done.len();
                for outcome in done {
                    match outcome {
                        Some((len, latency)) => acks.record(len, latency),
                        None => stats.error(),
                    }
                }
                if acks.len() >= RECEIPTS_BATCH {
                    acks.flush(&stats);
                }
                n
            };
            let mut i = 0u64;
            loop {
                if should_stop(&w, started, &sent) {
                    break;
                }
                while in_flight >= w.in_flight.max(1) {
                    acks.flush(&stats);
                    if let Some(done) = pending.next().await {
                        in_flight -= take(&mut acks, done);
                    }
                }
                let room = (w.in_flight.max(1) - in_flight).min(per_batch);
                // Acks are recorded when they arrive, also while waiting for the next slot.
                let first_intended = loop {
                    tokio::select! {
                        biased;
                        Some(done) = pending.next(), if !pending.is_empty() => {
                            in_flight -= take(&mut acks, done);
                        }
                        t = pacer.wait(i) => break t,
                    }
                };
                let mut n = room;
                if w.rate > 0.0 {
                    n = 1 + (1..room).take_while(|k| pacer.due(i + *k as u64)).count();
                }
                let first = sent.fetch_add(n as u64, Ordering::Relaxed);
                if w.duration.is_none() {
                    if first >= w.count {
                        break;
                    }
                    n = n.min((w.count - first) as usize);
                }
                let msgs: Vec<(usize, Vec<u8>, u64)> = (0..n)
                    .map(|k| {
                        let seq = first + k as u64;
                        let intended = if k == 0 {
                            first_intended
                        } else {
                            pacer.intended_ns(i + k as u64)
                        };
                        let subject = ((seq + p as u64) % partitions) as usize;
                        (subject, payload(w.message_bytes, seq, intended), intended)
                    })
                    .collect();
                let (c, subjects) = (client.clone(), subjects.clone());
                pending.push(async move {
                    let batch: Vec<Publish<'_>> = msgs
                        .iter()
                        .map(|(subject, data, _)| Publish {
                            subject: &subjects[*subject],
                            data,
                            opts: PublishOptions::default(),
                        })
                        .collect();
                    let answers = c.publish_batch(&batch).await;
                    let now = now_ns();
                    match answers {
                        Ok(answers) => answers
                            .iter()
                            .zip(&msgs)
                            .map(|(a, (_, data, intended))| {
                                a.is_ok().then(|| (data.len(), now - intended))
                            })
                            .collect(),
                        Err(_) => vec![None; msgs.len()],
                    }
                });
                in_flight += n;
                i += n as u64;
                while let Some(Some(done)) = futures::FutureExt::now_or_never(pending.next()) {
                    in_flight -= take(&mut acks, done);
                }
                if w.rate > 0.0 {
                    // Paced runs wait between batches: their acks are recorded before.
                    acks.flush(&stats);
                }
            }
            while let Some(done) = pending.next().await {
                take(&mut acks, done);
            }
            acks.flush(&stats);
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// How each consumer reads: `Client::messages` with this many pull requests of 1,000 messages
/// (at most 4 MiB) outstanding.
const PULLS: usize = 8;

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
            let opts = MessagesOptions {
                batch: 1000,
                max_bytes: 4 << 20,
                pulls: PULLS,
                ..MessagesOptions::default()
            };
            let mut drain = Drain::new("sluice", &stats, &got, &expect, e2e);
            let msgs = match client.messages(&name, &consumer, opts) {
                Ok(m) => m,
                Err(e) => return drain.error(e),
            };
            // The pulls are let go when `run` returns (it takes the stream), and the receipts
            // count before the delete's round trip.
            let msgs =
                futures::stream::unfold(
                    msgs,
                    |mut m| async move { m.next().await.map(|x| (x, m)) },
                );
            drain.run(msgs, |m| &m.data).await;
            drop(drain);
            let _ = client.delete_consumer(&name, &consumer).await;
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
