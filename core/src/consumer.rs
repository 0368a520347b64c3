//! A JetStream-style consumer: a named server-side cursor over a stream with per-message
//! acknowledgement, as a pure state machine. It decides what to deliver next (due
//! redeliveries first, then new messages matching the filters), tracks what is pending
//! acknowledgement, and applies acks, naks (with delay), terms and in-progress signals.
//! Time comes in as `now_ms`; the stream's index comes in as `&Stream`.
//!
//! JetStream's rules, plus one Sluice adds: a message that reaches `max_deliver` is reported
//! as *dead* so the broker can move it to the consumer's dead-letter stream.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::native::{
    AckKind, AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, SequencePair,
};
use crate::stream::Stream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    pub consumer_seq: u64,
    pub deliveries: u32,
    /// When it is due for redelivery if not acknowledged.
    pub deadline_ms: i64,
    /// Waiting for redelivery (its ack_wait ran out, or it was nak'd).
    pub due: bool,
}

/// One delivery the broker should send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub stream_seq: u64,
    pub consumer_seq: u64,
    pub deliveries: u32,
    /// Messages still to deliver after this one (JetStream's `pending` in the ack reply).
    pub pending: u64,
}

/// What an acknowledgement changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckOutcome {
    /// Stream sequences this consumer is now done with (acked or terminated).
    pub done: Vec<u64>,
}

/// The durable part of a consumer (what a restart must not lose).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsumerSnapshot {
    pub next_seq: u64,
    pub delivered_consumer_seq: u64,
    pub delivered_stream_seq: u64,
    pub pending: Vec<(u64, Pending)>,
    pub last_per_subject: Vec<u64>,
}

#[derive(Debug)]
pub struct Consumer {
    pub stream: String,
    pub name: String,
    pub config: ConsumerConfig,
    pub created_ms: i64,
    /// Next stream sequence to consider for a first delivery.
    next_seq: u64,
    delivered_consumer_seq: u64,
    delivered_stream_seq: u64,
    pending: BTreeMap<u64, Pending>,
    /// Due redeliveries, ordered by stream sequence.
    due: BTreeSet<u64>,
    /// Deliver policy last_per_subject: these first.
    last_per_subject: VecDeque<u64>,
    /// Matching messages at or after `next_seq`, kept up to date by [`Consumer::on_stored`]
    /// and [`Consumer::on_removed`] so that every delivery can report it cheaply.
    pending_count: u64,
    pub last_active_ms: i64,
}

pub fn validate_config(c: &ConsumerConfig) -> Result<(), String> {
    if !c.durable_name.is_empty() {
        crate::stream::validate_name(&c.durable_name)
            .map_err(|e| e.replace("stream name", "consumer name"))?;
    }
    for f in &c.filter_subjects {
        crate::subject::validate_pattern(f).map_err(|e| e.0)?;
    }
    for (i, f) in c.filter_subjects.iter().enumerate() {
        for g in &c.filter_subjects[..i] {
            if crate::subject::overlaps(f, g) {
                return Err(format!("filter subjects '{g}' and '{f}' overlap"));
            }
        }
    }
    if c.ack_policy != AckPolicy::None && c.ack_wait_ms == 0 {
        return Err("ack_wait must be positive".into());
    }
    if c.max_deliver == 0 || c.max_deliver < -1 {
        return Err("max_deliver must be -1 (unlimited) or positive".into());
    }
    if c.max_ack_pending == 0 || c.max_ack_pending < -1 {
        return Err("max_ack_pending must be -1 (unlimited) or positive".into());
    }
    if !c.deliver_group.is_empty() && c.deliver_subject.is_empty() {
        return Err("a deliver group needs a deliver subject (push consumer)".into());
    }
    if !c.deliver_subject.is_empty() {
        crate::subject::validate_literal(&c.deliver_subject).map_err(|e| e.0)?;
    }
    if c.max_deliver > 0 && c.backoff_ms.len() as i64 > c.max_deliver {
        return Err("backoff has more entries than max_deliver".into());
    }
    Ok(())
}

/// How long a delivery may stay unacknowledged: `backoff[deliveries - 1]` (its last entry
/// beyond), or ack_wait.
fn ack_wait_for(config: &ConsumerConfig, deliveries: u32) -> i64 {
    if config.backoff_ms.is_empty() {
        return config.ack_wait_ms as i64;
    }
    let i = (deliveries as usize).saturating_sub(1);
    *config
        .backoff_ms
        .get(i)
        .or(config.backoff_ms.last())
        .expect("non-empty") as i64
}

impl Consumer {
    pub fn new(
        stream_name: &str,
        name: &str,
        config: ConsumerConfig,
        stream: &Stream,
        now_ms: i64,
    ) -> Consumer {
        let mut last_per_subject = VecDeque::new();
        let next_seq = match config.deliver_policy {
            DeliverPolicy::All => stream.first_seq(),
            DeliverPolicy::Last => {
                let filters = &config.filter_subjects;
                let last = if filters.is_empty() {
                    (!stream.is_empty()).then(|| stream.last_seq())
                } else {
                    stream.last_per_subject(filters).last().copied()
                };
                last.unwrap_or(stream.last_seq() + 1)
            }
            DeliverPolicy::New => stream.last_seq() + 1,
            DeliverPolicy::ByStartSequence(s) => s.max(1),
            DeliverPolicy::ByStartTime(t) => stream.seq_at_time(t),
            DeliverPolicy::LastPerSubject => {
                last_per_subject = stream.last_per_subject(&config.filter_subjects).into();
                stream.last_seq() + 1
            }
        };
        let pending_count = stream.count_matching(next_seq, &config.filter_subjects);
        Consumer {
            stream: stream_name.to_string(),
            name: name.to_string(),
            config,
            created_ms: now_ms,
            next_seq,
            delivered_consumer_seq: 0,
            delivered_stream_seq: 0,
            pending: BTreeMap::new(),
            due: BTreeSet::new(),
            last_per_subject,
            pending_count,
            last_active_ms: now_ms,
        }
    }

    /// A message was stored (and will become visible).
    pub fn on_stored(&mut self, seq: u64, subject: &str) {
        if seq >= self.next_seq && self.matches(subject) {
            self.pending_count += 1;
        }
    }

    /// A message was removed from the stream.
    pub fn on_removed(&mut self, seq: u64, subject: &str) {
        self.forget(seq);
        if seq >= self.next_seq && self.matches(subject) {
            self.pending_count = self.pending_count.saturating_sub(1);
        }
        if let Some(i) = self.last_per_subject.iter().position(|s| *s == seq) {
            self.last_per_subject.remove(i);
        }
    }

    /// Every message below `cut` was removed ([`Removal::Below`]); `stream` is the stream
    /// after the removal.
    ///
    /// [`Removal::Below`]: crate::stream::Removal::Below
    pub fn on_removed_below(&mut self, cut: u64, stream: &Stream) {
        self.pending = self.pending.split_off(&cut);
        self.due = self.due.split_off(&cut);
        self.last_per_subject.retain(|s| *s >= cut);
        self.pending_count =
            stream.count_matching_stored(self.next_seq, &self.config.filter_subjects);
    }

    pub fn snapshot(&self) -> ConsumerSnapshot {
        ConsumerSnapshot {
            next_seq: self.next_seq,
            delivered_consumer_seq: self.delivered_consumer_seq,
            delivered_stream_seq: self.delivered_stream_seq,
            pending: self.pending.iter().map(|(s, p)| (*s, *p)).collect(),
            last_per_subject: self.last_per_subject.iter().copied().collect(),
        }
    }

    /// Restores durable state; every pending message becomes due at once (its ack_wait may
    /// have run out while the broker was down; a redelivery is the safe side).
    pub fn restore(&mut self, snap: ConsumerSnapshot, stream: &Stream) {
        self.next_seq = snap.next_seq;
        self.delivered_consumer_seq = snap.delivered_consumer_seq;
        self.delivered_stream_seq = snap.delivered_stream_seq;
        self.pending = snap.pending.into_iter().collect();
        self.due = self.pending.keys().copied().collect();
        for p in self.pending.values_mut() {
            p.due = true;
        }
        self.last_per_subject = snap.last_per_subject.into();
        self.pending_count = stream.count_matching(self.next_seq, &self.config.filter_subjects);
    }

    fn matches(&self, subject: &str) -> bool {
        self.config.filter_subjects.is_empty()
            || self
                .config
                .filter_subjects
                .iter()
                .any(|f| crate::subject::matches(f, subject))
    }

    /// Is this consumer interested in (and not yet done with) `seq` on `subject`? (Interest
    /// retention keeps a message while any consumer is.)
    pub fn needs(&self, seq: u64, subject: &str) -> bool {
        self.matches(subject) && (seq >= self.next_seq || self.pending.contains_key(&seq))
    }

    pub fn num_ack_pending(&self) -> u64 {
        self.pending.len() as u64
    }

    fn ack_wait_for(&self, deliveries: u32) -> i64 {
        ack_wait_for(&self.config, deliveries)
    }

    /// Moves pending messages whose ack_wait ran out to the redelivery queue. Returns the next
    /// deadline, if any (when to call again).
    pub fn tick(&mut self, now_ms: i64) -> Option<i64> {
        let mut next: Option<i64> = None;
        for (seq, p) in self.pending.iter_mut() {
            if p.due {
                continue;
            }
            if p.deadline_ms <= now_ms {
                p.due = true;
                self.due.insert(*seq);
            } else {
                next = Some(next.map_or(p.deadline_ms, |n| n.min(p.deadline_ms)));
            }
        }
        next
    }

    /// The next message to send, if any may be sent now. Messages removed from the stream
    /// meanwhile are skipped (and forgotten). `dead` collects messages that reached
    /// max_deliver on the way (the broker dead-letters them).
    pub fn next(&mut self, now_ms: i64, stream: &Stream, dead: &mut Vec<u64>) -> Option<Delivery> {
        self.tick(now_ms);
        // Redeliveries first, in stream order.
        while let Some(seq) = self.due.iter().next().copied() {
            self.due.remove(&seq);
            let Some(p) = self.pending.get_mut(&seq) else {
                continue;
            };
            if !stream.contains(seq) {
                self.pending.remove(&seq);
                continue;
            }
            if self.config.max_deliver > 0 && p.deliveries as i64 >= self.config.max_deliver {
                self.pending.remove(&seq);
                dead.push(seq);
                continue;
            }
            p.deliveries += 1;
            p.due = false;
            self.delivered_consumer_seq += 1;
            p.consumer_seq = self.delivered_consumer_seq;
            let deliveries = p.deliveries;
            p.deadline_ms = now_ms + ack_wait_for(&self.config, deliveries);
            return Some(Delivery {
                stream_seq: seq,
                consumer_seq: self.delivered_consumer_seq,
                deliveries,
                pending: self.num_pending(stream),
            });
        }
        if self.config.ack_policy != AckPolicy::None
            && self.config.max_ack_pending > 0
            && self.pending.len() as i64 >= self.config.max_ack_pending
        {
            return None;
        }
        let seq = loop {
            if let Some(s) = self.last_per_subject.pop_front() {
                if stream.contains(s) {
                    break s;
                }
                continue;
            }
            let s = stream.next_matching(self.next_seq, &self.config.filter_subjects)?;
            self.next_seq = s + 1;
            self.pending_count = self.pending_count.saturating_sub(1);
            break s;
        };
        self.delivered_consumer_seq += 1;
        self.delivered_stream_seq = self.delivered_stream_seq.max(seq);
        if self.config.ack_policy != AckPolicy::None {
            self.pending.insert(
                seq,
                Pending {
                    consumer_seq: self.delivered_consumer_seq,
                    deliveries: 1,
                    deadline_ms: now_ms + self.ack_wait_for(1),
                    due: false,
                },
            );
        }
        Some(Delivery {
            stream_seq: seq,
            consumer_seq: self.delivered_consumer_seq,
            deliveries: 1,
            pending: self.num_pending(stream),
        })
    }

    /// Messages not yet delivered (matching the filters).
    pub fn num_pending(&self, _stream: &Stream) -> u64 {
        self.pending_count + self.last_per_subject.len() as u64
    }

    /// Is there something to deliver right now (for parked pull requests and push loops)?
    pub fn has_work(&mut self, now_ms: i64, stream: &Stream) -> bool {
        self.tick(now_ms);
        if !self.due.is_empty() {
            return true;
        }
        let stalled = self.config.ack_policy != AckPolicy::None
            && self.config.max_ack_pending > 0
            && self.pending.len() as i64 >= self.config.max_ack_pending;
        !stalled
            && (!self.last_per_subject.is_empty()
                || stream
                    .next_matching(self.next_seq, &self.config.filter_subjects)
                    .is_some())
    }

    pub fn ack(&mut self, now_ms: i64, seq: u64, kind: AckKind) -> AckOutcome {
        self.last_active_ms = now_ms;
        let mut out = AckOutcome::default();
        match kind {
            AckKind::Ack | AckKind::Term => {
                if self.config.ack_policy == AckPolicy::All && kind == AckKind::Ack {
                    let upto: Vec<u64> = self.pending.range(..=seq).map(|(s, _)| *s).collect();
                    for s in upto {
                        self.pending.remove(&s);
                        self.due.remove(&s);
                        out.done.push(s);
                    }
                } else if self.pending.remove(&seq).is_some() {
                    self.due.remove(&seq);
                    out.done.push(seq);
                }
            }
            AckKind::Nak { delay_ms } => {
                if let Some(p) = self.pending.get_mut(&seq) {
                    if delay_ms == 0 {
                        p.due = true;
                        self.due.insert(seq);
                    } else {
                        p.due = false;
                        self.due.remove(&seq);
                        p.deadline_ms = now_ms + delay_ms as i64;
                    }
                }
            }
            AckKind::InProgress => {
                if let Some(p) = self.pending.get_mut(&seq) {
                    if !p.due {
                        p.deadline_ms = now_ms + ack_wait_for(&self.config, p.deliveries);
                    }
                }
            }
        }
        out
    }

    /// Forgets messages the stream removed (purge, limits) so they are not redelivered.
    pub fn forget(&mut self, seq: u64) {
        self.pending.remove(&seq);
        self.due.remove(&seq);
    }

    pub fn info(&self, stream: &Stream, num_waiting: u64) -> ConsumerInfo {
        let (floor_stream, floor_consumer) = match self.pending.iter().next() {
            Some((s, p)) => (s.saturating_sub(1), p.consumer_seq.saturating_sub(1)),
            None => (self.delivered_stream_seq, self.delivered_consumer_seq),
        };
        ConsumerInfo {
            stream: self.stream.clone(),
            name: self.name.clone(),
            config: self.config.clone(),
            created_ms: self.created_ms,
            delivered: SequencePair {
                consumer_seq: self.delivered_consumer_seq,
                stream_seq: self.delivered_stream_seq,
            },
            ack_floor: SequencePair {
                consumer_seq: floor_consumer,
                stream_seq: floor_stream,
            },
            num_ack_pending: self.pending.len() as u64,
            num_redelivered: self
                .pending
                .values()
                .filter(|p| p.deliveries > 1 || p.due)
                .count() as u64,
            num_waiting,
            num_pending: self.num_pending(stream),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::{Retention, StreamConfig};

    fn stream(n: u64) -> Stream {
        let mut s = Stream::new(
            StreamConfig {
                name: "S".into(),
                subjects: vec!["o.*".into()],
                retention: Retention::WorkQueue,
                ..StreamConfig::default()
            },
            0,
        );
        for seq in 1..=n {
            s.stored(
                seq,
                if seq % 2 == 0 { "o.even" } else { "o.odd" },
                10,
                0,
                None,
            );
        }
        s.set_visible(n);
        s
    }

    fn cfg(f: impl FnOnce(&mut ConsumerConfig)) -> ConsumerConfig {
        let mut c = ConsumerConfig {
            durable_name: "C".into(),
            ack_wait_ms: 1000,
            ..ConsumerConfig::default()
        };
        f(&mut c);
        c
    }

    #[test]
    fn explicit_acks_redelivery_and_floor() {
        let s = stream(10);
        let mut c = Consumer::new("S", "C", cfg(|_| {}), &s, 0);
        let mut dead = Vec::new();
        let got: Vec<u64> = (0..5)
            .map(|_| c.next(0, &s, &mut dead).unwrap().stream_seq)
            .collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
        c.ack(10, 1, AckKind::Ack);
        c.ack(10, 3, AckKind::Ack);
        let info = c.info(&s, 0);
        assert_eq!(info.num_ack_pending, 3);
        assert_eq!(info.ack_floor.stream_seq, 1);
        assert_eq!(info.num_pending, 5);
        // ack_wait runs out: 2, 4, 5 come back before 6.
        let d = c.next(1001, &s, &mut dead).unwrap();
        assert_eq!((d.stream_seq, d.deliveries), (2, 2));
        assert_eq!(c.info(&s, 0).num_redelivered, 3);
        assert_eq!(c.next(1001, &s, &mut dead).unwrap().stream_seq, 4);
        assert_eq!(c.next(1001, &s, &mut dead).unwrap().stream_seq, 5);
        assert_eq!(c.next(1001, &s, &mut dead).unwrap().stream_seq, 6);
    }

    #[test]
    fn nak_delay_term_in_progress_and_max_deliver() {
        let s = stream(3);
        let mut c = Consumer::new("S", "C", cfg(|c| c.max_deliver = 2), &s, 0);
        let mut dead = Vec::new();
        for _ in 0..3 {
            c.next(0, &s, &mut dead).unwrap();
        }
        c.ack(0, 1, AckKind::Nak { delay_ms: 300 });
        assert_eq!(c.next(100, &s, &mut dead), None);
        assert_eq!(c.next(300, &s, &mut dead).unwrap().stream_seq, 1);
        assert_eq!(c.ack(300, 2, AckKind::Term).done, vec![2]);
        c.ack(900, 3, AckKind::InProgress);
        assert_eq!(
            c.next(1100, &s, &mut dead),
            None,
            "in progress pushed the deadline"
        );
        let d = c.next(1900, &s, &mut dead).unwrap();
        assert_eq!((d.stream_seq, d.deliveries), (3, 2));
        // 1 was delivered twice already: at its next deadline it is dead, not redelivered.
        assert_eq!(c.next(5000, &s, &mut dead), None);
        assert_eq!(dead, vec![1, 3]);
        assert_eq!(c.num_ack_pending(), 0);
    }

    #[test]
    fn max_ack_pending_stalls_and_resumes() {
        let s = stream(10);
        let mut c = Consumer::new("S", "C", cfg(|c| c.max_ack_pending = 3), &s, 0);
        let mut dead = Vec::new();
        for _ in 0..3 {
            c.next(0, &s, &mut dead).unwrap();
        }
        assert!(!c.has_work(0, &s));
        assert_eq!(c.next(0, &s, &mut dead), None);
        c.ack(0, 2, AckKind::Ack);
        assert!(c.has_work(0, &s));
        assert_eq!(c.next(0, &s, &mut dead).unwrap().stream_seq, 4);
    }

    #[test]
    fn ack_all_filters_and_deliver_policies() {
        let s = stream(10);
        let mut c = Consumer::new(
            "S",
            "C",
            cfg(|c| {
                c.ack_policy = AckPolicy::All;
                c.filter_subjects = vec!["o.even".into()];
            }),
            &s,
            0,
        );
        let mut dead = Vec::new();
        let got: Vec<u64> =
            std::iter::from_fn(|| c.next(0, &s, &mut dead).map(|d| d.stream_seq)).collect();
        assert_eq!(got, vec![2, 4, 6, 8, 10]);
        assert_eq!(c.ack(0, 6, AckKind::Ack).done, vec![2, 4, 6]);
        assert!(c.needs(8, "o.even") && !c.needs(7, "o.odd") && !c.needs(4, "o.even"));
        let c = Consumer::new(
            "S",
            "L",
            cfg(|c| c.deliver_policy = DeliverPolicy::New),
            &s,
            0,
        );
        assert_eq!(c.info(&s, 0).num_pending, 0);
        let mut c = Consumer::new(
            "S",
            "L",
            cfg(|c| c.deliver_policy = DeliverPolicy::LastPerSubject),
            &s,
            0,
        );
        let got: Vec<u64> =
            std::iter::from_fn(|| c.next(0, &s, &mut dead).map(|d| d.stream_seq)).collect();
        assert_eq!(got, vec![9, 10]);
        let mut c = Consumer::new(
            "S",
            "L",
            cfg(|c| c.deliver_policy = DeliverPolicy::ByStartSequence(8)),
            &s,
            0,
        );
        assert_eq!(c.next(0, &s, &mut dead).unwrap().stream_seq, 8);
        let snap = c.snapshot();
        let mut back = Consumer::new("S", "L", cfg(|_| {}), &s, 0);
        back.restore(snap, &s);
        assert_eq!(
            back.next(0, &s, &mut dead).unwrap().stream_seq,
            8,
            "pending redelivered"
        );
        assert_eq!(back.next(0, &s, &mut dead).unwrap().stream_seq, 9);
    }
}
