//! Fleet-scale bench (not a test): the manager's memory and reconcile costs with many objects,
//! on the real API server with the release manager binary.
//!
//! The fleet: `SCALE_IMAGES` static MachineImages (default 10,000, each with a one-container
//! `jobTemplate`) across `SCALE_NAMESPACES` namespaces (10), one Plan per namespace over them,
//! `SCALE_SOURCES` DebianRepositorySources (100) on one served repository, and `SCALE_CLUSTERS`
//! Cluster API Clusters (1,000), each with its ClusterClassClusterUpgrader on its namespace's
//! Plan, every Cluster finished at the newest image's version.
//!
//! The run:
//! 1. the idle manager (no objects) for `SCALE_IDLE_SECS` (15): its RSS is the baseline;
//! 2. the fleet is created with no manager running, the images with the status the
//!    MachineImage controller gives a static image (as after a restart);
//! 3. a fresh manager: the time from its start until every Plan has chosen and every upgrader
//!    reports its Cluster up to date; peak RSS; then, after `SCALE_SETTLE_SECS` (10), the
//!    writes over `SCALE_STEADY_SECS` (60) and the steady RSS; Plan reconcile p50/p99 from the
//!    manager's histogram;
//! 4. one newer image in every namespace: the time until every Cluster carries its step, and
//!    the writes the step cost.
//!
//! `make bench-scale` (the release manager through `KUBERNETES_UPGRADER_BIN`), with
//! `KUBEBUILDER_ASSETS` or `E2E_KUBECONFIG`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::v1alpha1::{DebianRepositorySource, MachineImage, Plan};
use e2e::bench::{self, Counts, diff, env_or, is_write};
use e2e::manager::{self, Manager, ManagerOptions};
use e2e::repo::ServedRepo;
use e2e::{SKIP_HINT, capi, cluster, condition_reason, namespace, to_json};
use futures::{StreamExt, TryStreamExt};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, ResourceExt};
use kubernetes_upgrader::controllers::machine_image::{self, BuildPodPolicy, Observed};
use serde_json::json;

const GROUP: &str = "kubernetesupgraded.dimitrikoshkin.com";
const KIND: &str = "ClusterClassClusterUpgrader";
const CAPI_VERSION: &str = "v1beta1";
const PLAN: &str = "fleet";
const LABEL: (&str, &str) = ("os", "scale");
const PARALLEL: usize = 24;
const TIMEOUT: Duration = Duration::from_secs(900);
const MIB: f64 = 1024.0;

/// The sizes and windows, from the environment.
struct Knobs {
    images: usize,
    namespaces: usize,
    sources: usize,
    clusters: usize,
    idle: Duration,
    settle: Duration,
    steady: Duration,
}

impl Knobs {
    fn from_env() -> Result<Self> {
        let knobs = Self {
            images: env_or("SCALE_IMAGES", 10_000)?,
            namespaces: env_or("SCALE_NAMESPACES", 10)?,
            sources: env_or("SCALE_SOURCES", 100)?,
            clusters: env_or("SCALE_CLUSTERS", 1_000)?,
            idle: Duration::from_secs(env_or("SCALE_IDLE_SECS", 15)?),
            settle: Duration::from_secs(env_or("SCALE_SETTLE_SECS", 10)?),
            steady: Duration::from_secs(env_or("SCALE_STEADY_SECS", 60)?),
        };
        if knobs.namespaces == 0 || knobs.images < knobs.namespaces {
            bail!("SCALE_NAMESPACES must be at least 1 and at most SCALE_IMAGES");
        }
        Ok(knobs)
    }

    fn images_per_namespace(&self) -> usize {
        self.images / self.namespaces
    }

    fn clusters_in(&self, n: usize) -> std::ops::Range<usize> {
        let per = self.clusters.div_ceil(self.namespaces);
        (n * per).min(self.clusters)..((n + 1) * per).min(self.clusters)
    }
}

/// The `i`th image version of a namespace: 250 patches per minor from v1.28.
fn version(i: usize) -> String {
    format!("v1.{}.{}", 28 + i / 250, i % 250)
}

/// Memory of the manager process, in KiB.
#[derive(Clone, Copy, Debug)]
struct Memory {
    peak: u64,
    now: u64,
}

fn memory(manager: &Manager) -> Result<Memory> {
    Ok(Memory {
        peak: manager::peak_rss_kib(manager.pid())?,
        now: manager::rss_kib(manager.pid())?,
    })
}

#[tokio::main]
#[allow(clippy::cast_precision_loss, clippy::too_many_lines)]
async fn main() -> Result<()> {
    if !cluster::configured() {
        let _ = writeln!(std::io::stderr(), "skipping scale: {SKIP_HINT}");
        return Ok(());
    }
    let knobs = Knobs::from_env()?;
    let load_at_start = bench::load_average();
    let shared = cluster::shared().await?.context("no cluster")?;
    let client = shared.client().await?;
    let options = {
        let mut options = ManagerOptions::new(&shared.kubeconfig, "").labelled("scale-manager");
        options.namespace = None;
        options
    };
    let binary = manager::binary()?;

    // 1. Idle: nothing of ours exists yet.
    let mut idle_manager = Manager::spawn(options.clone())?;
    idle_manager.wait_ready(Duration::from_secs(120)).await?;
    tokio::time::sleep(knobs.idle).await;
    let idle = memory(&idle_manager)?;
    let idle_status = proc_status(idle_manager.pid());
    let _ = idle_manager.terminate(Duration::from_secs(10)).await?;
    progress(&format!(
        "idle: peak {:.1} MiB, now {:.1} MiB",
        idle.peak as f64 / MIB,
        idle.now as f64 / MIB
    ));

    // 2. The fleet, with no manager running.
    let creating = Instant::now();
    let mut namespaces = Vec::with_capacity(knobs.namespaces);
    for n in 0..knobs.namespaces {
        namespaces.push(namespace::create(&client, &format!("scale-{n}")).await?);
    }
    let repo = ServedRepo::flat(&["1.31.0-1.1", "1.31.1-1.1"]).await?;
    create_sources(&client, &namespaces, &repo, knobs.sources).await?;
    let per = knobs.images_per_namespace();
    let top = version(per - 1);
    let next = version(per);
    let image_jobs: Vec<(String, usize)> = namespaces
        .iter()
        .flat_map(|ns| (0..per).map(move |i| (ns.clone(), i)))
        .collect();
    futures::stream::iter(image_jobs)
        .map(|(ns, i)| {
            let client = client.clone();
            async move { create_ready_image(&client, &ns, i).await }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    progress(&format!(
        "{} images in {:.0} s",
        per * knobs.namespaces,
        creating.elapsed().as_secs_f64()
    ));
    for ns in &namespaces {
        let plan: Plan = serde_json::from_value(json!({
            "apiVersion": format!("{GROUP}/v1alpha1"), "kind": "Plan",
            "metadata": {"name": PLAN},
            "spec": {"versionRange": ">=1.28.0",
                "machineImageSelector": {"matchLabels": {LABEL.0: LABEL.1}}},
        }))?;
        Api::<Plan>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &plan)
            .await?;
    }
    let cluster_jobs: Vec<(String, usize)> = namespaces
        .iter()
        .enumerate()
        .flat_map(|(n, ns)| knobs.clusters_in(n).map(move |i| (ns.clone(), i)))
        .collect();
    futures::stream::iter(cluster_jobs)
        .map(|(ns, i)| {
            let client = client.clone();
            let top = top.clone();
            async move { create_cluster(&client, &ns, i, &top).await }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    let created_in = creating.elapsed();
    progress(&format!(
        "fleet created in {:.0} s",
        created_in.as_secs_f64()
    ));

    // 3. A fresh manager over the fleet.
    let mut manager = Manager::spawn(options)?;
    let started = manager.started();
    manager.wait_ready(TIMEOUT).await?;
    let ready_in = started.elapsed();
    wait_converged(&client, &namespaces, &top, knobs.clusters, &manager).await?;
    let converged_in = started.elapsed();
    let at_convergence = memory(&manager)?;
    progress(&format!("converged in {:.1} s", converged_in.as_secs_f64()));
    tokio::time::sleep(knobs.settle).await;
    let before_steady = bench::pipeline_requests(&client).await?;
    tokio::time::sleep(knobs.steady).await;
    let after_steady = bench::pipeline_requests(&client).await?;
    let steady = memory(&manager)?;
    let plan_histogram = reconcile_histogram(&manager, "plan").await?;

    // 4. A newer image in every namespace; each Cluster steps to it.
    let (mut stepped, watching) = stepped_to(&client, next.clone());
    watching.await?;
    let before_step = bench::pipeline_requests(&client).await?;
    let event = Instant::now();
    futures::stream::iter(namespaces.clone())
        .map(|ns| {
            let client = client.clone();
            async move { create_ready_image(&client, &ns, per).await }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    let mut steps: HashMap<String, Duration> = HashMap::with_capacity(knobs.clusters);
    let deadline = event + TIMEOUT;
    while steps.len() < knobs.clusters {
        let Ok(Some((name, at))) = tokio::time::timeout_at(deadline.into(), stepped.recv()).await
        else {
            bail!(
                "only {} of {} Clusters stepped to {next} within {TIMEOUT:?}; log:\n{}",
                steps.len(),
                knobs.clusters,
                manager.log_tail()
            );
        };
        steps.entry(name).or_insert(at - event);
    }
    let step_in = event.elapsed();
    // The step's own status writes land just after the Cluster writes.
    tokio::time::sleep(knobs.settle).await;
    let after_step = bench::pipeline_requests(&client).await?;
    let end = memory(&manager)?;
    let load_at_end = bench::load_average();
    let end_status = proc_status(manager.pid());
    let _ = manager.terminate(Duration::from_secs(10)).await?;

    let mut samples: Vec<Duration> = steps.into_values().collect();
    samples.sort();
    let mib = |kib: u64| kib as f64 / MIB;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nscale: {} MachineImages in {} namespaces ({} per namespace, one Plan each), {} DebianRepositorySources, {} Clusters with one {KIND} each",
        per * knobs.namespaces,
        knobs.namespaces,
        per,
        knobs.sources,
        knobs.clusters
    );
    let _ = writeln!(out, "manager binary: {}", binary.display());
    let _ = writeln!(
        out,
        "machine: {} CPUs; load average at start {load_at_start}, at end {load_at_end}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    let _ = writeln!(
        out,
        "idle manager (no objects): peak RSS {:.1} MiB, RSS {:.1} MiB",
        mib(idle.peak),
        mib(idle.now)
    );
    let _ = writeln!(out, "idle manager /proc status: {idle_status}");
    let _ = writeln!(
        out,
        "fleet created (no manager) in {:.0} s",
        created_in.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "manager start -> ready {:.1} s; -> every Plan chose {top} and every upgrader reports up to date: {:.1} s",
        ready_in.as_secs_f64(),
        converged_in.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "RSS at convergence {:.1} MiB; steady RSS {:.1} MiB (after {} s); peak RSS {:.1} MiB ({:+.1} MiB over idle)",
        mib(at_convergence.now),
        mib(steady.now),
        (knobs.settle + knobs.steady).as_secs(),
        mib(steady.peak),
        mib(steady.peak) - mib(idle.peak)
    );
    let _ = writeln!(
        out,
        "Plan reconciles: {:.0}, mean {:.1} ms, p50 <= {} ms, p99 <= {} ms (histogram bucket bounds)",
        plan_histogram.count,
        plan_histogram.sum * 1000.0 / plan_histogram.count.max(1.0),
        plan_histogram.bound_ms(0.50),
        plan_histogram.bound_ms(0.99)
    );
    report_writes(
        &mut out,
        &format!(
            "steady state, {} s window, writes per minute",
            knobs.steady.as_secs()
        ),
        &diff(&before_steady, &after_steady),
        60.0 / knobs.steady.as_secs_f64(),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let _ = writeln!(
        out,
        "\nnew image {next} in every namespace -> Cluster at {next}: p50 {:.0} ms, p99 {:.0} ms, all {} in {:.1} s",
        ms(e2e::stats::percentile(&samples, 50.0)),
        ms(e2e::stats::percentile(&samples, 99.0)),
        knobs.clusters,
        step_in.as_secs_f64()
    );
    let step = diff(&before_step, &after_step);
    report_writes(
        &mut out,
        &format!("the step, writes per Cluster ({})", knobs.clusters),
        &step,
        1.0 / knobs.clusters as f64,
    );
    let _ = writeln!(
        out,
        "RSS after the step {:.1} MiB; peak RSS over the run {:.1} MiB",
        mib(end.now),
        mib(end.peak)
    );
    let _ = writeln!(out, "manager /proc status at the end: {end_status}");
    println!("{out}");
    Ok(())
}

/// The resident set split (anonymous, file-backed) and the thread count of `pid`.
fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_or_else(
        |_| "unknown".to_owned(),
        |status| {
            status
                .lines()
                .filter(|l| {
                    ["RssAnon:", "RssFile:", "Threads:"]
                        .iter()
                        .any(|f| l.starts_with(f))
                })
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(", ")
        },
    )
}

fn progress(what: &str) {
    let _ = writeln!(std::io::stderr(), "scale: {what}");
}

/// `count` sources on `repo`, spread over the namespaces, checked hourly.
async fn create_sources(
    client: &Client,
    namespaces: &[String],
    repo: &ServedRepo,
    count: usize,
) -> Result<()> {
    let signed_by = repo.inline_key()?;
    futures::stream::iter(0..count)
        .map(|i| {
            let ns = &namespaces[i % namespaces.len()];
            let api: Api<DebianRepositorySource> = Api::namespaced(client.clone(), ns);
            let source = repo.source(&format!("src-{i:04}"), "1h", Some(signed_by.clone()));
            async move {
                api.create(&PostParams::default(), &source)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The static image of version `i`, with the status the MachineImage controller gives it, so a
/// manager that starts finds nothing to write.
async fn create_ready_image(client: &Client, ns: &str, i: usize) -> Result<()> {
    let api: Api<MachineImage> = Api::namespaced(client.clone(), ns);
    let version = version(i);
    let image: MachineImage = serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/v1alpha1"), "kind": "MachineImage",
        "metadata": {"name": format!("img-{}", version.replace('.', "-")),
            "labels": {LABEL.0: LABEL.1}},
        "spec": {"version": version, "id": format!("ami-{ns}-{i}"), "jobTemplate": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "build", "image": "registry.example/builder:v1",
                "args": ["--kubernetes", version.as_str()]}]
        }}},
    }))?;
    let created = api.create(&PostParams::default(), &image).await?;
    let status = machine_image::decide(&Observed {
        image: &created,
        latest: None,
        job_gone: false,
        pods: &[],
        build_pods: &BuildPodPolicy::default(),
        now: &kubernetes_upgrader::runtime::now(),
    })
    .status;
    let patch = json!({"status": status});
    api.patch_status(
        &created.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

fn upgrader_api(client: &Client, ns: Option<&str>) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(GROUP, "v1alpha1", KIND);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", KIND.to_lowercase()));
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// A minimal Cluster finished at `version`, and its upgrader on the namespace's Plan.
async fn create_cluster(client: &Client, ns: &str, i: usize, version: &str) -> Result<()> {
    bench::fleet_member(
        client,
        ns,
        &bench::cluster_name(i),
        version,
        &json!({}),
        PLAN,
    )
    .await
}

/// Waits until every Plan has chosen `version` and every upgrader reports its Cluster on the
/// latest version.
async fn wait_converged(
    client: &Client,
    namespaces: &[String],
    version: &str,
    clusters: usize,
    manager: &Manager,
) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let plans = Api::<Plan>::all(client.clone())
            .list(&ListParams::default())
            .await?;
        let chosen = plans
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.machine_image_details.as_ref())
                    .and_then(|d| d.version.as_deref())
                    == Some(version)
            })
            .count();
        let reporting = if chosen == namespaces.len() {
            up_to_date(client).await?
        } else {
            0
        };
        if chosen == namespaces.len() && reporting == clusters {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{chosen} of {} Plans chose {version} and {reporting} of {clusters} upgraders report up to date after {TIMEOUT:?}; log:\n{}",
                namespaces.len(),
                manager.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How many upgraders report their Cluster on the latest version.
async fn up_to_date(client: &Client) -> Result<usize> {
    let list = upgrader_api(client, None)
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|u| {
            condition_reason(&to_json(u), "Ready").as_deref() == Some("ClusterUsingLatestVersion")
        })
        .count())
}

/// Watches every Cluster and sends `namespace/name` the first time its topology version is
/// `version`, with the instant it was seen; the second value resolves once the initial list is
/// done.
fn stepped_to(
    client: &Client,
    version: String,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    impl Future<Output = Result<()>>,
) {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(capi::GROUP, CAPI_VERSION, "Cluster"),
        "clusters",
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    bench::first_seen(api, move |object| {
        (object.data["spec"]["topology"]["version"] == version.as_str()).then(|| {
            format!(
                "{}/{}",
                object.namespace().unwrap_or_default(),
                object.name_any()
            )
        })
    })
}

/// A controller's reconcile duration histogram, from the manager's metrics.
struct Histogram {
    count: f64,
    sum: f64,
    /// (upper bound in seconds, cumulative count), ascending.
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// The upper bound of the bucket that holds quantile `q`, in ms.
    fn bound_ms(&self, q: f64) -> String {
        let rank = q * self.count;
        self.buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= rank)
            .map_or_else(
                || "?".to_owned(),
                |(le, _)| {
                    if le.is_infinite() {
                        "+Inf".to_owned()
                    } else {
                        format!("{:.0}", le * 1000.0)
                    }
                },
            )
    }
}

async fn reconcile_histogram(manager: &Manager, controller: &str) -> Result<Histogram> {
    let samples = manager::parse_metrics(&manager.metrics_text().await?);
    let labels = [("controller", controller)];
    let name = "kubernetes_upgrader_reconcile_duration_seconds";
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == format!("{name}_bucket") && s.label("controller") == Some(controller))
        .filter_map(|s| {
            let le = s.label("le")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, s.value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Histogram {
        count: manager::metric_sum(&samples, &format!("{name}_count"), &labels),
        sum: manager::metric_sum(&samples, &format!("{name}_sum"), &labels),
        buckets,
    })
}

/// Every non-zero write of `window`, scaled by `scale`, then the totals.
fn report_writes(out: &mut String, title: &str, window: &Counts, scale: f64) {
    let _ = writeln!(out, "\n{title}:");
    let mut total = 0.0;
    let mut leases = 0.0;
    for ((verb, resource), delta) in window {
        if *delta > 0.0 && is_write(verb) {
            let _ = writeln!(
                out,
                "  {:<60} {:>10.2}",
                format!("{verb} {resource}"),
                delta * scale
            );
            if resource.starts_with("leases") {
                leases += delta * scale;
            } else {
                total += delta * scale;
            }
        }
    }
    let _ = writeln!(
        out,
        "  writes (leases aside): {total:.2}; to leases: {leases:.2}"
    );
}
