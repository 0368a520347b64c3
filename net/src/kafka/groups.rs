//! Consumer-group APIs (classic protocol): FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups. Each group lives on its
//! home shard ([`Shard::group_owner`]); requests are forwarded there.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use sluice_core::consumer_group::{
    Assignment, HeartbeatRequest as HeartbeatReq, HeartbeatResponse as HeartbeatResp,
};
use sluice_core::group::{codes, Completion, GroupState, JoinRequest, JoinResponse};
use sluice_storage::wall_clock_ms;

use super::errors as ec;
use super::handlers::sb;
use crate::broker::groups::{Committed, MetaTopics};
use crate::broker::metadata::Metadata;
use crate::broker::shard::Shard;

const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;

/// Topics and partitions an OffsetFetch asks about (`None`: all the group has).
type TopicAsks = Vec<(String, Vec<i32>)>;
/// Committed offsets found for one topic, per partition.
type PartitionsFound = Vec<(i32, Option<Committed>)>;
/// Committed offsets found, per (topic, partition).
type Found = Vec<((String, i32), Option<Committed>)>;

pub fn find_coordinator(
    shard: &Rc<Shard>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let cfg = &shard.shared.config;
    let mut r = FindCoordinatorResponse::default();
    // Groups only: transactions are not served yet.
    let code = if req.key_type == 0 {
        ec::NONE
    } else {
        COORDINATOR_NOT_AVAILABLE
    };
    if version < 4 {
        r.error_code = code;
        if code == ec::NONE {
            r.node_id = BrokerId(cfg.node_id);
            r.host = sb(&cfg.advertised_host);
            r.port = cfg.advertised_port as i32;
        } else {
            r.node_id = BrokerId(-1);
        }
        return r;
    }
    r.coordinators = req
        .coordinator_keys
        .iter()
        .map(|k| {
            let mut c = Coordinator::default();
            c.key = k.clone();
            c.error_code = code;
            if code == ec::NONE {
                c.node_id = BrokerId(cfg.node_id);
                c.host = sb(&cfg.advertised_host);
                c.port = cfg.advertised_port as i32;
            } else {
                c.node_id = BrokerId(-1);
            }
            c
        })
        .collect();
    r
}

pub async fn join_group(
    shard: &Rc<Shard>,
    req: JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> JoinGroupResponse {
    let group = req.group_id.0.as_str().to_string();
    let join = JoinRequest {
        group_id: group.clone(),
        member_id: req.member_id.as_str().to_string(),
        group_instance_id: req
            .group_instance_id
            .as_ref()
            .map(|s| s.as_str().to_string()),
        client_id: client_id.to_string(),
        client_host: "/127.0.0.1".to_string(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.as_str().to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.as_str().to_string(), p.metadata.to_vec()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let answer = shard
        .submit_to(shard.group_owner(&group), move |s| {
            Box::pin(async move {
                let home = s.group_home();
                if !home.consumer.borrow().is_empty_group(&join.group_id) {
                    return Some(JoinResponse {
                        error_code: codes::INCONSISTENT_GROUP_PROTOCOL,
                        generation_id: -1,
                        protocol_type: None,
                        protocol_name: None,
                        leader: String::new(),
                        member_id: join.member_id.clone(),
                        members: Vec::new(),
                    });
                }
                let reply = home.coordinator.borrow_mut().join(wall_clock_ms(), join);
                home.answer(reply, |c| match c {
                    Completion::Join(j) => Some(j),
                    Completion::Sync(_) => None,
                })
                .await
            })
        })
        .await;
    let mut r = JoinGroupResponse::default();
    match answer {
        None => r.error_code = codes::REBALANCE_IN_PROGRESS,
        Some(j) => {
            r.error_code = j.error_code;
            r.generation_id = j.generation_id;
            if version >= 7 {
                r.protocol_type = j.protocol_type.as_deref().map(sb);
            }
            r.protocol_name = j.protocol_name.as_deref().map(sb).or(Some(sb("")));
            r.leader = sb(&j.leader);
            r.member_id = sb(&j.member_id);
            r.members = j
                .members
                .into_iter()
                .map(|(id, instance, meta)| {
                    let mut m = JoinGroupResponseMember::default();
                    m.member_id = sb(&id);
                    if version >= 5 {
                        m.group_instance_id = instance.as_deref().map(sb);
                    }
                    m.metadata = Bytes::from(meta);
                    m
                })
                .collect();
        }
    }
    r
}

pub async fn sync_group(
    shard: &Rc<Shard>,
    req: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let group = req.group_id.0.as_str().to_string();
    let member = req.member_id.as_str().to_string();
    let generation = req.generation_id;
    let assignments: Vec<(String, Vec<u8>)> = req
        .assignments
        .iter()
        .map(|a| (a.member_id.as_str().to_string(), a.assignment.to_vec()))
        .collect();
    let answer = shard
        .submit_to(shard.group_owner(&group), move |s| {
            Box::pin(async move {
                let home = s.group_home();
                let reply =
                    home.coordinator
                        .borrow_mut()
                        .sync(&group, &member, generation, assignments);
                home.answer(reply, |c| match c {
                    Completion::Sync(r) => Some(r),
                    Completion::Join(_) => None,
                })
                .await
            })
        })
        .await;
    let mut r = SyncGroupResponse::default();
    match answer {
        None => r.error_code = codes::REBALANCE_IN_PROGRESS,
        Some(a) => {
            r.error_code = a.error_code;
            if version >= 5 {
                r.protocol_type = a.protocol_type.as_deref().map(sb);
                r.protocol_name = a.protocol_name.as_deref().map(sb);
            }
            r.assignment = Bytes::from(a.assignment);
        }
    }
    r
}

pub async fn heartbeat(shard: &Rc<Shard>, req: HeartbeatRequest) -> HeartbeatResponse {
    let group = req.group_id.0.as_str().to_string();
    let member = req.member_id.as_str().to_string();
    let generation = req.generation_id;
    let code = shard
        .submit_to(shard.group_owner(&group), move |s| {
            Box::pin(async move {
                let home = s.group_home();
                let code = home.coordinator.borrow_mut().heartbeat(
                    wall_clock_ms(),
                    &group,
                    &member,
                    generation,
                );
                home.dispatch();
                code
            })
        })
        .await;
    let mut r = HeartbeatResponse::default();
    r.error_code = code;
    r
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = req.group_id.0.as_str().to_string();
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.as_str().to_string(),
                    m.group_instance_id.as_ref().map(|s| s.as_str().to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.as_str().to_string(), None)]
    };
    let ids: Vec<String> = members.iter().map(|(m, _)| m.clone()).collect();
    let codes_out = shard
        .submit_to(shard.group_owner(&group), move |s| {
            Box::pin(async move {
                let home = s.group_home();
                let out = home
                    .coordinator
                    .borrow_mut()
                    .leave(wall_clock_ms(), &group, &ids);
                home.dispatch();
                out
            })
        })
        .await;
    let mut r = LeaveGroupResponse::default();
    if version >= 3 {
        r.members = members
            .into_iter()
            .zip(&codes_out)
            .map(|((id, instance), code)| {
                let mut m = MemberResponse::default();
                m.member_id = sb(&id);
                m.group_instance_id = instance.as_deref().map(sb);
                m.error_code = *code;
                m
            })
            .collect();
    } else {
        r.error_code = codes_out.first().copied().unwrap_or(ec::NONE);
    }
    r
}

pub async fn offset_commit(
    shard: &Rc<Shard>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let group = req.group_id.0.as_str().to_string();
    let member = req.member_id.as_str().to_string();
    let generation = req.generation_id_or_member_epoch;
    let meta = shard.metadata();
    let mut r = OffsetCommitResponse::default();
    let mut commits = Vec::new();
    for t in &req.topics {
        let mut tr = OffsetCommitResponseTopic::default();
        tr.name = t.name.clone();
        for p in &t.partitions {
            let mut pr = OffsetCommitResponsePartition::default();
            pr.partition_index = p.partition_index;
            if !meta.has_partition(t.name.0.as_str(), p.partition_index) {
                pr.error_code = ec::UNKNOWN_TOPIC_OR_PARTITION;
            } else {
                commits.push((
                    (t.name.0.as_str().to_string(), p.partition_index),
                    Committed {
                        offset: p.committed_offset,
                        metadata: p
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.as_str().to_string())
                            .unwrap_or_default(),
                        commit_ms: 0,
                    },
                ));
            }
            tr.partitions.push(pr);
        }
        r.topics.push(tr);
    }
    let code = shard
        .submit_to(shard.group_owner(&group), move |s| {
            Box::pin(async move {
                let home = s.group_home();
                let consumer_group = home.consumer.borrow().contains(&group);
                let code = if !consumer_group {
                    home.coordinator
                        .borrow_mut()
                        .validate_commit(&group, &member, generation)
                } else if version < 9 && !(member.is_empty() && generation < 0) {
                    // Members of a KIP-848 group commit with their member epoch (v9+).
                    ec::UNSUPPORTED_VERSION
                } else {
                    home.consumer
                        .borrow()
                        .validate_commit(&group, &member, generation)
                };
                if code != codes::NONE {
                    return code;
                }
                match home.commit(&group, commits).await {
                    Ok(()) => codes::NONE,
                    Err(e) => {
                        eprintln!("sluice: offset commit for group {group} failed: {e}");
                        ec::KAFKA_STORAGE_ERROR
                    }
                }
            })
        })
        .await;
    for t in r.topics.iter_mut() {
        for p in t.partitions.iter_mut() {
            if p.error_code == ec::NONE {
                p.error_code = code;
            }
        }
    }
    r
}

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    // v8+ asks for several groups at once; older versions for one.
    // v9: a KIP-848 member names itself and its epoch, which must be current.
    type Member = Option<(String, i32)>;
    let asks: Vec<(String, Option<TopicAsks>, Member)> = if version >= 8 {
        req.groups
            .iter()
            .map(|g| {
                (
                    g.group_id.0.as_str().to_string(),
                    g.topics.as_ref().map(|ts| {
                        ts.iter()
                            .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes.clone()))
                            .collect()
                    }),
                    g.member_id
                        .as_ref()
                        .filter(|_| version >= 9)
                        .map(|m| (m.as_str().to_string(), g.member_epoch)),
                )
            })
            .collect()
    } else {
        vec![(
            req.group_id.0.as_str().to_string(),
            req.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes.clone()))
                    .collect()
            }),
            None,
        )]
    };
    let mut results = Vec::new();
    for (group, topics, member) in asks {
        let g = group.clone();
        let found: Result<Found, i16> = shard
            .submit_to(shard.group_owner(&group), move |s| {
                Box::pin(async move {
                    let home = s.group_home();
                    if let Some((member, epoch)) = member {
                        if home.consumer.borrow().contains(&g) {
                            let code = home.consumer.borrow().validate_fetch(&g, &member, epoch);
                            if code != codes::NONE {
                                return Err(code);
                            }
                        }
                    }
                    Ok(match topics {
                        None => home
                            .committed_all(&g)
                            .into_iter()
                            .map(|(tp, c)| (tp, Some(c)))
                            .collect(),
                        Some(ts) => ts
                            .into_iter()
                            .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
                            .map(|(t, p)| {
                                let c = home.committed(&g, &t, p);
                                ((t, p), c)
                            })
                            .collect(),
                    })
                })
            })
            .await;
        results.push((group, found));
    }
    let mut r = OffsetFetchResponse::default();
    let group_topics = |found: &[((String, i32), Option<Committed>)]| {
        let mut topics: Vec<(String, PartitionsFound)> = Vec::new();
        for ((t, p), c) in found {
            match topics.iter_mut().find(|(n, _)| n == t) {
                Some((_, ps)) => ps.push((*p, c.clone())),
                None => topics.push((t.clone(), vec![(*p, c.clone())])),
            }
        }
        topics
    };
    if version >= 8 {
        for (group, found) in results {
            let mut g = OffsetFetchResponseGroup::default();
            g.group_id = GroupId(sb(&group));
            let found = match found {
                Ok(f) => f,
                Err(code) => {
                    g.error_code = code;
                    r.groups.push(g);
                    continue;
                }
            };
            for (t, ps) in group_topics(&found) {
                let mut tr = OffsetFetchResponseTopics::default();
                tr.name = TopicName(sb(&t));
                for (p, c) in ps {
                    let mut pr = OffsetFetchResponsePartitions::default();
                    pr.partition_index = p;
                    pr.committed_offset = c.as_ref().map_or(-1, |c| c.offset);
                    pr.metadata = Some(sb(c.as_ref().map_or("", |c| c.metadata.as_str())));
                    tr.partitions.push(pr);
                }
                g.topics.push(tr);
            }
            r.groups.push(g);
        }
    } else if let Some((_, found)) = results.into_iter().next() {
        let found = found.unwrap_or_default();
        for (t, ps) in group_topics(&found) {
            let mut tr = OffsetFetchResponseTopic::default();
            tr.name = TopicName(sb(&t));
            for (p, c) in ps {
                let mut pr = OffsetFetchResponsePartition::default();
                pr.partition_index = p;
                pr.committed_offset = c.as_ref().map_or(-1, |c| c.offset);
                pr.metadata = Some(sb(c.as_ref().map_or("", |c| c.metadata.as_str())));
                tr.partitions.push(pr);
            }
            r.topics.push(tr);
        }
    }
    r
}

fn state_name(s: GroupState) -> &'static str {
    match s {
        GroupState::Empty => "Empty",
        GroupState::PreparingRebalance => "PreparingRebalance",
        GroupState::CompletingRebalance => "CompletingRebalance",
        GroupState::Stable => "Stable",
        GroupState::Dead => "Dead",
    }
}

pub async fn list_groups(shard: &Rc<Shard>, req: ListGroupsRequest) -> ListGroupsResponse {
    let mut waits = Vec::new();
    for target in 0..shard.shards() {
        waits.push(shard.submit_to(target, |s| {
            Box::pin(async move {
                let home = s.group_home();
                // (group, state, protocol type, group type)
                let mut out: Vec<(String, String, String, &'static str)> = home
                    .coordinator
                    .borrow()
                    .list()
                    .into_iter()
                    .map(|(g, st, pt)| (g, state_name(st).to_string(), pt, "classic"))
                    .collect();
                for (g, st) in home.consumer.borrow().list() {
                    out.retain(|(id, ..)| *id != g);
                    out.push((g, st.to_string(), "consumer".into(), "consumer"));
                }
                for g in home.groups_with_offsets() {
                    if !out.iter().any(|(id, ..)| *id == g) {
                        out.push((g, "Empty".into(), "consumer".into(), "classic"));
                    }
                }
                out
            })
        }));
    }
    let wanted = |filter: &[kafka_protocol::protocol::StrBytes], v: &str| {
        filter.is_empty() || filter.iter().any(|f| f.as_str().eq_ignore_ascii_case(v))
    };
    let mut r = ListGroupsResponse::default();
    for part in futures::future::join_all(waits).await {
        for (g, state, pt, kind) in part {
            if !wanted(&req.states_filter, &state) || !wanted(&req.types_filter, kind) {
                continue;
            }
            let mut lg = ListedGroup::default();
            lg.group_id = GroupId(sb(&g));
            lg.protocol_type = sb(&pt);
            lg.group_state = sb(&state);
            lg.group_type = sb(kind);
            r.groups.push(lg);
        }
    }
    r
}

pub async fn describe_groups(
    shard: &Rc<Shard>,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut r = DescribeGroupsResponse::default();
    for g in &req.groups {
        let group = g.0.as_str().to_string();
        let gid = group.clone();
        let (summary, consumer_group) = shard
            .submit_to(shard.group_owner(&group), move |s| {
                Box::pin(async move {
                    let home = s.group_home();
                    let summary = home.coordinator.borrow().describe(&gid);
                    let consumer_group = home.consumer.borrow().contains(&gid);
                    (summary, consumer_group)
                })
            })
            .await;
        let mut d = DescribedGroup::default();
        d.group_id = g.clone();
        match summary {
            // As Kafka: a KIP-848 group is described by ConsumerGroupDescribe.
            _ if consumer_group => {
                d.error_code = codes::GROUP_ID_NOT_FOUND;
                d.error_message = Some(sb(&format!("Group {group} is not a classic group.")));
            }
            None => d.group_state = sb("Dead"),
            Some(sm) => {
                d.group_state = sb(state_name(sm.state));
                d.protocol_type = sb(&sm.protocol_type);
                d.protocol_data = sb(&sm.protocol_name);
                d.members = sm
                    .members
                    .into_iter()
                    .map(|ms| {
                        let mut m = DescribedGroupMember::default();
                        m.member_id = sb(&ms.member_id);
                        m.group_instance_id = ms.instance_id.as_deref().map(sb);
                        m.client_id = sb(&ms.client_id);
                        m.client_host = sb(&ms.client_host);
                        m.member_metadata = Bytes::from(ms.metadata);
                        m.member_assignment = Bytes::from(ms.assignment);
                        m
                    })
                    .collect();
            }
        }
        r.groups.push(d);
    }
    r
}

pub async fn delete_groups(shard: &Rc<Shard>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut r = DeleteGroupsResponse::default();
    for g in &req.groups_names {
        let group = g.0.as_str().to_string();
        let gid = group.clone();
        let code = shard
            .submit_to(shard.group_owner(&group), move |s| {
                Box::pin(async move {
                    s.group_home().delete_group(&gid).await.unwrap_or_else(|e| {
                        eprintln!("sluice: deleting group {gid} failed: {e}");
                        ec::KAFKA_STORAGE_ERROR
                    })
                })
            })
            .await;
        let mut d = DeletableGroupResult::default();
        d.group_id = g.clone();
        d.error_code = code;
        r.results.push(d);
    }
    r
}

/// Partitions by topic id (the KIP-848 wire form) → by name; unknown ids are dropped (the topic
/// is gone, so the member cannot own it any more).
fn assignment_by_name(
    meta: &Metadata,
    parts: &[consumer_group_heartbeat_request::TopicPartitions],
) -> Assignment {
    let mut out = Assignment::new();
    for tp in parts {
        if let Some((name, _)) = meta.topic_by_id(tp.topic_id) {
            out.entry(name.clone())
                .or_default()
                .extend(tp.partitions.iter().copied());
        }
    }
    out
}

pub async fn consumer_group_heartbeat(
    shard: &Rc<Shard>,
    req: ConsumerGroupHeartbeatRequest,
    client_id: &str,
) -> ConsumerGroupHeartbeatResponse {
    let meta = shard.metadata();
    let group = req.group_id.0.as_str().to_string();
    let hb = HeartbeatReq {
        group_id: group.clone(),
        member_id: req.member_id.as_str().to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.as_ref().map(|s| s.as_str().to_string()),
        rack_id: req.rack_id.as_ref().map(|s| s.as_str().to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .as_ref()
            .map(|ts| ts.iter().map(|t| t.0.as_str().to_string()).collect()),
        subscribed_topic_regex: req
            .subscribed_topic_regex
            .as_ref()
            .map(|s| s.as_str().to_string()),
        server_assignor: req.server_assignor.as_ref().map(|s| s.as_str().to_string()),
        owned: req
            .topic_partitions
            .as_ref()
            .map(|tps| assignment_by_name(&meta, tps)),
        client_id: client_id.to_string(),
        client_host: "/127.0.0.1".to_string(),
    };
    let answer = shard
        .submit_to(shard.group_owner(&group), move |s| {
            Box::pin(async move {
                let home = s.group_home();
                let classic = home.coordinator.borrow().state(&hb.group_id);
                if !matches!(
                    classic,
                    None | Some(GroupState::Empty) | Some(GroupState::Dead)
                ) {
                    return HeartbeatResp {
                        error_code: codes::GROUP_ID_NOT_FOUND,
                        error_message: Some(format!(
                            "Group {} is not a consumer group (it uses the classic protocol).",
                            hb.group_id
                        )),
                        member_id: hb.member_id.clone(),
                        member_epoch: hb.member_epoch,
                        ..HeartbeatResp::default()
                    };
                }
                let topics = MetaTopics(s.metadata());
                let answer = home
                    .consumer
                    .borrow_mut()
                    .heartbeat(wall_clock_ms(), &topics, hb);
                answer
            })
        })
        .await;
    let mut r = ConsumerGroupHeartbeatResponse::default();
    r.error_code = answer.error_code;
    r.error_message = answer.error_message.as_deref().map(sb);
    r.member_id = Some(sb(&answer.member_id));
    r.member_epoch = answer.member_epoch;
    r.heartbeat_interval_ms = answer.heartbeat_interval_ms;
    let meta = shard.metadata();
    r.assignment = answer.assignment.map(|a| {
        let mut out = consumer_group_heartbeat_response::Assignment::default();
        out.topic_partitions = a
            .iter()
            .filter_map(|(t, ps)| {
                let tm = meta.topics.get(t)?;
                let mut tp = consumer_group_heartbeat_response::TopicPartitions::default();
                tp.topic_id = tm.id;
                tp.partitions = ps.iter().copied().collect();
                Some(tp)
            })
            .collect();
        out
    });
    r
}

pub async fn consumer_group_describe(
    shard: &Rc<Shard>,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    use consumer_group_describe_response as cgd;
    let mut r = ConsumerGroupDescribeResponse::default();
    for g in &req.group_ids {
        let group = g.0.as_str().to_string();
        let gid = group.clone();
        let (summary, classic) = shard
            .submit_to(shard.group_owner(&group), move |s| {
                Box::pin(async move {
                    let home = s.group_home();
                    let summary = home.consumer.borrow().describe(&gid);
                    let classic = home.coordinator.borrow().state(&gid);
                    (summary, classic)
                })
            })
            .await;
        let meta = shard.metadata();
        let wire = |a: &Assignment| {
            let mut out = cgd::Assignment::default();
            out.topic_partitions = a
                .iter()
                .filter_map(|(t, ps)| {
                    let tm = meta.topics.get(t)?;
                    let mut tp = cgd::TopicPartitions::default();
                    tp.topic_id = tm.id;
                    tp.topic_name = TopicName(sb(t));
                    tp.partitions = ps.iter().copied().collect();
                    Some(tp)
                })
                .collect();
            out
        };
        let mut d = cgd::DescribedGroup::default();
        d.group_id = g.clone();
        d.authorized_operations = i32::MIN;
        match summary {
            None => {
                d.error_code = codes::GROUP_ID_NOT_FOUND;
                d.error_message = Some(sb(&match classic {
                    Some(_) => format!("Group {group} is not a consumer group."),
                    None => format!("Group {group} not found."),
                }));
            }
            Some(sm) => {
                d.group_state = sb(sm.state);
                d.group_epoch = sm.group_epoch;
                d.assignment_epoch = sm.assignment_epoch;
                d.assignor_name = sb(&sm.assignor);
                d.members = sm
                    .members
                    .iter()
                    .map(|m| {
                        let mut o = cgd::Member::default();
                        o.member_id = sb(&m.member_id);
                        o.instance_id = m.instance_id.as_deref().map(sb);
                        o.rack_id = m.rack_id.as_deref().map(sb);
                        o.member_epoch = m.member_epoch;
                        o.client_id = sb(&m.client_id);
                        o.client_host = sb(&m.client_host);
                        o.subscribed_topic_names = m
                            .subscribed_topic_names
                            .iter()
                            .map(|t| TopicName(sb(t)))
                            .collect();
                        o.subscribed_topic_regex = m.subscribed_topic_regex.as_deref().map(sb);
                        o.assignment = wire(&m.assignment);
                        o.target_assignment = wire(&m.target_assignment);
                        o.member_type = 1; // consumer protocol (0 would be classic)
                        o
                    })
                    .collect();
            }
        }
        r.groups.push(d);
    }
    r
}

pub async fn offset_delete(shard: &Rc<Shard>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    use offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
    let group = req.group_id.0.as_str().to_string();
    let asked: Vec<(String, Vec<i32>)> = req
        .topics
        .iter()
        .map(|t| {
            (
                t.name.0.as_str().to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let a = asked.clone();
    let (code, subscribed) = shard
        .submit_to(shard.group_owner(&group), move |s| {
            Box::pin(async move {
                let home = s.group_home();
                let known = home.consumer.borrow().contains(&group)
                    || home.coordinator.borrow().state(&group).is_some()
                    || !home.committed_all(&group).is_empty();
                if !known {
                    return (codes::GROUP_ID_NOT_FOUND, Vec::new());
                }
                // Offsets of topics the group is consuming now cannot be deleted.
                let mut subscribed: Vec<String> = Vec::new();
                if !home.is_empty_group(&group) {
                    subscribed.extend(home.consumer.borrow().subscribed_topics(&group));
                    subscribed.extend(home.coordinator.borrow().subscribed_topics(&group));
                }
                let keys: Vec<(String, i32)> = a
                    .iter()
                    .filter(|(t, _)| !subscribed.contains(t))
                    .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
                    .collect();
                match home.delete_offsets(&group, &keys).await {
                    Ok(()) => (codes::NONE, subscribed),
                    Err(e) => {
                        eprintln!("sluice: deleting offsets of group {group} failed: {e}");
                        (ec::KAFKA_STORAGE_ERROR, subscribed)
                    }
                }
            })
        })
        .await;
    let mut r = OffsetDeleteResponse::default();
    r.error_code = code;
    if code != codes::GROUP_ID_NOT_FOUND && code != ec::KAFKA_STORAGE_ERROR {
        let meta = shard.metadata();
        for (t, ps) in asked {
            let mut tr = OffsetDeleteResponseTopic::default();
            tr.name = TopicName(sb(&t));
            for p in ps {
                let mut pr = OffsetDeleteResponsePartition::default();
                pr.partition_index = p;
                pr.error_code = if !meta.has_partition(&t, p) {
                    ec::UNKNOWN_TOPIC_OR_PARTITION
                } else if subscribed.contains(&t) {
                    GROUP_SUBSCRIBED_TO_TOPIC
                } else {
                    ec::NONE
                };
                tr.partitions.push(pr);
            }
            r.topics.push(tr);
        }
    }
    r
}
