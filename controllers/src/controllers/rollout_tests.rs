//! Table tests of the admission decision, and a property simulation of whole rollouts over
//! random fleets, waves, finish times, failures and manager restarts.
#![allow(
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    clippy::unnecessary_wraps
)]

use std::collections::{BTreeMap, BTreeSet};

use api::v1alpha1::{LabelSelector, LabelValue, Wave};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

use super::*;
use crate::runtime::builders::timestamp;

fn ring(name: &str) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "ring".to_owned(),
            LabelValue(name.to_owned()),
        )])),
        match_expressions: None,
    })
}

fn wave(name: &str, selector: Option<LabelSelector>, max: i32, soak: &str) -> Wave {
    Wave {
        name: name.to_owned(),
        cluster_selector: selector,
        max_concurrent: Some(IntOrString::Int(max)),
        soak: Some(soak.to_owned()),
    }
}

fn labels(ring_label: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("ring".to_owned(), ring_label.to_owned())])
}

/// A Cluster in the ring named: `canary` and `x` are in the first wave, `prod` in the second,
/// any other in none.
fn member(name: &str, ring_label: &str) -> Member {
    Member {
        cluster: name.to_owned(),
        wave: match ring_label {
            "canary" | "x" => Some(0),
            "prod" => Some(1),
            _ => None,
        },
        ..Member::default()
    }
}

fn target(id: &str) -> MachineImageDetails {
    MachineImageDetails {
        version: Some("v1.31.2".to_owned()),
        id: id.to_owned(),
    }
}

fn secs(s: i64) -> Timestamp {
    timestamp() + jiff::SignedDuration::from_secs(s)
}

fn run(
    rollout: &Rollout,
    members: &[Member],
    previous: Option<&RolloutStatus>,
    resume: Option<&str>,
    at: i64,
) -> Outcome {
    admit(&Inputs {
        rollout,
        target: &target("ami-2"),
        members,
        previous,
        resume,
        now: secs(at),
    })
}

fn admitted(status: &RolloutStatus, wave: usize) -> Vec<&str> {
    status.waves[wave]
        .admitted
        .iter()
        .map(String::as_str)
        .collect()
}

fn two_waves() -> Rollout {
    Rollout {
        waves: vec![
            wave("canary", ring("canary"), 1, "30s"),
            wave("everyone", None, 2, "0s"),
        ],
        step_timeout: Some("10m".to_owned()),
    }
}

#[test]
fn first_wave_admits_in_name_order_within_its_budget() {
    let rollout = Rollout {
        waves: vec![wave("w", None, 2, "0s")],
        step_timeout: None,
    };
    let members = [member("c", "x"), member("a", "x"), member("b", "x")];
    let out = run(&rollout, &members, None, None, 0);
    assert_eq!(admitted(&out.status, 0), ["a", "b"]);
    assert_eq!(out.status.phase, Some(RolloutPhase::Progressing));
    assert_eq!(out.status.waves[0].clusters, 3);
    assert_eq!(out.status.waves[0].started, Some(Time(secs(0))));
}

#[test]
fn a_cluster_in_no_wave_is_not_admitted_and_upgrader_says_so() {
    let rollout = Rollout {
        waves: vec![wave("canary", ring("canary"), 1, "0s")],
        step_timeout: None,
    };
    let members = [member("a", "other"), member("b", "canary")];
    let out = run(&rollout, &members, None, None, 0);
    assert_eq!(admitted(&out.status, 0), ["b"]);
    assert_eq!(
        admission(
            Some(&rollout),
            Some(&out.status),
            Some(&target("ami-2")),
            "a",
            &labels("other"),
            secs(0)
        ),
        Admission::NotInAnyWave
    );
}

#[test]
fn next_wave_opens_only_after_the_soak() {
    let rollout = two_waves();
    let mut members = vec![member("canary-1", "canary"), member("p1", "prod")];
    let first = run(&rollout, &members, None, None, 0).status;
    assert_eq!(admitted(&first, 0), ["canary-1"]);
    assert!(admitted(&first, 1).is_empty());
    assert_eq!(
        admission(
            Some(&rollout),
            Some(&first),
            Some(&target("ami-2")),
            "p1",
            &labels("prod"),
            secs(0)
        ),
        Admission::Waiting {
            wave: "everyone".into(),
            not_before: None
        }
    );
    members[0].at_target = true;
    let soaking = run(&rollout, &members, Some(&first), None, 100);
    assert_eq!(soaking.status.phase, Some(RolloutPhase::Soaking));
    assert_eq!(soaking.status.waves[0].soaked_until, Some(Time(secs(131))));
    assert!(admitted(&soaking.status, 0).is_empty());
    assert!(admitted(&soaking.status, 1).is_empty());
    assert_eq!(soaking.requeue, Some(Duration::from_millis(31_100)));
    assert_eq!(
        admission(
            Some(&rollout),
            Some(&soaking.status),
            Some(&target("ami-2")),
            "p1",
            &labels("prod"),
            secs(100)
        ),
        Admission::Waiting {
            wave: "everyone".into(),
            not_before: Some(secs(131))
        }
    );
    let still = run(&rollout, &members, Some(&soaking.status), None, 130).status;
    assert!(admitted(&still, 1).is_empty());
    let open = run(&rollout, &members, Some(&still), None, 131).status;
    assert_eq!(admitted(&open, 1), ["p1"]);
    assert_eq!(
        admission(
            Some(&rollout),
            Some(&open),
            Some(&target("ami-2")),
            "p1",
            &labels("prod"),
            secs(131)
        ),
        Admission::Admitted
    );
    members[1].at_target = true;
    let done = run(&rollout, &members, Some(&open), None, 200).status;
    assert_eq!(done.phase, Some(RolloutPhase::Complete));
    assert_eq!(done.waves[1].updated, 1);
}

#[test]
fn clusters_already_at_target_count_as_finished() {
    let rollout = two_waves();
    let mut members = vec![member("canary-1", "canary"), member("p1", "prod")];
    members[0].at_target = true;
    members[1].at_target = true;
    let out = run(&rollout, &members, None, None, 0).status;
    assert!(admitted(&out, 0).is_empty() && admitted(&out, 1).is_empty());
    // The canary wave still soaks before the rollout is complete.
    assert_eq!(out.phase, Some(RolloutPhase::Soaking));
    let later = run(&rollout, &members, Some(&out), None, 31).status;
    assert_eq!(later.phase, Some(RolloutPhase::Complete));
}

#[test]
fn a_step_timeout_halts_and_the_halt_does_not_clear_by_itself() {
    let rollout = two_waves();
    let mut members = vec![member("canary-1", "canary"), member("p1", "prod")];
    let first = run(&rollout, &members, None, None, 0).status;
    members[0].step_started = Some(secs(5));
    let waiting = run(&rollout, &members, Some(&first), None, 600);
    assert!(waiting.halted_now.is_none());
    assert_eq!(waiting.requeue, Some(Duration::from_millis(5_100)));
    let halted = run(&rollout, &members, Some(&waiting.status), None, 605);
    let halt = halted.halted_now.clone().expect("halts");
    assert_eq!(
        (halt.cluster.as_str(), halt.reason.as_str()),
        ("canary-1", STEP_TIMEOUT)
    );
    assert_eq!(halted.status.phase, Some(RolloutPhase::Halted));
    assert_eq!(halted.status.waves[0].failed, 1);
    // The failed Cluster finishes later: still halted, no second event, nothing admitted.
    members[0].at_target = true;
    let after_soak = run(&rollout, &members, Some(&halted.status), None, 1000);
    assert!(after_soak.halted_now.is_none());
    assert_eq!(after_soak.status.halted, halted.status.halted);
    assert!(admitted(&after_soak.status, 1).is_empty());
    assert!(matches!(
        admission(
            Some(&rollout),
            Some(&after_soak.status),
            Some(&target("ami-2")),
            "p1",
            &labels("prod"),
            secs(1000)
        ),
        Admission::Halted(m) if m.contains("canary-1")
    ));
    // A first annotation value resumes; the same value again does nothing new.
    let resumed = run(
        &rollout,
        &members,
        Some(&after_soak.status),
        Some("1"),
        1001,
    );
    assert!(resumed.resumed_now);
    assert_eq!(resumed.status.halted, None);
    // The canary's soak, cut short by the halt, starts again.
    assert_eq!(resumed.status.waves[0].soaked_until, Some(Time(secs(1032))));
    assert!(admitted(&resumed.status, 1).is_empty());
    let again = run(&rollout, &members, Some(&resumed.status), Some("1"), 1032);
    assert!(!again.resumed_now);
    assert_eq!(admitted(&again.status, 1), ["p1"]);
}

#[test]
fn a_resume_restarts_the_step_clock_of_unfinished_clusters() {
    let rollout = two_waves();
    let mut members = vec![member("canary-1", "canary")];
    let first = run(&rollout, &members, None, None, 0).status;
    members[0].step_started = Some(secs(0));
    let halted = run(&rollout, &members, Some(&first), None, 600).status;
    assert!(halted.halted.is_some());
    let resumed = run(&rollout, &members, Some(&halted), Some("a"), 700);
    assert!(resumed.status.halted.is_none());
    assert_eq!(admitted(&resumed.status, 0), ["canary-1"]);
    let before = run(&rollout, &members, Some(&resumed.status), Some("a"), 1299).status;
    assert!(before.halted.is_none());
    let timed_out = run(&rollout, &members, Some(&before), Some("a"), 1300).status;
    assert_eq!(
        timed_out.halted.map(|h| h.reason),
        Some(STEP_TIMEOUT.into())
    );
}

#[test]
fn a_blocked_update_halts_and_a_new_target_resumes() {
    let rollout = two_waves();
    let mut members = vec![member("canary-1", "canary"), member("p1", "prod")];
    let first = run(&rollout, &members, None, None, 0).status;
    members[0].blocked = Some(("BootedImageMismatch".into(), "host h1 booted ami-1".into()));
    let halted = run(&rollout, &members, Some(&first), None, 10);
    assert_eq!(
        halted.halted_now.map(|h| h.reason),
        Some("BootedImageMismatch".into())
    );
    members[0].blocked = None;
    let fixed = admit(&Inputs {
        rollout: &rollout,
        target: &target("ami-3"),
        members: &members,
        previous: Some(&halted.status),
        resume: None,
        now: secs(20),
    });
    assert_eq!(fixed.status.halted, None);
    assert_eq!(fixed.status.target, Some(target("ami-3")));
    // The in-flight canary stays admitted for the new target.
    assert_eq!(admitted(&fixed.status, 0), ["canary-1"]);
    // An upgrader reading the old target's status is not admitted to the new one.
    assert!(matches!(
        admission(
            Some(&rollout),
            Some(&halted.status),
            Some(&target("ami-3")),
            "canary-1",
            &labels("canary"),
            secs(20)
        ),
        Admission::Waiting { .. }
    ));
}

#[test]
fn unavailable_during_the_soak_halts_and_the_soak_starts_again() {
    let rollout = two_waves();
    let mut members = vec![member("canary-1", "canary"), member("p1", "prod")];
    members[0].at_target = true;
    let soaking = run(&rollout, &members, None, None, 0).status;
    members[0].unavailable = true;
    let halted = run(&rollout, &members, Some(&soaking), None, 10);
    assert_eq!(
        halted.halted_now.map(|h| h.reason),
        Some(CLUSTER_UNAVAILABLE.into())
    );
    members[0].unavailable = false;
    let resumed = run(&rollout, &members, Some(&halted.status), Some("x"), 100).status;
    assert_eq!(resumed.waves[0].soaked_until, Some(Time(secs(131))));
    assert!(admitted(&resumed, 1).is_empty());
}

#[test]
fn unavailable_outside_the_soak_is_not_a_failure() {
    let rollout = two_waves();
    let mut members = vec![member("canary-1", "canary"), member("p1", "prod")];
    members[1].unavailable = true;
    let out = run(&rollout, &members, None, None, 0);
    assert!(out.halted_now.is_none());
    members[0].at_target = true;
    let soaked = run(&rollout, &members, Some(&out.status), None, 31);
    let open = run(&rollout, &members, Some(&soaked.status), None, 62);
    assert!(open.halted_now.is_none());
    assert_eq!(admitted(&open.status, 1), ["p1"]);
}

#[test]
fn nothing_is_admitted_while_a_cluster_is_unplaced() {
    let rollout = two_waves();
    let mut members = vec![member("canary-1", "canary"), member("p1", "prod")];
    members[0].at_target = true;
    members.push(Member {
        cluster: "new".into(),
        unplaced: true,
        ..Member::default()
    });
    let out = run(&rollout, &members, None, None, 100).status;
    assert!(admitted(&out, 1).is_empty(), "{out:?}");
    members.pop();
    let placed = run(&rollout, &members, Some(&out), None, 131).status;
    assert_eq!(admitted(&placed, 1), ["p1"]);
}

#[test]
fn a_soak_ends_on_a_whole_second_a_second_after_the_floored_clock() {
    let rollout = two_waves();
    let mut members = vec![member("canary-1", "canary")];
    members[0].at_target = true;
    let out = admit(&Inputs {
        rollout: &rollout,
        target: &target("ami-2"),
        members: &members,
        previous: None,
        resume: None,
        now: secs(10) + jiff::SignedDuration::from_millis(900),
    });
    assert_eq!(out.status.waves[0].soaked_until, Some(Time(secs(42))));
}

#[test]
fn percentages_round_up() {
    let rollout = Rollout {
        waves: vec![Wave {
            name: "all".into(),
            max_concurrent: Some(IntOrString::String("10%".into())),
            ..Wave::default()
        }],
        step_timeout: None,
    };
    let members: Vec<Member> = (0..11).map(|i| member(&format!("c{i:02}"), "x")).collect();
    let out = run(&rollout, &members, None, None, 0).status;
    assert_eq!(admitted(&out, 0), ["c00", "c01"]);
}

// --- The simulation ------------------------------------------------------------------------

/// One simulated Cluster: its ring, whether it needs the update, how long its step takes, and
/// how it fails, if it does.
#[derive(Clone, Debug)]
struct SimCluster {
    ring: u8,
    needs_update: bool,
    duration: i64,
    fault: Fault,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    NeverFinishes,
    Blocks,
    UnavailableAfterFinish,
}

#[derive(Clone, Debug)]
struct SimWave {
    ring: Option<u8>,
    max: i32,
    percent: bool,
    soak: i64,
}

fn sim_cluster(faults: bool) -> impl Strategy<Value = SimCluster> {
    let fault = if faults {
        prop_oneof![
            8 => Just(Fault::None),
            1 => Just(Fault::NeverFinishes),
            1 => Just(Fault::Blocks),
            1 => Just(Fault::UnavailableAfterFinish),
        ]
        .boxed()
    } else {
        Just(Fault::None).boxed()
    };
    (0u8..4, prop::bool::weighted(0.85), 1i64..60, fault).prop_map(
        |(ring, needs_update, duration, fault)| SimCluster {
            ring,
            needs_update,
            duration,
            fault,
        },
    )
}

fn sim_waves() -> impl Strategy<Value = Vec<SimWave>> {
    prop::collection::vec(
        (prop::option::of(0u8..4), 1i32..5, any::<bool>(), 0i64..40).prop_map(
            |(ring, max, percent, soak)| SimWave {
                ring,
                max: if percent { max * 20 } else { max },
                percent,
                soak,
            },
        ),
        1..4,
    )
}

fn to_rollout(waves: &[SimWave]) -> Rollout {
    Rollout {
        waves: waves
            .iter()
            .enumerate()
            .map(|(i, w)| Wave {
                name: format!("w{i}"),
                cluster_selector: w.ring.and_then(|r| ring(&format!("r{r}"))),
                max_concurrent: Some(if w.percent {
                    IntOrString::String(format!("{}%", w.max))
                } else {
                    IntOrString::Int(w.max)
                }),
                soak: Some(format!("{}s", w.soak)),
            })
            .collect(),
        step_timeout: Some("120s".into()),
    }
}

/// What really happened to one Cluster in the simulation.
#[derive(Clone, Debug, Default)]
struct Truth {
    started: Option<i64>,
    finished: Option<i64>,
}

struct Report {
    complete: bool,
    halted: bool,
}

/// Runs the rollout tick by tick (5 s each): the Plan controller decides, its write is lost when
/// the manager is killed before it, and upgraders step only on what was written. Checks S13 and
/// the budget against what really happened, and that a halted rollout admits nothing.
fn simulate(
    clusters: &[SimCluster],
    waves: &[SimWave],
    kills: &BTreeSet<i64>,
    ticks: i64,
) -> Result<Report, TestCaseError> {
    const TICK: i64 = 5;
    let rollout = to_rollout(waves);
    let names: Vec<String> = (0..clusters.len()).map(|i| format!("c{i:03}")).collect();
    let labels: Vec<BTreeMap<String, String>> = clusters
        .iter()
        .map(|c| BTreeMap::from([("ring".to_owned(), format!("r{}", c.ring))]))
        .collect();
    let wave_index: Vec<Option<usize>> = labels.iter().map(|l| wave_of(&rollout, l)).collect();
    let mut truth: Vec<Truth> = clusters
        .iter()
        .map(|c| Truth {
            started: None,
            finished: (!c.needs_update).then_some(-1),
        })
        .collect();
    let mut persisted: Option<RolloutStatus> = None;
    let mut halted_ever = false;
    let target = target("ami-2");
    let members_at = |truth: &[Truth], now: i64| -> Vec<Member> {
        clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let t = &truth[i];
                let finished = t.finished.is_some_and(|f| f <= now);
                Member {
                    cluster: names[i].clone(),
                    wave: wave_index[i],
                    unplaced: false,
                    at_target: finished,
                    step_started: t.started.filter(|_| !finished).map(secs),
                    blocked: (c.fault == Fault::Blocks && t.started.is_some() && !finished)
                        .then(|| ("DrainTimeout".to_owned(), "drain".to_owned())),
                    unavailable: c.fault == Fault::UnavailableAfterFinish
                        && t.finished.is_some_and(|f| f >= 0 && now >= f + 2),
                }
            })
            .collect()
    };
    for tick in 0..ticks {
        let now = tick * TICK;
        // The Plan controller's pass; a kill loses its write.
        let members = members_at(&truth, now);
        let out = admit(&Inputs {
            rollout: &rollout,
            target: &target,
            members: &members,
            previous: persisted.as_ref(),
            resume: None,
            now: secs(now),
        });
        if !kills.contains(&tick) {
            if let Some(old) = persisted.as_ref().filter(|o| o.halted.is_some()) {
                for (new_wave, old_wave) in out.status.waves.iter().zip(&old.waves) {
                    for name in &new_wave.admitted {
                        prop_assert!(
                            old_wave.admitted.contains(name),
                            "halted rollout admitted {name} at {now}"
                        );
                    }
                }
            }
            halted_ever |= out.status.halted.is_some();
            persisted = Some(out.status);
        }
        // Upgraders step on the written status only.
        for i in 0..clusters.len() {
            if truth[i].started.is_some() || truth[i].finished.is_some() {
                continue;
            }
            let decision = admission(
                Some(&rollout),
                persisted.as_ref(),
                Some(&target),
                &names[i],
                &labels[i],
                secs(now),
            );
            if decision != Admission::Admitted {
                continue;
            }
            truth[i].started = Some(now);
            if clusters[i].fault == Fault::None
                || clusters[i].fault == Fault::UnavailableAfterFinish
            {
                truth[i].finished = Some(now + clusters[i].duration);
            }
            // S13: every Cluster of every earlier wave finished, and that wave soaked since.
            let Some(k) = wave_index[i] else {
                prop_assert!(false, "{} is in no wave but stepped", names[i]);
                continue;
            };
            for (j, earlier) in wave_index.iter().enumerate() {
                let Some(e) = *earlier else { continue };
                if e >= k {
                    continue;
                }
                let finished = truth[j].finished.filter(|f| *f <= now);
                prop_assert!(
                    finished.is_some(),
                    "{} (wave {k}) stepped at {now} before {} (wave {e}) finished",
                    names[i],
                    names[j]
                );
                let last = (0..clusters.len())
                    .filter(|x| wave_index[*x] == Some(e))
                    .filter_map(|x| truth[x].finished)
                    .max()
                    .unwrap_or(-1);
                prop_assert!(
                    now >= last.max(0) + waves[e].soak || last < 0,
                    "{} (wave {k}) stepped at {now} inside the soak of wave {e} (last finish {last})",
                    names[i]
                );
            }
        }
        // The budget, from what really happened: in flight = started and not finished.
        for (w, wave) in rollout.waves.iter().enumerate() {
            let size = wave_index.iter().filter(|x| **x == Some(w)).count();
            let in_flight = (0..clusters.len())
                .filter(|i| wave_index[*i] == Some(w))
                .filter(|i| truth[*i].started.is_some())
                .filter(|i| truth[*i].finished.is_none_or(|f| f > now))
                .count();
            prop_assert!(
                in_flight <= wave.budget(size),
                "wave {w}: {in_flight} in flight over budget {} at {now}",
                wave.budget(size)
            );
        }
    }
    let complete = persisted
        .as_ref()
        .is_some_and(|s| s.phase == Some(RolloutPhase::Complete));
    Ok(Report {
        complete,
        halted: halted_ever,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn waves_hold_order_budget_and_halts(
        clusters in prop::collection::vec(sim_cluster(true), 1..40),
        waves in sim_waves(),
        kills in prop::collection::btree_set(0i64..400, 0..60),
    ) {
        let report = simulate(&clusters, &waves, &kills, 400)?;
        let faulty = clusters.iter().any(|c| c.fault != Fault::None && c.needs_update);
        prop_assert!(!report.halted || faulty, "halted without a failure");
    }

    #[test]
    fn every_cluster_is_admitted_when_nothing_fails(
        clusters in prop::collection::vec(sim_cluster(false), 1..40),
        waves in sim_waves(),
        kills in prop::collection::btree_set(0i64..400, 0..60),
    ) {
        // Each wave takes at most ceil(n / budget) batches of at most 60 s, plus soak, plus
        // a tick of observation per batch; 1200 ticks of 5 s is ample.
        let report = simulate(&clusters, &waves, &kills, 1200)?;
        prop_assert!(!report.halted);
        prop_assert!(report.complete, "not complete");
    }
}
