//! The Cluster API Runtime Extension on a real API server, with the real manager serving it over
//! TLS and a Cluster API stand-in (`e2e::runtime_sdk`) calling it as Cluster API would: a jump of
//! two minors walked through built images only, a missing intermediate image refusing the plan,
//! a paused upgrader and a closed maintenance window holding a hand-made upgrade.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/upgrader.rs"]
mod support;

use std::time::Duration;

use e2e::runtime_sdk::{ClusterApi, make_certificates, request_cluster};
use e2e::{Manager, TestEnv, e2e_env};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use support::*;

const CCCU: &str = "ClusterClassClusterUpgrader";
/// The Service name the certificate is made for, as `config/extension` names it.
const DNS: &str = "kubernetes-upgrader-extension.kubernetes-upgrader-system.svc";

/// The manager serving the extension, the stand-in that discovered it, and the cert folder.
struct Served {
    _manager: Manager,
    capi: ClusterApi,
    _certs: tempfile::TempDir,
}

/// Images (name, version, id) labelled for Plan `p` (range `v1.30.x`, so the upgrader itself
/// never moves the Cluster), Cluster `c` at v1.30.5 with the v1.30.5 image, upgrader `u` with
/// `spec` merged.
async fn objects(env: &TestEnv, images: &[(&str, &str, &str)], spec: Value) {
    for (name, version, id) in images {
        static_image(env, name, version, id).await.unwrap();
    }
    plan(env, "p", "v1.30.x").await.unwrap();
    cluster(
        env,
        "v1beta1",
        "c",
        "v1.30.5",
        json!({"spec": {"topology": {"variables": [{"name": "image", "value": "i-130"}]}}}),
    )
    .await
    .unwrap();
    let mut upgrader_spec = json!({"topologyVariable": "image"});
    merge(&mut upgrader_spec, &spec);
    upgrader(env, CCCU, "u", "c", "p", upgrader_spec)
        .await
        .unwrap();
}

/// The test's CA and serving certificate; `None` (after a skip line) without `openssl`.
fn certificates(env: &TestEnv) -> Option<tempfile::TempDir> {
    let certs = tempfile::tempdir().unwrap();
    if make_certificates(certs.path(), DNS).unwrap() {
        Some(certs)
    } else {
        e2e::cluster::skip(
            &env.test,
            "needs openssl to make the extension's certificates",
        );
        None
    }
}

/// A manager serving the extension on a free loopback port, not waited for, and a stand-in
/// pointed at it (nothing discovered yet).
fn spawn(certs: &std::path::Path, options: e2e::ManagerOptions) -> (Manager, ClusterApi) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let options = options.with_args(&[
        &format!("--extension-bind-address={address}"),
        &format!("--extension-cert-dir={}", certs.display()),
    ]);
    let manager = Manager::spawn(options).unwrap();
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    (
        manager,
        ClusterApi::new(DNS, address.parse().unwrap(), &ca).unwrap(),
    )
}

/// [`objects`], then the manager serving the extension, ready, and the stand-in that
/// discovered it. `None` (after a skip line) without `openssl`.
async fn serve(env: &TestEnv, images: &[(&str, &str, &str)], spec: Value) -> Option<Served> {
    objects(env, images, spec).await;
    let certs = certificates(env)?;
    let (mut manager, mut capi) = spawn(certs.path(), env.manager_options());
    manager.wait_ready(Duration::from_secs(60)).await.unwrap();
    let discovered = capi.discover().await.unwrap();
    assert_eq!(
        discovered["handlers"].as_array().unwrap().len(),
        6,
        "{discovered}"
    );
    Some(Served {
        _manager: manager,
        capi,
        _certs: certs,
    })
}

/// A hand edit of `spec.topology.version`, as `kubectl edit cluster` makes it; returns the
/// Cluster as Cluster API sends it to the extension.
async fn hand_edit(env: &TestEnv, version: &str) -> Value {
    let edited = clusters(env, "v1beta1")
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"topology": {"version": version}}})),
        )
        .await
        .unwrap();
    request_cluster(&edited).unwrap()
}

const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_minor_jump_walks_each_minor_through_built_images() {
    let env = e2e_env!("a_two_minor_jump_walks_each_minor_through_built_images");
    let images = [
        ("img-1-30-5", "v1.30.5", "i-130"),
        ("img-1-31-2", "v1.31.2", "i-131-2"),
        ("img-1-31-4", "v1.31.4", "i-131-4"),
        ("img-1-32-1", "v1.32.1", "i-132-1"),
        ("img-1-32-3", "v1.32.3", "i-132-3"),
    ];
    let Some(mut served) = serve(&env, &images, json!({})).await else {
        return;
    };
    let cluster = hand_edit(&env, "v1.32.1").await;
    let plan = served
        .capi
        .plan(&cluster, "v1.30.5", "v1.32.1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plan, ["v1.31.4", "v1.32.1"]);
    served
        .capi
        .walk(&cluster, "v1.30.5", &plan, PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        served.capi.trace(),
        [
            "GenerateUpgradePlan(v1.30.5->v1.32.1)=0",
            "BeforeClusterUpgrade(v1.30.5->v1.32.1)=0",
            "BeforeControlPlaneUpgrade(v1.30.5->v1.31.4)=0",
            "AfterControlPlaneUpgrade(v1.31.4)=0",
            "BeforeControlPlaneUpgrade(v1.31.4->v1.32.1)=0",
            "AfterControlPlaneUpgrade(v1.32.1)=0",
            "BeforeWorkersUpgrade(v1.30.5->v1.32.1)=0",
            "AfterWorkersUpgrade(v1.32.1)=0",
        ]
    );
    // The upgrader wrote nothing of its own meanwhile: the version is the hand-made one.
    assert_eq!(
        topology(&env, "v1beta1", "c").await.unwrap()["version"],
        "v1.32.1"
    );

    // A Cluster no upgrader names is not ours: its hooks pass, its plan is refused.
    let mut stray = cluster.clone();
    stray["metadata"]["name"] = json!("stray");
    let refused = served
        .capi
        .plan(&stray, "v1.30.5", "v1.32.1")
        .await
        .unwrap()
        .unwrap_err();
    assert!(refused.contains("names this Cluster"), "{refused}");
    let answer = served
        .capi
        .call(
            "BeforeClusterUpgrade",
            String::new(),
            json!({"cluster": stray, "fromKubernetesVersion": "v1.30.5", "toKubernetesVersion": "v1.32.1"}),
        )
        .await
        .unwrap();
    assert_eq!(answer["retryAfterSeconds"], 0, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_intermediate_image_refuses_the_plan_until_it_is_built() {
    let env = e2e_env!("a_missing_intermediate_image_refuses_the_plan_until_it_is_built");
    let images = [
        ("img-1-30-5", "v1.30.5", "i-130"),
        ("img-1-32-1", "v1.32.1", "i-132-1"),
    ];
    let Some(mut served) = serve(&env, &images, json!({})).await else {
        return;
    };
    let cluster = hand_edit(&env, "v1.32.1").await;
    let refused = served
        .capi
        .plan(&cluster, "v1.30.5", "v1.32.1")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        refused,
        format!("no ready image of minor 1.31 in Plan {}/p", env.namespace)
    );
    // Cluster API moves nothing on a refused plan: no lifecycle hook was asked.
    assert_eq!(served.capi.calls.len(), 1);

    // Once v1.31 is built, the same question gets a plan through it.
    static_image(&env, "img-1-31-4", "v1.31.4", "i-131-4")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let plan = loop {
        match served
            .capi
            .plan(&cluster, "v1.30.5", "v1.32.1")
            .await
            .unwrap()
        {
            Ok(plan) => break plan,
            Err(message) if std::time::Instant::now() < deadline => {
                assert!(message.contains("minor 1.31"), "{message}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(message) => panic!("still refused: {message}"),
        }
    };
    assert_eq!(plan, ["v1.31.4", "v1.32.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_upgrader_holds_a_hand_made_upgrade() {
    let env = e2e_env!("a_paused_upgrader_holds_a_hand_made_upgrade");
    let images = [
        ("img-1-30-5", "v1.30.5", "i-130"),
        ("img-1-31-4", "v1.31.4", "i-131-4"),
    ];
    let Some(mut served) = serve(&env, &images, json!({"paused": true})).await else {
        return;
    };
    let cluster = hand_edit(&env, "v1.31.4").await;
    let plan = served
        .capi
        .plan(&cluster, "v1.30.5", "v1.31.4")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plan, ["v1.31.4"]);
    let request = json!({"cluster": cluster, "fromKubernetesVersion": "v1.30.5", "toKubernetesVersion": "v1.31.4",
                         "controlPlaneUpgrades": [{"version": "v1.31.4"}], "workersUpgrades": [{"version": "v1.31.4"}]});
    let held = served
        .capi
        .call(
            "BeforeClusterUpgrade",
            "v1.30.5->v1.31.4".into(),
            request.clone(),
        )
        .await
        .unwrap();
    assert_eq!(held["status"], "Success");
    assert_eq!(held["retryAfterSeconds"], 30, "{held}");
    assert_eq!(
        held["message"],
        "ClusterClassClusterUpgrader/u holds the upgrade: spec.paused is true"
    );

    // Unpaused, the next call, after the 30 s asked for, lets the upgrade start.
    upgraders(&env, CCCU)
        .patch(
            "u",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    served
        .capi
        .walk(&cluster, "v1.30.5", &plan, PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        served.capi.trace(),
        [
            "GenerateUpgradePlan(v1.30.5->v1.31.4)=0",
            "BeforeClusterUpgrade(v1.30.5->v1.31.4)=30",
            "BeforeClusterUpgrade(v1.30.5->v1.31.4)=0",
            "BeforeControlPlaneUpgrade(v1.30.5->v1.31.4)=0",
            "AfterControlPlaneUpgrade(v1.31.4)=0",
            "BeforeWorkersUpgrade(v1.30.5->v1.31.4)=0",
            "AfterWorkersUpgrade(v1.31.4)=0",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_outside_the_window_waits_until_it_opens() {
    let env = e2e_env!("a_hand_edit_outside_the_window_waits_until_it_opens");
    let images = [
        ("img-1-30-5", "v1.30.5", "i-130"),
        ("img-1-31-4", "v1.31.4", "i-131-4"),
    ];
    let Some(mut served) = serve(&env, &images, json!({})).await else {
        return;
    };
    let cluster = hand_edit(&env, "v1.31.4").await;
    // A window that opens once an hour, for a minute, 30 s from now: closed when the upgrade
    // is asked for (set once the manager runs, so that its start does not eat the wait).
    let opens = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 30;
    let schedule = format!("{} {} * * * *", opens % 60, (opens / 60) % 60);
    upgraders(&env, CCCU)
        .patch(
            "u",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maintenanceWindow": {"schedule": schedule, "duration": "1m", "timeZone": "UTC"}}})),
        )
        .await
        .unwrap();
    // The extension reads the upgrader from the manager's cache.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let request = json!({"cluster": cluster, "fromKubernetesVersion": "v1.30.5", "toKubernetesVersion": "v1.31.4"});
    served
        .capi
        .until_passes(
            "BeforeClusterUpgrade",
            "v1.30.5->v1.31.4",
            request,
            PATIENCE,
        )
        .await
        .unwrap();
    let calls = &served.capi.calls;
    assert_eq!(calls.len(), 2, "{:?}", served.capi.trace());
    // Held until the opening (under 30 s away), then let through at once.
    assert!((1..=30).contains(&calls[0].retry), "{:?}", calls[0]);
    assert!(
        calls[0]
            .message
            .contains("the maintenance window is closed; it opens at"),
        "{}",
        calls[0].message
    );
    assert_eq!(calls[1].retry, 0, "{:?}", calls[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_boot_on_an_elemental_host_holds_the_next_part() {
    use api::v1alpha1::{MachineImage, OS_IMAGE_STAMP_ANNOTATION};
    use e2e::elemental::{Fleet, Host, OsImage, Workload, elemental_machines};
    use k8s_openapi::api::core::v1::Node;

    let env = e2e_env!("a_fallback_boot_on_an_elemental_host_holds_the_next_part");
    let Some(workload) = Workload::start(&env).await.unwrap() else {
        return;
    };
    let old = OsImage::of_version("v1.30.5", 1);
    let new = OsImage::of_version("v1.31.4", 2);
    let hosts = vec![Host::control_plane("cp0"), Host::worker("w0", "md-0")];
    let fleet = Fleet::create(&env.client, &env.namespace, "c", hosts, &workload, &old)
        .await
        .unwrap();
    let Some(mut served) = serve(&env, &[], json!({})).await else {
        return;
    };
    let images: kube::Api<MachineImage> = env.api();
    for (name, version, image) in [("os-old", "v1.30.5", &old), ("os-new", "v1.31.4", &new)] {
        static_image(&env, name, version, &image.uri).await.unwrap();
        images
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {OS_IMAGE_STAMP_ANNOTATION: image.stamp}}}),
                ),
            )
            .await
            .unwrap();
    }
    let cluster = hand_edit(&env, "v1.31.4").await;
    // The control plane's machine was rolled to the new image, and its host came back on the
    // old snapshot: the agent's "done" is not the booted image.
    let cp = &fleet.hosts[0];
    elemental_machines(&env.client, &env.namespace)
        .patch(
            &cp.elemental_machine(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"osVersionManagement": {"osVersion": {"imageUri": new.uri}}}}),
            ),
        )
        .await
        .unwrap();
    let after_cp = json!({"cluster": cluster, "kubernetesVersion": "v1.31.4",
                          "workersUpgrades": [{"version": "v1.31.4"}]});
    let deadline = std::time::Instant::now() + WAIT;
    let held = loop {
        // The stamps come from the cache, which sees the annotations shortly.
        let answer = served
            .capi
            .call(
                "AfterControlPlaneUpgrade",
                "v1.31.4".into(),
                after_cp.clone(),
            )
            .await
            .unwrap();
        if answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("booted"))
            || std::time::Instant::now() > deadline
        {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(held["status"], "Success", "{held}");
    assert_eq!(held["retryAfterSeconds"], 30, "{held}");
    assert_eq!(
        held["message"],
        format!(
            "ElementalHost {} (Machine {}): it booted \"{}\", not {} of its image {} (a fallback boot?)",
            cp.host(),
            cp.machine(),
            old.os_release(),
            new.stamp,
            new.uri
        )
    );
    // The workers, on their own image and booted from it, are not held by the control plane.
    let workers = served
        .capi
        .call(
            "AfterWorkersUpgrade",
            "v1.31.4".into(),
            json!({"cluster": cluster, "kubernetesVersion": "v1.31.4"}),
        )
        .await
        .unwrap();
    assert_eq!(workers["retryAfterSeconds"], 0, "{workers}");

    // The host boots the new image: after the 30 s asked for, the next part may start.
    workload
        .nodes()
        .patch_status(
            &cp.node(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeInfo": {"osImage": new.os_release()}}})),
        )
        .await
        .unwrap();
    let _: Node = workload.node(&cp.node()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    served
        .capi
        .until_passes("AfterControlPlaneUpgrade", "v1.31.4", after_cp, PATIENCE)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_answers_hooks_and_a_standby_takes_over() {
    let env = e2e_env!("only_the_leader_answers_hooks_and_a_standby_takes_over");
    let images = [
        ("img-1-30-5", "v1.30.5", "i-130"),
        ("img-1-31-4", "v1.31.4", "i-131-4"),
    ];
    objects(&env, &images, json!({})).await;
    let Some(certs) = certificates(&env) else {
        return;
    };
    let elected = |label: &str| {
        env.manager_options()
            .with_leader_election(&env.namespace)
            .labelled(label)
    };
    let (mut leader, mut leader_capi) = spawn(certs.path(), elected("leader"));
    leader.wait_ready(Duration::from_secs(60)).await.unwrap();
    let (mut standby, mut standby_capi) = spawn(certs.path(), elected("standby"));
    let cluster = hand_edit(&env, "v1.31.4").await;

    // The standby answers Discovery (Cluster API's warm-up needs it at once), is not ready, and
    // fails every hook: Cluster API holds rather than hear a replica without caches.
    let deadline = std::time::Instant::now() + WAIT;
    let discovered = loop {
        match standby_capi.discover().await {
            Ok(answer) => break answer,
            Err(err) if std::time::Instant::now() > deadline => panic!("no Discovery: {err:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(discovered["status"], "Success");
    let standby_ready = e2e::eventually("the standby's /readyz", WAIT, || async {
        Ok(standby.readyz().await)
    })
    .await
    .unwrap();
    assert_eq!(standby_ready, 503, "a standby is not ready");
    let refused = standby_capi
        .plan(&cluster, "v1.30.5", "v1.31.4")
        .await
        .unwrap()
        .unwrap_err();
    assert!(refused.contains("does not lead"), "{refused}");
    leader_capi.discover().await.unwrap();
    assert_eq!(
        leader_capi
            .plan(&cluster, "v1.30.5", "v1.31.4")
            .await
            .unwrap(),
        Ok(vec!["v1.31.4".to_owned()])
    );

    // The leader goes: the standby takes the lease, becomes ready and answers.
    leader.terminate(Duration::from_secs(10)).await.unwrap();
    standby.wait_ready(Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        standby_capi
            .plan(&cluster, "v1.30.5", "v1.31.4")
            .await
            .unwrap(),
        Ok(vec!["v1.31.4".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extension_config_as_kustomize_renders_it_is_accepted_cluster_scoped() {
    use e2e::manifests;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    let env = e2e_env!("the_extension_config_as_kustomize_renders_it_is_accepted_cluster_scoped");
    // Cluster API's ExtensionConfig CRD, reduced to its scope and version.
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "extensionconfigs.runtime.cluster.x-k8s.io"},
        "spec": {
            "group": "runtime.cluster.x-k8s.io",
            "names": {"kind": "ExtensionConfig", "listKind": "ExtensionConfigList", "plural": "extensionconfigs", "singular": "extensionconfig"},
            "scope": "Cluster",
            "versions": [{"name": "v1beta2", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}],
        },
    });
    manifests::apply(&env.client, &crd, &env.namespace)
        .await
        .unwrap();
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(env.client.clone());
    e2e::install::wait_established(&crds, "extensionconfigs.runtime.cluster.x-k8s.io", WAIT)
        .await
        .unwrap();
    let path = manifests::workspace_root().join("config/extension/extensionconfig.yaml");
    let mut doc = manifests::load_yaml_docs(&path).unwrap().remove(0);
    // config/default's namespace transformer sets its namespace on every object, this
    // cluster-scoped one included; the API server drops it.
    doc["metadata"]["namespace"] = json!("kubernetes-upgrader-system");
    let applied = e2e::eventually("the ExtensionConfig applied", WAIT, || {
        let doc = doc.clone();
        let client = env.client.clone();
        let namespace = env.namespace.clone();
        async move { Ok(manifests::apply(&client, &doc, &namespace).await.ok()) }
    })
    .await
    .unwrap();
    assert_eq!(applied.metadata.namespace, None);
    assert_eq!(
        applied.metadata.annotations.unwrap()["runtime.cluster.x-k8s.io/inject-ca-from-secret"],
        "kubernetes-upgrader-system/extension-serving-cert"
    );
    assert_eq!(
        applied.data["spec"]["clientConfig"]["service"]["name"],
        "kubernetes-upgrader-extension"
    );
}
