//! Chained upgrades on the real API server: a v1beta2 Cluster whose ClusterClass names our
//! `GenerateUpgradePlan` handler gets the Plan's target two minors ahead in one write, with the
//! image map entry of every version Cluster API walks; without the field, or with a single
//! variable, one minor at a time. Its own test binary: the Cluster CRD is cluster-wide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/upgrader.rs"]
mod support;

use e2e::e2e_env;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::json;
use support::*;

const OURS: &str = "generate-upgrade-plan.kubernetes-upgrader";

async fn cluster_class(env: &e2e::TestEnv, name: &str, spec: serde_json::Value) {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", "ClusterClass"),
        "clusterclasses",
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2",
        "kind": "ClusterClass",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}

fn with_class(class: &str) -> serde_json::Value {
    json!({"spec": {"topology": {"classRef": {"name": class}, "variables": [
        {"name": "image", "value": "img-old"},
        {"name": "osImages", "value": {"byKubernetesVersion": {"v1.30.5": "i-130"}}},
    ]}}})
}

fn history(upgrader: &serde_json::Value) -> Vec<(String, String)> {
    upgrader["status"]["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|r| {
                    (
                        r["from"].as_str().unwrap_or_default().to_owned(),
                        r["to"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_naming_our_handler_gets_the_target_in_one_write_with_every_map_entry() {
    let env =
        e2e_env!("a_class_naming_our_handler_gets_the_target_in_one_write_with_every_map_entry");
    e2e::install::install_list_map_cluster_crd(&env.client)
        .await
        .unwrap();
    e2e::install::install_cluster_class_crd(&env.client)
        .await
        .unwrap();
    static_image(&env, "img-1-31-1", "v1.31.1", "i-1311")
        .await
        .unwrap();
    static_image(&env, "img-1-31-2", "v1.31.2", "i-1312")
        .await
        .unwrap();
    static_image(&env, "img-1-32-1", "v1.32.1", "i-1321")
        .await
        .unwrap();
    plan(&env, "p", "v1.32.x").await.unwrap();
    cluster_class(
        &env,
        "chained",
        json!({"upgrade": {"external": {"generateUpgradePlanExtension": OURS}}}),
    )
    .await;
    cluster_class(&env, "other-extension", json!({"upgrade": {"external": {"generateUpgradePlanExtension": "generate-upgrade-plan.someone-else"}}})).await;
    cluster_class(&env, "plain", json!({})).await;
    // Chained, map mode: one write to the target.
    cluster(&env, "v1beta2", "a", "v1.30.5", with_class("chained"))
        .await
        .unwrap();
    // Another extension's plan, or none: one minor at a time.
    cluster(&env, "v1beta2", "b", "v1.30.5", with_class("plain"))
        .await
        .unwrap();
    cluster(
        &env,
        "v1beta2",
        "o",
        "v1.30.5",
        with_class("other-extension"),
    )
    .await
    .unwrap();
    // A ClusterClass that does not exist: one minor at a time.
    cluster(&env, "v1beta2", "g", "v1.30.5", with_class("gone"))
        .await
        .unwrap();
    // Chained, a single variable: one minor at a time, said once in an event.
    cluster(&env, "v1beta2", "t", "v1.30.5", with_class("chained"))
        .await
        .unwrap();
    let map = json!({"imageMap": {"variable": "osImages", "field": "byKubernetesVersion"}});
    for (name, spec) in [
        ("a", &map),
        ("b", &map),
        ("o", &map),
        ("g", &map),
        ("t", &json!({"topologyVariable": "image"})),
    ] {
        upgrader(
            &env,
            "ClusterClassClusterUpgrader",
            name,
            name,
            "p",
            spec.clone(),
        )
        .await
        .unwrap();
    }
    let generation = clusters(&env, "v1beta2")
        .get("a")
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    let _manager = env.start_manager().await.unwrap();

    let t = wait_version(&env, "v1beta2", "a", "v1.32.1").await.unwrap();
    assert_eq!(
        variable(&t, "osImages"),
        Some(
            &json!({"byKubernetesVersion": {"v1.30.5": "i-130", "v1.31.2": "i-1312", "v1.32.1": "i-1321"}})
        )
    );
    assert_eq!(variable(&t, "image"), Some(&json!("img-old")));
    let a = clusters(&env, "v1beta2").get("a").await.unwrap();
    assert_eq!(
        a.metadata.generation,
        Some(generation + 1),
        "one write to the Cluster"
    );
    let u = upgrader_json(&env, "ClusterClassClusterUpgrader", "a")
        .await
        .unwrap();
    assert_eq!(
        history(&u),
        vec![("v1.30.5".to_owned(), "v1.32.1".to_owned())]
    );

    for name in ["b", "o", "g"] {
        let t = wait_version(&env, "v1beta2", name, "v1.31.2")
            .await
            .unwrap();
        assert_eq!(
            variable(&t, "osImages"),
            Some(&json!({"byKubernetesVersion": {"v1.30.5": "i-130", "v1.31.2": "i-1312"}})),
            "{name}"
        );
    }
    let t = wait_version(&env, "v1beta2", "t", "v1.31.2").await.unwrap();
    assert_eq!(variable(&t, "image"), Some(&json!("i-1312")));

    // While Cluster API walks the chain the version stays as written; once finished, nothing more.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        topology(&env, "v1beta2", "a").await.unwrap()["version"],
        "v1.32.1"
    );
    finish(&env, "v1beta2", "a", "v1.32.1").await.unwrap();
    wait_reason(
        &env,
        "ClusterClassClusterUpgrader",
        "a",
        "Ready",
        "ClusterUsingLatestVersion",
    )
    .await
    .unwrap();
    let a = clusters(&env, "v1beta2").get("a").await.unwrap();
    assert_eq!(
        a.metadata.generation,
        Some(generation + 1),
        "still one write"
    );

    // The plain Cluster reaches the target in a second step once the first has finished.
    finish(&env, "v1beta2", "b", "v1.31.2").await.unwrap();
    let t = wait_version(&env, "v1beta2", "b", "v1.32.1").await.unwrap();
    assert_eq!(
        variable(&t, "osImages"),
        Some(
            &json!({"byKubernetesVersion": {"v1.30.5": "i-130", "v1.31.2": "i-1312", "v1.32.1": "i-1321"}})
        )
    );

    // The single-variable upgrader said once why it does not chain; its second step says nothing new.
    finish(&env, "v1beta2", "t", "v1.31.2").await.unwrap();
    wait_version(&env, "v1beta2", "t", "v1.32.1").await.unwrap();
    let said = e2e::eventually("ChainedUpgradeNeedsImageMap event", WAIT, || async {
        let events: Api<k8s_openapi::api::events::v1::Event> = env.api();
        let found: Vec<_> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some("ChainedUpgradeNeedsImageMap")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("t")
            })
            .collect();
        Ok((!found.is_empty()).then_some(found))
    })
    .await
    .unwrap();
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!(said[0].type_.as_deref(), Some("Normal"));
    assert_eq!(said[0].series.as_ref().map(|s| s.count), None, "{said:?}");
    for name in ["a", "b", "o", "g"] {
        let events: Api<k8s_openapi::api::events::v1::Event> = env.api();
        let list = events.list(&ListParams::default()).await.unwrap().items;
        assert!(
            !list.iter().any(
                |e| e.reason.as_deref() == Some("ChainedUpgradeNeedsImageMap")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            ),
            "{name}"
        );
    }
}
