//! From the planner's answer to the status, events and requeue of one reconcile. Pure.

use std::time::Duration;

use api::conditions::{Desired, Status, merge};
use api::v1alpha1::{CONDITION_READY, MAX_HISTORY, NextStep, StepRecord, UpgraderStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use semver::Version;

use api::v1alpha1::{InPlace, UpgraderSpecView};
use jiff::Timestamp;

use super::finish::{self, ClusterApi, Rollout};
use super::gates::{self, ClusterState, Hold, Plan, Reason, Step};
use super::observe::Observation;
use super::{chain, cluster, in_place};
use crate::runtime::Note;

/// Condition types the upgrader reports besides `Ready`.
pub const PROGRESSING: &str = "Progressing";
/// Set while a gate blocks the next step.
pub const BLOCKED: &str = "Blocked";
/// Set while `spec.paused` is true.
pub const PAUSED: &str = "Paused";

/// How often a running rollout is re-read: the control plane object and MachineDeployments are
/// not watched.
pub const ROLLOUT_POLL: Duration = Duration::from_secs(30);
/// How often a missing Cluster or Cluster API is looked for again, as in v0.6.
pub const MISSING_POLL: Duration = Duration::from_secs(60);
/// The longest wait for a window, so a clock change is noticed.
pub const WINDOW_POLL_MAX: Duration = Duration::from_secs(3600);
/// How long after an earlier wave's soak ends a Cluster still waiting looks again, to drop the
/// end it shows: by then the Plan has admitted the wave's first Clusters (it looks at the end
/// itself) and their upgraders, reached first, have stepped.
pub const WAVE_OPENING_GRACE: Duration = Duration::from_secs(1);

/// One reconcile's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The step to write first, if any; the status below assumes it succeeded.
    pub write: Option<Step>,
    /// The status to hold.
    pub status: UpgraderStatus,
    /// Events to publish (transitions only).
    pub notes: Vec<Note>,
    /// When to look again; `None` waits for a change.
    pub requeue: Option<Duration>,
}

/// The observations `decide` needs besides the plan.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The current status.
    pub status: &'a UpgraderStatus,
    /// The Cluster's name, for messages.
    pub cluster: &'a str,
    /// The Cluster's `spec.topology.version` and whether that step has finished, when known.
    pub rollout: Option<(Version, bool)>,
    /// The clock.
    pub now: &'a Time,
}

/// Builds the status, events and requeue from `plan`.
pub fn decide(plan: &Plan, observed: &Observed<'_>) -> Decision {
    let current = observed.status;
    let history = history(current, plan, observed);
    let (conditions, next_step, latest_set_version, requeue, write) = match plan {
        Plan::Write(step) => (
            vec![
                Desired::new(
                    CONDITION_READY,
                    false,
                    Reason::StepApplied.as_str(),
                    step_message(step, observed.cluster),
                ),
                Desired::new(
                    PROGRESSING,
                    true,
                    Reason::StepApplied.as_str(),
                    step_message(step, observed.cluster),
                ),
                Desired::new(BLOCKED, false, "NotBlocked", "no gate holds the next step"),
                Desired::new(PAUSED, false, "NotPaused", "spec.paused is not set"),
            ],
            None,
            Some(step.version_string()),
            Some(ROLLOUT_POLL),
            Some(step.clone()),
        ),
        Plan::Hold { hold, confirmed } => {
            let latest = confirmed
                .as_ref()
                .map(api::version::with_v)
                .or_else(|| current.latest_set_version.clone());
            (
                hold_conditions(hold),
                hold.step.as_ref().map(|s| NextStep {
                    version: s.version_string(),
                    id: s.id.clone(),
                    reason: hold.reason.as_str().to_owned(),
                    not_before: hold.not_before.map(Time),
                }),
                latest,
                requeue(hold, observed),
                None,
            )
        }
    };
    let notes = notes(plan, current, observed.cluster);
    let status = UpgraderStatus {
        latest_set_version,
        conditions: Some(merge(
            current.conditions.as_deref().unwrap_or_default(),
            &conditions,
            observed.generation,
            observed.now,
        )),
        observed_generation: observed.generation,
        next_step,
        history: (!history.is_empty()).then_some(history),
        // In-place host records are kept as they are until the in-place flow is wired in.
        hosts: current.hosts.clone(),
        in_place: current.in_place.clone(),
        retry_hosts: current.retry_hosts.clone(),
        rollout: current.rollout.clone(),
    };
    Decision {
        write,
        status,
        notes,
        requeue,
    }
}

/// Settles a written step's status as the next reconcile will see it: `post` is the decision on
/// the Cluster as the write returned it (its new generation not yet observed by Cluster API), so
/// its conditions and `nextStep` replace the written decision's, which keeps its history,
/// `latestSetVersion` and events. A step then writes the upgrader's status once.
pub fn settle_after_write(written: &mut Decision, post: &Decision) {
    written
        .status
        .conditions
        .clone_from(&post.status.conditions);
    written.status.next_step.clone_from(&post.status.next_step);
    written.requeue = post.requeue;
}

fn step_message(step: &Step, cluster: &str) -> String {
    format!(
        "set Cluster {cluster} from {} to {} with image {:?}",
        super::cluster::shown(&step.from),
        step.version_string(),
        step.id
    )
}

/// `Ready`, `Progressing`, `Blocked` and `Paused` for a hold.
pub fn hold_conditions(hold: &Hold) -> Vec<Desired> {
    let reason = hold.reason.as_str();
    let message = hold.message.as_str();
    let (ready, progressing, blocked) = match hold.reason {
        Reason::ClusterUsingLatestVersion | Reason::ClusterAheadOfPlan | Reason::InPlaceUpdated => {
            (Status::True, Status::False, Status::False)
        }
        Reason::RollingOut
        | Reason::PreviousStepUnfinished
        | Reason::InPlaceUpdating
        | Reason::WaitingForWave => (Status::False, Status::True, Status::False),
        Reason::Paused | Reason::DryRun | Reason::StepApplied => {
            (Status::False, Status::False, Status::False)
        }
        _ => (Status::False, Status::False, Status::True),
    };
    let paused = hold.reason == Reason::Paused;
    vec![
        Desired::new(CONDITION_READY, ready, reason, message),
        Desired::new(PROGRESSING, progressing, reason, message),
        if blocked == Status::True {
            Desired::new(BLOCKED, blocked, reason, message)
        } else {
            Desired::new(
                BLOCKED,
                Status::False,
                "NotBlocked",
                "no gate blocks the upgrader",
            )
        },
        if paused {
            Desired::new(PAUSED, true, "Paused", "spec.paused is true")
        } else {
            Desired::new(PAUSED, false, "NotPaused", "spec.paused is not set")
        },
    ]
}

fn requeue(hold: &Hold, observed: &Observed<'_>) -> Option<Duration> {
    match hold.reason {
        Reason::ClusterNotFound
        | Reason::ClusterClaimed
        | Reason::ClusterApiNotInstalled
        | Reason::WorkloadClusterUnavailable
        | Reason::InvalidWorkloadKubeconfig => Some(MISSING_POLL),
        Reason::RollingOut | Reason::PreviousStepUnfinished => Some(ROLLOUT_POLL),
        Reason::OutsideMaintenanceWindow => Some(hold.not_before.map_or(WINDOW_POLL_MAX, |at| {
            let wait = at.duration_since(observed.now.0).unsigned_abs();
            wait.clamp(Duration::from_secs(1), WINDOW_POLL_MAX)
        })),
        Reason::WaitingForWave => hold
            .not_before
            .map(|at| at.duration_since(observed.now.0).unsigned_abs() + WAVE_OPENING_GRACE),
        _ => None,
    }
}

/// Appends a written step; marks the last step finished once the Cluster is seen finished at it.
fn history(current: &UpgraderStatus, plan: &Plan, observed: &Observed<'_>) -> Vec<StepRecord> {
    let mut history = current.history.clone().unwrap_or_default();
    if let (Some((version, true)), Some(last)) = (&observed.rollout, history.last_mut())
        && last.finished.is_none()
        && api::version::parse_lenient(&last.to)
            .is_some_and(|to| to.cmp_precedence(version).is_eq())
    {
        last.finished = Some(observed.now.clone());
    }
    if let Plan::Write(step) = plan {
        history.push(StepRecord {
            from: step.from.clone(),
            to: step.version_string(),
            image: step.id.clone(),
            started: observed.now.clone(),
            finished: None,
        });
    }
    let skip = history.len().saturating_sub(MAX_HISTORY);
    history.into_iter().skip(skip).collect()
}

/// Events on transitions only: a step, reaching the Plan's version, or a new blocking reason.
fn notes(plan: &Plan, current: &UpgraderStatus, cluster: &str) -> Vec<Note> {
    let previous = |type_: &str| {
        current
            .conditions
            .as_deref()
            .and_then(|c| api::conditions::find(c, type_))
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    match plan {
        Plan::Write(step) => vec![Note::normal(
            "SettingClusterVersion",
            step_message(step, cluster),
        )],
        Plan::Hold { hold, .. } => {
            let reason = hold.reason.as_str();
            match hold.reason {
                Reason::ClusterUsingLatestVersion | Reason::InPlaceUpdated => {
                    (previous(CONDITION_READY) != Some(("True".into(), reason.into())))
                        .then(|| Note::normal(hold.reason.as_str(), hold.message.clone()))
                        .into_iter()
                        .collect()
                }
                _ if hold_conditions(hold)
                    .iter()
                    .any(|c| c.type_ == BLOCKED && c.status == Status::True) =>
                {
                    (previous(BLOCKED) != Some(("True".into(), reason.into())))
                        .then(|| Note::warning(warning_reason(hold.reason), hold.message.clone()))
                        .into_iter()
                        .collect()
                }
                _ => Vec::new(),
            }
        }
    }
}

/// The v0.6 Warning reason where one exists, else the condition reason.
fn warning_reason(reason: Reason) -> &'static str {
    match reason {
        Reason::ClusterNotFound => "GetClusterFailed",
        Reason::PlanNotFound => "GetPlanFailed",
        Reason::PlanNotReady => "MachineImageDetailsVersionNotSet",
        Reason::InvalidVersion => "ErrorParsingLatestFoundVersion",
        other => other.as_str(),
    }
}

/// The upgrader one reconcile decides for: its spec, its status and its generation.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The spec.
    pub spec: UpgraderSpecView<'a>,
    /// The current status.
    pub status: &'a UpgraderStatus,
    /// `metadata.generation`.
    pub generation: Option<i64>,
}

/// The whole decision of one reconcile, from what was observed: the planner's answer joined with
/// the in-place flow, the status (conditions, nextStep, history, hosts, inPlace, retryHosts),
/// the events and the requeue, and the host writes to make after the status is persisted.
pub fn reconcile_decision(
    subject: Subject<'_>,
    observed: &Observation,
    now: Timestamp,
) -> (Decision, Vec<in_place::Action>) {
    let claim = observed
        .claimed_by
        .as_ref()
        .filter(|_| !subject.spec.paused)
        .map(|by| {
            Hold::new(
                Reason::ClusterClaimed,
                format!(
                    "{by} acts on Cluster {}: this upgrader writes nothing to the Cluster or its hosts while it does",
                    subject.spec.cluster_name
                ),
            )
        });
    let planned = match &claim {
        Some(hold) => Plan::Hold {
            hold: hold.clone(),
            confirmed: None,
        },
        None => gates::plan(&gates::Inputs {
            spec: subject.spec,
            cluster: &observed.cluster,
            plan: &observed.plan,
            images: &observed.images,
            now,
            chained: observed.chained,
        }),
    };
    let declined = declined_chain(subject, observed, &planned);
    let fallback = observed.in_place.unwrap_or_else(|| {
        in_place::Settings::from_spec(&InPlace::default()).unwrap_or(in_place::Settings {
            max_unavailable: 1,
            drain_timeout: Duration::from_secs(600),
            retries: 1,
            host_timeout: Duration::from_secs(1800),
        })
    });
    let joined = match &observed.hosts {
        _ if let Some(hold) = claim => in_place::flow::held(&observed.records, hold),
        // Blocked, the records kept as they are, until the workload cluster can be read.
        Some(Err(unreachable)) => in_place::flow::unreachable(
            &observed.records,
            observed.wanted.as_ref().map_or(fallback, |w| w.settings),
            now,
            unreachable.is_invalid_kubeconfig(),
            crate::runtime::cause_chain(unreachable),
        ),
        hosts => {
            let (world, spare) = match hosts {
                Some(Ok((world, spare, _))) => (world.as_ref(), spare.clone()),
                _ => (None, None),
            };
            in_place::flow::decide(in_place::flow::Inputs {
                planned,
                wanted: observed.wanted.clone(),
                records: &observed.records,
                world: world.map(|(views, _)| views.as_slice()),
                spare,
                stamps: &observed.stamps,
                fallback,
                now,
            })
        }
    };
    let rollout = match &observed.cluster {
        ClusterState::Found(view) => view.topology.as_ref().and_then(|t| {
            api::version::parse_lenient(&t.version).map(|v| (v, view.finished.is_ok()))
        }),
        _ => None,
    };
    let now_time = Time(now);
    let mut decision = decide(
        &joined.plan,
        &Observed {
            generation: subject.generation,
            status: subject.status,
            cluster: subject.spec.cluster_name,
            rollout,
            now: &now_time,
        },
    );
    decision.notes.extend(declined);
    decision.status.hosts = (!joined.records.is_empty()).then(|| joined.records.clone());
    if let (Some(progress), ClusterState::Found(view)) = (&joined.progress, &observed.cluster)
        && let Some(topology) = &view.topology
    {
        let history = in_place::flow::history(
            decision.status.history.as_deref().unwrap_or_default(),
            &joined.plan,
            &topology.version,
            &progress.image,
            now,
        );
        decision.status.history = (!history.is_empty()).then_some(history);
        decision.status.in_place = Some(progress.clone());
    }
    decision
        .status
        .retry_hosts
        .clone_from(&observed.retry_hosts);
    decision.status.rollout.clone_from(&observed.membership);
    decision
        .notes
        .extend(joined.notes.iter().cloned().map(|mut note| {
            if let Some(host) = note.related.as_mut() {
                host.namespace = Some(observed.namespace.clone());
            }
            note
        }));
    if let Some(wait) = joined.requeue {
        decision.requeue = Some(decision.requeue.map_or(wait, |w| w.min(wait)));
    }
    (decision, joined.actions)
}

/// The Normal event, once as a climb starts (no step pending before), that the ClusterClass
/// offers a chained upgrade the variable mode cannot carry: one image per version needs
/// `spec.imageMap`, so the upgrader steps one minor at a time.
fn declined_chain(subject: Subject<'_>, observed: &Observation, planned: &Plan) -> Option<Note> {
    let step = match planned {
        Plan::Write(step) => step,
        Plan::Hold { hold, .. } => hold.step.as_deref()?,
    };
    (observed.chained && subject.spec.image_map.is_none() && subject.status.next_step.is_none())
        .then(|| {
            Note::normal(
                chain::NEEDS_IMAGE_MAP,
                format!(
                    "the ClusterClass of Cluster {} names this extension's GenerateUpgradePlan handler, but a chained upgrade needs spec.imageMap (an image per version): stepping one minor at a time, next {}",
                    subject.spec.cluster_name,
                    step.version_string()
                ),
            )
        })
}

/// The decision on the Cluster as the write of `step` returned it: what the reconcile that write
/// triggers will compute, for [`settle_after_write`].
pub fn after_write(
    subject: Subject<'_>,
    observed: &Observation,
    written: &serde_json::Value,
    api: ClusterApi,
    step: &Step,
    now: Timestamp,
) -> Decision {
    let mut view = cluster::view(written);
    view.finished = finish::finished(
        &Rollout {
            api,
            cluster: written,
            control_plane: None,
            machine_deployments: None,
        },
        &step.version,
    );
    let after = gates::plan(&gates::Inputs {
        spec: subject.spec,
        cluster: &ClusterState::Found(view),
        plan: &observed.plan,
        images: &observed.images,
        now,
        chained: observed.chained,
    });
    decide(
        &after,
        &Observed {
            generation: subject.generation,
            status: subject.status,
            cluster: subject.spec.cluster_name,
            rollout: Some((step.version.clone(), false)),
            now: &Time(now),
        },
    )
}
