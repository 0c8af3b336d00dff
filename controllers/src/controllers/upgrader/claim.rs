//! One upgrader per Cluster. Upgraders of either kind may name the same Cluster; exactly one acts:
//! the oldest by `creationTimestamp`, then a ClusterClassClusterUpgrader before an
//! InClusterUpgradeAutomation, then by name. The others hold with `ClusterClaimed` and write
//! nothing to the Cluster or its hosts. A paused upgrader keeps its claim; one being deleted has
//! given it up.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use api::v1alpha1::{ClusterClassClusterUpgrader, InClusterUpgradeAutomation};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};

use super::UpgraderKind;
use super::index::Index;

/// One upgrader that names a Cluster, ordered so the one that acts is the least.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claimant {
    /// `metadata.creationTimestamp`; one not yet set sorts last.
    pub created: Option<Timestamp>,
    /// Among equals in age, a ClusterClassClusterUpgrader comes first.
    pub rank: u8,
    /// `metadata.name`.
    pub name: String,
    /// The kind, for messages.
    pub kind: &'static str,
}

impl fmt::Display for Claimant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

impl Claimant {
    /// The claimant `upgrader` is.
    pub fn of<K: UpgraderKind>(upgrader: &K) -> Self {
        Self {
            created: upgrader.meta().creation_timestamp.as_ref().map(|t| t.0),
            rank: K::CLAIM_RANK,
            name: upgrader.name_any(),
            kind: K::KIND,
        }
    }

    fn key(&self) -> (bool, Option<Timestamp>, u8, &str) {
        (self.created.is_none(), self.created, self.rank, &self.name)
    }
}

/// The claimant that acts among `claimants`, if any.
pub fn acting<'a>(claimants: impl IntoIterator<Item = &'a Claimant>) -> Option<&'a Claimant> {
    claimants.into_iter().min_by(|a, b| a.key().cmp(&b.key()))
}

/// Whether `upgrader` still claims its Cluster: it is readable and not being deleted.
pub fn claims<K: UpgraderKind>(upgrader: &K, namespace: &str, cluster: &str) -> bool {
    upgrader.meta().deletion_timestamp.is_none()
        && upgrader.namespace().as_deref() == Some(namespace)
        && upgrader.view().cluster_name == cluster
}

/// The upgraders of both kinds, from the shared caches.
#[derive(Clone)]
pub struct Claims {
    class: Store<DeserializeGuard<ClusterClassClusterUpgrader>>,
    in_cluster: Store<DeserializeGuard<InClusterUpgradeAutomation>>,
}

impl Claims {
    /// Claims over the two kinds' stores.
    pub fn new(
        class: Store<DeserializeGuard<ClusterClassClusterUpgrader>>,
        in_cluster: Store<DeserializeGuard<InClusterUpgradeAutomation>>,
    ) -> Self {
        Self { class, in_cluster }
    }

    /// The upgrader that acts on `upgrader`'s Cluster when it is another one. `upgrader` itself
    /// is counted as it is now, whatever the stores hold of it.
    pub fn claimed_by<K: UpgraderKind>(&self, upgrader: &K) -> Option<Claimant> {
        let namespace = upgrader.namespace().unwrap_or_default();
        let cluster = upgrader.view().cluster_name;
        let me = Claimant::of(upgrader);
        let mut all = vec![me.clone()];
        all.extend(others(&self.class, &namespace, cluster, &me));
        all.extend(others(&self.in_cluster, &namespace, cluster, &me));
        acting(&all).filter(|a| **a != me).cloned()
    }
}

impl Claims {
    /// The `cordoned-by` marks (`<kind>/<name>`) of every upgrader that claims `cluster` in
    /// `namespace`, the one that acts and the others.
    pub fn marks(&self, namespace: &str, cluster: &str) -> BTreeSet<String> {
        let nobody = Claimant {
            created: None,
            rank: u8::MAX,
            name: String::new(),
            kind: "",
        };
        others(&self.class, namespace, cluster, &nobody)
            .into_iter()
            .chain(others(&self.in_cluster, namespace, cluster, &nobody))
            .map(|c| c.to_string())
            .collect()
    }
}

fn others<O: UpgraderKind>(
    store: &Store<DeserializeGuard<O>>,
    namespace: &str,
    cluster: &str,
    me: &Claimant,
) -> Vec<Claimant> {
    store
        .state()
        .iter()
        .filter_map(|u| u.0.as_ref().ok())
        .filter(|u| claims(*u, namespace, cluster))
        .map(Claimant::of)
        .filter(|c| (c.kind, c.name.as_str()) != (me.kind, me.name.as_str()))
        .collect()
}

/// Maps a change of an upgrader of kind `O` to the other upgraders of kind `K` that name its
/// Cluster: one that acts may have gone, or a claim may have moved.
pub fn siblings<K: UpgraderKind, O: UpgraderKind>(
    index: Index<K>,
) -> impl Fn(Arc<DeserializeGuard<O>>) -> Vec<ObjectRef<DeserializeGuard<K>>> + Send + Sync + 'static
{
    move |changed| {
        let Ok(upgrader) = changed.0.as_ref() else {
            return Vec::new();
        };
        let namespace = upgrader.namespace().unwrap_or_default();
        let name = upgrader.name_any();
        index
            .upgrading(&namespace, upgrader.view().cluster_name)
            .into_iter()
            .filter(|r| K::KIND != O::KIND || r.name != name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::upgrader::decide::{BLOCKED, Subject, reconcile_decision};
    use crate::controllers::upgrader::gates::{ClusterState, PlanState, Reason};
    use crate::controllers::upgrader::observe::Observation;
    use api::v1alpha1::{HostPhase, HostRecord, UpgraderStatus};
    use kube::runtime::{reflector, watcher};
    use proptest::prelude::*;
    use serde_json::json;

    fn upgrader<K: UpgraderKind + serde::de::DeserializeOwned>(
        name: &str,
        cluster: &str,
        created: Option<&str>,
        deleting: bool,
    ) -> K {
        let mut meta = json!({"name": name, "namespace": "team"});
        if let Some(at) = created {
            meta["creationTimestamp"] = json!(at);
        }
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-02T00:00:00Z");
        }
        serde_json::from_value(json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": K::KIND,
            "metadata": meta,
            "spec": {"clusterName": cluster, "planRef": {"name": "p"}, "topologyVariable": "image"},
        }))
        .unwrap()
    }

    fn store<K: UpgraderKind + Clone>(items: Vec<K>) -> Store<DeserializeGuard<K>> {
        let (reader, mut writer) = reflector::store();
        for item in items {
            writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(item))));
        }
        reader
    }

    const EARLY: Option<&str> = Some("2026-01-01T00:00:00Z");
    const LATE: Option<&str> = Some("2026-01-01T00:05:00Z");

    #[test]
    fn the_oldest_acts_then_the_class_kind_then_the_name() {
        let class_late: ClusterClassClusterUpgrader = upgrader("a", "c", LATE, false);
        let auto_early: InClusterUpgradeAutomation = upgrader("z", "c", EARLY, false);
        let class_early: ClusterClassClusterUpgrader = upgrader("y", "c", EARLY, false);
        let other_cluster: ClusterClassClusterUpgrader = upgrader("b", "d", None, false);
        let claims = Claims::new(
            store(vec![
                class_late.clone(),
                class_early.clone(),
                other_cluster.clone(),
            ]),
            store(vec![auto_early.clone()]),
        );
        // Equal age: the ClusterClassClusterUpgrader acts, whatever the names say.
        assert_eq!(claims.claimed_by(&class_early), None);
        let by = claims.claimed_by(&auto_early).unwrap();
        assert_eq!(by.to_string(), "ClusterClassClusterUpgrader/y");
        assert_eq!(claims.claimed_by(&class_late).unwrap(), by);
        // Another Cluster is another claim.
        assert_eq!(claims.claimed_by(&other_cluster), None);
    }

    #[test]
    fn one_being_deleted_or_without_a_time_gives_way() {
        let going: ClusterClassClusterUpgrader = upgrader("a", "c", EARLY, true);
        let next: InClusterUpgradeAutomation = upgrader("b", "c", LATE, false);
        let unknown: ClusterClassClusterUpgrader = upgrader("0", "c", None, false);
        let claims = Claims::new(
            store(vec![going.clone(), unknown.clone()]),
            store(vec![next.clone()]),
        );
        assert_eq!(claims.claimed_by(&next), None);
        assert_eq!(
            claims.claimed_by(&unknown).map(|c| c.to_string()),
            Some("InClusterUpgradeAutomation/b".into())
        );
        // Their cordon marks: the one being deleted has none any more.
        assert_eq!(
            claims.marks("team", "c"),
            [
                "ClusterClassClusterUpgrader/0",
                "InClusterUpgradeAutomation/b"
            ]
            .map(String::from)
            .into()
        );
    }

    fn claimant() -> impl Strategy<Value = Claimant> {
        (proptest::option::of(0i64..4), 0u8..2, "[a-c]").prop_map(|(at, rank, name)| Claimant {
            created: at.map(|s| Timestamp::from_second(s).unwrap()),
            rank,
            kind: if rank == 0 {
                "ClusterClassClusterUpgrader"
            } else {
                "InClusterUpgradeAutomation"
            },
            name,
        })
    }

    proptest! {
        /// Whatever order the stores list them in, every upgrader names the same one that acts,
        /// and it is the oldest of all.
        #[test]
        fn every_upgrader_agrees_on_the_one_that_acts(
            mut all in proptest::collection::vec(claimant(), 1..6),
            seed in any::<u64>(),
        ) {
            all.sort();
            all.dedup_by(|a, b| (a.kind, &a.name) == (b.kind, &b.name));
            let first = acting(&all).unwrap().clone();
            let mut shuffled = all.clone();
            let len = shuffled.len();
            for i in 0..len {
                let j = usize::try_from(seed.rotate_left(u32::try_from(i).unwrap()) % len as u64).unwrap();
                shuffled.swap(i, j);
            }
            prop_assert_eq!(acting(&shuffled), Some(&first));
            for c in &all {
                if let (Some(a), Some(b)) = (c.created, first.created) {
                    prop_assert!(b <= a);
                }
                if first.created.is_none() {
                    prop_assert!(c.created.is_none());
                }
            }
        }
    }

    #[test]
    fn an_upgrader_that_does_not_act_holds_and_acts_on_no_host() {
        let record: HostRecord = serde_json::from_value(json!({
            "host": "h0", "machine": "m0", "node": "n0", "pool": "control-plane",
            "phase": "Drained", "image": "oci://r/os@sha256:00", "stamp": "os-1",
            "started": "2026-01-01T00:00:00Z", "attempts": 0,
        }))
        .unwrap();
        assert_eq!(record.phase, HostPhase::Drained);
        let observed = Observation {
            namespace: "team".into(),
            plan: PlanState::NotFound,
            images: Vec::new(),
            records: vec![record.clone()],
            retry_hosts: None,
            cluster: ClusterState::NotFound,
            raw: None,
            access: None,
            cached: false,
            wanted: None,
            in_place: None,
            stamps: crate::controllers::upgrader::in_place::verify::Stamps::new(),
            hosts: None,
            claimed_by: Some(Claimant {
                created: None,
                rank: 1,
                name: "first".into(),
                kind: "InClusterUpgradeAutomation",
            }),
            chained: false,
            membership: None,
        };
        let me: ClusterClassClusterUpgrader = upgrader("second", "c", LATE, false);
        let status = UpgraderStatus::default();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let subject = Subject {
            spec: me.view(),
            status: &status,
            generation: Some(1),
        };
        let (decision, actions) = reconcile_decision(subject, &observed, now);
        assert!(decision.write.is_none());
        assert!(actions.is_empty());
        assert_eq!(decision.status.hosts, Some(vec![record]));
        let blocked =
            api::conditions::find(decision.status.conditions.as_deref().unwrap(), BLOCKED).unwrap();
        assert_eq!(blocked.reason, Reason::ClusterClaimed.as_str());
        assert!(
            blocked.message.contains("InClusterUpgradeAutomation/first"),
            "{}",
            blocked.message
        );
        assert_eq!(decision.notes.len(), 1);
        assert_eq!(decision.notes[0].reason, "ClusterClaimed");
        assert!(decision.requeue.is_some());
        // Paused, it reports that instead, and still acts on nothing.
        let mut paused = me.clone();
        paused.spec.paused = Some(true);
        let (decision, actions) = reconcile_decision(
            Subject {
                spec: paused.view(),
                ..subject
            },
            &observed,
            now,
        );
        assert!(decision.write.is_none() && actions.is_empty());
        assert_eq!(
            api::conditions::find(decision.status.conditions.as_deref().unwrap(), "Paused")
                .map(|c| c.status.as_str()),
            Some("True")
        );
    }
}
