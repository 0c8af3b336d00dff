//! What the upgraders keep of a Cluster API Cluster: a typed view holding only the fields they
//! (and the rollout admission they compute) read, parsed straight from the API server's JSON so
//! the whole object is never held as a JSON tree.
//!
//! The upgraders read a Cluster as JSON (`serde_json::Value`, as a fresh GET returns it):
//! [`CachedCluster::to_json`] gives back exactly the paths kept, in both served versions:
//!
//! | Path | Read by |
//! |---|---|
//! | `metadata`: name, namespace, uid, resourceVersion, generation, labels | the store's keys, the resourceVersion a write is checked against, the rollout's waves |
//! | `metadata.annotations`: [`PAUSED_ANNOTATION`], [`UPGRADE_STEP_ANNOTATION`] | the pause gate, the finished check |
//! | `spec.paused`, `spec.topology` (version, variables, classRef), `spec.controlPlaneRef` | the plan, the chained-upgrade check, the control plane read |
//! | `status.observedGeneration`, the conditions in [`READ_CONDITIONS`], `controlPlane` and `workers` (replicas, upToDateReplicas, versions, upgradePlan), and the same under `status.v1beta2` | the finished check, availability |
//!
//! A step is written only after a GET of the Cluster with the same resourceVersion; the write
//! is built from that whole object, never from this view.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::{ApiResource, DynamicResourceScope};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::Projected;

/// The annotation that pauses a Cluster.
pub const PAUSED_ANNOTATION: &str = "cluster.x-k8s.io/paused";
/// The annotation Cluster API sets on the Cluster while an upgrade runs (v1.12+).
pub const UPGRADE_STEP_ANNOTATION: &str = "topology.internal.cluster.x-k8s.io/upgrade-step";
/// The condition types the upgraders read, in either condition list.
pub const READ_CONDITIONS: [&str; 5] = [
    "TopologyReconciled",
    "ControlPlaneMachinesUpToDate",
    "WorkerMachinesUpToDate",
    "RollingOut",
    "Available",
];

/// A Cluster as the upgraders' store holds it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CachedCluster {
    /// Name, namespace, uid, resourceVersion, generation, labels and the annotations read.
    #[serde(deserialize_with = "read_meta")]
    pub metadata: ObjectMeta,
    /// The spec fields read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Spec>,
    /// The status fields read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// `spec`: the pause, the topology and the control plane reference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// `spec.paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// `spec.controlPlaneRef` (v1beta1's `apiVersion` or v1beta2's `apiGroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_ref: Option<Reference>,
    /// `spec.topology`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
}

/// An object reference, as either served version writes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    /// v1beta1: `group/version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// v1beta2: the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// The kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The namespace (a ClusterClass may live in another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `spec.topology`: the version, the variables and the ClusterClass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// The Kubernetes version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The ClusterClass (v1beta2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_ref: Option<Reference>,
    /// The variables, name and value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables: Option<Vec<Variable>>,
}

/// One topology variable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Variable {
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its value, any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// `status`, and under `v1beta2` the same fields as a v1beta1 Cluster reports them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `status.observedGeneration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The conditions of the types read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// The control plane summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<Summary>,
    /// The workers summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Summary>,
    /// A v1beta1 Cluster's v1beta2 view of its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v1beta2: Option<Box<Status>>,
}

/// One condition: its type, status and reason.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// Its type.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// `True`, `False` or `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Its reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `status.controlPlane` or `status.workers`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Up-to-date replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to_date_replicas: Option<i64>,
    /// The versions the replicas run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<VersionEntry>>,
    /// The upgrade plan, when one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_plan: Option<Value>,
}

/// One entry of a versions list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionEntry {
    /// The version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The metadata fields read; the rest (managed fields first) is skipped while parsing.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

fn read_meta<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    let meta = Meta::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        labels: meta.labels,
        annotations: meta.annotations,
        ..ObjectMeta::default()
    })
}

impl CachedCluster {
    /// The Cluster as JSON with the paths kept, for the readers of a fetched Cluster.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Status {
    fn project(&mut self) {
        if let Some(conditions) = self.conditions.as_mut() {
            conditions.retain(|c| {
                c.type_
                    .as_deref()
                    .is_some_and(|t| READ_CONDITIONS.contains(&t))
            });
            conditions.shrink_to_fit();
        }
        if let Some(v1beta2) = self.v1beta2.as_mut() {
            v1beta2.project();
        }
    }
}

impl Projected for CachedCluster {
    fn project(&mut self) {
        if let Some(annotations) = self.metadata.annotations.as_mut() {
            annotations.retain(|k, _| k == PAUSED_ANNOTATION || k == UPGRADE_STEP_ANNOTATION);
            if annotations.is_empty() {
                self.metadata.annotations = None;
            }
        }
        if let Some(status) = self.status.as_mut() {
            status.project();
        }
    }
}

impl Resource for CachedCluster {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
