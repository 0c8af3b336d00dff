use std::collections::BTreeMap;

use api::v1alpha1::{InPlace, LabelSelector};
use proptest::prelude::*;

use super::spare::{self, INSTALLED, MACHINE_NAME, NEEDS_RESET, NoSpareHost, Pool};
use super::*;

pub(crate) const OLD: &str =
    "oci://r/os@sha256:a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0";
pub(crate) const NEW: &str =
    "oci://r/os@sha256:b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1";
pub(crate) const TARGET: Target<'static> = Target {
    image: NEW,
    stamp: "os-2",
};

pub(crate) fn settings(max_unavailable: usize, retries: u32) -> Settings {
    Settings {
        max_unavailable,
        drain_timeout: Duration::from_secs(600),
        retries,
    }
}

pub(crate) fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap_or(Timestamp::UNIX_EPOCH)
}

pub(crate) fn view(host: &str, role: Role) -> HostView {
    HostView {
        host: host.to_owned(),
        machine: format!("m-{host}"),
        node: Some(format!("n-{host}")),
        role,
        cordoned: false,
        drained: false,
        label: None,
        os_reason: None,
        os_ready_since: None,
        os_image: Some("Elemental os-1".to_owned()),
        node_reported: None,
        image_uri: Some(OLD.to_owned()),
    }
}

pub(crate) fn worker(host: &str, pool: &str) -> HostView {
    view(host, Role::Worker(pool.to_owned()))
}

pub(crate) fn record(host: &str, phase: HostPhase) -> HostRecord {
    HostRecord {
        host: host.to_owned(),
        machine: format!("m-{host}"),
        node: format!("n-{host}"),
        pool: Some("a".to_owned()),
        phase,
        image: NEW.to_owned(),
        stamp: TARGET.stamp.to_owned(),
        started: Time(at(0)),
        finished: None,
        attempts: 0,
        message: None,
        last_transition_time: Some(Time(at(0))),
        cordoned_before: None,
    }
}

/// One host's transition (the only host, so nothing else is selected alongside).
fn one(record: HostRecord, view: HostView, now: i64) -> Outcome {
    step(&[record], &[view], TARGET, settings(1, 1), false, at(now))
}

#[test]
fn settings_default_and_parse() {
    assert_eq!(
        Settings::from_spec(&InPlace::default()),
        Ok(Settings {
            max_unavailable: 1,
            drain_timeout: Duration::from_secs(600),
            retries: 1
        })
    );
    let spec = InPlace {
        max_unavailable: Some(3),
        drain_timeout: Some("1h30m".to_owned()),
        retries: Some(0),
        upgrade_recovery: None,
    };
    assert_eq!(
        Settings::from_spec(&spec),
        Ok(Settings {
            max_unavailable: 3,
            drain_timeout: Duration::from_secs(5400),
            retries: 0
        })
    );
}

#[test]
fn stamps_match_whole_words_only() {
    assert!(carries_stamp("Elemental os-2", "os-2"));
    assert!(carries_stamp("Elemental (os-2) x", "os-2"));
    assert!(!carries_stamp("Elemental os-21", "os-2"));
    assert!(!carries_stamp("Elemental pos-2", "os-2"));
    assert!(carries_stamp("pos-2 os-2", "os-2"));
    assert!(!carries_stamp("anything", ""));
}

/// Each row: the record's phase, how the world looks, and the phase and actions expected.
#[test]
fn each_transition_waits_for_its_observation() {
    type Tweak = fn(&mut HostView);
    let n = || "n-h".to_owned();
    let rows: Vec<(HostPhase, Tweak, i64, HostPhase, Vec<Action>)> = vec![
        (
            HostPhase::Selected,
            |_| {},
            1,
            HostPhase::Selected,
            vec![Action::Cordon { node: n() }],
        ),
        (
            HostPhase::Selected,
            |v| v.cordoned = true,
            1,
            HostPhase::Cordoned,
            vec![Action::Evict { node: n() }],
        ),
        (
            HostPhase::Cordoned,
            |v| v.cordoned = true,
            1,
            HostPhase::Cordoned,
            vec![Action::Evict { node: n() }],
        ),
        (
            HostPhase::Cordoned,
            |v| v.cordoned = true,
            600,
            HostPhase::DrainTimeout,
            vec![],
        ),
        (
            HostPhase::Cordoned,
            |v| {
                v.cordoned = true;
                v.drained = true;
            },
            900,
            HostPhase::Drained,
            vec![Action::LabelPending { host: "h".into() }],
        ),
        (
            HostPhase::Drained,
            |v| v.drained = true,
            1,
            HostPhase::Drained,
            vec![Action::LabelPending { host: "h".into() }],
        ),
        // Drained and already at the target (a retried host): verified, never labelled.
        (
            HostPhase::Cordoned,
            |v| {
                v.cordoned = true;
                v.drained = true;
                v.image_uri = Some(NEW.into());
                v.os_image = Some("Elemental os-2".into());
            },
            1,
            HostPhase::Done,
            vec![],
        ),
        (
            HostPhase::Drained,
            |v| v.label = Some(UpdateLabel::Pending),
            1,
            HostPhase::Pending,
            vec![Action::ApplyImage {
                machine: "m-h".into(),
                image: NEW.into(),
            }],
        ),
        // `done` left from an earlier update is relabelled before the image is written.
        (
            HostPhase::Pending,
            |v| v.label = Some(UpdateLabel::Done),
            1,
            HostPhase::Pending,
            vec![Action::LabelPending { host: "h".into() }],
        ),
        (
            HostPhase::Pending,
            |v| {
                v.label = Some(UpdateLabel::Pending);
                v.image_uri = Some(NEW.into());
            },
            1,
            HostPhase::Pending,
            vec![],
        ),
        (
            HostPhase::Pending,
            |v| {
                v.label = Some(UpdateLabel::Done);
                v.image_uri = Some(NEW.into());
                v.os_ready_since = Some(at(1));
            },
            1,
            HostPhase::Done,
            vec![],
        ),
        // `done` from before the image was written: the host is asked again.
        (
            HostPhase::Pending,
            |v| {
                v.label = Some(UpdateLabel::Done);
                v.image_uri = Some(NEW.into());
                v.os_ready_since = Some(at(-30));
            },
            1,
            HostPhase::Pending,
            vec![Action::LabelPending { host: "h".into() }],
        ),
        // … until a grace has passed.
        (
            HostPhase::Pending,
            |v| {
                v.label = Some(UpdateLabel::Done);
                v.image_uri = Some(NEW.into());
            },
            300,
            HostPhase::Done,
            vec![],
        ),
        (
            HostPhase::Pending,
            |v| {
                v.label = Some(UpdateLabel::Pending);
                v.image_uri = Some(NEW.into());
                v.os_reason = Some(OS_VERSION_RECONCILIATION_FAILED.into());
            },
            1,
            HostPhase::Retrying,
            vec![],
        ),
        (
            HostPhase::Retrying,
            |v| {
                v.image_uri = Some(NEW.into());
                v.os_reason = Some(OS_VERSION_RECONCILIATION_FAILED.into());
            },
            1,
            HostPhase::Retrying,
            vec![],
        ),
        (
            HostPhase::Retrying,
            |v| {
                v.image_uri = Some(NEW.into());
                v.os_reason = Some("WaitingForOSReconcile".into());
            },
            1,
            HostPhase::Pending,
            vec![],
        ),
        (
            HostPhase::Done,
            |v| v.os_image = None,
            1,
            HostPhase::Done,
            vec![],
        ),
        (
            HostPhase::Done,
            |v| v.os_image = Some("Elemental os-2".into()),
            1,
            HostPhase::Verified,
            vec![Action::Uncordon { node: n() }],
        ),
        // `done` before the kubelet reported the reboot: not judged yet.
        (HostPhase::Done, |_| {}, 1, HostPhase::Done, vec![]),
        (
            HostPhase::Done,
            |v| v.node_reported = Some(at(1)),
            2,
            HostPhase::BootedImageMismatch,
            vec![],
        ),
        (
            HostPhase::Done,
            |_| {},
            300,
            HostPhase::BootedImageMismatch,
            vec![],
        ),
        (
            HostPhase::Verified,
            |v| v.cordoned = true,
            1,
            HostPhase::Verified,
            vec![Action::Uncordon { node: n() }],
        ),
        (
            HostPhase::Verified,
            |v| {
                v.image_uri = Some(NEW.into());
                v.os_image = Some("Elemental os-2".into());
            },
            1,
            HostPhase::Uncordoned,
            vec![],
        ),
        (
            HostPhase::BootedImageMismatch,
            |v| v.label = Some(UpdateLabel::Done),
            1,
            HostPhase::BootedImageMismatch,
            vec![],
        ),
        (
            HostPhase::DrainTimeout,
            |v| v.drained = true,
            1,
            HostPhase::DrainTimeout,
            vec![],
        ),
    ];
    for (phase, tweak, now, expected, actions) in rows {
        let mut world = worker("h", "a");
        tweak(&mut world);
        let out = one(record("h", phase), world.clone(), now);
        assert_eq!(out.records.len(), 1, "{phase:?}");
        assert_eq!(out.records[0].phase, expected, "{phase:?} with {world:?}");
        assert_eq!(out.actions, actions, "{phase:?} with {world:?}");
    }
}

#[test]
fn a_failure_still_reported_a_retry_interval_later_counts_again() {
    let mut view = worker("h", "a");
    view.image_uri = Some(NEW.into());
    view.os_reason = Some(OS_VERSION_RECONCILIATION_FAILED.into());
    let mut retrying = record("h", HostPhase::Retrying);
    retrying.attempts = 1;
    retrying.last_transition_time = Some(Time(at(100)));
    let early = one(retrying.clone(), view.clone(), 159);
    assert_eq!(early.records[0].phase, HostPhase::Retrying);
    assert_eq!(early.records[0].attempts, 1);
    let late = one(retrying, view, 160);
    assert_eq!(late.records[0].phase, HostPhase::RetriesExhausted);
    assert_eq!(late.records[0].attempts, 2);
    assert_eq!(
        late.blocked.map(|b| b.reason),
        Some(Reason::OsVersionReconciliationFailed)
    );
}

#[test]
fn a_node_cordoned_before_the_update_stays_cordoned() {
    let mut view = worker("h", "a");
    view.cordoned = true;
    let selected = step(
        &[],
        std::slice::from_ref(&view),
        TARGET,
        settings(1, 1),
        false,
        at(0),
    );
    assert_eq!(selected.records[0].cordoned_before, Some(true));
    view.image_uri = Some(NEW.into());
    view.os_image = Some("Elemental os-2".into());
    view.label = Some(UpdateLabel::Done);
    let mut done = selected.records[0].clone();
    done.phase = HostPhase::Done;
    let verified = one(done, view.clone(), 5);
    assert_eq!(verified.records[0].phase, HostPhase::Verified);
    assert!(verified.actions.is_empty(), "{:?}", verified.actions);
    let finished = one(verified.records[0].clone(), view, 6);
    assert_eq!(finished.records[0].phase, HostPhase::Uncordoned);
    assert!(finished.actions.is_empty());
}

#[test]
fn paused_holds_a_drained_host_before_pending() {
    let mut view = worker("h", "a");
    view.cordoned = true;
    view.drained = true;
    let held = step(
        &[record("h", HostPhase::Drained)],
        std::slice::from_ref(&view),
        TARGET,
        settings(1, 1),
        true,
        at(1),
    );
    assert_eq!(held.records[0].phase, HostPhase::Drained);
    assert!(held.actions.is_empty());
    let resumed = step(
        &[record("h", HostPhase::Drained)],
        &[view],
        TARGET,
        settings(1, 1),
        false,
        at(2),
    );
    assert_eq!(
        resumed.actions,
        vec![Action::LabelPending { host: "h".into() }]
    );
}

#[test]
fn blocked_ends_report_their_reason_and_stop_new_hosts() {
    for (phase, reason) in [
        (HostPhase::DrainTimeout, Reason::DrainTimeout),
        (HostPhase::BootedImageMismatch, Reason::BootedImageMismatch),
        (
            HostPhase::RetriesExhausted,
            Reason::OsVersionReconciliationFailed,
        ),
    ] {
        let mut blocked = record("a1", phase);
        blocked.message = Some("why".into());
        let out = step(
            &[blocked],
            &[worker("a1", "a"), worker("a2", "a"), worker("b1", "b")],
            TARGET,
            settings(5, 1),
            false,
            at(1),
        );
        assert_eq!(
            out.blocked,
            Some(Blocked {
                reason,
                host: "a1".into(),
                message: "why".into()
            })
        );
        assert!(out.actions.is_empty(), "{phase:?}: {:?}", out.actions);
        assert_eq!(out.records.len(), 1);
    }
}

#[test]
fn failures_count_against_retries() {
    let mut failing = worker("h", "a");
    failing.label = Some(UpdateLabel::Pending);
    failing.image_uri = Some(NEW.into());
    failing.os_reason = Some(OS_VERSION_RECONCILIATION_FAILED.into());
    let mut second = record("h", HostPhase::Pending);
    second.attempts = 1;
    let out = one(second, failing.clone(), 1);
    assert_eq!(out.records[0].phase, HostPhase::RetriesExhausted);
    assert_eq!(out.records[0].attempts, 2);
    assert_eq!(
        out.blocked.map(|b| b.reason),
        Some(Reason::OsVersionReconciliationFailed)
    );
    let none = step(
        &[record("h", HostPhase::Pending)],
        &[failing],
        TARGET,
        settings(1, 0),
        false,
        at(1),
    );
    assert_eq!(none.records[0].phase, HostPhase::RetriesExhausted);
}

#[test]
fn control_plane_first_one_at_a_time_then_pool_by_pool() {
    let world = vec![
        worker("w-a1", "a"),
        worker("w-a2", "a"),
        worker("w-b1", "b"),
        view("cp2", Role::ControlPlane),
        view("cp1", Role::ControlPlane),
    ];
    let first = step(&[], &world, TARGET, settings(2, 1), false, at(0));
    assert_eq!(
        first.actions,
        vec![Action::Cordon {
            node: "n-cp1".into()
        }]
    );
    assert_eq!(first.records[0].pool, None);
    // While cp1 is in flight, even finished-looking workers wait.
    let again = step(&first.records, &world, TARGET, settings(2, 1), false, at(1));
    assert_eq!(
        again.actions,
        vec![Action::Cordon {
            node: "n-cp1".into()
        }]
    );

    let mut done_cps = world.clone();
    for v in done_cps.iter_mut().filter(|v| v.role == Role::ControlPlane) {
        v.image_uri = Some(NEW.into());
        v.os_image = Some("Elemental os-2".into());
    }
    let workers = step(&[], &done_cps, TARGET, settings(2, 1), false, at(0));
    assert_eq!(
        workers.actions,
        vec![
            Action::Cordon {
                node: "n-w-a1".into()
            },
            Action::Cordon {
                node: "n-w-a2".into()
            }
        ]
    );
    let budget = step(&[], &done_cps, TARGET, settings(1, 1), false, at(0));
    assert_eq!(
        budget.actions,
        vec![Action::Cordon {
            node: "n-w-a1".into()
        }]
    );
}

#[test]
fn paused_starts_nothing_but_finishes_the_host_in_flight() {
    let world = vec![worker("a1", "a"), {
        let mut v = worker("a2", "a");
        v.cordoned = true;
        v
    }];
    let out = step(
        &[record("a2", HostPhase::Selected)],
        &world,
        TARGET,
        settings(2, 1),
        true,
        at(1),
    );
    assert_eq!(
        out.actions,
        vec![Action::Evict {
            node: "n-a2".into()
        }]
    );
    assert_eq!(out.records.len(), 1);
    let idle = step(&[], &world, TARGET, settings(2, 1), true, at(1));
    assert!(idle.actions.is_empty() && idle.records.is_empty());
}

#[test]
fn an_in_flight_host_keeps_its_image_when_the_target_moves() {
    let mut v = worker("h", "a");
    v.cordoned = true;
    v.drained = true;
    v.label = Some(UpdateLabel::Pending);
    let newer = Target {
        image: "oci://r/os@sha256:c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2",
        stamp: "os-3",
    };
    let out = step(
        &[record("h", HostPhase::Drained)],
        &[v],
        newer,
        settings(1, 1),
        false,
        at(1),
    );
    assert_eq!(
        out.actions,
        vec![Action::ApplyImage {
            machine: "m-h".into(),
            image: NEW.into()
        }]
    );
}

#[test]
fn finished_hosts_are_not_touched_again_and_vanished_hosts_are_dropped() {
    let mut v = worker("h", "a");
    v.image_uri = Some(NEW.into());
    v.os_image = Some("Elemental os-2".into());
    let out = step(
        &[
            record("h", HostPhase::Uncordoned),
            record("gone", HostPhase::Pending),
        ],
        std::slice::from_ref(&v),
        TARGET,
        settings(1, 1),
        false,
        at(1),
    );
    assert!(out.actions.is_empty());
    assert_eq!(out.records, vec![record("h", HostPhase::Uncordoned)]);
    assert!(out.finished(&[v], TARGET));
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn selector(pool: &str) -> LabelSelector {
    serde_json::from_value(serde_json::json!({"matchLabels": {"pool": pool}})).unwrap_or_default()
}

#[test]
fn spare_hosts_must_be_installed_unassociated_and_not_resetting() {
    assert!(spare::is_spare(&labels(&[(INSTALLED, "true")])));
    assert!(!spare::is_spare(&labels(&[])));
    assert!(!spare::is_spare(&labels(&[(INSTALLED, "false")])));
    assert!(!spare::is_spare(&labels(&[
        (INSTALLED, "true"),
        (MACHINE_NAME, "m")
    ])));
    assert!(!spare::is_spare(&labels(&[
        (INSTALLED, "true"),
        (NEEDS_RESET, "true")
    ])));
}

#[test]
fn each_pool_needs_its_own_spare() {
    let (a, b, any) = (selector("a"), selector("b"), LabelSelector::default());
    let spare_a = labels(&[(INSTALLED, "true"), ("pool", "a")]);
    let spare_b = labels(&[(INSTALLED, "true"), ("pool", "b")]);
    let used_b = labels(&[(INSTALLED, "true"), ("pool", "b"), (MACHINE_NAME, "m")]);
    let pools = [
        Pool {
            name: "a",
            selector: Some(&a),
        },
        Pool {
            name: "b",
            selector: Some(&b),
        },
    ];
    assert_eq!(spare::check(&pools, &[&spare_a, &spare_b]), Ok(()));
    assert_eq!(
        spare::check(&pools, &[&spare_a, &used_b]),
        Err(NoSpareHost { pool: "b".into() })
    );
    // One host cannot serve two pools; the matching finds the assignment that works.
    let greedy = [
        Pool {
            name: "any",
            selector: Some(&any),
        },
        Pool {
            name: "a",
            selector: Some(&a),
        },
    ];
    assert_eq!(spare::check(&greedy, &[&spare_a, &spare_b]), Ok(()));
    assert_eq!(
        spare::check(&greedy, &[&spare_a]),
        Err(NoSpareHost { pool: "a".into() })
    );
}

/// A host in the simulated world, with the failures it will show.
#[derive(Clone, Debug)]
struct SimHost {
    view: HostView,
    /// A PodDisruptionBudget keeps the drain from finishing.
    drain_blocked: bool,
    /// The update falls back to the old image.
    fallback: bool,
    /// How many update tries fail before one succeeds.
    failures: u32,
}

fn sim_hosts() -> impl Strategy<Value = Vec<SimHost>> {
    let host = (
        0..4usize,
        0..3u8,
        any::<bool>(),
        any::<bool>(),
        0..3u32,
        any::<bool>(),
    );
    prop::collection::vec(host, 1..10).prop_map(|hosts| {
        hosts
            .into_iter()
            .enumerate()
            .map(|(i, (pool, fail, pdb, fb, failures, at_target))| {
                let role = if pool == 0 {
                    Role::ControlPlane
                } else {
                    Role::Worker(format!("p{pool}"))
                };
                let mut view = view(&format!("h{i}"), role);
                if at_target && i % 3 == 0 {
                    view.image_uri = Some(NEW.into());
                    view.os_image = Some("Elemental os-2".into());
                }
                SimHost {
                    view,
                    drain_blocked: fail == 1 && pdb,
                    fallback: fail == 2 && fb,
                    failures: if fail == 0 { 0 } else { failures },
                }
            })
            .collect()
    })
}

/// The agent and kubelet stand-in: a host labelled `pending` with the new image fails its
/// remaining tries one pass each, then reboots into the image (or falls back) and reports `done`.
fn agent(host: &mut SimHost, now: Timestamp) {
    let v = &mut host.view;
    if v.os_reason.as_deref() == Some(OS_VERSION_RECONCILIATION_FAILED) {
        v.os_reason = Some("WaitingForOSReconcile".into());
        return;
    }
    if v.label == Some(UpdateLabel::Pending) && v.image_uri.as_deref() == Some(NEW) {
        if host.failures > 0 {
            host.failures -= 1;
            v.os_reason = Some(OS_VERSION_RECONCILIATION_FAILED.into());
        } else {
            v.label = Some(UpdateLabel::Done);
            v.os_reason = None;
            v.node_reported = Some(now);
            v.os_ready_since = Some(now);
            if !host.fallback {
                v.os_image = Some("Elemental os-2".into());
            }
        }
    }
}

/// Performs one action on the world, asserting the ordering invariants it depends on.
fn perform(world: &mut [SimHost], records: &[HostRecord], action: &Action) {
    let by_node = |w: &mut [SimHost], node: &str| -> usize {
        w.iter()
            .position(|h| h.view.node.as_deref() == Some(node))
            .unwrap_or(usize::MAX)
    };
    let record = |host: &str| records.iter().find(|r| r.host == host).cloned();
    match action {
        Action::Cordon { node } => world[by_node(world, node)].view.cordoned = true,
        Action::Evict { node } => {
            let h = &mut world[by_node(world, node)];
            assert!(
                h.view.cordoned,
                "evicting pods of an uncordoned Node {node}"
            );
            h.view.drained = !h.drain_blocked;
        }
        Action::LabelPending { host } => {
            let h = world.iter_mut().find(|h| &h.view.host == host).unwrap();
            assert!(
                h.view.drained && h.view.cordoned,
                "pending before drained: {host}"
            );
            h.view.label = Some(UpdateLabel::Pending);
        }
        Action::ApplyImage { machine, image } => {
            let h = world
                .iter_mut()
                .find(|h| &h.view.machine == machine)
                .unwrap();
            assert_eq!(
                h.view.label,
                Some(UpdateLabel::Pending),
                "imageUri before pending"
            );
            h.view.image_uri = Some(image.clone());
        }
        Action::Uncordon { node } => {
            let i = by_node(world, node);
            let h = &mut world[i];
            let r = record(&h.view.host).unwrap();
            assert_eq!(r.phase, HostPhase::Verified, "uncordon before verified");
            assert!(carries_stamp(
                h.view.os_image.as_deref().unwrap_or(""),
                &r.stamp
            ));
            h.view.cordoned = false;
            // Pods come back once the Node is schedulable.
            h.view.drained = false;
        }
    }
}

fn check_budget(records: &[HostRecord], max_unavailable: usize) {
    let mut per_pool: BTreeMap<Option<&str>, usize> = BTreeMap::new();
    for r in records.iter().filter(|r| in_flight(r.phase)) {
        *per_pool.entry(r.pool.as_deref()).or_default() += 1;
    }
    for (pool, n) in &per_pool {
        let cap = if pool.is_none() { 1 } else { max_unavailable };
        assert!(*n <= cap, "{n} hosts in flight in {pool:?}: {records:?}");
    }
    let pools_busy = per_pool.len();
    assert!(pools_busy <= 1, "two pools in flight at once: {records:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random hosts, pools, failures, kills (the actions of a pass are lost; only the records
    /// persist) and pauses: the ordering invariants hold at every pass; without failures every
    /// host is verified and uncordoned; with failures the flow ends blocked with the right reason.
    #[test]
    fn the_flow_is_safe_and_live(
        mut world in sim_hosts(),
        max_unavailable in 1..4usize,
        retries in 0..3u32,
        kills in prop::collection::vec(prop::bool::weighted(0.2), 400),
        pauses in prop::collection::vec(prop::bool::weighted(0.2), 400),
    ) {
        let initial = world.clone();
        let settings = Settings { max_unavailable, drain_timeout: Duration::from_secs(600), retries };
        let mut records: Vec<HostRecord> = Vec::new();
        let mut finished = false;
        let mut blocked = None;
        for pass in 0..400usize {
            let paused = pauses[pass] && pass < 300;
            let views: Vec<HostView> = world.iter().map(|h| h.view.clone()).collect();
            let out = step(&records, &views, TARGET, settings, paused, at(i64::try_from(pass).unwrap_or(0) * 10));
            let before: BTreeSet<&str> = records.iter().filter(|r| in_flight(r.phase)).map(|r| r.host.as_str()).collect();
            if paused {
                for r in out.records.iter().filter(|r| in_flight(r.phase)) {
                    prop_assert!(before.contains(r.host.as_str()), "{} started while paused", r.host);
                }
                for action in &out.actions {
                    prop_assert!(
                        !matches!(action, Action::LabelPending { .. } | Action::ApplyImage { .. }),
                        "{action:?} while paused"
                    );
                }
            }
            check_budget(&out.records, max_unavailable);
            if !kills[pass] {
                for action in &out.actions {
                    perform(&mut world, &out.records, action);
                }
            }
            records = out.records.clone();
            for h in &mut world {
                agent(h, at(i64::try_from(pass).unwrap_or(0) * 10 + 5));
            }
            if out.blocked.is_some() {
                blocked = out.blocked;
                break;
            }
            let views: Vec<HostView> = world.iter().map(|h| h.view.clone()).collect();
            if !paused && out.finished(&views, TARGET) {
                finished = true;
                break;
            }
        }
        let trouble = |h: &SimHost| h.drain_blocked || h.fallback || h.failures > retries;
        let touched_trouble = initial.iter().any(|h| trouble(h) && !at_target(&h.view, TARGET) && records.iter().any(|r| r.host == h.view.host));
        if let Some(b) = blocked {
                let h = initial.iter().find(|h| h.view.host == b.host).unwrap();
                prop_assert!(trouble(h), "{b:?} on a healthy host");
                let expected = if h.drain_blocked { Reason::DrainTimeout } else if h.fallback && h.failures <= retries { Reason::BootedImageMismatch } else { Reason::OsVersionReconciliationFailed };
                prop_assert_eq!(b.reason, expected);
                let now = world.iter().find(|h| h.view.host == b.host).unwrap();
                prop_assert!(now.view.cordoned, "a blocked host is left cordoned");
        } else {
                prop_assert!(finished, "not finished after 400 passes: {records:?}");
                prop_assert!(!touched_trouble);
                for h in &world {
                    prop_assert!(at_target(&h.view, TARGET) && !h.view.cordoned, "{h:?}");
                }
        }
    }
}

#[test]
fn names_read_from_machines_are_refused_before_they_reach_a_request_path() {
    let machine = |infrastructure: &str, node: &str| {
        serde_json::json!({
            "metadata": {"name": "m0", "labels": {"cluster.x-k8s.io/control-plane": ""}},
            "spec": {"infrastructureRef": {
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
                "kind": "ElementalMachine",
                "name": infrastructure,
            }},
            "status": {"nodeRef": {"name": node}},
        })
    };
    let good = observe::machine(&machine("em0", "node-0")).expect("an Elemental Machine");
    assert_eq!(good.node.as_deref(), Some("node-0"));
    assert_eq!(good.infrastructure, "em0");
    // A node name with a query is no node; an infrastructure name with a path is no Machine.
    let bad_node = observe::machine(&machine("em0", "node-0?watch=true")).expect("kept");
    assert_eq!(bad_node.node, None);
    assert!(observe::machine(&machine("../secrets/x", "node-0")).is_none());
    let host = |name: &str| {
        observe::elemental_machine(&serde_json::json!({"spec": {"hostRef": {"name": name}}})).host
    };
    assert_eq!(host("h0").as_deref(), Some("h0"));
    assert_eq!(host("h0/status"), None);
}

#[test]
fn an_omitted_selector_picks_any_host_and_an_unreadable_one_none() {
    let selector_of = |spec: serde_json::Value| {
        observe::elemental_machine(&serde_json::json!({ "spec": spec })).selector
    };
    let omitted = selector_of(serde_json::json!({}));
    assert_eq!(omitted, Some(LabelSelector::default()));
    assert_eq!(selector_of(serde_json::json!({"selector": null})), omitted);
    let unreadable = selector_of(serde_json::json!({"selector": {"matchLabels": "pool=a"}}));
    assert_eq!(unreadable, None);
    let spare = labels(&[(INSTALLED, "true"), ("pool", "a")]);
    let any = [Pool {
        name: "workers",
        selector: omitted.as_ref(),
    }];
    assert_eq!(spare::check(&any, &[&spare]), Ok(()));
    let unknown = [Pool {
        name: "workers",
        selector: None,
    }];
    assert_eq!(
        spare::check(&unknown, &[&spare]),
        Err(NoSpareHost {
            pool: "workers".into()
        })
    );
}
