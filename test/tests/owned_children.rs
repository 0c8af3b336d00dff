//! The runtime's owned-child helper on a real API server: children are applied by server-side
//! apply with a controller owner reference and the `app.kubernetes.io/*` labels, the
//! label-filtered cache (the `owns()` side) sees only them, and unwanted children of this owner
//! are deleted while other owners' children and unlabelled objects stay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use api::v1alpha1::{DebianRepositorySource, DebianRepositorySourceSpec};
use e2e::e2e_env;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use kubernetes_upgrader::runtime::children::{Children, owned_cache};
use kubernetes_upgrader::runtime::{Caches, synced};
use kubernetes_upgrader::shutdown::Shutdown;

const COMPONENT: &str = "machineimage-test";
const MANAGER: &str = "kubernetes-upgrader-children-test";

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("value".to_owned(), value.to_owned())])),
        ..ConfigMap::default()
    }
}

async fn owner(api: &Api<DebianRepositorySource>, name: &str) -> DebianRepositorySource {
    let source = DebianRepositorySource::new(
        name,
        DebianRepositorySourceSpec {
            url: "http://127.0.0.1:1/".to_owned(),
            ..DebianRepositorySourceSpec::default()
        },
    );
    api.create(&PostParams::default(), &source).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_are_applied_labelled_owned_watched_and_pruned() {
    let env = e2e_env!("children_are_applied_labelled_owned_watched_and_pruned");
    let sources: Api<DebianRepositorySource> = Api::namespaced(env.client.clone(), &env.namespace);
    let maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    let first = owner(&sources, "first").await;
    let second = owner(&sources, "second").await;

    let children = Children::new(&env.client, &first, MANAGER, COMPONENT);
    let applied = children.apply(config_map("first-a", "1")).await.unwrap();
    children.apply(config_map("first-b", "1")).await.unwrap();
    Children::new(&env.client, &second, MANAGER, COMPONENT)
        .apply(config_map("second-a", "1"))
        .await
        .unwrap();
    maps.create(&PostParams::default(), &config_map("unlabelled", "1"))
        .await
        .unwrap();

    // Labels, owner reference and field manager.
    let labels = applied.labels();
    assert_eq!(labels["app.kubernetes.io/name"], "kubernetes-upgrader");
    assert_eq!(labels["app.kubernetes.io/instance"], "first");
    assert_eq!(
        labels["app.kubernetes.io/managed-by"],
        "kubernetes-upgrader"
    );
    assert_eq!(labels["app.kubernetes.io/component"], COMPONENT);
    let owner_ref = &applied.owner_references()[0];
    assert_eq!(owner_ref.uid, first.uid().unwrap());
    assert_eq!(owner_ref.kind, "DebianRepositorySource");
    assert_eq!(owner_ref.controller, Some(true));
    let managers: Vec<String> = applied
        .managed_fields()
        .iter()
        .filter_map(|f| f.manager.clone())
        .collect();
    assert_eq!(managers, [MANAGER]);

    // Applying again with a new value is one server-side apply that changes only that value.
    let updated = children.apply(config_map("first-a", "2")).await.unwrap();
    assert_eq!(updated.data.as_ref().unwrap()["value"], "2");
    assert_eq!(updated.owner_references().len(), 1);

    // The label-filtered cache sees our three children and not the unlabelled map.
    let (trigger, shutdown) = Shutdown::new();
    let caches = Caches::new(env.client.clone(), Some(env.namespace.clone()), shutdown);
    let cache = owned_cache::<ConfigMap>(&caches, COMPONENT);
    let watches = caches.start();
    assert_eq!(watches.len(), 1);
    let (_, running) = watches.into_iter().next().unwrap();
    let watch = tokio::spawn(running.run);
    tokio::time::timeout(Duration::from_secs(20), synced(cache.store.clone()))
        .await
        .unwrap();
    let mut cached: Vec<String> = cache.store.state().iter().map(|m| m.name_any()).collect();
    cached.sort();
    assert_eq!(cached, ["first-a", "first-b", "second-a"]);

    // Pruning keeps the wanted child, other owners' children and unlabelled objects.
    let deleted = children
        .delete_unwanted::<ConfigMap>(&["first-a"])
        .await
        .unwrap();
    assert_eq!(deleted, ["first-b"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut left: Vec<String> = maps
            .list(&ListParams::default())
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name_any())
            .filter(|n| n != "kube-root-ca.crt")
            .collect();
        left.sort();
        if left == ["first-a", "second-a", "unlabelled"] {
            break;
        }
        assert!(Instant::now() < deadline, "left: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cache follows the deletion.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cache.store.state().len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the cache did not see the deletion"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
