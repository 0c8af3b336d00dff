//! The upgrader on a real API server with the minimal Cluster CRD, whose `spec.topology.variables`
//! is an atomic list: static images → Plan → upgrader → Cluster, one minor per step, each step
//! waiting for the previous one to finish (written through Cluster status), and every gate
//! holding without a write.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/upgrader.rs"]
mod support;

use std::time::Duration;

use e2e::{condition_reason, condition_status, e2e_env};
use serde_json::json;
use support::*;

const CCCU: &str = "ClusterClassClusterUpgrader";
const ICUA: &str = "InClusterUpgradeAutomation";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_one_minor_at_a_time_and_waits_for_each_step_to_finish() {
    let env = e2e_env!("steps_one_minor_at_a_time_and_waits_for_each_step_to_finish");
    static_image(&env, "img-1-30-1", "v1.30.1", "i-130")
        .await
        .unwrap();
    static_image(&env, "img-1-31-2", "v1.31.2", "i-131")
        .await
        .unwrap();
    plan(&env, "p", ">=1.29.0").await.unwrap();
    cluster(&env, "v1beta1", "c", "v1.29.4", json!({}))
        .await
        .unwrap();
    upgrader(
        &env,
        CCCU,
        "u",
        "c",
        "p",
        json!({"topologyVariable": "image"}),
    )
    .await
    .unwrap();
    let _manager = env.start_manager().await.unwrap();

    // First step: 1.30 (the highest ready image of the next minor), with its image, in one write.
    let t = wait_version(&env, "v1beta1", "c", "v1.30.1").await.unwrap();
    assert_eq!(variable(&t, "image"), Some(&json!("i-130")));
    assert_eq!(
        variable(&t, "other"),
        Some(&json!({"keep": true})),
        "the other variable survives"
    );
    assert_eq!(t["class"], "quick-start");

    // Not finished yet: the second step waits.
    let u = wait_reason(&env, CCCU, "u", "Progressing", "PreviousStepUnfinished")
        .await
        .unwrap();
    assert_eq!(u["status"]["nextStep"]["version"], "v1.31.2");
    assert_eq!(u["status"]["latestSetVersion"], "v1.30.1");
    let before = resource_version(&env, "v1beta1", "c").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        resource_version(&env, "v1beta1", "c").await.unwrap(),
        before,
        "no write while unfinished"
    );

    // Cluster API reports the first step finished: the second goes.
    finish(&env, "v1beta1", "c", "v1.30.1").await.unwrap();
    let t = wait_version(&env, "v1beta1", "c", "v1.31.2").await.unwrap();
    assert_eq!(variable(&t, "image"), Some(&json!("i-131")));
    assert_eq!(variable(&t, "other"), Some(&json!({"keep": true})));

    finish(&env, "v1beta1", "c", "v1.31.2").await.unwrap();
    let u = wait_reason(&env, CCCU, "u", "Ready", "ClusterUsingLatestVersion")
        .await
        .unwrap();
    assert_eq!(condition_status(&u, "Ready").as_deref(), Some("True"));
    assert_eq!(u["status"]["latestSetVersion"], "v1.31.2");
    let history = u["status"]["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(
        (history[0]["from"].as_str(), history[0]["to"].as_str()),
        (Some("v1.29.4"), Some("v1.30.1"))
    );
    assert!(history[0]["finished"].is_string());
    assert_eq!(history[1]["to"], "v1.31.2");
    assert!(u["status"]["nextStep"].is_null());

    // Steady state: no write to the Cluster or the upgrader.
    let cluster_rv = resource_version(&env, "v1beta1", "c").await.unwrap();
    let upgrader_rv =
        upgrader_json(&env, CCCU, "u").await.unwrap()["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        resource_version(&env, "v1beta1", "c").await.unwrap(),
        cluster_rv
    );
    assert_eq!(
        upgrader_json(&env, CCCU, "u").await.unwrap()["metadata"]["resourceVersion"],
        upgrader_rv
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gate_holds_without_writing_the_cluster() {
    let env = e2e_env!("every_gate_holds_without_writing_the_cluster");
    static_image(&env, "img-1-30-1", "v1.30.1", "i-130")
        .await
        .unwrap();
    static_image(&env, "img-1-31-2", "v1.31.2", "i-131")
        .await
        .unwrap();
    plan(&env, "p", ">=1.29.0").await.unwrap();
    let cases = [
        (
            "paused",
            CCCU,
            json!({}),
            json!({"paused": true}),
            "Paused",
            "Paused",
        ),
        (
            "cluster-paused",
            ICUA,
            json!({"metadata": {"annotations": {"cluster.x-k8s.io/paused": ""}}}),
            json!({}),
            "Blocked",
            "ClusterPaused",
        ),
        (
            "cluster-spec-paused",
            CCCU,
            json!({"spec": {"paused": true}}),
            json!({}),
            "Blocked",
            "ClusterPaused",
        ),
        (
            "window",
            CCCU,
            json!({}),
            json!({"maintenanceWindow": {"schedule": "0 0 1 1 *", "duration": "1m", "timeZone": "Europe/Berlin"}}),
            "Blocked",
            "OutsideMaintenanceWindow",
        ),
        (
            "dry-run",
            ICUA,
            json!({}),
            json!({"dryRun": true}),
            "Ready",
            "DryRun",
        ),
        (
            "no-variable",
            CCCU,
            json!({}),
            json!({"topologyVariable": "missing"}),
            "Blocked",
            "TopologyVariableNotFound",
        ),
    ];
    for (name, kind, cluster_extra, spec, _, _) in &cases {
        cluster(&env, "v1beta1", name, "v1.30.1", cluster_extra.clone())
            .await
            .unwrap();
        upgrader(&env, kind, name, name, "p", spec.clone())
            .await
            .unwrap();
    }
    // Two minors ahead with no image of the minor between.
    cluster(&env, "v1beta1", "far", "v1.28.0", json!({}))
        .await
        .unwrap();
    upgrader(&env, CCCU, "far", "far", "p", json!({}))
        .await
        .unwrap();
    // Not built from a ClusterClass.
    let plain = json!({"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "metadata": {"name": "plain"}, "spec": {}});
    clusters(&env, "v1beta1")
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(plain).unwrap(),
        )
        .await
        .unwrap();
    upgrader(&env, CCCU, "plain", "plain", "p", json!({}))
        .await
        .unwrap();

    let mut versions = Vec::new();
    for (name, ..) in &cases {
        versions.push(resource_version(&env, "v1beta1", name).await.unwrap());
    }
    let far_version = resource_version(&env, "v1beta1", "far").await.unwrap();
    let _manager = env.start_manager().await.unwrap();

    for (name, kind, _, _, type_, reason) in &cases {
        let u = wait_reason(&env, kind, name, type_, reason).await.unwrap();
        if *reason == "OutsideMaintenanceWindow" {
            assert!(u["status"]["nextStep"]["notBefore"].is_string(), "{u}");
        }
        if *reason == "DryRun" {
            assert_eq!(u["status"]["nextStep"]["version"], "v1.31.2");
            assert_eq!(u["status"]["nextStep"]["reason"], "DryRun");
        }
        if *reason == "Paused" {
            assert_eq!(condition_status(&u, "Paused").as_deref(), Some("True"));
        }
    }
    let far = wait_reason(&env, CCCU, "far", "Blocked", "NoImageForIntermediateMinor")
        .await
        .unwrap();
    assert_eq!(condition_status(&far, "Blocked").as_deref(), Some("True"));
    let plain = wait_reason(&env, CCCU, "plain", "Blocked", "ClusterNotClassBased")
        .await
        .unwrap();
    assert_eq!(
        condition_reason(&plain, "Ready").as_deref(),
        Some("ClusterNotClassBased")
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    for ((name, ..), before) in cases.iter().zip(&versions) {
        assert_eq!(
            &resource_version(&env, "v1beta1", name).await.unwrap(),
            before,
            "{name} was written"
        );
        assert_eq!(
            topology(&env, "v1beta1", name).await.unwrap()["version"],
            "v1.30.1"
        );
    }
    assert_eq!(
        resource_version(&env, "v1beta1", "far").await.unwrap(),
        far_version
    );

    // Unpausing lets the step go.
    let api = upgraders(&env, CCCU);
    api.patch(
        "paused",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await
    .unwrap();
    wait_version(&env, "v1beta1", "paused", "v1.31.2")
        .await
        .unwrap();
}

/// A refused Cluster write fails the reconcile once, and that failure is one Warning
/// (`ErrorUpdatingVersion`), seen through the running manager: never a second Warning for the same
/// failure under another reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cluster_write_is_one_warning_per_failed_reconcile() {
    let env = e2e_env!("a_refused_cluster_write_is_one_warning_per_failed_reconcile");
    static_image(&env, "img-1-30-1", "v1.30.1", "i-130")
        .await
        .unwrap();
    plan(&env, "p", ">=1.29.0").await.unwrap();
    cluster(&env, "v1beta1", "c", "v1.29.4", json!({}))
        .await
        .unwrap();
    // Cluster updates in this namespace are refused by an admission policy.
    let name = format!("freeze-{}", env.namespace);
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["cluster.x-k8s.io"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["clusters"],
            }]},
            "matchConditions": [{"name": "this-test", "expression": format!("object.metadata.namespace == '{}'", env.namespace)}],
            "validations": [{"expression": "false", "message": "clusters are frozen in this namespace"}],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    });
    e2e::manifests::apply(&env.client, &policy, "e2e")
        .await
        .unwrap();
    e2e::manifests::apply(&env.client, &binding, "e2e")
        .await
        .unwrap();
    let clusters = support::clusters(&env, "v1beta1");
    e2e::eventually("the freeze in force", Duration::from_secs(30), || async {
        let refused = clusters
            .patch(
                "c",
                &kube::api::PatchParams {
                    dry_run: true,
                    ..Default::default()
                },
                &kube::api::Patch::Merge(json!({"metadata": {"labels": {"probe": "1"}}})),
            )
            .await
            .is_err();
        Ok(refused.then_some(()))
    })
    .await
    .unwrap();
    // The manager runs and the Plan has chosen before the upgrader exists, so its only failure is
    // the refused write.
    let manager = env.start_manager().await.unwrap();
    let plans: kube::Api<api::v1alpha1::Plan> = env.api();
    e2e::eventually(
        "the Plan chose v1.30.1",
        Duration::from_secs(30),
        || async {
            let plan = plans.get("p").await?;
            let version = plan
                .status
                .and_then(|s| s.machine_image_details)
                .and_then(|d| d.version);
            Ok((version.as_deref() == Some("v1.30.1")).then_some(()))
        },
    )
    .await
    .unwrap();
    upgrader(
        &env,
        CCCU,
        "u",
        "c",
        "p",
        json!({"topologyVariable": "image"}),
    )
    .await
    .unwrap();

    e2e::eventually(
        "a Warning for the refused write",
        Duration::from_secs(30),
        || async {
            let warnings = env.warnings("u").await?;
            Ok((!warnings.is_empty()).then_some(()))
        },
    )
    .await
    .unwrap();
    // A retry follows (10 s backoff): still one reason, once per failed reconcile.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let warnings = env.warnings("u").await.unwrap();
    let reasons: Vec<(Option<String>, Option<String>)> = warnings
        .iter()
        .map(|e| (e.reason.clone(), e.note.clone()))
        .collect();
    assert!(
        warnings
            .iter()
            .all(|e| e.reason.as_deref() == Some("ErrorUpdatingVersion")),
        "{reasons:?}\n{}",
        manager.log_tail()
    );
    let note = warnings[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("v1.30.1") && note.contains("frozen"),
        "{note}"
    );
    let failures = || async {
        let text = manager.metrics_text().await.unwrap();
        e2e::manager::metric_sum(
            &e2e::manager::parse_metrics(&text),
            "kubernetes_upgrader_reconcile_failures_total",
            &[
                ("controller", "clusterclassclusterupgrader"),
                ("category", "WriteCluster"),
            ],
        )
    };
    let before = failures().await;
    let published: i32 = env
        .warnings("u")
        .await
        .unwrap()
        .iter()
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum();
    let after = failures().await;
    assert!(before >= 1.0, "no failed reconcile counted");
    assert!(
        before <= f64::from(published) && f64::from(published) <= after,
        "one Warning per failed reconcile: {before}..={after} failures, {published} published: {reasons:?}"
    );
    assert_eq!(
        topology(&env, "v1beta1", "c").await.unwrap()["version"],
        "v1.29.4"
    );
    let bindings: kube::Api<
        k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding,
    > = kube::Api::all(env.client.clone());
    let policies: kube::Api<
        k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy,
    > = kube::Api::all(env.client.clone());
    let _ = bindings
        .delete(&name, &kube::api::DeleteParams::default())
        .await;
    let _ = policies
        .delete(&name, &kube::api::DeleteParams::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_upgraders_on_one_cluster_only_the_oldest_acts_and_the_next_takes_over() {
    let env = e2e_env!("two_upgraders_on_one_cluster_only_the_oldest_acts_and_the_next_takes_over");
    static_image(&env, "img-1-30-1", "v1.30.1", "i-130")
        .await
        .unwrap();
    static_image(&env, "img-1-31-2", "v1.31.2", "i-131")
        .await
        .unwrap();
    plan(&env, "p", ">=1.29.0").await.unwrap();
    cluster(&env, "v1beta1", "c", "v1.29.4", json!({}))
        .await
        .unwrap();
    let spec = json!({"topologyVariable": "image"});
    upgrader(&env, ICUA, "first", "c", "p", spec.clone())
        .await
        .unwrap();
    // creationTimestamp has one-second resolution: the second is strictly younger.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    upgrader(&env, CCCU, "second", "c", "p", spec)
        .await
        .unwrap();
    let _manager = env.start_manager().await.unwrap();

    // The older InClusterUpgradeAutomation acts; the younger ClusterClassClusterUpgrader holds.
    wait_version(&env, "v1beta1", "c", "v1.30.1").await.unwrap();
    let second = wait_reason(&env, CCCU, "second", "Blocked", "ClusterClaimed")
        .await
        .unwrap();
    let message = second["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Blocked")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("InClusterUpgradeAutomation/first"),
        "{message}"
    );
    assert!(second["status"]["history"].is_null(), "{second}");
    let first = wait_reason(&env, ICUA, "first", "Progressing", "PreviousStepUnfinished")
        .await
        .unwrap();
    assert_eq!(first["status"]["latestSetVersion"], "v1.30.1");

    // The step finishes while the acting one is gone: the next takes over and steps on.
    upgraders(&env, ICUA)
        .delete("first", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    finish(&env, "v1beta1", "c", "v1.30.1").await.unwrap();
    let t = wait_version(&env, "v1beta1", "c", "v1.31.2").await.unwrap();
    assert_eq!(variable(&t, "image"), Some(&json!("i-131")));
    let second = upgrader_json(&env, CCCU, "second").await.unwrap();
    assert_eq!(second["status"]["latestSetVersion"], "v1.31.2");
    assert_eq!(
        condition_reason(&second, "Blocked").as_deref(),
        Some("NotBlocked")
    );
}

/// A write of a step, or of a host's image, names the object's UID as read: when the object was
/// deleted (or deleted and made again) since, the API server refuses the apply instead of
/// creating an object holding nothing but our fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_never_recreates_a_deleted_cluster_or_elemental_machine() {
    use kube::ResourceExt as _;
    use kube::api::{DeleteParams, DynamicObject, PostParams};
    use kubernetes_upgrader::controllers::upgrader::{cluster, gates, in_place};

    let env = e2e_env!("an_apply_never_recreates_a_deleted_cluster_or_elemental_machine");
    let field_manager = "kubernetes-upgrader";
    let access = cluster::discover(&env.client).await.unwrap().unwrap();
    let step = gates::Step {
        from: "v1.30.5".into(),
        version: semver::Version::new(1, 31, 2),
        id: "i-131".into(),
        variable: None,
    };
    let write = |read: serde_json::Value| {
        let (client, access, step, namespace) =
            (env.client.clone(), &access, &step, env.namespace.clone());
        async move {
            cluster::write_step(&client, access, &namespace, "c", &read, step, field_manager).await
        }
    };
    let read_cluster = || async {
        serde_json::to_value(clusters(&env, "v1beta1").get("c").await.unwrap()).unwrap()
    };

    // Live: the step lands.
    cluster(&env, "v1beta1", "c", "v1.30.5", json!({}))
        .await
        .unwrap();
    let read = read_cluster().await;
    write(read.clone()).await.unwrap();
    assert_eq!(
        read_cluster().await["spec"]["topology"]["version"],
        "v1.31.2"
    );

    // Deleted since it was read: refused, and nothing is created.
    clusters(&env, "v1beta1")
        .delete("c", &DeleteParams::default())
        .await
        .unwrap();
    e2e::eventually("the Cluster gone", Duration::from_secs(30), || async {
        Ok(clusters(&env, "v1beta1")
            .get_opt("c")
            .await?
            .is_none()
            .then_some(()))
    })
    .await
    .unwrap();
    let refused = write(read.clone()).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        clusters(&env, "v1beta1")
            .get_opt("c")
            .await
            .unwrap()
            .is_none(),
        "no Cluster made"
    );

    // Made again under the same name: the old read does not write to the new object.
    cluster(&env, "v1beta1", "c", "v1.29.1", json!({}))
        .await
        .unwrap();
    assert!(write(read).await.is_err());
    assert_eq!(
        read_cluster().await["spec"]["topology"]["version"],
        "v1.29.1"
    );

    // The same for the ElementalMachine a host's image is applied to.
    e2e::elemental::install_crds(&env.client).await.unwrap();
    let machines: kube::Api<DynamicObject> = kube::Api::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &in_place::observe::elemental_resource(in_place::observe::ELEMENTAL_MACHINE),
    );
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
        "kind": "ElementalMachine",
        "metadata": {"name": "em"},
        "spec": {},
    }))
    .unwrap();
    let made = machines
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let uid = made.uid().unwrap();
    let image = "oci://registry.example/os@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let apply = |uid: String| {
        let (client, namespace) = (env.client.clone(), env.namespace.clone());
        async move {
            in_place::workload::apply_image(
                &client,
                &namespace,
                ("em", &uid),
                image,
                false,
                field_manager,
            )
            .await
        }
    };
    apply(uid.clone()).await.unwrap();
    let applied = machines.get("em").await.unwrap();
    assert_eq!(
        applied.data["spec"]["osVersionManagement"]["osVersion"]["imageUri"],
        image
    );
    machines
        .delete("em", &DeleteParams::default())
        .await
        .unwrap();
    e2e::eventually(
        "the ElementalMachine gone",
        Duration::from_secs(30),
        || async { Ok(machines.get_opt("em").await?.is_none().then_some(())) },
    )
    .await
    .unwrap();
    assert!(apply(uid).await.is_err());
    assert!(
        machines.get_opt("em").await.unwrap().is_none(),
        "no ElementalMachine made"
    );
}
