//! `sluice group ls` and `sluice group describe GROUP`: what `kafka-consumer-groups.sh --list`
//! and `--describe` show — every member, its partitions, the committed offset, the log end
//! offset and the lag — for classic and KIP-848 groups, as text or `--json`. Talks the Kafka
//! protocol to any broker (Sluice or Kafka), negotiating versions with ApiVersions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use clap::Subcommand;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use serde_json::json;

use crate::kafka_client::Client;

#[derive(Subcommand)]
pub enum GroupCommand {
    /// List the consumer groups (classic and KIP-848).
    Ls {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
    /// Members, partitions, committed offsets, log end offsets and lag of one group.
    Describe {
        group: String,
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct Conn {
    /// Kafka listener of the broker
    #[arg(long, env = "SLUICE_KAFKA", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Seconds to wait for a connection or an answer
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

const GROUP_ID_NOT_FOUND: i16 = 69;
const UNSUPPORTED_VERSION: i16 = 35;

/// A connection plus the API versions its broker serves.
struct Session {
    client: Client,
    versions: BTreeMap<i16, (i16, i16)>,
}

impl Session {
    fn open(addr: &str, timeout: Duration) -> Result<Session, String> {
        let mut client = Client::connect(addr, timeout)?;
        let r = client.call(&ApiVersionsRequest::default(), 0)?;
        if r.error_code != 0 {
            return Err(format!(
                "{addr}: ApiVersions failed with error {}",
                r.error_code
            ));
        }
        let versions = r
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(Session { client, versions })
    }

    /// The highest version both sides know, within `[min, max]`.
    fn version(&self, key: ApiKey, min: i16, max: i16) -> Option<i16> {
        let (lo, hi) = *self.versions.get(&(key as i16))?;
        let v = hi.min(max);
        (v >= min && v >= lo).then_some(v)
    }

    fn need(&self, key: ApiKey, min: i16, max: i16) -> Result<i16, String> {
        self.version(key, min, max)
            .ok_or_else(|| format!("the broker does not serve {key:?} v{min}..v{max}"))
    }
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn run(cmd: GroupCommand) -> Result<(), String> {
    match cmd {
        GroupCommand::Ls { conn, json } => ls(&conn, json),
        GroupCommand::Describe { group, conn, json } => describe(&conn, &group, json),
    }
}

fn ls(conn: &Conn, as_json: bool) -> Result<(), String> {
    let mut s = Session::open(&conn.bootstrap, Duration::from_secs(conn.timeout))?;
    let v = s.need(ApiKey::ListGroups, 0, 5)?;
    let r = s.client.call(&ListGroupsRequest::default(), v)?;
    if r.error_code != 0 {
        return Err(format!("ListGroups failed with error {}", r.error_code));
    }
    let mut groups: Vec<_> = r
        .groups
        .iter()
        .map(|g| {
            let kind = if g.group_type.is_empty() {
                "classic"
            } else {
                g.group_type.as_str()
            };
            (
                g.group_id.0.to_string(),
                kind.to_string(),
                g.group_state.to_string(),
                g.protocol_type.to_string(),
            )
        })
        .collect();
    groups.sort();
    if as_json {
        let out: Vec<_> = groups
            .iter()
            .map(|(g, t, st, pt)| json!({"group": g, "type": t, "state": st, "protocol_type": pt}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = groups
        .into_iter()
        .map(|(g, t, st, _)| vec![g, t, st])
        .collect();
    print_table(&["GROUP", "TYPE", "STATE"], &rows);
    Ok(())
}

struct MemberRow {
    member_id: String,
    client_id: String,
    host: String,
    instance_id: Option<String>,
    partitions: Vec<(String, i32)>,
}

struct GroupView {
    kind: &'static str,
    state: String,
    assignor: String,
    members: Vec<MemberRow>,
}

fn describe(conn: &Conn, group: &str, as_json: bool) -> Result<(), String> {
    let timeout = Duration::from_secs(conn.timeout);
    let mut boot = Session::open(&conn.bootstrap, timeout)?;
    // The group's coordinator may be another broker.
    let v = boot.need(ApiKey::FindCoordinator, 1, 3)?;
    let mut fc = FindCoordinatorRequest::default();
    fc.key = sb(group);
    let r = boot.client.call(&fc, v)?;
    if r.error_code != 0 {
        return Err(format!(
            "FindCoordinator failed with error {}",
            r.error_code
        ));
    }
    let coord_addr = format!("{}:{}", r.host, r.port);
    let mut coord = if coord_addr == conn.bootstrap {
        Session::open(&conn.bootstrap, timeout)?
    } else {
        Session::open(&coord_addr, timeout)?
    };
    let view = describe_members(&mut coord, group)?;
    // Committed offsets.
    let v = coord.need(ApiKey::OffsetFetch, 8, 8)?;
    let mut of = OffsetFetchRequest::default();
    let mut g = OffsetFetchRequestGroup::default();
    g.group_id = GroupId(sb(group));
    g.topics = None;
    of.groups = vec![g];
    let r = coord.client.call(&of, v)?;
    let mut committed: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for g in &r.groups {
        if g.error_code != 0 {
            return Err(format!("OffsetFetch failed with error {}", g.error_code));
        }
        for t in &g.topics {
            for p in &t.partitions {
                if p.error_code == 0 && p.committed_offset >= 0 {
                    committed.insert(
                        (t.name.0.to_string(), p.partition_index),
                        p.committed_offset,
                    );
                }
            }
        }
    }
    let Some(view) = view.or_else(|| {
        (!committed.is_empty()).then(|| GroupView {
            kind: "classic",
            state: "Empty".into(),
            assignor: String::new(),
            members: Vec::new(),
        })
    }) else {
        return Err(format!("consumer group '{group}' does not exist"));
    };
    let mut partitions: BTreeSet<(String, i32)> = committed.keys().cloned().collect();
    let mut owner: BTreeMap<(String, i32), usize> = BTreeMap::new();
    for (i, m) in view.members.iter().enumerate() {
        for tp in &m.partitions {
            partitions.insert(tp.clone());
            owner.insert(tp.clone(), i);
        }
    }
    let ends = log_end_offsets(&mut boot, &partitions)?;
    let mut rows = Vec::new();
    let mut total_lag: i64 = 0;
    for tp in &partitions {
        let c = committed.get(tp).copied();
        let end = ends.get(tp).copied();
        let lag = match (c, end) {
            (Some(c), Some(e)) => Some((e - c).max(0)),
            _ => None,
        };
        total_lag += lag.unwrap_or(0);
        rows.push((
            tp.clone(),
            c,
            end,
            lag,
            owner.get(tp).map(|i| &view.members[*i]),
        ));
    }
    if as_json {
        let out = json!({
            "group": group,
            "type": view.kind,
            "state": view.state,
            "assignor": view.assignor,
            "members": view.members.iter().map(|m| json!({
                "member_id": m.member_id,
                "client_id": m.client_id,
                "host": m.host,
                "instance_id": m.instance_id,
                "partitions": m.partitions.iter()
                    .map(|(t, p)| json!({"topic": t, "partition": p}))
                    .collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "partitions": rows.iter().map(|((t, p), c, e, lag, m)| json!({
                "topic": t,
                "partition": p,
                "committed_offset": c,
                "log_end_offset": e,
                "lag": lag,
                "member_id": m.map(|m| &m.member_id),
                "client_id": m.map(|m| &m.client_id),
                "host": m.map(|m| &m.host),
            })).collect::<Vec<_>>(),
            "total_lag": total_lag,
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        return Ok(());
    }
    println!(
        "Consumer group '{group}': {} protocol, state {}, {} member(s){}, total lag {total_lag}\n",
        view.kind,
        view.state,
        view.members.len(),
        if view.assignor.is_empty() {
            String::new()
        } else {
            format!(", assignor {}", view.assignor)
        },
    );
    let dash = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|((t, p), c, e, lag, m)| {
            vec![
                group.to_string(),
                t.clone(),
                p.to_string(),
                dash(*c),
                dash(*e),
                dash(*lag),
                m.map_or("-".into(), |m| m.member_id.clone()),
                m.map_or("-".into(), |m| m.host.clone()),
                m.map_or("-".into(), |m| m.client_id.clone()),
            ]
        })
        .collect();
    print_table(
        &[
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "HOST",
            "CLIENT-ID",
        ],
        &table,
    );
    Ok(())
}

/// ConsumerGroupDescribe for KIP-848 groups, DescribeGroups for classic ones; `None` if the
/// group has no state on the coordinator.
fn describe_members(s: &mut Session, group: &str) -> Result<Option<GroupView>, String> {
    if let Some(v) = s.version(ApiKey::ConsumerGroupDescribe, 0, 1) {
        let mut req = ConsumerGroupDescribeRequest::default();
        req.group_ids = vec![GroupId(sb(group))];
        let r = s.client.call(&req, v)?;
        let d = r
            .groups
            .first()
            .ok_or("empty ConsumerGroupDescribe answer")?;
        match d.error_code {
            0 => {
                return Ok(Some(GroupView {
                    kind: "consumer",
                    state: d.group_state.to_string(),
                    assignor: d.assignor_name.to_string(),
                    members: d
                        .members
                        .iter()
                        .map(|m| MemberRow {
                            member_id: m.member_id.to_string(),
                            client_id: m.client_id.to_string(),
                            host: m.client_host.to_string(),
                            instance_id: m.instance_id.as_ref().map(|s| s.to_string()),
                            partitions: m
                                .assignment
                                .topic_partitions
                                .iter()
                                .flat_map(|tp| {
                                    tp.partitions
                                        .iter()
                                        .map(|p| (tp.topic_name.0.to_string(), *p))
                                })
                                .collect(),
                        })
                        .collect(),
                }))
            }
            GROUP_ID_NOT_FOUND | UNSUPPORTED_VERSION => {} // a classic group, or none
            e => return Err(format!("ConsumerGroupDescribe failed with error {e}")),
        }
    }
    let v = s.need(ApiKey::DescribeGroups, 0, 5)?;
    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![GroupId(sb(group))];
    let r = s.client.call(&req, v)?;
    let d = r.groups.first().ok_or("empty DescribeGroups answer")?;
    if d.error_code != 0 {
        return Err(format!("DescribeGroups failed with error {}", d.error_code));
    }
    if d.group_state.as_str() == "Dead" {
        return Ok(None);
    }
    let consumer = d.protocol_type.as_str() == "consumer";
    Ok(Some(GroupView {
        kind: "classic",
        state: d.group_state.to_string(),
        assignor: d.protocol_data.to_string(),
        members: d
            .members
            .iter()
            .map(|m| MemberRow {
                member_id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
                partitions: if consumer {
                    assignment_partitions(&m.member_assignment)
                } else {
                    Vec::new()
                },
            })
            .collect(),
    }))
}

/// The partitions of a ConsumerProtocolAssignment (empty if it cannot be read).
fn assignment_partitions(bytes: &Bytes) -> Vec<(String, i32)> {
    if bytes.len() < 2 {
        return Vec::new();
    }
    let mut buf = bytes.clone();
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::get_i16(&mut buf);
    match ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) {
        Ok(a) => a
            .assigned_partitions
            .iter()
            .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.0.to_string(), *p)))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn log_end_offsets(
    s: &mut Session,
    partitions: &BTreeSet<(String, i32)>,
) -> Result<BTreeMap<(String, i32), i64>, String> {
    let mut out = BTreeMap::new();
    if partitions.is_empty() {
        return Ok(out);
    }
    let v = s.need(ApiKey::ListOffsets, 1, 7)?;
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in partitions {
        by_topic.entry(t).or_default().push(*p);
    }
    req.topics = by_topic
        .into_iter()
        .map(|(t, ps)| {
            let mut lt = ListOffsetsTopic::default();
            lt.name = TopicName(sb(t));
            lt.partitions = ps
                .into_iter()
                .map(|p| {
                    let mut lp = ListOffsetsPartition::default();
                    lp.partition_index = p;
                    lp.timestamp = -1; // latest
                    lp
                })
                .collect();
            lt
        })
        .collect();
    let r = s.client.call(&req, v)?;
    for t in &r.topics {
        for p in &t.partitions {
            if p.error_code == 0 {
                out.insert((t.name.0.to_string(), p.partition_index), p.offset);
            }
        }
    }
    Ok(out)
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect());
    }
}
