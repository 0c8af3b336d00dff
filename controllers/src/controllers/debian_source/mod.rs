//! The DebianRepositorySource controller, the model of the controller skeleton
//! (`controllers/README.md` walks through it):
//! [`validate`] (pure) → [`observe`] (the keys, [`keys`], then the repository sync) →
//! [`decide()`] (pure: the status, the events, when to look again) → [`apply`] (one status write
//! when something changed, then events on transitions). `mod.rs` is wiring: the context, the
//! error, `start` and the [`Reconciler`] that chains the steps. Failed reconciles are reported
//! by [`crate::runtime::Reporter`].

mod apply;
mod decide;
mod keys;
mod observe;
mod validate;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use api::v1alpha1::{DebianRepositorySource, DebianRepositorySourceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

pub use decide::{Decision, Failure, Observed, decide, retry_after};
pub use keys::{KeyError, load_keyring};
pub use observe::{HttpRepository, Repository};
pub use validate::{SpecError, Validated, default_interval, validate};

use crate::debian::{SyncOutcome, Validators};
use crate::runtime::backoff::backoff;
use crate::runtime::controller::{Core, InvalidObject, Reconciler, Start, Trigger};
use crate::runtime::status::ApiError;
use crate::runtime::{ControllerMetrics, ReconcileError, Registration, Reporter, Running, Shared};

/// Name in logs and metrics.
pub const CONTROLLER: &str = "debianrepositorysource";
/// Field manager of the status writes.
pub const FIELD_MANAGER: &str = "kubernetes-upgrader-debianrepositorysource";
/// Event source component, as in v0.6.
pub const COMPONENT: &str = "debianrepositorysource-reconciler";

/// The manager's handle on this controller.
pub const REGISTRATION: Registration = Registration {
    name: CONTROLLER,
    categories: Error::CATEGORIES,
    start,
};

/// How the store holds sources: a malformed one is an error event, not a stalled watch.
pub type Guarded = DeserializeGuard<DebianRepositorySource>;

/// What the controller remembers about a source between reconciles. Losing it (a restart, a new
/// leader) costs one unconditional fetch; nothing that must survive lives here.
#[derive(Clone, Debug, Default)]
struct Memory {
    /// Identifies the spec and keys the validators belong to.
    key: String,
    /// The validators, and the index SHA256 of the listing they belong to.
    validators: Option<(Validators, String)>,
    /// Consecutive failed status writes, for their backoff.
    write_failures: u32,
}

/// Labels of a Debian repository sync.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    /// `Fetched`, `NotModified` or a failure reason.
    result: &'static str,
}

/// Shared state of the controller.
pub struct Context {
    core: Core,
    syncs: Family<SyncLabels, Counter>,
    repository: Box<dyn Repository>,
    memory: Mutex<HashMap<String, Memory>>,
    /// The controller's cache, to forget deleted sources.
    store: Option<Store<Guarded>>,
}

impl Context {
    /// A context over `repository`; registers the controller's own series.
    pub fn new(
        client: Client,
        metrics: ControllerMetrics,
        instance: Option<String>,
        repository: Box<dyn Repository>,
    ) -> Self {
        let syncs = Family::<SyncLabels, Counter>::default();
        for result in ["Fetched", "NotModified"] {
            let _ = syncs.get_or_create(&SyncLabels { result });
        }
        metrics.registry().register(
            "debian_repository_syncs",
            "Debian repository syncs, by result",
            syncs.clone(),
        );
        Self {
            core: Core::new(client, metrics, instance, COMPONENT),
            syncs,
            repository,
            memory: Mutex::default(),
            store: None,
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, Memory>> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remembered(&self, uid: &str) -> Memory {
        self.memory().get(uid).cloned().unwrap_or_default()
    }

    /// Forgets sources that are no longer in the controller's cache. The store is scanned only
    /// when more sources are remembered than it holds, that is after a deletion.
    fn forget_deleted(&self) {
        let Some(store) = &self.store else { return };
        let mut memory = self.memory();
        if memory.len() <= store.len() {
            return;
        }
        let live: std::collections::HashSet<String> =
            store.state().iter().filter_map(|s| s.uid()).collect();
        memory.retain(|uid, _| {
            let keep = live.contains(uid);
            if !keep {
                self.repository.forget(uid);
            }
            keep
        });
    }
}

/// Failures of the reconcile itself; repository failures are status, not errors.
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
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] ApiError),
}

fn start(shared: &Shared) -> Running {
    let cache = shared.caches.cache::<Guarded>();
    let reporter = Reporter::new::<Error>(shared, CONTROLLER, COMPONENT);
    let mut ctx = Context::new(
        shared.client.clone(),
        reporter.metrics.clone(),
        shared.instance.clone(),
        Box::new(HttpRepository::default()),
    );
    ctx.store = Some(cache.store.clone());
    // Our own status writes do not change the generation, so they do not trigger a sync.
    Start::new(shared, &cache, Trigger::Generation, 16).run(ctx, reporter)
}

impl Reconciler<DebianRepositorySource> for Context {
    type Error = Error;

    fn core(&self) -> &Core {
        &self.core
    }

    async fn reconcile(
        &self,
        source: &DebianRepositorySource,
        now: &Time,
    ) -> Result<Action, Error> {
        let jitter: f64 = rand::random();
        self.forget_deleted();
        reconcile_source(source, self, now, jitter).await
    }

    /// Permanent errors wait for a change; a failed status write backs off like a failed sync.
    fn retry(&self, obj: &Guarded, err: &Error) -> Action {
        match err {
            Error::InvalidObject(_) | Error::InvalidSpec(_) => Action::await_change(),
            Error::WriteStatus(_) => {
                let failures = self
                    .remembered(&obj.uid().unwrap_or_default())
                    .write_failures;
                let interval = obj
                    .0
                    .as_ref()
                    .ok()
                    .and_then(|source| source.spec.interval().ok())
                    .unwrap_or_else(default_interval);
                Action::requeue(write_retry(failures, interval))
            }
        }
    }
}

/// The delay after the `failures`-th consecutive failed status write.
fn write_retry(failures: u32, interval: Duration) -> Duration {
    backoff(
        failures,
        decide::RETRY_BASE,
        interval.max(decide::RETRY_BASE),
    )
}

/// The reconcile with time and jitter injected: validate → observe → decide → apply.
pub async fn reconcile_source(
    source: &DebianRepositorySource,
    ctx: &Context,
    now: &Time,
    jitter: f64,
) -> Result<Action, Error> {
    let namespace = source.namespace().unwrap_or_default();
    let uid = source
        .uid()
        .unwrap_or_else(|| format!("{namespace}/{}", source.name_any()));
    let default_status = DebianRepositorySourceStatus::default();
    let current = source.status.as_ref().unwrap_or(&default_status);

    let validated = validate(source);
    let (result, interval, key) = match &validated {
        Ok(valid) => {
            let (result, key) =
                observe::observe(source, valid, current, ctx, &namespace, &uid).await;
            (result, valid.interval, key)
        }
        Err(err) => (Err(Failure::Spec(err.clone())), default_interval(), None),
    };
    ctx.syncs
        .get_or_create(&SyncLabels {
            result: match &result {
                Ok(SyncOutcome::Fetched(_)) => "Fetched",
                Ok(SyncOutcome::NotModified) => "NotModified",
                Err(err) => err.reason(),
            },
        })
        .inc();

    let decision = decide(&Observed {
        generation: source.metadata.generation,
        status: current,
        signed: source.spec.signed_by.is_some(),
        result: &result,
        now,
        interval,
        jitter,
    });

    let synced = apply::Synced {
        uid: &uid,
        key,
        result: &result,
    };
    apply::apply(ctx, source, current, &decision, synced).await?;
    match validated {
        Ok(_) => Ok(Action::requeue(decision.requeue)),
        Err(err) => Err(Error::InvalidSpec(err)),
    }
}

/// The metrics registry a test context registers into.
#[cfg(test)]
fn test_metrics() -> ControllerMetrics {
    std::sync::Arc::new(crate::runtime::Metrics::default())
        .controller(CONTROLLER, Error::CATEGORIES)
}

#[cfg(test)]
use crate::runtime::controller::error_policy;
#[cfg(test)]
use observe::{memory_key, previous};

#[cfg(test)]
mod tests;
