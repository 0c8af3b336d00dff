//! The decide step (pure): which of the usable images ([`crate::controllers::images`]) a Plan
//! picks, the highest per minor, the status and the events.

use std::collections::BTreeMap;
use std::time::Duration;

use api::conditions::{Desired, merge};
use api::constraint::{VersionRange, select_highest};
use api::v1alpha1::{
    CONDITION_READY, MAX_CANDIDATES, MachineImage, MachineImageDetails, PlanCandidate, PlanPhase,
    PlanSpec, PlanStatus, RolloutStatus,
};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;

use crate::controllers::images::Image;
use crate::controllers::rollout::{Inputs, Member, admit};
use crate::runtime::Note;

/// What a Plan reconcile decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The status to hold.
    pub status: PlanStatus,
    /// Events to publish.
    pub notes: Vec<Note>,
}

/// Picks the highest usable image in range and the highest per minor, and builds the status.
pub fn decide(
    spec: &PlanSpec,
    generation: Option<i64>,
    namespace: &str,
    images: &[Image],
    current: &PlanStatus,
    now: &Time,
) -> Decision {
    let (phase, chosen, candidates, ready) = match VersionRange::parse(&spec.version_range) {
        Err(err) => (
            PlanPhase::NoSuitableMachineImage,
            None,
            Vec::new(),
            Desired::new(
                CONDITION_READY,
                false,
                "InvalidVersionRange",
                format!(
                    "spec.versionRange {:?} is invalid: {err}",
                    spec.version_range
                ),
            ),
        ),
        Ok(range) => {
            let chosen = select_highest(&range, images.iter().map(|i| (i.version.clone(), i)))
                .map(|(_, i)| i.clone());
            let candidates = per_minor(&range, images);
            match &chosen {
                Some(image) => (
                    PlanPhase::FoundMachineImage,
                    chosen.clone(),
                    candidates,
                    Desired::new(
                        CONDITION_READY,
                        true,
                        "FoundMachineImage",
                        format!(
                            "MachineImage {} ({}) is the newest ready image in {}",
                            image.name, image.version, spec.version_range
                        ),
                    ),
                ),
                None => (
                    PlanPhase::NoSuitableMachineImage,
                    None,
                    candidates,
                    Desired::new(
                        CONDITION_READY,
                        false,
                        "NoSuitableMachineImage",
                        format!(
                            "no ready MachineImage with an ID matches the selector within {}",
                            spec.version_range
                        ),
                    ),
                ),
            }
        }
    };
    let was_found = current.phase == Some(PlanPhase::FoundMachineImage);
    let mut notes = Vec::new();
    if chosen.is_none() && (was_found || current.phase.is_none()) {
        notes.push(Note::warning(
            "LatestVersionNotFound",
            format!(
                "no ready MachineImage matches the selector within versionRange {:?}",
                spec.version_range
            ),
        ));
    }
    let conditions = merge(
        current.conditions.as_deref().unwrap_or_default(),
        &[ready],
        generation,
        now,
    );
    let status = PlanStatus {
        phase: Some(phase),
        machine_image_details: chosen.as_ref().map(|i| MachineImageDetails {
            version: Some(i.spec_version.clone()),
            id: i.id.clone(),
        }),
        machine_image_ref: chosen.as_ref().map(|i| ObjectReference {
            api_version: Some(MachineImage::api_version(&()).into_owned()),
            kind: Some(MachineImage::kind(&()).into_owned()),
            name: Some(i.name.clone()),
            namespace: Some(namespace.to_owned()),
            ..ObjectReference::default()
        }),
        conditions: Some(conditions),
        observed_generation: generation,
        candidates: (!candidates.is_empty()).then_some(candidates),
        rollout: current.rollout.clone(),
    };
    Decision { status, notes }
}

/// The highest usable image of each minor within `range`, ascending, the newest
/// [`MAX_CANDIDATES`] kept.
fn per_minor(range: &VersionRange, images: &[Image]) -> Vec<PlanCandidate> {
    let mut by_minor: BTreeMap<(u64, u64), &Image> = BTreeMap::new();
    for image in images.iter().filter(|i| range.matches(&i.version)) {
        let key = (image.version.major, image.version.minor);
        match by_minor.get(&key) {
            Some(best) if image.version.cmp_precedence(&best.version).is_le() => {}
            _ => {
                by_minor.insert(key, image);
            }
        }
    }
    let all: Vec<PlanCandidate> = by_minor
        .values()
        .map(|i| PlanCandidate {
            version: api::version::with_v(&i.version),
            id: i.id.clone(),
            name: i.name.clone(),
        })
        .collect();
    let skip = all.len().saturating_sub(MAX_CANDIDATES);
    all.into_iter().skip(skip).collect()
}

/// Condition type set while `spec.rollout` is set: whether the rollout is halted.
pub const ROLLOUT_HALTED: &str = "RolloutHalted";

/// Adds the rollout of the chosen image to `decision` (`status.rollout`, the `RolloutHalted`
/// condition, a Warning once on a halt) and returns when to look again. Without `spec.rollout`
/// or a chosen image there is no rollout status.
pub fn decide_rollout(
    spec: &PlanSpec,
    generation: Option<i64>,
    decision: &mut Decision,
    members: &[Member],
    previous: Option<&RolloutStatus>,
    resume: Option<&str>,
    now: &Time,
) -> Option<Duration> {
    let (Some(rollout), Some(target)) = (&spec.rollout, &decision.status.machine_image_details)
    else {
        decision.status.rollout = None;
        return None;
    };
    let outcome = admit(&Inputs {
        rollout,
        target,
        members,
        previous,
        resume,
        now: now.0,
    });
    let halted = match &outcome.status.halted {
        Some(halt) => Desired::new(
            ROLLOUT_HALTED,
            true,
            halt.reason.clone(),
            format!("Cluster {} failed: {}", halt.cluster, halt.message),
        ),
        None => Desired::new(
            ROLLOUT_HALTED,
            false,
            "NotHalted",
            "no Cluster of the rollout failed",
        ),
    };
    let conditions = decision.status.conditions.take().unwrap_or_default();
    decision.status.conditions = Some(merge(&conditions, &[halted], generation, now));
    if let Some(halt) = &outcome.halted_now {
        decision.notes.push(Note::warning(
            ROLLOUT_HALTED,
            format!(
                "rollout of {} halted: Cluster {} failed ({}): {}",
                target.id, halt.cluster, halt.reason, halt.message
            ),
        ));
    }
    if outcome.resumed_now && previous.is_some_and(|p| p.halted.is_some()) {
        decision.notes.push(Note::normal(
            "RolloutResumed",
            format!("rollout of {} resumed", target.id),
        ));
    }
    decision.status.rollout = Some(outcome.status);
    outcome.requeue
}
