//! The reasons the upgrader's conditions and events carry, and their wire strings: one place, that
//! the planner, the in-place flow and the decision all import.

/// The `OSVersionReady` reason of an ElementalHost whose OS update failed; the upgrader blocks
/// with the same reason.
pub const OS_VERSION_RECONCILIATION_FAILED: &str = "OSVersionReconciliationFailed";

/// Every reason the upgrader's conditions carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `spec.paused` is true.
    Paused,
    /// The `cluster.x-k8s.io` group is not served.
    ClusterApiNotInstalled,
    /// The Cluster does not exist.
    ClusterNotFound,
    /// The Cluster has no `spec.topology`.
    ClusterNotClassBased,
    /// Another upgrader acts on the Cluster.
    ClusterClaimed,
    /// The Plan does not exist.
    PlanNotFound,
    /// The Plan has no image, or its image is not a ready MachineImage.
    PlanNotReady,
    /// The Plan's or the Cluster's version does not parse.
    InvalidVersion,
    /// The Cluster is newer than the Plan: nothing is written.
    ClusterAheadOfPlan,
    /// The Cluster runs the Plan's version and image.
    ClusterUsingLatestVersion,
    /// The Plan's version has another major version.
    MajorVersionChange,
    /// The target is two or more minors ahead and no ready image exists for the next minor.
    NoImageForIntermediateMinor,
    /// The named variable is missing and may not be created.
    TopologyVariableNotFound,
    /// The image map variable is not an object of strings.
    InvalidImageMap,
    /// The image map already holds another image for the step's version.
    ImageMapEntryConflict,
    /// The Cluster is paused.
    ClusterPaused,
    /// The previous step is still rolling out.
    PreviousStepUnfinished,
    /// The Cluster runs the target and is still rolling out.
    RollingOut,
    /// The maintenance window is closed.
    OutsideMaintenanceWindow,
    /// The maintenance window cannot be read.
    InvalidMaintenanceWindow,
    /// `spec.dryRun` is true.
    DryRun,
    /// A step was written.
    StepApplied,
    /// Hosts are being updated in place.
    InPlaceUpdating,
    /// Every host runs the Plan's image, updated in place.
    InPlaceUpdated,
    /// A drain did not finish within `spec.inPlace.drainTimeout`.
    DrainTimeout,
    /// A pod on a host's Node may not be evicted under `spec.inPlace.drain`.
    DrainRefused,
    /// A host reported `done` while its Node runs another image.
    BootedImageMismatch,
    /// A host's OS update failed more than `spec.inPlace.retries` times.
    OsVersionReconciliationFailed,
    /// A host stayed `pending` longer than `spec.inPlace.hostTimeout`.
    HostTimeout,
    /// A pool has no spare host for a rollout.
    NoSpareHost,
    /// `spec.inPlace` is set but the Cluster has no Elemental hosts.
    InPlaceNotPossible,
    /// The Plan's image carries no build stamp to verify a booted host by.
    MissingImageStamp,
    /// The Plan's image names a tag, not a `@sha256:` digest, so hosts could boot another build.
    ImageNotPinned,
    /// The workload cluster cannot be reached through its kubeconfig Secret.
    WorkloadClusterUnavailable,
    /// The kubeconfig Secret asks for something the allow-list refuses.
    InvalidWorkloadKubeconfig,
    /// The Plan's rollout has not admitted the Cluster yet: an earlier wave is unfinished or
    /// soaking, or the wave's budget is full.
    WaitingForWave,
    /// The Plan's rollout is halted by a failed Cluster.
    RolloutHalted,
    /// The Cluster's labels match no wave of the Plan's rollout.
    NotInAnyWave,
}

impl Reason {
    /// The PascalCase wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paused => "Paused",
            Self::ClusterApiNotInstalled => "ClusterAPINotInstalled",
            Self::ClusterNotFound => "ClusterNotFound",
            Self::ClusterNotClassBased => "ClusterNotClassBased",
            Self::ClusterClaimed => "ClusterClaimed",
            Self::PlanNotFound => "PlanNotFound",
            Self::PlanNotReady => "PlanNotReady",
            Self::InvalidVersion => "InvalidVersion",
            Self::ClusterAheadOfPlan => "ClusterAheadOfPlan",
            Self::ClusterUsingLatestVersion => "ClusterUsingLatestVersion",
            Self::MajorVersionChange => "MajorVersionChange",
            Self::NoImageForIntermediateMinor => "NoImageForIntermediateMinor",
            Self::TopologyVariableNotFound => "TopologyVariableNotFound",
            Self::InvalidImageMap => "InvalidImageMap",
            Self::ImageMapEntryConflict => "ImageMapEntryConflict",
            Self::ClusterPaused => "ClusterPaused",
            Self::PreviousStepUnfinished => "PreviousStepUnfinished",
            Self::RollingOut => "RollingOut",
            Self::OutsideMaintenanceWindow => "OutsideMaintenanceWindow",
            Self::InvalidMaintenanceWindow => "InvalidMaintenanceWindow",
            Self::DryRun => "DryRun",
            Self::StepApplied => "StepApplied",
            Self::InPlaceUpdating => "InPlaceUpdating",
            Self::InPlaceUpdated => "InPlaceUpdated",
            Self::DrainTimeout => "DrainTimeout",
            Self::DrainRefused => "DrainRefused",
            Self::BootedImageMismatch => "BootedImageMismatch",
            Self::OsVersionReconciliationFailed => OS_VERSION_RECONCILIATION_FAILED,
            Self::HostTimeout => "HostTimeout",
            Self::NoSpareHost => "NoSpareHost",
            Self::InPlaceNotPossible => "InPlaceNotPossible",
            Self::MissingImageStamp => "MissingImageStamp",
            Self::ImageNotPinned => "ImageNotPinned",
            Self::WorkloadClusterUnavailable => "WorkloadClusterUnavailable",
            Self::InvalidWorkloadKubeconfig => "InvalidWorkloadKubeconfig",
            Self::WaitingForWave => "WaitingForWave",
            Self::RolloutHalted => "RolloutHalted",
            Self::NotInAnyWave => "NotInAnyWave",
        }
    }
}
