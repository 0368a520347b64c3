//! Cluster metadata of a single broker: topics, their ids, partition counts and configs.
//!
//! Mutations run only on the metadata home shard (shard 0), synchronously, and are persisted
//! (`<data_dir>/meta/topics.json`, written atomically) before they are published. Every shard
//! reads the published immutable snapshot without locks (`ArcSwap`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub id: uuid::Uuid,
    pub partitions: i32,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// A JetStream-style stream: file streams are stored in the topic of the same name (one
/// partition); memory streams only here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamMeta {
    pub config: sluice_core::native::StreamConfig,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Metadata {
    pub cluster_id: String,
    pub topics: BTreeMap<String, TopicMeta>,
    #[serde(default)]
    pub streams: BTreeMap<String, StreamMeta>,
}

/// Topic names as Kafka allows them: 1..=249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!(
            "topic name must have 1 to 249 characters, got {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be '.' or '..'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return Err(format!("topic name contains an invalid character '{c}'"));
    }
    Ok(())
}

/// The directory of one partition's log.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join("topics").join(format!("{topic}-{partition}"))
}

impl Metadata {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("meta").join("topics.json")
    }

    /// Loads the persisted metadata, or starts a new cluster.
    pub fn load(data_dir: &Path) -> std::io::Result<Metadata> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is damaged: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Metadata {
                cluster_id: uuid::Uuid::new_v4().simple().to_string()[..22].to_string(),
                topics: BTreeMap::new(),
                streams: BTreeMap::new(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Writes the metadata durably (temporary file, fsync, rename, directory fsync). Small and
    /// rare (topic admin only), so a blocking write is acceptable on the home shard.
    pub fn persist(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(data_dir);
        let dir = path.parent().expect("meta dir");
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("metadata serializes"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    pub fn has_partition(&self, topic: &str, partition: i32) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|t| (0..t.partitions).contains(&partition))
    }

    /// The stream capturing a published subject, if any.
    pub fn stream_for(&self, subject: &str) -> Option<&StreamMeta> {
        self.streams.values().find(|s| {
            s.config
                .subjects
                .iter()
                .any(|p| sluice_core::subject::matches(p, subject))
        })
    }

    pub fn topic_by_id(&self, id: uuid::Uuid) -> Option<(&String, &TopicMeta)> {
        self.topics.iter().find(|(_, t)| t.id == id)
    }
}

/// Which shard owns a partition for the life of the process.
pub fn owner_shard(topic: &str, partition: i32, shards: usize) -> usize {
    // FNV-1a: stable across runs and builds (std's hasher is randomly seeded).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.as_bytes().iter().chain(&partition.to_be_bytes()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }

    #[test]
    fn ownership_spreads_and_is_stable() {
        let owners: Vec<usize> = (0..64).map(|p| owner_shard("t", p, 4)).collect();
        for s in 0..4 {
            assert!(owners.contains(&s));
        }
        assert_eq!(owner_shard("t", 3, 4), owners[3]);
    }
}
