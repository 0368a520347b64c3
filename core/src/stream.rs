//! A JetStream-style stream's bookkeeping, pure: which sequences are live, their subjects,
//! sizes and times, the per-subject index, the dedup window, and the limits that decide what is
//! removed. The messages themselves live in a partition log (file storage) or in memory; the
//! broker asks this machine what to accept and what to remove and applies the answers.
//!
//! Sequences are log offsets + 1 (JetStream counts from 1). Removing a message in the middle
//! (a work-queue ack, a per-subject limit, a purge by subject) is an *interior delete*: the log
//! keeps the bytes until retention drops the segment, the stream forgets the sequence.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use crate::native::{Discard, PurgeRequest, Retention, StreamConfig, StreamState};
use crate::seq_list::SeqList;
use crate::seq_table::{SeqTable, Slot};
use crate::subject;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    subject: u32,
    size: u32,
    ts_ms: i64,
}

impl Slot for Entry {
    const EMPTY: Entry = Entry {
        subject: u32::MAX,
        size: 0,
        ts_ms: 0,
    };
    fn is_empty_slot(&self) -> bool {
        self.subject == u32::MAX
    }
}

/// A removal for the stream's owner to apply to its consumers and store
/// ([`Stream::take_removed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// One message, with its subject.
    One(u64, Arc<str>),
    /// Every message below this sequence: a purge or expiry of the front, one entry however
    /// many messages it took.
    Below(u64),
}

/// Removals from the front of at most this many messages go one by one (consumers adjust per
/// message); larger ones as one [`Removal::Below`].
const FRONT_ONE_BY_ONE_MAX: u64 = 64;

/// Why a publish is refused, or that it is a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishVerdict {
    Accept,
    /// Same message id within the duplicate window: answer with the original sequence.
    Duplicate(u64),
    Refuse {
        status: u16,
        message: String,
    },
}

#[derive(Debug, Default)]
pub struct Stream {
    pub config: StreamConfig,
    pub created_ms: i64,
    /// Last sequence ever assigned (0: none yet).
    last_seq: u64,
    /// Highest sequence readers may see: stored and acknowledged by the log. A publish is
    /// registered before its append completes (so that sequences and dedup stay exact under
    /// pipelining) and becomes visible once durable.
    visible: u64,
    last_ts_ms: i64,
    /// A message was stored with a timestamp before an earlier one's (the wall clock stepped
    /// back): lookups by time walk every message instead of skipping whole chunks.
    ts_stepped_back: bool,
    /// Live sequences: 16 bytes each (see [`SeqTable`]).
    msgs: SeqTable<Entry>,
    bytes: u64,
    subject_ids: crate::FastMap<Box<str>, u32>,
    subject_names: Vec<Arc<str>>,
    /// Live sequences per subject id, ascending (4 bytes each, see [`SeqList`]).
    by_subject: Vec<SeqList>,
    live_subjects: u64,
    /// msg id → (sequence, publish time); `dedup_order` expires them in time order.
    dedup: crate::FastMap<String, (u64, i64)>,
    dedup_order: VecDeque<(i64, String)>,
    /// Removed sequences above the first live one (interior deletes), for counting.
    interior_deleted: BTreeSet<u64>,
    /// Every removal since the owner last drained them.
    removal_log: Vec<Removal>,
    /// Wildcard filters → the subject ids matching them (and how many subjects were checked).
    match_cache: RefCell<crate::FastMap<Vec<String>, MatchedSubjects>>,
}

/// How many subjects were checked against a filter set, and which of them matched.
type MatchedSubjects = (usize, Vec<u32>);

/// Filters matching at most this many subjects are served from the per-subject index;
/// broader wildcards walk the sequences.
const INDEXED_SUBJECTS_MAX: usize = 256;

/// A stream name: what JetStream allows that is also a Kafka topic name (the stream is stored as
/// a topic of that name).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err("stream name must have 1 to 200 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "stream name '{name}' contains '{c}' (allowed: letters, digits, '_' and '-')"
        ));
    }
    Ok(())
}

/// Checks a config on its own (overlap with other streams is the caller's check).
pub fn validate_config(c: &StreamConfig) -> Result<(), String> {
    validate_name(&c.name)?;
    if c.subjects.is_empty() {
        return Err("a stream needs at least one subject".into());
    }
    for (i, s) in c.subjects.iter().enumerate() {
        subject::validate_pattern(s).map_err(|e| e.0)?;
        for t in &c.subjects[..i] {
            if subject::overlaps(s, t) {
                return Err(format!("subjects '{t}' and '{s}' overlap"));
            }
        }
    }
    if c.max_msgs < -1 || c.max_bytes < -1 || c.max_msgs_per_subject < -1 || c.max_msg_size < -1 {
        return Err("limits must be -1 (unlimited) or positive".into());
    }
    if c.max_msgs == 0 || c.max_bytes == 0 || c.max_msgs_per_subject == 0 || c.max_msg_size == 0 {
        return Err("a limit of 0 would refuse every message; use -1 for unlimited".into());
    }
    if c.max_age_ms > 0 && c.duplicate_window_ms > c.max_age_ms {
        return Err("duplicate window cannot be longer than max age".into());
    }
    Ok(())
}

impl Stream {
    pub fn new(config: StreamConfig, created_ms: i64) -> Stream {
        Stream {
            config,
            created_ms,
            ..Stream::default()
        }
    }

    pub fn captures(&self, subject: &str) -> bool {
        self.config
            .subjects
            .iter()
            .any(|p| subject::matches(p, subject))
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// First live sequence, or `last_seq + 1` when empty.
    pub fn first_seq(&self) -> u64 {
        self.msgs.first().unwrap_or(self.last_seq + 1)
    }

    pub fn len(&self) -> u64 {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.msgs.contains(seq)
    }

    pub fn subject_of(&self, seq: u64) -> Option<&str> {
        self.msgs
            .get(seq)
            .map(|e| &*self.subject_names[e.subject as usize])
    }

    /// A stored message's subject (shared), timestamp and size, in one lookup.
    pub fn message_info(&self, seq: u64) -> Option<(&Arc<str>, i64, u32)> {
        self.msgs
            .get(seq)
            .map(|e| (&self.subject_names[e.subject as usize], e.ts_ms, e.size))
    }

    /// The message's size as the limits count it (subject + headers + payload).
    pub fn size_of(&self, seq: u64) -> Option<u32> {
        self.msgs.get(seq).map(|e| e.size)
    }

    pub fn timestamp_of(&self, seq: u64) -> Option<i64> {
        self.msgs.get(seq).map(|e| e.ts_ms)
    }

    /// Should a publish be stored? `expected_last_seq` is JetStream's
    /// `Nats-Expected-Last-Sequence`.
    pub fn check_publish(
        &mut self,
        now_ms: i64,
        subject: &str,
        size: usize,
        msg_id: Option<&str>,
        expected_last_seq: Option<u64>,
    ) -> PublishVerdict {
        self.expire_dedup(now_ms);
        if let Some(id) = msg_id {
            if let Some((seq, _)) = self.dedup.get(id) {
                return PublishVerdict::Duplicate(*seq);
            }
        }
        if let Some(want) = expected_last_seq {
            if want != self.last_seq {
                return PublishVerdict::Refuse {
                    status: crate::native::status::PRECONDITION,
                    message: format!("wrong last sequence: {} (expected {want})", self.last_seq),
                };
            }
        }
        let c = &self.config;
        if c.max_msg_size >= 0 && size > c.max_msg_size as usize {
            return PublishVerdict::Refuse {
                status: crate::native::status::TOO_LARGE,
                message: format!(
                    "message size {size} exceeds maximum allowed {}",
                    c.max_msg_size
                ),
            };
        }
        if c.discard == Discard::New {
            let full_msgs = c.max_msgs > 0 && self.len() >= c.max_msgs as u64;
            let full_bytes = c.max_bytes > 0 && self.bytes + size as u64 > c.max_bytes as u64;
            let full_subject = c.max_msgs_per_subject > 0
                && self.subject_ids.get(subject).is_some_and(|id| {
                    self.by_subject[*id as usize].len() as i64 >= c.max_msgs_per_subject
                });
            if full_msgs || full_bytes || full_subject {
                return PublishVerdict::Refuse {
                    status: crate::native::status::PRECONDITION,
                    message: if full_bytes {
                        "maximum bytes exceeded".into()
                    } else if full_subject {
                        "maximum messages per subject exceeded".into()
                    } else {
                        "maximum messages exceeded".into()
                    },
                };
            }
        }
        PublishVerdict::Accept
    }

    fn intern(&mut self, subject: &str) -> u32 {
        if let Some(id) = self.subject_ids.get(subject) {
            return *id;
        }
        let id = self.subject_names.len() as u32;
        self.subject_names.push(subject.into());
        self.subject_ids.insert(subject.into(), id);
        self.by_subject.push(SeqList::default());
        id
    }

    /// Registers a stored message at `seq` (called for new publishes and when replaying the
    /// log at startup). Returns the sequences the limits now remove (discard old).
    pub fn stored(
        &mut self,
        seq: u64,
        subject: &str,
        size: usize,
        ts_ms: i64,
        msg_id: Option<&str>,
    ) -> Vec<u64> {
        let id = self.intern(subject);
        if self.by_subject[id as usize].is_empty() {
            self.live_subjects += 1;
        }
        self.by_subject[id as usize].push(seq);
        self.msgs.insert(
            seq,
            Entry {
                subject: id,
                size: size as u32,
                ts_ms,
            },
        );
        self.bytes += size as u64;
        self.last_seq = self.last_seq.max(seq);
        self.ts_stepped_back |= ts_ms < self.last_ts_ms;
        self.last_ts_ms = self.last_ts_ms.max(ts_ms);
        if let Some(mid) = msg_id {
            if self.config.duplicate_window_ms > 0 {
                self.dedup.insert(mid.to_string(), (seq, ts_ms));
                self.dedup_order.push_back((ts_ms, mid.to_string()));
            }
        }
        let mut doomed = Vec::new();
        let c = &self.config;
        if c.max_msgs_per_subject > 0 {
            let q = &self.by_subject[id as usize];
            let over = q.len().saturating_sub(c.max_msgs_per_subject as usize);
            doomed.extend(q.iter().take(over));
        }
        for s in &doomed {
            self.remove(*s);
        }
        if self.config.discard == Discard::Old {
            let (max_msgs, max_bytes) = (self.config.max_msgs, self.config.max_bytes);
            while (max_msgs > 0 && self.len() > max_msgs as u64)
                || (max_bytes > 0 && self.bytes > max_bytes as u64 && self.len() > 1)
            {
                let first = self.msgs.first().expect("non-empty");
                self.remove(first);
                doomed.push(first);
            }
        }
        doomed
    }

    /// Sets the last sequence after replay (the log may end with removed messages).
    pub fn set_last_seq(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// Makes sequences up to `seq` visible to readers.
    pub fn set_visible(&mut self, seq: u64) {
        self.visible = self.visible.max(seq);
    }

    pub fn visible(&self) -> u64 {
        self.visible
    }

    /// Forgets one message; false if it was not live.
    pub fn remove(&mut self, seq: u64) -> bool {
        let Some(e) = self.msgs.remove(seq) else {
            return false;
        };
        self.removal_log.push(Removal::One(
            seq,
            self.subject_names[e.subject as usize].clone(),
        ));
        match self.msgs.first() {
            Some(first) if first < seq => {
                self.interior_deleted.insert(seq);
            }
            Some(first) => {
                // The first live message moved up: deletes below it are no longer interior.
                self.interior_deleted = self.interior_deleted.split_off(&first);
            }
            None => self.interior_deleted.clear(),
        }
        self.bytes -= e.size as u64;
        let q = &mut self.by_subject[e.subject as usize];
        q.remove(seq);
        if q.is_empty() {
            self.live_subjects -= 1;
        }
        true
    }

    fn expire_dedup(&mut self, now_ms: i64) {
        let window = self.config.duplicate_window_ms as i64;
        while let Some((ts, _)) = self.dedup_order.front() {
            if ts.saturating_add(window) > now_ms {
                break;
            }
            let (_, id) = self.dedup_order.pop_front().expect("front");
            if self
                .dedup
                .get(&id)
                .is_some_and(|(_, t)| t.saturating_add(window) <= now_ms)
            {
                self.dedup.remove(&id);
            }
        }
    }

    /// Removes the messages older than max_age (the oldest first); returns how many.
    pub fn expire(&mut self, now_ms: i64) -> u64 {
        self.expire_dedup(now_ms);
        if self.config.max_age_ms == 0 {
            return 0;
        }
        let cutoff = now_ms - self.config.max_age_ms as i64;
        let n = self
            .msgs
            .iter()
            .take_while(|(_, e)| e.ts_ms <= cutoff)
            .count() as u64;
        self.remove_front(u64::MAX, n)
    }

    /// Removes what a purge asks for; returns how many messages went. Without a subject
    /// filter a purge takes a run from the front (everything, everything below `seq`, all but
    /// the newest `keep`), removed in one step ([`Stream::remove_front`]).
    pub fn purge(&mut self, req: &PurgeRequest) -> u64 {
        if req.filter.is_empty() {
            let cut = if req.seq > 0 { req.seq } else { u64::MAX };
            let below = if cut > self.last_seq {
                self.len()
            } else {
                self.live_in(self.first_seq(), cut - 1)
            };
            return self.remove_front(cut, below.saturating_sub(req.keep));
        }
        let ids: Vec<u32> = self.matching_subject_ids(std::slice::from_ref(&req.filter));
        let mut victims: Vec<u64> = ids
            .iter()
            .flat_map(|id| self.by_subject[*id as usize].iter())
            .collect();
        victims.sort_unstable();
        if req.seq > 0 {
            victims.retain(|s| *s < req.seq);
        }
        if req.keep > 0 {
            let keep = (req.keep as usize).min(victims.len());
            victims.truncate(victims.len() - keep);
        }
        for s in &victims {
            self.remove(*s);
        }
        victims.len() as u64
    }

    /// Removes the saved deletes `lo..=hi` when reopening the stream: a run at the front in
    /// one step, interior ones one by one (only the live ones are visited).
    pub fn remove_range(&mut self, lo: u64, hi: u64) {
        if lo > hi {
            return;
        }
        if lo <= self.first_seq() {
            self.remove_front(hi.saturating_add(1), u64::MAX);
            return;
        }
        let live: Vec<u64> = self
            .msgs
            .range(lo)
            .map(|(s, _)| s)
            .take_while(|s| *s <= hi)
            .collect();
        for s in live {
            self.remove(s);
        }
    }

    /// Removes the first `max` live messages below `cut` (all of them with `u64::MAX`);
    /// returns how many. Beyond [`FRONT_ONE_BY_ONE_MAX`] messages this is one step: whole
    /// chunks of the sequence table, each subject's list cut at its front, and one
    /// [`Removal::Below`] for the owner. (One by one, a purge of 7.7 M messages held the
    /// shard for 1.85 s and took ~535 MB of transient memory for its removal records.)
    fn remove_front(&mut self, cut: u64, max: u64) -> u64 {
        let first = self.first_seq();
        let small: Vec<u64> = self
            .msgs
            .iter()
            .map(|(s, _)| s)
            .take_while(|s| *s < cut)
            .take(max.min(FRONT_ONE_BY_ONE_MAX + 1) as usize)
            .collect();
        if small.len() as u64 <= FRONT_ONE_BY_ONE_MAX || max <= FRONT_ONE_BY_ONE_MAX {
            for s in &small {
                self.remove(*s);
            }
            return small.len() as u64;
        }
        let mut per_subject = vec![0usize; self.subject_names.len()];
        let (mut n, mut bytes, mut end) = (0u64, 0u64, first);
        for (seq, e) in self.msgs.iter() {
            if seq >= cut || n == max {
                break;
            }
            n += 1;
            bytes += e.size as u64;
            per_subject[e.subject as usize] += 1;
            end = seq + 1;
        }
        let removed = self.msgs.remove_below(end);
        debug_assert_eq!(removed, n);
        self.bytes -= bytes;
        for (id, k) in per_subject.into_iter().enumerate() {
            if k > 0 {
                let q = &mut self.by_subject[id];
                q.drain_front(k);
                if q.is_empty() {
                    self.live_subjects -= 1;
                }
            }
        }
        // Deletes below the new first live message are no longer interior.
        self.interior_deleted = self.interior_deleted.split_off(&self.first_seq());
        self.removal_log.push(Removal::Below(end));
        n
    }

    /// Removals since the last call.
    pub fn take_removed(&mut self) -> Vec<Removal> {
        std::mem::take(&mut self.removal_log)
    }

    fn matching_subject_ids(&self, filters: &[String]) -> Vec<u32> {
        if filters.iter().all(|f| subject::is_literal(f)) {
            return filters
                .iter()
                .filter_map(|f| self.subject_ids.get(f.as_str()).copied())
                .collect();
        }
        // Only subjects seen since the last lookup are matched against the filters.
        let mut cache = self.match_cache.borrow_mut();
        let (checked, ids) = cache.entry(filters.to_vec()).or_default();
        for (i, n) in self.subject_names.iter().enumerate().skip(*checked) {
            if filters.iter().any(|f| subject::matches(f, n)) {
                ids.push(i as u32);
            }
        }
        *checked = self.subject_names.len();
        ids.clone()
    }

    /// Live messages in `from..=to`.
    fn live_in(&self, from: u64, to: u64) -> u64 {
        let from = from.max(self.first_seq());
        if from > to {
            return 0;
        }
        (to - from + 1) - self.interior_deleted.range(from..=to).count() as u64
    }

    /// The first live sequence ≥ `from` whose subject matches one of `filters` (all subjects
    /// if empty). Literal filters go through the subject index (cost independent of the
    /// stream's size); wildcard filters walk the sequences.
    pub fn next_matching(&self, from: u64, filters: &[String]) -> Option<u64> {
        let visible = self.visible;
        if from > visible {
            return None;
        }
        // Open ranges: `from..=visible` would descend the tree twice, once per bound.
        if filters.is_empty() {
            return self
                .msgs
                .range(from)
                .next()
                .map(|(s, _)| s)
                .filter(|s| *s <= visible);
        }
        let indexed = if filters.iter().all(|f| subject::is_literal(f)) {
            Some(self.matching_subject_ids(filters))
        } else {
            Some(self.matching_subject_ids(filters)).filter(|ids| ids.len() <= INDEXED_SUBJECTS_MAX)
        };
        if let Some(ids) = indexed {
            return ids
                .iter()
                .filter_map(|id| {
                    let q = &self.by_subject[*id as usize];
                    let i = q.partition_point(|s| s < from);
                    q.get(i).filter(|s| *s <= visible)
                })
                .min();
        }
        self.msgs
            .range(from)
            .take_while(|(s, _)| *s <= visible)
            .find(|(_, e)| {
                let name = &self.subject_names[e.subject as usize];
                filters.iter().any(|f| subject::matches(f, name))
            })
            .map(|(s, _)| s)
    }

    /// Live messages ≥ `from` matching `filters` (consumer info's num_pending).
    pub fn count_matching(&self, from: u64, filters: &[String]) -> u64 {
        self.count_matching_through(from, self.visible, filters)
    }

    /// Like [`Stream::count_matching`], counting stored messages not yet visible too.
    pub fn count_matching_stored(&self, from: u64, filters: &[String]) -> u64 {
        self.count_matching_through(from, self.last_seq, filters)
    }

    fn count_matching_through(&self, from: u64, to: u64, filters: &[String]) -> u64 {
        if from > to {
            return 0;
        }
        if filters.is_empty() {
            return self.live_in(from, to);
        }
        self.matching_subject_ids(filters)
            .iter()
            .map(|id| {
                let q = &self.by_subject[*id as usize];
                let end = q.partition_point(|s| s <= to);
                end.saturating_sub(q.partition_point(|s| s < from)) as u64
            })
            .sum()
    }

    /// The last live sequence on `subject`.
    pub fn last_by_subject(&self, subject: &str) -> Option<u64> {
        let id = self.subject_ids.get(subject)?;
        let q = &self.by_subject[*id as usize];
        q.partition_point(|s| s <= self.visible)
            .checked_sub(1)
            .and_then(|i| q.get(i))
    }

    /// The last live sequence of every subject matching `filters`, ascending
    /// (deliver policy last_per_subject).
    pub fn last_per_subject(&self, filters: &[String]) -> Vec<u64> {
        let ids: Vec<u32> = if filters.is_empty() {
            (0..self.subject_names.len() as u32).collect()
        } else {
            self.matching_subject_ids(filters)
        };
        let mut v: Vec<u64> = ids
            .iter()
            .filter_map(|id| {
                let q = &self.by_subject[*id as usize];
                q.partition_point(|s| s <= self.visible)
                    .checked_sub(1)
                    .and_then(|i| q.get(i))
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// The first live sequence with a timestamp ≥ `ts_ms` (deliver policy by start time):
    /// a check per chunk of sequences while timestamps only went up, otherwise a walk over
    /// every message.
    pub fn seq_at_time(&self, ts_ms: i64) -> u64 {
        let found = if self.ts_stepped_back {
            self.msgs
                .iter()
                .find(|(_, e)| e.ts_ms >= ts_ms)
                .map(|(s, _)| s)
        } else {
            self.msgs.first_where_sorted(|e| e.ts_ms >= ts_ms)
        };
        found.unwrap_or(self.last_seq + 1)
    }

    pub fn state(&self, subjects_filter: &str, consumer_count: u32) -> StreamState {
        let first = self.first_seq();
        let subjects = if subjects_filter.is_empty() {
            Vec::new()
        } else {
            let mut v: Vec<(String, u64)> = self
                .subject_names
                .iter()
                .enumerate()
                .filter(|(i, n)| {
                    !self.by_subject[*i].is_empty() && subject::matches(subjects_filter, n)
                })
                .map(|(i, n)| (n.to_string(), self.by_subject[i].len() as u64))
                .collect();
            v.sort();
            v
        };
        StreamState {
            messages: self.len(),
            bytes: self.bytes,
            first_seq: first,
            first_ts_ms: self.msgs.iter().next().map_or(0, |(_, e)| e.ts_ms),
            last_seq: self.last_seq,
            last_ts_ms: self.last_ts_ms,
            num_deleted: self.interior_deleted.len() as u64,
            num_subjects: self.live_subjects,
            subjects,
            consumer_count,
        }
    }

    /// True when the stream keeps messages only while consumers need them.
    pub fn retention(&self) -> Retention {
        self.config.retention
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: impl FnOnce(&mut StreamConfig)) -> StreamConfig {
        let mut c = StreamConfig {
            name: "S".into(),
            subjects: vec!["orders.*".into()],
            ..StreamConfig::default()
        };
        f(&mut c);
        c
    }

    fn publish(s: &mut Stream, now: i64, subject: &str, id: Option<&str>) -> Result<u64, String> {
        match s.check_publish(now, subject, 10, id, None) {
            PublishVerdict::Accept => {
                let seq = s.last_seq() + 1;
                s.stored(seq, subject, 10, now, id);
                s.set_visible(seq);
                Ok(seq)
            }
            PublishVerdict::Duplicate(seq) => Err(format!("dup {seq}")),
            PublishVerdict::Refuse { message, .. } => Err(message),
        }
    }

    #[test]
    fn configs_are_checked() {
        assert!(validate_config(&cfg(|_| {})).is_ok());
        assert!(validate_config(&cfg(|c| c.name = "a.b".into())).is_err());
        assert!(validate_config(&cfg(|c| c.subjects = vec![])).is_err());
        assert!(validate_config(&cfg(|c| c.subjects = vec!["a.*".into(), "a.b".into()])).is_err());
        assert!(validate_config(&cfg(|c| c.max_msgs = 0)).is_err());
        assert!(validate_config(&cfg(|c| {
            c.max_age_ms = 1000;
            c.duplicate_window_ms = 2000;
        }))
        .is_err());
    }

    #[test]
    fn dedup_within_and_after_the_window() {
        let mut s = Stream::new(cfg(|c| c.duplicate_window_ms = 1000), 0);
        assert_eq!(publish(&mut s, 0, "orders.1", Some("a")), Ok(1));
        assert_eq!(
            publish(&mut s, 500, "orders.1", Some("a")),
            Err("dup 1".into())
        );
        assert_eq!(publish(&mut s, 999, "orders.1", Some("b")), Ok(2));
        assert_eq!(publish(&mut s, 1001, "orders.1", Some("a")), Ok(3));
        assert_eq!(
            publish(&mut s, 1500, "orders.1", Some("b")),
            Err("dup 2".into())
        );
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn limits_discard_old_and_new() {
        let mut s = Stream::new(cfg(|c| c.max_msgs = 3), 0);
        for i in 0..5 {
            publish(&mut s, i, "orders.1", None).unwrap();
        }
        assert_eq!((s.first_seq(), s.last_seq(), s.len()), (3, 5, 3));
        let mut s = Stream::new(
            cfg(|c| {
                c.max_msgs = 3;
                c.discard = Discard::New;
            }),
            0,
        );
        for i in 0..3 {
            publish(&mut s, i, "orders.1", None).unwrap();
        }
        assert_eq!(
            publish(&mut s, 4, "orders.1", None),
            Err("maximum messages exceeded".into())
        );
        let mut s = Stream::new(cfg(|c| c.max_msgs_per_subject = 2), 0);
        for i in 0..4 {
            publish(&mut s, i, "orders.a", None).unwrap();
            publish(&mut s, i, "orders.b", None).unwrap();
        }
        assert_eq!(s.len(), 4);
        assert_eq!(s.last_by_subject("orders.a"), Some(7));
        let st = s.state("orders.*", 0);
        assert_eq!(
            st.subjects,
            vec![("orders.a".into(), 2), ("orders.b".into(), 2)]
        );
        assert_eq!((st.first_seq, st.num_deleted), (5, 0));
        let mut s = Stream::new(cfg(|c| c.max_age_ms = 100), 0);
        publish(&mut s, 0, "orders.1", None).unwrap();
        publish(&mut s, 50, "orders.1", None).unwrap();
        assert_eq!(s.expire(120), 1);
        assert_eq!(s.first_seq(), 2);
    }

    #[test]
    fn purge_and_filtered_lookup() {
        let mut s = Stream::new(cfg(|c| c.subjects = vec!["o.>".into()]), 0);
        for i in 0..10 {
            publish(&mut s, i, if i % 2 == 0 { "o.even" } else { "o.odd" }, None).unwrap();
        }
        assert_eq!(s.next_matching(1, &["o.odd".into()]), Some(2));
        assert_eq!(
            s.next_matching(3, &["o.odd".into(), "o.even".into()]),
            Some(3)
        );
        assert_eq!(s.next_matching(4, &["o.*".into()]), Some(4));
        assert_eq!(s.next_matching(11, &["o.*".into()]), None);
        assert_eq!(s.count_matching(5, &["o.even".into()]), 3);
        assert_eq!(s.last_per_subject(&[]), vec![9, 10]);
        let removed = s.purge(&PurgeRequest {
            filter: "o.even".into(),
            keep: 2,
            seq: 0,
        });
        assert_eq!(removed, 3);
        assert_eq!(s.len(), 7);
        assert!(!s.contains(1) && !s.contains(3) && !s.contains(5) && s.contains(7));
        assert_eq!(s.purge(&PurgeRequest::default()), 7);
        assert_eq!((s.first_seq(), s.last_seq()), (11, 10));
        assert_eq!(publish(&mut s, 20, "o.x", None), Ok(11));
    }

    mod removals {
        use super::*;
        use crate::consumer::Consumer;
        use crate::native::{AckPolicy, ConsumerConfig};
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        #[derive(Debug, Clone)]
        enum Op {
            /// A burst of publishes: (count, subject index, size).
            Publish(u16, u8, u16),
            /// Removes the n-th live message (an ack of a work queue).
            RemoveNth(u16),
            /// Unfiltered purge: (keep, up to seq as a share of the stream in 1/8s; 8 = all).
            Purge(u16, u8),
            /// Purge of one subject.
            PurgeSubject(u8, u16),
            /// Expire everything published before this many bursts ago.
            Expire(u8),
            /// Consumers take this many messages each.
            Deliver(u16),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (1u16..700, 0u8..4, 1u16..300).prop_map(|(n, s, z)| Op::Publish(n, s, z)),
                2 => (0u16..3000).prop_map(Op::RemoveNth),
                1 => (0u16..200, 0u8..9).prop_map(|(k, f)| Op::Purge(k, f)),
                1 => (0u8..4, 0u16..100).prop_map(|(s, k)| Op::PurgeSubject(s, k)),
                1 => (0u8..4).prop_map(Op::Expire),
                2 => (0u16..400).prop_map(Op::Deliver),
            ]
        }

        fn apply(s: &mut Stream, consumers: &mut [Consumer]) {
            for r in s.take_removed() {
                for c in consumers.iter_mut() {
                    match &r {
                        Removal::One(seq, subject) => c.on_removed(*seq, subject),
                        Removal::Below(cut) => c.on_removed_below(*cut, s),
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]
            /// Whatever mix of publishes, interior removals, purges (front runs go in one
            /// step) and expiry: the stream and its consumers agree with a plain map of the
            /// live messages.
            #[test]
            fn bulk_and_single_removals_agree_with_a_model(ops in proptest::collection::vec(op(), 1..40)) {
                let subjects = ["o.a", "o.b", "o.c", "o.d"];
                let mut s = Stream::new(cfg(|c| {
                    c.subjects = vec!["o.*".into()];
                    c.max_age_ms = 10;
                }), 0);
                let mut model: BTreeMap<u64, (usize, u64, i64)> = BTreeMap::new();
                let filters: Vec<Vec<String>> = vec![vec![], vec!["o.b".into()], vec!["o.c".into(), "o.d".into()]];
                let mut consumers: Vec<Consumer> = filters
                    .iter()
                    .map(|f| {
                        let config = ConsumerConfig {
                            filter_subjects: f.clone(),
                            ack_policy: AckPolicy::Explicit,
                            max_ack_pending: -1,
                            ..ConsumerConfig::default()
                        };
                        Consumer::new("S", &format!("c{}", f.len()), config, &s, 0)
                    })
                    .collect();
                // Per consumer: the next stream sequence it has not been handed.
                let mut next: Vec<u64> = vec![1; consumers.len()];
                let mut now = 0i64;
                for op in ops {
                    match op {
                        Op::Publish(n, subj, size) => {
                            now += 5;
                            for k in 0..n {
                                let subj = (subj as usize + k as usize % 3) % 4;
                                let seq = s.last_seq() + 1;
                                s.stored(seq, subjects[subj], size as usize, now, None);
                                s.set_visible(seq);
                                for c in consumers.iter_mut() {
                                    c.on_stored(seq, subjects[subj]);
                                }
                                model.insert(seq, (subj, size as u64, now));
                            }
                        }
                        Op::RemoveNth(i) => {
                            if let Some(seq) = model.keys().nth(i as usize % model.len().max(1)).copied() {
                                prop_assert!(s.remove(seq));
                                model.remove(&seq);
                            }
                        }
                        Op::Purge(keep, share) => {
                            let seq = if share == 8 { 0 } else {
                                s.first_seq() + (s.last_seq() + 1 - s.first_seq()) * share as u64 / 8
                            };
                            let mut victims: Vec<u64> = model.keys().copied().filter(|q| seq == 0 || *q < seq).collect();
                            victims.truncate(victims.len().saturating_sub(keep as usize));
                            let n = s.purge(&PurgeRequest { filter: String::new(), keep: keep as u64, seq });
                            prop_assert_eq!(n, victims.len() as u64);
                            for v in victims {
                                model.remove(&v);
                            }
                        }
                        Op::PurgeSubject(subj, keep) => {
                            let mut victims: Vec<u64> = model.iter().filter(|(_, e)| e.0 == subj as usize).map(|(q, _)| *q).collect();
                            victims.truncate(victims.len().saturating_sub(keep as usize));
                            let n = s.purge(&PurgeRequest { filter: subjects[subj as usize].into(), keep: keep as u64, seq: 0 });
                            prop_assert_eq!(n, victims.len() as u64);
                            for v in victims {
                                model.remove(&v);
                            }
                        }
                        Op::Expire(back) => {
                            // max_age 10: messages of the bursts more than 10 ms back go.
                            let at = now + 10 - 5 * back as i64;
                            let n = s.expire(at);
                            let victims: Vec<u64> = model.iter().take_while(|(_, e)| e.2 <= at - 10).map(|(q, _)| *q).collect();
                            prop_assert_eq!(n, victims.len() as u64);
                            for v in victims {
                                model.remove(&v);
                            }
                        }
                        Op::Deliver(n) => {
                            for (i, c) in consumers.iter_mut().enumerate() {
                                for _ in 0..n {
                                    let mut dead = Vec::new();
                                    let Some(d) = c.next(now, &s, &mut dead) else { break };
                                    let want = model
                                        .iter()
                                        .find(|(q, e)| **q >= next[i] && (filters[i].is_empty() || filters[i].iter().any(|f| f == subjects[e.0])))
                                        .map(|(q, _)| *q);
                                    prop_assert_eq!(Some(d.stream_seq), want);
                                    next[i] = d.stream_seq + 1;
                                }
                            }
                        }
                    }
                    apply(&mut s, &mut consumers);
                    prop_assert_eq!(s.len(), model.len() as u64);
                    let first = model.keys().next().copied().unwrap_or(s.last_seq() + 1);
                    prop_assert_eq!(s.first_seq(), first);
                    let st = s.state("o.*", 0);
                    prop_assert_eq!(st.bytes, model.values().map(|e| e.1).sum::<u64>());
                    let interior = if model.is_empty() { 0 } else { s.last_seq() - first + 1 - model.len() as u64 };
                    prop_assert_eq!(st.num_deleted, interior);
                    for (k, subj) in subjects.iter().enumerate() {
                        let want = model.values().filter(|e| e.0 == k).count();
                        prop_assert_eq!(s.count_matching(1, &[subj.to_string()]), want as u64);
                        let last = model.iter().rev().find(|(_, e)| e.0 == k).map(|(q, _)| *q);
                        prop_assert_eq!(s.last_by_subject(subj), last);
                    }
                    let subjects_live = subjects.iter().enumerate().filter(|(k, _)| model.values().any(|e| e.0 == *k)).count();
                    prop_assert_eq!(st.subjects.len(), subjects_live);
                    for (i, c) in consumers.iter().enumerate() {
                        let want = model
                            .iter()
                            .filter(|(q, e)| **q >= next[i] && (filters[i].is_empty() || filters[i].iter().any(|f| f == subjects[e.0])))
                            .count() as u64;
                        prop_assert_eq!(c.num_pending(&s), want, "consumer {}", i);
                        let acks = c.num_ack_pending();
                        let live_handed = model.keys().filter(|q| **q < next[i]).count() as u64;
                        prop_assert!(acks <= live_handed, "consumer {} holds {} acks for {} live handed", i, acks, live_handed);
                    }
                }
            }
        }

        #[test]
        fn seq_at_time_with_and_without_a_clock_step_back() {
            let mut s = Stream::new(cfg(|c| c.subjects = vec!["o.*".into()]), 0);
            for i in 0..5_000u64 {
                s.stored(i + 1, "o.a", 1, (i / 10) as i64, None);
            }
            s.remove_range(1, 1500);
            assert_eq!(s.seq_at_time(0), 1501);
            assert_eq!(s.seq_at_time(200), 2001);
            assert_eq!(s.seq_at_time(499), 4991);
            assert_eq!(s.seq_at_time(500), 5001);
            // The clock steps back: the first at or after the time, wherever it is.
            s.stored(5001, "o.a", 1, 300, None);
            s.stored(5002, "o.a", 1, 600, None);
            assert_eq!(s.seq_at_time(500), 5002);
            assert_eq!(s.seq_at_time(300), 3001);
        }

        #[test]
        fn a_purge_of_the_front_is_one_removal() {
            let mut s = Stream::new(cfg(|c| c.subjects = vec!["o.*".into()]), 0);
            for i in 0..10_000u64 {
                s.stored(i + 1, if i % 2 == 0 { "o.a" } else { "o.b" }, 100, 0, None);
            }
            s.take_removed();
            let n = s.purge(&PurgeRequest {
                filter: String::new(),
                keep: 10,
                seq: 0,
            });
            assert_eq!(n, 9_990);
            assert_eq!(s.take_removed(), vec![Removal::Below(9_991)]);
            assert_eq!(
                (s.first_seq(), s.len(), s.state("", 0).bytes),
                (9_991, 10, 1_000)
            );
            // A small run goes one by one.
            assert_eq!(
                s.purge(&PurgeRequest {
                    filter: String::new(),
                    keep: 0,
                    seq: 9_993
                }),
                2
            );
            assert_eq!(
                s.take_removed(),
                vec![
                    Removal::One(9_991, "o.a".into()),
                    Removal::One(9_992, "o.b".into())
                ]
            );
        }
    }
}
