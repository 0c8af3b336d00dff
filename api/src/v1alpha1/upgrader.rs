//! ClusterClassClusterUpgrader (the v0.6 name) and InClusterUpgradeAutomation (the later name):
//! two kinds with one schema, served by one controller.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
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
        #[x_kube(validation = kube::core::Rule::new("!has(self.imageMap) || !has(self.topologyVariable) || self.topologyVariable == ''").message("spec.imageMap and spec.topologyVariable are exclusive: set one of them"))]
        #[serde(rename_all = "camelCase")]
        pub struct $spec {
            /// While true, nothing is processed.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub paused: Option<bool>,

            /// The Cluster API `Cluster` to upgrade, in this namespace: a DNS-1123 subdomain.
            #[schemars(length(min = 1, max = 253))]
            #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{}')", crate::names::DNS_SUBDOMAIN_PATTERN)).message("spec.clusterName must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', alphanumeric at both ends"))]
            pub cluster_name: String,

            /// Name of an existing entry in `Cluster.spec.topology.variables` whose value is
            /// replaced by the image ID, in the same write as the version. Empty means unset,
            /// as in v0.6.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(max = 253))]
            pub topology_variable: Option<String>,

            /// The Plan to follow, in this namespace.
            pub plan_ref: ObjectRef,

            /// When true, a missing `topologyVariable` is added to the Cluster's variables
            /// instead of blocking with `TopologyVariableNotFound`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub create_topology_variable: Option<bool>,

            /// An object-valued Cluster variable that maps each Kubernetes version to its image.
            /// Each step adds the entry of its version; entries of other versions are never
            /// changed or removed. Exclusive with `topologyVariable`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub image_map: Option<ImageMap>,

            /// Steps start only inside this window; a started step may finish outside it.
            /// Omitted means always open.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub maintenance_window: Option<MaintenanceWindow>,

            /// When true, the next step is computed and reported in status, never written.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub dry_run: Option<bool>,

            /// Opt in to updating Elemental hosts in place for image-only changes: one host at
            /// a time per pool, cordoned and drained first. Omitted means the topology is
            /// written as for any other step.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub in_place: Option<InPlace>,
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
                    create_topology_variable: self.create_topology_variable.unwrap_or(false),
                    image_map: self.image_map.as_ref(),
                    maintenance_window: self.maintenance_window.as_ref(),
                    dry_run: self.dry_run.unwrap_or(false),
                }
            }

            /// `spec.inPlace`.
            pub fn in_place(&self) -> Option<&InPlace> {
                self.in_place.as_ref()
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
    /// `spec.createTopologyVariable`, false when unset.
    pub create_topology_variable: bool,
    /// `spec.imageMap`.
    pub image_map: Option<&'a ImageMap>,
    /// `spec.maintenanceWindow`.
    pub maintenance_window: Option<&'a MaintenanceWindow>,
    /// `spec.dryRun`, false when unset.
    pub dry_run: bool,
}

/// A Cluster variable whose value maps Kubernetes versions (`v1.33.2`) to image IDs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageMap {
    /// Name of the entry in `Cluster.spec.topology.variables`.
    #[schemars(length(min = 1, max = 253))]
    pub variable: String,
    /// The property of the variable's object value that holds the map, such as
    /// `byKubernetesVersion`. Omitted means the value itself is the map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub field: Option<String>,
    /// When true, a missing variable is created holding only the map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<bool>,
}

/// When steps may start: each start of `schedule` in `timeZone` opens the window for `duration`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// A cron schedule of five fields (minute, hour, day of month, month, day of week), or six
    /// with leading seconds, such as `0 2 * * SAT`.
    #[schemars(length(min = 9, max = 128))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{CRON_PATTERN}')")).message("spec.maintenanceWindow.schedule must be a cron schedule of five or six fields, such as '0 2 * * SAT'"))]
    pub schedule: String,
    /// How long each window stays open, as a duration from 1m to 168h, such as `4h`.
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = kube::core::Rule::new(crate::durations::between_rule("1m", "168h")).message("spec.maintenanceWindow.duration must be a duration from 1m to 168h, such as 4h"))]
    pub duration: String,
    /// The IANA time zone the schedule is read in, such as `Europe/Berlin`. Omitted means UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{TIME_ZONE_PATTERN}')")).message("spec.maintenanceWindow.timeZone must be an IANA time zone name, such as Europe/Berlin or UTC"))]
    pub time_zone: Option<String>,
}

/// How Elemental hosts are updated in place (`spec.inPlace`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InPlace {
    /// Most hosts of one pool updated at the same time. Omitted means 1. The control plane is
    /// always updated one host at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable: Option<i32>,
    /// How long a drain may take before the upgrader blocks with `DrainTimeout`, as a duration
    /// from 1s to 24h. Omitted means 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = kube::core::Rule::new(crate::durations::between_rule("1s", "24h")).message("spec.inPlace.drainTimeout must be a duration from 1s to 24h, such as 10m"))]
    pub drain_timeout: Option<String>,
    /// How many times a host whose OS update failed (`OSVersionReconciliationFailed`) is given
    /// another try before the upgrader blocks. Omitted means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub retries: Option<i32>,
    /// How long a host may stay labelled `pending` (updating and rebooting) before the upgrader
    /// blocks with `HostTimeout`, as a duration from 1s to 24h. Omitted means 30m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = kube::core::Rule::new(crate::durations::between_rule("1s", "24h")).message("spec.inPlace.hostTimeout must be a duration from 1s to 24h, such as 30m"))]
    pub host_timeout: Option<String>,
    /// Also rewrite each host's recovery partition (`osVersion.upgradeRecovery`). Omitted means
    /// false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_recovery: Option<bool>,
    /// Which pods a drain may evict, with the meaning of `kubectl drain`'s flags of the same
    /// names. Omitted means neither: a pod with no controller or with an `emptyDir` volume holds
    /// its host with `DrainRefused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
}

/// Which pods a drain may evict (`spec.inPlace.drain`), as `kubectl drain --ignore-daemonsets`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    /// Also evict pods that no controller manages (and DaemonSet pods whose DaemonSet is gone):
    /// they are not recreated anywhere. Omitted means false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// Also evict pods with an `emptyDir` volume, whose data is lost. Omitted means false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_empty_dir_data: Option<bool>,
}

/// Annotation on a workload Node the upgrader cordoned, naming it as `<kind>/<name>`: only a
/// Node carrying the upgrader's own mark is uncordoned by it.
pub const CORDONED_BY_ANNOTATION: &str = "kubernetesupgraded.dimitrikoshkin.com/cordoned-by";

/// Annotation on an upgrader: a new value clears the blocked hosts of `status.hosts`, so they
/// are tried again from the start (the last value acted on is `status.retryHosts`).
pub const RETRY_HOSTS_ANNOTATION: &str = "kubernetesupgraded.dimitrikoshkin.com/retry-hosts";

/// Default of `spec.inPlace.maxUnavailable`.
pub const DEFAULT_MAX_UNAVAILABLE: i32 = 1;
/// Default of `spec.inPlace.drainTimeout`.
pub const DEFAULT_DRAIN_TIMEOUT: &str = "10m";
/// Default of `spec.inPlace.retries`.
pub const DEFAULT_RETRIES: i32 = 1;
/// Default of `spec.inPlace.hostTimeout`.
pub const DEFAULT_HOST_TIMEOUT: &str = "30m";

/// Where one host is in its in-place update.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostPhase {
    /// Chosen; its Node is being cordoned.
    Selected,
    /// The Node is cordoned; its pods are being evicted.
    Cordoned,
    /// The drain finished; the host is being labelled `pending`.
    Drained,
    /// Labelled `pending`; the image is written and the agent updates the host.
    Pending,
    /// The agent reported `OSVersionReconciliationFailed`; waiting for its next try.
    Retrying,
    /// The agent labelled the host `done`; the booted image is checked next.
    Done,
    /// The Node runs the target image; it is being uncordoned.
    Verified,
    /// Finished: the Node runs the target and is schedulable again.
    Uncordoned,
    /// Blocked: the drain did not finish within `drainTimeout`; the Node stays cordoned.
    DrainTimeout,
    /// Blocked: `done` was reported while the Node runs another image; the Node stays cordoned.
    BootedImageMismatch,
    /// Blocked: the OS update failed more than `retries` times; the Node stays cordoned.
    RetriesExhausted,
    /// Held: a pod on the Node may not be evicted under `spec.inPlace.drain`; nothing is evicted
    /// until it is gone or allowed, looked at again on every pass.
    DrainRefused,
    /// The update is no longer wanted before the host was labelled `pending`: the Node is being
    /// uncordoned, if the upgrader cordoned it.
    Releasing,
    /// Finished without an update: released, and schedulable again if the upgrader had cordoned
    /// it.
    Released,
    /// Blocked: the host stayed `pending` longer than `hostTimeout` without coming back with
    /// the image; the Node stays cordoned.
    HostTimeout,
}

/// One host's in-place update, kept in status so that a restarted manager resumes it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostRecord {
    /// The ElementalHost.
    pub host: String,
    /// The Cluster API Machine.
    pub machine: String,
    /// The workload cluster's Node.
    pub node: String,
    /// The MachineDeployment that names the host's pool; absent for the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Where the update is.
    pub phase: HostPhase,
    /// The `imageUri` this update writes; never changed while the update is in flight.
    pub image: String,
    /// The stamp the Node's `osImage` must contain once the host booted `image`.
    pub stamp: String,
    /// When the host was selected.
    pub started: Time,
    /// When the host was uncordoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
    /// How many OS update failures were seen.
    pub attempts: i32,
    /// Why the host is blocked or retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `phase` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The Node was already cordoned when the host was selected: it is left cordoned at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cordoned_before: Option<bool>,
    /// The Node's `status.nodeInfo.bootID` from the host's selection until it was labelled
    /// `pending`: a `done` counts once the Node reports another boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub boot_id: Option<String>,
    /// When the host was labelled `pending`, from which `hostTimeout` counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<Time>,
}

/// The in-place update under way or last finished (`status.inPlace`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceProgress {
    /// The `imageUri` hosts are moved to.
    pub image: String,
    /// The stamp the Nodes' `osImage` must carry.
    pub stamp: String,
    /// Hosts at the target, of all the Cluster's hosts.
    pub updated: i32,
    /// The Cluster's hosts.
    pub total: i32,
    /// Per pool, the control plane first (named `control-plane`, with `controlPlane: true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub pools: Vec<PoolProgress>,
}

/// One pool's share of an in-place update.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PoolProgress {
    /// The MachineDeployment's name, or `control-plane`.
    pub name: String,
    /// Set for the control plane.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub control_plane: bool,
    /// Hosts at the target.
    pub updated: i32,
    /// Hosts in the pool.
    pub total: i32,
}

/// Most entries in `status.hosts`.
pub const MAX_HOSTS: usize = 256;

/// RE2 pattern a cron schedule must match: five or six space-separated fields of cron characters.
pub const CRON_PATTERN: &str = "^[0-9A-Za-z*?/,#LW-]+( +[0-9A-Za-z*?/,#LW-]+){4,5}$";
/// RE2 pattern a time zone name must match.
pub const TIME_ZONE_PATTERN: &str = "^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$";

/// The step an upgrader will take next, or is waiting to take.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NextStep {
    /// The `v`-prefixed Kubernetes version of the step.
    pub version: String,
    /// The image ID written with it.
    pub id: String,
    /// Why it is not written yet: the `Blocked` or `Progressing` reason, or `DryRun`.
    pub reason: String,
    /// The earliest time it may start, when a maintenance window is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
}

/// One step written to the Cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// The Cluster's version before the step.
    pub from: String,
    /// The version written.
    pub to: String,
    /// The image ID written.
    pub image: String,
    /// When the step was written.
    pub started: Time,
    /// When the Cluster was first seen finished at `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
}

/// Most entries in `status.history`.
pub const MAX_HISTORY: usize = 10;

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

    /// The step computed next, while one is pending; absent when the Cluster is up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_step: Option<NextStep>,

    /// The steps written, oldest first, at most [`MAX_HISTORY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 10))]
    pub history: Option<Vec<StepRecord>>,

    /// The hosts of the current in-place update, at most [`MAX_HOSTS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["host".into()]))]
    pub hosts: Option<Vec<HostRecord>>,

    /// The in-place update under way, or the last one, with each pool's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place: Option<InPlaceProgress>,

    /// The last `retry-hosts` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_hosts: Option<String>,

    /// Where the Cluster stands in the Plan's rollout, when the Plan has `spec.rollout`: what
    /// the Plan reads to admit Clusters wave by wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutMembership>,
}

/// The Cluster's place in its Plan's rollout (`status.rollout` of an upgrader).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutMembership {
    /// The first wave whose selector matches the Cluster's labels; absent when none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub wave: Option<String>,
    /// The Cluster's `Available` condition: true, false, or absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_available: Option<bool>,
}

#[cfg(test)]
#[allow(clippy::needless_pass_by_value)]
mod cel {
    use kube::core::cel::validate_cel;
    use serde_json::{Value, json};

    use super::*;

    fn upgrader(extra: Value) -> ClusterClassClusterUpgrader {
        let mut spec = json!({"clusterName": "c", "planRef": {"name": "p"}});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "ClusterClassClusterUpgrader",
            "metadata": {"name": "x", "namespace": "team"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn refused(extra: Value, message: &str) {
        let errors = validate_cel(&upgrader(extra)).expect_err("should be refused");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|e| e.contains(message)),
            "{message:?} in {text:?}"
        );
    }

    fn window(schedule: &str, duration: &str, zone: &str) -> Value {
        json!({"maintenanceWindow": {"schedule": schedule, "duration": duration, "timeZone": zone}})
    }

    #[test]
    fn window_rules_accept_and_refuse_with_the_field() {
        for ok in [
            window("0 2 * * SAT", "4h", "Europe/Berlin"),
            window("30 0 2 * * MON-FRI", "1m", "UTC"),
            window("*/15 22-23 * * *", "168h", "America/Argentina/Buenos_Aires"),
        ] {
            assert!(validate_cel(&upgrader(ok.clone())).is_ok(), "{ok}");
        }
        refused(
            window("every day", "4h", "UTC"),
            "spec.maintenanceWindow.schedule",
        );
        refused(
            window("0 2 * *", "4h", "UTC"),
            "spec.maintenanceWindow.schedule",
        );
        refused(
            window("0 2 * * *", "30s", "UTC"),
            "spec.maintenanceWindow.duration",
        );
        refused(
            window("0 2 * * *", "169h", "UTC"),
            "spec.maintenanceWindow.duration",
        );
        refused(
            window("0 2 * * *", "1h", "Europe/../x"),
            "spec.maintenanceWindow.timeZone",
        );
    }

    #[test]
    fn in_place_rules_accept_and_refuse_with_the_field() {
        for ok in [
            json!({"inPlace": {}}),
            json!({"inPlace": {"maxUnavailable": 3, "drainTimeout": "1h30m", "retries": 0}}),
            json!({"inPlace": {"drainTimeout": "1s"}}),
            json!({"inPlace": {"drainTimeout": "24h"}}),
        ] {
            assert!(validate_cel(&upgrader(ok.clone())).is_ok(), "{ok}");
        }
        refused(
            json!({"inPlace": {"drainTimeout": "500ms"}}),
            "spec.inPlace.drainTimeout",
        );
        refused(
            json!({"inPlace": {"drainTimeout": "25h"}}),
            "spec.inPlace.drainTimeout",
        );
        refused(
            json!({"inPlace": {"drainTimeout": "ten minutes"}}),
            "spec.inPlace.drainTimeout",
        );
    }

    #[test]
    fn host_timeout_accepts_1s_to_24h_and_refuses_with_the_field() {
        for ok in ["1s", "30m", "1h30m", "24h"] {
            let spec = json!({"inPlace": {"hostTimeout": ok}});
            assert!(validate_cel(&upgrader(spec.clone())).is_ok(), "{spec}");
        }
        for bad in ["500ms", "25h", "half an hour", "-5m"] {
            refused(
                json!({"inPlace": {"hostTimeout": bad}}),
                "spec.inPlace.hostTimeout",
            );
        }
    }

    #[test]
    fn image_map_and_topology_variable_are_exclusive() {
        let map = json!({"variable": "osImages"});
        assert!(validate_cel(&upgrader(json!({"imageMap": map}))).is_ok());
        assert!(validate_cel(&upgrader(json!({"imageMap": map, "topologyVariable": ""}))).is_ok());
        refused(
            json!({"imageMap": map, "topologyVariable": "image"}),
            "spec.imageMap and spec.topologyVariable are exclusive",
        );
    }
}
