//! A verified, streaming client for Kubernetes Debian repositories (pkgs.k8s.io and mirrors).
//!
//! `sync` fetches the signed Release, verifies it, picks and streams the best index it lists,
//! checks the index's size and SHA256, and maps the matching paragraphs to Kubernetes versions,
//! without ever holding the whole index in memory.
//!
//! - [`Keyring`] holds the trusted keys (armored or binary, several keys, subkeys count).
//! - [`Fetcher::sync`] reads the repository: `InRelease` (or `Release` + `Release.gpg`), verified
//!   when a keyring is given, then the best index the Release lists (`.gz`, `.xz`, plain, falling
//!   back on 404; at `by-hash/SHA256/<hex>` first with `Acquire-By-Hash: yes`), checked for size
//!   and SHA256 while it is decompressed and scanned on a blocking thread.
//!   A verified Release is refused when past its `Valid-Until`, dated more than
//!   [`MAX_CLOCK_SKEW`] ahead, or older than the last accepted one ([`Validators`] carries its
//!   `Date` and `Valid-Until`); a 304 is refused once the remembered `Valid-Until` has passed.
//!   Without a keyring the Release is still used when present; without any Release the indexes
//!   are probed directly, as v0.6 did. A URL whose parsed path ends in `/Packages{,.gz,.xz}`
//!   (with or without a query) is read as written (verified against the InRelease beside it
//!   when a keyring is given).
//! - [`message`] bounds, cleans and redacts every text the client renders.
//! - [`scan`] is the streaming paragraph scanner, [`index`] the decompress-hash-scan pipeline,
//!   [`versions`] the Debian → Kubernetes version mapping and [`cli`] the `versions` subcommand.
//!   The signed test repositories and their loopback server live in the `testkit` crate.

use std::sync::Arc;
use std::time::Duration;

pub use crate::text as message;

pub mod cli;
pub mod fetch;
pub mod index;
pub mod keyring;
pub mod release;
pub mod scan;
pub mod versions;

pub use cli::{OutputFormat, VersionsArgs, run_versions};
pub use fetch::{Fetcher, index_url_belongs_to};
pub use index::Compression;
pub use keyring::Keyring;

/// Where the repository is and what to read from it. Its `Debug` output redacts the URL's
/// `user:password@`, so a span or log field that prints it leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct RepositorySpec {
    /// Repository root (flat or dists layout), or a direct `…/Packages{,.gz,.xz}` URL.
    pub url: String,
    /// Suite for the dists layout; set together with `component`.
    pub suite: Option<String>,
    /// Component for the dists layout; set together with `suite`.
    pub component: Option<String>,
    /// Architecture to match; `all` and missing architectures also match.
    pub architecture: String,
    /// Package to match, normally `kubeadm`.
    pub package: String,
    /// Cap on the decompressed index, in bytes.
    pub max_index_bytes: u64,
    /// Time allowed for the whole sync.
    pub timeout: Duration,
}

impl std::fmt::Debug for RepositorySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            url,
            suite,
            component,
            architecture,
            package,
            max_index_bytes,
            timeout,
        } = self;
        f.debug_struct("RepositorySpec")
            .field("url", &message::redact_url(url))
            .field("suite", suite)
            .field("component", component)
            .field("architecture", architecture)
            .field("package", package)
            .field("max_index_bytes", max_index_bytes)
            .field("timeout", timeout)
            .finish()
    }
}

/// What the client remembers about the last accepted sync: the HTTP validators for conditional
/// requests, and the accepted Release's `Date` and `Valid-Until`, so that a later 304 is still
/// held to the Release's expiry and an older Release is recognised as a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// URL the validators belong to.
    pub url: String,
    /// `ETag` response header.
    pub etag: Option<String>,
    /// `Last-Modified` response header.
    pub last_modified: Option<String>,
    /// `Date` of the accepted (verified) Release.
    pub release_date: Option<jiff::Timestamp>,
    /// `Valid-Until` of the accepted (verified) Release.
    pub valid_until: Option<jiff::Timestamp>,
}

/// What one sync found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// `vMAJOR.MINOR.PATCH`, de-duplicated and sorted ascending by semver.
    pub versions: Vec<String>,
    /// The raw Debian versions of the matching paragraphs, in file order.
    pub debian_versions: Vec<String>,
    /// Matching paragraphs whose upstream version is not semver.
    pub skipped: u64,
    /// The index read, with any `user:password@` redacted.
    pub index_url: String,
    /// SHA256 of the index bytes as downloaded, lower-case hex.
    pub index_sha256: String,
    /// Fingerprint (upper-case hex) of the key whose signature verified, when a keyring was given.
    pub signing_key_fingerprint: Option<String>,
    /// What to pass back as `previous` next time: validators, Release `Date` and `Valid-Until`.
    pub validators: Validators,
}

impl Listing {
    /// `Date` of the accepted Release (verified Releases only).
    pub fn release_date(&self) -> Option<jiff::Timestamp> {
        self.validators.release_date
    }

    /// `Valid-Until` of the accepted Release (verified Releases only).
    pub fn valid_until(&self) -> Option<jiff::Timestamp> {
        self.validators.valid_until
    }
}

/// The result of a sync.
// Boxing the listing would change the variant's shape for every caller; one per sync is cheap.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The server answered 304 to the conditional request: nothing changed (and the remembered
    /// Release is still within its `Valid-Until`).
    NotModified,
    /// A new listing.
    Fetched(Listing),
}

/// Most a Release's `Date` may lie ahead of our clock (apt refuses a Release that is "not valid
/// yet"; a little skew between mirror and controller clocks is tolerated).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The time source of a [`Fetcher`]: the wall clock in production, a fixed time in tests.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> jiff::Timestamp;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

/// A clock that always says the same time.
#[derive(Clone, Copy, Debug)]
pub struct FixedClock(pub jiff::Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> jiff::Timestamp {
        self.0
    }
}

/// The shared clock handle a [`Fetcher`] holds.
pub type SharedClock = Arc<dyn Clock>;

/// A failed sync. `reason()` is the condition reason. Every message is redacted (no
/// `user:password@`), free of control characters and at most [`message::MAX_MESSAGE_BYTES`].
#[derive(Debug)]
pub enum SyncError {
    /// Connection, timeout, idle read timeout, refused redirect or truncated body.
    FetchFailed { url: String, message: String },
    /// A non-success HTTP status.
    HttpStatus { url: String, status: u16 },
    /// The Release signature did not verify against any trusted key, or was missing.
    SignatureInvalid(String),
    /// The index does not match the size or SHA256 the Release lists.
    ChecksumMismatch(String),
    /// The decompressed index, or one of its lines, exceeds the cap.
    IndexTooLarge(String),
    /// The Release or index could not be parsed or decompressed.
    ParseError(String),
    /// No paragraph matched the package and architecture.
    NoMatchingPackages {
        package: String,
        architecture: String,
        index_url: String,
    },
    /// The server answered 304 for a Release whose `Valid-Until` has passed since it was
    /// accepted: a stale or forged 304 must not keep an expired Release alive.
    ReleaseExpired(String),
    /// The verified Release is older (`Date`) than the last accepted one: a replay.
    ReleaseReplayed(String),
    /// The verified Release's `Date` is more than [`MAX_CLOCK_SKEW`] in the future.
    ReleaseNotYetValid(String),
    /// Neither `InRelease` nor `Release` exists: the URL is not a repository root.
    RepositoryNotFound { url: String },
}

impl SyncError {
    /// The condition reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::FetchFailed { .. } => "FetchFailed",
            Self::HttpStatus { .. } | Self::RepositoryNotFound { .. } => "HTTPStatus",
            Self::SignatureInvalid(_) => "SignatureInvalid",
            Self::ChecksumMismatch(_) => "ChecksumMismatch",
            Self::IndexTooLarge(_) => "IndexTooLarge",
            Self::ParseError(_) => "ParseError",
            Self::NoMatchingPackages { .. } => "NoMatchingPackages",
            Self::ReleaseExpired(_) => "ReleaseExpired",
            Self::ReleaseReplayed(_) => "ReleaseReplayed",
            Self::ReleaseNotYetValid(_) => "ReleaseNotYetValid",
        }
    }

    /// Same as [`SyncError::reason`].
    pub fn category(&self) -> &'static str {
        self.reason()
    }

    /// True when the failure says the repository's content could not be trusted (the
    /// `Verified` condition turns False), rather than that it could not be read.
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            Self::SignatureInvalid(_)
                | Self::ChecksumMismatch(_)
                | Self::ReleaseExpired(_)
                | Self::ReleaseReplayed(_)
                | Self::ReleaseNotYetValid(_)
        )
    }

    fn raw_message(&self) -> String {
        match self {
            Self::FetchFailed { url, message } => format!("fetching {url}: {message}"),
            Self::HttpStatus { url, status } => format!("fetching {url}: HTTP {status}"),
            Self::RepositoryNotFound { url } => format!(
                "repository root not found: {url} has neither InRelease nor Release (HTTP 404)"
            ),
            Self::SignatureInvalid(m)
            | Self::ChecksumMismatch(m)
            | Self::IndexTooLarge(m)
            | Self::ParseError(m)
            | Self::ReleaseExpired(m)
            | Self::ReleaseReplayed(m)
            | Self::ReleaseNotYetValid(m) => m.clone(),
            Self::NoMatchingPackages {
                package,
                architecture,
                index_url,
            } => format!("no {package} packages for architecture {architecture} in {index_url}"),
        }
    }
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&message::bounded(&self.raw_message()))
    }
}

impl std::error::Error for SyncError {}
