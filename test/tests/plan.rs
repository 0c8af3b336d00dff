//! The Plan controller on a real API server: event-driven choice of the newest ready image,
//! candidates per minor, images still building ignored, and details cleared when no image matches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/upgrader.rs"]
mod support;

use std::time::{Duration, Instant};

use api::v1alpha1::{MachineImage, Plan, PlanPhase};
use e2e::{condition_reason, e2e_env, to_json};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::static_image;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_follows_ready_images_as_they_change() {
    let env = e2e_env!("a_plan_follows_ready_images_as_they_change");
    let plans: Api<Plan> = env.api();
    let plan: Plan = serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "Plan",
        "metadata": {"name": "all"},
        "spec": {"versionRange": ">=1.29.0", "machineImageSelector": {"matchLabels": {"os": "demo"}}},
    }))
    .unwrap();
    plans.create(&PostParams::default(), &plan).await.unwrap();
    let _manager = env.start_manager().await.unwrap();

    let p = e2e::wait_for(
        &plans,
        "all",
        |p| p.status.as_ref().and_then(|s| s.phase) == Some(PlanPhase::NoSuitableMachineImage),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        condition_reason(&to_json(&p), "Ready").as_deref(),
        Some("NoSuitableMachineImage")
    );

    // An image still building (no ID yet) does not count.
    let images: Api<MachineImage> = env.api();
    let pending: MachineImage = serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1", "kind": "MachineImage",
        "metadata": {"name": "pending", "labels": {"os": "demo"}},
        "spec": {"version": "v1.32.0", "jobTemplate": {"spec": {"containers": [{"name": "b", "image": "b"}]}}},
    }))
    .unwrap();
    images
        .create(&PostParams::default(), &pending)
        .await
        .unwrap();

    // Ready images are picked up at once (v0.6 re-checked every minute).
    let started = Instant::now();
    static_image(&env, "a-1-30-1", "v1.30.1", "i-1301")
        .await
        .unwrap();
    static_image(&env, "b-1-30-4", "v1.30.4", "i-1304")
        .await
        .unwrap();
    static_image(&env, "c-1-31-0", "v1.31.0", "i-1310")
        .await
        .unwrap();
    let p = e2e::wait_for(
        &plans,
        "all",
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.machine_image_details.as_ref())
                .map(|d| d.id.as_str())
                == Some("i-1310")
        },
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let status = p.status.unwrap();
    assert_eq!(status.phase, Some(PlanPhase::FoundMachineImage));
    assert_eq!(
        status.machine_image_details.unwrap().version.as_deref(),
        Some("v1.31.0")
    );
    assert_eq!(
        status.machine_image_ref.unwrap().name.as_deref(),
        Some("c-1-31-0")
    );
    let candidates: Vec<_> = status
        .candidates
        .unwrap()
        .into_iter()
        .map(|c| (c.version, c.name))
        .collect();
    assert_eq!(
        candidates,
        [
            ("v1.30.4".to_owned(), "b-1-30-4".to_owned()),
            ("v1.31.0".to_owned(), "c-1-31-0".to_owned())
        ]
    );

    // The chosen image is deleted: the Plan falls back at once (deletions are events too).
    images
        .delete("c-1-31-0", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    e2e::wait_for(
        &plans,
        "all",
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.machine_image_details.as_ref())
                .map(|d| d.id.as_str())
                == Some("i-1304")
        },
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(deleted.elapsed() < Duration::from_secs(10));

    // The images no longer match the selector: the details are cleared.
    for name in ["a-1-30-1", "b-1-30-4"] {
        let relabel = json!({"metadata": {"labels": {"os": "retired"}}});
        images
            .patch(name, &PatchParams::default(), &Patch::Merge(&relabel))
            .await
            .unwrap();
    }
    let p = e2e::wait_for(
        &plans,
        "all",
        |p| p.status.as_ref().and_then(|s| s.phase) == Some(PlanPhase::NoSuitableMachineImage),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let status = p.status.unwrap();
    assert!(status.machine_image_details.is_none() && status.machine_image_ref.is_none());
    assert!(status.candidates.is_none());
}

/// A restarted manager decides nothing before its caches have synced: the Plan never loses its
/// choice while the image cache is still filling, however often the manager restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_never_clears_the_plans_choice_while_its_caches_fill() {
    let env = e2e_env!("a_restarted_manager_never_clears_the_plans_choice_while_its_caches_fill");
    let images = 300;
    for i in 0..images {
        static_image(
            &env,
            &format!("img-{i:03}"),
            &format!("v1.31.{i}"),
            &format!("i-{i}"),
        )
        .await
        .unwrap();
    }
    support::plan(&env, "p", ">=1.29.0").await.unwrap();
    let plans: Api<Plan> = env.api();
    let mut manager = env.start_manager().await.unwrap();
    let top = format!("v1.31.{}", images - 1);
    let chosen = |p: &Plan| {
        p.status
            .as_ref()
            .and_then(|s| s.machine_image_details.as_ref())
            .and_then(|d| d.version.clone())
    };
    e2e::wait_for(
        &plans,
        "p",
        |p| chosen(p).as_deref() == Some(top.as_str()),
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    // Every state the Plan passes through from here on, as the watch delivers it.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let watch = {
        let seen = seen.clone();
        let plans = plans.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            use kube::runtime::WatchStreamExt;
            let events = kube::runtime::watcher(plans, kube::runtime::watcher::Config::default())
                .applied_objects();
            futures::pin_mut!(events);
            while let Some(Ok(p)) = events.next().await {
                seen.lock().unwrap().push(chosen(&p));
            }
        })
    };
    for _ in 0..3 {
        manager.restart().unwrap();
        manager.wait_ready(Duration::from_secs(60)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    watch.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|v| v.as_deref() == Some(top.as_str())),
        "the Plan's choice changed across restarts: {seen:?}"
    );
}
