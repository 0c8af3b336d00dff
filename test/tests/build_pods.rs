//! Build pods on the real API server: the MachineImage controller creates no Job for a pod its
//! namespace does not allow, and creates it once the namespace's label or annotation allows it;
//! the ValidatingAdmissionPolicy refuses the same pods when the manager's service account
//! creates a Job, and nobody else's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use api::v1alpha1::{MACHINE_IMAGE_NAME_LABEL, MachineImage};
use e2e::status::{condition_message, condition_reason, condition_status, to_json};
use e2e::{TestEnv, e2e_env, manifests, namespace};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use kubernetes_upgrader::controllers::machine_image::job_name;
use kubernetes_upgrader::controllers::machine_image::pod_security::{
    BUILD_POD_SECURITY_LABEL, BUILD_SERVICE_ACCOUNTS_ANNOTATION,
};
use kubernetes_upgrader::crdgen::MANAGER_USER;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn image_spec(pod: &Value) -> Value {
    json!({"version": "v1.31.2", "jobTemplate": {"spec": pod}})
}

fn build_pod() -> Value {
    json!({"restartPolicy": "Never", "containers": [
        {"name": "build", "image": "registry.example/builder:v1"}
    ]})
}

fn privileged_pod() -> Value {
    let mut pod = build_pod();
    pod["containers"][0]["securityContext"] = json!({"privileged": true});
    pod
}

async fn create_image(env: &TestEnv, name: &str, pod: &Value) -> MachineImage {
    let image: MachineImage = serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "MachineImage",
        "metadata": {"name": name},
        "spec": image_spec(pod),
    }))
    .unwrap();
    env.api::<MachineImage>()
        .create(&PostParams::default(), &image)
        .await
        .unwrap()
}

async fn wait_image(env: &TestEnv, name: &str, what: &str, phase: &str, reason: &str) -> Value {
    let api: Api<MachineImage> = env.api();
    let image = e2e::wait_for(
        &api,
        name,
        |i| {
            let j = to_json(i);
            j["status"]["phase"] == phase
                && condition_reason(&j, "Ready").as_deref() == Some(reason)
                && j["status"]["observedGeneration"] == j["metadata"]["generation"]
        },
        WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    to_json(&image)
}

async fn jobs_of(env: &TestEnv, image: &str) -> Vec<Job> {
    env.api::<Job>()
        .list(&ListParams::default().labels(&format!("{MACHINE_IMAGE_NAME_LABEL}={image}")))
        .await
        .unwrap()
        .items
}

async fn wait_job(env: &TestEnv, image: &MachineImage) -> Job {
    let name = job_name(&image.name_any(), &image.uid().unwrap(), 1);
    let jobs: Api<Job> = env.api();
    e2e::eventually(&format!("Job {name}"), WAIT, || {
        let jobs = jobs.clone();
        let name = name.clone();
        async move { Ok(jobs.get_opt(&name).await?) }
    })
    .await
    .unwrap()
}

async fn mark_namespace(env: &TestEnv, metadata: Value) {
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces
        .patch(
            &env.namespace,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "metadata": metadata })),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_pod_waits_until_its_namespace_allows_it() {
    let env = e2e_env!("a_build_pod_waits_until_its_namespace_allows_it");
    let _manager = env.start_manager().await.unwrap();
    let privileged = create_image(&env, "privileged", &privileged_pod()).await;
    let mut with_account = build_pod();
    with_account["serviceAccountName"] = json!("builder");
    let with_account = create_image(&env, "with-account", &with_account).await;

    // Unlabelled: refused, no Job, one Warning, and a message that says what would allow it.
    let refused = wait_image(
        &env,
        "privileged",
        "refused",
        "Failed",
        "BuildPodNotAllowed",
    )
    .await;
    assert_eq!(
        condition_status(&refused, "Ready").as_deref(),
        Some("False")
    );
    let message = condition_message(&refused, "Ready").unwrap();
    assert!(
        message.contains("spec.jobTemplate.spec.containers[0].securityContext.privileged is true")
            && message.contains(&format!("{BUILD_POD_SECURITY_LABEL}=privileged")),
        "{message}"
    );
    let refused = wait_image(
        &env,
        "with-account",
        "refused",
        "Failed",
        "BuildPodNotAllowed",
    )
    .await;
    let message = condition_message(&refused, "Ready").unwrap();
    assert!(
        message.contains("spec.jobTemplate.spec.serviceAccountName is \"builder\"")
            && message.contains(BUILD_SERVICE_ACCOUNTS_ANNOTATION),
        "{message}"
    );
    e2e::assert_no_writes(
        &env.api::<MachineImage>(),
        "privileged",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert!(jobs_of(&env, "privileged").await.is_empty());
    assert!(jobs_of(&env, "with-account").await.is_empty());
    let warnings = env.warnings("privileged").await.unwrap();
    assert_eq!(
        warnings
            .iter()
            .map(|e| e.reason.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["BuildPodNotAllowed"]
    );

    // The label lifts the profile: the privileged build runs; the service account still waits.
    mark_namespace(
        &env,
        json!({"labels": {BUILD_POD_SECURITY_LABEL: "privileged"}}),
    )
    .await;
    let job = wait_job(&env, &privileged).await;
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.containers[0]
            .security_context
            .as_ref()
            .and_then(|s| s.privileged),
        Some(true)
    );
    wait_image(&env, "privileged", "building", "Building", "Building").await;
    assert!(jobs_of(&env, "with-account").await.is_empty());
    let still = wait_image(
        &env,
        "with-account",
        "still refused",
        "Failed",
        "BuildPodNotAllowed",
    )
    .await;
    assert_eq!(still["status"]["attempts"], Value::Null);

    // The annotation names the service account: that build runs too.
    mark_namespace(
        &env,
        json!({"annotations": {BUILD_SERVICE_ACCOUNTS_ANNOTATION: "publisher, builder"}}),
    )
    .await;
    let job = wait_job(&env, &with_account).await;
    assert_eq!(
        job.spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .service_account_name
            .as_deref(),
        Some("builder")
    );
    wait_image(&env, "with-account", "building", "Building", "Building").await;
}

/// A client that acts as the manager's service account.
async fn as_manager(env: &TestEnv) -> Client {
    let kubeconfig = Kubeconfig::read_from(env.kubeconfig()).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(MANAGER_USER.to_owned());
    Client::try_from(config).unwrap()
}

async fn labelled_namespace(env: &TestEnv, prefix: &str, metadata: &Value) -> String {
    let name = format!("{prefix}-{}", namespace::random_suffix(6));
    let mut ns: Namespace = serde_json::from_value(json!({"metadata": metadata})).unwrap();
    ns.metadata = ObjectMeta {
        name: Some(name.clone()),
        ..ns.metadata
    };
    Api::<Namespace>::all(env.client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    name
}

fn job(name: &str, pod: &Value) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod}},
    }))
    .unwrap()
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        field_manager: Some("e2e".to_owned()),
    }
}

/// Creates the Job `name` (dry run) in `namespace` as `client`: `Ok` or the refusal's message.
async fn try_create(
    client: &Client,
    namespace: &str,
    name: &str,
    pod: &Value,
) -> Result<(), String> {
    Api::<Job>::namespaced(client.clone(), namespace)
        .create(&dry_run(), &job(name, pod))
        .await
        .map(|_| ())
        .map_err(|e| manifests::error_message(&e))
}

/// Each rule the API server can be shown (the others need features this server lacks, such as
/// Windows host processes or user namespaces for `procMount`), with a fragment of its message.
fn refused_pods() -> Vec<(&'static str, Value, &'static str)> {
    let with = |change: &dyn Fn(&mut Value)| {
        let mut pod = build_pod();
        change(&mut pod);
        pod
    };
    vec![
        (
            "privileged",
            privileged_pod(),
            "containers[*].securityContext.privileged",
        ),
        (
            "privileged-init",
            with(&|p| {
                p["initContainers"] = json!([{"name": "init", "image": "b", "securityContext": {"privileged": true}}]);
            }),
            "containers[*].securityContext.privileged",
        ),
        (
            "host-path",
            with(&|p| {
                p["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}]);
                p["containers"][0]["volumeMounts"] =
                    json!([{"name": "root", "mountPath": "/host"}]);
            }),
            "volumes[*].hostPath",
        ),
        (
            "host-network",
            with(&|p| p["hostNetwork"] = json!(true)),
            "hostNetwork, hostPID and hostIPC",
        ),
        (
            "host-pid",
            with(&|p| p["hostPID"] = json!(true)),
            "hostNetwork, hostPID and hostIPC",
        ),
        (
            "host-ipc",
            with(&|p| p["hostIPC"] = json!(true)),
            "hostNetwork, hostPID and hostIPC",
        ),
        (
            "capabilities",
            with(&|p| {
                p["containers"][0]["securityContext"] =
                    json!({"capabilities": {"add": ["SYS_ADMIN"]}});
            }),
            "capabilities.add",
        ),
        (
            "seccomp",
            with(&|p| {
                p["containers"][0]["securityContext"] =
                    json!({"seccompProfile": {"type": "Unconfined"}});
            }),
            "seccompProfile.type",
        ),
        (
            "apparmor",
            with(&|p| p["securityContext"] = json!({"appArmorProfile": {"type": "Unconfined"}})),
            "appArmorProfile.type",
        ),
        (
            "selinux",
            with(&|p| p["securityContext"] = json!({"seLinuxOptions": {"user": "system_u"}})),
            "seLinuxOptions",
        ),
        (
            "sysctls",
            with(&|p| {
                p["securityContext"] =
                    json!({"sysctls": [{"name": "kernel.msgmax", "value": "65536"}]});
            }),
            "sysctls[*].name",
        ),
        (
            "host-port",
            with(&|p| p["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 80}])),
            "hostPort",
        ),
        (
            "probe-host",
            with(&|p| {
                p["containers"][0]["livenessProbe"] =
                    json!({"httpGet": {"port": 80, "host": "169.254.169.254"}});
            }),
            "probe and lifecycle hook hosts",
        ),
        (
            "node-name",
            with(&|p| p["nodeName"] = json!("control-plane-0")),
            "nodeName",
        ),
    ]
}

fn with_account(account: &str) -> Value {
    let mut pod = build_pod();
    pod["serviceAccountName"] = json!(account);
    pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_policy_holds_the_managers_jobs_to_their_namespace() {
    let env = e2e_env!("the_admission_policy_holds_the_managers_jobs_to_their_namespace");
    // The manager's own rights, as `config/` installs them.
    let rbac = manifests::workspace_root().join("config/rbac/role.yaml");
    for doc in manifests::load_yaml_docs(&rbac).unwrap() {
        manifests::apply(&env.client, &doc, "default")
            .await
            .unwrap();
    }
    let manager = as_manager(&env).await;
    let unlabelled = env.namespace.clone();

    // Policies load a moment after they are installed, and RBAC too.
    let deadline = Instant::now() + WAIT;
    let first = loop {
        match try_create(&manager, &unlabelled, "probe", &privileged_pod()).await {
            Err(message) if message.contains("kubernetes-upgrader-build-pods") => break message,
            other => {
                assert!(Instant::now() < deadline, "never refused: {other:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    assert!(first.contains(BUILD_POD_SECURITY_LABEL), "{first}");

    // Within the profile, the manager's Job is admitted; each rule refuses with its field.
    let mut allowed = build_pod();
    allowed["securityContext"] = json!({
        "seccompProfile": {"type": "RuntimeDefault"},
        "sysctls": [{"name": "net.ipv4.ping_group_range", "value": "0 1000"}],
        "seLinuxOptions": {"type": "container_t"}
    });
    allowed["serviceAccountName"] = json!("default");
    allowed["containers"][0]["securityContext"] = json!({"capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID"]}, "privileged": false});
    try_create(&manager, &unlabelled, "allowed", &allowed)
        .await
        .unwrap();
    let cases = refused_pods();
    let mut failures = Vec::new();
    for (name, pod, expect) in &cases {
        match try_create(&manager, &unlabelled, name, pod).await {
            Err(message)
                if message.contains(expect) && message.contains(BUILD_POD_SECURITY_LABEL) => {}
            other => failures.push(format!(
                "{name}: expected a refusal naming {expect:?}, got {other:?}"
            )),
        }
        // Anyone else is not held to it: the policy matches the manager only.
        if let Err(message) = try_create(&env.client, &unlabelled, name, pod).await {
            failures.push(format!("{name}: refused for the admin: {message}"));
        }
    }
    let account = try_create(&manager, &unlabelled, "account", &with_account("builder")).await;
    assert!(
        account
            .as_ref()
            .is_err_and(|m| m.contains("serviceAccountName")
                && m.contains(BUILD_SERVICE_ACCOUNTS_ANNOTATION)),
        "{account:?}"
    );

    // A privileged namespace admits every profile case, but not the service account.
    let privileged = labelled_namespace(
        &env,
        "e2e-build-pods-privileged",
        &json!({"labels": {BUILD_POD_SECURITY_LABEL: "privileged"}}),
    )
    .await;
    for (name, pod, _) in &cases {
        if let Err(message) = try_create(&manager, &privileged, name, pod).await {
            failures.push(format!(
                "{name}: refused in a privileged namespace: {message}"
            ));
        }
    }
    assert!(
        try_create(&manager, &privileged, "account", &with_account("builder"))
            .await
            .is_err()
    );

    // Only the label's exact value lifts it; the annotation names further service accounts.
    let other = labelled_namespace(
        &env,
        "e2e-build-pods-accounts",
        &json!({
            "labels": {BUILD_POD_SECURITY_LABEL: "Privileged"},
            "annotations": {BUILD_SERVICE_ACCOUNTS_ANNOTATION: "publisher, builder"}
        }),
    )
    .await;
    assert!(
        try_create(&manager, &other, "privileged", &privileged_pod())
            .await
            .is_err()
    );
    try_create(&manager, &other, "account", &with_account("builder"))
        .await
        .unwrap();
    assert!(
        try_create(&manager, &other, "account", &with_account("admin"))
            .await
            .is_err()
    );

    assert!(
        failures.is_empty(),
        "{} of {} cases misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
