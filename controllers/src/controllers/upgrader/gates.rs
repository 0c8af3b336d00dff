//! The planner: a pure function from (upgrader spec, Cluster, Plan, ready images, clock) to either
//! no write or exactly one step. Each gate is its own function that blocks with its own reason
//! (`upgrade-safety.md` §4, S1–S7); [`plan`] runs them in order.

use std::collections::BTreeMap;

use api::v1alpha1::{ImageMap, UpgraderSpecView};
use jiff::Timestamp;
use semver::Version;
use serde_json::{Map, Value, json};

use super::window::{Opening, Window};

pub use super::reason::Reason;
pub use crate::controllers::images::Image;
pub use crate::controllers::rollout::Admission;

/// A Cluster variable entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Variable {
    /// `name`.
    pub name: String,
    /// `value`, any JSON.
    pub value: Value,
}

/// What the upgrader saw of its Cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterState {
    /// Cluster API is not installed.
    ApiMissing,
    /// No such Cluster.
    NotFound,
    /// The Cluster.
    Found(ClusterView),
}

/// The parts of a Cluster the planner reads.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterView {
    /// `spec.paused` or the `cluster.x-k8s.io/paused` annotation.
    pub paused: bool,
    /// `spec.topology`, when present.
    pub topology: Option<Topology>,
    /// Whether the step at `topology.version` has finished (§1.5), or why not.
    pub finished: Result<(), String>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// The `Available` condition's status, when reported.
    pub available: Option<bool>,
    /// What the Plan's rollout allows the Cluster (S13); filled in by the caller.
    pub admission: Admission,
}

/// `spec.topology`: the version and the cluster-level variables.
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    /// `spec.topology.version` as written.
    pub version: String,
    /// `spec.topology.variables`.
    pub variables: Vec<Variable>,
}

/// What the upgrader saw of its Plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanState {
    /// No such Plan.
    NotFound,
    /// The Plan's `machineImageDetails`: version (possibly unset) and id.
    Found {
        /// `machineImageDetails.version`.
        version: Option<String>,
        /// `machineImageDetails.id`.
        id: Option<String>,
    },
}

/// Everything the planner decides on.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The upgrader's spec.
    pub spec: UpgraderSpecView<'a>,
    /// The Cluster.
    pub cluster: &'a ClusterState,
    /// The Plan.
    pub plan: &'a PlanState,
    /// The usable images in the namespace.
    pub images: &'a [Image],
    /// The clock.
    pub now: Timestamp,
    /// The Cluster's ClusterClass names our `GenerateUpgradePlan` handler: Cluster API walks the
    /// minors itself, so in `imageMap` mode one step may go to the Plan's target directly.
    pub chained: bool,
}

/// The variable entry a step writes.
#[derive(Clone, Debug, PartialEq)]
pub struct VariableWrite {
    /// The entry's name.
    pub name: String,
    /// Its new value.
    pub value: Value,
    /// Whether the Cluster already holds exactly this value.
    pub unchanged: bool,
    /// Whether the entry is new.
    pub created: bool,
}

/// One step: what one write puts on the Cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The Cluster's version before it, as written there.
    pub from: String,
    /// The version written.
    pub version: Version,
    /// The image ID.
    pub id: String,
    /// The variable entry written with it, when a variable mode is configured.
    pub variable: Option<VariableWrite>,
}

impl Step {
    /// The `v`-prefixed version written.
    pub fn version_string(&self) -> String {
        api::version::with_v(&self.version)
    }
}

/// Why nothing is written now.
#[derive(Clone, Debug, PartialEq)]
pub struct Hold {
    /// The reason.
    pub reason: Reason,
    /// A message for people.
    pub message: String,
    /// The step that waits, if one is known.
    pub step: Option<Box<Step>>,
    /// When the hold may lift by itself (a window opening).
    pub not_before: Option<Timestamp>,
}

impl Hold {
    /// A hold for `reason`, with no step.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            step: None,
            not_before: None,
        }
    }

    fn with_step(mut self, step: &Step) -> Self {
        self.step = Some(Box::new(step.clone()));
        self
    }
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Write this step, in one request.
    Write(Step),
    /// Nothing to write. `current` is the Cluster's parsed version where known, and
    /// `confirmed` whether it equals the Plan's (for `latestSetVersion`).
    Hold {
        /// Why.
        hold: Hold,
        /// The Cluster's version equals the Plan's, and its image is in place.
        confirmed: Option<Version>,
    },
}

/// Runs every gate in order.
pub fn plan(inputs: &Inputs<'_>) -> Plan {
    match gates(inputs) {
        Ok(step) => Plan::Write(step),
        Err((hold, confirmed)) => Plan::Hold { hold, confirmed },
    }
}

type Held = (Hold, Option<Version>);

fn held(hold: Hold) -> Held {
    (hold, None)
}

fn gates(inputs: &Inputs<'_>) -> Result<Step, Held> {
    let spec = &inputs.spec;
    paused_upgrader(spec).map_err(held)?;
    let (cluster, topology) = class_based(inputs.cluster).map_err(held)?;
    let (target, target_id) = plan_target(inputs.plan, inputs.images).map_err(held)?;
    let current = cluster_version(topology).map_err(held)?;
    no_downgrade(&current, &target).map_err(held)?;
    // Chained in map mode only: each version Cluster API passes through needs its own image.
    let mut path = if inputs.chained && spec.image_map.is_some() {
        chain(&current, &target, &target_id, inputs.images).map_err(held)?
    } else {
        vec![one_minor(&current, &target, &target_id, inputs.images).map_err(held)?]
    };
    let variable = variable_write(spec, topology, &path).map_err(held)?;
    let Some((version, id)) = path.pop() else {
        return Err(held(Hold::new(
            Reason::InvalidVersion,
            format!("no step leads from v{current} to v{target}"),
        )));
    };
    let step = Step {
        from: topology.version.clone(),
        version,
        id,
        variable,
    };
    nothing_to_write(&current, &target, &step, cluster)?;
    may_start(spec, cluster, inputs.now).map_err(|h| held(h.with_step(&step)))?;
    Ok(step)
}

/// The gates that hold the start of any new work, a topology step or a host updated in place:
/// the Plan's rollout (S13), the Cluster paused (S6), the previous step unfinished (S4), the
/// window closed (S7), dry run.
pub fn may_start(
    spec: &UpgraderSpecView<'_>,
    cluster: &ClusterView,
    now: Timestamp,
) -> Result<(), Hold> {
    admitted(cluster)?;
    paused_cluster(cluster)?;
    previous_finished(cluster)?;
    in_window(spec, now)?;
    dry_run(spec)
}

/// S6: a paused upgrader does nothing.
pub fn paused_upgrader(spec: &UpgraderSpecView<'_>) -> Result<(), Hold> {
    if spec.paused {
        return Err(Hold::new(Reason::Paused, "spec.paused is true"));
    }
    Ok(())
}

/// The Cluster exists, Cluster API is installed and the Cluster has a topology.
pub fn class_based(state: &ClusterState) -> Result<(&ClusterView, &Topology), Hold> {
    match state {
        ClusterState::ApiMissing => Err(Hold::new(
            Reason::ClusterApiNotInstalled,
            "the API group cluster.x-k8s.io is not served: Cluster API is not installed",
        )),
        ClusterState::NotFound => Err(Hold::new(
            Reason::ClusterNotFound,
            "the Cluster named by spec.clusterName does not exist",
        )),
        ClusterState::Found(view) => match &view.topology {
            Some(topology) => Ok((view, topology)),
            None => Err(Hold::new(
                Reason::ClusterNotClassBased,
                "the Cluster has no spec.topology: it is not built from a ClusterClass",
            )),
        },
    }
}

/// The Plan exists and names a ready image; returns its version and ID (S3).
pub fn plan_target(plan: &PlanState, images: &[Image]) -> Result<(Version, String), Hold> {
    let PlanState::Found { version, id } = plan else {
        return Err(Hold::new(
            Reason::PlanNotFound,
            "the Plan named by spec.planRef does not exist",
        ));
    };
    let (Some(text), Some(id)) = (version.as_deref().filter(|v| !v.is_empty()), id) else {
        return Err(Hold::new(
            Reason::PlanNotReady,
            "the Plan reports no image version yet",
        ));
    };
    let Some(version) = api::version::parse_lenient(text) else {
        return Err(Hold::new(
            Reason::InvalidVersion,
            format!("the Plan's version {text:?} is not a version"),
        ));
    };
    if !images
        .iter()
        .any(|i| i.id == *id && i.version.cmp_precedence(&version).is_eq())
    {
        return Err(Hold::new(
            Reason::PlanNotReady,
            format!(
                "the Plan's image {id:?} (v{version}) is not a ready MachineImage matching its selector"
            ),
        ));
    }
    Ok((version, id.clone()))
}

/// The Cluster's `spec.topology.version`, parsed leniently.
pub fn cluster_version(topology: &Topology) -> Result<Version, Hold> {
    api::version::parse_lenient(&topology.version).ok_or_else(|| {
        Hold::new(
            Reason::InvalidVersion,
            format!(
                "the Cluster's spec.topology.version {:?} is not a version",
                topology.version
            ),
        )
    })
}

/// S1: never downgrade.
pub fn no_downgrade(current: &Version, target: &Version) -> Result<(), Hold> {
    if target.cmp_precedence(current).is_lt() {
        return Err(Hold::new(
            Reason::ClusterAheadOfPlan,
            format!(
                "the Cluster runs v{current}, newer than the Plan's v{target}: never downgraded"
            ),
        ));
    }
    Ok(())
}

/// S2: at most one minor per step; a farther target goes through the highest ready image of the
/// next minor.
pub fn one_minor(
    current: &Version,
    target: &Version,
    target_id: &str,
    images: &[Image],
) -> Result<(Version, String), Hold> {
    if target.major != current.major {
        return Err(Hold::new(
            Reason::MajorVersionChange,
            format!("the Plan's v{target} changes the major version of the Cluster's v{current}"),
        ));
    }
    if target.minor <= current.minor + 1 {
        return Ok((target.clone(), target_id.to_owned()));
    }
    let next = current.minor + 1;
    images
        .iter()
        .filter(|i| i.version.major == current.major && i.version.minor == next && i.version.pre.is_empty())
        .fold(None::<&Image>, |best, i| match best {
            Some(b) if i.version.cmp_precedence(&b.version).is_le() => Some(b),
            _ => Some(i),
        })
        .map(|i| (i.version.clone(), i.id.clone()))
        .ok_or_else(|| {
            Hold::new(
                Reason::NoImageForIntermediateMinor,
                format!(
                    "the Plan's v{target} is more than one minor ahead of v{current}, and no ready image exists for v{}.{next}",
                    current.major
                ),
            )
        })
}

/// S2 for a chained upgrade: every version Cluster API walks from `current` to `target`, each
/// with its image: for each minor after `current`'s, the highest ready image of that minor (as
/// [`one_minor`] picks it, and as our `GenerateUpgradePlan` answers), ending at the target.
/// Blocks with `NoImageForIntermediateMinor` when a minor on the way has no ready image.
pub fn chain(
    current: &Version,
    target: &Version,
    target_id: &str,
    images: &[Image],
) -> Result<Vec<(Version, String)>, Hold> {
    let mut path = Vec::new();
    let mut at = current.clone();
    loop {
        let (next, id) = one_minor(&at, target, target_id, images)?;
        let done = next.minor >= target.minor;
        path.push((next.clone(), id));
        if done {
            return Ok(path);
        }
        at = next;
    }
}

/// The variable entry a step writes, by mode (`topologyVariable`, `imageMap`, or none). `path`
/// holds the versions the step passes through with their images, the written one last: the map
/// gets an entry for each, a single variable the last image.
pub fn variable_write(
    spec: &UpgraderSpecView<'_>,
    topology: &Topology,
    path: &[(Version, String)],
) -> Result<Option<VariableWrite>, Hold> {
    if let Some(map) = spec.image_map {
        return map_write(map, topology, path).map(Some);
    }
    let Some(name) = spec.topology_variable else {
        return Ok(None);
    };
    let Some((_, id)) = path.last() else {
        return Ok(None);
    };
    let value = Value::String(id.to_owned());
    match topology.variables.iter().find(|v| v.name == name) {
        Some(existing) => Ok(Some(VariableWrite {
            name: name.to_owned(),
            unchanged: existing.value == value,
            value,
            created: false,
        })),
        None if spec.create_topology_variable => Ok(Some(VariableWrite {
            name: name.to_owned(),
            value,
            unchanged: false,
            created: true,
        })),
        None => Err(Hold::new(
            Reason::TopologyVariableNotFound,
            format!(
                "the Cluster has no variable {name:?} (spec.topologyVariable), and spec.createTopologyVariable is not set: nothing is written"
            ),
        )),
    }
}

fn map_write(
    map: &ImageMap,
    topology: &Topology,
    path: &[(Version, String)],
) -> Result<VariableWrite, Hold> {
    let existing = topology.variables.iter().find(|v| v.name == map.variable);
    let Some(existing) = existing else {
        if !map.create.unwrap_or(false) {
            return Err(Hold::new(
                Reason::TopologyVariableNotFound,
                format!(
                    "the Cluster has no variable {:?} (spec.imageMap.variable), and spec.imageMap.create is not set: nothing is written",
                    map.variable
                ),
            ));
        }
        let entries: Map<String, Value> = path
            .iter()
            .map(|(version, id)| (api::version::with_v(version), Value::String(id.clone())))
            .collect();
        let value = match &map.field {
            Some(field) => json!({ field: entries }),
            None => Value::Object(entries),
        };
        return Ok(VariableWrite {
            name: map.variable.clone(),
            value,
            unchanged: false,
            created: true,
        });
    };
    let invalid = |what: &str| {
        Hold::new(
            Reason::InvalidImageMap,
            format!("the Cluster's variable {:?} {what}", map.variable),
        )
    };
    let mut value = existing.value.clone();
    let Some(outer) = value.as_object_mut() else {
        return Err(invalid("is not an object"));
    };
    let entries: &mut Map<String, Value> = match &map.field {
        Some(field) => match outer
            .entry(field.clone())
            .or_insert_with(|| Value::Object(Map::new()))
        {
            Value::Object(entries) => entries,
            _ => return Err(invalid(&format!("has a {field:?} that is not an object"))),
        },
        None => outer,
    };
    let mut unchanged = true;
    for (version, id) in path {
        let key = api::version::with_v(version);
        match entries.get(&key) {
            Some(Value::String(present)) if present == id => {}
            Some(present) => {
                return Err(Hold::new(
                    Reason::ImageMapEntryConflict,
                    format!(
                        "the image map {:?} already maps {key} to {present}, not {id:?}: an existing entry is never changed",
                        map.variable
                    ),
                ));
            }
            None => {
                entries.insert(key, Value::String(id.clone()));
                unchanged = false;
            }
        }
    }
    Ok(VariableWrite {
        name: map.variable.clone(),
        value: if unchanged {
            existing.value.clone()
        } else {
            value
        },
        unchanged,
        created: false,
    })
}

/// S5: nothing to change means no write. Ready when the Cluster runs the Plan's version and
/// image and has finished; still rolling out otherwise.
fn nothing_to_write(
    current: &Version,
    target: &Version,
    step: &Step,
    cluster: &ClusterView,
) -> Result<(), Held> {
    let same_version = step.version.cmp_precedence(current).is_eq();
    if !same_version || step.variable.as_ref().is_some_and(|v| !v.unchanged) {
        return Ok(());
    }
    let confirmed = target
        .cmp_precedence(current)
        .is_eq()
        .then(|| current.clone());
    let hold = match &cluster.finished {
        Ok(()) => Hold::new(
            Reason::ClusterUsingLatestVersion,
            format!("the Cluster runs v{current} with the Plan's image"),
        ),
        Err(why) => Hold::new(
            Reason::RollingOut,
            format!("the Cluster is rolling out v{current}: {why}"),
        ),
    };
    Err((hold, confirmed))
}

/// S13: with a rollout, work starts only once the Plan admitted the Cluster for its target.
pub fn admitted(cluster: &ClusterView) -> Result<(), Hold> {
    match &cluster.admission {
        Admission::Unrestricted | Admission::Admitted => Ok(()),
        Admission::NotInAnyWave => Err(Hold::new(
            Reason::NotInAnyWave,
            "the Cluster's labels match no wave of the Plan's spec.rollout",
        )),
        Admission::Halted(message) => Err(Hold::new(Reason::RolloutHalted, message.clone())),
        Admission::Waiting { wave, not_before } => {
            let mut hold = Hold::new(
                Reason::WaitingForWave,
                match not_before {
                    Some(at) => format!(
                        "wave {wave} of the Plan's rollout opens once an earlier wave's soak ends at {at}"
                    ),
                    None => format!(
                        "waiting for the Plan's rollout to admit the Cluster in wave {wave}"
                    ),
                },
            );
            hold.not_before = *not_before;
            Err(hold)
        }
    }
}

/// S6: nothing is written to a paused Cluster.
pub fn paused_cluster(cluster: &ClusterView) -> Result<(), Hold> {
    if cluster.paused {
        return Err(Hold::new(
            Reason::ClusterPaused,
            "the Cluster is paused (spec.paused or the cluster.x-k8s.io/paused annotation)",
        ));
    }
    Ok(())
}

/// S4: no step while the previous one is unfinished.
pub fn previous_finished(cluster: &ClusterView) -> Result<(), Hold> {
    cluster.finished.as_ref().map_err(|why| {
        Hold::new(
            Reason::PreviousStepUnfinished,
            format!("the previous step has not finished: {why}"),
        )
    })?;
    Ok(())
}

/// S7: a step starts only inside the maintenance window.
pub fn in_window(spec: &UpgraderSpecView<'_>, now: Timestamp) -> Result<(), Hold> {
    let Some(window) = spec.maintenance_window else {
        return Ok(());
    };
    let window = Window::parse(window)
        .map_err(|e| Hold::new(Reason::InvalidMaintenanceWindow, e.to_string()))?;
    match window.at(now) {
        Opening::Open { .. } => Ok(()),
        Opening::Closed { opens } => {
            let mut hold = Hold::new(
                Reason::OutsideMaintenanceWindow,
                match opens {
                    Some(at) => format!("the maintenance window is closed; it opens at {at}"),
                    None => "the maintenance window is closed and its schedule never fires again"
                        .to_owned(),
                },
            );
            hold.not_before = opens;
            Err(hold)
        }
    }
}

/// `spec.dryRun`: report the step, never write it.
pub fn dry_run(spec: &UpgraderSpecView<'_>) -> Result<(), Hold> {
    if spec.dry_run {
        return Err(Hold::new(
            Reason::DryRun,
            "spec.dryRun is true: the next step is reported, not written",
        ));
    }
    Ok(())
}
