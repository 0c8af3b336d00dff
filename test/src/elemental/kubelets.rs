//! The workload cluster's kubelets and disruption controller, stood in for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::tasks::{Tasks, lock};
use super::workload::now_json;

/// What the [`WorkloadKubelets`] stand-in did.
#[derive(Clone, Debug, Default)]
pub struct WorkloadKubeletsLog {
    /// Pods whose graceful deletion it confirmed (deleted with grace period 0).
    pub confirmed_deletions: Vec<String>,
    /// Errors it met (a test may assert there are none).
    pub errors: Vec<String>,
}

/// Stands in for the workload cluster's kubelets and for kube-controller-manager's disruption
/// controller, which do not run on the bare apiserver:
/// - a pod with a `deletionTimestamp` (an eviction of a pod with a grace period) is deleted with
///   grace period 0, as the kubelet does once the containers stopped;
/// - every Node's `Ready` condition gets a fresh `lastHeartbeatTime` every `heartbeat` (a real
///   kubelet reports at least every `nodeStatusReportFrequency`; the test shortens it);
/// - every PodDisruptionBudget's status is computed from its pods (healthy = Running, Ready,
///   not terminating), with `observedGeneration`, so the Eviction API can grant or refuse.
#[derive(Debug)]
pub struct WorkloadKubelets {
    log: Arc<Mutex<WorkloadKubeletsLog>>,
    _tasks: Tasks,
}

impl WorkloadKubelets {
    /// Starts it on the workload cluster `client`.
    pub fn spawn(client: Client, heartbeat: Duration) -> Self {
        let log = Arc::new(Mutex::new(WorkloadKubeletsLog::default()));
        let mut tasks = Tasks::default();
        let shared = log.clone();
        tasks.spawn(async move {
            let mut last_heartbeat = Instant::now();
            loop {
                if let Err(e) = kubelet_pass(&client, &shared).await {
                    lock(&shared).errors.push(format!("{e:#}"));
                }
                if last_heartbeat.elapsed() >= heartbeat {
                    last_heartbeat = Instant::now();
                    if let Err(e) = heartbeat_all(&client).await {
                        lock(&shared).errors.push(format!("heartbeat: {e:#}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { log, _tasks: tasks }
    }

    /// What it did so far.
    pub fn log(&self) -> WorkloadKubeletsLog {
        lock(&self.log).clone()
    }
}

async fn kubelet_pass(client: &Client, log: &Mutex<WorkloadKubeletsLog>) -> Result<()> {
    let all: Api<Pod> = Api::all(client.clone());
    let pods = all.list(&ListParams::default()).await?.items;
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
    {
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => lock(log).confirmed_deletions.push(pod.name_any()),
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let pdbs: Api<PodDisruptionBudget> = Api::all(client.clone());
    for pdb in pdbs.list(&ListParams::default()).await?.items {
        disruption_status(client, &pdb, &pods).await?;
    }
    Ok(())
}

fn healthy(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Writes the PodDisruptionBudget's status as the disruption controller would (integer
/// `minAvailable` only), when it differs.
async fn disruption_status(client: &Client, pdb: &PodDisruptionBudget, pods: &[Pod]) -> Result<()> {
    let ns = pdb.namespace().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();
    let selector = spec
        .selector
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    let matching: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .collect();
    let expected = i32::try_from(matching.len()).unwrap_or(i32::MAX);
    let current = i32::try_from(matching.iter().filter(|p| healthy(p)).count()).unwrap_or(i32::MAX);
    let desired = match spec.min_available {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => n,
        _ => 0,
    };
    let allowed = (current - desired).max(0);
    let generation = pdb.metadata.generation.unwrap_or(1);
    let status = pdb.status.clone().unwrap_or_default();
    let same = status.observed_generation == Some(generation)
        && status.disruptions_allowed == allowed
        && status.current_healthy == current
        && status.desired_healthy == desired
        && status.expected_pods == expected
        && status
            .disrupted_pods
            .as_ref()
            .is_none_or(BTreeMap::is_empty);
    if same {
        return Ok(());
    }
    let (condition, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let body = json!({"status": {
        "observedGeneration": generation,
        "disruptionsAllowed": allowed,
        "currentHealthy": current,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptedPods": null,
        "conditions": [{"type": "DisruptionAllowed", "status": condition, "reason": reason, "message": "", "lastTransitionTime": now_json(), "observedGeneration": generation}],
    }});
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        &pdb.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&body),
    )
    .await?;
    Ok(())
}

/// A fresh `lastHeartbeatTime` on every Node's Ready condition.
async fn heartbeat_all(client: &Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes.list(&ListParams::default()).await?.items {
        heartbeat(client, &node.name_any(), None).await?;
    }
    Ok(())
}

/// Reports the Node's status as its kubelet would: a fresh Ready heartbeat and, after a boot,
/// the booted `(osImage, bootID)` in the same write (a strategic merge: the Ready entry is
/// merged by type).
pub(super) async fn heartbeat(
    client: &Client,
    node: &str,
    booted: Option<(&str, &str)>,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut status = json!({"conditions": [{"type": "Ready", "lastHeartbeatTime": now_json()}]});
    if let Some((os, boot)) = booted {
        status["nodeInfo"] = json!({"osImage": os, "bootID": boot});
    }
    nodes
        .patch_status(
            node,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": status})),
        )
        .await?;
    Ok(())
}
