//! The upgrader against a Cluster CRD in Cluster API's shape (v1beta2 preferred,
//! `spec.topology.variables` a list-map keyed by `name`): one forced server-side apply per step
//! under the upgrader's field manager, owning exactly the version and its variable entry, and
//! another variable survives. Its own test binary: the Cluster CRD is cluster-wide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/upgrader.rs"]
mod support;

use e2e::e2e_env;
use kube::ResourceExt;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_is_one_apply_that_owns_only_the_version_and_its_variable() {
    let env = e2e_env!("a_step_is_one_apply_that_owns_only_the_version_and_its_variable");
    e2e::install::install_list_map_cluster_crd(&env.client)
        .await
        .unwrap();
    static_image(&env, "img-1-31-2", "v1.31.2", "i-131")
        .await
        .unwrap();
    plan(&env, "p", "v1.31.x").await.unwrap();
    cluster(&env, "v1beta2", "c", "v1.30.5", json!({}))
        .await
        .unwrap();
    cluster(&env, "v1beta2", "m", "v1.30.5", json!({"spec": {"topology": {"variables": [
        {"name": "image", "value": "img-old"},
        {"name": "other", "value": {"keep": true}},
        {"name": "osImages", "value": {"upgradeRecovery": false, "byKubernetesVersion": {"v1.30.5": "i-130"}}},
    ]}}}))
    .await
    .unwrap();
    upgrader(
        &env,
        "InClusterUpgradeAutomation",
        "u",
        "c",
        "p",
        json!({"topologyVariable": "image"}),
    )
    .await
    .unwrap();
    upgrader(
        &env,
        "ClusterClassClusterUpgrader",
        "m",
        "m",
        "p",
        json!({"imageMap": {"variable": "osImages", "field": "byKubernetesVersion"}}),
    )
    .await
    .unwrap();
    let _manager = env.start_manager().await.unwrap();

    let t = wait_version(&env, "v1beta2", "c", "v1.31.2").await.unwrap();
    assert_eq!(variable(&t, "image"), Some(&json!("i-131")));
    assert_eq!(
        variable(&t, "other"),
        Some(&json!({"keep": true})),
        "the other variable survives"
    );
    let c = clusters(&env, "v1beta2").get("c").await.unwrap();
    let ours: Vec<_> = c
        .managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some("kubernetes-upgrader-upgrader"))
        .collect();
    assert_eq!(ours.len(), 1, "{:?}", c.managed_fields());
    assert_eq!(ours[0].operation.as_deref(), Some("Apply"));
    let owned = serde_json::to_value(&ours[0].fields_v1).unwrap();
    let fields = &owned["f:spec"]["f:topology"];
    assert!(fields["f:version"].is_object(), "{owned}");
    assert!(
        fields["f:variables"]["k:{\"name\":\"image\"}"].is_object(),
        "{owned}"
    );
    assert!(
        fields["f:variables"]
            .get("k:{\"name\":\"other\"}")
            .is_none(),
        "{owned}"
    );
    assert!(fields.get("f:class").is_none(), "{owned}");

    // Map mode: the target's entry is added, the running version's entry and the other fields kept.
    let t = wait_version(&env, "v1beta2", "m", "v1.31.2").await.unwrap();
    assert_eq!(
        variable(&t, "osImages"),
        Some(
            &json!({"upgradeRecovery": false, "byKubernetesVersion": {"v1.30.5": "i-130", "v1.31.2": "i-131"}})
        )
    );
    assert_eq!(variable(&t, "image"), Some(&json!("img-old")));
    assert_eq!(variable(&t, "other"), Some(&json!({"keep": true})));
}
