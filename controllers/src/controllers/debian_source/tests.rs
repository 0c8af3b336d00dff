//! Choreography tests: the API calls one reconcile makes, scripted with the runtime fixtures.

use super::observe::observe;
use super::*;
use crate::debian::Listing;
use crate::debian::{Keyring, RepositorySpec, SyncError};
use crate::runtime::builders::{Build, Fixture, condition, now, ready};
use crate::runtime::fixtures::{STEP, Verifier, mock_client, within};
use crate::runtime::status::API_TIMEOUT;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::Method;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use std::sync::Arc;

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
    let mut source = DebianRepositorySource::test("src")
        .with_uid("u-1")
        .with_generation(1)
        .with_spec(spec);
    source.status = status;
    source
}

fn source(status: Option<DebianRepositorySourceStatus>) -> DebianRepositorySource {
    source_with(&json!({"url": "http://127.0.0.1:1/Packages"}), status)
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

/// A failed status write must not leave validators behind that turn the next
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
    let mut ctx = Arc::into_inner(ctx).unwrap();
    ctx.core.client = client;
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
            matches!(err, Error::WriteStatus(ApiError::Api(_))),
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
        matches!(err, Error::WriteStatus(ApiError::TimedOut(_))),
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
        assert_eq!(ready(&call.body["status"]).1, "SignedByNotFound");
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
        assert_eq!(ready(&call.body["status"]).1, "InvalidInterval");
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

// What survives a restart, and what reaches status, when a mirror is hostile or broken.

mod hostile {
    use super::*;
    use crate::debian::FixedClock;
    use kubernetes_upgrader_testkit::debian::{Fault, RepoBuilder, RepoServer, TestKey};

    /// Time allowed for one reconcile that syncs a loopback repository.
    const SYNC: Duration = Duration::from_secs(20);

    fn hours(n: i64) -> k8s_openapi::jiff::SignedDuration {
        k8s_openapi::jiff::SignedDuration::from_hours(n)
    }

    /// A fresh context (no memory: a newly started manager) over the real HTTP client, checking
    /// Release times at `clock`.
    fn fresh(clock: Option<Timestamp>) -> (Arc<Context>, Verifier) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (client, verifier) = mock_client();
        let repository = match clock {
            Some(at) => HttpRepository::with_clock(Arc::new(FixedClock(at))),
            None => HttpRepository::default(),
        };
        let ctx = Context::new(
            client,
            test_metrics(),
            Some("test".into()),
            Box::new(repository),
        );
        (Arc::new(ctx), verifier)
    }

    fn signed_source(
        url: &str,
        key: &TestKey,
        status: Option<DebianRepositorySourceStatus>,
    ) -> DebianRepositorySource {
        source_with(
            &json!({"url": url, "signedBy": {"inline": key.armored_public_key().unwrap()}}),
            status,
        )
    }

    /// Reconciles `obj` once on `ctx`, expecting one status apply (whose status is returned)
    /// followed by an event of each of `events`.
    async fn sync_once(
        ctx: &Context,
        verifier: Verifier,
        obj: &DebianRepositorySource,
        events: &'static [&'static str],
    ) -> (Value, Vec<Value>) {
        let seen = Arc::new(Mutex::new((Value::Null, Vec::new())));
        let scenario = verifier.run({
            let seen = Arc::clone(&seen);
            move |mut server| async move {
                let call = status_apply(&mut server).await;
                seen.lock().unwrap().0 = call.body["status"].clone();
                answer_status(call, None);
                for reason in events {
                    let event = server.expect_event("team", COMPONENT, reason).await;
                    seen.lock().unwrap().1.push(event);
                }
                server
            }
        });
        within(
            "the reconcile",
            SYNC,
            reconcile_source(obj, ctx, &now(), 0.0),
        )
        .await
        .unwrap();
        scenario.finish().await;
        let seen = seen.lock().unwrap();
        (seen.0.clone(), seen.1.clone())
    }

    /// A fresh controller's first sync of `server`'s repository, signed by `key`: the status.
    async fn first_signed_sync(
        server: &RepoServer,
        key: &TestKey,
        clock: Option<Timestamp>,
    ) -> Value {
        let (ctx, verifier) = fresh(clock);
        let obj = signed_source(server.url(), key, None);
        sync_once(&ctx, verifier, &obj, &["VersionsChanged"])
            .await
            .0
    }

    fn stored(status: &Value) -> DebianRepositorySourceStatus {
        serde_json::from_value(status.clone()).unwrap()
    }

    /// Across restarts, a controller with no memory still refuses an older signed
    /// Release, from the `releaseDate` it finds in status.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_controller_refuses_a_replayed_release_from_the_status_it_finds() {
        let key = TestKey::generate("archive").unwrap();
        let wall = Timestamp::now();
        let old = RepoBuilder::flat()
            .kubeadm("1.27.0-1.1", "amd64")
            .signed_by(&key)
            .date(wall - hours(48))
            .build()
            .unwrap();
        let new = RepoBuilder::flat()
            .kubeadm("1.27.0-1.1", "amd64")
            .kubeadm("1.27.1-1.1", "amd64")
            .signed_by(&key)
            .date(wall - hours(1))
            .build()
            .unwrap();
        let server = RepoServer::start().await.unwrap();
        server.publish(&new);
        let first = first_signed_sync(&server, &key, None).await;
        assert_eq!(first["versions"], json!(["v1.27.0", "v1.27.1"]));
        assert!(first["releaseDate"].is_string(), "{first:#}");

        // The mirror serves the older Release; a newly started controller sees it first.
        server.publish(&old);
        let (ctx, verifier) = fresh(None);
        let obj = signed_source(server.url(), &key, Some(stored(&first)));
        let (refused, events) = sync_once(&ctx, verifier, &obj, &["ListVersionsFailed"]).await;
        assert_eq!(
            refused["versions"], first["versions"],
            "the last good versions are kept"
        );
        assert_eq!(refused["releaseDate"], first["releaseDate"]);
        let (ready, reason, message) = condition(&refused, "Ready");
        assert_eq!(
            (ready.as_str(), reason.as_str()),
            ("False", "ReleaseReplayed"),
            "{message}"
        );
        let (verified, reason, _) = condition(&refused, "Verified");
        assert_eq!(
            (verified.as_str(), reason.as_str()),
            ("False", "ReleaseReplayed")
        );
        assert_eq!(events[0]["type"], "Warning");
        assert!(
            events[0]["note"]
                .as_str()
                .unwrap()
                .starts_with("ReleaseReplayed"),
            "{:#}",
            events[0]
        );
    }

    /// Across restarts, past the `releaseValidUntil` in status, neither a forged 304
    /// (to a request that, after a restart, carries no validators) nor the same expired Release
    /// keeps the source Ready.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_controller_refuses_a_304_or_the_same_release_past_valid_until() {
        let key = TestKey::generate("archive").unwrap();
        let t0 = Timestamp::now();
        let repo = RepoBuilder::flat()
            .kubeadm("1.27.0-1.1", "amd64")
            .signed_by(&key)
            .date(t0 - hours(1))
            .valid_until(t0 + hours(1))
            .build()
            .unwrap();
        let server = RepoServer::start().await.unwrap();
        server.publish(&repo);
        let first = first_signed_sync(&server, &key, Some(t0)).await;
        assert!(first["releaseValidUntil"].is_string(), "{first:#}");
        let obj = signed_source(server.url(), &key, Some(stored(&first)));

        // Within Valid-Until, a restarted controller's forged 304 is an HTTP error, no more.
        server.inject("InRelease", Fault::Status(304));
        let (ctx, verifier) = fresh(Some(t0 + hours(0)));
        let (early, _) = sync_once(&ctx, verifier, &obj, &["ListVersionsFailed"]).await;
        assert_eq!(condition(&early, "Ready").1, "HTTPStatus");

        for fault in [Some(Fault::Status(304)), None] {
            match &fault {
                Some(f) => server.inject("InRelease", f.clone()),
                None => server.clear_faults(),
            }
            let (ctx, verifier) = fresh(Some(t0 + hours(2)));
            let (expired, _) = sync_once(&ctx, verifier, &obj, &["ListVersionsFailed"]).await;
            let (ready, reason, message) = condition(&expired, "Ready");
            assert_eq!(
                (ready.as_str(), reason.as_str()),
                ("False", "ReleaseExpired"),
                "{fault:?}: {message}"
            );
            assert!(message.contains("Valid-Until"), "{message}");
            assert_eq!(condition(&expired, "Verified").1, "ReleaseExpired");
            assert_eq!(expired["versions"], json!(["v1.27.0"]), "{fault:?}");
        }
    }

    /// Release times kept in status belong to the repository they were read from: after a
    /// change of URL, the new repository starts afresh instead of being held to them.
    #[test]
    fn release_times_from_status_apply_only_to_their_repository() {
        let date = now();
        let status = DebianRepositorySourceStatus {
            index_url: Some("http://redacted@mirror/deb/Packages.gz".into()),
            index_sha256: Some("ab".into()),
            release_date: Some(date.clone()),
            release_valid_until: Some(date.clone()),
            ..DebianRepositorySourceStatus::default()
        };
        let spec = |url: &str| RepositorySpec {
            url: url.into(),
            suite: None,
            component: None,
            architecture: "amd64".into(),
            package: "kubeadm".into(),
            max_index_bytes: 1 << 20,
            timeout: Duration::from_secs(5),
        };
        let same = spec("http://u:p@mirror/deb/");
        let got = previous(&same, true, &status, &Memory::default(), "k").unwrap();
        assert_eq!(got.release_date, Some(date.0));
        assert_eq!(got.valid_until, Some(date.0));
        assert_eq!(got.etag, None, "nothing remembered over HTTP");
        assert_eq!(
            previous(
                &spec("http://other/deb/"),
                true,
                &status,
                &Memory::default(),
                "k"
            ),
            None
        );
        assert_eq!(
            previous(&same, false, &status, &Memory::default(), "k"),
            None,
            "an unsigned source is held to no Release times"
        );
        // Remembered validators come along for the same key and listing.
        let memory = Memory {
            key: "k".into(),
            validators: Some((listing().validators, "ab".into())),
            write_failures: 0,
        };
        let got = previous(&same, true, &status, &memory, "k").unwrap();
        assert_eq!(got.etag.as_deref(), Some("v1"));
        assert_eq!(got.release_date, Some(date.0));
        assert_eq!(
            previous(&same, true, &status, &memory, "other")
                .unwrap()
                .etag,
            None
        );
    }

    /// Whatever a listing holds, status and events get bounded, printable,
    /// redacted text, and no more versions than the schema allows (the highest kept, and said).
    #[tokio::test]
    async fn hostile_listings_reach_status_bounded_redacted_and_capped() {
        let total = decide::MAX_VERSIONS + 904;
        let debian: Vec<String> = (0..total)
            .flat_map(|p| [format!("1.{p}.0-1.1"), format!("1.{p}.0-1.2")])
            .collect();
        let versions = crate::debian::versions::map_versions(debian.iter().map(String::as_str)).0;
        let mut url = "http://user:s3cret@mirror.example/".to_owned();
        url.push_str(&"a\u{1b}[31m\n".repeat(2000));
        let listing = Listing {
            versions,
            debian_versions: debian,
            index_url: url,
            ..listing()
        };
        let (ctx, verifier, _) = Context::test_with(Ok(SyncOutcome::Fetched(listing)));
        let (status, events) = sync_once(
            &ctx,
            verifier,
            &source(None),
            &["VersionsChanged", "NoSignedBy"],
        )
        .await;
        let text = status.to_string() + &json!(events).to_string();
        assert!(!text.contains("s3cret"), "credentials leaked");
        assert!(
            status["indexURL"]
                .as_str()
                .unwrap()
                .starts_with("http://redacted@mirror.example/")
        );
        for type_ in ["Ready", "Verified"] {
            let message = condition(&status, type_).2;
            assert!(
                message.len() <= crate::text::MAX_MESSAGE_BYTES,
                "{type_}: {}",
                message.len()
            );
            assert!(
                !message.chars().any(char::is_control),
                "{type_}: {message:?}"
            );
        }
        assert!(
            condition(&status, "Ready").2.contains("at most 4096"),
            "the Ready message says that versions were left out"
        );
        let listed = status["versions"].as_array().unwrap();
        assert_eq!(listed.len(), decide::MAX_VERSIONS);
        assert_eq!(
            listed.last().unwrap(),
            &json!(format!("v1.{}.0", total - 1))
        );
        assert_eq!(
            listed[0],
            json!(format!("v1.{}.0", total - decide::MAX_VERSIONS))
        );
        let pairs = status["debianVersions"].as_array().unwrap();
        assert_eq!(pairs.len(), listed.len());
        for (pair, version) in pairs.iter().zip(listed) {
            assert_eq!(&pair["version"], version);
        }
        assert_eq!(
            pairs.last().unwrap()["debian"],
            json!(format!("1.{}.0-1.2", total - 1)),
            "the highest Debian revision"
        );
        for event in &events {
            let note = event["note"].as_str().unwrap();
            assert!(note.len() <= crate::text::MAX_MESSAGE_BYTES);
            assert!(!note.chars().any(char::is_control), "{note:?}");
        }
    }

    /// With `user:password@` in `spec.url`, nothing the controller logs, writes or
    /// announces carries the password, while the requests still send it.
    #[tokio::test]
    async fn credentials_in_the_url_reach_neither_logs_status_nor_events() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let repo = RepoBuilder::flat()
            .kubeadm("1.27.0-1.1", "amd64")
            .build()
            .unwrap();
        let server = RepoServer::start().await.unwrap();
        server.publish(&repo);
        let url = server
            .url()
            .replace("http://", "http://mirror-user:s3cret@");
        let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = {
            let logs = Arc::clone(&logs);
            move || Capture(Arc::clone(&logs))
        };
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(writer)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let (ctx, verifier) = fresh(None);
        let obj = source_with(&json!({"url": url}), None);
        let (status, events) =
            sync_once(&ctx, verifier, &obj, &["VersionsChanged", "NoSignedBy"]).await;
        let (spec_debug, key) = {
            let valid = validate(&obj).unwrap();
            (
                format!("{:?}", valid.repository),
                memory_key(&valid.repository, None, None),
            )
        };
        let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        assert!(
            logs.contains("index read") && logs.contains("redacted@"),
            "the index URL is logged, redacted: {logs}"
        );
        for (what, text) in [
            ("logs", logs),
            ("status", status.to_string()),
            ("events", json!(events).to_string()),
            ("spec's Debug", spec_debug),
            ("memory", key),
        ] {
            assert!(
                !text.contains("s3cret"),
                "the password is in the {what}: {text}"
            );
        }
        assert!(
            server.requests_with_authorization() > 0,
            "the requests carry it"
        );
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
