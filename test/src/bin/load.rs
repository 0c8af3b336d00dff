//! Load bench (not a test): many DebianRepositorySources on one served repository, one
//! manager. Reports the manager's peak RSS, API requests per minute at steady state (from the
//! apiserver's `apiserver_request_total`) and the repository requests per interval.
//!
//! `cargo run -p e2e --bin load --release`, with `KUBEBUILDER_ASSETS` or `E2E_KUBECONFIG`.
//! `LOAD_SOURCES` (default 500), `LOAD_INTERVAL` (default `30s`) and `LOAD_WINDOW_INTERVALS`
//! (default 2) tune it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::v1alpha1::DebianRepositorySource;
use e2e::bench::{self, Counts, diff, env_or};
use e2e::manager::{self, Manager, ManagerOptions};
use e2e::repo::ServedRepo;
use e2e::status::{condition_status, to_json};
use e2e::{SKIP_HINT, cluster, namespace};
use futures::{StreamExt, TryStreamExt};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

const GROUP: &str = "kubernetesupgraded.dimitrikoshkin.com";

#[tokio::main]
#[allow(clippy::cast_precision_loss)]
async fn main() -> Result<()> {
    if !cluster::configured() {
        let _ = writeln!(std::io::stderr(), "skipping load: {SKIP_HINT}");
        return Ok(());
    }
    let sources: usize = env_or("LOAD_SOURCES", 500)?;
    let interval_text: String = env_or("LOAD_INTERVAL", "30s".to_owned())?;
    let interval = api::durations::parse_positive(&interval_text)?;
    let window_intervals: u32 = env_or("LOAD_WINDOW_INTERVALS", 2)?;

    let cluster = cluster::shared().await?.context("no cluster")?;
    let client = cluster.client().await?;
    let ns = namespace::create(&client, "e2e-load").await?;
    let repo = ServedRepo::flat(&["1.30.0-1.1", "1.30.1-1.1", "1.31.0-1.1", "1.31.1-1.1"]).await?;
    let expected = repo.expected_versions();
    let signed_by = repo.inline_key()?;
    let api: Api<DebianRepositorySource> = Api::namespaced(client.clone(), &ns);

    let started = Instant::now();
    futures::stream::iter(0..sources)
        .map(|i| {
            let api = api.clone();
            let source = repo.source(
                &format!("load-{i:04}"),
                &interval_text,
                Some(signed_by.clone()),
            );
            async move {
                api.create(&PostParams::default(), &source)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let created_in = started.elapsed();

    let options = ManagerOptions::new(&cluster.manager_kubeconfig, &ns).labelled("load-manager");
    let mut manager = Manager::spawn(options)?;
    manager.wait_ready(Duration::from_secs(120)).await?;
    let manager_started = Instant::now();
    let converge_deadline = manager_started + Duration::from_secs(600);
    loop {
        let list = api.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|s| {
                condition_status(&to_json(s), "Ready").as_deref() == Some("True")
                    && s.status.as_ref().and_then(|st| st.versions.as_ref()) == Some(&expected)
            })
            .count();
        if ready == sources {
            break;
        }
        if Instant::now() >= converge_deadline {
            bail!(
                "only {ready} of {sources} sources Ready after 10 minutes; log:\n{}",
                manager.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let converged_in = manager_started.elapsed();

    // Steady state: let one interval pass so that first syncs are done, then measure.
    tokio::time::sleep(interval + interval / 10).await;
    let before = apiserver_requests(&client).await?;
    repo.server.reset_counters();
    let window = interval * window_intervals;
    tokio::time::sleep(window).await;
    let after = apiserver_requests(&client).await?;
    let repo_requests = repo.server.requests();
    let repo_not_modified = repo.server.not_modified();
    let rss_kib = manager::peak_rss_kib(manager.pid())?;
    let _ = manager.terminate(Duration::from_secs(10)).await?;

    let minutes = window.as_secs_f64() / 60.0;
    let intervals = f64::from(window_intervals);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nload: {sources} DebianRepositorySources, interval {interval_text}, window {window:?}"
    );
    let _ = writeln!(out, "{:<58} {:>12}", "measure", "value");
    let _ = writeln!(
        out,
        "{:<58} {:>12.1}",
        "create sources (s)",
        created_in.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "{:<58} {:>12.1}",
        "manager start to all Ready (s)",
        converged_in.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "{:<58} {:>12.1}",
        "manager peak RSS, VmHWM (MiB)",
        rss_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "{:<58} {:>12.1}",
        "repository requests per interval",
        repo_requests as f64 / intervals
    );
    let _ = writeln!(
        out,
        "{:<58} {:>12.1}",
        "repository 304 answers per interval",
        repo_not_modified as f64 / intervals
    );
    let mut writes = 0.0;
    for ((verb, resource), delta) in diff(&before, &after) {
        if delta <= 0.0 {
            continue;
        }
        if bench::is_write(&verb) && resource.ends_with(GROUP) {
            writes += delta;
        }
        let _ = writeln!(
            out,
            "{:<58} {:>12.1}",
            format!("API {verb} {resource} per minute"),
            delta / minutes
        );
    }
    let _ = writeln!(
        out,
        "{:<58} {:>12.1}",
        format!("API writes to {GROUP} per minute"),
        writes / minutes
    );
    println!("{out}");
    Ok(())
}

/// `apiserver_request_total` summed by (verb, resource.group), for our group, events and leases.
async fn apiserver_requests(client: &Client) -> Result<Counts> {
    bench::request_counts(client, |group, resource| {
        group == GROUP || resource == "events" || resource == "leases"
    })
    .await
}
