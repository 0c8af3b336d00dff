//! MachineImageSyncer on the real API server, over DebianRepositorySources that read signed
//! repositories served from loopback: the image for the highest version in range with its
//! labels, annotations and owner; a newly published version acted on at once; the strategies;
//! `paused`; a missing template; and restart chaos after which there is exactly one MachineImage
//! per (syncer, version).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::v1alpha1::{
    CLONED_FROM_ANNOTATION, KUBERNETES_VERSION_LABEL, MachineImage, MachineImageSyncer,
    SYNCER_NAME_LABEL,
};
use e2e::chaos::{self, ChaosConfig};
use e2e::repo::ServedRepo;
use e2e::status::{condition_reason, condition_status, observed_current, to_json};
use e2e::syncer::{create, images_of, resync_source, set_paused, syncer, template};
use e2e::{Manager, TestEnv, e2e_env};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::json;

const INTERVAL: &str = "10s";

/// A served repository with `versions`, its source `src`, and the template `tpl`.
async fn setup(env: &TestEnv, versions: &[&str]) -> ServedRepo {
    let repo = ServedRepo::flat(versions).await.unwrap();
    create(
        &env.client,
        &env.namespace,
        &repo.source("src", INTERVAL, Some(repo.inline_key().unwrap())),
    )
    .await
    .unwrap();
    create(&env.client, &env.namespace, &template("tpl").unwrap())
        .await
        .unwrap();
    repo
}

/// Creates the syncer `name` in the test namespace (see [`syncer`]).
async fn add_syncer(
    env: &TestEnv,
    name: &str,
    range: &str,
    source: &str,
    template: &str,
    extra: &serde_json::Value,
) -> MachineImageSyncer {
    create(
        &env.client,
        &env.namespace,
        &syncer(name, range, source, template, extra).unwrap(),
    )
    .await
    .unwrap()
}

async fn wait_syncer(
    env: &TestEnv,
    manager: &Manager,
    name: &str,
    what: impl Fn(&serde_json::Value) -> bool,
    timeout: Duration,
) -> MachineImageSyncer {
    let api: Api<MachineImageSyncer> = env.api();
    e2e::wait_for(&api, name, |s| what(&to_json(s)), timeout)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nmanager log:\n{}", manager.log_tail()))
}

/// Waits until the syncer `name` has `Ready=status` with `reason` for its current generation.
async fn wait_reason(
    env: &TestEnv,
    manager: &Manager,
    name: &str,
    status: &str,
    reason: &str,
    timeout: Duration,
) -> MachineImageSyncer {
    wait_syncer(env, manager, name, ready_with(status, reason), timeout).await
}

fn ready_with(status: &str, reason: &str) -> impl Fn(&serde_json::Value) -> bool {
    move |json| {
        condition_status(json, "Ready").as_deref() == Some(status)
            && condition_reason(json, "Ready").as_deref() == Some(reason)
            && observed_current(json)
    }
}

/// Waits until the syncer `name` has images for exactly `versions`, one each.
async fn wait_images(env: &TestEnv, name: &str, versions: &[&str], timeout: Duration) {
    let want: Vec<String> = versions.iter().map(|v| (*v).to_owned()).collect();
    e2e::eventually(&format!("images of {name}: {want:?}"), timeout, || {
        let (client, ns, want) = (env.client.clone(), env.namespace.clone(), want.clone());
        async move {
            let images = images_of(&client, &ns, name).await?;
            let got: Vec<String> = images.keys().cloned().collect();
            Ok((got == want && images.values().all(|v| v.len() == 1)).then_some(()))
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncer_builds_the_highest_version_in_range_then_each_new_one_at_once() {
    let env = e2e_env!("syncer_builds_the_highest_version_in_range_then_each_new_one_at_once");
    let mut repo = setup(
        &env,
        &["1.27.1-1.1", "1.27.3-1.1", "1.28.0-1.1", "1.26.9-1.1"],
    )
    .await;
    let manager = env.start_manager().await.unwrap();
    let created = add_syncer(&env, "sync", "v1.27.x", "src", "tpl", &json!({})).await;

    wait_images(&env, "sync", &["v1.27.3"], Duration::from_secs(30)).await;
    let image: MachineImage = images_of(&env.client, &env.namespace, "sync")
        .await
        .unwrap()
        .remove("v1.27.3")
        .unwrap()
        .remove(0);
    let name = image.name_any();
    assert!(
        name.starts_with("sync-v1.27.3-") && name.len() == "sync-v1.27.3-".len() + 5,
        "{name}"
    );
    let labels = image.labels();
    assert_eq!(labels[SYNCER_NAME_LABEL], "sync");
    assert_eq!(labels[KUBERNETES_VERSION_LABEL], "v1.27.3");
    assert_eq!(labels["imageBuilderVersion"], "v1");
    assert_eq!(image.annotations()[CLONED_FROM_ANNOTATION], "tpl");
    assert_eq!(image.annotations()["team"], "infra");
    assert_eq!(
        image.annotations()["kubernetes-upgrader.dimitrikoshkin.com/debian-version"],
        "1.27.3-1.1"
    );
    let owner = &image.owner_references()[0];
    assert_eq!(owner.uid, created.uid().unwrap());
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(image.spec.version, "v1.27.3");
    assert_eq!(
        image.spec.job_template.spec.containers[0].image.as_deref(),
        Some("registry.example/builder:1")
    );
    let synced = wait_reason(
        &env,
        &manager,
        "sync",
        "True",
        "Synced",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        synced.status.unwrap().latest_version.as_deref(),
        Some("v1.27.3")
    );
    let events: Api<Event> = env.api();
    let created_events = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("CreatedMachineImage"))
        .count();
    assert_eq!(created_events, 1);

    // A new patch: once the source lists it, its image follows within a second.
    repo.publish_added("1.27.4-1.1").unwrap();
    resync_source(&env.client, &env.namespace, "src", 1)
        .await
        .unwrap();
    let sources: Api<api::v1alpha1::DebianRepositorySource> = env.api();
    e2e::wait_for(
        &sources,
        "src",
        |s| {
            s.status
                .as_ref()
                .and_then(|st| st.versions.as_ref())
                .is_some_and(|v| v.contains(&"v1.27.4".to_owned()))
        },
        Duration::from_secs(15),
    )
    .await
    .unwrap();
    let listed = Instant::now();
    wait_images(
        &env,
        "sync",
        &["v1.27.3", "v1.27.4"],
        Duration::from_secs(5),
    )
    .await;
    let latency = listed.elapsed();
    eprintln!("listed → MachineImage: {latency:?} (200 ms polling)");
    assert!(
        latency < Duration::from_millis(1500),
        "{latency:?}\n{}",
        manager.log_tail()
    );
    let synced = wait_syncer(
        &env,
        &manager,
        "sync",
        |j| ready_with("True", "Synced")(j) && j["status"]["latestVersion"] == "v1.27.4",
        Duration::from_secs(10),
    )
    .await;
    assert!(synced.status.is_some());

    // Steady state: the syncer writes nothing.
    let api: Api<MachineImageSyncer> = env.api();
    e2e::assert_no_writes(&api, "sync", Duration::from_secs(4))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", manager.log_tail()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_latest_per_minor_and_all_in_range() {
    let env = e2e_env!("strategies_latest_per_minor_and_all_in_range");
    let _repo = setup(
        &env,
        &[
            "1.26.2-1.1",
            "1.27.1-1.1",
            "1.27.3-1.1",
            "1.28.0-1.1",
            "1.29.0-1.1",
        ],
    )
    .await;
    let manager = env.start_manager().await.unwrap();
    let range = ">=1.26.0, <1.29.0";
    for (name, strategy) in [
        ("per-minor", "LatestPerMinor"),
        ("all", "AllInRange"),
        ("latest", "Latest"),
    ] {
        add_syncer(
            &env,
            name,
            range,
            "src",
            "tpl",
            &json!({"strategy": strategy}),
        )
        .await;
    }
    let timeout = Duration::from_secs(30);
    wait_images(
        &env,
        "per-minor",
        &["v1.26.2", "v1.27.3", "v1.28.0"],
        timeout,
    )
    .await;
    wait_images(
        &env,
        "all",
        &["v1.26.2", "v1.27.1", "v1.27.3", "v1.28.0"],
        timeout,
    )
    .await;
    wait_images(&env, "latest", &["v1.28.0"], timeout).await;
    for name in ["per-minor", "all", "latest"] {
        let s = wait_reason(
            &env,
            &manager,
            name,
            "True",
            "Synced",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            s.status.unwrap().latest_version.as_deref(),
            Some("v1.28.0"),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_images_and_max_concurrent_builds_bound_a_tenant() {
    let env = e2e_env!("max_images_and_max_concurrent_builds_bound_a_tenant");
    let _repo = setup(
        &env,
        &["1.27.0-1.1", "1.27.1-1.1", "1.27.2-1.1", "1.27.3-1.1"],
    )
    .await;
    let manager = env.start_manager().await.unwrap();
    add_syncer(
        &env,
        "capped",
        "v1.27.x",
        "src",
        "tpl",
        &json!({"strategy": "AllInRange", "maxImages": 2}),
    )
    .await;
    // No kubelet finishes these builds: the default budget of two running builds holds too.
    add_syncer(
        &env,
        "budget",
        "v1.27.x",
        "src",
        "tpl",
        &json!({"strategy": "AllInRange", "maxConcurrentBuilds": null}),
    )
    .await;
    let timeout = Duration::from_secs(30);
    wait_images(&env, "capped", &["v1.27.2", "v1.27.3"], timeout).await;
    wait_images(&env, "budget", &["v1.27.2", "v1.27.3"], timeout).await;
    let capped = wait_reason(
        &env,
        &manager,
        "capped",
        "False",
        "MaxImagesReached",
        Duration::from_secs(10),
    )
    .await;
    let message = to_json(&capped)["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("spec.maxImages"), "{message}");
    wait_reason(
        &env,
        &manager,
        "budget",
        "False",
        "WaitingForBuilds",
        Duration::from_secs(10),
    )
    .await;
    // Nothing more comes: the caps hold over further reconciles.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_images(&env, "capped", &["v1.27.2", "v1.27.3"], timeout).await;
    wait_images(&env, "budget", &["v1.27.2", "v1.27.3"], timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_creates_nothing_until_unpaused() {
    let env = e2e_env!("paused_creates_nothing_until_unpaused");
    let _repo = setup(&env, &["1.27.1-1.1"]).await;
    let manager = env.start_manager().await.unwrap();
    add_syncer(
        &env,
        "sync",
        "v1.27.x",
        "src",
        "tpl",
        &json!({"paused": true}),
    )
    .await;
    wait_syncer(
        &env,
        &manager,
        "sync",
        |j| condition_status(j, "Paused").as_deref() == Some("True") && observed_current(j),
        Duration::from_secs(30),
    )
    .await;
    // The source is ready long before this: nothing was created while paused.
    let sources: Api<api::v1alpha1::DebianRepositorySource> = env.api();
    e2e::wait_for(
        &sources,
        "src",
        |s| condition_status(&to_json(s), "Ready").as_deref() == Some("True"),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        images_of(&env.client, &env.namespace, "sync")
            .await
            .unwrap()
            .is_empty()
    );

    set_paused(&env.client, &env.namespace, "sync", false)
        .await
        .unwrap();
    wait_images(&env, "sync", &["v1.27.1"], Duration::from_secs(10)).await;
    wait_syncer(
        &env,
        &manager,
        "sync",
        |j| {
            condition_status(j, "Paused").as_deref() == Some("False")
                && ready_with("True", "Synced")(j)
        },
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_template_gives_its_reason_until_it_is_created() {
    let env = e2e_env!("missing_template_gives_its_reason_until_it_is_created");
    let _repo = setup(&env, &["1.27.1-1.1"]).await;
    let manager = env.start_manager().await.unwrap();
    add_syncer(&env, "sync", "v1.27.x", "src", "absent", &json!({})).await;
    wait_reason(
        &env,
        &manager,
        "sync",
        "False",
        "TemplateNotFound",
        Duration::from_secs(30),
    )
    .await;
    let events: Api<Event> = env.api();
    let warned = e2e::eventually(
        "a GetMachineImageTemplateFailed event",
        Duration::from_secs(10),
        || {
            let events = events.clone();
            async move {
                let found = events
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .any(|e| {
                        e.reason.as_deref() == Some("GetMachineImageTemplateFailed")
                            && e.type_.as_deref() == Some("Warning")
                    });
                Ok(found.then_some(()))
            }
        },
    )
    .await;
    assert!(warned.is_ok(), "{}", manager.log_tail());
    // No error loop: nothing is written while the template is missing.
    let api: Api<MachineImageSyncer> = env.api();
    e2e::assert_no_writes(&api, "sync", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(
        images_of(&env.client, &env.namespace, "sync")
            .await
            .unwrap()
            .is_empty()
    );

    // The template's creation is watched: the image follows.
    create(&env.client, &env.namespace, &template("absent").unwrap())
        .await
        .unwrap();
    wait_images(&env, "sync", &["v1.27.1"], Duration::from_secs(10)).await;
    wait_reason(
        &env,
        &manager,
        "sync",
        "True",
        "Synced",
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_in_range_and_no_source_give_their_reasons() {
    let env = e2e_env!("nothing_in_range_and_no_source_give_their_reasons");
    let _repo = setup(&env, &["1.27.1-1.1"]).await;
    let manager = env.start_manager().await.unwrap();
    let sources: Api<api::v1alpha1::DebianRepositorySource> = env.api();
    e2e::wait_for(
        &sources,
        "src",
        |s| {
            s.status
                .as_ref()
                .and_then(|st| st.versions.as_ref())
                .is_some_and(|v| !v.is_empty())
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nmanager log:\n{}", manager.log_tail()));
    add_syncer(&env, "out", "1.30.x", "src", "tpl", &json!({})).await;
    add_syncer(&env, "orphan", "1.27.x", "nowhere", "tpl", &json!({})).await;
    wait_reason(
        &env,
        &manager,
        "out",
        "False",
        "NoVersionInRange",
        Duration::from_secs(30),
    )
    .await;
    wait_reason(
        &env,
        &manager,
        "orphan",
        "False",
        "SourceNotFound",
        Duration::from_secs(30),
    )
    .await;
}

/// Restart chaos: SIGKILL and restart the manager at seeded moments while new versions are
/// published; afterwards each syncer has exactly one MachineImage per version it selects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_image_per_version_after_restart_chaos() {
    let env = e2e_env!("one_image_per_version_after_restart_chaos");
    let config = ChaosConfig::from_env().unwrap();
    let repo = Arc::new(Mutex::new(setup(&env, &["1.27.0-1.1"]).await));
    for (name, strategy) in [("all", "AllInRange"), ("latest", "Latest")] {
        create(
            &env.client,
            &env.namespace,
            &syncer(
                name,
                "v1.27.x",
                "src",
                "tpl",
                &json!({"strategy": strategy}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    }
    let mut manager = Manager::spawn(env.manager_options()).unwrap();
    let published = Arc::new(Mutex::new(vec!["v1.27.0".to_owned()]));
    let perturb = |iteration: u32, _rng: &mut rand::rngs::StdRng| {
        let (repo, published, client, ns) = (
            Arc::clone(&repo),
            Arc::clone(&published),
            env.client.clone(),
            env.namespace.clone(),
        );
        async move {
            // Every other cycle a new patch is published and the source nudged to read it.
            if iteration.is_multiple_of(2) {
                let patch = iteration / 2 + 1;
                repo.lock()
                    .unwrap()
                    .publish_added(&format!("1.27.{patch}-1.1"))?;
                published.lock().unwrap().push(format!("v1.27.{patch}"));
                resync_source(&client, &ns, "src", iteration / 2).await?;
            }
            Ok(())
        }
    };
    let assert_final = || {
        let (env, published) = (env.clone(), Arc::clone(&published));
        async move {
            let all: Vec<String> = {
                let mut v = published.lock().unwrap().clone();
                v.sort_by_key(|s| api::version::parse_strict(s));
                v
            };
            // The last publication may still be unread by the source: nudge once more.
            resync_source(&env.client, &env.namespace, "src", 99).await?;
            let mut sorted = all.clone();
            sorted.sort();
            let refs: Vec<&str> = sorted.iter().map(String::as_str).collect();
            wait_images(&env, "all", &refs, Duration::from_secs(60)).await;
            let highest = all.last().cloned().unwrap_or_default();
            let syncers: Api<MachineImageSyncer> = env.api();
            e2e::wait_for(
                &syncers,
                "latest",
                |s| {
                    let j = to_json(s);
                    ready_with("True", "Synced")(&j)
                        && j["status"]["latestVersion"] == highest.as_str()
                },
                Duration::from_secs(60),
            )
            .await?;
            for name in ["all", "latest"] {
                let images = images_of(&env.client, &env.namespace, name).await?;
                for (version, list) in &images {
                    anyhow::ensure!(
                        list.len() == 1,
                        "{name}: {} images for {version}",
                        list.len()
                    );
                }
            }
            let total: usize = images_of(&env.client, &env.namespace, "all")
                .await?
                .values()
                .map(Vec::len)
                .sum();
            anyhow::ensure!(
                total == all.len(),
                "all: {total} images for {} versions",
                all.len()
            );
            Ok(())
        }
    };
    let cycles = chaos::run(&mut manager, &config, perturb, assert_final)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(cycles.len() >= 20 || config.iterations < 20);
}
