//! Contract tests: request bodies shaped exactly as Cluster API sends them (v1beta1 and v1beta2
//! Clusters, unknown fields), responses compared byte for byte with the protocol's field names,
//! and the HTTPS server end to end on loopback.

use std::sync::Arc;

use api::v1alpha1::{ClusterClassClusterUpgrader, InClusterUpgradeAutomation, MachineImage, Plan};
use serde_json::{Value, json};

use super::observe::{Observer, Stores, store_of};
use super::wire::{self, Hook};
use super::*;
use crate::runtime::fixtures::mock_client;

const HV: &str = r#""apiVersion":"hooks.runtime.cluster.x-k8s.io/v1alpha1""#;

/// The v1beta2 Cluster of the protocol's examples.
const C2: &str = r#"{"apiVersion":"cluster.x-k8s.io/v1beta2","kind":"Cluster","metadata":{"name":"prod","namespace":"fleet","generation":7,"creationTimestamp":"2025-03-01T10:00:00Z","labels":{"topology.cluster.x-k8s.io/owned":""}},"spec":{"controlPlaneRef":{"apiGroup":"controlplane.cluster.x-k8s.io","kind":"KubeadmControlPlane","name":"prod-x7k2p"},"topology":{"classRef":{"name":"quick-start"},"version":"v1.32.1","controlPlane":{"replicas":3},"workers":{"machineDeployments":[{"class":"default-worker","name":"md-0","replicas":2}]},"variables":[{"name":"imageID","value":"img-1.30.5"}]}}}"#;

/// The v1beta1 Cluster Cluster API 1.12 and 1.13 send to lifecycle hooks: `class`, an empty
/// status.
const C1: &str = r#"{"apiVersion":"cluster.x-k8s.io/v1beta1","kind":"Cluster","metadata":{"name":"prod","namespace":"fleet","generation":7,"creationTimestamp":"2025-03-01T10:00:00Z","labels":{"topology.cluster.x-k8s.io/owned":""}},"spec":{"controlPlaneRef":{"apiVersion":"controlplane.cluster.x-k8s.io/v1beta1","kind":"KubeadmControlPlane","name":"prod-x7k2p"},"topology":{"class":"quick-start","version":"v1.32.1","controlPlane":{"replicas":3},"workers":{"machineDeployments":[{"class":"default-worker","name":"md-0","replicas":2}]},"variables":[{"name":"imageID","value":"img-1.30.5"}]}},"status":{"infrastructureReady":false,"controlPlaneReady":false}}"#;

fn body(text: &str) -> String {
    text.replace("HV", HV).replace("C2", C2).replace("C1", C1)
}

#[test]
fn paths_are_the_lowercase_hook_then_the_handler() {
    assert_eq!(
        wire::discovery_path(),
        "/hooks.runtime.cluster.x-k8s.io/v1alpha1/discovery"
    );
    assert_eq!(
        Hook::GenerateUpgradePlan.path(),
        "/hooks.runtime.cluster.x-k8s.io/v1alpha1/generateupgradeplan/generate-upgrade-plan"
    );
    let paths: Vec<String> = Hook::ALL.iter().map(|h| h.path()).collect();
    assert_eq!(
        paths[1..],
        [
            "/hooks.runtime.cluster.x-k8s.io/v1alpha1/beforeclusterupgrade/before-cluster-upgrade",
            "/hooks.runtime.cluster.x-k8s.io/v1alpha1/beforecontrolplaneupgrade/before-control-plane-upgrade",
            "/hooks.runtime.cluster.x-k8s.io/v1alpha1/aftercontrolplaneupgrade/after-control-plane-upgrade",
            "/hooks.runtime.cluster.x-k8s.io/v1alpha1/beforeworkersupgrade/before-workers-upgrade",
            "/hooks.runtime.cluster.x-k8s.io/v1alpha1/afterworkersupgrade/after-workers-upgrade",
        ]
    );
}

#[test]
fn discovery_names_every_hook_with_fail_and_ten_seconds_byte_for_byte() {
    let text = serde_json::to_string(&wire::discovery()).unwrap();
    let handler = |name: &str, hook: &str| {
        format!(
            r#"{{"name":"{name}","requestHook":{{{HV},"hook":"{hook}"}},"timeoutSeconds":10,"failurePolicy":"Fail"}}"#
        )
    };
    let expected = format!(
        r#"{{{HV},"kind":"DiscoveryResponse","status":"Success","handlers":[{}]}}"#,
        [
            handler("generate-upgrade-plan", "GenerateUpgradePlan"),
            handler("before-cluster-upgrade", "BeforeClusterUpgrade"),
            handler("before-control-plane-upgrade", "BeforeControlPlaneUpgrade"),
            handler("after-control-plane-upgrade", "AfterControlPlaneUpgrade"),
            handler("before-workers-upgrade", "BeforeWorkersUpgrade"),
            handler("after-workers-upgrade", "AfterWorkersUpgrade"),
        ]
        .join(",")
    );
    assert_eq!(text, expected);
    // Handler names are DNS-1123 labels, unique.
    for hook in Hook::ALL {
        let name = hook.handler();
        assert!(name.len() <= 63 && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
    }
}

#[test]
fn lifecycle_responses_match_the_protocol_byte_for_byte() {
    let hold = wire::HookResponse::success(
        Hook::BeforeClusterUpgrade,
        600,
        "maintenance window closed; opens 2025-03-08T02:00:00Z",
    );
    assert_eq!(
        serde_json::to_string(&hold).unwrap(),
        body(
            r#"{HV,"kind":"BeforeClusterUpgradeResponse","status":"Success","message":"maintenance window closed; opens 2025-03-08T02:00:00Z","retryAfterSeconds":600}"#
        )
    );
    let pass = wire::HookResponse::success(Hook::AfterWorkersUpgrade, 0, "");
    assert_eq!(
        serde_json::to_string(&pass).unwrap(),
        body(
            r#"{HV,"kind":"AfterWorkersUpgradeResponse","status":"Success","retryAfterSeconds":0}"#
        )
    );
    let refused =
        wire::HookResponse::failure(Hook::AfterControlPlaneUpgrade, "cannot read ElementalHosts");
    assert_eq!(
        serde_json::to_string(&refused).unwrap(),
        body(
            r#"{HV,"kind":"AfterControlPlaneUpgradeResponse","status":"Failure","message":"cannot read ElementalHosts","retryAfterSeconds":0}"#
        )
    );
}

#[test]
fn plan_responses_match_the_protocol_byte_for_byte() {
    let plan = wire::GenerateUpgradePlanResponse::plan(vec!["v1.31.4".into(), "v1.32.1".into()]);
    assert_eq!(
        serde_json::to_string(&plan).unwrap(),
        body(
            r#"{HV,"kind":"GenerateUpgradePlanResponse","status":"Success","controlPlaneUpgrades":[{"version":"v1.31.4"},{"version":"v1.32.1"}]}"#
        )
    );
    let refusal = wire::GenerateUpgradePlanResponse::failure(
        "no ready image of minor 1.31 in Plan fleet/plan-a",
    );
    assert_eq!(
        serde_json::to_string(&refusal).unwrap(),
        body(
            r#"{HV,"kind":"GenerateUpgradePlanResponse","status":"Failure","message":"no ready image of minor 1.31 in Plan fleet/plan-a"}"#
        )
    );
}

#[test]
fn requests_decode_as_cluster_api_sends_them_with_either_cluster_version() {
    let request: wire::GenerateUpgradePlanRequest = serde_json::from_str(&body(
        r#"{HV,"kind":"GenerateUpgradePlanRequest","settings":{"site":"eu"},"cluster":C2,"fromControlPlaneKubernetesVersion":"v1.30.5","fromWorkersKubernetesVersion":"v1.30.5","toKubernetesVersion":"v1.32.1"}"#,
    ))
    .unwrap();
    assert_eq!(request.cluster.metadata.name, "prod");
    assert_eq!(request.cluster.metadata.namespace, "fleet");
    assert_eq!(request.settings["site"], "eu");
    assert_eq!(request.from_control_plane_kubernetes_version, "v1.30.5");
    assert_eq!(
        request.from_workers_kubernetes_version.as_deref(),
        Some("v1.30.5")
    );
    assert_eq!(request.to_kubernetes_version, "v1.32.1");
    // Without workers, fromWorkersKubernetesVersion is omitted.
    let request: wire::GenerateUpgradePlanRequest = serde_json::from_str(&body(
        r#"{HV,"kind":"GenerateUpgradePlanRequest","cluster":C2,"fromControlPlaneKubernetesVersion":"v1.30.5","toKubernetesVersion":"v1.32.1"}"#,
    ))
    .unwrap();
    assert_eq!(request.from_workers_kubernetes_version, None);

    let before: wire::BeforeRequest = serde_json::from_str(&body(
        r#"{HV,"kind":"BeforeClusterUpgradeRequest","cluster":C1,"fromKubernetesVersion":"v1.30.5","toKubernetesVersion":"v1.32.1","controlPlaneUpgrades":[{"version":"v1.31.4"},{"version":"v1.32.1"}],"workersUpgrades":[{"version":"v1.32.1"}]}"#,
    ))
    .unwrap();
    assert_eq!(
        (
            before.cluster.metadata.name.as_str(),
            before.from_kubernetes_version.as_str(),
            before.to_kubernetes_version.as_str()
        ),
        ("prod", "v1.30.5", "v1.32.1")
    );
    assert_eq!(before.control_plane_upgrades.len(), 2);
    assert_eq!(before.workers_upgrades[0].version, "v1.32.1");
    let before: wire::BeforeRequest = serde_json::from_str(&body(
        r#"{HV,"kind":"BeforeControlPlaneUpgradeRequest","cluster":C2,"fromKubernetesVersion":"v1.30.5","toKubernetesVersion":"v1.31.4","controlPlaneUpgrades":[{"version":"v1.31.4"},{"version":"v1.32.1"}],"workersUpgrades":[{"version":"v1.32.1"}]}"#,
    ))
    .unwrap();
    assert_eq!(before.to_kubernetes_version, "v1.31.4");
    let workers: wire::BeforeRequest = serde_json::from_str(&body(
        r#"{HV,"kind":"BeforeWorkersUpgradeRequest","cluster":C2,"fromKubernetesVersion":"v1.30.5","toKubernetesVersion":"v1.32.1","workersUpgrades":[{"version":"v1.32.1"}]}"#,
    ))
    .unwrap();
    assert!(workers.control_plane_upgrades.is_empty());
    let after: wire::AfterRequest = serde_json::from_str(&body(
        r#"{HV,"kind":"AfterControlPlaneUpgradeRequest","cluster":C2,"kubernetesVersion":"v1.31.4","controlPlaneUpgrades":[{"version":"v1.32.1"}],"workersUpgrades":[{"version":"v1.32.1"}]}"#,
    ))
    .unwrap();
    assert_eq!(after.kubernetes_version, "v1.31.4");
    let after: wire::AfterRequest = serde_json::from_str(&body(
        r#"{HV,"kind":"AfterWorkersUpgradeRequest","cluster":C1,"kubernetesVersion":"v1.32.1","someFutureField":{"x":1}}"#,
    ))
    .unwrap();
    assert_eq!(after.cluster.metadata.namespace, "fleet");
}

fn observer(upgraders: Vec<ClusterClassClusterUpgrader>, images: Vec<MachineImage>) -> Observer {
    let plan: Plan = serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1", "kind": "Plan",
        "metadata": {"name": "plan-a", "namespace": "fleet"},
        "spec": {"versionRange": "v1.32.x"},
    }))
    .unwrap();
    let (client, _verifier) = mock_client();
    Observer::new(
        client,
        Stores {
            class: store_of(upgraders),
            in_cluster: store_of(Vec::<InClusterUpgradeAutomation>::new()),
            plans: store_of(vec![plan]),
            images: store_of(images),
        },
    )
}

fn machine_image(name: &str, version: &str, ready: bool) -> MachineImage {
    serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1", "kind": "MachineImage",
        "metadata": {"name": name, "namespace": "fleet"},
        "spec": {"version": version, "id": format!("img-{version}"), "jobTemplate": {"spec": {"containers": [{"name": "b", "image": "b"}]}}},
        "status": {"ready": ready, "phase": "Created"},
    }))
    .unwrap()
}

fn upgrader(name: &str, cluster: &str) -> ClusterClassClusterUpgrader {
    serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1", "kind": "ClusterClassClusterUpgrader",
        "metadata": {"name": name, "namespace": "fleet", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"clusterName": cluster, "planRef": {"name": "plan-a"}, "topologyVariable": "image"},
    }))
    .unwrap()
}

const NOW: &str = "2026-03-01T00:00:00Z";

async fn ask(observer: Option<&Observer>, hook: Hook, text: &str) -> Value {
    hooks::answer(observer, hook, body(text).as_bytes(), NOW.parse().unwrap()).await
}

#[tokio::test]
async fn the_plan_is_answered_from_the_acting_upgraders_plan_and_ready_images() {
    let images = vec![
        machine_image("a", "v1.31.4", true),
        machine_image("b", "v1.31.7", false),
        machine_image("c", "v1.32.1", true),
    ];
    let observer = observer(
        vec![upgrader("up", "prod"), upgrader("other", "staging")],
        images,
    );
    let request = r#"{HV,"kind":"GenerateUpgradePlanRequest","cluster":C2,"fromControlPlaneKubernetesVersion":"v1.30.5","toKubernetesVersion":"v1.32.1"}"#;
    let answer = ask(Some(&observer), Hook::GenerateUpgradePlan, request).await;
    // v1.31.7 is not ready: the walk goes through v1.31.4.
    assert_eq!(
        answer,
        json!({"apiVersion": wire::API_VERSION, "kind": "GenerateUpgradePlanResponse", "status": "Success",
               "controlPlaneUpgrades": [{"version": "v1.31.4"}, {"version": "v1.32.1"}]})
    );
    let stranger = body(request).replace(r#""name":"prod""#, r#""name":"elsewhere""#);
    let answer = ask(Some(&observer), Hook::GenerateUpgradePlan, &stranger).await;
    assert_eq!(answer["status"], "Failure");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .ends_with("(Cluster fleet/elsewhere)"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_cluster_no_upgrader_names_passes_every_lifecycle_hook_without_a_read() {
    // The mock client answers nothing: a read would fail the hook.
    let observer = observer(vec![upgrader("up", "staging")], Vec::new());
    for (hook, text) in [
        (
            Hook::BeforeClusterUpgrade,
            r#"{HV,"kind":"BeforeClusterUpgradeRequest","cluster":C1,"fromKubernetesVersion":"v1.30.5","toKubernetesVersion":"v1.32.1"}"#,
        ),
        (
            Hook::BeforeControlPlaneUpgrade,
            r#"{HV,"kind":"BeforeControlPlaneUpgradeRequest","cluster":C2,"fromKubernetesVersion":"v1.30.5","toKubernetesVersion":"v1.31.4"}"#,
        ),
        (
            Hook::BeforeWorkersUpgrade,
            r#"{HV,"kind":"BeforeWorkersUpgradeRequest","cluster":C2,"fromKubernetesVersion":"v1.30.5","toKubernetesVersion":"v1.32.1"}"#,
        ),
        (
            Hook::AfterControlPlaneUpgrade,
            r#"{HV,"kind":"AfterControlPlaneUpgradeRequest","cluster":C2,"kubernetesVersion":"v1.31.4"}"#,
        ),
        (
            Hook::AfterWorkersUpgrade,
            r#"{HV,"kind":"AfterWorkersUpgradeRequest","cluster":C1,"kubernetesVersion":"v1.32.1"}"#,
        ),
    ] {
        let answer = ask(Some(&observer), hook, text).await;
        assert_eq!(
            answer,
            json!({"apiVersion": wire::API_VERSION, "kind": format!("{}Response", hook.name()), "status": "Success", "retryAfterSeconds": 0}),
            "{hook:?}"
        );
    }
}

#[tokio::test]
async fn a_bad_body_or_a_replica_that_does_not_lead_fails_the_hook() {
    let observer = observer(vec![upgrader("up", "prod")], Vec::new());
    let missing = ask(
        Some(&observer),
        Hook::BeforeClusterUpgrade,
        r#"{HV,"cluster":C2,"fromKubernetesVersion":"v1.30.5"}"#,
    )
    .await;
    assert_eq!(missing["status"], "Failure");
    assert_eq!(missing["retryAfterSeconds"], 0);
    assert!(
        missing["message"]
            .as_str()
            .unwrap()
            .contains("missing field `toKubernetesVersion`"),
        "{missing}"
    );
    let bad_name = ask(
        Some(&observer),
        Hook::AfterWorkersUpgrade,
        r#"{HV,"cluster":{"metadata":{"name":"../x","namespace":"fleet"}},"kubernetesVersion":"v1.32.1"}"#,
    )
    .await;
    assert!(
        bad_name["message"]
            .as_str()
            .unwrap()
            .starts_with("cluster.metadata.name"),
        "{bad_name}"
    );
    let not_leading = ask(None, Hook::GenerateUpgradePlan, r#"{HV,"cluster":C2,"fromControlPlaneKubernetesVersion":"v1.30.5","toKubernetesVersion":"v1.32.1"}"#).await;
    assert_eq!(not_leading["status"], "Failure");
    assert!(
        not_leading["message"]
            .as_str()
            .unwrap()
            .contains("does not lead")
    );
}

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/extension/testdata")
            .join(name),
    )
    .unwrap()
}

fn cert_dir(cert: &str, key: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(server::CERT_FILE), testdata(cert)).unwrap();
    std::fs::write(dir.path().join(server::KEY_FILE), testdata(key)).unwrap();
    dir
}

fn leaf(pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[test]
fn a_changed_certificate_is_served_and_a_broken_one_keeps_the_last_good() {
    let dir = cert_dir("tls.crt", "tls.key");
    let certificates = server::Certificates::load(dir.path()).unwrap();
    let served = server::Certificates::current_leaf;
    assert_eq!(served(&certificates), leaf(&testdata("tls.crt")));
    assert!(
        !certificates.reload().unwrap(),
        "unchanged files are not parsed again"
    );
    std::fs::write(dir.path().join("tls.crt"), testdata("renewed.crt")).unwrap();
    std::fs::write(dir.path().join("tls.key"), testdata("renewed.key")).unwrap();
    assert!(certificates.reload().unwrap());
    assert_eq!(served(&certificates), leaf(&testdata("renewed.crt")));
    // A key that does not match the certificate is refused; the renewed pair stays.
    std::fs::write(dir.path().join("tls.key"), testdata("tls.key")).unwrap();
    let err = certificates.reload().unwrap_err();
    assert!(matches!(err, server::CertError::Pair(..)), "{err}");
    assert_eq!(served(&certificates), leaf(&testdata("renewed.crt")));
    std::fs::write(dir.path().join("tls.crt"), b"not a certificate").unwrap();
    assert!(matches!(
        certificates.reload().unwrap_err(),
        server::CertError::NoCertificate(_)
    ));
    // At start, a missing file is an error naming it.
    let empty = tempfile::tempdir().unwrap();
    let err = server::Certificates::load(empty.path()).unwrap_err();
    assert!(err.to_string().contains("tls.crt"), "{err}");
}

#[tokio::test]
async fn discovery_and_hooks_are_served_over_tls_without_a_content_type() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = cert_dir("tls.crt", "tls.key");
    let (trigger, shutdown) = Shutdown::new();
    let extension = start(
        &Settings {
            address: "127.0.0.1:0".parse().unwrap(),
            cert_dir: dir.path().to_owned(),
        },
        shutdown,
    )
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&testdata("ca.crt")).unwrap()])
        .resolve("ext.test", extension.local)
        .build()
        .unwrap();
    let url = |path: &str| {
        format!(
            "https://ext.test:{}{path}?timeout=10s",
            extension.local.port()
        )
    };
    let discovery = client
        .post(url(&wire::discovery_path()))
        .body(format!(r#"{{{HV},"kind":"DiscoveryRequest"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(discovery.status(), 200);
    assert_eq!(discovery.headers()["content-type"], "application/json");
    let discovered: Value = discovery.json().await.unwrap();
    assert_eq!(discovered, serde_json::to_value(wire::discovery()).unwrap());

    let plan_request = body(
        r#"{HV,"kind":"GenerateUpgradePlanRequest","cluster":C2,"fromControlPlaneKubernetesVersion":"v1.30.5","toKubernetesVersion":"v1.32.1"}"#,
    );
    let before_leading: Value = client
        .post(url(&Hook::GenerateUpgradePlan.path()))
        .body(plan_request.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before_leading["status"], "Failure");
    // Leading, with the caches synced.
    *extension.slot.write().unwrap() = Some(Arc::new(observer(
        vec![upgrader("up", "prod")],
        vec![
            machine_image("a", "v1.31.4", true),
            machine_image("c", "v1.32.1", true),
        ],
    )));
    let planned: Value = client
        .post(url(&Hook::GenerateUpgradePlan.path()))
        .body(plan_request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        planned["controlPlaneUpgrades"],
        json!([{"version": "v1.31.4"}, {"version": "v1.32.1"}])
    );
    // Plain HTTP is not served.
    let plain = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}{}",
            extension.local.port(),
            wire::discovery_path()
        ))
        .send()
        .await;
    assert!(plain.map_or(true, |r| r.status() != 200));
    trigger.fire();
}

fn manifests(file: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/extension")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde_yaml::from_value::<Value>(serde::Deserialize::deserialize(doc).unwrap()).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn the_install_component_wires_service_certificate_deployment_and_extension_config_together() {
    let default = manifests("../default/kustomization.yaml");
    let namespace = default[0]["namespace"].as_str().unwrap();
    let component = &manifests("kustomization.yaml")[0];
    assert_eq!(component["kind"], "Component");
    let service = &manifests("service.yaml")[0];
    let service_name = service["metadata"]["name"].as_str().unwrap();
    let certificate = manifests("certificate.yaml")
        .into_iter()
        .find(|m| m["kind"] == "Certificate")
        .unwrap();
    let secret = certificate["spec"]["secretName"].as_str().unwrap();
    let config = &manifests("extensionconfig.yaml")[0];
    let patch = &manifests("manager_patch.yaml")[0];
    let patch = patch.as_array().unwrap();

    // The certificate is for the Service's DNS name, which Cluster API checks.
    let dns = format!("{service_name}.{namespace}.svc");
    assert!(
        certificate["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!(dns)),
        "{certificate}"
    );
    // The ExtensionConfig reaches that Service on 443, and takes its CA from that Secret.
    assert_eq!(config["apiVersion"], "runtime.cluster.x-k8s.io/v1beta2");
    assert_eq!(
        config["spec"]["clientConfig"]["service"],
        json!({"namespace": namespace, "name": service_name, "port": 443})
    );
    assert_eq!(
        config["metadata"]["annotations"]["runtime.cluster.x-k8s.io/inject-ca-from-secret"],
        format!("{namespace}/{secret}")
    );
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    // The Service's target port is the container port the manager listens on.
    let value = |path: &str| {
        patch
            .iter()
            .find(|op| op["path"] == path)
            .map(|op| op["value"].clone())
            .unwrap()
    };
    let port = value("/spec/template/spec/containers/0/ports/-");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);
    let arg = value("/spec/template/spec/containers/0/args/-");
    let address = arg
        .as_str()
        .unwrap()
        .strip_prefix("--extension-bind-address=")
        .unwrap();
    assert_eq!(
        crate::cli::parse_address(address).unwrap().port(),
        u16::try_from(port["containerPort"].as_u64().unwrap()).unwrap()
    );
    // The Secret is mounted where the manager reads its certificate by default.
    let mount = &value("/spec/template/spec/containers/0/volumeMounts")[0];
    let volume = &value("/spec/template/spec/volumes")[0];
    assert_eq!(mount["name"], volume["name"]);
    assert_eq!(volume["secret"]["secretName"], secret);
    let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(["k"]).unwrap();
    assert_eq!(
        mount["mountPath"],
        cli.run.extension_cert_dir.display().to_string()
    );
    // The Service selects the manager's pods.
    let deployment = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/manager/manager.yaml"),
    )
    .unwrap();
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert!(
            deployment.contains(&format!("{key}: {}", value.as_str().unwrap())),
            "{key}"
        );
    }
}
