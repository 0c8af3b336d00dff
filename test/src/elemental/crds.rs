//! The minimal Cluster API and Elemental CRDs, and typed access to their objects.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::install;
use crate::manifests::FIELD_MANAGER;

use super::{IN_PLACE_UPDATE, INFRA_GROUP, SKIP_REMEDIATION, V1BETA1};

/// A minimal namespaced v1beta1 CRD with the status subresource whose spec and status preserve
/// unknown fields; `spec_properties` declares fields of the spec.
fn minimal_crd(group: &str, kind: &str, plural: &str, spec_properties: &Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_lowercase(),
            },
            "scope": "Namespaced",
            "versions": [{
                "name": V1BETA1,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "properties": spec_properties,
                        },
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                }},
            }],
        },
    })
}

/// `osVersionManagement` as the Elemental provider declares it: a schemaless object.
fn os_version_management_schema() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// The minimal `machines.cluster.x-k8s.io` CRD (v1beta1, as the harness's Cluster CRD).
pub fn machine_crd() -> Value {
    minimal_crd(crate::capi::GROUP, "Machine", "machines", &json!({}))
}

/// The minimal `elementalmachines.infrastructure.cluster.x-k8s.io` CRD.
pub fn elemental_machine_crd() -> Value {
    minimal_crd(
        INFRA_GROUP,
        "ElementalMachine",
        "elementalmachines",
        &json!({"osVersionManagement": os_version_management_schema()}),
    )
}

/// The minimal `elementalhosts.infrastructure.cluster.x-k8s.io` CRD.
pub fn elemental_host_crd() -> Value {
    minimal_crd(
        INFRA_GROUP,
        "ElementalHost",
        "elementalhosts",
        &json!({"osVersionManagement": os_version_management_schema()}),
    )
}

static CRDS: tokio::sync::OnceCell<Result<(), String>> = tokio::sync::OnceCell::const_new();

/// Installs the Machine, ElementalMachine and ElementalHost CRDs (forced server-side apply)
/// once per test binary, and waits until they are Established and served.
pub async fn install_crds(client: &Client) -> Result<()> {
    CRDS.get_or_init(|| async {
        apply_crds(client)
            .await
            .map_err(|e| format!("installing the Elemental CRDs: {e:#}"))
    })
    .await
    .clone()
    .map_err(anyhow::Error::msg)
}

async fn apply_crds(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in [machine_crd(), elemental_machine_crd(), elemental_host_crd()] {
        let crd: CustomResourceDefinition = serde_json::from_value(doc)?;
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying {name}"))?;
        install::wait_established(&crds, &name, Duration::from_secs(60)).await?;
    }
    // Discovery of a just-established CRD can lag: wait until each kind lists.
    let probe_ns = "default";
    for api in [
        machines(client, probe_ns),
        elemental_machines(client, probe_ns),
        elemental_hosts(client, probe_ns),
    ] {
        crate::eventually("the Elemental CRDs served", Duration::from_secs(30), || {
            let api = api.clone();
            async move { Ok(api.list(&ListParams::default()).await.ok().map(|_| ())) }
        })
        .await?;
    }
    Ok(())
}

fn dynamic(
    client: &Client,
    namespace: &str,
    group: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, V1BETA1, kind), plural);
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// The Cluster API Machines of `namespace`.
pub fn machines(client: &Client, namespace: &str) -> Api<DynamicObject> {
    dynamic(client, namespace, crate::capi::GROUP, "Machine", "machines")
}

/// The ElementalMachines of `namespace`.
pub fn elemental_machines(client: &Client, namespace: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        namespace,
        INFRA_GROUP,
        "ElementalMachine",
        "elementalmachines",
    )
}

/// The ElementalHosts of `namespace`.
pub fn elemental_hosts(client: &Client, namespace: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        namespace,
        INFRA_GROUP,
        "ElementalHost",
        "elementalhosts",
    )
}

/// `spec.osVersionManagement.osVersion.imageUri` of an ElementalMachine (or host).
pub fn image_uri(object: &DynamicObject) -> Option<&str> {
    object.data["spec"]["osVersionManagement"]["osVersion"]["imageUri"].as_str()
}

/// The value of a Machine's [`SKIP_REMEDIATION`] annotation.
pub fn skip_remediation(machine: &DynamicObject) -> Option<&str> {
    machine
        .metadata
        .annotations
        .as_ref()?
        .get(SKIP_REMEDIATION)
        .map(String::as_str)
}

/// The host's in-place-update label.
pub fn update_label(object: &DynamicObject) -> Option<&str> {
    object.labels().get(IN_PLACE_UPDATE).map(String::as_str)
}

/// The leaf fields that field manager `manager` owns on `object` (dotted paths, e.g.
/// `spec.osVersionManagement.osVersion.imageUri`), by operation. A map's own entry (`.`) is not a
/// leaf: it only says the manager wants the map to exist.
pub fn managed_fields_of(object: &DynamicObject, manager: &str) -> Vec<(String, Vec<String>)> {
    object
        .managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .map(|m| {
            let mut leaves = Vec::new();
            if let Some(fields) = &m.fields_v1 {
                leaf_fields(&fields.0, "", &mut leaves);
            }
            (m.operation.clone().unwrap_or_default(), leaves)
        })
        .collect()
}

fn leaf_fields(fields: &Value, prefix: &str, out: &mut Vec<String>) {
    let Some(map) = fields.as_object() else {
        return;
    };
    for (key, sub) in map {
        if key == "." {
            continue;
        }
        let name = key.strip_prefix("f:").unwrap_or(key);
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        };
        let children = sub.as_object().is_some_and(|m| m.keys().any(|k| k != "."));
        if children {
            leaf_fields(sub, &path, out);
        } else {
            out.push(path);
        }
    }
}
