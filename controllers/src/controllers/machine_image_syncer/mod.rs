//! The MachineImageSyncer controller:
//! validate (pure, [`validate`]) → observe (the source's versions, the syncer's images and the
//! template, from the shared caches; other source kinds through the dynamic API) → decide (pure,
//! [`decide()`]) → apply (one create per missing image, AlreadyExists meaning done; one status
//! write when something changed; events). Failed reconciles are reported by
//! [`crate::runtime::Reporter`].
//!
//! At most one MachineImage exists per (syncer, version): its name is derived from the syncer's
//! UID and the version ([`names::image_name`]), so a retry after a crash, a race or a stale cache
//! meets AlreadyExists. Images made by v0.6 are found by the two syncer labels.

mod decide;
pub mod names;

use std::sync::Arc;
use std::time::Duration;

use api::v1alpha1::{
    KUBERNETES_VERSION_LABEL, MachineImage, MachineImagePhase, MachineImageSyncer,
    MachineImageTemplate, SYNCER_NAME_LABEL,
};
use futures::FutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DynamicObject, GroupVersionKind, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

pub use decide::{
    API_VERSION, CONDITION_PAUSED, Decision, EVENT_CREATED, Existing, Observed, SourceFailure,
    SourceRef, SourceView, SpecError, Validated, build_image, decide, validate,
};

use super::debian_source;
use crate::runtime::caches::generation_changed;
use crate::runtime::status::{WriteError, apply_status, bounded};
use crate::runtime::{
    ControllerMetrics, Events, Note, ReconcileError, Registration, Reporter, Running, Shared,
    all_ready, drive, now, synced,
};

/// Name in logs and metrics.
pub const CONTROLLER: &str = "machineimagesyncer";
/// Field manager of the creates and status writes.
pub const FIELD_MANAGER: &str = "kubernetes-upgrader-machineimagesyncer";
/// Event source component, as in v0.6.
pub const COMPONENT: &str = "machineimagesyncer-reconciler";

/// How long a reconcile waits for the shared caches it reads to complete their first list.
const CACHE_WAIT: Duration = Duration::from_secs(10);

/// The manager's handle on this controller.
pub const REGISTRATION: Registration = Registration {
    name: CONTROLLER,
    categories: Error::CATEGORIES,
    start,
};

/// How the stores hold our kinds: a malformed object is an error, not a stalled watch.
pub type Guarded = DeserializeGuard<MachineImageSyncer>;
/// MachineImages as the shared cache holds them.
pub type GuardedImage = DeserializeGuard<MachineImage>;
/// MachineImageTemplates as the shared cache holds them.
pub type GuardedTemplate = DeserializeGuard<MachineImageTemplate>;

/// The shared stores the controller reads.
#[derive(Clone)]
pub struct Stores {
    /// Every MachineImage in the watched namespaces.
    pub images: Store<GuardedImage>,
    /// Every MachineImageTemplate.
    pub templates: Store<GuardedTemplate>,
    /// Every DebianRepositorySource.
    pub sources: Store<debian_source::Guarded>,
}

/// Shared state of the controller.
pub struct Context {
    client: Client,
    metrics: ControllerMetrics,
    events: Events,
    stores: Stores,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context over `stores`.
    pub fn new(
        client: Client,
        metrics: ControllerMetrics,
        instance: Option<String>,
        stores: Stores,
    ) -> Self {
        let events = Events::new(client.clone(), COMPONENT, instance);
        Self {
            client,
            metrics,
            events,
            stores,
        }
    }
}

/// Failures of the reconcile itself; a missing source or template is status, not an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error("the object cannot be read: {0}")]
    InvalidObject(String),
    /// The spec cannot be acted on (reported in `Ready` with its own reason).
    #[error("the spec is invalid")]
    InvalidSpec(#[source] SpecError),
    /// Creating a MachineImage failed (v0.6's event reason).
    #[error("creating MachineImage {name}")]
    CreateMachineImageFailed {
        /// The image's name.
        name: String,
        /// Why.
        #[source]
        source: WriteError,
    },
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] WriteError),
}

impl ReconcileError for Error {
    const CATEGORIES: &'static [&'static str] = &[
        "InvalidObject",
        "InvalidSpec",
        "CreateMachineImageFailed",
        "WriteStatus",
    ];

    fn category(&self) -> &'static str {
        match self {
            Self::InvalidObject(_) => "InvalidObject",
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::CreateMachineImageFailed { .. } => "CreateMachineImageFailed",
            Self::WriteStatus(_) => "WriteStatus",
        }
    }
}

/// The syncers in `store` whose reference (chosen by `pick`) resolves to `namespace`/`name`.
fn naming(
    store: &Store<Guarded>,
    namespace: Option<&str>,
    name: &str,
    pick: impl Fn(&Validated) -> Option<&str>,
) -> Vec<ObjectRef<Guarded>> {
    store
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == namespace)
        .filter_map(|s| {
            let syncer = s.0.as_ref().ok()?;
            let valid = validate(syncer).ok()?;
            (pick(&valid) == Some(name)).then(|| ObjectRef::from_obj(s.as_ref()))
        })
        .collect()
}

fn start(shared: &Shared) -> Running {
    let cache = shared.caches.cache::<Guarded>();
    let images = shared.caches.cache::<GuardedImage>();
    let templates = shared.caches.cache::<GuardedTemplate>();
    let sources = shared.caches.cache::<debian_source::Guarded>();
    let reporter = Reporter::new::<Error>(shared, CONTROLLER, COMPONENT);
    let ctx = Arc::new(Context::new(
        shared.client.clone(),
        reporter.metrics.clone(),
        shared.instance.clone(),
        Stores {
            images: images.store.clone(),
            templates: templates.store.clone(),
            sources: sources.store.clone(),
        },
    ));
    let ready = all_ready(vec![
        synced(cache.store.clone()),
        synced(images.store.clone()),
        synced(templates.store.clone()),
        synced(sources.store.clone()),
    ]);
    let (Some(events), Some(image_events), Some(template_events), Some(source_events)) = (
        cache.subscribe(),
        images.subscribe(),
        templates.subscribe(),
        sources.subscribe(),
    ) else {
        return Running::stream_ended(ready);
    };
    let shutdown = shared.shutdown.clone();
    // Our own status writes do not change the generation, so they do not trigger a sync.
    let trigger = generation_changed(events, cache.store.clone());
    let by_template = cache.store.clone();
    let by_source = cache.store.clone();
    let run = async move {
        let results = Controller::for_shared_stream(trigger, cache.store)
            .owns_shared_stream(image_events)
            .watches_shared_stream(template_events, move |template| {
                let name = template.name_any();
                naming(&by_template, template.namespace().as_deref(), &name, |v| {
                    Some(v.template.as_str())
                })
            })
            // Every change of a source, status included: a new version is acted on at once.
            .watches_shared_stream(source_events, move |source| {
                let name = source.name_any();
                let syncers = naming(&by_source, source.namespace().as_deref(), &name, |v| {
                    v.source.is_watched().then_some(v.source.name.as_str())
                });
                tracing::debug!(source = %name, syncers = syncers.len(), resource_version = ?source.resource_version(), "source changed");
                syncers
            })
            .with_config(ControllerConfig::default().concurrency(16))
            .graceful_shutdown_on(shutdown.clone().wait())
            .run(reconcile, error_policy, ctx);
        drive(results, reporter, shutdown).await
    }
    .boxed();
    Running { ready, run }
}

/// Permanent errors wait for a change; failed writes retry soon.
#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run expects
fn error_policy(_obj: Arc<Guarded>, err: &Error, _ctx: Arc<Context>) -> Action {
    match err {
        Error::InvalidObject(_) | Error::InvalidSpec(_) => Action::await_change(),
        Error::CreateMachineImageFailed {
            source: WriteError::Api(kube::Error::Api(status)),
            ..
        } if status.code == 422 || status.code == 403 => Action::requeue(Duration::from_secs(300)),
        Error::CreateMachineImageFailed { .. } | Error::WriteStatus(_) => {
            Action::requeue(Duration::from_secs(5))
        }
    }
}

/// Reconciles one syncer.
#[tracing::instrument(skip(obj, ctx), fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile(obj: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile();
    let syncer = match &obj.0 {
        Ok(syncer) => syncer,
        Err(invalid) => return Err(Error::InvalidObject(invalid.error.clone())),
    };
    // A reconcile before the caches hold their first list would take a missing object for a
    // deleted one.
    // `synced` re-polls: a store's readiness wakes only the last task that waited on it.
    let caches = async {
        synced(ctx.stores.images.clone()).await;
        synced(ctx.stores.templates.clone()).await;
        synced(ctx.stores.sources.clone()).await;
    };
    if tokio::time::timeout(CACHE_WAIT, caches).await.is_err() {
        tracing::warn!("the MachineImage, template or source cache has not synced yet; retrying");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    reconcile_syncer(syncer, &ctx, &now()).await
}

/// The reconcile body with the time injected.
pub async fn reconcile_syncer(
    syncer: &MachineImageSyncer,
    ctx: &Context,
    now: &Time,
) -> Result<Action, Error> {
    let namespace = syncer.namespace().unwrap_or_default();
    let name = syncer.name_any();

    // Validate and observe.
    let validated = validate(syncer);
    let paused = syncer.spec.paused.unwrap_or(false);
    let source = match (&validated, paused) {
        (Ok(valid), false) => Some(Box::pin(read_source(ctx, &valid.source)).await),
        _ => None,
    };
    let images = existing_images(&ctx.stores.images, &namespace, &name);
    let template = validated.as_ref().ok().and_then(|valid| {
        ctx.stores
            .templates
            .get(&ObjectRef::new(&valid.template).within(&namespace))
            .and_then(|t| t.0.as_ref().ok().cloned())
    });

    // Decide.
    let decision = decide(&Observed {
        syncer,
        validated: &validated,
        source: source.as_ref(),
        images: &images,
        template: template.as_ref(),
        now,
    });

    tracing::debug!(creates = decision.creates.len(), requeue = ?decision.requeue, "decided");

    // Apply: the images first, so that the status never claims an image that is not there.
    let api: Api<MachineImage> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    for image in &decision.creates {
        let image_name = image.name_any();
        match bounded(api.create(&params, image)).await {
            Ok(_) => {
                let note = Note::normal(
                    EVENT_CREATED,
                    format!(
                        "created MachineImage {image_name} for version {}",
                        image.spec.version
                    ),
                );
                ctx.events.publish(syncer, &note).await;
            }
            // Created before: by an earlier reconcile that crashed, or one the cache has not
            // shown yet. Done either way.
            Err(WriteError::Api(kube::Error::Api(status))) if status.code == 409 => {}
            Err(source) => {
                return Err(Error::CreateMachineImageFailed {
                    name: image_name,
                    source,
                });
            }
        }
    }
    let current = syncer.status.clone().unwrap_or_default();
    if decision.status != current {
        let syncers: Api<MachineImageSyncer> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_status(&syncers, &name, FIELD_MANAGER, &decision.status)
            .await
            .map_err(Error::WriteStatus)?;
    }
    for note in &decision.notes {
        ctx.events.publish(syncer, note).await;
    }
    match validated {
        Err(err) => Err(Error::InvalidSpec(err)),
        Ok(_) => Ok(decision
            .requeue
            .map_or_else(Action::await_change, Action::requeue)),
    }
}

/// The syncer's images in the cache: those carrying both v0.6 labels with its name.
fn existing_images(store: &Store<GuardedImage>, namespace: &str, syncer: &str) -> Vec<Existing> {
    let mut images: Vec<Existing> = store
        .state()
        .iter()
        .filter(|i| i.namespace().as_deref() == Some(namespace))
        .filter(|i| i.labels().get(SYNCER_NAME_LABEL).map(String::as_str) == Some(syncer))
        .filter_map(|i| {
            Some(Existing {
                name: i.name_any(),
                version_label: i.labels().get(KUBERNETES_VERSION_LABEL)?.clone(),
                spec_version: i.0.as_ref().ok().map(|image| image.spec.version.clone()),
                building: i.0.as_ref().ok().is_some_and(|image| {
                    image.spec.id.as_deref().is_none_or(str::is_empty)
                        && image.status.as_ref().and_then(|s| s.phase)
                            != Some(MachineImagePhase::Failed)
                }),
            })
        })
        .collect();
    images.sort_by(|a, b| a.name.cmp(&b.name));
    images
}

/// Reads the source's versions: a DebianRepositorySource from the shared cache, any other kind
/// through discovery and the dynamic API.
async fn read_source(ctx: &Context, source: &SourceRef) -> Result<SourceView, SourceFailure> {
    let what = format!(
        "{} {}/{} ({})",
        source.kind, source.namespace, source.name, source.api_version
    );
    if source.is_watched() {
        let cached = ctx
            .stores
            .sources
            .get(&ObjectRef::new(&source.name).within(&source.namespace))
            .ok_or_else(|| SourceFailure::NotFound(format!("{what} not found")))?;
        let object = cached.0.as_ref().map_err(|invalid| {
            SourceFailure::Unreachable(format!("{what} cannot be read: {}", invalid.error))
        })?;
        let json = serde_json::to_value(object)
            .map_err(|e| SourceFailure::Unreachable(format!("{what} cannot be read: {e}")))?;
        let view = SourceView::from_json(&json);
        tracing::debug!(source = %what, versions = view.versions.len(), resource_version = ?object.resource_version(), "read the source from the cache");
        return Ok(view);
    }
    let (group, version) = match source.api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", source.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &source.kind);
    let resource = match tokio::time::timeout(
        crate::runtime::status::API_TIMEOUT,
        kube::discovery::pinned_kind(&ctx.client, &gvk),
    )
    .await
    {
        Ok(Ok((resource, _))) => resource,
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
            return Err(SourceFailure::NotFound(format!(
                "{what}: the API server does not serve this kind"
            )));
        }
        Ok(Err(kube::Error::Discovery(err))) => {
            return Err(SourceFailure::NotFound(format!(
                "{what}: the API server does not serve this kind: {err}"
            )));
        }
        Ok(Err(err)) => {
            return Err(SourceFailure::Unreachable(format!(
                "{what}: discovery failed: {}",
                crate::runtime::cause_chain(&err)
            )));
        }
        Err(_) => {
            return Err(SourceFailure::Unreachable(format!(
                "{what}: discovery did not answer"
            )));
        }
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &source.namespace, &resource);
    match bounded(api.get_opt(&source.name)).await {
        Ok(Some(object)) => serde_json::to_value(&object)
            .map(|json| SourceView::from_json(&json))
            .map_err(|e| SourceFailure::Unreachable(format!("{what} cannot be read: {e}"))),
        Ok(None) => Err(SourceFailure::NotFound(format!("{what} not found"))),
        Err(err) => Err(SourceFailure::Unreachable(format!(
            "{what} cannot be read: {}",
            crate::runtime::cause_chain(&err)
        ))),
    }
}

/// The metrics registry a test context registers into.
#[cfg(test)]
fn test_metrics() -> ControllerMetrics {
    Arc::new(crate::runtime::Metrics::default()).controller(CONTROLLER, Error::CATEGORIES)
}

#[cfg(test)]
mod tests;
