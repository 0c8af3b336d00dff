//! `kubernetes-upgrader versions`: one sync from the command line, printing what
//! `status.versions` would hold.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{Fetcher, Keyring, Listing, RepositorySpec, SyncError, SyncOutcome};

/// Output format of `versions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One `vX.Y.Z` per line.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

/// Lists the Kubernetes versions a Debian repository offers, verified as the controller does.
#[derive(Clone, Debug, clap::Args)]
pub struct VersionsArgs {
    /// Repository root (flat, or dists with --suite and --component), or a direct
    /// `…/Packages{,.gz,.xz}` URL.
    pub url: String,
    /// Suite of a dists-layout repository (for example `bookworm`).
    #[arg(long, requires = "component")]
    pub suite: Option<String>,
    /// Component of a dists-layout repository (for example `main`).
    #[arg(long, requires = "suite")]
    pub component: Option<String>,
    /// Architecture to list (`all` and architecture-less packages also count).
    #[arg(long = "arch", default_value = "amd64")]
    pub arch: String,
    /// Package whose versions are listed.
    #[arg(long, default_value = "kubeadm")]
    pub package: String,
    /// Trusted OpenPGP keyring (armored or binary); repeat for several. Without it the Release
    /// is not verified.
    #[arg(long = "keyring", value_name = "FILE")]
    pub keyring: Vec<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Time allowed for the whole sync, as a Go duration.
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    /// Cap on the decompressed index, as a Kubernetes quantity.
    #[arg(long = "max-index-size", default_value = "256Mi")]
    pub max_index_size: String,
    /// PEM file with extra trusted CA certificates.
    #[arg(long = "ca-bundle", value_name = "FILE")]
    pub ca_bundle: Option<std::path::PathBuf>,
}

/// The JSON printed by `--format json`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonListing<'a> {
    versions: &'a [String],
    debian_versions: &'a [String],
    skipped: u64,
    #[serde(rename = "indexURL")]
    index_url: &'a str,
    #[serde(rename = "indexSHA256")]
    index_sha256: &'a str,
    signing_key_fingerprint: Option<&'a str>,
    /// `Date` of the verified Release.
    release_date: Option<String>,
    /// `Valid-Until` of the verified Release.
    valid_until: Option<String>,
}

/// What `versions` prints on stderr when no keyring was given, as the controller's
/// `Verified=False`.
pub const NOT_VERIFIED_NOTICE: &str = "warning: no --keyring given: the Release and the index were not verified (their signatures and checksums prove nothing)";

/// Runs `versions`. Failures print one `error: Reason: message` line on stderr and exit 1.
pub async fn run_versions(args: VersionsArgs) -> anyhow::Result<ExitCode> {
    match versions(&args).await {
        Ok(listing) => {
            if args.keyring.is_empty() {
                eprintln!("{NOT_VERIFIED_NOTICE}");
            }
            let mut out = std::io::stdout().lock();
            match args.format {
                OutputFormat::Text => {
                    for version in &listing.versions {
                        writeln!(out, "{version}")?;
                    }
                }
                OutputFormat::Json => {
                    let json = JsonListing {
                        versions: &listing.versions,
                        debian_versions: &listing.debian_versions,
                        skipped: listing.skipped,
                        index_url: &listing.index_url,
                        index_sha256: &listing.index_sha256,
                        signing_key_fingerprint: listing.signing_key_fingerprint.as_deref(),
                        release_date: listing.release_date().map(|t| t.to_string()),
                        valid_until: listing.valid_until().map(|t| t.to_string()),
                    };
                    writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            match error.downcast_ref::<SyncError>() {
                Some(sync) => eprintln!("error: {}: {sync}", sync.reason()),
                None => eprintln!("error: {error:#}"),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn versions(args: &VersionsArgs) -> anyhow::Result<Listing> {
    let timeout = api::durations::parse_positive(&args.timeout)
        .with_context(|| format!("--timeout {:?}", args.timeout))?;
    let max_index_bytes = api::quantity::to_bytes(&Quantity(args.max_index_size.clone()))
        .with_context(|| "--max-index-size".to_owned())?;
    let mut keyring: Option<Keyring> = None;
    for path in &args.keyring {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading keyring {}", path.display()))?;
        let parsed =
            Keyring::parse(&bytes).with_context(|| format!("keyring {}", path.display()))?;
        match &mut keyring {
            Some(keyring) => keyring.extend(parsed),
            None => keyring = Some(parsed),
        }
    }
    let ca_bundle = match &args.ca_bundle {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading CA bundle {}", path.display()))?,
        ),
        None => None,
    };
    let fetcher = Fetcher::new(ca_bundle.as_deref())?;
    let spec = RepositorySpec {
        url: args.url.clone(),
        suite: args.suite.clone(),
        component: args.component.clone(),
        architecture: args.arch.clone(),
        package: args.package.clone(),
        max_index_bytes,
        timeout,
    };
    match fetcher.sync(&spec, keyring.as_ref(), None).await? {
        SyncOutcome::Fetched(listing) => Ok(listing),
        SyncOutcome::NotModified => Err(anyhow::anyhow!(
            "the server answered 304 Not Modified to an unconditional request"
        )),
    }
}
