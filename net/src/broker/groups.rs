//! Consumer groups on their home shard: the pure [`GroupCoordinator`] driven with wall-clock
//! time, parked Join/Sync requests answered through oneshots, and committed offsets kept in
//! memory and made durable in the shard's own internal log (`__consumer_offsets-<shard>`, one
//! record per committed partition, last value wins — Kafka's `__consumer_offsets` idea).
//!
//! Offsets record: key = `group \0 topic \0 partition`, value = `offset:i64 | metadata`
//! (a null value deletes the offset).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use futures::channel::oneshot;
use sluice_core::batch::{self, BatchBuilder, Compression};
use sluice_core::group::{Completion, GroupCoordinator, GroupLimits, Reply, Ticket};
use sluice_core::Offset;
use sluice_storage::{wall_clock_ms, DmaDisk, Log, LogConfig, LogError};

/// A committed offset and its client metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
}

/// A group's committed offsets by (topic, partition).
type GroupOffsets = BTreeMap<(String, i32), Committed>;

pub struct GroupHome {
    pub coordinator: RefCell<GroupCoordinator>,
    waiters: RefCell<HashMap<Ticket, oneshot::Sender<Completion>>>,
    offsets: RefCell<HashMap<String, GroupOffsets>>,
    log: Log<DmaDisk>,
}

impl GroupHome {
    /// Opens the shard's offsets log and replays it.
    pub async fn open(
        data_dir: &Path,
        shard: usize,
        limits: GroupLimits,
    ) -> Result<GroupHome, LogError> {
        let dir = data_dir
            .join("groups")
            .join(format!("__consumer_offsets-{shard}"));
        let config = LogConfig {
            segment_bytes_max: 64 << 20,
            retention_ms: None,
            retention_bytes: None,
            segment_age_ms_max: None,
            ..LogConfig::default()
        };
        let log = Log::open(DmaDisk, &dir, config, wall_clock_ms()).await?;
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
                    match r.value.as_deref().and_then(decode_value) {
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
            waiters: RefCell::new(HashMap::new()),
            offsets: RefCell::new(offsets),
            log,
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

    /// Session timeouts and rebalance deadlines: run every 100 ms on the home shard.
    pub async fn run_timers(self: Rc<Self>, stopped: impl Fn() -> bool) {
        while !stopped() {
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            self.coordinator.borrow_mut().tick(wall_clock_ms());
            self.dispatch();
        }
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
        for (tp, c) in commits {
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
        let code = self.coordinator.borrow_mut().delete(group);
        if code == codes::NON_EMPTY_GROUP || (code == codes::GROUP_ID_NOT_FOUND && !has_offsets) {
            return Ok(code);
        }
        let keys: Vec<(String, i32)> = self
            .offsets
            .borrow()
            .get(group)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        if !keys.is_empty() {
            let now = wall_clock_ms();
            let mut b = BatchBuilder::new(Compression::None, now as i64);
            for (topic, partition) in &keys {
                b.push(
                    now as i64,
                    Some(&encode_key(group, topic, *partition)),
                    None,
                    &[],
                );
            }
            let mut bytes = b.build();
            self.log.append(now, &mut bytes).await?;
        }
        self.offsets.borrow_mut().remove(group);
        Ok(codes::NONE)
    }

    pub async fn close(&self) -> Result<(), LogError> {
        self.log.sync(wall_clock_ms()).await
    }
}

fn encode_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    format!("{group}\0{topic}\0{partition}").into_bytes()
}

fn decode_key(key: &[u8]) -> Option<(String, (String, i32))> {
    let s = std::str::from_utf8(key).ok()?;
    let mut parts = s.split('\0');
    let group = parts.next()?.to_string();
    let topic = parts.next()?.to_string();
    let partition = parts.next()?.parse().ok()?;
    Some((group, (topic, partition)))
}

fn decode_value(value: &[u8]) -> Option<Committed> {
    let offset = i64::from_be_bytes(value.get(0..8)?.try_into().ok()?);
    let metadata = String::from_utf8_lossy(&value[8..]).into_owned();
    Some(Committed { offset, metadata })
}
