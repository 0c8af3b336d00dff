//! Shared parts of the bench binaries: environment knobs and the API server's own request counts.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use kube::Client;

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
