//! Decision tables and choreography tests: the API calls one reconcile makes, scripted with the
//! runtime fixtures.

use super::*;
use crate::runtime::builders::{Build, Fixture, at, now, ready};
use crate::runtime::fixtures::{STEP, Verifier, mock_client, within};
use api::v1alpha1::OS_IMAGE_STAMP_ANNOTATION;
use api::v1alpha1::{
    ATTEMPT_ANNOTATION, IMAGE_ID_ANNOTATION, MachineImagePhase, REBUILD_ANNOTATION,
};
use http::Method;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};

pub(super) fn image_with(spec: &Value, annotations: &Value, status: Option<Value>) -> MachineImage {
    let mut image = MachineImage::test("img")
        .with_uid("uid-1")
        .with_generation(1)
        .with_spec(spec);
    for (key, value) in annotations.as_object().unwrap() {
        image = image.with_annotation(key, value.as_str().unwrap());
    }
    match status {
        Some(status) => image.with_status(&status),
        None => image,
    }
}

pub(super) fn build_spec() -> Value {
    json!({
        "version": "v1.31.2",
        "jobTemplate": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "build", "image": "builder"},
            {"name": "publish", "image": "publisher"}
        ]}}
    })
}

pub(super) fn image(status: Option<Value>) -> MachineImage {
    image_with(&build_spec(), &json!({}), status)
}

/// The Job of `attempt` as the API server would hold it, with `status`.
fn job_of(image: &MachineImage, attempt: i32, status: &Value) -> Job {
    let mut job = render_job(image, attempt, None).unwrap();
    job.metadata.uid = Some(format!("job-uid-{attempt}"));
    job.metadata.resource_version = Some("7".into());
    job.status = Some(serde_json::from_value(status.clone()).unwrap());
    job
}

fn complete() -> Value {
    json!({"succeeded": 1, "completionTime": "2026-01-01T00:00:10Z", "conditions": [
        {"type": "SuccessCriteriaMet", "status": "True"},
        {"type": "Complete", "status": "True"}
    ]})
}

fn failed() -> Value {
    json!({"failed": 3, "conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastTransitionTime": "2026-01-01T00:00:10Z"}
    ]})
}

/// A pod of `job` (controlled by it) whose containers terminated as given.
fn pod(job: &Job, container_states: &[(&str, i32, &str, &str)]) -> Pod {
    let statuses: Vec<Value> = container_states
        .iter()
        .map(|(name, code, reason, message)| {
            json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                   "state": {"terminated": {"exitCode": code, "reason": reason, "message": message}}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "team", "creationTimestamp": "2026-01-01T00:00:01Z",
                     "labels": {JOB_NAME_LABEL: job.name_any()},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job.name_any(),
                                          "uid": job.metadata.uid.clone().unwrap_or_default(), "controller": true}]},
        "status": {"phase": "Succeeded", "containerStatuses": statuses}
    }))
    .unwrap()
}

fn decide_on(image: &MachineImage, latest: Option<&Job>, gone: bool, pods: &[Pod]) -> Decision {
    decide_in(image, latest, gone, pods, &BuildPodPolicy::default())
}

fn decide_in(
    image: &MachineImage,
    latest: Option<&Job>,
    gone: bool,
    pods: &[Pod],
    build_pods: &BuildPodPolicy,
) -> Decision {
    decide(&Observed {
        image,
        latest,
        job_gone: gone,
        pods,
        build_pods,
        now: &now(),
    })
}

/// A status as a previous reconcile wrote it after creating attempt 1's Job, whose create
/// answer carried the UID `job-uid-1` (as [`job_of`] gives it).
fn building_status(image: &MachineImage) -> Value {
    let observed = Observed {
        image,
        latest: None,
        job_gone: false,
        pods: &[],
        build_pods: &BuildPodPolicy::default(),
        now: &now(),
    };
    let decision = decide(&observed);
    assert_eq!(decision.status.attempts, Some(1));
    let created = job_of(image, 1, &json!({}));
    let settled = settle(&observed, decision, Creation::Created(&created));
    serde_json::to_value(settled.status).unwrap()
}

#[test]
fn a_static_image_is_ready_without_a_job() {
    let mut spec = build_spec();
    spec["id"] = json!("ami-123");
    let image = image_with(&spec, &json!({}), None);
    let d = decide_on(&image, None, false, &[]);
    assert!(d.create.is_none() && d.write_id.is_none() && d.notes.is_empty());
    assert!(d.status.ready);
    assert_eq!(d.status.phase, Some(MachineImagePhase::Created));
    assert_eq!(ready(&d.status), ("True".into(), "Built".into()));
    assert_eq!(d.requeue, None);
}

#[test]
fn the_first_build_creates_attempt_one() {
    let image = image(None);
    let d = decide_on(&image, None, false, &[]);
    let job = d.create.expect("a Job");
    assert_eq!(job.name_any(), job_name("img", "uid-1", 1));
    assert_eq!(d.status.attempts, Some(1));
    assert_eq!(d.status.phase, Some(MachineImagePhase::Building));
    assert_eq!(
        d.status.job_template_hash.as_deref(),
        Some(template_hash(&image.spec.job_template).as_str())
    );
    assert_eq!(d.status.build_start_time, Some(now()));
    assert_eq!(ready(&d.status), ("False".into(), "Building".into()));
    assert_eq!(d.notes.len(), 1);
    assert_eq!(d.notes[0].reason, "CreatingJob");
}

#[test]
fn job_outcomes_follow_conditions_and_fall_back_to_counters() {
    let image = image(None);
    let cases = [
        (json!({}), JobOutcome::Running),
        (json!({"active": 1, "failed": 2}), JobOutcome::Running),
        // A retry within the backoff limit: counters say failed, no condition says so.
        (json!({"failed": 3}), JobOutcome::Running),
        (
            json!({"failed": 7}),
            JobOutcome::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "7 pods failed, more than the backoff limit of 6".into(),
            },
        ),
        (
            json!({"failed": 1, "conditions": [{"type": "FailureTarget", "status": "True"}]}),
            JobOutcome::Running,
        ),
        (complete(), JobOutcome::Succeeded),
        (json!({"succeeded": 1}), JobOutcome::Succeeded),
        (
            failed(),
            JobOutcome::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "Job has reached the specified backoff limit".into(),
            },
        ),
        (
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "False"}, {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}),
            JobOutcome::Failed {
                reason: "DeadlineExceeded".into(),
                message: String::new(),
            },
        ),
    ];
    for (status, want) in cases {
        assert_eq!(job_outcome(&job_of(&image, 1, &status)), want, "{status}");
    }
}

#[test]
fn image_ids_are_validated() {
    assert_eq!(validate_image_id("  ami-1\n"), Ok("ami-1".into()));
    assert_eq!(validate_image_id(" \n"), Err(IdError::Missing));
    assert!(matches!(
        validate_image_id("a\u{7}b"),
        Err(IdError::Invalid(_))
    ));
    assert!(matches!(
        validate_image_id(&"a".repeat(1025)),
        Err(IdError::Invalid(_))
    ));
    assert_eq!(
        validate_image_id(&"a".repeat(1024)).map(|s| s.len()),
        Ok(1024)
    );
}

#[test]
fn the_annotation_wins_over_the_termination_message() {
    let image = image(None);
    let mut job = job_of(&image, 1, &complete());
    let pods = [pod(
        &job,
        &[
            ("build", 0, "Completed", "wrong"),
            ("publish", 0, "Completed", "oci://r/x@sha256:ab"),
        ],
    )];
    assert_eq!(
        handed_off_id(&job, &pods, Some("publish")),
        Ok("oci://r/x@sha256:ab".into())
    );
    job.metadata
        .annotations
        .get_or_insert_default()
        .insert(IMAGE_ID_ANNOTATION.into(), "ami-9".into());
    assert_eq!(
        handed_off_id(&job, &pods, Some("publish")),
        Ok("ami-9".into())
    );
    assert!(!needs_pods(&job));
}

#[test]
fn a_succeeded_build_writes_the_id_and_its_stamp_once() {
    let image = image(Some(building_status(&image(None))));
    let job = job_of(&image, 1, &complete());
    assert!(needs_pods(&job));
    // The default container is the last one.
    let pods = [pod(
        &job,
        &[
            ("build", 0, "Completed", "x"),
            ("publish", 0, "Completed", " kindest/node:v1.31.2\n"),
        ],
    )];
    let d = decide_on(&image, Some(&job), false, &pods);
    assert_eq!(
        d.write_id,
        Some(IdWrite {
            id: "kindest/node:v1.31.2".into(),
            stamp: "img-uid1-1".into()
        })
    );
    assert!(d.status.ready);
    assert_eq!(d.status.phase, Some(MachineImagePhase::Created));
    assert_eq!(ready(&d.status), ("True".into(), "Built".into()));
    assert_eq!(
        d.status.job_ref.as_ref().unwrap().uid.as_deref(),
        Some("job-uid-1")
    );
    assert_eq!(
        d.notes.iter().map(|n| n.reason).collect::<Vec<_>>(),
        ["Built"]
    );
    assert_eq!(d.requeue, None);

    // After the write: the ID and stamp are there, nothing more to write, no event again.
    let mut after = image.clone();
    after.spec.id = Some("kindest/node:v1.31.2".into());
    after
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(OS_IMAGE_STAMP_ANNOTATION.into(), "img-uid1-1".into());
    after.status = Some(d.status.clone());
    let again = decide_on(&after, Some(&job), false, &pods);
    assert_eq!(again.write_id, None);
    assert_eq!(again.status, d.status);
    assert!(again.notes.is_empty() && again.create.is_none());
}

#[test]
fn the_named_container_carries_the_id() {
    let mut spec = build_spec();
    spec["jobTemplate"]["imageIDContainer"] = json!("build");
    let mut image = image_with(&spec, &json!({}), None);
    image.status = Some(serde_json::from_value(building_status(&image)).unwrap());
    let job = job_of(&image, 1, &complete());
    let pods = [pod(
        &job,
        &[
            ("build", 0, "Completed", "ami-7"),
            ("publish", 0, "Completed", ""),
        ],
    )];
    let d = decide_on(&image, Some(&job), false, &pods);
    assert_eq!(d.write_id.unwrap().id, "ami-7");
}

#[test]
fn a_build_without_an_id_or_with_a_bad_one_fails_once() {
    let image = image(Some(building_status(&image(None))));
    let job = job_of(&image, 1, &complete());
    for (message, reason) in [("", "MissingImageID"), ("bad\u{1b}[31m", "InvalidImageID")] {
        let pods = [pod(
            &job,
            &[
                ("build", 0, "Completed", ""),
                ("publish", 0, "Completed", message),
            ],
        )];
        let d = decide_on(&image, Some(&job), false, &pods);
        assert_eq!(d.write_id, None);
        assert!(!d.status.ready);
        assert_eq!(d.status.phase, Some(MachineImagePhase::Failed));
        assert_eq!(ready(&d.status), ("False".into(), reason.into()));
        assert_eq!(d.notes.len(), 1);
        assert!(d.notes[0].warning && d.notes[0].reason == reason);
        assert_eq!(d.requeue, None, "no error loop");
        let mut after = image.clone();
        after.status = Some(d.status.clone());
        let again = decide_on(&after, Some(&job), false, &pods);
        assert!(again.notes.is_empty() && again.create.is_none());
        assert_eq!(again.status, d.status);
    }
}

#[test]
fn a_failed_job_carries_its_reason_and_the_exit_code() {
    let image = image(Some(building_status(&image(None))));
    let job = job_of(&image, 1, &failed());
    let pods = [pod(
        &job,
        &[
            ("build", 2, "Error", "packer failed"),
            ("publish", 0, "Completed", ""),
        ],
    )];
    let d = decide_on(&image, Some(&job), false, &pods);
    assert_eq!(d.status.phase, Some(MachineImagePhase::Failed));
    let condition = d.status.conditions.as_ref().unwrap()[0].clone();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "JobFailed")
    );
    assert!(
        condition
            .message
            .contains("BackoffLimitExceeded: Job has reached the specified backoff limit"),
        "{}",
        condition.message
    );
    assert!(
        condition
            .message
            .contains("container build exited with code 2 (Error)"),
        "{}",
        condition.message
    );
    assert_eq!(d.notes.len(), 1);
    assert!(d.notes[0].warning && d.notes[0].reason == "JobFailed");
    assert!(d.create.is_none());
    assert_eq!(d.requeue, None);
    assert_eq!(
        d.status
            .build_completion_time
            .as_ref()
            .map(|t| t.0.to_string()),
        Some("2026-01-01T00:00:10Z".into())
    );
}

#[test]
fn new_attempts_start_only_when_asked() {
    let base = image(None);
    let first = job_of(&base, 1, &failed());
    let failed_status = {
        let mut img = base.clone();
        img.status = Some(serde_json::from_value(building_status(&base)).unwrap());
        serde_json::to_value(decide_on(&img, Some(&first), false, &[]).status).unwrap()
    };
    // A failed build stays failed.
    let img = image(Some(failed_status.clone()));
    assert!(decide_on(&img, Some(&first), false, &[]).create.is_none());

    // A new rebuild value starts attempt 2, recording it; the same value again does not.
    let asked = image_with(
        &build_spec(),
        &json!({REBUILD_ANNOTATION: "1"}),
        Some(failed_status.clone()),
    );
    let d = decide_on(&asked, Some(&first), false, &[]);
    let job = d.create.expect("attempt 2");
    assert_eq!(job.name_any(), job_name("img", "uid-1", 2));
    assert_eq!(d.status.attempts, Some(2));
    assert_eq!(d.status.rebuild.as_deref(), Some("1"));
    let mut second = job;
    second.status = Some(k8s_openapi::api::batch::v1::JobStatus::default());
    let mut after = asked.clone();
    after.status = Some(d.status.clone());
    assert!(
        decide_on(&after, Some(&second), false, &[])
            .create
            .is_none()
    );

    // A changed template while not built starts a new attempt; once built, it does not.
    let mut changed = image(Some(failed_status.clone()));
    Arc::make_mut(&mut changed.spec.job_template).backoff_limit = Some(1);
    let d = decide_on(&changed, Some(&first), false, &[]);
    assert_eq!(d.status.attempts, Some(2));
    assert!(
        d.notes[0].message.contains("job template changed"),
        "{}",
        d.notes[0].message
    );
    changed.spec.id = Some("ami-1".into());
    assert!(
        decide_on(&changed, Some(&first), false, &[])
            .create
            .is_none()
    );

    // A deleted Job retries, unless a TTL removed a failed one.
    let d = decide_on(&img, None, true, &[]);
    assert_eq!(
        d.create.map(|j| j.name_any()),
        Some(job_name("img", "uid-1", 2))
    );
    let mut ttl = img.clone();
    Arc::make_mut(&mut ttl.spec.job_template).ttl_seconds_after_finished = Some(60);
    ttl.status.as_mut().unwrap().job_template_hash = Some(template_hash(&ttl.spec.job_template));
    let d = decide_on(&ttl, None, true, &[]);
    assert!(d.create.is_none());
    assert_eq!(d.status.phase, Some(MachineImagePhase::Failed));
    assert_eq!(d.status.job_ref, None);
    // Nor on the next reconcile, when the status no longer names the Job.
    ttl.status = Some(d.status.clone());
    let d = decide_on(&ttl, None, false, &[]);
    assert!(d.create.is_none());
    assert_eq!(d.status.phase, Some(MachineImagePhase::Failed));
}

#[test]
fn an_invalid_version_creates_no_job() {
    let mut spec = build_spec();
    spec["version"] = json!("1.31");
    let image = image_with(&spec, &json!({}), None);
    let d = decide_on(&image, None, false, &[]);
    assert!(d.create.is_none());
    assert_eq!(ready(&d.status), ("False".into(), "InvalidVersion".into()));
    assert!(d.notes[0].warning);
    let mut after = image.clone();
    after.status = Some(d.status.clone());
    let again = decide_on(&after, None, false, &[]);
    assert!(again.notes.is_empty() && again.status == d.status);
}

// The Job-trust rules.

/// `job` with `key` set to `value`.
fn annotated(mut job: Job, key: &str, value: &str) -> Job {
    job.metadata
        .annotations
        .get_or_insert_default()
        .insert(key.into(), value.into());
    job
}

#[test]
fn only_the_job_whose_uid_the_status_records_is_trusted() {
    let fresh = image(None);
    let job = job_of(&fresh, 1, &json!({}));
    // Nothing recorded yet: even a Job with the image's labels and owner reference is not ours.
    assert_eq!(job.labels()[MACHINE_IMAGE_NAME_LABEL], "img");
    assert_eq!(job.owner_references()[0].uid, "uid-1");
    assert!(!is_recorded(&fresh, &job));
    let building = image(Some(building_status(&fresh)));
    assert_eq!(recorded_uid(&building), Some("job-uid-1"));
    assert!(is_recorded(&building, &job));
    let mut other = job.clone();
    other.metadata.uid = Some("job-uid-forged".into());
    assert!(!is_recorded(&building, &other));
    // A jobRef without a UID (written before UIDs were recorded) trusts nothing.
    let mut unrecorded = building.clone();
    unrecorded
        .status
        .as_mut()
        .unwrap()
        .job_ref
        .as_mut()
        .unwrap()
        .uid = None;
    assert!(!is_recorded(&unrecorded, &job));
}

#[test]
fn the_created_uid_is_recorded_and_a_taken_name_is_refused_until_a_rebuild() {
    let image = image(None);
    let observed = Observed {
        image: &image,
        latest: None,
        job_gone: false,
        pods: &[],
        build_pods: &BuildPodPolicy::default(),
        now: &now(),
    };
    let d = decide(&observed);
    assert!(d.create.is_some());
    let created = job_of(&image, 1, &json!({}));
    let ours = settle(&observed, d.clone(), Creation::Created(&created));
    assert_eq!(
        ours.status.job_ref.as_ref().unwrap().uid.as_deref(),
        Some("job-uid-1")
    );
    assert_eq!(ours.notes, d.notes, "CreatingJob, as decided");

    let mut forged = created.clone();
    forged.metadata.uid = Some("forged".into());
    let refused = settle(&observed, d, Creation::NameTaken(&forged));
    assert!(refused.create.is_none() && refused.write_id.is_none());
    assert_eq!(
        refused.status.attempts,
        Some(1),
        "the attempt's name is spent"
    );
    assert_eq!(refused.status.job_ref, None);
    assert_eq!(refused.status.phase, Some(MachineImagePhase::Failed));
    assert_eq!(refused.status.build_start_time, Some(now()));
    assert_eq!(
        ready(&refused.status),
        ("False".into(), "JobNotTrusted".into())
    );
    assert_eq!(refused.notes.len(), 1);
    assert!(refused.notes[0].warning && refused.notes[0].reason == "JobNotTrusted");
    assert_eq!(refused.requeue, Some(decide::TAKEN_NAME_RETRY));

    // It stays refused, quietly, until the wait is over: no second Warning meanwhile.
    let mut after = image.clone();
    after.status = Some(refused.status.clone());
    let decide_at = |image: &MachineImage, now: &Time| {
        decide(&Observed {
            image,
            latest: None,
            job_gone: false,
            pods: &[],
            build_pods: &BuildPodPolicy::default(),
            now,
        })
    };
    let again = decide_at(&after, &at(4));
    assert!(again.create.is_none() && again.notes.is_empty());
    assert_eq!(again.requeue, Some(Duration::from_secs(6)));
    assert_eq!(again.status.conditions, refused.status.conditions);
    // Then attempt 2 tries its own name.
    let next = decide_at(&after, &at(10));
    assert_eq!(
        next.create.map(|j| j.name_any()),
        Some(job_name("img", "uid-1", 2))
    );
    assert!(
        next.notes[0].message.contains("was taken"),
        "{:?}",
        next.notes
    );
    // A rebuild does not wait.
    after
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(REBUILD_ANNOTATION.into(), "again".into());
    let rebuilt = decide_at(&after, &at(1));
    assert_eq!(
        rebuilt.create.map(|j| j.name_any()),
        Some(job_name("img", "uid-1", 2))
    );
}

#[test]
fn a_refused_rebuild_of_a_built_image_keeps_it_ready_with_its_id() {
    let mut spec = build_spec();
    spec["id"] = json!("ami-1");
    let image = image_with(&spec, &json!({REBUILD_ANNOTATION: "r1"}), None);
    let observed = Observed {
        image: &image,
        latest: None,
        job_gone: false,
        pods: &[],
        build_pods: &BuildPodPolicy::default(),
        now: &now(),
    };
    let d = decide(&observed);
    let taken = job_of(&image, 1, &complete());
    let refused = settle(&observed, d, Creation::NameTaken(&taken));
    assert!(refused.status.ready && refused.write_id.is_none());
    assert_eq!(
        ready(&refused.status),
        ("True".into(), "JobNotTrusted".into())
    );
    let mut after = image.clone();
    after.status = Some(refused.status.clone());
    let again = decide_on(&after, None, false, &[]);
    assert_eq!(again.status, refused.status, "not silently Built again");
    assert!(again.create.is_none() && again.notes.is_empty());
}

#[test]
fn a_changed_attempt_annotation_is_refused() {
    let image = image(Some(building_status(&image(None))));
    let job = annotated(job_of(&image, 1, &complete()), IMAGE_ID_ANNOTATION, "ami-1");
    assert!(decide_on(&image, Some(&job), false, &[]).write_id.is_some());
    let tampered = annotated(job, ATTEMPT_ANNOTATION, "99");
    let d = decide_on(&image, Some(&tampered), false, &[]);
    assert_eq!(d.write_id, None);
    assert!(d.create.is_none());
    assert_eq!(d.status.attempts, Some(1), "the status keeps the count");
    assert_eq!(ready(&d.status), ("False".into(), "JobNotTrusted".into()));
    assert!(d.notes[0].warning && d.notes[0].message.contains("\"99\""));
    let mut after = image.clone();
    after.status = Some(d.status.clone());
    let again = decide_on(&after, Some(&tampered), false, &[]);
    assert!(again.notes.is_empty() && again.status == d.status && again.write_id.is_none());
    // Deleting it still retries, under attempt 2.
    let retried = decide_on(&after, None, true, &[]);
    assert_eq!(
        retried.create.map(|j| j.name_any()),
        Some(job_name("img", "uid-1", 2))
    );
}

#[test]
fn a_built_image_keeps_its_id_whatever_its_job_says_later() {
    let image = image(Some(building_status(&image(None))));
    let job = annotated(job_of(&image, 1, &complete()), IMAGE_ID_ANNOTATION, "ami-1");
    let d = decide_on(&image, Some(&job), false, &[]);
    let mut built = image.clone();
    built.spec.id = Some("ami-1".into());
    built
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(OS_IMAGE_STAMP_ANNOTATION.into(), "img-uid1-1".into());
    built.status = Some(d.status);
    // The build's own Job, re-annotated afterwards: the ID handed off once stays.
    let changed = annotated(job, IMAGE_ID_ANNOTATION, "ami-evil");
    let d = decide_on(&built, Some(&changed), false, &[]);
    assert_eq!(d.write_id, None);
    assert!(d.status.ready);
}

#[test]
fn the_stamp_is_the_controllers_not_the_jobs() {
    let image = image(Some(building_status(&image(None))));
    let job = annotated(
        annotated(job_of(&image, 1, &complete()), IMAGE_ID_ANNOTATION, "ami-1"),
        OS_IMAGE_STAMP_ANNOTATION,
        "other-7",
    );
    let d = decide_on(&image, Some(&job), false, &[]);
    assert_eq!(d.write_id.unwrap().stamp, "img-uid1-1");
}

#[test]
fn only_pods_the_job_controls_hand_off_an_id_or_a_failure() {
    let image = image(Some(building_status(&image(None))));
    let job = job_of(&image, 1, &complete());
    let states = [
        ("build", 0, "Completed", ""),
        ("publish", 0, "Completed", "ami-pod"),
    ];
    let owned = pod(&job, &states);
    assert!(controlled_by(&owned, &job));
    // The job-name label and an owner reference to another Job, or a non-controller one.
    let mut stranger = owned.clone();
    stranger.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
    let mut not_controller = owned.clone();
    not_controller.metadata.owner_references.as_mut().unwrap()[0].controller = None;
    for pod in [&stranger, &not_controller] {
        assert!(!controlled_by(pod, &job));
        let d = decide_on(&image, Some(&job), false, std::slice::from_ref(pod));
        assert_eq!(d.write_id, None);
        assert_eq!(ready(&d.status), ("False".into(), "MissingImageID".into()));
    }
    let d = decide_on(&image, Some(&job), false, &[stranger, owned]);
    assert_eq!(d.write_id.unwrap().id, "ami-pod");
    // A failure's exit code, too.
    let failed_job = job_of(&image, 1, &failed());
    let mut exit = pod(&failed_job, &[("build", 9, "Error", "")]);
    exit.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
    let d = decide_on(&image, Some(&failed_job), false, &[exit]);
    let message = d.status.conditions.unwrap()[0].message.clone();
    assert!(!message.contains("code 9"), "{message}");
}

// Choreography.

/// A store that has listed `objects`.
fn listed<K>(objects: &[K]) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    let (store, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object.clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

fn namespace(name: &str, labels: &Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

impl Context {
    /// A context over `jobs` and an unlabelled namespace `team`, with the verifier that plays
    /// the API server.
    fn test(jobs: &[Job]) -> (Arc<Context>, Verifier) {
        Self::test_in(jobs, &[namespace("team", &json!({}))])
    }

    fn test_in(jobs: &[Job], namespaces: &[Namespace]) -> (Arc<Context>, Verifier) {
        let (client, verifier) = mock_client();
        let ctx = Context::new(
            client,
            test_metrics(),
            Some("test".into()),
            listed(jobs),
            listed(namespaces),
        );
        (Arc::new(ctx), verifier)
    }
}

fn run<'a>(
    image: &'a MachineImage,
    ctx: &'a Arc<Context>,
) -> futures::future::BoxFuture<'a, Result<Action, Error>> {
    Box::pin(async move {
        let now = now();
        within(
            "the reconcile",
            STEP * 3,
            Box::pin(reconcile_image(image, ctx, &now)),
        )
        .await
    })
}

fn answer_status(call: crate::runtime::fixtures::Call, image: &MachineImage) {
    let mut answer = serde_json::to_value(image).unwrap();
    answer["status"] = call.body["status"].clone();
    call.ok(&answer);
}

#[tokio::test]
async fn first_build_creates_the_job_then_status_then_an_event() {
    let image = image(None);
    let (ctx, verifier) = Context::test(&[]);
    let answer = image.clone();
    let scenario = verifier.run(|mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::POST);
        assert_eq!(
            call.uri,
            "/apis/batch/v1/namespaces/team/jobs?&fieldManager=kubernetes-upgrader-machineimage"
        );
        assert_eq!(call.body["metadata"]["name"], job_name("img", "uid-1", 1));
        assert_eq!(call.body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let mut created = call.body.clone();
        created["metadata"]["uid"] = json!("job-uid-1");
        call.reply(201, &created);
        let call = server
            .expect_status_apply::<MachineImage>("team", "img", FIELD_MANAGER)
            .await;
        // The UID of the create answer is recorded: the proof that the Job is ours.
        assert_eq!(call.body["status"]["jobRef"]["uid"], "job-uid-1");
        assert_eq!(call.body["status"]["phase"], "Building");
        assert_eq!(call.body["status"]["attempts"], 1);
        assert_eq!(call.body["status"]["ready"], false);
        answer_status(call, &answer);
        server.expect_event("team", COMPONENT, "CreatingJob").await;
        server
    });
    let action = run(&image, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(decide::BUILDING_RECHECK));
    scenario.finish().await;
}

#[tokio::test]
async fn a_job_that_already_exists_is_ours_only_if_the_current_status_records_it() {
    // This reconcile runs on a stale copy: the image's current status already records the Job.
    let image = image(None);
    let (ctx, verifier) = Context::test(&[]);
    let mut fresh = image.clone();
    fresh.status = Some(serde_json::from_value(building_status(&image)).unwrap());
    let ours = job_of(&image, 1, &json!({}));
    let name = ours.name_any();
    let scenario = verifier.run(move |mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::POST);
        call.fail(409, "AlreadyExists");
        let call = server.next().await;
        assert_eq!(call.method, Method::GET);
        assert_eq!(
            call.uri,
            format!("/apis/batch/v1/namespaces/team/jobs/{name}")
        );
        call.ok(&serde_json::to_value(&ours).unwrap());
        let call = server.next().await;
        assert_eq!(call.method, Method::GET);
        assert_eq!(
            call.uri,
            "/apis/kubernetesupgraded.dimitrikoshkin.com/v1alpha1/namespaces/team/machineimages/img"
        );
        call.ok(&serde_json::to_value(&fresh).unwrap());
        server
    });
    // Nothing written from the stale copy, no event; a look again soon.
    let action = run(&image, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(RETRY_BASE));
    scenario.finish().await;
}

#[tokio::test]
async fn a_job_that_took_the_name_first_is_refused_with_a_condition() {
    let image = image(None);
    let (ctx, verifier) = Context::test(&[]);
    // Made by someone else before the manager: the image's labels, an owner reference with
    // its UID, a completed build with an image ID. Its UID is recorded nowhere.
    let mut forged = job_of(&image, 1, &complete());
    forged.metadata.uid = Some("forged-uid".into());
    forged
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(IMAGE_ID_ANNOTATION.into(), "ami-forged".into());
    let name = forged.name_any();
    let answer = image.clone();
    let scenario = verifier.run(move |mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::POST);
        call.fail(409, "AlreadyExists");
        let call = server.next().await;
        assert_eq!(
            call.uri,
            format!("/apis/batch/v1/namespaces/team/jobs/{name}")
        );
        call.ok(&serde_json::to_value(&forged).unwrap());
        let call = server.next().await;
        assert_eq!(call.method, Method::GET);
        call.ok(&serde_json::to_value(&answer).unwrap());
        // No spec.id write: the status says why, once, with a Warning.
        let call = server
            .expect_status_apply::<MachineImage>("team", "img", FIELD_MANAGER)
            .await;
        let status = &call.body["status"];
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["attempts"], 1);
        assert_eq!(status["ready"], false);
        assert!(status.get("jobRef").is_none(), "{status}");
        assert_eq!(status["conditions"][0]["reason"], "JobNotTrusted");
        let message = status["conditions"][0]["message"].as_str().unwrap();
        assert!(
            message.contains(&name) && message.contains("forged-uid"),
            "{message}"
        );
        answer_status(call, &answer);
        let event = server
            .expect_event("team", COMPONENT, "JobNotTrusted")
            .await;
        assert_eq!(event["type"], "Warning");
        server
    });
    let action = run(&image, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(decide::TAKEN_NAME_RETRY));
    scenario.finish().await;
}

#[tokio::test]
async fn steady_state_makes_no_calls() {
    let built = {
        let image = image(Some(building_status(&image(None))));
        let job = job_of(&image, 1, &complete());
        let mut after = image.clone();
        after.spec.id = Some("ami-1".into());
        after
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(OS_IMAGE_STAMP_ANNOTATION.into(), "img-uid1-1".into());
        let mut with_annotation = job.clone();
        with_annotation
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(IMAGE_ID_ANNOTATION.into(), "ami-1".into());
        after.status = Some(decide_on(&after, Some(&with_annotation), false, &[]).status);
        (after, with_annotation)
    };
    let (image, job) = built;
    let (ctx, verifier) = Context::test(&[job]);
    let action = run(&image, &ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    verifier.assert_no_more_calls().await;

    // A static image too.
    let mut spec = build_spec();
    spec["id"] = json!("ami-2");
    let mut static_image = image_with(&spec, &json!({}), None);
    static_image.status = Some(decide_on(&static_image, None, false, &[]).status);
    let (ctx, verifier) = Context::test(&[]);
    run(&static_image, &ctx).await.unwrap();
    verifier.assert_no_more_calls().await;
}

#[tokio::test]
async fn a_completed_job_hands_off_through_the_termination_message() {
    let image = image(Some(building_status(&image(None))));
    let job = job_of(&image, 1, &complete());
    let job_name_1 = job.name_any();
    let owner = job.clone();
    let (ctx, verifier) = Context::test(&[job]);
    let answer = image.clone();
    let scenario = verifier.run(move |mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::GET);
        assert_eq!(
            call.uri,
            format!("/api/v1/namespaces/team/pods?&labelSelector=batch.kubernetes.io%2Fjob-name%3D{job_name_1}")
        );
        let pod = serde_json::to_value(pod(&owner, &[("build", 0, "Completed", ""), ("publish", 0, "Completed", "ami-42")])).unwrap();
        call.ok(&json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod]}));
        let call = server.next().await;
        assert_eq!(call.method, Method::PATCH);
        assert_eq!(
            call.uri,
            "/apis/kubernetesupgraded.dimitrikoshkin.com/v1alpha1/namespaces/team/machineimages/img?&force=true&fieldManager=kubernetes-upgrader-machineimage"
        );
        assert_eq!(call.body["spec"], json!({"id": "ami-42"}), "only spec.id");
        assert_eq!(
            call.body["metadata"]["annotations"],
            json!({OS_IMAGE_STAMP_ANNOTATION: "img-uid1-1"})
        );
        let patched = serde_json::to_value(&answer).unwrap();
        call.ok(&patched);
        let call = server
            .expect_status_apply::<MachineImage>("team", "img", FIELD_MANAGER)
            .await;
        assert_eq!(call.body["status"]["ready"], true);
        assert_eq!(call.body["status"]["phase"], "Created");
        answer_status(call, &answer);
        server.expect_event("team", COMPONENT, "Built").await;
        server
    });
    run(&image, &ctx).await.unwrap();
    scenario.finish().await;
}

#[tokio::test]
async fn a_failed_id_write_writes_no_status() {
    let image = image(Some(building_status(&image(None))));
    let mut job = job_of(&image, 1, &complete());
    job.metadata
        .annotations
        .get_or_insert_default()
        .insert(IMAGE_ID_ANNOTATION.into(), "ami-1".into());
    let (ctx, verifier) = Context::test(&[job]);
    let scenario = verifier.run(|mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::PATCH);
        call.fail(500, "InternalError");
        server
    });
    let err = run(&image, &ctx).await.unwrap_err();
    assert_eq!(err.category(), "WriteImageId");
    scenario.finish().await;
}

#[tokio::test]
async fn a_job_missing_from_the_cache_is_read_before_anything_is_created() {
    // The status names attempt 1's Job, seen running before; the cache has not seen it yet.
    let created = image(Some(building_status(&image(None))));
    let job = job_of(&created, 1, &json!({"active": 1}));
    let mut image = created.clone();
    image.status = Some(decide_on(&created, Some(&job), false, &[]).status);
    let (ctx, verifier) = Context::test(&[]);
    let name = job.name_any();
    let scenario = verifier.run(move |mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::GET);
        assert_eq!(
            call.uri,
            format!("/apis/batch/v1/namespaces/team/jobs/{name}")
        );
        call.ok(&serde_json::to_value(&job).unwrap());
        server
    });
    // Still building: the status already says so, so nothing is written.
    let action = run(&image, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(decide::BUILDING_RECHECK));
    scenario.finish().await;
}

#[tokio::test]
async fn a_job_being_deleted_is_retried_with_the_next_attempt() {
    let image = image(Some(building_status(&image(None))));
    let mut job = job_of(&image, 1, &json!({"active": 1}));
    job.metadata.deletion_timestamp = Some(now());
    job.metadata.finalizers = Some(vec!["orphan".into()]);
    let (ctx, verifier) = Context::test(&[job]);
    let answer = image.clone();
    let scenario = verifier.run(|mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::POST);
        assert_eq!(call.body["metadata"]["name"], job_name("img", "uid-1", 2));
        let body = call.body.clone();
        call.reply(201, &body);
        let call = server
            .expect_status_apply::<MachineImage>("team", "img", FIELD_MANAGER)
            .await;
        assert_eq!(call.body["status"]["attempts"], 2);
        answer_status(call, &answer);
        server.expect_event("team", COMPONENT, "CreatingJob").await;
        server
    });
    run(&image, &ctx).await.unwrap();
    scenario.finish().await;
}

// Build pods the namespace does not allow.

fn privileged_spec() -> Value {
    let mut spec = build_spec();
    spec["jobTemplate"]["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    spec
}

fn lifted() -> BuildPodPolicy {
    BuildPodPolicy {
        privileged: true,
        ..BuildPodPolicy::default()
    }
}

#[test]
fn a_build_pod_the_namespace_refuses_never_becomes_a_job() {
    let image = image_with(&privileged_spec(), &json!({}), None);
    let d = decide_on(&image, None, false, &[]);
    assert!(d.create.is_none());
    assert_eq!(d.status.phase, Some(MachineImagePhase::Failed));
    assert!(!d.status.ready);
    assert_eq!(
        ready(&d.status),
        ("False".into(), "BuildPodNotAllowed".into())
    );
    let message = &d.status.conditions.as_ref().unwrap()[0].message;
    assert!(
        message.contains("spec.jobTemplate.spec.containers[0].securityContext.privileged")
            && message
                .contains("kubernetesupgraded.dimitrikoshkin.com/build-pod-security=privileged"),
        "{message}"
    );
    // No attempt is counted, nothing is recorded as answered.
    assert_eq!((d.status.attempts, d.status.job_ref.clone()), (None, None));
    assert_eq!(d.status.job_template_hash, None);
    assert_eq!(d.notes.len(), 1);
    assert!(d.notes[0].warning && d.notes[0].reason == "BuildPodNotAllowed");
    assert_eq!(d.requeue, None, "a namespace change brings it back");

    // Steady: the same status, no second warning.
    let mut after = image.clone();
    after.status = Some(d.status.clone());
    let again = decide_on(&after, None, false, &[]);
    assert!(again.create.is_none() && again.notes.is_empty());
    assert_eq!(again.status, d.status);

    // Once the namespace allows it, the next reconcile creates attempt 1.
    let allowed = decide_in(&after, None, false, &[], &lifted());
    let job = allowed.create.expect("a Job");
    assert_eq!(job.name_any(), job_name("img", "uid-1", 1));
    assert_eq!(allowed.status.phase, Some(MachineImagePhase::Building));
    assert_eq!(ready(&allowed.status), ("False".into(), "Building".into()));
}

#[test]
fn a_refused_rebuild_keeps_the_built_image_ready() {
    let built = {
        let image = image(Some(building_status(&image(None))));
        let job = job_of(&image, 1, &complete());
        let mut after = image.clone();
        after.spec.id = Some("ami-1".into());
        after.status = Some(decide_on(&after, Some(&job), false, &[]).status);
        (after, job)
    };
    let (mut image, job) = built;
    Arc::make_mut(&mut image.spec.job_template)
        .spec
        .host_network = Some(true);
    image
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(REBUILD_ANNOTATION.into(), "again".into());
    let d = decide_on(&image, Some(&job), false, &[]);
    assert!(d.create.is_none());
    assert!(d.status.ready, "the image ID still stands");
    assert_eq!(d.status.phase, Some(MachineImagePhase::Failed));
    assert_eq!(
        ready(&d.status),
        ("True".into(), "BuildPodNotAllowed".into())
    );
    // The rebuild is not taken as answered: a namespace that allows it later builds it.
    assert_eq!(d.status.rebuild, None);
    assert_eq!(d.status.attempts, Some(1));
    let mut after = image.clone();
    after.status = Some(d.status.clone());
    let allowed = decide_in(&after, Some(&job), false, &[], &lifted());
    assert_eq!(
        allowed.create.map(|j| j.name_any()),
        Some(job_name("img", "uid-1", 2))
    );
}

#[tokio::test]
async fn a_refused_build_writes_status_and_one_warning_and_creates_nothing() {
    let image = image_with(&privileged_spec(), &json!({}), None);
    let (ctx, verifier) = Context::test(&[]);
    let answer = image.clone();
    let scenario = verifier.run(|mut server| async move {
        let call = server
            .expect_status_apply::<MachineImage>("team", "img", FIELD_MANAGER)
            .await;
        assert_eq!(call.body["status"]["phase"], "Failed");
        assert_eq!(
            call.body["status"]["conditions"][0]["reason"],
            "BuildPodNotAllowed"
        );
        answer_status(call, &answer);
        server
            .expect_event("team", COMPONENT, "BuildPodNotAllowed")
            .await;
        server
    });
    let action = run(&image, &ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    scenario.finish().await;
}

#[tokio::test]
async fn a_namespace_the_cache_lacks_is_read_before_deciding() {
    let image = image_with(&privileged_spec(), &json!({}), None);
    let (ctx, verifier) = Context::test_in(&[], &[]);
    let answer = image.clone();
    let scenario = verifier.run(|mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::GET);
        assert_eq!(call.uri, "/api/v1/namespaces/team");
        let labelled = namespace(
            "team",
            &json!({"kubernetesupgraded.dimitrikoshkin.com/build-pod-security": "privileged"}),
        );
        call.ok(&serde_json::to_value(labelled).unwrap());
        let call = server.next().await;
        assert_eq!(call.method, Method::POST);
        assert_eq!(
            call.body["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"],
            true
        );
        let created = call.body.clone();
        call.reply(201, &created);
        let call = server
            .expect_status_apply::<MachineImage>("team", "img", FIELD_MANAGER)
            .await;
        assert_eq!(call.body["status"]["phase"], "Building");
        answer_status(call, &answer);
        server.expect_event("team", COMPONENT, "CreatingJob").await;
        server
    });
    run(&image, &ctx).await.unwrap();
    scenario.finish().await;
}

#[tokio::test]
async fn a_namespace_that_cannot_be_read_fails_the_reconcile_before_any_write() {
    let image = image(None);
    let (ctx, verifier) = Context::test_in(&[], &[]);
    let scenario = verifier.run(|mut server| async move {
        let call = server.next().await;
        assert_eq!(call.uri, "/api/v1/namespaces/team");
        call.fail(403, "Forbidden");
        server
    });
    let err = run(&image, &ctx).await.unwrap_err();
    assert_eq!(err.category(), "GetNamespaceError");
    scenario.finish().await;
}

#[test]
fn a_namespace_change_brings_back_only_its_refused_images() {
    let refused = |name: &str, ns: &str| {
        let mut image = image_with(&privileged_spec(), &json!({}), None);
        image.metadata.name = Some(name.into());
        image.metadata.namespace = Some(ns.into());
        image.status = Some(decide_on(&image, None, false, &[]).status);
        image
    };
    let mut building = image(None);
    building.metadata.name = Some("building".into());
    building.status = Some(decide_on(&building, None, false, &[]).status);
    let images: Vec<Guarded> = [
        refused("a", "team"),
        refused("b", "other"),
        building,
        refused("c", "team"),
    ]
    .into_iter()
    .map(|i| DeserializeGuard(Ok(i)))
    .collect();
    let store = listed(&images);
    let mut names: Vec<String> = super::refused(&store, "team")
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort();
    assert_eq!(names, ["a", "c"]);
    assert!(super::refused(&store, "elsewhere").is_empty());
}
