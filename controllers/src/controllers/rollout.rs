//! Fleet rollouts (`Plan.spec.rollout`), shared by the Plan and the upgraders so that neither
//! imports the other: [`admit`] is the Plan's pure admission decision (the only writer of
//! admissions), [`admission`] is what an upgrader reads of it for its own Cluster.
//!
//! Safety (S13): no Cluster of wave k+1 is admitted before every Cluster of wave k is at the
//! target and the wave's soak has passed; never more than the wave's budget admitted and
//! unfinished. Admissions live in `status.rollout` only, so they are persisted before any
//! upgrader can act on them.

use std::collections::BTreeMap;
use std::time::Duration;

use api::v1alpha1::{
    LabelSelector, MachineImageDetails, Rollout, RolloutHalt, RolloutPhase, RolloutStatus,
    WaveStatus,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Reason of a failure whose step did not finish within `stepTimeout`.
pub const STEP_TIMEOUT: &str = "StepTimeout";
/// Reason of a failure where a Cluster reported `Available=False` during its wave's soak.
pub const CLUSTER_UNAVAILABLE: &str = "ClusterUnavailable";

/// The upgrader's Blocked reasons that belong to an update under way: each fails the Cluster.
pub const UPDATE_FAILURES: &[&str] = &[
    "BootedImageMismatch",
    "DrainTimeout",
    "OSVersionReconciliationFailed",
    "ImageMapEntryConflict",
    "MissingImageStamp",
    "ImageNotPinned",
    "NoImageForIntermediateMinor",
];

/// One Cluster following the Plan, as the acting upgrader reports it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Member {
    /// The Cluster's name.
    pub cluster: String,
    /// The index of the Cluster's wave (the first whose selector matches its labels, as its
    /// upgrader reports it); `None` when it is in no wave.
    pub wave: Option<usize>,
    /// The upgrader has not reported the Cluster's wave yet: while any has not, nothing is
    /// admitted, since an unplaced Cluster could belong to an earlier wave.
    pub unplaced: bool,
    /// The Cluster runs the target and its last step finished.
    pub at_target: bool,
    /// When the step under way started (written, or its first host selected in place).
    pub step_started: Option<Timestamp>,
    /// The upgrader is Blocked for a reason that belongs to the update: (reason, message).
    pub blocked: Option<(String, String)>,
    /// The Cluster reports `Available=False`.
    pub unavailable: bool,
}

/// Everything the admission decision reads.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// `spec.rollout`.
    pub rollout: &'a Rollout,
    /// The Plan's current target (`status.machineImageDetails` as decided now).
    pub target: &'a MachineImageDetails,
    /// The Clusters of the upgraders following the Plan, one per Cluster.
    pub members: &'a [Member],
    /// `status.rollout` as last written.
    pub previous: Option<&'a RolloutStatus>,
    /// The `resume-rollout` annotation's value.
    pub resume: Option<&'a str>,
    /// The clock.
    pub now: Timestamp,
}

/// What the admission decision produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The new `status.rollout`.
    pub status: RolloutStatus,
    /// The halt this pass found, when it is new (one Warning event).
    pub halted_now: Option<RolloutHalt>,
    /// The rollout was resumed by this pass (a new annotation value).
    pub resumed_now: bool,
    /// When to look again without a watch event: the next soak end or step timeout.
    pub requeue: Option<Duration>,
}

/// The index of the first wave whose selector matches `labels`.
pub fn wave_of(rollout: &Rollout, labels: &BTreeMap<String, String>) -> Option<usize> {
    rollout.waves.iter().position(|wave| {
        wave.cluster_selector
            .as_ref()
            .is_none_or(|s: &LabelSelector| s.matches(labels))
    })
}

fn ts(time: Option<&Time>) -> Option<Timestamp> {
    time.map(|t| t.0)
}

fn after(at: Timestamp, by: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(by)
        .ok()
        .and_then(|d| at.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// `at` rounded up to a whole second: status times are written in whole seconds, and a soak
/// read back truncated would end early.
fn whole_second_up(at: Timestamp) -> Timestamp {
    if at.subsec_nanosecond() == 0 {
        return at;
    }
    Timestamp::from_second(at.as_second().saturating_add(1)).unwrap_or(Timestamp::MAX)
}

/// When a wave seen finished at `now` has soaked for `soak`. A reconcile's clock is floored to
/// whole seconds (`runtime::now`), so the wave may have finished up to a second after `now`:
/// a soak ends one second later than `now + soak`, never earlier than asked.
fn soak_end(now: Timestamp, soak: Duration) -> Timestamp {
    if soak.is_zero() {
        return now;
    }
    whole_second_up(after(now, soak.saturating_add(Duration::from_secs(1))))
}

/// The admission decision: from the fleet, the previous status and the clock to the new
/// `status.rollout`. Pure; the Plan controller writes its result before anyone reads it.
pub fn admit(inputs: &Inputs<'_>) -> Outcome {
    let now = inputs.now;
    let step_timeout = inputs
        .rollout
        .step_timeout()
        .unwrap_or(Duration::from_secs(7200));
    let same_target = inputs
        .previous
        .is_some_and(|p| p.target.as_ref() == Some(inputs.target));
    let previous = inputs.previous.cloned().unwrap_or_default();

    // A new annotation value, or a new target, lifts a halt; a resume restarts step clocks.
    let resumed_now = inputs.resume.is_some() && inputs.resume != previous.resumed.as_deref();
    let mut halted = if same_target {
        previous.halted.clone()
    } else {
        None
    };
    let mut resumed_at = previous.resumed_at.clone();
    if resumed_now {
        halted = None;
        resumed_at = Some(Time(now));
    }
    let clock_from = |started: Timestamp| match &resumed_at {
        Some(r) if r.0 > started => r.0,
        _ => started,
    };

    // Membership: the first matching wave, each wave in name order.
    let mut members: Vec<&Member> = inputs.members.iter().collect();
    members.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    members.dedup_by(|a, b| a.cluster == b.cluster);
    let unplaced = members.iter().any(|m| m.unplaced);
    let mut by_wave: Vec<Vec<&Member>> = vec![Vec::new(); inputs.rollout.waves.len()];
    for member in members {
        if let Some(wave) = member.wave.and_then(|index| by_wave.get_mut(index)) {
            wave.push(member);
        }
    }

    // Admissions carry over a target change: those Clusters are in flight and keep counting.
    let old_waves: BTreeMap<&str, &WaveStatus> = previous
        .waves
        .iter()
        .map(|w| (w.name.as_str(), w))
        .collect();
    let previously_admitted = |cluster: &str| {
        previous
            .waves
            .iter()
            .any(|w| w.admitted.iter().any(|a| a == cluster))
    };

    let mut waves = Vec::with_capacity(by_wave.len());
    let mut first_failure: Option<RolloutHalt> = None;
    let mut requeue_at: Option<Timestamp> = None;
    let mut earlier_passed = true;
    let mut soaking = false;
    for (wave, fleet) in inputs.rollout.waves.iter().zip(&by_wave) {
        let old = old_waves
            .get(wave.name.as_str())
            .copied()
            .filter(|_| same_target);
        let soak = wave.soak().unwrap_or_default();
        let mut admitted: Vec<String> = fleet
            .iter()
            .filter(|m| !m.at_target && previously_admitted(&m.cluster))
            .map(|m| m.cluster.clone())
            .collect();
        let updated = fleet.iter().filter(|m| m.at_target).count();
        let all_done = updated == fleet.len();
        let mut finished = old.and_then(|w| w.finished.clone()).filter(|_| all_done);
        let mut soaked_until = old
            .and_then(|w| w.soaked_until.clone())
            .filter(|_| all_done);
        if resumed_now && ts(soaked_until.as_ref()).is_some_and(|t| t > now) {
            // A soak cut short by the halt starts again.
            finished = None;
            soaked_until = None;
        }
        if all_done && finished.is_none() {
            finished = Some(Time(now));
            soaked_until = Some(Time(soak_end(now, soak)));
        }

        // Failures: admitted Clusters whose update failed, or any Cluster unhealthy in the soak.
        let in_soak = ts(soaked_until.as_ref()).is_some_and(|t| t > now);
        let mut failed = 0;
        let mut soak_failed = false;
        for member in fleet {
            let failure = if admitted.contains(&member.cluster) {
                if let Some((reason, message)) = &member.blocked {
                    Some((reason.clone(), message.clone()))
                } else if let Some(started) = member.step_started {
                    let deadline = after(clock_from(started), step_timeout);
                    if deadline <= now {
                        Some((
                            STEP_TIMEOUT.to_owned(),
                            format!(
                                "Cluster {} did not finish its step within stepTimeout {}",
                                member.cluster,
                                inputs.rollout.step_timeout.as_deref().unwrap_or("2h")
                            ),
                        ))
                    } else {
                        requeue_at = Some(requeue_at.map_or(deadline, |r| r.min(deadline)));
                        None
                    }
                } else {
                    None
                }
            } else if in_soak && member.unavailable {
                soak_failed = true;
                Some((
                    CLUSTER_UNAVAILABLE.to_owned(),
                    format!(
                        "Cluster {} reported Available=False during the soak of wave {}",
                        member.cluster, wave.name
                    ),
                ))
            } else {
                None
            };
            if let Some((reason, message)) = failure {
                failed += 1;
                if first_failure.is_none() {
                    first_failure = Some(RolloutHalt {
                        cluster: member.cluster.clone(),
                        reason,
                        message: truncate(message),
                        time: Time(now),
                    });
                }
            }
        }

        if soak_failed {
            // The soak did not pass: it starts again once every Cluster is seen finished.
            finished = None;
            soaked_until = None;
        }

        // Admission: the wave is open, the rollout is not halted, and the budget has room.
        let budget = wave.budget(fleet.len());
        if earlier_passed && halted.is_none() && first_failure.is_none() && !unplaced {
            for member in fleet {
                if admitted.len() >= budget {
                    break;
                }
                if !member.at_target && !admitted.contains(&member.cluster) {
                    admitted.push(member.cluster.clone());
                }
            }
        }
        admitted.sort();
        let started = old
            .and_then(|w| w.started.clone())
            .or_else(|| (!admitted.is_empty()).then_some(Time(now)));

        let passed = ts(soaked_until.as_ref()).is_some_and(|t| t <= now);
        if earlier_passed && !passed && in_soak && !soak_failed {
            soaking = true;
            if let Some(t) = ts(soaked_until.as_ref()) {
                requeue_at = Some(requeue_at.map_or(t, |r| r.min(t)));
            }
        }
        earlier_passed = earlier_passed && passed;
        waves.push(WaveStatus {
            name: wave.name.clone(),
            clusters: i32::try_from(fleet.len()).unwrap_or(i32::MAX),
            admitted,
            updated: i32::try_from(updated).unwrap_or(i32::MAX),
            failed,
            started,
            finished,
            soaked_until,
        });
    }

    let halted_now = match (&halted, first_failure) {
        (None, Some(failure)) => {
            halted = Some(failure.clone());
            Some(failure)
        }
        _ => None,
    };
    let phase = if halted.is_some() {
        RolloutPhase::Halted
    } else if earlier_passed {
        RolloutPhase::Complete
    } else if soaking {
        RolloutPhase::Soaking
    } else {
        RolloutPhase::Progressing
    };
    let status = RolloutStatus {
        target: Some(inputs.target.clone()),
        phase: Some(phase),
        waves,
        halted,
        resumed: inputs.resume.map(str::to_owned).or(previous.resumed),
        resumed_at,
    };
    let requeue = requeue_at.map(|at| {
        let wait = at.duration_since(now);
        Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(100)
    });
    Outcome {
        status,
        halted_now,
        resumed_now,
        requeue,
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > 1024 {
        let mut end = 1021;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// What an upgrader reads of its Plan's rollout for its own Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The Plan has no rollout: step as before.
    Unrestricted,
    /// Admitted for the Plan's current target: the whole update may proceed.
    Admitted,
    /// The Cluster's labels match no wave.
    NotInAnyWave,
    /// The rollout is halted; the halt's message.
    Halted(String),
    /// Not admitted yet; the time the Cluster's wave opens, while an earlier wave soaks.
    Waiting {
        /// The Cluster's wave.
        wave: String,
        /// The end of an earlier wave's soak, when known.
        not_before: Option<Timestamp>,
    },
}

/// Whether `cluster` (with `labels`) may step towards `target` under the Plan's rollout.
pub fn admission(
    rollout: Option<&Rollout>,
    status: Option<&RolloutStatus>,
    target: Option<&MachineImageDetails>,
    cluster: &str,
    labels: &BTreeMap<String, String>,
    now: Timestamp,
) -> Admission {
    let Some(rollout) = rollout else {
        return Admission::Unrestricted;
    };
    let Some(index) = wave_of(rollout, labels) else {
        return Admission::NotInAnyWave;
    };
    let wave = rollout.waves[index].name.clone();
    let status = status.filter(|s| s.target.is_some() && s.target.as_ref() == target);
    let Some(status) = status else {
        return Admission::Waiting {
            wave,
            not_before: None,
        };
    };
    if status
        .waves
        .iter()
        .any(|w| w.admitted.iter().any(|a| a == cluster))
    {
        return Admission::Admitted;
    }
    if let Some(halt) = &status.halted {
        return Admission::Halted(format!(
            "the Plan's rollout is halted: Cluster {} failed ({}): {}",
            halt.cluster, halt.reason, halt.message
        ));
    }
    let not_before = rollout.waves[..index]
        .iter()
        .filter_map(|w| status.waves.iter().find(|s| s.name == w.name))
        .filter_map(|w| ts(w.soaked_until.as_ref()))
        .filter(|t| *t > now)
        .max();
    Admission::Waiting { wave, not_before }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
