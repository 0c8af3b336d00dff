//! `kubernetes-upgrader status` against a real API server: the tree, as JSON and as text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use e2e::{e2e_env, manager};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const GROUP: &str = "kubernetesupgraded.dimitrikoshkin.com";

async fn create(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    plural: &str,
    body: Value,
    status: Option<Value>,
) {
    let (group, version) = if kind == "Cluster" {
        ("cluster.x-k8s.io", "v1beta1")
    } else {
        (GROUP, "v1alpha1")
    };
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let mut object: DynamicObject = serde_json::from_value(body).unwrap();
    object.types = Some(kube::api::TypeMeta {
        api_version: resource.api_version.clone(),
        kind: kind.to_owned(),
    });
    let created = api.create(&PostParams::default(), &object).await.unwrap();
    if let Some(status) = status {
        let name = created.metadata.name.clone().unwrap();
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
    }
}

fn ready(reason: &str) -> Value {
    json!([{"type": "Ready", "status": "True", "reason": reason, "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}])
}

fn status_cli(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(manager::binary().unwrap())
        .arg("status")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "status {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_pipeline_tree_from_source_to_cluster() {
    let env = e2e_env!("status_prints_the_pipeline_tree_from_source_to_cluster");
    let (client, ns) = (env.client.clone(), env.namespace.as_str());
    let pod =
        json!({"containers": [{"name": "build", "image": "busybox"}], "restartPolicy": "Never"});
    create(
        &client,
        ns,
        "DebianRepositorySource",
        "debianrepositorysources",
        json!({"metadata": {"name": "k8s"}, "spec": {"url": "https://example.invalid/Packages"}}),
        Some(json!({"versions": ["v1.31.0", "v1.31.2"], "conditions": ready("Synced")})),
    )
    .await;
    create(
        &client,
        ns,
        "MachineImageSyncer",
        "machineimagesyncers",
        json!({"metadata": {"name": "syncer"}, "spec": {"versionRange": "v1.31.x",
               "sourceRef": {"kind": "DebianRepositorySource", "name": "k8s"},
               "machineImageTemplateRef": {"name": "template"}}}),
        Some(json!({"latestVersion": "v1.31.2"})),
    )
    .await;
    create(&client, ns, "MachineImage", "machineimages",
        json!({"metadata": {"name": "syncer-v1.31.2-abcde", "labels": {
                 "kubernetes-upgrader.dimitrikoshkin.com/machine-image-syncer-name": "syncer"}},
               "spec": {"version": "v1.31.2", "id": "kindest/node:v1.31.2", "jobTemplate": {"spec": pod}}}),
        Some(json!({"ready": true, "phase": "Created", "conditions": ready("Built")}))).await;
    create(
        &client,
        ns,
        "Plan",
        "plans",
        json!({"metadata": {"name": "plan"}, "spec": {"versionRange": "v1.31.x"}}),
        Some(json!({"phase": "FoundMachineImage",
                    "machineImageDetails": {"version": "v1.31.2", "id": "kindest/node:v1.31.2"}})),
    )
    .await;
    create(&client, ns, "ClusterClassClusterUpgrader", "clusterclassclusterupgraders",
        json!({"metadata": {"name": "upgrader"}, "spec": {"clusterName": "prod", "planRef": {"name": "plan"}}}),
        Some(json!({"latestSetVersion": "v1.31.2"}))).await;
    create(&client, ns, "Cluster", "clusters",
        json!({"metadata": {"name": "prod"}, "spec": {"topology": {"class": "quick-start", "version": "v1.31.2"}}}),
        None).await;

    let json_out: Value =
        serde_json::from_str(&status_cli(env.kubeconfig(), &["-n", ns, "-o", "json"])).unwrap();
    assert_eq!(json_out.as_array().unwrap().len(), 1, "{json_out:#}");
    let items = &json_out[0]["items"];
    assert_eq!(items[0]["kind"], "DebianRepositorySource");
    assert_eq!(items[0]["details"][0], "2 versions, v1.31.0 … v1.31.2");
    let image = &items[0]["children"][0]["children"][0];
    assert_eq!(image["name"], "syncer-v1.31.2-abcde");
    assert_eq!(image["health"], "Ok");
    let upgrader = &items[1]["children"][0];
    assert_eq!(upgrader["kind"], "ClusterClassClusterUpgrader");
    assert_eq!(upgrader["children"][0]["details"][0], "topology v1.31.2");

    // Not a terminal: plain text, no escape codes.
    let text = status_cli(env.kubeconfig(), &["-n", ns]);
    assert!(text.starts_with(&format!("NAMESPACE {ns}\n")), "{text}");
    assert!(
        text.contains("└─Cluster/prod  Unknown  topology v1.31.2  class quick-start\n"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "{text}");

    // -A shows this namespace among the others.
    let all: Value =
        serde_json::from_str(&status_cli(env.kubeconfig(), &["-A", "-o", "json"])).unwrap();
    assert!(all.as_array().unwrap().iter().any(|n| n["namespace"] == ns));
}
