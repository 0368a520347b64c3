//! A stream on its owner shard: the pure [`Stream`] bookkeeping and [`Consumer`] machines of
//! `sluice-core`, bound to the partition log that stores the messages (file storage: the topic
//! of the stream's name, partition 0, so Kafka clients can read it too) or to memory.
//!
//! Publishes are registered in the stream synchronously and appended in the same order, so
//! sequences, dedup and expected-last-sequence checks stay exact while many publishes are in
//! flight; readers see a message only once the log acknowledged it (`Stream::set_visible`).
//! Interior deletes (acks under work-queue/interest retention, limits, purges) and consumer
//! state are saved in `streams/<name>/state.json` (atomically, at most every 100 ms while
//! anything changed, and at shutdown); a crash may lose the last acks, which then causes
//! redeliveries — never lost messages.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_core::batch::{self, BatchBuilder, BatchHeader, Compression, TimestampType};
use sluice_core::consumer::{Consumer, ConsumerSnapshot};
use sluice_core::native::{
    status, AckKind, AckPolicy, ConsumerConfig, ConsumerInfo, FetchRequest, MsgMeta, PurgeRequest,
    Retention, Storage, StoredMsg, StreamInfo,
};
use sluice_core::seq_ranges::SeqRanges;
use sluice_core::stream::{PublishVerdict, Removal, Stream};
use sluice_core::Offset;
use sluice_storage::log::Stamp;
use sluice_storage::notify::Notify;
use sluice_storage::wall_clock_ms;
use sluice_storage::LogError;

use crate::broker::metadata::StreamMeta;
use crate::broker::partition::Partition;
use crate::broker::shard::Shard;

/// An error answer: a status code and a message.
pub type Refusal = (u16, String);

pub const MSG_ID_HEADER: &str = "Sluice-Msg-Id";
pub const EXPECTED_LAST_SEQ_HEADER: &str = "Sluice-Expected-Last-Sequence";

/// Largest message decoded for headers (the batch limit bounds it anyway).
const RECORD_BYTES_MAX: usize = 64 << 20;

enum Store {
    File(Rc<Partition>),
    Memory(RefCell<BTreeMap<u64, Bytes>>),
}

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub subject: Arc<str>,
    pub meta: MsgMeta,
    pub batch: Bytes,
}

#[derive(Serialize, Deserialize, Default)]
struct SavedState {
    /// Removed sequences, as inclusive ranges.
    deleted: Vec<(u64, u64)>,
    consumers: Vec<SavedConsumer>,
}

#[derive(Serialize, Deserialize)]
struct SavedConsumer {
    name: String,
    config: ConsumerConfig,
    created_ms: i64,
    snapshot: ConsumerSnapshot,
}

pub struct StreamHome {
    pub name: String,
    pub state: RefCell<Stream>,
    store: Store,
    pub consumers: RefCell<BTreeMap<String, Consumer>>,
    /// Woken when messages become visible, acks free capacity, or consumers change.
    pub changed: Notify,
    dir: PathBuf,
    dirty: Cell<bool>,
    /// Sequences removed since the log's start (saved with the state).
    deleted: RefCell<SeqRanges>,
    /// Woken when the oldest waiting pull of a consumer leaves (see [`PullTicket`]).
    pulls_moved: Notify,
    /// Pull requests waiting per consumer, oldest first (see [`PullTicket`]).
    waiting: RefCell<HashMap<String, std::collections::VecDeque<u64>>>,
    next_ticket: Cell<u64>,
    next_ephemeral: Cell<u64>,
    /// Push consumers' flow control: the outstanding request token, if any.
    flow: RefCell<HashMap<String, u64>>,
    next_flow_token: Cell<u64>,
}

/// Messages a pull took, not yet read: (delivery, subject, timestamp, stored size) each, the
/// ones past max_deliver (sequence, deliveries), and whether the consumer acks nothing.
struct Picked {
    messages: Vec<(sluice_core::consumer::Delivery, Arc<str>, i64, u32)>,
    dead: Vec<(u64, u32)>,
    ack_none: bool,
}

/// A pull request's place in its consumer's queue of waiting pulls. Leaving the queue —
/// answered, expired, or dropped with its connection — wakes the pulls behind it.
struct PullTicket<'a> {
    home: &'a StreamHome,
    consumer: &'a str,
    id: u64,
}

impl PullTicket<'_> {
    /// No pull of the consumer that came before this one is still waiting.
    fn is_first(&self) -> bool {
        let waiting = self.home.waiting.borrow();
        waiting.get(self.consumer).and_then(|q| q.front()) == Some(&self.id)
    }

    /// Leaves the consumer's queue of waiting pulls (again: nothing), letting the next pull
    /// take if this one was first.
    fn leave(&self) {
        let next_may_take = {
            let mut waiting = self.home.waiting.borrow_mut();
            let Some(q) = waiting.get_mut(self.consumer) else {
                return;
            };
            let was_first = q.front() == Some(&self.id);
            q.retain(|&t| t != self.id);
            if q.is_empty() {
                waiting.remove(self.consumer);
                false
            } else {
                was_first
            }
        };
        if next_may_take {
            self.home.pulls_moved.notify_all();
        }
    }

    /// Back at the head of the queue, after [`PullTicket::leave`]: a pull whose taken
    /// messages were all removed before they were read waits on as the oldest.
    fn rejoin_first(&self) {
        self.home
            .waiting
            .borrow_mut()
            .entry(self.consumer.to_string())
            .or_default()
            .push_front(self.id);
    }
}

impl Drop for PullTicket<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Bytes a flow-controlled push consumer may be sent before it must answer a flow-control
/// request.
const FLOW_CONTROL_BYTES: u64 = 256 << 10;
/// Messages taken per round of a push consumer.
const PUSH_BATCH: u32 = 256;

/// A status message's headers (JetStream's `Status: 100` heartbeats and flow control).
fn status_batch(description: &str) -> Vec<u8> {
    message_batch(
        "",
        &[
            ("Status".into(), b"100".to_vec()),
            ("Description".into(), description.as_bytes().to_vec()),
        ],
        &[],
        wall_clock_ms() as i64,
    )
}

/// Parses a stored or published single-message batch: subject (record key), headers, size.
pub struct Parsed {
    pub subject: String,
    pub msg_id: Option<String>,
    pub expected_last_seq: Option<u64>,
    pub size: usize,
    pub timestamp_ms: i64,
    pub headers: Vec<(String, Vec<u8>)>,
    pub data: Vec<u8>,
}

pub fn parse_message(bytes: &[u8]) -> Result<Parsed, Refusal> {
    let bad = |m: String| (status::BAD_REQUEST, m);
    let records = batch::records(bytes, RECORD_BYTES_MAX).map_err(|e| bad(e.to_string()))?;
    let [r] = records.as_slice() else {
        return Err(bad(format!(
            "a message batch must hold exactly one record, not {}",
            records.len()
        )));
    };
    let subject = r
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or_else(|| bad("the record key must be the UTF-8 subject".into()))?
        .to_string();
    let mut msg_id = None;
    let mut expected_last_seq = None;
    let mut headers = Vec::new();
    let mut size = subject.len() + r.value.as_ref().map_or(0, |v| v.len());
    for h in &r.headers {
        let name = String::from_utf8_lossy(&h.key).into_owned();
        let value = h.value.clone().unwrap_or_default();
        size += name.len() + value.len();
        if name == MSG_ID_HEADER || name == "Nats-Msg-Id" {
            msg_id = Some(String::from_utf8_lossy(&value).into_owned());
        } else if name == EXPECTED_LAST_SEQ_HEADER || name == "Nats-Expected-Last-Sequence" {
            expected_last_seq = Some(
                std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| bad(format!("{name} must be a sequence number")))?,
            );
        }
        headers.push((name, value));
    }
    Ok(Parsed {
        subject,
        msg_id,
        expected_last_seq,
        size,
        timestamp_ms: r.timestamp,
        headers,
        data: r.value.clone().unwrap_or_default(),
    })
}

/// What a publish needs from its batch: subject, dedup id, expected last sequence, size —
/// borrowed from the bytes when the batch is uncompressed (the common case).
struct PubInfo<'a> {
    subject: Cow<'a, str>,
    msg_id: Option<Cow<'a, str>>,
    expected_last_seq: Option<u64>,
    size: usize,
    /// The record's timestamp (the batch's append time under LogAppendTime).
    timestamp_ms: i64,
}

/// A published message on its way into a stream: its subject and its batch, both views of
/// the frame it came in (no copy per message).
/// Where a published message was stored (the PUB_ACK without the stream's name, which the
/// caller has: no string per acknowledged message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub duplicate: bool,
}

pub struct Published {
    subject: Bytes,
    pub batch: Bytes,
}

impl Published {
    pub fn new(subject: &str, batch: Bytes) -> Published {
        Published {
            subject: Bytes::copy_from_slice(subject.as_bytes()),
            batch,
        }
    }

    /// `subject` must be a UTF-8 view into `frame`; the two are kept without a copy.
    pub fn in_frame(frame: &Bytes, subject: &str, batch: Bytes) -> Published {
        Published {
            subject: frame.slice_ref(subject.as_bytes()),
            batch,
        }
    }

    pub fn subject(&self) -> &str {
        std::str::from_utf8(&self.subject).expect("built from a str")
    }
}

/// What admission made of a published message.
enum Admitted {
    New(u64),
    Duplicate(u64),
}

fn store_failed(e: LogError) -> Refusal {
    (status::INTERNAL, format!("storing the message failed: {e}"))
}

/// What a published batch says of itself; `header` is [`batch::validate_for_append`]'s answer.
fn pub_info<'a>(bytes: &'a [u8], header: &BatchHeader) -> Result<PubInfo<'a>, Refusal> {
    let bad = |m: String| (status::BAD_REQUEST, m);
    let view = match batch::single_record_in(bytes, header) {
        Ok(Some(v)) => v,
        Ok(None) => {
            let p = parse_message(bytes)?;
            return Ok(PubInfo {
                subject: Cow::Owned(p.subject),
                msg_id: p.msg_id.map(Cow::Owned),
                expected_last_seq: p.expected_last_seq,
                size: p.size,
                timestamp_ms: p.timestamp_ms,
            });
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let subject = view
        .key
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or_else(|| bad("the record key must be the UTF-8 subject".into()))?;
    let mut size = subject.len() + view.value.map_or(0, |v| v.len());
    let (mut msg_id, mut expected_last_seq) = (None, None);
    for (k, v) in &view.headers {
        let v = v.unwrap_or_default();
        size += k.len() + v.len();
        if *k == MSG_ID_HEADER.as_bytes() || *k == b"Nats-Msg-Id" {
            msg_id = Some(String::from_utf8_lossy(v));
        } else if *k == EXPECTED_LAST_SEQ_HEADER.as_bytes() || *k == b"Nats-Expected-Last-Sequence"
        {
            expected_last_seq = Some(
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "{} must be a sequence number",
                            String::from_utf8_lossy(k)
                        ))
                    })?,
            );
        }
    }
    // As `batch::records` reads it (Kafka's `DefaultRecord.readFrom`).
    let timestamp_ms = if header.timestamp_type() == TimestampType::LogAppendTime {
        header.max_timestamp
    } else {
        view.timestamp
    };
    Ok(PubInfo {
        subject: Cow::Borrowed(subject),
        msg_id,
        expected_last_seq,
        size,
        timestamp_ms,
    })
}

/// Builds a single-message batch (the client does the same).
pub fn message_batch(
    subject: &str,
    headers: &[(String, Vec<u8>)],
    data: &[u8],
    ts: i64,
) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None, ts);
    let hs: Vec<(&[u8], Option<&[u8]>)> = headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), Some(v.as_slice())))
        .collect();
    b.push(ts, Some(subject.as_bytes()), Some(data), &hs);
    b.build()
}

impl StreamHome {
    pub fn dir_of(shard: &Shard, name: &str) -> PathBuf {
        shard.shared.config.data_dir.join("streams").join(name)
    }

    /// Opens a stream on its owner shard: replays the log (file storage), then the saved
    /// deletes and consumers.
    pub async fn open(shard: &Rc<Shard>, meta: &StreamMeta) -> Result<StreamHome, String> {
        let name = meta.config.name.clone();
        let dir = Self::dir_of(shard, &name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut state = Stream::new(meta.config.clone(), meta.created_ms);
        let store = match meta.config.storage {
            Storage::Memory => Store::Memory(RefCell::new(BTreeMap::new())),
            Storage::File => {
                shard
                    .open_partition(&name, 0)
                    .await
                    .map_err(|e| e.to_string())?;
                let part = shard
                    .partition(&name, 0)
                    .ok_or_else(|| format!("stream {name} has no log"))?;
                let mut from = part.log.start_offset();
                while from < part.log.acked_end() {
                    let bytes = part
                        .log
                        .read(from, 4 << 20)
                        .await
                        .map_err(|e| e.to_string())?;
                    if bytes.is_empty() {
                        break;
                    }
                    // `Log::read` checked each batch's CRC: the message is read in place
                    // (`pub_info`), not decoded into owned records with a second CRC check.
                    let (found, _) = batch::split_batches(&bytes, false);
                    for (h, range) in found {
                        from = Offset(h.last_offset() + 1);
                        if let Ok(p) = pub_info(&bytes[range], &h) {
                            state.stored(
                                h.base_offset as u64 + 1,
                                &p.subject,
                                p.size,
                                p.timestamp_ms,
                                p.msg_id.as_deref(),
                            );
                        }
                    }
                }
                state.set_last_seq(part.log.end_offset().0 as u64);
                Store::File(part)
            }
        };
        let last = state.last_seq();
        state.set_visible(last);
        let saved: SavedState = match std::fs::read(dir.join("state.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{}/state.json is damaged: {e}", dir.display()))?,
            Err(_) => SavedState::default(),
        };
        let mut deleted = SeqRanges::default();
        if meta.config.storage == Storage::File {
            for &(lo, hi) in &saved.deleted {
                let hi = hi.min(last);
                state.remove_range(lo, hi);
                deleted.insert_range(lo, hi);
            }
        }
        state.take_removed(); // replay bookkeeping; no consumer exists yet
        let mut consumers = BTreeMap::new();
        for c in saved.consumers {
            let mut consumer = Consumer::new(&name, &c.name, c.config, &state, c.created_ms);
            if meta.config.storage == Storage::File {
                consumer.restore(c.snapshot, &state);
            }
            consumers.insert(c.name, consumer);
        }
        Ok(StreamHome {
            name,
            state: RefCell::new(state),
            store,
            consumers: RefCell::new(consumers),
            changed: Notify::default(),
            dir,
            dirty: Cell::new(false),
            deleted: RefCell::new(deleted),
            waiting: RefCell::new(HashMap::new()),
            next_ticket: Cell::new(0),
            pulls_moved: Notify::default(),
            next_ephemeral: Cell::new(0),
            flow: RefCell::new(HashMap::new()),
            next_flow_token: Cell::new(0),
        })
    }

    pub fn config(&self) -> sluice_core::native::StreamConfig {
        self.state.borrow().config.clone()
    }

    /// Stores published messages in order, one answer each. A file stream takes them all into
    /// its log and then waits once, for the last one's durability: one task, one wait and one
    /// wake-up for a publisher's pipelined run instead of one per message.
    pub async fn publish_many(&self, msgs: &[Published]) -> Vec<Result<Stored, Refusal>> {
        let now = wall_clock_ms() as i64;
        let mut answers = Vec::with_capacity(msgs.len());
        // Messages stored in the stream's state, not yet durable: (index, seq).
        let mut taken: Vec<(usize, u64)> = Vec::with_capacity(msgs.len());
        let mut last_offset = None;
        for (i, msg) in msgs.iter().enumerate() {
            let batch = &msg.batch;
            // Checked once here (CRC included); the log takes it as checked.
            let header = match batch::validate_for_append(batch) {
                Ok(h) => h,
                Err(e) => {
                    answers.push(Err((status::BAD_REQUEST, e.to_string())));
                    continue;
                }
            };
            let seq = match self.admit(now, msg.subject(), batch, &header) {
                Ok(Admitted::New(seq)) => seq,
                Ok(Admitted::Duplicate(seq)) => {
                    answers.push(Ok(Stored {
                        seq,
                        duplicate: true,
                    }));
                    continue;
                }
                Err(e) => {
                    answers.push(Err(e));
                    continue;
                }
            };
            // No await between admitting and buffering: log offsets follow sequence order.
            // The stored copy carries the stream's time for the message (LogAppendTime, as
            // JetStream times messages by the server): what `get`, consumers reading the topic
            // and the replay after a restart see is the time the stream counted by (max_age,
            // deliver by start time), not the publisher's clock.
            match &self.store {
                Store::Memory(m) => {
                    let stamped = batch::AppendTimeStamp::of(batch, now);
                    let mut owned = batch.to_vec();
                    batch::set_base_offset(&mut owned, Offset(seq as i64 - 1));
                    stamped.write_to(&mut owned);
                    m.borrow_mut().insert(seq, Bytes::from(owned));
                }
                Store::File(part) => match part
                    .log
                    .buffer_stamped(
                        now as u64,
                        batch,
                        header,
                        Stamp {
                            partition_leader_epoch: None,
                            log_append_time_ms: Some(now),
                        },
                    )
                    .await
                {
                    Ok(info) => {
                        if info.base_offset.0 as u64 + 1 != seq {
                            eprintln!(
                                "sluice: stream {} stored seq {seq} at offset {} (bug)",
                                self.name, info.base_offset.0
                            );
                        }
                        last_offset = Some(info.last_offset);
                    }
                    Err(e) => {
                        self.state.borrow_mut().remove(seq);
                        self.removed();
                        answers.push(Err(store_failed(e)));
                        continue;
                    }
                },
            }
            taken.push((i, seq));
            answers.push(Ok(Stored {
                seq,
                duplicate: false,
            }));
        }
        if let (Store::File(part), Some(last)) = (&self.store, last_offset) {
            if let Err(e) = part.log.acked(now as u64, last).await {
                let refusal = store_failed(e);
                let mut st = self.state.borrow_mut();
                for &(i, seq) in &taken {
                    st.remove(seq);
                    answers[i] = Err(refusal.clone());
                }
                drop(st);
                self.removed();
                return answers;
            }
        }
        {
            let mut st = self.state.borrow_mut();
            let consumers = self.consumers.borrow();
            for &(i, seq) in &taken {
                st.set_visible(seq);
                // Interest retention keeps a message only while a consumer wants it.
                if st.retention() == Retention::Interest
                    && !consumers.values().any(|c| c.needs(seq, msgs[i].subject()))
                {
                    st.remove(seq);
                }
            }
        }
        self.removed();
        self.changed.notify_all();
        answers
    }

    /// Admission of one published message: dedup, limits and expectations checked, and if
    /// accepted, recorded in the stream's state under its new sequence (not visible yet).
    fn admit(
        &self,
        now: i64,
        subject: &str,
        batch: &[u8],
        header: &BatchHeader,
    ) -> Result<Admitted, Refusal> {
        let p = pub_info(batch, header)?;
        if p.subject != subject {
            return Err((
                status::BAD_REQUEST,
                format!(
                    "record key '{}' differs from the subject '{subject}'",
                    p.subject
                ),
            ));
        }
        let mut st = self.state.borrow_mut();
        match st.check_publish(
            now,
            subject,
            p.size,
            p.msg_id.as_deref(),
            p.expected_last_seq,
        ) {
            PublishVerdict::Accept => {}
            PublishVerdict::Duplicate(seq) => return Ok(Admitted::Duplicate(seq)),
            PublishVerdict::Refuse { status, message } => return Err((status, message)),
        }
        let seq = st.last_seq() + 1;
        st.stored(seq, subject, p.size, now, p.msg_id.as_deref());
        for c in self.consumers.borrow_mut().values_mut() {
            c.on_stored(seq, subject);
        }
        let removed = st.take_removed();
        drop(st);
        self.removals(removed);
        Ok(Admitted::New(seq))
    }

    /// Bookkeeping after the stream removed sequences.
    fn removed(&self) {
        let list = self.state.borrow_mut().take_removed();
        self.removals(list);
    }

    fn removals(&self, list: Vec<Removal>) {
        if list.is_empty() {
            return;
        }
        let state = self.state.borrow();
        let mut consumers = self.consumers.borrow_mut();
        for r in &list {
            for c in consumers.values_mut() {
                match r {
                    Removal::One(seq, subject) => c.on_removed(*seq, subject),
                    Removal::Below(cut) => c.on_removed_below(*cut, &state),
                }
            }
        }
        match &self.store {
            Store::Memory(m) => {
                let mut m = m.borrow_mut();
                for r in &list {
                    match r {
                        Removal::One(seq, _) => {
                            m.remove(seq);
                        }
                        Removal::Below(cut) => *m = m.split_off(cut),
                    }
                }
            }
            Store::File(part) => {
                let mut deleted = self.deleted.borrow_mut();
                for r in &list {
                    match r {
                        Removal::One(seq, _) => deleted.insert(*seq),
                        Removal::Below(cut) => {
                            let start = part.log.start_offset().0 as u64 + 1;
                            deleted.insert_range(start, cut - 1)
                        }
                    }
                }
            }
        }
        self.dirty.set(true);
    }

    async fn read(&self, seq: u64) -> Option<Bytes> {
        match &self.store {
            Store::Memory(m) => m.borrow().get(&seq).cloned(),
            Store::File(part) => {
                let bytes = part.log.read(Offset(seq as i64 - 1), 1).await.ok()?;
                let (found, _) = batch::split_batches(&bytes, false);
                let (h, range) = found.into_iter().next()?;
                (h.base_offset as u64 + 1 == seq).then(|| Bytes::copy_from_slice(&bytes[range]))
            }
        }
    }

    pub async fn get(&self, seq: u64, last_by_subject: &str) -> Result<StoredMsg, Refusal> {
        let seq = if last_by_subject.is_empty() {
            seq
        } else {
            self.state
                .borrow()
                .last_by_subject(last_by_subject)
                .ok_or((status::NOT_FOUND, "no message found".to_string()))?
        };
        let live = {
            let st = self.state.borrow();
            st.contains(seq) && seq <= st.visible()
        };
        if !live {
            return Err((status::NOT_FOUND, "no message found".into()));
        }
        let bytes = self
            .read(seq)
            .await
            .ok_or((status::NOT_FOUND, "no message found".to_string()))?;
        let p = parse_message(&bytes)?;
        Ok(StoredMsg {
            subject: p.subject,
            seq,
            timestamp_ms: p.timestamp_ms,
            headers: p.headers,
            data: p.data,
        })
    }

    pub fn purge(&self, req: &PurgeRequest) -> u64 {
        let removed = self.state.borrow_mut().purge(req);
        self.removed();
        self.changed.notify_all();
        removed
    }

    pub fn info(&self, subjects_filter: &str) -> StreamInfo {
        let st = self.state.borrow();
        StreamInfo {
            config: st.config.clone(),
            state: st.state(subjects_filter, self.consumers.borrow().len() as u32),
            created_ms: st.created_ms,
        }
    }

    pub fn add_consumer(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        mut config: ConsumerConfig,
    ) -> Result<ConsumerInfo, Refusal> {
        sluice_core::consumer::validate_config(&config).map_err(|m| (status::BAD_REQUEST, m))?;
        let retention = self.state.borrow().retention();
        let mut consumers = self.consumers.borrow_mut();
        let name = if config.durable_name.is_empty() {
            let n = self.next_ephemeral.get() + 1;
            self.next_ephemeral.set(n);
            format!("eph-{:x}-{n}", wall_clock_ms())
        } else {
            config.durable_name.clone()
        };
        if let Some(existing) = consumers.get(&name) {
            if existing.config == config {
                return Ok(existing.info(&self.state.borrow(), self.num_waiting(&name)));
            }
            return Err((
                status::CONFLICT,
                format!("consumer {name} already exists with a different configuration"),
            ));
        }
        if retention == Retention::WorkQueue {
            // Each message goes to one consumer: their filters may not overlap.
            let overlapping = consumers.values().any(|c| {
                let (a, b) = (&c.config.filter_subjects, &config.filter_subjects);
                a.is_empty()
                    || b.is_empty()
                    || a.iter()
                        .any(|x| b.iter().any(|y| sluice_core::subject::overlaps(x, y)))
            });
            if overlapping {
                return Err((
                    status::BAD_REQUEST,
                    "work-queue streams need consumers with non-overlapping filters".into(),
                ));
            }
            if config.ack_policy != AckPolicy::Explicit {
                return Err((
                    status::BAD_REQUEST,
                    "work-queue consumers must use explicit acks".into(),
                ));
            }
        }
        if config.durable_name.is_empty() {
            config.durable_name = String::new();
        }
        let st = self.state.borrow();
        let c = Consumer::new(&self.name, &name, config, &st, wall_clock_ms() as i64);
        let info = c.info(&st, 0);
        let push = !c.config.deliver_subject.is_empty();
        consumers.insert(name.clone(), c);
        drop(consumers);
        drop(st);
        if push {
            self.start_push(shard, name);
        }
        self.dirty.set(true);
        self.changed.notify_all();
        Ok(info)
    }

    fn num_waiting(&self, name: &str) -> u64 {
        self.waiting
            .borrow()
            .get(name)
            .map_or(0, |q| q.len() as u64)
    }

    pub fn consumer_info(&self, name: &str) -> Result<ConsumerInfo, Refusal> {
        let consumers = self.consumers.borrow();
        let c = consumers
            .get(name)
            .ok_or((status::NOT_FOUND, format!("consumer {name} not found")))?;
        Ok(c.info(&self.state.borrow(), self.num_waiting(name)))
    }

    pub fn consumer_infos(&self) -> Vec<ConsumerInfo> {
        let st = self.state.borrow();
        self.consumers
            .borrow()
            .iter()
            .map(|(n, c)| c.info(&st, self.num_waiting(n)))
            .collect()
    }

    pub fn delete_consumer(&self, name: &str) -> Result<(), Refusal> {
        if self.consumers.borrow_mut().remove(name).is_none() {
            return Err((status::NOT_FOUND, format!("consumer {name} not found")));
        }
        self.after_consumer_change();
        Ok(())
    }

    /// Under interest retention, messages no remaining consumer needs go.
    fn after_consumer_change(&self) {
        self.dirty.set(true);
        if self.state.borrow().retention() == Retention::Interest {
            self.drop_uninteresting();
        }
        self.changed.notify_all();
    }

    fn drop_uninteresting(&self) {
        let doomed: Vec<u64> = {
            let st = self.state.borrow();
            let consumers = self.consumers.borrow();
            let mut out = Vec::new();
            let mut seq = st.first_seq();
            while let Some(s) = st.next_matching(seq, &[]) {
                let subject = st.subject_of(s).unwrap_or_default();
                if !consumers.values().any(|c| c.needs(s, subject)) {
                    out.push(s);
                }
                seq = s + 1;
            }
            out
        };
        let mut st = self.state.borrow_mut();
        for s in &doomed {
            st.remove(*s);
        }
        drop(st);
        self.removed();
    }

    /// Acknowledgement of one delivered message.
    pub fn ack(&self, consumer: &str, seq: u64, kind: AckKind) -> Result<(), Refusal> {
        let now = wall_clock_ms() as i64;
        let done = {
            let mut consumers = self.consumers.borrow_mut();
            let c = consumers
                .get_mut(consumer)
                .ok_or((status::NOT_FOUND, format!("consumer {consumer} not found")))?;
            c.ack(now, seq, kind).done
        };
        self.dirty.set(true);
        if !done.is_empty() {
            self.consumer_done(&done);
        }
        self.changed.notify_all();
        Ok(())
    }

    /// A consumer is done with `seqs`: work-queue streams drop them, interest streams drop
    /// them once no consumer needs them.
    fn consumer_done(&self, seqs: &[u64]) {
        let retention = self.state.borrow().retention();
        let doomed: Vec<u64> = match retention {
            Retention::Limits => return,
            Retention::WorkQueue => seqs.to_vec(),
            Retention::Interest => {
                let st = self.state.borrow();
                let consumers = self.consumers.borrow();
                seqs.iter()
                    .copied()
                    .filter(|s| {
                        let subject = st.subject_of(*s).unwrap_or_default();
                        !consumers.values().any(|c| c.needs(*s, subject))
                    })
                    .collect()
            }
        };
        let mut st = self.state.borrow_mut();
        for s in doomed {
            st.remove(s);
        }
        drop(st);
        self.removed();
    }

    /// Takes up to `batch` messages for a consumer now (no waiting). Dead messages (past
    /// max_deliver) are returned separately.
    async fn take(
        &self,
        consumer: &str,
        batch: u32,
        max_bytes: u64,
    ) -> Result<(Vec<Delivered>, Vec<(u64, u32)>), Refusal> {
        let picked = self.pick(consumer, batch, max_bytes)?;
        Ok(self.read_picked(consumer, picked).await)
    }

    /// The first half of [`StreamHome::take`], synchronous: decides which messages go out
    /// (the consumer's state moves past them) without reading them.
    fn pick(&self, consumer: &str, batch: u32, max_bytes: u64) -> Result<Picked, Refusal> {
        let now = wall_clock_ms() as i64;
        let mut picked = Vec::new();
        let mut dead = Vec::new();
        let (deliveries_max, ack_none) = {
            let st = self.state.borrow();
            let mut consumers = self.consumers.borrow_mut();
            let c = consumers
                .get_mut(consumer)
                .ok_or((status::NOT_FOUND, format!("consumer {consumer} not found")))?;
            c.last_active_ms = now;
            let mut bytes = 0u64;
            while picked.len() < batch as usize {
                let Some(d) = c.next(now, &st, &mut dead) else {
                    break;
                };
                // Removed meanwhile: no body will be read, so nothing is sent.
                let (subject, ts, size) = st
                    .message_info(d.stream_seq)
                    .map_or((Arc::from(""), 0, 0), |(s, t, z)| (s.clone(), t, z));
                bytes += size as u64 + 96;
                picked.push((d, subject, ts, size));
                if max_bytes > 0 && bytes >= max_bytes {
                    break;
                }
            }
            (
                c.config.max_deliver.max(0) as u32,
                c.config.ack_policy == AckPolicy::None,
            )
        };
        Ok(Picked {
            messages: picked,
            dead: dead.into_iter().map(|s| (s, deliveries_max)).collect(),
            ack_none,
        })
    }

    /// The second half of [`StreamHome::take`]: reads what [`StreamHome::pick`] decided, with
    /// as few log reads as possible.
    async fn read_picked(
        &self,
        consumer: &str,
        picked: Picked,
    ) -> (Vec<Delivered>, Vec<(u64, u32)>) {
        let Picked {
            messages: picked,
            dead: dead_out,
            ack_none,
        } = picked;
        let sizes: Vec<(u64, u32)> = picked
            .iter()
            .map(|(d, _, _, size)| (d.stream_seq, *size))
            .collect();
        let mut bodies = self.read_many(&sizes).await;
        let mut out = Vec::with_capacity(picked.len());
        let (stream, consumer): (Arc<str>, Arc<str>) = (self.name.as_str().into(), consumer.into());
        for (d, subject, ts, _) in picked {
            let Ok(at) = bodies.binary_search_by_key(&d.stream_seq, |(s, _)| *s) else {
                continue; // removed meanwhile
            };
            let batch = std::mem::take(&mut bodies[at].1);
            out.push(Delivered {
                subject,
                meta: MsgMeta {
                    stream: stream.clone(),
                    consumer: consumer.clone(),
                    stream_seq: d.stream_seq,
                    consumer_seq: d.consumer_seq,
                    deliveries: d.deliveries,
                    pending: d.pending,
                    timestamp_ms: ts,
                },
                batch,
            });
        }
        // Only what goes out is done: a message whose read failed is not (under work-queue
        // retention it would be removed unseen).
        let seqs: Vec<u64> = out.iter().map(|d| d.meta.stream_seq).collect();
        if ack_none && !seqs.is_empty() {
            self.consumer_done(&seqs);
        }
        if !out.is_empty() || !dead_out.is_empty() {
            self.dirty.set(true);
        }
        (out, dead_out)
    }

    /// The stored batches of `seqs` (sequence, size), in sequence order, read in runs of
    /// consecutive sequences rather than one read per message.
    async fn read_many(&self, seqs: &[(u64, u32)]) -> Vec<(u64, Bytes)> {
        let mut out = Vec::with_capacity(seqs.len());
        let part = match &self.store {
            Store::Memory(m) => {
                let m = m.borrow();
                for (s, _) in seqs {
                    if let Some(b) = m.get(s) {
                        out.push((*s, b.clone()));
                    }
                }
                out.sort_unstable_by_key(|(s, _)| *s);
                return out;
            }
            Store::File(part) => part.clone(),
        };
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup_by_key(|(s, _)| *s);
        // Spans of the log holding the wanted sequences, cut into parts of about
        // READ_PART_BYTES, read concurrently (a fetch's reads overlap instead of each waiting
        // for the one before). A span reads through a short gap of messages nobody asked for
        // (a filtered consumer's, on a stream whose subjects interleave): reading them costs
        // less than another device read. Gaps are sized at the wanted messages' average.
        if sorted.is_empty() {
            return out;
        }
        let avg = sorted.iter().map(|(_, z)| *z as u64 + 128).sum::<u64>() / sorted.len() as u64;
        let mut parts = Vec::new();
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i;
            let mut est = sorted[i].1 as u64 + 128;
            while j + 1 < sorted.len() && est < READ_PART_BYTES {
                let gap = (sorted[j + 1].0 - sorted[j].0 - 1) * avg;
                if gap > READ_GAP_BYTES {
                    break;
                }
                j += 1;
                est += gap + sorted[j].1 as u64 + 128;
            }
            parts.push((i, j, est));
            i = j + 1;
        }
        use futures::StreamExt;
        let sorted = &sorted;
        let mut reads = futures::stream::iter(parts)
            .map(|(i, j, est)| read_run(&part, &sorted[i..=j], est))
            .buffer_unordered(READS_IN_FLIGHT);
        while let Some(run) = reads.next().await {
            out.extend(run);
        }
        out.sort_unstable_by_key(|(s, _)| *s);
        out
    }

    /// A pull request: waits (up to `expires`) until at least one message is available, then
    /// returns what is there, up to the batch and byte limits. `Ok(empty)` means it expired
    /// (or `no_wait` found nothing).
    ///
    /// A consumer's waiting pulls are served oldest first, as JetStream serves its waiting
    /// queue: a pull takes only once every pull that came before it has left (answered,
    /// expired, or dropped). A client that keeps several pulls outstanding and hands out
    /// messages from its oldest one (`Client::messages`) therefore never finds a message held
    /// by a newer pull while the oldest waits on. `no_wait` pulls never wait, so they take at
    /// once. `continued` marks a request adding to a pull that was already answered (what
    /// arrived since, without waiting): it gives way to waiting pulls and returns nothing
    /// while any are there, so the messages of one pull come before the next pull's.
    pub async fn fetch(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        req: &FetchRequest,
        deadline_ms: u64,
        continued: bool,
    ) -> Result<Vec<Delivered>, Refusal> {
        let max_waiting = self
            .consumers
            .borrow()
            .get(&req.consumer)
            .map(|c| c.config.max_waiting)
            .ok_or((
                status::NOT_FOUND,
                format!("consumer {} not found", req.consumer),
            ))?;
        let waiting = self.num_waiting(&req.consumer);
        if continued && waiting > 0 {
            return Ok(Vec::new());
        }
        if max_waiting > 0 && waiting as i64 >= max_waiting {
            return Err((status::CONFLICT, "exceeded MaxWaiting".into()));
        }
        let id = self.next_ticket.get();
        self.next_ticket.set(id + 1);
        self.waiting
            .borrow_mut()
            .entry(req.consumer.clone())
            .or_default()
            .push_back(id);
        let ticket = PullTicket {
            home: self,
            consumer: &req.consumer,
            id,
        };
        self.fetch_inner(shard, req, deadline_ms, &ticket).await
    }

    async fn fetch_inner(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        req: &FetchRequest,
        deadline_ms: u64,
        ticket: &PullTicket<'_>,
    ) -> Result<Vec<Delivered>, Refusal> {
        loop {
            // The oldest waiting pull wakes for new messages, acks and consumer changes; the
            // ones behind it only when the queue moves (on every append, a consumer with many
            // pulls outstanding would otherwise wake them all for one to take).
            let first = req.no_wait || ticket.is_first();
            let woken = if first {
                self.changed.notified()
            } else {
                self.pulls_moved.notified()
            };
            if first {
                let picked = self.pick(&req.consumer, req.batch.max(1), req.max_bytes)?;
                // What this pull takes is decided: the next pull may take while this one
                // reads (a consumer with several pulls outstanding keeps that many reads in
                // flight, not one). Its messages still come before the next pull's.
                let left = !picked.messages.is_empty();
                if left {
                    ticket.leave();
                }
                let (got, dead) = self.read_picked(&req.consumer, picked).await;
                self.dead_letter(shard, &req.consumer, dead).await;
                if !got.is_empty() || req.no_wait {
                    return Ok(got);
                }
                if left {
                    ticket.rejoin_first();
                }
            }
            let now = wall_clock_ms();
            if now >= deadline_ms {
                return Ok(Vec::new());
            }
            // Also wake for redelivery deadlines (ack_wait / nak delays) and shutdown.
            let wait = (deadline_ms - now).min(100);
            futures_lite::future::or(woken, async {
                glommio::timer::sleep(std::time::Duration::from_millis(wait)).await
            })
            .await;
            if shard.is_stopping() {
                return Ok(Vec::new());
            }
        }
    }

    /// Moves messages that reached max_deliver to the consumer's dead-letter stream, with
    /// headers recording where they came from; drops them from a work-queue or interest
    /// stream (they will not be delivered again).
    async fn dead_letter(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        consumer: &str,
        dead: Vec<(u64, u32)>,
    ) {
        if dead.is_empty() {
            return;
        }
        let target = self
            .consumers
            .borrow()
            .get(consumer)
            .map(|c| c.config.dead_letter_stream.clone())
            .unwrap_or_default();
        for (seq, deliveries) in &dead {
            if target.is_empty() {
                continue;
            }
            let Some(bytes) = self.read(*seq).await else {
                continue;
            };
            let Ok(p) = parse_message(&bytes) else {
                continue;
            };
            let mut headers = p.headers.clone();
            headers.retain(|(k, _)| k != MSG_ID_HEADER && k != EXPECTED_LAST_SEQ_HEADER);
            headers.push((
                "Sluice-Dead-Letter-Stream".into(),
                self.name.clone().into_bytes(),
            ));
            headers.push((
                "Sluice-Dead-Letter-Consumer".into(),
                consumer.as_bytes().to_vec(),
            ));
            headers.push((
                "Sluice-Dead-Letter-Sequence".into(),
                seq.to_string().into_bytes(),
            ));
            headers.push((
                "Sluice-Dead-Letter-Deliveries".into(),
                deliveries.to_string().into_bytes(),
            ));
            let batch = message_batch(&p.subject, &headers, &p.data, wall_clock_ms() as i64);
            if let Err((_, m)) = store_direct(shard, &target, &p.subject, Bytes::from(batch)).await
            {
                eprintln!(
                    "sluice: dead-lettering {}#{seq} to stream {target} failed: {m}",
                    self.name
                );
            }
        }
        let seqs: Vec<u64> = dead.iter().map(|(s, _)| *s).collect();
        self.consumer_done(&seqs);
    }

    /// Starts the delivery task of every push consumer (at open).
    pub fn start_push_all(self: &Rc<Self>, shard: &Rc<Shard>) {
        let names: Vec<String> = self
            .consumers
            .borrow()
            .iter()
            .filter(|(_, c)| !c.config.deliver_subject.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            self.start_push(shard, n);
        }
    }

    /// Delivers a push consumer's messages to its deliver subject (one member of its deliver
    /// group each) while anyone listens, with idle heartbeats and flow control if asked.
    pub fn start_push(self: &Rc<Self>, shard: &Rc<Shard>, consumer: String) {
        let (home, shard) = (self.clone(), shard.clone());
        glommio::spawn_local(async move { home.push_loop(&shard, &consumer).await }).detach();
    }

    async fn push_loop(self: &Rc<Self>, shard: &Rc<Shard>, consumer: &str) {
        let mut last_sent = wall_clock_ms();
        let mut since_flow = 0u64;
        loop {
            let changed = self.changed.notified();
            if shard.is_stopping() || shard.native.stream(&self.name).is_none() {
                return;
            }
            let Some(cfg) = self
                .consumers
                .borrow()
                .get(consumer)
                .map(|c| c.config.clone())
            else {
                return; // deleted
            };
            let subject = cfg.deliver_subject.clone();
            let listening = !super::pubsub::targets(shard, &subject).is_empty();
            let blocked = self.flow.borrow().contains_key(consumer);
            let mut sent = 0;
            if listening && !blocked {
                match self.take(consumer, PUSH_BATCH, 0).await {
                    Ok((msgs, dead)) => {
                        self.dead_letter(shard, consumer, dead).await;
                        for m in msgs {
                            since_flow += m.batch.len() as u64;
                            sent += 1;
                            super::pubsub::route(shard, &subject, "", Some(m.meta), m.batch);
                        }
                    }
                    Err(_) => return,
                }
            }
            let now = wall_clock_ms();
            if sent > 0 {
                last_sent = now;
                if cfg.flow_control && since_flow >= FLOW_CONTROL_BYTES {
                    since_flow = 0;
                    let token = self.next_flow_token.get() + 1;
                    self.next_flow_token.set(token);
                    self.flow.borrow_mut().insert(consumer.to_string(), token);
                    let reply = format!("$FC.{}.{consumer}.{token}", self.name);
                    super::pubsub::route(
                        shard,
                        &subject,
                        &reply,
                        None,
                        Bytes::from(status_batch("FlowControl Request")),
                    );
                }
                continue;
            }
            if listening && cfg.idle_heartbeat_ms > 0 && now - last_sent >= cfg.idle_heartbeat_ms {
                last_sent = now;
                super::pubsub::route(
                    shard,
                    &subject,
                    "",
                    None,
                    Bytes::from(status_batch("Idle Heartbeat")),
                );
            }
            // New messages, acks, flow-control answers wake us; subscriptions appearing and
            // redelivery deadlines are picked up within 50 ms.
            futures_lite::future::or(changed, async {
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await
            })
            .await;
        }
    }

    /// A push consumer answered flow-control request `token`.
    pub fn flow_control_answered(&self, consumer: &str, token: u64) {
        let mut flow = self.flow.borrow_mut();
        if flow.get(consumer) == Some(&token) {
            flow.remove(consumer);
            drop(flow);
            self.changed.notify_all();
        }
    }

    /// Removes expired messages (max_age) and saves state if anything changed.
    pub async fn housekeeping(&self) {
        let now = wall_clock_ms() as i64;
        self.state.borrow_mut().expire(now);
        self.removed();
        // Ephemeral consumers go after inactive_threshold without a fetch, ack or listener.
        let idle: Vec<String> = self
            .consumers
            .borrow()
            .iter()
            .filter(|(n, c)| {
                c.config.durable_name.is_empty()
                    && self.num_waiting(n) == 0
                    && now - c.last_active_ms > c.config.inactive_threshold_ms as i64
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in idle {
            let _ = self.delete_consumer(&n);
        }
        if self.dirty.replace(false) {
            if let Err(e) = self.save().await {
                eprintln!("sluice: saving stream {} state failed: {e}", self.name);
                self.dirty.set(true);
            }
        }
    }

    /// Writes the state file (temporary file, fsync, rename); moves the log start past a
    /// removed prefix so whole segments can go.
    pub async fn save(&self) -> std::io::Result<()> {
        if let Store::File(part) = &self.store {
            let first = self.state.borrow().first_seq();
            let start = part.log.start_offset().0 as u64 + 1;
            if first > start && first - 1 <= part.log.acked_end().0 as u64 {
                if let Ok(o) = part
                    .log
                    .delete_records_before(Offset(first as i64 - 1))
                    .await
                {
                    let keep_from = o.0 as u64 + 1;
                    self.deleted.borrow_mut().remove_below(keep_from);
                }
            }
        }
        let saved = SavedState {
            deleted: self.deleted.borrow().ranges(),
            consumers: self
                .consumers
                .borrow()
                .iter()
                .map(|(n, c)| SavedConsumer {
                    name: n.clone(),
                    config: c.config.clone(),
                    created_ms: c.created_ms,
                    snapshot: c.snapshot(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&saved).expect("state serializes");
        // fsync and rename block: off the reactor, so deliveries and acks keep flowing.
        let path = self.dir.join("state.json");
        glommio::executor()
            .spawn_blocking(move || write_atomic(&path, &bytes))
            .await
    }

    pub fn remove_files(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(path.parent().expect("dir"))?.sync_all()
}

/// Decodes a saved stream state file (fuzzed: disk bytes).
pub fn decode_state(bytes: &[u8]) -> bool {
    serde_json::from_slice::<SavedState>(bytes).is_ok()
}

/// Bytes a stream reads from its log in one request when it serves a pull fetch: a fetch's
/// messages are read in parts of about this size, all at once. (256 KiB parts: native consume
/// of a 1 GiB backlog 442 / 443 MB/s and 1.03–1.16 broker CPU s per GB; 1 MiB: 502 / 514 MB/s
/// and 0.90–0.91. A fetch holds what it reads until it answers either way, so the fetch's
/// byte limit, not the part size, bounds its memory.)
const READ_PART_BYTES: u64 = 1 << 20;

/// The most a fetch part reads through between two messages it wants (at the wanted
/// messages' average size): about what one more device read costs in time, here. (A filtered
/// consumer taking half of a stream whose six subjects interleave read 19 MB/s at 20 broker
/// CPU s per GB with one read per message.)
const READ_GAP_BYTES: u64 = 64 << 10;

/// Parts of one fetch being read at once, at most (a filtered consumer's fetch may be a
/// thousand single-message parts).
const READS_IN_FLIGHT: usize = 8;

/// The stored batches of the `wanted` sequences (sorted; the span from the first to the last
/// about `est` bytes), read in as few log reads as their sizes allow: from the log's in-memory
/// tail, or as O_DIRECT reads of the file (no second copy, no CRC check on the way out: append
/// and recovery checked them).
async fn read_run(part: &Partition, wanted: &[(u64, u32)], est: u64) -> Vec<(u64, Bytes)> {
    let mut out = Vec::with_capacity(wanted.len());
    // The first wanted sequence not yet found.
    let mut w = 0;
    // Read the region starting exactly at the batch holding `from` (after a span read from the
    // index entry before it fell short of that batch).
    let mut exact = false;
    while w < wanted.len() {
        let next = wanted[w].0;
        let want = est.clamp(4096, 4 << 20) as usize;
        let from = Offset(next as i64 - 1);
        let read = match part.log.read_cached(from, want) {
            Ok(None) if exact => part
                .log
                .read_region_bytes(from, want)
                .await
                .map(|b| b.map(Bytes::from)),
            Ok(None) => part
                .log
                .read_span_bytes(from, want)
                .await
                .map(|b| b.map(Bytes::from)),
            cached => cached,
        };
        let bytes = match read {
            Ok(Some(bytes)) => bytes,
            // Removed meanwhile (retention, purge): nothing to send.
            Ok(None) | Err(LogError::OffsetOutOfRange { .. }) => break,
            Err(e) => {
                let last = wanted[wanted.len() - 1].0;
                eprintln!("sluice: reading stream messages {next}..={last} failed: {e}");
                break;
            }
        };
        let (found, _) = batch::split_batches(&bytes, false);
        let before = w;
        for (h, range) in found {
            let seq = h.base_offset as u64 + 1;
            // Wanted sequences the log holds no batch for were removed meanwhile.
            while w < wanted.len() && wanted[w].0 < seq {
                w += 1;
            }
            if w == wanted.len() {
                break;
            }
            if wanted[w].0 == seq {
                out.push((seq, bytes.slice(range)));
                w += 1;
            }
        }
        if w == before {
            if exact {
                break;
            }
            exact = true;
            continue;
        }
        exact = false;
    }
    out
}

/// Stores a message in the stream named `name` on its owner shard (whatever its subjects).
pub async fn store_direct(
    shard: &Rc<Shard>,
    name: &str,
    subject: &str,
    batch: Bytes,
) -> Result<Stored, Refusal> {
    let msgs = vec![Published::new(subject, batch)];
    let mut answers = store_many(shard, name.to_string(), msgs).await;
    answers.pop().expect("one answer per message")
}

/// Stores messages in order in the stream named `name` on its owner shard: one job there for
/// all of them ([`StreamHome::publish_many`]), one answer each.
pub async fn store_many(
    shard: &Rc<Shard>,
    name: String,
    msgs: Vec<Published>,
) -> Vec<Result<Stored, Refusal>> {
    let owner = shard.owner(&name, 0);
    shard
        .submit_to(owner, move |s| {
            Box::pin(async move {
                match s.native.stream(&name) {
                    Some(home) => home.publish_many(&msgs).await,
                    None => {
                        let refusal = (status::NOT_FOUND, format!("stream {name} not found"));
                        vec![Err(refusal); msgs.len()]
                    }
                }
            })
        })
        .await
}
