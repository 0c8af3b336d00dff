//! The whole chain on a real API server: a served signed repository → DebianRepositorySource
//! → MachineImageSyncer → MachineImage → build Job (finished by the build Job finisher, by both
//! hand-off paths) → Plan → upgrader → Cluster (rollouts reported by the Cluster API stand-in);
//! then the same chain under seeded restart chaos.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::chaos::{self, ChaosConfig};
use e2e::repo::ServedRepo;
use e2e::stand_in::{BuildJobFinisher, ClusterApi, HandOff, JOB_LABEL, Rollout};
use e2e::{Manager, TestEnv, capi, e2e_env, eventually, manifests, to_json};
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::watch;

const GROUP: &str = "kubernetesupgraded.dimitrikoshkin.com";
const CLUSTER: &str = "capi-quickstart";
const CLUSTER_API_VERSION: &str = "v1beta1";
const CLUSTER_START: &str = "v1.30.4";
/// The source's shortest interval: how long a published version may take to be listed.
const SOURCE_INTERVAL: &str = "10s";
const ROLLOUT: Duration = Duration::from_millis(1500);

/// The CAPD template from jobs/, whose build hands the ID off by termination message.
fn capd_template() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../jobs/capd.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A v0.6-style template whose build pod annotates its own Job with the image ID.
fn annotating_template() -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "MachineImageTemplate",
        "metadata": {"name": "annotating"},
        "spec": {"template": {
            "metadata": {"labels": {"imageBuilderVersion": "v0"}},
            "spec": {"jobTemplate": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "annotate", "image": "bitnami/kubectl:1.31",
                                "command": ["/bin/sh", "-c", "kubectl annotate job ..."]}]
            }}}
        }}
    })
}

fn syncer(name: &str, template: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "MachineImageSyncer",
        "metadata": {"name": name},
        "spec": {
            "versionRange": "v1.31.x",
            "sourceRef": {"apiVersion": format!("{GROUP}/v1alpha1"),
                          "kind": "DebianRepositorySource", "name": "kubernetes"},
            "machineImageTemplateRef": {"name": template},
        }
    })
}

/// A Plan on the CAPD images, its upgrader, and the Cluster at `CLUSTER_START`, finished.
async fn plan_upgrader_and_cluster(env: &TestEnv) {
    let objects = [
        json!({
            "apiVersion": format!("{GROUP}/v1alpha1"), "kind": "Plan",
            "metadata": {"name": "capd"},
            "spec": {"versionRange": ">=1.30.0 <1.32.0",
                     "machineImageSelector": {"matchLabels": {"imageBuilderVersion": "v1"}}}
        }),
        json!({
            "apiVersion": format!("{GROUP}/v1alpha1"), "kind": "ClusterClassClusterUpgrader",
            "metadata": {"name": CLUSTER},
            "spec": {"clusterName": CLUSTER, "planRef": {"name": "capd"}}
        }),
        json!({
            "apiVersion": format!("{}/{CLUSTER_API_VERSION}", capi::GROUP), "kind": "Cluster",
            "metadata": {"name": CLUSTER},
            "spec": {"topology": {"class": "quick-start", "version": CLUSTER_START}}
        }),
    ];
    for object in &objects {
        manifests::apply(&env.client, object, &env.namespace)
            .await
            .unwrap();
    }
    capi::rollout_finished(
        &env.client,
        &env.namespace,
        CLUSTER_API_VERSION,
        CLUSTER,
        CLUSTER_START,
    )
    .await
    .unwrap();
}

/// Runs the build Job finisher and the Cluster API stand-in until `stop`; returns every version the Cluster
/// was set to, in order.
fn spawn_stand_ins(
    env: &TestEnv,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let (client, ns) = (env.client.clone(), env.namespace.clone());
    tokio::spawn(async move {
        let mut finisher = BuildJobFinisher::default();
        let mut cluster_api = ClusterApi::new(CLUSTER_API_VERSION, CLUSTER, CLUSTER_START, ROLLOUT);
        let mut steps = Vec::new();
        loop {
            // Read before the work, so the last round after a stop still sees the last change.
            let stopping = *stop.borrow();
            let finished = Box::pin(finisher.finish_new_jobs(&client, &ns, hand_off, id_for)).await;
            if let Err(e) = finished {
                eprintln!("build Job finisher: {e:#}");
            }
            match cluster_api.poll(&client, &ns).await {
                Ok(Rollout::Started(version)) => steps.push(version),
                Ok(_) => {}
                Err(e) => eprintln!("Cluster API stand-in: {e:#}"),
            }
            if stopping {
                break;
            }
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        steps
    })
}

/// The annotating template's pods hand off by annotation, every other by termination message.
fn hand_off(job: &Job) -> HandOff {
    let first = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .map(|c| c.name.as_str());
    if first == Some("annotate") {
        HandOff::Annotation
    } else {
        HandOff::TerminationMessage
    }
}

fn id_for(hand_off: HandOff, version: &str) -> String {
    match hand_off {
        HandOff::TerminationMessage => format!("docker.io/kindest/node:{version}"),
        HandOff::Annotation => format!("kindest/node:{version}"),
    }
}

/// The syncer's images by version label, as JSON.
async fn images_of(env: &TestEnv, syncer: &str) -> BTreeMap<String, Vec<Value>> {
    e2e::syncer::images_of(&env.client, &env.namespace, syncer)
        .await
        .unwrap()
        .into_iter()
        .map(|(version, images)| (version, images.iter().map(to_json).collect()))
        .collect()
}

/// Waits until the syncer's image for `version` is ready with `id`.
async fn wait_image_ready(env: &TestEnv, syncer: &str, version: &str, id: &str) -> Value {
    eventually(
        &format!("{syncer}'s image for {version} ready with id {id}"),
        Duration::from_secs(60),
        || async {
            let images = images_of(env, syncer).await;
            Ok(images.get(version).and_then(|found| {
                found
                    .iter()
                    .find(|i| i["status"]["ready"] == json!(true) && i["spec"]["id"] == json!(id))
                    .cloned()
            }))
        },
    )
    .await
    .unwrap()
}

/// Waits until the Cluster's topology is `version` and the upgrader recorded it.
async fn wait_cluster_at(env: &TestEnv, version: &str, timeout: Duration) {
    let clusters = capi::clusters(&env.client, &env.namespace, CLUSTER_API_VERSION);
    let upgraders = Api::<DynamicObject>::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GROUP, "v1alpha1", "ClusterClassClusterUpgrader"),
            "clusterclassclusterupgraders",
        ),
    );
    eventually(
        &format!("Cluster {CLUSTER} at {version}"),
        timeout,
        || async {
            let cluster = clusters.get(CLUSTER).await?;
            let upgrader = upgraders.get(CLUSTER).await?;
            Ok(
                (cluster.data["spec"]["topology"]["version"] == json!(version)
                    && upgrader.data["status"]["latestSetVersion"] == json!(version))
                .then_some(()),
            )
        },
    )
    .await
    .unwrap();
}

/// Jobs labelled for `image`.
async fn jobs_of(env: &TestEnv, image: &str) -> Vec<Job> {
    Api::<Job>::namespaced(env.client.clone(), &env.namespace)
        .list(&ListParams::default().labels(&format!("{JOB_LABEL}={image}")))
        .await
        .unwrap()
        .items
}

/// Each step at most one minor ahead of the one before, and never backwards.
fn assert_safe_steps(steps: &[String]) {
    let mut previous = api::version::parse_lenient(CLUSTER_START).unwrap();
    for step in steps {
        let version = api::version::parse_lenient(step).unwrap();
        assert!(
            version > previous,
            "{step} is not above {previous}: steps {steps:?}"
        );
        assert!(
            version.major == previous.major && version.minor <= previous.minor + 1,
            "{step} skips a minor after {previous}: steps {steps:?}"
        );
        previous = version;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capd_chain_builds_by_both_hand_offs_and_steps_the_cluster() {
    let env = e2e_env!("capd_chain_builds_by_both_hand_offs_and_steps_the_cluster");
    let mut repo = ServedRepo::flat(&["1.30.4-1.1", "1.31.0-1.1", "1.31.1-1.1"])
        .await
        .unwrap();
    manifests::apply(
        &env.client,
        &to_json(&repo.source(
            "kubernetes",
            SOURCE_INTERVAL,
            Some(repo.inline_key().unwrap()),
        )),
        &env.namespace,
    )
    .await
    .unwrap();
    let capd = capd_template();
    let capd_name = capd["metadata"]["name"].as_str().unwrap().to_owned();
    for object in [
        capd,
        annotating_template(),
        syncer("capd", &capd_name),
        syncer("annotating", "annotating"),
    ] {
        manifests::apply(&env.client, &object, &env.namespace)
            .await
            .unwrap();
    }
    plan_upgrader_and_cluster(&env).await;

    let mut manager = env.start_manager().await.unwrap();
    let (stop, stopped) = watch::channel(false);
    let stand_ins = spawn_stand_ins(&env, stopped);

    // The newest v1.31 patch is built by both templates, each by its own hand-off.
    let capd_image =
        wait_image_ready(&env, "capd", "v1.31.1", "docker.io/kindest/node:v1.31.1").await;
    wait_image_ready(&env, "annotating", "v1.31.1", "kindest/node:v1.31.1").await;
    let env_names: Vec<String> = jobs_of(&env, capd_image["metadata"]["name"].as_str().unwrap())
        .await[0]
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| {
            p.containers[0]
                .env
                .iter()
                .flatten()
                .map(|e| e.name.clone())
                .collect()
        })
        .unwrap();
    for name in [
        "KUBERNETES_VERSION",
        "KUBERNETES_SEMVER",
        "KUBERNETES_SERIES",
        "KUBERNETES_DEB_VERSION",
        "MACHINE_IMAGE_NAME",
    ] {
        assert!(
            env_names.iter().any(|n| n == name),
            "{name} missing from {env_names:?}"
        );
    }
    // The Plan picks the CAPD image (label v1) and the Cluster steps to it, one minor ahead.
    wait_cluster_at(&env, "v1.31.1", Duration::from_secs(60)).await;

    // A new patch release flows through to the Cluster once the first step has finished.
    repo.publish_added("1.31.2-1.1").unwrap();
    e2e::syncer::resync_source(&env.client, &env.namespace, "kubernetes", 1)
        .await
        .unwrap();
    wait_image_ready(&env, "capd", "v1.31.2", "docker.io/kindest/node:v1.31.2").await;
    wait_image_ready(&env, "annotating", "v1.31.2", "kindest/node:v1.31.2").await;
    wait_cluster_at(&env, "v1.31.2", Duration::from_secs(60)).await;

    stop.send_replace(true);
    let steps = stand_ins.await.unwrap();
    assert_eq!(steps, ["v1.31.1", "v1.31.2"]);
    assert_safe_steps(&steps);
    for syncer in ["capd", "annotating"] {
        for (version, images) in images_of(&env, syncer).await {
            assert_eq!(images.len(), 1, "{syncer} {version}: {images:#?}");
            let name = images[0]["metadata"]["name"].as_str().unwrap();
            assert_eq!(
                jobs_of(&env, name).await.len(),
                1,
                "{name}: one Job for its one attempt"
            );
        }
    }
    manager.terminate(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_converges_after_restart_chaos() {
    let env = e2e_env!("chain_converges_after_restart_chaos");
    let config = ChaosConfig::from_env().unwrap();
    let repo = Arc::new(Mutex::new(
        ServedRepo::flat(&["1.30.4-1.1", "1.31.0-1.1"])
            .await
            .unwrap(),
    ));
    let source = {
        let repo = repo.lock().unwrap();
        to_json(&repo.source(
            "kubernetes",
            SOURCE_INTERVAL,
            Some(repo.inline_key().unwrap()),
        ))
    };
    manifests::apply(&env.client, &source, &env.namespace)
        .await
        .unwrap();
    let capd = capd_template();
    let capd_name = capd["metadata"]["name"].as_str().unwrap().to_owned();
    manifests::apply(&env.client, &capd, &env.namespace)
        .await
        .unwrap();
    manifests::apply(&env.client, &syncer("capd", &capd_name), &env.namespace)
        .await
        .unwrap();
    plan_upgrader_and_cluster(&env).await;

    let (stop, stopped) = watch::channel(false);
    let stand_ins = spawn_stand_ins(&env, stopped);
    let mut manager = Manager::spawn(env.manager_options()).unwrap();
    let next_patch = Arc::new(Mutex::new(1_u32));
    let perturb = |iteration: u32, rng: &mut rand::rngs::StdRng| {
        // Now and then a new patch release, at a seeded moment.
        let publish = iteration % 5 == 2 && rng.random_bool(0.8);
        let (repo, next_patch) = (Arc::clone(&repo), Arc::clone(&next_patch));
        async move {
            if publish {
                let mut patch = next_patch.lock().unwrap();
                repo.lock()
                    .unwrap()
                    .publish_added(&format!("1.31.{patch}-1.1"))?;
                *patch += 1;
            }
            Ok(())
        }
    };
    let newest = || format!("v1.31.{}", *next_patch.lock().unwrap() - 1);
    let assert_final = || async {
        // After the last kill: the newest release reaches the Cluster.
        let newest = newest();
        wait_cluster_at(&env, &newest, Duration::from_secs(120)).await;
        // A kill between creating a Job and recording its UID leaves that Job untrusted: the
        // image builds again under the next attempt's name 10 s later, with the stand-ins still
        // running, so every image is ready within a few retries.
        eventually("every image ready", Duration::from_secs(90), || async {
            let images = images_of(&env, "capd").await;
            Ok(images
                .values()
                .flatten()
                .all(|image| image["status"]["ready"] == json!(true))
                .then_some(()))
        })
        .await?;
        anyhow::Ok(())
    };
    chaos::run(&mut manager, &config, perturb, assert_final)
        .await
        .unwrap();
    stop.send_replace(true);
    let steps = stand_ins.await.unwrap();
    assert_safe_steps(&steps);
    assert_eq!(steps.last(), Some(&newest()), "steps {steps:?}");

    // Exactly one image per version, each ready, and one Job per attempt.
    let images = images_of(&env, "capd").await;
    let published: Vec<String> = (0..*next_patch.lock().unwrap())
        .map(|p| format!("v1.31.{p}"))
        .collect();
    let listed: Vec<&String> = images.keys().collect();
    // Latest strategy: the newest at each moment, so at least the newest, never one twice.
    assert!(
        listed.contains(&&newest()),
        "images {listed:?}, published {published:?}"
    );
    for (version, found) in &images {
        assert!(published.contains(version), "{version} was never published");
        assert_eq!(found.len(), 1, "{version}: {found:#?}");
        let image = &found[0];
        assert_eq!(image["status"]["ready"], json!(true), "{image:#}");
        let name = image["metadata"]["name"].as_str().unwrap();
        let attempts = image["status"]["attempts"].as_u64().unwrap_or(1);
        assert_eq!(
            jobs_of(&env, name).await.len() as u64,
            attempts,
            "{name}: one Job per attempt"
        );
    }
    manager.terminate(Duration::from_secs(5)).await.unwrap();
}
