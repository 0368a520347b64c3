//! The Rust client of Sluice's native protocol, for ordinary tokio applications (it does not
//! pull in the server): core publish/subscribe with `*`/`>` wildcards and queue groups,
//! request-reply with timeouts, streams and consumers (JetStream's model), pull fetches and
//! per-message acknowledgement.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_client::Error> {
//! use sluice_client::{Client, StreamConfig};
//! let client = Client::connect("127.0.0.1:7575").await?;
//! client
//!     .add_stream(StreamConfig {
//!         name: "ORDERS".into(),
//!         subjects: vec!["orders.*".into()],
//!         ..Default::default()
//!     })
//!     .await?;
//! let ack = client.publish_ack("orders.1", b"hello", Default::default()).await?;
//! println!("stored as {}", ack.seq);
//! # Ok(()) }
//! ```
//!
//! One connection carries every request; each gets a correlation id and is answered on its
//! own, so many can be in flight. Messages are Kafka RecordBatch v2 bytes on the wire (the
//! subject is the record key), exactly what a stream stores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_core::batch::{self, BatchBuilder, Compression};
use sluice_core::native::{
    self, flag, op, status, Ack, AckKind, AdminRequest, AdminResponse, FetchRequest, Header, Hello,
    HelloOk, Msg, Pub, Sub,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

pub use sluice_core::native::{
    AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, Discard, MsgMeta, PubAck, PurgeRequest,
    Retention, SequencePair, Storage, StoredMsg, StreamConfig, StreamInfo, StreamState,
};

/// Header carrying a publish's message id (deduplication within the stream's window).
pub const MSG_ID_HEADER: &str = "Sluice-Msg-Id";
/// Header making a publish conditional on the stream's last sequence.
pub const EXPECTED_LAST_SEQ_HEADER: &str = "Sluice-Expected-Last-Sequence";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server refused the request: a status code (400, 404, 409, 412, …) and why.
    #[error("server error {status}: {message}")]
    Server { status: u16, message: String },
    #[error("no responders for {0}")]
    NoResponders(String),
    #[error("timed out")]
    Timeout,
    #[error("connection closed")]
    Closed,
}

impl Error {
    /// The server's status code, if the server refused the request.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Server { status, .. } => Some(*status),
            Error::NoResponders(_) => Some(status::NO_RESPONDERS),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Frame {
    header: Header,
    body: Bytes,
}

enum Waiter {
    Once(oneshot::Sender<Frame>),
    Stream(mpsc::UnboundedSender<Frame>),
    /// The `index`-th answer of a [`Client::publish_batch`].
    Batch {
        wait: Arc<BatchWait>,
        index: usize,
    },
}

/// Answers of one [`Client::publish_batch`] as they arrive (in any order); handed over whole
/// once the last one came. Dropped unfinished (the connection closed and its waiters with it),
/// it drops `done`: the caller sees the connection gone.
struct BatchWait {
    state: Mutex<BatchState>,
}

struct BatchState {
    answers: Vec<Option<Frame>>,
    remaining: usize,
    done: Option<oneshot::Sender<Vec<Option<Frame>>>>,
}

impl BatchWait {
    fn answer(&self, index: usize, f: Frame) {
        let mut st = self.state.lock().unwrap();
        // Each correlation id's waiter is removed as it answers: one answer per index.
        st.answers[index] = Some(f);
        st.remaining -= 1;
        if st.remaining == 0 {
            if let Some(done) = st.done.take() {
                let answers = std::mem::take(&mut st.answers);
                let _ = done.send(answers);
            }
        }
    }
}

/// One message of a [`Client::publish_batch`].
#[derive(Debug, Clone, Default)]
pub struct Publish<'a> {
    pub subject: &'a str,
    pub data: &'a [u8],
    pub opts: PublishOptions,
}

struct Inner {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    waiters: Mutex<sluice_core::FastMap<u32, Waiter>>,
    subs: Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>,
    /// Replies to this client's requests, by inbox token.
    replies: Mutex<HashMap<String, oneshot::Sender<Message>>>,
    inbox: String,
    inbox_sid: tokio::sync::OnceCell<u32>,
    next_corr: AtomicU32,
    next_sid: AtomicU32,
    next_token: AtomicU32,
    server: String,
    /// The connection is gone: every call fails with `Closed` from now on.
    closed: std::sync::atomic::AtomicBool,
}

/// A connection to a Sluice server. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.server)
            .finish()
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub reply: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The payload: a view of the received frame, not a copy.
    pub data: Bytes,
    /// Set for messages delivered by a stream consumer.
    pub meta: Option<MsgMeta>,
    client: Option<Client>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    async fn acknowledge(&self, kind: AckKind, wait: bool) -> Result<(), Error> {
        let (Some(meta), Some(client)) = (&self.meta, &self.client) else {
            return Err(Error::Protocol("not a consumer message".into()));
        };
        let mut body = Vec::new();
        Ack {
            kind,
            stream: &meta.stream,
            consumer: &meta.consumer,
            stream_seq: meta.stream_seq,
        }
        .encode(&mut body);
        if wait {
            client.call(op::ACK, 0, body).await.map(|_| ())
        } else {
            client.send(op::ACK, 0, 0, body)
        }
    }

    /// Acknowledges the message (fire-and-forget).
    pub async fn ack(&self) -> Result<(), Error> {
        self.acknowledge(AckKind::Ack, false).await
    }
    /// Acknowledges and waits for the server to confirm.
    pub async fn ack_sync(&self) -> Result<(), Error> {
        self.acknowledge(AckKind::Ack, true).await
    }
    /// Asks for redelivery now.
    pub async fn nak(&self) -> Result<(), Error> {
        self.acknowledge(AckKind::Nak { delay_ms: 0 }, false).await
    }
    /// Asks for redelivery after `delay`.
    pub async fn nak_with_delay(&self, delay: Duration) -> Result<(), Error> {
        self.acknowledge(
            AckKind::Nak {
                delay_ms: delay.as_millis() as u64,
            },
            false,
        )
        .await
    }
    /// Never redeliver this message.
    pub async fn term(&self) -> Result<(), Error> {
        self.acknowledge(AckKind::Term, false).await
    }
    /// Still working on it: restarts the ack wait.
    pub async fn in_progress(&self) -> Result<(), Error> {
        self.acknowledge(AckKind::InProgress, false).await
    }
}

/// Options of a publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub headers: Vec<(String, Vec<u8>)>,
    /// Deduplication id (`Sluice-Msg-Id`).
    pub msg_id: Option<String>,
    /// Store only if the stream's last sequence is this.
    pub expected_last_seq: Option<u64>,
    pub reply: Option<String>,
}

/// Options of a pull fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub batch: u32,
    pub max_bytes: u64,
    pub expires: Duration,
    pub no_wait: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            batch: 1,
            max_bytes: 0,
            expires: Duration::from_secs(5),
            no_wait: false,
        }
    }
}

/// Options of [`Client::messages`].
#[derive(Debug, Clone)]
pub struct MessagesOptions {
    /// Messages asked for by each pull request.
    pub batch: u32,
    /// Byte limit of each pull request's answer (0: none).
    pub max_bytes: u64,
    /// Pull requests kept outstanding at the server.
    pub pulls: usize,
    /// How long a pull request waits at the server for messages before it is renewed.
    pub expires: Duration,
}

impl Default for MessagesOptions {
    fn default() -> Self {
        MessagesOptions {
            batch: 500,
            max_bytes: 0,
            pulls: 2,
            expires: Duration::from_secs(30),
        }
    }
}

/// One pull request under way: its MSG frames, then FETCH_END (or ERROR). Dropped, it is
/// forgotten: whatever the server still sends for it is discarded.
struct Pull {
    client: Client,
    corr: u32,
    rx: mpsc::UnboundedReceiver<Frame>,
    /// Frames that arrived before this pull's turn came (see [`Messages`]).
    stash: std::collections::VecDeque<Frame>,
}

/// What one frame of a pull means.
enum Step {
    Msg(Message),
    End,
    Skip,
}

/// What frame `f` of a pull for the stream and consumer `known` means.
fn pull_step(client: &Client, f: Frame, known: &(Arc<str>, Arc<str>)) -> Result<Step, Error> {
    match f.header.op {
        op::MSG => {
            let m = Msg::decode(&f.body).map_err(|e| Error::Protocol(e.0))?;
            decode_message(client, &m, &f.body, Some(known)).map(Step::Msg)
        }
        op::FETCH_END => match f.header.status {
            status::OK | status::NOT_FOUND | status::TIMEOUT => Ok(Step::End),
            _ => Err(server_error(&f)),
        },
        op::ERROR => Err(server_error(&f)),
        _ => Ok(Step::Skip),
    }
}

impl Drop for Pull {
    fn drop(&mut self) {
        self.client.inner.waiters.lock().unwrap().remove(&self.corr);
    }
}

/// A pull consumer read as a stream (see [`Client::messages`]). Dropping it abandons the
/// outstanding pulls: messages the server hands to them meanwhile are not seen here, and
/// (unless the consumer's ack policy is none) are redelivered after `ack_wait`.
pub struct Messages {
    client: Client,
    known: (Arc<str>, Arc<str>),
    opts: MessagesOptions,
    /// Outstanding pulls, oldest first. Messages are handed out from the front one; frames of
    /// the others wait in their stash, so the order is the server's even when a later pull's
    /// answer arrives first.
    pulls: std::collections::VecDeque<Pull>,
    /// An error ended the stream.
    ended: bool,
}

impl Messages {
    /// The next message, waiting as long as it takes; `Some(Err)` once if the server refused
    /// a pull (the consumer was deleted, or more pulls than its `max_waiting`) or the
    /// connection closed, and `None` after that. Cancel-safe: a `next()` dropped before it
    /// finished loses no message.
    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        while !self.ended {
            if let Err(e) = self.refill() {
                return Some(Err(self.end(e)));
            }
            let step = std::future::poll_fn(|cx| self.poll_front(cx))
                .await
                .and_then(|f| pull_step(&self.client, f, &self.known));
            match step {
                Ok(Step::Msg(m)) => return Some(Ok(m)),
                // Answered in full (or expired empty): its place goes to a new pull.
                Ok(Step::End) => {
                    self.pulls.pop_front();
                }
                Ok(Step::Skip) => {}
                Err(e) => return Some(Err(self.end(e))),
            }
        }
        None
    }

    /// The front pull's next frame. While it has none, the other pulls' frames are read into
    /// their stash, and an ERROR among them (or the connection closing) comes out at once.
    fn poll_front(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<Frame, Error>> {
        let front = &mut self.pulls[0];
        if let Some(f) = front.stash.pop_front() {
            return Poll::Ready(Ok(f));
        }
        match front.rx.poll_recv(cx) {
            // Its waiter goes after FETCH_END or ERROR, which end the pull: a closed channel
            // here means the connection went.
            Poll::Ready(f) => return Poll::Ready(f.ok_or(Error::Closed)),
            Poll::Pending => {}
        }
        for p in self.pulls.iter_mut().skip(1) {
            while let Poll::Ready(f) = p.rx.poll_recv(cx) {
                match f {
                    Some(f) if f.header.op == op::ERROR => return Poll::Ready(Ok(f)),
                    Some(f) => p.stash.push_back(f),
                    None if p.stash.back().is_some_and(|f| f.header.op == op::FETCH_END) => break,
                    None => return Poll::Ready(Err(Error::Closed)),
                }
            }
        }
        Poll::Pending
    }

    /// Tops the outstanding pulls back up to `opts.pulls`.
    fn refill(&mut self) -> Result<(), Error> {
        let opts = FetchOptions {
            batch: self.opts.batch,
            max_bytes: self.opts.max_bytes,
            expires: self.opts.expires,
            no_wait: false,
        };
        while self.pulls.len() < self.opts.pulls {
            let p = self.client.pull(&self.known.0, &self.known.1, &opts)?;
            self.pulls.push_back(p);
        }
        Ok(())
    }

    fn end(&mut self, e: Error) -> Error {
        self.ended = true;
        self.pulls.clear();
        e
    }
}

/// A subscription: messages arrive in order; dropping it does not unsubscribe (call
/// [`Subscription::unsubscribe`]).
pub struct Subscription {
    pub sid: u32,
    rx: mpsc::UnboundedReceiver<Message>,
    client: Client,
}

impl Subscription {
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
    pub async fn unsubscribe(self) -> Result<(), Error> {
        self.client.inner.subs.lock().unwrap().remove(&self.sid);
        self.client
            .call(op::UNSUB, 0, self.sid.to_be_bytes().to_vec())
            .await
            .map(|_| ())
    }
}

/// A delivered message from its MSG body `m`, read out of `frame` (whose bytes the payload
/// keeps sharing: no copy). `known` names the stream and consumer a fetch asked for.
fn decode_message(
    client: &Client,
    m: &Msg<'_>,
    frame: &Bytes,
    known: Option<&(Arc<str>, Arc<str>)>,
) -> Result<Message, Error> {
    let meta = m.meta.map(|x| x.to_owned(known));
    // The common case: one uncompressed record, read in place.
    if let Ok(Some(v)) = batch::single_record(m.batch) {
        return Ok(Message {
            subject: m.subject.to_string(),
            reply: m.reply.to_string(),
            headers: v
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        v.unwrap_or_default().to_vec(),
                    )
                })
                .collect(),
            data: v.value.map_or_else(Bytes::new, |d| frame.slice_ref(d)),
            meta,
            client: Some(client.clone()),
        });
    }
    let records = batch::records(m.batch, 64 << 20).map_err(|e| Error::Protocol(e.to_string()))?;
    let r = records
        .into_iter()
        .next()
        .ok_or_else(|| Error::Protocol("empty message batch".into()))?;
    Ok(Message {
        subject: m.subject.to_string(),
        reply: m.reply.to_string(),
        headers: r
            .headers
            .into_iter()
            .map(|h| {
                (
                    String::from_utf8_lossy(&h.key).into_owned(),
                    h.value.unwrap_or_default(),
                )
            })
            .collect(),
        data: Bytes::from(r.value.unwrap_or_default()),
        meta,
        client: Some(client.clone()),
    })
}

/// Builds the single-record batch a message travels in.
pub fn message_batch(subject: &str, headers: &[(String, Vec<u8>)], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_message_batch(&mut out, subject, headers, data);
    out
}

/// Appends the single-record batch of a message to `out` (a frame being encoded).
fn put_message_batch(out: &mut Vec<u8>, subject: &str, headers: &[(String, Vec<u8>)], data: &[u8]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut b = BatchBuilder::new(Compression::None, now);
    let hs: Vec<(&[u8], Option<&[u8]>)> = headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), Some(v.as_slice())))
        .collect();
    b.push(now, Some(subject.as_bytes()), Some(data), &hs);
    b.build_into(out);
}

fn server_error(f: &Frame) -> Error {
    let message = String::from_utf8_lossy(&f.body).into_owned();
    if f.header.status == status::NO_RESPONDERS {
        return Error::NoResponders(message);
    }
    Error::Server {
        status: f.header.status,
        message,
    }
}

/// At most this many queued frames, or bytes, go out in one write.
const WRITE_FRAMES_MAX: usize = 1024;
const WRITE_BYTES_MAX: usize = 256 << 10;

/// Writes `frames` back to back with vectored writes, resuming after partial writes.
async fn write_frames(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    frames: &[Vec<u8>],
) -> std::io::Result<()> {
    use std::io::IoSlice;
    let (mut i, mut off) = (0, 0);
    while i < frames.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&frames[i][off..])
            .chain(frames[i + 1..].iter().map(|f| &f[..]))
            .map(IoSlice::new)
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let rest = frames[i].len() - off;
            if n >= rest {
                n -= rest;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
        // Frames written whole (including empty ones) are skipped.
        while i < frames.len() && off == frames[i].len() {
            i += 1;
            off = 0;
        }
    }
    Ok(())
}

impl Client {
    /// Connects and says HELLO.
    pub async fn connect(addr: &str) -> Result<Client, Error> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            // Frames queued meanwhile go out together, in one vectored write (no copy).
            let mut frames: Vec<Vec<u8>> = Vec::with_capacity(WRITE_FRAMES_MAX);
            while let Some(f) = rx.recv().await {
                frames.clear();
                let mut bytes = f.len();
                frames.push(f);
                while bytes < WRITE_BYTES_MAX && frames.len() < WRITE_FRAMES_MAX {
                    match rx.try_recv() {
                        Ok(more) => {
                            bytes += more.len();
                            frames.push(more);
                        }
                        Err(_) => break,
                    }
                }
                if write_frames(&mut wr, &frames).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let nuid = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let inner = Arc::new(Inner {
            tx,
            waiters: Mutex::new(sluice_core::FastMap::default()),
            subs: Mutex::new(HashMap::new()),
            replies: Mutex::new(HashMap::new()),
            inbox: format!("_INBOX.{nuid}"),
            inbox_sid: tokio::sync::OnceCell::new(),
            next_corr: AtomicU32::new(1),
            next_sid: AtomicU32::new(1),
            next_token: AtomicU32::new(1),
            server: addr.to_string(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let client = Client {
            inner: inner.clone(),
        };
        let reader_client = Client { inner };
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 << 10);
            'read: loop {
                loop {
                    let split = native::split_frame(&buf, usize::MAX >> 1);
                    let (h, body) = match split {
                        Ok(Some(x)) => x,
                        Ok(None) => break,
                        Err(_) => break 'read,
                    };
                    let frame = buf.split_to(body.end).freeze();
                    let body = frame.slice(body);
                    reader_client.on_frame(Frame { header: h, body });
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            // Wake everyone waiting: the connection is gone. (`closed` first: a call that
            // registers after the clear sees it and fails instead of waiting forever.)
            reader_client.inner.closed.store(true, Ordering::SeqCst);
            reader_client.inner.waiters.lock().unwrap().clear();
            reader_client.inner.subs.lock().unwrap().clear();
            reader_client.inner.replies.lock().unwrap().clear();
        });
        let hello = native::to_body(&Hello {
            version_min: native::VERSION_MIN,
            version_max: native::VERSION_MAX,
            client: format!("sluice-client {}", env!("CARGO_PKG_VERSION")),
        });
        let f = client.call(op::HELLO, 0, hello).await?;
        native::from_body::<HelloOk>(&f.body).map_err(|e| Error::Protocol(e.0))?;
        Ok(client)
    }

    pub fn server(&self) -> &str {
        &self.inner.server
    }

    fn on_frame(&self, f: Frame) {
        if f.header.op == op::MSG {
            let Ok(m) = Msg::decode(&f.body) else {
                return;
            };
            if m.sid == 0 {
                if let Some(Waiter::Stream(tx)) =
                    self.inner.waiters.lock().unwrap().get(&f.header.corr)
                {
                    let _ = tx.send(f);
                }
                return;
            }
            let Ok(msg) = decode_message(self, &m, &f.body, None) else {
                return;
            };
            if Some(&m.sid) == self.inner.inbox_sid.get() {
                let token = msg
                    .subject
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                if let Some(tx) = self.inner.replies.lock().unwrap().remove(&token) {
                    let _ = tx.send(msg);
                }
                return;
            }
            // Push consumers' status messages are the library's business: flow-control
            // requests are answered, idle heartbeats dropped.
            if msg.header("Status") == Some(b"100") {
                if msg.header("Description") == Some(b"FlowControl Request")
                    && !msg.reply.is_empty()
                {
                    let _ = self.publish(&msg.reply, b"");
                }
                return;
            }
            if let Some(tx) = self.inner.subs.lock().unwrap().get(&m.sid) {
                let _ = tx.send(msg);
            }
            return;
        }
        let mut waiters = self.inner.waiters.lock().unwrap();
        match waiters.get(&f.header.corr) {
            Some(Waiter::Stream(tx)) => {
                let end = f.header.op == op::FETCH_END || f.header.op == op::ERROR;
                let corr = f.header.corr;
                let _ = tx.send(f);
                if end {
                    waiters.remove(&corr);
                }
            }
            Some(Waiter::Once(_)) => {
                if let Some(Waiter::Once(tx)) = waiters.remove(&f.header.corr) {
                    let _ = tx.send(f);
                }
            }
            Some(Waiter::Batch { .. }) => {
                if let Some(Waiter::Batch { wait, index }) = waiters.remove(&f.header.corr) {
                    drop(waiters);
                    wait.answer(index, f);
                }
            }
            None => {}
        }
    }

    fn send(&self, op: u8, flags: u8, corr: u32, body: Vec<u8>) -> Result<(), Error> {
        self.send_frame(frame_of(op, flags, corr, &body))
    }

    /// Queues one encoded frame for the writer.
    fn send_frame(&self, frame: Vec<u8>) -> Result<(), Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        self.inner.tx.send(frame).map_err(|_| Error::Closed)
    }

    /// Registers a waiter for `corr`; fails if the connection is already gone.
    fn register(&self, corr: u32, w: Waiter) -> Result<(), Error> {
        self.inner.waiters.lock().unwrap().insert(corr, w);
        if self.inner.closed.load(Ordering::SeqCst) {
            self.inner.waiters.lock().unwrap().remove(&corr);
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn corr(&self) -> u32 {
        loop {
            let c = self.inner.next_corr.fetch_add(1, Ordering::Relaxed);
            if c != 0 {
                return c;
            }
        }
    }

    /// Sends a request and waits for its one answer; ERROR frames become `Err`.
    async fn call(&self, op: u8, flags: u8, body: Vec<u8>) -> Result<FrameOut, Error> {
        self.call_frame(|corr| frame_of(op, flags, corr, &body))
            .await
    }

    /// [`Client::call`] of a frame the caller encodes under the correlation id it is given.
    async fn call_frame(&self, frame: impl FnOnce(u32) -> Vec<u8>) -> Result<FrameOut, Error> {
        let corr = self.corr();
        let (tx, rx) = oneshot::channel();
        self.register(corr, Waiter::Once(tx))?;
        self.send_frame(frame(corr))?;
        let f = rx.await.map_err(|_| Error::Closed)?;
        if f.header.op == op::ERROR {
            return Err(server_error(&f));
        }
        Ok(FrameOut { body: f.body })
    }

    async fn admin(&self, req: AdminRequest) -> Result<AdminResponse, Error> {
        let f = self.call(op::ADMIN, 0, native::to_body(&req)).await?;
        native::from_body::<AdminResponse>(&f.body).map_err(|e| Error::Protocol(e.0))
    }

    /// Fire-and-forget publish (core pub/sub; stored too if a stream captures the subject).
    pub fn publish(&self, subject: &str, data: &[u8]) -> Result<(), Error> {
        self.publish_with(subject, data, PublishOptions::default())
    }

    pub fn publish_with(
        &self,
        subject: &str,
        data: &[u8],
        opts: PublishOptions,
    ) -> Result<(), Error> {
        self.send_frame(pub_frame(0, 0, subject, data, &opts))
    }

    /// Publishes to a stream and waits for it to be stored (PubAck), or for the refusal.
    pub async fn publish_ack(
        &self,
        subject: &str,
        data: &[u8],
        opts: PublishOptions,
    ) -> Result<PubAck, Error> {
        let f = self
            .call_frame(|corr| pub_frame(flag::ACK, corr, subject, data, &opts))
            .await?;
        native::from_body::<PubAck>(&f.body).map_err(|e| Error::Protocol(e.0))
    }

    /// Publishes several messages to streams in one write and waits until each is stored or
    /// refused: one result per message, in the order given. The server handles them as it
    /// would as many [`Client::publish_ack`]s (each is its own stream message, with its own
    /// sequence, deduplication and expected-last-sequence check); the caller pays for one
    /// future, one wake-up and one queued write instead of one per message. `Err` only when
    /// the connection is gone.
    pub async fn publish_batch(
        &self,
        msgs: &[Publish<'_>],
    ) -> Result<Vec<Result<PubAck, Error>>, Error> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot::channel();
        let wait = Arc::new(BatchWait {
            state: Mutex::new(BatchState {
                answers: (0..msgs.len()).map(|_| None).collect(),
                remaining: msgs.len(),
                done: Some(tx),
            }),
        });
        let mut out = Vec::with_capacity(
            msgs.iter()
                .map(|m| pub_frame_capacity(m.subject, m.data, &m.opts))
                .sum(),
        );
        let mut corrs = Vec::with_capacity(msgs.len());
        {
            let mut waiters = self.inner.waiters.lock().unwrap();
            for (index, m) in msgs.iter().enumerate() {
                let corr = self.corr();
                put_pub_frame(&mut out, flag::ACK, corr, m.subject, m.data, &m.opts);
                let wait = wait.clone();
                waiters.insert(corr, Waiter::Batch { wait, index });
                corrs.push(corr);
            }
        }
        drop(wait);
        // Registered before the check (as `register` does): a close after it clears them.
        if let Err(e) = self.send_frame(out) {
            let mut waiters = self.inner.waiters.lock().unwrap();
            for corr in corrs {
                waiters.remove(&corr);
            }
            return Err(e);
        }
        let answers = rx.await.map_err(|_| Error::Closed)?;
        Ok(answers
            .into_iter()
            .map(|f| {
                let f = f.expect("every answer arrived");
                if f.header.op == op::ERROR {
                    return Err(server_error(&f));
                }
                native::from_body::<PubAck>(&f.body).map_err(|e| Error::Protocol(e.0))
            })
            .collect())
    }

    pub async fn subscribe(&self, subject: &str) -> Result<Subscription, Error> {
        self.queue_subscribe(subject, "").await
    }

    /// Subscribes as a member of `queue`: each message goes to one member of the group.
    pub async fn queue_subscribe(&self, subject: &str, queue: &str) -> Result<Subscription, Error> {
        let sid = self.inner.next_sid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.subs.lock().unwrap().insert(sid, tx);
        let mut body = Vec::new();
        Sub {
            sid,
            subject,
            queue,
        }
        .encode(&mut body);
        if let Err(e) = self.call(op::SUB, 0, body).await {
            self.inner.subs.lock().unwrap().remove(&sid);
            return Err(e);
        }
        Ok(Subscription {
            sid,
            rx,
            client: self.clone(),
        })
    }

    async fn inbox_sid(&self) -> Result<u32, Error> {
        self.inner
            .inbox_sid
            .get_or_try_init(|| async {
                let sid = self.inner.next_sid.fetch_add(1, Ordering::Relaxed);
                let mut body = Vec::new();
                let pattern = format!("{}.*", self.inner.inbox);
                Sub {
                    sid,
                    subject: &pattern,
                    queue: "",
                }
                .encode(&mut body);
                self.call(op::SUB, 0, body).await?;
                Ok::<u32, Error>(sid)
            })
            .await
            .copied()
    }

    /// Sends a request and waits up to `timeout` for the first reply.
    pub async fn request(
        &self,
        subject: &str,
        data: &[u8],
        timeout: Duration,
    ) -> Result<Message, Error> {
        self.inbox_sid().await?;
        let token = self
            .inner
            .next_token
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let reply = format!("{}.{token}", self.inner.inbox);
        let (tx, rx) = oneshot::channel();
        self.inner.replies.lock().unwrap().insert(token.clone(), tx);
        let opts = PublishOptions {
            reply: Some(reply),
            ..Default::default()
        };
        // With a correlation id the server answers NO_RESPONDERS if nobody listens.
        let corr = self.corr();
        let (etx, erx) = oneshot::channel();
        self.register(corr, Waiter::Once(etx))?;
        self.send_frame(pub_frame(0, corr, subject, data, &opts))?;
        let result = tokio::time::timeout(timeout, async {
            tokio::select! {
                m = rx => m.map_err(|_| Error::Closed),
                f = erx => match f {
                    Ok(f) => Err(server_error(&f)),
                    Err(_) => Err(Error::Closed),
                },
            }
        })
        .await;
        self.inner.replies.lock().unwrap().remove(&token);
        self.inner.waiters.lock().unwrap().remove(&corr);
        match result {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    }

    // ---- streams ----

    pub async fn add_stream(&self, config: StreamConfig) -> Result<StreamInfo, Error> {
        match self.admin(AdminRequest::StreamAdd(config)).await? {
            AdminResponse::Stream(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    pub async fn update_stream(&self, config: StreamConfig) -> Result<StreamInfo, Error> {
        match self.admin(AdminRequest::StreamUpdate(config)).await? {
            AdminResponse::Stream(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    /// Stream info; `subjects_filter` (e.g. `>`) adds per-subject counts.
    pub async fn stream_info(
        &self,
        name: &str,
        subjects_filter: &str,
    ) -> Result<StreamInfo, Error> {
        match self
            .admin(AdminRequest::StreamInfo {
                name: name.into(),
                subjects_filter: subjects_filter.into(),
            })
            .await?
        {
            AdminResponse::Stream(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    pub async fn streams(&self) -> Result<Vec<StreamInfo>, Error> {
        match self.admin(AdminRequest::StreamList).await? {
            AdminResponse::Streams(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_stream(&self, name: &str) -> Result<(), Error> {
        self.admin(AdminRequest::StreamDelete(name.into()))
            .await
            .map(|_| ())
    }

    /// Purges messages; returns how many were removed.
    pub async fn purge_stream(&self, name: &str, request: PurgeRequest) -> Result<u64, Error> {
        match self
            .admin(AdminRequest::StreamPurge {
                name: name.into(),
                request,
            })
            .await?
        {
            AdminResponse::Purged(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    pub async fn get_msg(&self, stream: &str, seq: u64) -> Result<StoredMsg, Error> {
        self.get(stream, seq, "").await
    }

    pub async fn get_last_msg(&self, stream: &str, subject: &str) -> Result<StoredMsg, Error> {
        self.get(stream, 0, subject).await
    }

    async fn get(&self, stream: &str, seq: u64, subject: &str) -> Result<StoredMsg, Error> {
        match self
            .admin(AdminRequest::StreamGet {
                name: stream.into(),
                seq,
                last_by_subject: subject.into(),
            })
            .await?
        {
            AdminResponse::Msg(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    // ---- consumers ----

    pub async fn add_consumer(
        &self,
        stream: &str,
        config: ConsumerConfig,
    ) -> Result<ConsumerInfo, Error> {
        match self
            .admin(AdminRequest::ConsumerAdd {
                stream: stream.into(),
                config,
            })
            .await?
        {
            AdminResponse::Consumer(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    pub async fn consumer_info(&self, stream: &str, name: &str) -> Result<ConsumerInfo, Error> {
        match self
            .admin(AdminRequest::ConsumerInfo {
                stream: stream.into(),
                name: name.into(),
            })
            .await?
        {
            AdminResponse::Consumer(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    pub async fn consumers(&self, stream: &str) -> Result<Vec<ConsumerInfo>, Error> {
        match self
            .admin(AdminRequest::ConsumerList(stream.into()))
            .await?
        {
            AdminResponse::Consumers(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_consumer(&self, stream: &str, name: &str) -> Result<(), Error> {
        self.admin(AdminRequest::ConsumerDelete {
            stream: stream.into(),
            name: name.into(),
        })
        .await
        .map(|_| ())
    }

    /// Pulls up to `opts.batch` messages from a pull consumer: returns as soon as at least one
    /// is available (with whatever else is there at that moment), or empty when `expires`
    /// passes (or at once with `no_wait`).
    pub async fn fetch(
        &self,
        stream: &str,
        consumer: &str,
        opts: FetchOptions,
    ) -> Result<Vec<Message>, Error> {
        let mut pull = self.pull(stream, consumer, &opts)?;
        let known: (Arc<str>, Arc<str>) = (stream.into(), consumer.into());
        let mut out = Vec::new();
        loop {
            let f = pull.rx.recv().await.ok_or(Error::Closed)?;
            match pull_step(self, f, &known)? {
                Step::Msg(m) => out.push(m),
                Step::End => return Ok(out),
                Step::Skip => {}
            }
        }
    }

    /// Reads a pull consumer as a stream of messages, the way a JetStream client's
    /// `messages()` does: `opts.pulls` pull requests of `opts.batch` messages stay outstanding
    /// at the server, and each one answered is replaced as soon as its messages have been
    /// handed out, so the server prepares the next batch while this one is processed.
    /// Messages come in the order the server assigned them to the pulls. At most
    /// `pulls × batch` messages are buffered here.
    pub fn messages(
        &self,
        stream: &str,
        consumer: &str,
        opts: MessagesOptions,
    ) -> Result<Messages, Error> {
        if opts.batch == 0 || opts.pulls == 0 {
            return Err(Error::Protocol(
                "messages: batch and pulls must be at least 1".into(),
            ));
        }
        let mut m = Messages {
            client: self.clone(),
            known: (stream.into(), consumer.into()),
            opts,
            pulls: std::collections::VecDeque::new(),
            ended: false,
        };
        m.refill()?;
        Ok(m)
    }

    /// Sends one pull request; its answers arrive on the returned [`Pull`].
    fn pull(&self, stream: &str, consumer: &str, opts: &FetchOptions) -> Result<Pull, Error> {
        let corr = self.corr();
        let (tx, rx) = mpsc::unbounded_channel();
        self.register(corr, Waiter::Stream(tx))?;
        // Made first: if the send fails, dropping it unregisters the waiter.
        let pull = Pull {
            client: self.clone(),
            corr,
            rx,
            stash: std::collections::VecDeque::new(),
        };
        let body = native::to_body(&FetchRequest {
            stream: stream.into(),
            consumer: consumer.into(),
            batch: opts.batch,
            max_bytes: opts.max_bytes,
            expires_ms: opts.expires.as_millis() as u64,
            no_wait: opts.no_wait,
        });
        self.send(op::FETCH, 0, corr, body)?;
        Ok(pull)
    }

    /// Round trip to the server.
    pub async fn ping(&self) -> Result<(), Error> {
        self.call(op::PING, 0, Vec::new()).await.map(|_| ())
    }
}

struct FrameOut {
    body: Bytes,
}

fn unexpected(r: AdminResponse) -> Error {
    Error::Protocol(format!("unexpected answer {r:?}"))
}

/// One frame of a request: header and body in one buffer.
fn frame_of(op: u8, flags: u8, corr: u32, body: &[u8]) -> Vec<u8> {
    let h = Header {
        op,
        flags,
        status: 0,
        corr,
    };
    native::frame(h, body)
}

/// A PUB frame, its body encoded in place after the header (one buffer per publish).
fn pub_frame(flags: u8, corr: u32, subject: &str, data: &[u8], opts: &PublishOptions) -> Vec<u8> {
    let mut out = Vec::with_capacity(pub_frame_capacity(subject, data, opts));
    put_pub_frame(&mut out, flags, corr, subject, data, opts);
    out
}

/// Room for one PUB frame without headers (one allocation per frame or batch buffer).
fn pub_frame_capacity(subject: &str, data: &[u8], opts: &PublishOptions) -> usize {
    let reply = opts.reply.as_deref().unwrap_or("");
    let batch_max = batch::HEADER_BYTES + 32 + subject.len() + data.len();
    4 + native::HEADER_BYTES + 4 + subject.len() + reply.len() + batch_max
}

/// Appends a PUB frame to `out`: frame header, PUB body (subject, reply) and the batch,
/// written once.
fn put_pub_frame(
    out: &mut Vec<u8>,
    flags: u8,
    corr: u32,
    subject: &str,
    data: &[u8],
    opts: &PublishOptions,
) {
    let mut headers = opts.headers.clone();
    if let Some(id) = &opts.msg_id {
        headers.push((MSG_ID_HEADER.into(), id.clone().into_bytes()));
    }
    if let Some(s) = opts.expected_last_seq {
        headers.push((EXPECTED_LAST_SEQ_HEADER.into(), s.to_string().into_bytes()));
    }
    let reply = opts.reply.as_deref().unwrap_or("");
    let h = Header {
        op: op::PUB,
        flags,
        status: 0,
        corr,
    };
    let at = native::begin_frame(out, h);
    Pub {
        subject,
        reply,
        batch: &[],
    }
    .encode(out);
    put_message_batch(out, subject, &headers, data);
    native::finish_frame(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Accepts at most `chunk` bytes per call, from the first buffers only.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
    }

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.chunk - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.chunk {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_are_written_whole_and_in_order_across_partial_writes() {
        let frames: Vec<Vec<u8>> = (0..50u8)
            .map(|i| vec![i; (i as usize * 37) % 300])
            .collect();
        let want: Vec<u8> = frames.concat();
        for chunk in [1, 7, 64, 299, 300, 301, 100_000] {
            let mut w = Trickle {
                out: Vec::new(),
                chunk,
            };
            write_frames(&mut w, &frames).await.unwrap();
            assert_eq!(w.out, want, "chunk {chunk}");
        }
    }
}
