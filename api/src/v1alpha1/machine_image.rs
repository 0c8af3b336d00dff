//! MachineImage: one Kubernetes version built into a machine image by a Job.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
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

    // Behind an `Arc`: the manager's cache holds every image with one shared empty template
    // instead of its own.
    /// The build Job's pod template.
    #[serde(with = "shared")]
    #[schemars(with = "JobTemplate")]
    pub job_template: Arc<JobTemplate>,
}

/// (De)serializes an `Arc<JobTemplate>` as the template itself.
mod shared {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::JobTemplate;

    pub fn serialize<S: Serializer>(
        template: &Arc<JobTemplate>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        template.as_ref().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Arc<JobTemplate>, D::Error> {
        JobTemplate::deserialize(deserializer).map(Arc::new)
    }
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
#[x_kube(validation = kube::core::Rule::new("!has(self.imageIDContainer) || self.spec.containers.exists(c, c.name == self.imageIDContainer)").message("jobTemplate.imageIDContainer must name a container of jobTemplate.spec.containers"))]
#[serde(rename_all = "camelCase")]
pub struct JobTemplate {
    /// The pod spec of the build Job, which the manager creates: it must pass the baseline Pod
    /// Security profile and use no service account but `default`, unless the namespace's label
    /// `kubernetesupgraded.dimitrikoshkin.com/build-pod-security: privileged` or annotation
    /// `kubernetesupgraded.dimitrikoshkin.com/build-service-accounts` allows more.
    pub spec: PodSpec,

    /// Retries of the build pod before the Job fails (the Job's `backoffLimit`; Kubernetes
    /// defaults it to 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: Option<i32>,

    /// Seconds the build may run before the Job fails (the Job's `activeDeadlineSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604_800))]
    pub active_deadline_seconds: Option<i64>,

    /// Seconds a finished Job is kept before Kubernetes deletes it (the Job's
    /// `ttlSecondsAfterFinished`). A finished Job that vanishes this way does not start a new
    /// build; use the rebuild annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// The container whose termination message (`/dev/termination-log`) carries the image ID
    /// when the Job has no `kubernetesupgraded.dimitrikoshkin.com/image-id` annotation. Defaults
    /// to the last container.
    #[serde(
        default,
        rename = "imageIDContainer",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 1, max = 63))]
    pub image_id_container: Option<String>,
}

impl JobTemplate {
    /// The name of the container whose termination message carries the image ID.
    pub fn image_id_container_name(&self) -> Option<&str> {
        self.image_id_container
            .as_deref()
            .or_else(|| self.spec.containers.last().map(|c| c.name.as_str()))
    }
}

/// Annotation on a MachineImage carrying the Debian package version of `spec.version` (such as
/// `1.31.2-1.1`), copied by the syncer from its source's `status.debianVersions`; injected into
/// the build as `KUBERNETES_DEB_VERSION`.
pub const DEBIAN_VERSION_ANNOTATION: &str = "kubernetes-upgrader.dimitrikoshkin.com/debian-version";
/// Annotation on a MachineImage recording the `MACHINE_IMAGE_STAMP` of the build that produced
/// its `spec.id`.
pub const OS_IMAGE_STAMP_ANNOTATION: &str = "kubernetesupgraded.dimitrikoshkin.com/os-image-stamp";
/// Annotation on a build Job holding its attempt number.
pub const ATTEMPT_ANNOTATION: &str = "kubernetesupgraded.dimitrikoshkin.com/attempt";
/// Annotation on a build Job holding the hash of the job template it was rendered from.
pub const JOB_TEMPLATE_HASH_ANNOTATION: &str =
    "kubernetesupgraded.dimitrikoshkin.com/job-template-hash";

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

    /// Build attempts started so far: the attempt number of the latest Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,

    /// The value of the `kubernetesupgraded.dimitrikoshkin.com/rebuild` annotation that the
    /// latest attempt answered; a different value requests a new attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<String>,

    /// Hash of the job template the latest attempt was rendered from; a change while the image
    /// is not built starts a new attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_template_hash: Option<String>,

    /// When the latest build started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_start_time: Option<Time>,

    /// When the latest build finished, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_completion_time: Option<Time>,
}
