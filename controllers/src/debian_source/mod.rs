//! The DebianRepositorySource controller: observe (keys, sync) → decide (pure) → apply (one
//! status write when something changed, events on transitions).

mod decide;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use api::v1alpha1::{DebianRepositorySource, DebianRepositorySourceStatus, SignedBy};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::{PredicateConfig, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, ResourceExt};

pub use decide::{Decision, Observed, decide};

use crate::debian::{Fetcher, Keyring, RepositorySpec, SyncError, SyncOutcome, Validators};
use crate::manager::{Registration, Running, Shared};
use crate::metrics::Metrics;
use crate::reconcile::{Events, apply_status};

/// Name in logs and metrics.
pub const CONTROLLER: &str = "debianrepositorysource";
/// Field manager of the status writes.
pub const FIELD_MANAGER: &str = "kubernetes-upgrader-debianrepositorysource";
/// Event source component, as in v0.6.
pub const COMPONENT: &str = "debianrepositorysource-reconciler";

/// The manager's handle on this controller.
pub const REGISTRATION: Registration = Registration {
    name: CONTROLLER,
    start,
};

/// Syncs a repository; the HTTP client in production, canned results in tests.
pub trait Repository: Send + Sync {
    /// Fetches and verifies the repository.
    fn sync<'a>(
        &'a self,
        spec: &'a RepositorySpec,
        ca_bundle: Option<&'a str>,
        keyring: Option<&'a Keyring>,
        previous: Option<&'a Validators>,
    ) -> BoxFuture<'a, Result<SyncOutcome, SyncError>>;
}

/// The production [`Repository`]: one HTTP client per distinct CA bundle.
#[derive(Default)]
pub struct HttpRepository {
    fetchers: Mutex<HashMap<Option<String>, Arc<Fetcher>>>,
}

impl HttpRepository {
    fn fetcher(&self, ca_bundle: Option<&str>) -> Result<Arc<Fetcher>, SyncError> {
        let mut fetchers = self.fetchers.lock().unwrap_or_else(PoisonError::into_inner);
        let key = ca_bundle.map(str::to_owned);
        if let Some(fetcher) = fetchers.get(&key) {
            return Ok(Arc::clone(fetcher));
        }
        let fetcher = Arc::new(Fetcher::new(ca_bundle)?);
        fetchers.insert(key, Arc::clone(&fetcher));
        Ok(fetcher)
    }
}

impl Repository for HttpRepository {
    fn sync<'a>(
        &'a self,
        spec: &'a RepositorySpec,
        ca_bundle: Option<&'a str>,
        keyring: Option<&'a Keyring>,
        previous: Option<&'a Validators>,
    ) -> BoxFuture<'a, Result<SyncOutcome, SyncError>> {
        async move { self.fetcher(ca_bundle)?.sync(spec, keyring, previous).await }.boxed()
    }
}

/// What the controller remembers about a source between syncs (lost on restart, which only
/// costs one unconditional fetch).
#[derive(Clone, Debug, Default)]
struct Memory {
    /// Identifies the spec and keys the validators belong to.
    key: String,
    validators: Option<Validators>,
    failures: u32,
}

/// Shared state of the controller.
pub struct Context {
    client: Client,
    metrics: Arc<Metrics>,
    events: Events,
    repository: Box<dyn Repository>,
    memory: Mutex<HashMap<String, Memory>>,
    /// The controller's cache, to forget deleted sources.
    store: Option<reflector::Store<DeserializeGuard<DebianRepositorySource>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context over `repository`.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        instance: Option<String>,
        repository: Box<dyn Repository>,
    ) -> Self {
        let events = Events::new(client.clone(), COMPONENT, instance);
        Self {
            client,
            metrics,
            events,
            repository,
            memory: Mutex::default(),
            store: None,
        }
    }

    /// Forgets sources that are no longer in the controller's cache.
    fn forget_deleted(&self) {
        let Some(store) = &self.store else { return };
        let live: std::collections::HashSet<String> =
            store.state().iter().filter_map(|s| s.uid()).collect();
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        if memory.len() > live.len() {
            memory.retain(|uid, _| live.contains(uid));
        }
    }
}

/// Failures of the reconcile itself; repository failures are status, not errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error("the object cannot be read: {0}")]
    InvalidObject(String),
    /// Writing the status failed.
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
}

impl Error {
    /// The metric label and event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidObject(_) => "InvalidObject",
            Self::WriteStatus(_) => "WriteStatus",
        }
    }
}

fn start(shared: &Shared) -> Running {
    let api: Api<DeserializeGuard<DebianRepositorySource>> = match &shared.namespace {
        Some(ns) => Api::namespaced(shared.client.clone(), ns),
        None => Api::all(shared.client.clone()),
    };
    let (reader, writer) = reflector::store();
    // Our own status writes do not change the generation, so they do not trigger a sync.
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
    let ready_store = reader.clone();
    let mut ctx = Context::new(
        shared.client.clone(),
        Arc::clone(&shared.metrics),
        shared.instance.clone(),
        Box::new(HttpRepository::default()),
    );
    ctx.store = Some(reader.clone());
    let ctx = Arc::new(ctx);
    let run = Controller::for_stream(stream, reader)
        .with_config(ControllerConfig::default().concurrency(16))
        .graceful_shutdown_on(shared.shutdown.clone().wait())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(err) = result {
                tracing::warn!(error = %err, "reconcile failed");
            }
            futures::future::ready(())
        })
        .boxed();
    Running {
        ready: crate::manager::synced(ready_store),
        run,
    }
}

#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run expects
fn error_policy(
    _obj: Arc<DeserializeGuard<DebianRepositorySource>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics.failure(CONTROLLER, err.category());
    match err {
        Error::InvalidObject(_) => Action::await_change(),
        Error::WriteStatus(_) => Action::requeue(Duration::from_secs(10)),
    }
}

/// Reconciles one source.
#[tracing::instrument(skip(obj, ctx), fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile(
    obj: Arc<DeserializeGuard<DebianRepositorySource>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let source = match &obj.0 {
        Ok(source) => source,
        Err(invalid) => {
            tracing::warn!(error = %invalid.error, "skipping a DebianRepositorySource that does not match the schema");
            return Err(Error::InvalidObject(invalid.error.clone()));
        }
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
    let interval = source.spec.interval().unwrap_or(Duration::from_secs(300));

    // Observe.
    let result = sync(source, ctx, &namespace, &uid).await;
    ctx.metrics.debian_sync(match &result {
        Ok(SyncOutcome::Fetched(_)) => "Fetched",
        Ok(SyncOutcome::NotModified) => "NotModified",
        Err(err) => err.reason(),
    });
    if let Err(err) = &result {
        ctx.metrics.failure(CONTROLLER, err.reason());
    }
    let failures = memory(ctx, &uid).failures;
    let default_status = DebianRepositorySourceStatus::default();
    let current = source.status.as_ref().unwrap_or(&default_status);

    // Decide.
    let decision = decide(&Observed {
        generation: source.metadata.generation,
        status: current,
        signed: source.spec.signed_by.is_some(),
        result: &result,
        now,
        interval,
        failures,
        jitter,
    });
    remember_failures(ctx, &uid, decision.failures);

    // Apply.
    if decision.status != *current {
        let api: Api<DebianRepositorySource> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_status(&api, &source.name_any(), FIELD_MANAGER, &decision.status)
            .await
            .map_err(Error::WriteStatus)?;
    }
    for note in &decision.notes {
        ctx.events.publish(source, note).await;
    }
    Ok(Action::requeue(decision.requeue))
}

async fn sync(
    source: &DebianRepositorySource,
    ctx: &Context,
    namespace: &str,
    uid: &str,
) -> Result<SyncOutcome, SyncError> {
    let spec = repository_spec(source)?;
    let keyring = match &source.spec.signed_by {
        Some(signed_by) => Some(load_keyring(&ctx.client, namespace, signed_by).await?),
        None => None,
    };
    let key = memory_key(&spec, source.spec.ca_bundle.as_deref(), keyring.as_ref());
    let previous = memory(ctx, uid);
    let validators = (previous.key == key)
        .then_some(previous.validators)
        .flatten();
    let result = ctx
        .repository
        .sync(
            &spec,
            source.spec.ca_bundle.as_deref(),
            keyring.as_ref(),
            validators.as_ref(),
        )
        .await;
    if let Ok(SyncOutcome::Fetched(listing)) = &result {
        let mut memory = ctx.memory.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = memory.entry(uid.to_owned()).or_default();
        entry.key = key;
        entry.validators = Some(listing.validators.clone());
    }
    result
}

fn memory(ctx: &Context, uid: &str) -> Memory {
    ctx.memory
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(uid)
        .cloned()
        .unwrap_or_default()
}

fn remember_failures(ctx: &Context, uid: &str, failures: u32) {
    ctx.memory
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(uid.to_owned())
        .or_default()
        .failures = failures;
}

/// The client-side view of the spec.
pub fn repository_spec(source: &DebianRepositorySource) -> Result<RepositorySpec, SyncError> {
    let spec = &source.spec;
    let invalid = |message: String| SyncError::ParseError(message);
    Ok(RepositorySpec {
        url: spec.url.clone(),
        suite: spec.suite.clone(),
        component: spec.component.clone(),
        architecture: spec.architecture().to_owned(),
        package: spec.package().to_owned(),
        max_index_bytes: spec
            .max_index_bytes()
            .map_err(|e| invalid(format!("spec.maxIndexSize: {e}")))?,
        timeout: spec
            .timeout()
            .map_err(|e| invalid(format!("spec.timeout: {e}")))?,
    })
}

fn memory_key(spec: &RepositorySpec, ca_bundle: Option<&str>, keyring: Option<&Keyring>) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ca_bundle.hash(&mut hasher);
    let fingerprints = keyring
        .map(Keyring::fingerprints)
        .unwrap_or_default()
        .join(",");
    format!("{spec:?}|{:x}|{fingerprints}", hasher.finish())
}

/// Reads the trusted keys named by `spec.signedBy`.
pub async fn load_keyring(
    client: &Client,
    namespace: &str,
    signed_by: &SignedBy,
) -> Result<Keyring, SyncError> {
    let bytes = if let Some(inline) = &signed_by.inline {
        inline.clone().into_bytes()
    } else if let Some(selector) = &signed_by.config_map_key_ref {
        read_key(
            client,
            namespace,
            "configMapKeyRef",
            &selector.name,
            &selector.key,
            |map: &ConfigMap, key| {
                let text = map
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.clone().into_bytes());
                text.or_else(|| {
                    map.binary_data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|b| b.0.clone())
                })
            },
        )
        .await?
    } else if let Some(selector) = &signed_by.secret_key_ref {
        read_key(
            client,
            namespace,
            "secretKeyRef",
            &selector.name,
            &selector.key,
            |secret: &Secret, key| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|b| b.0.clone())
            },
        )
        .await?
    } else {
        return Err(key_unusable("inline", "no key source is set"));
    };
    Keyring::parse(&bytes)
}

fn key_unusable(field: &str, message: &str) -> SyncError {
    SyncError::SignatureInvalid(format!("spec.signedBy.{field}: {message}"))
}

/// Reads `key` of the ConfigMap or Secret `name`, through `extract`.
async fn read_key<K>(
    client: &Client,
    namespace: &str,
    field: &str,
    name: &str,
    key: &str,
    extract: impl Fn(&K, &str) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, SyncError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let object = api
        .get_opt(name)
        .await
        .map_err(|e| key_unusable(field, &format!("reading {kind} {namespace}/{name}: {e}")))?
        .ok_or_else(|| key_unusable(field, &format!("{kind} {namespace}/{name} not found")))?;
    extract(&object, key).ok_or_else(|| {
        key_unusable(
            field,
            &format!("{kind} {namespace}/{name} has no key {key:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debian::Listing;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock::{self, Handle};

    type ApiHandle = Handle<Request<Body>, Response<Body>>;

    /// Answers every sync with one canned result.
    struct Canned(Result<SyncOutcome, SyncError>);

    impl Repository for Canned {
        fn sync<'a>(
            &'a self,
            _spec: &'a RepositorySpec,
            _ca_bundle: Option<&'a str>,
            _keyring: Option<&'a Keyring>,
            _previous: Option<&'a Validators>,
        ) -> BoxFuture<'a, Result<SyncOutcome, SyncError>> {
            let result = match &self.0 {
                Ok(outcome) => Ok(outcome.clone()),
                Err(err) => Err(SyncError::ParseError(err.to_string())),
            };
            async move { result }.boxed()
        }
    }

    fn listing() -> Listing {
        Listing {
            versions: vec!["v1.27.0".into(), "v1.27.1".into()],
            debian_versions: vec!["1.27.0-2.1".into(), "1.27.1-1.1".into()],
            skipped: 0,
            index_url: "http://127.0.0.1:1/Packages".into(),
            index_sha256: "ab".into(),
            signing_key_fingerprint: None,
            validators: Validators::default(),
        }
    }

    fn source(status: Option<DebianRepositorySourceStatus>) -> DebianRepositorySource {
        let mut source: DebianRepositorySource = serde_json::from_value(json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "DebianRepositorySource",
            "metadata": {"name": "src", "namespace": "team", "uid": "u-1", "generation": 1},
            "spec": {"url": "http://127.0.0.1:1/Packages"},
        }))
        .unwrap();
        source.status = status;
        source
    }

    fn context(result: Result<SyncOutcome, SyncError>) -> (Arc<Context>, ApiHandle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let ctx = Context::new(
            client,
            Arc::new(Metrics::default()),
            Some("test".into()),
            Box::new(Canned(result)),
        );
        (Arc::new(ctx), handle)
    }

    async fn next(
        handle: &mut ApiHandle,
    ) -> (
        Method,
        String,
        Value,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let (request, send) = handle.next_request().await.expect("an API call");
        let method = request.method().clone();
        let uri = request.uri().to_string();
        let body = request.into_body().collect_bytes().await.unwrap();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        (method, uri, value, send)
    }

    fn respond(send: tower_test::mock::SendResponse<Response<Body>>, body: &Value) {
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    fn now() -> Time {
        Time(Timestamp::from_second(1_700_000_000).unwrap())
    }

    #[tokio::test]
    async fn first_sync_applies_status_once_then_publishes_events() {
        let (ctx, mut handle) = context(Ok(SyncOutcome::Fetched(listing())));
        let obj = source(None);
        let server = tokio::spawn(async move {
            let (method, uri, body, send) = next(&mut handle).await;
            assert_eq!(method, Method::PATCH);
            assert_eq!(
                uri,
                "/apis/kubernetesupgraded.dimitrikoshkin.com/v1alpha1/namespaces/team/debianrepositorysources/src/status?&force=true&fieldManager=kubernetes-upgrader-debianrepositorysource"
            );
            assert_eq!(body["kind"], "DebianRepositorySource");
            assert_eq!(body["status"]["versions"], json!(["v1.27.0", "v1.27.1"]));
            assert_eq!(body["status"]["observedGeneration"], 1);
            assert!(body.get("spec").is_none(), "only status is applied");
            let conditions = body["status"]["conditions"].as_array().unwrap();
            assert_eq!(conditions.len(), 2);
            let mut answer = serde_json::to_value(source(None)).unwrap();
            answer["status"] = body["status"].clone();
            respond(send, &answer);
            let mut reasons = Vec::new();
            for _ in 0..2 {
                let (method, uri, event, send) = next(&mut handle).await;
                assert_eq!(method, Method::POST);
                assert!(
                    uri.starts_with("/apis/events.k8s.io/v1/namespaces/team/events"),
                    "{uri}"
                );
                assert_eq!(event["reportingController"], COMPONENT);
                reasons.push(event["reason"].as_str().unwrap().to_owned());
                respond(send, &event);
            }
            reasons
        });
        let action = reconcile_source(&obj, &ctx, &now(), 0.0).await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));
        let reasons = tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reasons, ["VersionsChanged", "NoSignedBy"]);
    }

    #[tokio::test]
    async fn unchanged_repository_makes_no_api_calls() {
        let (ctx, mut handle) = context(Ok(SyncOutcome::Fetched(listing())));
        let first = decide(&Observed {
            generation: Some(1),
            status: &DebianRepositorySourceStatus::default(),
            signed: false,
            result: &Ok(SyncOutcome::Fetched(listing())),
            now: &now(),
            interval: Duration::from_secs(300),
            failures: 0,
            jitter: 0.0,
        });
        let obj = source(Some(first.status));
        let later = Time(Timestamp::from_second(1_700_000_600).unwrap());
        reconcile_source(&obj, &ctx, &later, 0.0).await.unwrap();
        drop(ctx);
        let call = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
        assert!(
            matches!(call, Ok(None) | Err(_)),
            "a steady-state reconcile must not call the API"
        );
    }

    #[tokio::test]
    async fn a_failed_status_write_is_an_error_to_retry() {
        let (ctx, mut handle) = context(Ok(SyncOutcome::Fetched(listing())));
        let obj = source(None);
        let server = tokio::spawn(async move {
            let (_, _, _, send) = next(&mut handle).await;
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "Conflict", "message": "conflict"});
            send.send_response(
                Response::builder()
                    .status(409)
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                    .unwrap(),
            );
        });
        let err = reconcile_source(&obj, &ctx, &now(), 0.0).await.unwrap_err();
        assert_eq!(err.category(), "WriteStatus");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn deleted_sources_are_forgotten() {
        let (ctx, _handle) = context(Ok(SyncOutcome::NotModified));
        let mut ctx = Arc::into_inner(ctx).unwrap();
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(source(None)))));
        ctx.store = Some(reader);
        for uid in ["u-1", "gone"] {
            remember_failures(&ctx, uid, 2);
        }
        ctx.forget_deleted();
        assert_eq!(memory(&ctx, "u-1").failures, 2);
        assert_eq!(memory(&ctx, "gone").failures, 0);
        assert_eq!(ctx.memory.lock().unwrap().len(), 1);
    }

    /// Records the validators each sync is given.
    struct Recording(Arc<Mutex<Vec<Option<String>>>>);

    impl Repository for Recording {
        fn sync<'a>(
            &'a self,
            _spec: &'a RepositorySpec,
            _ca_bundle: Option<&'a str>,
            _keyring: Option<&'a Keyring>,
            previous: Option<&'a Validators>,
        ) -> BoxFuture<'a, Result<SyncOutcome, SyncError>> {
            self.0
                .lock()
                .unwrap()
                .push(previous.and_then(|v| v.etag.clone()));
            let mut fetched = listing();
            fetched.validators.etag = Some("v1".into());
            async move { Ok(SyncOutcome::Fetched(fetched)) }.boxed()
        }
    }

    #[tokio::test]
    async fn validators_are_reused_only_for_an_unchanged_spec() {
        let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ctx = Context::new(
            Client::new(service, "default"),
            Arc::new(Metrics::default()),
            None,
            Box::new(Recording(Arc::clone(&seen))),
        );
        let mut obj = source(None);
        sync(&obj, &ctx, "team", "u-1").await.unwrap();
        sync(&obj, &ctx, "team", "u-1").await.unwrap();
        obj.spec.architecture = Some("arm64".into());
        sync(&obj, &ctx, "team", "u-1").await.unwrap();
        sync(&obj, &ctx, "team", "u-2").await.unwrap();
        let etag = Some("v1".to_owned());
        assert_eq!(*seen.lock().unwrap(), [None, etag, None, None]);
    }
}
