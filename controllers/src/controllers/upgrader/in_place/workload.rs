//! The in-place flow's writes: to the workload cluster (cordon, eviction, uncordon), reached
//! through Cluster API's `<cluster>-kubeconfig` Secret, and to the management cluster (the
//! ElementalHost's `in-place-update` label, the ElementalMachine's `imageUri`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{DynamicObject, EvictParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use super::kubeconfig::{self, Refused};
use super::observe::{
    ELEMENTAL_API_VERSION, ELEMENTAL_HOST, ELEMENTAL_MACHINE, IN_PLACE_UPDATE_LABEL,
    elemental_resource, evictable_pods,
};
use crate::runtime::status::{WriteError, bounded};

/// Why the workload cluster cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// The Secret does not exist or has no `value`.
    #[error("Secret {0} has no kubeconfig under the key `value`")]
    NoKubeconfig(String),
    /// Reading the Secret failed.
    #[error("reading Secret {0}")]
    Read(String, #[source] WriteError),
    /// The kubeconfig asks for something the allow-list refuses, or does not load.
    #[error("the kubeconfig in Secret {0} is refused: {1}")]
    Refused(String, #[source] Refused),
}

impl Unreachable {
    /// The kubeconfig itself is at fault (not the network or the Secret's absence).
    pub fn is_invalid_kubeconfig(&self) -> bool {
        matches!(self, Self::Refused(..))
    }
}

/// A client built only from what [`kubeconfig::accept`] lets through; nothing is sent.
pub fn client_from(bytes: &[u8]) -> Result<Client, Refused> {
    let text = std::str::from_utf8(bytes).map_err(|e| Refused {
        field: "value".into(),
        why: format!("not UTF-8: {e}"),
    })?;
    let config = kubeconfig::accept(text)?.config()?;
    Client::try_from(config).map_err(|e| Refused {
        field: "value".into(),
        why: e.to_string(),
    })
}

/// The name of the Secret Cluster API keeps a Cluster's admin kubeconfig in.
pub fn kubeconfig_secret(cluster: &str) -> String {
    format!("{cluster}-kubeconfig")
}

/// Workload-cluster clients, one per Cluster, rebuilt when its Secret changes.
#[derive(Default)]
pub struct Workloads {
    clients: Mutex<HashMap<(String, String), (String, Client)>>,
}

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads").finish_non_exhaustive()
    }
}

impl Workloads {
    /// The client of `cluster`'s workload cluster.
    pub async fn client(
        &self,
        management: &Client,
        namespace: &str,
        cluster: &str,
    ) -> Result<Client, Unreachable> {
        let name = kubeconfig_secret(cluster);
        let secrets: Api<Secret> = Api::namespaced(management.clone(), namespace);
        let secret = bounded(secrets.get_opt(&name))
            .await
            .map_err(|e| Unreachable::Read(name.clone(), e))?
            .ok_or_else(|| Unreachable::NoKubeconfig(name.clone()))?;
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        let key = (namespace.to_owned(), cluster.to_owned());
        if let Some((seen, client)) = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            && *seen == version
        {
            return Ok(client.clone());
        }
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get("value"))
            .map(|b| b.0.as_slice())
            .ok_or_else(|| Unreachable::NoKubeconfig(name.clone()))?;
        let client =
            client_from(bytes).map_err(|refused| Unreachable::Refused(name.clone(), refused))?;
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (version, client.clone()));
        Ok(client)
    }
}

/// A merge patch under `field_manager`.
fn merge_params(field_manager: &str) -> PatchParams {
    PatchParams {
        field_manager: Some(field_manager.to_owned()),
        ..PatchParams::default()
    }
}

/// Sets or clears the Node's `spec.unschedulable`, as `kubectl cordon` does.
pub async fn set_unschedulable(
    workload: &Client,
    node: &str,
    unschedulable: bool,
    field_manager: &str,
) -> Result<(), WriteError> {
    let api: Api<Node> = Api::all(workload.clone());
    let patch = json!({ "spec": { "unschedulable": unschedulable } });
    bounded(api.patch(node, &merge_params(field_manager), &Patch::Merge(&patch))).await?;
    Ok(())
}

/// Asks the Eviction API to move every evictable pod off `node`. A PodDisruptionBudget's refusal
/// (429) and a pod already gone (404) are not errors: the drain is asked again next pass.
/// Returns how many evictions were refused.
pub async fn evict(workload: &Client, node: &str) -> Result<usize, WriteError> {
    let mut refused = 0;
    for pod in evictable_pods(workload, node).await? {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
            continue;
        };
        let api: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(workload.clone(), namespace);
        match bounded(api.evict(name, &EvictParams::default())).await {
            Ok(_) => {}
            Err(WriteError::Api(kube::Error::Api(e))) if e.code == 429 => refused += 1,
            Err(WriteError::Api(kube::Error::Api(e))) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// Labels the ElementalHost `in-place-update=pending` with a merge patch of that label only
/// (a patch, unlike an apply, never creates a host that has gone).
pub async fn label_pending(
    management: &Client,
    namespace: &str,
    host: &str,
    field_manager: &str,
) -> Result<(), WriteError> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        management.clone(),
        namespace,
        &elemental_resource(ELEMENTAL_HOST),
    );
    let patch = json!({ "metadata": { "labels": { IN_PLACE_UPDATE_LABEL: "pending" } } });
    bounded(api.patch(host, &merge_params(field_manager), &Patch::Merge(&patch))).await?;
    Ok(())
}

/// The server-side apply body that owns only `osVersion.imageUri` (and `upgradeRecovery` when
/// asked) of the ElementalMachine's schemaless `osVersionManagement`; never `debug`.
pub fn image_body(machine: &str, image: &str, upgrade_recovery: bool) -> serde_json::Value {
    let mut os_version = json!({ "imageUri": image });
    if upgrade_recovery {
        os_version["upgradeRecovery"] = json!(true);
    }
    json!({
        "apiVersion": ELEMENTAL_API_VERSION,
        "kind": ELEMENTAL_MACHINE,
        "metadata": { "name": machine },
        "spec": { "osVersionManagement": { "osVersion": os_version } },
    })
}

/// Applies [`image_body`] under `field_manager`.
pub async fn apply_image(
    management: &Client,
    namespace: &str,
    machine: &str,
    image: &str,
    upgrade_recovery: bool,
    field_manager: &str,
) -> Result<(), WriteError> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        management.clone(),
        namespace,
        &elemental_resource(ELEMENTAL_MACHINE),
    );
    let body = image_body(machine, image, upgrade_recovery);
    bounded(api.patch(
        machine,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&body),
    ))
    .await?;
    Ok(())
}
