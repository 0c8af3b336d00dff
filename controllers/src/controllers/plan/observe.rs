//! The observe step: the MachineImages a Plan can pick, from the shared cache, in one pass that
//! keeps only the best of each minor within its range ([`choices`]).

use std::collections::BTreeMap;

use api::constraint::VersionRange;
use api::v1alpha1::{CONDITION_READY, MachineImageDetails, Plan, Rollout, UpgraderStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;

use super::Context;
use crate::controllers::images::{Image, choices};
use crate::controllers::rollout::{self, Member};

/// The images [`super::decide()`] chooses among; none when the range is invalid (the decision
/// reports it).
pub(super) fn observe(plan: &Plan, ctx: &Context) -> Vec<Image> {
    let Ok(range) = VersionRange::parse(&plan.spec.version_range) else {
        return Vec::new();
    };
    let state = ctx.images.state();
    choices(
        state.iter().filter_map(|i| i.0.as_ref().ok()),
        &plan.namespace().unwrap_or_default(),
        plan.spec.machine_image_selector.as_ref(),
        &range,
    )
}

/// The Clusters of the upgraders (either kind) following `plan`, from the shared caches, one per
/// Cluster: the upgrader that acts on it (not held with `ClusterClaimed`).
pub(super) fn members(
    plan: &Plan,
    rollout: &Rollout,
    target: &MachineImageDetails,
    ctx: &Context,
) -> Vec<Member> {
    let namespace = plan.namespace().unwrap_or_default();
    let name = plan.name_any();
    let class = ctx.class_upgraders.state();
    let in_cluster = ctx.in_cluster_upgraders.state();
    let following = class
        .iter()
        .filter_map(|u| u.0.as_ref().ok())
        .filter(|u| u.namespace().as_deref() == Some(namespace.as_str()))
        .map(|u| (u.spec.common(), u.status.as_ref()))
        .chain(
            in_cluster
                .iter()
                .filter_map(|u| u.0.as_ref().ok())
                .filter(|u| u.namespace().as_deref() == Some(namespace.as_str()))
                .map(|u| (u.spec.common(), u.status.as_ref())),
        )
        .filter(|(spec, _)| spec.plan_ref.name == name);
    let mut by_cluster: BTreeMap<String, Member> = BTreeMap::new();
    for (spec, status) in following {
        let default_status = UpgraderStatus::default();
        let status = status.unwrap_or(&default_status);
        let blocked = condition(status, BLOCKED).filter(|c| c.status == "True");
        if blocked.is_some_and(|c| c.reason == CLUSTER_CLAIMED) {
            continue;
        }
        by_cluster
            .entry(spec.cluster_name.to_owned())
            .or_insert_with(|| member(spec.cluster_name, status, rollout, target));
    }
    by_cluster.into_values().collect()
}

/// Reasons of a Ready upgrader whose Cluster runs the Plan's image.
const AT_TARGET: [&str; 2] = ["ClusterUsingLatestVersion", "InPlaceUpdated"];
/// The upgrader's condition types the rollout reads.
const BLOCKED: &str = "Blocked";
/// The reason of an upgrader that does not act, because another one does.
const CLUSTER_CLAIMED: &str = "ClusterClaimed";

fn condition<'a>(status: &'a UpgraderStatus, type_: &str) -> Option<&'a Condition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

/// One Cluster as its upgrader reports it: at the target when Ready at the target's version
/// (and, when the last step went to that version, with the target's image).
fn member(
    cluster: &str,
    status: &UpgraderStatus,
    rollout: &Rollout,
    target: &MachineImageDetails,
) -> Member {
    let target_version = target
        .version
        .as_deref()
        .and_then(api::version::parse_lenient);
    let at_version = status
        .latest_set_version
        .as_deref()
        .and_then(api::version::parse_lenient)
        .zip(target_version.as_ref())
        .is_some_and(|(set, wanted)| set.cmp_precedence(wanted).is_eq());
    let ready = condition(status, CONDITION_READY)
        .is_some_and(|c| c.status == "True" && AT_TARGET.contains(&c.reason.as_str()));
    let last = status.history.as_deref().and_then(<[_]>::last);
    let same_image = last.is_none_or(|step| {
        api::version::parse_lenient(&step.to) != target_version || step.image == target.id
    });
    let step_started = last
        .filter(|step| step.finished.is_none())
        .map(|step| step.started.0)
        .into_iter()
        .chain(
            status
                .hosts
                .iter()
                .flatten()
                .filter(|h| h.finished.is_none())
                .map(|h| h.started.0),
        )
        .min();
    let blocked = condition(status, BLOCKED)
        .filter(|c| c.status == "True" && rollout::UPDATE_FAILURES.contains(&c.reason.as_str()))
        .map(|c| (c.reason.clone(), c.message.clone()));
    let membership = status.rollout.as_ref();
    Member {
        cluster: cluster.to_owned(),
        wave: membership
            .and_then(|m| m.wave.as_deref())
            .and_then(|w| rollout.waves.iter().position(|wave| wave.name == w)),
        at_target: ready && at_version && same_image,
        step_started,
        blocked,
        unavailable: membership.and_then(|m| m.cluster_available) == Some(false),
        unplaced: membership.is_none(),
    }
}
