//! The pure decision step: from the image, its latest Job and that Job's pods to the Job to
//! create (if any), the ID to write (if any), the desired status, the events and the requeue.

use std::time::Duration;

use api::conditions::{self, Desired};
use api::v1alpha1::{
    ATTEMPT_ANNOTATION, CONDITION_READY, IMAGE_ID_ANNOTATION, MachineImage, MachineImagePhase,
    MachineImageStatus, OS_IMAGE_STAMP_ANNOTATION, REBUILD_ANNOTATION,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::pod_security::{self, BuildPodPolicy, REASON_BUILD_POD_NOT_ALLOWED, Refusal};
use super::render::{RenderError, render_job, stamp, template_hash};
use crate::runtime::Note;

/// Longest image ID accepted, in bytes.
pub const MAX_IMAGE_ID: usize = 1024;
/// How often a running build is looked at even without a Job event (v0.6: 1 min).
pub const BUILDING_RECHECK: Duration = Duration::from_secs(60);

/// How long an attempt whose Job name another Job took waits before the next attempt tries its
/// own name: a manager killed between creating a Job and recording its UID recovers this way,
/// and whoever takes names ahead keeps an image busy at this pace at most.
pub const TAKEN_NAME_RETRY: Duration = Duration::from_secs(10);

/// Reason: the image exists.
pub const REASON_BUILT: &str = "Built";
/// Reason: a build Job runs.
pub const REASON_BUILDING: &str = "Building";
/// Reason: the build Job failed.
pub const REASON_JOB_FAILED: &str = "JobFailed";
/// Reason: the build succeeded without handing off an ID.
pub const REASON_MISSING_IMAGE_ID: &str = "MissingImageID";
/// Reason: the build handed off an ID that cannot be one.
pub const REASON_INVALID_IMAGE_ID: &str = "InvalidImageID";
/// Reason: a Job this controller did not create, or whose attempt annotation was changed, stands
/// where its build Job should be; its result is not taken.
pub const REASON_JOB_NOT_TRUSTED: &str = "JobNotTrusted";
/// v0.6's Normal event when a build Job is created.
pub const EVENT_CREATING_JOB: &str = "CreatingJob";

/// How a Job ended, or that it has not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Active, pending or retrying within its backoff limit.
    Running,
    /// It succeeded.
    Succeeded,
    /// It failed, with the Job's reason and message.
    Failed {
        /// The Job's `Failed` reason, such as `BackoffLimitExceeded`.
        reason: String,
        /// The Job's message.
        message: String,
    },
}

/// The outcome of `job`: its `Complete` and `Failed` conditions decide; its counters only when it
/// has neither condition.
pub fn job_outcome(job: &Job) -> JobOutcome {
    let status = job.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let holds = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    if holds("Complete").is_some() {
        return JobOutcome::Succeeded;
    }
    if let Some(failed) = holds("Failed") {
        return JobOutcome::Failed {
            reason: failed.reason.clone().unwrap_or_else(|| "Failed".to_owned()),
            message: failed.message.clone().unwrap_or_default(),
        };
    }
    let active = status.active.unwrap_or(0);
    if active > 0 || holds("FailureTarget").is_some() || holds("SuccessCriteriaMet").is_some() {
        return JobOutcome::Running;
    }
    let spec = job.spec.clone().unwrap_or_default();
    if status.succeeded.unwrap_or(0) >= spec.completions.unwrap_or(1) {
        return JobOutcome::Succeeded;
    }
    let limit = spec.backoff_limit.unwrap_or(6);
    let failed = status.failed.unwrap_or(0);
    if failed > limit {
        return JobOutcome::Failed {
            reason: "BackoffLimitExceeded".to_owned(),
            message: format!("{failed} pods failed, more than the backoff limit of {limit}"),
        };
    }
    JobOutcome::Running
}

/// Why a succeeded build has no usable ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdError {
    /// Neither the annotation nor the termination message carries one.
    Missing,
    /// The handed-off text cannot be an ID.
    Invalid(String),
}

/// Checks a handed-off ID: trimmed, non-empty, at most [`MAX_IMAGE_ID`] bytes, no control
/// characters.
pub fn validate_image_id(raw: &str) -> Result<String, IdError> {
    let id = raw.trim();
    if id.is_empty() {
        return Err(IdError::Missing);
    }
    if id.len() > MAX_IMAGE_ID {
        return Err(IdError::Invalid(format!(
            "the image ID is {} bytes long, more than {MAX_IMAGE_ID}",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(IdError::Invalid(
            "the image ID contains control characters".to_owned(),
        ));
    }
    Ok(id.to_owned())
}

/// The container of `job`'s pods whose termination message carries the ID: the template's
/// `imageIDContainer` when the Job has it, else the Job's last container.
pub fn id_container(job: &Job, image: &MachineImage) -> Option<String> {
    let containers = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.clone())
        .unwrap_or_default();
    image
        .spec
        .job_template
        .image_id_container
        .as_ref()
        .filter(|named| containers.iter().any(|c| &c.name == *named))
        .cloned()
        .or_else(|| containers.last().map(|c| c.name.clone()))
}

/// Newest pods first.
fn newest_first(pods: &[Pod]) -> Vec<&Pod> {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by(|a, b| {
        b.creation_timestamp()
            .map(|t| t.0)
            .cmp(&a.creation_timestamp().map(|t| t.0))
            .then_with(|| b.name_any().cmp(&a.name_any()))
    });
    pods
}

/// The image ID a succeeded `job` hands off: its annotation wins; else the termination message
/// of `container` in a succeeded pod (the newest).
pub fn handed_off_id(job: &Job, pods: &[Pod], container: Option<&str>) -> Result<String, IdError> {
    if let Some(annotation) = job.annotations().get(IMAGE_ID_ANNOTATION) {
        return validate_image_id(annotation);
    }
    let Some(container) = container else {
        return Err(IdError::Missing);
    };
    let message = newest_first(pods).into_iter().find_map(|pod| {
        pod.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|s| s.name == container)?
            .state
            .as_ref()?
            .terminated
            .as_ref()
            .filter(|t| t.exit_code == 0)?
            .message
            .clone()
    });
    validate_image_id(message.as_deref().unwrap_or_default())
}

/// The failed container of the newest pod that has one: `container NAME exited with code N
/// (REASON)`.
pub fn failed_container(pods: &[Pod]) -> Option<String> {
    newest_first(pods).into_iter().find_map(|pod| {
        let status = pod.status.as_ref()?;
        status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
            .find_map(|s| {
                let terminated = s.state.as_ref()?.terminated.as_ref()?;
                (terminated.exit_code != 0).then(|| {
                    format!(
                        "container {} exited with code {} ({})",
                        s.name,
                        terminated.exit_code,
                        terminated.reason.as_deref().unwrap_or("no reason")
                    )
                })
            })
    })
}

/// Whether `pod` is one of `job`'s own pods: its controller owner reference carries the Job's
/// UID. Labels such as `job-name` are written by whoever creates the pod, so they prove nothing.
pub fn controlled_by(pod: &Pod, job: &Job) -> bool {
    let Some(uid) = job.metadata.uid.as_deref() else {
        return false;
    };
    pod.owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.kind == "Job" && r.uid == uid)
}

/// The UID of the build Job this controller created for `image`, as it recorded it in
/// `status.jobRef` from the create answer.
pub fn recorded_uid(image: &MachineImage) -> Option<&str> {
    image
        .status
        .as_ref()?
        .job_ref
        .as_ref()?
        .uid
        .as_deref()
        .filter(|uid| !uid.is_empty())
}

/// Whether `job` is the build Job this controller created for `image`: the one whose UID it
/// recorded. Labels, owner references and annotations are written by whoever creates a Job
/// (a build pod's service account may be able to), so they prove nothing.
pub fn is_recorded(image: &MachineImage, job: &Job) -> bool {
    recorded_uid(image).is_some_and(|uid| job.metadata.uid.as_deref() == Some(uid))
}

/// Whether deciding about `job` needs its pods: a failure (for the exit code) or a success that
/// does not carry the ID annotation (for the termination message).
pub fn needs_pods(job: &Job) -> bool {
    match job_outcome(job) {
        JobOutcome::Running => false,
        JobOutcome::Failed { .. } => true,
        JobOutcome::Succeeded => !job.annotations().contains_key(IMAGE_ID_ANNOTATION),
    }
}

/// The attempt number a Job records (0 for Jobs without one, such as v0.6's).
pub fn attempt_of(job: &Job) -> i32 {
    job.annotations()
        .get(ATTEMPT_ANNOTATION)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// What the controller saw.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The image.
    pub image: &'a MachineImage,
    /// The build Job `status.jobRef` records by UID ([`is_recorded`]); no other Job counts.
    pub latest: Option<&'a Job>,
    /// `status.jobRef` names a Job that no longer exists.
    pub job_gone: bool,
    /// The pods labelled with the latest Job's name, when [`needs_pods`] asked for them; only
    /// those it controls ([`controlled_by`]) are read.
    pub pods: &'a [Pod],
    /// What the image's namespace allows build pods.
    pub build_pods: &'a BuildPodPolicy,
    /// The time of this reconcile.
    pub now: &'a Time,
}

/// The ID to write to `spec.id`, and the stamp of the build that produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdWrite {
    /// The image ID.
    pub id: String,
    /// `MACHINE_IMAGE_STAMP` of the build.
    pub stamp: String,
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// A new attempt's Job to create.
    pub create: Option<Job>,
    /// An ID to write to `spec.id`.
    pub write_id: Option<IdWrite>,
    /// The desired status.
    pub status: MachineImageStatus,
    /// Events, on transitions only.
    pub notes: Vec<Note>,
    /// When to look again without an event (`None`: wait for a change).
    pub requeue: Option<Duration>,
}

/// What the latest attempt recorded: its number, the rebuild value it answered and its
/// template hash, from the status only: a Job's annotations can be changed by others.
fn recorded(status: &MachineImageStatus) -> (i32, Option<String>, Option<String>) {
    (
        status.attempts.unwrap_or(0),
        status.rebuild.clone(),
        status.job_template_hash.clone(),
    )
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".to_owned()),
        kind: Some("Job".to_owned()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The outcome of the reconcile, before it becomes a status.
struct Outcome {
    phase: Option<MachineImagePhase>,
    ready: bool,
    reason: &'static str,
    message: String,
    job_ref: Option<ObjectReference>,
    completion: Option<Time>,
    requeue: Option<Duration>,
    warning: bool,
}

/// Decides one reconcile.
pub fn decide(observed: &Observed<'_>) -> Decision {
    let image = observed.image;
    let current = image.status.clone().unwrap_or_default();
    let id = image.spec.id.clone().filter(|id| !id.is_empty());
    let (attempts, answered_rebuild, recorded_hash) = recorded(&current);
    let rebuild = image.annotations().get(REBUILD_ANNOTATION).cloned();
    let hash = template_hash(&image.spec.job_template);
    let ttl = image.spec.job_template.ttl_seconds_after_finished.is_some();

    let rebuild_requested = rebuild.is_some() && rebuild != answered_rebuild;
    let template_changed =
        id.is_none() && attempts > 0 && recorded_hash.as_ref().is_some_and(|h| *h != hash);
    // A Job removed by its TTL is not a request to retry (the rebuild annotation is).
    let gone_after_failure =
        observed.latest.is_none() && ttl && current.phase == Some(MachineImagePhase::Failed);
    // An attempt whose Job name another Job held (so no Job is recorded) waits before the next
    // attempt tries its own name, so that whoever takes names ahead cannot keep it busy.
    let refused = observed.latest.is_none()
        && current.job_ref.is_none()
        && ready_reason(&current) == Some(REASON_JOB_NOT_TRUSTED);
    let retry_in = remaining(
        current.build_start_time.as_ref(),
        observed.now,
        TAKEN_NAME_RETRY,
    );
    let retry_taken = refused && retry_in.is_zero();
    let no_job = observed.latest.is_none() && id.is_none() && !gone_after_failure && !refused;
    let start = rebuild_requested || template_changed || no_job || retry_taken;

    let mut status = MachineImageStatus {
        observed_generation: image.metadata.generation,
        attempts: Some(attempts).filter(|a| *a > 0),
        rebuild: answered_rebuild.clone(),
        job_template_hash: recorded_hash.clone(),
        build_start_time: current.build_start_time.clone(),
        build_completion_time: current.build_completion_time.clone(),
        ..MachineImageStatus::default()
    };
    let mut notes = Vec::new();
    let mut create = None;
    let mut write_id = None;

    let outcome = if start {
        let attempt = attempts.saturating_add(1);
        let rendered = render_job(image, attempt, rebuild.as_deref())
            .map_err(NoJob::Invalid)
            .and_then(|job| allowed(job, observed.build_pods).map_err(NoJob::NotAllowed));
        match rendered {
            Ok(job) => {
                let why = if rebuild_requested {
                    format!(
                        "the rebuild annotation is {:?}",
                        rebuild.unwrap_or_default()
                    )
                } else if template_changed {
                    "the job template changed".to_owned()
                } else if retry_taken {
                    "the previous attempt's Job name was taken by a Job this controller did not create".to_owned()
                } else {
                    "the image has no ID".to_owned()
                };
                notes.push(Note::normal(
                    EVENT_CREATING_JOB,
                    format!(
                        "Creating Job {} (attempt {attempt}) to build {}: {why}",
                        job.name_any(),
                        image.spec.version
                    ),
                ));
                status.attempts = Some(attempt);
                status.rebuild = image.annotations().get(REBUILD_ANNOTATION).cloned();
                status.job_template_hash = Some(hash);
                status.build_start_time = Some(observed.now.clone());
                status.build_completion_time = None;
                let outcome = Outcome {
                    phase: Some(MachineImagePhase::Building),
                    ready: id.is_some(),
                    reason: REASON_BUILDING,
                    message: format!("build attempt {attempt} runs in Job {}", job.name_any()),
                    job_ref: Some(job_ref(&job)),
                    completion: None,
                    requeue: Some(BUILDING_RECHECK),
                    warning: false,
                };
                create = Some(job);
                outcome
            }
            Err(NoJob::Invalid(err)) => invalid(&err, id.is_some()),
            Err(NoJob::NotAllowed(refusal)) => not_allowed(&refusal, id.is_some()),
        }
    } else if let Some(job) = observed.latest {
        decide_job(
            image,
            job,
            attempts,
            observed.pods,
            id.as_deref(),
            &mut write_id,
        )
    } else if refused {
        Outcome {
            phase: Some(MachineImagePhase::Failed),
            ready: id.is_some(),
            reason: REASON_JOB_NOT_TRUSTED,
            message: previous_message(&current)
                .unwrap_or_else(|| "the build Job was not created by this controller".to_owned()),
            job_ref: None,
            completion: current.build_completion_time.clone(),
            requeue: Some(retry_in),
            warning: true,
        }
    } else if let Some(id) = &id {
        Outcome {
            phase: Some(MachineImagePhase::Created),
            ready: true,
            reason: REASON_BUILT,
            message: format!("the image ID is {id}"),
            job_ref: None,
            completion: current.build_completion_time.clone(),
            requeue: None,
            warning: false,
        }
    } else {
        // A failed build whose Job its TTL removed: it stays failed until a rebuild is asked.
        Outcome {
            phase: Some(MachineImagePhase::Failed),
            ready: false,
            reason: REASON_JOB_FAILED,
            message: previous_message(&current)
                .unwrap_or_else(|| "the build failed and its Job is gone".to_owned()),
            job_ref: None,
            completion: current.build_completion_time.clone(),
            requeue: None,
            warning: false,
        }
    };
    if !start {
        status.build_completion_time.clone_from(&outcome.completion);
    }
    conclude(
        image,
        &current,
        status,
        outcome,
        notes,
        create,
        write_id,
        observed.now,
    )
}

/// What is left of `wait` since `since` (nothing when `since` is unknown or in the future).
fn remaining(since: Option<&Time>, now: &Time, wait: Duration) -> Duration {
    let Some(since) = since else {
        return Duration::ZERO;
    };
    Duration::try_from(now.0.duration_since(since.0))
        .map_or(Duration::ZERO, |elapsed| wait.saturating_sub(elapsed))
}

/// The reason of the current `Ready` condition.
fn ready_reason(status: &MachineImageStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == CONDITION_READY)
        .map(|c| c.reason.as_str())
}

/// The message of the current `Ready` condition.
fn previous_message(status: &MachineImageStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == CONDITION_READY)
        .map(|c| c.message.clone())
}

/// The decision from its outcome: the status's remaining fields, the `Ready` condition and the
/// events of a transition.
#[allow(clippy::too_many_arguments)] // the parts of one decision, assembled once
fn conclude(
    image: &MachineImage,
    current: &MachineImageStatus,
    mut status: MachineImageStatus,
    outcome: Outcome,
    mut notes: Vec<Note>,
    create: Option<Job>,
    write_id: Option<IdWrite>,
    now: &Time,
) -> Decision {
    status.ready = outcome.ready;
    status.phase = outcome.phase;
    let same_build = current.job_ref.as_ref().and_then(|r| r.name.as_ref())
        == outcome.job_ref.as_ref().and_then(|r| r.name.as_ref());
    let transition = !same_build || ready_reason(current) != Some(outcome.reason);
    if transition && outcome.phase != Some(MachineImagePhase::Building) {
        if outcome.warning {
            notes.push(Note::warning(outcome.reason, outcome.message.clone()));
        } else if outcome.reason == REASON_BUILT && outcome.job_ref.is_some() {
            notes.push(Note::normal(REASON_BUILT, outcome.message.clone()));
        }
    }
    status.conditions = Some(conditions::merge(
        current.conditions.as_deref().unwrap_or_default(),
        &[Desired::new(
            CONDITION_READY,
            outcome.ready,
            outcome.reason,
            crate::text::bounded(&outcome.message),
        )],
        image.metadata.generation,
        now,
    ));
    status.job_ref = outcome.job_ref;
    Decision {
        create,
        write_id,
        status,
        notes,
        requeue: outcome.requeue,
    }
}

/// What became of the Job a decision asked to create.
#[derive(Clone, Copy, Debug)]
pub enum Creation<'a> {
    /// The create answer: the Job this controller made.
    Created(&'a Job),
    /// The name was taken (409), and the Job under it is not one this controller recorded.
    NameTaken(&'a Job),
}

/// The decision once its Job's creation is known: the created Job's UID is recorded in
/// `status.jobRef`, the one proof that a Job is this controller's own. A Job that already held
/// the name is refused: nothing is taken from it, the attempt is spent (its rebuild value and
/// template hash count as answered), and after [`TAKEN_NAME_RETRY`] the next attempt tries its
/// own name.
pub fn settle(observed: &Observed<'_>, decision: Decision, creation: Creation<'_>) -> Decision {
    match creation {
        Creation::Created(job) => Decision {
            status: MachineImageStatus {
                job_ref: Some(job_ref(job)),
                ..decision.status
            },
            ..decision
        },
        Creation::NameTaken(job) => {
            let image = observed.image;
            let current = image.status.clone().unwrap_or_default();
            let id = image.spec.id.as_deref().filter(|id| !id.is_empty());
            let attempt = decision.status.attempts.unwrap_or(0);
            // The attempt's start time stays: the next one waits from it.
            let status = MachineImageStatus {
                build_completion_time: current.build_completion_time.clone(),
                ..decision.status
            };
            let outcome = Outcome {
                phase: Some(MachineImagePhase::Failed),
                ready: id.is_some(),
                reason: REASON_JOB_NOT_TRUSTED,
                message: format!(
                    "the Job {} of build attempt {attempt} already exists and this controller did not create it (its UID {} is not the one recorded); its result is not taken; attempt {} tries its own name in {}s",
                    job.name_any(),
                    job.metadata.uid.as_deref().unwrap_or("(none)"),
                    attempt.saturating_add(1),
                    TAKEN_NAME_RETRY.as_secs(),
                ),
                job_ref: None,
                completion: current.build_completion_time.clone(),
                requeue: Some(TAKEN_NAME_RETRY),
                warning: true,
            };
            conclude(
                image,
                &current,
                status,
                outcome,
                Vec::new(),
                None,
                None,
                observed.now,
            )
        }
    }
}

fn invalid(err: &RenderError, ready: bool) -> Outcome {
    Outcome {
        phase: None,
        ready,
        reason: err.reason(),
        message: err.to_string(),
        job_ref: None,
        completion: None,
        requeue: None,
        warning: true,
    }
}

/// Why an attempt gets no Job.
enum NoJob {
    /// The image cannot be rendered into one.
    Invalid(RenderError),
    /// The namespace does not allow its pod.
    NotAllowed(Refusal),
}

/// `job` when the namespace allows its pod.
fn allowed(job: Job, policy: &BuildPodPolicy) -> Result<Job, Refusal> {
    let Some(pod) = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return Ok(job);
    };
    pod_security::check(pod, &job.namespace().unwrap_or_default(), policy).map(|()| job)
}

/// A build whose pod the namespace does not allow: failed, never a Job.
fn not_allowed(refusal: &Refusal, ready: bool) -> Outcome {
    Outcome {
        phase: Some(MachineImagePhase::Failed),
        ready,
        reason: REASON_BUILD_POD_NOT_ALLOWED,
        message: refusal.to_string(),
        job_ref: None,
        completion: None,
        requeue: None,
        warning: true,
    }
}

/// The outcome of the latest Job.
fn decide_job(
    image: &MachineImage,
    job: &Job,
    attempt: i32,
    pods: &[Pod],
    id: Option<&str>,
    write_id: &mut Option<IdWrite>,
) -> Outcome {
    let job_name = job.name_any();
    let pods: Vec<Pod> = pods
        .iter()
        .filter(|p| controlled_by(p, job))
        .cloned()
        .collect();
    let status = job.status.clone().unwrap_or_default();
    let finished_at = status.completion_time.clone().or_else(|| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .and_then(|c| c.last_transition_time.clone())
    });
    let base = Outcome {
        phase: Some(MachineImagePhase::Building),
        ready: id.is_some(),
        reason: REASON_BUILDING,
        message: format!("Job {job_name} builds the image"),
        job_ref: Some(job_ref(job)),
        completion: None,
        requeue: Some(BUILDING_RECHECK),
        warning: false,
    };
    // The attempt is the controller's own record; a Job that claims another was changed by
    // someone else, and nothing it says is taken.
    if attempt_of(job) != attempt {
        return Outcome {
            phase: Some(MachineImagePhase::Failed),
            reason: REASON_JOB_NOT_TRUSTED,
            message: format!(
                "Job {job_name} carries the annotation {ATTEMPT_ANNOTATION}={:?}, but this controller created it as attempt {attempt}; its result is not taken",
                job.annotations()
                    .get(ATTEMPT_ANNOTATION)
                    .map_or("", String::as_str),
            ),
            requeue: None,
            warning: true,
            ..base
        };
    }
    match job_outcome(job) {
        JobOutcome::Running => base,
        JobOutcome::Succeeded => {
            let container = id_container(job, image);
            match handed_off_id(job, &pods, container.as_deref()) {
                Ok(built) => {
                    let build_stamp =
                        stamp(&image.name_any(), &image.uid().unwrap_or_default(), attempt);
                    let handed_off = image.annotations().get(OS_IMAGE_STAMP_ANNOTATION)
                        == Some(&build_stamp)
                        && id.is_some();
                    if id != Some(built.as_str()) && !handed_off {
                        *write_id = Some(IdWrite {
                            id: built.clone(),
                            stamp: build_stamp,
                        });
                    }
                    let shown = if handed_off {
                        id.unwrap_or(&built)
                    } else {
                        &built
                    };
                    Outcome {
                        phase: Some(MachineImagePhase::Created),
                        ready: true,
                        reason: REASON_BUILT,
                        message: format!("Job {job_name} built the image {shown}"),
                        completion: finished_at,
                        requeue: None,
                        ..base
                    }
                }
                Err(IdError::Missing) => Outcome {
                    phase: Some(MachineImagePhase::Failed),
                    reason: REASON_MISSING_IMAGE_ID,
                    message: format!(
                        "Job {job_name} succeeded without handing off an image ID: neither the annotation {IMAGE_ID_ANNOTATION} nor a termination message of container {}",
                        container.as_deref().unwrap_or("(none)")
                    ),
                    completion: finished_at,
                    requeue: None,
                    warning: true,
                    ..base
                },
                Err(IdError::Invalid(why)) => Outcome {
                    phase: Some(MachineImagePhase::Failed),
                    reason: REASON_INVALID_IMAGE_ID,
                    message: format!("Job {job_name} handed off an invalid image ID: {why}"),
                    completion: finished_at,
                    requeue: None,
                    warning: true,
                    ..base
                },
            }
        }
        JobOutcome::Failed { reason, message } => {
            let mut text = format!("Job {job_name} failed: {reason}");
            if !message.is_empty() {
                text.push_str(": ");
                text.push_str(&message);
            }
            if let Some(container) = failed_container(&pods) {
                text.push_str("; ");
                text.push_str(&container);
            }
            Outcome {
                phase: Some(MachineImagePhase::Failed),
                reason: REASON_JOB_FAILED,
                message: text,
                completion: finished_at,
                requeue: None,
                warning: true,
                ..base
            }
        }
    }
}
