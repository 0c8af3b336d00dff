//! ClusterClassClusterUpgrader (the v0.6 name) and InClusterUpgradeAutomation (the later name):
//! two kinds with one schema, served by one controller.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::ObjectRef;

macro_rules! upgrader_kind {
    ($spec:ident, $kind:literal, $short:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(
            CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default,
        )]
        #[kube(
            group = "kubernetesupgraded.dimitrikoshkin.com",
            version = "v1alpha1",
            kind = $kind,
            namespaced,
            status = "UpgraderStatus",
            derive = "PartialEq",
            shortname = $short,
            category = "cluster-upgrader",
            doc = $doc,
            printcolumn(name = "Cluster Name", type_ = "string", json_path = ".spec.clusterName"),
            printcolumn(name = "Latest Set Version", type_ = "string", json_path = ".status.latestSetVersion"),
            printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
            printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
            printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
        )]
        #[serde(rename_all = "camelCase")]
        pub struct $spec {
            /// While true, nothing is processed.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub paused: Option<bool>,

            /// The Cluster API `Cluster` to upgrade, in this namespace.
            #[schemars(length(min = 1, max = 253))]
            pub cluster_name: String,

            /// Name of an existing entry in `Cluster.spec.topology.variables` whose value is
            /// replaced by the image ID, in the same write as the version. Empty means unset,
            /// as in v0.6.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(max = 253))]
            pub topology_variable: Option<String>,

            /// The Plan to follow, in this namespace.
            pub plan_ref: ObjectRef,
        }

        impl $spec {
            /// The fields both upgrader kinds share.
            pub fn common(&self) -> UpgraderSpecView<'_> {
                UpgraderSpecView {
                    paused: self.paused.unwrap_or(false),
                    cluster_name: &self.cluster_name,
                    topology_variable: self
                        .topology_variable
                        .as_deref()
                        .filter(|v| !v.is_empty()),
                    plan_ref: &self.plan_ref,
                }
            }
        }
    };
}

upgrader_kind!(
    ClusterClassClusterUpgraderSpec,
    "ClusterClassClusterUpgrader",
    "cccu",
    "ClusterClassClusterUpgrader moves a ClusterClass-based Cluster to the image its Plan picks, one safe step at a time."
);

upgrader_kind!(
    InClusterUpgradeAutomationSpec,
    "InClusterUpgradeAutomation",
    "icua",
    "InClusterUpgradeAutomation moves a ClusterClass-based Cluster to the image its Plan picks, one safe step at a time."
);

/// The spec of either upgrader kind, borrowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpgraderSpecView<'a> {
    /// `spec.paused`, false when unset.
    pub paused: bool,
    /// `spec.clusterName`.
    pub cluster_name: &'a str,
    /// `spec.topologyVariable`, `None` when unset or empty.
    pub topology_variable: Option<&'a str>,
    /// `spec.planRef`.
    pub plan_ref: &'a ObjectRef,
}

/// Observed state of an upgrader.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpgraderStatus {
    /// The `v`-prefixed version last written to the Cluster, or confirmed equal to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_set_version: Option<String>,

    /// `Ready`, `Progressing`, `Blocked` and `Paused`, in the metav1.Condition convention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
