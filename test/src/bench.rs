//! Shared parts of the bench binaries: environment knobs, the API server's own request counts, and
//! the fleet of Clusters with their upgraders that the upgrade benches build.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::v1alpha1::MachineImage;
use futures::{StreamExt, TryStreamExt};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::manager::{self, Manager};
use crate::{capi, condition_reason, to_json};

/// Our API group.
pub const GROUP: &str = "kubernetesupgraded.dimitrikoshkin.com";
/// The upgrader kind the fleet benches give each Cluster.
pub const UPGRADER_KIND: &str = "ClusterClassClusterUpgrader";
/// The Cluster API version the fleet benches write.
pub const CAPI_VERSION: &str = "v1beta1";

/// The verbs of `apiserver_request_total` that write (a server-side apply PATCH counts as `APPLY`).
pub const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "DELETE", "APPLY"];

/// Whether `verb` writes.
pub fn is_write(verb: &str) -> bool {
    WRITE_VERBS.contains(&verb)
}

/// The environment variable `key` parsed, or `default` when it is unset or empty.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T> {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{key}={v} does not parse")),
        _ => Ok(default),
    }
}

/// Request counts keyed by (verb, `resource[/subresource][.group]`).
pub type Counts = BTreeMap<(String, String), f64>;

/// `apiserver_request_total` summed by (verb, resource), for the (group, resource) pairs `keep`
/// selects.
pub async fn request_counts(client: &Client, keep: impl Fn(&str, &str) -> bool) -> Result<Counts> {
    let request = ::http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(request)
        .await
        .context("GET /metrics on the apiserver")?;
    let mut sums = Counts::new();
    for sample in manager::parse_metrics(&text)
        .iter()
        .filter(|s| s.name == "apiserver_request_total")
    {
        let group = sample.label("group").unwrap_or_default();
        let resource = sample.label("resource").unwrap_or_default();
        if !keep(group, resource) {
            continue;
        }
        let mut name = resource.to_owned();
        if let Some(sub) = sample.label("subresource").filter(|s| !s.is_empty()) {
            name = format!("{name}/{sub}");
        }
        if !group.is_empty() {
            name = format!("{name}.{group}");
        }
        let verb = sample.label("verb").unwrap_or_default().to_owned();
        *sums.entry((verb, name)).or_insert(0.0) += sample.value;
    }
    Ok(sums)
}

/// `after - before`, per key of `after`.
pub fn diff(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// `apiserver_request_total` summed by (verb, resource), for our group, Cluster API's, events and
/// leases: what the upgrade benches count.
pub async fn pipeline_requests(client: &Client) -> Result<Counts> {
    request_counts(client, |group, resource| {
        group == "kubernetesupgraded.dimitrikoshkin.com"
            || group == crate::capi::GROUP
            || resource == "events"
            || resource == "leases"
    })
    .await
}

/// The machine's load average over 1, 5 and 15 minutes, as `/proc/loadavg` gives it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// Watches `api` and sends the key `key` gives an object, with the instant it was seen, each time
/// `key` gives one (the caller keeps the first per key). The second value resolves once the
/// watch's initial list is done.
pub fn first_seen(
    api: Api<DynamicObject>,
    key: impl Fn(&DynamicObject) -> Option<String> + Send + 'static,
) -> (
    mpsc::UnboundedReceiver<(String, Instant)>,
    impl Future<Output = Result<()>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (init_tx, init_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut init_tx = Some(init_tx);
        let events = watcher(api, watcher::Config::default());
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let object = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                Ok(watcher::Event::InitDone) => {
                    if let Some(init) = init_tx.take() {
                        let _ = init.send(());
                    }
                    continue;
                }
                _ => continue,
            };
            if let Some(seen) = key(&object)
                && tx.send((seen, Instant::now())).is_err()
            {
                return;
            }
        }
    });
    let initialised = async move {
        init_rx
            .await
            .context("the watch ended before its initial list")
    };
    (rx, initialised)
}

/// A static MachineImage (its `spec.id` set, so no build) labelled `label`.
pub fn static_image(name: &str, version: &str, label: (&str, &str)) -> Result<MachineImage> {
    Ok(serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/v1alpha1"), "kind": "MachineImage",
        "metadata": {"name": name, "labels": {label.0: label.1}},
        "spec": {"version": version, "id": format!("ami-{version}"), "jobTemplate": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "build", "image": "registry.example/builder:v1"}]
        }}},
    }))?)
}

/// The [`UPGRADER_KIND`] upgraders of `ns`.
pub fn upgraders(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(GROUP, "v1alpha1", UPGRADER_KIND);
    let plural = format!("{}s", UPGRADER_KIND.to_lowercase());
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, &plural),
    )
}

/// One minimal Cluster `name` with `labels` at `version`, reported finished, and its upgrader of
/// the same name on the Plan `plan`.
pub async fn fleet_member(
    client: &Client,
    ns: &str,
    name: &str,
    version: &str,
    labels: &Value,
    plan: &str,
) -> Result<()> {
    let cluster: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{}/{CAPI_VERSION}", capi::GROUP), "kind": "Cluster",
        "metadata": {"name": name, "labels": labels},
        "spec": {"topology": {"class": "quick-start", "version": version}},
    }))?;
    capi::clusters(client, ns, CAPI_VERSION)
        .create(&PostParams::default(), &cluster)
        .await?;
    capi::rollout_finished(client, ns, CAPI_VERSION, name, version).await?;
    let upgrader: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/v1alpha1"), "kind": UPGRADER_KIND,
        "metadata": {"name": name},
        "spec": {"clusterName": name, "planRef": {"name": plan}},
    }))?;
    upgraders(client, ns)
        .create(&PostParams::default(), &upgrader)
        .await?;
    Ok(())
}

/// The name of the fleet's `i`th Cluster and its upgrader.
pub fn cluster_name(i: usize) -> String {
    format!("c-{i:04}")
}

/// The fleet: `count` [`fleet_member`]s named by [`cluster_name`] at `version` on the Plan
/// `plan`, `labels(i)` the `i`th one's labels, made 16 at a time.
pub async fn create_fleet(
    client: &Client,
    ns: &str,
    count: usize,
    version: &str,
    plan: &str,
    labels: impl Fn(usize) -> Value,
) -> Result<()> {
    futures::stream::iter(0..count)
        .map(|i| {
            let labels = labels(i);
            async move { fleet_member(client, ns, &cluster_name(i), version, &labels, plan).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

/// Waits up to `timeout` until all `count` upgraders report their Cluster on the latest version.
pub async fn wait_all_up_to_date(
    upgraders: &Api<DynamicObject>,
    count: usize,
    manager: &Manager,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = upgraders.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|u| {
                condition_reason(&to_json(u), "Ready").as_deref()
                    == Some("ClusterUsingLatestVersion")
            })
            .count();
        if done == count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "only {done} of {count} upgraders up to date after {timeout:?}; log:\n{}",
                manager.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The sum of the counts `filter(verb, resource)` selects.
pub fn sum(counts: &Counts, filter: impl Fn(&str, &str) -> bool) -> f64 {
    counts
        .iter()
        .filter(|((verb, resource), _)| filter(verb, resource))
        .map(|(_, v)| v)
        .sum::<f64>()
        + 0.0 // an empty f64 sum is -0.0
}

/// Writes to Cluster specs (a server-side apply PATCH counts as `APPLY`), not their status.
pub fn cluster_writes(counts: &Counts) -> f64 {
    sum(counts, |verb, resource| {
        (verb == "PATCH" || verb == "APPLY") && resource == format!("clusters.{}", capi::GROUP)
    })
}

/// Writes to our group, status included.
pub fn our_writes(counts: &Counts) -> f64 {
    sum(counts, |verb, resource| {
        is_write(verb) && resource.ends_with(GROUP)
    })
}

/// Every non-zero count of `window`, scaled by `scale`, then the totals that the targets name.
pub fn report_window(out: &mut String, title: &str, window: &Counts, scale: f64) {
    let _ = writeln!(out, "\n{title}:");
    for ((verb, resource), delta) in window {
        if *delta > 0.0 {
            let _ = writeln!(
                out,
                "  {:<60} {:>10.1}",
                format!("{verb} {resource}"),
                delta * scale
            );
        }
    }
    let clusters = sum(window, |verb, resource| {
        is_write(verb) && resource.ends_with(capi::GROUP)
    });
    let leases = sum(window, |verb, resource| {
        is_write(verb) && resource.starts_with("leases")
    });
    let _ = writeln!(
        out,
        "  writes to clusters {:.1}, to {GROUP} {:.1}, to leases {:.1}",
        clusters * scale,
        our_writes(window) * scale,
        leases * scale
    );
}

/// A controller's reconciles so far: (runs, seconds spent), from the manager's metrics.
pub async fn reconciles(manager: &Manager, controller: &str) -> Result<(f64, f64)> {
    let samples = manager::parse_metrics(&manager.metrics_text().await?);
    let controller = [("controller", controller)];
    Ok((
        manager::metric_sum(
            &samples,
            "kubernetes_upgrader_reconcile_runs_total",
            &controller,
        ),
        manager::metric_sum(
            &samples,
            "kubernetes_upgrader_reconcile_duration_seconds_sum",
            &controller,
        ),
    ))
}
