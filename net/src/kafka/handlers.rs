//! One function per Kafka API: decoded request in, response out. Partition work runs on the
//! partition's owner shard through [`Shard::submit_to`]; answers are merged in request order.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    self, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_core::Offset;
use sluice_storage::{wall_clock_ms, LogError};

use super::admin::{self, ConfigOp, NewTopic};
use super::errors as ec;
use super::fetch_encode::{FileChunk, PartitionOut, Records, TopicOut};
use super::groups;
use crate::broker::config::{effective, TOPIC_CONFIGS};
use crate::broker::partition::log_error_code;
use crate::broker::shard::Shard;

/// The APIs and versions Sluice serves (advertised in ApiVersions). Versions outside these
/// ranges, and other APIs, are refused.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
];

pub fn supports(key: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(k, min, max)| k == key && (min..=max).contains(&version))
}

/// An UNSUPPORTED_VERSION answer for APIs Sluice does not serve (or versions it does not) whose
/// response has a top-level error code — every client-facing API but a few. `None` for the rest
/// (broker-to-controller APIs, and responses with only per-item errors): their connection is
/// closed, as Kafka does.
pub fn unsupported_response(key: ApiKey, _version: i16) -> Option<ResponseKind> {
    macro_rules! refuse {
        ($($api:ident => $resp:ident),* $(,)?) => {
            match key {
                $(ApiKey::$api => {
                    let mut r = $resp::default();
                    r.error_code = ec::UNSUPPORTED_VERSION;
                    Some(ResponseKind::$api(r))
                })*
                _ => None,
            }
        };
    }
    refuse!(
        FindCoordinator => FindCoordinatorResponse,
        JoinGroup => JoinGroupResponse,
        SyncGroup => SyncGroupResponse,
        Heartbeat => HeartbeatResponse,
        LeaveGroup => LeaveGroupResponse,
        ListGroups => ListGroupsResponse,
        OffsetFetch => OffsetFetchResponse,
        OffsetDelete => OffsetDeleteResponse,
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatResponse,
        AddOffsetsToTxn => AddOffsetsToTxnResponse,
        EndTxn => EndTxnResponse,
        SaslHandshake => SaslHandshakeResponse,
        SaslAuthenticate => SaslAuthenticateResponse,
        ListTransactions => ListTransactionsResponse,
        AddPartitionsToTxn => AddPartitionsToTxnResponse,
        DescribeAcls => DescribeAclsResponse,
        DescribeLogDirs => DescribeLogDirsResponse,
        DescribeClientQuotas => DescribeClientQuotasResponse,
        DescribeUserScramCredentials => DescribeUserScramCredentialsResponse,
        AlterPartitionReassignments => AlterPartitionReassignmentsResponse,
        ListPartitionReassignments => ListPartitionReassignmentsResponse,
        ElectLeaders => ElectLeadersResponse,
        DescribeQuorum => DescribeQuorumResponse,
        CreateDelegationToken => CreateDelegationTokenResponse,
        RenewDelegationToken => RenewDelegationTokenResponse,
        ExpireDelegationToken => ExpireDelegationTokenResponse,
        DescribeDelegationToken => DescribeDelegationTokenResponse,
        GetTelemetrySubscriptions => GetTelemetrySubscriptionsResponse,
        PushTelemetry => PushTelemetryResponse,
        UpdateFeatures => UpdateFeaturesResponse,
        ListConfigResources => ListConfigResourcesResponse,
        ShareGroupHeartbeat => ShareGroupHeartbeatResponse,
        ShareFetch => ShareFetchResponse,
        ShareAcknowledge => ShareAcknowledgeResponse,
    )
}

pub fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(sb(s))
}

/// A response: a `kafka-protocol` message, or a Fetch response whose records may be file
/// regions (encoded by [`super::fetch_encode`]).
pub enum Reply {
    Kind(Box<ResponseKind>),
    Fetch(Vec<TopicOut>),
}

/// Handles one decoded request; `None` means no response is sent (Produce with acks=0).
pub async fn handle(
    shard: &Rc<Shard>,
    request: RequestKind,
    version: i16,
    client_id: &str,
) -> Option<Reply> {
    if let RequestKind::Fetch(r) = request {
        return Some(Reply::Fetch(fetch(shard, r, version).await));
    }
    Some(Reply::Kind(Box::new(match request {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions(ec::NONE)),
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata(shard, r, version).await),
        RequestKind::Produce(r) => {
            return produce(shard, r)
                .await
                .map(|r| Reply::Kind(Box::new(ResponseKind::Produce(r))))
        }
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(list_offsets(shard, r, version).await)
        }
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(create_topics(shard, r).await),
        RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(delete_topics(shard, r).await),
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(create_partitions(shard, r).await)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(init_producer_id(shard, r).await)
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(offset_for_leader_epoch(shard, r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(describe_configs(shard, r, version))
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(incremental_alter_configs(shard, r).await)
        }
        RequestKind::DescribeCluster(_) => ResponseKind::DescribeCluster(describe_cluster(shard)),
        RequestKind::DeleteRecords(r) => {
            ResponseKind::DeleteRecords(delete_records(shard, r).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(shard, r, version))
        }
        RequestKind::JoinGroup(r) => {
            ResponseKind::JoinGroup(groups::join_group(shard, r, version, client_id).await)
        }
        RequestKind::SyncGroup(r) => {
            ResponseKind::SyncGroup(groups::sync_group(shard, r, version).await)
        }
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(shard, r).await),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(groups::leave_group(shard, r, version).await)
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(shard, r, version).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(shard, r, version).await)
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(groups::delete_groups(shard, r).await)
        }
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(groups::list_groups(shard, r).await),
        RequestKind::ConsumerGroupHeartbeat(r) => ResponseKind::ConsumerGroupHeartbeat(
            groups::consumer_group_heartbeat(shard, r, client_id).await,
        ),
        RequestKind::ConsumerGroupDescribe(r) => {
            ResponseKind::ConsumerGroupDescribe(groups::consumer_group_describe(shard, r).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(groups::offset_delete(shard, r).await)
        }
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe_groups(shard, r).await)
        }
        other => unreachable!("unsupported request reached the dispatcher: {other:?}"),
    })))
}

pub fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = error_code;
    r.api_keys = SUPPORTED
        .iter()
        .map(|&(k, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = k as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    r
}

async fn metadata(shard: &Rc<Shard>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let cfg = &shard.shared.config;
    let mut meta = shard.metadata();
    // Which topics: null = all (v1+), and in v0 an empty list also means all.
    let wanted: Option<Vec<(Option<String>, uuid::Uuid)>> = match &req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.iter()
                .map(|t| {
                    (
                        t.name.as_ref().map(|n| n.0.as_str().to_string()),
                        t.topic_id,
                    )
                })
                .collect(),
        ),
    };
    let auto = cfg.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    if let (Some(w), true) = (&wanted, auto) {
        let missing: Vec<NewTopic> = w
            .iter()
            .filter_map(|(n, _)| n.clone())
            .filter(|n| !meta.topics.contains_key(n))
            .map(|name| NewTopic {
                name,
                partitions: -1,
                replication_factor: -1,
                configs: BTreeMap::new(),
            })
            .collect();
        if !missing.is_empty() {
            admin::create_topics(shard, missing, false).await;
            meta = shard.metadata();
        }
    }
    let mut r = MetadataResponse::default();
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = BrokerId(cfg.node_id);
    broker.host = sb(&cfg.advertised_host);
    broker.port = cfg.advertised_port as i32;
    r.brokers = vec![broker];
    r.cluster_id = Some(sb(&meta.cluster_id));
    r.controller_id = BrokerId(cfg.node_id);
    let describe = |name: &str, t: &crate::broker::metadata::TopicMeta| {
        let mut rt = MetadataResponseTopic::default();
        rt.name = Some(topic_name(name));
        rt.topic_id = t.id;
        rt.partitions = (0..t.partitions)
            .map(|p| {
                let mut mp = MetadataResponsePartition::default();
                mp.partition_index = p;
                mp.leader_id = BrokerId(cfg.node_id);
                mp.leader_epoch = 0;
                mp.replica_nodes = vec![BrokerId(cfg.node_id)];
                mp.isr_nodes = vec![BrokerId(cfg.node_id)];
                mp
            })
            .collect();
        rt
    };
    r.topics = match wanted {
        None => meta.topics.iter().map(|(n, t)| describe(n, t)).collect(),
        Some(w) => w
            .into_iter()
            .map(|(name, id)| {
                let found = match &name {
                    Some(n) => meta.topics.get_key_value(n),
                    None => meta.topic_by_id(id),
                };
                match found {
                    Some((n, t)) => describe(n, t),
                    None => {
                        let mut rt = MetadataResponseTopic::default();
                        rt.name = name.as_deref().map(topic_name);
                        rt.topic_id = id;
                        rt.error_code = match &name {
                            Some(n) if crate::broker::metadata::validate_topic_name(n).is_err() => {
                                ec::INVALID_TOPIC_EXCEPTION
                            }
                            Some(_) => ec::UNKNOWN_TOPIC_OR_PARTITION,
                            None => ec::UNKNOWN_TOPIC_ID,
                        };
                        rt
                    }
                }
            })
            .collect(),
    };
    r
}

type PartResult = (usize, usize, Result<(i64, i64, i64), i16>);
/// A partition's share of a produce: (topic index, partition index, topic, partition, records).
type ProducePart = (usize, usize, String, i32, Bytes);
/// A partition's share of a fetch: (answer slot, topic, partition, offset, max bytes).
type FetchPart = (usize, String, i32, i64, i32);

async fn produce(shard: &Rc<Shard>, req: ProduceRequest) -> Option<ProduceResponse> {
    let acks = req.acks;
    if acks != 0 && acks != 1 && acks != -1 {
        return Some(error_produce_response(&req, ec::INVALID_REQUIRED_ACKS));
    }
    if req.transactional_id.is_some() {
        // Transactions are not supported yet: refuse rather than pretend.
        return Some(error_produce_response(&req, ec::UNSUPPORTED_VERSION));
    }
    // Group partitions by owner shard, keeping (topic index, partition index) for the merge.
    let meta = shard.metadata();
    let mut by_owner: HashMap<usize, Vec<ProducePart>> = HashMap::new();
    let mut results: Vec<PartResult> = Vec::new();
    for (ti, t) in req.topic_data.iter().enumerate() {
        let name = t.name.0.as_str();
        for (pi, p) in t.partition_data.iter().enumerate() {
            let known = meta.has_partition(name, p.index);
            if !known {
                results.push((ti, pi, Err(ec::UNKNOWN_TOPIC_OR_PARTITION)));
                continue;
            }
            if meta.streams.contains_key(name) {
                // A stream's topic is written through the stream (subjects, dedup, limits);
                // Kafka clients may read it.
                results.push((ti, pi, Err(ec::POLICY_VIOLATION)));
                continue;
            }
            let Some(records) = p.records.clone() else {
                results.push((ti, pi, Err(ec::CORRUPT_MESSAGE)));
                continue;
            };
            by_owner
                .entry(shard.owner(name, p.index))
                .or_default()
                .push((ti, pi, name.to_string(), p.index, records));
        }
    }
    let jobs = by_owner.into_iter().map(|(owner, parts)| {
        shard.submit_to(owner, move |s| {
            Box::pin(async move {
                let appends = parts.into_iter().map(|(ti, pi, name, index, records)| {
                    let s = s.clone();
                    async move {
                        let Some(p) = s.partition(&name, index) else {
                            return (ti, pi, Err(ec::UNKNOWN_TOPIC_OR_PARTITION));
                        };
                        let r = p.produce(&records, wall_clock_ms()).await;
                        let start = p.log.start_offset().0;
                        (ti, pi, r.map(|(base, time)| (base, time, start)))
                    }
                });
                futures::future::join_all(appends).await
            })
        })
    });
    for part in futures::future::join_all(jobs).await {
        results.extend(part);
    }
    if acks == 0 {
        return None;
    }
    let mut r = error_produce_response(&req, ec::NONE);
    for (ti, pi, res) in results {
        let pr = &mut r.responses[ti].partition_responses[pi];
        match res {
            Ok((base, time, start)) => {
                pr.base_offset = base;
                pr.log_append_time_ms = time;
                pr.log_start_offset = start;
            }
            Err(code) => pr.error_code = code,
        }
    }
    Some(r)
}

/// A produce response with every partition in request order set to `code` (offsets unknown).
fn error_produce_response(req: &ProduceRequest, code: i16) -> ProduceResponse {
    let mut r = ProduceResponse::default();
    r.responses = req
        .topic_data
        .iter()
        .map(|t| {
            let mut tr = TopicProduceResponse::default();
            tr.name = t.name.clone();
            tr.partition_responses = t
                .partition_data
                .iter()
                .map(|p| {
                    let mut pr = PartitionProduceResponse::default();
                    pr.index = p.index;
                    pr.error_code = code;
                    pr.base_offset = -1;
                    pr.log_append_time_ms = -1;
                    pr.log_start_offset = -1;
                    pr
                })
                .collect();
            tr
        })
        .collect();
    r
}

/// What one partition answered to a fetch.
struct FetchedPartition {
    error_code: i16,
    high_watermark: i64,
    log_start_offset: i64,
    records: Records,
}

impl Default for FetchedPartition {
    fn default() -> Self {
        FetchedPartition {
            error_code: ec::NONE,
            high_watermark: -1,
            log_start_offset: -1,
            records: Records::Bytes(Bytes::new()),
        }
    }
}

async fn fetch(shard: &Rc<Shard>, req: FetchRequest, version: i16) -> Vec<TopicOut> {
    let meta = shard.metadata();
    // Resolve each requested partition to (topic name, partition, offset, max bytes).
    struct Want {
        ti: usize,
        pi: usize,
        name: Option<String>,
        partition: i32,
        offset: i64,
        max_bytes: i32,
    }
    let mut wants = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let name = if version >= 13 {
            meta.topic_by_id(t.topic_id).map(|(n, _)| n.clone())
        } else {
            Some(t.topic.0.as_str().to_string())
        };
        for (pi, p) in t.partitions.iter().enumerate() {
            wants.push(Want {
                ti,
                pi,
                name: name.clone(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
            });
        }
    }
    let unknown_code = if version >= 13 {
        ec::UNKNOWN_TOPIC_ID
    } else {
        ec::UNKNOWN_TOPIC_OR_PARTITION
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let mut answers: Vec<FetchedPartition>;
    loop {
        answers = (0..wants.len())
            .map(|_| FetchedPartition::default())
            .collect();
        let mut by_owner: HashMap<usize, Vec<FetchPart>> = HashMap::new();
        for (i, w) in wants.iter().enumerate() {
            match &w.name {
                Some(n)
                    if meta
                        .topics
                        .get(n)
                        .is_some_and(|t| (0..t.partitions).contains(&w.partition)) =>
                {
                    by_owner
                        .entry(shard.owner(n, w.partition))
                        .or_default()
                        .push((i, n.clone(), w.partition, w.offset, w.max_bytes))
                }
                _ => answers[i].error_code = unknown_code,
            }
        }
        let owners: Vec<usize> = by_owner.keys().copied().collect();
        let jobs = by_owner.into_iter().map(|(owner, parts)| {
            shard.submit_to(owner, move |s| Box::pin(read_partitions(s, parts)))
        });
        let mut total = 0usize;
        for part in futures::future::join_all(jobs).await {
            for (i, fp) in part {
                total += fp.records.len() as usize;
                answers[i] = fp;
            }
        }
        let now = std::time::Instant::now();
        let errors = answers.iter().any(|a| a.error_code != ec::NONE);
        if total >= req.min_bytes.max(1) as usize || now >= deadline || errors || owners.is_empty()
        {
            break;
        }
        // Park on the partitions until one of them grows or the wait runs out.
        let remaining = deadline - now;
        let mut waits = Vec::new();
        for owner in owners {
            let parts: Vec<(String, i32, i64)> = wants
                .iter()
                .filter_map(|w| {
                    let n = w.name.as_ref()?;
                    (shard.owner(n, w.partition) == owner)
                        .then(|| (n.clone(), w.partition, w.offset))
                })
                .collect();
            waits.push(Box::pin(shard.submit_to(owner, move |s| {
                Box::pin(wait_for_data(s, parts, remaining))
            })));
        }
        futures::future::select_all(waits).await;
    }
    // Enforce the response-wide max_bytes: after the first non-empty partition, drop records
    // that would exceed it (the consumer fetches them next time).
    let mut budget = req.max_bytes.max(0) as usize;
    let mut first = true;
    for a in answers.iter_mut() {
        if a.records.is_empty() {
            continue;
        }
        let len = a.records.len() as usize;
        if !first && len > budget {
            a.records = Records::Bytes(Bytes::new());
            continue;
        }
        budget = budget.saturating_sub(len);
        first = false;
    }
    let mut out: Vec<TopicOut> = req
        .topics
        .iter()
        .map(|t| TopicOut {
            name: t.topic.0.as_str().to_string(),
            topic_id: t.topic_id,
            partitions: Vec::with_capacity(t.partitions.len()),
        })
        .collect();
    for (w, a) in wants.iter().zip(answers) {
        let p = &req.topics[w.ti].partitions[w.pi];
        debug_assert_eq!(
            out[w.ti].partitions.len(),
            w.pi,
            "partitions in request order"
        );
        out[w.ti].partitions.push(PartitionOut {
            index: p.partition,
            error_code: a.error_code,
            high_watermark: a.high_watermark,
            last_stable_offset: a.high_watermark,
            log_start_offset: a.log_start_offset,
            records: a.records,
        });
    }
    out
}

/// Reads the partitions of one shard for a fetch, all at once (a backlog read of several
/// partitions keeps several device reads in flight).
async fn read_partitions(s: Rc<Shard>, parts: Vec<FetchPart>) -> Vec<(usize, FetchedPartition)> {
    let reads = parts
        .into_iter()
        .map(|(i, name, index, offset, max_bytes)| {
            let s = s.clone();
            async move { (i, read_partition(&s, &name, index, offset, max_bytes).await) }
        });
    futures::future::join_all(reads).await
}

async fn read_partition(
    s: &Rc<Shard>,
    name: &str,
    index: i32,
    offset: i64,
    max_bytes: i32,
) -> FetchedPartition {
    let Some(p) = s.partition(name, index) else {
        return FetchedPartition {
            error_code: ec::UNKNOWN_TOPIC_OR_PARTITION,
            ..Default::default()
        };
    };
    let hw = p.log.acked_end().0;
    let start = p.log.start_offset().0;
    let mut fp = FetchedPartition {
        error_code: ec::NONE,
        high_watermark: hw,
        log_start_offset: start,
        records: Records::Bytes(Bytes::new()),
    };
    let max = max_bytes.max(1) as usize;
    // Tailing readers are answered from the log's in-memory tail; older data from disk:
    // sent from the page cache (sendfile), or read with O_DIRECT and copied, the region the
    // consumer will ask for next read ahead meanwhile (see `read_ahead`).
    let cached = match p.log.read_cached(Offset(offset), max) {
        Ok(Some(bytes)) => Some(Ok(Records::Bytes(bytes))),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    };
    let read = if let Some(r) = cached {
        if !s.read_ahead.is_empty() {
            // Caught up with the tail: what was read ahead behind here is of no more use.
            drop(s.read_ahead.take(&p, offset, max));
        }
        r
    } else if s.shared.config.fetch_zero_copy {
        match p.log.read_region(Offset(offset), max).await {
            Ok(Some(region)) => match p.region_fd(&region) {
                Ok(fd) => Ok(Records::File(FileChunk {
                    fd,
                    pos: region.pos,
                    len: region.len,
                })),
                Err(e) => Err(LogError::Io {
                    op: "open for sendfile",
                    path: region.path.display().to_string(),
                    source: e,
                }),
            },
            Ok(None) => Ok(Records::Bytes(Bytes::new())),
            Err(e) => Err(e),
        }
    } else {
        let read = match s.read_ahead.take(&p, offset, max) {
            Some(ahead) => ahead.await,
            None => p.log.read_region_bytes(Offset(offset), max).await,
        };
        if let Ok(Some(region)) = &read {
            s.read_ahead.follow(&p, offset, max, region);
        }
        read.map(|b| Records::Bytes(b.map(Bytes::from).unwrap_or_default()))
    };
    match read {
        Ok(records) => fp.records = records,
        Err(LogError::OffsetOutOfRange { .. }) => fp.error_code = ec::OFFSET_OUT_OF_RANGE,
        Err(e) => {
            eprintln!("sluice: fetch from {name}-{index} failed: {e}");
            fp.error_code = log_error_code(&e);
        }
    }
    fp
}

async fn wait_for_data(s: Rc<Shard>, parts: Vec<(String, i32, i64)>, timeout: Duration) {
    let waits: Vec<_> = parts
        .into_iter()
        .filter_map(|(name, index, offset)| {
            let p = s.partition(&name, index)?;
            Some(Box::pin(async move {
                let _ = p.log.wait_for_acked_end_above(Offset(offset)).await;
            }))
        })
        .collect();
    if waits.is_empty() {
        return;
    }
    futures_lite::future::or(
        async {
            futures::future::select_all(waits).await;
        },
        glommio::timer::sleep(timeout),
    )
    .await;
}

async fn list_offsets(
    shard: &Rc<Shard>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let meta = shard.metadata();
    let mut r = ListOffsetsResponse::default();
    let mut jobs = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let name = t.name.0.as_str().to_string();
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = t.name.clone();
        for (pi, p) in t.partitions.iter().enumerate() {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            // Only v4+ carries the leader epoch (and the encoder refuses it below that).
            pr.leader_epoch = if version >= 4 { 0 } else { -1 };
            let known = meta.has_partition(&name, p.partition_index);
            if !known {
                pr.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION;
            } else {
                let (n, index, ts) = (name.clone(), p.partition_index, p.timestamp);
                jobs.push(async move {
                    let res = shard
                        .on_partition(n, index, move |p| {
                            Box::pin(async move {
                                match ts {
                                    -1 => Ok((p.log.acked_end().0, -1)),
                                    -2 => Ok((p.log.start_offset().0, -1)),
                                    t if t >= 0 => match p.log.offset_for_timestamp(t).await {
                                        Ok(Some(hit)) => Ok((hit.offset.0, hit.timestamp)),
                                        Ok(None) => Ok((-1, -1)),
                                        Err(e) => Err(log_error_code(&e)),
                                    },
                                    _ => Err(ec::UNSUPPORTED_VERSION),
                                }
                            })
                        })
                        .await;
                    (ti, pi, res)
                });
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    for (ti, pi, res) in futures::future::join_all(jobs).await {
        let pr = &mut r.topics[ti].partitions[pi];
        match res {
            Ok((offset, ts)) => {
                pr.offset = offset;
                pr.timestamp = ts;
            }
            Err(code) => pr.error_code = code,
        }
    }
    r
}

async fn create_topics(shard: &Rc<Shard>, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let topics: Vec<NewTopic> = req
        .topics
        .iter()
        .map(|t| NewTopic {
            name: t.name.0.as_str().to_string(),
            partitions: t.num_partitions,
            replication_factor: t.replication_factor,
            configs: t
                .configs
                .iter()
                .filter_map(|c| {
                    Some((
                        c.name.as_str().to_string(),
                        c.value.as_ref()?.as_str().to_string(),
                    ))
                })
                .collect(),
        })
        .collect();
    let results = admin::create_topics(shard, topics.clone(), req.validate_only).await;
    let meta = shard.metadata();
    let mut r = CreateTopicsResponse::default();
    r.topics = topics
        .iter()
        .zip(results)
        .map(|(t, res)| {
            let mut tr = CreatableTopicResult::default();
            tr.name = topic_name(&t.name);
            match res {
                Ok(()) => {
                    if let Some(m) = meta.topics.get(&t.name) {
                        tr.topic_id = m.id;
                        tr.num_partitions = m.partitions;
                    } else {
                        tr.num_partitions = if t.partitions == -1 {
                            shard.shared.config.default_partitions
                        } else {
                            t.partitions
                        };
                    }
                    tr.replication_factor = 1;
                    tr.configs = Some(Vec::new());
                }
                Err((code, msg)) => {
                    tr.error_code = code;
                    tr.error_message = Some(sb(&msg));
                    tr.num_partitions = -1;
                    tr.replication_factor = -1;
                }
            }
            tr
        })
        .collect();
    r
}

async fn delete_topics(shard: &Rc<Shard>, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let meta = shard.metadata();
    // v0-5 name topics in `topic_names`; v6 in `topics`, by name or by id.
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.as_str().to_string()), uuid::Uuid::nil()))
        .collect();
    targets.extend(req.topics.iter().map(|t| {
        let name = t
            .name
            .as_ref()
            .map(|n| n.0.as_str().to_string())
            .or_else(|| meta.topic_by_id(t.topic_id).map(|(n, _)| n.clone()));
        (name, t.topic_id)
    }));
    let names: Vec<String> = targets
        .iter()
        .map(|(n, _)| n.clone().unwrap_or_default())
        .collect();
    let results = admin::delete_topics(shard, names).await;
    let mut r = DeleteTopicsResponse::default();
    r.responses = targets
        .into_iter()
        .zip(results)
        .map(|((name, id), res)| {
            let mut d = DeletableTopicResult::default();
            d.name = name.as_deref().map(topic_name);
            d.topic_id = id;
            if let Err((code, msg)) = res {
                d.error_code = if name.is_none() {
                    ec::UNKNOWN_TOPIC_ID
                } else {
                    code
                };
                d.error_message = Some(sb(&msg));
            }
            d
        })
        .collect();
    r
}

async fn create_partitions(
    shard: &Rc<Shard>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let asks: Vec<(String, i32)> = req
        .topics
        .iter()
        .map(|t| (t.name.0.as_str().to_string(), t.count))
        .collect();
    let results = admin::create_partitions(shard, asks.clone(), req.validate_only).await;
    let mut r = CreatePartitionsResponse::default();
    r.results = asks
        .iter()
        .zip(results)
        .map(|((name, _), res)| {
            let mut tr = CreatePartitionsTopicResult::default();
            tr.name = topic_name(name);
            if let Err((code, msg)) = res {
                tr.error_code = code;
                tr.error_message = Some(sb(&msg));
            }
            tr
        })
        .collect();
    r
}

async fn init_producer_id(shard: &Rc<Shard>, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    if req.transactional_id.is_some() {
        // Transactions are not supported yet.
        r.error_code = ec::UNSUPPORTED_VERSION;
        return r;
    }
    if req.producer_id.0 >= 0 {
        // KIP-360: an idempotent producer bumps its own epoch to reset sequences.
        if req.producer_epoch == i16::MAX {
            // Epoch exhausted: a fresh id.
        } else {
            r.producer_id = req.producer_id;
            r.producer_epoch = req.producer_epoch + 1;
            return r;
        }
    }
    match shard
        .submit_to(0, |home| {
            Box::pin(async move { home.allocate_producer_id().map_err(|e| e.to_string()) })
        })
        .await
    {
        Ok(id) => {
            r.producer_id = ProducerId(id);
            r.producer_epoch = 0;
        }
        Err(e) => {
            eprintln!("sluice: cannot allocate a producer id: {e}");
            r.error_code = ec::KAFKA_STORAGE_ERROR;
        }
    }
    r
}

async fn offset_for_leader_epoch(
    shard: &Rc<Shard>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let meta = shard.metadata();
    let mut r = OffsetForLeaderEpochResponse::default();
    for t in &req.topics {
        let name = t.topic.0.as_str().to_string();
        let mut tr = OffsetForLeaderTopicResult::default();
        tr.topic = t.topic.clone();
        for p in &t.partitions {
            let mut e = offset_for_leader_epoch_response::EpochEndOffset::default();
            e.partition = p.partition;
            let known = meta.has_partition(&name, p.partition);
            if !known {
                e.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION;
                e.leader_epoch = -1;
                e.end_offset = -1;
            } else if p.leader_epoch > 0 {
                // Every partition has had one leader epoch (0) so far.
                e.leader_epoch = -1;
                e.end_offset = -1;
            } else {
                let (n, index) = (name.clone(), p.partition);
                let end = shard
                    .on_partition(n, index, |p| {
                        Box::pin(async move { Ok(p.log.end_offset().0) })
                    })
                    .await;
                e.leader_epoch = 0;
                e.end_offset = end.unwrap_or(-1);
            }
            tr.partitions.push(e);
        }
        r.topics.push(tr);
    }
    r
}

fn describe_configs(
    shard: &Rc<Shard>,
    req: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    const TOPIC: i8 = 2;
    const BROKER: i8 = 4;
    let meta = shard.metadata();
    let broker_defaults = &shard.shared.config.topic_defaults;
    let mut r = DescribeConfigsResponse::default();
    for res in &req.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        let keys: Option<Vec<String>> = res
            .configuration_keys
            .as_ref()
            .map(|k| k.iter().map(|s| s.as_str().to_string()).collect());
        let wanted = |n: &str| keys.as_ref().is_none_or(|k| k.iter().any(|x| x == n));
        match res.resource_type {
            TOPIC => match meta.topics.get(res.resource_name.as_str()) {
                None => {
                    out.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION;
                    out.error_message = Some(sb("unknown topic"));
                }
                Some(t) => {
                    for d in TOPIC_CONFIGS.iter().filter(|d| wanted(d.name)) {
                        let (value, is_default) =
                            effective(d.name, &t.configs, broker_defaults).expect("known config");
                        let mut c = DescribeConfigsResourceResult::default();
                        c.name = sb(d.name);
                        c.value = Some(sb(value));
                        // 1 dynamic topic config, 5 default config.
                        c.config_source = if is_default { 5 } else { 1 };
                        if version >= 3 {
                            c.config_type = d.kind;
                        }
                        if req.include_documentation {
                            c.documentation = Some(sb(d.doc));
                        }
                        out.configs.push(c);
                    }
                }
            },
            BROKER => {
                let cfg = &shard.shared.config;
                let listener = format!("PLAINTEXT://{}", cfg.kafka_listen);
                let advertised = format!(
                    "PLAINTEXT://{}:{}",
                    cfg.advertised_host, cfg.advertised_port
                );
                let entries = [
                    ("advertised.listeners", advertised, 2),
                    ("listeners", listener, 2),
                    (
                        "auto.create.topics.enable",
                        cfg.auto_create_topics.to_string(),
                        1,
                    ),
                    ("num.partitions", cfg.default_partitions.to_string(), 3),
                    (
                        "socket.request.max.bytes",
                        cfg.request_bytes_max.to_string(),
                        3,
                    ),
                    ("node.id", cfg.node_id.to_string(), 3),
                    ("log.dirs", cfg.data_dir.display().to_string(), 2),
                    (
                        "group.min.session.timeout.ms",
                        cfg.group_min_session_timeout_ms.to_string(),
                        3,
                    ),
                    (
                        "group.consumer.session.timeout.ms",
                        cfg.group_consumer_session_timeout_ms.to_string(),
                        3,
                    ),
                    (
                        "group.consumer.heartbeat.interval.ms",
                        cfg.group_consumer_heartbeat_interval_ms.to_string(),
                        3,
                    ),
                    (
                        "offsets.retention.minutes",
                        (cfg.offsets_retention_ms / 60_000).to_string(),
                        3,
                    ),
                ];
                for (name, value, kind) in entries.iter().filter(|(n, _, _)| wanted(n)) {
                    let mut c = DescribeConfigsResourceResult::default();
                    c.name = sb(name);
                    c.value = Some(sb(value));
                    c.read_only = true;
                    c.config_source = 4; // static broker config
                    if version >= 3 {
                        c.config_type = *kind;
                    }
                    out.configs.push(c);
                }
            }
            _ => {
                out.error_code = ec::INVALID_REQUEST;
                out.error_message = Some(sb("only topic and broker resources are supported"));
            }
        }
        r.results.push(out);
    }
    r
}

async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut r = IncrementalAlterConfigsResponse::default();
    let mut asks = Vec::new();
    let mut slots = Vec::new();
    for (i, res) in req.resources.iter().enumerate() {
        let mut out = AlterConfigsResourceResponse::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        if res.resource_type != 2 {
            out.error_code = ec::INVALID_REQUEST;
            out.error_message = Some(sb("only topic configs can be altered"));
        } else {
            let ops = res
                .configs
                .iter()
                .map(|c| ConfigOp {
                    name: c.name.as_str().to_string(),
                    op: c.config_operation,
                    value: c.value.as_ref().map(|v| v.as_str().to_string()),
                })
                .collect();
            asks.push((res.resource_name.as_str().to_string(), ops));
            slots.push(i);
        }
        r.responses.push(out);
    }
    let results = admin::alter_topic_configs(shard, asks, req.validate_only).await;
    for (i, res) in slots.into_iter().zip(results) {
        if let Err((code, msg)) = res {
            r.responses[i].error_code = code;
            r.responses[i].error_message = Some(sb(&msg));
        }
    }
    r
}

fn describe_cluster(shard: &Rc<Shard>) -> DescribeClusterResponse {
    let cfg = &shard.shared.config;
    let mut r = DescribeClusterResponse::default();
    r.cluster_id = sb(&shard.metadata().cluster_id);
    r.controller_id = BrokerId(cfg.node_id);
    let mut b = DescribeClusterBroker::default();
    b.broker_id = BrokerId(cfg.node_id);
    b.host = sb(&cfg.advertised_host);
    b.port = cfg.advertised_port as i32;
    r.brokers = vec![b];
    r
}

async fn delete_records(shard: &Rc<Shard>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let meta = shard.metadata();
    let mut r = DeleteRecordsResponse::default();
    let mut jobs = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let name = t.name.0.as_str().to_string();
        let mut tr = DeleteRecordsTopicResult::default();
        tr.name = t.name.clone();
        for (pi, p) in t.partitions.iter().enumerate() {
            let mut pr = DeleteRecordsPartitionResult::default();
            pr.partition_index = p.partition_index;
            pr.low_watermark = -1;
            let known = meta.has_partition(&name, p.partition_index);
            if !known {
                pr.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION;
            } else {
                let (n, index, offset) = (name.clone(), p.partition_index, p.offset);
                jobs.push(async move {
                    let res = shard
                        .on_partition(n, index, move |p| {
                            Box::pin(async move {
                                // -1 means "up to the high watermark".
                                let to = if offset == -1 {
                                    p.log.acked_end()
                                } else {
                                    Offset(offset)
                                };
                                p.log
                                    .delete_records_before(to)
                                    .await
                                    .map(|o| o.0)
                                    .map_err(|e| log_error_code(&e))
                            })
                        })
                        .await;
                    (ti, pi, res)
                });
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    for (ti, pi, res) in futures::future::join_all(jobs).await {
        let pr = &mut r.topics[ti].partitions[pi];
        match res {
            Ok(low) => pr.low_watermark = low,
            Err(code) => pr.error_code = code,
        }
    }
    r
}
