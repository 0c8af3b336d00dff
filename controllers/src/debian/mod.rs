//! A verified, streaming client for Kubernetes Debian repositories (pkgs.k8s.io and mirrors).
//!
//! `sync` fetches the signed Release, verifies it, picks and streams the best index it lists,
//! checks the index's size and SHA256, and maps the matching paragraphs to Kubernetes versions,
//! without ever holding the whole index in memory.
//!
//! - [`Keyring`] holds the trusted keys (armored or binary, several keys, subkeys count).
//! - [`Fetcher::sync`] reads the repository: `InRelease` (or `Release` + `Release.gpg`), verified
//!   when a keyring is given, then the best index the Release lists (`.xz`, `.gz`, plain, falling
//!   back on 404), checked for size and SHA256 while it is decompressed and scanned.
//!   Without a keyring the Release is still used when present; without any Release the indexes
//!   are probed directly, as v0.6 did. A URL ending in `/Packages{,.gz,.xz}` is read directly
//!   (verified against the InRelease beside it when a keyring is given).
//! - [`scan`] is the streaming paragraph scanner, [`index`] the decompress-hash-scan pipeline,
//!   [`versions`] the Debian → Kubernetes version mapping and [`cli`] the `versions` subcommand.
//!   The signed test repositories and their loopback server live in the `testkit` crate.

use std::time::Duration;

pub mod cli;
pub mod fetch;
pub mod index;
pub mod keyring;
pub mod release;
pub mod scan;
pub mod versions;

pub use cli::{OutputFormat, VersionsArgs, run_versions};
pub use fetch::Fetcher;
pub use index::Compression;
pub use keyring::Keyring;

/// Where the repository is and what to read from it.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Validators from the last successful sync, for conditional requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// URL the validators belong to.
    pub url: String,
    /// `ETag` response header.
    pub etag: Option<String>,
    /// `Last-Modified` response header.
    pub last_modified: Option<String>,
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
    /// The index read.
    pub index_url: String,
    /// SHA256 of the index bytes as downloaded, lower-case hex.
    pub index_sha256: String,
    /// Fingerprint (upper-case hex) of the key whose signature verified, when a keyring was given.
    pub signing_key_fingerprint: Option<String>,
    /// Validators to send next time.
    pub validators: Validators,
}

/// The result of a sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The server answered 304 to the conditional request: nothing changed.
    NotModified,
    /// A new listing.
    Fetched(Listing),
}

/// A failed sync. `reason()` is the condition reason.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Connection, timeout, redirect limit or truncated body.
    #[error("fetching {url}: {message}")]
    FetchFailed { url: String, message: String },
    /// A non-success HTTP status.
    #[error("fetching {url}: HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    /// The Release signature did not verify against any trusted key, or was missing.
    #[error("{0}")]
    SignatureInvalid(String),
    /// The index does not match the size or SHA256 the Release lists.
    #[error("{0}")]
    ChecksumMismatch(String),
    /// The decompressed index, or one of its lines, exceeds the cap.
    #[error("{0}")]
    IndexTooLarge(String),
    /// The Release or index could not be parsed or decompressed.
    #[error("{0}")]
    ParseError(String),
    /// No paragraph matched the package and architecture.
    #[error("no {package} packages for architecture {architecture} in {index_url}")]
    NoMatchingPackages {
        package: String,
        architecture: String,
        index_url: String,
    },
}

impl SyncError {
    /// The condition reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::FetchFailed { .. } => "FetchFailed",
            Self::HttpStatus { .. } => "HTTPStatus",
            Self::SignatureInvalid(_) => "SignatureInvalid",
            Self::ChecksumMismatch(_) => "ChecksumMismatch",
            Self::IndexTooLarge(_) => "IndexTooLarge",
            Self::ParseError(_) => "ParseError",
            Self::NoMatchingPackages { .. } => "NoMatchingPackages",
        }
    }
}
