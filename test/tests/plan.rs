//! The Plan controller on a real API server: event-driven choice of the newest ready image,
//! candidates per minor, an omitted selector matching all, and details cleared when none is left.
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
        "spec": {"versionRange": ">=1.29.0"},
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

    // A not-yet-ready image does not count.
    let images: Api<MachineImage> = env.api();
    let pending: MachineImage = serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1", "kind": "MachineImage",
        "metadata": {"name": "pending"},
        "spec": {"version": "v1.32.0", "id": "i-132", "jobTemplate": {"spec": {"containers": [{"name": "b", "image": "b"}]}}},
    }))
    .unwrap();
    images
        .create(&PostParams::default(), &pending)
        .await
        .unwrap();

    // Ready images are picked up at once (v0.6 re-checked every minute): no selector matches all.
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

    // Every image no longer ready (as after a failed rebuild): the details are cleared.
    for name in ["a-1-30-1", "b-1-30-4", "c-1-31-0"] {
        let status = json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "MachineImage",
            "status": {"ready": false, "phase": "Failed"},
        });
        images
            .patch_status(
                name,
                &PatchParams::apply("e2e-image-stand-in").force(),
                &Patch::Apply(&status),
            )
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
