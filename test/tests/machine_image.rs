//! MachineImage and MachineImageTemplate on the real API server, with the real manager. No
//! kubelet and no job controller run: the tests write Job and Pod status as they would
//! (`e2e::builds`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use api::v1alpha1::{
    ATTEMPT_ANNOTATION, IMAGE_ID_ANNOTATION, MACHINE_IMAGE_NAME_LABEL, MachineImage,
    MachineImageTemplate, OS_IMAGE_STAMP_ANNOTATION, REBUILD_ANNOTATION,
};
use e2e::builds;
use e2e::install::can_i;
use e2e::status::{condition_message, condition_reason, condition_status, to_json};
use e2e::{TestEnv, e2e_env};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use kubernetes_upgrader::controllers::machine_image::{job_name, render_job};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn image(name: &str, spec: &Value) -> MachineImage {
    serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "MachineImage",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn build_spec(version: &str) -> Value {
    json!({
        "version": version,
        "jobTemplate": {
            "backoffLimit": 1,
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "build", "image": "registry.example/builder:v1",
                 "env": [{"name": "KUBERNETES_VERSION", "value": "stale"}]},
                {"name": "publish", "image": "registry.example/publisher:v1"}
            ]}
        }
    })
}

async fn create(env: &TestEnv, image: &MachineImage) -> MachineImage {
    let api: Api<MachineImage> = env.api();
    api.create(&PostParams::default(), image).await.unwrap()
}

async fn jobs_of(env: &TestEnv, image: &str) -> Vec<Job> {
    let jobs: Api<Job> = env.api();
    jobs.list(&ListParams::default().labels(&format!("{MACHINE_IMAGE_NAME_LABEL}={image}")))
        .await
        .unwrap()
        .items
}

async fn wait_image(
    env: &TestEnv,
    name: &str,
    what: &str,
    predicate: impl Fn(&Value) -> bool,
) -> MachineImage {
    let api: Api<MachineImage> = env.api();
    e2e::wait_for(&api, name, |i| predicate(&to_json(i)), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

fn ready_reason(json: &Value) -> (Option<String>, Option<String>) {
    (
        condition_status(json, "Ready"),
        condition_reason(json, "Ready"),
    )
}

fn is(json: &Value, status: &str, reason: &str, phase: &str) -> bool {
    ready_reason(json) == (Some(status.into()), Some(reason.into()))
        && json["status"]["phase"] == phase
        && json["status"]["observedGeneration"] == json["metadata"]["generation"]
}

async fn wait_job(env: &TestEnv, image: &MachineImage, attempt: i32) -> Job {
    let name = job_name(&image.name_any(), &image.uid().unwrap(), attempt);
    let jobs: Api<Job> = env.api();
    e2e::eventually(&format!("Job {name}"), WAIT, || {
        let jobs = jobs.clone();
        let name = name.clone();
        async move { Ok(jobs.get_opt(&name).await?) }
    })
    .await
    .unwrap()
}

async fn events(env: &TestEnv, image: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = env.api();
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(image)
        })
        .collect()
}

/// The part of the image's UID its build stamps carry: its first 8 hex digits.
fn uid_part(image: &MachineImage) -> String {
    image.uid().unwrap().replace('-', "")[..8].to_owned()
}

fn env_of(job: &Job, container: usize) -> Vec<(String, String)> {
    job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[container]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_image_is_ready_without_a_job() {
    let env = e2e_env!("a_static_image_is_ready_without_a_job");
    let _manager = env.start_manager().await.unwrap();
    let mut spec = build_spec("v1.31.2");
    spec["id"] = json!("ami-0123");
    create(&env, &image("static", &spec)).await;
    let built = wait_image(&env, "static", "static image ready", |j| {
        is(j, "True", "Built", "Created") && j["status"]["ready"] == true
    })
    .await;
    assert_eq!(built.spec.id.as_deref(), Some("ami-0123"));
    let api: Api<MachineImage> = env.api();
    e2e::assert_no_writes(&api, "static", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(jobs_of(&env, "static").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_hands_off_its_id_by_the_job_annotation() {
    let env = e2e_env!("a_build_hands_off_its_id_by_the_job_annotation");
    let _manager = env.start_manager().await.unwrap();
    let mut image = image("annotated", &build_spec("v1.31.2"));
    image.metadata.annotations = Some(
        [(
            "kubernetes-upgrader.dimitrikoshkin.com/debian-version".to_owned(),
            "1.31.2-1.1".to_owned(),
        )]
        .into(),
    );
    let image = create(&env, &image).await;
    let job = wait_job(&env, &image, 1).await;
    wait_image(&env, "annotated", "building", |j| {
        is(j, "False", "Building", "Building") && j["status"]["attempts"] == 1
    })
    .await;

    // The Job: owned, labelled, with the environment injected once.
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.clone(), owner.controller),
        ("MachineImage", image.uid().unwrap(), Some(true))
    );
    assert_eq!(job.labels()[MACHINE_IMAGE_NAME_LABEL], "annotated");
    // The stamp names the image, the start of its UID (another image of that name, another
    // build) and the attempt.
    let stamp = format!("annotated-{}-1", uid_part(&image));
    let env_build = env_of(&job, 0);
    assert_eq!(
        env_build
            .iter()
            .filter(|(k, _)| k == "KUBERNETES_VERSION")
            .count(),
        1
    );
    for (key, value) in [
        ("KUBERNETES_VERSION", "v1.31.2"),
        ("KUBERNETES_SEMVER", "1.31.2"),
        ("KUBERNETES_SERIES", "v1.31"),
        ("KUBERNETES_DEB_VERSION", "1.31.2-1.1"),
        ("MACHINE_IMAGE_NAME", "annotated"),
        ("MACHINE_IMAGE_STAMP", stamp.as_str()),
    ] {
        assert!(
            env_build.contains(&(key.to_owned(), value.to_owned())),
            "{key}={value} in {env_build:?}"
        );
        assert!(env_of(&job, 1).contains(&(key.to_owned(), value.to_owned())));
    }
    assert_eq!(job.spec.as_ref().unwrap().backoff_limit, Some(1));
    assert_eq!(
        events(&env, "annotated", "CreatingJob").await.len(),
        1,
        "one CreatingJob event"
    );

    // The build annotates its own Job, then succeeds.
    let jobs: Api<Job> = env.api();
    jobs.patch(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"metadata": {"annotations": {IMAGE_ID_ANNOTATION: "ami-annotated"}}}),
        ),
    )
    .await
    .unwrap();
    builds::job_succeeded(&env.client, &env.namespace, &job.name_any())
        .await
        .unwrap();
    let built = wait_image(&env, "annotated", "built", |j| {
        is(j, "True", "Built", "Created") && j["spec"]["id"] == "ami-annotated"
    })
    .await;
    assert!(built.status.as_ref().unwrap().ready);
    assert_eq!(
        built
            .annotations()
            .get(OS_IMAGE_STAMP_ANNOTATION)
            .map(String::as_str),
        Some(stamp.as_str())
    );
    assert!(
        built
            .status
            .as_ref()
            .unwrap()
            .build_completion_time
            .is_some()
    );
    // spec.id belongs to the controller's field manager, and nothing else of the spec does.
    let owned: Vec<String> = built
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some("kubernetes-upgrader-machineimage"))
        .filter(|m| m.subresource.is_none())
        .map(|m| m.fields_v1.as_ref().unwrap().0.to_string())
        .collect();
    assert_eq!(owned.len(), 1, "{owned:?}");
    assert!(
        owned[0].contains("f:id") && !owned[0].contains("f:version"),
        "{owned:?}"
    );
    let api: Api<MachineImage> = env.api();
    e2e::assert_no_writes(&api, "annotated", Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(jobs_of(&env, "annotated").await.len(), 1, "exactly one Job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_hands_off_its_id_by_the_termination_message() {
    let env = e2e_env!("a_build_hands_off_its_id_by_the_termination_message");
    let _manager = env.start_manager().await.unwrap();
    let mut spec = build_spec("v1.30.5");
    spec["jobTemplate"]["imageIDContainer"] = json!("build");
    let image = create(&env, &image("message", &spec)).await;
    let job = wait_job(&env, &image, 1).await;
    let jobs: Api<Job> = env.api();
    let pod = builds::create_build_pod(&env.client, &job, "e2e")
        .await
        .unwrap();
    builds::pod_succeeded(&env.client, &pod, "  kindest/node:v1.30.5\n")
        .await
        .unwrap();
    builds::job_succeeded(&env.client, &env.namespace, &job.name_any())
        .await
        .unwrap();
    let built = wait_image(&env, "message", "built from the termination message", |j| {
        is(j, "True", "Built", "Created") && j["spec"]["id"] == "kindest/node:v1.30.5"
    })
    .await;
    // The stamp names this build: the image, the start of its UID, the attempt.
    let uid: String = built
        .metadata
        .uid
        .clone()
        .unwrap()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    assert_eq!(
        built
            .annotations()
            .get(OS_IMAGE_STAMP_ANNOTATION)
            .map(String::as_str),
        Some(format!("message-{uid}-1").as_str())
    );
    assert!(jobs.get(&job.name_any()).await.is_ok());
    assert_eq!(events(&env, "message", "Built").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_then_a_rebuild_by_the_annotation() {
    let env = e2e_env!("a_failed_build_then_a_rebuild_by_the_annotation");
    let _manager = env.start_manager().await.unwrap();
    let image = create(&env, &image("flaky", &build_spec("v1.31.2"))).await;
    let job = wait_job(&env, &image, 1).await;
    let pod = builds::create_build_pod(&env.client, &job, "e2e")
        .await
        .unwrap();
    fail_pod(&env, &pod.name_any()).await;
    builds::job_failed(
        &env.client,
        &env.namespace,
        &job.name_any(),
        2,
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    )
    .await
    .unwrap();
    let failed = wait_image(&env, "flaky", "failed", |j| {
        is(j, "False", "JobFailed", "Failed")
    })
    .await;
    let json = to_json(&failed);
    let message = condition_message(&json, "Ready").unwrap();
    assert!(message.contains("BackoffLimitExceeded"), "{message}");
    assert!(
        message.contains("container build exited with code 3 (Error)"),
        "{message}"
    );
    // No error loop: no new Job, no more writes, one Warning.
    let api: Api<MachineImage> = env.api();
    e2e::assert_no_writes(&api, "flaky", Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(jobs_of(&env, "flaky").await.len(), 1);
    let warnings = events(&env, "flaky", "JobFailed").await;
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));

    // The rebuild annotation starts attempt 2.
    api.patch(
        "flaky",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {REBUILD_ANNOTATION: "fix-1"}}})),
    )
    .await
    .unwrap();
    let second = wait_job(&env, &image, 2).await;
    let stamp = format!("flaky-{}-2", uid_part(&image));
    assert!(env_of(&second, 0).contains(&("MACHINE_IMAGE_STAMP".to_owned(), stamp)));
    let building = wait_image(&env, "flaky", "attempt 2", |j| {
        is(j, "False", "Building", "Building") && j["status"]["attempts"] == 2
    })
    .await;
    assert_eq!(building.status.unwrap().rebuild.as_deref(), Some("fix-1"));
    builds::build_succeeded_with_termination_message(
        &env.client,
        &env.namespace,
        &second.name_any(),
        "ami-second",
    )
    .await
    .unwrap();
    wait_image(&env, "flaky", "built by attempt 2", |j| {
        is(j, "True", "Built", "Created") && j["spec"]["id"] == "ami-second"
    })
    .await;
    e2e::assert_no_writes(&api, "flaky", Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(jobs_of(&env, "flaky").await.len(), 2, "one Job per attempt");
}

/// Marks the build pod failed: its `build` container exited with code 3.
async fn fail_pod(env: &TestEnv, pod: &str) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = env.api();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    pods.patch_status(
        pod,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Failed", "containerStatuses": [
            {"name": "build", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 3, "reason": "Error", "startedAt": now, "finishedAt": now}}},
            {"name": "publish", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}}
        ]}})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_template_starts_a_new_attempt_until_built() {
    let env = e2e_env!("a_changed_template_starts_a_new_attempt_until_built");
    let _manager = env.start_manager().await.unwrap();
    let image = create(&env, &image("retemplated", &build_spec("v1.31.2"))).await;
    let job = wait_job(&env, &image, 1).await;
    builds::job_failed(
        &env.client,
        &env.namespace,
        &job.name_any(),
        2,
        "BackoffLimitExceeded",
        "limit",
    )
    .await
    .unwrap();
    wait_image(&env, "retemplated", "failed", |j| {
        is(j, "False", "JobFailed", "Failed")
    })
    .await;
    let api: Api<MachineImage> = env.api();
    api.patch(
        "retemplated",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"jobTemplate": {"backoffLimit": 4}}})),
    )
    .await
    .unwrap();
    let second = wait_job(&env, &image, 2).await;
    assert_eq!(second.spec.as_ref().unwrap().backoff_limit, Some(4));
    builds::build_succeeded_with_termination_message(
        &env.client,
        &env.namespace,
        &second.name_any(),
        "ami-new",
    )
    .await
    .unwrap();
    wait_image(&env, "retemplated", "built", |j| {
        is(j, "True", "Built", "Created")
    })
    .await;
    // Once built, a template change builds nothing.
    api.patch(
        "retemplated",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"jobTemplate": {"backoffLimit": 5}}})),
    )
    .await
    .unwrap();
    wait_image(&env, "retemplated", "built, current", |j| {
        is(j, "True", "Built", "Created")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(jobs_of(&env, "retemplated").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_job_is_retried_with_the_next_attempt() {
    let env = e2e_env!("a_deleted_job_is_retried_with_the_next_attempt");
    let _manager = env.start_manager().await.unwrap();
    let image = create(&env, &image("deleted", &build_spec("v1.31.2"))).await;
    let job = wait_job(&env, &image, 1).await;
    wait_image(&env, "deleted", "building", |j| {
        is(j, "False", "Building", "Building")
    })
    .await;
    let jobs: Api<Job> = env.api();
    jobs.delete(&job.name_any(), &kube::api::DeleteParams::default())
        .await
        .unwrap();
    wait_job(&env, &image, 2).await;
    wait_image(&env, "deleted", "attempt 2", |j| {
        j["status"]["attempts"] == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_the_server_refuses_is_not_ready() {
    let env = e2e_env!("a_template_the_server_refuses_is_not_ready");
    let _manager = env.start_manager().await.unwrap();
    let templates: Api<MachineImageTemplate> = env.api();
    let template = |name: &str, restart: &str| -> MachineImageTemplate {
        serde_json::from_value(json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "MachineImageTemplate",
            "metadata": {"name": name},
            "spec": {"template": {"spec": {"jobTemplate": {"spec": {
                "restartPolicy": restart,
                "containers": [{"name": "build", "image": "registry.example/builder:v1"}]
            }}}}}
        }))
        .unwrap()
    };
    templates
        .create(&PostParams::default(), &template("good", "Never"))
        .await
        .unwrap();
    // A Job refuses restartPolicy Always; the CRD schema cannot know that.
    templates
        .create(&PostParams::default(), &template("bad", "Always"))
        .await
        .unwrap();
    let good = e2e::wait_for(
        &templates,
        "good",
        |t| {
            let j = to_json(t);
            condition_status(&j, "Ready").as_deref() == Some("True")
                && j["status"]["observedGeneration"] == j["metadata"]["generation"]
        },
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(
        condition_reason(&to_json(&good), "Ready").as_deref(),
        Some("Valid")
    );
    let bad = e2e::wait_for(
        &templates,
        "bad",
        |t| condition_reason(&to_json(t), "Ready").as_deref() == Some("InvalidJobTemplate"),
        WAIT,
    )
    .await
    .unwrap();
    let message = condition_message(&to_json(&bad), "Ready").unwrap();
    assert!(message.contains("restartPolicy"), "{message}");
    e2e::assert_no_writes(&templates, "bad", Duration::from_secs(3))
        .await
        .unwrap();
    // The dry run left nothing behind.
    let jobs: Api<Job> = env.api();
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Fixing the template makes it valid; images cloned from it are listed, newest first.
    templates
        .patch(
            "bad",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"template": {"spec": {"jobTemplate": {"spec": {"restartPolicy": "OnFailure"}}}}}})),
        )
        .await
        .unwrap();
    let mut spec = build_spec("v1.31.2");
    spec["id"] = json!("ami-1");
    for name in ["from-bad-1", "from-bad-2"] {
        let mut img = image(name, &spec);
        img.metadata.annotations = Some(
            [(
                "kubernetes-upgrader.dimitrikoshkin.com/cloned-from".to_owned(),
                "bad".to_owned(),
            )]
            .into(),
        );
        create(&env, &img).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let fixed = e2e::wait_for(
        &templates,
        "bad",
        |t| {
            let j = to_json(t);
            condition_status(&j, "Ready").as_deref() == Some("True")
                && j["status"]["machineImages"] == json!(["from-bad-2", "from-bad-1"])
        },
        WAIT,
    )
    .await;
    fixed.unwrap();
}

/// A Job someone else made for `image`, as the manager would render it (the image's labels,
/// a controller owner reference with its UID), under `name`, with `annotations` added.
fn forged_job(image: &MachineImage, name: &str, annotations: &[(&str, &str)]) -> Job {
    let mut job = render_job(image, 1, None).unwrap();
    job.metadata.name = Some(name.to_owned());
    let notes = job.metadata.annotations.get_or_insert_default();
    for (key, value) in annotations {
        notes.insert((*key).to_owned(), (*value).to_owned());
    }
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_job_completed_after_the_build_does_not_change_the_id() {
    let env = e2e_env!("a_forged_job_completed_after_the_build_does_not_change_the_id");
    let _manager = env.start_manager().await.unwrap();
    let image = create(&env, &image("guarded", &build_spec("v1.31.2"))).await;
    let job = wait_job(&env, &image, 1).await;
    let jobs: Api<Job> = env.api();
    jobs.patch(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {IMAGE_ID_ANNOTATION: "ami-real"}}})),
    )
    .await
    .unwrap();
    builds::job_succeeded(&env.client, &env.namespace, &job.name_any())
        .await
        .unwrap();
    let built = wait_image(&env, "guarded", "built", |j| {
        is(j, "True", "Built", "Created") && j["spec"]["id"] == "ami-real"
    })
    .await;
    // The UID recorded is the one of the Job the manager created.
    assert_eq!(
        built.status.as_ref().unwrap().job_ref.as_ref().unwrap().uid,
        job.uid()
    );

    // A Job with the image's labels, an owner reference with its UID, a higher attempt and
    // another ID, completed after the build, with a build pod handing off a third ID.
    let forged = forged_job(
        &image,
        "guarded-forged",
        &[
            (ATTEMPT_ANNOTATION, "7"),
            (IMAGE_ID_ANNOTATION, "ami-forged"),
            (OS_IMAGE_STAMP_ANNOTATION, "guarded-7"),
        ],
    );
    assert_eq!(forged.owner_references()[0].uid, image.uid().unwrap());
    let forged = jobs.create(&PostParams::default(), &forged).await.unwrap();
    builds::build_succeeded_with_termination_message(
        &env.client,
        &env.namespace,
        &forged.name_any(),
        "ami-from-pod",
    )
    .await
    .unwrap();
    let api: Api<MachineImage> = env.api();
    e2e::assert_no_writes(&api, "guarded", Duration::from_secs(4))
        .await
        .unwrap();
    let after = api.get("guarded").await.unwrap();
    assert_eq!(after.spec.id.as_deref(), Some("ami-real"));
    assert_eq!(after.status, built.status);
    assert_eq!(
        after.annotations().get(OS_IMAGE_STAMP_ANNOTATION),
        built.annotations().get(OS_IMAGE_STAMP_ANNOTATION)
    );

    // The manager's own Job, its attempt annotation changed afterwards: refused, ID kept.
    jobs.patch(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {ATTEMPT_ANNOTATION: "9", IMAGE_ID_ANNOTATION: "ami-changed"}}})),
    )
    .await
    .unwrap();
    let refused = wait_image(&env, "guarded", "the changed attempt refused", |j| {
        ready_reason(j) == (Some("True".into()), Some("JobNotTrusted".into()))
    })
    .await;
    assert_eq!(refused.spec.id.as_deref(), Some("ami-real"));
    let message = condition_message(&to_json(&refused), "Ready").unwrap();
    assert!(
        message.contains("\"9\"") && message.contains("attempt 1"),
        "{message}"
    );
    assert_eq!(events(&env, "guarded", "JobNotTrusted").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_took_the_name_first_is_refused_and_the_next_attempt_builds() {
    let env = e2e_env!("a_job_that_took_the_name_first_is_refused_and_the_next_attempt_builds");
    // The image exists before the manager runs, so the forger gets to its Job name first.
    let image = create(&env, &image("preempted", &build_spec("v1.31.2"))).await;
    let name = job_name("preempted", &image.uid().unwrap(), 1);
    let jobs: Api<Job> = env.api();
    let forged = jobs
        .create(
            &PostParams::default(),
            &forged_job(&image, &name, &[(IMAGE_ID_ANNOTATION, "ami-forged")]),
        )
        .await
        .unwrap();
    builds::job_succeeded(&env.client, &env.namespace, &name)
        .await
        .unwrap();

    let _manager = env.start_manager().await.unwrap();
    let refused = wait_image(&env, "preempted", "refused", |j| {
        is(j, "False", "JobNotTrusted", "Failed")
    })
    .await;
    assert_eq!(refused.spec.id, None);
    let status = refused.status.clone().unwrap();
    assert_eq!((status.attempts, status.job_ref), (Some(1), None));
    let message = condition_message(&to_json(&refused), "Ready").unwrap();
    assert!(
        message.contains(&name) && message.contains(&forged.uid().unwrap()),
        "{message}"
    );
    let warnings = events(&env, "preempted", "JobNotTrusted").await;
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    let api: Api<MachineImage> = env.api();
    e2e::assert_no_writes(&api, "preempted", Duration::from_secs(3))
        .await
        .unwrap();

    // After a while attempt 2 tries its own name, in a Job the manager makes and records.
    let second = wait_job(&env, &image, 2).await;
    let building = wait_image(&env, "preempted", "attempt 2", |j| {
        is(j, "False", "Building", "Building") && j["status"]["jobRef"]["uid"].is_string()
    })
    .await;
    assert_eq!(building.status.unwrap().job_ref.unwrap().uid, second.uid());
    builds::build_succeeded_with_termination_message(
        &env.client,
        &env.namespace,
        &second.name_any(),
        "ami-second",
    )
    .await
    .unwrap();
    wait_image(&env, "preempted", "built by attempt 2", |j| {
        is(j, "True", "Built", "Created") && j["spec"]["id"] == "ami-second"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_runs_as_its_service_account_which_may_not_delete_jobs() {
    let env = e2e_env!("the_manager_runs_as_its_service_account_which_may_not_delete_jobs");
    let manager = env.cluster.manager_client().await.unwrap();
    let reviews: Api<SelfSubjectReview> = Api::all(manager.clone());
    let me = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    assert_eq!(
        me.status.unwrap().user_info.unwrap().username.as_deref(),
        Some(
            "system:serviceaccount:kubernetes-upgrader-system:kubernetes-upgrader-controller-manager"
        )
    );
    let ns = &env.namespace;
    let can = |verb: &'static str, group: &'static str, resource: &'static str| {
        let manager = manager.clone();
        async move { can_i(&manager, verb, group, resource, ns).await.unwrap() }
    };
    // `kubectl auth can-i delete jobs` as the manager: no (asked through kubectl too when it is
    // installed; it sends the same SelfSubjectAccessReview).
    assert!(!can("delete", "batch", "jobs").await);
    if let Ok(output) = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.manager_kubeconfig())
        .args(["auth", "can-i", "delete", "jobs", "-n", ns])
        .output()
    {
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "no",
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(!can("update", "batch", "jobs").await);
    assert!(!can("get", "", "pods").await);
    assert!(can("create", "batch", "jobs").await);
    assert!(can("list", "", "pods").await);
    assert!(can("patch", "coordination.k8s.io", "leases").await);
    assert!(!can("update", "coordination.k8s.io", "leases").await);
}
