//! Topic administration on the metadata home shard (shard 0): create, delete, add partitions,
//! alter configs. Each change is validated, persisted and published, then the owner shards open
//! (or drop) their partitions before the caller is answered.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::broker::config::{validate_topic_config, TOPIC_CONFIGS};
use crate::broker::metadata::{validate_topic_name, TopicMeta};
use crate::broker::shard::Shard;
use crate::kafka::errors as ec;

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

pub type AdminResult = Result<(), (i16, String)>;

/// Partition count ceiling per topic: every partition is a directory and an open log.
pub const PARTITIONS_MAX: i32 = 10_000;

/// Creates topics (on shard 0); returns one result per topic, in order.
pub async fn create_topics(
    shard: &Rc<Shard>,
    topics: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<AdminResult> {
    shard
        .submit_to(0, move |home| {
            Box::pin(create_on_home(home, topics, validate_only))
        })
        .await
}

async fn create_on_home(
    home: Rc<Shard>,
    topics: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<AdminResult> {
    let mut meta = (*home.metadata()).clone();
    let mut results = Vec::with_capacity(topics.len());
    let mut created = Vec::new();
    for t in topics {
        let r = check_new_topic(&t, &meta.topics, home.shared.config.default_partitions);
        if let (Ok(partitions), false) = (&r, validate_only) {
            meta.topics.insert(
                t.name.clone(),
                TopicMeta {
                    id: uuid::Uuid::new_v4(),
                    partitions: *partitions,
                    configs: t.configs.clone(),
                },
            );
            created.push((t.name.clone(), *partitions));
        }
        results.push(r.map(|_| ()));
    }
    if created.is_empty() {
        return results;
    }
    if let Err(e) = home.publish_metadata(meta) {
        return storage_failure(results, &e);
    }
    for (name, partitions) in created {
        open_partitions(&home, &name, 0..partitions).await;
    }
    results
}

/// Every request that would have succeeded fails with KAFKA_STORAGE_ERROR: the metadata could
/// not be made durable, so nothing was changed.
fn storage_failure(results: Vec<AdminResult>, e: &std::io::Error) -> Vec<AdminResult> {
    let msg = format!("cannot persist metadata: {e}");
    results
        .into_iter()
        .map(|r| r.and(Err((ec::KAFKA_STORAGE_ERROR, msg.clone()))))
        .collect()
}

fn check_new_topic(
    t: &NewTopic,
    existing: &BTreeMap<String, TopicMeta>,
    default_partitions: i32,
) -> Result<i32, (i16, String)> {
    validate_topic_name(&t.name).map_err(|m| (ec::INVALID_TOPIC_EXCEPTION, m))?;
    if existing.contains_key(&t.name) {
        return Err((
            ec::TOPIC_ALREADY_EXISTS,
            format!("topic '{}' already exists", t.name),
        ));
    }
    let partitions = if t.partitions == -1 {
        default_partitions
    } else {
        t.partitions
    };
    if !(1..=PARTITIONS_MAX).contains(&partitions) {
        return Err((
            ec::INVALID_PARTITIONS,
            format!("number of partitions must be between 1 and {PARTITIONS_MAX}"),
        ));
    }
    if t.replication_factor != -1 && t.replication_factor != 1 {
        return Err((
            ec::INVALID_REPLICATION_FACTOR,
            format!(
                "replication factor {} exceeds the 1 broker of this cluster",
                t.replication_factor
            ),
        ));
    }
    for (k, v) in &t.configs {
        validate_topic_config(k, v).map_err(|m| (ec::INVALID_CONFIG, m))?;
    }
    Ok(partitions)
}

/// What the owner shards do with a topic's partitions after a metadata change.
#[derive(Clone, Copy)]
enum OnOwner {
    Open,
    Drop,
}

/// Opens partitions `range` of `topic` on their owner shards.
pub async fn open_partitions(home: &Rc<Shard>, topic: &str, range: std::ops::Range<i32>) {
    on_owners(home, topic, range, OnOwner::Open).await
}

/// Opens or drops partitions `range` of `topic`, each on its owner shard, all at once.
async fn on_owners(home: &Rc<Shard>, topic: &str, range: std::ops::Range<i32>, action: OnOwner) {
    let waits = range.map(|p| {
        let name = topic.to_string();
        home.submit_to(home.owner(topic, p), move |s| {
            Box::pin(async move {
                match action {
                    OnOwner::Open => {
                        if let Err(e) = s.open_partition(&name, p).await {
                            eprintln!("sluice: cannot open {name}-{p}: {e}");
                        }
                    }
                    OnOwner::Drop => s.drop_partition(&name, p).await,
                }
            })
        })
    });
    futures::future::join_all(waits).await;
}

fn unknown_topic(name: &str) -> (i16, String) {
    (
        ec::UNKNOWN_TOPIC_OR_PARTITION,
        format!("unknown topic '{name}'"),
    )
}

/// Deletes topics by name (on shard 0).
pub async fn delete_topics(shard: &Rc<Shard>, names: Vec<String>) -> Vec<AdminResult> {
    shard
        .submit_to(0, move |home| {
            Box::pin(async move {
                let mut meta = (*home.metadata()).clone();
                let mut results = Vec::new();
                let mut doomed = Vec::new();
                for name in names {
                    match meta.topics.remove(&name) {
                        Some(t) => {
                            doomed.push((name, t.partitions));
                            results.push(Ok(()));
                        }
                        None => results.push(Err(unknown_topic(&name))),
                    }
                }
                if doomed.is_empty() {
                    return results;
                }
                if let Err(e) = home.publish_metadata(meta) {
                    return storage_failure(results, &e);
                }
                for (name, partitions) in doomed {
                    on_owners(&home, &name, 0..partitions, OnOwner::Drop).await;
                }
                results
            })
        })
        .await
}

/// Raises topics' partition counts (on shard 0).
pub async fn create_partitions(
    shard: &Rc<Shard>,
    requests: Vec<(String, i32)>,
    validate_only: bool,
) -> Vec<AdminResult> {
    shard
        .submit_to(0, move |home| {
            Box::pin(async move {
                let mut meta = (*home.metadata()).clone();
                let mut results = Vec::new();
                let mut grown = Vec::new();
                for (name, count) in requests {
                    let r = match meta.topics.get_mut(&name) {
                        None => Err(unknown_topic(&name)),
                        Some(t) if count <= t.partitions => Err((
                            ec::INVALID_PARTITIONS,
                            format!(
                                "topic '{name}' has {} partitions; the count can only grow",
                                t.partitions
                            ),
                        )),
                        Some(_) if count > PARTITIONS_MAX => Err((
                            ec::INVALID_PARTITIONS,
                            format!("at most {PARTITIONS_MAX} partitions per topic"),
                        )),
                        Some(t) => {
                            if !validate_only {
                                grown.push((name.clone(), t.partitions, count));
                                t.partitions = count;
                            }
                            Ok(())
                        }
                    };
                    results.push(r);
                }
                if grown.is_empty() {
                    return results;
                }
                if let Err(e) = home.publish_metadata(meta) {
                    return storage_failure(results, &e);
                }
                for (name, from, to) in grown {
                    open_partitions(&home, &name, from..to).await;
                }
                results
            })
        })
        .await
}

/// One IncrementalAlterConfigs operation.
#[derive(Debug, Clone)]
pub struct ConfigOp {
    pub name: String,
    /// 0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT
    pub op: i8,
    pub value: Option<String>,
}

/// Applies config operations to topics (on shard 0), then to their open partitions.
pub async fn alter_topic_configs(
    shard: &Rc<Shard>,
    requests: Vec<(String, Vec<ConfigOp>)>,
    validate_only: bool,
) -> Vec<AdminResult> {
    shard
        .submit_to(0, move |home| {
            Box::pin(async move {
                let mut meta = (*home.metadata()).clone();
                let mut results = Vec::new();
                let mut changed = Vec::new();
                for (name, ops) in requests {
                    let Some(t) = meta.topics.get_mut(&name) else {
                        results.push(Err(unknown_topic(&name)));
                        continue;
                    };
                    let mut configs = t.configs.clone();
                    let r = apply_ops(&mut configs, &ops);
                    if r.is_ok() && !validate_only {
                        t.configs = configs;
                        changed.push(name);
                    }
                    results.push(r);
                }
                if changed.is_empty() {
                    return results;
                }
                if let Err(e) = home.publish_metadata(meta) {
                    return storage_failure(results, &e);
                }
                let mut waits = Vec::new();
                for target in 0..home.shards() {
                    let names = changed.clone();
                    waits.push(home.submit_to(target, move |s| {
                        Box::pin(async move {
                            for n in &names {
                                s.apply_topic_configs(n);
                            }
                        })
                    }));
                }
                futures::future::join_all(waits).await;
                results
            })
        })
        .await
}

fn apply_ops(configs: &mut BTreeMap<String, String>, ops: &[ConfigOp]) -> AdminResult {
    for op in ops {
        if !TOPIC_CONFIGS.iter().any(|d| d.name == op.name) {
            return Err((
                ec::INVALID_CONFIG,
                format!("unknown topic config '{}'", op.name),
            ));
        }
        match (op.op, &op.value) {
            (0, Some(v)) => {
                validate_topic_config(&op.name, v).map_err(|m| (ec::INVALID_CONFIG, m))?;
                configs.insert(op.name.clone(), v.clone());
            }
            (1, _) => {
                configs.remove(&op.name);
            }
            (2 | 3, _) => {
                return Err((
                    ec::INVALID_CONFIG,
                    format!(
                        "APPEND/SUBTRACT do not apply to '{}', which is not a list",
                        op.name
                    ),
                ))
            }
            (0, None) => {
                return Err((
                    ec::INVALID_CONFIG,
                    format!("SET of '{}' without a value", op.name),
                ))
            }
            (other, _) => {
                return Err((
                    ec::INVALID_REQUEST,
                    format!("unknown config operation {other}"),
                ))
            }
        }
    }
    Ok(())
}
