//! Fleet rollout bench (not a test): 300 Clusters, each with its ClusterClassClusterUpgrader, on
//! one Plan whose `spec.rollout` has three waves (3 Clusters at `maxConcurrent: 1`, 30 at 10, the
//! other 267 at 50, each with `soak: 5s`), on the real API server with the real manager. A new
//! static MachineImage is the event. A Cluster API stand-in watches the Clusters and reports each
//! step finished a fixed delay after it sees it written. The bench reports, per wave, the time from
//! the wave opening to the next one opening (for the last wave: to the Plan's `Complete`), its
//! ratio to the ideal (the soak plus `ceil(Clusters / maxConcurrent)` steps in a row), the most
//! Clusters of the wave ever in flight (from the watch events), and over the whole rollout the
//! writes per Cluster step, from the apiserver's `apiserver_request_total`.
//!
//! `cargo run -p e2e --bin rollout_bench` (or `make bench-rollout`), with `KUBEBUILDER_ASSETS` or
//! `E2E_KUBECONFIG` and the manager binary built. `ROLLOUT_CLUSTERS` (default 300, at least 34),
//! `ROLLOUT_STEP_MS` (the stand-in's delay, 2000) and `ROLLOUT_SETTLE_SECS` (5) tune it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use api::v1alpha1::{MachineImage, Plan};
use e2e::bench::{
    self, CAPI_VERSION, cluster_name, cluster_writes, diff, env_or, our_writes, report_window,
};
use e2e::manager::{Manager, ManagerOptions};
use e2e::stats::percentile;
use e2e::{SKIP_HINT, capi, cluster, namespace};
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::oneshot;

const FROM: &str = "v1.31.1";
const TO: &str = "v1.31.2";
const LABEL: (&str, &str) = ("os", "rollout");
const PLAN: &str = "fleet";
const SOAK: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(600);

/// The waves in order: (name, Clusters, maxConcurrent); the last wave takes the rest.
const WAVES: [(&str, usize, usize); 3] = [("canary", 3, 1), ("early", 30, 10), ("rest", 0, 50)];

/// The fleet's shape: how many Clusters each wave has.
#[derive(Clone, Debug)]
struct Fleet {
    sizes: [usize; 3],
}

impl Fleet {
    fn new(count: usize) -> Result<Self> {
        let fixed = WAVES[0].1 + WAVES[1].1;
        ensure!(
            count > fixed,
            "ROLLOUT_CLUSTERS={count}: at least {} are needed",
            fixed + 1
        );
        Ok(Self {
            sizes: [WAVES[0].1, WAVES[1].1, count - fixed],
        })
    }

    fn count(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// The wave of the `index`th Cluster: the first Clusters fill the first waves.
    fn wave_of_index(&self, index: usize) -> usize {
        let mut end = 0;
        for (wave, size) in self.sizes.iter().enumerate() {
            end += size;
            if index < end {
                return wave;
            }
        }
        self.sizes.len() - 1
    }

    fn wave_of(&self, name: &str) -> Option<usize> {
        let index = name.strip_prefix("c-")?.parse().ok()?;
        Some(self.wave_of_index(index))
    }
}

/// What the Cluster API stand-in saw, from the Cluster watch.
#[derive(Debug, Default)]
struct Seen {
    /// Cluster → when its step to [`TO`] was first seen.
    started: HashMap<String, Instant>,
    /// Cluster → when the stand-in reported it finished.
    finished: HashMap<String, Instant>,
    /// Cluster → when the Plan was first seen admitting it, and releasing it (no longer admitted).
    admitted: HashMap<String, Instant>,
    released: HashMap<String, Instant>,
    /// Per wave, Clusters started and not finished, and the most at once.
    in_flight: [usize; 3],
    peak: [usize; 3],
    /// S13 broken: a Cluster stepped before every earlier wave finished and soaked.
    violations: Vec<String>,
    /// Failed status writes of the stand-in.
    errors: Vec<String>,
}

#[tokio::main]
#[allow(clippy::cast_precision_loss, clippy::too_many_lines)]
async fn main() -> Result<()> {
    if !cluster::configured() {
        let _ = writeln!(std::io::stderr(), "skipping rollout_bench: {SKIP_HINT}");
        return Ok(());
    }
    let fleet = Fleet::new(env_or("ROLLOUT_CLUSTERS", 300)?)?;
    let count = fleet.count();
    let delay = Duration::from_millis(env_or("ROLLOUT_STEP_MS", 2000)?);
    let settle = Duration::from_secs(env_or("ROLLOUT_SETTLE_SECS", 5)?);
    let load_at_start = bench::load_average();

    let shared = cluster::shared().await?.context("no cluster")?;
    let client = shared.client().await?;
    let ns = namespace::create(&client, "e2e-rollout").await?;
    let images: Api<MachineImage> = Api::namespaced(client.clone(), &ns);
    let plans: Api<Plan> = Api::namespaced(client.clone(), &ns);
    let clusters = capi::clusters(&client, &ns, CAPI_VERSION);
    let upgraders = bench::upgraders(&client, &ns);

    // The fleet: one image the Plan has chosen, every Cluster finished at that version.
    images
        .create(
            &PostParams::default(),
            &bench::static_image("img-v1-31-1", FROM, LABEL)?,
        )
        .await?;
    let last = WAVES.len() - 1;
    let waves: Vec<_> = WAVES
        .iter()
        .enumerate()
        .map(|(i, (name, _, max))| {
            let selector = if i == last {
                json!({})
            } else {
                json!({"matchLabels": {"ring": name}})
            };
            json!({"name": name, "clusterSelector": selector, "maxConcurrent": max,
                   "soak": format!("{}s", SOAK.as_secs())})
        })
        .collect();
    let plan: Plan = serde_json::from_value(json!({
        "apiVersion": format!("{}/v1alpha1", bench::GROUP), "kind": "Plan",
        "metadata": {"name": PLAN},
        "spec": {"versionRange": "v1.31.x",
                 "machineImageSelector": {"matchLabels": {LABEL.0: LABEL.1}},
                 "rollout": {"waves": waves, "stepTimeout": "10m"}},
    }))?;
    plans.create(&PostParams::default(), &plan).await?;
    let created = Instant::now();
    bench::create_fleet(
        &client,
        &ns,
        count,
        FROM,
        PLAN,
        |i| json!({"ring": WAVES[fleet.wave_of_index(i)].0}),
    )
    .await?;
    let created_in = created.elapsed();

    let options = ManagerOptions::new(&shared.manager_kubeconfig, &ns).labelled("rollout-manager");
    let mut manager = Manager::spawn(options)?;
    manager.wait_ready(Duration::from_secs(120)).await?;
    let started = Instant::now();
    bench::wait_all_up_to_date(&upgraders, count, &manager, TIMEOUT).await?;
    wait_phase(&plans, FROM, "Complete", &manager).await?;
    let converged_in = started.elapsed();

    // The watches first, so every step and the Plan's phase are timed as the bench sees them.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let clusters_watching = stand_in(&client, &ns, clusters, &fleet, delay, seen.clone());
    let (complete_tx, complete_rx) = oneshot::channel();
    let plan_watching = watch_plan(
        Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<Plan>(&())),
        complete_tx,
        seen.clone(),
    );
    clusters_watching
        .await
        .context("the Cluster watch ended before its initial list")?;
    plan_watching
        .await
        .context("the Plan watch ended before its initial list")?;
    tokio::time::sleep(settle).await;
    let before_event = bench::pipeline_requests(&client).await?;
    let upgrader_runs_before = bench::reconciles(&manager, "clusterclassclusterupgrader").await?;
    let plan_runs_before = bench::reconciles(&manager, "plan").await?;

    // The event: a new static image in range.
    let event = Instant::now();
    images
        .create(
            &PostParams::default(),
            &bench::static_image("img-v1-31-2", TO, LABEL)?,
        )
        .await?;
    let Ok(Ok(complete_at)) = tokio::time::timeout(TIMEOUT, complete_rx).await else {
        let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        bail!(
            "the rollout to {TO} not Complete within {TIMEOUT:?}: {} stepped, {} finished; log:\n{}",
            seen.started.len(),
            seen.finished.len(),
            manager.log_tail()
        );
    };
    let total = complete_at - event;
    tokio::time::sleep(settle).await;
    let after = bench::pipeline_requests(&client).await?;
    let upgrader_runs = bench::reconciles(&manager, "clusterclassclusterupgrader").await?;
    let plan_runs = bench::reconciles(&manager, "plan").await?;
    let final_plan = plans.get(PLAN).await?;
    let load_at_end = bench::load_average();
    let _ = manager.terminate(Duration::from_secs(10)).await?;

    let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    ensure!(seen.errors.is_empty(), "stand-in errors: {:?}", seen.errors);
    ensure!(
        seen.finished.len() == count,
        "only {} of {count} Clusters finished",
        seen.finished.len()
    );

    let secs = |d: Duration| d.as_secs_f64();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nrollout_bench: {count} Clusters ({CAPI_VERSION}), one {} each, one Plan with waves {}; \
         soak {}s each; the stand-in finishes a step {} ms after it sees it; event: static image {TO}",
        bench::UPGRADER_KIND,
        WAVES
            .iter()
            .zip(fleet.sizes)
            .map(|((name, _, max), n)| format!("{name} {n} at maxConcurrent {max}"))
            .collect::<Vec<_>>()
            .join(", "),
        SOAK.as_secs(),
        delay.as_millis(),
    );
    let _ = writeln!(out, "load average at start: {load_at_start}");
    let _ = writeln!(out, "load average at end:   {load_at_end}");
    let _ = writeln!(
        out,
        "create {count} Clusters and upgraders: {:.1} s; manager ready to all up to date: {:.1} s",
        secs(created_in),
        secs(converged_in)
    );
    let _ = writeln!(
        out,
        "\nper wave: opens (wave 1: the event; then the previous wave's end) → first step → last \
         finished → ends (the next wave's first step; the last wave: the Plan's Complete).\n\
         ideal = soak + ceil(Clusters / maxConcurrent) × step; a soak ends at soakedUntil = the \
         finish seen + soak + 1 s, by design (status times are whole seconds), so about 1 s of each \
         wave's time is that second."
    );
    let _ = writeln!(
        out,
        "| wave | Clusters | maxConcurrent | open → first step | → last finished | → end | wave time | ideal | ratio | most in flight |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let mut opens = event;
    for (wave, ((name, _, max), n)) in WAVES.iter().zip(fleet.sizes).enumerate() {
        let first = in_wave(&seen.started, &fleet, wave)
            .min()
            .context("a wave never started")?;
        let last_finished = in_wave(&seen.finished, &fleet, wave)
            .max()
            .context("a wave never finished")?;
        let ends = if wave == last {
            complete_at
        } else {
            in_wave(&seen.started, &fleet, wave + 1)
                .min()
                .context("a wave never started")?
        };
        let batches = n.div_ceil(*max);
        let ideal = SOAK + delay * u32::try_from(batches)?;
        let took = ends - opens;
        let _ = writeln!(
            out,
            "| {name} | {n} | {max} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2}× | {} |",
            secs(first - opens),
            secs(last_finished - first),
            secs(ends - last_finished),
            secs(took),
            secs(ideal),
            secs(took) / secs(ideal),
            seen.peak[wave],
        );
        opens = ends;
    }
    let _ = writeln!(
        out,
        "\nwhere a wave's time goes, per Cluster step, p50 / max: the Plan admits → the step is \
         seen (the upgrader); the stand-in finishes → the Plan releases it, admitting the next \
         (the upgrader sees the finish, then the Plan sees the upgrader)"
    );
    for (wave, (name, _, _)) in WAVES.iter().enumerate() {
        let lag = |from: &HashMap<String, Instant>, to: &HashMap<String, Instant>| {
            let mut lags: Vec<Duration> = from
                .iter()
                .filter(|(c, _)| fleet.wave_of(c) == Some(wave))
                .filter_map(|(c, at)| to.get(c).map(|t| t.saturating_duration_since(*at)))
                .collect();
            lags.sort();
            format!(
                "{:.2} s / {:.2} s",
                secs(percentile(&lags, 50.0)),
                secs(lags.last().copied().unwrap_or_default())
            )
        };
        let _ = writeln!(
            out,
            "  {name}: admitted → stepped {}; finished → released {}",
            lag(&seen.admitted, &seen.started),
            lag(&seen.finished, &seen.released),
        );
    }
    let _ = writeln!(
        out,
        "event → Complete: {:.2} s; S13 violations seen: {}",
        secs(total),
        seen.violations.len()
    );
    for violation in &seen.violations {
        let _ = writeln!(out, "  {violation}");
    }
    if let Some(rollout) = final_plan.status.as_ref().and_then(|s| s.rollout.as_ref()) {
        let _ = writeln!(
            out,
            "Plan status.rollout.waves: {}",
            serde_json::to_string(&rollout.waves)?
        );
    }

    let window = diff(&before_event, &after);
    let upgrader = (
        upgrader_runs.0 - upgrader_runs_before.0,
        upgrader_runs.1 - upgrader_runs_before.1,
    );
    let plan = (
        plan_runs.0 - plan_runs_before.0,
        plan_runs.1 - plan_runs_before.1,
    );
    let _ = writeln!(
        out,
        "reconciles during the rollout: upgrader {:.0} ({:.1} per Cluster, mean {:.1} ms), Plan {:.0} (mean {:.1} ms)",
        upgrader.0,
        upgrader.0 / count as f64,
        upgrader.1 * 1000.0 / upgrader.0.max(1.0),
        plan.0,
        plan.1 * 1000.0 / plan.0.max(1.0),
    );
    report_window(
        &mut out,
        &format!(
            "requests from the event to {}s after Complete",
            settle.as_secs()
        ),
        &window,
        1.0,
    );
    let _ = writeln!(
        out,
        "  per Cluster step ({count}): Cluster writes {:.2}; writes to {} {:.2}",
        cluster_writes(&window) / count as f64,
        bench::GROUP,
        our_writes(&window) / count as f64,
    );
    println!("{out}");
    for (wave, ((_, _, max), _)) in WAVES.iter().zip(fleet.sizes).enumerate() {
        ensure!(
            seen.peak[wave] <= *max,
            "wave {wave}: {} in flight over maxConcurrent {max}",
            seen.peak[wave]
        );
    }
    ensure!(seen.violations.is_empty(), "S13 broken");
    Ok(())
}

/// The instants of `map` for the Clusters of `wave`.
fn in_wave<'a>(
    map: &'a HashMap<String, Instant>,
    fleet: &'a Fleet,
    wave: usize,
) -> impl Iterator<Item = Instant> + 'a {
    map.iter()
        .filter(move |(c, _)| fleet.wave_of(c) == Some(wave))
        .map(|(_, t)| *t)
}

/// Waits until the Plan reports its rollout to `version` in `phase`.
async fn wait_phase(
    plans: &Api<Plan>,
    version: &str,
    phase: &str,
    manager: &Manager,
) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let plan = serde_json::to_value(plans.get(PLAN).await?)?;
        let rollout = &plan["status"]["rollout"];
        if rollout["target"]["version"] == version && rollout["phase"] == phase {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the Plan's rollout to {version} not {phase} after {TIMEOUT:?}: {rollout}; log:\n{}",
                manager.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The Cluster API stand-in: from the Cluster watch, records each step to [`TO`] the first time it
/// is seen, with the wave's Clusters in flight and S13, and reports the step finished `delay`
/// later. Resolves once the watch's initial list is done.
fn stand_in(
    client: &Client,
    ns: &str,
    clusters: Api<DynamicObject>,
    fleet: &Fleet,
    delay: Duration,
    seen: Arc<Mutex<Seen>>,
) -> oneshot::Receiver<()> {
    let (init_tx, init_rx) = oneshot::channel();
    let (client, ns, fleet) = (client.clone(), ns.to_owned(), fleet.clone());
    tokio::spawn(async move {
        let mut init_tx = Some(init_tx);
        let events = watcher(clusters, watcher::Config::default());
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let cluster = match event {
                Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => c,
                Ok(watcher::Event::InitDone) => {
                    if let Some(init) = init_tx.take() {
                        let _ = init.send(());
                    }
                    continue;
                }
                _ => continue,
            };
            let name = cluster.name_any();
            let Some(wave) = fleet.wave_of(&name) else {
                continue;
            };
            if cluster.data["spec"]["topology"]["version"] != TO {
                continue;
            }
            let now = Instant::now();
            {
                let Ok(mut seen) = seen.lock() else { return };
                if seen.started.contains_key(&name) {
                    continue;
                }
                if let Some(why) = s13(&seen, &fleet, wave, now) {
                    seen.violations.push(format!("{name}: {why}"));
                }
                seen.started.insert(name.clone(), now);
                seen.in_flight[wave] += 1;
                seen.peak[wave] = seen.peak[wave].max(seen.in_flight[wave]);
            }
            let (client, ns, seen) = (client.clone(), ns.clone(), seen.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                // Marked finished before Cluster API says so: the manager cannot see it sooner.
                if let Ok(mut seen) = seen.lock() {
                    seen.finished.insert(name.clone(), Instant::now());
                    seen.in_flight[wave] -= 1;
                }
                if let Err(e) = capi::rollout_finished(&client, &ns, CAPI_VERSION, &name, TO).await
                    && let Ok(mut seen) = seen.lock()
                {
                    seen.errors.push(format!("{name}: {e:#}"));
                }
            });
        }
    });
    init_rx
}

/// Why a step of wave `wave` seen at `now` breaks S13, if it does.
fn s13(seen: &Seen, fleet: &Fleet, wave: usize, now: Instant) -> Option<String> {
    let mut index = 0;
    for (earlier, size) in fleet.sizes.iter().enumerate().take(wave) {
        let last = (index..index + size)
            .map(|i| seen.finished.get(&cluster_name(i)).copied())
            .collect::<Option<Vec<_>>>()
            .and_then(|f| f.into_iter().max());
        index += size;
        match last {
            None => return Some(format!("stepped before wave {earlier} finished")),
            Some(last) if now < last + SOAK => {
                return Some(format!(
                    "stepped {:?} after wave {earlier} finished, inside its soak",
                    now - last
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// Records when the Plan admits and releases each Cluster for [`TO`], and sends the instant it is
/// first seen `Complete` on that rollout. Resolves once the watch's initial list is done.
fn watch_plan(
    plans: Api<DynamicObject>,
    complete: oneshot::Sender<Instant>,
    seen: Arc<Mutex<Seen>>,
) -> oneshot::Receiver<()> {
    let (init_tx, init_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut init_tx = Some(init_tx);
        let mut complete = Some(complete);
        let events = watcher(plans, watcher::Config::default());
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let plan = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                Ok(watcher::Event::InitDone) => {
                    if let Some(init) = init_tx.take() {
                        let _ = init.send(());
                    }
                    continue;
                }
                _ => continue,
            };
            let rollout = &plan.data["status"]["rollout"];
            if rollout["target"]["version"] != TO {
                continue;
            }
            let admitted: Vec<&str> = rollout["waves"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w["admitted"].as_array())
                .flatten()
                .filter_map(|c| c.as_str())
                .collect();
            let now = Instant::now();
            if let Ok(mut seen) = seen.lock() {
                for cluster in &admitted {
                    seen.admitted.entry((*cluster).to_owned()).or_insert(now);
                }
                let released: Vec<String> = seen
                    .admitted
                    .keys()
                    .filter(|c| !admitted.contains(&c.as_str()) && !seen.released.contains_key(*c))
                    .cloned()
                    .collect();
                for cluster in released {
                    seen.released.insert(cluster, now);
                }
            }
            if rollout["phase"] == "Complete"
                && let Some(complete) = complete.take()
            {
                let _ = complete.send(Instant::now());
                return;
            }
        }
    });
    init_rx
}
