//! Native-protocol connections: framing, the HELLO exchange, and dispatch. Requests are
//! pipelined: each is answered under its correlation id, possibly out of order. Publishes of
//! one connection are registered in order (their stream appends and subscriber deliveries
//! keep the publisher's order); their acknowledgements may come back in any order.
//!
//! A malformed frame gets an ERROR frame and closes the connection; nothing a peer sends can
//! crash the shard.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use sluice_core::native::{
    self, flag, op, status, Ack, AdminRequest, FetchRequest, FrameError, Header, Hello, HelloOk,
    Pub, PubAck, Sub,
};
use sluice_storage::notify::Notify;
use sluice_storage::wall_clock_ms;

use super::pubsub::{self, ConnOut, SubKey};
use super::streams::{Published, Refusal};
use crate::broker::metadata::Metadata;
use crate::broker::shard::Shard;

/// Bytes one read of a connection asks for.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Requests of one connection being handled at once before reading pauses.
const IN_FLIGHT_MAX: usize = 4096;
/// Outgoing frames at least this large are written as they are, not copied into the buffer
/// that coalesces small ones.
const WRITE_DIRECT_BYTES: usize = 64 << 10;
/// How much the writer coalesces into one write.
const WRITE_COALESCE_BYTES: usize = 256 << 10;
/// Longest a pull request may wait.
const FETCH_EXPIRES_MAX_MS: u64 = 60 * 60 * 1000;
const FETCH_EXPIRES_DEFAULT_MS: u64 = 30_000;

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    crate::broker::shard::accept_loop(shard, listener, "native", |s, stream| async move {
        serve(&s, stream).await
    })
    .await
}

/// A connection's subscription: its pattern and queue group.
type ConnSub = (String, Option<Arc<str>>);

struct Conn {
    id: u64,
    shard: Rc<Shard>,
    out: Rc<ConnOut>,
    /// (sid → pattern, queue) of this connection's subscriptions.
    subs: RefCell<std::collections::HashMap<u32, ConnSub>>,
    in_flight: Cell<usize>,
    settled: Notify,
}

/// The header of an answer frame.
fn answer_header(op: u8, status: u16, corr: u32) -> Header {
    Header {
        op,
        flags: 0,
        status,
        corr,
    }
}

fn frame(op: u8, status: u16, corr: u32, body: &[u8]) -> Vec<u8> {
    native::frame(answer_header(op, status, corr), body)
}

/// Appends one answer frame to `out`.
fn push_frame(out: &mut Vec<u8>, op: u8, status: u16, corr: u32, body: &[u8]) {
    native::encode_frame(out, answer_header(op, status, corr), body);
}

/// Consecutive stream publishes of one connection to one stream, stored by one task
/// ([`super::streams::store_many`]): a pipelining publisher's frames read in one go cost one
/// task, one durability wait and one write of acknowledgements, not one of each per message.
#[derive(Default)]
struct PubRun {
    /// What the previous publish's subject resolved to (publishers mostly repeat subjects).
    memo: SubjectMemo,
    stream: String,
    msgs: Vec<Published>,
    /// Correlation id to acknowledge each message under (0: no answer wanted).
    acks: Vec<u32>,
}

/// Publishes a run takes before it is stored.
const PUB_RUN_MAX: usize = 1024;
/// Room reserved per acknowledgement when a run's answers are encoded.
const PUB_ACK_FRAME_BYTES: usize = 64;

impl PubRun {
    fn push(&mut self, conn: &Rc<Conn>, stream: &str, msg: Published, ack: u32) {
        if self.stream != stream {
            self.flush(conn);
            self.stream.clear();
            self.stream.push_str(stream);
        }
        self.msgs.push(msg);
        self.acks.push(ack);
        if self.msgs.len() >= PUB_RUN_MAX {
            self.flush(conn);
        }
    }

    /// Starts storing the run (registered with the stream before the next frame is handled).
    fn flush(&mut self, conn: &Rc<Conn>) {
        if self.msgs.is_empty() {
            return;
        }
        // The next run starts with room for as many as this one had (no regrowth per run).
        let n = self.msgs.len();
        let msgs = std::mem::replace(&mut self.msgs, Vec::with_capacity(n));
        let acks = std::mem::replace(&mut self.acks, Vec::with_capacity(n));
        let name = self.stream.clone();
        spawn_n(conn, msgs.len(), async move |c: Rc<Conn>| {
            let answers = super::streams::store_many(&c.shard, name.clone(), msgs).await;
            let mut out = Vec::with_capacity(acks.len() * PUB_ACK_FRAME_BYTES);
            // One PubAck for the run, its sequence set per answer.
            let mut ack = PubAck {
                stream: name,
                seq: 0,
                duplicate: false,
            };
            for (corr, answer) in acks.into_iter().zip(answers) {
                match (corr, answer) {
                    (0, _) => {}
                    (corr, Ok(stored)) => {
                        ack.seq = stored.seq;
                        ack.duplicate = stored.duplicate;
                        let at = native::begin_frame(&mut out, answer_header(op::PUB_ACK, 0, corr));
                        native::append_body(&ack, &mut out);
                        native::finish_frame(&mut out, at);
                    }
                    (corr, Err((code, msg))) => {
                        push_frame(&mut out, op::ERROR, code, corr, msg.as_bytes())
                    }
                }
            }
            if !out.is_empty() {
                c.out.send(out);
            }
        });
    }
}

/// Recent subjects' checks, remembered while nothing they depend on changes: each subject is a
/// valid literal, no subscription matches it (under `subs_version`), and the stream that
/// captures it (under the metadata snapshot `meta`). Publishers mostly cycle through a few
/// subjects; one with a new subject per message only refills this now and then.
#[derive(Default)]
struct SubjectMemo {
    subs_version: u64,
    meta: Option<Arc<Metadata>>,
    subjects: Vec<(Box<str>, Option<Rc<str>>)>,
}

/// Subjects a connection's memo holds before it starts over.
const SUBJECT_MEMO_MAX: usize = 32;

impl SubjectMemo {
    fn current(&self, subs_version: u64, meta: &Arc<Metadata>) -> bool {
        self.subs_version == subs_version
            && self.meta.as_ref().is_some_and(|m| Arc::ptr_eq(m, meta))
    }

    /// The stream capturing `subject` (or none), if the memo answers for it.
    fn get(
        &self,
        subject: &str,
        subs_version: u64,
        meta: &Arc<Metadata>,
    ) -> Option<Option<Rc<str>>> {
        if !self.current(subs_version, meta) {
            return None;
        }
        let (_, stream) = self.subjects.iter().find(|(s, _)| &**s == subject)?;
        Some(stream.clone())
    }

    fn set(
        &mut self,
        subject: &str,
        subs_version: u64,
        meta: &Arc<Metadata>,
        stream: Option<&str>,
    ) {
        if !self.current(subs_version, meta) || self.subjects.len() >= SUBJECT_MEMO_MAX {
            self.subjects.clear();
            self.subs_version = subs_version;
            self.meta = Some(meta.clone());
        }
        self.subjects.push((subject.into(), stream.map(Rc::from)));
    }
}

impl Conn {
    fn reply(&self, op: u8, corr: u32, body: &[u8]) {
        self.out.send(frame(op, 0, corr, body));
    }
    fn error(&self, corr: u32, (code, msg): Refusal) {
        self.out.send(frame(op::ERROR, code, corr, msg.as_bytes()));
    }
}

async fn serve(shard: &Rc<Shard>, stream: TcpStream) -> std::io::Result<()> {
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (tx, mut rx) = futures::channel::mpsc::unbounded::<Vec<u8>>();
    let out = Rc::new(ConnOut {
        tx,
        queued: Cell::new(0),
        slow: Cell::new(false),
    });
    let conn = Rc::new(Conn {
        id: shard.native.new_conn_id(shard.id),
        shard: shard.clone(),
        out: out.clone(),
        subs: RefCell::new(Default::default()),
        in_flight: Cell::new(0),
        settled: Notify::default(),
    });
    shard.native.conns.borrow_mut().insert(conn.id, out.clone());
    let writer_out = out.clone();
    let write_task = glommio::spawn_local(async move {
        let mut batch = Vec::with_capacity(64 << 10);
        // A large frame taken while coalescing, written on its own next.
        let mut next: Option<Vec<u8>> = None;
        loop {
            let f = match next.take() {
                Some(f) => f,
                None => match rx.next().await {
                    Some(f) => f,
                    None => break,
                },
            };
            let mut n = f.len();
            let r = if f.len() >= WRITE_DIRECT_BYTES {
                // A fetch's frames (a megabyte, say) go out as they are: copying them into
                // the coalescing buffer was a quarter of the broker's CPU in a native consume.
                writer.write_all(&f).await
            } else {
                // Coalesce the small frames queued behind it (acks, messages) into one write.
                batch.clear();
                batch.extend_from_slice(&f);
                while batch.len() < WRITE_COALESCE_BYTES {
                    match rx.try_recv() {
                        Ok(more) if more.len() >= WRITE_DIRECT_BYTES => {
                            next = Some(more);
                            break;
                        }
                        Ok(more) => {
                            n += more.len();
                            batch.extend_from_slice(&more);
                        }
                        _ => break,
                    }
                }
                writer.write_all(&batch).await
            };
            writer_out
                .queued
                .set(writer_out.queued.get().saturating_sub(n));
            r?;
        }
        writer.flush().await?;
        writer.close().await
    });
    let result = read_loop(&conn, &mut reader).await;
    // Cleanup: subscriptions everywhere, then the connection.
    let subs: Vec<(u32, ConnSub)> = conn.subs.borrow_mut().drain().collect();
    for (sid, (pattern, queue)) in subs {
        let key = SubKey {
            shard: shard.id,
            conn: conn.id,
            sid,
            queue,
        };
        pubsub::broadcast_sub(shard, pattern, key, false).await;
    }
    shard.native.conns.borrow_mut().remove(&conn.id);
    // Let in-flight requests answer, then close the writer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while conn.in_flight.get() > 0 && std::time::Instant::now() < deadline {
        let settled = conn.settled.notified();
        futures_lite::future::or(settled, async {
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await
        })
        .await;
    }
    out.tx.close_channel();
    drop(conn);
    let _ = write_task.await;
    result
}

async fn read_loop(
    conn: &Rc<Conn>,
    reader: &mut (impl futures_lite::AsyncRead + Unpin),
) -> std::io::Result<()> {
    let shard = &conn.shard;
    let max = shard.shared.config.native_frame_bytes_max;
    let mut rb = super::read_buf::ReadBuffer::default();
    let mut hello = false;
    let mut run = PubRun::default();
    loop {
        // Frames already buffered first.
        loop {
            let split = native::split_frame(rb.filled(), max);
            let (h, body) = match split {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(FrameError(m)) => {
                    run.flush(conn);
                    conn.error(0, (status::BAD_REQUEST, m.clone()));
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, m));
                }
            };
            let frame = rb.filled().split_to(body.end).freeze();
            let body = frame.slice(body);
            if !hello {
                if h.op != op::HELLO {
                    conn.error(
                        h.corr,
                        (status::BAD_REQUEST, "the first frame must be HELLO".into()),
                    );
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "no HELLO",
                    ));
                }
                let ok = match native::from_body::<Hello>(&body) {
                    Ok(hi)
                        if hi.version_min <= native::VERSION_MAX
                            && hi.version_max >= native::VERSION_MIN =>
                    {
                        conn.reply(
                            op::HELLO_OK,
                            h.corr,
                            &native::to_body(&HelloOk {
                                version: hi.version_max.min(native::VERSION_MAX),
                                server: format!("sluice {}", env!("CARGO_PKG_VERSION")),
                                frame_bytes_max: max as u32,
                            }),
                        );
                        true
                    }
                    Ok(hi) => {
                        conn.out.send(frame_err(
                            h.corr,
                            status::UNSUPPORTED_VERSION,
                            &format!(
                                "protocol versions {}..={} not supported (server: {}..={})",
                                hi.version_min,
                                hi.version_max,
                                native::VERSION_MIN,
                                native::VERSION_MAX
                            ),
                        ));
                        false
                    }
                    Err(e) => {
                        conn.error(h.corr, (status::BAD_REQUEST, e.0));
                        false
                    }
                };
                if !ok {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "bad HELLO",
                    ));
                }
                hello = true;
                continue;
            }
            if h.op != op::PUB {
                run.flush(conn);
            }
            if let Err(m) = dispatch(conn, h, body, &mut run) {
                run.flush(conn);
                conn.error(h.corr, (status::BAD_REQUEST, m.clone()));
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, m));
            }
            while conn.in_flight.get() >= IN_FLIGHT_MAX {
                conn.settled.notified().await;
            }
        }
        // Everything read is handled before waiting for more.
        run.flush(conn);
        if conn.out.slow.get() {
            return Err(std::io::Error::other(
                "slow consumer: too many bytes queued",
            ));
        }
        if conn.in_flight.get() == 0 {
            rb.trim(super::read_buf::PARKED_IDLE);
        }
        let stop = shard.stop.notified();
        if shard.is_stopping() {
            return Ok(());
        }
        // Read straight into the buffer frames are split off (no intermediate chunk, no
        // zeroing: see ReadBuffer).
        let spare = rb.spare(READ_CHUNK_BYTES);
        let n = futures_lite::future::or(async { Some(reader.read(spare).await) }, async {
            stop.await;
            None
        })
        .await;
        let n = match n {
            None => return Ok(()),
            Some(Err(e)) => return Err(e),
            Some(Ok(0)) => return Ok(()),
            Some(Ok(n)) => n,
        };
        rb.commit(n);
    }
}

fn frame_err(corr: u32, code: u16, msg: &str) -> Vec<u8> {
    frame(op::ERROR, code, corr, msg.as_bytes())
}

/// Starts handling one frame. Errors are protocol violations that close the connection.
fn dispatch(conn: &Rc<Conn>, h: Header, body: Bytes, run: &mut PubRun) -> Result<(), String> {
    match h.op {
        op::PING => {
            conn.reply(op::PONG, h.corr, &[]);
            Ok(())
        }
        op::PUB => publish(conn, h, body, run),
        op::SUB => {
            let sub = Sub::decode(&body).map_err(|e| e.0)?;
            if let Err(e) = sluice_core::subject::validate_pattern(sub.subject) {
                conn.error(h.corr, (status::BAD_REQUEST, e.0));
                return Ok(());
            }
            let queue: Option<Arc<str>> = (!sub.queue.is_empty()).then(|| sub.queue.into());
            if conn.subs.borrow().contains_key(&sub.sid) {
                conn.error(
                    h.corr,
                    (status::CONFLICT, format!("sid {} is in use", sub.sid)),
                );
                return Ok(());
            }
            conn.subs
                .borrow_mut()
                .insert(sub.sid, (sub.subject.to_string(), queue.clone()));
            let key = SubKey {
                shard: conn.shard.id,
                conn: conn.id,
                sid: sub.sid,
                queue,
            };
            let pattern = sub.subject.to_string();
            spawn(conn, async move |c: Rc<Conn>| {
                pubsub::broadcast_sub(&c.shard, pattern, key, true).await;
                c.reply(op::OK, h.corr, &[]);
            });
            Ok(())
        }
        op::UNSUB => {
            let mut r = native::Reader::new(&body);
            let sid = r.u32().map_err(|e| e.0)?;
            r.done().map_err(|e| e.0)?;
            let Some((pattern, queue)) = conn.subs.borrow_mut().remove(&sid) else {
                conn.error(
                    h.corr,
                    (status::NOT_FOUND, format!("no subscription {sid}")),
                );
                return Ok(());
            };
            let key = SubKey {
                shard: conn.shard.id,
                conn: conn.id,
                sid,
                queue,
            };
            spawn(conn, async move |c: Rc<Conn>| {
                pubsub::broadcast_sub(&c.shard, pattern, key, false).await;
                c.reply(op::OK, h.corr, &[]);
            });
            Ok(())
        }
        op::ADMIN => {
            let req = native::from_body::<AdminRequest>(&body).map_err(|e| e.0)?;
            spawn(conn, async move |c: Rc<Conn>| {
                match super::admin::handle(&c.shard, req).await {
                    Ok(resp) => c.reply(op::ADMIN_OK, h.corr, &native::to_body(&resp)),
                    Err(e) => c.error(h.corr, e),
                }
            });
            Ok(())
        }
        op::FETCH => {
            let req = native::from_body::<FetchRequest>(&body).map_err(|e| e.0)?;
            spawn(conn, async move |c: Rc<Conn>| fetch(&c, h.corr, req).await);
            Ok(())
        }
        op::ACK => {
            let ack = Ack::decode(&body).map_err(|e| e.0)?;
            let (stream, consumer, seq, kind) = (
                ack.stream.to_string(),
                ack.consumer.to_string(),
                ack.stream_seq,
                ack.kind,
            );
            spawn(conn, async move |c: Rc<Conn>| {
                let owner = c.shard.owner(&stream, 0);
                let r = c
                    .shard
                    .submit_to(owner, move |s| {
                        Box::pin(async move {
                            let home = s
                                .native
                                .stream(&stream)
                                .ok_or((status::NOT_FOUND, format!("stream {stream} not found")))?;
                            home.ack(&consumer, seq, kind)
                        })
                    })
                    .await;
                if h.corr != 0 {
                    match r {
                        Ok(()) => c.reply(op::OK, h.corr, &[]),
                        Err(e) => c.error(h.corr, e),
                    }
                }
            });
            Ok(())
        }
        other => Err(format!("unknown op {other}")),
    }
}

/// Runs a request's handler as its own task, counted against the connection's in-flight cap.
fn spawn<F>(conn: &Rc<Conn>, f: impl FnOnce(Rc<Conn>) -> F + 'static)
where
    F: std::future::Future<Output = ()> + 'static,
{
    spawn_n(conn, 1, f)
}

/// [`spawn`] of a task that handles `n` requests.
fn spawn_n<F>(conn: &Rc<Conn>, n: usize, f: impl FnOnce(Rc<Conn>) -> F + 'static)
where
    F: std::future::Future<Output = ()> + 'static,
{
    conn.in_flight.set(conn.in_flight.get() + n);
    let c = conn.clone();
    glommio::spawn_local(async move {
        f(c.clone()).await;
        c.in_flight.set(c.in_flight.get() - n);
        c.settled.notify_all();
    })
    .detach();
}

fn publish(conn: &Rc<Conn>, h: Header, body: Bytes, run: &mut PubRun) -> Result<(), String> {
    let p = Pub::decode(&body).map_err(|e| e.0)?;
    let (subject, reply) = (p.subject, p.reply);
    let batch_start = body.len() - p.batch.len();
    let shard = &conn.shard;
    let meta = shard.metadata();
    let subs_version = shard.native.subs_version.get();
    // The common case: the subject of the previous publish, still without subscribers.
    if reply.is_empty() {
        if let Some(stream) = run.memo.get(subject, subs_version, &meta) {
            let batch = body.slice(batch_start..);
            store_or_refuse(
                conn,
                run,
                h,
                &body,
                subject,
                batch,
                stream.as_deref(),
                false,
            );
            return Ok(());
        }
    }
    if let Err(e) = sluice_core::subject::validate_literal(subject) {
        if h.corr != 0 {
            conn.error(h.corr, (status::BAD_REQUEST, e.0));
        }
        return Ok(());
    }
    if let Some(rest) = subject.strip_prefix("$FC.") {
        // A push consumer's answer to flow control: $FC.<stream>.<consumer>.<token>.
        let parts: Vec<&str> = rest.split('.').collect();
        if let [stream, consumer, token] = parts[..] {
            if let Ok(token) = token.parse::<u64>() {
                let (stream, consumer) = (stream.to_string(), consumer.to_string());
                let owner = conn.shard.owner(&stream, 0);
                conn.shard.send_to(owner, move |s| {
                    Box::pin(async move {
                        if let Some(h) = s.native.stream(&stream) {
                            h.flow_control_answered(&consumer, token);
                        }
                    })
                });
            }
        }
        return Ok(());
    }
    let batch = body.slice(batch_start..);
    let delivered = pubsub::route(shard, subject, reply, None, batch.clone());
    let stream = meta.stream_for(subject).map(|s| s.config.name.as_str());
    if delivered == 0 && !subject.starts_with('$') {
        run.memo.set(subject, subs_version, &meta, stream);
    }
    let unanswered_request = !reply.is_empty() && delivered == 0;
    store_or_refuse(
        conn,
        run,
        h,
        &body,
        subject,
        batch,
        stream,
        unanswered_request,
    );
    Ok(())
}

/// Adds a publish to `stream`'s run; with no stream, answers NO_RESPONDERS when the publisher
/// asked for an ack, or sent a request no subscriber received (`unanswered_request`).
#[allow(clippy::too_many_arguments)]
fn store_or_refuse(
    conn: &Rc<Conn>,
    run: &mut PubRun,
    h: Header,
    body: &Bytes,
    subject: &str,
    batch: Bytes,
    stream: Option<&str>,
    unanswered_request: bool,
) {
    match stream {
        Some(name) => {
            let want_ack = h.flags & flag::ACK != 0 && h.corr != 0;
            // Registered with the stream in arrival order: the run is stored before any other
            // request of this connection is handled, and before the next read.
            let msg = Published::in_frame(body, subject, batch);
            run.push(conn, name, msg, if want_ack { h.corr } else { 0 });
        }
        None => {
            if h.corr != 0 && (h.flags & flag::ACK != 0 || unanswered_request) {
                conn.error(
                    h.corr,
                    (
                        status::NO_RESPONDERS,
                        format!("no stream or subscriber for subject {subject}"),
                    ),
                );
            }
        }
    }
}

async fn fetch(conn: &Rc<Conn>, corr: u32, req: FetchRequest) {
    let expires = match req.expires_ms {
        0 => FETCH_EXPIRES_DEFAULT_MS,
        e => e.min(FETCH_EXPIRES_MAX_MS),
    };
    let deadline = wall_clock_ms() + expires;
    let want = req.batch.max(1);
    let mut sent = 0u32;
    let mut bytes = 0u64;
    let owner = conn.shard.owner(&req.stream, 0);
    loop {
        let mut r = req.clone();
        r.batch = want - sent;
        r.max_bytes = if req.max_bytes > 0 {
            req.max_bytes.saturating_sub(bytes).max(1)
        } else {
            0
        };
        // Once something was sent, only what is there right now is added, and only while
        // no other pull of the consumer waits (see `StreamHome::fetch`).
        let continued = sent > 0;
        r.no_wait = req.no_wait || continued;
        let got = conn
            .shard
            .submit_to(owner, move |s| {
                Box::pin(async move {
                    let home = s
                        .native
                        .stream(&r.stream)
                        .ok_or((status::NOT_FOUND, format!("stream {} not found", r.stream)))?;
                    let got = home.fetch(&s, &r, deadline, continued).await?;
                    Ok::<_, Refusal>(got)
                })
            })
            .await;
        match got {
            Err(e) => {
                if sent == 0 {
                    conn.error(corr, e);
                    return;
                }
                break;
            }
            Ok(msgs) => {
                if msgs.is_empty() {
                    break;
                }
                // One buffer of MSG frames per batch taken: one queue entry and one write.
                let frames: Vec<native::Msg<'_>> = msgs
                    .iter()
                    .map(|m| native::Msg {
                        sid: 0,
                        subject: &m.subject,
                        reply: "",
                        meta: Some(m.meta.as_ref()),
                        batch: &m.batch,
                    })
                    .collect();
                let mut out = Vec::with_capacity(frames.iter().map(|f| f.frame_len()).sum());
                for f in &frames {
                    bytes += f.batch.len() as u64;
                    sent += 1;
                    f.encode_frame(&mut out, corr);
                }
                conn.out.send(out);
                if sent >= want || (req.max_bytes > 0 && bytes >= req.max_bytes) {
                    break;
                }
                if wall_clock_ms() >= deadline {
                    break;
                }
            }
        }
    }
    let code = if sent > 0 {
        status::OK
    } else if req.no_wait {
        status::NOT_FOUND
    } else {
        status::TIMEOUT
    };
    conn.out
        .send(frame(op::FETCH_END, code, corr, &sent.to_be_bytes()));
}
