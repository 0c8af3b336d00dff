//! MachineImageTemplate: the blueprint a MachineImageSyncer stamps MachineImages from.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::JobTemplate;

/// The blueprint for the MachineImages a MachineImageSyncer creates.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kubernetesupgraded.dimitrikoshkin.com",
    version = "v1alpha1",
    kind = "MachineImageTemplate",
    namespaced,
    status = "MachineImageTemplateStatus",
    derive = "PartialEq",
    shortname = "mit",
    category = "cluster-upgrader",
    doc = "MachineImageTemplate is the blueprint for the MachineImages a MachineImageSyncer creates.",
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
pub struct MachineImageTemplateSpec {
    /// The MachineImage to create: its metadata and spec.
    pub template: MachineImageTemplateResource,
}

/// Metadata and spec copied into each created MachineImage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MachineImageTemplateResource {
    /// Labels and annotations copied onto each created image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,

    /// The image spec; only `jobTemplate` is used.
    pub spec: MachineImageTemplateImageSpec,
}

/// Labels and annotations for created objects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels copied onto each created image; the syncer's own labels take precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations copied onto each created image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A MachineImage spec in which `version` stays optional; the syncer sets it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MachineImageTemplateImageSpec {
    /// Ignored: the syncer sets the version it selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Ignored: created images start without an ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The build Job's pod template, copied into each created image.
    pub job_template: JobTemplate,
}

/// Observed state of a MachineImageTemplate: whether its job template renders into a Job the API
/// server accepts, and the images created from it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MachineImageTemplateStatus {
    /// Conditions, in the metav1.Condition convention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Names of the MachineImages created from this template (annotation
    /// `kubernetes-upgrader.dimitrikoshkin.com/cloned-from`), newest first, at most 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub machine_images: Option<Vec<String>>,
}
