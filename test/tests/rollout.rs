//! Fleet rollouts on a real API server: a Plan admits its Clusters wave by wave. The Cluster API
//! stand-in here watches the Clusters; every step it sees written it finishes a moment later (or
//! never, for a Cluster made to fail), and from the watch events it checks that no Cluster of a
//! wave steps before the earlier waves finished and soaked, and that no wave ever has more
//! Clusters in flight than its `maxConcurrent`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/upgrader.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::v1alpha1::Plan;
use e2e::chaos::{self, ChaosConfig};
use e2e::{Manager, TestEnv, condition_reason, e2e_env};
use futures::StreamExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::*;

const CCCU: &str = "ClusterClassClusterUpgrader";
const TARGET: &str = "v1.31.2";
const SOAK: Duration = Duration::from_secs(5);

/// The waves: (name, ring label, maxConcurrent, Clusters).
const WAVES: [(&str, &str, usize, usize); 3] = [
    ("canary", "canary", 1, 1),
    ("middle", "middle", 2, 5),
    ("rest", "rest", 3, 6),
];

/// What the stand-in saw, from the Cluster watch.
#[derive(Default)]
struct Seen {
    /// Cluster → when its step was seen written.
    started: BTreeMap<String, Instant>,
    /// Cluster → when the stand-in finished it.
    finished: BTreeMap<String, Instant>,
    /// The most Clusters of each wave in flight at once.
    peak: BTreeMap<usize, usize>,
    /// Cluster → every generation seen carrying the target: one per write of a step.
    steps: BTreeMap<String, BTreeSet<i64>>,
    /// Every broken rule, for the test to report.
    violations: Vec<String>,
}

fn wave_of(name: &str) -> usize {
    let index: usize = name.trim_start_matches('c').parse().unwrap();
    match index {
        0 => 0,
        1..=5 => 1,
        _ => 2,
    }
}

async fn fleet(env: &TestEnv, step_timeout: &str) {
    static_image(env, "img-1-31-2", TARGET, "i-131")
        .await
        .unwrap();
    let api: Api<Plan> = env.api();
    let waves: Vec<_> = WAVES
        .iter()
        .map(|(name, ring, max, _)| {
            json!({"name": name, "clusterSelector": {"matchLabels": {"ring": ring}}, "maxConcurrent": max, "soak": "5s"})
        })
        .collect();
    let plan: Plan = serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "Plan",
        "metadata": {"name": "p"},
        "spec": {"versionRange": "v1.31.x", "machineImageSelector": {"matchLabels": {"os": "demo"}},
                 "rollout": {"waves": waves, "stepTimeout": step_timeout}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &plan).await.unwrap();
    for i in 0..12 {
        let name = format!("c{i:02}");
        let ring = WAVES[wave_of(&name)].1;
        cluster(
            env,
            "v1beta1",
            &name,
            "v1.31.0",
            json!({"metadata": {"labels": {"ring": ring}}}),
        )
        .await
        .unwrap();
        upgrader(
            env,
            CCCU,
            &format!("u-{name}"),
            &name,
            "p",
            json!({"topologyVariable": "image"}),
        )
        .await
        .unwrap();
    }
}

/// The Cluster API stand-in: finishes every step it sees written after `delay`, except those of
/// `stuck`, and checks S13 and the budget on every step it sees.
fn stand_in(env: &TestEnv, delay: Duration, stuck: BTreeSet<String>) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api = clusters(env, "v1beta1");
    let (client, namespace) = (env.client.clone(), env.namespace.clone());
    let record = seen.clone();
    tokio::spawn(async move {
        let events = watcher(api, watcher::Config::default()).applied_objects();
        futures::pin_mut!(events);
        while let Some(Ok(cluster)) = events.next().await {
            let name = cluster.name_any();
            if cluster.data["spec"]["topology"]["version"] != TARGET {
                let mut seen = record.lock().unwrap();
                if seen.started.contains_key(&name) {
                    seen.violations
                        .push(format!("{name} left {TARGET} after stepping to it"));
                }
                continue;
            }
            let now = Instant::now();
            {
                let mut seen = record.lock().unwrap();
                let generation = cluster.metadata.generation.unwrap_or_default();
                seen.steps
                    .entry(name.clone())
                    .or_default()
                    .insert(generation);
                if seen.started.contains_key(&name) || seen.finished.contains_key(&name) {
                    continue;
                }
                let wave = wave_of(&name);
                for earlier in 0..wave {
                    let members: Vec<String> = (0..12)
                        .map(|i| format!("c{i:02}"))
                        .filter(|c| wave_of(c) == earlier)
                        .collect();
                    let last = members
                        .iter()
                        .map(|c| seen.finished.get(c))
                        .collect::<Option<Vec<_>>>();
                    match last.and_then(|f| f.into_iter().max().copied()) {
                        None => seen
                            .violations
                            .push(format!("{name} stepped before wave {earlier} finished")),
                        Some(last) if now < last + SOAK => seen.violations.push(format!(
                            "{name} stepped {:?} after wave {earlier} finished, inside its soak",
                            now - last
                        )),
                        Some(_) => {}
                    }
                }
                if !seen.violations.is_empty() {
                    let plans: Api<Plan> = Api::namespaced(client.clone(), &namespace);
                    let finished = format!(
                        "{:?}",
                        seen.finished
                            .iter()
                            .map(|(c, t)| (c.clone(), now - *t))
                            .collect::<Vec<_>>()
                    );
                    tokio::spawn(async move {
                        let p = plans.get("p").await.unwrap();
                        eprintln!(
                            "Plan status.rollout at the violation: {}; finished (ago): {finished}",
                            serde_json::to_string(&p.status.unwrap().rollout).unwrap()
                        );
                    });
                }
                seen.started.insert(name.clone(), now);
                let in_flight = seen
                    .started
                    .keys()
                    .filter(|c| wave_of(c) == wave && !seen.finished.contains_key(*c))
                    .count();
                let peak = seen.peak.entry(wave).or_default();
                *peak = (*peak).max(in_flight);
                if in_flight > WAVES[wave].2 {
                    seen.violations.push(format!(
                        "wave {wave}: {in_flight} in flight over maxConcurrent {}",
                        WAVES[wave].2
                    ));
                }
            }
            if stuck.contains(&name) {
                continue;
            }
            let (client, namespace, record) = (client.clone(), namespace.clone(), record.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                // Marked finished before Cluster API says so: the upgrader cannot see it sooner.
                record
                    .lock()
                    .unwrap()
                    .finished
                    .insert(name.clone(), Instant::now());
                e2e::capi::rollout_finished(&client, &namespace, "v1beta1", &name, TARGET)
                    .await
                    .unwrap();
            });
        }
    });
    seen
}

async fn plan_json(env: &TestEnv) -> serde_json::Value {
    let api: Api<Plan> = env.api();
    serde_json::to_value(api.get("p").await.unwrap()).unwrap()
}

async fn wait_phase(env: &TestEnv, phase: &str, timeout: Duration) -> serde_json::Value {
    e2e::eventually(&format!("rollout {phase}"), timeout, || async {
        let p = plan_json(env).await;
        Ok((p["status"]["rollout"]["phase"] == phase).then_some(p))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_step_in_order_within_their_budget() {
    let env = e2e_env!("waves_step_in_order_within_their_budget");
    fleet(&env, "2m").await;
    let seen = stand_in(&env, Duration::from_millis(1500), BTreeSet::new());
    let started = Instant::now();
    let _manager = env.start_manager().await.unwrap();
    let plan = wait_phase(&env, "Complete", Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    let seen = seen.lock().unwrap();
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    assert_eq!(seen.finished.len(), 12, "every Cluster stepped once");
    for (wave, (_, _, max, _)) in WAVES.iter().enumerate() {
        assert_eq!(
            seen.peak.get(&wave),
            Some(max),
            "wave {wave} used its budget"
        );
    }
    let waves = plan["status"]["rollout"]["waves"].as_array().unwrap();
    for (status, (name, _, _, count)) in waves.iter().zip(WAVES) {
        assert_eq!(status["name"], name);
        assert_eq!(status["updated"], count);
        assert!(status.get("admitted").is_none(), "{status}");
    }
    eprintln!("12 Clusters in 3 waves complete in {elapsed:?}");
    assert_eq!(
        condition_reason(&plan, "RolloutHalted").as_deref(),
        Some("NotHalted")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_halts_the_rollout_until_it_is_resumed() {
    let env = e2e_env!("a_failure_halts_the_rollout_until_it_is_resumed");
    fleet(&env, "6s").await;
    // The first Cluster of the middle wave never finishes.
    let seen = stand_in(
        &env,
        Duration::from_secs(1),
        BTreeSet::from(["c01".to_owned()]),
    );
    let _manager = env.start_manager().await.unwrap();
    let plan = wait_phase(&env, "Halted", Duration::from_secs(90)).await;
    let halted = &plan["status"]["rollout"]["halted"];
    assert_eq!(halted["cluster"], "c01");
    assert_eq!(halted["reason"], "StepTimeout");
    assert_eq!(
        condition_reason(&plan, "RolloutHalted").as_deref(),
        Some("StepTimeout")
    );

    // Halted: the Clusters already admitted finish, nothing new starts, no wave-3 Cluster steps.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (before, rest) = {
        let seen = seen.lock().unwrap();
        let rest = seen.started.keys().filter(|c| wave_of(c) == 2).count();
        (seen.started.len(), rest)
    };
    assert_eq!(rest, 0, "no Cluster of the last wave steps");
    let u = upgrader_json(&env, CCCU, "u-c08").await.unwrap();
    assert_eq!(
        condition_reason(&u, "Blocked").as_deref(),
        Some("RolloutHalted")
    );

    // The stuck Cluster finishes later: the halt stays.
    seen.lock()
        .unwrap()
        .finished
        .insert("c01".into(), Instant::now());
    e2e::capi::rollout_finished(&env.client, &env.namespace, "v1beta1", "c01", TARGET)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let plan = plan_json(&env).await;
    assert_eq!(plan["status"]["rollout"]["phase"], "Halted");
    assert_eq!(
        seen.lock().unwrap().started.len(),
        before,
        "nothing new while halted"
    );

    // The resume annotation continues the rollout to the end.
    let api: Api<Plan> = env.api();
    api.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            "kubernetesupgraded.dimitrikoshkin.com/resume-rollout": "1"}}})),
    )
    .await
    .unwrap();
    wait_phase(&env, "Complete", Duration::from_secs(120)).await;
    let seen = seen.lock().unwrap();
    assert!(seen.violations.is_empty(), "{:?}", seen.violations);
    assert_eq!(seen.started.len(), 12);
}

/// The manager is killed with SIGKILL 10 times at seeded random moments (`E2E_SEED` replays a
/// run) while the rollout progresses, then left to finish it: S13 and the budgets still hold,
/// every Cluster is stepped exactly once, and the rollout completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_killed_ten_times_never_breaks_the_waves_or_their_budget() {
    let env = e2e_env!("a_manager_killed_ten_times_never_breaks_the_waves_or_their_budget");
    let mut config = ChaosConfig::from_env_or(10).unwrap();
    // Each step takes 3 s: the rollout lasts at least 6 steps in a row plus three soaks of over
    // 5 s (36 s), and the kills, 0.2 s to 4 s apart, spread over about the same time.
    config.min_uptime = Duration::from_millis(200);
    config.max_uptime = Duration::from_secs(4);
    fleet(&env, "5m").await;
    let seen = stand_in(&env, Duration::from_secs(3), BTreeSet::new());
    let mut manager = Manager::spawn(env.manager_options()).unwrap();

    // Clusters stepped and finished when each cycle starts, just after the previous kill.
    let progress = Arc::new(Mutex::new(Vec::new()));
    let snapshot = || {
        let seen = seen.lock().unwrap();
        (seen.started.len(), seen.finished.len())
    };
    let perturb = |iteration: u32, _: &mut rand::rngs::StdRng| {
        if iteration > 0 {
            progress.lock().unwrap().push(snapshot());
        }
        async { anyhow::Ok(()) }
    };
    let assert_final = || async {
        progress.lock().unwrap().push(snapshot());
        e2e::eventually("rollout Complete", Duration::from_secs(180), || async {
            Ok((plan_json(&env).await["status"]["rollout"]["phase"] == "Complete").then_some(()))
        })
        .await
    };
    let cycles = chaos::run(&mut manager, &config, perturb, assert_final)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(cycles.len(), config.iterations as usize);
    let progress = progress.lock().unwrap().clone();
    eprintln!(
        "(stepped, finished) Clusters at each kill: {progress:?}; uptimes: {:?}",
        cycles.iter().map(|c| c.uptime).collect::<Vec<_>>()
    );
    let mid_rollout = progress
        .iter()
        .filter(|(_, finished)| *finished < 12)
        .count();
    assert!(
        mid_rollout * 2 >= progress.len(),
        "most kills should land before the last Cluster finished: {progress:?}"
    );

    let plan = plan_json(&env).await;
    // Exactly one step each: one history entry per upgrader, one write of the target to the
    // Cluster's spec (one generation seen carrying it).
    for i in 0..12 {
        let name = format!("c{i:02}");
        let u = upgrader_json(&env, CCCU, &format!("u-{name}"))
            .await
            .unwrap();
        let history = u["status"]["history"].as_array().unwrap();
        assert_eq!(history.len(), 1, "{name}: {history:?}");
        assert_eq!(history[0]["to"], TARGET, "{name}: {history:?}");
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.violations.is_empty(),
        "E2E_SEED={}: {:?}",
        config.seed,
        seen.violations
    );
    assert_eq!(seen.finished.len(), 12, "every Cluster finished");
    for (wave, (_, _, max, _)) in WAVES.iter().enumerate() {
        let peak = seen.peak.get(&wave).copied().unwrap_or_default();
        assert!(
            (1..=*max).contains(&peak),
            "wave {wave}: at most {max} in flight, saw {peak}"
        );
    }
    for (name, generations) in &seen.steps {
        assert_eq!(
            generations.len(),
            1,
            "{name}: generations seen at {TARGET}: {generations:?}"
        );
    }
    assert_eq!(seen.steps.len(), 12, "{:?}", seen.steps);
    let waves = plan["status"]["rollout"]["waves"].as_array().unwrap();
    for (status, (name, _, _, count)) in waves.iter().zip(WAVES) {
        assert_eq!(status["name"], name);
        assert_eq!(status["updated"], count);
        assert_eq!(status["failed"].as_u64().unwrap_or_default(), 0, "{status}");
    }
    assert_eq!(
        condition_reason(&plan, "RolloutHalted").as_deref(),
        Some("NotHalted")
    );
}
