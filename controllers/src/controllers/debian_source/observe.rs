//! The observe step: the keys `spec.signedBy` names ([`super::keys`]), then one sync of the
//! repository through the [`Repository`], handed the validators of the last listing the status
//! holds, so that an unchanged repository answers 304.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use api::v1alpha1::{DebianRepositorySource, DebianRepositorySourceStatus};
use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::{Digest as _, Sha256};

use super::keys::load_keyring;
use super::validate::Validated;
use super::{Context, Failure, Memory};
use crate::debian::{
    Fetcher, Keyring, RepositorySpec, SharedClock, SyncError, SyncOutcome, Validators,
    index_url_belongs_to,
};

/// Syncs a repository; the HTTP client in production, canned results in tests.
pub trait Repository: Send + Sync {
    /// Fetches and verifies the repository for the source `user` (its uid).
    fn sync<'a>(
        &'a self,
        user: &'a str,
        spec: &'a RepositorySpec,
        ca_bundle: Option<&'a str>,
        keyring: Option<&'a Keyring>,
        previous: Option<&'a Validators>,
    ) -> BoxFuture<'a, Result<SyncOutcome, SyncError>>;

    /// The source `user` is gone: drop what only it used.
    fn forget(&self, _user: &str) {}
}

/// The production [`Repository`]: one HTTP client per distinct CA bundle, keyed by the bundle's
/// SHA256 and dropped once no source uses it.
#[derive(Default)]
pub struct HttpRepository {
    clients: Mutex<Clients>,
    /// The clock Release times are checked with; the wall clock when unset.
    clock: Option<SharedClock>,
}

#[derive(Default)]
struct Clients {
    by_bundle: HashMap<Option<[u8; 32]>, Arc<Fetcher>>,
    bundle_of: HashMap<String, Option<[u8; 32]>>,
}

impl Clients {
    fn evict_unused(&mut self) {
        let Self {
            by_bundle,
            bundle_of,
        } = self;
        by_bundle.retain(|bundle, _| bundle_of.values().any(|b| b == bundle));
    }
}

impl HttpRepository {
    /// Checks Release times against `clock` instead of the wall clock.
    #[must_use]
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            clock: Some(clock),
            ..Self::default()
        }
    }

    pub(super) fn fetcher(
        &self,
        user: &str,
        ca_bundle: Option<&str>,
    ) -> Result<Arc<Fetcher>, SyncError> {
        let bundle: Option<[u8; 32]> = ca_bundle.map(|pem| Sha256::digest(pem).into());
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.bundle_of.insert(user.to_owned(), bundle) != Some(bundle) {
            clients.evict_unused();
        }
        if let Some(fetcher) = clients.by_bundle.get(&bundle) {
            return Ok(Arc::clone(fetcher));
        }
        let mut fetcher = Fetcher::new(ca_bundle)?;
        if let Some(clock) = &self.clock {
            fetcher = fetcher.with_clock(Arc::clone(clock));
        }
        let fetcher = Arc::new(fetcher);
        clients.by_bundle.insert(bundle, Arc::clone(&fetcher));
        Ok(fetcher)
    }

    #[cfg(test)]
    pub(super) fn clients(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_bundle
            .len()
    }
}

impl Repository for HttpRepository {
    fn sync<'a>(
        &'a self,
        user: &'a str,
        spec: &'a RepositorySpec,
        ca_bundle: Option<&'a str>,
        keyring: Option<&'a Keyring>,
        previous: Option<&'a Validators>,
    ) -> BoxFuture<'a, Result<SyncOutcome, SyncError>> {
        async move {
            self.fetcher(user, ca_bundle)?
                .sync(spec, keyring, previous)
                .await
        }
        .boxed()
    }

    fn forget(&self, user: &str) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.bundle_of.remove(user).is_some() {
            clients.evict_unused();
        }
    }
}

/// Reads the keys and syncs the repository. Also returns the memory key of the spec and keys the
/// sync used.
pub(super) async fn observe(
    source: &DebianRepositorySource,
    valid: &Validated,
    current: &DebianRepositorySourceStatus,
    ctx: &Context,
    namespace: &str,
    uid: &str,
) -> (Result<SyncOutcome, Failure>, Option<String>) {
    let keyring = match &source.spec.signed_by {
        Some(signed_by) => match load_keyring(&ctx.core.client, namespace, signed_by).await {
            Ok(keyring) => Some(keyring),
            Err(err) => return (Err(Failure::Keys(err)), None),
        },
        None => None,
    };
    let ca_bundle = source.spec.ca_bundle.as_deref();
    let key = memory_key(&valid.repository, ca_bundle, keyring.as_ref());
    let validators = previous(
        &valid.repository,
        keyring.is_some(),
        current,
        &ctx.remembered(uid),
        &key,
    );
    let result = ctx
        .repository
        .sync(
            uid,
            &valid.repository,
            ca_bundle,
            keyring.as_ref(),
            validators.as_ref(),
        )
        .await
        .map_err(Failure::Sync);
    (result, Some(key))
}

/// What the client is handed as `previous`. The accepted Release's `Date` and `Valid-Until` come
/// from status, so they hold across restarts and leader changes, as long as the source is
/// `signed` (only a verified Release's times mean anything) and the status's listing was read
/// through the Release the spec reads now. The HTTP validators come from memory, for
/// the same spec and keys only, and only while the status still holds the listing they were
/// remembered with.
pub(super) fn previous(
    spec: &RepositorySpec,
    signed: bool,
    current: &DebianRepositorySourceStatus,
    remembered: &Memory,
    key: &str,
) -> Option<Validators> {
    let http = remembered
        .validators
        .as_ref()
        .filter(|(_, sha)| remembered.key == key && current.index_sha256.as_ref() == Some(sha))
        .map(|(validators, _)| validators.clone());
    let same_repository = signed
        && current
            .index_url
            .as_deref()
            .is_some_and(|url| index_url_belongs_to(spec, url));
    let accepted = |time: &Option<Time>| time.as_ref().filter(|_| same_repository).map(|t| t.0);
    let release_date = accepted(&current.release_date);
    let valid_until = accepted(&current.release_valid_until);
    if http.is_none() && release_date.is_none() && valid_until.is_none() {
        return None;
    }
    Some(Validators {
        release_date,
        valid_until,
        ..http.unwrap_or_default()
    })
}

/// Identifies the spec and keys that validators belong to; a digest, so that memory holds no
/// credentials from the URL.
pub(super) fn memory_key(
    spec: &RepositorySpec,
    ca_bundle: Option<&str>,
    keyring: Option<&Keyring>,
) -> String {
    let bundle = hex::encode(Sha256::digest(ca_bundle.unwrap_or_default()));
    let fingerprints = keyring
        .map(Keyring::fingerprints)
        .unwrap_or_default()
        .join(",");
    // Debug redacts the URL; the URL itself is hashed in, so a new password is a new spec.
    let text = format!("{spec:?}|{}|{bundle}|{fingerprints}", spec.url);
    hex::encode(Sha256::digest(text))
}
