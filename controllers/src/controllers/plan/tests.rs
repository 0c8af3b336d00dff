//! Decision tables and choreography of the Plan controller.

use super::*;
use crate::controllers::images;
use crate::runtime::builders::{Build, Fixture, ImageBuild, PlanBuild, at, now};
use crate::runtime::fixtures::{STEP, Verifier, mock_client, within};
use api::constraint::VersionRange;
use api::v1alpha1::PlanPhase;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};

fn image(name: &str, version: &str, id: &str, ready: bool, labels: &Value) -> MachineImage {
    let mut image = MachineImage::test(name).with_version(version).ready(id);
    for (key, value) in labels.as_object().unwrap() {
        image = image.with_label(key, value.as_str().unwrap());
    }
    if ready { image } else { image.unready() }
}

fn plan(range: &str, selector: Option<Value>) -> Plan {
    let plan = Plan::test("p")
        .with_uid("u1")
        .with_generation(2)
        .with_range(range);
    match selector {
        Some(selector) => plan.with_spec(&json!({"machineImageSelector": selector})),
        None => plan,
    }
}

fn images() -> Vec<MachineImage> {
    vec![
        image("b-1-27-2", "v1.27.2", "img-b", true, &json!({"v": "1"})),
        image("a-1-27-2", "v1.27.2", "img-a", true, &json!({"v": "1"})),
        image("c-1-27-3", "v1.27.3", "img-c", true, &json!({"v": "0"})),
        image("d-1-26-6", "v1.26.6", "img-d", true, &json!({"v": "1"})),
        image("e-1-27-9", "v1.27.9", "img-e", false, &json!({"v": "1"})),
        image("f-1-28-1", "v1.28.1", "", true, &json!({"v": "1"})),
    ]
}

fn decide_for(p: &Plan, imgs: &[MachineImage]) -> decide::Decision {
    let usable = images::usable(imgs, "team", p.spec.machine_image_selector.as_ref());
    decide::decide(
        &p.spec,
        Some(2),
        "team",
        &usable,
        &PlanStatus::default(),
        &now(),
    )
}

#[test]
fn found_picks_the_highest_ready_image_with_an_id_and_ties_go_to_the_first_name() {
    let d = decide_for(
        &plan(">=1.26.0", Some(json!({"matchLabels": {"v": "1"}}))),
        &images(),
    );
    assert_eq!(d.status.phase, Some(PlanPhase::FoundMachineImage));
    let details = d.status.machine_image_details.unwrap();
    // e (not ready), f (no id) and c (label) are skipped; a and b tie, a's name sorts first.
    assert_eq!(details.id, "img-a");
    assert_eq!(details.version.as_deref(), Some("v1.27.2"));
    assert_eq!(
        d.status.machine_image_ref.unwrap().name.as_deref(),
        Some("a-1-27-2")
    );
    let ready = &d.status.conditions.unwrap()[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "FoundMachineImage")
    );
    assert!(d.notes.is_empty());
    let candidates: Vec<(String, String)> = d
        .status
        .candidates
        .unwrap()
        .into_iter()
        .map(|c| (c.version, c.name))
        .collect();
    assert_eq!(
        candidates,
        [
            ("v1.26.6".into(), "d-1-26-6".into()),
            ("v1.27.2".into(), "a-1-27-2".into())
        ]
    );
}

#[test]
fn an_omitted_selector_matches_every_image() {
    let d = decide_for(&plan("v1.27.x", None), &images());
    assert_eq!(d.status.machine_image_details.unwrap().id, "img-c");
}

#[test]
fn nothing_in_range_clears_the_details_and_warns_once() {
    let p = plan("v1.30.x", None);
    let usable = images::usable(&images(), "team", None);
    let found = decide::decide(
        &plan("v1.27.x", None).spec,
        Some(2),
        "team",
        &usable,
        &PlanStatus::default(),
        &now(),
    );
    let d = decide::decide(&p.spec, Some(2), "team", &usable, &found.status, &now());
    assert_eq!(d.status.phase, Some(PlanPhase::NoSuitableMachineImage));
    assert_eq!(d.status.machine_image_details, None);
    assert_eq!(d.status.machine_image_ref, None);
    let ready = &d.status.conditions.as_ref().unwrap()[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NoSuitableMachineImage")
    );
    assert_eq!(d.notes.len(), 1);
    assert_eq!(d.notes[0].reason, "LatestVersionNotFound");
    assert!(d.notes[0].warning);
    let again = decide::decide(&p.spec, Some(2), "team", &usable, &d.status, &now());
    assert!(again.notes.is_empty(), "only on the transition");
    assert_eq!(again.status, d.status);
}

#[test]
fn an_invalid_range_is_its_own_reason() {
    let d = decide_for(&plan("1x", None), &images());
    let ready = &d.status.conditions.unwrap()[0];
    assert_eq!(ready.reason, "InvalidVersionRange");
    assert!(ready.message.contains("spec.versionRange"));
    assert_eq!(d.status.phase, Some(PlanPhase::NoSuitableMachineImage));
}

#[test]
fn images_of_other_namespaces_do_not_count() {
    let mut other = image("z", "v1.29.0", "img-z", true, &json!({}));
    other.metadata.namespace = Some("elsewhere".into());
    let d = decide_for(&plan("*", None), &[other]);
    assert_eq!(d.status.phase, Some(PlanPhase::NoSuitableMachineImage));
}

fn context(imgs: Vec<MachineImage>) -> (Arc<Context>, Verifier) {
    context_with(imgs, vec![])
}

fn context_with(
    imgs: Vec<MachineImage>,
    upgraders: Vec<ClusterClassClusterUpgrader>,
) -> (Arc<Context>, Verifier) {
    let (client, verifier) = mock_client();
    let (class_upgraders, mut class_writer) = reflector::store();
    for u in upgraders {
        class_writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(u))));
    }
    let (in_cluster_upgraders, _) = reflector::store();
    let (reader, mut writer) = reflector::store();
    for i in imgs {
        writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(i))));
    }
    let metrics =
        Arc::new(crate::runtime::Metrics::default()).controller(CONTROLLER, Error::CATEGORIES);
    let ctx = Context {
        core: Core::new(client, metrics, Some("test".into()), COMPONENT),
        images: reader,
        class_upgraders,
        in_cluster_upgraders,
    };
    (Arc::new(ctx), verifier)
}

#[tokio::test]
async fn the_first_sync_is_one_status_write_and_the_steady_state_none() {
    let (ctx, verifier) = context(images());
    let p = plan("v1.27.x", Some(json!({"matchLabels": {"v": "1"}})));
    let scenario = verifier.run(|mut server| async move {
        let call = server
            .expect_status_apply::<Plan>("team", "p", FIELD_MANAGER)
            .await;
        assert_eq!(call.body["status"]["phase"], "FoundMachineImage");
        assert_eq!(
            call.body["status"]["machineImageDetails"],
            json!({"version": "v1.27.2", "id": "img-a"})
        );
        assert_eq!(call.body["status"]["observedGeneration"], 2);
        let mut applied = serde_json::to_value(plan("v1.27.x", None)).unwrap();
        applied["status"] = call.body["status"].clone();
        call.ok(&applied);
        server
    });
    within("reconcile", STEP, reconcile_plan(&p, &ctx, &now()))
        .await
        .unwrap();
    scenario.finish().await;

    let mut synced = p.clone();
    synced.status = Some(decide_for(&p, &images()).status);
    let (ctx, verifier) = context(images());
    let scenario = verifier.run(|server| async move { server });
    within("reconcile", STEP, reconcile_plan(&synced, &ctx, &now()))
        .await
        .unwrap();
    scenario.finish().await;
}

#[tokio::test]
async fn no_image_is_a_status_write_then_one_warning() {
    let (ctx, verifier) = context(vec![]);
    let p = plan("v1.27.x", None);
    let scenario = verifier.run(|mut server| async move {
        let call = server
            .expect_status_apply::<Plan>("team", "p", FIELD_MANAGER)
            .await;
        assert_eq!(call.body["status"]["phase"], "NoSuitableMachineImage");
        let body = serde_json::to_value(plan("v1.27.x", None)).unwrap();
        call.ok(&body);
        server
            .expect_event("team", COMPONENT, "LatestVersionNotFound")
            .await;
        server
    });
    within("reconcile", STEP, reconcile_plan(&p, &ctx, &now()))
        .await
        .unwrap();
    scenario.finish().await;
}

#[test]
fn on_equal_versions_the_newest_build_wins_then_the_newest_static_image() {
    let mut first = image(
        "a-os-b1",
        "v1.31.1",
        "oci://r/os@sha256:b1",
        true,
        &json!({}),
    );
    first.status.as_mut().unwrap().build_completion_time = Some(at(10));
    let mut rebuilt = image(
        "z-os-b2",
        "v1.31.1",
        "oci://r/os@sha256:b2",
        true,
        &json!({}),
    );
    rebuilt.status.as_mut().unwrap().build_completion_time = Some(at(20));
    let p = plan(">=1.31.0", None);
    let chosen = decide_for(&p, &[first.clone(), rebuilt.clone()]);
    assert_eq!(
        chosen.status.machine_image_details.unwrap().id,
        "oci://r/os@sha256:b2"
    );
    // Static images: the most recently created.
    let mut old = image("a-static", "v1.31.1", "static-old", true, &json!({}));
    old.metadata.creation_timestamp = Some(at(1));
    let mut new = image("b-static", "v1.31.1", "static-new", true, &json!({}));
    new.metadata.creation_timestamp = Some(at(2));
    let chosen = decide_for(&p, &[new, old]);
    assert_eq!(
        chosen.status.machine_image_details.unwrap().id,
        "static-new"
    );
    // A higher version still wins over a newer build.
    let mut higher = image("m-1-31-2", "v1.31.2", "higher", true, &json!({}));
    higher.status.as_mut().unwrap().build_completion_time = Some(at(1));
    let chosen = decide_for(&p, &[first, rebuilt, higher]);
    assert_eq!(chosen.status.machine_image_details.unwrap().id, "higher");
}

/// Images with ties on version (told apart by build time, then name), several minors, build
/// metadata, other namespaces, images that are not ready or have no ID, and other labels.
fn fleet() -> Vec<MachineImage> {
    let mut out = Vec::new();
    for (n, (version, made, labels)) in [
        ("v1.26.6", Some("2026-01-01T00:00:00Z"), json!({"v": "1"})),
        ("v1.27.2", Some("2026-01-02T00:00:00Z"), json!({"v": "1"})),
        ("v1.27.2", Some("2026-01-03T00:00:00Z"), json!({"v": "1"})),
        ("v1.27.2", None, json!({"v": "1"})),
        ("v1.27.3+b", Some("2026-01-01T00:00:00Z"), json!({"v": "1"})),
        ("v1.27.3+a", Some("2026-01-01T00:00:00Z"), json!({"v": "1"})),
        ("v1.27.9", Some("2026-01-05T00:00:00Z"), json!({"v": "0"})),
        (
            "v1.28.0-rc.1",
            Some("2026-01-06T00:00:00Z"),
            json!({"v": "1"}),
        ),
        ("v1.28.1", None, json!({"v": "1"})),
        ("v1.29.0", Some("2026-01-07T00:00:00Z"), json!({"v": "1"})),
    ]
    .into_iter()
    .enumerate()
    {
        let mut i = image(
            &format!("img-{n:02}"),
            version,
            &format!("id-{n}"),
            true,
            &labels,
        );
        i.status.as_mut().unwrap().build_completion_time = made.map(|t| Time(t.parse().unwrap()));
        out.push(i);
    }
    let mut elsewhere = image("other", "v1.30.0", "id-o", true, &json!({"v": "1"}));
    elsewhere.metadata.namespace = Some("other".into());
    out.push(elsewhere);
    out.push(image(
        "unready",
        "v1.29.5",
        "id-u",
        false,
        &json!({"v": "1"}),
    ));
    out.push(image("no-id", "v1.29.6", "", true, &json!({"v": "1"})));
    out
}

#[test]
fn the_one_pass_choice_decides_as_every_usable_image_does() {
    let images = fleet();
    let selectors = [None, Some(json!({"matchLabels": {"v": "1"}}))];
    let ranges = [
        ">=1.26.0",
        "v1.27.x",
        "~1.27.2",
        "<1.27.3",
        ">=1.28.0-0",
        "v1.31.x",
        "1.26.6 || 1.29.0",
    ];
    for selector in &selectors {
        for range in ranges {
            let p = plan(range, selector.clone());
            let selector = p.spec.machine_image_selector.as_ref();
            let all = images::usable(&images, "team", selector);
            let parsed = VersionRange::parse(range).unwrap();
            let few = images::choices(&images, "team", selector, &parsed);
            assert!(few.len() <= all.len());
            let minors: std::collections::BTreeSet<(u64, u64)> = few
                .iter()
                .map(|i| (i.version.major, i.version.minor))
                .collect();
            assert_eq!(minors.len(), few.len(), "one image per minor for {range}");
            let status = PlanStatus::default();
            let by_all = decide::decide(&p.spec, Some(2), "team", &all, &status, &now());
            let by_few = decide::decide(&p.spec, Some(2), "team", &few, &status, &now());
            assert_eq!(by_few, by_all, "{range} with {selector:?}");
        }
    }
    // The ties: the newest build of v1.27.2 wins, and of the two v1.27.3 builds the first name.
    let p = plan("v1.27.x", Some(json!({"matchLabels": {"v": "1"}})));
    let parsed = VersionRange::parse("<1.27.3").unwrap();
    let few = images::choices(
        &images,
        "team",
        p.spec.machine_image_selector.as_ref(),
        &parsed,
    );
    assert_eq!(
        few.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["img-02", "img-00"]
    );
    let parsed = VersionRange::parse("v1.27.x").unwrap();
    let few = images::choices(
        &images,
        "team",
        p.spec.machine_image_selector.as_ref(),
        &parsed,
    );
    assert_eq!(
        few.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["img-04"]
    );
}

fn rollout_plan() -> Plan {
    plan("v1.27.x", Some(json!({"matchLabels": {"v": "1"}}))).with_spec(&json!({
        "rollout": {"waves": [
            {"name": "canary", "clusterSelector": {"matchLabels": {"ring": "canary"}}, "soak": "30s"},
            {"name": "prod", "maxConcurrent": "50%"},
        ], "stepTimeout": "10m"},
    }))
}

/// An upgrader of Cluster `cluster` following Plan `p`, reporting `wave` and `status`.
fn upgrader(cluster: &str, wave: &str, status: &Value) -> ClusterClassClusterUpgrader {
    let mut status = status.clone();
    status["rollout"] = json!({"wave": wave, "clusterAvailable": true});
    serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "ClusterClassClusterUpgrader",
        "metadata": {"name": format!("u-{cluster}"), "namespace": "team"},
        "spec": {"clusterName": cluster, "planRef": {"name": "p"}},
        "status": status,
    }))
    .unwrap()
}

fn waiting() -> Value {
    json!({"conditions": [{"type": "Progressing", "status": "True", "reason": "WaitingForWave", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
}

fn members_of(
    p: &Plan,
    upgraders: Vec<ClusterClassClusterUpgrader>,
) -> Vec<crate::controllers::rollout::Member> {
    let (ctx, _verifier) = context_with(vec![], upgraders);
    let target = api::v1alpha1::MachineImageDetails {
        version: Some("v1.27.2".into()),
        id: "img-a".into(),
    };
    observe::members(p, p.spec.rollout.as_ref().unwrap(), &target, &ctx)
}

#[tokio::test]
async fn members_come_from_the_upgraders_status() {
    let p = rollout_plan();
    let at_target = json!({
        "latestSetVersion": "v1.27.2",
        "conditions": [{"type": "Ready", "status": "True", "reason": "ClusterUsingLatestVersion", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "history": [{"from": "v1.26.6", "to": "v1.27.2", "image": "img-a", "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:05:00Z"}],
    });
    let other_image = json!({
        "latestSetVersion": "v1.27.2",
        "conditions": [{"type": "Ready", "status": "True", "reason": "ClusterUsingLatestVersion", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "history": [{"from": "v1.26.6", "to": "v1.27.2", "image": "img-b", "started": "2026-01-01T00:00:00Z"}],
    });
    let drain = json!({
        "conditions": [{"type": "Blocked", "status": "True", "reason": "DrainTimeout", "message": "host h1", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    });
    let claimed = json!({
        "conditions": [{"type": "Blocked", "status": "True", "reason": "ClusterClaimed", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    });
    let mut elsewhere = upgrader("e", "prod", &waiting());
    elsewhere.spec.plan_ref.name = "other".into();
    let mut claimed_dup = upgrader("c", "canary", &claimed);
    claimed_dup.metadata.name = Some("u-c-2".into());
    let members = members_of(
        &p,
        vec![
            upgrader("a", "canary", &at_target),
            upgrader("b", "prod", &other_image),
            claimed_dup,
            upgrader("c", "canary", &drain),
            upgrader("d", "nowhere", &waiting()),
            elsewhere,
        ],
    );
    let names: Vec<&str> = members.iter().map(|m| m.cluster.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    assert!(members[0].at_target && members[0].wave == Some(0));
    assert!(!members[1].at_target, "another image is not the target");
    assert_eq!(members[1].wave, Some(1));
    assert_eq!(
        members[1].step_started,
        Some("2026-01-01T00:00:00Z".parse().unwrap())
    );
    assert_eq!(
        members[2].blocked,
        Some(("DrainTimeout".into(), "host h1".into()))
    );
    assert_eq!(members[3].wave, None);
}

#[tokio::test]
async fn a_halt_sets_the_condition_and_warns_once() {
    let p = rollout_plan();
    let usable = images::usable(&images(), "team", p.spec.machine_image_selector.as_ref());
    let mut d = decide::decide(
        &p.spec,
        Some(2),
        "team",
        &usable,
        &PlanStatus::default(),
        &now(),
    );
    let mut stuck = upgrader("a", "canary", &waiting());
    let first_members = members_of(&p, vec![stuck.clone()]);
    let requeue =
        decide::decide_rollout(&p.spec, Some(2), &mut d, &first_members, None, None, &now());
    let rollout = d.status.rollout.clone().unwrap();
    assert_eq!(rollout.waves[0].admitted, ["a"]);
    assert_eq!(requeue, None);
    let (halted, _, _) = crate::runtime::builders::condition(&d.status, decide::ROLLOUT_HALTED);
    assert_eq!(halted, "False");
    assert!(d.notes.is_empty());

    stuck.status.as_mut().unwrap().history = Some(vec![
        serde_json::from_value(json!({
            "from": "v1.26.6", "to": "v1.27.2", "image": "img-a", "started": now(),
        }))
        .unwrap(),
    ]);
    let members = members_of(&p, vec![stuck]);
    let mut later = decide::decide(&p.spec, Some(2), "team", &usable, &d.status, &at(599));
    let requeue = decide::decide_rollout(
        &p.spec,
        Some(2),
        &mut later,
        &members,
        Some(&rollout),
        None,
        &at(599),
    );
    assert_eq!(requeue, Some(std::time::Duration::from_millis(1_100)));
    let mut timed_out = decide::decide(&p.spec, Some(2), "team", &usable, &d.status, &at(600));
    decide::decide_rollout(
        &p.spec,
        Some(2),
        &mut timed_out,
        &members,
        Some(&rollout),
        None,
        &at(600),
    );
    let (halted, reason, message) =
        crate::runtime::builders::condition(&timed_out.status, decide::ROLLOUT_HALTED);
    assert_eq!((halted.as_str(), reason.as_str()), ("True", "StepTimeout"));
    assert!(message.contains("Cluster a"), "{message}");
    assert_eq!(timed_out.notes.len(), 1);
    assert_eq!(timed_out.notes[0].reason, "RolloutHalted");
    let halted_status = timed_out.status.rollout.clone().unwrap();
    let mut again = decide::decide(
        &p.spec,
        Some(2),
        "team",
        &usable,
        &timed_out.status,
        &at(700),
    );
    decide::decide_rollout(
        &p.spec,
        Some(2),
        &mut again,
        &members,
        Some(&halted_status),
        None,
        &at(700),
    );
    assert!(again.notes.is_empty(), "{:?}", again.notes);
    assert_eq!(again.status.rollout.unwrap().halted, halted_status.halted);
}

#[tokio::test]
async fn a_rollout_is_written_with_the_status_and_the_steady_state_writes_nothing() {
    let upgraders = vec![
        upgrader("a", "canary", &waiting()),
        upgrader("b", "prod", &waiting()),
    ];
    let (ctx, verifier) = context_with(images(), upgraders.clone());
    let p = rollout_plan();
    let scenario = verifier.run(|mut server| async move {
        let call = server
            .expect_status_apply::<Plan>("team", "p", FIELD_MANAGER)
            .await;
        let rollout = &call.body["status"]["rollout"];
        assert_eq!(
            rollout["target"],
            json!({"version": "v1.27.2", "id": "img-a"})
        );
        assert_eq!(rollout["phase"], "Progressing");
        assert_eq!(rollout["waves"][0]["admitted"], json!(["a"]));
        assert!(rollout["waves"][1].get("admitted").is_none(), "{rollout}");
        call.ok(&serde_json::to_value(rollout_plan()).unwrap());
        server
    });
    let action = within("reconcile", STEP, reconcile_plan(&p, &ctx, &now()))
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    scenario.finish().await;

    let mut synced = p.clone();
    let (ctx, verifier) = context_with(images(), upgraders);
    let usable = images::usable(&images(), "team", p.spec.machine_image_selector.as_ref());
    let mut d = decide::decide(
        &p.spec,
        Some(2),
        "team",
        &usable,
        &PlanStatus::default(),
        &now(),
    );
    let target = d.status.machine_image_details.clone().unwrap();
    let members = observe::members(&p, p.spec.rollout.as_ref().unwrap(), &target, &ctx);
    decide::decide_rollout(&p.spec, Some(2), &mut d, &members, None, None, &now());
    synced.status = Some(d.status);
    let scenario = verifier.run(|server| async move { server });
    within("reconcile", STEP, reconcile_plan(&synced, &ctx, &now()))
        .await
        .unwrap();
    scenario.finish().await;
}
