//! MachineImage: one Kubernetes version built into a machine image by a Job.

use k8s_openapi::api::core::v1::{ObjectReference, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A machine image for one Kubernetes version. Unless `spec.id` is set up front, a Job built from
/// `spec.jobTemplate` builds it and hands the image ID back, which is then written to `spec.id`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kubernetesupgraded.dimitrikoshkin.com",
    version = "v1alpha1",
    kind = "MachineImage",
    namespaced,
    status = "MachineImageStatus",
    derive = "PartialEq",
    shortname = "mi",
    category = "cluster-upgrader",
    doc = "MachineImage is a machine image for one Kubernetes version, built by a Job.",
    printcolumn(name = "ID", type_ = "string", json_path = ".spec.id"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineImageSpec {
    /// Kubernetes version to build, such as `v1.27.3`; passed to every build container as
    /// `KUBERNETES_VERSION`.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = version_rule())]
    pub version: String,

    /// The built image's ID: an AMI, a vSphere template, `kindest/node:v1.27.3`, an OCI
    /// reference by digest. Written by the controller once a build succeeds; set up front, no
    /// build runs (a static image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,

    /// The build Job's pod template.
    pub job_template: JobTemplate,
}

/// The admission rule on `spec.version`: what [`crate::version::parse_strict`] accepts.
pub fn version_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!("self.matches('{}')", crate::version::strict_pattern())).message(
        "spec.version must be a Kubernetes version such as v1.27.3: MAJOR.MINOR.PATCH with an optional leading v, prerelease and build",
    )
}

/// The build Job's template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("size(self.spec.containers) > 0").message("jobTemplate.spec.containers must hold at least one container"))]
#[serde(rename_all = "camelCase")]
pub struct JobTemplate {
    /// The pod spec, copied verbatim into the build Job's pod template.
    pub spec: PodSpec,
}

/// `status.phase` of a MachineImage.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineImagePhase {
    /// A build Job exists and has not finished.
    Building,
    /// The image ID is known.
    Created,
    /// The build failed.
    Failed,
}

/// Observed state of a MachineImage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MachineImageStatus {
    /// True once the image exists: a build succeeded with an ID, or `spec.id` was set up front.
    #[serde(default)]
    pub ready: bool,

    /// `Building`, `Created` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MachineImagePhase>,

    /// The latest build Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-map-type" = "atomic"))]
    pub job_ref: Option<ObjectReference>,

    /// `Ready`, in the metav1.Condition convention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
