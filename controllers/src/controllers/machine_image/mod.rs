//! The MachineImage controller: [`observe`] (the Job `status.jobRef` records, from a
//! label-filtered cache or read directly, and the pods of a finished Job) → decide (pure,
//! [`decide()`]) → [`apply`] (create the attempt's Job and [`settle`] on the answer, write
//! `spec.id`, write status, events).
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

mod apply;
mod decide;
mod observe;
pub mod pod_security;
mod render;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use api::v1alpha1::{MACHINE_IMAGE_NAME_LABEL, MachineImage};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

pub use decide::{
    Creation, Decision, IdError, IdWrite, JobOutcome, Observed, controlled_by, decide,
    handed_off_id, id_container, is_recorded, job_outcome, needs_pods, recorded_uid, settle,
    validate_image_id,
};
pub use pod_security::{BuildPodPolicy, REASON_BUILD_POD_NOT_ALLOWED};
pub use render::{RenderError, job_labels, job_name, render_job, stamp, template_hash};

use crate::runtime::backoff::backoff;
use crate::runtime::controller::{Core, InvalidObject, Reconciler, Start, Trigger};
use crate::runtime::status::ApiError;
use crate::runtime::{ControllerMetrics, ReconcileError, Registration, Reporter, Running, Shared};

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
    core: Core,
    /// The build Jobs: only those labelled with an image name.
    jobs: Store<Job>,
    /// The namespaces, for what each allows build pods.
    namespaces: Store<Namespace>,
    /// Consecutive failures per image uid, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
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
            core: Core::new(client, metrics, instance, COMPONENT),
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
#[derive(
    Debug, thiserror::Error, strum::IntoStaticStr, strum::VariantNames, strum::EnumProperty,
)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error(transparent)]
    InvalidObject(#[from] InvalidObject),
    /// Reading the image's namespace failed.
    #[error("reading the namespace {namespace}")]
    GetNamespaceError {
        /// The namespace.
        namespace: String,
        /// Why.
        #[source]
        source: ApiError,
    },
    /// Reading the whole image (its job template) failed.
    #[error("reading the image's job template")]
    GetImageError(#[source] ApiError),
    /// Reading the image's Job or its pods failed.
    #[error("reading the build Job {job} or its pods")]
    GetLatestJobsError {
        /// The Job.
        job: String,
        /// Why.
        #[source]
        source: ApiError,
    },
    /// Creating the build Job failed.
    #[error("creating the build Job {job}")]
    CreatingJobError {
        /// The Job.
        job: String,
        /// Why.
        #[source]
        source: ApiError,
    },
    /// Writing `spec.id` failed.
    #[error("writing spec.id")]
    WriteImageId(#[source] ApiError),
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] ApiError),
}

fn start(shared: &Shared) -> Running {
    let images = shared.caches.cache::<Guarded>();
    // Only Jobs that carry the image label, v0.6's included; never every Job of the cluster.
    let jobs = shared
        .caches
        .cache_with::<Job>(Some(MACHINE_IMAGE_NAME_LABEL));
    let namespaces = shared.caches.namespaces();
    let reporter = Reporter::new::<Error>(shared, CONTROLLER, COMPONENT);
    let ctx = Context::new(
        shared.client.clone(),
        reporter.metrics.clone(),
        shared.instance.clone(),
        jobs.store.clone(),
        namespaces.store.clone(),
    );
    // Every image change counts (the rebuild annotation does not change the generation); our
    // own status writes then find nothing to do.
    let start = Start::new(shared, &images, Trigger::Every, 16);
    let refused_in = start.store();
    start
        .owns(&jobs)
        // A namespace's label or annotation may now allow the build pods it refused.
        .watches(&namespaces, move |namespace: Arc<Namespace>| {
            refused(&refused_in, &namespace.name_any())
        })
        .run(ctx, reporter)
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

impl Reconciler<MachineImage> for Context {
    type Error = Error;

    fn core(&self) -> &Core {
        &self.core
    }

    async fn reconcile(&self, image: &MachineImage, now: &Time) -> Result<Action, Error> {
        let uid = image.uid().unwrap_or_default();
        let result = match observe::with_job_template(image, self).await {
            Ok(Some(image)) => Box::pin(reconcile_image(&image, self, now)).await,
            // Deleted since the cache saw it: its deletion ends the work.
            Ok(None) => Ok(Action::await_change()),
            Err(err) => Err(err),
        };
        let mut failures = self.failures();
        if result.is_ok() {
            failures.remove(&uid);
        } else {
            let entry = failures.entry(uid).or_default();
            *entry = entry.saturating_add(1);
        }
        result
    }

    /// Permanent errors wait for a change; API failures retry with backoff.
    fn retry(&self, obj: &Guarded, err: &Error) -> Action {
        if let Error::InvalidObject(_) = err {
            return Action::await_change();
        }
        let failures = self
            .failures()
            .get(&obj.uid().unwrap_or_default())
            .copied()
            .unwrap_or(1);
        Action::requeue(backoff(failures, RETRY_BASE, RETRY_CAP))
    }
}

/// The reconcile with the time injected: observe → decide → apply.
pub async fn reconcile_image(
    image: &MachineImage,
    ctx: &Context,
    now: &Time,
) -> Result<Action, Error> {
    let recorded = observe::recorded_job(image, ctx).await?;
    let build_pods = observe::build_pod_policy(ctx, &image.namespace().unwrap_or_default()).await?;
    let observed = Observed {
        image,
        latest: recorded.latest.as_ref(),
        job_gone: recorded.job_gone,
        pods: &recorded.pods,
        build_pods: &build_pods,
        now,
    };
    let decision = decide(&observed);
    Box::pin(apply::apply(ctx, &observed, decision)).await
}

/// The metrics registry a test context registers into.
#[cfg(test)]
fn test_metrics() -> ControllerMetrics {
    Arc::new(crate::runtime::Metrics::default()).controller(CONTROLLER, Error::CATEGORIES)
}

#[cfg(test)]
use crate::runtime::controller::reconcile;

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod tests;
