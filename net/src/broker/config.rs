//! Broker configuration and topic configs with Kafka's names and meanings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use sluice_storage::{FsyncPolicy, LogConfig};

/// Everything `sluice serve` is started with.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub kafka_listen: SocketAddr,
    /// Native-protocol listener (`None`: off).
    pub native_listen: Option<SocketAddr>,
    /// Largest native frame accepted.
    pub native_frame_bytes_max: usize,
    /// Host and port clients are told to connect to (Metadata).
    pub advertised_host: String,
    pub advertised_port: u16,
    pub shards: usize,
    pub node_id: i32,
    /// `auto.create.topics.enable`
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of an auto-created topic.
    pub default_partitions: i32,
    /// `socket.request.max.bytes`
    pub request_bytes_max: usize,
    /// `group.min.session.timeout.ms`: the shortest session a group member may ask for.
    pub group_min_session_timeout_ms: i32,
    /// `group.consumer.session.timeout.ms`: KIP-848 members not heard from for this long are
    /// removed.
    pub group_consumer_session_timeout_ms: u64,
    /// `group.consumer.heartbeat.interval.ms`: how often KIP-848 members heartbeat.
    pub group_consumer_heartbeat_interval_ms: i32,
    /// `offsets.retention.minutes`, in ms.
    pub offsets_retention_ms: u64,
    /// Fetches of data older than the in-memory tail: sent from the segment file with sendfile,
    /// through the page cache (true), or read with O_DIRECT on the shard's io_uring and copied
    /// to the socket (false, the default: the page cache never holds O_DIRECT-written
    /// segments, so a sendfile there reads the device synchronously, on the reactor thread).
    pub fetch_zero_copy: bool,
    /// Broker-wide defaults for topic configs (Kafka's `log.*` settings), by topic-config name.
    pub topic_defaults: BTreeMap<String, String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./sluice-data"),
            kafka_listen: "0.0.0.0:9092".parse().expect("static address"),
            native_listen: Some("0.0.0.0:7575".parse().expect("static address")),
            native_frame_bytes_max: sluice_core::native::FRAME_BYTES_MAX,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            shards: 1,
            node_id: 0,
            auto_create_topics: true,
            default_partitions: 1,
            request_bytes_max: 100 * 1024 * 1024,
            fetch_zero_copy: false,
            group_min_session_timeout_ms: 6_000,
            group_consumer_session_timeout_ms: 45_000,
            group_consumer_heartbeat_interval_ms: 5_000,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            topic_defaults: BTreeMap::new(),
        }
    }
}

/// A topic config Sluice knows: its default and how to check a value.
pub struct TopicConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    /// DescribeConfigs type: 2 STRING, 3 INT, 5 LONG, 7 LIST.
    pub kind: i8,
}

pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    TopicConfigDef {
        name: "cleanup.policy",
        default: "delete",
        doc: "delete (compact is not supported yet)",
        kind: 7,
    },
    TopicConfigDef {
        name: "retention.ms",
        default: "604800000",
        doc: "-1 keeps forever",
        kind: 5,
    },
    TopicConfigDef {
        name: "retention.bytes",
        default: "-1",
        doc: "-1 means no size limit",
        kind: 5,
    },
    TopicConfigDef {
        name: "segment.bytes",
        default: "1073741824",
        doc: "segment roll size",
        kind: 3,
    },
    TopicConfigDef {
        name: "segment.ms",
        default: "604800000",
        doc: "segment roll age",
        kind: 5,
    },
    TopicConfigDef {
        name: "max.message.bytes",
        default: "1048588",
        doc: "largest batch",
        kind: 3,
    },
    TopicConfigDef {
        name: "message.timestamp.type",
        default: "CreateTime",
        doc: "CreateTime or LogAppendTime",
        kind: 2,
    },
    TopicConfigDef {
        name: "flush.messages",
        default: "1",
        doc: "1: fdatasync before every acknowledgement (group commit); larger: see flush.ms",
        kind: 5,
    },
    TopicConfigDef {
        name: "flush.ms",
        default: "9223372036854775807",
        doc: "with flush.messages > 1: fdatasync at least this often",
        kind: 5,
    },
    TopicConfigDef {
        name: "index.interval.bytes",
        default: "4096",
        doc: "sparse index spacing",
        kind: 3,
    },
    TopicConfigDef {
        name: "preallocate",
        // Kafka's default is false; here it costs little (zeroes a stretch ahead, cut at
        // roll) and makes every fdatasync under flush.messages=1 a data-only flush.
        default: "true",
        doc: "write zeroes ahead of the active segment's end so appends overwrite allocated blocks",
        kind: 1,
    },
];

/// Resolved configs of one topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    pub log: LogConfig,
    pub log_append_time: bool,
}

/// Checks one `name = value` pair; the error is the message for INVALID_CONFIG.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), String> {
    let int = |min: i64| -> Result<(), String> {
        match value.parse::<i64>() {
            Ok(v) if v >= min => Ok(()),
            _ => Err(format!(
                "invalid value '{value}' for {name}: expected an integer >= {min}"
            )),
        }
    };
    match name {
        "cleanup.policy" => match value {
            "delete" => Ok(()),
            "compact" | "compact,delete" | "delete,compact" => {
                Err("cleanup.policy=compact is not supported by this Sluice version".into())
            }
            _ => Err(format!("invalid value '{value}' for cleanup.policy")),
        },
        "retention.ms" | "retention.bytes" => int(-1),
        "segment.bytes" => match value.parse::<i64>() {
            Ok(v) if (14..=u32::MAX as i64).contains(&v) => Ok(()),
            _ => Err(format!("invalid value '{value}' for segment.bytes")),
        },
        "segment.ms" | "flush.ms" => int(1),
        "flush.messages" => int(1),
        "max.message.bytes" => int(0),
        "index.interval.bytes" => int(0),
        "preallocate" => match value {
            "true" | "false" => Ok(()),
            _ => Err(format!(
                "invalid value '{value}' for preallocate: true or false"
            )),
        },
        "message.timestamp.type" => match value {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err(format!(
                "invalid value '{value}' for message.timestamp.type"
            )),
        },
        _ => Err(format!("unknown topic config '{name}'")),
    }
}

/// The value of `name` for a topic: its own setting, else the broker default, else Kafka's.
pub fn effective<'a>(
    name: &str,
    topic: &'a BTreeMap<String, String>,
    broker: &'a BTreeMap<String, String>,
) -> Option<(&'a str, bool)> {
    if let Some(v) = topic.get(name) {
        return Some((v.as_str(), false));
    }
    if let Some(v) = broker.get(name) {
        return Some((v.as_str(), true));
    }
    TOPIC_CONFIGS
        .iter()
        .find(|d| d.name == name)
        .map(|d| (d.default, true))
}

pub fn resolve_topic_config(
    topic: &BTreeMap<String, String>,
    broker: &BTreeMap<String, String>,
) -> TopicConfig {
    let get = |name: &str| -> i64 {
        effective(name, topic, broker)
            .and_then(|(v, _)| v.parse().ok())
            .unwrap_or(-1)
    };
    let opt = |v: i64| (v >= 0).then_some(v as u64);
    let flush_messages = get("flush.messages");
    let flush_ms = get("flush.ms");
    let fsync = if flush_messages <= 1 {
        FsyncPolicy::Always
    } else if flush_ms > 0 && flush_ms < i64::MAX {
        FsyncPolicy::Interval {
            interval_ms: flush_ms as u64,
        }
    } else {
        FsyncPolicy::Never
    };
    let ts_type = effective("message.timestamp.type", topic, broker).map(|(v, _)| v);
    TopicConfig {
        log: LogConfig {
            segment_bytes_max: get("segment.bytes").clamp(14, u32::MAX as i64) as u64,
            segment_age_ms_max: opt(get("segment.ms")),
            retention_ms: opt(get("retention.ms")),
            retention_bytes: opt(get("retention.bytes")),
            batch_bytes_max: get("max.message.bytes").max(0) as usize,
            index_interval_bytes: get("index.interval.bytes").clamp(0, u32::MAX as i64) as u32,
            write_buffer_bytes_max: 4 << 20,
            fsync,
            tail_cache_bytes: LogConfig::default().tail_cache_bytes,
            preallocate_bytes: match effective("preallocate", topic, broker) {
                Some(("false", _)) => 0,
                _ => LogConfig::default().preallocate_bytes,
            },
        },
        log_append_time: ts_type == Some("LogAppendTime"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides_resolve() {
        let none = BTreeMap::new();
        let c = resolve_topic_config(&none, &none);
        assert_eq!(c.log.fsync, FsyncPolicy::Always);
        assert_eq!(c.log.retention_ms, Some(604_800_000));
        assert_eq!(c.log.retention_bytes, None);
        assert_eq!(c.log.batch_bytes_max, 1_048_588);
        let mut t = BTreeMap::new();
        t.insert("flush.messages".to_string(), "10000".to_string());
        t.insert("flush.ms".to_string(), "50".to_string());
        t.insert("retention.ms".to_string(), "-1".to_string());
        let c = resolve_topic_config(&t, &none);
        assert_eq!(c.log.fsync, FsyncPolicy::Interval { interval_ms: 50 });
        assert_eq!(c.log.retention_ms, None);
        assert_eq!(
            c.log.preallocate_bytes,
            LogConfig::default().preallocate_bytes
        );
        t.insert("preallocate".to_string(), "false".to_string());
        assert_eq!(resolve_topic_config(&t, &none).log.preallocate_bytes, 0);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(validate_topic_config("retention.ms", "abc").is_err());
        assert!(validate_topic_config("cleanup.policy", "compact").is_err());
        assert!(validate_topic_config("no.such.config", "1").is_err());
        assert!(validate_topic_config("segment.bytes", "1048576").is_ok());
        assert!(validate_topic_config("segment.bytes", "1").is_err());
        assert!(validate_topic_config("preallocate", "false").is_ok());
        assert!(validate_topic_config("preallocate", "yes").is_err());
    }
}
