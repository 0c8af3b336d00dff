//! Stand-ins for the job controller and the kubelet: a finished build is simulated by writing
//! Job and Pod status through the status subresource, exactly as v1.32 accepts it.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::manifests::FIELD_MANAGER;

/// Label the job controller puts on a Job's pods (current form).
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// Label the job controller puts on a Job's pods (legacy form, read by the samples).
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";

fn time(at: Timestamp) -> Time {
    Time(at)
}

fn condition(
    type_: &str,
    reason: Option<&str>,
    message: Option<&str>,
    at: Timestamp,
) -> JobCondition {
    JobCondition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: reason.map(str::to_owned),
        message: message.map(str::to_owned),
        last_probe_time: Some(time(at)),
        last_transition_time: Some(time(at)),
    }
}

/// Marks the Job succeeded: `startTime`, `completionTime`, `succeeded: 1`, and the conditions
/// `SuccessCriteriaMet=True` then `Complete=True`.
pub async fn job_succeeded(client: &Client, namespace: &str, job: &str) -> Result<Job> {
    let now = Timestamp::now();
    let start = now.checked_sub(SignedDuration::from_secs(5)).unwrap_or(now);
    let status = JobStatus {
        start_time: Some(time(start)),
        completion_time: Some(time(now)),
        succeeded: Some(1),
        conditions: Some(vec![
            condition(
                "SuccessCriteriaMet",
                Some("CompletionsReached"),
                Some("Reached expected number of succeeded pods"),
                now,
            ),
            condition(
                "Complete",
                Some("CompletionsReached"),
                Some("Reached expected number of succeeded pods"),
                now,
            ),
        ]),
        ..JobStatus::default()
    };
    patch_job_status(client, namespace, job, &status).await
}

/// Marks the Job failed: `startTime`, `failed: failed`, and the conditions `FailureTarget=True`
/// then `Failed=True` with `reason` (such as `BackoffLimitExceeded`) and `message`.
pub async fn job_failed(
    client: &Client,
    namespace: &str,
    job: &str,
    failed: i32,
    reason: &str,
    message: &str,
) -> Result<Job> {
    let now = Timestamp::now();
    let start = now.checked_sub(SignedDuration::from_secs(5)).unwrap_or(now);
    let status = JobStatus {
        start_time: Some(time(start)),
        failed: Some(failed),
        conditions: Some(vec![
            condition("FailureTarget", Some(reason), Some(message), now),
            condition("Failed", Some(reason), Some(message), now),
        ]),
        ..JobStatus::default()
    };
    patch_job_status(client, namespace, job, &status).await
}

async fn patch_job_status(
    client: &Client,
    namespace: &str,
    job: &str,
    status: &JobStatus,
) -> Result<Job> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let patch = json!({ "status": status });
    jobs.patch_status(job, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("writing the status of Job {namespace}/{job}"))
}

/// Creates the build Pod of `job` as the job controller would: named `<job>-<suffix>`,
/// labelled with both job-name labels, owned by the Job, with the Job's pod template.
pub async fn create_build_pod(client: &Client, job: &Job, suffix: &str) -> Result<Pod> {
    let namespace = job.namespace().context("the Job has no namespace")?;
    let job_name = job.name_any();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(JOB_NAME_LABEL.to_owned(), job_name.clone());
    labels.insert(LEGACY_JOB_NAME_LABEL.to_owned(), job_name.clone());
    if let Some(uid) = job.uid() {
        labels.insert("batch.kubernetes.io/controller-uid".to_owned(), uid.clone());
        labels.insert("controller-uid".to_owned(), uid);
    }
    let owner = OwnerReference {
        api_version: "batch/v1".to_owned(),
        kind: "Job".to_owned(),
        name: job_name.clone(),
        uid: job.uid().context("the Job has no uid")?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("{job_name}-{suffix}")),
            namespace: Some(namespace.clone()),
            labels: Some(labels),
            annotations: template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(template.spec.unwrap_or_default()),
        status: None,
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    pods.create(
        &PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.to_owned()),
        },
        &pod,
    )
    .await
    .with_context(|| format!("creating the build Pod of Job {namespace}/{job_name}"))
}

/// Marks the Pod succeeded, each container terminated with exit code 0, reason `Completed` and
/// `termination_message` as its message (the image-ID hand-off).
pub async fn pod_succeeded(client: &Client, pod: &Pod, termination_message: &str) -> Result<Pod> {
    let namespace = pod.namespace().context("the Pod has no namespace")?;
    let now = Timestamp::now();
    let start = now.checked_sub(SignedDuration::from_secs(3)).unwrap_or(now);
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let statuses = containers
        .iter()
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready: false,
            restart_count: 0,
            started: Some(false),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 0,
                    reason: Some("Completed".to_owned()),
                    message: Some(termination_message.to_owned()),
                    started_at: Some(time(start)),
                    finished_at: Some(time(now)),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        })
        .collect();
    let status = PodStatus {
        phase: Some("Succeeded".to_owned()),
        container_statuses: Some(statuses),
        start_time: Some(time(start)),
        ..PodStatus::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .with_context(|| format!("writing the status of Pod {namespace}/{}", pod.name_any()))
}

/// The whole successful build with a termination-message hand-off: creates the build Pod,
/// marks it succeeded with `image_id`, then marks the Job succeeded.
pub async fn build_succeeded_with_termination_message(
    client: &Client,
    namespace: &str,
    job_name: &str,
    image_id: &str,
) -> Result<(Job, Pod)> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let job = jobs.get(job_name).await?;
    let pod = create_build_pod(client, &job, "e2e").await?;
    let pod = pod_succeeded(client, &pod, image_id).await?;
    let job = job_succeeded(client, namespace, job_name).await?;
    Ok((job, pod))
}

/// Waits for a Job labelled `selector` to appear in `namespace` and returns it.
pub async fn wait_for_job(
    client: &Client,
    namespace: &str,
    selector: &str,
    timeout: Duration,
) -> Result<Job> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let params = kube::api::ListParams::default().labels(selector);
    crate::wait::eventually(
        &format!("a Job matching {selector} in {namespace}"),
        timeout,
        || {
            let jobs = jobs.clone();
            let params = params.clone();
            async move { Ok(jobs.list(&params).await?.items.into_iter().next()) }
        },
    )
    .await
}
