//! The DebianRepositorySource controller:
//! validate (pure, [`validate`]) → dereference (the keys, [`keys`]) → observe (the repository
//! sync) → decide (pure, [`decide()`]) → apply (one status write when something changed, then
//! events on transitions). Failed reconciles are reported by [`crate::runtime::Reporter`].

mod decide;
mod keys;
mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use api::v1alpha1::{DebianRepositorySource, DebianRepositorySourceStatus};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest as _, Sha256};

pub use decide::{Decision, Failure, Observed, decide, retry_after};
pub use keys::{KeyError, load_keyring};
pub use validate::{SpecError, Validated, default_interval, validate};

use crate::debian::{
    Fetcher, Keyring, RepositorySpec, SharedClock, SyncError, SyncOutcome, Validators,
    index_url_belongs_to,
};
use crate::runtime::backoff::backoff;
use crate::runtime::caches::generation_changed;
use crate::runtime::status::{WriteError, apply_status};
use crate::runtime::{
    ControllerError, ControllerMetrics, Events, ReconcileError, Registration, Reporter, Running,
    Shared, synced,
};

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

/// Syncs a repository; the HTTP client in production, canned results in tests.
pub trait Repository: Send + Sync {
    /// Fetches and verifies the repository for the source `user` (its uid).
    fn sync<'a>(
        &'a self,
        user: &'a str,
        spec: &'a RepositorySpec,
        ca_bundle: Option<&'a str>,
        keyring: Option<&'a Keyring>,
        previous: Option<&'a Validators>,
    ) -> BoxFuture<'a, Result<SyncOutcome, SyncError>>;

    /// The source `user` is gone: drop what only it used.
    fn forget(&self, _user: &str) {}
}

/// The production [`Repository`]: one HTTP client per distinct CA bundle, keyed by the bundle's
/// SHA256 and dropped once no source uses it.
#[derive(Default)]
pub struct HttpRepository {
    clients: Mutex<Clients>,
    /// The clock Release times are checked with; the wall clock when unset.
    clock: Option<SharedClock>,
}

#[derive(Default)]
struct Clients {
    by_bundle: HashMap<Option<[u8; 32]>, Arc<Fetcher>>,
    bundle_of: HashMap<String, Option<[u8; 32]>>,
}

impl Clients {
    fn evict_unused(&mut self) {
        let Self {
            by_bundle,
            bundle_of,
        } = self;
        by_bundle.retain(|bundle, _| bundle_of.values().any(|b| b == bundle));
    }
}

impl HttpRepository {
    /// Checks Release times against `clock` instead of the wall clock.
    #[must_use]
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            clock: Some(clock),
            ..Self::default()
        }
    }

    fn fetcher(&self, user: &str, ca_bundle: Option<&str>) -> Result<Arc<Fetcher>, SyncError> {
        let bundle: Option<[u8; 32]> = ca_bundle.map(|pem| Sha256::digest(pem).into());
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.bundle_of.insert(user.to_owned(), bundle) != Some(bundle) {
            clients.evict_unused();
        }
        if let Some(fetcher) = clients.by_bundle.get(&bundle) {
            return Ok(Arc::clone(fetcher));
        }
        let mut fetcher = Fetcher::new(ca_bundle)?;
        if let Some(clock) = &self.clock {
            fetcher = fetcher.with_clock(Arc::clone(clock));
        }
        let fetcher = Arc::new(fetcher);
        clients.by_bundle.insert(bundle, Arc::clone(&fetcher));
        Ok(fetcher)
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_bundle
            .len()
    }
}

impl Repository for HttpRepository {
    fn sync<'a>(
        &'a self,
        user: &'a str,
        spec: &'a RepositorySpec,
        ca_bundle: Option<&'a str>,
        keyring: Option<&'a Keyring>,
        previous: Option<&'a Validators>,
    ) -> BoxFuture<'a, Result<SyncOutcome, SyncError>> {
        async move {
            self.fetcher(user, ca_bundle)?
                .sync(spec, keyring, previous)
                .await
        }
        .boxed()
    }

    fn forget(&self, user: &str) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.bundle_of.remove(user).is_some() {
            clients.evict_unused();
        }
    }
}

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
    client: Client,
    metrics: ControllerMetrics,
    syncs: Family<SyncLabels, Counter>,
    events: Events,
    repository: Box<dyn Repository>,
    memory: Mutex<HashMap<String, Memory>>,
    /// The controller's cache, to forget deleted sources.
    store: Option<Store<Guarded>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context over `repository`; registers the controller's own series.
    pub fn new(
        client: Client,
        metrics: ControllerMetrics,
        instance: Option<String>,
        repository: Box<dyn Repository>,
    ) -> Self {
        let events = Events::new(client.clone(), COMPONENT, instance);
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
            client,
            metrics,
            syncs,
            events,
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
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error("the object cannot be read: {0}")]
    InvalidObject(String),
    /// The spec cannot be acted on (reported in `Ready` with its own reason).
    #[error("the spec is invalid")]
    InvalidSpec(#[source] SpecError),
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] WriteError),
}

impl ReconcileError for Error {
    const CATEGORIES: &'static [&'static str] = &["InvalidObject", "InvalidSpec", "WriteStatus"];

    fn category(&self) -> &'static str {
        match self {
            Self::InvalidObject(_) => "InvalidObject",
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::WriteStatus(_) => "WriteStatus",
        }
    }
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
    let ctx = Arc::new(ctx);
    let ready = synced(cache.store.clone());
    let Some(events) = cache.subscribe() else {
        return Running {
            ready,
            run: async { Err(ControllerError::StreamEnded) }.boxed(),
        };
    };
    let shutdown = shared.shutdown.clone();
    // Our own status writes do not change the generation, so they do not trigger a sync.
    let trigger = generation_changed(events, cache.store.clone());
    let run = async move {
        Controller::for_shared_stream(trigger, cache.store)
            .with_config(ControllerConfig::default().concurrency(16))
            .graceful_shutdown_on(shutdown.clone().wait())
            .run(reconcile, error_policy, ctx)
            .for_each(|result| {
                let reporter = reporter.clone();
                async move { reporter.report(result).await }
            })
            .await;
        if shutdown.is_requested() {
            Ok(())
        } else {
            Err(ControllerError::StreamEnded)
        }
    }
    .boxed();
    Running { ready, run }
}

/// Permanent errors wait for a change; a failed status write backs off like a failed sync.
#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run expects
fn error_policy(obj: Arc<Guarded>, err: &Error, ctx: Arc<Context>) -> Action {
    match err {
        Error::InvalidObject(_) | Error::InvalidSpec(_) => Action::await_change(),
        Error::WriteStatus(_) => {
            let uid = obj.uid().unwrap_or_default();
            let failures = ctx.remembered(&uid).write_failures;
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

/// The delay after the `failures`-th consecutive failed status write.
fn write_retry(failures: u32, interval: Duration) -> Duration {
    backoff(
        failures,
        decide::RETRY_BASE,
        interval.max(decide::RETRY_BASE),
    )
}

/// Reconciles one source.
#[tracing::instrument(skip(obj, ctx), fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile(obj: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile();
    let source = match &obj.0 {
        Ok(source) => source,
        Err(invalid) => return Err(Error::InvalidObject(invalid.error.clone())),
    };
    let now = Time(
        Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()),
    );
    let jitter: f64 = rand::random();
    ctx.forget_deleted();
    reconcile_source(source, &ctx, &now, jitter).await
}

/// The reconcile body with time and jitter injected.
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

    // Validate, dereference and observe.
    let validated = validate(source);
    let (result, interval, key) = match &validated {
        Ok(valid) => {
            let (result, key) = observe(source, valid, current, ctx, &namespace, &uid).await;
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

    // Decide.
    let decision = decide(&Observed {
        generation: source.metadata.generation,
        status: current,
        signed: source.spec.signed_by.is_some(),
        result: &result,
        now,
        interval,
        jitter,
    });

    // Apply.
    if decision.status != *current {
        let api: Api<DebianRepositorySource> = Api::namespaced(ctx.client.clone(), &namespace);
        if let Err(err) =
            apply_status(&api, &source.name_any(), FIELD_MANAGER, &decision.status).await
        {
            let mut memory = ctx.memory();
            let entry = memory.entry(uid).or_default();
            entry.write_failures = entry.write_failures.saturating_add(1);
            return Err(Error::WriteStatus(err));
        }
    }
    remember_after_write(ctx, &uid, key, &result);
    for note in &decision.notes {
        ctx.events.publish(source, note).await;
    }
    match validated {
        Ok(_) => Ok(Action::requeue(decision.requeue)),
        Err(err) => Err(Error::InvalidSpec(err)),
    }
}

/// Once the status holds a listing, remembers the validators that belong to it; never before, so
/// that a failed status write cannot turn the next poll into a 304 that keeps stale versions.
fn remember_after_write(
    ctx: &Context,
    uid: &str,
    key: Option<String>,
    result: &Result<SyncOutcome, Failure>,
) {
    let mut memory = ctx.memory();
    let entry = memory.entry(uid.to_owned()).or_default();
    entry.write_failures = 0;
    if let (Some(key), Ok(SyncOutcome::Fetched(listing))) = (key, result) {
        entry.key = key;
        entry.validators = Some((listing.validators.clone(), listing.index_sha256.clone()));
    }
}

/// Reads the keys and syncs the repository. Also returns the memory key of the spec and keys the
/// sync used.
async fn observe(
    source: &DebianRepositorySource,
    valid: &Validated,
    current: &DebianRepositorySourceStatus,
    ctx: &Context,
    namespace: &str,
    uid: &str,
) -> (Result<SyncOutcome, Failure>, Option<String>) {
    let keyring = match &source.spec.signed_by {
        Some(signed_by) => match load_keyring(&ctx.client, namespace, signed_by).await {
            Ok(keyring) => Some(keyring),
            Err(err) => return (Err(Failure::Keys(err)), None),
        },
        None => None,
    };
    let ca_bundle = source.spec.ca_bundle.as_deref();
    let key = memory_key(&valid.repository, ca_bundle, keyring.as_ref());
    let validators = previous(
        &valid.repository,
        keyring.is_some(),
        current,
        &ctx.remembered(uid),
        &key,
    );
    let result = ctx
        .repository
        .sync(
            uid,
            &valid.repository,
            ca_bundle,
            keyring.as_ref(),
            validators.as_ref(),
        )
        .await
        .map_err(Failure::Sync);
    (result, Some(key))
}

/// What the client is handed as `previous`. The accepted Release's `Date` and `Valid-Until` come
/// from status, so they hold across restarts and leader changes, as long as the source is
/// `signed` (only a verified Release's times mean anything) and the status's listing was read
/// through the Release the spec reads now. The HTTP validators come from memory, for
/// the same spec and keys only, and only while the status still holds the listing they were
/// remembered with.
fn previous(
    spec: &RepositorySpec,
    signed: bool,
    current: &DebianRepositorySourceStatus,
    remembered: &Memory,
    key: &str,
) -> Option<Validators> {
    let http = remembered
        .validators
        .as_ref()
        .filter(|(_, sha)| remembered.key == key && current.index_sha256.as_ref() == Some(sha))
        .map(|(validators, _)| validators.clone());
    let same_repository = signed
        && current
            .index_url
            .as_deref()
            .is_some_and(|url| index_url_belongs_to(spec, url));
    let accepted = |time: &Option<Time>| time.as_ref().filter(|_| same_repository).map(|t| t.0);
    let release_date = accepted(&current.release_date);
    let valid_until = accepted(&current.release_valid_until);
    if http.is_none() && release_date.is_none() && valid_until.is_none() {
        return None;
    }
    Some(Validators {
        release_date,
        valid_until,
        ..http.unwrap_or_default()
    })
}

/// Identifies the spec and keys that validators belong to; a digest, so that memory holds no
/// credentials from the URL.
fn memory_key(spec: &RepositorySpec, ca_bundle: Option<&str>, keyring: Option<&Keyring>) -> String {
    let bundle = hex::encode(Sha256::digest(ca_bundle.unwrap_or_default()));
    let fingerprints = keyring
        .map(Keyring::fingerprints)
        .unwrap_or_default()
        .join(",");
    // Debug redacts the URL; the URL itself is hashed in, so a new password is a new spec.
    let text = format!("{spec:?}|{}|{bundle}|{fingerprints}", spec.url);
    hex::encode(Sha256::digest(text))
}

/// The metrics registry a test context registers into.
#[cfg(test)]
fn test_metrics() -> ControllerMetrics {
    Arc::new(crate::runtime::Metrics::default()).controller(CONTROLLER, Error::CATEGORIES)
}

#[cfg(test)]
mod tests;
