//! Core publish/subscribe across shards. Every shard keeps the whole subscription table (a
//! [`Sublist`]); SUB and UNSUB are broadcast to all shards, which is rare, so that a publish —
//! frequent — is routed by the shard that received it straight to the shards holding matching
//! subscriptions, choosing one member per queue group.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::mpsc;
use sluice_core::native::{self, MsgMeta};
use sluice_core::subject::Sublist;

use crate::broker::shard::Shard;

/// One subscription, as every shard knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubKey {
    pub shard: usize,
    pub conn: u64,
    pub sid: u32,
    pub queue: Option<Arc<str>>,
}

/// The sending side of a connection: frames queue here and its writer task drains them.
pub struct ConnOut {
    pub tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes queued and not yet written; a consumer that lets this grow past
    /// [`SLOW_CONSUMER_BYTES`] is disconnected (as NATS does), never allowed to exhaust memory.
    pub queued: Cell<usize>,
    pub slow: Cell<bool>,
}

pub const SLOW_CONSUMER_BYTES: usize = 64 << 20;

impl ConnOut {
    pub fn send(&self, frame: Vec<u8>) -> bool {
        if self.slow.get() {
            return false;
        }
        if self.queued.get() + frame.len() > SLOW_CONSUMER_BYTES {
            self.slow.set(true);
            self.tx.close_channel();
            return false;
        }
        self.queued.set(self.queued.get() + frame.len());
        self.tx.unbounded_send(frame).is_ok()
    }
}

/// Per-shard native-protocol state.
#[derive(Default)]
pub struct NativeShard {
    pub subs: RefCell<Sublist<SubKey>>,
    pub conns: RefCell<HashMap<u64, Rc<ConnOut>>>,
    pub streams: RefCell<HashMap<String, Rc<super::streams::StreamHome>>>,
    next_conn: Cell<u64>,
    round_robin: Cell<u64>,
    /// Bumped whenever `subs` changes (lets a publisher remember that a subject has no
    /// subscribers).
    pub subs_version: Cell<u64>,
}

impl NativeShard {
    pub fn new_conn_id(&self, shard: usize) -> u64 {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        ((shard as u64) << 48) | n
    }

    pub fn stream(&self, name: &str) -> Option<Rc<super::streams::StreamHome>> {
        self.streams.borrow().get(name).cloned()
    }
}

/// Adds (or removes) a subscription on every shard; returns once all know it.
pub async fn broadcast_sub(shard: &Rc<Shard>, pattern: String, key: SubKey, add: bool) {
    let waits = (0..shard.shards()).map(|target| {
        let (pattern, key) = (pattern.clone(), key.clone());
        shard.submit_to(target, move |s| {
            Box::pin(async move {
                let mut subs = s.native.subs.borrow_mut();
                s.native.subs_version.set(s.native.subs_version.get() + 1);
                if add {
                    subs.insert(&pattern, key);
                } else {
                    subs.remove(&pattern, &key);
                }
            })
        })
    });
    futures::future::join_all(waits).await;
}

/// Picks the subscriptions a message on `subject` goes to: every plain one, one per queue
/// group.
pub fn targets(shard: &Shard, subject: &str) -> Vec<SubKey> {
    let matched = shard.native.subs.borrow().matching(subject);
    if matched.iter().all(|k| k.queue.is_none()) {
        return matched;
    }
    let mut out = Vec::new();
    let mut groups: BTreeMap<Arc<str>, Vec<SubKey>> = BTreeMap::new();
    for k in matched {
        match &k.queue {
            None => out.push(k),
            Some(q) => groups.entry(q.clone()).or_default().push(k),
        }
    }
    for (_, members) in groups {
        let n = shard.native.round_robin.get();
        shard.native.round_robin.set(n.wrapping_add(1));
        out.push(members[(n as usize) % members.len()].clone());
    }
    out
}

/// Encodes one MSG frame.
pub fn msg_frame(
    corr: u32,
    sid: u32,
    subject: &str,
    reply: &str,
    meta: Option<&MsgMeta>,
    batch: &[u8],
) -> Vec<u8> {
    let m = native::Msg {
        sid,
        subject,
        reply,
        meta: meta.map(MsgMeta::as_ref),
        batch,
    };
    let mut out = Vec::with_capacity(m.frame_len());
    m.encode_frame(&mut out, corr);
    out
}

/// Delivers a message to `subs` on this shard.
pub fn deliver_local(
    shard: &Shard,
    subs: &[(u64, u32)],
    subject: &str,
    reply: &str,
    meta: Option<&MsgMeta>,
    batch: &[u8],
) -> usize {
    let conns = shard.native.conns.borrow();
    let mut n = 0;
    for (conn, sid) in subs {
        if let Some(c) = conns.get(conn) {
            if c.send(msg_frame(0, *sid, subject, reply, meta, batch)) {
                n += 1;
            }
        }
    }
    n
}

/// Routes a message to its subscribers on every shard; returns how many subscriptions it
/// was sent to. Remote deliveries are queued on the target shard in order, not awaited.
pub fn route(
    shard: &Rc<Shard>,
    subject: &str,
    reply: &str,
    meta: Option<MsgMeta>,
    batch: Bytes,
) -> usize {
    route_to(shard, targets(shard, subject), subject, reply, meta, batch)
}

pub fn route_to(
    shard: &Rc<Shard>,
    to: Vec<SubKey>,
    subject: &str,
    reply: &str,
    meta: Option<MsgMeta>,
    batch: Bytes,
) -> usize {
    let count = to.len();
    let mut by_shard: BTreeMap<usize, Vec<(u64, u32)>> = BTreeMap::new();
    for k in to {
        by_shard.entry(k.shard).or_default().push((k.conn, k.sid));
    }
    for (target, subs) in by_shard {
        if target == shard.id {
            deliver_local(shard, &subs, subject, reply, meta.as_ref(), &batch);
        } else {
            let (subject, reply, meta, batch) = (
                subject.to_string(),
                reply.to_string(),
                meta.clone(),
                batch.clone(),
            );
            shard.send_to(target, move |s| {
                Box::pin(async move {
                    deliver_local(&s, &subs, &subject, &reply, meta.as_ref(), &batch);
                })
            });
        }
    }
    count
}
