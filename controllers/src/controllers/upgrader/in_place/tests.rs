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
        host_timeout: Duration::from_secs(1800),
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
        refused: None,
        cordoned_by_us: false,
        label: None,
        os_reason: None,
        os_image: Some("Elemental os-1".to_owned()),
        boot_id: Some(format!("boot-{host}-0")),
        image_uri: Some(OLD.to_owned()),
        skip_remediation: None,
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
        boot_id: Some(format!("boot-{host}-0")),
        pending_since: matches!(
            phase,
            HostPhase::Pending | HostPhase::Retrying | HostPhase::Done
        )
        .then(|| Time(at(0))),
    }
}

/// `view` of a host whose Machine we hold from remediation.
pub(crate) fn held(mut view: HostView) -> HostView {
    view.skip_remediation = Some(remediation::SKIP_REMEDIATION_BY.to_owned());
    view
}

/// `view` after a reboot: the Node reports another boot ID.
pub(crate) fn rebooted(mut view: HostView) -> HostView {
    view.boot_id = Some(format!("boot-{}-1", view.host));
    view
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
            retries: 1,
            host_timeout: Duration::from_secs(1800),
        })
    );
    let spec = InPlace {
        max_unavailable: Some(3),
        drain_timeout: Some("1h30m".to_owned()),
        retries: Some(0),
        upgrade_recovery: None,
        drain: None,
        host_timeout: Some("45m".to_owned()),
    };
    assert_eq!(
        Settings::from_spec(&spec),
        Ok(Settings {
            max_unavailable: 3,
            drain_timeout: Duration::from_secs(5400),
            retries: 0,
            host_timeout: Duration::from_secs(2700),
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
    let allow = || Action::AllowRemediation {
        machine: "m-h".into(),
    };
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
            |v| {
                v.cordoned = true;
                v.drained = true;
            },
            1,
            HostPhase::Drained,
            vec![Action::LabelPending { host: "h".into() }],
        ),
        // Re-checked before `pending`: uncordoned by hand, cordoned again…
        (
            HostPhase::Drained,
            |v| {
                v.drained = true;
                v.label = Some(UpdateLabel::Pending);
            },
            1,
            HostPhase::Selected,
            vec![Action::Cordon { node: n() }],
        ),
        // … pods taken since, drained again.
        (
            HostPhase::Drained,
            |v| {
                v.cordoned = true;
                v.label = Some(UpdateLabel::Pending);
            },
            1,
            HostPhase::Cordoned,
            vec![Action::Evict { node: n() }],
        ),
        (
            HostPhase::Cordoned,
            |_| {},
            1,
            HostPhase::Selected,
            vec![Action::Cordon { node: n() }],
        ),
        // A refused pod holds the drain: nothing is evicted, looked at again every pass.
        (
            HostPhase::Selected,
            |v| {
                v.cordoned = true;
                v.refused = Some("pod ns/p".into());
            },
            1,
            HostPhase::Cordoned,
            vec![],
        ),
        (
            HostPhase::Cordoned,
            |v| {
                v.cordoned = true;
                v.refused = Some("pod ns/p".into());
            },
            900,
            HostPhase::DrainRefused,
            vec![],
        ),
        (
            HostPhase::DrainRefused,
            |v| {
                v.cordoned = true;
                v.refused = Some("pod ns/p".into());
            },
            900,
            HostPhase::DrainRefused,
            vec![],
        ),
        (
            HostPhase::DrainRefused,
            |v| v.cordoned = true,
            900,
            HostPhase::Cordoned,
            vec![Action::Evict { node: n() }],
        ),
        (
            HostPhase::DrainRefused,
            |v| {
                v.cordoned = true;
                v.drained = true;
            },
            900,
            HostPhase::Cordoned,
            vec![],
        ),
        (
            HostPhase::Releasing,
            |v| {
                v.cordoned = true;
                v.cordoned_by_us = true;
            },
            1,
            HostPhase::Releasing,
            vec![Action::Uncordon { node: n() }],
        ),
        // Released: a Node cordoned by someone else is left cordoned; the Machine's hold lifted.
        (
            HostPhase::Releasing,
            |v| v.cordoned = true,
            1,
            HostPhase::Released,
            vec![allow()],
        ),
        (
            HostPhase::Releasing,
            |_| {},
            1,
            HostPhase::Released,
            vec![allow()],
        ),
        (
            HostPhase::Released,
            |v| v.skip_remediation = None,
            1,
            HostPhase::Released,
            vec![],
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
            |v| {
                v.cordoned = true;
                v.drained = true;
                v.label = Some(UpdateLabel::Pending);
            },
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
        // `done` after a reboot: this update's.
        (
            HostPhase::Pending,
            |v| {
                v.label = Some(UpdateLabel::Done);
                v.image_uri = Some(NEW.into());
                v.boot_id = Some("boot-h-1".into());
            },
            1,
            HostPhase::Done,
            vec![],
        ),
        // `done` without a reboot (from before the image was written): the host is asked
        // again, however long it has been.
        (
            HostPhase::Pending,
            |v| {
                v.label = Some(UpdateLabel::Done);
                v.image_uri = Some(NEW.into());
            },
            1,
            HostPhase::Pending,
            vec![Action::LabelPending { host: "h".into() }],
        ),
        (
            HostPhase::Pending,
            |v| {
                v.label = Some(UpdateLabel::Done);
                v.image_uri = Some(NEW.into());
            },
            1799,
            HostPhase::Pending,
            vec![Action::LabelPending { host: "h".into() }],
        ),
        // … unless the Node already runs the target build.
        (
            HostPhase::Pending,
            |v| {
                v.label = Some(UpdateLabel::Done);
                v.image_uri = Some(NEW.into());
                v.os_image = Some("Elemental os-2".into());
            },
            1,
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
        // Verified: uncordoned, and the Machine no longer held from remediation.
        (
            HostPhase::Done,
            |v| {
                v.os_image = Some("Elemental os-2".into());
                v.cordoned = true;
                v.cordoned_by_us = true;
            },
            1,
            HostPhase::Verified,
            vec![Action::Uncordon { node: n() }, allow()],
        ),
        // Without our mark, the Node is not ours to uncordon.
        (
            HostPhase::Done,
            |v| {
                v.os_image = Some("Elemental os-2".into());
                v.cordoned = true;
            },
            1,
            HostPhase::Verified,
            vec![allow()],
        ),
        (
            HostPhase::Verified,
            |v| {
                v.cordoned = true;
                v.image_uri = Some(NEW.into());
                v.os_image = Some("Elemental os-2".into());
                v.skip_remediation = None;
            },
            1,
            HostPhase::Uncordoned,
            vec![],
        ),
        // `done` before the kubelet reported the reboot (the same boot ID): not judged yet.
        (HostPhase::Done, |_| {}, 1, HostPhase::Done, vec![]),
        (HostPhase::Done, |_| {}, 1799, HostPhase::Done, vec![]),
        // Another boot: what the Node runs is judged at once.
        (
            HostPhase::Done,
            |v| v.boot_id = Some("boot-h-1".into()),
            1,
            HostPhase::BootedImageMismatch,
            vec![],
        ),
        (
            HostPhase::Verified,
            |v| {
                v.cordoned = true;
                v.cordoned_by_us = true;
            },
            1,
            HostPhase::Verified,
            vec![Action::Uncordon { node: n() }, allow()],
        ),
        // Uncordoned by hand, our mark left on it: the mark is removed too.
        (
            HostPhase::Verified,
            |v| v.cordoned_by_us = true,
            1,
            HostPhase::Verified,
            vec![Action::Uncordon { node: n() }, allow()],
        ),
        // Not done while the Machine carries our hold …
        (
            HostPhase::Verified,
            |v| {
                v.image_uri = Some(NEW.into());
                v.os_image = Some("Elemental os-2".into());
            },
            1,
            HostPhase::Verified,
            vec![allow()],
        ),
        // … done once it is gone.
        (
            HostPhase::Verified,
            |v| {
                v.image_uri = Some(NEW.into());
                v.os_image = Some("Elemental os-2".into());
                v.skip_remediation = None;
            },
            1,
            HostPhase::Uncordoned,
            vec![],
        ),
        // An operator's own hold stays.
        (
            HostPhase::Verified,
            |v| {
                v.image_uri = Some(NEW.into());
                v.os_image = Some("Elemental os-2".into());
                v.skip_remediation = Some(String::new());
            },
            1,
            HostPhase::Uncordoned,
            vec![],
        ),
        // `pending` past hostTimeout (1800 s) without coming back: blocked, whatever the phase.
        (
            HostPhase::Pending,
            |v| {
                v.label = Some(UpdateLabel::Pending);
                v.image_uri = Some(NEW.into());
            },
            1800,
            HostPhase::HostTimeout,
            vec![],
        ),
        (
            HostPhase::Pending,
            |v| {
                v.label = Some(UpdateLabel::Done);
                v.image_uri = Some(NEW.into());
            },
            1800,
            HostPhase::HostTimeout,
            vec![],
        ),
        (
            HostPhase::Retrying,
            |v| {
                v.image_uri = Some(NEW.into());
                v.os_reason = Some(OS_VERSION_RECONCILIATION_FAILED.into());
            },
            1800,
            HostPhase::HostTimeout,
            vec![],
        ),
        (
            HostPhase::Done,
            |_| {},
            1800,
            HostPhase::HostTimeout,
            vec![],
        ),
        // Back in time wins over the timer.
        (
            HostPhase::Done,
            |v| {
                v.os_image = Some("Elemental os-2".into());
                v.cordoned = true;
                v.cordoned_by_us = true;
            },
            1800,
            HostPhase::Verified,
            vec![Action::Uncordon { node: n() }, allow()],
        ),
        (
            HostPhase::HostTimeout,
            |v| v.label = Some(UpdateLabel::Done),
            4000,
            HostPhase::HostTimeout,
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
        let mut world = held(worker("h", "a"));
        tweak(&mut world);
        // A release stands for an update no longer wanted: no host is selected meanwhile.
        let releasing = matches!(phase, HostPhase::Releasing | HostPhase::Released);
        let out = step(
            &[record("h", phase)],
            std::slice::from_ref(&world),
            TARGET,
            settings(1, 1),
            releasing,
            at(now),
        );
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
    let mut view = held(worker("h", "a"));
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
        (HostPhase::DrainRefused, Reason::DrainRefused),
        (HostPhase::HostTimeout, Reason::HostTimeout),
    ] {
        let mut blocked = record("a1", phase);
        blocked.message = Some("why".into());
        let mut held = worker("a1", "a");
        held.cordoned = true;
        held.refused = Some("why".into());
        held.skip_remediation = Some(remediation::SKIP_REMEDIATION_BY.into());
        let out = step(
            &[blocked],
            &[held, worker("a2", "a"), worker("b1", "b")],
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
    let skip = |machine: &str| Action::SkipRemediation {
        machine: machine.into(),
    };
    let first = step(&[], &world, TARGET, settings(2, 1), false, at(0));
    assert_eq!(
        first.actions,
        vec![
            Action::Cordon {
                node: "n-cp1".into()
            },
            skip("m-cp1")
        ]
    );
    assert_eq!(first.records[0].pool, None);
    // While cp1 is in flight, even finished-looking workers wait.
    let again = step(&first.records, &world, TARGET, settings(2, 1), false, at(1));
    assert_eq!(
        again.actions,
        vec![
            Action::Cordon {
                node: "n-cp1".into()
            },
            skip("m-cp1")
        ]
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
            },
            skip("m-w-a1"),
            skip("m-w-a2")
        ]
    );
    let budget = step(&[], &done_cps, TARGET, settings(1, 1), false, at(0));
    assert_eq!(
        budget.actions,
        vec![
            Action::Cordon {
                node: "n-w-a1".into()
            },
            skip("m-w-a1")
        ]
    );
}

#[test]
fn paused_starts_nothing_but_finishes_the_host_in_flight() {
    let world = vec![worker("a1", "a"), {
        let mut v = held(worker("a2", "a"));
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
    let idle = step(&[], &world[..1], TARGET, settings(2, 1), true, at(1));
    assert!(idle.actions.is_empty() && idle.records.is_empty());
}

#[test]
fn an_in_flight_host_keeps_its_image_when_the_target_moves() {
    let mut v = held(worker("h", "a"));
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

const NEWER: Target<'static> = Target {
    image: "oci://r/os@sha256:c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2",
    stamp: "os-3",
};

#[test]
fn hosts_before_their_image_is_written_are_released_or_retargeted() {
    let now = at(5);
    let phases = [
        HostPhase::Selected,
        HostPhase::Cordoned,
        HostPhase::Drained,
        HostPhase::DrainRefused,
        HostPhase::DrainTimeout,
    ];
    let world = [worker("h", "a")];
    for phase in phases {
        // No longer wanted: released.
        let out = retarget(&[record("h", phase)], &world, None, now);
        assert_eq!(out[0].phase, HostPhase::Releasing, "{phase:?}");
        assert_eq!(out[0].last_transition_time, Some(Time(now)));
        // Another image of the same version: the host takes it.
        let out = retarget(&[record("h", phase)], &world, Some(NEWER), now);
        assert_eq!(out[0].phase, phase);
        assert_eq!(
            (out[0].image.as_str(), out[0].stamp.as_str()),
            (NEWER.image, NEWER.stamp)
        );
        // The target it already runs (the Plan fell back to its image): released.
        let old = Target {
            image: OLD,
            stamp: "os-1",
        };
        let out = retarget(&[record("h", phase)], &world, Some(old), now);
        assert_eq!(out[0].phase, HostPhase::Releasing, "{phase:?}");
        // The same target: unchanged.
        assert_eq!(
            retarget(&[record("h", phase)], &world, Some(TARGET), now),
            vec![record("h", phase)]
        );
    }
    // Labelled `pending` with the image written, or further: carried to the end.
    let mut written = worker("h", "a");
    written.image_uri = Some(NEW.into());
    for phase in [
        HostPhase::Pending,
        HostPhase::Retrying,
        HostPhase::Done,
        HostPhase::Verified,
        HostPhase::BootedImageMismatch,
        HostPhase::RetriesExhausted,
        HostPhase::Uncordoned,
    ] {
        let kept = vec![record("h", phase)];
        assert_eq!(
            retarget(&kept, std::slice::from_ref(&written), None, now),
            kept
        );
        assert_eq!(
            retarget(&kept, std::slice::from_ref(&written), Some(NEWER), now),
            kept
        );
    }
    // `pending` but the image not written yet: no image that is no longer the choice.
    let out = retarget(&[record("h", HostPhase::Pending)], &world, Some(NEWER), now);
    assert_eq!(out[0].image, NEWER.image);
}

#[test]
fn a_released_host_is_uncordoned_only_when_ours_and_then_done() {
    let mut ours = held(worker("h", "a"));
    ours.cordoned = true;
    ours.cordoned_by_us = true;
    let released = retarget(&[record("h", HostPhase::Drained)], &[], None, at(1));
    let out = step(
        &released,
        std::slice::from_ref(&ours),
        TARGET,
        settings(1, 1),
        true,
        at(1),
    );
    assert_eq!(out.actions, vec![Action::Uncordon { node: "n-h".into() }]);
    assert!(in_flight(out.records[0].phase));
    ours.cordoned = false;
    ours.cordoned_by_us = false;
    let out = step(&out.records, &[ours], TARGET, settings(1, 1), true, at(2));
    assert_eq!(out.records[0].phase, HostPhase::Released);
    assert!(!in_flight(out.records[0].phase));
    // Released: its Machine is no longer held from remediation.
    assert_eq!(
        out.actions,
        vec![Action::AllowRemediation {
            machine: "m-h".into()
        }]
    );
    assert_eq!(out.records[0].finished, Some(Time(at(2))));
}

#[test]
fn a_host_whose_node_is_gone_is_dropped_and_hosts_without_nodes_starve_nobody() {
    let mut gone = worker("h", "a");
    gone.node = None;
    let out = step(
        &[record("h", HostPhase::Pending)],
        &[gone.clone()],
        TARGET,
        settings(1, 1),
        false,
        at(1),
    );
    assert!(out.records.is_empty() && out.actions.is_empty(), "{out:?}");
    // A control-plane host and a pool's first host without a Node: the others go on.
    let mut cp = view("cp", Role::ControlPlane);
    cp.node = None;
    let world = [cp, gone, worker("h2", "a"), worker("b1", "b")];
    let out = step(&[], &world, TARGET, settings(1, 1), false, at(1));
    assert_eq!(
        out.actions,
        vec![
            Action::Cordon {
                node: "n-h2".into()
            },
            Action::SkipRemediation {
                machine: "m-h2".into()
            }
        ]
    );
}

#[test]
fn our_own_cordon_seen_by_a_stale_read_is_still_ours() {
    // Our cordon's mark on the Node: selected as ours, and uncordoned at the end. (Its Machine
    // is held from remediation by someone else, so no hold of ours is written here.)
    let mut view = worker("h", "a");
    view.cordoned = true;
    view.cordoned_by_us = true;
    view.skip_remediation = Some("operator".into());
    let selected = step(
        &[],
        std::slice::from_ref(&view),
        TARGET,
        settings(1, 1),
        false,
        at(0),
    );
    assert_eq!(selected.records[0].cordoned_before, None);
    assert!(
        selected.actions.is_empty(),
        "cordoned again: {:?}",
        selected.actions
    );
    let mut verified = selected.records[0].clone();
    verified.phase = HostPhase::Verified;
    let out = one(verified, view, 1);
    assert_eq!(out.actions, vec![Action::Uncordon { node: "n-h".into() }]);
}

#[test]
fn a_host_is_labelled_pending_only_once_its_machine_is_held_from_remediation() {
    let mut view = worker("h", "a");
    view.cordoned = true;
    view.drained = true;
    let unheld = one(record("h", HostPhase::Cordoned), view.clone(), 1);
    assert_eq!(unheld.records[0].phase, HostPhase::Drained);
    assert_eq!(
        unheld.actions,
        vec![Action::SkipRemediation {
            machine: "m-h".into()
        }]
    );
    let again = one(unheld.records[0].clone(), view.clone(), 2);
    assert_eq!(again.records[0].phase, HostPhase::Drained);
    assert!(
        !again
            .actions
            .iter()
            .any(|a| matches!(a, Action::LabelPending { .. })),
        "{:?}",
        again.actions
    );
    // Anyone's hold will do.
    view.skip_remediation = Some("operator".into());
    let ready = one(unheld.records[0].clone(), view, 3);
    assert_eq!(
        ready.actions,
        vec![Action::LabelPending { host: "h".into() }]
    );
}

/// Each row: the records, the Machine's annotation, and the write asked for.
#[test]
fn the_hold_is_set_for_hosts_in_flight_and_lifted_only_where_it_is_ours() {
    type Row<'a> = (&'a str, Vec<HostRecord>, Option<&'a str>, Option<Action>);
    let ours = Some(remediation::SKIP_REMEDIATION_BY);
    let moved = {
        let mut r = record("h", HostPhase::Pending);
        r.machine = "m-old".into();
        r
    };
    let skip = Some(Action::SkipRemediation {
        machine: "m-h".into(),
    });
    let allow = Some(Action::AllowRemediation {
        machine: "m-h".into(),
    });
    let rows: Vec<Row<'_>> = vec![
        (
            "selected",
            vec![record("h", HostPhase::Selected)],
            None,
            skip.clone(),
        ),
        (
            "pending, held",
            vec![record("h", HostPhase::Pending)],
            ours,
            None,
        ),
        (
            "an operator's hold",
            vec![record("h", HostPhase::Pending)],
            Some(""),
            None,
        ),
        (
            "blocked stays held",
            vec![record("h", HostPhase::HostTimeout)],
            ours,
            None,
        ),
        (
            "verified",
            vec![record("h", HostPhase::Verified)],
            ours,
            allow.clone(),
        ),
        (
            "finished",
            vec![record("h", HostPhase::Uncordoned)],
            ours,
            allow.clone(),
        ),
        (
            "finished, operator's",
            vec![record("h", HostPhase::Uncordoned)],
            Some("mine"),
            None,
        ),
        ("no record (released)", vec![], ours, allow.clone()),
        ("no record, not held", vec![], None, None),
        ("a record of another Machine", vec![moved], ours, allow),
    ];
    for (what, records, annotation, expected) in rows {
        let mut view = worker("h", "a");
        view.skip_remediation = annotation.map(str::to_owned);
        let asked = remediation::actions(&records, &[view]);
        assert_eq!(asked, expected.into_iter().collect::<Vec<_>>(), "{what}");
    }
}

#[test]
fn a_host_on_another_machine_starts_a_new_record_and_its_image_goes_there() {
    let mut old = record("h", HostPhase::Pending);
    old.machine = "m-old".into();
    old.node = "n-old".into();
    let mut view = held(worker("h", "a"));
    view.machine = "m-new".into();
    view.node = Some("n-new".into());
    let out = step(
        &[old],
        std::slice::from_ref(&view),
        TARGET,
        settings(1, 1),
        false,
        at(1),
    );
    assert_eq!(out.records.len(), 1, "{:?}", out.records);
    let fresh = &out.records[0];
    assert_eq!(
        (fresh.machine.as_str(), fresh.node.as_str(), fresh.phase),
        ("m-new", "n-new", HostPhase::Selected)
    );
    assert_eq!(
        out.actions,
        vec![Action::Cordon {
            node: "n-new".into()
        }]
    );
    let mut drained = fresh.clone();
    drained.phase = HostPhase::Drained;
    view.cordoned = true;
    view.drained = true;
    view.label = Some(UpdateLabel::Pending);
    let written = one(drained, view, 2);
    assert_eq!(
        written.actions,
        vec![Action::ApplyImage {
            machine: "m-new".into(),
            image: NEW.into()
        }]
    );
}

#[test]
fn the_boot_id_is_recorded_at_selection_and_kept_until_pending() {
    let view = held(worker("h", "a"));
    let selected = step(
        &[],
        std::slice::from_ref(&view),
        TARGET,
        settings(1, 1),
        false,
        at(0),
    );
    assert_eq!(selected.records[0].boot_id.as_deref(), Some("boot-h-0"));
    assert_eq!(selected.records[0].pending_since, None);
    // An unrelated reboot while held at Drained: the boot before `pending` is the one kept.
    let mut drained = rebooted(view.clone());
    drained.cordoned = true;
    drained.drained = true;
    drained.label = Some(UpdateLabel::Pending);
    let mut at_drained = record("h", HostPhase::Drained);
    at_drained.pending_since = None;
    let pending = one(at_drained, drained.clone(), 5);
    assert_eq!(pending.records[0].phase, HostPhase::Pending);
    assert_eq!(pending.records[0].boot_id.as_deref(), Some("boot-h-1"));
    assert_eq!(pending.records[0].pending_since, Some(Time(at(5))));
    // From `pending` on, the record keeps it: a new boot is the update's.
    let mut booted = drained;
    booted.boot_id = Some("boot-h-2".into());
    booted.image_uri = Some(NEW.into());
    let kept = one(pending.records[0].clone(), booted, 6);
    assert_eq!(kept.records[0].boot_id.as_deref(), Some("boot-h-1"));
    assert_eq!(kept.records[0].pending_since, Some(Time(at(5))));
}

#[test]
fn a_host_that_never_comes_back_is_blocked_with_host_timeout_not_in_flight_for_ever() {
    // The agent takes the host down for its update and it never reports again.
    let mut view = held(worker("h", "a"));
    view.cordoned = true;
    view.drained = true;
    view.label = Some(UpdateLabel::Pending);
    view.image_uri = Some(NEW.into());
    let mut other = worker("x", "a");
    other.node = Some("n-x".into());
    let world = [view, other];
    let mut records = vec![{
        let mut r = record("h", HostPhase::Drained);
        r.pending_since = None;
        r
    }];
    let mut blocked = None;
    let mut pending_at = None;
    for pass in 0..2000 {
        let now = at(pass * 2);
        let out = step(&records, &world, TARGET, settings(1, 1), false, now);
        if pending_at.is_none() && out.records[0].phase == HostPhase::Pending {
            pending_at = Some(pass * 2);
        }
        records = out.records;
        if let Some(b) = out.blocked {
            blocked = Some((pass * 2, b, out.actions));
            break;
        }
    }
    let (when, blocked, actions) = blocked.expect("in flight for ever");
    let since = pending_at.unwrap();
    assert!(
        (1800..=1802).contains(&(when - since)),
        "blocked {}s after pending",
        when - since
    );
    assert_eq!(blocked.reason, Reason::HostTimeout);
    assert_eq!(blocked.host, "h");
    assert!(blocked.message.contains("1800s"), "{}", blocked.message);
    assert!(
        blocked
            .message
            .contains(remediation::SKIP_REMEDIATION_ANNOTATION),
        "{}",
        blocked.message
    );
    assert_eq!(records.len(), 1, "another host started: {records:?}");
    assert_eq!(records[0].phase, HostPhase::HostTimeout);
    // Nothing more is asked: the Node stays cordoned and the Machine held.
    assert!(actions.is_empty(), "{actions:?}");
    let later = step(&records, &world, TARGET, settings(1, 1), false, at(9000));
    assert_eq!(later.records, records);
    assert!(later.actions.is_empty());
    // A record from before `pendingSince` existed starts its timer now.
    let mut legacy = record("h", HostPhase::Pending);
    legacy.pending_since = None;
    let started = one(legacy, world[0].clone(), 7000);
    assert_eq!(started.records[0].phase, HostPhase::Pending);
    assert_eq!(started.records[0].pending_since, Some(Time(at(7000))));
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
            // A reboot, into the new image or, after a fallback, the old one.
            v.boot_id = Some(format!("boot-{}-{}", v.host, now.as_second()));
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
        Action::Cordon { node } => {
            let v = &mut world[by_node(world, node)].view;
            v.cordoned = true;
            v.cordoned_by_us = true;
        }
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
            assert!(
                remediation::held(&h.view),
                "pending before its Machine is held from remediation: {host}"
            );
            h.view.label = Some(UpdateLabel::Pending);
        }
        Action::SkipRemediation { machine } => {
            let h = world
                .iter_mut()
                .find(|h| &h.view.machine == machine)
                .unwrap();
            h.view.skip_remediation = Some(remediation::SKIP_REMEDIATION_BY.into());
        }
        Action::AllowRemediation { machine } => {
            let h = world
                .iter_mut()
                .find(|h| &h.view.machine == machine)
                .unwrap();
            let r = record(&h.view.host);
            assert!(
                r.as_ref().is_none_or(|r| !remediation::wanted(r)),
                "the hold lifted from a host in flight: {r:?}"
            );
            h.view.skip_remediation = None;
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
            assert!(h.view.cordoned_by_us, "uncordoned a Node without our mark");
            h.view.cordoned = false;
            h.view.cordoned_by_us = false;
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
        let settings = Settings { max_unavailable, drain_timeout: Duration::from_secs(600), retries, host_timeout: Duration::from_secs(1800) };
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
                if b.reason != Reason::DrainTimeout {
                    prop_assert!(remediation::ours(&now.view), "a blocked host's Machine is left held");
                }
        } else {
                prop_assert!(finished, "not finished after 400 passes: {records:?}");
                prop_assert!(!touched_trouble);
                for h in &world {
                    prop_assert!(at_target(&h.view, TARGET) && !h.view.cordoned, "{h:?}");
                    prop_assert!(h.view.skip_remediation.is_none(), "still held: {h:?}");
                }
        }
    }
}

/// One host of the skewed-clock simulation: its Node is a real Node object, read through
/// [`observe::node`], whose kubelet runs `skew` seconds off our clock and reports a reboot `lag`
/// passes after the agent's `done`.
#[derive(Clone, Debug)]
struct SkewedHost {
    view: HostView,
    node: k8s_openapi::api::core::v1::Node,
    skew: i64,
    lag: u32,
    fallback: bool,
    /// The `imageUri` the agent last applied (its correlation ID).
    applied: String,
    /// The kubelet's report after a reboot: in how many passes, with which boot ID and image.
    report: Option<(u32, String, String)>,
    boots: u32,
}

impl SkewedHost {
    fn new(i: usize, skew: i64, lag: u32, fallback: bool) -> Self {
        let view = view(&format!("h{i}"), Role::Worker("p".into()));
        let mut host = Self {
            node: k8s_openapi::api::core::v1::Node::default(),
            view,
            skew,
            lag,
            fallback,
            applied: OLD.into(),
            report: None,
            boots: 0,
        };
        host.kubelet_reports(
            format!("boot-h{i}-0"),
            "Elemental os-1".into(),
            Timestamp::UNIX_EPOCH,
        );
        host
    }

    /// The kubelet's status write: `nodeInfo` and a Ready heartbeat stamped with its own clock.
    fn kubelet_reports(&mut self, boot: String, os: String, now: Timestamp) {
        let heartbeat = now
            .checked_add(jiff::SignedDuration::from_secs(self.skew))
            .unwrap_or(now);
        let status = self.node.status.get_or_insert_default();
        let info = status.node_info.get_or_insert_default();
        info.boot_id = boot;
        info.os_image = os;
        status.conditions = Some(vec![k8s_openapi::api::core::v1::NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_heartbeat_time: Some(Time(heartbeat)),
            last_transition_time: Some(Time(heartbeat)),
            ..Default::default()
        }]);
    }

    /// What the flow sees: the management view with the Node as [`observe::node`] reads it.
    fn seen(&self) -> HostView {
        let node = observe::node(&self.node);
        HostView {
            cordoned: node.cordoned,
            os_image: node.os_image,
            boot_id: node.boot_id,
            ..self.view.clone()
        }
    }

    /// The agent and the kubelet, one pass.
    fn live(&mut self, now: Timestamp) {
        if let Some((due, boot, os)) = self.report.take() {
            if due == 0 {
                self.kubelet_reports(boot, os, now);
            } else {
                self.report = Some((due - 1, boot, os));
            }
        } else {
            let info = self.node.status.as_ref().and_then(|s| s.node_info.clone());
            let (boot, os) = info.map(|i| (i.boot_id, i.os_image)).unwrap_or_default();
            self.kubelet_reports(boot, os, now);
        }
        let image = self.view.image_uri.clone().unwrap_or_default();
        if self.view.label != Some(UpdateLabel::Pending) {
            return;
        }
        if image == self.applied {
            // The map this agent updated to is applied already (its snapshot carries the
            // correlation ID): `done` at once, no reboot. The installed map has no such snapshot.
            if self.boots > 0 {
                self.view.label = Some(UpdateLabel::Done);
            }
            return;
        }
        self.boots += 1;
        let booted = if self.fallback { "os-1" } else { "os-2" };
        let boot = format!("boot-{}-{}", self.view.host, self.boots);
        let os = format!("Elemental {booted}");
        if self.lag == 0 {
            self.kubelet_reports(boot, os, now);
        } else {
            self.report = Some((self.lag - 1, boot, os));
        }
        self.applied = image;
        self.view.label = Some(UpdateLabel::Done);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Node clocks minutes off ours and kubelets that report the reboot passes after `done`:
    /// no host that booted its image is ever judged a mismatch, every one finishes, and a
    /// fallback boot is still caught.
    #[test]
    fn a_skewed_node_clock_and_a_slow_kubelet_never_fake_a_mismatch(
        hosts in prop::collection::vec((-900i64..900, 0..4u32, prop::bool::weighted(0.15)), 1..5),
        start in 0i64..100_000,
    ) {
        let mut world: Vec<SkewedHost> = hosts
            .iter()
            .enumerate()
            .map(|(i, (skew, lag, fallback))| SkewedHost::new(i, *skew, *lag, *fallback))
            .collect();
        let mut records: Vec<HostRecord> = Vec::new();
        let mut outcome = None;
        for pass in 0..300i64 {
            let now = at(start + pass * 2);
            let views: Vec<HostView> = world.iter().map(SkewedHost::seen).collect();
            let out = step(&records, &views, TARGET, settings(1, 1), false, now);
            for action in &out.actions {
                let Some(h) = world.iter_mut().find(|h| match action {
                    Action::Cordon { node } | Action::Evict { node } | Action::Uncordon { node } => {
                        h.view.node.as_ref() == Some(node)
                    }
                    Action::LabelPending { host } => &h.view.host == host,
                    Action::ApplyImage { machine, .. }
                    | Action::SkipRemediation { machine }
                    | Action::AllowRemediation { machine } => &h.view.machine == machine,
                }) else {
                    continue;
                };
                match action {
                    Action::Cordon { .. } => {
                        h.node.spec.get_or_insert_default().unschedulable = Some(true);
                    }
                    Action::Evict { .. } => h.view.drained = true,
                    Action::LabelPending { .. } => h.view.label = Some(UpdateLabel::Pending),
                    Action::ApplyImage { image, .. } => h.view.image_uri = Some(image.clone()),
                    Action::Uncordon { .. } => {
                        h.node.spec.get_or_insert_default().unschedulable = Some(false);
                    }
                    Action::SkipRemediation { .. } => {
                        h.view.skip_remediation = Some(remediation::SKIP_REMEDIATION_BY.into());
                    }
                    Action::AllowRemediation { .. } => h.view.skip_remediation = None,
                }
            }
            records = out.records.clone();
            if let Some(blocked) = out.blocked {
                outcome = Some(Err(blocked));
                break;
            }
            let views: Vec<HostView> = world.iter().map(SkewedHost::seen).collect();
            if out.finished(&views, TARGET) {
                outcome = Some(Ok(()));
                break;
            }
            for h in &mut world {
                h.live(now);
            }
        }
        match outcome {
            Some(Ok(())) => prop_assert!(
                !world.iter().any(|h| h.fallback && h.boots > 0),
                "a fallback boot passed: {records:?}"
            ),
            Some(Err(blocked)) => {
                prop_assert_eq!(blocked.reason, Reason::BootedImageMismatch, "{:?}", blocked);
                let h = world.iter().find(|h| h.view.host == blocked.host).unwrap();
                prop_assert!(h.fallback, "a false mismatch: {:?} {:?}", blocked, h);
            }
            None => prop_assert!(false, "neither finished nor blocked: {records:?}"),
        }
    }
}

#[test]
fn a_nodes_boot_id_is_read_bounded_and_its_clock_never() {
    let node = |boot: &str| {
        serde_json::from_value::<k8s_openapi::api::core::v1::Node>(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {
                "nodeInfo": {
                    "machineID": "m", "systemUUID": "u", "bootID": boot,
                    "kernelVersion": "6", "osImage": "Elemental os-2",
                    "containerRuntimeVersion": "c", "kubeletVersion": "v1.31.1",
                    "kubeProxyVersion": "v1.31.1", "operatingSystem": "linux",
                    "architecture": "amd64",
                },
                "conditions": [{"type": "Ready", "status": "True",
                    "lastHeartbeatTime": "1999-01-01T00:00:00Z"}],
            },
        }))
        .unwrap()
    };
    let read = observe::node(&node("0c3f6d7e-2b9a-4d41-8f7c-5e6a1b2c3d4e"));
    assert_eq!(
        read.boot_id.as_deref(),
        Some("0c3f6d7e-2b9a-4d41-8f7c-5e6a1b2c3d4e")
    );
    assert_eq!(read.os_image.as_deref(), Some("Elemental os-2"));
    assert_eq!(observe::node(&node("")).boot_id, None);
    assert_eq!(observe::node(&node(&"b".repeat(65))).boot_id, None);
    assert_eq!(observe::node(&node("boot id")).boot_id, None);
    assert_eq!(observe::node(&node("boot\nid")).boot_id, None);
}

#[test]
fn a_machines_skip_remediation_annotation_is_read() {
    let machine = |annotations: serde_json::Value| {
        serde_json::json!({
            "metadata": {"name": "m0", "annotations": annotations},
            "spec": {"infrastructureRef": {
                "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
                "kind": "ElementalMachine",
                "name": "em0",
            }},
        })
    };
    let ours = observe::machine(&machine(
        serde_json::json!({remediation::SKIP_REMEDIATION_ANNOTATION: "kubernetes-upgrader"}),
    ))
    .unwrap();
    assert_eq!(
        ours.skip_remediation.as_deref(),
        Some(remediation::SKIP_REMEDIATION_BY)
    );
    let someone = observe::machine(&machine(
        serde_json::json!({remediation::SKIP_REMEDIATION_ANNOTATION: ""}),
    ))
    .unwrap();
    assert_eq!(someone.skip_remediation.as_deref(), Some(""));
    let none = observe::machine(&machine(serde_json::json!({"other": "x"}))).unwrap();
    assert_eq!(none.skip_remediation, None);
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

/// What happens to the world between two passes of the changing-world property.
#[derive(Clone, Debug)]
enum Change {
    /// The Plan's choice moves: to `NEW`, `NEWER`, or away (the update no longer wanted).
    Target(Option<bool>),
    /// An operator uncordons the host's Node (`kubectl uncordon` leaves our mark); pods come
    /// back.
    Uncordon(usize),
    /// An operator cordons the host's Node.
    Cordon(usize),
    /// A pod that may not be evicted is created on the host's Node.
    RefusedPod(usize),
    /// That pod is deleted.
    PodGone(usize),
    /// The host's Machine is deleted.
    Vanish(usize),
    /// A new host joins the pool.
    Join(usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        prop::option::of(any::<bool>()).prop_map(Change::Target),
        (0..8usize).prop_map(Change::Uncordon),
        (0..8usize).prop_map(Change::Cordon),
        (0..8usize).prop_map(Change::RefusedPod),
        (0..8usize).prop_map(Change::PodGone),
        (0..8usize).prop_map(Change::Vanish),
        (1..3usize).prop_map(Change::Join),
    ]
}

/// The stamp a target's image boots into.
fn stamp_of(image: &str) -> &'static str {
    match image {
        NEW => TARGET.stamp,
        _ if image == NEWER.image => NEWER.stamp,
        _ => "os-1",
    }
}

/// The agent and kubelet of the changing world: a host labelled `pending` whose
/// ElementalMachine names an image it does not run reboots into it and reports `done`.
fn changing_agent(view: &mut HostView, now: Timestamp) {
    let Some(image) = view.image_uri.clone() else {
        return;
    };
    let booted = view
        .os_image
        .as_deref()
        .is_some_and(|os| carries_stamp(os, stamp_of(&image)));
    if view.label == Some(UpdateLabel::Pending) && !booted {
        view.os_image = Some(format!("Elemental {}", stamp_of(&image)));
        view.label = Some(UpdateLabel::Done);
        view.boot_id = Some(format!("boot-{}-{}", view.host, now.as_second()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The world changes under the state machine: the target moves between images and away,
    /// operators uncordon and cordon Nodes, pods that may not be evicted come and go, hosts
    /// vanish and join, and a pass's writes are sometimes lost. At every write: at most one
    /// control-plane host and `maxUnavailable` hosts of one pool in flight; nothing evicted from
    /// a Node with a refused pod; `pending` only on a cordoned, drained Node; no image written
    /// that is not the current target; no Node uncordoned without our mark. Once the world is
    /// still, every host finishes at the target or is released, and no Node is left cordoned
    /// by us.
    #[test]
    fn the_flow_is_safe_in_a_changing_world(
        world in sim_hosts(),
        max_unavailable in 1..3usize,
        changes in prop::collection::vec((0..200usize, change()), 0..30),
        kills in prop::collection::vec(prop::bool::weighted(0.2), 500),
        last in prop::option::of(any::<bool>()),
    ) {
        let settings = Settings { max_unavailable, drain_timeout: Duration::from_secs(100_000), retries: 1, host_timeout: Duration::from_secs(100_000) };
        let mut views: Vec<HostView> = world.into_iter().map(|h| h.view).collect();
        // Nodes an operator cordoned while they carried no mark of ours.
        let mut operator_cordoned: BTreeSet<String> = BTreeSet::new();
        let mut target = Some(TARGET);
        let mut records: Vec<HostRecord> = Vec::new();
        let mut joined = 0;
        for (pass, lost) in kills.iter().copied().enumerate() {
            // The world stands still for the last 300 passes, at the final target.
            if pass == 200 {
                target = last.map(|newer| if newer { NEWER } else { TARGET });
                for v in &mut views {
                    v.refused = None;
                }
            }
            for (_, change) in changes.iter().filter(|(at_pass, _)| *at_pass == pass) {
                let n = views.len().max(1);
                match change {
                    Change::Target(to) => target = to.map(|newer| if newer { NEWER } else { TARGET }),
                    Change::Uncordon(i) => if let Some(v) = views.get_mut(i % n) {
                        v.cordoned = false;
                        v.drained = false;
                        operator_cordoned.remove(&v.host);
                    },
                    Change::Cordon(i) => if let Some(v) = views.get_mut(i % n) && !v.cordoned {
                        v.cordoned = true;
                        if !v.cordoned_by_us {
                            operator_cordoned.insert(v.host.clone());
                        }
                    },
                    Change::RefusedPod(i) => if let Some(v) = views.get_mut(i % n) {
                        v.refused = Some(format!("pod ns/bare-{}", v.host));
                        v.drained = false;
                    },
                    Change::PodGone(i) => if let Some(v) = views.get_mut(i % n) {
                        v.refused = None;
                    },
                    Change::Vanish(i) => if views.len() > 1 {
                        views.remove(i % n);
                    },
                    Change::Join(pool) => {
                        joined += 1;
                        views.push(worker(&format!("j{joined}"), &format!("p{pool}")));
                    }
                }
            }
            let now = at(i64::try_from(pass).unwrap_or(0) * 10);
            let released = retarget(&records, &views, target, now);
            let idle = Target { image: "", stamp: "" };
            let out = step(&released, &views, target.unwrap_or(idle), settings, target.is_none(), now);
            check_budget(&out.records, max_unavailable);
            if !lost {
                for action in &out.actions {
                    let node_of = |views: &mut Vec<HostView>, node: &str| views.iter().position(|v| v.node.as_deref() == Some(node));
                    match action {
                        Action::Cordon { node } => if let Some(i) = node_of(&mut views, node) {
                            views[i].cordoned = true;
                            views[i].cordoned_by_us = true;
                        },
                        Action::Evict { node } => if let Some(i) = node_of(&mut views, node) {
                            let v = &mut views[i];
                            prop_assert!(v.cordoned, "evicting from an uncordoned Node {node}");
                            prop_assert!(v.refused.is_none(), "evicting beside a refused pod on {node}");
                            v.drained = true;
                        },
                        Action::LabelPending { host } => if let Some(v) = views.iter_mut().find(|v| &v.host == host) {
                            prop_assert!(v.cordoned && v.drained && v.refused.is_none(), "pending on a Node not cordoned and drained: {v:?}");
                            prop_assert!(remediation::held(v), "pending before its Machine is held: {v:?}");
                            v.label = Some(UpdateLabel::Pending);
                        },
                        Action::SkipRemediation { machine } => if let Some(v) = views.iter_mut().find(|v| &v.machine == machine) {
                            v.skip_remediation = Some(remediation::SKIP_REMEDIATION_BY.into());
                        },
                        Action::AllowRemediation { machine } => if let Some(v) = views.iter_mut().find(|v| &v.machine == machine) {
                            let held_for = out.records.iter().find(|r| r.host == v.host && r.machine == v.machine);
                            prop_assert!(held_for.is_none_or(|r| !remediation::wanted(r)), "the hold lifted from a host in flight: {held_for:?}");
                            v.skip_remediation = None;
                        },
                        Action::ApplyImage { machine, image } => if let Some(v) = views.iter_mut().find(|v| &v.machine == machine) {
                            prop_assert_eq!(Some(image.as_str()), target.map(|t| t.image), "an image that is not the current target");
                            prop_assert_eq!(v.label, Some(UpdateLabel::Pending));
                            v.image_uri = Some(image.clone());
                        },
                        Action::Uncordon { node } => if let Some(i) = node_of(&mut views, node) {
                            let v = &mut views[i];
                            prop_assert!(v.cordoned_by_us, "uncordoned {node} without our mark");
                            prop_assert!(!operator_cordoned.contains(&v.host), "uncordoned {node}, which an operator cordoned");
                            v.cordoned = false;
                            v.cordoned_by_us = false;
                            v.drained = false;
                        },
                    }
                }
            }
            records = out.records;
            for v in &mut views {
                changing_agent(v, now);
            }
        }
        // Still: every record has ended, every host runs the final target (or none was
        // wanted), and no Node is left cordoned by us.
        for r in &records {
            prop_assert!(!in_flight(r.phase), "{} still in flight: {records:?}", r.host);
        }
        for v in &views {
            if let Some(t) = target {
                prop_assert!(at_target(v, t), "{v:?} not at {t:?}: {records:?}");
            }
            prop_assert!(!v.cordoned_by_us, "{} left with our mark: {records:?}", v.host);
            prop_assert!(!remediation::ours(v), "{} left held from remediation: {records:?}", v.host);
            prop_assert_eq!(v.cordoned, operator_cordoned.contains(&v.host), "{:?}", v);
        }
    }
}
