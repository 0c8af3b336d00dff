//! Status writes: a forced server-side apply of only the fields a controller owns, bounded in
//! time so that an API server that never answers cannot hold a reconcile slot.

use std::fmt::Debug;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long one API call of a reconcile may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// An API call (a read or a write) that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API server refused it, or could not be reached.
    #[error("the API server refused or failed the call")]
    Api(#[source] kube::Error),
    /// The API server did not answer within [`API_TIMEOUT`].
    #[error("the API server did not answer within {0:?}")]
    TimedOut(Duration),
    /// The answer was larger than the caller reads.
    #[error("{0}")]
    TooMany(String),
}

/// [`ApiError`] under the name the in-place flow's modules still use.
pub type WriteError = ApiError;

/// Runs one API call under [`API_TIMEOUT`].
pub async fn bounded<T>(call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, ApiError> {
    tokio::time::timeout(API_TIMEOUT, call)
        .await
        .map_err(|_| ApiError::TimedOut(API_TIMEOUT))?
        .map_err(ApiError::Api)
}

/// Writes `status` through the status subresource by a forced server-side apply under
/// `field_manager`, carrying only `apiVersion`, `kind` and the status we own.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    field_manager: &str,
    status: &S,
) -> Result<K, ApiError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    bounded(api.patch_status(
        name,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&body),
    ))
    .await
}
