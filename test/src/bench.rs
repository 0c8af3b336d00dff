//! Shared parts of the bench binaries: environment knobs and the API server's own request counts.

use std::collections::BTreeMap;

use std::time::Instant;

use anyhow::{Context, Result};
use futures::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{mpsc, oneshot};

use crate::manager;

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
