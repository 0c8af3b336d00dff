//! Dynamic access to Cluster API: which `cluster.x-k8s.io` version the server prefers, whether
//! its Cluster CRD makes `spec.topology.variables` a list-map, reading a Cluster (and, where its
//! status carries no version lists, its control plane and MachineDeployments), and the one write
//! of a step.

use api::version;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::finish::ClusterApi;
use super::gates::{ClusterView, Step, Topology, Variable};
use crate::runtime::status::{ApiError, bounded};

/// The Cluster API group.
pub const GROUP: &str = "cluster.x-k8s.io";
pub use crate::runtime::projection::cluster::PAUSED_ANNOTATION;

/// How Clusters are reached on this server.
#[derive(Clone, Debug)]
pub struct Access {
    /// The served version we use.
    pub api: ClusterApi,
    /// The Cluster resource in that version.
    pub resource: ApiResource,
    /// Whether `spec.topology.variables` is a list-map keyed by `name` (server-side apply keeps
    /// other entries); when not, steps use a guarded JSON patch.
    pub list_map: bool,
}

/// Finds the preferred `cluster.x-k8s.io` version that serves Clusters; `None` when the group is
/// not served.
pub async fn discover(client: &Client) -> Result<Option<Access>, kube::Error> {
    let group = match bounded(kube::discovery::group(client, GROUP)).await {
        Ok(group) => group,
        Err(ApiError::Api(kube::Error::Discovery(_))) => return Ok(None),
        Err(ApiError::Api(err)) => return Err(err),
        Err(other) => {
            return Err(kube::Error::Discovery(
                kube::error::DiscoveryError::MissingResource(format!("cluster.x-k8s.io: {other}")),
            ));
        }
    };
    let Some((resource, _)) = group.recommended_kind("Cluster") else {
        return Ok(None);
    };
    let api = if resource.version == "v1beta1" {
        ClusterApi::V1Beta1
    } else {
        ClusterApi::V1Beta2
    };
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let list_map = match bounded(crds.get_opt("clusters.cluster.x-k8s.io")).await {
        Ok(Some(crd)) => variables_list_map(&crd, &resource.version),
        _ => false,
    };
    Ok(Some(Access {
        api,
        resource,
        list_map,
    }))
}

/// Whether the CRD's `version` declares `spec.topology.variables` a list-map keyed by `name`.
pub fn variables_list_map(crd: &CustomResourceDefinition, served: &str) -> bool {
    let Some(schema) = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == served)
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
    else {
        return false;
    };
    let Ok(schema) = serde_json::to_value(schema) else {
        return false;
    };
    let variables = schema.pointer("/properties/spec/properties/topology/properties/variables");
    variables.and_then(|v| v.get("x-kubernetes-list-type")) == Some(&json!("map"))
        && variables.and_then(|v| v.get("x-kubernetes-list-map-keys")) == Some(&json!(["name"]))
}

/// The Cluster as JSON, or `None` when it does not exist.
pub async fn get(
    client: &Client,
    access: &Access,
    namespace: &str,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &access.resource);
    let object = bounded(api.get_opt(name)).await?;
    Ok(object.and_then(|o| serde_json::to_value(o).ok()))
}

/// What the planner reads of a Cluster; `finished` is filled in by the caller.
pub fn view(cluster: &Value) -> ClusterView {
    let paused = cluster.pointer("/spec/paused").and_then(Value::as_bool) == Some(true)
        || cluster
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(PAUSED_ANNOTATION))
            .is_some();
    let topology = cluster
        .pointer("/spec/topology")
        .filter(|t| t.is_object())
        .map(|t| Topology {
            version: t
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            variables: t
                .get("variables")
                .and_then(Value::as_array)
                .map(|vars| {
                    vars.iter()
                        .filter_map(|v| {
                            Some(Variable {
                                name: v.get("name")?.as_str()?.to_owned(),
                                value: v.get("value").cloned().unwrap_or(Value::Null),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
    let labels = cluster
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let available = cluster
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Available"))
        })
        .and_then(|c| match c.get("status").and_then(Value::as_str) {
            Some("True") => Some(true),
            Some("False") => Some(false),
            _ => None,
        });
    ClusterView {
        paused,
        topology,
        finished: Err("not checked".into()),
        labels,
        available,
        admission: crate::controllers::rollout::Admission::Unrestricted,
    }
}

/// Whether the Cluster's status carries the control plane's version list, which then is the
/// authority (Cluster API 1.14+).
pub fn has_version_lists(api: ClusterApi, cluster: &Value) -> bool {
    let path = match api {
        ClusterApi::V1Beta2 => "/status/controlPlane/versions",
        ClusterApi::V1Beta1 => "/status/v1beta2/controlPlane/versions",
    };
    cluster.pointer(path).is_some_and(|v| !v.is_null())
}

/// The control plane object `spec.controlPlaneRef` names, if any.
pub async fn control_plane(
    client: &Client,
    api: ClusterApi,
    namespace: &str,
    cluster: &Value,
) -> Result<Option<Value>, ApiError> {
    let Some(reference) = cluster.pointer("/spec/controlPlaneRef") else {
        return Ok(None);
    };
    // The reference is read from the Cluster: its parts go into request paths only when valid.
    let (Some(kind), Some(name)) = (
        reference
            .get("kind")
            .and_then(Value::as_str)
            .filter(|k| api::names::is_kind(k)),
        reference
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| api::names::is_dns_subdomain(n)),
    ) else {
        return Ok(None);
    };
    let resource = match api {
        ClusterApi::V1Beta1 => {
            let Some(api_version) = reference.get("apiVersion").and_then(Value::as_str) else {
                return Ok(None);
            };
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            if !(group.is_empty() || api::names::is_dns_subdomain(group))
                || !api::names::is_dns_label(version)
            {
                return Ok(None);
            }
            let gvk = GroupVersionKind::gvk(group, version, kind);
            bounded(kube::discovery::pinned_kind(client, &gvk)).await?.0
        }
        ClusterApi::V1Beta2 => {
            let Some(group) = reference
                .get("apiGroup")
                .and_then(Value::as_str)
                .filter(|g| api::names::is_dns_subdomain(g))
            else {
                return Ok(None);
            };
            let discovered = bounded(kube::discovery::group(client, group)).await?;
            match discovered.recommended_kind(kind) {
                Some((resource, _)) => resource,
                None => return Ok(None),
            }
        }
    };
    let objects: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let object = bounded(objects.get_opt(name)).await?;
    Ok(object.and_then(|o| serde_json::to_value(o).ok()))
}

/// The Cluster's topology-owned MachineDeployments.
pub async fn machine_deployments(
    client: &Client,
    access: &Access,
    namespace: &str,
    cluster: &str,
) -> Result<Vec<Value>, ApiError> {
    let gvk = GroupVersionKind::gvk(GROUP, &access.resource.version, "MachineDeployment");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "machinedeployments");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let selector =
        format!("cluster.x-k8s.io/cluster-name={cluster},topology.cluster.x-k8s.io/owned");
    let list = bounded(api.list(&ListParams::default().labels(&selector))).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect())
}

/// The server-side apply body of a step: `apiVersion`, `kind`, the name and exactly
/// `spec.topology.version` and the one variable entry.
pub fn apply_body(access: &Access, namespace: &str, name: &str, step: &Step) -> Value {
    let mut topology = json!({ "version": step.version_string() });
    if let Some(variable) = &step.variable {
        topology["variables"] = json!([{ "name": variable.name, "value": variable.value }]);
    }
    json!({
        "apiVersion": access.resource.api_version,
        "kind": "Cluster",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "topology": topology },
    })
}

/// The JSON patch of a step on a Cluster whose variables list is atomic: `test` operations pin
/// the version and the whole variables list as read, then the version and the one entry change.
pub fn json_patch(cluster: &Value, step: &Step) -> Value {
    let topology = cluster.pointer("/spec/topology");
    let mut ops = Vec::new();
    match topology.and_then(|t| t.get("version")) {
        Some(current) => {
            ops.push(json!({"op": "test", "path": "/spec/topology/version", "value": current}));
            ops.push(json!({"op": "replace", "path": "/spec/topology/version", "value": step.version_string()}));
        }
        None => ops.push(
            json!({"op": "add", "path": "/spec/topology/version", "value": step.version_string()}),
        ),
    }
    if let Some(variable) = &step.variable {
        let list = topology
            .and_then(|t| t.get("variables"))
            .and_then(Value::as_array);
        match list {
            Some(list) => {
                ops.push(json!({"op": "test", "path": "/spec/topology/variables", "value": list}));
                match list
                    .iter()
                    .position(|v| v.get("name").and_then(Value::as_str) == Some(variable.name.as_str()))
                {
                    Some(index) => ops.push(json!({"op": "replace", "path": format!("/spec/topology/variables/{index}/value"), "value": variable.value})),
                    None => ops.push(json!({"op": "add", "path": "/spec/topology/variables/-", "value": {"name": variable.name, "value": variable.value}})),
                }
            }
            None => ops.push(json!({"op": "add", "path": "/spec/topology/variables", "value": [{"name": variable.name, "value": variable.value}]})),
        }
    }
    Value::Array(ops)
}

/// Writes `step` in one request: a forced server-side apply under `field_manager`, or on an
/// atomic variables list a guarded JSON patch.
pub async fn write_step(
    client: &Client,
    access: &Access,
    namespace: &str,
    name: &str,
    cluster: &Value,
    step: &Step,
    field_manager: &str,
) -> Result<Value, ApiError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &access.resource);
    if access.list_map || step.variable.is_none() {
        let mut body = apply_body(access, namespace, name, step);
        // The Cluster as read: an apply to a deleted Cluster is refused instead of creating one.
        if let Some(uid) = cluster.pointer("/metadata/uid") {
            body["metadata"]["uid"] = uid.clone();
        }
        let written = bounded(api.patch(
            name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(&body),
        ))
        .await?;
        as_json(&written)
    } else {
        let patch: json_patch::Patch = serde_json::from_value(json_patch(cluster, step))
            .map_err(|e| ApiError::Api(kube::Error::SerdeError(e)))?;
        let params = PatchParams {
            field_manager: Some(field_manager.to_owned()),
            ..PatchParams::default()
        };
        let written = bounded(api.patch(name, &params, &Patch::<()>::Json(patch))).await?;
        as_json(&written)
    }
}

fn as_json(object: &DynamicObject) -> Result<Value, ApiError> {
    serde_json::to_value(object).map_err(|e| ApiError::Api(kube::Error::SerdeError(e)))
}

/// The `v`-prefixed form of a version string as the Cluster holds it, for messages.
pub fn shown(text: &str) -> String {
    version::parse_lenient(text).map_or_else(|| text.to_owned(), |v| version::with_v(&v))
}
