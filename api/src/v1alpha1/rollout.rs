//! `Plan.spec.rollout` and `Plan.status.rollout`: a Plan steps its Clusters in waves.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::{LabelSelector, MachineImageDetails};
use crate::durations;

/// Annotation on a Plan: a new value (a first value counts as new) resumes a halted rollout.
pub const RESUME_ROLLOUT_ANNOTATION: &str = "kubernetesupgraded.dimitrikoshkin.com/resume-rollout";
/// Default of `spec.rollout.stepTimeout`.
pub const DEFAULT_STEP_TIMEOUT: &str = "2h";
/// Default of `spec.rollout.waves[].soak`.
pub const DEFAULT_SOAK: &str = "0s";
/// Most waves of a rollout.
pub const MAX_WAVES: usize = 16;
/// Most Clusters of one wave admitted and not finished at once (and listed in `admitted`).
pub const MAX_ADMITTED: usize = 256;

/// How a Plan steps its Clusters: wave after wave, each under a concurrency budget, each soaked.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The waves, in order, each name once. A Cluster belongs to the first wave whose selector
    /// matches its labels.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub waves: Vec<Wave>,
    /// A step not finished this long after it started counts as failed and halts the rollout, as
    /// a duration from 1s to 168h, such as `2h`. Omitted means 2h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = kube::core::Rule::new(durations::between_rule("1s", "168h")).message("spec.rollout.stepTimeout must be a duration from 1s to 168h, such as 2h"))]
    pub step_timeout: Option<String>,
}

/// One wave of a rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Wave {
    /// The wave's name, unique within the rollout.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Selects the wave's Clusters by their labels, among those not in an earlier wave. Omitted or
    /// `{}` matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// Most Clusters of the wave admitted and not finished at once: an integer from 1 to 256, or
    /// a percentage of the wave's Clusters from `1%` to `100%`, rounded up (at least 1). Omitted
    /// means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 4, "minimum" = 1, "maximum" = 256, "pattern" = "^([1-9][0-9]?|100)%$"))]
    pub max_concurrent: Option<IntOrString>,
    /// How long every Cluster of the wave must stay healthy after its last one finished before
    /// the next wave opens, as a duration up to 168h, such as `30m`. Omitted means 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = kube::core::Rule::new(durations::between_rule("0s", "168h")).message("spec.rollout.waves[].soak must be a duration from 0s to 168h, such as 30m"))]
    pub soak: Option<String>,
}

/// Where a rollout is (`status.rollout.phase`).
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutPhase {
    /// Clusters are being admitted or are stepping.
    Progressing,
    /// A wave finished and soaks before the next one opens.
    Soaking,
    /// A Cluster failed: nothing new is admitted until the rollout is resumed.
    Halted,
    /// Every wave finished and soaked.
    Complete,
}

/// The rollout of the Plan's current target (`status.rollout`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The image rolled out: the Plan's `machineImageDetails` when the rollout began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<MachineImageDetails>,
    /// `Progressing`, `Soaking`, `Halted` or `Complete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// Each wave's progress, in the order of `spec.rollout.waves`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub waves: Vec<WaveStatus>,
    /// The first failure, while the rollout is halted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<RolloutHalt>,
    /// The last `resume-rollout` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub resumed: Option<String>,
    /// When the rollout was last resumed: the step timeout of a Cluster still unfinished counts
    /// from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<Time>,
}

/// One wave's progress.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WaveStatus {
    /// The wave's name.
    pub name: String,
    /// The wave's Clusters.
    pub clusters: i32,
    /// The Clusters admitted to the target and not yet finished, by name: their upgraders may
    /// step. At most [`MAX_ADMITTED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub admitted: Vec<String>,
    /// The wave's Clusters at the target.
    pub updated: i32,
    /// The wave's Clusters that failed.
    pub failed: i32,
    /// When the first Cluster of the wave was admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When the wave's last Cluster was seen finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
    /// When the soak passes (or passed); the next wave opens then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soaked_until: Option<Time>,
}

/// Why a rollout halted (`status.rollout.halted`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutHalt {
    /// The Cluster that failed.
    pub cluster: String,
    /// Why: `StepTimeout`, `ClusterUnavailable`, or the upgrader's Blocked reason.
    pub reason: String,
    /// For people.
    #[schemars(length(max = 1024))]
    pub message: String,
    /// When the failure was seen.
    pub time: Time,
}

impl Wave {
    /// The wave's budget for `clusters` Clusters: a percentage rounds up, at least 1, at most
    /// [`MAX_ADMITTED`].
    pub fn budget(&self, clusters: usize) -> usize {
        let budget = match &self.max_concurrent {
            None => 1,
            Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(1),
            Some(IntOrString::String(text)) => match text.strip_suffix('%') {
                Some(percent) => percent
                    .parse::<usize>()
                    .map_or(1, |p| (clusters * p.min(100)).div_ceil(100)),
                None => text.parse().unwrap_or(1),
            },
        };
        budget.clamp(1, MAX_ADMITTED)
    }

    /// `soak`, zero when omitted.
    pub fn soak(&self) -> Result<std::time::Duration, durations::DurationError> {
        Ok(
            durations::parse_signed(self.soak.as_deref().unwrap_or(DEFAULT_SOAK))?
                .unwrap_or_default(),
        )
    }
}

impl Rollout {
    /// `stepTimeout`, 2h when omitted.
    pub fn step_timeout(&self) -> Result<std::time::Duration, durations::DurationError> {
        durations::parse_positive(self.step_timeout.as_deref().unwrap_or(DEFAULT_STEP_TIMEOUT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(max: Option<IntOrString>) -> Wave {
        Wave {
            name: "w".into(),
            max_concurrent: max,
            ..Wave::default()
        }
    }

    #[test]
    fn budget_rounds_percentages_up_with_a_minimum_of_one() {
        assert_eq!(wave(None).budget(40), 1);
        assert_eq!(wave(Some(IntOrString::Int(2))).budget(5), 2);
        assert_eq!(wave(Some(IntOrString::Int(1000))).budget(5), MAX_ADMITTED);
        let pct = |p: &str| wave(Some(IntOrString::String(p.into())));
        assert_eq!(pct("10%").budget(25), 3);
        assert_eq!(pct("10%").budget(20), 2);
        assert_eq!(pct("1%").budget(3), 1);
        assert_eq!(pct("100%").budget(7), 7);
        assert_eq!(pct("50%").budget(0), 1);
    }

    #[test]
    fn durations_default() {
        assert_eq!(wave(None).soak(), Ok(std::time::Duration::ZERO));
        let soaked = Wave {
            soak: Some("30m".into()),
            ..wave(None)
        };
        assert_eq!(soaked.soak(), Ok(std::time::Duration::from_secs(1800)));
        assert_eq!(
            Rollout::default().step_timeout(),
            Ok(std::time::Duration::from_secs(7200))
        );
    }
}
