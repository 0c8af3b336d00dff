//! Series read from the shared caches on each scrape, for alerts on state that lasts: an upgrader
//! blocked, a source not ready, a build failed. Nothing is kept between scrapes, so a deleted
//! object's series goes with it.

use std::fmt;

use api::conditions::find;
use api::v1alpha1::{
    CONDITION_READY, ClusterClassClusterUpgrader, DebianRepositorySource,
    InClusterUpgradeAutomation, MachineImage, MachineImagePhase, Plan, UpgraderStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use super::caches::Caches;
use super::metrics::PREFIX;

/// The condition an upgrader reports while a gate blocks it.
const BLOCKED: &str = "Blocked";

/// One series: its labels and its value.
type Series = (Vec<(&'static str, String)>, f64);

/// The stores the series are read from: those the running controllers cache.
#[derive(Clone, Default)]
pub struct StateCollector {
    class: Option<Store<DeserializeGuard<ClusterClassClusterUpgrader>>>,
    in_cluster: Option<Store<DeserializeGuard<InClusterUpgradeAutomation>>>,
    sources: Option<Store<DeserializeGuard<DebianRepositorySource>>>,
    images: Option<Store<DeserializeGuard<MachineImage>>>,
    plans: Option<Store<DeserializeGuard<Plan>>>,
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

impl StateCollector {
    /// Reads the caches the controllers asked for; opens no watch of its own.
    pub fn new(caches: &Caches) -> Self {
        Self {
            class: caches.existing().map(|c| c.store),
            in_cluster: caches.existing().map(|c| c.store),
            sources: caches.existing().map(|c| c.store),
            images: caches.existing().map(|c| c.store),
            plans: caches.existing().map(|c| c.store),
        }
    }
}

/// When `condition` last changed, in seconds since the Unix epoch.
fn since(condition: &Condition) -> f64 {
    // Seconds since 1970 fit an f64 exactly.
    #[allow(clippy::cast_precision_loss)]
    let seconds = condition.last_transition_time.0.as_second() as f64;
    seconds
}

/// Each upgrader whose `Blocked` condition is True, valued when it became so.
pub fn blocked_upgraders<'a>(
    upgraders: impl IntoIterator<Item = (&'static str, &'a [Condition], String, String)>,
) -> Vec<Series> {
    upgraders
        .into_iter()
        .filter_map(|(kind, conditions, namespace, name)| {
            let blocked = find(conditions, BLOCKED).filter(|c| c.status == "True")?;
            Some((
                vec![
                    ("kind", kind.to_owned()),
                    ("namespace", namespace),
                    ("name", name),
                    ("reason", blocked.reason.clone()),
                ],
                since(blocked),
            ))
        })
        .collect()
}

/// Each source whose `Ready` condition is not True, valued when it stopped being so.
pub fn unready_sources<'a>(
    sources: impl IntoIterator<Item = (&'a [Condition], String, String)>,
) -> Vec<Series> {
    sources
        .into_iter()
        .filter_map(|(conditions, namespace, name)| {
            let ready = find(conditions, CONDITION_READY)?;
            (ready.status != "True").then(|| {
                (
                    vec![
                        ("namespace", namespace),
                        ("name", name),
                        ("reason", ready.reason.clone()),
                    ],
                    since(ready),
                )
            })
        })
        .collect()
}

/// Each MachineImage whose build failed, valued 1.
pub fn failed_images<'a>(images: impl IntoIterator<Item = &'a MachineImage>) -> Vec<Series> {
    images
        .into_iter()
        .filter_map(|image| {
            let status = image.status.as_ref()?;
            (status.phase == Some(MachineImagePhase::Failed)).then(|| {
                let reason = status
                    .conditions
                    .as_deref()
                    .and_then(|c| find(c, CONDITION_READY))
                    .map(|c| c.reason.clone())
                    .unwrap_or_default();
                (
                    vec![
                        ("namespace", image.namespace().unwrap_or_default()),
                        ("name", image.name_any()),
                        ("reason", reason),
                    ],
                    1.0,
                )
            })
        })
        .collect()
}

/// Per Plan with a rollout: its Clusters per wave and state (`admitted`, `updated`, `failed`,
/// `waiting`), and whether it is halted (1) or not (0).
pub fn rollouts<'a>(plans: impl IntoIterator<Item = &'a Plan>) -> (Vec<Series>, Vec<Series>) {
    let (mut clusters, mut halted) = (Vec::new(), Vec::new());
    for plan in plans {
        let Some(rollout) = plan.status.as_ref().and_then(|s| s.rollout.as_ref()) else {
            continue;
        };
        let (namespace, name) = (plan.namespace().unwrap_or_default(), plan.name_any());
        for wave in &rollout.waves {
            let admitted = i32::try_from(wave.admitted.len()).unwrap_or(i32::MAX);
            let waiting = (wave.clusters - wave.updated - admitted).max(0);
            for (state, count) in [
                ("admitted", admitted),
                ("updated", wave.updated),
                ("failed", wave.failed),
                ("waiting", waiting),
            ] {
                clusters.push((
                    vec![
                        ("namespace", namespace.clone()),
                        ("plan", name.clone()),
                        ("wave", wave.name.clone()),
                        ("state", state.to_owned()),
                    ],
                    f64::from(count),
                ));
            }
        }
        halted.push((
            vec![("namespace", namespace), ("plan", name)],
            if rollout.halted.is_some() { 1.0 } else { 0.0 },
        ));
    }
    (clusters, halted)
}

/// Each upgrader's conditions, kind, namespace and name.
type UpgraderConditions = (&'static str, Vec<Condition>, String, String);

fn upgrader_conditions<K>(
    store: Option<&Store<DeserializeGuard<K>>>,
    kind: &'static str,
    status: impl Fn(&K) -> Option<&UpgraderStatus>,
) -> Vec<UpgraderConditions>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .map(Store::state)
        .unwrap_or_default()
        .iter()
        .filter_map(|u| u.0.as_ref().ok())
        .map(|u| {
            let conditions = status(u)
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            (
                kind,
                conditions,
                u.namespace().unwrap_or_default(),
                u.name_any(),
            )
        })
        .collect()
}

fn encode(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[Series],
) -> Result<(), fmt::Error> {
    let name = format!("{PREFIX}_{name}");
    let mut family =
        encoder.encode_descriptor(&name, help, None, ConstGauge::new(0.0).metric_type())?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut upgraders = upgrader_conditions(
            self.class.as_ref(),
            "ClusterClassClusterUpgrader",
            |u: &ClusterClassClusterUpgrader| u.status.as_ref(),
        );
        upgraders.extend(upgrader_conditions(
            self.in_cluster.as_ref(),
            "InClusterUpgradeAutomation",
            |u: &InClusterUpgradeAutomation| u.status.as_ref(),
        ));
        let blocked = blocked_upgraders(
            upgraders
                .iter()
                .map(|(k, c, ns, n)| (*k, c.as_slice(), ns.clone(), n.clone())),
        );
        encode(
            &mut encoder,
            "upgrader_blocked_since_seconds",
            "When each blocked upgrader's Blocked condition turned True, in seconds since the Unix epoch, by kind, namespace, name and reason",
            &blocked,
        )?;
        let sources: Vec<(Vec<Condition>, String, String)> = self
            .sources
            .as_ref()
            .map(Store::state)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.0.as_ref().ok())
            .map(|s| {
                (
                    s.status
                        .as_ref()
                        .and_then(|st| st.conditions.clone())
                        .unwrap_or_default(),
                    s.namespace().unwrap_or_default(),
                    s.name_any(),
                )
            })
            .collect();
        let unready = unready_sources(
            sources
                .iter()
                .map(|(c, ns, n)| (c.as_slice(), ns.clone(), n.clone())),
        );
        encode(
            &mut encoder,
            "source_not_ready_since_seconds",
            "When each DebianRepositorySource's Ready condition stopped being True, in seconds since the Unix epoch, by namespace, name and reason",
            &unready,
        )?;
        let plans = self.plans.as_ref().map(Store::state).unwrap_or_default();
        let (clusters, halted) = rollouts(plans.iter().filter_map(|p| p.0.as_ref().ok()));
        encode(
            &mut encoder,
            "rollout_clusters",
            "Clusters of each Plan's rollout, by namespace, plan, wave and state (admitted, updated, failed, waiting)",
            &clusters,
        )?;
        encode(
            &mut encoder,
            "rollout_halted",
            "1 while a Plan's rollout is halted, 0 otherwise, by namespace and plan",
            &halted,
        )?;
        let images = self.images.as_ref().map(Store::state).unwrap_or_default();
        let failed = failed_images(images.iter().filter_map(|i| i.0.as_ref().ok()));
        encode(
            &mut encoder,
            "machine_image_build_failed",
            "1 for each MachineImage whose build failed, by namespace, name and reason",
            &failed,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn condition(type_: &str, status: &str, reason: &str, at: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::from_second(at).unwrap()),
        }
    }

    #[test]
    fn only_blocked_upgraders_have_a_series_valued_when_they_blocked() {
        let blocked = [condition(BLOCKED, "True", "DrainTimeout", 1_000)];
        let free = [condition(BLOCKED, "False", "NotBlocked", 2_000)];
        let series = blocked_upgraders([
            (
                "InClusterUpgradeAutomation",
                &blocked[..],
                "a".into(),
                "u1".into(),
            ),
            (
                "ClusterClassClusterUpgrader",
                &free[..],
                "a".into(),
                "u2".into(),
            ),
            (
                "ClusterClassClusterUpgrader",
                &[][..],
                "a".into(),
                "u3".into(),
            ),
        ]);
        assert_eq!(series.len(), 1);
        assert!((series[0].1 - 1_000.0).abs() < 0.5);
        assert!(series[0].0.contains(&("reason", "DrainTimeout".into())));
        assert!(
            series[0]
                .0
                .contains(&("kind", "InClusterUpgradeAutomation".into()))
        );
    }

    #[test]
    fn sources_not_ready_and_failed_images_are_listed() {
        let down = [condition(CONDITION_READY, "False", "SignatureInvalid", 50)];
        let up = [condition(CONDITION_READY, "True", "Synced", 60)];
        let series = unready_sources([
            (&down[..], "a".into(), "s1".into()),
            (&up[..], "a".into(), "s2".into()),
        ]);
        assert_eq!(series.len(), 1);
        assert!((series[0].1 - 50.0).abs() < 0.5);
        assert!(series[0].0.contains(&("name", "s1".into())));

        let image = |name: &str, phase: &str| -> MachineImage {
            serde_json::from_value(json!({
                "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
                "kind": "MachineImage",
                "metadata": {"name": name, "namespace": "a"},
                "spec": {"version": "v1.31.1", "jobTemplate": {"spec": {"containers": [{"name": "b", "image": "b"}]}}},
                "status": {"phase": phase, "conditions": [{
                    "type": "Ready", "status": "False", "reason": "BuildFailed", "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
            }))
            .unwrap()
        };
        let images = [image("good", "Building"), image("bad", "Failed")];
        let failed = failed_images(&images);
        assert_eq!(failed.len(), 1);
        assert!(failed[0].0.contains(&("name", "bad".into())));
        assert!(failed[0].0.contains(&("reason", "BuildFailed".into())));
    }

    #[test]
    fn the_scrape_names_every_family_with_its_series() {
        let metrics = std::sync::Arc::new(super::super::Metrics::default());
        let (class, _w1) = kube::runtime::reflector::store();
        let (in_cluster, _w2) = kube::runtime::reflector::store();
        let (sources, _w3) = kube::runtime::reflector::store();
        let (images, mut w4) = kube::runtime::reflector::store();
        let (plans, mut w5) = kube::runtime::reflector::store();
        let halted: Plan = serde_json::from_value(json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "Plan",
            "metadata": {"name": "fleet", "namespace": "a"},
            "spec": {"versionRange": "v1.31.x"},
            "status": {"rollout": {
                "waves": [{"name": "canary", "clusters": 3, "admitted": ["c1"], "updated": 1, "failed": 1}],
                "halted": {"cluster": "c1", "reason": "StepTimeout", "message": "", "time": "2026-01-01T00:00:00Z"},
            }},
        }))
        .unwrap();
        w5.apply_watcher_event(&kube::runtime::watcher::Event::Apply(DeserializeGuard(Ok(
            halted,
        ))));
        let failed: MachineImage = serde_json::from_value(json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "MachineImage",
            "metadata": {"name": "bad", "namespace": "a"},
            "spec": {"version": "v1.31.1", "jobTemplate": {"spec": {"containers": [{"name": "b", "image": "b"}]}}},
            "status": {"phase": "Failed"},
        }))
        .unwrap();
        w4.apply_watcher_event(&kube::runtime::watcher::Event::Apply(DeserializeGuard(Ok(
            failed,
        ))));
        metrics.set_state(Some(Box::new(StateCollector {
            class: Some(class),
            in_cluster: Some(in_cluster),
            sources: Some(sources),
            images: Some(images),
            plans: Some(plans),
        })));
        let text = metrics.encode().unwrap();
        assert!(text.contains("# TYPE kubernetes_upgrader_upgrader_blocked_since_seconds gauge"));
        assert!(text.contains("# TYPE kubernetes_upgrader_source_not_ready_since_seconds gauge"));
        assert!(
            text.contains("kubernetes_upgrader_rollout_halted{namespace=\"a\",plan=\"fleet\"} 1"),
            "{text}"
        );
        for (state, value) in [
            ("admitted", 1),
            ("updated", 1),
            ("failed", 1),
            ("waiting", 1),
        ] {
            let line = format!(
                "kubernetes_upgrader_rollout_clusters{{namespace=\"a\",plan=\"fleet\",wave=\"canary\",state=\"{state}\"}} {value}"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(text.contains(
            "kubernetes_upgrader_machine_image_build_failed{namespace=\"a\",name=\"bad\",reason=\"\"} 1"
        ), "{text}");
    }
}
