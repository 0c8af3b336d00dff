//! The setup the tests share: specs, a fetcher, a repository served on loopback, and the
//! outcome of one sync.

use std::sync::Arc;
use std::time::Duration;

use kubernetes_upgrader::debian::{
    Compression, Fetcher, FixedClock, Keyring, Listing, RepositorySpec, SyncError, SyncOutcome,
};
use kubernetes_upgrader_testkit::debian::{RepoBuilder, RepoServer, Repository, TestKey, compress};

/// Installs the process's rustls provider (once; later calls do nothing).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// kubeadm for amd64 from the flat repository at `url`, with room for any index the tests
/// serve.
pub fn spec(url: &str) -> RepositorySpec {
    RepositorySpec {
        url: url.to_owned(),
        suite: None,
        component: None,
        architecture: "amd64".to_owned(),
        package: "kubeadm".to_owned(),
        max_index_bytes: 64 << 20,
        timeout: Duration::from_secs(10),
    }
}

/// [`spec`] for the `dists/stable/main` layout.
pub fn dists_spec(url: &str) -> RepositorySpec {
    RepositorySpec {
        suite: Some("stable".to_owned()),
        component: Some("main".to_owned()),
        ..spec(url)
    }
}

/// A fetcher on the wall clock.
pub fn fetcher() -> Fetcher {
    init();
    Fetcher::new(None).unwrap()
}

/// `fetcher` with its clock fixed at `now`.
pub fn at(fetcher: Fetcher, now: jiff::Timestamp) -> Fetcher {
    fetcher.with_clock(Arc::new(FixedClock(now)))
}

/// `n` hours.
pub fn hours(n: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_hours(n)
}

/// One sync of `spec` by a new fetcher, verified with `keyring`, without validators.
pub async fn sync(
    spec: &RepositorySpec,
    keyring: Option<&Keyring>,
) -> Result<SyncOutcome, SyncError> {
    fetcher().sync(spec, keyring, None).await
}

/// The listing a sync fetched; fails the test on anything else.
pub fn fetched(outcome: Result<SyncOutcome, SyncError>) -> Listing {
    match outcome {
        Ok(SyncOutcome::Fetched(listing)) => listing,
        other => panic!("expected a listing, got {other:?}"),
    }
}

/// The reason and message of a failed sync; fails the test if it did not fail.
pub fn failure(outcome: Result<SyncOutcome, SyncError>) -> (&'static str, String) {
    match outcome {
        Err(error) => (error.reason(), error.to_string()),
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

/// A server on 127.0.0.1 publishing `repo`.
pub async fn serve(repo: &Repository) -> RepoServer {
    let server = RepoServer::start().await.unwrap();
    server.publish(repo);
    server
}

/// A signed flat repository with kubeadm on two architectures, plus its key and server.
pub async fn flat_repo() -> (RepoServer, TestKey, RepoBuilder) {
    let key = TestKey::generate("archive").unwrap();
    let builder = RepoBuilder::flat()
        .kubernetes("1.31.2-1.1", &["amd64", "arm64"])
        .kubernetes("1.31.1-1.1", &["amd64", "arm64"])
        .kubeadm("1.32.0-1.1", "arm64")
        .signed_by(&key);
    let server = serve(&builder.build().unwrap()).await;
    (server, key, builder)
}

/// `data` gzipped.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    compress(data, Compression::Gzip).unwrap()
}

/// [`sync`] by a fetcher whose clock is fixed at `now`.
pub async fn sync_at(
    now: jiff::Timestamp,
    spec: &RepositorySpec,
    keyring: Option<&Keyring>,
) -> Result<SyncOutcome, SyncError> {
    at(fetcher(), now).sync(spec, keyring, None).await
}
