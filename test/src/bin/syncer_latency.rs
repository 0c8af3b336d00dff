//! Latency bench (not a test): a new version published in a served, signed repository → its
//! MachineImage created by the MachineImageSyncer, on the real API server with the real
//! manager. Reports p50, p99 and max over `SYNCER_BENCH_PUBLICATIONS` (default 25)
//! publications, split into publication → listed by the DebianRepositorySource and listed →
//! MachineImage created (the syncer's share).
//!
//! The source re-reads its repository at `spec.interval` (at least 10 s). The bench drives the
//! re-read the way an operator can, by changing the source's spec (`spec.timeout` alternates
//! between 5 s and 6 s), which is a new generation that the source controller syncs at once.
//!
//! `make bench-syncer`, or `cargo run -p e2e --bin syncer_latency`, with `KUBEBUILDER_ASSETS`
//! or `E2E_KUBECONFIG`. Times are taken from watch events, not polls.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::v1alpha1::{DebianRepositorySource, KUBERNETES_VERSION_LABEL, MachineImage};
use e2e::manager::{Manager, ManagerOptions};
use e2e::repo::ServedRepo;
use e2e::stats::percentile;
use e2e::syncer::{create, resync_source, syncer, template};
use e2e::{SKIP_HINT, cluster, namespace};
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;

type Seen = Arc<Mutex<BTreeMap<String, Instant>>>;

/// Records when each version is first seen, by a watch of `api`.
fn record<K, F>(api: Api<K>, seen: Seen, versions_of: F)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
    F: Fn(&K) -> Vec<String> + Send + 'static,
{
    tokio::spawn(async move {
        let events = watcher(api, watcher::Config::default()).applied_objects();
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let Ok(object) = event else { continue };
            let now = Instant::now();
            let mut seen = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for version in versions_of(&object) {
                seen.entry(version).or_insert(now);
            }
        }
    });
}

fn summary(what: &str, samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    format!(
        "{what}: p50 {:?}  p99 {:?}  max {:?}  (n={})",
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        sorted.last().copied().unwrap_or_default(),
        sorted.len()
    )
}

async fn wait_seen(seen: &Seen, version: &str, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(at) = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(version)
        {
            return Ok(*at);
        }
        if Instant::now() > deadline {
            bail!("{version} not seen within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    if !cluster::configured() {
        let _ = writeln!(std::io::stderr(), "skipping syncer_latency: {SKIP_HINT}");
        return Ok(());
    }
    let publications: u32 = std::env::var("SYNCER_BENCH_PUBLICATIONS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(25);
    let cluster = cluster::shared().await?.context("no cluster")?;
    let client = cluster.client().await?;
    let ns = namespace::create(&client, "e2e-syncer-latency").await?;
    let mut repo = ServedRepo::flat(&["1.27.0-1.1"]).await?;
    create(
        &client,
        &ns,
        &repo.source("src", "1h", Some(repo.inline_key()?)),
    )
    .await?;
    create(&client, &ns, &template("tpl")?).await?;
    create(
        &client,
        &ns,
        &syncer("bench", "v1.27.x", "src", "tpl", &json!({}))?,
    )
    .await?;

    let images: Seen = Arc::default();
    let listed: Seen = Arc::default();
    record(
        Api::<MachineImage>::namespaced(client.clone(), &ns),
        Arc::clone(&images),
        |image: &MachineImage| {
            image
                .labels()
                .get(KUBERNETES_VERSION_LABEL)
                .cloned()
                .into_iter()
                .collect()
        },
    );
    record(
        Api::<DebianRepositorySource>::namespaced(client.clone(), &ns),
        Arc::clone(&listed),
        |source: &DebianRepositorySource| {
            source
                .status
                .as_ref()
                .and_then(|s| s.versions.clone())
                .unwrap_or_default()
        },
    );

    let options = ManagerOptions::new(&cluster.manager_kubeconfig, &ns).labelled("syncer-latency");
    let mut manager = Manager::spawn(options)?;
    manager.wait_ready(Duration::from_secs(60)).await?;
    wait_seen(&images, "v1.27.0", Duration::from_secs(60))
        .await
        .with_context(|| manager.log_tail())?;

    let (mut total, mut to_listed, mut to_image) = (Vec::new(), Vec::new(), Vec::new());
    for patch in 1..=publications {
        let version = format!("v1.27.{patch}");
        repo.publish_added(&format!("1.27.{patch}-1.1"))?;
        let published = Instant::now();
        resync_source(&client, &ns, "src", patch).await?;
        let image_at = wait_seen(&images, &version, Duration::from_secs(30))
            .await
            .with_context(|| manager.log_tail())?;
        let listed_at = wait_seen(&listed, &version, Duration::from_secs(1)).await?;
        total.push(image_at - published);
        to_listed.push(listed_at - published);
        to_image.push(image_at.saturating_duration_since(listed_at));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let binary = e2e::manager::binary()?;
    println!(
        "syncer_latency: {publications} publications, manager {}",
        binary.display()
    );
    println!("{}", summary("published → MachineImage created", &total));
    println!(
        "{}",
        summary("published → listed by the source", &to_listed)
    );
    println!(
        "{}",
        summary("listed → MachineImage created (syncer)", &to_image)
    );
    manager.terminate(Duration::from_secs(10)).await?;
    Ok(())
}
