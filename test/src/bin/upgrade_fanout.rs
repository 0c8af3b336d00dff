//! Upgrade fan-out bench (not a test): many Clusters, each with its own
//! ClusterClassClusterUpgrader, all on one Plan, on the real API server with the real manager.
//! A new static MachineImage is the event; the bench reports how long until every Cluster carries
//! its first step (p50/p99/max and the total), the API writes that step cost (PATCHes on
//! `clusters` and our group's writes, from the apiserver's `apiserver_request_total`, where a
//! server-side apply PATCH is counted under the verb `APPLY`), and the
//! writes per minute at steady state once every rollout is reported finished.
//!
//! `cargo run -p e2e --bin upgrade_fanout` (or `make bench-upgrade`), with `KUBEBUILDER_ASSETS`
//! or `E2E_KUBECONFIG` and the manager binary built. `FANOUT_CLUSTERS` (default 200),
//! `FANOUT_BASELINE_SECS` (30), `FANOUT_SETTLE_SECS` (10) and `FANOUT_STEADY_SECS` (60) tune it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::v1alpha1::{MachineImage, Plan};
use e2e::bench::{
    self, CAPI_VERSION, GROUP, UPGRADER_KIND as KIND, cluster_name, diff, env_or, is_write,
    report_window, sum,
};
use e2e::manager::{self, Manager, ManagerOptions};
use e2e::stats::percentile;
use e2e::{SKIP_HINT, capi, cluster, namespace};
use futures::{StreamExt, TryStreamExt};
use kube::api::{ApiResource, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const FROM: &str = "v1.31.1";
const TO: &str = "v1.31.2";
const LABEL: (&str, &str) = ("os", "fanout");
const PARALLEL: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::main]
#[allow(clippy::cast_precision_loss, clippy::too_many_lines)]
async fn main() -> Result<()> {
    if !cluster::configured() {
        let _ = writeln!(std::io::stderr(), "skipping upgrade_fanout: {SKIP_HINT}");
        return Ok(());
    }
    let count: usize = env_or("FANOUT_CLUSTERS", 200)?;
    let baseline = Duration::from_secs(env_or("FANOUT_BASELINE_SECS", 30)?);
    let settle = Duration::from_secs(env_or("FANOUT_SETTLE_SECS", 10)?);
    let steady = Duration::from_secs(env_or("FANOUT_STEADY_SECS", 60)?);
    let load_at_start = bench::load_average();

    let shared = cluster::shared().await?.context("no cluster")?;
    let client = shared.client().await?;
    let ns = namespace::create(&client, "e2e-fanout").await?;
    let images: Api<MachineImage> = Api::namespaced(client.clone(), &ns);
    let plans: Api<Plan> = Api::namespaced(client.clone(), &ns);
    let clusters = capi::clusters(&client, &ns, CAPI_VERSION);
    let upgraders = bench::upgraders(&client, &ns);

    // The fleet: one image the Plan has chosen, and every Cluster finished at that version.
    images
        .create(
            &PostParams::default(),
            &bench::static_image("img-v1-31-1", FROM, LABEL)?,
        )
        .await?;
    let plan: Plan = serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/v1alpha1"), "kind": "Plan",
        "metadata": {"name": "fanout"},
        "spec": {"versionRange": "v1.31.x", "machineImageSelector": {"matchLabels": {LABEL.0: LABEL.1}}},
    }))?;
    plans.create(&PostParams::default(), &plan).await?;
    let created = Instant::now();
    bench::create_fleet(&client, &ns, count, FROM, "fanout", |_| json!({})).await?;
    let created_in = created.elapsed();

    let options = ManagerOptions::new(&shared.manager_kubeconfig, &ns).labelled("fanout-manager");
    let mut manager = Manager::spawn(options)?;
    manager.wait_ready(Duration::from_secs(120)).await?;
    let started = Instant::now();
    bench::wait_all_up_to_date(&upgraders, count, &manager, TIMEOUT).await?;
    let converged_in = started.elapsed();

    // Baseline: the fleet up to date, nothing happening.
    tokio::time::sleep(settle).await;
    let before_baseline = bench::pipeline_requests(&client).await?;
    tokio::time::sleep(baseline).await;
    let before_event = bench::pipeline_requests(&client).await?;
    let reconciles_before = bench::reconciles(&manager, "clusterclassclusterupgrader").await?;

    // The event: a new static image in range. Watches opened first, so each step is timed
    // from the moment the bench sees it.
    let (mut stepped, clusters_watching) = bench::first_seen(clusters.clone(), |c| {
        (c.data["spec"]["topology"]["version"] == TO).then(|| c.name_any())
    });
    let plan_resource = ApiResource::erase::<Plan>(&());
    let (mut chosen, plan_watching) = bench::first_seen(
        Api::namespaced_with(client.clone(), &ns, &plan_resource),
        |p| (p.data["status"]["machineImageDetails"]["version"] == TO).then(|| p.name_any()),
    );
    clusters_watching.await?;
    plan_watching.await?;
    let event = Instant::now();
    images
        .create(
            &PostParams::default(),
            &bench::static_image("img-v1-31-2", TO, LABEL)?,
        )
        .await?;
    let mut steps: HashMap<String, Duration> = HashMap::with_capacity(count);
    let deadline = event + TIMEOUT;
    while steps.len() < count {
        let Ok(Some((name, at))) = tokio::time::timeout_at(deadline.into(), stepped.recv()).await
        else {
            bail!(
                "only {} of {count} Clusters stepped to {TO} within {TIMEOUT:?}; log:\n{}",
                steps.len(),
                manager.log_tail()
            );
        };
        steps.entry(name).or_insert(at - event);
    }
    let plan_chose = match chosen.try_recv() {
        Ok((_, at)) => Some(at - event),
        Err(_) => None,
    };
    // The step's own writes (status of the upgraders, the Plan, the image) land just after.
    tokio::time::sleep(settle).await;
    let after_step = bench::pipeline_requests(&client).await?;
    let reconciles_after = bench::reconciles(&manager, "clusterclassclusterupgrader").await?;

    // Cluster API reports every rollout finished; the fleet settles up to date again.
    let finishing = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                capi::rollout_finished(&client, &ns, CAPI_VERSION, &cluster_name(i), TO)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    bench::wait_all_up_to_date(&upgraders, count, &manager, TIMEOUT).await?;
    let finished_in = finishing.elapsed();
    tokio::time::sleep(settle).await;
    let before_steady = bench::pipeline_requests(&client).await?;
    tokio::time::sleep(steady).await;
    let after_steady = bench::pipeline_requests(&client).await?;
    let rss_kib = manager::peak_rss_kib(manager.pid())?;
    let load_at_end = bench::load_average();
    let _ = manager.terminate(Duration::from_secs(10)).await?;

    let mut samples: Vec<Duration> = steps.into_values().collect();
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nupgrade_fanout: {count} Clusters ({CAPI_VERSION}), one {KIND} each, one Plan; event: static image {TO}"
    );
    let _ = writeln!(out, "load average at start: {load_at_start}");
    let _ = writeln!(out, "load average at end:   {load_at_end}");
    let _ = writeln!(
        out,
        "create {count} Clusters and upgraders: {:.1} s; manager ready to all up to date: {:.1} s",
        created_in.as_secs_f64(),
        converged_in.as_secs_f64()
    );
    if let Some(chose) = plan_chose {
        let _ = writeln!(out, "event -> Plan chose {TO}: {:.0} ms", ms(chose));
    }
    let last = samples.last().copied().unwrap_or_default();
    let _ = writeln!(
        out,
        "event -> Cluster at {TO}: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms  min {:.0} ms; all {count} in {:.2} s",
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(last),
        ms(samples.first().copied().unwrap_or_default()),
        last.as_secs_f64()
    );
    let runs = reconciles_after.0 - reconciles_before.0;
    let _ = writeln!(
        out,
        "upgrader reconciles for the step: {runs:.0} ({:.2} per Cluster), mean {:.0} ms each",
        runs / count as f64,
        (reconciles_after.1 - reconciles_before.1) * 1000.0 / runs.max(1.0)
    );
    let _ = writeln!(
        out,
        "rollouts reported finished -> all up to date: {:.1} s; manager peak RSS {:.1} MiB",
        finished_in.as_secs_f64(),
        rss_kib as f64 / 1024.0
    );
    report_window(
        &mut out,
        &format!("baseline, {}s window, per minute", baseline.as_secs()),
        &diff(&before_baseline, &before_event),
        60.0 / baseline.as_secs_f64(),
    );
    report_window(
        &mut out,
        &format!("the step, total and per Cluster ({count})"),
        &diff(&before_event, &after_step),
        1.0,
    );
    let step = diff(&before_event, &after_step);
    let _ = writeln!(
        out,
        "  PATCH/APPLY of clusters per Cluster step: {:.2}; writes to {GROUP} per Cluster step: {:.2}",
        sum(&step, |verb, resource| (verb == "PATCH" || verb == "APPLY")
            && resource == format!("clusters.{}", capi::GROUP))
            / count as f64,
        sum(&step, |verb, resource| is_write(verb)
            && resource.ends_with(GROUP))
            / count as f64,
    );
    let _ = writeln!(
        out,
        "  GET of clusters per Cluster step: {:.2}",
        sum(&step, |verb, resource| verb == "GET"
            && resource == format!("clusters.{}", capi::GROUP))
            / count as f64,
    );
    report_window(
        &mut out,
        &format!("steady state, {}s window, per minute", steady.as_secs()),
        &diff(&before_steady, &after_steady),
        60.0 / steady.as_secs_f64(),
    );
    println!("{out}");
    Ok(())
}
