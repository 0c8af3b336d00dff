//! The dereference step: the trusted keys `spec.signedBy` names, read from the spec, a ConfigMap
//! or a Secret. A missing object or key has its own reason, never `SignatureInvalid`.

use api::v1alpha1::SignedBy;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use crate::debian::{Keyring, SyncError};
use crate::runtime::status::{ApiError, bounded};

/// Why the trusted keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The ConfigMap or Secret does not exist.
    #[error("spec.signedBy.{field}: {kind} {namespace}/{name} not found")]
    NotFound {
        /// `configMapKeyRef` or `secretKeyRef`.
        field: &'static str,
        /// `ConfigMap` or `Secret`.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The ConfigMap or Secret has no such key.
    #[error("spec.signedBy.{field}: {kind} {namespace}/{name} has no key {key:?}")]
    KeyMissing {
        /// `configMapKeyRef` or `secretKeyRef`.
        field: &'static str,
        /// `ConfigMap` or `Secret`.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// Reading the ConfigMap or Secret failed.
    #[error("spec.signedBy.{field}: reading {kind} {namespace}/{name}")]
    Read {
        /// `configMapKeyRef` or `secretKeyRef`.
        field: &'static str,
        /// `ConfigMap` or `Secret`.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: ApiError,
    },
    /// The keys were read but are not a usable keyring.
    #[error("spec.signedBy: the keys cannot be used")]
    Unusable(#[source] SyncError),
}

impl KeyError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } | Self::KeyMissing { .. } => "SignedByNotFound",
            Self::Read { .. } => "SignedByUnreadable",
            Self::Unusable(_) => "SignedByInvalid",
        }
    }
}

/// Reads the trusted keys named by `signed_by`, in `namespace`.
pub async fn load_keyring(
    client: &Client,
    namespace: &str,
    signed_by: &SignedBy,
) -> Result<Keyring, KeyError> {
    let bytes = if let Some(inline) = &signed_by.inline {
        inline.clone().into_bytes()
    } else if let Some(selector) = &signed_by.config_map_key_ref {
        let key = &selector.key;
        read_key(
            client,
            namespace,
            "configMapKeyRef",
            &selector.name,
            key,
            |map: &ConfigMap| {
                let text = map
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.clone().into_bytes());
                text.or_else(|| {
                    map.binary_data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|b| b.0.clone())
                })
            },
        )
        .await?
    } else if let Some(selector) = &signed_by.secret_key_ref {
        let key = &selector.key;
        read_key(
            client,
            namespace,
            "secretKeyRef",
            &selector.name,
            key,
            |secret: &Secret| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|b| b.0.clone())
            },
        )
        .await?
    } else {
        // The validate step refuses a signedBy without a source; an empty keyring verifies
        // nothing, so this can only fail closed.
        Vec::new()
    };
    Keyring::parse(&bytes).map_err(KeyError::Unusable)
}

/// Reads `key` of the ConfigMap or Secret `name`, through `extract`.
async fn read_key<K>(
    client: &Client,
    namespace: &str,
    field: &'static str,
    name: &str,
    key: &str,
    extract: impl Fn(&K) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, KeyError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&()).into_owned();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let object = bounded(api.get_opt(name))
        .await
        .map_err(|source| KeyError::Read {
            field,
            kind: kind.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| KeyError::NotFound {
            field,
            kind: kind.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
    extract(&object).ok_or_else(|| KeyError::KeyMissing {
        field,
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        key: key.to_owned(),
    })
}
