//! Where the in-place flow meets the planner. Pure: from the planner's answer, the upgrader's
//! `spec.inPlace`, the host records and the observed hosts, to the answer the upgrader reports,
//! the records to persist, the writes to make and the events to publish.
//!
//! - An image-only change (the Plan's version is the Cluster's) with `spec.inPlace` set never
//!   writes the Cluster: its hosts are moved in place, as far as the gates allow (a paused
//!   upgrader or Cluster, an unfinished step, a closed window or a dry run start no host).
//! - Hosts already started are always carried on, and no topology step is written until none is
//!   in flight (S4).
//! - A topology step on an Elemental Cluster needs every host's Node to run the build its
//!   ElementalMachine names (S4), and a spare host per pool (S9).

use std::time::Duration;

use api::v1alpha1::{
    HostPhase, HostRecord, InPlaceProgress, MAX_HISTORY, PoolProgress, StepRecord,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use semver::Version;

use super::observe::{ELEMENTAL_API_VERSION, ELEMENTAL_HOST};
use super::spare::NoSpareHost;
use super::verify::{Stamps, booted_mismatch};
use super::{
    Action, HostView, Role, Settings, Target, at_target, in_flight, is_blocked, remediation,
    retarget, step, timed_out,
};
use crate::controllers::upgrader::gates::{Hold, Plan};
use crate::controllers::upgrader::reason::Reason;
use crate::runtime::Note;

/// How often hosts in flight are looked at.
pub const IN_PLACE_POLL: Duration = Duration::from_secs(2);
/// How often an updated Cluster is looked at for Machines created from the old template.
pub const UPDATED_POLL: Duration = Duration::from_secs(60);
/// How often hosts whose Node does not run the build their ElementalMachine names are looked at
/// again before a topology step (the workload's Nodes are not watched).
pub const VERIFY_POLL: Duration = Duration::from_secs(30);
/// The pool name the control plane is reported under.
pub const CONTROL_PLANE_POOL: &str = "control-plane";

/// The in-place update the Plan asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    /// Defaults applied.
    pub settings: Settings,
    /// The Plan's image ID, which has the Cluster's version.
    pub image: String,
    /// Its build's stamp, when the MachineImage carries one.
    pub stamp: Option<String>,
    /// The Cluster's version.
    pub version: Version,
    /// Why no host may start now (paused, unfinished step, window, dry run), if anything.
    pub held: Option<Hold>,
}

/// Everything [`decide`] needs.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The planner's answer.
    pub planned: Plan,
    /// Set when the Plan asks for an image-only change and `spec.inPlace` is set.
    pub wanted: Option<Wanted>,
    /// The persisted records.
    pub records: &'a [HostRecord],
    /// The observed hosts, when they were read.
    pub world: Option<&'a [HostView]>,
    /// The spare-host gate's answer, when a topology step on an Elemental Cluster was checked.
    pub spare: Option<Result<(), NoSpareHost>>,
    /// The build stamps of the namespace's images, by image ID.
    pub stamps: &'a Stamps,
    /// The settings in-flight hosts continue under when no update is wanted.
    pub fallback: Settings,
    /// The clock.
    pub now: Timestamp,
}

/// What [`decide`] answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The answer the upgrader reports (never a write for an in-place change).
    pub plan: Plan,
    /// `status.hosts`.
    pub records: Vec<HostRecord>,
    /// `status.inPlace`, when an in-place update is wanted.
    pub progress: Option<InPlaceProgress>,
    /// The writes, after the status is persisted.
    pub actions: Vec<Action>,
    /// One event per host transition.
    pub notes: Vec<Note>,
    /// When to look again, overriding the planner's.
    pub requeue: Option<Duration>,
}

/// Whether the hosts need reading: an in-place update is wanted, a host is in flight, or a
/// topology step is about to be written (for the spare-host gate).
pub fn needs_hosts(planned: &Plan, wanted: bool, records: &[HostRecord]) -> bool {
    wanted || records.iter().any(|r| in_flight(r.phase)) || matches!(planned, Plan::Write(_))
}

/// Starts the blocked hosts over (from `Selected`, with a fresh drain timer and no failures
/// counted) when the `retry-hosts` annotation has a new value; returns the records and the
/// value to record. A host keeps what it knew of its Node before the update, so the Node this
/// flow cordoned is uncordoned at the end.
pub fn retried(
    records: &[HostRecord],
    annotation: Option<&str>,
    last: Option<&str>,
    now: Timestamp,
) -> (Vec<HostRecord>, Option<String>) {
    match annotation {
        Some(value) if Some(value) != last => (
            records
                .iter()
                .map(|r| {
                    if !is_blocked(r.phase) {
                        return r.clone();
                    }
                    HostRecord {
                        phase: HostPhase::Selected,
                        started: Time(now),
                        finished: None,
                        attempts: 0,
                        message: None,
                        last_transition_time: Some(Time(now)),
                        pending_since: None,
                        ..r.clone()
                    }
                })
                .collect(),
            Some(value.to_owned()),
        ),
        _ => (records.to_vec(), last.map(str::to_owned)),
    }
}

/// Joins the in-place flow to the planner's answer.
pub fn decide(inputs: Inputs<'_>) -> Outcome {
    let empty: &[HostView] = &[];
    let world = inputs.world.unwrap_or(empty);
    let Some(wanted) = inputs.wanted else {
        return carry_on(
            inputs.planned,
            inputs.records,
            world,
            (inputs.spare, inputs.stamps),
            inputs.fallback,
            inputs.now,
        );
    };
    if inputs.world.is_none_or(<[HostView]>::is_empty) {
        return held(
            inputs.records,
            Hold::new(
                Reason::InPlaceNotPossible,
                "spec.inPlace is set, but the Cluster has no Machines backed by ElementalMachines with a host",
            ),
        );
    }
    if !pinned(&wanted.image) {
        return held(
            inputs.records,
            Hold::new(
                Reason::ImageNotPinned,
                format!(
                    "the Plan's image {} is not pinned by digest: an image written to ElementalMachines must end in @sha256:<64 hex digits>",
                    wanted.image
                ),
            ),
        );
    }
    let Some(stamp) = wanted.stamp.as_deref().filter(|s| !s.is_empty()) else {
        return held(
            inputs.records,
            Hold::new(
                Reason::MissingImageStamp,
                format!(
                    "the Plan's chosen MachineImage (status.machineImageRef) of image {} has no kubernetesupgraded.dimitrikoshkin.com/os-image-stamp annotation: a booted host could not be verified",
                    wanted.image
                ),
            ),
        );
    };
    let target = Target {
        image: &wanted.image,
        stamp,
    };
    let records = retarget(inputs.records, world, Some(target), inputs.now);
    let out = step(
        &records,
        world,
        target,
        wanted.settings,
        wanted.held.is_some(),
        inputs.now,
    );
    let notes = transitions(inputs.records, &out.records);
    let progress = progress(world, target);
    let summary = format!(
        "{} of {} hosts run {} ({})",
        progress.updated, progress.total, target.image, target.stamp
    );
    let busy: Vec<String> = out
        .records
        .iter()
        .filter(|r| in_flight(r.phase))
        .map(|r| format!("{} ({:?})", r.host, r.phase))
        .collect();
    let (plan, requeue) = if let Some(blocked) = &out.blocked {
        (
            Plan::Hold {
                hold: Hold::new(blocked.reason, blocked.message.clone()),
                confirmed: None,
            },
            None,
        )
    } else if out.finished(world, target) {
        (
            Plan::Hold {
                hold: Hold::new(
                    Reason::InPlaceUpdated,
                    format!("updated in place: {summary}"),
                ),
                confirmed: Some(wanted.version),
            },
            Some(UPDATED_POLL),
        )
    } else if !busy.is_empty() {
        let hold = Hold::new(
            Reason::InPlaceUpdating,
            format!(
                "updating in place: {summary}; in flight: {}",
                busy.join(", ")
            ),
        );
        (
            Plan::Hold {
                hold,
                confirmed: None,
            },
            Some(IN_PLACE_POLL),
        )
    } else {
        match wanted.held {
            Some(hold) => (
                Plan::Hold {
                    hold,
                    confirmed: None,
                },
                None,
            ),
            // Hosts left to do but none selectable yet (no Node reported).
            None => (
                Plan::Hold {
                    hold: Hold::new(
                        Reason::InPlaceUpdating,
                        format!(
                            "updating in place: {summary}; waiting for hosts to report their Node"
                        ),
                    ),
                    confirmed: None,
                },
                Some(IN_PLACE_POLL),
            ),
        }
    };
    Outcome {
        plan,
        records: out.records,
        progress: Some(progress),
        actions: out.actions,
        notes,
        requeue,
    }
}

/// Whether an image reference names one build: it ends in `@sha256:` and 64 lowercase hex digits.
pub fn pinned(image: &str) -> bool {
    image.rsplit_once("@sha256:").is_some_and(|(name, digest)| {
        !name.is_empty()
            && digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// No in-place update wanted: hosts already labelled `pending` are finished, the others are
/// released (no new one starts), and no topology step is written while one is in flight; a
/// topology step on an Elemental Cluster needs every host to run the build its ElementalMachine
/// names, and its spare hosts.
fn carry_on(
    planned: Plan,
    records: &[HostRecord],
    world: &[HostView],
    (spare, stamps): (Option<Result<(), NoSpareHost>>, &Stamps),
    settings: Settings,
    now: Timestamp,
) -> Outcome {
    let busy = records.iter().any(|r| in_flight(r.phase));
    let (records, actions, notes, blocked) = if busy {
        // The target only matters for selection, which is off.
        let any = Target {
            image: "",
            stamp: "",
        };
        let released = retarget(records, world, None, now);
        let out = step(&released, world, any, settings, true, now);
        let notes = transitions(records, &out.records);
        (out.records, out.actions, notes, out.blocked)
    } else {
        // A hold from remediation left on a finished or released host is lifted.
        let lift = remediation::actions(records, world);
        (records.to_vec(), lift, Vec::new(), None)
    };
    let still_busy = records.iter().any(|r| in_flight(r.phase));
    let step_of = |plan: &Plan| match plan {
        Plan::Write(step) => Some(step.clone()),
        Plan::Hold { hold, .. } => hold.step.as_deref().cloned(),
    };
    let waiting = step_of(&planned);
    let with_step = |mut hold: Hold| {
        hold.step = waiting.clone().map(Box::new);
        hold
    };
    let (plan, requeue) = match (&planned, blocked) {
        (_, Some(blocked)) => (
            Plan::Hold {
                hold: with_step(Hold::new(blocked.reason, blocked.message)),
                confirmed: None,
            },
            None,
        ),
        (Plan::Write(_), None) if still_busy => (
            Plan::Hold {
                hold: with_step(Hold::new(
                    Reason::PreviousStepUnfinished,
                    "hosts are still being updated in place",
                )),
                confirmed: None,
            },
            Some(IN_PLACE_POLL),
        ),
        (Plan::Write(_), None) => match (booted_mismatch(world, stamps), spare) {
            (Some(mismatch), _) => (
                Plan::Hold {
                    hold: with_step(Hold::new(mismatch.reason, mismatch.message)),
                    confirmed: None,
                },
                Some(VERIFY_POLL),
            ),
            (None, Some(Err(missing))) => (
                Plan::Hold {
                    hold: with_step(Hold::new(Reason::NoSpareHost, missing.to_string())),
                    confirmed: None,
                },
                Some(Duration::from_secs(30)),
            ),
            _ => (planned, None),
        },
        (Plan::Hold { .. }, None) => (planned, still_busy.then_some(IN_PLACE_POLL)),
    };
    Outcome {
        plan,
        records,
        progress: None,
        actions,
        notes,
        requeue,
    }
}

/// An in-place update in `status.history`: an entry `{from: v, to: v, image}` once the first
/// host starts, finished when every host runs the image.
pub fn history(
    history: &[StepRecord],
    plan: &Plan,
    version: &str,
    image: &str,
    now: Timestamp,
) -> Vec<StepRecord> {
    let mut out = history.to_vec();
    let Plan::Hold { hold, .. } = plan else {
        return out;
    };
    let ours = |r: &StepRecord| r.to == version && r.from == version && r.image == image;
    match hold.reason {
        Reason::InPlaceUpdating if !out.last().is_some_and(ours) => out.push(StepRecord {
            from: version.to_owned(),
            to: version.to_owned(),
            image: image.to_owned(),
            started: Time(now),
            finished: None,
        }),
        Reason::InPlaceUpdated => {
            if let Some(last) = out.last_mut().filter(|r| ours(r) && r.finished.is_none()) {
                last.finished = Some(Time(now));
            }
        }
        _ => {}
    }
    let skip = out.len().saturating_sub(MAX_HISTORY);
    out.into_iter().skip(skip).collect()
}

/// The workload cluster cannot be reached (its only control-plane host may be rebooting):
/// Blocked with `WorkloadClusterUnavailable`, or `InvalidWorkloadKubeconfig` when its kubeconfig
/// is refused (`why`), no write. The records are kept as they are, except that a host `pending`
/// past `hostTimeout` is blocked with `HostTimeout`, which is then the reason.
pub fn unreachable(
    records: &[HostRecord],
    settings: Settings,
    now: Timestamp,
    invalid_kubeconfig: bool,
    why: String,
) -> Outcome {
    let records: Vec<HostRecord> = records
        .iter()
        .map(|r| timed_out(r, settings, now).unwrap_or_else(|| r.clone()))
        .collect();
    let late = records.iter().find(|r| r.phase == HostPhase::HostTimeout);
    let hold = match late {
        Some(r) => Hold::new(
            Reason::HostTimeout,
            format!(
                "{} (the workload cluster cannot be read: {why})",
                r.message.as_deref().unwrap_or_default()
            ),
        ),
        None if invalid_kubeconfig => Hold::new(Reason::InvalidWorkloadKubeconfig, why),
        None => Hold::new(Reason::WorkloadClusterUnavailable, why),
    };
    held(&records, hold)
}

/// Reports `hold` and keeps the records as they are.
/// Every record kept as it is, no host acted on, and `hold` reported.
pub fn held(records: &[HostRecord], hold: Hold) -> Outcome {
    Outcome {
        plan: Plan::Hold {
            hold,
            confirmed: None,
        },
        records: records.to_vec(),
        progress: None,
        actions: Vec::new(),
        notes: Vec::new(),
        requeue: None,
    }
}

/// Each pool's hosts at `target`, the control plane first.
pub fn progress(world: &[HostView], target: Target<'_>) -> InPlaceProgress {
    let mut pools: Vec<PoolProgress> = Vec::new();
    let mut sorted: Vec<&HostView> = world.iter().collect();
    sorted.sort_by(|a, b| a.role.cmp(&b.role));
    for view in sorted {
        let (name, control_plane) = match &view.role {
            Role::ControlPlane => (CONTROL_PLANE_POOL, true),
            Role::Worker(pool) => (pool.as_str(), false),
        };
        let found = pools
            .iter()
            .position(|p| p.name == name && p.control_plane == control_plane);
        let index = found.unwrap_or_else(|| {
            pools.push(PoolProgress {
                name: name.to_owned(),
                control_plane,
                updated: 0,
                total: 0,
            });
            pools.len() - 1
        });
        if let Some(pool) = pools.get_mut(index) {
            pool.total += 1;
            pool.updated += i32::from(at_target(view, target));
        }
    }
    InPlaceProgress {
        image: target.image.to_owned(),
        stamp: target.stamp.to_owned(),
        updated: pools.iter().map(|p| p.updated).sum(),
        total: pools.iter().map(|p| p.total).sum(),
        pools,
    }
}

/// One Normal event per host that entered a new phase, also about the ElementalHost (so that
/// two hosts' events are never folded into one series); blocked phases are reported by the
/// upgrader's `Blocked` Warning instead.
pub fn transitions(before: &[HostRecord], after: &[HostRecord]) -> Vec<Note> {
    after
        .iter()
        .filter(|r| !is_blocked(r.phase))
        .filter(|r| {
            before.iter().find(|b| b.host == r.host).is_none_or(|b| {
                // A release is told once, when it is decided.
                b.phase != r.phase
                    && !(b.phase == HostPhase::Releasing && r.phase == HostPhase::Released)
            })
        })
        .map(|r| {
            Note::normal(
                event_reason(r.phase),
                format!(
                    "ElementalHost {} (Machine {}, Node {}{}): {}",
                    r.host,
                    r.machine,
                    r.node,
                    r.pool
                        .as_deref()
                        .map_or_else(|| ", control plane".to_owned(), |p| format!(", pool {p}")),
                    describe(r.phase)
                ),
            )
            .about(ObjectReference {
                api_version: Some(ELEMENTAL_API_VERSION.to_owned()),
                kind: Some(ELEMENTAL_HOST.to_owned()),
                name: Some(r.host.clone()),
                ..ObjectReference::default()
            })
        })
        .collect()
}

fn event_reason(phase: HostPhase) -> &'static str {
    match phase {
        HostPhase::Selected => "InPlaceHostSelected",
        HostPhase::Cordoned => "InPlaceHostCordoned",
        HostPhase::Drained => "InPlaceHostDrained",
        HostPhase::Pending => "InPlaceHostPending",
        HostPhase::Retrying => "InPlaceHostRetrying",
        HostPhase::Done => "InPlaceHostDone",
        HostPhase::Verified => "InPlaceHostVerified",
        HostPhase::Uncordoned => "InPlaceHostUncordoned",
        HostPhase::Releasing | HostPhase::Released => "InPlaceHostReleased",
        HostPhase::DrainTimeout
        | HostPhase::BootedImageMismatch
        | HostPhase::RetriesExhausted
        | HostPhase::DrainRefused
        | HostPhase::HostTimeout => super::blocked_reason(phase).as_str(),
    }
}

fn describe(phase: HostPhase) -> &'static str {
    match phase {
        HostPhase::Selected => "selected for an in-place update; cordoning its Node",
        HostPhase::Cordoned => "Node cordoned; evicting its pods",
        HostPhase::Drained => "Node drained; labelling the host pending",
        HostPhase::Pending => {
            "labelled pending; the new image is written and the agent updates the host"
        }
        HostPhase::Retrying => "the OS update failed; the agent tries again",
        HostPhase::Done => "the agent reported done; checking the booted image",
        HostPhase::Verified => "the Node runs the new image; uncordoning it",
        HostPhase::Uncordoned => "updated and schedulable again",
        HostPhase::DrainTimeout => "the drain timed out",
        HostPhase::BootedImageMismatch => "the booted image is not the target",
        HostPhase::RetriesExhausted => "the OS update failed too often",
        HostPhase::DrainRefused => "a pod on the Node may not be evicted",
        HostPhase::Releasing => {
            "released before pending: the update is no longer wanted for it; uncordoning its Node if the upgrader cordoned it"
        }
        HostPhase::Released => {
            "released before pending: the update is no longer wanted for it; its Node is left as the upgrader found it"
        }
        HostPhase::HostTimeout => "the host did not come back within hostTimeout",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::controllers::upgrader::gates::Step;
    use crate::controllers::upgrader::in_place::UpdateLabel;

    use crate::controllers::upgrader::in_place::tests::{
        NEW, OLD, at, held, rebooted, record, settings, view as host,
    };

    static NO_STAMPS: Stamps = Stamps::new();

    #[test]
    fn only_an_image_pinned_by_digest_is_written_in_place() {
        let digest = "0123456789abcdef".repeat(4);
        assert!(pinned(&format!("oci://r/os@sha256:{digest}")));
        assert!(pinned(&format!("r/os@sha256:{digest}")));
        for tag in [
            "oci://r/os:v1.31.1".to_owned(),
            format!("oci://r/os@sha256:{}", &digest[1..]),
            format!("oci://r/os@sha256:{}", digest.to_uppercase()),
            format!("oci://r/os@sha512:{digest}"),
            format!("@sha256:{digest}"),
            format!("oci://r/os@sha256:{digest}:latest"),
        ] {
            assert!(!pinned(&tag), "{tag}");
        }
        let mut tagged = wanted(None);
        tagged.image = "oci://r/os:v1.31.1".into();
        let world = [host("cp", Role::ControlPlane)];
        let out = decide(inputs(
            Plan::Write(step_to("1.31.1")),
            Some(tagged),
            &[],
            &world,
        ));
        assert!(out.actions.is_empty());
        assert!(out.records.is_empty());
        assert_eq!(reason(&out.plan), Some(Reason::ImageNotPinned));
        let Plan::Hold { hold, .. } = &out.plan else {
            panic!("held")
        };
        assert!(
            hold.message.contains("oci://r/os:v1.31.1"),
            "{}",
            hold.message
        );
    }

    fn updated(mut view: HostView) -> HostView {
        view.image_uri = Some(NEW.into());
        view.os_image = Some("Elemental os-2".into());
        view
    }

    fn step_to(version: &str) -> Step {
        Step {
            from: "v1.31.1".into(),
            version: Version::parse(version).unwrap(),
            id: NEW.into(),
            variable: None,
        }
    }

    fn wanted(held: Option<Hold>) -> Wanted {
        Wanted {
            settings: settings(1, 1),
            image: NEW.into(),
            stamp: Some("os-2".into()),
            version: Version::new(1, 31, 1),
            held,
        }
    }

    fn inputs<'a>(
        planned: Plan,
        wanted: Option<Wanted>,
        records: &'a [HostRecord],
        world: &'a [HostView],
    ) -> Inputs<'a> {
        Inputs {
            planned,
            wanted,
            records,
            world: Some(world),
            spare: None,
            stamps: &NO_STAMPS,
            fallback: settings(1, 1),
            now: at(0),
        }
    }

    fn reason(plan: &Plan) -> Option<Reason> {
        match plan {
            Plan::Write(_) => None,
            Plan::Hold { hold, .. } => Some(hold.reason),
        }
    }

    #[test]
    fn an_image_only_change_in_place_never_writes_the_cluster_and_starts_one_host() {
        let world = [
            host("cp", Role::ControlPlane),
            host("w", Role::Worker("a".into())),
        ];
        let out = decide(inputs(
            Plan::Write(step_to("1.31.1")),
            Some(wanted(None)),
            &[],
            &world,
        ));
        assert_eq!(reason(&out.plan), Some(Reason::InPlaceUpdating));
        assert_eq!(
            out.actions,
            vec![
                Action::Cordon {
                    node: "n-cp".into()
                },
                Action::SkipRemediation {
                    machine: "m-cp".into()
                }
            ]
        );
        assert_eq!(out.records.len(), 1);
        assert_eq!(out.notes.len(), 1);
        assert_eq!(out.notes[0].reason, "InPlaceHostSelected");
        let related = out.notes[0].related.as_ref().unwrap();
        assert_eq!(
            (related.kind.as_deref(), related.name.as_deref()),
            (Some("ElementalHost"), Some("cp"))
        );
        let progress = out.progress.unwrap();
        assert_eq!((progress.updated, progress.total), (0, 2));
        assert_eq!(progress.pools[0].name, CONTROL_PLANE_POOL);
        assert!(progress.pools[0].control_plane);
    }

    #[test]
    fn a_gate_holding_the_step_starts_no_host() {
        let world = [host("w", Role::Worker("a".into()))];
        let window = Hold::new(Reason::OutsideMaintenanceWindow, "closed");
        let out = decide(inputs(
            Plan::Write(step_to("1.31.1")),
            Some(wanted(Some(window))),
            &[],
            &world,
        ));
        assert_eq!(reason(&out.plan), Some(Reason::OutsideMaintenanceWindow));
        assert!(out.actions.is_empty() && out.records.is_empty());
    }

    #[test]
    fn every_host_at_target_is_updated_and_confirms_the_version() {
        let world = [updated(host("w", Role::Worker("a".into())))];
        let out = decide(inputs(
            Plan::Write(step_to("1.31.1")),
            Some(wanted(None)),
            &[],
            &world,
        ));
        match &out.plan {
            Plan::Hold { hold, confirmed } => {
                assert_eq!(hold.reason, Reason::InPlaceUpdated);
                assert_eq!(confirmed.as_ref(), Some(&Version::new(1, 31, 1)));
            }
            Plan::Write(_) => panic!("wrote the Cluster"),
        }
        assert!(out.actions.is_empty());
    }

    #[test]
    fn no_hosts_or_no_stamp_block_with_their_own_reason() {
        let none = decide(inputs(
            Plan::Write(step_to("1.31.1")),
            Some(wanted(None)),
            &[],
            &[],
        ));
        assert_eq!(reason(&none.plan), Some(Reason::InPlaceNotPossible));
        let world = [host("w", Role::Worker("a".into()))];
        let mut unstamped = wanted(None);
        unstamped.stamp = None;
        let out = decide(inputs(
            Plan::Write(step_to("1.31.1")),
            Some(unstamped),
            &[],
            &world,
        ));
        assert_eq!(reason(&out.plan), Some(Reason::MissingImageStamp));
        assert!(out.actions.is_empty());
    }

    fn in_flight_record() -> HostRecord {
        let mut r = record("w", HostPhase::Pending);
        r.started = Time(at(-100));
        r.last_transition_time = None;
        r
    }

    #[test]
    fn a_version_step_waits_for_the_hosts_in_flight_which_carry_on() {
        let mut view = rebooted(held(host("w", Role::Worker("a".into()))));
        view.cordoned = true;
        view.image_uri = Some(NEW.into());
        view.label = Some(UpdateLabel::Done);
        let records = [in_flight_record()];
        let world = [view];
        let out = decide(inputs(
            Plan::Write(step_to("1.32.0")),
            None,
            &records,
            &world,
        ));
        assert_eq!(reason(&out.plan), Some(Reason::PreviousStepUnfinished));
        match &out.plan {
            Plan::Hold { hold, .. } => assert!(hold.step.is_some()),
            Plan::Write(_) => panic!("wrote while a host is in flight"),
        }
        assert_eq!(out.records[0].phase, HostPhase::Done);
        assert_eq!(out.notes[0].reason, "InPlaceHostDone");
    }

    #[test]
    fn a_drained_host_no_longer_wanted_is_released_and_the_step_goes_on() {
        let mut view = held(host("w", Role::Worker("a".into())));
        view.cordoned = true;
        view.cordoned_by_us = true;
        view.drained = true;
        let records = [record("w", HostPhase::Drained)];
        let world = [view.clone()];
        let out = decide(inputs(
            Plan::Write(step_to("1.32.0")),
            None,
            &records,
            &world,
        ));
        assert_eq!(reason(&out.plan), Some(Reason::PreviousStepUnfinished));
        assert_eq!(out.records[0].phase, HostPhase::Releasing);
        assert_eq!(out.actions, vec![Action::Uncordon { node: "n-w".into() }]);
        assert_eq!(out.notes.len(), 1);
        assert_eq!(out.notes[0].reason, "InPlaceHostReleased");
        // Uncordoned: released, quietly, and the step is written.
        view.cordoned = false;
        view.cordoned_by_us = false;
        let world = [view];
        let after = decide(inputs(
            Plan::Write(step_to("1.32.0")),
            None,
            &out.records,
            &world,
        ));
        assert_eq!(after.records[0].phase, HostPhase::Released);
        // Released: its Machine is no longer held from remediation.
        assert_eq!(
            after.actions,
            vec![Action::AllowRemediation {
                machine: "m-w".into()
            }]
        );
        assert!(after.notes.is_empty(), "{:?}", after.notes);
        assert!(matches!(after.plan, Plan::Write(_)), "{:?}", after.plan);
    }

    #[test]
    fn a_held_host_takes_the_new_target_and_one_already_running_it_is_released() {
        let mut view = held(host("w", Role::Worker("a".into())));
        view.cordoned = true;
        view.cordoned_by_us = true;
        let records = [record("w", HostPhase::Cordoned)];
        let world = [view.clone()];
        let mut newer = wanted(None);
        newer.image =
            "oci://r/os@sha256:c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2"
                .into();
        newer.stamp = Some("os-3".into());
        let out = decide(inputs(
            Plan::Write(step_to("1.31.1")),
            Some(newer),
            &records,
            &world,
        ));
        assert_eq!(
            out.records[0].image,
            "oci://r/os@sha256:c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2"
        );
        assert_eq!(out.records[0].stamp, "os-3");
        assert_eq!(out.records[0].phase, HostPhase::Cordoned);
        // The Plan fell back to the image the host runs: released.
        let mut old = wanted(None);
        old.image = OLD.into();
        old.stamp = Some("os-1".into());
        view.os_image = Some("Elemental os-1".into());
        let world = [view];
        let out = decide(inputs(
            Plan::Write(step_to("1.31.1")),
            Some(old),
            &records,
            &world,
        ));
        assert_eq!(out.records[0].phase, HostPhase::Releasing);
        assert_eq!(out.actions, vec![Action::Uncordon { node: "n-w".into() }]);
    }

    #[test]
    fn a_step_on_elemental_needs_a_spare_host_per_pool() {
        let mut missing = inputs(Plan::Write(step_to("1.32.0")), None, &[], &[]);
        missing.spare = Some(Err(NoSpareHost {
            pool: "md-a".into(),
        }));
        let out = decide(missing);
        assert_eq!(reason(&out.plan), Some(Reason::NoSpareHost));
        match &out.plan {
            Plan::Hold { hold, .. } => assert!(hold.message.contains("md-a")),
            Plan::Write(_) => unreachable!(),
        }
        let mut found = inputs(Plan::Write(step_to("1.32.0")), None, &[], &[]);
        found.spare = Some(Ok(()));
        assert!(matches!(decide(found).plan, Plan::Write(_)));
    }

    #[test]
    fn an_in_place_update_is_one_history_entry_finished_when_all_hosts_run_it() {
        let updating = Plan::Hold {
            hold: Hold::new(Reason::InPlaceUpdating, "1 of 2"),
            confirmed: None,
        };
        let started = history(&[], &updating, "v1.31.1", NEW, at(0));
        assert_eq!(started.len(), 1);
        assert_eq!(
            (started[0].from.as_str(), started[0].to.as_str()),
            ("v1.31.1", "v1.31.1")
        );
        assert_eq!(history(&started, &updating, "v1.31.1", NEW, at(5)), started);
        let updated = Plan::Hold {
            hold: Hold::new(Reason::InPlaceUpdated, "2 of 2"),
            confirmed: Some(Version::new(1, 31, 1)),
        };
        let finished = history(&started, &updated, "v1.31.1", NEW, at(9));
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].finished, Some(Time(at(9))));
        assert_eq!(
            history(&finished, &updated, "v1.31.1", NEW, at(20)),
            finished
        );
    }

    #[test]
    fn an_unreachable_workload_cluster_blocks_and_keeps_the_records() {
        let records = [in_flight_record()];
        let out = unreachable(
            &records,
            settings(1, 1),
            at(1),
            false,
            "Secret c-kubeconfig has no kubeconfig".into(),
        );
        assert_eq!(reason(&out.plan), Some(Reason::WorkloadClusterUnavailable));
        let out = unreachable(
            &records,
            settings(1, 1),
            at(1),
            true,
            "users[a].user.exec: refused".into(),
        );
        assert_eq!(reason(&out.plan), Some(Reason::InvalidWorkloadKubeconfig));
        assert_eq!(out.records, records);
        assert!(out.actions.is_empty() && out.notes.is_empty());
    }

    /// The only control-plane host rebooting and never back: its workload cluster never answers
    /// again, and still the host times out.
    #[test]
    fn a_host_that_took_its_workload_cluster_down_still_times_out() {
        let records = [record("w", HostPhase::Pending)];
        let early = unreachable(&records, settings(1, 1), at(1799), false, "refused".into());
        assert_eq!(
            reason(&early.plan),
            Some(Reason::WorkloadClusterUnavailable)
        );
        assert_eq!(early.records, records);
        let late = unreachable(&records, settings(1, 1), at(1800), false, "refused".into());
        assert_eq!(reason(&late.plan), Some(Reason::HostTimeout));
        assert_eq!(late.records[0].phase, HostPhase::HostTimeout);
        match &late.plan {
            Plan::Hold { hold, .. } => {
                assert!(hold.message.contains("ElementalHost w"), "{}", hold.message);
                assert!(hold.message.contains("refused"), "{}", hold.message);
            }
            Plan::Write(_) => unreachable!(),
        }
        assert!(late.actions.is_empty());
    }

    /// A topology step on an Elemental Cluster after a host's update fell back: held with
    /// `BootedImageMismatch` until its Node runs the build its ElementalMachine names.
    #[test]
    fn a_step_is_held_until_every_node_runs_the_build_its_machine_names() {
        let stamps = Stamps::from([(NEW.to_owned(), ["os-2".to_owned()].into())]);
        let mut fell_back = host("w", Role::Worker("a".into()));
        fell_back.image_uri = Some(NEW.into());
        let world = [fell_back.clone()];
        let mut held_step = inputs(Plan::Write(step_to("1.32.0")), None, &[], &world);
        held_step.stamps = &stamps;
        held_step.spare = Some(Ok(()));
        let out = decide(held_step);
        assert_eq!(reason(&out.plan), Some(Reason::BootedImageMismatch));
        match &out.plan {
            Plan::Hold { hold, .. } => {
                assert!(hold.step.is_some(), "the step is reported as waiting");
                assert!(hold.message.contains("ElementalHost w"), "{}", hold.message);
            }
            Plan::Write(_) => unreachable!(),
        }
        assert_eq!(out.requeue, Some(VERIFY_POLL));
        assert!(out.actions.is_empty());
        let mut booted = fell_back;
        booted.os_image = Some("Elemental os-2".into());
        let world = [booted];
        let mut written = inputs(Plan::Write(step_to("1.32.0")), None, &[], &world);
        written.stamps = &stamps;
        written.spare = Some(Ok(()));
        assert!(matches!(decide(written).plan, Plan::Write(_)));
    }

    #[test]
    fn a_hold_left_on_a_finished_host_is_lifted_when_no_update_is_wanted() {
        let world = [held(host("w", Role::Worker("a".into())))];
        let records = [record("w", HostPhase::Uncordoned)];
        let planned = Plan::Hold {
            hold: Hold::new(Reason::ClusterUsingLatestVersion, "up to date"),
            confirmed: None,
        };
        let out = decide(inputs(planned, None, &records, &world));
        assert_eq!(
            out.actions,
            vec![Action::AllowRemediation {
                machine: "m-w".into()
            }]
        );
        assert_eq!(reason(&out.plan), Some(Reason::ClusterUsingLatestVersion));
    }

    #[test]
    fn a_new_retry_value_starts_blocked_hosts_over_once() {
        let mut blocked = in_flight_record();
        blocked.phase = HostPhase::DrainTimeout;
        blocked.attempts = 2;
        blocked.message = Some("not drained".into());
        let mut other = in_flight_record();
        other.host = "x".into();
        let records = [blocked, other.clone()];
        let (kept, last) = retried(&records, Some("1"), None, at(50));
        assert_eq!(last.as_deref(), Some("1"));
        assert_eq!(kept[0].phase, HostPhase::Selected);
        assert_eq!(kept[0].started, Time(at(50)));
        assert_eq!((kept[0].attempts, kept[0].message.as_deref()), (0, None));
        assert_eq!(kept[0].cordoned_before, records[0].cordoned_before);
        assert_eq!(kept[1], other);
        let (again, last) = retried(&records, Some("1"), Some("1"), at(60));
        assert_eq!(again, records);
        assert_eq!(last.as_deref(), Some("1"));
    }

    #[test]
    fn a_retried_host_that_booted_the_target_meanwhile_is_uncordoned() {
        let mut blocked = in_flight_record();
        blocked.phase = HostPhase::RetriesExhausted;
        let (records, _) = retried(&[blocked], Some("1"), None, at(0));
        let mut view = updated(host("w", Role::Worker("a".into())));
        view.cordoned = true;
        view.cordoned_by_us = true;
        view.drained = true;
        view.label = Some(UpdateLabel::Done);
        view.skip_remediation = None;
        let mut records = records;
        let mut uncordoned = false;
        for pass in 1..12 {
            let out = decide(Inputs {
                now: at(pass),
                ..inputs(
                    Plan::Write(step_to("1.31.1")),
                    Some(wanted(None)),
                    &records,
                    std::slice::from_ref(&view),
                )
            });
            for action in &out.actions {
                match action {
                    Action::Uncordon { .. } => {
                        view.cordoned = false;
                        view.cordoned_by_us = false;
                        uncordoned = true;
                    }
                    Action::SkipRemediation { .. } => {
                        view.skip_remediation = Some(remediation::SKIP_REMEDIATION_BY.to_owned());
                    }
                    Action::AllowRemediation { .. } => view.skip_remediation = None,
                    // The agent finds its snapshot and reports done again at once.
                    Action::LabelPending { .. } => view.label = Some(UpdateLabel::Done),
                    _ => {}
                }
            }
            records = out.records;
        }
        assert!(uncordoned, "{records:?}");
        assert_eq!(records[0].phase, HostPhase::Uncordoned);
    }
}
