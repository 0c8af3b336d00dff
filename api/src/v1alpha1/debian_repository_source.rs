//! DebianRepositorySource: a Kubernetes Debian repository whose kubeadm versions are published.

use k8s_openapi::api::core::v1::{ConfigMapKeySelector, SecretKeySelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::durations;

/// Architecture used when `spec.architecture` is unset or empty.
pub const DEFAULT_ARCHITECTURE: &str = "amd64";
/// Package whose versions are published when `spec.package` is unset.
pub const DEFAULT_PACKAGE: &str = "kubeadm";
/// Re-check period when `spec.interval` is unset.
pub const DEFAULT_INTERVAL: &str = "5m";
/// Time allowed for one sync when `spec.timeout` is unset.
pub const DEFAULT_TIMEOUT: &str = "1m";
/// Cap on the decompressed index when `spec.maxIndexSize` is unset.
pub const DEFAULT_MAX_INDEX_SIZE: &str = "256Mi";

/// Watches a Kubernetes Debian repository (pkgs.k8s.io or a mirror), verifies it against
/// trusted OpenPGP keys, and publishes the Kubernetes versions it holds in `status.versions`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kubernetesupgraded.dimitrikoshkin.com",
    version = "v1alpha1",
    kind = "DebianRepositorySource",
    namespaced,
    status = "DebianRepositorySourceStatus",
    derive = "PartialEq",
    shortname = "drs",
    category = "cluster-upgrader",
    doc = "DebianRepositorySource publishes the Kubernetes versions held by a Debian repository.",
    printcolumn(name = "Versions", type_ = "string", json_path = ".status.versions"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Verified\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("has(self.suite) == has(self.component)").message("spec.suite and spec.component must be set together (dists layout) or both left out (flat layout)"))]
#[serde(rename_all = "camelCase")]
pub struct DebianRepositorySourceSpec {
    /// The repository root as written in an apt `deb` line, such as
    /// `https://pkgs.k8s.io/core:/stable:/v1.31/deb/` (flat layout), or `https://deb.example/debian`
    /// with `suite` and `component` (dists layout). A URL ending in `/Packages`, `/Packages.gz` or
    /// `/Packages.xz` is read directly as that index, as in v0.6.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[hH][tT][tT][pP][sS]?://[^ ]+$')").message("spec.url must be an http:// or https:// URL"))]
    pub url: String,

    /// Distribution suite for the dists layout, such as `bookworm` or `stable`; requires `component`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub suite: Option<String>,

    /// Archive component for the dists layout, such as `main`; requires `suite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub component: Option<String>,

    /// Debian architecture to list, matched exactly against each paragraph's `Architecture`.
    /// Paragraphs for `all`, or without an architecture, match any. Empty means `amd64`.
    #[serde(
        default = "default_architecture",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 64))]
    pub architecture: Option<String>,

    /// Package whose versions are published. Its presence for a version is the signal that the
    /// release exists for the architecture.
    #[serde(default = "default_package", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub package: Option<String>,

    /// OpenPGP public keys trusted to sign the repository, in the role of apt's `signed-by`.
    /// Without it the source works as in v0.6 but reports `Verified=False` (`NoSignedBy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<SignedBy>,

    /// How often the repository is checked, as a duration such as `5m` (at least `10s`). A jitter
    /// of up to a tenth is added.
    #[serde(default = "default_interval", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = kube::core::Rule::new(durations::at_least_rule("10s")).message("spec.interval must be a duration such as 5m or 1h, at least 10s"))]
    pub interval: Option<String>,

    /// Time allowed for one sync (every request and the whole download), such as `1m`.
    #[serde(default = "default_timeout", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = kube::core::Rule::new(durations::between_rule("1s", "1h")).message("spec.timeout must be a duration between 1s and 1h, such as 30s"))]
    pub timeout: Option<String>,

    /// Cap on the decompressed size of the index, as a quantity string such as `256Mi`; protects
    /// against compression bombs. Indexes beyond it fail with `IndexTooLarge`.
    #[serde(
        default = "default_max_index_size",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$') && !self.matches('^0+[A-Za-z]*$')").message("spec.maxIndexSize must be a positive byte size such as 256Mi or 1G"))]
    pub max_index_size: Option<String>,

    /// PEM certificates trusted for https in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262_144))]
    #[x_kube(validation = kube::core::Rule::new("self.contains('-----BEGIN CERTIFICATE-----')").message("spec.caBundle must hold PEM certificates"))]
    pub ca_bundle: Option<String>,
}

/// Trusted OpenPGP keys: armored inline, or binary or armored in a ConfigMap or Secret of the
/// source's namespace. A keyring may hold several keys; subkeys count.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("[has(self.inline), has(self.configMapKeyRef), has(self.secretKeyRef)].filter(x, x).size() == 1").message("spec.signedBy must set exactly one of inline, configMapKeyRef and secretKeyRef"))]
#[serde(rename_all = "camelCase")]
pub struct SignedBy {
    /// One or more ASCII-armored public key blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1_048_576))]
    pub inline: Option<String>,
    /// A key of a ConfigMap (in `data` or `binaryData`) holding the keyring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-map-type" = "atomic"))]
    #[x_kube(validation = kube::core::Rule::new("has(self.name) && self.name != ''").message("spec.signedBy.configMapKeyRef.name must name a ConfigMap in this namespace"))]
    pub config_map_key_ref: Option<ConfigMapKeySelector>,
    /// A key of a Secret holding the keyring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-map-type" = "atomic"))]
    #[x_kube(validation = kube::core::Rule::new("has(self.name) && self.name != ''").message("spec.signedBy.secretKeyRef.name must name a Secret in this namespace"))]
    pub secret_key_ref: Option<SecretKeySelector>,
}

/// Observed state of a DebianRepositorySource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DebianRepositorySourceStatus {
    /// The versions found, as `vMAJOR.MINOR.PATCH`, de-duplicated and sorted ascending: the
    /// Source contract read by MachineImageSyncers. Kept at the last good value on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub versions: Option<Vec<String>>,

    /// `Ready` and `Verified`, in the metav1.Condition convention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// When a sync last brought a new index (an unchanged repository writes nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,

    /// When `versions` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<Time>,

    /// The index the versions were read from.
    #[serde(default, rename = "indexURL", skip_serializing_if = "Option::is_none")]
    pub index_url: Option<String>,

    /// SHA256 of the index as downloaded (before decompression), in hex.
    #[serde(
        default,
        rename = "indexSHA256",
        skip_serializing_if = "Option::is_none"
    )]
    pub index_sha256: Option<String>,

    /// Fingerprint of the key whose signature verified the Release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_fingerprint: Option<String>,

    /// `Date` of the last verified Release accepted. An older Release is refused as a replay
    /// (`ReleaseReplayed`), even after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_date: Option<Time>,

    /// `Valid-Until` of the last verified Release accepted. Past it, the source is no longer
    /// Ready until a newer Release arrives, even when the server answers 304.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_valid_until: Option<Time>,

    /// Matching paragraphs whose upstream version is not semver, and so not published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_versions: Option<i64>,

    /// The Debian version behind each entry of `versions`, in the same order and with the same
    /// bound: where several Debian revisions map to one version, the highest (dpkg ordering).
    /// Read by build pipelines that install the exact packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["version".into()]))]
    pub debian_versions: Option<Vec<DebianVersion>>,
}

/// One published version and the Debian package version it was read from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct DebianVersion {
    /// The published version, `vMAJOR.MINOR.PATCH`, as in `status.versions`.
    #[schemars(length(min = 1, max = 256))]
    pub version: String,
    /// The highest Debian version of the package for it, such as `1.31.2-1.1`.
    #[schemars(length(min = 1, max = 256))]
    pub debian: String,
}

#[allow(clippy::unnecessary_wraps)]
fn default_architecture() -> Option<String> {
    Some(DEFAULT_ARCHITECTURE.to_owned())
}

#[allow(clippy::unnecessary_wraps)]
fn default_package() -> Option<String> {
    Some(DEFAULT_PACKAGE.to_owned())
}

#[allow(clippy::unnecessary_wraps)]
fn default_interval() -> Option<String> {
    Some(DEFAULT_INTERVAL.to_owned())
}

#[allow(clippy::unnecessary_wraps)]
fn default_timeout() -> Option<String> {
    Some(DEFAULT_TIMEOUT.to_owned())
}

#[allow(clippy::unnecessary_wraps)]
fn default_max_index_size() -> Option<String> {
    Some(DEFAULT_MAX_INDEX_SIZE.to_owned())
}

impl DebianRepositorySourceSpec {
    /// The architecture to match: `amd64` when unset or empty.
    pub fn architecture(&self) -> &str {
        self.architecture
            .as_deref()
            .filter(|a| !a.is_empty())
            .unwrap_or(DEFAULT_ARCHITECTURE)
    }

    /// The package to match: `kubeadm` when unset or empty.
    pub fn package(&self) -> &str {
        self.package
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_PACKAGE)
    }

    /// The re-check period.
    pub fn interval(&self) -> Result<std::time::Duration, durations::DurationError> {
        durations::parse_positive(self.interval.as_deref().unwrap_or(DEFAULT_INTERVAL))
    }

    /// The time allowed for one sync.
    pub fn timeout(&self) -> Result<std::time::Duration, durations::DurationError> {
        durations::parse_positive(self.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT))
    }

    /// The cap on the decompressed index, in bytes.
    pub fn max_index_bytes(&self) -> Result<u64, crate::quantity::QuantityError> {
        let text = self
            .max_index_size
            .as_deref()
            .unwrap_or(DEFAULT_MAX_INDEX_SIZE);
        crate::quantity::to_bytes(&Quantity(text.to_owned()))
    }
}

/// Condition type reporting whether the Release signature verified.
pub const CONDITION_VERIFIED: &str = "Verified";
