//! Choreography tests: the API calls one reconcile makes, scripted with the runtime fixtures.

use super::*;
use crate::runtime::builders::{Build, Fixture, SourceBuild, now, ready};
use crate::runtime::controller::error_policy;
use crate::runtime::fixtures::{Call, STEP, Verifier, mock_client, within};
use api::v1alpha1::SYNCER_NAME_LABEL;
use api::v1alpha1::{DEBIAN_VERSION_ANNOTATION, DebianRepositorySource};
use http::Method;
use kube::Resource;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};

const NS: &str = "team";

fn syncer(status: Option<Value>) -> MachineImageSyncer {
    let syncer = MachineImageSyncer::test("sync")
        .with_uid("uid-1")
        .with_generation(1);
    match status {
        Some(status) => syncer.with_status(&status),
        None => syncer,
    }
}

fn source() -> DebianRepositorySource {
    DebianRepositorySource::test("src")
        .with_url("http://127.0.0.1:1/")
        .with_status(&json!({
            "versions": ["v1.27.1", "v1.27.3", "v1.28.0"],
            "debianVersions": [{"version": "v1.27.3", "debian": "1.27.3-1.1"}],
        }))
}

fn template() -> MachineImageTemplate {
    MachineImageTemplate::test("tpl")
}

fn image_of(version: &str) -> MachineImage {
    let syncer = syncer(None);
    build_image(&syncer, &template(), version, &SourceView::default()).unwrap()
}

fn store_of<K>(objects: Vec<K>) -> Store<DeserializeGuard<K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, mut writer) = reflector::store();
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(object))));
    }
    reader
}

/// A store whose watch has completed its first list of `objects`.
fn listed<K>(objects: Vec<K>) -> Store<DeserializeGuard<K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(DeserializeGuard(Ok(object))));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

impl Context {
    /// A context over stores holding the source, the template and `images`.
    fn test(images: Vec<MachineImage>) -> (Context, Verifier) {
        let (client, verifier) = mock_client();
        let stores = Stores {
            images: store_of(images),
            templates: store_of(vec![template()]),
            sources: store_of(vec![source()]),
        };
        (
            Context::new(client, test_metrics(), Some("test".into()), stores),
            verifier,
        )
    }
}

/// The next call: the create of the image of `version`, under our field manager.
async fn expect_create(server: &mut Verifier, version: &str) -> Call {
    let call = server.next().await;
    assert_eq!(call.method, Method::POST, "{}", call.uri);
    assert_eq!(
        call.uri,
        format!(
            "/apis/kubernetesupgraded.dimitrikoshkin.com/v1alpha1/namespaces/{NS}/machineimages?&fieldManager={FIELD_MANAGER}"
        )
    );
    assert_eq!(call.body["metadata"]["name"], image_of(version).name_any());
    assert_eq!(call.body["spec"]["version"], version);
    assert_eq!(call.body["metadata"]["labels"][SYNCER_NAME_LABEL], "sync");
    assert_eq!(call.body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    call
}

async fn expect_status(server: &mut Verifier) -> Value {
    let call = server
        .expect_status_apply::<MachineImageSyncer>(NS, "sync", FIELD_MANAGER)
        .await;
    let status = call.body["status"].clone();
    let mut answer = serde_json::to_value(syncer(None)).unwrap();
    answer["status"] = status.clone();
    call.ok(&answer);
    status
}

/// One reconcile at [`now`], under the step timeout.
async fn reconcile_once(syncer: &MachineImageSyncer, ctx: &Context) -> Result<Action, Error> {
    within(
        "the reconcile",
        STEP,
        Box::pin(reconcile_syncer(syncer, ctx, &now())),
    )
    .await
}

#[tokio::test]
async fn first_sync_creates_one_image_then_one_event_and_one_status_write() {
    let (ctx, verifier) = Context::test(vec![]);
    let scenario = verifier.run(|mut server| async move {
        let create = expect_create(&mut server, "v1.27.3").await;
        // The Debian version, read from the cached source's status.debianVersions.
        assert_eq!(
            create.body["metadata"]["annotations"][DEBIAN_VERSION_ANNOTATION],
            "1.27.3-1.1"
        );
        let body = create.body.clone();
        create.reply(201, &body);
        server.expect_event(NS, COMPONENT, EVENT_CREATED).await;
        let status = expect_status(&mut server).await;
        assert_eq!(status["latestVersion"], "v1.27.3");
        assert_eq!(ready(&status).1, "Synced");
        assert_eq!(status["observedGeneration"], 1);
        server
    });
    let action = reconcile_once(&syncer(None), &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(validate::DEFAULT_INTERVAL));
    scenario.finish().await;
}

#[tokio::test]
async fn steady_state_makes_no_calls() {
    // The status a first sync decided, and the image it created, seen through the caches.
    let first = decide(&Observed {
        syncer: &syncer(None),
        validated: &validate(&syncer(None)),
        source: Some(&Ok(SourceView::from_json(
            &serde_json::to_value(source()).unwrap(),
        ))),
        images: &[],
        template: Some(&template()),
        now: &now(),
    });
    let settled = syncer(Some(serde_json::to_value(&first.status).unwrap()));

    let (ctx, verifier) = Context::test(vec![image_of("v1.27.3")]);
    let scenario = verifier.run(|server| async move { server });
    let action = reconcile_once(&settled, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(validate::DEFAULT_INTERVAL));
    scenario.finish().await;
}

#[tokio::test]
async fn already_exists_after_a_crash_is_success() {
    // The cache has not seen the image an earlier, crashed reconcile created.
    let (ctx, verifier) = Context::test(vec![]);
    let scenario = verifier.run(|mut server| async move {
        expect_create(&mut server, "v1.27.3")
            .await
            .fail(409, "AlreadyExists");
        // No CreatedMachineImage event: this reconcile created nothing.
        let status = expect_status(&mut server).await;
        assert_eq!(status["latestVersion"], "v1.27.3");
        assert_eq!(ready(&status).1, "Synced");
        server
    });
    reconcile_once(&syncer(None), &ctx).await.unwrap();
    scenario.finish().await;
}

#[tokio::test]
async fn a_failed_create_writes_no_status_and_retries() {
    let (ctx, verifier) = Context::test(vec![]);
    let scenario = verifier.run(|mut server| async move {
        expect_create(&mut server, "v1.27.3")
            .await
            .fail(500, "InternalError");
        server
    });
    let err = reconcile_once(&syncer(None), &ctx).await.unwrap_err();
    assert_eq!(err.category(), "CreateMachineImageFailed");
    scenario.finish().await;
    let ctx = Arc::new(ctx);
    let obj = Arc::new(DeserializeGuard(Ok(syncer(None))));
    assert_eq!(
        error_policy(obj, &err, ctx),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_missing_template_is_a_condition_and_a_v06_warning_without_a_create() {
    let (mut ctx, verifier) = Context::test(vec![]);
    ctx.stores.templates = store_of::<MachineImageTemplate>(vec![]);
    let scenario = verifier.run(|mut server| async move {
        let status = expect_status(&mut server).await;
        assert_eq!(ready(&status).1, "TemplateNotFound");
        server
            .expect_event(NS, COMPONENT, decide::EVENT_GET_TEMPLATE_FAILED)
            .await;
        server
    });
    reconcile_once(&syncer(None), &ctx).await.unwrap();
    scenario.finish().await;
}

#[tokio::test]
async fn other_source_kinds_are_read_through_discovery_and_the_dynamic_api() {
    let (ctx, verifier) = Context::test(vec![]);
    let mut feed = syncer(None);
    feed.spec.source_ref = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Feed", "name": "releases",
    }))
    .unwrap();
    let scenario = verifier.run(|mut server| async move {
        let discovery = server.next().await;
        assert_eq!(discovery.method, Method::GET);
        assert_eq!(discovery.uri, "/apis/example.com/v1");
        discovery.ok(&json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "example.com/v1",
            "resources": [
                {"name": "feeds", "singularName": "feed", "namespaced": true, "kind": "Feed", "verbs": ["get", "list", "watch"]},
                {"name": "feeds/status", "singularName": "", "namespaced": true, "kind": "Feed", "verbs": ["get"]},
            ],
        }));
        let get = server.next().await;
        assert_eq!(get.method, Method::GET);
        assert_eq!(get.uri, format!("/apis/example.com/v1/namespaces/{NS}/feeds/releases"));
        get.ok(&json!({
            "apiVersion": "example.com/v1", "kind": "Feed",
            "metadata": {"name": "releases", "namespace": NS},
            "status": {"versions": ["v1.27.8", "bogus"], "debianVersions": [{"version": "v1.27.8", "debian": "1.27.8-1.1"}]},
        }));
        let create = expect_create(&mut server, "v1.27.8").await;
        assert_eq!(
            create.body["metadata"]["annotations"][DEBIAN_VERSION_ANNOTATION],
            "1.27.8-1.1"
        );
        let body = create.body.clone();
        create.reply(201, &body);
        server.expect_event(NS, COMPONENT, EVENT_CREATED).await;
        let status = expect_status(&mut server).await;
        assert_eq!(status["latestVersion"], "v1.27.8");
        server
    });
    reconcile_once(&feed, &ctx).await.unwrap();
    scenario.finish().await;

    // A kind the server does not serve is SourceNotFound.
    let (ctx, verifier) = Context::test(vec![]);
    let scenario = verifier.run(|mut server| async move {
        server.next().await.fail(404, "NotFound");
        let status = expect_status(&mut server).await;
        assert_eq!(ready(&status).1, "SourceNotFound");
        server
            .expect_event(NS, COMPONENT, decide::EVENT_GET_VERSIONS_FAILED)
            .await;
        server
    });
    reconcile_once(&feed, &ctx).await.unwrap();
    scenario.finish().await;
}

/// Before the shared caches hold their first list, a reconcile writes nothing (a missing
/// source or template could be one the cache has not listed yet) and looks again soon.
#[tokio::test(start_paused = true)]
async fn no_calls_before_the_caches_have_listed() {
    let (mut ctx, verifier) = Context::test(vec![]);
    // The images' watch is open (its writer lives) but has not finished its first list.
    let (reader, _writer) = reflector::store::<GuardedImage>();
    ctx.stores.images = reader;
    let scenario = verifier.run(|server| async move { server });
    let obj = Arc::new(DeserializeGuard(Ok(syncer(None))));
    let action = reconcile(obj, Arc::new(ctx)).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    scenario.finish().await;
}

#[tokio::test]
async fn once_the_caches_have_listed_the_reconcile_proceeds() {
    let (mut ctx, verifier) = Context::test(vec![]);
    ctx.stores = Stores {
        images: listed::<MachineImage>(vec![]),
        templates: listed(vec![template()]),
        sources: listed(vec![source()]),
    };
    let scenario = verifier.run(|mut server| async move {
        expect_create(&mut server, "v1.27.3")
            .await
            .fail(409, "AlreadyExists");
        expect_status(&mut server).await;
        server
    });
    let obj = Arc::new(DeserializeGuard(Ok(syncer(None))));
    let action = within(
        "the reconcile",
        STEP,
        Box::pin(reconcile(obj, Arc::new(ctx))),
    )
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(validate::DEFAULT_INTERVAL));
    scenario.finish().await;
}
