//! Sluice's native protocol: the frames the server and the Rust client exchange.
//!
//! Every frame is `len: u32` (bytes after this field) followed by a fixed 8-byte header
//! `op: u8 | flags: u8 | status: u16 | corr: u32` and a body. `corr` pairs a response with
//! its request (requests may be pipelined; responses may come in any order); server pushes of
//! subscription messages carry the subscription id there instead. `status` is 0 or an error
//! code ([`status`]) with a UTF-8 message as the body.
//!
//! Hot-path bodies (publish, subscribe, message delivery, acks) have a fixed binary layout of
//! length-prefixed fields; message payloads travel as a Kafka RecordBatch v2 — the bytes a
//! stream stores — so a published batch reaches the log and the subscribers without being
//! re-encoded. Structured admin bodies (stream and consumer configs and infos) are
//! rkyv-archived [`AdminRequest`]/[`AdminResponse`] values, validated before use.
//!
//! The first frame on a connection must be [`op::HELLO`]; the server answers with the version
//! it chose. Everything here is pure; every decoder checks every length (fuzzed).

use serde::{Deserialize as SerdeDeserialize, Serialize as SerdeSerialize};
use std::sync::Arc;

/// Protocol versions this code speaks.
pub const VERSION_MIN: u16 = 1;
pub const VERSION_MAX: u16 = 1;
/// Bytes of the fixed header after the length field.
pub const HEADER_BYTES: usize = 8;
/// Default largest frame (length field value) a peer accepts.
pub const FRAME_BYTES_MAX: usize = 8 << 20;

pub mod op {
    // client → server
    pub const HELLO: u8 = 1;
    pub const PUB: u8 = 2;
    pub const SUB: u8 = 3;
    pub const UNSUB: u8 = 4;
    pub const ADMIN: u8 = 5;
    pub const FETCH: u8 = 6;
    pub const ACK: u8 = 7;
    pub const PING: u8 = 8;
    // server → client
    pub const HELLO_OK: u8 = 64;
    pub const OK: u8 = 65;
    pub const ERROR: u8 = 66;
    pub const PUB_ACK: u8 = 67;
    pub const ADMIN_OK: u8 = 68;
    pub const MSG: u8 = 69;
    pub const FETCH_END: u8 = 70;
    pub const PONG: u8 = 71;
}

/// Frame flags.
pub mod flag {
    /// PUB: answer with PUB_ACK (or an error) once stored; without it a publish is
    /// fire-and-forget.
    pub const ACK: u8 = 1;
}

/// Error codes in `status` (HTTP-like, as JetStream's API errors are).
pub mod status {
    pub const OK: u16 = 0;
    pub const BAD_REQUEST: u16 = 400;
    pub const NOT_FOUND: u16 = 404;
    /// Pull request expired before a message came.
    pub const TIMEOUT: u16 = 408;
    pub const CONFLICT: u16 = 409;
    pub const TOO_LARGE: u16 = 413;
    /// Expected-last-sequence mismatch, discard-new limit hit, and the like.
    pub const PRECONDITION: u16 = 412;
    pub const TOO_MANY: u16 = 429;
    pub const INTERNAL: u16 = 500;
    /// No stream captures the subject (publish with ACK), or no one answers a request.
    pub const NO_RESPONDERS: u16 = 503;
    pub const UNSUPPORTED_VERSION: u16 = 505;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FrameError {}

fn err<T>(msg: impl Into<String>) -> Result<T, FrameError> {
    Err(FrameError(msg.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: u8,
    pub flags: u8,
    pub status: u16,
    pub corr: u32,
}

/// Splits one frame off the front of `buf`: `Ok(None)` if more bytes are needed, the header
/// and the body's range otherwise (the frame is `buf[..end]`).
pub fn split_frame(
    buf: &[u8],
    frame_bytes_max: usize,
) -> Result<Option<(Header, std::ops::Range<usize>)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len < HEADER_BYTES {
        return err(format!("frame length {len} is shorter than the header"));
    }
    if len > frame_bytes_max {
        return err(format!(
            "frame of {len} bytes is larger than the limit {frame_bytes_max}"
        ));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let h = Header {
        op: buf[4],
        flags: buf[5],
        status: u16::from_be_bytes([buf[6], buf[7]]),
        corr: u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes")),
    };
    Ok(Some((h, 4 + HEADER_BYTES..4 + len)))
}

/// Appends a whole frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, h: Header, body: &[u8]) {
    out.extend_from_slice(&((HEADER_BYTES + body.len()) as u32).to_be_bytes());
    out.push(h.op);
    out.push(h.flags);
    out.extend_from_slice(&h.status.to_be_bytes());
    out.extend_from_slice(&h.corr.to_be_bytes());
    out.extend_from_slice(body);
}

/// One frame in a buffer of its own.
pub fn frame(h: Header, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + HEADER_BYTES + body.len());
    encode_frame(&mut out, h, body);
    out
}

/// Starts a frame whose body the caller appends; [`finish_frame`] fixes the length.
pub fn begin_frame(out: &mut Vec<u8>, h: Header) -> usize {
    let at = out.len();
    encode_frame(out, h, &[]);
    at
}

pub fn finish_frame(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A cursor over body bytes; every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() - self.at < n {
            return err("body is truncated");
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    pub fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub fn i64(&mut self) -> Result<i64, FrameError> {
        Ok(self.u64()? as i64)
    }
    pub fn str16(&mut self) -> Result<&'a str, FrameError> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).or_else(|_| err("string is not UTF-8"))
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.at..];
        self.at = self.buf.len();
        s
    }
    pub fn done(&self) -> Result<(), FrameError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            err("trailing bytes after the body")
        }
    }
}

pub fn put_str16(out: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// PUB body: `subject, reply, batch` — the batch holds the message (one record whose key is
/// the subject; headers carry `Sluice-Msg-Id` and `Sluice-Expected-Last-Sequence`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pub<'a> {
    pub subject: &'a str,
    pub reply: &'a str,
    pub batch: &'a [u8],
}

impl<'a> Pub<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Pub<'a>, FrameError> {
        let mut r = Reader::new(body);
        let subject = r.str16()?;
        let reply = r.str16()?;
        let batch = r.rest();
        Ok(Pub {
            subject,
            reply,
            batch,
        })
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_str16(out, self.subject);
        put_str16(out, self.reply);
        out.extend_from_slice(self.batch);
    }
}

/// SUB body: `sid, subject (pattern), queue group ("" for none)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sub<'a> {
    pub sid: u32,
    pub subject: &'a str,
    pub queue: &'a str,
}

impl<'a> Sub<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Sub<'a>, FrameError> {
        let mut r = Reader::new(body);
        let s = Sub {
            sid: r.u32()?,
            subject: r.str16()?,
            queue: r.str16()?,
        };
        r.done()?;
        Ok(s)
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sid.to_be_bytes());
        put_str16(out, self.subject);
        put_str16(out, self.queue);
    }
}

/// Where a delivered stream message came from, and how to acknowledge it. The names are shared
/// (`Arc<str>`): every message of a fetch carries the same two.
#[derive(Debug, Clone, PartialEq, Eq, SerdeSerialize)]
pub struct MsgMeta {
    pub stream: Arc<str>,
    pub consumer: Arc<str>,
    pub stream_seq: u64,
    pub consumer_seq: u64,
    pub deliveries: u32,
    pub pending: u64,
    pub timestamp_ms: i64,
}

impl MsgMeta {
    pub fn as_ref(&self) -> MetaRef<'_> {
        MetaRef {
            stream: &self.stream,
            consumer: &self.consumer,
            stream_seq: self.stream_seq,
            consumer_seq: self.consumer_seq,
            deliveries: self.deliveries,
            pending: self.pending,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// A [`MsgMeta`] read in place from a MSG body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaRef<'a> {
    pub stream: &'a str,
    pub consumer: &'a str,
    pub stream_seq: u64,
    pub consumer_seq: u64,
    pub deliveries: u32,
    pub pending: u64,
    pub timestamp_ms: i64,
}

impl MetaRef<'_> {
    /// The owned meta; names equal to `known` (the stream and consumer a fetch asked) share
    /// those instead of allocating.
    pub fn to_owned(&self, known: Option<&(Arc<str>, Arc<str>)>) -> MsgMeta {
        let share = |name: &str, k: Option<&Arc<str>>| match k {
            Some(k) if **k == *name => k.clone(),
            _ => Arc::from(name),
        };
        MsgMeta {
            stream: share(self.stream, known.map(|k| &k.0)),
            consumer: share(self.consumer, known.map(|k| &k.1)),
            stream_seq: self.stream_seq,
            consumer_seq: self.consumer_seq,
            deliveries: self.deliveries,
            pending: self.pending,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// MSG body: `sid, subject, reply, meta?, batch`. `sid` is the subscription id (core and push
/// deliveries) or 0 for pull deliveries (which carry the fetch's `corr` in the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg<'a> {
    pub sid: u32,
    pub subject: &'a str,
    pub reply: &'a str,
    pub meta: Option<MetaRef<'a>>,
    pub batch: &'a [u8],
}

impl<'a> Msg<'a> {
    /// Reads a MSG body in place (no allocation).
    pub fn decode(body: &'a [u8]) -> Result<Msg<'a>, FrameError> {
        let mut r = Reader::new(body);
        let sid = r.u32()?;
        let subject = r.str16()?;
        let reply = r.str16()?;
        let meta = match r.u8()? {
            0 => None,
            1 => Some(MetaRef {
                stream: r.str16()?,
                consumer: r.str16()?,
                stream_seq: r.u64()?,
                consumer_seq: r.u64()?,
                deliveries: r.u32()?,
                pending: r.u64()?,
                timestamp_ms: r.i64()?,
            }),
            _ => return err("bad meta marker"),
        };
        Ok(Msg {
            sid,
            subject,
            reply,
            meta,
            batch: r.rest(),
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sid.to_be_bytes());
        put_str16(out, self.subject);
        put_str16(out, self.reply);
        match &self.meta {
            None => out.push(0),
            Some(m) => {
                out.push(1);
                put_str16(out, m.stream);
                put_str16(out, m.consumer);
                out.extend_from_slice(&m.stream_seq.to_be_bytes());
                out.extend_from_slice(&m.consumer_seq.to_be_bytes());
                out.extend_from_slice(&m.deliveries.to_be_bytes());
                out.extend_from_slice(&m.pending.to_be_bytes());
                out.extend_from_slice(&m.timestamp_ms.to_be_bytes());
            }
        }
        out.extend_from_slice(self.batch);
    }

    /// Bytes of this message as a whole MSG frame, header included.
    pub fn frame_len(&self) -> usize {
        let meta = self.meta.map_or(0, |m| {
            2 + m.stream.len() + 2 + m.consumer.len() + 8 + 8 + 4 + 8 + 8
        });
        // length prefix, header, sid, subject, reply, meta marker, meta, batch
        4 + HEADER_BYTES
            + 4
            + 2
            + self.subject.len()
            + 2
            + self.reply.len()
            + 1
            + meta
            + self.batch.len()
    }

    /// Appends this message as a whole MSG frame (header included) to `out`.
    pub fn encode_frame(&self, out: &mut Vec<u8>, corr: u32) {
        let at = begin_frame(
            out,
            Header {
                op: op::MSG,
                flags: 0,
                status: 0,
                corr,
            },
        );
        self.encode(out);
        finish_frame(out, at);
    }
}

/// How a delivered message is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    Ack,
    /// Redeliver, after `delay_ms` (0: as soon as possible).
    Nak {
        delay_ms: u64,
    },
    /// Never redeliver.
    Term,
    /// Still working: restart the ack_wait timer.
    InProgress,
}

/// ACK body: `kind, delay_ms, stream, consumer, stream_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack<'a> {
    pub kind: AckKind,
    pub stream: &'a str,
    pub consumer: &'a str,
    pub stream_seq: u64,
}

impl<'a> Ack<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Ack<'a>, FrameError> {
        let mut r = Reader::new(body);
        let k = r.u8()?;
        let delay_ms = r.u64()?;
        let kind = match k {
            0 => AckKind::Ack,
            1 => AckKind::Nak { delay_ms },
            2 => AckKind::Term,
            3 => AckKind::InProgress,
            _ => return err(format!("unknown ack kind {k}")),
        };
        let a = Ack {
            kind,
            stream: r.str16()?,
            consumer: r.str16()?,
            stream_seq: r.u64()?,
        };
        r.done()?;
        Ok(a)
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (k, d) = match self.kind {
            AckKind::Ack => (0, 0),
            AckKind::Nak { delay_ms } => (1, delay_ms),
            AckKind::Term => (2, 0),
            AckKind::InProgress => (3, 0),
        };
        out.push(k);
        out.extend_from_slice(&d.to_be_bytes());
        put_str16(out, self.stream);
        put_str16(out, self.consumer);
        out.extend_from_slice(&self.stream_seq.to_be_bytes());
    }
}

// ---- structured bodies (rkyv) ----

use rkyv::{Archive, Deserialize, Serialize};

#[derive(
    Archive,
    Serialize,
    Deserialize,
    SerdeSerialize,
    SerdeDeserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    Limits,
    Interest,
    #[serde(rename = "workqueue")]
    WorkQueue,
}

#[derive(
    Archive,
    Serialize,
    Deserialize,
    SerdeSerialize,
    SerdeDeserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

#[derive(
    Archive,
    Serialize,
    Deserialize,
    SerdeSerialize,
    SerdeDeserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    Old,
    New,
}

/// A stream's configuration (JetStream's StreamConfig; -1 / 0 mean unlimited as there).
#[derive(
    Archive, Serialize, Deserialize, SerdeSerialize, SerdeDeserialize, Debug, Clone, PartialEq, Eq,
)]
#[serde(default)]
pub struct StreamConfig {
    pub name: String,
    pub subjects: Vec<String>,
    pub retention: Retention,
    pub storage: Storage,
    pub max_msgs: i64,
    pub max_bytes: i64,
    /// 0: unlimited.
    pub max_age_ms: u64,
    pub max_msgs_per_subject: i64,
    pub max_msg_size: i32,
    pub discard: Discard,
    pub duplicate_window_ms: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            name: String::new(),
            subjects: Vec::new(),
            retention: Retention::Limits,
            storage: Storage::File,
            max_msgs: -1,
            max_bytes: -1,
            max_age_ms: 0,
            max_msgs_per_subject: -1,
            max_msg_size: -1,
            discard: Discard::Old,
            duplicate_window_ms: 120_000,
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamState {
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub first_ts_ms: i64,
    pub last_seq: u64,
    pub last_ts_ms: i64,
    pub num_deleted: u64,
    pub num_subjects: u64,
    /// Per-subject counts, when asked for (subjects matching the info request's filter).
    pub subjects: Vec<(String, u64)>,
    pub consumer_count: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub config: StreamConfig,
    pub state: StreamState,
    pub created_ms: i64,
}

#[derive(
    Archive,
    Serialize,
    Deserialize,
    SerdeSerialize,
    SerdeDeserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
)]
pub enum DeliverPolicy {
    All,
    Last,
    New,
    ByStartSequence(u64),
    ByStartTime(i64),
    LastPerSubject,
}

#[derive(
    Archive,
    Serialize,
    Deserialize,
    SerdeSerialize,
    SerdeDeserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    None,
    All,
    Explicit,
}

/// A consumer's configuration (JetStream's ConsumerConfig).
#[derive(
    Archive, Serialize, Deserialize, SerdeSerialize, SerdeDeserialize, Debug, Clone, PartialEq, Eq,
)]
#[serde(default)]
pub struct ConsumerConfig {
    /// Durable name; empty for an ephemeral consumer (the server names it).
    pub durable_name: String,
    pub deliver_policy: DeliverPolicy,
    pub ack_policy: AckPolicy,
    pub ack_wait_ms: u64,
    /// Redelivery delays by delivery count (overrides ack_wait when set).
    pub backoff_ms: Vec<u64>,
    /// -1: unlimited.
    pub max_deliver: i64,
    pub filter_subjects: Vec<String>,
    /// -1: unlimited.
    pub max_ack_pending: i64,
    /// Pull requests waiting at once.
    pub max_waiting: i64,
    /// Push consumers: where messages are sent ("" for a pull consumer).
    pub deliver_subject: String,
    pub deliver_group: String,
    pub flow_control: bool,
    pub idle_heartbeat_ms: u64,
    /// Where a message that reached max_deliver goes ("" to drop it, as JetStream does).
    pub dead_letter_stream: String,
    /// Ephemeral consumers are removed after this long without activity.
    pub inactive_threshold_ms: u64,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            durable_name: String::new(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait_ms: 30_000,
            backoff_ms: Vec::new(),
            max_deliver: -1,
            filter_subjects: Vec::new(),
            max_ack_pending: 1000,
            max_waiting: 512,
            deliver_subject: String::new(),
            deliver_group: String::new(),
            flow_control: false,
            idle_heartbeat_ms: 0,
            dead_letter_stream: String::new(),
            inactive_threshold_ms: 5_000,
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SequencePair {
    pub consumer_seq: u64,
    pub stream_seq: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub stream: String,
    pub name: String,
    pub config: ConsumerConfig,
    pub created_ms: i64,
    pub delivered: SequencePair,
    pub ack_floor: SequencePair,
    pub num_ack_pending: u64,
    pub num_redelivered: u64,
    pub num_waiting: u64,
    pub num_pending: u64,
}

/// What to purge (JetStream's purge request).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PurgeRequest {
    /// Only messages on subjects matching this ("" for all).
    pub filter: String,
    /// Keep the newest N (0: keep none).
    pub keep: u64,
    /// Purge below this sequence (0: no bound).
    pub seq: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    StreamAdd(StreamConfig),
    StreamUpdate(StreamConfig),
    StreamInfo {
        name: String,
        /// Per-subject counts for subjects matching this ("" for none).
        subjects_filter: String,
    },
    StreamList,
    StreamDelete(String),
    StreamPurge {
        name: String,
        request: PurgeRequest,
    },
    /// A message by sequence, or (with `last_by_subject`) the last on a subject.
    StreamGet {
        name: String,
        seq: u64,
        last_by_subject: String,
    },
    ConsumerAdd {
        stream: String,
        config: ConsumerConfig,
    },
    ConsumerInfo {
        stream: String,
        name: String,
    },
    ConsumerList(String),
    ConsumerDelete {
        stream: String,
        name: String,
    },
}

/// A message as StreamGet returns it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoredMsg {
    pub subject: String,
    pub seq: u64,
    pub timestamp_ms: i64,
    pub headers: Vec<(String, Vec<u8>)>,
    pub data: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AdminResponse {
    Stream(StreamInfo),
    Streams(Vec<StreamInfo>),
    Deleted,
    Purged(u64),
    Msg(StoredMsg),
    Consumer(ConsumerInfo),
    Consumers(Vec<ConsumerInfo>),
}

/// FETCH body (a pull request).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub stream: String,
    pub consumer: String,
    pub batch: u32,
    /// 0: no byte limit.
    pub max_bytes: u64,
    /// How long the request may wait for messages (0: the server's default).
    pub expires_ms: u64,
    /// Answer at once (404) if nothing is available.
    pub no_wait: bool,
}

/// PUB_ACK body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    pub stream: String,
    pub seq: u64,
    pub duplicate: bool,
}

/// HELLO body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version_min: u16,
    pub version_max: u16,
    pub client: String,
}

/// HELLO_OK body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HelloOk {
    pub version: u16,
    pub server: String,
    pub frame_bytes_max: u32,
}

/// A structured body's type: archivable with rkyv's high-level serializer.
pub trait Body:
    for<'a> Serialize<
    rkyv::api::high::HighSerializer<
        rkyv::util::AlignedVec,
        rkyv::ser::allocator::ArenaHandle<'a>,
        rkyv::rancor::Error,
    >,
>
{
}

impl<T> Body for T where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >
{
}

/// Archives a structured body.
pub fn to_body<T: Body>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    append_body(value, &mut out);
    out
}

/// [`to_body`] appended to `out`, serialized in a reused per-thread buffer: no allocation per
/// body (a PUB_ACK per published message).
pub fn append_body<T: Body>(value: &T, out: &mut Vec<u8>) {
    thread_local! {
        static SCRATCH: std::cell::Cell<Option<rkyv::util::AlignedVec>> =
            const { std::cell::Cell::new(None) };
    }
    let mut scratch = SCRATCH.take().unwrap_or_default();
    scratch.clear();
    let scratch = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(value, scratch)
        .expect("archiving into memory cannot fail");
    out.extend_from_slice(&scratch);
    SCRATCH.set(Some(scratch));
}

/// Validates and reads a structured body from untrusted bytes (copied to an aligned buffer
/// first: frame bodies sit at any offset).
pub fn from_body<T>(body: &[u8]) -> Result<T, FrameError>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned)
        .map_err(|e| FrameError(format!("malformed body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_body_matches_to_body_and_reuses_nothing_stale() {
        let long = PubAck {
            stream: "A-LONGER-STREAM-NAME-THAN-INLINE".into(),
            seq: u64::MAX - 1,
            duplicate: true,
        };
        let short = PubAck {
            stream: "S".into(),
            seq: 7,
            duplicate: false,
        };
        let mut out = b"head".to_vec();
        append_body(&long, &mut out);
        let first = out.len();
        append_body(&short, &mut out);
        assert_eq!(&out[..4], b"head");
        assert_eq!(&out[4..first], &to_body(&long)[..]);
        assert_eq!(&out[first..], &to_body(&short)[..]);
        assert_eq!(from_body::<PubAck>(&out[first..]).unwrap(), short);
        assert_eq!(from_body::<PubAck>(&out[4..first]).unwrap(), long);
    }

    #[test]
    fn frames_round_trip_and_split() {
        let mut out = Vec::new();
        let p = Pub {
            subject: "orders.1",
            reply: "",
            batch: b"xyz",
        };
        let at = begin_frame(
            &mut out,
            Header {
                op: op::PUB,
                flags: flag::ACK,
                status: 0,
                corr: 7,
            },
        );
        p.encode(&mut out);
        finish_frame(&mut out, at);
        encode_frame(
            &mut out,
            Header {
                op: op::PING,
                flags: 0,
                status: 0,
                corr: 8,
            },
            &[],
        );
        let (h, body) = split_frame(&out, FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!((h.op, h.flags, h.corr), (op::PUB, flag::ACK, 7));
        assert_eq!(Pub::decode(&out[body.clone()]).unwrap(), p);
        let rest = &out[body.end..];
        let (h, body) = split_frame(rest, FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!((h.op, body.len()), (op::PING, 0));
        assert_eq!(split_frame(&rest[..5], FRAME_BYTES_MAX).unwrap(), None);
        assert!(split_frame(&[0, 0, 0, 3, 1, 1, 1], FRAME_BYTES_MAX).is_err());
        assert!(split_frame(&[0, 0xff, 0, 0], 1024).is_err());
    }

    #[test]
    fn bodies_round_trip() {
        let m = Msg {
            sid: 3,
            subject: "a.b",
            reply: "_INBOX.1",
            meta: Some(MetaRef {
                stream: "S",
                consumer: "C",
                stream_seq: 10,
                consumer_seq: 4,
                deliveries: 2,
                pending: 99,
                timestamp_ms: 1234,
            }),
            batch: b"batch",
        };
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(Msg::decode(&out).unwrap(), m);
        // Owned, sharing the names a fetch already holds.
        let known: (Arc<str>, Arc<str>) = ("S".into(), "other".into());
        let owned = m.meta.unwrap().to_owned(Some(&known));
        assert!(Arc::ptr_eq(&owned.stream, &known.0));
        assert_eq!((&*owned.consumer, owned.as_ref()), ("C", m.meta.unwrap()));
        let mut framed = Vec::new();
        m.encode_frame(&mut framed, 7);
        assert_eq!(framed.len(), m.frame_len());
        let (h, body) = split_frame(&framed, FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!((h.op, h.corr, &framed[body]), (op::MSG, 7, &out[..]));
        for cut in 0..out.len() - 5 {
            assert!(Msg::decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        let a = Ack {
            kind: AckKind::Nak { delay_ms: 500 },
            stream: "S",
            consumer: "C",
            stream_seq: 42,
        };
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(Ack::decode(&out).unwrap(), a);
        let s = Sub {
            sid: 1,
            subject: "x.>",
            queue: "q",
        };
        let mut out = Vec::new();
        s.encode(&mut out);
        assert_eq!(Sub::decode(&out).unwrap(), s);
    }

    #[test]
    fn admin_bodies_round_trip_and_reject_garbage() {
        let req = AdminRequest::StreamAdd(StreamConfig {
            name: "ORDERS".into(),
            subjects: vec!["orders.*".into()],
            retention: Retention::WorkQueue,
            ..StreamConfig::default()
        });
        let body = to_body(&req);
        assert_eq!(from_body::<AdminRequest>(&body).unwrap(), req);
        assert!(from_body::<AdminRequest>(&body[..body.len() - 3]).is_err());
        assert!(from_body::<AdminRequest>(&[0xff; 40]).is_err());
        // An odd offset (frame bodies are not aligned) still decodes.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&body);
        assert_eq!(from_body::<AdminRequest>(&shifted[1..]).unwrap(), req);
    }
}
