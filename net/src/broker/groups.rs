//! Consumer groups on their home shard: the pure [`GroupCoordinator`] driven with wall-clock
//! time, parked Join/Sync requests answered through oneshots, and committed offsets kept in
//! memory and made durable in the shard's own internal log (`__consumer_offsets-<shard>`, one
//! record per committed partition, last value wins — Kafka's `__consumer_offsets` idea).
//!
//! Offsets record: key = `group \0 topic \0 partition`, value = `offset:i64 | metadata`
//! (a null value deletes the offset); the record's timestamp is the commit time.
//!
//! The log is compacted by snapshot: once it holds many more records than live offsets, every
//! live offset is appended again (in one ordered run of batches, while no commit is in flight)
//! and the log start is moved past everything older, so whole old segments are deleted.
//! Offsets of empty groups expire `offsets.retention.minutes` after their commit (Kafka's
//! rule), with a tombstone.
//!
//! KIP-848 consumer groups ([`ConsumerGroups`]) live here too, next to the classic coordinator;
//! a group id belongs to one or the other.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use futures::channel::oneshot;
use sluice_core::batch::{self, BatchBuilder, Compression};
use sluice_core::consumer_group::{ConsumerGroupConfig, ConsumerGroups, TopicView};
use sluice_core::group::{Completion, GroupCoordinator, GroupLimits, GroupState, Reply, Ticket};
use sluice_core::Offset;
use sluice_storage::{wall_clock_ms, DmaDisk, Log, LogConfig, LogError};

/// A committed offset and its client metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
    /// Wall-clock time of the commit (retention counts from it).
    pub commit_ms: u64,
}

/// How the offsets log is kept (Kafka's `offsets.*` settings).
#[derive(Debug, Clone, Copy)]
pub struct OffsetsConfig {
    /// `offsets.retention.minutes`, in ms: offsets of an empty group expire this long after
    /// their commit.
    pub retention_ms: u64,
    /// Compact once the log holds more than this many records beyond 2× the live offsets.
    pub compact_slack_records: u64,
}

impl Default for OffsetsConfig {
    fn default() -> Self {
        OffsetsConfig {
            retention_ms: 7 * 24 * 3600 * 1000,
            compact_slack_records: 50_000,
        }
    }
}

/// The broker's topics as KIP-848 groups see them.
pub struct MetaTopics(pub std::sync::Arc<super::metadata::Metadata>);

impl TopicView for MetaTopics {
    fn partitions(&self, topic: &str) -> Option<i32> {
        self.0.topics.get(topic).map(|t| t.partitions)
    }
    fn names(&self) -> Vec<String> {
        self.0.topics.keys().cloned().collect()
    }
}

/// A group's committed offsets by (topic, partition).
type GroupOffsets = BTreeMap<(String, i32), Committed>;

pub struct GroupHome {
    pub coordinator: RefCell<GroupCoordinator>,
    pub consumer: RefCell<ConsumerGroups>,
    waiters: RefCell<HashMap<Ticket, oneshot::Sender<Completion>>>,
    offsets: RefCell<HashMap<String, GroupOffsets>>,
    log: Log<DmaDisk>,
    config: OffsetsConfig,
    /// Commits appended but not yet applied in memory (a snapshot must not start meanwhile).
    inflight: Cell<usize>,
}

impl GroupHome {
    /// Opens the shard's offsets log and replays it.
    pub async fn open(
        data_dir: &Path,
        shard: usize,
        limits: GroupLimits,
        consumer: ConsumerGroupConfig,
        config: OffsetsConfig,
    ) -> Result<GroupHome, LogError> {
        let dir = data_dir
            .join("groups")
            .join(format!("__consumer_offsets-{shard}"));
        let log_config = LogConfig {
            segment_bytes_max: 16 << 20,
            retention_ms: None,
            retention_bytes: None,
            segment_age_ms_max: None,
            ..LogConfig::default()
        };
        let log = Log::open(DmaDisk, &dir, log_config, wall_clock_ms()).await?;
        let mut offsets: HashMap<String, GroupOffsets> = HashMap::new();
        let mut from = log.start_offset();
        while from < log.acked_end() {
            let bytes = log.read(from, 4 << 20).await?;
            if bytes.is_empty() {
                break;
            }
            let (found, _) = batch::split_batches(&bytes, false);
            for (h, range) in found {
                from = Offset(h.last_offset() + 1);
                let Ok(records) = batch::records(&bytes[range], 64 << 20) else {
                    continue;
                };
                for r in records {
                    let Some((group, tp)) = r.key.as_deref().and_then(decode_key) else {
                        continue;
                    };
                    match r
                        .value
                        .as_deref()
                        .and_then(|v| decode_value(v, r.timestamp.max(0) as u64))
                    {
                        Some(c) => {
                            offsets.entry(group).or_default().insert(tp, c);
                        }
                        None => {
                            if let Some(g) = offsets.get_mut(&group) {
                                g.remove(&tp);
                            }
                        }
                    }
                }
            }
        }
        Ok(GroupHome {
            coordinator: RefCell::new(GroupCoordinator::new(limits)),
            consumer: RefCell::new(ConsumerGroups::new(consumer)),
            waiters: RefCell::new(HashMap::new()),
            offsets: RefCell::new(offsets),
            log,
            config,
            inflight: Cell::new(0),
        })
    }

    /// Turns a coordinator reply into an answer, waiting for parked ones.
    pub async fn answer<T>(
        &self,
        reply: Reply<T>,
        unwrap: impl Fn(Completion) -> Option<T>,
    ) -> Option<T> {
        match reply {
            Reply::Now(t) => {
                self.dispatch();
                Some(t)
            }
            Reply::Parked(ticket) => {
                let (tx, rx) = oneshot::channel();
                self.waiters.borrow_mut().insert(ticket, tx);
                self.dispatch();
                unwrap(rx.await.ok()?)
            }
        }
    }

    /// Hands every completion the coordinator produced to its waiter.
    pub fn dispatch(&self) {
        loop {
            let next = self.coordinator.borrow_mut().poll_completion();
            let Some((ticket, completion)) = next else {
                break;
            };
            if let Some(tx) = self.waiters.borrow_mut().remove(&ticket) {
                let _ = tx.send(completion);
            }
        }
    }

    /// Session timeouts and rebalance deadlines every 100 ms on the home shard; offset expiry
    /// and log compaction every 10 s.
    pub async fn run_timers(
        self: Rc<Self>,
        stopped: impl Fn() -> bool,
        topics: impl Fn() -> MetaTopics,
    ) {
        let mut last_upkeep = wall_clock_ms();
        while !stopped() {
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            let now = wall_clock_ms();
            self.coordinator.borrow_mut().tick(now);
            self.consumer.borrow_mut().tick(now, &topics());
            self.dispatch();
            if now.saturating_sub(last_upkeep) >= 10_000 {
                last_upkeep = now;
                if let Err(e) = self.upkeep(now).await {
                    eprintln!("sluice: offsets log upkeep failed: {e}");
                }
            }
        }
    }

    /// Expires offsets of empty groups, then compacts the log if it is worth it.
    pub async fn upkeep(&self, now_ms: u64) -> Result<(), LogError> {
        self.expire_offsets(now_ms).await?;
        self.compact(now_ms).await?;
        Ok(())
    }

    /// A group with no members in either protocol.
    pub fn is_empty_group(&self, group: &str) -> bool {
        let classic = self.coordinator.borrow().state(group);
        matches!(
            classic,
            None | Some(GroupState::Empty) | Some(GroupState::Dead)
        ) && self.consumer.borrow().is_empty_group(group)
    }

    async fn expire_offsets(&self, now_ms: u64) -> Result<(), LogError> {
        let retention = self.config.retention_ms;
        let expired: Vec<(String, Vec<(String, i32)>)> = self
            .offsets
            .borrow()
            .iter()
            .filter(|(g, _)| self.is_empty_group(g))
            .map(|(g, m)| {
                let old: Vec<(String, i32)> = m
                    .iter()
                    .filter(|(_, c)| c.commit_ms.saturating_add(retention) <= now_ms)
                    .map(|(tp, _)| tp.clone())
                    .collect();
                (g.clone(), old)
            })
            .filter(|(_, old)| !old.is_empty())
            .collect();
        for (group, keys) in expired {
            self.delete_offsets(&group, &keys).await?;
        }
        Ok(())
    }

    /// Rewrites every live offset at the end of the log and drops everything before it, once
    /// the log holds far more records than live offsets.
    pub async fn compact(&self, now_ms: u64) -> Result<bool, LogError> {
        let live: usize = self.offsets.borrow().values().map(|m| m.len()).sum();
        let held = (self.log.end_offset().0 - self.log.start_offset().0).max(0) as u64;
        if held <= 2 * live as u64 + self.config.compact_slack_records || self.inflight.get() > 0 {
            return Ok(false);
        }
        // Built and queued without yielding: no commit can land between the snapshot's batches,
        // and none is in flight (its value would be missing from the snapshot).
        let start = self.log.end_offset();
        let mut batches = Vec::new();
        {
            let offsets = self.offsets.borrow();
            let mut b = BatchBuilder::new(Compression::None, now_ms as i64);
            let mut n = 0;
            for (group, m) in offsets.iter() {
                for ((topic, partition), c) in m {
                    let mut value = c.offset.to_be_bytes().to_vec();
                    value.extend_from_slice(c.metadata.as_bytes());
                    b.push(
                        c.commit_ms as i64,
                        Some(&encode_key(group, topic, *partition)),
                        Some(&value),
                        &[],
                    );
                    n += 1;
                    if n == 2000 {
                        batches.push(b.build());
                        b = BatchBuilder::new(Compression::None, now_ms as i64);
                        n = 0;
                    }
                }
            }
            if n > 0 {
                batches.push(b.build());
            }
        }
        let appends = batches
            .iter_mut()
            .map(|bytes| self.log.append(now_ms, bytes));
        for r in futures::future::join_all(appends).await {
            r?;
        }
        self.log.delete_records_before(start).await?;
        Ok(true)
    }

    /// The offsets log's (start, end) offsets and segment count.
    pub fn log_extent(&self) -> (i64, i64, usize) {
        (
            self.log.start_offset().0,
            self.log.end_offset().0,
            self.log.segment_count(),
        )
    }

    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<Committed> {
        self.offsets
            .borrow()
            .get(group)?
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    pub fn committed_all(&self, group: &str) -> Vec<((String, i32), Committed)> {
        self.offsets
            .borrow()
            .get(group)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    pub fn groups_with_offsets(&self) -> Vec<String> {
        self.offsets
            .borrow()
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// Makes commits durable (one batch, fdatasynced), then applies them.
    pub async fn commit(
        &self,
        group: &str,
        commits: Vec<((String, i32), Committed)>,
    ) -> Result<(), LogError> {
        if commits.is_empty() {
            return Ok(());
        }
        self.inflight.set(self.inflight.get() + 1);
        let result = self.commit_inner(group, commits).await;
        self.inflight.set(self.inflight.get() - 1);
        result
    }

    async fn commit_inner(
        &self,
        group: &str,
        commits: Vec<((String, i32), Committed)>,
    ) -> Result<(), LogError> {
        let now = wall_clock_ms();
        let mut b = BatchBuilder::new(Compression::None, now as i64);
        for ((topic, partition), c) in &commits {
            let mut value = c.offset.to_be_bytes().to_vec();
            value.extend_from_slice(c.metadata.as_bytes());
            b.push(
                now as i64,
                Some(&encode_key(group, topic, *partition)),
                Some(&value),
                &[],
            );
        }
        let mut bytes = b.build();
        self.log.append(now, &mut bytes).await?;
        let mut offsets = self.offsets.borrow_mut();
        let g = offsets.entry(group.to_string()).or_default();
        for (tp, mut c) in commits {
            c.commit_ms = now;
            g.insert(tp, c);
        }
        Ok(())
    }

    /// DeleteGroups: an empty group and its committed offsets (tombstoned in the log).
    pub async fn delete_group(&self, group: &str) -> Result<i16, LogError> {
        use sluice_core::group::codes;
        let has_offsets = self
            .offsets
            .borrow()
            .get(group)
            .is_some_and(|m| !m.is_empty());
        let code = if self.consumer.borrow().contains(group) {
            self.consumer.borrow_mut().delete(group)
        } else {
            self.coordinator.borrow_mut().delete(group)
        };
        if code == codes::NON_EMPTY_GROUP || (code == codes::GROUP_ID_NOT_FOUND && !has_offsets) {
            return Ok(code);
        }
        let keys: Vec<(String, i32)> = self
            .offsets
            .borrow()
            .get(group)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        self.delete_offsets(group, &keys).await?;
        self.offsets.borrow_mut().remove(group);
        Ok(codes::NONE)
    }

    /// Tombstones some of a group's offsets (OffsetDelete, expiry, group deletion).
    pub async fn delete_offsets(
        &self,
        group: &str,
        keys: &[(String, i32)],
    ) -> Result<(), LogError> {
        if keys.is_empty() {
            return Ok(());
        }
        let now = wall_clock_ms();
        let mut b = BatchBuilder::new(Compression::None, now as i64);
        for (topic, partition) in keys {
            b.push(
                now as i64,
                Some(&encode_key(group, topic, *partition)),
                None,
                &[],
            );
        }
        let mut bytes = b.build();
        self.inflight.set(self.inflight.get() + 1);
        let r = self.log.append(now, &mut bytes).await;
        self.inflight.set(self.inflight.get() - 1);
        r?;
        let mut offsets = self.offsets.borrow_mut();
        if let Some(m) = offsets.get_mut(group) {
            for k in keys {
                m.remove(k);
            }
            if m.is_empty() {
                offsets.remove(group);
            }
        }
        Ok(())
    }

    pub async fn close(&self) -> Result<(), LogError> {
        self.log.sync(wall_clock_ms()).await
    }
}

fn encode_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    format!("{group}\0{topic}\0{partition}").into_bytes()
}

/// Reads an offsets-log key (disk bytes: any input gives `None` or a value, never a panic).
pub fn decode_key(key: &[u8]) -> Option<(String, (String, i32))> {
    let s = std::str::from_utf8(key).ok()?;
    let mut parts = s.split('\0');
    let group = parts.next()?.to_string();
    let topic = parts.next()?.to_string();
    let partition = parts.next()?.parse().ok()?;
    Some((group, (topic, partition)))
}

/// Reads an offsets-log value (disk bytes).
pub fn decode_value(value: &[u8], commit_ms: u64) -> Option<Committed> {
    let offset = i64::from_be_bytes(value.get(0..8)?.try_into().ok()?);
    let metadata = String::from_utf8_lossy(&value[8..]).into_owned();
    Some(Committed {
        offset,
        metadata,
        commit_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open_home(dir: &Path, config: OffsetsConfig) -> GroupHome {
        GroupHome::open(
            dir,
            0,
            GroupLimits::default(),
            ConsumerGroupConfig::default(),
            config,
        )
        .await
        .unwrap()
    }

    fn commit_one(offset: i64) -> Vec<((String, i32), Committed)> {
        vec![(
            ("t".to_string(), 0),
            Committed {
                offset,
                metadata: format!("m{offset}"),
                commit_ms: 0,
            },
        )]
    }

    #[test]
    fn compaction_keeps_the_latest_offsets_and_moves_the_log_start() {
        let dir = std::env::temp_dir().join(format!("sluice-offsets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = OffsetsConfig {
            retention_ms: u64::MAX / 4,
            compact_slack_records: 100,
        };
        sluice_storage::run_local("offsets-test", async {
            let home = open_home(&dir, config).await;
            for i in 0..500 {
                home.commit("g", commit_one(i)).await.unwrap();
                home.commit("h", commit_one(1000 + i)).await.unwrap();
            }
            home.delete_offsets("h", &[("t".into(), 0)]).await.unwrap();
            let (start, end, _) = home.log_extent();
            assert_eq!((start, end), (0, 1001));
            assert!(home.compact(wall_clock_ms()).await.unwrap());
            let (start, end, _) = home.log_extent();
            assert_eq!((start, end), (1001, 1002), "one live offset rewritten");
            assert!(
                !home.compact(wall_clock_ms()).await.unwrap(),
                "nothing to gain"
            );
            home.commit("g", commit_one(777)).await.unwrap();
            home.close().await.unwrap();
        })
        .unwrap();
        sluice_storage::run_local("offsets-test", async {
            let home = open_home(&dir, config).await;
            assert_eq!(home.committed("g", "t", 0).unwrap().offset, 777);
            assert_eq!(home.committed("h", "t", 0), None);
            assert_eq!(home.log_extent().0, 1001);
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn offsets_of_empty_groups_expire_after_retention() {
        let dir = std::env::temp_dir().join(format!("sluice-expiry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = OffsetsConfig {
            retention_ms: 60_000,
            compact_slack_records: 100,
        };
        sluice_storage::run_local("offsets-test", async {
            let home = open_home(&dir, config).await;
            home.commit("idle", commit_one(5)).await.unwrap();
            // A KIP-848 group with a live member keeps its offsets however old they are.
            let topics: BTreeMap<String, i32> = [("t".to_string(), 1)].into();
            let r = home.consumer.borrow_mut().heartbeat(
                wall_clock_ms(),
                &topics,
                sluice_core::consumer_group::HeartbeatRequest {
                    group_id: "busy".into(),
                    member_id: "m".into(),
                    subscribed_topic_names: Some(vec!["t".into()]),
                    ..Default::default()
                },
            );
            assert_eq!(r.error_code, 0);
            home.commit("busy", commit_one(9)).await.unwrap();
            let now = wall_clock_ms();
            home.upkeep(now + 30_000).await.unwrap();
            assert!(home.committed("idle", "t", 0).is_some(), "not yet");
            home.upkeep(now + 61_000).await.unwrap();
            assert_eq!(home.committed("idle", "t", 0), None);
            assert_eq!(home.committed("busy", "t", 0).unwrap().offset, 9);
            home.close().await.unwrap();
        })
        .unwrap();
        sluice_storage::run_local("offsets-test", async {
            let home = open_home(&dir, config).await;
            assert_eq!(
                home.committed("idle", "t", 0),
                None,
                "the expiry is durable"
            );
            assert_eq!(home.committed("busy", "t", 0).unwrap().offset, 9);
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
