//! One pure decision per hook, over the same observed state the upgrader decides on:
//! [`plan::generate`] for `GenerateUpgradePlan`, [`before::hold`] for the before-hooks and
//! [`after::hold`] for the after-hooks. [`crate::extension::observe`] reads that state.

pub mod after;
pub mod before;
pub mod plan;

use api::v1alpha1::UpgraderSpecView;

use crate::controllers::upgrader::claim::Claimant;

/// How long a hold lasts when nothing says when it lifts: short, so that an unpause or a
/// finished host is seen quickly (Cluster API does not ask a held hook again before).
pub const HOLD_SECONDS: i32 = 30;
/// The longest a closed maintenance window holds before Cluster API asks again.
pub const WINDOW_MAX_SECONDS: i32 = 600;

/// The upgrader that acts on a Cluster (the one the claim picks among those naming it).
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    /// Who it is, for messages.
    pub claimant: &'a Claimant,
    /// Its spec.
    pub spec: UpgraderSpecView<'a>,
    /// Its namespace, the Cluster's.
    pub namespace: &'a str,
}

impl Owner<'_> {
    /// `<namespace>/<name>` of its Plan.
    pub fn plan_name(&self) -> String {
        format!("{}/{}", self.namespace, self.spec.plan_ref.name)
    }
}

/// A hold: how long, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// `retryAfterSeconds`, above zero.
    pub seconds: i32,
    /// The message, naming the upgrader and the gate.
    pub message: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use api::v1alpha1::ClusterClassClusterUpgrader;
    use serde_json::json;

    use crate::controllers::upgrader::claim::Claimant;
    use crate::controllers::upgrader::gates::Image;

    pub fn claimant() -> Claimant {
        Claimant {
            created: None,
            rank: 0,
            name: "up".into(),
            kind: "ClusterClassClusterUpgrader",
        }
    }

    pub fn spec_with(extra: serde_json::Value) -> ClusterClassClusterUpgrader {
        let mut spec = json!({"clusterName": "prod", "planRef": {"name": "plan-a"}, "topologyVariable": "image"});
        if let (Some(spec), serde_json::Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        serde_json::from_value(json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "ClusterClassClusterUpgrader",
            "metadata": {"name": "up", "namespace": "fleet"},
            "spec": spec,
        }))
        .unwrap()
    }

    pub fn spec() -> ClusterClassClusterUpgrader {
        spec_with(json!({}))
    }

    pub fn image(version: &str, id: &str) -> Image {
        Image {
            version: semver::Version::parse(version).unwrap(),
            spec_version: format!("v{version}"),
            id: id.into(),
            name: format!("image-{id}"),
        }
    }
}
