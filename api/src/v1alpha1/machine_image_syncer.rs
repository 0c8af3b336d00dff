//! MachineImageSyncer: turns the newest version a source lists within a range into a MachineImage.

use std::borrow::Cow;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::ObjectRef;
use crate::constraint;
use crate::durations::{self, DurationError};

/// Re-check period when `spec.interval` is unset: one hour, in nanoseconds as v0.6 wrote it.
pub const DEFAULT_SYNCER_INTERVAL_NANOS: i64 = 3_600_000_000_000;

/// Creates a MachineImage from a MachineImageTemplate for the highest version within
/// `versionRange` that the source lists.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kubernetesupgraded.dimitrikoshkin.com",
    version = "v1alpha1",
    kind = "MachineImageSyncer",
    namespaced,
    status = "MachineImageSyncerStatus",
    derive = "PartialEq",
    shortname = "mis",
    category = "cluster-upgrader",
    doc = "MachineImageSyncer creates a MachineImage for the highest version in range that a source lists.",
    printcolumn(
        name = "Latest Version",
        type_ = "string",
        json_path = ".status.latestVersion"
    ),
    printcolumn(
        name = "Version Range",
        type_ = "string",
        json_path = ".spec.versionRange"
    ),
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
pub struct MachineImageSyncerSpec {
    /// While true, nothing is processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,

    /// Semver constraint for the versions to build, such as `v1.27.x`. Which matches are built
    /// is set by `strategy`: by default only the single highest.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = kube::core::Rule::new(constraint::cel_rule()).message(constraint::CEL_MESSAGE))]
    pub version_range: String,

    /// The object whose `status.versions` lists the available versions, such as a
    /// DebianRepositorySource, in this namespace. `kind` and `name` are required; `apiVersion`
    /// defaults to this API's group and version.
    #[x_kube(validation = kube::core::Rule::new("has(self.kind) && self.kind != ''").message("spec.sourceRef.kind must be set: the source may be any kind that lists status.versions"))]
    pub source_ref: ObjectRef,

    /// The MachineImageTemplate to create images from, in this namespace.
    pub machine_image_template_ref: ObjectRef,

    /// Re-check period: an integer of nanoseconds (as v0.6 wrote it) or a duration such as `1h`.
    /// Zero disables the periodic re-check; negative values are refused.
    #[serde(default = "default_interval", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(interval_rule()).message("spec.interval must be a non-negative integer of nanoseconds or a duration such as 1h or 30m"))]
    pub interval: Option<Interval>,

    /// Which in-range versions get an image: `Latest` (the default, as in v0.6) builds only the
    /// highest; `LatestPerMinor` the highest patch of every minor in range; `AllInRange` every
    /// version in range. One reconcile creates at most
    /// [`MAX_IMAGES_PER_RECONCILE`] images, newest first, and the next reconcile follows at once
    /// with the rest. Images are never deleted when a version leaves the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<SyncStrategy>,

    /// The most MachineImages this syncer keeps (default 64). Past it, no image is created and
    /// `Ready` says so with reason `MaxImagesReached`; delete old images or raise the cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_images: Option<u32>,

    /// The most builds of this syncer's images running at once (default 2): images without an
    /// ID whose build has not failed. New images wait, with reason `WaitingForBuilds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_concurrent_builds: Option<u32>,
}

/// `spec.maxImages` when unset.
pub const DEFAULT_MAX_IMAGES: u32 = 64;
/// `spec.maxConcurrentBuilds` when unset.
pub const DEFAULT_MAX_CONCURRENT_BUILDS: u32 = 2;

/// How many MachineImages one reconcile of a syncer creates at most; the rest follow in the
/// next reconcile, which is queued at once.
pub const MAX_IMAGES_PER_RECONCILE: usize = 5;

/// Which in-range versions get a MachineImage: `Latest` (the default, as in v0.6) only the
/// highest, `LatestPerMinor` the highest patch of every minor, `AllInRange` every version. One
/// reconcile creates at most 5 images, newest first; the rest follow in the next reconcile.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum SyncStrategy {
    /// Only the highest version in range (v0.6 behaviour).
    #[default]
    Latest,
    /// The highest patch of every `MAJOR.MINOR` in range.
    LatestPerMinor,
    /// Every version in range.
    AllInRange,
}

/// A re-check period, as written: nanoseconds or a Go duration string.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Interval {
    /// Nanoseconds, as v0.6 stored it.
    Nanoseconds(i64),
    /// A Go duration string such as `1h30m`; a string of digits counts as nanoseconds.
    Duration(String),
}

impl schemars::JsonSchema for Interval {
    fn schema_name() -> Cow<'static, str> {
        "Interval".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

impl Interval {
    /// The period, or `None` when periodic re-checks are disabled (zero or less).
    pub fn period(&self) -> Result<Option<Duration>, DurationError> {
        match self {
            Self::Nanoseconds(n) => Ok(u64::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .map(Duration::from_nanos)),
            Self::Duration(text) => match text.parse::<i64>() {
                Ok(n) => Self::Nanoseconds(n).period(),
                Err(_) => durations::parse_signed(text),
            },
        }
    }
}

/// `string(self)` is the decimal form of an integer and the string itself otherwise, so one
/// pattern covers both JSON types; one `matches` keeps the estimated cost low for a field whose
/// length the schema cannot bound.
fn interval_rule() -> String {
    format!("string(self).matches('{INTERVAL_PATTERN}')")
}

/// Nanoseconds (digits) or a Go duration, never negative.
const INTERVAL_PATTERN: &str =
    "^[+]?([0-9]+|(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|ms|s|m|h))+)$";

#[allow(clippy::unnecessary_wraps)]
fn default_interval() -> Option<Interval> {
    Some(Interval::Nanoseconds(DEFAULT_SYNCER_INTERVAL_NANOS))
}

/// Observed state of a MachineImageSyncer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MachineImageSyncerStatus {
    /// The highest in-range version that has a MachineImage of this syncer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<String>,

    /// `Ready` and `Paused`, in the metav1.Condition convention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_accepts_both_forms() {
        let n: Interval = serde_json::from_str("3600000000000").unwrap();
        assert_eq!(n.period(), Ok(Some(Duration::from_secs(3600))));
        let d: Interval = serde_json::from_str("\"30m\"").unwrap();
        assert_eq!(d.period(), Ok(Some(Duration::from_secs(1800))));
        assert_eq!(Interval::Nanoseconds(0).period(), Ok(None));
        assert_eq!(Interval::Nanoseconds(-1).period(), Ok(None));
        assert!(serde_json::from_str::<Interval>("true").is_err());
        assert_eq!(
            Interval::Duration("60000000000".into()).period(),
            Ok(Some(Duration::from_secs(60)))
        );
        assert!(Interval::Duration("soon".into()).period().is_err());
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"30m\"");
    }
}
