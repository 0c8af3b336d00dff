//! `kubernetes-upgrader envtest use [VERSION]`: the folder of a local control plane on stdout,
//! fetched first when it is not in setup-envtest's folder yet. Progress goes to stderr, so
//! `export KUBEBUILDER_ASSETS=$(kubernetes-upgrader envtest use)` works.

use std::path::PathBuf;
use std::process::ExitCode;

use reqwest::Url;

use super::fetch::Downloader;
use super::store::Staged;
use super::{
    Arch, DEFAULT_INDEX_URL, DEFAULT_VERSION, EnvtestError, Os, Platform, Release, Store,
    VersionSpec,
};
use crate::text::redact_url;

/// Flags of `envtest`.
#[derive(Debug, clap::Args)]
pub struct EnvtestArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: EnvtestCommand,
}

/// Subcommands of `envtest`.
#[derive(Debug, clap::Subcommand)]
pub enum EnvtestCommand {
    /// Print the folder holding etcd, kube-apiserver and kubectl of VERSION, as `setup-envtest
    /// use` does: from setup-envtest's folder, or downloaded from controller-tools' envtest
    /// releases (SHA-512 checked) and unpacked there.
    Use(UseArgs),
}

/// Flags of `envtest use`.
#[derive(Debug, clap::Args)]
pub struct UseArgs {
    /// MAJOR.MINOR for its newest patch release, or MAJOR.MINOR.PATCH.
    #[arg(default_value = DEFAULT_VERSION, value_parser = parse_version)]
    pub version: VersionSpec,
    /// The envtest release index (`envtest-releases.yaml`), for mirrors and air-gapped sites.
    #[arg(long, env = "ENVTEST_INDEX_URL", default_value = DEFAULT_INDEX_URL)]
    pub index_url: String,
    /// Operating system of the binaries; this machine's when omitted.
    #[arg(long, value_enum)]
    pub os: Option<Os>,
    /// Architecture of the binaries; this machine's when omitted.
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// The store folder, instead of setup-envtest's default
    /// (`$HOME/.local/share/kubebuilder-envtest` on Linux).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Use the newest version already in the store, whichever it is, before fetching VERSION.
    #[arg(long)]
    pub prefer_installed: bool,
}

fn parse_version(text: &str) -> Result<VersionSpec, String> {
    text.parse().map_err(|e: EnvtestError| e.to_string())
}

/// Runs `envtest`.
pub async fn run(args: EnvtestArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        EnvtestCommand::Use(args) => {
            let folder = run_use(&args).await?;
            println!("{}", folder.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The folder for `args`, fetched and unpacked when it is not there yet.
pub async fn run_use(args: &UseArgs) -> Result<PathBuf, EnvtestError> {
    let platform = match (args.os, args.arch) {
        (Some(os), Some(arch)) => Platform { os, arch },
        (os, arch) => {
            let here = Platform::current()?;
            Platform {
                os: os.unwrap_or(here.os),
                arch: arch.unwrap_or(here.arch),
            }
        }
    };
    let store = match &args.bin_dir {
        Some(dir) => Store::at(dir),
        None => Store::default_location()?,
    };
    let wanted = (!args.prefer_installed).then_some(&args.version);
    if let Some((version, folder)) = store.installed(wanted, platform) {
        say(&format!(
            "Kubernetes {version} ({platform}) is already in {}",
            folder.display()
        ));
        return Ok(folder);
    }
    let index_url = Url::parse(&args.index_url).map_err(|e| EnvtestError::IndexUrl {
        url: redact_url(&args.index_url),
        message: e.to_string(),
    })?;
    if !matches!(index_url.scheme(), "http" | "https") {
        return Err(EnvtestError::IndexUrl {
            url: redact_url(&args.index_url),
            message: "not an http(s) URL".to_owned(),
        });
    }
    say(&format!(
        "no Kubernetes {} ({platform}) in {}: fetching its etcd, kube-apiserver and kubectl from the envtest releases listed at {}",
        args.version,
        store.versions_dir().display(),
        redact_url(index_url.as_str())
    ));
    // Ctrl-C stops the download, and its staging file goes with it. Unpacking is local and
    // short: it runs to the end, so the folder is either whole or absent.
    let (release, staged) = tokio::select! {
        downloaded = download(&store, &args.version, platform, &index_url) => downloaded?,
        _ = tokio::signal::ctrl_c() => return Err(EnvtestError::Interrupted),
    };
    say("SHA-512 verified; unpacking");
    let name = release.archive.clone();
    let version = release.version.clone();
    let folder = tokio::task::spawn_blocking(move || {
        let folder = store.install(staged.path(), &name, &version, platform);
        drop(staged);
        folder
    })
    .await
    .map_err(|e| EnvtestError::Unpack {
        archive: release.archive.clone(),
        message: e.to_string(),
    })??;
    say(&format!(
        "Kubernetes {} ({platform}) unpacked into {}",
        release.version,
        folder.display()
    ));
    Ok(folder)
}

/// Downloads the newest match of `wanted` into a staging file, its SHA-512 checked.
async fn download(
    store: &Store,
    wanted: &VersionSpec,
    platform: Platform,
    index_url: &Url,
) -> Result<(Release, Staged), EnvtestError> {
    let downloader = Downloader::new()?;
    let release = downloader
        .index(index_url)
        .await?
        .select(wanted, platform, index_url)?;
    store.sweep_stale();
    let (staged, mut file) = store.staging_file(&release.version, platform)?;
    say(&format!(
        "downloading {} from {}",
        release.archive,
        redact_url(release.url.as_str())
    ));
    downloader
        .archive(&release, &mut file, staged.path())
        .await?;
    Ok((release, staged))
}

fn say(line: &str) {
    eprintln!("envtest: {line}");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    use super::*;

    #[test]
    fn use_defaults_to_the_tested_minor_and_the_published_index() {
        let cli = Cli::try_parse_from(["k", "envtest", "use"]).unwrap();
        let Some(Command::Envtest(EnvtestArgs {
            command: EnvtestCommand::Use(args),
        })) = cli.command
        else {
            panic!("expected envtest use");
        };
        assert_eq!(args.version, "1.32".parse().unwrap());
        // ENVTEST_INDEX_URL is not set in unit tests' environment unless a developer set it.
        if std::env::var_os("ENVTEST_INDEX_URL").is_none() {
            assert_eq!(
                args.index_url,
                "https://raw.githubusercontent.com/kubernetes-sigs/controller-tools/HEAD/envtest-releases.yaml"
            );
        }
        assert_eq!(
            (args.os, args.arch, args.prefer_installed),
            (None, None, false)
        );

        let cli = Cli::try_parse_from([
            "k", "envtest", "use", "1.31.4", "--os", "darwin", "--arch", "arm64",
        ])
        .unwrap();
        let Some(Command::Envtest(EnvtestArgs {
            command: EnvtestCommand::Use(args),
        })) = cli.command
        else {
            panic!("expected envtest use");
        };
        assert_eq!(args.version.to_string(), "1.31.4");
        assert_eq!((args.os, args.arch), (Some(Os::Darwin), Some(Arch::Arm64)));

        let error = Cli::try_parse_from(["k", "envtest", "use", "1.x"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("VERSION \"1.x\""), "{error}");
        assert!(Cli::try_parse_from(["k", "envtest", "use", "--os", "windows"]).is_err());
    }
}
