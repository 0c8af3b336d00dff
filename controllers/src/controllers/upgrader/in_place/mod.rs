//! Elemental hosts updated in place (`upgrade-safety.md` §3, S6, S9, S10), the pure
//! core: [`step`] moves every in-flight host one phase along
//! `Selected → Cordoned → Drained → Pending → Done → Verified → Uncordoned` (with `Retrying`
//! after an OS update failure, and the blocked ends `DrainTimeout`, `BootedImageMismatch`,
//! `RetriesExhausted` and `HostTimeout`), and selects new hosts: the control plane first, one
//! host at a time, then the workers pool by pool, at most `maxUnavailable` per pool. A record
//! belongs to one host on one Machine: a host associated with another Machine starts afresh.
//!
//! No clock of another machine is read: a host's boot is told by its Node's `bootID`, recorded
//! until the host is labelled `pending`, and only our own clock times the drain and the host.
//!
//! The persisted [`HostRecord`]s are the only memory: a restarted manager calls [`step`] with the
//! records from status and resumes the same hosts. The caller writes the returned records to
//! status **before** it performs the returned actions, so a host is never acted on without a
//! record; every action is idempotent and is asked for again until the observation shows it
//! took effect. [`spare`] holds the spare-host gate for rollouts (S9).

pub mod drain;
pub mod flow;
pub mod kubeconfig;
pub mod observe;
pub mod remediation;
pub mod spare;
pub mod verify;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use api::durations::{DurationError, parse_positive};
use api::v1alpha1::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HOST_TIMEOUT, DEFAULT_MAX_UNAVAILABLE, DEFAULT_RETRIES,
    HostPhase, HostRecord, InPlace, MAX_HOSTS,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

pub use super::reason::OS_VERSION_RECONCILIATION_FAILED;
/// How long an OS update failure that stays reported counts as one attempt: the agent retries
/// every 10 s by default, so a failure still reported after this is a new failure.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(60);

pub use super::reason::Reason;
pub use flow::CONTROL_PLANE_POOL;

/// `spec.inPlace` with its defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Most hosts of one worker pool in flight.
    pub max_unavailable: usize,
    /// How long a drain may take, counted from the host's selection.
    pub drain_timeout: Duration,
    /// OS update failures tolerated per host.
    pub retries: u32,
    /// How long a host may stay `pending` (updating, rebooting, not yet verified).
    pub host_timeout: Duration,
}

impl Settings {
    /// The settings of `spec.inPlace`; admission keeps the numbers in range, and a duration
    /// admission let through that does not parse is an error.
    pub fn from_spec(spec: &InPlace) -> Result<Self, DurationError> {
        let drain = spec
            .drain_timeout
            .as_deref()
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT);
        Ok(Self {
            max_unavailable: usize::try_from(
                spec.max_unavailable.unwrap_or(DEFAULT_MAX_UNAVAILABLE),
            )
            .unwrap_or(1)
            .max(1),
            drain_timeout: parse_positive(drain)?,
            retries: u32::try_from(spec.retries.unwrap_or(DEFAULT_RETRIES)).unwrap_or(0),
            host_timeout: parse_positive(
                spec.host_timeout.as_deref().unwrap_or(DEFAULT_HOST_TIMEOUT),
            )?,
        })
    }
}

/// Which part of the Cluster a host belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A Machine labelled `cluster.x-k8s.io/control-plane`.
    ControlPlane,
    /// A worker Machine; its `cluster.x-k8s.io/deployment-name` names the pool.
    Worker(String),
}

impl Role {
    fn pool(&self) -> Option<&str> {
        match self {
            Self::ControlPlane => None,
            Self::Worker(pool) => Some(pool),
        }
    }
}

/// The ElementalHost label `elementalhost.infrastructure.cluster.x-k8s.io/in-place-update`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateLabel {
    /// `pending`: the agent may update the host.
    Pending,
    /// `done`: the agent finished (which alone is not success).
    Done,
}

/// What is observed of one host, through its Machine, ElementalMachine, ElementalHost and Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView {
    /// The ElementalHost's name.
    pub host: String,
    /// The Machine's name.
    pub machine: String,
    /// The Machine's `status.nodeRef.name`, once it has one.
    pub node: Option<String>,
    /// Control plane or worker pool.
    pub role: Role,
    /// The Node's `spec.unschedulable`.
    pub cordoned: bool,
    /// No pod is left on the Node that a drain moves or refuses (DaemonSet, mirror and finished
    /// pods do not count).
    pub drained: bool,
    /// The pod on the cordoned Node that `spec.inPlace.drain` does not let a drain evict, as
    /// the condition message names it.
    pub refused: Option<String>,
    /// The Node carries this upgrader's `cordoned-by` mark: it cordoned the Node.
    pub cordoned_by_us: bool,
    /// The ElementalHost's in-place-update label.
    pub label: Option<UpdateLabel>,
    /// The reason of the ElementalHost's `OSVersionReady` condition.
    pub os_reason: Option<String>,
    /// The Node's `status.nodeInfo.osImage`.
    pub os_image: Option<String>,
    /// The Node's `status.nodeInfo.bootID`, which changes at every boot.
    pub boot_id: Option<String>,
    /// The ElementalMachine's `spec.osVersionManagement.osVersion.imageUri`.
    pub image_uri: Option<String>,
    /// The value of the Machine's `cluster.x-k8s.io/skip-remediation` annotation, when set.
    pub skip_remediation: Option<String>,
}

/// The image hosts are moved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// The `imageUri` to write, `oci://…@sha256:…`.
    pub image: &'a str,
    /// The target build's stamp, which the booted Node's `osImage` carries.
    pub stamp: &'a str,
}

/// One write to either cluster, asked for until the observation shows it done.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Set the workload Node's `spec.unschedulable`.
    Cordon { node: String },
    /// Evict the Node's pods through the Eviction API (PodDisruptionBudgets respected).
    Evict { node: String },
    /// Label the ElementalHost `in-place-update=pending`.
    LabelPending { host: String },
    /// Apply `osVersionManagement.osVersion.imageUri` on the ElementalMachine.
    ApplyImage { machine: String, image: String },
    /// Clear the workload Node's `spec.unschedulable`.
    Uncordon { node: String },
    /// Set `cluster.x-k8s.io/skip-remediation` on the Machine.
    SkipRemediation { machine: String },
    /// Remove our `cluster.x-k8s.io/skip-remediation` from the Machine.
    AllowRemediation { machine: String },
}

/// Why the in-place flow stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The condition reason.
    pub reason: Reason,
    /// The host concerned.
    pub host: String,
    /// For the condition message.
    pub message: String,
}

/// The result of one [`step`].
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The records to persist, sorted by host, at most [`MAX_HOSTS`].
    pub records: Vec<HostRecord>,
    /// The writes to perform after persisting `records`.
    pub actions: Vec<Action>,
    /// Set when a host is blocked: nothing new starts until an operator clears it.
    pub blocked: Option<Blocked>,
}

impl Outcome {
    /// Whether every host of `world` is updated to `target` and uncordoned.
    pub fn finished(&self, world: &[HostView], target: Target<'_>) -> bool {
        self.actions.is_empty()
            && self.blocked.is_none()
            && world.iter().all(|view| at_target(view, target))
            && self.records.iter().all(|r| !in_flight(r.phase))
    }
}

/// Whether a phase holds its host out of service (cordoned, or about to be).
pub fn in_flight(phase: HostPhase) -> bool {
    !matches!(phase, HostPhase::Uncordoned | HostPhase::Released)
}

/// Whether a phase is a blocked end (or a hold): nothing new starts while a host is in one.
pub fn is_blocked(phase: HostPhase) -> bool {
    matches!(
        phase,
        HostPhase::DrainTimeout
            | HostPhase::BootedImageMismatch
            | HostPhase::RetriesExhausted
            | HostPhase::DrainRefused
            | HostPhase::HostTimeout
    )
}

/// Whether a phase comes before the host is labelled `pending`: no image has been written for
/// it, so it may still be released or take another target.
pub fn before_pending(phase: HostPhase) -> bool {
    matches!(
        phase,
        HostPhase::Selected
            | HostPhase::Cordoned
            | HostPhase::Drained
            | HostPhase::DrainRefused
            | HostPhase::DrainTimeout
    )
}

/// The records with the update's target applied to the hosts whose image is not written yet
/// (S3: no host is written an image that is no longer the Plan's choice): with no target (the
/// update is no longer wanted), or a new target the host already runs, the host is released;
/// with a new target it does not run, the host takes it. Hosts whose image was written keep it
/// and are carried to the end.
pub fn retarget(
    records: &[HostRecord],
    world: &[HostView],
    target: Option<Target<'_>>,
    now: Timestamp,
) -> Vec<HostRecord> {
    records
        .iter()
        .map(|record| {
            let view = world.iter().find(|v| v.host == record.host);
            // Labelled `pending` but its image not written yet: no image is written for it
            // that is not the current choice either.
            let unwritten = record.phase == HostPhase::Pending
                && view.is_some_and(|v| v.image_uri.as_deref() != Some(record.image.as_str()));
            if !before_pending(record.phase) && !unwritten {
                return record.clone();
            }
            let release = match target {
                None => Some("the update is no longer wanted"),
                Some(t) if t.image == record.image => None,
                Some(t) if view.is_some_and(|v| at_target(v, t)) => {
                    Some("the host already runs the new target")
                }
                Some(t) => {
                    let mut next = record.clone();
                    t.image.clone_into(&mut next.image);
                    t.stamp.clone_into(&mut next.stamp);
                    return next;
                }
            };
            let mut next = record.clone();
            if let Some(why) = release {
                next.phase = HostPhase::Releasing;
                next.message = Some(format!("released: {why}"));
                next.last_transition_time = Some(Time(now));
            }
            next
        })
        .collect()
}

/// Whether `os_image` carries `stamp` as a whole word: `img-1` is not in `img-12`.
pub fn carries_stamp(os_image: &str, stamp: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    !stamp.is_empty()
        && os_image.match_indices(stamp).any(|(at, _)| {
            let before = os_image[..at].chars().next_back();
            let after = os_image[at + stamp.len()..].chars().next();
            !before.is_some_and(word) && !after.is_some_and(word)
        })
}

/// Whether a host already runs `target`: its ElementalMachine names the image and its Node
/// booted it.
pub fn at_target(view: &HostView, target: Target<'_>) -> bool {
    view.image_uri.as_deref() == Some(target.image)
        && view
            .os_image
            .as_deref()
            .is_some_and(|os| carries_stamp(os, target.stamp))
}

/// One pass of the in-place flow: advance every in-flight host one phase, then, unless paused
/// or blocked, select new hosts within the budget.
pub fn step(
    records: &[HostRecord],
    world: &[HostView],
    target: Target<'_>,
    settings: Settings,
    paused: bool,
    now: Timestamp,
) -> Outcome {
    let views: BTreeMap<(&str, &str), &HostView> = world
        .iter()
        .map(|v| ((v.host.as_str(), v.machine.as_str()), v))
        .collect();
    let mut next: BTreeMap<String, HostRecord> = BTreeMap::new();
    let mut actions = Vec::new();
    for record in records {
        // A host whose Machine or Node is gone, or that now backs another Machine, has nothing
        // left to finish under this record.
        let Some(view) = views
            .get(&(record.host.as_str(), record.machine.as_str()))
            .filter(|v| v.node.is_some())
        else {
            continue;
        };
        let (record, mut asked) = advance(record, view, settings, paused, now);
        actions.append(&mut asked);
        next.insert(record.host.clone(), record);
    }
    let blocked = next
        .values()
        .find(|r| is_blocked(r.phase))
        .map(|r| Blocked {
            reason: blocked_reason(r.phase),
            host: r.host.clone(),
            message: r.message.clone().unwrap_or_default(),
        });
    if !paused && blocked.is_none() {
        for view in select(&next, world, target, settings) {
            let Some(node) = view.node.clone() else {
                continue;
            };
            // A Node cordoned already is not marked as ours.
            if !view.cordoned {
                actions.push(Action::Cordon { node: node.clone() });
            }
            next.insert(
                view.host.clone(),
                HostRecord {
                    host: view.host.clone(),
                    machine: view.machine.clone(),
                    node,
                    pool: view.role.pool().map(str::to_owned),
                    phase: HostPhase::Selected,
                    image: target.image.to_owned(),
                    stamp: target.stamp.to_owned(),
                    started: Time(now),
                    finished: None,
                    attempts: 0,
                    message: None,
                    last_transition_time: Some(Time(now)),
                    cordoned_before: (view.cordoned && !view.cordoned_by_us).then_some(true),
                    boot_id: view.boot_id.clone(),
                    pending_since: None,
                },
            );
        }
    }
    actions.extend(remediation::actions(next.values(), world));
    Outcome {
        records: bounded(next.into_values().collect()),
        actions,
        blocked,
    }
}

/// The reason a blocked phase reports.
pub(crate) fn blocked_reason(phase: HostPhase) -> Reason {
    match phase {
        HostPhase::DrainTimeout => Reason::DrainTimeout,
        HostPhase::BootedImageMismatch => Reason::BootedImageMismatch,
        HostPhase::DrainRefused => Reason::DrainRefused,
        HostPhase::HostTimeout => Reason::HostTimeout,
        _ => Reason::OsVersionReconciliationFailed,
    }
}

/// Keeps at most [`MAX_HOSTS`] records by dropping the oldest finished ones.
fn bounded(mut records: Vec<HostRecord>) -> Vec<HostRecord> {
    while records.len() > MAX_HOSTS {
        let oldest = records
            .iter()
            .enumerate()
            .filter(|(_, r)| !in_flight(r.phase))
            .min_by_key(|(_, r)| r.finished.as_ref().map(|t| t.0))
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                records.remove(i);
            }
            None => break,
        }
    }
    records
}

/// The hosts to start now: while hosts are in flight, only more of their pool (up to its
/// budget; none for the control plane, one host at a time); else the first control-plane host
/// not at target, or the first pool, by name, with hosts to update.
fn select<'w>(
    records: &BTreeMap<String, HostRecord>,
    world: &'w [HostView],
    target: Target<'_>,
    settings: Settings,
) -> Vec<&'w HostView> {
    let in_flight_hosts: BTreeSet<&str> = records
        .values()
        .filter(|r| in_flight(r.phase))
        .map(|r| r.host.as_str())
        .collect();
    // A host without a Node cannot be drained: it waits, and holds no host after it.
    let mut todo: Vec<&HostView> = world
        .iter()
        .filter(|v| !in_flight_hosts.contains(v.host.as_str()) && !at_target(v, target))
        .filter(|v| v.node.is_some())
        .collect();
    todo.sort_by(|a, b| (&a.role, &a.host).cmp(&(&b.role, &b.host)));
    let busy = |pool: Option<&str>| {
        records
            .values()
            .filter(|r| in_flight(r.phase) && r.pool.as_deref() == pool)
            .count()
    };
    // The part of the Cluster with hosts in flight goes on alone: the control plane one host
    // at a time, a pool up to its budget (a host joining an earlier pool, or the control plane
    // needing a new target, waits for it).
    if busy(None) > 0 {
        return Vec::new();
    }
    let busy_pool = records
        .values()
        .filter(|r| in_flight(r.phase))
        .find_map(|r| r.pool.as_deref());
    let pool = if let Some(pool) = busy_pool {
        pool
    } else {
        if let Some(first) = todo.iter().find(|v| v.role == Role::ControlPlane) {
            return vec![*first];
        }
        let Some(pool) = todo.iter().find_map(|v| v.role.pool()) else {
            return Vec::new();
        };
        pool
    };
    let room = settings.max_unavailable.saturating_sub(busy(Some(pool)));
    todo.into_iter()
        .filter(|v| v.role.pool() == Some(pool))
        .take(room)
        .collect()
}

/// Moves one record at most one phase, with the actions its (new) phase asks for. While
/// `paused`, a host not yet labelled `pending` goes no further than drained, and no image is
/// written; a host whose update was started finishes.
///
/// Around the phase itself: the Node's boot ID is kept until the host is labelled `pending`,
/// which waits until the Machine is held from remediation; the host is done only once our hold
/// is gone; and a host `pending` past `hostTimeout` is blocked.
fn advance(
    record: &HostRecord,
    view: &HostView,
    settings: Settings,
    paused: bool,
    now: Timestamp,
) -> (HostRecord, Vec<Action>) {
    let (mut next, mut actions) = transition(record, view, settings, paused, now);
    if next.phase == HostPhase::Uncordoned
        && record.phase != HostPhase::Uncordoned
        && remediation::ours(view)
    {
        next = record.clone();
        actions.clear();
    }
    if !remediation::held(view) {
        actions.retain(|a| !matches!(a, Action::LabelPending { .. }));
    }
    // Up to the pass that writes the image, the latest boot is the one before the update.
    if before_pending(record.phase) && view.boot_id.is_some() {
        next.boot_id.clone_from(&view.boot_id);
    }
    if next.phase == HostPhase::Pending && next.pending_since.is_none() {
        next.pending_since = Some(Time(now));
    }
    if let Some(late) = timed_out(&next, settings, now) {
        next = late;
        actions.clear();
    }
    if next.phase != record.phase {
        next.last_transition_time = Some(Time(now));
    }
    (next, actions)
}

/// `record` blocked with `HostTimeout`, when it has been `pending` (updating, failing or not yet
/// verified) longer than `hostTimeout`.
pub fn timed_out(record: &HostRecord, settings: Settings, now: Timestamp) -> Option<HostRecord> {
    let waiting = matches!(
        record.phase,
        HostPhase::Pending | HostPhase::Retrying | HostPhase::Done
    );
    let since = record.pending_since.as_ref()?.0;
    if !waiting || !elapsed(since, now, settings.host_timeout) {
        return None;
    }
    Some(HostRecord {
        phase: HostPhase::HostTimeout,
        message: Some(format!(
            "ElementalHost {} was labelled pending more than {:?} ago and has not come back verified on the new image; Node {} stays cordoned and Machine {} keeps {}",
            record.host,
            settings.host_timeout,
            record.node,
            record.machine,
            remediation::SKIP_REMEDIATION_ANNOTATION
        )),
        last_transition_time: Some(Time(now)),
        ..record.clone()
    })
}

/// When `record` entered its phase.
fn since(record: &HostRecord) -> Timestamp {
    record
        .last_transition_time
        .as_ref()
        .map_or(record.started.0, |t| t.0)
}

/// Whether `span` has passed since `from`.
fn elapsed(from: Timestamp, now: Timestamp, span: Duration) -> bool {
    let gone = now.duration_since(from);
    !gone.is_negative() && gone.unsigned_abs() >= span
}

fn transition(
    record: &HostRecord,
    view: &HostView,
    settings: Settings,
    paused: bool,
    now: Timestamp,
) -> (HostRecord, Vec<Action>) {
    let mut next = record.clone();
    let node = || record.node.clone();
    let failed = view.os_reason.as_deref() == Some(OS_VERSION_RECONCILIATION_FAILED);
    let applied = view.image_uri.as_deref() == Some(record.image.as_str());
    let evict = || -> Vec<Action> {
        if view.refused.is_some() {
            Vec::new()
        } else {
            vec![Action::Evict { node: node() }]
        }
    };
    let actions = match record.phase {
        HostPhase::Selected if view.cordoned => {
            next.phase = HostPhase::Cordoned;
            evict()
        }
        HostPhase::Selected => vec![Action::Cordon { node: node() }],
        // Before `pending`, the Node must still be cordoned (an operator may have uncordoned
        // it) and drained (it may have taken pods since): otherwise cordon and drain again.
        HostPhase::Cordoned | HostPhase::Drained | HostPhase::DrainRefused if !view.cordoned => {
            next.phase = HostPhase::Selected;
            next.message = None;
            vec![Action::Cordon { node: node() }]
        }
        HostPhase::Cordoned | HostPhase::Drained | HostPhase::DrainRefused
            if view.refused.is_some() =>
        {
            next.phase = HostPhase::DrainRefused;
            next.message.clone_from(&view.refused);
            Vec::new()
        }
        HostPhase::DrainRefused | HostPhase::Drained if !view.drained => {
            next.phase = HostPhase::Cordoned;
            next.message = None;
            evict()
        }
        HostPhase::DrainRefused => {
            next.phase = HostPhase::Cordoned;
            next.message = None;
            Vec::new()
        }
        // Drained and already running the image (a retried host the agent finished
        // meanwhile): nothing to update, so no `pending`; only to verify and uncordon.
        HostPhase::Cordoned | HostPhase::Drained if view.drained && at_own_target(record, view) => {
            next.phase = HostPhase::Done;
            Vec::new()
        }
        HostPhase::Cordoned if view.drained => {
            next.phase = HostPhase::Drained;
            if paused {
                Vec::new()
            } else {
                vec![Action::LabelPending {
                    host: record.host.clone(),
                }]
            }
        }
        HostPhase::Cordoned if drain_expired(record, settings, now) => {
            next.phase = HostPhase::DrainTimeout;
            next.message = Some(format!(
                "Node {} was not drained within {:?}; it stays cordoned",
                record.node, settings.drain_timeout
            ));
            Vec::new()
        }
        HostPhase::Cordoned => vec![Action::Evict { node: node() }],
        HostPhase::Drained if view.label == Some(UpdateLabel::Pending) && !paused => {
            next.phase = HostPhase::Pending;
            vec![apply_image(record)]
        }
        HostPhase::Drained if paused => Vec::new(),
        HostPhase::Drained => vec![Action::LabelPending {
            host: record.host.clone(),
        }],
        // The image is written only while the host is labelled `pending`.
        HostPhase::Pending if !applied && paused => Vec::new(),
        HostPhase::Pending if !applied => match view.label {
            Some(UpdateLabel::Pending) => vec![apply_image(record)],
            _ => vec![Action::LabelPending {
                host: record.host.clone(),
            }],
        },
        HostPhase::Pending if failed => {
            count_failure(record, &mut next, settings);
            Vec::new()
        }
        // A `done` without a boot since the host was labelled `pending` (the agent found the
        // map it had, from before the image was written, already applied) is not this update's:
        // the host is asked again, unless its Node already runs the target build.
        HostPhase::Pending
            if view.label == Some(UpdateLabel::Done)
                && !rebooted(record, view)
                && !at_own_target(record, view) =>
        {
            vec![Action::LabelPending {
                host: record.host.clone(),
            }]
        }
        HostPhase::Pending if view.label == Some(UpdateLabel::Done) => {
            next.phase = HostPhase::Done;
            Vec::new()
        }
        HostPhase::Retrying if !failed => {
            next.phase = HostPhase::Pending;
            Vec::new()
        }
        // A failure still reported a retry interval later is the agent's next try failing.
        HostPhase::Retrying if elapsed(since(record), now, RETRY_INTERVAL) => {
            count_failure(record, &mut next, settings);
            next.last_transition_time = Some(Time(now));
            Vec::new()
        }
        HostPhase::Done => match view.os_image.as_deref() {
            Some(os) if carries_stamp(os, &record.stamp) => {
                next.phase = HostPhase::Verified;
                next.message = None;
                uncordon_ours(view, node())
            }
            // The kubelet reports the new boot ID with the booted image's `osImage`: once the
            // Node shows another boot, what it runs is judged at once.
            Some(os) if rebooted(record, view) => {
                next.phase = HostPhase::BootedImageMismatch;
                next.message = Some(format!(
                    "ElementalHost {} reported done, but Node {} runs {os:?}, not {:?}; it stays cordoned",
                    record.host, record.node, record.stamp
                ));
                Vec::new()
            }
            _ => Vec::new(),
        },
        // Only a Node this upgrader cordoned (its mark is on it) is uncordoned: one cordoned
        // by someone else stays cordoned. Our mark left on a Node an operator uncordoned is
        // removed too, so a later cordon of theirs is never taken for ours.
        HostPhase::Verified if !view.cordoned_by_us => {
            next.phase = HostPhase::Uncordoned;
            next.finished = Some(Time(now));
            Vec::new()
        }
        HostPhase::Verified => vec![Action::Uncordon { node: node() }],
        HostPhase::Releasing if view.cordoned_by_us => vec![Action::Uncordon { node: node() }],
        HostPhase::Releasing => {
            next.phase = HostPhase::Released;
            next.finished = Some(Time(now));
            Vec::new()
        }
        HostPhase::Pending
        | HostPhase::Retrying
        | HostPhase::Uncordoned
        | HostPhase::DrainTimeout
        | HostPhase::BootedImageMismatch
        | HostPhase::RetriesExhausted
        | HostPhase::Released
        | HostPhase::HostTimeout => Vec::new(),
    };
    (next, actions)
}

/// The uncordon of a verified host's Node, when this upgrader's mark is on it.
fn uncordon_ours(view: &HostView, node: String) -> Vec<Action> {
    if view.cordoned_by_us {
        vec![Action::Uncordon { node }]
    } else {
        Vec::new()
    }
}

/// Whether the Node booted since the host was labelled `pending`: its boot ID differs from the
/// one recorded. A host selected before its Node reported a boot ID is taken at its `done`.
fn rebooted(record: &HostRecord, view: &HostView) -> bool {
    match (record.boot_id.as_deref(), view.boot_id.as_deref()) {
        (Some(before), Some(seen)) => before != seen,
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// Counts one OS update failure: `Retrying`, or `RetriesExhausted` past `retries`.
fn count_failure(record: &HostRecord, next: &mut HostRecord, settings: Settings) {
    next.attempts = record.attempts.saturating_add(1);
    let over = u32::try_from(next.attempts).unwrap_or(u32::MAX) > settings.retries;
    next.phase = if over {
        HostPhase::RetriesExhausted
    } else {
        HostPhase::Retrying
    };
    next.message = Some(format!(
        "the OS update of ElementalHost {} failed ({} of {} allowed)",
        record.host,
        next.attempts,
        settings.retries.saturating_add(1)
    ));
}

/// Whether the host runs the image its record moves it to.
fn at_own_target(record: &HostRecord, view: &HostView) -> bool {
    at_target(
        view,
        Target {
            image: &record.image,
            stamp: &record.stamp,
        },
    )
}

fn apply_image(record: &HostRecord) -> Action {
    Action::ApplyImage {
        machine: record.machine.clone(),
        image: record.image.clone(),
    }
}

/// Whether the drain took longer than allowed, counted from when the host last entered
/// `Cordoned` (a drain started over after a refusal or an uncordon gets a fresh timer).
fn drain_expired(record: &HostRecord, settings: Settings, now: Timestamp) -> bool {
    elapsed(since(record), now, settings.drain_timeout)
}

#[cfg(test)]
pub(crate) mod tests;
