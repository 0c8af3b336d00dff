//! Plan: the newest ready MachineImage within a version range.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{LabelSelector, Rollout, RolloutStatus};
use crate::constraint;

/// Picks the newest ready MachineImage whose version is within `versionRange`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kubernetesupgraded.dimitrikoshkin.com",
    version = "v1alpha1",
    kind = "Plan",
    namespaced,
    status = "PlanStatus",
    derive = "PartialEq",
    shortname = "kup",
    category = "cluster-upgrader",
    doc = "Plan picks the newest ready MachineImage within a version range.",
    printcolumn(
        name = "Version Range",
        type_ = "string",
        json_path = ".spec.versionRange"
    ),
    printcolumn(
        name = "Latest Version",
        type_ = "string",
        json_path = ".status.machineImageDetails.version"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PlanSpec {
    /// Semver constraint for acceptable images, such as `v1.27.x`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = kube::core::Rule::new(constraint::cel_rule()).message(constraint::CEL_MESSAGE))]
    pub version_range: String,

    /// Selects MachineImages in this namespace. Omitted or `{}` matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_image_selector: Option<LabelSelector>,

    /// Steps the Plan's Clusters in waves. Omitted means every upgrader following the Plan steps
    /// as soon as the Plan picks an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// `status.phase` of a Plan.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanPhase {
    /// An image was chosen.
    FoundMachineImage,
    /// No ready image matches.
    NoSuitableMachineImage,
}

/// The chosen image's version and ID: the Plan contract read by upgraders.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MachineImageDetails {
    /// The image's `spec.version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The image's `spec.id`.
    pub id: String,
}

/// Observed state of a Plan.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    /// `FoundMachineImage` or `NoSuitableMachineImage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PlanPhase>,

    /// The chosen image's version and ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_image_details: Option<MachineImageDetails>,

    /// The chosen MachineImage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-map-type" = "atomic"))]
    pub machine_image_ref: Option<ObjectReference>,

    /// `Ready`, in the metav1.Condition convention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The highest ready image of each minor within `versionRange`, ascending by version: the
    /// steps an upgrader can take towards `machineImageDetails`. At most [`MAX_CANDIDATES`]
    /// entries, the newest kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub candidates: Option<Vec<PlanCandidate>>,

    /// The rollout of `machineImageDetails` over the Plan's Clusters, when `spec.rollout` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// Most entries in `status.candidates`.
pub const MAX_CANDIDATES: usize = 32;

/// One ready image a Plan offers as a step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlanCandidate {
    /// The image's `spec.version`.
    pub version: String,
    /// The image's `spec.id`.
    pub id: String,
    /// The MachineImage's name.
    pub name: String,
}
