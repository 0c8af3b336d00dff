//! Decision and choreography tests of the template controller.

use super::*;
use crate::controllers::machine_image::render_job;
use crate::runtime::builders::{Build, Fixture, now};
use crate::runtime::fixtures::{STEP, Verifier, mock_client, within};
use http::Method;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};

fn template(generation: i64, status: Option<Value>, restart: &str) -> MachineImageTemplate {
    let mut t = MachineImageTemplate::test("tpl")
        .with_uid("t-1")
        .with_generation(generation);
    t.spec.template.spec.job_template.spec.restart_policy = Some(restart.to_owned());
    t.status = status.map(|s| serde_json::from_value(s).unwrap());
    t
}

fn image(name: &str, namespace: &str, cloned_from: &str, created: &str) -> MachineImage {
    MachineImage::test(name)
        .in_namespace(namespace)
        .with_annotation(CLONED_FROM_ANNOTATION, cloned_from)
        .created_at(created)
}

impl Context {
    fn test() -> (Arc<Context>, Verifier) {
        let (client, verifier) = mock_client();
        let (store, mut writer) = reflector::store::<machine_image::Guarded>();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let metrics =
            Arc::new(crate::runtime::Metrics::default()).controller(CONTROLLER, Error::CATEGORIES);
        (
            Arc::new(Context::new(client, metrics, Some("test".into()), store)),
            verifier,
        )
    }
}

#[test]
fn cloned_images_are_this_templates_newest_first_and_bounded() {
    let t = template(1, None, "Never");
    let mut images = vec![
        image("old", "team", "tpl", "2026-01-01T00:00:00Z"),
        image("new", "team", "tpl", "2026-01-03T00:00:00Z"),
        image("other-template", "team", "x", "2026-01-04T00:00:00Z"),
        image(
            "other-namespace",
            "elsewhere",
            "tpl",
            "2026-01-04T00:00:00Z",
        ),
    ];
    assert_eq!(cloned_images(&t, &images), ["new", "old"]);
    for i in 0..40 {
        images.push(image(
            &format!("bulk-{i:02}"),
            "team",
            "tpl",
            "2026-01-02T00:00:00Z",
        ));
    }
    let listed = cloned_images(&t, &images);
    assert_eq!(listed.len(), MAX_LISTED_IMAGES);
    assert_eq!(listed[0], "new");
    assert!(!listed.contains(&"old".to_owned()));
}

#[test]
fn the_sample_job_carries_the_template_and_the_sample_version() {
    let t = template(1, None, "Never");
    let job = render_job(&sample_image(&t), 1, None).unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    let env: Vec<(String, String)> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    assert!(env.contains(&("KUBERNETES_VERSION".into(), SAMPLE_VERSION.into())));
    assert!(env.contains(&("KUBERNETES_DEB_VERSION".into(), SAMPLE_DEB_VERSION.into())));
    assert!(job.metadata.owner_references.is_none());
    assert_eq!(job.metadata.namespace.as_deref(), Some("team"));
}

#[test]
fn without_a_dry_run_the_condition_is_kept() {
    let valid = decide(
        &template(1, None, "Never"),
        Some(&Verdict::Valid),
        vec![],
        &now(),
    );
    let t = template(1, Some(serde_json::to_value(&valid).unwrap()), "Never");
    let again = decide(&t, None, vec![], &now());
    assert_eq!(again, valid);
    let with_images = decide(&t, None, vec!["a".into()], &now());
    assert_eq!(with_images.machine_images, Some(vec!["a".into()]));
    assert_eq!(with_images.conditions, valid.conditions);
}

#[tokio::test]
async fn a_new_generation_is_dry_run_then_status_is_written() {
    let t = template(2, None, "Never");
    let (ctx, verifier) = Context::test();
    let answer = serde_json::to_value(&t).unwrap();
    let scenario = verifier.run(|mut server| async move {
        let call = server.next().await;
        assert_eq!(call.method, Method::POST);
        assert_eq!(
            call.uri,
            "/apis/batch/v1/namespaces/team/jobs?&dryRun=All&fieldManager=kubernetes-upgrader-machineimagetemplate"
        );
        assert_eq!(call.body["spec"]["template"]["spec"]["restartPolicy"], "Never");
        let body = call.body.clone();
        call.reply(201, &body);
        let call = server
            .expect_status_apply::<MachineImageTemplate>("team", "tpl", FIELD_MANAGER)
            .await;
        assert_eq!(call.body["status"]["observedGeneration"], 2);
        assert_eq!(call.body["status"]["conditions"][0]["reason"], "Valid");
        assert_eq!(call.body["status"]["conditions"][0]["status"], "True");
        call.ok(&answer);
        server
    });
    within(
        "reconcile",
        STEP * 3,
        Box::pin(reconcile_template(&t, &ctx, vec![], &now())),
    )
    .await
    .unwrap();
    scenario.finish().await;
}

#[tokio::test]
async fn a_refused_job_makes_the_template_invalid_with_the_servers_message() {
    let t = template(1, None, "Always");
    let (ctx, verifier) = Context::test();
    let answer = serde_json::to_value(&t).unwrap();
    let scenario = verifier.run(|mut server| async move {
        let call = server.next().await;
        assert!(call.uri.contains("dryRun=All"), "{}", call.uri);
        call.reply(
            422,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422, "reason": "Invalid",
                    "message": "Job.batch \"x\" is invalid: spec.template.spec.restartPolicy: Required value"}),
        );
        let call = server
            .expect_status_apply::<MachineImageTemplate>("team", "tpl", FIELD_MANAGER)
            .await;
        let condition = &call.body["status"]["conditions"][0];
        assert_eq!(condition["reason"], "InvalidJobTemplate");
        assert_eq!(condition["status"], "False");
        assert!(condition["message"].as_str().unwrap().contains("spec.template.spec.restartPolicy: Required value"));
        call.ok(&answer);
        server
            .expect_event("team", COMPONENT, "InvalidJobTemplate")
            .await;
        server
    });
    within(
        "reconcile",
        STEP * 3,
        Box::pin(reconcile_template(&t, &ctx, vec![], &now())),
    )
    .await
    .unwrap();
    scenario.finish().await;
}

#[tokio::test]
async fn steady_state_makes_no_calls_and_a_server_failure_is_an_error() {
    let status = decide(
        &template(1, None, "Never"),
        Some(&Verdict::Valid),
        vec!["a".into()],
        &now(),
    );
    let t = template(1, Some(serde_json::to_value(&status).unwrap()), "Never");
    let (ctx, verifier) = Context::test();
    Box::pin(reconcile_template(&t, &ctx, vec!["a".into()], &now()))
        .await
        .unwrap();
    verifier.assert_no_more_calls().await;

    let t = template(3, Some(serde_json::to_value(&status).unwrap()), "Never");
    let (ctx, verifier) = Context::test();
    let scenario = verifier.run(|mut server| async move {
        server.next().await.fail(503, "ServiceUnavailable");
        server
    });
    let err = within(
        "reconcile",
        STEP * 3,
        Box::pin(reconcile_template(&t, &ctx, vec![], &now())),
    )
    .await
    .unwrap_err();
    assert_eq!(err.category(), "DryRun");
    scenario.finish().await;
}
