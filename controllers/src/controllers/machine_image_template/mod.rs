//! The MachineImageTemplate controller: a template is valid when the Job rendered from it (for a
//! sample version, with [`render_job`](crate::controllers::machine_image::render_job)) passes a
//! server-side dry run in the template's namespace. [`observe`] (the cloned images, and the dry
//! run only when the template's generation changed, so the steady state makes no request) →
//! [`decide()`] (pure) → [`apply`] (one status write, a Warning when it turns invalid). The status
//! also lists the MachineImages cloned from the template (newest first, bounded).

mod apply;
mod decide;
mod observe;

use std::sync::Arc;

use api::v1alpha1::{CLONED_FROM_ANNOTATION, MachineImage, MachineImageTemplate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

pub use decide::{Verdict, decide};
pub use observe::{cloned_images, sample_image};

use crate::controllers::machine_image;
use crate::runtime::backoff::backoff;
use crate::runtime::controller::{Core, InvalidObject, Reconciler, Start, Trigger};
use crate::runtime::status::ApiError;
use crate::runtime::{ControllerMetrics, ReconcileError, Registration, Reporter, Running, Shared};

/// Name in logs and metrics.
pub const CONTROLLER: &str = "machineimagetemplate";
/// Field manager of the status writes.
pub const FIELD_MANAGER: &str = "kubernetes-upgrader-machineimagetemplate";
/// Event source component.
pub const COMPONENT: &str = "machineimagetemplate-reconciler";

/// Reason of `Ready=True`.
pub const REASON_VALID: &str = "Valid";
/// Reason of `Ready=False`: the API server refuses the rendered Job.
pub const REASON_INVALID_JOB_TEMPLATE: &str = "InvalidJobTemplate";
/// The version the sample Job is rendered for.
pub const SAMPLE_VERSION: &str = "v1.31.0";
/// The Debian version the sample Job is rendered with.
pub const SAMPLE_DEB_VERSION: &str = "1.31.0-1.1";
/// The name of the sample image (a valid label value whatever the template's name).
pub const SAMPLE_IMAGE: &str = "template-dry-run";
/// Most image names listed in status.
pub const MAX_LISTED_IMAGES: usize = 32;

/// The manager's handle on this controller.
pub const REGISTRATION: Registration = Registration {
    name: CONTROLLER,
    categories: Error::CATEGORIES,
    start,
};

/// How the store holds templates.
pub type Guarded = DeserializeGuard<MachineImageTemplate>;

/// Shared state of the controller.
pub struct Context {
    core: Core,
    images: Store<machine_image::Guarded>,
}

impl Context {
    /// A context over the shared MachineImage store.
    pub fn new(
        client: Client,
        metrics: ControllerMetrics,
        instance: Option<String>,
        images: Store<machine_image::Guarded>,
    ) -> Self {
        Self {
            core: Core::new(client, metrics, instance, COMPONENT),
            images,
        }
    }
}

/// Failures of a reconcile.
#[derive(
    Debug, thiserror::Error, strum::IntoStaticStr, strum::VariantNames, strum::EnumProperty,
)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error(transparent)]
    InvalidObject(#[from] InvalidObject),
    /// The dry run did not get an answer about the template (the server failed or timed out).
    #[error("the dry run of the rendered Job")]
    DryRun(#[source] ApiError),
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] ApiError),
}

fn start(shared: &Shared) -> Running {
    let templates = shared.caches.cache::<Guarded>();
    let images = shared.caches.cache::<machine_image::Guarded>();
    let reporter = Reporter::new::<Error>(shared, CONTROLLER, COMPONENT);
    let ctx = Context::new(
        shared.client.clone(),
        reporter.metrics.clone(),
        shared.instance.clone(),
        images.store.clone(),
    );
    Start::new(shared, &templates, Trigger::Every, 4)
        .watches(&images, |image: Arc<machine_image::Guarded>| {
            let namespace = image.namespace()?;
            let template = image.annotations().get(CLONED_FROM_ANNOTATION)?.clone();
            Some(ObjectRef::<Guarded>::new(&template).within(&namespace))
        })
        .run(ctx, reporter)
}

impl Reconciler<MachineImageTemplate> for Context {
    type Error = Error;

    fn core(&self) -> &Core {
        &self.core
    }

    async fn reconcile(
        &self,
        template: &MachineImageTemplate,
        now: &Time,
    ) -> Result<Action, Error> {
        let images: Vec<MachineImage> = self
            .images
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok().cloned())
            .collect();
        reconcile_template(template, self, cloned_images(template, &images), now).await
    }

    fn retry(&self, _obj: &Guarded, err: &Error) -> Action {
        match err {
            Error::InvalidObject(_) => Action::await_change(),
            Error::DryRun(_) | Error::WriteStatus(_) => Action::requeue(backoff(
                2,
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(60),
            )),
        }
    }
}

/// The reconcile with the cloned images and the time injected: observe (the dry run, when the
/// generation changed) → decide → apply.
pub async fn reconcile_template(
    template: &MachineImageTemplate,
    ctx: &Context,
    images: Vec<String>,
    now: &Time,
) -> Result<Action, Error> {
    let current = template.status.clone().unwrap_or_default();
    let verdict = if current.observed_generation == template.metadata.generation {
        None
    } else {
        let namespace = template.namespace().unwrap_or_default();
        Some(observe::dry_run(ctx, &namespace, &sample_image(template)).await?)
    };
    let status = decide(template, verdict.as_ref(), images, now);
    apply::apply(ctx, template, &current, &status, verdict.as_ref()).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod jobs_tests;
