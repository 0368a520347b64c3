//! The classic consumer-group coordinator (Kafka's JoinGroup/SyncGroup/Heartbeat/LeaveGroup
//! protocol) as a pure state machine: time comes in as `now_ms`, member ids come from a counter,
//! and requests that must wait for a rebalance are parked under a ticket and answered later
//! through [`GroupCoordinator::poll_completion`]. The broker drives it from the group's home
//! shard and persists committed offsets; nothing here does I/O.
//!
//! States follow Kafka's `GroupMetadata`: Empty → PreparingRebalance → CompletingRebalance →
//! Stable, and Dead once deleted.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Kafka error codes this machine returns.
pub mod codes {
    pub const NONE: i16 = 0;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const FENCED_INSTANCE_ID: i16 = 82;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

/// Limits the broker enforces (Kafka's `group.min/max.session.timeout.ms` and
/// `group.initial.rebalance.delay.ms`).
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    pub session_timeout_ms_min: i32,
    pub session_timeout_ms_max: i32,
    pub initial_rebalance_delay_ms: u64,
}

impl Default for GroupLimits {
    fn default() -> Self {
        GroupLimits {
            session_timeout_ms_min: 6_000,
            session_timeout_ms_max: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (protocol name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// JoinGroup v4+ asks unknown members to rejoin with an assigned id (KIP-394).
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    pub error_code: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member's (id, instance id, metadata for the chosen protocol); leader only.
    pub members: Vec<(String, Option<String>, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    pub error_code: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Vec<u8>,
}

/// A request answered now or parked until the rebalance moves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<T> {
    Now(T),
    Parked(Ticket),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Join(JoinResponse),
    Sync(SyncResponse),
}

#[derive(Debug, Clone)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<(String, Vec<u8>)>,
    assignment: Vec<u8>,
    last_heartbeat_ms: u64,
    join_ticket: Option<Ticket>,
    sync_ticket: Option<Ticket>,
}

#[derive(Debug, Clone)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined, with the time their
    /// session lapses if they never come back. As in Kafka, a join round waits for them
    /// (until its rebalance deadline) so a member between its two JoinGroups is not dropped.
    pending: HashMap<String, u64>,
    static_members: HashMap<String, String>,
    rebalance_deadline_ms: u64,
    /// The rebalance started from Empty: wait the initial delay for more members to arrive
    /// (`group.initial.rebalance.delay.ms`) rather than completing on the first join.
    initial_delay: bool,
}

impl Group {
    fn new() -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            static_members: HashMap::new(),
            rebalance_deadline_ms: 0,
            initial_delay: false,
        }
    }
}

/// A summary for DescribeGroups / ListGroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol_name: String,
    pub members: Vec<MemberSummary>,
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The member's metadata for the group's chosen protocol (its subscription).
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct GroupCoordinator {
    limits: GroupLimits,
    groups: HashMap<String, Group>,
    next_ticket: u64,
    next_member: u64,
    completions: VecDeque<(Ticket, Completion)>,
}

impl GroupCoordinator {
    pub fn new(limits: GroupLimits) -> GroupCoordinator {
        GroupCoordinator {
            limits,
            ..GroupCoordinator::default()
        }
    }

    pub fn state(&self, group_id: &str) -> Option<GroupState> {
        self.groups.get(group_id).map(|g| g.state)
    }

    pub fn generation(&self, group_id: &str) -> Option<i32> {
        self.groups.get(group_id).map(|g| g.generation)
    }

    pub fn join(&mut self, now_ms: u64, req: JoinRequest) -> Reply<JoinResponse> {
        let error = |code: i16, member_id: &str| {
            Reply::Now(JoinResponse {
                error_code: code,
                generation_id: -1,
                protocol_type: None,
                protocol_name: None,
                leader: String::new(),
                member_id: member_id.to_string(),
                members: Vec::new(),
            })
        };
        if req.session_timeout_ms < self.limits.session_timeout_ms_min
            || req.session_timeout_ms > self.limits.session_timeout_ms_max
        {
            return error(codes::INVALID_SESSION_TIMEOUT, &req.member_id);
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return error(codes::INCONSISTENT_GROUP_PROTOCOL, &req.member_id);
        }
        let delay = self.limits.initial_rebalance_delay_ms;
        let group = self
            .groups
            .entry(req.group_id.clone())
            .or_insert_with(Group::new);
        if group.state == GroupState::Dead {
            *group = Group::new();
        }
        if !group.members.is_empty() || group.state != GroupState::Empty {
            let same_type = group.protocol_type.as_deref() == Some(&req.protocol_type);
            let shared = group.members.values().all(|m| {
                m.protocols
                    .iter()
                    .any(|(p, _)| req.protocols.iter().any(|(q, _)| p == q))
            });
            if (!group.members.is_empty() && !same_type) || !shared {
                return error(codes::INCONSISTENT_GROUP_PROTOCOL, &req.member_id);
            }
        }
        // Resolve the member id.
        let mut member_id = req.member_id.clone();
        let mut static_restart = false;
        if let Some(instance) = &req.group_instance_id {
            if let Some(old) = group.static_members.get(instance).cloned() {
                if member_id.is_empty() {
                    // A static member restarting: it takes over its old identity's place
                    // under a new id, without a rebalance if nothing else changed.
                    self.next_member += 1;
                    member_id = format!("{instance}-{}", self.next_member);
                    static_restart = true;
                    if let Some(mut m) = group.members.remove(&old) {
                        m.join_ticket = None;
                        m.sync_ticket = None;
                        group.members.insert(member_id.clone(), m);
                    }
                    if group.leader.as_deref() == Some(old.as_str()) {
                        group.leader = Some(member_id.clone());
                    }
                    group
                        .static_members
                        .insert(instance.clone(), member_id.clone());
                } else if old != member_id {
                    return error(codes::FENCED_INSTANCE_ID, &member_id);
                }
            }
        }
        if member_id.is_empty() {
            self.next_member += 1;
            member_id = format!("{}-{}", sanitize(&req.client_id), self.next_member);
            if req.require_known_member_id && req.group_instance_id.is_none() {
                group.pending.insert(
                    member_id.clone(),
                    now_ms + req.session_timeout_ms.max(0) as u64,
                );
                return error(codes::MEMBER_ID_REQUIRED, &member_id);
            }
        } else if !group.members.contains_key(&member_id)
            && group.pending.remove(&member_id).is_none()
        {
            let static_ok = req
                .group_instance_id
                .as_ref()
                .is_some_and(|i| group.static_members.get(i) == Some(&member_id));
            if !static_ok {
                return error(codes::UNKNOWN_MEMBER_ID, &member_id);
            }
        }
        // Add or update the member, then park its join until the rebalance completes.
        self.next_ticket += 1;
        let ticket = Ticket(self.next_ticket);
        let existing = group.members.get(&member_id).cloned();
        let changed = existing
            .as_ref()
            .is_none_or(|m| m.protocols != req.protocols);
        let member = Member {
            instance_id: req.group_instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocols: req.protocols.clone(),
            assignment: existing
                .as_ref()
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
            last_heartbeat_ms: now_ms,
            join_ticket: Some(ticket),
            sync_ticket: None,
        };
        if let Some(instance) = &req.group_instance_id {
            group
                .static_members
                .insert(instance.clone(), member_id.clone());
        }
        group.members.insert(member_id.clone(), member);
        group.protocol_type = Some(req.protocol_type.clone());
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance
                if !changed
                    && existing.is_some()
                    && (static_restart
                        || group.state != GroupState::Stable
                        || group.leader.as_deref() != Some(member_id.as_str())) =>
            {
                // A member rejoining with the same metadata: answer with the current generation
                // (Kafka does the same for "join without change"). Not the leader of a stable
                // group: its rejoin asks for a new assignment with what its metadata did not
                // show (a consumer leader that assigned before it knew a topic's partitions
                // rejoins once it does), so it rebalances, as in Kafka. A static member
                // restarting under a new id keeps the generation, the leader too (Kafka alike).
                let resp = join_response(group, &member_id);
                group
                    .members
                    .get_mut(&member_id)
                    .expect("just inserted")
                    .join_ticket = None;
                return Reply::Now(resp);
            }
            GroupState::Empty => {
                group.state = GroupState::PreparingRebalance;
                group.rebalance_deadline_ms = now_ms + delay;
                group.initial_delay = true;
            }
            GroupState::Stable | GroupState::CompletingRebalance => {
                start_rebalance(group, now_ms);
            }
            GroupState::PreparingRebalance | GroupState::Dead => {}
        }
        // Abort syncs parked on the old generation.
        for m in group.members.values_mut() {
            if let Some(t) = m.sync_ticket.take() {
                self.completions.push_back((
                    t,
                    Completion::Sync(SyncResponse {
                        error_code: codes::REBALANCE_IN_PROGRESS,
                        protocol_type: None,
                        protocol_name: None,
                        assignment: Vec::new(),
                    }),
                ));
            }
        }
        let gid = req.group_id.clone();
        self.maybe_complete_join(&gid, now_ms);
        Reply::Parked(ticket)
    }

    pub fn sync(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation_id: i32,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> Reply<SyncResponse> {
        let error = |code| {
            Reply::Now(SyncResponse {
                error_code: code,
                protocol_type: None,
                protocol_name: None,
                assignment: Vec::new(),
            })
        };
        let Some(group) = self.groups.get_mut(group_id) else {
            return error(codes::UNKNOWN_MEMBER_ID);
        };
        if !group.members.contains_key(member_id) {
            return error(codes::UNKNOWN_MEMBER_ID);
        }
        if generation_id != group.generation {
            return error(codes::ILLEGAL_GENERATION);
        }
        match group.state {
            GroupState::PreparingRebalance => error(codes::REBALANCE_IN_PROGRESS),
            GroupState::Stable => Reply::Now(sync_response(group, member_id)),
            GroupState::CompletingRebalance => {
                self.next_ticket += 1;
                let ticket = Ticket(self.next_ticket);
                group
                    .members
                    .get_mut(member_id)
                    .expect("checked")
                    .sync_ticket = Some(ticket);
                if group.leader.as_deref() == Some(member_id) {
                    let assigned: HashMap<String, Vec<u8>> = assignments.into_iter().collect();
                    for (id, m) in group.members.iter_mut() {
                        m.assignment = assigned.get(id).cloned().unwrap_or_default();
                    }
                    group.state = GroupState::Stable;
                    let ids: Vec<String> = group.members.keys().cloned().collect();
                    for id in ids {
                        let resp = sync_response(group, &id);
                        let m = group.members.get_mut(&id).expect("member");
                        if let Some(t) = m.sync_ticket.take() {
                            self.completions.push_back((t, Completion::Sync(resp)));
                        }
                    }
                }
                Reply::Parked(ticket)
            }
            GroupState::Empty | GroupState::Dead => error(codes::UNKNOWN_MEMBER_ID),
        }
    }

    pub fn heartbeat(
        &mut self,
        now_ms: u64,
        group_id: &str,
        member_id: &str,
        generation_id: i32,
    ) -> i16 {
        let Some(group) = self.groups.get_mut(group_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        let Some(m) = group.members.get_mut(member_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        m.last_heartbeat_ms = now_ms;
        if group.state == GroupState::PreparingRebalance {
            return codes::REBALANCE_IN_PROGRESS;
        }
        if generation_id != group.generation {
            return codes::ILLEGAL_GENERATION;
        }
        codes::NONE
    }

    /// Whether an OffsetCommit from `member_id` at `generation_id` may be applied. A commit with
    /// generation -1 and no member id (a consumer outside the group protocol) is accepted only
    /// while the group has no members; it creates the group if needed.
    pub fn validate_commit(&mut self, group_id: &str, member_id: &str, generation_id: i32) -> i16 {
        if generation_id < 0 && member_id.is_empty() {
            let g = self
                .groups
                .entry(group_id.to_string())
                .or_insert_with(Group::new);
            return if g.members.is_empty() {
                if g.state == GroupState::Dead {
                    g.state = GroupState::Empty;
                }
                codes::NONE
            } else {
                codes::ILLEGAL_GENERATION
            };
        }
        let Some(g) = self.groups.get(group_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if !g.members.contains_key(member_id) {
            return codes::UNKNOWN_MEMBER_ID;
        }
        if generation_id != g.generation {
            return codes::ILLEGAL_GENERATION;
        }
        // As Kafka: a member of the current generation may commit while the group prepares a
        // rebalance (it commits what it consumed before giving partitions up — librdkafka does
        // so on revoke and on close); only between the join and the sync is it refused.
        match g.state {
            GroupState::CompletingRebalance => codes::REBALANCE_IN_PROGRESS,
            _ => codes::NONE,
        }
    }

    /// Members leaving (LeaveGroup); each gets an error code.
    pub fn leave(&mut self, now_ms: u64, group_id: &str, member_ids: &[String]) -> Vec<i16> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return vec![codes::UNKNOWN_MEMBER_ID; member_ids.len()];
        };
        let mut out = Vec::new();
        let mut removed = false;
        let mut pending_left = false;
        for id in member_ids {
            match group.members.remove(id) {
                Some(m) => {
                    if let Some(i) = m.instance_id {
                        group.static_members.remove(&i);
                    }
                    removed = true;
                    out.push(codes::NONE);
                }
                // A member leaving between its two JoinGroups: the round stops waiting for it.
                None if group.pending.remove(id).is_some() => {
                    pending_left = true;
                    out.push(codes::NONE);
                }
                None => out.push(codes::UNKNOWN_MEMBER_ID),
            }
        }
        if removed {
            self.after_departure(group_id, now_ms);
        } else if pending_left {
            self.maybe_complete_join(group_id, now_ms);
        }
        out
    }

    /// Advances time: expires members whose session lapsed and completes rebalances whose
    /// deadline passed.
    pub fn tick(&mut self, now_ms: u64) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for gid in ids {
            let group = self.groups.get_mut(&gid).expect("listed");
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.join_ticket.is_none()
                        && m.last_heartbeat_ms + m.session_timeout_ms as u64 <= now_ms
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                if let Some(m) = group.members.remove(id) {
                    if let Some(i) = m.instance_id {
                        group.static_members.remove(&i);
                    }
                }
            }
            // A member that never came back for its second JoinGroup.
            group.pending.retain(|_, lapses_ms| *lapses_ms > now_ms);
            if !expired.is_empty() {
                self.after_departure(&gid, now_ms);
            }
            self.maybe_complete_join(&gid, now_ms);
        }
    }

    /// The next parked request that can now be answered.
    pub fn poll_completion(&mut self) -> Option<(Ticket, Completion)> {
        self.completions.pop_front()
    }

    /// The earliest time `tick` has work to do, for the driver's timer.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.groups
            .values()
            .flat_map(|g| {
                let rebalance =
                    (g.state == GroupState::PreparingRebalance).then_some(g.rebalance_deadline_ms);
                g.members
                    .values()
                    .map(|m| m.last_heartbeat_ms + m.session_timeout_ms as u64)
                    .chain(g.pending.values().copied())
                    .chain(rebalance)
            })
            .min()
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        let g = self.groups.get(group_id)?;
        Some(GroupSummary {
            group_id: group_id.to_string(),
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol_name: g.protocol_name.clone().unwrap_or_default(),
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberSummary {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(p, _)| Some(p) == g.protocol_name.as_ref())
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    pub fn list(&self) -> Vec<(String, GroupState, String)> {
        let mut v: Vec<_> = self
            .groups
            .iter()
            .filter(|(_, g)| g.state != GroupState::Dead)
            .map(|(id, g)| {
                (
                    id.clone(),
                    g.state,
                    g.protocol_type.clone().unwrap_or_default(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Topics the members of a `consumer`-type group subscribe to, read from their
    /// ConsumerProtocolSubscription metadata (OffsetDelete refuses those).
    pub fn subscribed_topics(&self, group_id: &str) -> Vec<String> {
        let Some(g) = self.groups.get(group_id) else {
            return Vec::new();
        };
        if g.protocol_type.as_deref() != Some("consumer") {
            return Vec::new();
        }
        let mut out: Vec<String> = g
            .members
            .values()
            .flat_map(|m| {
                m.protocols
                    .iter()
                    .flat_map(|(_, md)| subscription_topics(md))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Deletes an empty group (DeleteGroups).
    pub fn delete(&mut self, group_id: &str) -> i16 {
        match self.groups.get(group_id) {
            None => codes::GROUP_ID_NOT_FOUND,
            Some(g) if !g.members.is_empty() => codes::NON_EMPTY_GROUP,
            Some(_) => {
                self.groups.remove(group_id);
                codes::NONE
            }
        }
    }

    fn after_departure(&mut self, group_id: &str, now_ms: u64) {
        let group = self.groups.get_mut(group_id).expect("present");
        if group.members.is_empty() {
            group.state = GroupState::Empty;
            group.leader = None;
            group.generation += 1;
            group.protocol_name = None;
            return;
        }
        if group
            .leader
            .as_ref()
            .is_some_and(|l| !group.members.contains_key(l))
        {
            group.leader = group.members.keys().next().cloned();
        }
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance => start_rebalance(group, now_ms),
            _ => {}
        }
        self.maybe_complete_join(group_id, now_ms);
    }

    /// Completes the join phase once every member has rejoined or the deadline passed: members
    /// that did not rejoin are dropped, the generation advances, and parked joins are answered.
    fn maybe_complete_join(&mut self, group_id: &str, now_ms: u64) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        if group.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined =
            group.members.values().all(|m| m.join_ticket.is_some()) && group.pending.is_empty();
        if !(now_ms >= group.rebalance_deadline_ms || (all_joined && !group.initial_delay)) {
            return;
        }
        group.initial_delay = false;
        group.members.retain(|_, m| m.join_ticket.is_some());
        if group.members.is_empty() {
            group.state = GroupState::Empty;
            group.generation += 1;
            return;
        }
        group.generation += 1;
        group.protocol_name = choose_protocol(group);
        if group
            .leader
            .as_ref()
            .is_none_or(|l| !group.members.contains_key(l))
        {
            group.leader = group.members.keys().next().cloned();
        }
        group.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in ids {
            let resp = join_response(group, &id);
            let m = group.members.get_mut(&id).expect("member");
            m.last_heartbeat_ms = now_ms;
            if let Some(t) = m.join_ticket.take() {
                self.completions.push_back((t, Completion::Join(resp)));
            }
        }
    }
}

fn start_rebalance(group: &mut Group, now_ms: u64) {
    group.state = GroupState::PreparingRebalance;
    group.initial_delay = false;
    let timeout = group
        .members
        .values()
        .map(|m| m.rebalance_timeout_ms.max(0) as u64)
        .max()
        .unwrap_or(0);
    group.rebalance_deadline_ms = now_ms + timeout;
}

/// The protocol every member supports that most members prefer (Kafka's vote: each member
/// votes for its most preferred candidate; ties go to the leader's order).
fn choose_protocol(group: &Group) -> Option<String> {
    let first = group
        .leader
        .as_ref()
        .and_then(|l| group.members.get(l))
        .or_else(|| group.members.values().next())?;
    let candidates: Vec<&String> = first
        .protocols
        .iter()
        .map(|(p, _)| p)
        .filter(|p| {
            group
                .members
                .values()
                .all(|m| m.protocols.iter().any(|(q, _)| q == *p))
        })
        .collect();
    let votes = |p: &String| {
        group
            .members
            .values()
            .filter(|m| {
                m.protocols
                    .iter()
                    .map(|(q, _)| q)
                    .find(|q| candidates.contains(q))
                    == Some(p)
            })
            .count()
    };
    let mut best: Option<(&String, usize)> = None;
    for p in &candidates {
        let v = votes(p);
        if best.is_none_or(|(_, bv)| v > bv) {
            best = Some((p, v));
        }
    }
    best.map(|(p, _)| p.clone())
}

fn join_response(group: &Group, member_id: &str) -> JoinResponse {
    let leader = group.leader.clone().unwrap_or_default();
    let protocol = group.protocol_name.clone();
    let members = if leader == member_id {
        group
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(p, _)| Some(p) == protocol.as_ref())
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default();
                (id.clone(), m.instance_id.clone(), meta)
            })
            .collect()
    } else {
        Vec::new()
    };
    JoinResponse {
        error_code: codes::NONE,
        generation_id: group.generation,
        protocol_type: group.protocol_type.clone(),
        protocol_name: protocol,
        leader,
        member_id: member_id.to_string(),
        members,
    }
}

fn sync_response(group: &Group, member_id: &str) -> SyncResponse {
    SyncResponse {
        error_code: codes::NONE,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol_name.clone(),
        assignment: group
            .members
            .get(member_id)
            .map(|m| m.assignment.clone())
            .unwrap_or_default(),
    }
}

fn sanitize(client_id: &str) -> String {
    let s: String = client_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.')
        .take(64)
        .collect();
    if s.is_empty() {
        "member".into()
    } else {
        s
    }
}

/// The topic names of a ConsumerProtocolSubscription (any version: they all start with
/// `version: i16, topics: [string]` in the non-flexible encoding). Bad bytes give what was read.
pub fn subscription_topics(md: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(n) = md.get(2..6) else {
        return out;
    };
    let n = i32::from_be_bytes(n.try_into().expect("4 bytes"));
    let mut at = 6;
    for _ in 0..n.max(0) {
        let Some(len) = md.get(at..at + 2) else {
            break;
        };
        let len = i16::from_be_bytes(len.try_into().expect("2 bytes"));
        if len < 0 {
            break;
        }
        let Some(name) = md.get(at + 2..at + 2 + len as usize) else {
            break;
        };
        out.push(String::from_utf8_lossy(name).into_owned());
        at += 2 + len as usize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_req(member: &str, instance: Option<&str>) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member.into(),
            group_instance_id: instance.map(String::from),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![
                ("range".into(), b"meta".to_vec()),
                ("roundrobin".into(), vec![]),
            ],
            require_known_member_id: true,
        }
    }

    /// Joins a new member through MEMBER_ID_REQUIRED; returns its id and parked ticket.
    fn join_new(c: &mut GroupCoordinator, now: u64) -> (String, Ticket) {
        let Reply::Now(r) = c.join(now, join_req("", None)) else {
            panic!("expected an id")
        };
        assert_eq!(r.error_code, codes::MEMBER_ID_REQUIRED);
        let Reply::Parked(t) = c.join(now, join_req(&r.member_id, None)) else {
            panic!("join should park")
        };
        (r.member_id, t)
    }

    fn completions(c: &mut GroupCoordinator) -> HashMap<Ticket, Completion> {
        std::iter::from_fn(|| c.poll_completion()).collect()
    }

    #[test]
    fn a_join_round_waits_for_a_member_between_its_two_joins() {
        let mut c = GroupCoordinator::new(GroupLimits::default());
        // A rejoin with new subscription metadata starts a rebalance.
        let rejoin = |member: &str, meta: &[u8]| {
            let mut r = join_req(member, None);
            r.protocols[0].1 = meta.to_vec();
            r
        };
        let (a, ta) = join_new(&mut c, 0);
        c.tick(3_000);
        assert!(completions(&mut c).contains_key(&ta));
        let _ = c.sync("g", &a, 1, vec![(a.clone(), b"A".to_vec())]);
        assert_eq!(
            completions(&mut c).len(),
            1,
            "the leader's sync is answered"
        );
        assert_eq!(c.state("g"), Some(GroupState::Stable));

        // b gets its id; before b's second JoinGroup, a rejoins (as after a metadata change).
        let Reply::Now(r) = c.join(4_000, join_req("", None)) else {
            panic!("expected an id")
        };
        assert_eq!(r.error_code, codes::MEMBER_ID_REQUIRED);
        let b = r.member_id;
        let Reply::Parked(ta2) = c.join(4_001, rejoin(&a, b"m2")) else {
            panic!("a's rejoin parks")
        };
        c.tick(4_002);
        assert!(
            completions(&mut c).is_empty(),
            "the round waits for b, whose id is pending"
        );
        let Reply::Parked(tb) = c.join(4_010, join_req(&b, None)) else {
            panic!("b's join with its id parks")
        };
        let done = completions(&mut c);
        let Completion::Join(ja) = &done[&ta2] else {
            panic!("a is answered")
        };
        assert_eq!(ja.members.len(), 2, "both members in one generation");
        assert!(done.contains_key(&tb));

        // A pending member that never returns holds a round only until its session lapses.
        let Reply::Now(r) = c.join(5_000, join_req("", None)) else {
            panic!("expected an id")
        };
        assert_eq!(r.error_code, codes::MEMBER_ID_REQUIRED);
        let gen = ja.generation_id;
        let _ = c.sync("g", &b, gen, vec![]);
        let _ = c.sync("g", &a, gen, vec![]);
        assert_eq!(completions(&mut c).len(), 2, "both syncs answered");
        assert_eq!(c.state("g"), Some(GroupState::Stable));
        let Reply::Parked(ta3) = c.join(5_001, rejoin(&a, b"m3")) else {
            panic!("a's rejoin parks")
        };
        let Reply::Parked(tb3) = c.join(5_001, join_req(&b, None)) else {
            panic!("b's rejoin parks")
        };
        assert_eq!(
            c.poll_timeout(),
            Some(15_000),
            "the pending session's end is a deadline"
        );
        c.tick(14_999);
        assert!(completions(&mut c).is_empty());
        c.tick(15_000);
        let done = completions(&mut c);
        assert!(done.contains_key(&ta3) && done.contains_key(&tb3));

        // A LeaveGroup from a pending member releases the round at once.
        let Reply::Now(r) = c.join(16_000, join_req("", None)) else {
            panic!("expected an id")
        };
        let gen = gen + 1;
        let _ = c.sync("g", &b, gen, vec![]);
        let _ = c.sync("g", &a, gen, vec![]);
        assert_eq!(completions(&mut c).len(), 2, "both syncs answered");
        let Reply::Parked(ta4) = c.join(16_001, rejoin(&a, b"m4")) else {
            panic!()
        };
        let Reply::Parked(tb4) = c.join(16_001, join_req(&b, None)) else {
            panic!()
        };
        assert!(completions(&mut c).is_empty());
        assert_eq!(c.leave(16_002, "g", &[r.member_id]), vec![codes::NONE]);
        let done = completions(&mut c);
        assert!(done.contains_key(&ta4) && done.contains_key(&tb4));
    }

    #[test]
    fn three_members_rebalance_sync_and_survive_a_death() {
        let mut c = GroupCoordinator::new(GroupLimits::default());
        let (a, ta) = join_new(&mut c, 0);
        let (b, tb) = join_new(&mut c, 10);
        let (d, td) = join_new(&mut c, 20);
        assert_eq!(c.state("g"), Some(GroupState::PreparingRebalance));
        c.tick(2_999);
        assert!(
            c.poll_completion().is_none(),
            "initial rebalance delay not over"
        );
        c.tick(3_000);
        let done = completions(&mut c);
        let Completion::Join(ja) = &done[&ta] else {
            panic!()
        };
        assert_eq!(ja.generation_id, 1);
        assert_eq!(ja.leader, a);
        assert_eq!(ja.members.len(), 3, "the leader sees every member");
        assert_eq!(ja.protocol_name.as_deref(), Some("range"));
        let Completion::Join(jb) = &done[&tb] else {
            panic!()
        };
        assert!(jb.members.is_empty(), "followers see no members");
        assert!(done.contains_key(&td));

        // Followers park their sync until the leader's assignment arrives.
        let Reply::Parked(sb) = c.sync("g", &b, 1, vec![]) else {
            panic!()
        };
        let assignments = vec![
            (a.clone(), b"A".to_vec()),
            (b.clone(), b"B".to_vec()),
            (d.clone(), b"D".to_vec()),
        ];
        let Reply::Parked(sa) = c.sync("g", &a, 1, assignments) else {
            panic!()
        };
        let done = completions(&mut c);
        let Completion::Sync(rb) = &done[&sb] else {
            panic!()
        };
        assert_eq!(rb.assignment, b"B");
        let Completion::Sync(ra) = &done[&sa] else {
            panic!()
        };
        assert_eq!(ra.assignment, b"A");
        assert_eq!(c.state("g"), Some(GroupState::Stable));
        assert_eq!(
            c.sync("g", &d, 1, vec![]),
            Reply::Now(SyncResponse {
                error_code: 0,
                protocol_type: Some("consumer".into()),
                protocol_name: Some("range".into()),
                assignment: b"D".to_vec()
            })
        );

        // d stops heartbeating: after its session timeout the others are told to rejoin.
        for t in (4_000..13_000).step_by(1_000) {
            assert_eq!(c.heartbeat(t, "g", &a, 1), codes::NONE);
            assert_eq!(c.heartbeat(t, "g", &b, 1), codes::NONE);
            c.tick(t);
        }
        c.tick(13_100);
        assert_eq!(c.state("g"), Some(GroupState::PreparingRebalance));
        assert_eq!(
            c.heartbeat(13_200, "g", &a, 1),
            codes::REBALANCE_IN_PROGRESS
        );
        // Members still commit what they consumed before the rebalance (as Kafka allows);
        // the dead member and stale generations may not.
        assert_eq!(c.validate_commit("g", &a, 1), codes::NONE);
        assert_eq!(c.validate_commit("g", &a, 0), codes::ILLEGAL_GENERATION);
        assert_eq!(c.validate_commit("g", &d, 1), codes::UNKNOWN_MEMBER_ID);
        let Reply::Parked(ta) = c.join(13_300, join_req(&a, None)) else {
            panic!()
        };
        let Reply::Parked(tb) = c.join(13_400, join_req(&b, None)) else {
            panic!()
        };
        let done = completions(&mut c);
        let Completion::Join(ja) = &done[&ta] else {
            panic!("rebalance completes when all rejoined")
        };
        assert_eq!(ja.generation_id, 2);
        // Joined but not synced: the new generation's assignment is not known yet.
        assert_eq!(c.state("g"), Some(GroupState::CompletingRebalance));
        assert_eq!(c.validate_commit("g", &a, 2), codes::REBALANCE_IN_PROGRESS);
        assert_eq!(c.validate_commit("g", &a, 1), codes::ILLEGAL_GENERATION);
        assert_eq!(ja.members.len(), 2);
        assert!(done.contains_key(&tb));
        assert_eq!(c.heartbeat(13_500, "g", &d, 2), codes::UNKNOWN_MEMBER_ID);
        assert_eq!(
            c.sync("g", &a, 1, vec![]),
            Reply::Now(SyncResponse {
                error_code: codes::ILLEGAL_GENERATION,
                protocol_type: None,
                protocol_name: None,
                assignment: vec![]
            })
        );
    }

    /// kafka-python's leader assigns before its first metadata names the topic (nothing to
    /// assign), then rejoins with unchanged subscription metadata once it knows the partitions:
    /// that rejoin must start a new generation whose sync carries the new assignment. A
    /// follower's unchanged rejoin is answered at once with the current generation.
    #[test]
    fn a_stable_leader_rejoining_unchanged_rebalances_a_follower_does_not() {
        let mut c = GroupCoordinator::new(GroupLimits::default());
        let (a, ta) = join_new(&mut c, 0);
        let (b, tb) = join_new(&mut c, 10);
        c.tick(3_000);
        let done = completions(&mut c);
        assert!(done.contains_key(&ta) && done.contains_key(&tb));
        let _ = c.sync("g", &b, 1, vec![]);
        let _ = c.sync("g", &a, 1, vec![(a.clone(), vec![]), (b.clone(), vec![])]);
        assert_eq!(completions(&mut c).len(), 2);
        assert_eq!(c.state("g"), Some(GroupState::Stable));

        // The follower's unchanged rejoin: the current generation, no rebalance.
        let Reply::Now(jb) = c.join(3_100, join_req(&b, None)) else {
            panic!("a follower's unchanged rejoin is answered at once")
        };
        assert_eq!((jb.error_code, jb.generation_id), (codes::NONE, 1));
        assert_eq!(c.state("g"), Some(GroupState::Stable));

        // The leader's unchanged rejoin: a rebalance to generation 2.
        let Reply::Parked(ta2) = c.join(3_200, join_req(&a, None)) else {
            panic!("the leader's rejoin starts a rebalance")
        };
        assert_eq!(c.state("g"), Some(GroupState::PreparingRebalance));
        assert_eq!(c.heartbeat(3_300, "g", &b, 1), codes::REBALANCE_IN_PROGRESS);
        let Reply::Parked(tb2) = c.join(3_400, join_req(&b, None)) else {
            panic!("the follower rejoins the new round")
        };
        let done = completions(&mut c);
        let Completion::Join(ja) = &done[&ta2] else {
            panic!("the round completes once both rejoined")
        };
        assert_eq!((ja.generation_id, ja.leader.as_str()), (2, a.as_str()));
        assert!(done.contains_key(&tb2));
        let Reply::Parked(sb) = c.sync("g", &b, 2, vec![]) else {
            panic!("the follower waits for the leader's assignment")
        };
        let assignments = vec![(a.clone(), b"A".to_vec()), (b.clone(), b"B".to_vec())];
        let _ = c.sync("g", &a, 2, assignments);
        let Completion::Sync(rb) = &completions(&mut c)[&sb] else {
            panic!("the follower's sync is answered")
        };
        assert_eq!(
            rb.assignment, b"B",
            "the new assignment reaches the follower"
        );
    }

    #[test]
    fn members_that_do_not_rejoin_are_dropped_at_the_rebalance_deadline() {
        let mut c = GroupCoordinator::new(GroupLimits::default());
        let (a, _) = join_new(&mut c, 0);
        let (b, _) = join_new(&mut c, 0);
        c.tick(3_000);
        completions(&mut c);
        c.sync("g", &a, 1, vec![]);
        // A new member triggers a rebalance; b never rejoins within its rebalance timeout.
        let (e, te) = join_new(&mut c, 3_100);
        let Reply::Parked(ta) = c.join(3_200, join_req(&a, None)) else {
            panic!()
        };
        c.heartbeat(3_300, "g", &b, 1);
        c.tick(3_100 + 30_000);
        let done = completions(&mut c);
        let Completion::Join(j) = &done[&ta] else {
            panic!()
        };
        assert_eq!(j.generation_id, 2);
        assert!(done.contains_key(&te));
        let ids: Vec<_> = c
            .describe("g")
            .unwrap()
            .members
            .into_iter()
            .map(|m| m.member_id)
            .collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&a) && ids.contains(&e) && !ids.contains(&b));
        assert_eq!(
            c.leave(40_000, "g", &[a.clone(), "nobody".into()]),
            vec![0, codes::UNKNOWN_MEMBER_ID]
        );
    }

    #[test]
    fn static_members_keep_their_place_and_fence_old_ids() {
        let mut c = GroupCoordinator::new(GroupLimits::default());
        let Reply::Parked(t) = c.join(0, join_req("", Some("i-1"))) else {
            panic!()
        };
        c.tick(3_000);
        let Some((t2, Completion::Join(j))) = c.poll_completion() else {
            panic!()
        };
        assert_eq!(t, t2);
        let old = j.member_id.clone();
        c.sync("g", &old, 1, vec![(old.clone(), b"X".to_vec())]);
        // Restart with the same instance id: a new member id, same generation, no rebalance.
        let Reply::Now(r) = c.join(5_000, join_req("", Some("i-1"))) else {
            panic!("no rebalance")
        };
        assert_eq!(r.generation_id, 1);
        assert_ne!(r.member_id, old);
        let Reply::Now(r2) = c.join(5_100, join_req(&old, Some("i-1"))) else {
            panic!()
        };
        assert_eq!(r2.error_code, codes::FENCED_INSTANCE_ID);
        assert_eq!(c.state("g"), Some(GroupState::Stable));
    }

    #[test]
    fn bad_joins_are_refused() {
        let mut c = GroupCoordinator::new(GroupLimits::default());
        let mut r = join_req("", None);
        r.session_timeout_ms = 10;
        assert!(matches!(
            c.join(0, r),
            Reply::Now(JoinResponse {
                error_code: codes::INVALID_SESSION_TIMEOUT,
                ..
            })
        ));
        let (_a, _) = join_new(&mut c, 0);
        let mut r = join_req("", None);
        r.protocols = vec![("cooperative-sticky".into(), vec![])];
        r.require_known_member_id = false;
        assert!(matches!(
            c.join(1, r),
            Reply::Now(JoinResponse {
                error_code: codes::INCONSISTENT_GROUP_PROTOCOL,
                ..
            })
        ));
        assert!(matches!(
            c.join(1, join_req("ghost", None)),
            Reply::Now(JoinResponse {
                error_code: codes::UNKNOWN_MEMBER_ID,
                ..
            })
        ));
        assert_eq!(c.delete("g"), codes::NON_EMPTY_GROUP);
        assert_eq!(c.delete("nope"), codes::GROUP_ID_NOT_FOUND);
    }
}
