//! The two upgrader kinds one controller implementation serves, and what it reads of each.

use api::v1alpha1::{
    ClusterClassClusterUpgrader, InClusterUpgradeAutomation, InPlace, UpgraderSpecView,
    UpgraderStatus,
};
use kube::Resource;

use crate::runtime::caches::Cacheable;

/// Either upgrader kind.
pub trait UpgraderKind: Cacheable + Resource<DynamicType = ()> {
    /// Name in logs and metrics.
    const CONTROLLER: &'static str;
    /// The kind, as messages name it.
    const KIND: &'static str;
    /// Which kind acts first when two upgraders of one age claim a Cluster (lower first).
    const CLAIM_RANK: u8;
    /// The shared spec.
    fn view(&self) -> UpgraderSpecView<'_>;
    /// The status, if any.
    fn upgrader_status(&self) -> Option<&UpgraderStatus>;
    /// `spec.inPlace`.
    fn in_place(&self) -> Option<&InPlace>;
}

impl UpgraderKind for ClusterClassClusterUpgrader {
    const CONTROLLER: &'static str = "clusterclassclusterupgrader";
    const KIND: &'static str = "ClusterClassClusterUpgrader";
    const CLAIM_RANK: u8 = 0;
    fn view(&self) -> UpgraderSpecView<'_> {
        self.spec.common()
    }
    fn upgrader_status(&self) -> Option<&UpgraderStatus> {
        self.status.as_ref()
    }
    fn in_place(&self) -> Option<&InPlace> {
        self.spec.in_place()
    }
}

impl UpgraderKind for InClusterUpgradeAutomation {
    const CONTROLLER: &'static str = "inclusterupgradeautomation";
    const KIND: &'static str = "InClusterUpgradeAutomation";
    const CLAIM_RANK: u8 = 1;
    fn view(&self) -> UpgraderSpecView<'_> {
        self.spec.common()
    }
    fn upgrader_status(&self) -> Option<&UpgraderStatus> {
        self.status.as_ref()
    }
    fn in_place(&self) -> Option<&InPlace> {
        self.spec.in_place()
    }
}
