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
    apply_status_at(api, name, field_manager, status, None).await
}

/// [`apply_status`], refused with a conflict (409) unless the object is still at
/// `resource_version`, when given: a status decided from an older read cannot overwrite a
/// newer one.
pub async fn apply_status_at<K, S>(
    api: &Api<K>,
    name: &str,
    field_manager: &str,
    status: &S,
    resource_version: Option<&str>,
) -> Result<K, ApiError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let mut body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(version) = resource_version {
        body["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    bounded(api.patch_status(
        name,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&body),
    ))
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use api::v1alpha1::{ClusterClassClusterUpgrader, UpgraderStatus};
    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::runtime::fixtures::{STEP, mock_client, within};

    /// A status decided from resourceVersion 7 is applied only while the object is still at 7:
    /// the server's conflict comes back as a 409, not as a write.
    #[tokio::test]
    async fn a_status_decided_from_an_older_read_carries_its_resource_version() {
        let (client, mut server) = mock_client();
        let api: Api<ClusterClassClusterUpgrader> = Api::namespaced(client, "ns");
        let scenario = tokio::spawn(async move {
            let call = server.next().await;
            assert_eq!(call.method, Method::PATCH);
            assert!(
                call.uri.ends_with("/u/status?&force=true&fieldManager=m"),
                "{}",
                call.uri
            );
            assert_eq!(call.body["metadata"], json!({"resourceVersion": "7"}));
            assert_eq!(call.body["status"]["retryHosts"], "x");
            call.fail(409, "Conflict");
            let call = server.next().await;
            assert!(call.body.get("metadata").is_none(), "{}", call.body);
            call.fail(500, "InternalError");
            server
        });
        let status = UpgraderStatus {
            retry_hosts: Some("x".into()),
            ..UpgraderStatus::default()
        };
        let stale = apply_status_at(&api, "u", "m", &status, Some("7")).await;
        assert!(
            matches!(stale, Err(ApiError::Api(kube::Error::Api(ref e))) if e.code == 409),
            "{stale:?}"
        );
        assert!(apply_status(&api, "u", "m", &status).await.is_err());
        within("the scenario", STEP, scenario)
            .await
            .unwrap()
            .assert_no_more_calls()
            .await;
    }
}
