//! Reconciles of the image the shared cache holds, which lacks `spec.jobTemplate`: the whole
//! image is read only when the reconcile may use its template.

use super::tests::{build_spec, image, image_with};
use super::*;
use crate::runtime::builders::now;
use crate::runtime::fixtures::{STEP, mock_client, within};
use crate::runtime::projection::Projected;
use http::Method;
use kube::runtime::{reflector, watcher};
use serde_json::json;

fn context() -> (Arc<Context>, crate::runtime::fixtures::Verifier) {
    let (client, verifier) = mock_client();
    let (jobs, mut writer) = reflector::store::<Job>();
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let (namespaces, mut writer) = reflector::store::<Namespace>();
    let team: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    writer.apply_watcher_event(&watcher::Event::InitDone);
    writer.apply_watcher_event(&watcher::Event::Apply(team));
    let ctx = Context::new(
        client,
        test_metrics(),
        Some("test".into()),
        jobs,
        namespaces,
    );
    (Arc::new(ctx), verifier)
}

fn cached(image: &MachineImage) -> Arc<Guarded> {
    let mut guarded = DeserializeGuard(Ok(image.clone()));
    guarded.project();
    Arc::new(guarded)
}

fn run(
    image: Arc<Guarded>,
    ctx: &Arc<Context>,
) -> futures::future::BoxFuture<'static, Result<Action, Error>> {
    let ctx = Arc::clone(ctx);
    Box::pin(
        async move { within("the reconcile", STEP * 3, Box::pin(reconcile(image, ctx))).await },
    )
}

#[tokio::test]
async fn an_image_to_build_is_read_whole_and_its_job_has_the_template() {
    let full = image(None);
    let (ctx, verifier) = context();
    let answer = full.clone();
    let scenario = verifier.run(|mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::GET);
        assert_eq!(
            call.uri,
            "/apis/kubernetesupgraded.dimitrikoshkin.com/v1alpha1/namespaces/team/machineimages/img"
        );
        call.ok(&serde_json::to_value(&answer).unwrap());
        let call = server.next().await;
        assert_eq!(call.method, Method::POST);
        let containers = &call.body["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["name"], "build");
        assert_eq!(containers[1]["name"], "publish");
        let created = call.body.clone();
        call.reply(201, &created);
        let call = server
            .expect_status_apply::<MachineImage>("team", "img", FIELD_MANAGER)
            .await;
        assert_eq!(call.body["status"]["phase"], "Building");
        let mut status = serde_json::to_value(&answer).unwrap();
        status["status"] = call.body["status"].clone();
        call.ok(&status);
        server.expect_event("team", COMPONENT, "CreatingJob").await;
        server
    });
    let action = run(cached(&full), &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(decide::BUILDING_RECHECK));
    scenario.finish().await;
}

#[tokio::test]
async fn a_static_image_is_decided_from_the_cache_alone() {
    let mut spec = build_spec();
    spec["id"] = json!("ami-2");
    let mut full = image_with(&spec, &json!({}), None);
    full.status = Some(
        decide(&Observed {
            image: &full,
            latest: None,
            job_gone: false,
            pods: &[],
            build_pods: &BuildPodPolicy::default(),
            now: &now(),
        })
        .status,
    );
    let (ctx, verifier) = context();
    assert_eq!(
        run(cached(&full), &ctx).await.unwrap(),
        Action::await_change()
    );
    verifier.assert_no_more_calls().await;
}

#[tokio::test]
async fn an_image_gone_since_the_cache_saw_it_is_left_alone() {
    let (ctx, verifier) = context();
    let scenario = verifier.run(|mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::GET);
        call.fail(404, "NotFound");
        server
    });
    assert_eq!(
        run(cached(&image(None)), &ctx).await.unwrap(),
        Action::await_change()
    );
    scenario.finish().await;
}

#[tokio::test]
async fn a_failed_read_of_the_image_is_an_error() {
    let (ctx, verifier) = context();
    let scenario = verifier.run(|mut server| async move {
        server.next().await.fail(500, "InternalError");
        server
    });
    let err = run(cached(&image(None)), &ctx).await.unwrap_err();
    assert_eq!(err.category(), "GetImageError");
    scenario.finish().await;
}
