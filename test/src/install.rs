//! Installs our CRDs and admission policies from `config/crd/`, plus a minimal Cluster API
//! `Cluster` CRD, and waits until they are in force; and the manager's identity from
//! `config/rbac/`, with a token for it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::manifests::{self, CreateOptions, FIELD_MANAGER};
use crate::namespace;

/// Name of the minimal Cluster API CRD the harness installs.
pub const CLUSTER_CRD: &str = "clusters.cluster.x-k8s.io";
/// The ClusterClass CRD's name.
pub const CLUSTER_CLASS_CRD: &str = "clusterclasses.cluster.x-k8s.io";

/// Text every cross-namespace reference refusal carries.
pub const CROSS_NAMESPACE_MESSAGE: &str = "must be empty or equal to the object's own namespace";

/// The directory holding the generated CRDs and admission policies (`E2E_CRD_DIR` overrides).
pub fn crd_dir() -> PathBuf {
    std::env::var_os("E2E_CRD_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || manifests::workspace_root().join("config").join("crd"),
            PathBuf::from,
        )
}

/// Every document of every YAML file in [`crd_dir`].
pub fn crd_dir_docs() -> Result<Vec<Value>> {
    let dir = crd_dir();
    let mut docs = Vec::new();
    for file in manifests::yaml_files(&dir)? {
        // Kustomize files are not Kubernetes objects.
        let objects = manifests::load_yaml_docs(&file)?.into_iter().filter(|d| {
            !d["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("kustomize.config.k8s.io"))
        });
        docs.extend(objects);
    }
    if docs.is_empty() {
        bail!(
            "{} holds no manifests: generate them with `kubernetes-upgrader crds`",
            dir.display()
        );
    }
    Ok(docs)
}

/// The minimal `clusters.cluster.x-k8s.io` CRD: namespaced, v1beta1, status subresource, and
/// unknown fields preserved in spec and status (so `spec.topology.variables` is atomic).
pub fn minimal_cluster_crd() -> Value {
    cluster_crd(&json!([{
        "name": "v1beta1",
        "served": true,
        "storage": true,
        "subresources": { "status": {} },
        "schema": { "openAPIV3Schema": {
            "type": "object",
            "properties": {
                "spec": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                "status": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
            }
        }}
    }]))
}

/// The `clusters.cluster.x-k8s.io` CRD with `versions`.
fn cluster_crd(versions: &Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": CLUSTER_CRD },
        "spec": {
            "group": "cluster.x-k8s.io",
            "names": { "kind": "Cluster", "listKind": "ClusterList", "plural": "clusters", "singular": "cluster" },
            "scope": "Namespaced",
            "versions": versions,
        }
    })
}

/// A `clusters.cluster.x-k8s.io` CRD in Cluster API's shape for what the upgrader touches:
/// v1beta1 and v1beta2 served (v1beta2 stored, so preferred), `spec.topology.variables` a
/// list-map keyed by `name` (Cluster API 1.8+), everything else preserved as unknown fields.
pub fn list_map_cluster_crd() -> Value {
    let variables = json!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": {
            "type": "object",
            "required": ["name", "value"],
            "properties": {
                "name": {"type": "string"},
                "value": {"x-kubernetes-preserve-unknown-fields": true},
            },
        },
    });
    let schema = json!({ "openAPIV3Schema": {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {
                    "topology": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": true,
                        "properties": {"version": {"type": "string"}, "variables": variables},
                    },
                },
            },
            "status": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
        }
    }});
    let version = |name: &str, storage: bool| json!({"name": name, "served": true, "storage": storage, "subresources": {"status": {}}, "schema": schema});
    cluster_crd(&json!([
        version("v1beta1", false),
        version("v1beta2", true)
    ]))
}

/// Replaces the harness's Cluster CRD with the Cluster API shape ([`list_map_cluster_crd`]) and
/// waits until it is Established. For a test binary of its own: every test in the binary then
/// sees this shape.
pub async fn install_list_map_cluster_crd(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(list_map_cluster_crd())?;
    crds.patch(
        CLUSTER_CRD,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying the list-map Cluster CRD")?;
    wait_established(&crds, CLUSTER_CRD, Duration::from_secs(60)).await
}

/// A `clusterclasses.cluster.x-k8s.io` CRD as Cluster API serves it for what the upgrader reads:
/// v1beta2, namespaced, everything preserved as unknown fields.
pub fn cluster_class_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": CLUSTER_CLASS_CRD },
        "spec": {
            "group": "cluster.x-k8s.io",
            "names": { "kind": "ClusterClass", "listKind": "ClusterClassList", "plural": "clusterclasses", "singular": "clusterclass" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1beta2", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } }
                }}
            }],
        }
    })
}

/// Installs the ClusterClass CRD ([`cluster_class_crd`]) and waits until it is Established.
pub async fn install_cluster_class_crd(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(cluster_class_crd())?;
    crds.patch(
        CLUSTER_CLASS_CRD,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying the ClusterClass CRD")?;
    wait_established(&crds, CLUSTER_CLASS_CRD, Duration::from_secs(60)).await
}

/// Installs everything and waits until the CRDs are Established and the admission policies
/// refuse a probe.
pub async fn install_all(client: &Client) -> Result<()> {
    let docs = crd_dir_docs()?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd_names = Vec::new();
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        let applied = manifests::apply(client, doc, "default").await?;
        crd_names.push(applied.name_any());
    }
    if install_cluster_crd(&crds).await? {
        crd_names.push(CLUSTER_CRD.to_owned());
    }
    for name in &crd_names {
        wait_established(&crds, name, Duration::from_secs(60)).await?;
    }
    let mut policies = 0;
    for doc in docs
        .iter()
        .filter(|d| d["kind"] != "CustomResourceDefinition")
    {
        manifests::apply(client, doc, "default").await?;
        if doc["kind"] == "ValidatingAdmissionPolicy" {
            policies += 1;
        }
    }
    if policies > 0 {
        wait_policies_effective(client, Duration::from_secs(60)).await?;
    }
    Ok(())
}

/// Applies the minimal Cluster CRD unless another manager (a real Cluster API) owns it.
/// Returns whether it was applied.
async fn install_cluster_crd(crds: &Api<CustomResourceDefinition>) -> Result<bool> {
    if let Some(existing) = crds.get_opt(CLUSTER_CRD).await? {
        let ours = existing
            .managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some(FIELD_MANAGER));
        if !ours {
            return Ok(false);
        }
    }
    let crd: CustomResourceDefinition = serde_json::from_value(minimal_cluster_crd())?;
    crds.patch(
        CLUSTER_CRD,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying the minimal Cluster CRD")?;
    Ok(true)
}

/// Waits until the CRD `name` is Established.
pub async fn wait_established(
    crds: &Api<CustomResourceDefinition>,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let crd = crds.get(name).await?;
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "CRD {name} not Established after {timeout:?}: {:?}",
                crd.status
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A syncer whose `sourceRef` leaves its namespace: the policies must refuse it.
pub fn cross_namespace_probe(name: &str) -> Value {
    json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "MachineImageSyncer",
        "metadata": { "name": name },
        "spec": {
            "versionRange": "v1.27.x",
            "sourceRef": {
                "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
                "kind": "DebianRepositorySource",
                "name": "probe",
                "namespace": "e2e-other-namespace"
            },
            "machineImageTemplateRef": { "name": "probe" }
        }
    })
}

/// Creates the cross-namespace probe until the admission policies refuse it (policies take a
/// moment to be loaded). A probe that slips through is deleted again.
pub async fn wait_policies_effective(client: &Client, timeout: Duration) -> Result<()> {
    let ns = namespace::create(client, "e2e-policy-probe").await?;
    let gvk = manifests::gvk_of(&cross_namespace_probe("x"))?;
    let deadline = Instant::now() + timeout;
    let mut attempt = 0_u32;
    loop {
        // Discovery of a just-established CRD can lag for a moment, too.
        if let Some(served) = manifests::served(client, &gvk).await? {
            attempt += 1;
            let name = format!("probe-{attempt}");
            let probe = cross_namespace_probe(&name);
            match manifests::create(client, &served, &probe, &ns, CreateOptions::default()).await {
                Err(e) if manifests::error_message(&e).contains(CROSS_NAMESPACE_MESSAGE) => {
                    return Ok(());
                }
                Err(e) => {
                    if Instant::now() >= deadline {
                        bail!("the admission policy probe failed unexpectedly: {e}");
                    }
                }
                Ok(_) => {
                    let api = served.api(client, &ns);
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the ValidatingAdmissionPolicy still admits a cross-namespace sourceRef after {timeout:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The manager's ServiceAccount, as `config/rbac` binds it.
pub const MANAGER_SERVICE_ACCOUNT: &str = "kubernetes-upgrader-controller-manager";
/// The namespace of the manager's ServiceAccount.
pub const MANAGER_NAMESPACE: &str = "kubernetes-upgrader-system";

/// `config/rbac/<file>`, as typed objects of kind `kind`.
fn rbac_objects<K: serde::de::DeserializeOwned>(file: &str, kind: &str) -> Result<Vec<K>> {
    let path = manifests::workspace_root()
        .join("config")
        .join("rbac")
        .join(file);
    manifests::load_yaml_docs(&path)?
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d).with_context(|| format!("a {kind} of {file}")))
        .collect()
}

/// Server-side applies `object` with the harness's field manager.
async fn apply_typed<K>(api: &Api<K>, object: &K) -> Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .with_context(|| format!("applying {name}"))?;
    Ok(())
}

/// Installs the manager's identity exactly as `config/rbac` ships it: its namespace, its
/// ServiceAccount, the ClusterRole and the ClusterRoleBinding. The leader-election Role is
/// namespaced: [`install_leader_election_role`] puts it where a test elects.
pub async fn install_manager_rbac(client: &Client) -> Result<()> {
    namespace::ensure(client, MANAGER_NAMESPACE).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), MANAGER_NAMESPACE);
    for account in rbac_objects::<ServiceAccount>("service_account.yaml", "ServiceAccount")? {
        apply_typed(&accounts, &account).await?;
    }
    let roles: Api<ClusterRole> = Api::all(client.clone());
    for role in rbac_objects::<ClusterRole>("role.yaml", "ClusterRole")? {
        apply_typed(&roles, &role).await?;
    }
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    for binding in rbac_objects::<ClusterRoleBinding>("role.yaml", "ClusterRoleBinding")? {
        apply_typed(&bindings, &binding).await?;
    }
    Ok(())
}

/// The leader-election Role and RoleBinding of `config/rbac` in `namespace`.
pub async fn install_leader_election_role(client: &Client, namespace: &str) -> Result<()> {
    let roles: Api<Role> = Api::namespaced(client.clone(), namespace);
    for role in rbac_objects::<Role>("leader_election_role.yaml", "Role")? {
        apply_typed(&roles, &role).await?;
    }
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
    for binding in rbac_objects::<RoleBinding>("leader_election_role.yaml", "RoleBinding")? {
        apply_typed(&bindings, &binding).await?;
    }
    Ok(())
}

/// A token for the manager's ServiceAccount from the TokenRequest API, valid for `lifetime`.
pub async fn manager_token(client: &Client, lifetime: Duration) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), MANAGER_NAMESPACE);
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
            ..TokenRequestSpec::default()
        },
        status: None,
    };
    let answer = accounts
        .create_token_request(MANAGER_SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await
        .context("requesting a token for the manager's ServiceAccount")?;
    Ok(answer
        .status
        .context("the TokenRequest answer has no status")?
        .token)
}

/// Whether the identity of `client` may `verb` `resource` (of `group`) in `namespace`: a
/// SelfSubjectAccessReview, what `kubectl auth can-i` asks.
pub async fn can_i(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
) -> Result<bool> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = SelfSubjectAccessReview {
        metadata: ObjectMeta::default(),
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ResourceAttributes::default()
            }),
            non_resource_attributes: None,
        },
        status: None,
    };
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .with_context(|| format!("asking whether I may {verb} {resource}"))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Waits until the identity of `client` may list and watch MachineImages: RBAC objects take
/// effect once the API server's authorizer has seen them.
pub async fn wait_authorized(client: &Client, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut allowed = true;
        for verb in ["list", "watch"] {
            allowed &= can_i(
                client,
                verb,
                "kubernetesupgraded.dimitrikoshkin.com",
                "machineimages",
                "default",
            )
            .await?;
        }
        if allowed {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the manager's ServiceAccount may still not list MachineImages after {timeout:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
