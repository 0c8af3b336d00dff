//! Whether the previous step has finished (`upgrade-safety.md` §1.5), read from the Cluster as
//! served (`cluster.x-k8s.io` v1beta1 or v1beta2), and, where the Cluster's status carries no
//! version lists, from its control plane object and MachineDeployments. Pure: the caller reads
//! the objects. Every missing signal counts as unfinished, never as finished.

use semver::Version;
use serde_json::Value;

pub use crate::runtime::projection::cluster::UPGRADE_STEP_ANNOTATION;

/// The Cluster API version the Cluster was read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterApi {
    /// `cluster.x-k8s.io/v1beta1`.
    V1Beta1,
    /// `cluster.x-k8s.io/v1beta2`.
    V1Beta2,
}

/// What the Cluster, its control plane and MachineDeployments say.
#[derive(Clone, Copy, Debug)]
pub struct Rollout<'a> {
    /// The API version the Cluster was read in.
    pub api: ClusterApi,
    /// The Cluster.
    pub cluster: &'a Value,
    /// The control plane object `spec.controlPlaneRef` names, if it was read.
    pub control_plane: Option<&'a Value>,
    /// The Cluster's topology-owned MachineDeployments, if they were read.
    pub machine_deployments: Option<&'a [Value]>,
}

/// Why the previous step is not finished, for the `Progressing` message.
pub type Unfinished = String;

/// `Ok` when every check of §1.5 holds for `target`; otherwise the first that does not.
pub fn finished(rollout: &Rollout<'_>, target: &Version) -> Result<(), Unfinished> {
    if cluster_checks(rollout, target)? {
        Ok(())
    } else {
        objects(rollout, target)
    }
}

/// Whether the Cluster's own checks pass but its status carries no version lists, so that the
/// control plane object and the MachineDeployments must be read.
pub fn objects_needed(rollout: &Rollout<'_>, target: &Version) -> bool {
    cluster_checks(rollout, target) == Ok(false)
}

/// The checks on the Cluster itself; `Ok(true)` when its version lists settled the versions,
/// `Ok(false)` when the objects must.
fn cluster_checks(rollout: &Rollout<'_>, target: &Version) -> Result<bool, Unfinished> {
    let cluster = rollout.cluster;
    let generation = cluster
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    let observed = cluster
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    if generation.is_none() || generation != observed {
        return Err(format!(
            "Cluster API has not observed the Cluster's generation {} yet (status.observedGeneration {})",
            show(generation),
            show(observed)
        ));
    }
    if cluster
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(UPGRADE_STEP_ANNOTATION))
        .is_some()
    {
        return Err(format!(
            "the Cluster carries {UPGRADE_STEP_ANNOTATION}: an upgrade is running"
        ));
    }
    // The v1beta2 view: status itself in v1beta2, status.v1beta2 in v1beta1.
    let v1beta2 = match rollout.api {
        ClusterApi::V1Beta2 => cluster.get("status"),
        ClusterApi::V1Beta1 => cluster.pointer("/status/v1beta2"),
    };
    match rollout.api {
        ClusterApi::V1Beta2 => {
            let conditions = v1beta2.and_then(|s| s.get("conditions"));
            topology_reconciled(conditions, true)?;
        }
        ClusterApi::V1Beta1 => {
            topology_reconciled(cluster.pointer("/status/conditions"), false)?;
            if let Some(conditions) = v1beta2.and_then(|s| s.get("conditions")) {
                topology_reconciled(Some(conditions), true)?;
            }
        }
    }
    if let Some(v1beta2) = v1beta2 {
        summaries(v1beta2, rollout.api == ClusterApi::V1Beta2)?;
    }
    let versions = v1beta2
        .and_then(|s| s.pointer("/controlPlane/versions"))
        .filter(|v| !v.is_null());
    match versions {
        Some(control_plane) => {
            single_version("status.controlPlane.versions", control_plane, target)?;
            if let Some(workers) = v1beta2
                .and_then(|s| s.pointer("/workers/versions"))
                .filter(|v| !v.is_null())
            {
                single_version("status.workers.versions", workers, target)?;
            }
            Ok(true)
        }
        None => Ok(false),
    }
}

fn show(value: Option<i64>) -> String {
    value.map_or_else(|| "unset".to_owned(), |v| v.to_string())
}

fn condition<'a>(conditions: Option<&'a Value>, type_: &str) -> Option<&'a Value> {
    conditions?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn status_of(conditions: Option<&Value>, type_: &str) -> Option<String> {
    condition(conditions, type_)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// `TopologyReconciled` True; in the v1beta2 form its reason must also be `ReconcileSucceeded`.
fn topology_reconciled(conditions: Option<&Value>, with_reason: bool) -> Result<(), Unfinished> {
    let Some(c) = condition(conditions, "TopologyReconciled") else {
        return Err("the Cluster reports no TopologyReconciled condition".into());
    };
    let status = c.get("status").and_then(Value::as_str).unwrap_or_default();
    let reason = c.get("reason").and_then(Value::as_str).unwrap_or_default();
    if status != "True" || (with_reason && reason != "ReconcileSucceeded") {
        return Err(format!(
            "TopologyReconciled is {status:?} with reason {reason:?}, not True with ReconcileSucceeded"
        ));
    }
    Ok(())
}

/// The v1beta2 summaries: machine conditions, upgrade plans and replica counts. The conditions
/// are required in v1beta2; under `status.v1beta2` of a v1beta1 Cluster they are checked when
/// present.
fn summaries(status: &Value, required: bool) -> Result<(), Unfinished> {
    let conditions = status.get("conditions");
    for (type_, want) in [
        ("ControlPlaneMachinesUpToDate", "True"),
        ("WorkerMachinesUpToDate", "True"),
        ("RollingOut", "False"),
        ("Available", "True"),
    ] {
        match status_of(conditions, type_) {
            Some(s) if s == want => {}
            None if !required && conditions.is_none() => {}
            other => {
                return Err(format!(
                    "{type_} is {}, not {want}",
                    other.as_deref().unwrap_or("absent")
                ));
            }
        }
    }
    for part in ["controlPlane", "workers"] {
        let Some(summary) = status.get(part) else {
            continue;
        };
        if summary
            .get("upgradePlan")
            .is_some_and(|p| !p.is_null() && p.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(format!("status.{part}.upgradePlan is not empty"));
        }
        let replicas = summary.get("replicas").and_then(Value::as_i64);
        let up_to_date = summary.get("upToDateReplicas").and_then(Value::as_i64);
        if replicas != up_to_date {
            return Err(format!(
                "status.{part}: {} of {} replicas are up to date",
                show(up_to_date),
                show(replicas)
            ));
        }
    }
    Ok(())
}

/// A versions list holding exactly one entry, the target.
fn single_version(field: &str, list: &Value, target: &Version) -> Result<(), Unfinished> {
    let entries = list.as_array().map(Vec::as_slice).unwrap_or_default();
    let versions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.get("version").and_then(Value::as_str))
        .collect();
    match versions.as_slice() {
        [only] if entries.len() == 1 && same(only, target) => Ok(()),
        _ => Err(format!("{field} is {versions:?}, not only v{target}")),
    }
}

fn same(text: &str, target: &Version) -> bool {
    api::version::parse_lenient(text).is_some_and(|v| v.cmp_precedence(target).is_eq())
}

/// The control plane object's `status.version` and each MachineDeployment's version and replicas.
fn objects(rollout: &Rollout<'_>, target: &Version) -> Result<(), Unfinished> {
    let Some(control_plane) = rollout.control_plane else {
        return Err(
            "neither the Cluster's status nor a control plane object reports a version".into(),
        );
    };
    let version = control_plane
        .pointer("/status/version")
        .and_then(Value::as_str);
    if !version.is_some_and(|v| same(v, target)) {
        return Err(format!(
            "the control plane reports version {}, not v{target}",
            version.unwrap_or("none")
        ));
    }
    let updated = match rollout.api {
        ClusterApi::V1Beta1 => "updatedReplicas",
        ClusterApi::V1Beta2 => "upToDateReplicas",
    };
    replicas_current("the control plane", control_plane, updated)?;
    let Some(deployments) = rollout.machine_deployments else {
        return Err("the MachineDeployments were not read".into());
    };
    for md in deployments {
        let name = md
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let version = md
            .pointer("/spec/template/spec/version")
            .and_then(Value::as_str);
        if !version.is_some_and(|v| same(v, target)) {
            return Err(format!(
                "MachineDeployment {name} is at {}, not v{target}",
                version.unwrap_or("no version")
            ));
        }
        replicas_current(&format!("MachineDeployment {name}"), md, updated)?;
    }
    Ok(())
}

fn replicas_current(what: &str, object: &Value, updated: &str) -> Result<(), Unfinished> {
    let replicas = object.pointer("/status/replicas").and_then(Value::as_i64);
    let current = object
        .get("status")
        .and_then(|s| s.get(updated))
        .and_then(Value::as_i64);
    if replicas.is_none() || replicas != current {
        return Err(format!(
            "{what}: status.{updated} {} of status.replicas {}",
            show(current),
            show(replicas)
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::type_complexity, clippy::semicolon_if_nothing_returned)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    fn v(text: &str) -> Version {
        api::version::parse_lenient(text).unwrap()
    }

    /// A v1beta2 Cluster whose status reports a finished rollout at `version`.
    pub(in crate::controllers::upgrader) fn finished_v1beta2(version: &str) -> Value {
        json!({
            "metadata": {"name": "c", "generation": 3},
            "status": {
                "observedGeneration": 3,
                "conditions": [
                    {"type": "TopologyReconciled", "status": "True", "reason": "ReconcileSucceeded"},
                    {"type": "ControlPlaneMachinesUpToDate", "status": "True", "reason": "UpToDate"},
                    {"type": "WorkerMachinesUpToDate", "status": "True", "reason": "UpToDate"},
                    {"type": "RollingOut", "status": "False", "reason": "NotRollingOut"},
                    {"type": "Available", "status": "True", "reason": "Available"},
                ],
                "controlPlane": {"replicas": 3, "upToDateReplicas": 3, "versions": [{"version": version, "replicas": 3}]},
                "workers": {"replicas": 2, "upToDateReplicas": 2, "versions": [{"version": version, "replicas": 2}]},
            }
        })
    }

    fn check(cluster: &Value, api: ClusterApi, target: &str) -> Result<(), Unfinished> {
        finished(
            &Rollout {
                api,
                cluster,
                control_plane: None,
                machine_deployments: None,
            },
            &v(target),
        )
    }

    #[test]
    fn a_v1beta2_cluster_with_every_signal_is_finished() {
        let c = finished_v1beta2("v1.30.2");
        assert_eq!(check(&c, ClusterApi::V1Beta2, "v1.30.2"), Ok(()));
        assert!(check(&c, ClusterApi::V1Beta2, "v1.30.3").is_err());
    }

    #[test]
    fn each_missing_signal_is_unfinished() {
        let target = "v1.30.2";
        let cases: Vec<(&str, Box<dyn Fn(&mut Value)>)> = vec![
            (
                "generation",
                Box::new(|c| c["metadata"]["generation"] = json!(4)),
            ),
            (
                "annotation",
                Box::new(|c| {
                    c["metadata"]["annotations"] = json!({UPGRADE_STEP_ANNOTATION: "v1.30.2"})
                }),
            ),
            (
                "reason",
                Box::new(|c| c["status"]["conditions"][0]["reason"] = json!("ClusterUpgrading")),
            ),
            (
                "rolling",
                Box::new(|c| c["status"]["conditions"][3]["status"] = json!("True")),
            ),
            (
                "cp machines",
                Box::new(|c| c["status"]["conditions"][1]["status"] = json!("False")),
            ),
            (
                "available",
                Box::new(|c| {
                    c["status"]["conditions"].as_array_mut().unwrap().remove(4);
                }),
            ),
            (
                "plan",
                Box::new(|c| {
                    c["status"]["controlPlane"]["upgradePlan"] = json!([{"version": "v1.31.0"}])
                }),
            ),
            (
                "replicas",
                Box::new(|c| c["status"]["workers"]["upToDateReplicas"] = json!(1)),
            ),
            (
                "two versions",
                Box::new(
                    |c| c["status"]["workers"]["versions"] = json!([{"version": "v1.29.9", "replicas": 1}, {"version": "v1.30.2", "replicas": 1}]),
                ),
            ),
            (
                "cp version",
                Box::new(|c| {
                    c["status"]["controlPlane"]["versions"] =
                        json!([{"version": "v1.29.9", "replicas": 3}])
                }),
            ),
            ("no status", Box::new(|c| c["status"] = json!({}))),
        ];
        for (name, mutate) in cases {
            let mut c = finished_v1beta2(target);
            mutate(&mut c);
            assert!(check(&c, ClusterApi::V1Beta2, target).is_err(), "{name}");
        }
    }

    #[test]
    fn a_v1beta1_cluster_reads_v1beta2_under_status_v1beta2() {
        let mut c = json!({
            "metadata": {"name": "c", "generation": 2},
            "status": {
                "observedGeneration": 2,
                "conditions": [{"type": "TopologyReconciled", "status": "True"}],
            }
        });
        c["status"]["v1beta2"] = finished_v1beta2("v1.30.2")["status"].clone();
        assert_eq!(check(&c, ClusterApi::V1Beta1, "v1.30.2"), Ok(()));
        c["status"]["conditions"][0]["status"] = json!("False");
        assert!(check(&c, ClusterApi::V1Beta1, "v1.30.2").is_err());
    }

    #[test]
    fn without_version_lists_the_objects_decide_and_silence_is_unfinished() {
        let c = json!({
            "metadata": {"name": "c", "generation": 2},
            "status": {"observedGeneration": 2, "conditions": [{"type": "TopologyReconciled", "status": "True"}]},
        });
        assert!(
            check(&c, ClusterApi::V1Beta1, "v1.30.2").is_err(),
            "a silent Cluster is unfinished"
        );
        let kcp = json!({"status": {"version": "v1.30.2", "replicas": 3, "updatedReplicas": 3}});
        let md = json!({"metadata": {"name": "md-0"}, "spec": {"template": {"spec": {"version": "v1.30.2"}}}, "status": {"replicas": 2, "updatedReplicas": 2}});
        let mds = vec![md.clone()];
        let rollout = |cp: &'_ Value, mds: &'_ [Value]| -> Result<(), Unfinished> {
            finished(
                &Rollout {
                    api: ClusterApi::V1Beta1,
                    cluster: &c,
                    control_plane: Some(cp),
                    machine_deployments: Some(mds),
                },
                &v("v1.30.2"),
            )
        };
        assert_eq!(rollout(&kcp, &mds), Ok(()));
        let old_cp = json!({"status": {"version": "v1.29.9", "replicas": 3, "updatedReplicas": 3}});
        assert!(rollout(&old_cp, &mds).is_err());
        let mut rolling = md;
        rolling["status"]["updatedReplicas"] = json!(1);
        assert!(rollout(&kcp, &[rolling]).is_err());
    }
}
