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

/// Both kinds share the spec and status shapes; they differ in names and claim rank.
macro_rules! upgrader_kind {
    ($kind:ty, $controller:literal, $name:literal, $rank:literal) => {
        impl UpgraderKind for $kind {
            const CONTROLLER: &'static str = $controller;
            const KIND: &'static str = $name;
            const CLAIM_RANK: u8 = $rank;
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
    };
}

upgrader_kind!(
    ClusterClassClusterUpgrader,
    "clusterclassclusterupgrader",
    "ClusterClassClusterUpgrader",
    0
);
upgrader_kind!(
    InClusterUpgradeAutomation,
    "inclusterupgradeautomation",
    "InClusterUpgradeAutomation",
    1
);
