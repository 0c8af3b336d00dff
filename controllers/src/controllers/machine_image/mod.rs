//! The MachineImage controller: observe (the Job `status.jobRef` records, from a label-filtered
//! cache or read directly, and the pods of a finished Job) → decide (pure, [`decide()`]) → apply
//! (create the attempt's Job and [`settle`] on the answer, write `spec.id`, write status, events).
//!
//! A static image (`spec.id` set, no Job) is ready at once. Otherwise each attempt renders a Job
//! from `spec.jobTemplate` ([`render_job`]) under a name derived from the image's uid and the
//! attempt number, so a retry after a crash gets AlreadyExists instead of a second Job. The
//! image ID comes from the Job's `…/image-id` annotation or, failing that, the termination
//! message of the build container. A new attempt starts only when asked: a new value of the
//! rebuild annotation, a changed job template while the image is not built, or a deleted Job.
//! A Job is created only when the image's namespace allows its pod ([`pod_security`]); a change
//! of the namespace looks again at the images it refused.
//!
//! Only the Job this controller created is trusted: its UID comes from the create answer and is
//! recorded in `status.jobRef`. Labels, owner references and annotations can be written by
//! whoever creates or patches a Job, so another Job that carries them is never read, and on a
//! 409 the Job under the name is read back and refused unless its UID is the recorded one.

mod decide;
pub mod pod_security;
mod render;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use api::v1alpha1::{
    MACHINE_IMAGE_NAME_LABEL, MachineImage, OS_IMAGE_STAMP_ANNOTATION, REBUILD_ANNOTATION,
};
use futures::FutureExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

pub use decide::{
    Creation, Decision, IdError, IdWrite, JobOutcome, Observed, controlled_by, decide,
    handed_off_id, id_container, is_recorded, job_outcome, needs_pods, recorded_uid, settle,
    validate_image_id,
};
pub use pod_security::{BuildPodPolicy, REASON_BUILD_POD_NOT_ALLOWED};
pub use render::{RenderError, job_labels, job_name, render_job, stamp, template_hash};

use crate::runtime::backoff::backoff;
use crate::runtime::projection::lacks_job_template;
use crate::runtime::status::{WriteError, apply_status, bounded};
use crate::runtime::{
    ControllerMetrics, Events, ReconcileError, Registration, Reporter, Running, Shared, all_ready,
    drive, now, synced,
};

/// Name in logs and metrics.
pub const CONTROLLER: &str = "machineimage";
/// Field manager of the Job creations, the `spec.id` writes and the status writes.
pub const FIELD_MANAGER: &str = "kubernetes-upgrader-machineimage";
/// Event source component, as in v0.6.
pub const COMPONENT: &str = render::COMPONENT;
/// Label the job controller puts on a Job's pods.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// The manager's handle on this controller.
pub const REGISTRATION: Registration = Registration {
    name: CONTROLLER,
    categories: Error::CATEGORIES,
    start,
};

/// How the store holds images: a malformed one is an error event, not a stalled watch.
pub type Guarded = DeserializeGuard<MachineImage>;

/// First retry delay after a failed API call, and the cap.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(300);

/// Shared state of the controller.
pub struct Context {
    client: Client,
    metrics: ControllerMetrics,
    events: Events,
    /// The build Jobs: only those labelled with an image name.
    jobs: Store<Job>,
    /// The namespaces, for what each allows build pods.
    namespaces: Store<Namespace>,
    /// Consecutive failures per image uid, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context over `jobs`, the label-filtered store of build Jobs, and `namespaces`.
    pub fn new(
        client: Client,
        metrics: ControllerMetrics,
        instance: Option<String>,
        jobs: Store<Job>,
        namespaces: Store<Namespace>,
    ) -> Self {
        Self {
            events: Events::new(client.clone(), COMPONENT, instance),
            client,
            metrics,
            jobs,
            namespaces,
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Failures of a reconcile. The variant names of API failures are v0.6's Warning reasons.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error("the object cannot be read: {0}")]
    InvalidObject(String),
    /// Reading the image's namespace failed.
    #[error("reading the namespace {namespace}")]
    GetNamespaceError {
        /// The namespace.
        namespace: String,
        /// Why.
        #[source]
        source: WriteError,
    },
    /// Reading the whole image (its job template) failed.
    #[error("reading the image's job template")]
    GetImageError(#[source] WriteError),
    /// Reading the image's Job or its pods failed.
    #[error("reading the build Job {job} or its pods")]
    GetLatestJobsError {
        /// The Job.
        job: String,
        /// Why.
        #[source]
        source: WriteError,
    },
    /// Creating the build Job failed.
    #[error("creating the build Job {job}")]
    CreatingJobError {
        /// The Job.
        job: String,
        /// Why.
        #[source]
        source: WriteError,
    },
    /// Writing `spec.id` failed.
    #[error("writing spec.id")]
    WriteImageId(#[source] WriteError),
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] WriteError),
}

impl ReconcileError for Error {
    const CATEGORIES: &'static [&'static str] = &[
        "InvalidObject",
        "GetNamespaceError",
        "GetImageError",
        "GetLatestJobsError",
        "CreatingJobError",
        "WriteImageId",
        "WriteStatus",
    ];

    fn category(&self) -> &'static str {
        match self {
            Self::InvalidObject(_) => "InvalidObject",
            Self::GetNamespaceError { .. } => "GetNamespaceError",
            Self::GetImageError(_) => "GetImageError",
            Self::GetLatestJobsError { .. } => "GetLatestJobsError",
            Self::CreatingJobError { .. } => "CreatingJobError",
            Self::WriteImageId(_) => "WriteImageId",
            Self::WriteStatus(_) => "WriteStatus",
        }
    }
}

fn start(shared: &Shared) -> Running {
    let images = shared.caches.cache::<Guarded>();
    // Only Jobs that carry the image label, v0.6's included; never every Job of the cluster.
    let jobs = shared
        .caches
        .cache_with::<Job>(Some(MACHINE_IMAGE_NAME_LABEL));
    let namespaces = shared.caches.namespaces();
    let reporter = Reporter::new::<Error>(shared, CONTROLLER, COMPONENT);
    let ctx = Arc::new(Context::new(
        shared.client.clone(),
        reporter.metrics.clone(),
        shared.instance.clone(),
        jobs.store.clone(),
        namespaces.store.clone(),
    ));
    let ready = all_ready(vec![
        synced(images.store.clone()),
        synced(jobs.store.clone()),
        synced(namespaces.store.clone()),
    ]);
    let (Some(image_events), Some(job_events), Some(namespace_events)) =
        (images.subscribe(), jobs.subscribe(), namespaces.subscribe())
    else {
        return Running::stream_ended(ready);
    };
    let shutdown = shared.shutdown.clone();
    let refused_in = images.store.clone();
    let run = async move {
        // Every image change counts (the rebuild annotation does not change the generation);
        // our own status writes then find nothing to do.
        let results = Controller::for_shared_stream(image_events, images.store)
            .owns_shared_stream(job_events)
            // A namespace's label or annotation may now allow the build pods it refused.
            .watches_shared_stream(namespace_events, move |namespace| {
                refused(&refused_in, &namespace.name_any())
            })
            .with_config(ControllerConfig::default().concurrency(16))
            .graceful_shutdown_on(shutdown.clone().wait())
            .run(reconcile, error_policy, ctx);
        drive(results, reporter, shutdown).await
    }
    .boxed();
    Running { ready, run }
}

/// The images of `namespace` whose build pod it refused.
fn refused(images: &Store<Guarded>, namespace: &str) -> Vec<ObjectRef<Guarded>> {
    images
        .state()
        .iter()
        .filter(|guarded| {
            guarded.0.as_ref().is_ok_and(|image| {
                image.namespace().as_deref() == Some(namespace)
                    && image
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_deref())
                        .and_then(|c| api::conditions::find(c, api::v1alpha1::CONDITION_READY))
                        .is_some_and(|c| c.reason == REASON_BUILD_POD_NOT_ALLOWED)
            })
        })
        .map(|guarded| ObjectRef::from_obj(&**guarded))
        .collect()
}

/// What the namespace of an image allows build pods: from the cache, or read when the cache
/// has not seen it yet (a namespace just made). A namespace that is gone allows the baseline.
async fn build_pod_policy(ctx: &Context, namespace: &str) -> Result<BuildPodPolicy, Error> {
    if let Some(cached) = ctx.namespaces.get(&ObjectRef::new(namespace)) {
        return Ok(BuildPodPolicy::of(&cached));
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match bounded(api.get_opt(namespace)).await {
        Ok(found) => Ok(found.as_ref().map(BuildPodPolicy::of).unwrap_or_default()),
        Err(source) => Err(Error::GetNamespaceError {
            namespace: namespace.to_owned(),
            source,
        }),
    }
}

/// Permanent errors wait for a change; API failures retry with backoff.
#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run expects
fn error_policy(obj: Arc<Guarded>, err: &Error, ctx: Arc<Context>) -> Action {
    if let Error::InvalidObject(_) = err {
        return Action::await_change();
    }
    let failures = ctx
        .failures()
        .get(&obj.uid().unwrap_or_default())
        .copied()
        .unwrap_or(1);
    Action::requeue(backoff(failures, RETRY_BASE, RETRY_CAP))
}

/// Reconciles one image.
#[tracing::instrument(skip(obj, ctx), fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile(obj: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile();
    let image = match &obj.0 {
        Ok(image) => image,
        Err(invalid) => return Err(Error::InvalidObject(invalid.error.clone())),
    };
    let now = now();
    let uid = image.uid().unwrap_or_default();
    let result = match with_job_template(image, &ctx).await {
        Ok(Some(image)) => Box::pin(reconcile_image(&image, &ctx, &now)).await,
        // Deleted since the cache saw it: its deletion ends the work.
        Ok(None) => Ok(Action::await_change()),
        Err(err) => Err(err),
    };
    let mut failures = ctx.failures();
    if result.is_ok() {
        failures.remove(&uid);
    } else {
        let entry = failures.entry(uid).or_default();
        *entry = entry.saturating_add(1);
    }
    result
}

/// The whole image, read when the cached one lacks `spec.jobTemplate` and this reconcile may
/// use it: the image has no ID, a rebuild is asked, or its status records a Job (whose ID
/// container the template names). A static image with none of these is decided without it. `None`: the image
/// is gone.
async fn with_job_template<'a>(
    image: &'a MachineImage,
    ctx: &Context,
) -> Result<Option<Cow<'a, MachineImage>>, Error> {
    let needed = image.spec.id.as_deref().is_none_or(str::is_empty)
        || image.annotations().contains_key(REBUILD_ANNOTATION)
        || image.status.as_ref().is_some_and(|s| s.job_ref.is_some());
    if !needed || !lacks_job_template(image) {
        return Ok(Some(Cow::Borrowed(image)));
    }
    let api: Api<MachineImage> =
        Api::namespaced(ctx.client.clone(), &image.namespace().unwrap_or_default());
    let found = bounded(api.get_opt(&image.name_any()))
        .await
        .map_err(Error::GetImageError)?;
    Ok(found.map(Cow::Owned))
}

/// The reconcile body with the time injected.
pub async fn reconcile_image(
    image: &MachineImage,
    ctx: &Context,
    now: &Time,
) -> Result<Action, Error> {
    let namespace = image.namespace().unwrap_or_default();
    let name = image.name_any();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);

    // Observe: the Job the status records, from the cache, or read directly when the cache
    // lacks it (or holds another Job under its name), so a stale cache is never taken for a
    // deleted Job.
    let mut latest = None;
    let mut job_gone = false;
    let referenced = image
        .status
        .as_ref()
        .and_then(|s| s.job_ref.as_ref())
        .and_then(|r| r.name.clone());
    if let Some(job) = referenced {
        let cached = ctx
            .jobs
            .get(&ObjectRef::new(&job).within(&namespace))
            .map(|j| (*j).clone())
            .filter(|j| is_recorded(image, j));
        let found = match cached {
            Some(found) => Some(found),
            None => bounded(jobs_api.get_opt(&job))
                .await
                .map_err(|source| Error::GetLatestJobsError { job, source })?,
        };
        match found {
            // Being deleted (held by a finalizer, such as the orphan one) counts as deleted.
            Some(found)
                if is_recorded(image, &found) && found.metadata.deletion_timestamp.is_none() =>
            {
                latest = Some(found);
            }
            // Gone, being deleted, or another Job under its name: ours is gone.
            _ => job_gone = true,
        }
    }
    let pods = match &latest {
        Some(job) if needs_pods(job) => {
            let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            let selector = format!("{JOB_NAME_LABEL}={}", job.name_any());
            bounded(pods_api.list(&ListParams::default().labels(&selector)))
                .await
                .map_err(|source| Error::GetLatestJobsError {
                    job: job.name_any(),
                    source,
                })?
                .items
        }
        _ => Vec::new(),
    };

    let build_pods = build_pod_policy(ctx, &namespace).await?;

    // Decide.
    let observed = Observed {
        image,
        latest: latest.as_ref(),
        job_gone,
        pods: &pods,
        build_pods: &build_pods,
        now,
    };
    let mut decision = decide(&observed);

    // Apply: the Job, then the ID, then the status; events last.
    let images: Api<MachineImage> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(job) = decision.create.clone() {
        let params = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.to_owned()),
        };
        let job_name = job.name_any();
        match bounded(jobs_api.create(&params, &job)).await {
            Ok(created) => decision = settle(&observed, decision, Creation::Created(&created)),
            Err(WriteError::Api(kube::Error::Api(status))) if status.code == 409 => {
                let creating = |source| Error::CreatingJobError {
                    job: job_name.clone(),
                    source,
                };
                let Some(existing) = bounded(jobs_api.get_opt(&job_name))
                    .await
                    .map_err(creating)?
                else {
                    // Deleted since: the next reconcile creates it.
                    return Ok(Action::requeue(RETRY_BASE));
                };
                // Ours if the image's current status records it: this reconcile ran on a
                // stale copy, and the next one sees the Job.
                let fresh = bounded(images.get_opt(&name)).await.map_err(creating)?;
                if fresh.is_some_and(|f| is_recorded(&f, &existing)) {
                    return Ok(Action::requeue(RETRY_BASE));
                }
                decision = settle(&observed, decision, Creation::NameTaken(&existing));
            }
            Err(source) => {
                return Err(Error::CreatingJobError {
                    job: job_name,
                    source,
                });
            }
        }
    }
    if let Some(write) = &decision.write_id {
        let body = serde_json::json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "MachineImage",
            "metadata": {"name": name, "annotations": {OS_IMAGE_STAMP_ANNOTATION: write.stamp}},
            "spec": {"id": write.id},
        });
        bounded(images.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        ))
        .await
        .map_err(Error::WriteImageId)?;
    }
    if image.status.as_ref() != Some(&decision.status) {
        apply_status(&images, &name, FIELD_MANAGER, &decision.status)
            .await
            .map_err(Error::WriteStatus)?;
    }
    for note in &decision.notes {
        ctx.events.publish(image, note).await;
    }
    Ok(decision
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// The metrics registry a test context registers into.
#[cfg(test)]
fn test_metrics() -> ControllerMetrics {
    Arc::new(crate::runtime::Metrics::default()).controller(CONTROLLER, Error::CATEGORIES)
}

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod tests;
