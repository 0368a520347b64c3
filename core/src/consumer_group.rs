//! KIP-848 consumer groups (`group.protocol=consumer`) as a pure state machine: members
//! heartbeat with their subscription and the partitions they own, the coordinator computes
//! the target assignment itself (server-side `uniform` or `range` assignor) and moves each
//! member towards it incrementally — a member first gives up what it must revoke, and is given
//! a partition only once no other member still owns it. Nobody stops consuming the partitions
//! it keeps: there is no stop-the-world rebalance.
//!
//! The model follows Kafka's `GroupMetadataManager`/`CurrentAssignmentBuilder`: a group epoch
//! bumped by every membership, subscription or metadata change; a target assignment computed
//! for that epoch; per-member epochs and states (`Stable`, `UnrevokedPartitions`,
//! `UnreleasedPartitions`); fencing by epoch (FENCED_MEMBER_EPOCH) and by session and
//! revocation deadlines. Time comes in as `now_ms`; topics come in through [`TopicView`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Kafka error codes this machine returns.
pub mod codes {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_REQUEST: i16 = 42;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_MEMBER_EPOCH: i16 = 110;
    pub const UNRELEASED_INSTANCE_ID: i16 = 111;
    pub const UNSUPPORTED_ASSIGNOR: i16 = 112;
    pub const STALE_MEMBER_EPOCH: i16 = 113;
}

/// Member epoch sent to leave the group.
pub const LEAVE_EPOCH: i32 = -1;
/// Member epoch sent by a static member that leaves but will come back.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// Partitions by topic name.
pub type Assignment = BTreeMap<String, BTreeSet<i32>>;

/// The topics as the broker knows them when a heartbeat or tick is handled.
pub trait TopicView {
    /// Partition count of a topic, `None` if it does not exist.
    fn partitions(&self, topic: &str) -> Option<i32>;
    /// Every topic name (for regex subscriptions).
    fn names(&self) -> Vec<String>;
}

impl TopicView for BTreeMap<String, i32> {
    fn partitions(&self, topic: &str) -> Option<i32> {
        self.get(topic).copied()
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// Broker settings (Kafka's `group.consumer.*`).
#[derive(Debug, Clone)]
pub struct ConsumerGroupConfig {
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: i32,
    pub max_size: usize,
    /// The first is the default (`group.consumer.assignors`).
    pub assignors: Vec<String>,
}

impl Default for ConsumerGroupConfig {
    fn default() -> Self {
        ConsumerGroupConfig {
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 5_000,
            max_size: usize::MAX,
            assignors: vec!["uniform".into(), "range".into()],
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// The partitions the member owns, when it says (full heartbeats and after a change).
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeartbeatResponse {
    pub error_code: i16,
    pub error_message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// Present when the member must learn (or re-learn) its assignment.
    pub assignment: Option<Assignment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Stable,
    /// Waiting for the member to confirm it gave up `revoking`.
    UnrevokedPartitions,
    /// At the group's epoch, but some target partitions are still owned by others.
    UnreleasedPartitions,
}

#[derive(Debug, Clone)]
struct Member {
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    epoch: i32,
    previous_epoch: i32,
    state: MemberState,
    assigned: Assignment,
    revoking: Assignment,
    topic_names: Vec<String>,
    topic_regex: Option<String>,
    assignor: Option<String>,
    rebalance_timeout_ms: i32,
    session_deadline_ms: u64,
    revoke_deadline_ms: Option<u64>,
    /// The member has not been told its current assignment yet.
    send_assignment: bool,
}

#[derive(Debug, Clone, Default)]
struct Group {
    epoch: i32,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, Assignment>,
    /// Subscribed topics and their partition counts the target was computed from.
    subscribed: BTreeMap<String, i32>,
    assignor: String,
    /// Which member holds each partition (assigned or still being revoked).
    owners: HashMap<(String, i32), String>,
}

/// A member as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub assignment: Assignment,
    pub target_assignment: Assignment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupSummary {
    pub group_id: String,
    /// Kafka's names: Empty, Assigning, Reconciling, Stable.
    pub state: &'static str,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<ConsumerMemberSummary>,
}

#[derive(Debug, Default)]
pub struct ConsumerGroups {
    config: ConsumerGroupConfig,
    groups: HashMap<String, Group>,
    next_member: u64,
}

fn subtract(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        let rest: BTreeSet<i32> = match b.get(t) {
            Some(bs) => ps.difference(bs).copied().collect(),
            None => ps.clone(),
        };
        if !rest.is_empty() {
            out.insert(t.clone(), rest);
        }
    }
    out
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        if let Some(bs) = b.get(t) {
            let both: BTreeSet<i32> = ps.intersection(bs).copied().collect();
            if !both.is_empty() {
                out.insert(t.clone(), both);
            }
        }
    }
    out
}

fn pairs(a: &Assignment) -> impl Iterator<Item = (String, i32)> + '_ {
    a.iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
}

fn is_subset(a: &Assignment, b: &Assignment) -> bool {
    subtract(a, b).is_empty()
}

impl Member {
    fn subscribes(&self, topic: &str, regex: Option<&regex::Regex>) -> bool {
        self.topic_names.iter().any(|t| t == topic) || regex.is_some_and(|r| r.is_match(topic))
    }
}

fn compile(regex: &str) -> Option<regex::Regex> {
    // Kafka matches the whole topic name (RE2J `matches`).
    regex::Regex::new(&format!("^(?:{regex})$")).ok()
}

impl ConsumerGroups {
    pub fn new(config: ConsumerGroupConfig) -> ConsumerGroups {
        ConsumerGroups {
            config,
            ..ConsumerGroups::default()
        }
    }

    /// The group exists as a consumer (KIP-848) group.
    pub fn contains(&self, group_id: &str) -> bool {
        self.groups.contains_key(group_id)
    }

    pub fn is_empty_group(&self, group_id: &str) -> bool {
        self.groups
            .get(group_id)
            .is_none_or(|g| g.members.is_empty())
    }

    pub fn heartbeat(
        &mut self,
        now_ms: u64,
        topics: &dyn TopicView,
        mut req: HeartbeatRequest,
    ) -> HeartbeatResponse {
        let fail = |code: i16, msg: &str, req: &HeartbeatRequest| HeartbeatResponse {
            error_code: code,
            error_message: Some(msg.to_string()),
            member_id: req.member_id.clone(),
            member_epoch: req.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        };
        if req.group_id.is_empty() {
            return fail(codes::INVALID_REQUEST, "GroupId can't be empty.", &req);
        }
        if let Some(a) = &req.server_assignor {
            if !self.config.assignors.contains(a) {
                return fail(
                    codes::UNSUPPORTED_ASSIGNOR,
                    &format!("Assignor {a} is not supported (uniform, range)."),
                    &req,
                );
            }
        }
        if let Some(r) = &req.subscribed_topic_regex {
            if compile(r).is_none() {
                return fail(
                    codes::INVALID_REQUEST,
                    &format!("SubscribedTopicRegex `{r}` is not a valid regular expression."),
                    &req,
                );
            }
        }
        match req.member_epoch {
            LEAVE_EPOCH | STATIC_LEAVE_EPOCH => return self.leave(now_ms, topics, &req),
            0 => {
                if req.member_id.is_empty() {
                    self.next_member += 1;
                    req.member_id = format!("sluice-{now_ms:x}-{}", self.next_member);
                }
                if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
                    return fail(
                        codes::INVALID_REQUEST,
                        "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                        &req,
                    );
                }
            }
            e if e < 0 => return fail(codes::INVALID_REQUEST, "MemberEpoch is invalid.", &req),
            _ => {}
        }
        let session = self.config.session_timeout_ms;
        let max_size = self.config.max_size;
        let default_assignor = self.config.assignors[0].clone();
        let group = self.groups.entry(req.group_id.clone()).or_default();
        if group.assignor.is_empty() {
            group.assignor = default_assignor;
        }
        let mut bump = false;
        if req.member_epoch == 0 {
            // A static member coming back takes over its predecessor's place.
            let predecessor = req.instance_id.as_ref().and_then(|inst| {
                group
                    .members
                    .iter()
                    .find(|(id, m)| m.instance_id.as_ref() == Some(inst) && **id != req.member_id)
                    .map(|(id, m)| (id.clone(), m.epoch))
            });
            match predecessor {
                Some((old, STATIC_LEAVE_EPOCH)) => {
                    let mut m = group.members.remove(&old).expect("found above");
                    for p in pairs(&m.assigned).chain(pairs(&m.revoking)) {
                        group.owners.insert(p, req.member_id.clone());
                    }
                    if let Some(t) = group.target.remove(&old) {
                        group.target.insert(req.member_id.clone(), t);
                    }
                    m.epoch = m.previous_epoch;
                    m.send_assignment = true;
                    group.members.insert(req.member_id.clone(), m);
                }
                Some(_) => {
                    return fail(
                        codes::UNRELEASED_INSTANCE_ID,
                        &format!(
                            "Static member with instance id {} is still in the group.",
                            req.instance_id.as_deref().unwrap_or("")
                        ),
                        &req,
                    )
                }
                None => {
                    if let Some(old) = group.members.remove(&req.member_id) {
                        // Rejoining with epoch 0: its old assignment is gone.
                        release(group, &req.member_id, &old);
                    }
                    if group.members.len() >= max_size {
                        return fail(
                            codes::GROUP_MAX_SIZE_REACHED,
                            "The consumer group has reached its maximum capacity.",
                            &req,
                        );
                    }
                    group.members.insert(
                        req.member_id.clone(),
                        Member {
                            instance_id: req.instance_id.clone(),
                            rack_id: None,
                            client_id: req.client_id.clone(),
                            client_host: req.client_host.clone(),
                            epoch: 0,
                            previous_epoch: 0,
                            state: MemberState::Stable,
                            assigned: Assignment::new(),
                            revoking: Assignment::new(),
                            topic_names: Vec::new(),
                            topic_regex: None,
                            assignor: None,
                            rebalance_timeout_ms: 45_000,
                            session_deadline_ms: 0,
                            revoke_deadline_ms: None,
                            send_assignment: true,
                        },
                    );
                    bump = true;
                }
            }
        } else {
            let Some(m) = group.members.get(&req.member_id) else {
                return fail(
                    codes::UNKNOWN_MEMBER_ID,
                    &format!(
                        "Member {} is not a member of group {}.",
                        req.member_id, req.group_id
                    ),
                    &req,
                );
            };
            if req.member_epoch != m.epoch {
                // A member that missed our last answer may repeat its previous epoch, as long
                // as it does not claim partitions it no longer has.
                let lost_response = req.member_epoch == m.previous_epoch
                    && req
                        .owned
                        .as_ref()
                        .is_some_and(|o| is_subset(o, &m.assigned));
                if !lost_response {
                    return fail(
                        codes::FENCED_MEMBER_EPOCH,
                        &format!(
                            "The member epoch {} does not match the expected epoch {}.",
                            req.member_epoch, m.epoch
                        ),
                        &req,
                    );
                }
                group
                    .members
                    .get_mut(&req.member_id)
                    .unwrap()
                    .send_assignment = true;
            }
        }
        let m = group.members.get_mut(&req.member_id).expect("present");
        m.session_deadline_ms = now_ms + session;
        if let Some(names) = req.subscribed_topic_names.take() {
            if names != m.topic_names {
                m.topic_names = names;
                bump = true;
            }
        }
        if let Some(r) = req.subscribed_topic_regex.take() {
            let r = (!r.is_empty()).then_some(r);
            if r != m.topic_regex {
                m.topic_regex = r;
                bump = true;
            }
        }
        if let Some(a) = req.server_assignor.take() {
            if m.assignor.as_ref() != Some(&a) {
                m.assignor = Some(a);
                bump = true;
            }
        }
        if req.rebalance_timeout_ms > 0 {
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        }
        if req.rack_id.is_some() {
            m.rack_id = req.rack_id.take();
        }
        if let Some(owned) = &req.owned {
            if !m.send_assignment
                && *owned != m.assigned
                && m.state != MemberState::UnrevokedPartitions
            {
                m.send_assignment = true;
            }
        }
        if bump || subscription_changed(group, topics) {
            group.epoch += 1;
            compute_target(group, topics);
        }
        reconcile(group, &req.member_id, req.owned.as_ref(), now_ms);
        let m = group.members.get_mut(&req.member_id).expect("present");
        let assignment = std::mem::take(&mut m.send_assignment).then(|| m.assigned.clone());
        HeartbeatResponse {
            error_code: codes::NONE,
            error_message: None,
            member_id: req.member_id,
            member_epoch: m.epoch,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            assignment,
        }
    }

    fn leave(
        &mut self,
        now_ms: u64,
        topics: &dyn TopicView,
        req: &HeartbeatRequest,
    ) -> HeartbeatResponse {
        let out = HeartbeatResponse {
            error_code: codes::NONE,
            error_message: None,
            member_id: req.member_id.clone(),
            member_epoch: req.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        };
        let session = self.config.session_timeout_ms;
        let Some(group) = self.groups.get_mut(&req.group_id) else {
            return HeartbeatResponse {
                error_code: codes::UNKNOWN_MEMBER_ID,
                ..out
            };
        };
        let Some(m) = group.members.get_mut(&req.member_id) else {
            return HeartbeatResponse {
                error_code: codes::UNKNOWN_MEMBER_ID,
                ..out
            };
        };
        if req.member_epoch == STATIC_LEAVE_EPOCH && m.instance_id.is_some() {
            // Keeps its partitions for a session timeout, waiting for the same instance.
            if m.epoch != STATIC_LEAVE_EPOCH {
                m.previous_epoch = m.epoch;
            }
            m.epoch = STATIC_LEAVE_EPOCH;
            m.session_deadline_ms = now_ms + session;
            return out;
        }
        remove_member(group, &req.member_id, topics);
        out
    }

    /// Session and revocation deadlines.
    pub fn tick(&mut self, now_ms: u64, topics: &dyn TopicView) {
        for group in self.groups.values_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.session_deadline_ms <= now_ms
                        || m.revoke_deadline_ms.is_some_and(|d| d <= now_ms)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                remove_member(group, &id, topics);
            }
            if !group.members.is_empty() && subscription_changed(group, topics) {
                group.epoch += 1;
                compute_target(group, topics);
            }
        }
    }

    /// OffsetCommit by a member (`member_id` empty and epoch < 0: an admin or manual commit,
    /// which is always accepted, as in Kafka).
    pub fn validate_commit(&self, group_id: &str, member_id: &str, member_epoch: i32) -> i16 {
        if member_id.is_empty() && member_epoch < 0 {
            return codes::NONE;
        }
        let Some(m) = self
            .groups
            .get(group_id)
            .and_then(|g| g.members.get(member_id))
        else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if member_epoch > m.epoch {
            codes::FENCED_MEMBER_EPOCH
        } else if member_epoch < m.epoch {
            codes::STALE_MEMBER_EPOCH
        } else {
            codes::NONE
        }
    }

    /// OffsetFetch v9 with a member id and epoch.
    pub fn validate_fetch(&self, group_id: &str, member_id: &str, member_epoch: i32) -> i16 {
        let Some(m) = self
            .groups
            .get(group_id)
            .and_then(|g| g.members.get(member_id))
        else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if member_epoch != m.epoch {
            codes::STALE_MEMBER_EPOCH
        } else {
            codes::NONE
        }
    }

    /// Topics any member is subscribed to now (OffsetDelete refuses those).
    pub fn subscribed_topics(&self, group_id: &str) -> BTreeSet<String> {
        self.groups
            .get(group_id)
            .map(|g| g.subscribed.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn describe(&self, group_id: &str) -> Option<ConsumerGroupSummary> {
        let g = self.groups.get(group_id)?;
        Some(ConsumerGroupSummary {
            group_id: group_id.to_string(),
            state: state_of(g),
            group_epoch: g.epoch,
            assignment_epoch: g.epoch,
            assignor: g.assignor.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| ConsumerMemberSummary {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_topic_names: m.topic_names.clone(),
                    subscribed_topic_regex: m.topic_regex.clone(),
                    assignment: m.assigned.clone(),
                    target_assignment: g.target.get(id).cloned().unwrap_or_default(),
                })
                .collect(),
        })
    }

    /// (group id, state) of every group.
    pub fn list(&self) -> Vec<(String, &'static str)> {
        self.groups
            .iter()
            .map(|(id, g)| (id.clone(), state_of(g)))
            .collect()
    }

    /// DeleteGroups: only an empty group can go.
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
}

fn state_of(g: &Group) -> &'static str {
    if g.members.is_empty() {
        "Empty"
    } else if g
        .members
        .values()
        .all(|m| m.epoch == g.epoch && m.state == MemberState::Stable)
    {
        "Stable"
    } else {
        "Reconciling"
    }
}

/// Frees everything a departing member held.
fn release(group: &mut Group, id: &str, m: &Member) {
    for p in pairs(&m.assigned).chain(pairs(&m.revoking)) {
        if group.owners.get(&p).is_some_and(|o| o == id) {
            group.owners.remove(&p);
        }
    }
}

fn remove_member(group: &mut Group, id: &str, topics: &dyn TopicView) {
    if let Some(m) = group.members.remove(id) {
        release(group, id, &m);
        group.target.remove(id);
        group.epoch += 1;
        compute_target(group, topics);
    }
}

/// The subscribed topics (and partition counts) as they are now.
fn current_subscription(group: &Group, topics: &dyn TopicView) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    let mut all: Option<Vec<String>> = None;
    for m in group.members.values() {
        for t in &m.topic_names {
            if let Some(n) = topics.partitions(t) {
                out.insert(t.clone(), n);
            }
        }
        if let Some(r) = m.topic_regex.as_deref().and_then(compile) {
            for t in all.get_or_insert_with(|| topics.names()).iter() {
                if r.is_match(t) {
                    if let Some(n) = topics.partitions(t) {
                        out.insert(t.clone(), n);
                    }
                }
            }
        }
    }
    out
}

fn subscription_changed(group: &Group, topics: &dyn TopicView) -> bool {
    current_subscription(group, topics) != group.subscribed
}

/// Recomputes the target assignment for the group's (new) epoch.
fn compute_target(group: &mut Group, topics: &dyn TopicView) {
    group.subscribed = current_subscription(group, topics);
    // The members' preferred assignor wins if they agree on one; otherwise the default.
    let preferred: BTreeSet<&String> = group
        .members
        .values()
        .filter_map(|m| m.assignor.as_ref())
        .collect();
    if preferred.len() == 1 {
        group.assignor = preferred.into_iter().next().unwrap().clone();
    }
    let regexes: BTreeMap<&String, Option<regex::Regex>> = group
        .members
        .iter()
        .map(|(id, m)| (id, m.topic_regex.as_deref().and_then(compile)))
        .collect();
    let eligible = |topic: &str| -> Vec<String> {
        group
            .members
            .iter()
            .filter(|(id, m)| m.subscribes(topic, regexes[id].as_ref()))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let mut target: BTreeMap<String, Assignment> = group
        .members
        .keys()
        .map(|id| (id.clone(), Assignment::new()))
        .collect();
    if group.assignor == "range" {
        for (topic, &n) in &group.subscribed {
            let members = eligible(topic);
            if members.is_empty() {
                continue;
            }
            let (each, extra) = (n as usize / members.len(), n as usize % members.len());
            let mut next = 0i32;
            for (i, id) in members.iter().enumerate() {
                let take = each + usize::from(i < extra);
                let set = target
                    .get_mut(id)
                    .unwrap()
                    .entry(topic.clone())
                    .or_default();
                for p in next..next + take as i32 {
                    set.insert(p);
                }
                next += take as i32;
            }
        }
    } else {
        // uniform: balanced and sticky — members keep what they have (current target) up to
        // their share, the rest goes to the least loaded eligible member.
        let all: Vec<(String, i32)> = group
            .subscribed
            .iter()
            .flat_map(|(t, &n)| (0..n).map(move |p| (t.clone(), p)))
            .collect();
        let share = if group.members.is_empty() {
            0
        } else {
            all.len().div_ceil(group.members.len())
        };
        let mut count: BTreeMap<String, usize> =
            group.members.keys().map(|id| (id.clone(), 0)).collect();
        let mut previous: HashMap<(String, i32), String> = HashMap::new();
        for (id, a) in &group.target {
            for p in pairs(a) {
                previous.insert(p, id.clone());
            }
        }
        for (id, m) in &group.members {
            for p in pairs(&m.assigned) {
                previous.entry(p).or_insert_with(|| id.clone());
            }
        }
        let mut unplaced = Vec::new();
        let mut eligible_cache: HashMap<String, Vec<String>> = HashMap::new();
        for (t, p) in &all {
            let el = eligible_cache
                .entry(t.clone())
                .or_insert_with(|| eligible(t));
            match previous.get(&(t.clone(), *p)) {
                Some(id) if el.contains(id) && count.get(id).is_some_and(|c| *c < share) => {
                    *count.get_mut(id).unwrap() += 1;
                    target
                        .get_mut(id)
                        .unwrap()
                        .entry(t.clone())
                        .or_default()
                        .insert(*p);
                }
                _ => unplaced.push((t.clone(), *p)),
            }
        }
        // Trim members above the floor share so newcomers get theirs.
        let floor = if group.members.is_empty() {
            0
        } else {
            all.len() / group.members.len()
        };
        let over: usize = count.values().filter(|c| **c > floor).count();
        let extra = if group.members.is_empty() {
            0
        } else {
            all.len() % group.members.len()
        };
        if over > extra {
            let mut allowed_over = extra;
            for (id, c) in count.iter_mut() {
                if *c > floor {
                    if allowed_over > 0 {
                        allowed_over -= 1;
                        continue;
                    }
                    // Give back one partition (the last one).
                    let a = target.get_mut(id).unwrap();
                    let (t, p) = pairs(a).last().unwrap();
                    let set = a.get_mut(&t).unwrap();
                    set.remove(&p);
                    if set.is_empty() {
                        a.remove(&t);
                    }
                    *c -= 1;
                    unplaced.push((t, p));
                }
            }
        }
        for (t, p) in unplaced {
            let el = &eligible_cache[&t];
            if let Some(id) = el.iter().min_by_key(|id| (count[*id], (*id).clone())) {
                *count.get_mut(id).unwrap() += 1;
                target
                    .get_mut(id)
                    .unwrap()
                    .entry(t.clone())
                    .or_default()
                    .insert(p);
            }
        }
    }
    for a in target.values_mut() {
        a.retain(|_, ps| !ps.is_empty());
    }
    group.target = target;
}

/// Moves one member towards its target (Kafka's `CurrentAssignmentBuilder`).
fn reconcile(group: &mut Group, id: &str, owned: Option<&Assignment>, now_ms: u64) {
    let group_epoch = group.epoch;
    let target = group.target.get(id).cloned().unwrap_or_default();
    let m = group.members.get_mut(id).expect("member");
    if m.state == MemberState::UnrevokedPartitions {
        let done = owned.is_some_and(|o| intersect(o, &m.revoking).is_empty());
        if !done {
            return;
        }
        for p in pairs(&m.revoking) {
            if group.owners.get(&p).is_some_and(|o| o == id) {
                group.owners.remove(&p);
            }
        }
        m.revoking.clear();
        m.revoke_deadline_ms = None;
        m.state = MemberState::Stable;
    }
    if m.epoch == group_epoch && m.state == MemberState::Stable {
        return;
    }
    let keep = intersect(&m.assigned, &target);
    let revoke = subtract(&m.assigned, &target);
    if !revoke.is_empty() {
        m.assigned = keep;
        m.revoking = revoke;
        m.state = MemberState::UnrevokedPartitions;
        m.revoke_deadline_ms = Some(now_ms + m.rebalance_timeout_ms.max(0) as u64);
        m.send_assignment = true;
        return;
    }
    let mut unreleased = false;
    for (t, p) in pairs(&subtract(&target, &m.assigned)).collect::<Vec<_>>() {
        let key = (t.clone(), p);
        match group.owners.get(&key) {
            Some(o) if o != id => unreleased = true,
            _ => {
                group.owners.insert(key, id.to_string());
                m.assigned.entry(t).or_default().insert(p);
                m.send_assignment = true;
            }
        }
    }
    if m.epoch != group_epoch {
        m.previous_epoch = m.epoch;
        m.epoch = group_epoch;
    }
    m.state = if unreleased {
        MemberState::UnreleasedPartitions
    } else {
        MemberState::Stable
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn join(id: &str, names: &[&str]) -> HeartbeatRequest {
        HeartbeatRequest {
            group_id: "g".into(),
            member_id: id.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 10_000,
            subscribed_topic_names: Some(names.iter().map(|s| s.to_string()).collect()),
            owned: Some(Assignment::new()),
            ..HeartbeatRequest::default()
        }
    }

    fn beat(id: &str, epoch: i32, owned: &Assignment) -> HeartbeatRequest {
        HeartbeatRequest {
            group_id: "g".into(),
            member_id: id.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned: Some(owned.clone()),
            ..HeartbeatRequest::default()
        }
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(|s| s.len()).sum()
    }

    /// Drives members to a steady state, each acting on what it was told; returns owned sets.
    fn settle(
        cg: &mut ConsumerGroups,
        t: &BTreeMap<String, i32>,
        members: &mut BTreeMap<String, (i32, Assignment)>,
        now: u64,
    ) {
        for _ in 0..10 {
            for (id, (epoch, owned)) in members.iter_mut() {
                let r = cg.heartbeat(now, t, beat(id, *epoch, owned));
                assert_eq!(r.error_code, 0, "{r:?}");
                *epoch = r.member_epoch;
                if let Some(a) = r.assignment {
                    *owned = a;
                }
            }
        }
    }

    #[test]
    fn members_share_partitions_and_move_incrementally() {
        let t = topics(&[("orders", 6)]);
        let mut cg = ConsumerGroups::new(ConsumerGroupConfig::default());
        let r = cg.heartbeat(0, &t, join("a", &["orders"]));
        assert_eq!(r.member_epoch, 1);
        assert_eq!(count(r.assignment.as_ref().unwrap()), 6);
        let mut members = BTreeMap::new();
        members.insert("a".to_string(), (1, r.assignment.unwrap()));
        // b joins: gets nothing until a gives partitions up.
        let r = cg.heartbeat(10, &t, join("b", &["orders"]));
        assert_eq!(r.member_epoch, 2);
        assert_eq!(r.assignment.as_ref().map(count), Some(0));
        members.insert("b".to_string(), (2, Assignment::new()));
        // a is told to keep 3 (epoch stays 1 until it confirms the revocation).
        let (e, owned) = members["a"].clone();
        let r = cg.heartbeat(20, &t, beat("a", e, &owned));
        assert_eq!(r.member_epoch, 1);
        assert_eq!(count(r.assignment.as_ref().unwrap()), 3);
        members.get_mut("a").unwrap().1 = r.assignment.unwrap();
        assert_eq!(cg.describe("g").unwrap().state, "Reconciling");
        settle(&mut cg, &t, &mut members, 30);
        let (ea, a) = &members["a"];
        let (eb, b) = &members["b"];
        assert_eq!((*ea, *eb), (2, 2));
        assert_eq!((count(a), count(b)), (3, 3));
        assert!(intersect(a, b).is_empty());
        assert_eq!(cg.describe("g").unwrap().state, "Stable");
        // a's kept partitions never left it (sticky, no stop-the-world).
        let before = members["a"].1.clone();
        members.insert("c".into(), (0, Assignment::new()));
        let r = cg.heartbeat(40, &t, join("c", &["orders"]));
        members.get_mut("c").unwrap().0 = r.member_epoch;
        settle(&mut cg, &t, &mut members, 50);
        for (id, (_, a)) in &members {
            assert_eq!(count(a), 2, "{id}");
        }
        assert!(is_subset(&members["a"].1, &before));
    }

    #[test]
    fn a_dead_member_is_expired_and_its_partitions_move() {
        let t = topics(&[("orders", 6)]);
        let mut cg = ConsumerGroups::new(ConsumerGroupConfig {
            session_timeout_ms: 1000,
            ..ConsumerGroupConfig::default()
        });
        let mut members = BTreeMap::new();
        for id in ["a", "b", "c"] {
            let r = cg.heartbeat(0, &t, join(id, &["orders"]));
            members.insert(id.to_string(), (r.member_epoch, Assignment::new()));
        }
        settle(&mut cg, &t, &mut members, 100);
        assert!(members.values().all(|(_, a)| count(a) == 2));
        // c stops heartbeating.
        members.remove("c");
        cg.tick(900, &t);
        assert_eq!(cg.describe("g").unwrap().members.len(), 3);
        settle(&mut cg, &t, &mut members, 900);
        cg.tick(1101, &t);
        assert_eq!(cg.describe("g").unwrap().members.len(), 2);
        settle(&mut cg, &t, &mut members, 1200);
        assert!(members.values().all(|(_, a)| count(a) == 3));
        assert!(intersect(&members["a"].1, &members["b"].1).is_empty());
    }

    #[test]
    fn fencing_by_epoch_and_lost_responses() {
        let t = topics(&[("orders", 2)]);
        let mut cg = ConsumerGroups::new(ConsumerGroupConfig::default());
        let r = cg.heartbeat(0, &t, join("a", &["orders"]));
        let owned = r.assignment.unwrap();
        let r = cg.heartbeat(1, &t, beat("a", 7, &owned));
        assert_eq!(r.error_code, codes::FENCED_MEMBER_EPOCH);
        let r = cg.heartbeat(1, &t, beat("zz", 1, &owned));
        assert_eq!(r.error_code, codes::UNKNOWN_MEMBER_ID);
        // b joins, a moves to epoch 2 after revoking; a repeats epoch 1 (lost response).
        let r = cg.heartbeat(2, &t, join("b", &["orders"]));
        assert_eq!(r.member_epoch, 2);
        let r = cg.heartbeat(3, &t, beat("a", 1, &owned));
        let kept = r.assignment.unwrap();
        let r = cg.heartbeat(4, &t, beat("a", 1, &kept));
        assert_eq!(r.member_epoch, 2);
        let r = cg.heartbeat(5, &t, beat("a", 1, &kept));
        assert_eq!(r.error_code, 0);
        assert_eq!(r.assignment, Some(kept.clone()));
        assert_eq!(cg.validate_commit("g", "a", 2), codes::NONE);
        assert_eq!(cg.validate_commit("g", "a", 1), codes::STALE_MEMBER_EPOCH);
        assert_eq!(cg.validate_commit("g", "a", 3), codes::FENCED_MEMBER_EPOCH);
        assert_eq!(cg.validate_commit("g", "", -1), codes::NONE);
        assert_eq!(cg.validate_commit("g", "x", 2), codes::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn revocation_deadline_fences_a_stuck_member() {
        let t = topics(&[("orders", 4)]);
        let mut cg = ConsumerGroups::new(ConsumerGroupConfig::default());
        let r = cg.heartbeat(0, &t, join("a", &["orders"]));
        let owned = r.assignment.unwrap();
        cg.heartbeat(10, &t, join("b", &["orders"]));
        // a is asked to revoke but never confirms (keeps claiming everything).
        let r = cg.heartbeat(20, &t, beat("a", 1, &owned));
        assert_eq!(count(r.assignment.as_ref().unwrap()), 2);
        let r = cg.heartbeat(30, &t, beat("a", 1, &owned));
        assert_eq!(r.member_epoch, 1);
        cg.tick(20 + 10_000, &t);
        let d = cg.describe("g").unwrap();
        assert_eq!(d.members.len(), 1);
        assert_eq!(d.members[0].member_id, "b");
        let r = cg.heartbeat(10_040, &t, beat("b", 2, &Assignment::new()));
        assert_eq!(count(r.assignment.as_ref().unwrap()), 4);
    }

    #[test]
    fn leave_static_rejoin_and_delete() {
        let t = topics(&[("orders", 2)]);
        let mut cg = ConsumerGroups::new(ConsumerGroupConfig::default());
        let mut j = join("a", &["orders"]);
        j.instance_id = Some("i1".into());
        let r = cg.heartbeat(0, &t, j.clone());
        let owned = r.assignment.unwrap();
        assert_eq!(count(&owned), 2);
        let mut leave = beat("a", STATIC_LEAVE_EPOCH, &owned);
        leave.instance_id = Some("i1".into());
        assert_eq!(cg.heartbeat(1, &t, leave).member_epoch, STATIC_LEAVE_EPOCH);
        // A second instance with the same id while the first is active is refused.
        let mut j2 = join("a2", &["orders"]);
        j2.instance_id = Some("i1".into());
        let r = cg.heartbeat(2, &t, j2.clone());
        assert_eq!(r.error_code, 0);
        assert_eq!(r.member_epoch, 1, "takes over without a new epoch");
        assert_eq!(r.assignment, Some(owned.clone()));
        let mut j3 = join("a3", &["orders"]);
        j3.instance_id = Some("i1".into());
        assert_eq!(
            cg.heartbeat(3, &t, j3).error_code,
            codes::UNRELEASED_INSTANCE_ID
        );
        assert_eq!(cg.delete("g"), codes::NON_EMPTY_GROUP);
        let r = cg.heartbeat(4, &t, beat("a2", LEAVE_EPOCH, &owned));
        assert_eq!(r.member_epoch, LEAVE_EPOCH);
        assert_eq!(cg.describe("g").unwrap().state, "Empty");
        assert_eq!(cg.delete("g"), codes::NONE);
        assert_eq!(cg.delete("g"), codes::GROUP_ID_NOT_FOUND);
    }

    #[test]
    fn new_partitions_regex_and_range() {
        let mut t = topics(&[("orders", 2), ("orders-eu", 2), ("other", 3)]);
        let mut cg = ConsumerGroups::new(ConsumerGroupConfig::default());
        let mut j = join("a", &[]);
        j.subscribed_topic_names = None;
        j.subscribed_topic_regex = Some("orders.*".into());
        j.server_assignor = Some("range".into());
        let r = cg.heartbeat(0, &t, j);
        assert_eq!(count(r.assignment.as_ref().unwrap()), 4);
        assert_eq!(cg.describe("g").unwrap().assignor, "range");
        t.insert("orders".into(), 5);
        cg.tick(10, &t);
        let owned = r.assignment.unwrap();
        let r = cg.heartbeat(20, &t, beat("a", 1, &owned));
        assert_eq!(r.member_epoch, 2);
        assert_eq!(count(r.assignment.as_ref().unwrap()), 7);
        let mut bad = join("b", &[]);
        bad.server_assignor = Some("sticky-ish".into());
        assert_eq!(
            cg.heartbeat(30, &t, bad).error_code,
            codes::UNSUPPORTED_ASSIGNOR
        );
        let mut bad = join("b", &[]);
        bad.subscribed_topic_regex = Some("(".into());
        assert_eq!(cg.heartbeat(30, &t, bad).error_code, codes::INVALID_REQUEST);
    }

    proptest::proptest! {
        /// Whatever members join, leave, die and heartbeat in whatever order, no partition is
        /// ever owned by two members at once (as the members themselves see it), and once
        /// everyone heartbeats a few rounds every partition is owned, evenly.
        #[test]
        fn never_two_owners_and_converges(ops in proptest::collection::vec((0u8..4, 0usize..5), 1..80)) {
            let t = topics(&[("a", 5), ("b", 4)]);
            let mut cg = ConsumerGroups::new(ConsumerGroupConfig {
                session_timeout_ms: 1_000,
                ..ConsumerGroupConfig::default()
            });
            let mut members: BTreeMap<String, (i32, Assignment)> = BTreeMap::new();
            let mut now = 0u64;
            for (op, who) in ops {
                let id = format!("m{who}");
                now += 50;
                match op {
                    0 if !members.contains_key(&id) => {
                        let r = cg.heartbeat(now, &t, join(&id, &["a", "b"]));
                        proptest::prop_assert_eq!(r.error_code, 0);
                        members.insert(id, (r.member_epoch, r.assignment.unwrap_or_default()));
                    }
                    1 if members.contains_key(&id) => {
                        let (_, owned) = members.remove(&id).unwrap();
                        cg.heartbeat(now, &t, beat(&id, LEAVE_EPOCH, &owned));
                    }
                    3 => {
                        // Time passes; members the coordinator expired are dead clients.
                        now += 400;
                        cg.tick(now, &t);
                        let alive: BTreeSet<String> = cg
                            .describe("g")
                            .map(|d| d.members.into_iter().map(|m| m.member_id).collect())
                            .unwrap_or_default();
                        members.retain(|id, _| alive.contains(id));
                    }
                    _ => {
                        if let Some((e, owned)) = members.get(&id).cloned() {
                            let r = cg.heartbeat(now, &t, beat(&id, e, &owned));
                            if r.error_code == codes::NONE {
                                let m = members.get_mut(&id).unwrap();
                                m.0 = r.member_epoch;
                                if let Some(a) = r.assignment { m.1 = a; }
                            } else {
                                // Fenced (e.g. missed a revocation deadline): the client drops
                                // everything it owns and rejoins.
                                members.remove(&id);
                            }
                        }
                    }
                }
                let mut seen = BTreeSet::new();
                for (_, owned) in members.values() {
                    for p in pairs(owned) {
                        proptest::prop_assert!(seen.insert(p.clone()), "{:?} owned twice", p);
                    }
                }
            }
            for _ in 0..6 {
                now += 10;
                let ids: Vec<String> = members.keys().cloned().collect();
                for id in ids {
                    let (e, owned) = members[&id].clone();
                    let r = cg.heartbeat(now, &t, beat(&id, e, &owned));
                    proptest::prop_assert_eq!(r.error_code, 0);
                    let m = members.get_mut(&id).unwrap();
                    m.0 = r.member_epoch;
                    if let Some(a) = r.assignment { m.1 = a; }
                }
            }
            if !members.is_empty() {
                let total: usize = members.values().map(|(_, a)| count(a)).sum();
                proptest::prop_assert_eq!(total, 9);
                let max = members.values().map(|(_, a)| count(a)).max().unwrap();
                let min = members.values().map(|(_, a)| count(a)).min().unwrap();
                proptest::prop_assert!(max - min <= 1, "unbalanced {:?}", members);
                proptest::prop_assert_eq!(cg.describe("g").unwrap().state, "Stable");
            }
        }
    }
}
