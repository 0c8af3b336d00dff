//! Which upgraders a Plan's change concerns. Every follower reads the Plan's choice, its spec and
//! its rollout's target, halt and soaks, but an admission concerns only the admitted Cluster. A
//! rollout writes the Plan on every finished step, to release that Cluster and admit the next:
//! such a write reaches the upgraders of those Clusters, not every follower, so the admitted one
//! steps without waiting behind hundreds of reconciles that would change nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use api::v1alpha1::Plan;
use kube::ResourceExt;

/// Whom a Plan's change reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Every upgrader that follows the Plan.
    Followers,
    /// Only the upgraders of these Clusters: their admission changed, nothing else did.
    Clusters(BTreeSet<String>),
}

/// A Plan as its followers read it: what they all read, and the Clusters admitted.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    shared: Plan,
    admitted: BTreeSet<String>,
}

impl Seen {
    /// `plan` split into what every follower reads and the admissions. The admitted lists, the
    /// rollout's phase and the waves' counters and times, which no upgrader reads, leave the
    /// shared part, and so does `resourceVersion`, which every write changes. (A wave opening
    /// changes only the phase and admissions: a Cluster still waiting looks again by itself
    /// shortly after the soak end it shows.)
    pub fn new(plan: &Plan) -> Self {
        let mut shared = plan.clone();
        shared.metadata.resource_version = None;
        shared.metadata.managed_fields = None;
        if let Some(rollout) = shared.status.as_mut().and_then(|s| s.rollout.as_mut()) {
            rollout.phase = None;
        }
        let mut admitted = BTreeSet::new();
        let waves = shared
            .status
            .as_mut()
            .and_then(|s| s.rollout.as_mut())
            .map(|r| r.waves.iter_mut())
            .into_iter()
            .flatten();
        for wave in waves {
            admitted.extend(std::mem::take(&mut wave.admitted));
            wave.clusters = 0;
            wave.updated = 0;
            wave.failed = 0;
            wave.started = None;
            wave.finished = None;
        }
        Self { shared, admitted }
    }
}

/// Whom the change from `before` (`None`: not seen yet) to `after` reaches.
pub fn reach(before: Option<&Seen>, after: &Seen) -> Reach {
    match before {
        Some(before) if before.shared == after.shared => Reach::Clusters(
            before
                .admitted
                .symmetric_difference(&after.admitted)
                .cloned()
                .collect(),
        ),
        _ => Reach::Followers,
    }
}

/// The last state of each Plan the watch delivered, for the watch's mapper.
#[derive(Clone, Debug, Default)]
pub struct PlanChanges {
    seen: Arc<Mutex<HashMap<(String, String), Seen>>>,
}

impl PlanChanges {
    /// Records `plan` and returns whom its change reaches.
    pub fn changed(&self, plan: &Plan) -> Reach {
        let after = Seen::new(plan);
        let key = (plan.namespace().unwrap_or_default(), plan.name_any());
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let reach = reach(seen.get(&key), &after);
        seen.insert(key, after);
        reach
    }

    /// Forgets a deleted Plan: one created again under its name reaches every follower.
    pub fn deleted(&self, namespace: &str, name: &str) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(namespace.to_owned(), name.to_owned()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(admitted: &[&str], updated: i32, soaked_until: Option<&str>) -> Plan {
        serde_json::from_value(json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "Plan",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "resourceVersion": format!("{updated}")},
            "spec": {"versionRange": "v1.31.x", "rollout": {"waves": [
                {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "canary"}}, "soak": "5s"},
                {"name": "rest", "clusterSelector": {}, "maxConcurrent": 2},
            ]}},
            "status": {
                "machineImageDetails": {"version": "v1.31.2", "id": "i-2"},
                "rollout": {
                    "target": {"version": "v1.31.2", "id": "i-2"},
                    "phase": "Progressing",
                    "waves": [
                        {"name": "canary", "clusters": 1, "updated": 1, "failed": 0,
                         "finished": "2026-01-01T00:00:00Z", "soakedUntil": soaked_until},
                        {"name": "rest", "clusters": 4, "admitted": admitted, "updated": updated,
                         "failed": 0, "started": "2026-01-01T00:00:06Z"},
                    ],
                },
            },
        }))
        .unwrap()
    }

    fn clusters(names: &[&str]) -> Reach {
        Reach::Clusters(names.iter().map(|n| (*n).to_owned()).collect())
    }

    #[test]
    fn a_plan_first_seen_reaches_every_follower() {
        let changes = PlanChanges::default();
        assert_eq!(changes.changed(&plan(&["c1"], 0, None)), Reach::Followers);
    }

    #[test]
    fn a_write_that_only_admits_and_releases_reaches_those_clusters() {
        let changes = PlanChanges::default();
        let soak = Some("2026-01-01T00:00:06Z");
        changes.changed(&plan(&["c1", "c2"], 0, soak));
        // c1 finished: released, c3 admitted; the counters moved and the resourceVersion too.
        assert_eq!(
            changes.changed(&plan(&["c2", "c3"], 1, soak)),
            clusters(&["c1", "c3"])
        );
        // The wave opens: only the newly admitted, whatever the phase says.
        let mut opened = plan(&["c2", "c3", "c4"], 1, soak);
        opened
            .status
            .as_mut()
            .unwrap()
            .rollout
            .as_mut()
            .unwrap()
            .phase = Some(api::v1alpha1::RolloutPhase::Soaking);
        assert_eq!(changes.changed(&opened), clusters(&["c4"]));
        assert_eq!(
            changes.changed(&plan(&["c2", "c3"], 1, soak)),
            clusters(&["c4"])
        );
        // The same Plan again (a relist): nobody.
        assert_eq!(
            changes.changed(&plan(&["c2", "c3"], 1, soak)),
            clusters(&[])
        );
    }

    #[test]
    fn what_every_follower_reads_reaches_every_follower() {
        let base = plan(&["c2"], 1, Some("2026-01-01T00:00:06Z"));
        let before = Seen::new(&base);
        let mut soak = base.clone();
        soak.status
            .as_mut()
            .unwrap()
            .rollout
            .as_mut()
            .unwrap()
            .waves[0]
            .soaked_until = None;
        let mut target = base.clone();
        target.status.as_mut().unwrap().machine_image_details = None;
        let mut halted = base.clone();
        halted
            .status
            .as_mut()
            .unwrap()
            .rollout
            .as_mut()
            .unwrap()
            .halted = Some(
            serde_json::from_value(json!({"cluster": "c2", "reason": "StepTimeout",
                "message": "not finished", "time": "2026-01-01T00:10:00Z"}))
            .unwrap(),
        );
        let mut spec = base.clone();
        spec.spec.version_range = "v1.32.x".into();
        let mut recreated = base.clone();
        recreated.metadata.uid = Some("u2".into());
        for (what, after) in [
            ("a soak's end", soak),
            ("the target", target),
            ("a halt", halted),
            ("the spec", spec),
            ("a Plan created again", recreated),
        ] {
            assert_eq!(
                reach(Some(&before), &Seen::new(&after)),
                Reach::Followers,
                "{what}"
            );
        }
    }

    #[test]
    fn a_deleted_plan_is_forgotten() {
        let changes = PlanChanges::default();
        let p = plan(&["c1"], 0, None);
        changes.changed(&p);
        changes.deleted("ns", "p");
        assert_eq!(changes.changed(&p), Reach::Followers);
    }
}
