//! Waiting with deadlines.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How often the waiting helpers poll.
pub const POLL: Duration = Duration::from_millis(200);

/// Polls `api.get_opt(name)` until `predicate` holds and returns that object. On timeout, the
/// error shows the last object seen.
pub async fn wait_for<K, P>(api: &Api<K>, name: &str, predicate: P, timeout: Duration) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    P: Fn(&K) -> bool,
{
    let deadline = Instant::now() + timeout;
    let mut last: Option<K> = None;
    loop {
        match api.get_opt(name).await {
            Ok(Some(obj)) => {
                if predicate(&obj) {
                    return Ok(obj);
                }
                last = Some(obj);
            }
            Ok(None) => last = None,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "get failed; retrying");
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            let shown = last.as_ref().map_or_else(
                || "<not found>".to_owned(),
                |o| serde_json::to_string_pretty(o).unwrap_or_default(),
            );
            bail!("timed out after {timeout:?} waiting for {name}; last seen:\n{shown}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Calls `probe` until it yields `Some`, for at most `timeout`. `what` names the wait in the
/// timeout error, which also carries the last probe error, if any.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Asserts that `name`'s `metadata.resourceVersion` does not change for `duration` (zero writes
/// at steady state). Returns the object.
pub async fn assert_no_writes<K>(api: &Api<K>, name: &str, duration: Duration) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let first = api.get(name).await?;
    let rv = first.resource_version();
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500).min(duration)).await;
        let now = api.get(name).await?;
        if now.resource_version() != rv {
            bail!(
                "{name} was written at steady state (resourceVersion {rv:?} -> {:?}); before:\n{}\nafter:\n{}",
                now.resource_version(),
                serde_json::to_string_pretty(&first).unwrap_or_default(),
                serde_json::to_string_pretty(&now).unwrap_or_default()
            );
        }
    }
    Ok(first)
}
