//! Gate tables, planner properties and choreography of the upgrader.

use super::gates::{
    ClusterState, ClusterView, Image, Inputs, PlanState, Reason, Topology, Variable,
};
use super::*;
use crate::runtime::builders::{Build, Fixture, ImageBuild, PlanBuild, timestamp};
use crate::runtime::fixtures::{STEP, Verifier, mock_client, within};
use api::v1alpha1::UpgraderSpecView;
use api::v1alpha1::{ImageMap, MaintenanceWindow, ObjectRef as Ref};
use http::Method;
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{reflector, watcher};
use proptest::prelude::*;
use semver::Version;
use serde_json::{Value, json};

fn v(text: &str) -> Version {
    api::version::parse_lenient(text).unwrap()
}

fn img(version: &str, id: &str) -> Image {
    Image {
        version: v(version),
        spec_version: version.into(),
        id: id.into(),
        name: format!("img-{version}"),
    }
}

fn plan_ref() -> Ref {
    Ref {
        name: "p".into(),
        ..Ref::default()
    }
}

fn spec(r: &Ref) -> UpgraderSpecView<'_> {
    UpgraderSpecView {
        paused: false,
        cluster_name: "c",
        topology_variable: None,
        plan_ref: r,
        create_topology_variable: false,
        image_map: None,
        maintenance_window: None,
        dry_run: false,
    }
}

fn found(version: &str, variables: Vec<Variable>, finished: bool) -> ClusterState {
    ClusterState::Found(ClusterView {
        paused: false,
        topology: Some(Topology {
            version: version.into(),
            variables,
        }),
        finished: if finished {
            Ok(())
        } else {
            Err("rolling".into())
        },
        labels: std::collections::BTreeMap::new(),
        available: None,
        admission: crate::controllers::rollout::Admission::Unrestricted,
    })
}

fn target(version: &str, id: &str) -> PlanState {
    PlanState::Found {
        version: Some(version.into()),
        id: Some(id.into()),
    }
}

fn run(
    spec: UpgraderSpecView<'_>,
    cluster: &ClusterState,
    plan: &PlanState,
    images: &[Image],
) -> gates::Plan {
    gates::plan(&Inputs {
        spec,
        cluster,
        plan,
        images,
        now: timestamp(),
        chained: false,
    })
}

fn reason(p: &gates::Plan) -> Reason {
    match p {
        gates::Plan::Write(_) => Reason::StepApplied,
        gates::Plan::Hold { hold, .. } => hold.reason,
    }
}

fn images() -> Vec<Image> {
    vec![
        img("v1.29.5", "i-129"),
        img("v1.30.1", "i-1301"),
        img("v1.30.2", "i-1302"),
        img("v1.31.0", "i-131"),
    ]
}

#[test]
fn every_reason_has_its_case() {
    let r = plan_ref();
    let mut imgs = images();
    imgs.push(img("v2.0.0", "i-2"));
    let var = |value: Value| {
        vec![Variable {
            name: "image".into(),
            value,
        }]
    };
    let window_closed = MaintenanceWindow {
        schedule: "0 2 * * SUN".into(),
        duration: "2h".into(),
        time_zone: None,
    };
    let window_bad = MaintenanceWindow {
        schedule: "0 2 * * SUN".into(),
        duration: "2h".into(),
        time_zone: Some("Nowhere/Land".into()),
    };
    let map = ImageMap {
        variable: "osImages".into(),
        field: Some("byKubernetesVersion".into()),
        create: None,
    };
    let ok = found("v1.30.1", vec![], true);
    let cases: Vec<(Reason, UpgraderSpecView<'_>, ClusterState, PlanState)> = vec![
        (
            Reason::Paused,
            UpgraderSpecView {
                paused: true,
                ..spec(&r)
            },
            ok.clone(),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::ClusterApiNotInstalled,
            spec(&r),
            ClusterState::ApiMissing,
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::ClusterNotFound,
            spec(&r),
            ClusterState::NotFound,
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::ClusterNotClassBased,
            spec(&r),
            ClusterState::Found(ClusterView {
                paused: false,
                topology: None,
                finished: Ok(()),
                labels: std::collections::BTreeMap::new(),
                available: None,
                admission: crate::controllers::rollout::Admission::Unrestricted,
            }),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::PlanNotFound,
            spec(&r),
            ok.clone(),
            PlanState::NotFound,
        ),
        (
            Reason::PlanNotReady,
            spec(&r),
            ok.clone(),
            PlanState::Found {
                version: None,
                id: Some("x".into()),
            },
        ),
        (
            Reason::PlanNotReady,
            spec(&r),
            ok.clone(),
            target("v1.30.9", "not-an-image"),
        ),
        (
            Reason::InvalidVersion,
            spec(&r),
            ok.clone(),
            target("one", "i-1302"),
        ),
        (
            Reason::InvalidVersion,
            spec(&r),
            found("latest", vec![], true),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::ClusterAheadOfPlan,
            spec(&r),
            found("v1.31.0", vec![], true),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::ClusterUsingLatestVersion,
            spec(&r),
            found("v1.30.2", vec![], true),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::RollingOut,
            spec(&r),
            found("v1.30.2", vec![], false),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::MajorVersionChange,
            spec(&r),
            ok.clone(),
            target("v2.0.0", "i-2"),
        ),
        (
            Reason::NoImageForIntermediateMinor,
            spec(&r),
            found("v1.27.3", vec![], true),
            target("v1.29.5", "i-129"),
        ),
        (
            Reason::TopologyVariableNotFound,
            UpgraderSpecView {
                topology_variable: Some("image"),
                ..spec(&r)
            },
            ok.clone(),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::TopologyVariableNotFound,
            UpgraderSpecView {
                image_map: Some(&map),
                ..spec(&r)
            },
            ok.clone(),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::InvalidImageMap,
            UpgraderSpecView {
                image_map: Some(&map),
                ..spec(&r)
            },
            found(
                "v1.30.1",
                vec![Variable {
                    name: "osImages".into(),
                    value: json!("s"),
                }],
                true,
            ),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::ImageMapEntryConflict,
            UpgraderSpecView {
                image_map: Some(&map),
                ..spec(&r)
            },
            found(
                "v1.30.1",
                vec![Variable {
                    name: "osImages".into(),
                    value: json!({"byKubernetesVersion": {"v1.30.2": "other"}}),
                }],
                true,
            ),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::ClusterPaused,
            spec(&r),
            ClusterState::Found(ClusterView {
                paused: true,
                topology: Some(Topology {
                    version: "v1.30.1".into(),
                    variables: vec![],
                }),
                finished: Ok(()),
                labels: std::collections::BTreeMap::new(),
                available: None,
                admission: crate::controllers::rollout::Admission::Unrestricted,
            }),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::PreviousStepUnfinished,
            spec(&r),
            found("v1.30.1", vec![], false),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::OutsideMaintenanceWindow,
            UpgraderSpecView {
                maintenance_window: Some(&window_closed),
                ..spec(&r)
            },
            ok.clone(),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::InvalidMaintenanceWindow,
            UpgraderSpecView {
                maintenance_window: Some(&window_bad),
                ..spec(&r)
            },
            ok.clone(),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::DryRun,
            UpgraderSpecView {
                dry_run: true,
                ..spec(&r)
            },
            ok.clone(),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::StepApplied,
            spec(&r),
            ok.clone(),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::StepApplied,
            UpgraderSpecView {
                topology_variable: Some("image"),
                ..spec(&r)
            },
            found("v1.30.2", var(json!("old")), true),
            target("v1.30.2", "i-1302"),
        ),
        (
            Reason::ClusterUsingLatestVersion,
            UpgraderSpecView {
                topology_variable: Some("image"),
                ..spec(&r)
            },
            found("v1.30.2", var(json!("i-1302")), true),
            target("v1.30.2", "i-1302"),
        ),
    ];
    for (want, spec, cluster, plan) in cases {
        let got = run(spec, &cluster, &plan, &imgs);
        assert_eq!(reason(&got), want, "{got:?}");
        let conditions = decide::hold_conditions(&match got {
            gates::Plan::Hold { hold, .. } => hold,
            gates::Plan::Write(_) => continue,
        });
        assert!(
            conditions.iter().any(|c| c.reason == want.as_str()),
            "{want:?}"
        );
    }
}

#[test]
fn two_minors_ahead_goes_through_the_highest_image_of_the_next_minor() {
    let r = plan_ref();
    let got = run(
        spec(&r),
        &found("v1.29.5", vec![], true),
        &target("v1.31.0", "i-131"),
        &images(),
    );
    let gates::Plan::Write(step) = got else {
        panic!("{got:?}")
    };
    assert_eq!(
        (step.version_string(), step.id.as_str()),
        ("v1.30.2".to_owned(), "i-1302")
    );
}

#[test]
fn the_window_reports_when_it_opens() {
    let r = plan_ref();
    let w = MaintenanceWindow {
        schedule: "0 2 * * SUN".into(),
        duration: "2h".into(),
        time_zone: None,
    };
    let got = run(
        UpgraderSpecView {
            maintenance_window: Some(&w),
            ..spec(&r)
        },
        &found("v1.30.1", vec![], true),
        &target("v1.30.2", "i-1302"),
        &images(),
    );
    let gates::Plan::Hold { hold, .. } = got else {
        panic!()
    };
    assert_eq!(
        hold.not_before,
        Some("2026-11-29T02:00:00Z".parse().unwrap())
    );
    assert_eq!(hold.step.unwrap().version_string(), "v1.30.2");
    let open = MaintenanceWindow {
        schedule: "0 2 * * SAT".into(),
        duration: "2h".into(),
        time_zone: None,
    };
    let got = run(
        UpgraderSpecView {
            maintenance_window: Some(&open),
            ..spec(&r)
        },
        &found("v1.30.1", vec![], true),
        &target("v1.30.2", "i-1302"),
        &images(),
    );
    assert!(matches!(got, gates::Plan::Write(_)));
}

#[test]
fn map_mode_adds_the_target_entry_and_keeps_the_others() {
    let r = plan_ref();
    let map = ImageMap {
        variable: "osImages".into(),
        field: Some("byKubernetesVersion".into()),
        create: None,
    };
    let cluster = found(
        "v1.30.1",
        vec![Variable {
            name: "osImages".into(),
            value: json!({"upgradeRecovery": true, "byKubernetesVersion": {"v1.30.1": "i-1301"}}),
        }],
        true,
    );
    let got = run(
        UpgraderSpecView {
            image_map: Some(&map),
            ..spec(&r)
        },
        &cluster,
        &target("v1.30.2", "i-1302"),
        &images(),
    );
    let gates::Plan::Write(step) = got else {
        panic!("{got:?}")
    };
    assert_eq!(
        step.variable.unwrap().value,
        json!({"upgradeRecovery": true, "byKubernetesVersion": {"v1.30.1": "i-1301", "v1.30.2": "i-1302"}})
    );
}

fn run_chained(
    spec: UpgraderSpecView<'_>,
    cluster: &ClusterState,
    plan: &PlanState,
    images: &[Image],
) -> gates::Plan {
    gates::plan(&Inputs {
        spec,
        cluster,
        plan,
        images,
        now: timestamp(),
        chained: true,
    })
}

fn chain_images() -> Vec<Image> {
    vec![
        img("v1.30.5", "i-1305"),
        img("v1.31.2", "i-1312"),
        img("v1.31.4", "i-1314"),
        img("v1.32.0", "i-1320"),
        img("v1.32.1", "i-1321"),
        img("v1.33.0", "i-1330"),
    ]
}

fn os_images(entries: &Value) -> Vec<Variable> {
    vec![Variable {
        name: "osImages".into(),
        value: json!({ "byKubernetesVersion": entries }),
    }]
}

#[test]
fn a_chained_map_step_writes_the_target_with_an_entry_per_version() {
    let r = plan_ref();
    let map = ImageMap {
        variable: "osImages".into(),
        field: Some("byKubernetesVersion".into()),
        create: None,
    };
    let s = UpgraderSpecView {
        image_map: Some(&map),
        ..spec(&r)
    };
    let cluster = found("v1.30.5", os_images(&json!({"v1.30.5": "i-1305"})), true);
    // The target v1.32.1 is two minors ahead: one write, v1.31's highest image on the way.
    let got = run_chained(s, &cluster, &target("v1.32.1", "i-1321"), &chain_images());
    let gates::Plan::Write(step) = got else {
        panic!("{got:?}")
    };
    assert_eq!(step.version_string(), "v1.32.1");
    assert_eq!(step.id, "i-1321");
    assert_eq!(step.from, "v1.30.5");
    assert_eq!(
        step.variable.unwrap().value,
        json!({"byKubernetesVersion": {"v1.30.5": "i-1305", "v1.31.4": "i-1314", "v1.32.1": "i-1321"}})
    );
    // Without the ClusterClass naming our handler: one minor.
    let got = run(s, &cluster, &target("v1.32.1", "i-1321"), &chain_images());
    let gates::Plan::Write(step) = got else {
        panic!("{got:?}")
    };
    assert_eq!(step.version_string(), "v1.31.4");
    assert_eq!(
        step.variable.unwrap().value,
        json!({"byKubernetesVersion": {"v1.30.5": "i-1305", "v1.31.4": "i-1314"}})
    );
    // A variable created by the step holds every entry; three minors give three entries.
    let create = ImageMap {
        variable: "osImages".into(),
        field: None,
        create: Some(true),
    };
    let got = run_chained(
        UpgraderSpecView {
            image_map: Some(&create),
            ..spec(&r)
        },
        &found("v1.30.5", vec![], true),
        &target("v1.33.0", "i-1330"),
        &chain_images(),
    );
    let gates::Plan::Write(step) = got else {
        panic!("{got:?}")
    };
    assert_eq!(step.version_string(), "v1.33.0");
    let variable = step.variable.unwrap();
    assert!(variable.created);
    assert_eq!(
        variable.value,
        json!({"v1.31.4": "i-1314", "v1.32.1": "i-1321", "v1.33.0": "i-1330"})
    );
}

#[test]
fn a_chained_step_holds_on_a_missing_minor_a_conflict_or_an_unfinished_upgrade() {
    let r = plan_ref();
    let map = ImageMap {
        variable: "osImages".into(),
        field: Some("byKubernetesVersion".into()),
        create: None,
    };
    let s = UpgraderSpecView {
        image_map: Some(&map),
        ..spec(&r)
    };
    let no_131: Vec<Image> = chain_images()
        .into_iter()
        .filter(|i| i.version.minor != 31)
        .collect();
    let cluster = found("v1.30.5", os_images(&json!({})), true);
    let got = run_chained(s, &cluster, &target("v1.32.1", "i-1321"), &no_131);
    assert_eq!(reason(&got), Reason::NoImageForIntermediateMinor);
    // An existing entry for an intermediate version is never changed.
    let conflicting = found("v1.30.5", os_images(&json!({"v1.31.4": "other"})), true);
    let got = run_chained(
        s,
        &conflicting,
        &target("v1.32.1", "i-1321"),
        &chain_images(),
    );
    assert_eq!(reason(&got), Reason::ImageMapEntryConflict);
    // Cluster API walks the chain: the version written stays, a newer target waits.
    let walking = found(
        "v1.32.1",
        os_images(&json!({"v1.31.4": "i-1314", "v1.32.1": "i-1321"})),
        false,
    );
    let got = run_chained(s, &walking, &target("v1.32.1", "i-1321"), &chain_images());
    assert_eq!(reason(&got), Reason::RollingOut);
    let got = run_chained(s, &walking, &target("v1.33.0", "i-1330"), &chain_images());
    assert_eq!(reason(&got), Reason::PreviousStepUnfinished);
    // Finished at the target with every entry: nothing to write.
    let done = found(
        "v1.32.1",
        os_images(&json!({"v1.31.4": "i-1314", "v1.32.1": "i-1321"})),
        true,
    );
    let got = run_chained(s, &done, &target("v1.32.1", "i-1321"), &chain_images());
    assert_eq!(reason(&got), Reason::ClusterUsingLatestVersion);
}

#[test]
fn single_variable_modes_step_one_minor_even_when_chained() {
    let r = plan_ref();
    for s in [
        UpgraderSpecView {
            topology_variable: Some("image"),
            create_topology_variable: true,
            ..spec(&r)
        },
        spec(&r),
    ] {
        let got = run_chained(
            s,
            &found("v1.30.5", vec![], true),
            &target("v1.32.1", "i-1321"),
            &chain_images(),
        );
        let gates::Plan::Write(step) = got else {
            panic!("{got:?}")
        };
        assert_eq!(step.version_string(), "v1.31.4");
        assert_eq!(step.id, "i-1314");
    }
}

fn chain_observation(chained: bool) -> observe::Observation {
    observe::Observation {
        namespace: "team".into(),
        plan: target("v1.32.1", "i-1321"),
        images: chain_images(),
        records: Vec::new(),
        retry_hosts: None,
        cluster: found("v1.30.5", os_images(&json!({})), true),
        raw: None,
        access: None,
        cached: false,
        wanted: None,
        in_place: None,
        stamps: in_place::verify::Stamps::new(),
        hosts: None,
        claimed_by: None,
        chained,
        membership: None,
    }
}

#[test]
fn a_declined_chain_is_said_once_as_a_climb_starts() {
    let r = plan_ref();
    let single = UpgraderSpecView {
        topology_variable: Some("image"),
        create_topology_variable: true,
        ..spec(&r)
    };
    let idle = UpgraderStatus::default();
    let subject = |spec, status| decide::Subject {
        spec,
        status,
        generation: Some(1),
    };
    let said = |d: &decide::Decision| {
        d.notes
            .iter()
            .filter(|n| n.reason == chain::NEEDS_IMAGE_MAP)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (d, _) = decide::reconcile_decision(
        subject(single, &idle),
        &chain_observation(true),
        timestamp(),
    );
    assert_eq!(
        d.write.as_ref().map(gates::Step::version_string).as_deref(),
        Some("v1.31.4")
    );
    let notes = said(&d);
    assert_eq!(notes.len(), 1, "{:?}", d.notes);
    assert!(!notes[0].warning);
    assert!(
        notes[0].message.contains("spec.imageMap"),
        "{}",
        notes[0].message
    );
    // The step written leaves the next one pending: the following reconciles say nothing.
    let mut d = d;
    let step = d.write.clone().unwrap();
    let written = json!({"metadata": {"name": "c", "generation": 2}, "spec": {"topology": {"classRef": {"name": "cc"}, "version": "v1.31.4", "variables": [{"name": "image", "value": "i-1314"}]}}});
    let post = decide::after_write(
        subject(single, &idle),
        &chain_observation(true),
        &written,
        finish::ClusterApi::V1Beta2,
        &step,
        timestamp(),
    );
    decide::settle_after_write(&mut d, &post);
    assert_eq!(
        d.status.next_step.as_ref().map(|n| n.version.as_str()),
        Some("v1.32.1"),
        "{:?}",
        d.status
    );
    let (d2, _) = decide::reconcile_decision(
        subject(single, &d.status),
        &chain_observation(true),
        timestamp(),
    );
    assert!(said(&d2).is_empty(), "{:?}", d2.notes);
    // Not offered by the ClusterClass: nothing said.
    let (d, _) = decide::reconcile_decision(
        subject(single, &idle),
        &chain_observation(false),
        timestamp(),
    );
    assert!(said(&d).is_empty());
    // Map mode takes the chain: the target in one write, nothing said.
    let map = ImageMap {
        variable: "osImages".into(),
        field: Some("byKubernetesVersion".into()),
        create: None,
    };
    let mapped = UpgraderSpecView {
        image_map: Some(&map),
        ..spec(&r)
    };
    let (d, _) = decide::reconcile_decision(
        subject(mapped, &idle),
        &chain_observation(true),
        timestamp(),
    );
    assert_eq!(
        d.write.as_ref().map(gates::Step::version_string).as_deref(),
        Some("v1.32.1")
    );
    assert!(said(&d).is_empty());
}

prop_compose! {
    fn version()(minor in 26u64..34, patch in 0u64..4) -> Version { Version::new(1, minor, patch) }
}

proptest! {
    #[test]
    fn the_planner_never_breaks_an_invariant(
        current in version(),
        image_versions in proptest::collection::vec(version(), 0..8),
        target_index in 0usize..10,
        finished in any::<bool>(),
        cluster_paused in any::<bool>(),
        paused in any::<bool>(),
        dry_run in any::<bool>(),
        window in proptest::option::of((0u32..24, 1u32..6, prop_oneof![Just("UTC"), Just("Europe/Berlin"), Just("America/New_York"), Just("Australia/Lord_Howe")])),
        clock in 1_767_225_600i64..1_798_761_600,
    ) {
        let images: Vec<Image> = image_versions.iter().map(|v| img(&format!("v{v}"), &format!("id-{v}"))).collect();
        let plan = match images.get(target_index) {
            Some(i) => target(&i.spec_version, &i.id),
            None => target("v1.33.3", "not-ready"),
        };
        let w = window.map(|(hour, hours, zone)| MaintenanceWindow { schedule: format!("0 {hour} * * *"), duration: format!("{hours}h"), time_zone: Some(zone.into()) });
        let r = plan_ref();
        let s = UpgraderSpecView { paused, dry_run, maintenance_window: w.as_ref(), topology_variable: Some("image"), create_topology_variable: true, ..spec(&r) };
        let cluster = ClusterState::Found(ClusterView {
            paused: cluster_paused,
            topology: Some(Topology { version: format!("v{current}"), variables: vec![] }),
            finished: if finished { Ok(()) } else { Err("rolling".into()) },
            labels: std::collections::BTreeMap::new(),
            available: None,
            admission: crate::controllers::rollout::Admission::Unrestricted,
        });
        let now = Timestamp::from_second(clock).unwrap();
        let got = gates::plan(&Inputs { spec: s, cluster: &cluster, plan: &plan, images: &images, now, chained: false });
        if let gates::Plan::Write(step) = got {
            // S1: never a downgrade.
            prop_assert!(step.version >= current);
            // S2: same major, at most one minor.
            prop_assert_eq!(step.version.major, current.major);
            prop_assert!(step.version.minor <= current.minor + 1);
            // S3: a ready image of exactly that version.
            prop_assert!(images.iter().any(|i| i.id == step.id && i.version == step.version));
            // S4, S6, dry run.
            prop_assert!(finished && !cluster_paused && !paused && !dry_run);
            // S7: inside the window.
            if let Some(w) = &w {
                let open = matches!(window::Window::parse(w).unwrap().at(now), window::Opening::Open { .. });
                prop_assert!(open);
            }
            // The variable goes in the same write.
            prop_assert_eq!(step.variable.map(|v| v.value), Some(json!(step.id)));
        }
    }
}

proptest! {
    #[test]
    fn a_chained_write_never_downgrades_nor_skips_a_version_without_its_image(
        current in version(),
        image_versions in proptest::collection::vec(version(), 0..10),
        target_index in 0usize..12,
        present in proptest::collection::btree_map(version(), any::<bool>(), 0..4),
    ) {
        let images: Vec<Image> = image_versions.iter().map(|v| img(&format!("v{v}"), &format!("id-{v}"))).collect();
        let plan = match images.get(target_index) {
            Some(i) => target(&i.spec_version, &i.id),
            None => target("v1.33.3", "not-ready"),
        };
        // Entries already in the map: the right image or another one.
        let existing: serde_json::Map<String, Value> = present
            .iter()
            .map(|(v, right)| (format!("v{v}"), json!(if *right { format!("id-{v}") } else { "other".to_owned() })))
            .collect();
        let map = ImageMap { variable: "osImages".into(), field: None, create: None };
        let r = plan_ref();
        let s = UpgraderSpecView { image_map: Some(&map), ..spec(&r) };
        let cluster = found(&format!("v{current}"), vec![Variable { name: "osImages".into(), value: Value::Object(existing.clone()) }], true);
        let got = run_chained(s, &cluster, &plan, &images);
        if let gates::Plan::Write(step) = got {
            // S1: never a downgrade.
            prop_assert!(step.version >= current);
            prop_assert_eq!(step.version.major, current.major);
            let entries = step.variable.clone().unwrap().value;
            let entries = entries.as_object().unwrap();
            // Existing entries are kept as they were.
            for (key, value) in &existing {
                prop_assert_eq!(entries.get(key), Some(value));
            }
            // Every minor on the way has an entry holding the Plan's ready image of its version,
            // and the written version's entry is the step's image.
            for minor in current.minor + 1..=step.version.minor {
                let entry = entries.iter().find(|(key, value)| {
                    let version = v(key);
                    version.major == current.major
                        && version.minor == minor
                        && images.iter().any(|i| i.version == version && json!(i.id) == **value)
                });
                prop_assert!(entry.is_some(), "no entry for minor {} in {:?}", minor, entries);
            }
            for (key, value) in entries {
                if existing.contains_key(key) {
                    continue;
                }
                let version = v(key);
                prop_assert!(version >= current && version <= step.version);
                prop_assert!(images.iter().any(|i| i.version == version && json!(i.id) == *value), "{key} -> {value} is not a ready image");
            }
            prop_assert_eq!(entries.get(&step.version_string()), Some(&json!(step.id)));
            prop_assert!(images.iter().any(|i| i.id == step.id && i.version == step.version));
        }
    }
}

// Choreography.

fn upgrader(status: Option<Value>) -> ClusterClassClusterUpgrader {
    let upgrader = ClusterClassClusterUpgrader::test("u")
        .with_generation(1)
        .with_uid("u1");
    match status {
        Some(status) => upgrader.with_status(&status),
        None => upgrader,
    }
}

fn access() -> cluster::Access {
    let gvk = GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", "Cluster");
    cluster::Access {
        api: finish::ClusterApi::V1Beta2,
        resource: ApiResource::from_gvk_with_plural(&gvk, "clusters"),
        list_map: true,
    }
}

fn context() -> (Arc<Context>, Verifier) {
    context_with(access())
}

fn context_with(access: cluster::Access) -> (Arc<Context>, Verifier) {
    let (client, verifier) = mock_client();
    let (plans, mut plan_writer) = reflector::store();
    let p = Plan::test("p").found("v1.30.2", "i-1302");
    plan_writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(p))));
    let (images, mut image_writer) = reflector::store();
    let i = MachineImage::test("i")
        .with_version("v1.30.2")
        .ready("i-1302");
    image_writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(i))));
    let metrics = Arc::new(crate::runtime::Metrics::default())
        .controller("clusterclassclusterupgrader", Error::CATEGORIES);
    let ctx = Context::new(client, metrics, Some("test".into()), plans, images).with_access(access);
    (Arc::new(ctx), verifier)
}

fn cluster_json(version: &str, image: &str) -> Value {
    let mut cluster = finish::tests::finished_v1beta2(version);
    cluster["apiVersion"] = json!("cluster.x-k8s.io/v1beta2");
    cluster["kind"] = json!("Cluster");
    cluster["metadata"] = json!({"name": "c", "namespace": "team", "generation": 3});
    cluster["spec"] = json!({"topology": {"version": version, "classRef": {"name": "cc"}, "variables": [{"name": "image", "value": image}, {"name": "other", "value": 1}]}});
    cluster
}

const CLUSTER_URL: &str = "/apis/cluster.x-k8s.io/v1beta2/namespaces/team/clusters/c";

/// Before a step, the Cluster's Machines are listed for the spare-host gate: none here, so the
/// Cluster is not on Elemental.
async fn no_machines(server: &mut crate::runtime::fixtures::Verifier) {
    let list = server.next().await;
    assert_eq!(list.method, Method::GET);
    assert_eq!(
        list.uri,
        "/apis/cluster.x-k8s.io/v1beta2/namespaces/team/machines?&labelSelector=cluster.x-k8s.io%2Fcluster-name%3Dc"
    );
    list.ok(&json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineList", "metadata": {}, "items": []}));
}

#[tokio::test]
async fn a_step_is_one_server_side_apply_then_status_then_one_event() {
    let (ctx, verifier) = context();
    let scenario = verifier.run(|mut server| async move {
        let get = server.next().await;
        assert_eq!((get.method.clone(), get.uri.as_str()), (Method::GET, CLUSTER_URL));
        get.ok(&cluster_json("v1.30.1", "i-1301"));
        no_machines(&mut server).await;
        let apply = server.next().await;
        assert_eq!(apply.method, Method::PATCH);
        assert_eq!(apply.uri, format!("{CLUSTER_URL}?&force=true&fieldManager={FIELD_MANAGER}"));
        assert_eq!(apply.body["spec"], json!({"topology": {"version": "v1.30.2", "variables": [{"name": "image", "value": "i-1302"}]}}));
        assert_eq!(crate::runtime::fixtures::sorted_keys(&apply.body), ["apiVersion", "kind", "metadata", "spec"]);
        apply.ok(&cluster_json("v1.30.2", "i-1302"));
        let status = server.expect_status_apply::<ClusterClassClusterUpgrader>("team", "u", FIELD_MANAGER).await;
        assert_eq!(status.body["status"]["latestSetVersion"], "v1.30.2");
        assert_eq!(status.body["status"]["history"][0]["to"], "v1.30.2");
        assert_eq!(status.body["status"]["history"][0]["from"], "v1.30.1");
        status.ok(&serde_json::to_value(upgrader(None)).unwrap());
        server.expect_event("team", COMPONENT, "SettingClusterVersion").await;
        server
    });
    within(
        "reconcile",
        STEP,
        reconcile_upgrader(&upgrader(None), &ctx, timestamp()),
    )
    .await
    .unwrap();
    scenario.finish().await;
}

/// A step decided on the Cluster watch's view of a Cluster is written from a fresh read with the
/// same resourceVersion: the guarded JSON patch pins the variables list as the API server holds
/// it, fields the view does not keep included.
#[tokio::test]
async fn a_step_decided_from_the_cache_is_written_from_the_fresh_read() {
    let atomic = cluster::Access {
        list_map: false,
        ..access()
    };
    let (ctx, verifier) = context_with(atomic.clone());
    let mut served = cluster_json("v1.30.1", "i-1301");
    served["metadata"]["resourceVersion"] = json!("7");
    served["spec"]["topology"]["variables"][1]["definitionFrom"] = json!("inline");
    let mut view: DeserializeGuard<CachedCluster> = serde_json::from_value(served.clone()).unwrap();
    crate::runtime::projection::Projected::project(&mut view);
    let mut writer = reflector::store::Writer::new(atomic.resource.clone());
    writer.apply_watcher_event(&watcher::Event::Apply(view));
    assert!(ctx.clusters.set(writer.as_reader()).is_ok());
    assert!(
        ctx.cached_cluster("team", "c").unwrap()["spec"]["topology"]["variables"][1]
            .get("definitionFrom")
            .is_none()
    );
    let scenario = verifier.run(|mut server| async move {
        // The Cluster comes from the store: the first call is the Machines' list.
        no_machines(&mut server).await;
        let get = server.next().await;
        assert_eq!((get.method.clone(), get.uri.as_str()), (Method::GET, CLUSTER_URL));
        get.ok(&served);
        let patch = server.next().await;
        assert_eq!(patch.method, Method::PATCH);
        assert_eq!(patch.uri, format!("{CLUSTER_URL}?&fieldManager={FIELD_MANAGER}"));
        assert_eq!(
            patch.body[2],
            json!({"op": "test", "path": "/spec/topology/variables", "value": served["spec"]["topology"]["variables"]})
        );
        assert_eq!(patch.body[3], json!({"op": "replace", "path": "/spec/topology/variables/0/value", "value": "i-1302"}));
        patch.ok(&cluster_json("v1.30.2", "i-1302"));
        let status = server.expect_status_apply::<ClusterClassClusterUpgrader>("team", "u", FIELD_MANAGER).await;
        assert_eq!(status.body["status"]["latestSetVersion"], "v1.30.2");
        status.ok(&serde_json::to_value(upgrader(None)).unwrap());
        server.expect_event("team", COMPONENT, "SettingClusterVersion").await;
        server
    });
    within(
        "reconcile",
        STEP,
        reconcile_upgrader(&upgrader(None), &ctx, timestamp()),
    )
    .await
    .unwrap();
    scenario.finish().await;
}

/// The step's status is the one the next reconcile computes from the written Cluster (its new
/// generation not yet observed), so that reconcile writes nothing: one status write per step.
#[tokio::test]
async fn a_step_writes_the_status_once() {
    let mut written = cluster_json("v1.30.2", "i-1302");
    written["metadata"]["generation"] = json!(4);
    let first = {
        let (ctx, verifier) = context();
        let mut server = verifier;
        let answer = written.clone();
        let scenario = tokio::spawn(async move {
            server.next().await.ok(&cluster_json("v1.30.1", "i-1301"));
            no_machines(&mut server).await;
            server.next().await.ok(&answer);
            let status = server
                .expect_status_apply::<ClusterClassClusterUpgrader>("team", "u", FIELD_MANAGER)
                .await;
            let body = status.body["status"].clone();
            status.ok(&serde_json::to_value(upgrader(None)).unwrap());
            server
                .expect_event("team", COMPONENT, "SettingClusterVersion")
                .await;
            (server, body)
        });
        within(
            "reconcile",
            STEP,
            reconcile_upgrader(&upgrader(None), &ctx, timestamp()),
        )
        .await
        .unwrap();
        let (server, body) = within("scenario", STEP, scenario).await.unwrap();
        server.assert_no_more_calls().await;
        body
    };
    let progressing = first["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap();
    assert_eq!(progressing["reason"], "RollingOut", "{first:#}");
    assert_eq!(progressing["status"], "True");
    assert_eq!(first["latestSetVersion"], "v1.30.2");
    assert_eq!(first["history"][0]["to"], "v1.30.2");
    // The reconcile the write itself triggers reads the same Cluster and writes nothing.
    let (ctx, verifier) = context();
    let scenario = verifier.run(|mut server| async move {
        server.next().await.ok(&written);
        server
    });
    within(
        "reconcile",
        STEP,
        reconcile_upgrader(&upgrader(Some(first)), &ctx, timestamp()),
    )
    .await
    .unwrap();
    scenario.finish().await;
}

#[tokio::test]
async fn nothing_to_do_is_one_read_and_no_write() {
    let (ctx, verifier) = context();
    let first = {
        let (ctx, verifier) = context();
        let mut server = verifier;
        let scenario = tokio::spawn(async move {
            server.next().await.ok(&cluster_json("v1.30.2", "i-1302"));
            let status = server
                .expect_status_apply::<ClusterClassClusterUpgrader>("team", "u", FIELD_MANAGER)
                .await;
            let body = status.body["status"].clone();
            status.ok(&serde_json::to_value(upgrader(None)).unwrap());
            server
                .expect_event("team", COMPONENT, "ClusterUsingLatestVersion")
                .await;
            (server, body)
        });
        within(
            "reconcile",
            STEP,
            reconcile_upgrader(&upgrader(None), &ctx, timestamp()),
        )
        .await
        .unwrap();
        let (server, body) = within("scenario", STEP, scenario).await.unwrap();
        server.assert_no_more_calls().await;
        body
    };
    assert_eq!(first["latestSetVersion"], "v1.30.2");
    let scenario = verifier.run(|mut server| async move {
        server.next().await.ok(&cluster_json("v1.30.2", "i-1302"));
        server
    });
    within(
        "reconcile",
        STEP,
        reconcile_upgrader(&upgrader(Some(first)), &ctx, timestamp()),
    )
    .await
    .unwrap();
    scenario.finish().await;
}

fn atomic_context() -> (Arc<Context>, Verifier) {
    let (ctx, verifier) = context();
    let ctx = Arc::try_unwrap(ctx).ok().unwrap();
    let mut atomic = access();
    atomic.list_map = false;
    (Arc::new(ctx.with_access(atomic)), verifier)
}

#[tokio::test]
async fn on_an_atomic_variables_list_a_step_is_one_guarded_json_patch() {
    let (ctx, verifier) = atomic_context();
    let scenario = verifier.run(|mut server| async move {
        let read = cluster_json("v1.30.1", "i-1301");
        server.next().await.ok(&read);
        no_machines(&mut server).await;
        let patch = server.next().await;
        assert_eq!(patch.method, Method::PATCH);
        assert_eq!(
            patch.uri,
            format!("{CLUSTER_URL}?&fieldManager={FIELD_MANAGER}")
        );
        let variables = read["spec"]["topology"]["variables"].clone();
        assert_eq!(
            patch.body,
            json!([
                {"op": "test", "path": "/spec/topology/version", "value": "v1.30.1"},
                {"op": "replace", "path": "/spec/topology/version", "value": "v1.30.2"},
                {"op": "test", "path": "/spec/topology/variables", "value": variables},
                {"op": "replace", "path": "/spec/topology/variables/0/value", "value": "i-1302"},
            ])
        );
        patch.ok(&cluster_json("v1.30.2", "i-1302"));
        let status = server
            .expect_status_apply::<ClusterClassClusterUpgrader>("team", "u", FIELD_MANAGER)
            .await;
        status.ok(&serde_json::to_value(upgrader(None)).unwrap());
        server
            .expect_event("team", COMPONENT, "SettingClusterVersion")
            .await;
        server
    });
    within(
        "reconcile",
        STEP,
        reconcile_upgrader(&upgrader(None), &ctx, timestamp()),
    )
    .await
    .unwrap();
    scenario.finish().await;
}

#[tokio::test]
async fn a_refused_write_is_one_warning_and_no_status_claiming_it() {
    let (ctx, verifier) = atomic_context();
    let scenario = verifier.run(|mut server| async move {
        server.next().await.ok(&cluster_json("v1.30.1", "i-1301"));
        no_machines(&mut server).await;
        // A `test` operation failed: someone changed the Cluster in between. The reconcile
        // publishes nothing itself: its error becomes the one Warning (`Reporter`).
        server.next().await.fail(422, "Invalid");
        server
    });
    let result = within(
        "reconcile",
        STEP,
        reconcile_upgrader(&upgrader(None), &ctx, timestamp()),
    )
    .await;
    let err = result.expect_err("a refused write fails the reconcile");
    assert!(matches!(err, Error::WriteCluster(..)), "{err:?}");
    assert_eq!(err.event_reason(), "ErrorUpdatingVersion");
    assert!(err.to_string().contains("v1.30.2"), "{err}");
    scenario.finish().await;
}

#[tokio::test]
async fn an_unfinished_cluster_gets_no_write_only_the_waiting_status() {
    let (ctx, verifier) = context();
    let scenario = verifier.run(|mut server| async move {
        let mut read = cluster_json("v1.30.1", "i-1301");
        read["metadata"]["generation"] = json!(4);
        server.next().await.ok(&read);
        let status = server
            .expect_status_apply::<ClusterClassClusterUpgrader>("team", "u", FIELD_MANAGER)
            .await;
        assert_eq!(
            status.body["status"]["nextStep"]["reason"],
            "PreviousStepUnfinished"
        );
        assert_eq!(status.body["status"]["nextStep"]["version"], "v1.30.2");
        status.ok(&serde_json::to_value(upgrader(None)).unwrap());
        server
    });
    within(
        "reconcile",
        STEP,
        reconcile_upgrader(&upgrader(None), &ctx, timestamp()),
    )
    .await
    .unwrap();
    scenario.finish().await;
}

fn with_admission(admission: crate::controllers::rollout::Admission) -> ClusterState {
    let ClusterState::Found(mut view) = found("v1.30.1", vec![], true) else {
        unreachable!()
    };
    view.admission = admission;
    ClusterState::Found(view)
}

#[test]
fn a_rollout_holds_every_step_until_the_cluster_is_admitted() {
    use crate::controllers::rollout::Admission;
    let r = plan_ref();
    let plan = target("v1.30.2", "i-1302");
    let soak_end = timestamp() + jiff::SignedDuration::from_secs(300);
    let waiting = run(
        spec(&r),
        &with_admission(Admission::Waiting {
            wave: "prod".into(),
            not_before: Some(soak_end),
        }),
        &plan,
        &images(),
    );
    let gates::Plan::Hold { hold, .. } = &waiting else {
        panic!("{waiting:?}")
    };
    assert_eq!(hold.reason, Reason::WaitingForWave);
    assert_eq!(hold.not_before, Some(soak_end));
    assert!(hold.message.contains("prod"), "{}", hold.message);
    assert_eq!(hold.step.as_ref().map(|s| s.id.as_str()), Some("i-1302"));
    // It looks again a moment after the soak ends; with no end known, the Plan's write wakes it.
    let now = Time(timestamp());
    let observed = decide::Observed {
        generation: Some(1),
        status: &UpgraderStatus::default(),
        cluster: "c",
        rollout: None,
        now: &now,
    };
    assert_eq!(
        decide::decide(&waiting, &observed).requeue,
        Some(Duration::from_secs(300) + decide::WAVE_OPENING_GRACE)
    );
    let unknown = run(
        spec(&r),
        &with_admission(Admission::Waiting {
            wave: "prod".into(),
            not_before: None,
        }),
        &plan,
        &images(),
    );
    assert_eq!(reason(&unknown), Reason::WaitingForWave);
    assert_eq!(decide::decide(&unknown, &observed).requeue, None);
    let conditions = decide::hold_conditions(hold);
    assert_eq!(
        conditions[1].status,
        api::conditions::Status::True,
        "Progressing"
    );
    assert_eq!(
        conditions[2].status,
        api::conditions::Status::False,
        "Blocked"
    );

    let halted = run(
        spec(&r),
        &with_admission(Admission::Halted("Cluster c1 failed".into())),
        &plan,
        &images(),
    );
    assert_eq!(reason(&halted), Reason::RolloutHalted);
    let gates::Plan::Hold { hold, .. } = &halted else {
        panic!("{halted:?}")
    };
    assert_eq!(
        decide::hold_conditions(hold)[2].status,
        api::conditions::Status::True,
        "Blocked"
    );
    let outside = run(
        spec(&r),
        &with_admission(Admission::NotInAnyWave),
        &plan,
        &images(),
    );
    assert_eq!(reason(&outside), Reason::NotInAnyWave);
    let admitted = run(
        spec(&r),
        &with_admission(Admission::Admitted),
        &plan,
        &images(),
    );
    assert!(matches!(admitted, gates::Plan::Write(_)), "{admitted:?}");
    // Admitted, the other gates still hold: a paused Cluster writes nothing.
    let ClusterState::Found(mut paused) = with_admission(Admission::Admitted) else {
        unreachable!()
    };
    paused.paused = true;
    let held = run(spec(&r), &ClusterState::Found(paused), &plan, &images());
    assert_eq!(reason(&held), Reason::ClusterPaused);
    // A Cluster already at the target needs no admission.
    let ClusterState::Found(mut at_target) = found("v1.30.2", vec![], true) else {
        unreachable!()
    };
    at_target.admission = Admission::NotInAnyWave;
    let done = run(spec(&r), &ClusterState::Found(at_target), &plan, &images());
    assert_eq!(reason(&done), Reason::ClusterUsingLatestVersion);
}
