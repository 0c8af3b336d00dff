//! The Runtime SDK's wire types (`hooks.runtime.cluster.x-k8s.io/v1alpha1`), as Cluster API's Go
//! types spell them. Requests ignore unknown fields and read only what the handlers need of the
//! Cluster (`metadata.name` and `metadata.namespace`), so a v1beta1 and a v1beta2 Cluster decode
//! alike. Responses always carry `apiVersion` and `kind`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The API version of every request and response.
pub const API_VERSION: &str = "hooks.runtime.cluster.x-k8s.io/v1alpha1";

/// The hooks this extension serves, in the order Cluster API calls them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `GenerateUpgradePlan`.
    GenerateUpgradePlan,
    /// `BeforeClusterUpgrade`.
    BeforeClusterUpgrade,
    /// `BeforeControlPlaneUpgrade`.
    BeforeControlPlaneUpgrade,
    /// `AfterControlPlaneUpgrade`.
    AfterControlPlaneUpgrade,
    /// `BeforeWorkersUpgrade`.
    BeforeWorkersUpgrade,
    /// `AfterWorkersUpgrade`.
    AfterWorkersUpgrade,
}

impl Hook {
    /// Every hook served.
    pub const ALL: [Self; 6] = [
        Self::GenerateUpgradePlan,
        Self::BeforeClusterUpgrade,
        Self::BeforeControlPlaneUpgrade,
        Self::AfterControlPlaneUpgrade,
        Self::BeforeWorkersUpgrade,
        Self::AfterWorkersUpgrade,
    ];

    /// The hook's name, as in Cluster API's catalog.
    pub fn name(self) -> &'static str {
        match self {
            Self::GenerateUpgradePlan => "GenerateUpgradePlan",
            Self::BeforeClusterUpgrade => "BeforeClusterUpgrade",
            Self::BeforeControlPlaneUpgrade => "BeforeControlPlaneUpgrade",
            Self::AfterControlPlaneUpgrade => "AfterControlPlaneUpgrade",
            Self::BeforeWorkersUpgrade => "BeforeWorkersUpgrade",
            Self::AfterWorkersUpgrade => "AfterWorkersUpgrade",
        }
    }

    /// The handler's name in Discovery: a DNS-1123 label, registered by Cluster API as
    /// `<handler>.<ExtensionConfig name>`.
    pub fn handler(self) -> &'static str {
        match self {
            Self::GenerateUpgradePlan => "generate-upgrade-plan",
            Self::BeforeClusterUpgrade => "before-cluster-upgrade",
            Self::BeforeControlPlaneUpgrade => "before-control-plane-upgrade",
            Self::AfterControlPlaneUpgrade => "after-control-plane-upgrade",
            Self::BeforeWorkersUpgrade => "before-workers-upgrade",
            Self::AfterWorkersUpgrade => "after-workers-upgrade",
        }
    }

    /// The path Cluster API posts the handler's requests to (before its `?timeout=` query).
    pub fn path(self) -> String {
        format!(
            "/{API_VERSION}/{}/{}",
            self.name().to_ascii_lowercase(),
            self.handler()
        )
    }
}

/// The path of Discovery.
pub fn discovery_path() -> String {
    format!("/{API_VERSION}/discovery")
}

/// `status` of every response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    /// The call succeeded (a blocking hook may still hold with `retryAfterSeconds`).
    Success,
    /// The call failed: Cluster API fails the reconcile and retries with backoff.
    Failure,
}

/// The Cluster in a request: only what identifies it is read.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RequestCluster {
    /// `metadata`.
    pub metadata: RequestMetadata,
}

/// `cluster.metadata` in a request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RequestMetadata {
    /// `name`.
    pub name: String,
    /// `namespace`.
    pub namespace: String,
}

/// `UpgradeStepInfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeStep {
    /// `version`, with its `v`.
    pub version: String,
}

/// `GenerateUpgradePlanRequest`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateUpgradePlanRequest {
    /// `settings`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// `cluster`.
    pub cluster: RequestCluster,
    /// `fromControlPlaneKubernetesVersion`.
    pub from_control_plane_kubernetes_version: String,
    /// `fromWorkersKubernetesVersion`, omitted without workers.
    #[serde(default)]
    pub from_workers_kubernetes_version: Option<String>,
    /// `toKubernetesVersion`: `Cluster.spec.topology.version`.
    pub to_kubernetes_version: String,
}

/// The requests of `BeforeClusterUpgrade`, `BeforeControlPlaneUpgrade` and
/// `BeforeWorkersUpgrade`, which share their fields.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BeforeRequest {
    /// `settings`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// `cluster`.
    pub cluster: RequestCluster,
    /// `fromKubernetesVersion`.
    pub from_kubernetes_version: String,
    /// `toKubernetesVersion`.
    pub to_kubernetes_version: String,
    /// `controlPlaneUpgrades`: the remaining control-plane steps.
    #[serde(default)]
    pub control_plane_upgrades: Vec<UpgradeStep>,
    /// `workersUpgrades`: the remaining worker steps.
    #[serde(default)]
    pub workers_upgrades: Vec<UpgradeStep>,
}

/// The requests of `AfterControlPlaneUpgrade` and `AfterWorkersUpgrade`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AfterRequest {
    /// `settings`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// `cluster`.
    pub cluster: RequestCluster,
    /// `kubernetesVersion`: the version the part reached.
    pub kubernetes_version: String,
    /// `controlPlaneUpgrades`.
    #[serde(default)]
    pub control_plane_upgrades: Vec<UpgradeStep>,
    /// `workersUpgrades`.
    #[serde(default)]
    pub workers_upgrades: Vec<UpgradeStep>,
}

/// `GenerateUpgradePlanResponse`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateUpgradePlanResponse {
    /// Always [`API_VERSION`].
    pub api_version: &'static str,
    /// Always `GenerateUpgradePlanResponse`.
    pub kind: &'static str,
    /// `status`.
    pub status: Status,
    /// `message`, omitted when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `controlPlaneUpgrades`, ascending, ending at the target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub control_plane_upgrades: Vec<UpgradeStep>,
    /// `workersUpgrades`: left empty, so Cluster API picks the fewest worker steps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workers_upgrades: Vec<UpgradeStep>,
}

impl GenerateUpgradePlanResponse {
    /// A plan: the control plane walks `steps`.
    pub fn plan(steps: Vec<String>) -> Self {
        Self {
            api_version: API_VERSION,
            kind: "GenerateUpgradePlanResponse",
            status: Status::Success,
            message: String::new(),
            control_plane_upgrades: steps
                .into_iter()
                .map(|version| UpgradeStep { version })
                .collect(),
            workers_upgrades: Vec::new(),
        }
    }

    /// A refusal.
    pub fn failure(message: impl Into<String>) -> Self {
        Self {
            status: Status::Failure,
            message: message.into(),
            ..Self::plan(Vec::new())
        }
    }
}

/// The response of a lifecycle hook (`<Hook>Response`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookResponse {
    /// Always [`API_VERSION`].
    pub api_version: &'static str,
    /// `<Hook>Response`.
    pub kind: String,
    /// `status`.
    pub status: Status,
    /// `message`, omitted when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `retryAfterSeconds`: non-zero holds the upgrade; always sent.
    pub retry_after_seconds: i32,
}

impl HookResponse {
    /// A `Success` answer of `hook`: held for `retry_after_seconds` when non-zero.
    pub fn success(hook: Hook, retry_after_seconds: i32, message: impl Into<String>) -> Self {
        Self {
            api_version: API_VERSION,
            kind: format!("{}Response", hook.name()),
            status: Status::Success,
            message: message.into(),
            retry_after_seconds,
        }
    }

    /// A `Failure` answer of `hook`.
    pub fn failure(hook: Hook, message: impl Into<String>) -> Self {
        Self {
            status: Status::Failure,
            ..Self::success(hook, 0, message)
        }
    }
}

/// `DiscoveryResponse`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryResponse {
    /// Always [`API_VERSION`].
    pub api_version: &'static str,
    /// Always `DiscoveryResponse`.
    pub kind: &'static str,
    /// Always `Success`.
    pub status: Status,
    /// One entry per served handler.
    pub handlers: Vec<ExtensionHandler>,
}

/// `DiscoveryResponse.handlers[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionHandler {
    /// `name`.
    pub name: &'static str,
    /// `requestHook`.
    pub request_hook: GroupVersionHook,
    /// `timeoutSeconds`.
    pub timeout_seconds: i32,
    /// `failurePolicy`.
    pub failure_policy: FailurePolicy,
}

/// `requestHook`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupVersionHook {
    /// `apiVersion`.
    pub api_version: &'static str,
    /// `hook`.
    pub hook: &'static str,
}

/// `failurePolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FailurePolicy {
    /// A call error fails the reconcile: a gate that cannot answer holds the upgrade.
    Fail,
}

/// How long Cluster API waits for one of our handlers.
pub const TIMEOUT_SECONDS: i32 = 10;

/// The Discovery answer: one handler per hook, `failurePolicy: Fail`, `timeoutSeconds: 10`.
pub fn discovery() -> DiscoveryResponse {
    DiscoveryResponse {
        api_version: API_VERSION,
        kind: "DiscoveryResponse",
        status: Status::Success,
        handlers: Hook::ALL
            .iter()
            .map(|hook| ExtensionHandler {
                name: hook.handler(),
                request_hook: GroupVersionHook {
                    api_version: API_VERSION,
                    hook: hook.name(),
                },
                timeout_seconds: TIMEOUT_SECONDS,
                failure_policy: FailurePolicy::Fail,
            })
            .collect(),
    }
}
