//! Admission against the real API server: the structural schema, CEL rules and the
//! ValidatingAdmissionPolicy refuse every manifest in `test/admission/invalid/` with the
//! message its first line names, admit every manifest in `test/admission/valid/`, and admit
//! every sample in `config/samples/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::needless_pass_by_value
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::manifests::{self, CreateOptions, FIELD_MANAGER};
use e2e::{e2e_env, namespace};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, ValidationDirective};

fn admission_dir(which: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("admission")
        .join(which)
}

/// A manifest file with its `# expect:` line and `NAMESPACE` substituted.
struct Case {
    file: String,
    expect: Option<String>,
    doc: serde_json::Value,
}

fn load_cases(which: &str, namespace: &str) -> Vec<Case> {
    let files = manifests::yaml_files(&admission_dir(which)).unwrap();
    assert!(
        !files.is_empty(),
        "no manifests in {}",
        admission_dir(which).display()
    );
    files
        .into_iter()
        .map(|path| {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .map(|s| s.trim().to_owned());
            let text = text.replace("namespace: NAMESPACE", &format!("namespace: {namespace}"));
            let mut docs = manifests::parse_yaml_docs(&text).unwrap();
            assert_eq!(docs.len(), 1, "{file} must hold exactly one object");
            Case {
                file,
                expect,
                doc: docs.remove(0),
            }
        })
        .collect()
}

#[test]
fn manifest_files_are_well_formed() {
    for case in load_cases("invalid", "e2e") {
        let expect = case
            .expect
            .as_deref()
            .unwrap_or_else(|| panic!("{} lacks a `# expect:` first line", case.file));
        assert!(
            expect.contains("spec."),
            "{}: the expected message must name the field: {expect}",
            case.file
        );
        assert!(
            case.doc["metadata"]["name"].is_string(),
            "{} has no name",
            case.file
        );
    }
    for case in load_cases("valid", "e2e") {
        assert!(
            case.expect.is_none(),
            "{}: valid manifests carry no `# expect:` line",
            case.file
        );
    }
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_their_message() {
    let env = e2e_env!("invalid_manifests_are_refused_with_their_message");
    let mut failures = Vec::new();
    let cases = load_cases("invalid", &env.namespace);
    for case in &cases {
        let expect = case.expect.as_deref().unwrap();
        let gvk = manifests::gvk_of(&case.doc).unwrap();
        let served = manifests::served(&env.client, &gvk)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{}: {gvk:?} is not served", case.file));
        // Policies can lag behind their installation: an object that slips through is deleted
        // and tried again for a while.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match manifests::create(
                &env.client,
                &served,
                &case.doc,
                &env.namespace,
                CreateOptions::default(),
            )
            .await
            {
                Err(e) => {
                    let message = manifests::error_message(&e);
                    if !message.contains(expect) {
                        failures.push(format!(
                            "{}: expected {expect:?} in the refusal, got: {message}",
                            case.file
                        ));
                    }
                    break;
                }
                Ok(created) => {
                    let name = created["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = served
                        .api(&env.client, &env.namespace)
                        .delete(&name, &DeleteParams::default())
                        .await;
                    if Instant::now() >= deadline {
                        failures.push(format!(
                            "{}: admitted, expected a refusal containing {expect:?}",
                            case.file
                        ));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid manifests misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn valid_manifests_pass_a_strict_dry_run() {
    let env = e2e_env!("valid_manifests_pass_a_strict_dry_run");
    let mut failures = Vec::new();
    let cases = load_cases("valid", &env.namespace);
    let options = CreateOptions {
        dry_run: true,
        strict: true,
    };
    for case in &cases {
        let gvk = manifests::gvk_of(&case.doc).unwrap();
        let served = manifests::served(&env.client, &gvk)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{}: {gvk:?} is not served", case.file));
        if let Err(e) =
            manifests::create(&env.client, &served, &case.doc, &env.namespace, options).await
        {
            failures.push(format!(
                "{}: refused: {}",
                case.file,
                manifests::error_message(&e)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} valid manifests were refused:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn samples_pass_a_strict_server_side_dry_run() {
    let env = e2e_env!("samples_pass_a_strict_server_side_dry_run");
    let dir = manifests::workspace_root().join("config").join("samples");
    let files = manifests::yaml_files(&dir).unwrap();
    assert!(!files.is_empty(), "no samples in {}", dir.display());
    let params = PatchParams {
        dry_run: true,
        force: true,
        field_manager: Some(FIELD_MANAGER.to_owned()),
        field_validation: Some(ValidationDirective::Strict),
    };
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    let mut checked = 0;
    for file in &files {
        let shown = file.file_name().unwrap().to_string_lossy().into_owned();
        for doc in manifests::load_yaml_docs(file).unwrap() {
            let gvk = manifests::gvk_of(&doc).unwrap();
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{shown}: a {} without a name", gvk.kind));
            let Some(served) = manifests::served(&env.client, &gvk).await.unwrap() else {
                skipped.push(format!("{shown}: {}/{} {name}", gvk.group, gvk.kind));
                continue;
            };
            // Samples are applied as `kubectl apply -f` would: into their own namespace, or
            // into `default`.
            let ns = doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            if served.namespaced {
                namespace::ensure(&env.client, &ns).await.unwrap();
            }
            let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
            let api = served.api(&env.client, &ns);
            checked += 1;
            if let Err(e) = api.patch(name, &params, &Patch::Apply(&obj)).await {
                failures.push(format!(
                    "{shown}: {} {name}: {}",
                    gvk.kind,
                    manifests::error_message(&e)
                ));
            }
        }
    }
    if !skipped.is_empty() {
        e2e::cluster::print_line(&format!(
            "samples: kinds not installed, not checked: {}",
            skipped.join(", ")
        ));
    }
    assert!(checked > 0, "no sample object could be checked");
    assert!(
        failures.is_empty(),
        "{} sample objects were refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn syncer(name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "MachineImageSyncer",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// v0.6 dropped `interval: null` and defaulted it; the schema must not declare it nullable.
#[tokio::test]
async fn a_null_interval_gets_the_default() {
    let env = e2e_env!("a_null_interval_gets_the_default");
    let doc = syncer(
        "null-interval",
        serde_json::json!({
            "versionRange": "v1.27.x",
            "sourceRef": {"kind": "DebianRepositorySource", "name": "s"},
            "machineImageTemplateRef": {"name": "t"},
            "interval": null,
        }),
    );
    let gvk = manifests::gvk_of(&doc).unwrap();
    let served = manifests::served(&env.client, &gvk).await.unwrap().unwrap();
    let created = manifests::create(
        &env.client,
        &served,
        &doc,
        &env.namespace,
        CreateOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        created["spec"]["interval"],
        serde_json::json!(3_600_000_000_000_i64),
        "{created}"
    );
}

/// References are atomic under server-side apply: a second manager's new reference replaces
/// the whole map, so no subfield of the first one survives.
#[tokio::test]
async fn references_are_replaced_whole_under_server_side_apply() {
    let env = e2e_env!("references_are_replaced_whole_under_server_side_apply");
    let gvk = manifests::gvk_of(&syncer("x", serde_json::json!({}))).unwrap();
    let served = manifests::served(&env.client, &gvk).await.unwrap().unwrap();
    let api = served.api(&env.client, &env.namespace);
    let apply = |manager: &'static str, spec: serde_json::Value| {
        let api = api.clone();
        async move {
            let obj: DynamicObject = serde_json::from_value(syncer("atomic-refs", spec)).unwrap();
            api.patch(
                "atomic-refs",
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap()
        }
    };
    apply(
        "first",
        serde_json::json!({
            "versionRange": "v1.27.x",
            "sourceRef": {"apiVersion": "example.com/v1", "kind": "Mirror", "name": "old", "uid": "u-1"},
            "machineImageTemplateRef": {"name": "t", "namespace": ""},
        }),
    )
    .await;
    let second = apply(
        "second",
        serde_json::json!({
            "versionRange": "v1.27.x",
            "sourceRef": {"kind": "DebianRepositorySource", "name": "new"},
            "machineImageTemplateRef": {"name": "t2"},
        }),
    )
    .await;
    assert_eq!(
        second.data["spec"]["sourceRef"],
        serde_json::json!({"kind": "DebianRepositorySource", "name": "new"}),
    );
    assert_eq!(
        second.data["spec"]["machineImageTemplateRef"],
        serde_json::json!({"name": "t2"}),
    );
}

/// What the offline evaluator gets wrong, shown on the real server: a ValidatingAdmissionPolicy
/// over our custom resources cannot see `namespace` through `__namespace__`, and can by index.
#[tokio::test]
async fn the_server_sees_namespace_by_index_not_through_the_escape() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let env = e2e_env!("the_server_sees_namespace_by_index_not_through_the_escape");
    let name = format!("e2e-escape-probe-{}", env.namespace);
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [api::GROUP], "apiVersions": [api::VERSION],
                "operations": ["CREATE"], "resources": ["clusterclassclusterupgraders"],
            }]},
            "validations": [
                {"expression": "object.metadata.name != 'control'", "message": "control"},
                {"expression": "!has(object.metadata.labels) || !('escape' in object.metadata.labels) || !has(object.spec.planRef.__namespace__)", "message": "escape sees it"},
                {"expression": "!has(object.metadata.labels) || !('index' in object.metadata.labels) || !('namespace' in object.spec.planRef)", "message": "index sees it"},
            ],
        }
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.namespace}}},
        }
    }))
    .unwrap();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    kube::Api::<ValidatingAdmissionPolicy>::all(env.client.clone())
        .patch(&name, &params, &Patch::Apply(&policy))
        .await
        .unwrap();
    kube::Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
        .patch(&name, &params, &Patch::Apply(&binding))
        .await
        .unwrap();
    let upgrader = |name: &str, label: &str| {
        serde_json::json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "ClusterClassClusterUpgrader",
            "metadata": {"name": name, "labels": {label: "yes"}},
            "spec": {"clusterName": "c", "planRef": {"name": "p", "namespace": env.namespace}},
        })
    };
    let gvk = manifests::gvk_of(&upgrader("x", "x")).unwrap();
    let served = manifests::served(&env.client, &gvk).await.unwrap().unwrap();
    let create = |doc: serde_json::Value| {
        let (client, served, ns) = (env.client.clone(), served.clone(), env.namespace.clone());
        async move {
            manifests::create(
                &client,
                &served,
                &doc,
                &ns,
                CreateOptions {
                    dry_run: true,
                    strict: false,
                },
            )
            .await
            .err()
            .map(|e| manifests::error_message(&e))
        }
    };
    // The policy is loaded once it refuses the control object.
    let deadline = Instant::now() + Duration::from_secs(60);
    while create(upgrader("control", "none")).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the probe policy never took effect"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let by_index = create(upgrader("by-index", "index")).await;
    assert!(
        by_index
            .as_deref()
            .is_some_and(|m| m.contains("index sees it")),
        "{by_index:?}"
    );
    let through_escape = create(upgrader("through-escape", "escape")).await;
    assert_eq!(
        through_escape, None,
        "kube-apiserver now sees `namespace` through `__namespace__`: the offline divergence may be gone"
    );
    let _ = kube::Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
    let _ = kube::Api::<ValidatingAdmissionPolicy>::all(env.client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
}
