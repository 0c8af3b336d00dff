//! Stand-ins for Cluster API: a Cluster's status written the way its controllers report a
//! finished rollout (`upgrade-safety.md` §1.5).

use anyhow::Result;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// Cluster API's group.
pub const GROUP: &str = "cluster.x-k8s.io";

/// The Clusters of `namespace`, read in `version` (`v1beta1` or `v1beta2`).
pub fn clusters(client: &Client, namespace: &str, version: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, version, "Cluster"),
        "clusters",
    );
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// The status Cluster API reports once a rollout to `version` has finished: the generation
/// observed, TopologyReconciled, the machine conditions and the version lists (under
/// `status.v1beta2` when read in v1beta1).
pub fn finished_status(api_version: &str, generation: i64, version: &str) -> Value {
    let at = "2026-01-01T00:00:00Z";
    let v1beta2 = json!({
        "conditions": [
            {"type": "TopologyReconciled", "status": "True", "reason": "ReconcileSucceeded", "lastTransitionTime": at},
            {"type": "ControlPlaneMachinesUpToDate", "status": "True", "reason": "UpToDate", "lastTransitionTime": at},
            {"type": "WorkerMachinesUpToDate", "status": "True", "reason": "UpToDate", "lastTransitionTime": at},
            {"type": "RollingOut", "status": "False", "reason": "NotRollingOut", "lastTransitionTime": at},
            {"type": "Available", "status": "True", "reason": "Available", "lastTransitionTime": at},
        ],
        "controlPlane": {"replicas": 1, "upToDateReplicas": 1, "versions": [{"version": version, "replicas": 1}]},
        "workers": {"replicas": 2, "upToDateReplicas": 2, "versions": [{"version": version, "replicas": 2}]},
    });
    let mut status = if api_version == "v1beta1" {
        json!({
            "conditions": [{"type": "TopologyReconciled", "status": "True", "lastTransitionTime": at}],
            "v1beta2": v1beta2,
        })
    } else {
        v1beta2
    };
    status["observedGeneration"] = json!(generation);
    status["phase"] = json!("Provisioned");
    status
}

/// Writes the Cluster's status as Cluster API reports a finished rollout at `version`.
pub async fn rollout_finished(
    client: &Client,
    namespace: &str,
    api_version: &str,
    name: &str,
    version: &str,
) -> Result<DynamicObject> {
    let api = clusters(client, namespace, api_version);
    let current = api.get(name).await?;
    let generation = current.metadata.generation.unwrap_or(1);
    let patch = json!({ "status": finished_status(api_version, generation, version) });
    Ok(api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}
