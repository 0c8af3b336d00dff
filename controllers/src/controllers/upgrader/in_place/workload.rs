//! The in-place flow's writes: to the workload cluster (cordon, eviction, uncordon), reached
//! through Cluster API's `<cluster>-kubeconfig` Secret, and to the management cluster (the
//! ElementalHost's `in-place-update` label, the ElementalMachine's `imageUri`, the Machine's
//! `skip-remediation` annotation).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use http_body_util::Limited;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{DynamicObject, EvictParams, Patch, PatchParams};
use kube::client::ClientBuilder;
use kube::core::ApiResource;
use kube::{Api, Client};
use serde_json::json;
use tower::util::MapResponseLayer;

use api::v1alpha1::CORDONED_BY_ANNOTATION;

use super::drain;
use super::kubeconfig::{self, Refused};
use super::observe::{
    ELEMENTAL_API_VERSION, ELEMENTAL_HOST, ELEMENTAL_MACHINE, IN_PLACE_UPDATE_LABEL, drain_plan,
    elemental_resource,
};
use super::remediation::{SKIP_REMEDIATION_ANNOTATION, SKIP_REMEDIATION_BY};
use crate::runtime::status::{ApiError, bounded};

/// Why the workload cluster cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// The Secret does not exist or has no `value`.
    #[error("Secret {0} has no kubeconfig under the key `value`")]
    NoKubeconfig(String),
    /// Reading the Secret failed.
    #[error("reading Secret {0}")]
    Read(String, #[source] ApiError),
    /// Reading its Nodes and pods took longer than the deadline.
    #[error("the workload cluster's Nodes and pods were not read within {0:?}")]
    Slow(std::time::Duration),
    /// Reading its Nodes and pods failed (a refused connection, an error answer).
    #[error("reading the workload cluster's Nodes and pods")]
    Unanswered(#[source] ApiError),
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

/// How long one reconcile may spend reading a workload cluster's Nodes and pods.
pub const READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// The largest response body read from a workload cluster: a hostile server cannot make the
/// manager buffer more than this per request.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// A client built only from what [`kubeconfig::accept`] lets through, its responses bounded by
/// [`MAX_RESPONSE_BYTES`]; nothing is sent.
pub fn client_from(bytes: &[u8]) -> Result<Client, Refused> {
    let refused = |why: String| Refused {
        field: "value".into(),
        why,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| refused(format!("not UTF-8: {e}")))?;
    let config = kubeconfig::accept(text)?.config()?;
    with_bounded_bodies(config).map_err(|e| refused(e.to_string()))
}

/// The client of `config`, every response body cut off past [`MAX_RESPONSE_BYTES`].
fn with_bounded_bodies(config: kube::Config) -> Result<Client, kube::Error> {
    let bounded_bodies = MapResponseLayer::new(|response: http::Response<_>| {
        response.map(|body| Limited::new(body, MAX_RESPONSE_BYTES))
    });
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&bounded_bodies)
        .build())
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

/// The merge patch of a cordon: `spec.unschedulable` and this upgrader's mark, `owner`
/// (`<kind>/<name>`), in one write, so a Node is never cordoned by us without our mark.
pub fn cordon_patch(owner: &str) -> serde_json::Value {
    json!({
        "metadata": { "annotations": { CORDONED_BY_ANNOTATION: owner } },
        "spec": { "unschedulable": true },
    })
}

/// The JSON patch of an uncordon: applied only while `owner`'s mark is on the Node (the `test`
/// fails otherwise, and nothing changes), removing the mark with `spec.unschedulable`.
pub fn uncordon_patch(owner: &str) -> json_patch::Patch {
    let path = format!(
        "/metadata/annotations/{}",
        CORDONED_BY_ANNOTATION.replace('~', "~0").replace('/', "~1")
    );
    serde_json::from_value(json!([
        { "op": "test", "path": path, "value": owner },
        { "op": "remove", "path": path },
        { "op": "add", "path": "/spec/unschedulable", "value": false },
    ]))
    .unwrap_or_default()
}

/// Cordons the Node, as `kubectl cordon` does, and marks it as cordoned by `owner`.
pub async fn cordon(
    workload: &Client,
    node: &str,
    owner: &str,
    field_manager: &str,
) -> Result<(), ApiError> {
    let api: Api<Node> = Api::all(workload.clone());
    let patch = cordon_patch(owner);
    bounded(api.patch(node, &merge_params(field_manager), &Patch::Merge(&patch))).await?;
    Ok(())
}

/// Uncordons the Node if `owner`'s mark is on it, removing the mark. A Node whose mark is gone
/// or another's (the patch's `test` fails) is left as it is: the next pass sees it.
pub async fn uncordon(
    workload: &Client,
    node: &str,
    owner: &str,
    field_manager: &str,
) -> Result<(), ApiError> {
    let api: Api<Node> = Api::all(workload.clone());
    let patch = uncordon_patch(owner);
    match bounded(api.patch(
        node,
        &merge_params(field_manager),
        &Patch::<()>::Json(patch),
    ))
    .await
    {
        Ok(_) => Ok(()),
        Err(ApiError::Api(kube::Error::Api(e))) if e.code == 409 || e.code == 422 => {
            tracing::info!(
                node,
                owner,
                "not uncordoned: the Node does not carry our mark"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Asks the Eviction API to move the pods a drain under `options` moves off `node`; nothing
/// is evicted while any pod there is refused. A PodDisruptionBudget's refusal (429) and a pod
/// already gone (404) are not errors: the drain is asked again next pass. Every pod is asked
/// even when one eviction fails; the first failure is returned. Returns how many evictions
/// were refused.
pub async fn evict(
    workload: &Client,
    node: &str,
    options: drain::Options,
) -> Result<usize, ApiError> {
    let plan = drain_plan(workload, node, options).await?;
    let mut refused = 0;
    let mut failed = None;
    for (namespace, name) in &plan.evict {
        let api: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(workload.clone(), namespace);
        match bounded(api.evict(name, &EvictParams::default())).await {
            Ok(_) => {}
            Err(ApiError::Api(kube::Error::Api(e))) if e.code == 429 => refused += 1,
            Err(ApiError::Api(kube::Error::Api(e))) if e.code == 404 => {}
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    failed.map_or(Ok(refused), Err)
}

/// Sets (`skip`) or removes Cluster API's `cluster.x-k8s.io/skip-remediation` on the Machine
/// (of `machine_resource`, the served Cluster API version) with a merge patch of that annotation
/// only. A Machine that is gone (404) has nothing left to hold.
pub async fn skip_remediation(
    management: &Client,
    machine_resource: &ApiResource,
    namespace: &str,
    machine: &str,
    skip: bool,
    field_manager: &str,
) -> Result<(), ApiError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(management.clone(), namespace, machine_resource);
    let value = skip.then_some(SKIP_REMEDIATION_BY);
    let patch = json!({ "metadata": { "annotations": { SKIP_REMEDIATION_ANNOTATION: value } } });
    match bounded(api.patch(machine, &merge_params(field_manager), &Patch::Merge(&patch))).await {
        Err(ApiError::Api(kube::Error::Api(e))) if e.code == 404 => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Labels the ElementalHost `in-place-update=pending` with a merge patch of that label only
/// (a patch, unlike an apply, never creates a host that has gone).
pub async fn label_pending(
    management: &Client,
    namespace: &str,
    host: &str,
    field_manager: &str,
) -> Result<(), ApiError> {
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
/// asked) of the ElementalMachine's schemaless `osVersionManagement`; never `debug`. It names the
/// machine's observed `uid`: an apply to a deleted (or deleted and recreated) ElementalMachine is
/// refused by the API server instead of creating one.
pub fn image_body(
    (machine, uid): (&str, &str),
    image: &str,
    upgrade_recovery: bool,
) -> serde_json::Value {
    let mut os_version = json!({ "imageUri": image });
    if upgrade_recovery {
        os_version["upgradeRecovery"] = json!(true);
    }
    json!({
        "apiVersion": ELEMENTAL_API_VERSION,
        "kind": ELEMENTAL_MACHINE,
        "metadata": { "name": machine, "uid": uid },
        "spec": { "osVersionManagement": { "osVersion": os_version } },
    })
}

/// Applies [`image_body`] under `field_manager`.
pub async fn apply_image(
    management: &Client,
    namespace: &str,
    (machine, uid): (&str, &str),
    image: &str,
    upgrade_recovery: bool,
    field_manager: &str,
) -> Result<(), ApiError> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        management.clone(),
        namespace,
        &elemental_resource(ELEMENTAL_MACHINE),
    );
    let body = image_body((machine, uid), image, upgrade_recovery);
    bounded(api.patch(
        machine,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&body),
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A server that answers one request with a JSON body of `size` bytes.
    async fn serve_body(size: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0_u8; 4096];
            let _ = socket.read(&mut request).await;
            let padding = "x".repeat(size.saturating_sub(40));
            let body = format!(r#"{{"kind":"PodList","items":[],"p":"{padding}"}}"#);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
        });
        format!("http://{address}")
    }

    async fn list_pods(server: &str) -> Result<(), kube::Error> {
        let config = kube::Config::new(server.parse().unwrap());
        let client = with_bounded_bodies(config).unwrap();
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client);
        pods.list(&kube::api::ListParams::default())
            .await
            .map(|_| ())
    }

    #[test]
    fn the_cordon_carries_our_mark_and_the_uncordon_tests_it() {
        assert_eq!(
            cordon_patch("ClusterClassClusterUpgrader/u"),
            json!({
                "metadata": {"annotations": {CORDONED_BY_ANNOTATION: "ClusterClassClusterUpgrader/u"}},
                "spec": {"unschedulable": true},
            })
        );
        let path = "/metadata/annotations/kubernetesupgraded.dimitrikoshkin.com~1cordoned-by";
        assert_eq!(
            serde_json::to_value(uncordon_patch("ClusterClassClusterUpgrader/u")).unwrap(),
            json!([
                {"op": "test", "path": path, "value": "ClusterClassClusterUpgrader/u"},
                {"op": "remove", "path": path},
                {"op": "add", "path": "/spec/unschedulable", "value": false},
            ])
        );
    }

    #[tokio::test]
    async fn a_response_past_the_bound_is_an_error_not_a_buffer() {
        let small = serve_body(1024).await;
        assert!(list_pods(&small).await.is_ok());
        let huge = serve_body(MAX_RESPONSE_BYTES + 1024).await;
        assert!(list_pods(&huge).await.is_err());
    }
}
