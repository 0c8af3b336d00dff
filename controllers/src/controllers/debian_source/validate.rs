//! The validate step (pure, no client): what CEL cannot check in the spec, turned into a typed,
//! permanent error with its own condition reason. The controller then waits for a spec change
//! instead of retrying.

use std::time::Duration;

use api::v1alpha1::{DEFAULT_INTERVAL, DebianRepositorySource};

use crate::debian::RepositorySpec;

/// First retry delay after a failure; the shortest period a spec may ask for.
pub const RETRY_BASE: Duration = Duration::from_secs(5);

/// A spec this controller cannot act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `spec.interval` cannot be read as a positive duration.
    #[error("spec.interval: {0}")]
    InvalidInterval(String),
    /// `spec.timeout` cannot be read as a positive duration.
    #[error("spec.timeout: {0}")]
    InvalidTimeout(String),
    /// `spec.maxIndexSize` cannot be read as a quantity.
    #[error("spec.maxIndexSize: {0}")]
    InvalidMaxIndexSize(String),
    /// `spec.signedBy` names no key source.
    #[error("spec.signedBy: set one of inline, configMapKeyRef or secretKeyRef")]
    InvalidSignedBy,
}

impl SpecError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidInterval(_) => "InvalidInterval",
            Self::InvalidTimeout(_) => "InvalidTimeout",
            Self::InvalidMaxIndexSize(_) => "InvalidMaxIndexSize",
            Self::InvalidSignedBy => "InvalidSignedBy",
        }
    }
}

/// A spec that can be acted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated {
    /// What the repository client reads.
    pub repository: RepositorySpec,
    /// How often to sync.
    pub interval: Duration,
}

/// `spec.interval`'s default ([`DEFAULT_INTERVAL`]), for a spec whose own interval cannot be
/// read. A unit test proves the constant parses, so the fallback never applies.
pub fn default_interval() -> Duration {
    api::durations::parse_positive(DEFAULT_INTERVAL).unwrap_or(RETRY_BASE)
}

/// Checks `source`'s spec.
pub fn validate(source: &DebianRepositorySource) -> Result<Validated, SpecError> {
    let spec = &source.spec;
    let interval = spec
        .interval()
        .map_err(|e| SpecError::InvalidInterval(e.to_string()))?;
    let timeout = spec
        .timeout()
        .map_err(|e| SpecError::InvalidTimeout(e.to_string()))?;
    let max_index_bytes = spec
        .max_index_bytes()
        .map_err(|e| SpecError::InvalidMaxIndexSize(e.to_string()))?;
    if let Some(signed_by) = &spec.signed_by
        && signed_by.inline.is_none()
        && signed_by.config_map_key_ref.is_none()
        && signed_by.secret_key_ref.is_none()
    {
        return Err(SpecError::InvalidSignedBy);
    }
    Ok(Validated {
        repository: RepositorySpec {
            url: spec.url.clone(),
            suite: spec.suite.clone(),
            component: spec.component.clone(),
            architecture: spec.architecture().to_owned(),
            package: spec.package().to_owned(),
            max_index_bytes,
            timeout,
        },
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(spec: &serde_json::Value) -> DebianRepositorySource {
        serde_json::from_value(json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "DebianRepositorySource",
            "metadata": {"name": "src", "namespace": "team"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn each_spec_error_has_its_own_reason() {
        let url = "http://127.0.0.1:1/Packages";
        let cases = [
            (
                json!({"url": url, "interval": "soon"}),
                "InvalidInterval",
                "spec.interval",
            ),
            (
                json!({"url": url, "interval": "0s"}),
                "InvalidInterval",
                "must be positive",
            ),
            (
                json!({"url": url, "timeout": "forever"}),
                "InvalidTimeout",
                "spec.timeout",
            ),
            (
                json!({"url": url, "maxIndexSize": "lots"}),
                "InvalidMaxIndexSize",
                "spec.maxIndexSize",
            ),
            (
                json!({"url": url, "signedBy": {}}),
                "InvalidSignedBy",
                "spec.signedBy",
            ),
        ];
        for (spec, reason, message) in cases {
            let err = validate(&source(&spec)).unwrap_err();
            assert_eq!(err.reason(), reason, "{spec}");
            assert!(err.to_string().contains(message), "{err} for {spec}");
        }
    }

    #[test]
    fn a_valid_spec_keeps_its_interval_and_defaults() {
        let valid = validate(&source(&json!({"url": "http://x/", "interval": "90s"}))).unwrap();
        assert_eq!(valid.interval, Duration::from_secs(90));
        assert_eq!(valid.repository.architecture, "amd64");
        assert_eq!(valid.repository.package, "kubeadm");
        let defaulted = validate(&source(&json!({"url": "http://x/"}))).unwrap();
        assert_eq!(defaulted.interval, default_interval());
        assert_eq!(default_interval(), Duration::from_secs(300));
    }
}
