//! Which pods a drain moves, as `kubectl drain --ignore-daemonsets` decides it: its filters in its
//! order (DaemonSet, mirror, local storage, unreplicated), the first that does not let a pod go
//! deciding. A pod with no controller and a pod with an `emptyDir` volume are refused unless
//! `spec.inPlace.drain` allows them, and one refused pod stops the whole drain of its Node.

use api::v1alpha1::Drain;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// The annotation of a static (mirror) pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// `spec.inPlace.drain` with its defaults applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Evict pods with no controller (and DaemonSet pods whose DaemonSet is gone).
    pub force: bool,
    /// Evict pods with an `emptyDir` volume.
    pub delete_empty_dir_data: bool,
}

impl Options {
    /// The options of `spec.inPlace.drain`.
    pub fn from_spec(spec: Option<&Drain>) -> Self {
        Self {
            force: spec.and_then(|d| d.force).unwrap_or(false),
            delete_empty_dir_data: spec.and_then(|d| d.delete_empty_dir_data).unwrap_or(false),
        }
    }
}

/// Why a pod may not be evicted, and the field that would allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// No controller manages the pod: evicted, it is gone for good.
    Unmanaged,
    /// The pod has an `emptyDir` volume, whose data an eviction deletes.
    EmptyDir,
    /// The pod's DaemonSet is gone: nothing recreates it.
    OrphanedDaemonSetPod,
}

impl Refusal {
    /// The `spec.inPlace.drain` field that allows such a pod.
    pub fn field(self) -> &'static str {
        match self {
            Self::Unmanaged | Self::OrphanedDaemonSetPod => "spec.inPlace.drain.force",
            Self::EmptyDir => "spec.inPlace.drain.deleteEmptyDirData",
        }
    }

    fn why(self) -> &'static str {
        match self {
            Self::Unmanaged => "is managed by no controller",
            Self::EmptyDir => "has an emptyDir volume",
            Self::OrphanedDaemonSetPod => "belongs to a DaemonSet that no longer exists",
        }
    }
}

/// What a drain does with one pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Left on the Node: a running DaemonSet pod, a mirror pod, or a finished pod.
    Skip,
    /// Evicted through the Eviction API.
    Evict,
    /// Not evicted; it holds the whole drain of its Node.
    Refuse(Refusal),
}

/// Whether the pod ran to its end (`Succeeded` or `Failed`).
pub fn finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
}

/// The kind and name of the pod's controller, if it has one.
pub fn controller(pod: &Pod) -> Option<(&str, &str)> {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.name.as_str()))
}

fn has_empty_dir(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()))
}

/// What a drain under `options` does with `pod`. `daemon_set_exists` answers whether the
/// DaemonSet controlling a DaemonSet pod still exists.
///
/// Finished pods hold nothing and are left where they are (kubectl deletes them; both leave
/// no running workload behind).
pub fn disposition(pod: &Pod, options: Options, daemon_set_exists: bool) -> Disposition {
    if finished(pod) {
        return Disposition::Skip;
    }
    let controller = controller(pod);
    if controller.is_some_and(|(kind, _)| kind == "DaemonSet") {
        if daemon_set_exists {
            return Disposition::Skip;
        }
        // An orphan goes on to the other filters only when forced.
        if !options.force {
            return Disposition::Refuse(Refusal::OrphanedDaemonSetPod);
        }
    }
    if pod.annotations().contains_key(MIRROR_ANNOTATION) {
        return Disposition::Skip;
    }
    if has_empty_dir(pod) && !options.delete_empty_dir_data {
        return Disposition::Refuse(Refusal::EmptyDir);
    }
    if controller.is_none() && !options.force {
        return Disposition::Refuse(Refusal::Unmanaged);
    }
    Disposition::Evict
}

/// The drain of one Node, decided over all its pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The pods to evict, as `(namespace, name)`; empty while any pod is refused.
    pub evict: Vec<(String, String)>,
    /// Pods left to go (evictable, refused or terminating): the Node is drained when none is.
    pub remaining: usize,
    /// The first refused pod, as the condition message names it.
    pub refused: Option<String>,
}

/// Decides the drain of a Node from its pods: nothing is evicted while any pod is refused.
pub fn plan<'p>(
    pods: impl IntoIterator<Item = &'p Pod>,
    options: Options,
    daemon_set_exists: impl Fn(&str, &str) -> bool,
) -> Plan {
    let mut out = Plan::default();
    let mut refusals = Vec::new();
    for pod in pods {
        let namespace = pod.namespace().unwrap_or_default();
        let exists = controller(pod).is_none_or(|(_, name)| daemon_set_exists(&namespace, name));
        match disposition(pod, options, exists) {
            Disposition::Skip => {}
            Disposition::Evict => {
                out.remaining += 1;
                // A pod already terminating is waited for, not evicted again.
                if pod.metadata.deletion_timestamp.is_none() {
                    out.evict.push((namespace, pod.name_any()));
                }
            }
            Disposition::Refuse(why) => {
                out.remaining += 1;
                refusals.push((namespace, pod.name_any(), why));
            }
        }
    }
    refusals.sort();
    if let Some((namespace, name, why)) = refusals.first() {
        out.evict.clear();
        let more = match refusals.len() {
            1 => String::new(),
            n => format!(" ({} more pods are refused)", n - 1),
        };
        out.refused = Some(format!(
            "pod {namespace}/{name} {}: it is not evicted unless {} is true, and nothing on the Node is evicted while it stays{more}",
            why.why(),
            why.field()
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(name: &str, extra: &Value) -> Pod {
        let mut body = json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running"},
        });
        merge(&mut body, extra);
        serde_json::from_value(body).unwrap()
    }

    fn merge(into: &mut Value, from: &Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b.clone(),
        }
    }

    fn owned(kind: &str) -> Value {
        json!({"metadata": {"ownerReferences": [{
            "apiVersion": "apps/v1", "kind": kind, "name": "x", "uid": "u", "controller": true,
        }]}})
    }

    fn empty_dir() -> Value {
        json!({"spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}})
    }

    const NONE: Options = Options {
        force: false,
        delete_empty_dir_data: false,
    };
    const FORCE: Options = Options {
        force: true,
        delete_empty_dir_data: false,
    };
    const EMPTY_DIR: Options = Options {
        force: false,
        delete_empty_dir_data: true,
    };
    const BOTH: Options = Options {
        force: true,
        delete_empty_dir_data: true,
    };

    /// Each row: the pod, whether its DaemonSet exists, and what each of the four option sets
    /// does with it, as `kubectl drain --ignore-daemonsets [--force] [--delete-emptydir-data]`.
    #[test]
    fn pods_are_skipped_evicted_or_refused_as_kubectl_drain_does() {
        use Disposition::{Evict, Refuse, Skip};
        use Refusal::{EmptyDir, OrphanedDaemonSetPod, Unmanaged};
        let replica = owned("ReplicaSet");
        let daemon = owned("DaemonSet");
        let mut replica_empty = owned("ReplicaSet");
        merge(&mut replica_empty, &empty_dir());
        let bare_empty = empty_dir();
        let mut orphan_empty = owned("DaemonSet");
        merge(&mut orphan_empty, &empty_dir());
        let mut daemon_empty = owned("DaemonSet");
        merge(&mut daemon_empty, &empty_dir());
        let mirror = json!({"metadata": {"annotations": {MIRROR_ANNOTATION: "h"}}});
        let mut finished_bare = empty_dir();
        merge(
            &mut finished_bare,
            &json!({"status": {"phase": "Succeeded"}}),
        );
        let failed = json!({"status": {"phase": "Failed"}});
        // A controller reference that is not the controller does not count.
        let not_controller = json!({"metadata": {"ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "u",
        }]}});
        let rows: Vec<(&str, Value, bool, [Disposition; 4])> = vec![
            ("replicated", replica, true, [Evict; 4]),
            ("daemon", daemon.clone(), true, [Skip; 4]),
            ("daemon with emptyDir", daemon_empty, true, [Skip; 4]),
            (
                "orphaned daemon",
                daemon,
                false,
                [
                    Refuse(OrphanedDaemonSetPod),
                    Evict,
                    Refuse(OrphanedDaemonSetPod),
                    Evict,
                ],
            ),
            (
                "orphaned daemon with emptyDir",
                orphan_empty,
                false,
                [
                    Refuse(OrphanedDaemonSetPod),
                    Refuse(EmptyDir),
                    Refuse(OrphanedDaemonSetPod),
                    Evict,
                ],
            ),
            ("mirror", mirror, true, [Skip; 4]),
            (
                "finished bare with emptyDir",
                finished_bare,
                true,
                [Skip; 4],
            ),
            ("failed bare", failed, true, [Skip; 4]),
            (
                "bare",
                json!({}),
                true,
                [Refuse(Unmanaged), Evict, Refuse(Unmanaged), Evict],
            ),
            (
                "not the controller",
                not_controller,
                true,
                [Refuse(Unmanaged), Evict, Refuse(Unmanaged), Evict],
            ),
            (
                "replicated with emptyDir",
                replica_empty,
                true,
                [Refuse(EmptyDir), Refuse(EmptyDir), Evict, Evict],
            ),
            // kubectl's local-storage filter comes first: both flags are needed.
            (
                "bare with emptyDir",
                bare_empty,
                true,
                [Refuse(EmptyDir), Refuse(EmptyDir), Refuse(Unmanaged), Evict],
            ),
        ];
        for (what, extra, exists, expected) in rows {
            let p = pod("p", &extra);
            for (options, want) in [NONE, FORCE, EMPTY_DIR, BOTH].into_iter().zip(expected) {
                assert_eq!(disposition(&p, options, exists), want, "{what} {options:?}");
            }
        }
    }

    #[test]
    fn one_refused_pod_stops_every_eviction_and_is_named_with_its_field() {
        let pods = [
            pod("web", &owned("ReplicaSet")),
            pod("scratch", &{
                let mut v = owned("ReplicaSet");
                merge(&mut v, &empty_dir());
                v
            }),
            pod("lonely", &json!({})),
        ];
        let held = plan(&pods, NONE, |_, _| true);
        assert!(held.evict.is_empty(), "{held:?}");
        assert_eq!(held.remaining, 3);
        let message = held.refused.unwrap();
        assert!(
            message.starts_with("pod ns/lonely is managed by no controller")
                && message.contains("spec.inPlace.drain.force")
                && message.contains("1 more pods"),
            "{message}"
        );
        let forced = plan(&pods, FORCE, |_, _| true);
        let message = forced.refused.unwrap();
        assert!(
            message.contains("ns/scratch") && message.contains("deleteEmptyDirData"),
            "{message}"
        );
        let both = plan(&pods, BOTH, |_, _| true);
        assert_eq!(both.refused, None);
        assert_eq!(both.evict.len(), 3);
    }

    #[test]
    fn a_terminating_pod_is_waited_for_not_evicted_again() {
        let mut going = owned("ReplicaSet");
        merge(
            &mut going,
            &json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        );
        let out = plan(&[pod("going", &going)], NONE, |_, _| true);
        assert_eq!((out.evict.len(), out.remaining), (0, 1));
        assert_eq!(plan(&[], NONE, |_, _| true), Plan::default());
    }

    #[test]
    fn options_default_to_kubectl_defaults() {
        assert_eq!(Options::from_spec(None), NONE);
        let spec = Drain {
            force: Some(true),
            delete_empty_dir_data: None,
        };
        assert_eq!(Options::from_spec(Some(&spec)), FORCE);
    }
}
