//! The generated install manifests: the CRDs, the ValidatingAdmissionPolicies that check what
//! CRD rules cannot see (the object's namespace), and the one that holds the manager's build Jobs
//! to what their namespace allows build pods. They are committed under `config/crd/`, and a test
//! fails when the committed files drift from what this module renders.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

use crate::controllers::machine_image::pod_security;

/// A reference field that must stay in the object's namespace.
struct SameNamespaceRule {
    field: &'static str,
}

/// One policy per group of kinds that hold references.
struct Policy {
    name: &'static str,
    resources: &'static [&'static str],
    rules: &'static [SameNamespaceRule],
}

const POLICIES: &[Policy] = &[
    Policy {
        name: "kubernetes-upgrader-syncer-references",
        resources: &["machineimagesyncers"],
        rules: &[
            SameNamespaceRule { field: "sourceRef" },
            SameNamespaceRule {
                field: "machineImageTemplateRef",
            },
        ],
    },
    Policy {
        name: "kubernetes-upgrader-upgrader-references",
        resources: &[
            "clusterclassclusterupgraders",
            "inclusterupgradeautomations",
        ],
        rules: &[SameNamespaceRule { field: "planRef" }],
    },
];

/// The CEL expression a policy evaluates for one reference field. `namespace` is a CEL reserved
/// word, and a ValidatingAdmissionPolicy over custom resources does not see it through the
/// `__namespace__` escape (kube-apiserver 1.32), so the property is read by index.
pub fn same_namespace_expression(field: &str) -> String {
    let reference = format!("object.spec.{field}");
    let ns = format!("{reference}['namespace']");
    format!(
        "!has({reference}) || !('namespace' in {reference}) || {ns} == '' || {ns} == request.namespace"
    )
}

/// The static message of the rule for `field`.
pub fn same_namespace_message(field: &str) -> String {
    format!("spec.{field}.namespace must be empty or equal to the object's own namespace")
}

fn policy_documents(policy: &Policy) -> [Value; 2] {
    let validations: Vec<Value> = policy
        .rules
        .iter()
        .map(|rule| {
            let message = same_namespace_message(rule.field);
            json!({
                "expression": same_namespace_expression(rule.field),
                "message": message,
                "messageExpression": format!(
                    "\"{message} \" + request.namespace + \", not \" + object.spec.{}['namespace']",
                    rule.field
                ),
                "reason": "Invalid",
            })
        })
        .collect();
    [
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": { "name": policy.name },
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [{
                        "apiGroups": [api::GROUP],
                        "apiVersions": [api::VERSION],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": policy.resources,
                    }]
                },
                "validations": validations,
            }
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": { "name": policy.name },
            "spec": { "policyName": policy.name, "validationActions": ["Deny"] }
        }),
    ]
}

/// The user name of the manager's service account as installed by `config/default`: the only
/// requester whose Jobs the build-pod policy checks.
pub const MANAGER_USER: &str =
    "system:serviceaccount:kubernetes-upgrader-system:kubernetes-upgrader-controller-manager";
/// The name of the build-pod policy and its binding.
pub const BUILD_POD_POLICY: &str = "kubernetes-upgrader-build-pods";

/// The policy that refuses a Job the manager creates when its pod is outside what the Job's
/// namespace allows build pods (the rules of `pod_security::check`), and its binding.
fn build_pod_policy_documents() -> [Value; 2] {
    let variables: Vec<Value> = pod_security::admission_variables()
        .into_iter()
        .map(|(name, expression)| json!({"name": name, "expression": expression}))
        .collect();
    let validations: Vec<Value> = pod_security::admission_rules()
        .into_iter()
        .map(|rule| {
            json!({"expression": rule.expression, "message": rule.message, "reason": "Forbidden"})
        })
        .collect();
    [
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": { "name": BUILD_POD_POLICY },
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [{
                        "apiGroups": ["batch"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["jobs"],
                    }]
                },
                "matchConditions": [{
                    "name": "manager",
                    "expression": format!("request.userInfo.username == '{MANAGER_USER}'"),
                }],
                "variables": variables,
                "validations": validations,
            }
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": { "name": BUILD_POD_POLICY },
            "spec": { "policyName": BUILD_POD_POLICY, "validationActions": ["Deny"] }
        }),
    ]
}

/// Every admission policy document, in install order.
fn policy_documents_all() -> Vec<Value> {
    POLICIES
        .iter()
        .flat_map(policy_documents)
        .chain(build_pod_policy_documents())
        .collect()
}

fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, serde_yaml::Error> {
    // An empty `categories: []` is stripped: GitOps agents would re-apply it forever.
    let mut value =
        serde_json::to_value(value).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    if let Some(names) = value
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut)
        && names
            .get("categories")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
    {
        names.remove("categories");
    }
    serde_yaml::to_string(&value)
}

/// The CRDs, in install order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    api::v1alpha1::crds()
}

/// Every file under `config/crd/`, as `(file name, contents)`.
pub fn files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    let mut files = Vec::new();
    let mut names = Vec::new();
    for crd in crds() {
        let name = format!("{}_{}.yaml", api::GROUP, crd.spec.names.plural);
        files.push((name.clone(), to_yaml(&crd)?));
        names.push(name);
    }
    let mut policies = String::new();
    for document in policy_documents_all() {
        policies.push_str("---\n");
        policies.push_str(&to_yaml(&document)?);
    }
    files.push(("admission-policies.yaml".to_owned(), policies));
    names.push("admission-policies.yaml".to_owned());
    // Named without an extension so that `kubectl apply -f config/crd/` skips it while
    // kustomize still finds it.
    let mut kustomization = String::from(
        "# Generated by `kubernetes-upgrader crds`; see controllers/src/crdgen.rs.\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for name in names {
        kustomization.push_str("  - ");
        kustomization.push_str(&name);
        kustomization.push('\n');
    }
    files.push(("Kustomization".to_owned(), kustomization));
    Ok(files)
}

/// What `kubernetes-upgrader crds` prints.
pub fn render(with_policies: bool) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    if with_policies {
        for document in policy_documents_all() {
            out.push_str("---\n");
            out.push_str(&to_yaml(&document)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn crd_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/crd")
    }

    /// Regenerate with `make manifests` (or `UPDATE_CRDS=1 cargo test -p kubernetes-upgrader crdgen`).
    #[test]
    fn committed_manifests_match_the_types() {
        let dir = crd_dir();
        let files = files().unwrap();
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            for (name, contents) in &files {
                std::fs::write(dir.join(name), contents).unwrap();
            }
        }
        for (name, contents) in &files {
            let committed = std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("config/crd/{name}: {e}; run `make manifests`"));
            assert!(
                committed == *contents,
                "config/crd/{name} drifted from the Rust types; run `make manifests`"
            );
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut expected: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        expected.sort();
        assert_eq!(
            on_disk, expected,
            "config/crd/ holds files the generator does not write"
        );
    }

    #[test]
    fn prints_seven_crds_in_the_group_and_category() {
        let text = render(false).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 7);
        for doc in &docs {
            assert_eq!(doc["kind"], "CustomResourceDefinition");
            assert_eq!(doc["spec"]["group"], api::GROUP);
            assert_eq!(doc["spec"]["scope"], "Namespaced");
            assert_eq!(doc["spec"]["names"]["categories"], json!([api::CATEGORY]));
            assert!(
                doc["spec"]["names"]["shortNames"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty())
            );
            let version = &doc["spec"]["versions"][0];
            assert_eq!(version["name"], "v1alpha1");
            assert_eq!(version["subresources"]["status"], json!({}));
            let plural = doc["spec"]["names"]["plural"].as_str().unwrap();
            let kind = doc["spec"]["names"]["kind"].as_str().unwrap();
            assert_eq!(plural, format!("{}s", kind.to_lowercase()));
        }
        let with = render(true).unwrap();
        assert_eq!(
            with.matches("kind: ValidatingAdmissionPolicyBinding")
                .count(),
            3
        );
        assert!(with.contains(BUILD_POD_POLICY));
    }

    /// The build-pod policy matches the service account `config/` installs, and only it.
    #[test]
    fn the_build_pod_policy_matches_the_installed_service_account() {
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
        let read = |path: &str| -> Value {
            serde_yaml::from_str(&std::fs::read_to_string(config.join(path)).unwrap()).unwrap()
        };
        let account = read("rbac/service_account.yaml");
        let kustomization = read("default/kustomization.yaml");
        assert!(
            kustomization.get("namePrefix").is_none(),
            "a namePrefix renames the account"
        );
        assert_eq!(
            MANAGER_USER,
            format!(
                "system:serviceaccount:{}:{}",
                kustomization["namespace"].as_str().unwrap(),
                account["metadata"]["name"].as_str().unwrap()
            )
        );
        let [policy, binding] = build_pod_policy_documents();
        assert_eq!(
            policy["spec"]["matchConditions"][0]["expression"],
            format!("request.userInfo.username == '{MANAGER_USER}'")
        );
        let rules = &policy["spec"]["matchConstraints"]["resourceRules"][0];
        assert_eq!(
            (
                &rules["apiGroups"],
                &rules["resources"],
                &rules["operations"]
            ),
            (&json!(["batch"]), &json!(["jobs"]), &json!(["CREATE"]))
        );
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        assert_eq!(
            policy["spec"]["validations"].as_array().unwrap().len(),
            pod_security::admission_rules().len()
        );
    }

    #[test]
    fn short_names_avoid_cluster_api() {
        let taken = ["cl", "cc", "md", "ms", "ma", "mhc", "mp", "kcp", "crs"];
        let mut seen = Vec::new();
        for crd in crds() {
            for short in crd.spec.names.short_names.unwrap_or_default() {
                assert!(
                    !taken.contains(&short.as_str()),
                    "{short} clashes with Cluster API"
                );
                assert!(!seen.contains(&short), "{short} is used twice");
                seen.push(short);
            }
        }
    }

    #[test]
    fn every_crd_is_small_enough_for_client_side_apply() {
        for crd in crds() {
            let size = serde_json::to_vec(&crd).unwrap().len();
            assert!(size < 200_000, "{} is {size} bytes", crd.spec.names.plural);
        }
    }
}
