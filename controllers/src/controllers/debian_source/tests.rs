//! Choreography tests: the API calls one reconcile makes, scripted with the runtime fixtures.

use super::*;
use crate::debian::Listing;
use crate::runtime::fixtures::{STEP, Verifier, mock_client, within};
use crate::runtime::status::API_TIMEOUT;
use http::Method;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};

/// Answers every sync with one canned result, and records the validators it was given.
struct Canned {
    result: Result<SyncOutcome, String>,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    forgotten: Arc<Mutex<Vec<String>>>,
}

impl Repository for Canned {
    fn sync<'a>(
        &'a self,
        _user: &'a str,
        _spec: &'a RepositorySpec,
        _ca_bundle: Option<&'a str>,
        _keyring: Option<&'a Keyring>,
        previous: Option<&'a Validators>,
    ) -> BoxFuture<'a, Result<SyncOutcome, SyncError>> {
        self.seen
            .lock()
            .unwrap()
            .push(previous.and_then(|v| v.etag.clone()));
        let result = self.result.clone().map_err(SyncError::ParseError);
        async move { result }.boxed()
    }

    fn forget(&self, user: &str) {
        self.forgotten.lock().unwrap().push(user.to_owned());
    }
}

struct Probe {
    seen: Arc<Mutex<Vec<Option<String>>>>,
    forgotten: Arc<Mutex<Vec<String>>>,
}

impl Context {
    /// A context whose repository answers `result`, with the verifier that plays the API server.
    fn test_with(result: Result<SyncOutcome, String>) -> (Arc<Context>, Verifier, Probe) {
        let (client, verifier) = mock_client();
        let probe = Probe {
            seen: Arc::default(),
            forgotten: Arc::default(),
        };
        let repository = Canned {
            result,
            seen: Arc::clone(&probe.seen),
            forgotten: Arc::clone(&probe.forgotten),
        };
        let ctx = Context::new(
            client,
            test_metrics(),
            Some("test".into()),
            Box::new(repository),
        );
        (Arc::new(ctx), verifier, probe)
    }

    /// A context whose repository lists two versions.
    fn test() -> (Arc<Context>, Verifier) {
        let (ctx, verifier, _) = Self::test_with(Ok(SyncOutcome::Fetched(listing())));
        (ctx, verifier)
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
        validators: Validators {
            url: "http://127.0.0.1:1/Packages".into(),
            etag: Some("v1".into()),
            last_modified: None,
            ..Validators::default()
        },
    }
}

fn source_with(
    spec: &Value,
    status: Option<DebianRepositorySourceStatus>,
) -> DebianRepositorySource {
    let mut source: DebianRepositorySource = serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "DebianRepositorySource",
        "metadata": {"name": "src", "namespace": "team", "uid": "u-1", "generation": 1},
        "spec": spec,
    }))
    .unwrap();
    source.status = status;
    source
}

fn source(status: Option<DebianRepositorySourceStatus>) -> DebianRepositorySource {
    source_with(&json!({"url": "http://127.0.0.1:1/Packages"}), status)
}

fn now() -> Time {
    Time(Timestamp::from_second(1_700_000_000).unwrap())
}

fn ready_reason(status: &Value) -> String {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["reason"].as_str().unwrap().to_owned())
        .unwrap()
}

/// Answers a status apply as the API server does: the object with the applied status.
fn answer_status(
    call: crate::runtime::fixtures::Call,
    status: Option<DebianRepositorySourceStatus>,
) {
    let mut answer = serde_json::to_value(source(status)).unwrap();
    answer["status"] = call.body["status"].clone();
    call.ok(&answer);
}

/// The next call, which must be this controller's status apply of `team/src`.
async fn status_apply(server: &mut Verifier) -> crate::runtime::fixtures::Call {
    server
        .expect_status_apply::<DebianRepositorySource>("team", "src", FIELD_MANAGER)
        .await
}

/// The two events of a first unsigned sync, in order.
async fn first_sync_events(server: &mut Verifier) {
    server
        .expect_event("team", COMPONENT, "VersionsChanged")
        .await;
    server.expect_event("team", COMPONENT, "NoSignedBy").await;
}

async fn reconcile_once(source: &DebianRepositorySource, ctx: &Context) -> Result<Action, Error> {
    within(
        "the reconcile",
        STEP,
        reconcile_source(source, ctx, &now(), 0.0),
    )
    .await
}

#[tokio::test]
async fn first_sync_applies_status_once_then_publishes_two_events_and_nothing_else() {
    let (ctx, verifier) = Context::test();
    let scenario = verifier.run(|mut server| async move {
        let call = status_apply(&mut server).await;
        let status = call.body["status"].clone();
        assert_eq!(status["versions"], json!(["v1.27.0", "v1.27.1"]));
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["conditions"].as_array().unwrap().len(), 2);
        answer_status(call, None);
        first_sync_events(&mut server).await;
        server
    });
    let action = reconcile_once(&source(None), &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    scenario.finish().await;
}

#[tokio::test]
async fn unchanged_repository_makes_no_api_calls() {
    let (ctx, verifier) = Context::test();
    let first = decide(&Observed {
        generation: Some(1),
        status: &DebianRepositorySourceStatus::default(),
        signed: false,
        result: &Ok(SyncOutcome::Fetched(listing())),
        now: &now(),
        interval: Duration::from_secs(300),
        jitter: 0.0,
    });
    let obj = source(Some(first.status));
    let scenario = verifier.run(|server| async move { server });
    reconcile_once(&obj, &ctx).await.unwrap();
    scenario.finish().await;
}

/// Issue 9, finding 1: a failed status write must not leave validators behind that turn the next
/// poll into a 304 keeping the stale (here: empty) status.
#[tokio::test]
async fn after_a_failed_status_write_the_next_sync_is_unconditional_and_writes() {
    let (ctx, verifier, probe) = Context::test_with(Ok(SyncOutcome::Fetched(listing())));
    let scenario = verifier.run(|mut server| async move {
        status_apply(&mut server).await.fail(500, "InternalError");
        let call = status_apply(&mut server).await;
        assert_eq!(
            call.body["status"]["versions"],
            json!(["v1.27.0", "v1.27.1"])
        );
        answer_status(call, None);
        first_sync_events(&mut server).await;
        server
    });
    let obj = source(None);
    let err = reconcile_once(&obj, &ctx).await.unwrap_err();
    assert_eq!(err.category(), "WriteStatus");
    reconcile_once(&obj, &ctx).await.unwrap();
    scenario.finish().await;
    assert_eq!(
        *probe.seen.lock().unwrap(),
        [None, None],
        "the second sync must not be conditional"
    );
}

#[tokio::test]
async fn validators_are_sent_once_the_status_holds_their_listing() {
    let (ctx, verifier, probe) = Context::test_with(Ok(SyncOutcome::Fetched(listing())));
    let written = Arc::new(Mutex::new(Value::Null));
    let scenario = verifier.run(|mut server| {
        let written = Arc::clone(&written);
        async move {
            let call = status_apply(&mut server).await;
            *written.lock().unwrap() = call.body["status"].clone();
            answer_status(call, None);
            first_sync_events(&mut server).await;
            server
        }
    });
    reconcile_once(&source(None), &ctx).await.unwrap();
    scenario.finish().await;
    let written = written.lock().unwrap().clone();
    let stored: DebianRepositorySourceStatus = serde_json::from_value(written).unwrap();
    // The same listing again: no write, no event, and this time the request is conditional.
    reconcile_once(&source(Some(stored.clone())), &ctx)
        .await
        .unwrap();
    // A status that lost the listing (another writer, a restore) makes the next sync
    // unconditional again.
    let mut lost = stored;
    lost.index_sha256 = None;
    let (client, verifier) = mock_client();
    let ctx = Context {
        client,
        ..Arc::into_inner(ctx).unwrap()
    };
    let scenario = verifier.run(|mut server| async move {
        let call = status_apply(&mut server).await;
        answer_status(call, None);
        server
    });
    reconcile_once(&source(Some(lost)), &ctx).await.unwrap();
    scenario.finish().await;
    let etag = Some("v1".to_owned());
    assert_eq!(*probe.seen.lock().unwrap(), [None, etag, None]);
}

#[tokio::test]
async fn validators_are_reused_only_for_an_unchanged_spec() {
    let (ctx, _verifier, probe) = Context::test_with(Ok(SyncOutcome::NotModified));
    let key = memory_key(&validate(&source(None)).unwrap().repository, None, None);
    ctx.memory().insert(
        "u-1".into(),
        Memory {
            key,
            validators: Some((listing().validators, "ab".into())),
            write_failures: 0,
        },
    );
    let status = DebianRepositorySourceStatus {
        index_sha256: Some("ab".into()),
        ..DebianRepositorySourceStatus::default()
    };
    let mut obj = source(Some(status.clone()));
    let valid = validate(&obj).unwrap();
    observe(&obj, &valid, &status, &ctx, "team", "u-1")
        .await
        .0
        .unwrap();
    obj.spec.architecture = Some("arm64".into());
    let valid = validate(&obj).unwrap();
    observe(&obj, &valid, &status, &ctx, "team", "u-1")
        .await
        .0
        .unwrap();
    observe(&obj, &valid, &status, &ctx, "team", "u-2")
        .await
        .0
        .unwrap();
    assert_eq!(
        *probe.seen.lock().unwrap(),
        [Some("v1".to_owned()), None, None]
    );
}

#[tokio::test]
async fn a_failed_status_write_backs_off_like_a_failed_sync() {
    let (ctx, verifier) = Context::test();
    let scenario = verifier.run(|mut server| async move {
        for _ in 0..3 {
            status_apply(&mut server).await.fail(409, "Conflict");
        }
        server
    });
    let obj = Arc::new(DeserializeGuard(Ok(source(None))));
    let mut delays = Vec::new();
    for _ in 0..3 {
        let err = reconcile_once(&obj.0.as_ref().unwrap().clone(), &ctx)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::WriteStatus(WriteError::Api(_))),
            "{err:?}"
        );
        delays.push(error_policy(Arc::clone(&obj), &err, Arc::clone(&ctx)));
    }
    scenario.finish().await;
    let secs = |s| Action::requeue(Duration::from_secs(s));
    assert_eq!(delays, [secs(5), secs(10), secs(20)]);
}

/// The API server takes the status write and never answers: the reconcile gives up after
/// [`API_TIMEOUT`] with an error, instead of holding its slot for ever.
#[tokio::test(start_paused = true)]
async fn an_api_server_that_never_answers_fails_the_reconcile_in_bounded_time() {
    let (ctx, verifier) = Context::test();
    let scenario = verifier.run(|mut server| async move {
        let call = status_apply(&mut server).await;
        let hung = call.hang();
        tokio::spawn(async move {
            tokio::time::sleep(API_TIMEOUT * 2).await;
            drop(hung);
        });
        server
    });
    let started = tokio::time::Instant::now();
    let err = within(
        "the reconcile",
        API_TIMEOUT + STEP,
        reconcile_source(&source(None), &ctx, &now(), 0.0),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::WriteStatus(WriteError::TimedOut(_))),
        "{err:?}"
    );
    assert!(started.elapsed() >= API_TIMEOUT);
    scenario.finish().await;
}

#[tokio::test]
async fn a_missing_signed_by_config_map_has_its_own_reason() {
    let (ctx, verifier, probe) = Context::test_with(Ok(SyncOutcome::Fetched(listing())));
    let scenario = verifier.run(|mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::GET);
        assert_eq!(call.uri, "/api/v1/namespaces/team/configmaps/keys");
        call.fail(404, "NotFound");
        let call = status_apply(&mut server).await;
        assert_eq!(ready_reason(&call.body["status"]), "SignedByNotFound");
        let message = call.body["status"]["conditions"][0]["message"].clone();
        assert_eq!(
            message,
            "spec.signedBy.configMapKeyRef: ConfigMap team/keys not found"
        );
        answer_status(call, None);
        server
            .expect_event("team", COMPONENT, "ListVersionsFailed")
            .await;
        server
    });
    let obj = source_with(
        &json!({"url": "http://127.0.0.1:1/", "signedBy": {"configMapKeyRef": {"name": "keys", "key": "k"}}}),
        None,
    );
    let action = reconcile_once(&obj, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(decide::RETRY_BASE));
    scenario.finish().await;
    assert!(
        probe.seen.lock().unwrap().is_empty(),
        "no sync without keys"
    );
}

#[tokio::test]
async fn an_unreadable_interval_is_a_spec_error_that_waits_for_a_change() {
    let (ctx, verifier, probe) = Context::test_with(Ok(SyncOutcome::Fetched(listing())));
    let scenario = verifier.run(|mut server| async move {
        let call = status_apply(&mut server).await;
        assert_eq!(ready_reason(&call.body["status"]), "InvalidInterval");
        answer_status(call, None);
        server.expect_event("team", COMPONENT, "NoSignedBy").await;
        server
    });
    let obj = source_with(
        &json!({"url": "http://127.0.0.1:1/", "interval": "soon"}),
        None,
    );
    let err = reconcile_once(&obj, &ctx).await.unwrap_err();
    assert_eq!(err.category(), "InvalidSpec");
    assert_eq!(
        crate::runtime::cause_chain(&err),
        "the spec is invalid: spec.interval: \"soon\" is not a duration such as 90s, 5m or 1h30m"
    );
    scenario.finish().await;
    assert_eq!(
        error_policy(Arc::new(DeserializeGuard(Ok(obj))), &err, ctx),
        Action::await_change()
    );
    assert!(
        probe.seen.lock().unwrap().is_empty(),
        "no sync of an invalid spec"
    );
}

#[tokio::test]
async fn deleted_sources_are_forgotten() {
    let (ctx, _verifier, probe) = Context::test_with(Ok(SyncOutcome::NotModified));
    let mut ctx = Arc::into_inner(ctx).unwrap();
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(source(None)))));
    ctx.store = Some(reader);
    ctx.memory().insert("u-1".into(), Memory::default());
    ctx.forget_deleted();
    assert!(
        probe.forgotten.lock().unwrap().is_empty(),
        "nothing to scan"
    );
    ctx.memory().insert("gone".into(), Memory::default());
    ctx.forget_deleted();
    assert_eq!(ctx.memory().keys().collect::<Vec<_>>(), ["u-1"]);
    assert_eq!(*probe.forgotten.lock().unwrap(), ["gone"]);
}

#[test]
fn http_clients_are_shared_per_ca_bundle_and_dropped_when_unused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let repository = HttpRepository::default();
    repository.fetcher("a", None).unwrap();
    repository.fetcher("b", None).unwrap();
    assert_eq!(repository.clients(), 1);
    let first = repository.fetcher("a", None).unwrap();
    assert!(Arc::ptr_eq(&first, &repository.fetcher("b", None).unwrap()));
    repository.forget("a");
    assert_eq!(repository.clients(), 1, "b still uses it");
    repository.forget("b");
    assert_eq!(repository.clients(), 0);
}

#[tokio::test]
async fn every_series_of_the_controller_shows_at_zero_once_it_has_started() {
    let (client, _verifier) = mock_client();
    let (_trigger, shutdown) = crate::shutdown::Shutdown::new();
    let metrics = Arc::new(crate::runtime::Metrics::default());
    let shared = Shared::new(client, None, Arc::clone(&metrics), None, shutdown);
    let running = (REGISTRATION.start)(&shared);
    let text = metrics.encode().unwrap();
    let at_zero = |series: &str| {
        assert!(
            text.lines().any(|l| l == format!("{series} 0")),
            "{series} is not at zero in:\n{text}"
        );
    };
    at_zero("kubernetes_upgrader_reconcile_runs_total{controller=\"debianrepositorysource\"}");
    at_zero(
        "kubernetes_upgrader_reconcile_duration_seconds_count{controller=\"debianrepositorysource\"}",
    );
    for category in Error::CATEGORIES
        .iter()
        .chain(&[crate::runtime::CATEGORY_WATCH])
    {
        at_zero(&format!(
            "kubernetes_upgrader_reconcile_failures_total{{controller=\"debianrepositorysource\",category=\"{category}\"}}"
        ));
    }
    for result in ["Fetched", "NotModified"] {
        at_zero(&format!(
            "kubernetes_upgrader_debian_repository_syncs_total{{result=\"{result}\"}}"
        ));
    }
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    assert!(text.contains("process_start_time_seconds "), "{text}");
    drop(running);
}
