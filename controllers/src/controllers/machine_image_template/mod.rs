//! The MachineImageTemplate controller: a template is valid when the Job rendered from it (for a
//! sample version, with [`render_job`]) passes a server-side dry run in the template's
//! namespace. The dry run runs only when the template's generation changed, so the steady state
//! makes no request. The status also lists the MachineImages cloned from the template (newest
//! first, bounded), from the shared MachineImage cache.

use std::sync::Arc;

use api::conditions::{self, Desired};
use api::v1alpha1::{
    CLONED_FROM_ANNOTATION, CONDITION_READY, DEBIAN_VERSION_ANNOTATION, MachineImage,
    MachineImageSpec, MachineImageTemplate, MachineImageTemplateStatus,
};
use futures::FutureExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ObjectMeta, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

use crate::controllers::machine_image::{self, render_job};
use crate::runtime::backoff::backoff;
use crate::runtime::status::{WriteError, apply_status, bounded};
use crate::runtime::{
    ControllerMetrics, Events, Note, ReconcileError, Registration, Reporter, Running, Shared,
    all_ready, drive, now, synced,
};

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
    client: Client,
    metrics: ControllerMetrics,
    events: Events,
    images: Store<machine_image::Guarded>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
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
            events: Events::new(client.clone(), COMPONENT, instance),
            client,
            metrics,
            images,
        }
    }
}

/// Failures of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error("the object cannot be read: {0}")]
    InvalidObject(String),
    /// The dry run did not get an answer about the template (the server failed or timed out).
    #[error("the dry run of the rendered Job")]
    DryRun(#[source] WriteError),
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] WriteError),
}

impl ReconcileError for Error {
    const CATEGORIES: &'static [&'static str] = &["InvalidObject", "DryRun", "WriteStatus"];

    fn category(&self) -> &'static str {
        match self {
            Self::InvalidObject(_) => "InvalidObject",
            Self::DryRun(_) => "DryRun",
            Self::WriteStatus(_) => "WriteStatus",
        }
    }
}

fn start(shared: &Shared) -> Running {
    let templates = shared.caches.cache::<Guarded>();
    let images = shared.caches.cache::<machine_image::Guarded>();
    let reporter = Reporter::new::<Error>(shared, CONTROLLER, COMPONENT);
    let ctx = Arc::new(Context::new(
        shared.client.clone(),
        reporter.metrics.clone(),
        shared.instance.clone(),
        images.store.clone(),
    ));
    let ready = all_ready(vec![
        synced(templates.store.clone()),
        synced(images.store.clone()),
    ]);
    let (Some(template_events), Some(image_events)) = (templates.subscribe(), images.subscribe())
    else {
        return Running::stream_ended(ready);
    };
    let shutdown = shared.shutdown.clone();
    let run = async move {
        let results = Controller::for_shared_stream(template_events, templates.store)
            .watches_shared_stream(image_events, |image: Arc<machine_image::Guarded>| {
                let namespace = image.namespace()?;
                let template = image.annotations().get(CLONED_FROM_ANNOTATION)?.clone();
                Some(ObjectRef::<Guarded>::new(&template).within(&namespace))
            })
            .with_config(ControllerConfig::default().concurrency(4))
            .graceful_shutdown_on(shutdown.clone().wait())
            .run(reconcile, error_policy, ctx);
        drive(results, reporter, shutdown).await
    }
    .boxed();
    Running { ready, run }
}

#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run expects
fn error_policy(_obj: Arc<Guarded>, err: &Error, _ctx: Arc<Context>) -> Action {
    match err {
        Error::InvalidObject(_) => Action::await_change(),
        Error::DryRun(_) | Error::WriteStatus(_) => Action::requeue(backoff(
            2,
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        )),
    }
}

/// The sample image a template's Job is rendered for in the dry run.
pub fn sample_image(template: &MachineImageTemplate) -> MachineImage {
    MachineImage {
        metadata: ObjectMeta {
            name: Some(SAMPLE_IMAGE.to_owned()),
            namespace: template.namespace(),
            annotations: Some(
                [(
                    DEBIAN_VERSION_ANNOTATION.to_owned(),
                    SAMPLE_DEB_VERSION.to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: MachineImageSpec {
            version: SAMPLE_VERSION.to_owned(),
            id: None,
            job_template: Arc::new(template.spec.template.spec.job_template.clone()),
        },
        status: None,
    }
}

/// The names of the images cloned from `template` (in its namespace), newest first, at most
/// [`MAX_LISTED_IMAGES`].
pub fn cloned_images<'a>(
    template: &MachineImageTemplate,
    images: impl IntoIterator<Item = &'a MachineImage>,
) -> Vec<String> {
    let name = template.name_any();
    let namespace = template.namespace();
    let mut cloned: Vec<&MachineImage> = images
        .into_iter()
        .filter(|i| {
            i.namespace() == namespace && i.annotations().get(CLONED_FROM_ANNOTATION) == Some(&name)
        })
        .collect();
    cloned.sort_by(|a, b| {
        b.creation_timestamp()
            .map(|t| t.0)
            .cmp(&a.creation_timestamp().map(|t| t.0))
            .then_with(|| b.name_any().cmp(&a.name_any()))
    });
    cloned
        .into_iter()
        .take(MAX_LISTED_IMAGES)
        .map(ResourceExt::name_any)
        .collect()
}

/// What a dry run said about the template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The server accepts the rendered Job.
    Valid,
    /// The server, or rendering, refuses it, with the reason why.
    Invalid(String),
}

/// The desired status: the verdict (when a dry run ran; else the current Ready condition is kept)
/// and the cloned images.
pub fn decide(
    template: &MachineImageTemplate,
    verdict: Option<&Verdict>,
    images: Vec<String>,
    now: &Time,
) -> MachineImageTemplateStatus {
    let current = template.status.clone().unwrap_or_default();
    let conditions = match verdict {
        None => current.conditions.clone(),
        Some(verdict) => {
            let desired = match verdict {
                Verdict::Valid => Desired::new(
                    CONDITION_READY,
                    true,
                    REASON_VALID,
                    format!("a Job rendered for {SAMPLE_VERSION} passes a server-side dry run"),
                ),
                Verdict::Invalid(why) => Desired::new(
                    CONDITION_READY,
                    false,
                    REASON_INVALID_JOB_TEMPLATE,
                    crate::text::bounded(why),
                ),
            };
            Some(conditions::merge(
                current.conditions.as_deref().unwrap_or_default(),
                &[desired],
                template.metadata.generation,
                now,
            ))
        }
    };
    MachineImageTemplateStatus {
        conditions,
        observed_generation: if verdict.is_some() {
            template.metadata.generation
        } else {
            current.observed_generation
        },
        machine_images: Some(images).filter(|i| !i.is_empty()),
    }
}

/// Reconciles one template.
#[tracing::instrument(skip(obj, ctx), fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile(obj: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile();
    let template = match &obj.0 {
        Ok(template) => template,
        Err(invalid) => return Err(Error::InvalidObject(invalid.error.clone())),
    };
    let now = now();
    let images: Vec<MachineImage> = ctx
        .images
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .collect();
    reconcile_template(template, &ctx, cloned_images(template, &images), &now).await
}

/// The reconcile body with the cloned images and the time injected.
pub async fn reconcile_template(
    template: &MachineImageTemplate,
    ctx: &Context,
    images: Vec<String>,
    now: &Time,
) -> Result<Action, Error> {
    let namespace = template.namespace().unwrap_or_default();
    let current = template.status.clone().unwrap_or_default();
    let verdict = if current.observed_generation == template.metadata.generation {
        None
    } else {
        Some(dry_run(ctx, &namespace, &sample_image(template)).await?)
    };
    let status = decide(template, verdict.as_ref(), images, now);
    if status != current {
        let api: Api<MachineImageTemplate> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_status(&api, &template.name_any(), FIELD_MANAGER, &status)
            .await
            .map_err(Error::WriteStatus)?;
    }
    let was_invalid = current
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == CONDITION_READY && c.reason == REASON_INVALID_JOB_TEMPLATE);
    if let Some(Verdict::Invalid(why)) = &verdict
        && !was_invalid
    {
        ctx.events
            .publish(
                template,
                &Note::warning(REASON_INVALID_JOB_TEMPLATE, why.clone()),
            )
            .await;
    }
    Ok(Action::await_change())
}

/// Renders the sample Job and submits it with `dryRun=All`. A refusal (4xx) is a verdict; any
/// other failure is an error to retry.
async fn dry_run(ctx: &Context, namespace: &str, image: &MachineImage) -> Result<Verdict, Error> {
    let job = match render_job(image, 1, None) {
        Ok(job) => job,
        Err(err) => return Ok(Verdict::Invalid(err.to_string())),
    };
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    };
    match bounded(jobs.create(&params, &job)).await {
        // AlreadyExists comes from storage, after validation passed.
        Ok(_) => Ok(Verdict::Valid),
        Err(WriteError::Api(kube::Error::Api(status))) if status.code == 409 => Ok(Verdict::Valid),
        // Bad request or Invalid: the Job itself is refused. Anything else (forbidden, a
        // missing namespace, throttling, server errors) says nothing about the template.
        Err(WriteError::Api(kube::Error::Api(status))) if matches!(status.code, 400 | 422) => {
            Ok(Verdict::Invalid(format!(
                "the API server refuses the Job rendered from spec.template.spec.jobTemplate: {}",
                status.message
            )))
        }
        Err(source) => Err(Error::DryRun(source)),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod jobs_tests;
