//! The MachineImageSyncer controller:
//! [`validate`] (pure) → [`observe`] (the source's versions, the syncer's images and
//! the template, from the shared caches; other source kinds through the dynamic API) → decide
//! (pure, [`decide()`]) → [`apply`] (one create per missing image, AlreadyExists meaning done;
//! one status write when something changed; events). Failed reconciles are reported by
//! [`crate::runtime::Reporter`].
//!
//! At most one MachineImage exists per (syncer, version): its name is derived from the syncer's
//! UID and the version ([`names::image_name`]), so a retry after a crash, a race or a stale cache
//! meets AlreadyExists. Images made by v0.6 are found by the two syncer labels.

mod apply;
mod decide;
pub mod names;
mod observe;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use api::v1alpha1::{MachineImage, MachineImageSyncer, MachineImageTemplate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

pub use decide::{
    CONDITION_PAUSED, Decision, EVENT_CREATED, Existing, Observed, SourceFailure, SourceView,
    build_image, decide,
};
pub use validate::{API_VERSION, SourceRef, SpecError, Validated, validate};

use super::debian_source;
use crate::runtime::controller::{Core, InvalidObject, Reconciler, Start, Trigger};
use crate::runtime::status::ApiError;
use crate::runtime::{
    ControllerMetrics, ReconcileError, Registration, Reporter, Running, Shared, synced,
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
    core: Core,
    stores: Stores,
}

impl Context {
    /// A context over `stores`.
    pub fn new(
        client: Client,
        metrics: ControllerMetrics,
        instance: Option<String>,
        stores: Stores,
    ) -> Self {
        Self {
            core: Core::new(client, metrics, instance, COMPONENT),
            stores,
        }
    }
}

/// Failures of the reconcile itself; a missing source or template is status, not an error.
#[derive(
    Debug, thiserror::Error, strum::IntoStaticStr, strum::VariantNames, strum::EnumProperty,
)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error(transparent)]
    InvalidObject(#[from] InvalidObject),
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
        source: ApiError,
    },
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] ApiError),
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
    let ctx = Context::new(
        shared.client.clone(),
        reporter.metrics.clone(),
        shared.instance.clone(),
        Stores {
            images: images.store.clone(),
            templates: templates.store.clone(),
            sources: sources.store.clone(),
        },
    );
    // Our own status writes do not change the generation, so they do not trigger a sync.
    let start = Start::new(shared, &cache, Trigger::Generation, 16);
    let (by_template, by_source) = (start.store(), start.store());
    start
        .owns(&images)
        .watches(&templates, move |template: Arc<GuardedTemplate>| {
            let name = template.name_any();
            naming(&by_template, template.namespace().as_deref(), &name, |v| {
                Some(v.template.as_str())
            })
        })
        // Every change of a source, status included: a new version is acted on at once.
        .watches(&sources, move |source: Arc<debian_source::Guarded>| {
            let name = source.name_any();
            let syncers = naming(&by_source, source.namespace().as_deref(), &name, |v| {
                v.source.is_watched().then_some(v.source.name.as_str())
            });
            tracing::debug!(source = %name, syncers = syncers.len(), resource_version = ?source.resource_version(), "source changed");
            syncers
        })
        .run(ctx, reporter)
}

impl Reconciler<MachineImageSyncer> for Context {
    type Error = Error;

    fn core(&self) -> &Core {
        &self.core
    }

    async fn reconcile(&self, syncer: &MachineImageSyncer, now: &Time) -> Result<Action, Error> {
        // A reconcile before the caches hold their first list would take a missing object for a
        // deleted one.
        // `synced` re-polls: a store's readiness wakes only the last task that waited on it.
        let caches = async {
            synced(self.stores.images.clone()).await;
            synced(self.stores.templates.clone()).await;
            synced(self.stores.sources.clone()).await;
        };
        if tokio::time::timeout(CACHE_WAIT, caches).await.is_err() {
            tracing::warn!(
                "the MachineImage, template or source cache has not synced yet; retrying"
            );
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        reconcile_syncer(syncer, self, now).await
    }

    /// Permanent errors wait for a change; failed writes retry soon.
    fn retry(&self, _obj: &Guarded, err: &Error) -> Action {
        match err {
            Error::InvalidObject(_) | Error::InvalidSpec(_) => Action::await_change(),
            Error::CreateMachineImageFailed {
                source: ApiError::Api(kube::Error::Api(status)),
                ..
            } if status.code == 422 || status.code == 403 => {
                Action::requeue(Duration::from_secs(300))
            }
            Error::CreateMachineImageFailed { .. } | Error::WriteStatus(_) => {
                Action::requeue(Duration::from_secs(5))
            }
        }
    }
}

/// The reconcile with the time injected: validate → observe → decide → apply.
pub async fn reconcile_syncer(
    syncer: &MachineImageSyncer,
    ctx: &Context,
    now: &Time,
) -> Result<Action, Error> {
    let namespace = syncer.namespace().unwrap_or_default();
    let validated = validate(syncer);
    let paused = syncer.spec.paused.unwrap_or(false);
    let source = match (&validated, paused) {
        (Ok(valid), false) => Some(Box::pin(observe::read_source(ctx, &valid.source)).await),
        _ => None,
    };
    let images = observe::existing_images(&ctx.stores.images, &namespace, &syncer.name_any());
    let template = validated
        .as_ref()
        .ok()
        .and_then(|valid| observe::template(ctx, &namespace, &valid.template));

    let decision = decide(&Observed {
        syncer,
        validated: &validated,
        source: source.as_ref(),
        images: &images,
        template: template.as_ref(),
        now,
    });
    tracing::debug!(creates = decision.creates.len(), requeue = ?decision.requeue, "decided");

    apply::apply(ctx, syncer, &decision).await?;
    match validated {
        Err(err) => Err(Error::InvalidSpec(err)),
        Ok(_) => Ok(decision
            .requeue
            .map_or_else(Action::await_change, Action::requeue)),
    }
}

/// The metrics registry a test context registers into.
#[cfg(test)]
fn test_metrics() -> ControllerMetrics {
    Arc::new(crate::runtime::Metrics::default()).controller(CONTROLLER, Error::CATEGORIES)
}

#[cfg(test)]
use crate::runtime::controller::reconcile;

#[cfg(test)]
mod tests;
