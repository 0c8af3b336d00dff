//! Chained upgrades: whether Cluster API walks a Cluster's minors through our
//! `GenerateUpgradePlan` handler, because the Cluster's ClusterClass (v1beta2) names it in
//! `spec.upgrade.external.generateUpgradePlanExtension`. What is read is untrusted: anything
//! unexpected, or a ClusterClass that cannot be read, means plain one-minor stepping.

use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde_json::Value;

use super::cluster::{Access, GROUP};
use super::finish::ClusterApi;
use super::gates::{self, ClusterState, PlanState};
use crate::extension::wire::Hook;
use crate::runtime::status::bounded;

pub use crate::runtime::DEFAULT_EXTENSION_CONFIG;

/// The Normal event's reason when a ClusterClass offers a chained upgrade that a single-variable
/// mode cannot carry.
pub const NEEDS_IMAGE_MAP: &str = "ChainedUpgradeNeedsImageMap";

/// The longest object name the API server accepts.
const MAX_NAME: usize = 253;

/// The name Cluster API registers our plan handler under: `<handler>.<ExtensionConfig name>`.
pub fn registered_name(extension_config: &str) -> String {
    format!("{}.{extension_config}", Hook::GenerateUpgradePlan.handler())
}

/// Whether the Plan's target is more than one minor ahead of the Cluster's version, the only
/// case where a chained upgrade changes the step.
pub fn beyond_one_minor(cluster: &ClusterState, plan: &PlanState, images: &[gates::Image]) -> bool {
    let Ok((_, topology)) = gates::class_based(cluster) else {
        return false;
    };
    let (Ok((target, _)), Ok(current)) = (
        gates::plan_target(plan, images),
        gates::cluster_version(topology),
    ) else {
        return false;
    };
    target.major == current.major && target.minor > current.minor + 1
}

/// The ClusterClass a Cluster is built from, as `(namespace, name)`: v1beta2's
/// `spec.topology.classRef`, its namespace defaulting to the Cluster's. A v1beta1 Cluster has no
/// upgrade field to read, and an invalid name is not looked up.
pub fn class_ref(api: ClusterApi, cluster: &Value, namespace: &str) -> Option<(String, String)> {
    if api != ClusterApi::V1Beta2 {
        return None;
    }
    let class = cluster.pointer("/spec/topology/classRef")?;
    let name = class.get("name")?.as_str().filter(|n| valid_name(n))?;
    let namespace = match class.get("namespace").and_then(Value::as_str) {
        None | Some("") => namespace,
        Some(ns) if valid_name(ns) => ns,
        Some(_) => return None,
    };
    Some((namespace.to_owned(), name.to_owned()))
}

/// A DNS-1123 subdomain: what the API server allows as a name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Whether `class` names the handler registered as `registered` for its upgrade plans.
pub fn names_handler(class: &Value, registered: &str) -> bool {
    class
        .pointer("/spec/upgrade/external/generateUpgradePlanExtension")
        .and_then(Value::as_str)
        == Some(registered)
}

/// Reads the Cluster's ClusterClass and tells whether it names our handler; `false` when the
/// Cluster names none, or it cannot be read (logged).
pub async fn offered(
    client: &Client,
    access: &Access,
    cluster: &Value,
    namespace: &str,
    registered: &str,
) -> bool {
    let Some((class_namespace, name)) = class_ref(access.api, cluster, namespace) else {
        return false;
    };
    let gvk = GroupVersionKind::gvk(GROUP, &access.resource.version, "ClusterClass");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "clusterclasses");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &class_namespace, &resource);
    match bounded(api.get_opt(&name)).await {
        Ok(Some(class)) => serde_json::to_value(class).is_ok_and(|c| names_handler(&c, registered)),
        Ok(None) => false,
        Err(err) => {
            tracing::debug!(
                clusterclass = %format!("{class_namespace}/{name}"),
                error = %crate::runtime::cause_chain(&err),
                "the ClusterClass cannot be read: stepping one minor at a time"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_registered_name_joins_the_handler_and_the_extension_config() {
        assert_eq!(
            registered_name("kubernetes-upgrader"),
            "generate-upgrade-plan.kubernetes-upgrader"
        );
    }

    #[test]
    fn only_a_v1beta2_class_ref_with_a_valid_name_is_read() {
        let cluster =
            |class: Value| json!({"spec": {"topology": {"classRef": class, "class": "old"}}});
        let same = cluster(json!({"name": "quick-start"}));
        assert_eq!(
            class_ref(ClusterApi::V1Beta2, &same, "fleet"),
            Some(("fleet".into(), "quick-start".into()))
        );
        let other = cluster(json!({"name": "quick-start", "namespace": "classes"}));
        assert_eq!(
            class_ref(ClusterApi::V1Beta2, &other, "fleet"),
            Some(("classes".into(), "quick-start".into()))
        );
        assert_eq!(class_ref(ClusterApi::V1Beta1, &same, "fleet"), None);
        for bad in [
            json!({"name": "../secrets"}),
            json!({"name": "Quick"}),
            json!({"name": ""}),
            json!({"name": 7}),
            json!({"name": "a".repeat(254)}),
            json!({"name": "ok", "namespace": "a/b"}),
        ] {
            assert_eq!(
                class_ref(ClusterApi::V1Beta2, &cluster(bad.clone()), "fleet"),
                None,
                "{bad}"
            );
        }
        assert_eq!(
            class_ref(ClusterApi::V1Beta2, &json!({"spec": {}}), "fleet"),
            None
        );
    }

    #[test]
    fn the_class_must_name_exactly_our_registered_handler() {
        let class = |value: Value| json!({"spec": {"upgrade": {"external": {"generateUpgradePlanExtension": value}}}});
        let ours = "generate-upgrade-plan.kubernetes-upgrader";
        assert!(names_handler(&class(json!(ours)), ours));
        assert!(!names_handler(
            &class(json!("generate-upgrade-plan.other")),
            ours
        ));
        assert!(!names_handler(&class(json!("generate-upgrade-plan")), ours));
        assert!(!names_handler(
            &class(json!(["generate-upgrade-plan.kubernetes-upgrader"])),
            ours
        ));
        assert!(!names_handler(
            &json!({"spec": {"kubernetesVersions": ["v1.31.0"]}}),
            ours
        ));
    }
}
