//! `kubernetes-upgrader envtest use`: a local control plane (etcd, kube-apiserver, kubectl) for
//! the end-to-end suites and the demo, fetched the way `setup-envtest use` does, with no Go.
//!
//! - [`index`] reads the release index controller-tools publishes (`envtest-releases.yaml`:
//!   `releases → vX.Y.Z → envtest-vX.Y.Z-OS-ARCH.tar.gz → {hash, selfLink}`, the hash being the
//!   archive's SHA-512 in hex) and picks the newest patch of a minor for one platform.
//! - [`fetch`] downloads the index and the archive, hashing while it writes, with a progress bar
//!   on a terminal.
//! - [`store`] is setup-envtest's folder (`<data dir>/kubebuilder-envtest/k8s/X.Y.Z-OS-ARCH`),
//!   so both tools share one cache: the archive is verified before anything is unpacked, and
//!   unpacked into a hidden staging folder that is renamed into place, so an interrupted or
//!   refused download never leaves a half-written folder.
//! - [`cli`] is the subcommand.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub mod cli;
pub mod fetch;
pub mod index;
pub mod store;

pub use index::{Index, Release};
pub use store::Store;

/// Where setup-envtest reads the index by default.
pub const DEFAULT_INDEX_URL: &str =
    "https://raw.githubusercontent.com/kubernetes-sigs/controller-tools/HEAD/envtest-releases.yaml";
/// The Kubernetes minor the end-to-end suites are tested against.
pub const DEFAULT_VERSION: &str = "1.32";
/// What an archive holds; the first two are required, `kubectl` is taken when present.
pub const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kubectl"];
/// The binaries a control plane cannot start without.
pub const REQUIRED: [&str; 2] = ["etcd", "kube-apiserver"];

/// Operating systems controller-tools publishes archives for (Windows aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Os {
    /// `linux`.
    Linux,
    /// `darwin` (macOS).
    Darwin,
}

/// Architectures controller-tools publishes archives for (ppc64le and s390x aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// `amd64` (x86_64).
    Amd64,
    /// `arm64` (aarch64).
    Arm64,
}

/// An OS and architecture, named as Go and the archives name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    /// The operating system.
    pub os: Os,
    /// The architecture.
    pub arch: Arch,
}

impl Os {
    /// Go's `GOOS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Os::Linux => "linux",
            Os::Darwin => "darwin",
        }
    }
}

impl Arch {
    /// Go's `GOARCH`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl Platform {
    /// This machine, from Rust's names (`macos` → `darwin`, `x86_64` → `amd64`, `aarch64` →
    /// `arm64`).
    pub fn current() -> Result<Platform, EnvtestError> {
        Platform::from_rust(std::env::consts::OS, std::env::consts::ARCH)
    }

    /// The platform of Rust's `target_os` and `target_arch` names.
    pub fn from_rust(os: &str, arch: &str) -> Result<Platform, EnvtestError> {
        let unsupported = || EnvtestError::Platform {
            os: os.to_owned(),
            arch: arch.to_owned(),
        };
        let os = match os {
            "linux" => Os::Linux,
            "macos" => Os::Darwin,
            _ => return Err(unsupported()),
        };
        let arch = match arch {
            "x86_64" => Arch::Amd64,
            "aarch64" => Arch::Arm64,
            _ => return Err(unsupported()),
        };
        Ok(Platform { os, arch })
    }

    /// `OS-ARCH`, as folder and archive names end.
    pub fn suffix(self) -> String {
        format!("{}-{}", self.os.as_str(), self.arch.as_str())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os.as_str(), self.arch.as_str())
    }
}

/// Which Kubernetes version to use: the newest patch of a minor, or one patch release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionSpec {
    /// `MAJOR.MINOR` (or `MAJOR.MINOR.x`): its newest patch release.
    Minor {
        /// Major version.
        major: u64,
        /// Minor version.
        minor: u64,
    },
    /// `MAJOR.MINOR.PATCH`.
    Exact(semver::Version),
}

impl VersionSpec {
    /// Whether `version` is one this spec asks for. Pre-releases never match.
    pub fn matches(&self, version: &semver::Version) -> bool {
        if !version.pre.is_empty() {
            return false;
        }
        match self {
            VersionSpec::Minor { major, minor } => {
                version.major == *major && version.minor == *minor
            }
            VersionSpec::Exact(exact) => version == exact,
        }
    }
}

impl FromStr for VersionSpec {
    type Err = EnvtestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || EnvtestError::Version {
            given: text.to_owned(),
        };
        let trimmed = text.trim();
        let trimmed = trimmed.strip_prefix('v').unwrap_or(trimmed);
        let parts: Vec<&str> = trimmed.split('.').collect();
        let number = |part: &str| -> Result<u64, EnvtestError> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 9 {
                return Err(invalid());
            }
            part.parse().map_err(|_| invalid())
        };
        match parts.as_slice() {
            [major, minor] | [major, minor, "x" | "*"] => Ok(VersionSpec::Minor {
                major: number(major)?,
                minor: number(minor)?,
            }),
            [major, minor, patch] => Ok(VersionSpec::Exact(semver::Version::new(
                number(major)?,
                number(minor)?,
                number(patch)?,
            ))),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for VersionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionSpec::Minor { major, minor } => write!(f, "{major}.{minor}.x"),
            VersionSpec::Exact(version) => write!(f, "{version}"),
        }
    }
}

/// Why `envtest use` failed. Every URL in a message is redacted (no `user:password@`).
#[derive(Debug, thiserror::Error)]
pub enum EnvtestError {
    /// The VERSION argument is not a version.
    #[error(
        "VERSION {given:?}: expected MAJOR.MINOR (its newest patch) or MAJOR.MINOR.PATCH, such as 1.32 or 1.32.13"
    )]
    Version {
        /// What was given.
        given: String,
    },
    /// No envtest archive exists for this machine.
    #[error(
        "no envtest archives for {os}/{arch}: controller-tools publishes them for linux and darwin on amd64 and arm64 (pick one with --os and --arch)"
    )]
    Platform {
        /// Rust's OS name.
        os: String,
        /// Rust's architecture name.
        arch: String,
    },
    /// setup-envtest's folder cannot be located.
    #[error("no folder for the control plane: {0} (pass --bin-dir)")]
    NoStore(&'static str),
    /// `--index-url` / `ENVTEST_INDEX_URL` is not an http(s) URL.
    #[error("--index-url (ENVTEST_INDEX_URL) {url:?}: {message}")]
    IndexUrl {
        /// The URL, redacted.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// A request failed before or while its body arrived.
    #[error("fetching {url}: {message}")]
    Fetch {
        /// The URL, redacted.
        url: String,
        /// The error and its causes on one line.
        message: String,
    },
    /// The index or archive is larger than we accept.
    #[error("{url} is larger than {limit} bytes")]
    TooLarge {
        /// The URL, redacted.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The index is not in the published format.
    #[error("the index at {url} is not an envtest release index: {message}")]
    IndexFormat {
        /// The index URL, redacted.
        url: String,
        /// The parser's complaint.
        message: String,
    },
    /// The index has no archive for this version and platform.
    #[error(
        "the index has no envtest archive for Kubernetes {wanted} on {platform} (it has {available})"
    )]
    NotInIndex {
        /// The version asked for.
        wanted: String,
        /// The platform asked for.
        platform: Platform,
        /// The stable versions it has for the platform.
        available: String,
    },
    /// The chosen archive's entry in the index is unusable.
    #[error("the index entry {archive}: {field} {message}")]
    IndexEntry {
        /// The archive name.
        archive: String,
        /// `hash` or `selfLink`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The archive does not have the hash the index gives: nothing was unpacked.
    #[error(
        "{archive}: SHA-512 mismatch, refusing it (the index says {expected}, the download is {actual}); nothing was kept"
    )]
    HashMismatch {
        /// The archive name.
        archive: String,
        /// The hash from the index.
        expected: String,
        /// The hash of what was downloaded.
        actual: String,
    },
    /// The archive is not a gzip'd tar holding the control plane.
    #[error("unpacking {archive}: {message}")]
    Unpack {
        /// The archive name.
        archive: String,
        /// What is wrong with it.
        message: String,
    },
    /// Interrupted (Ctrl-C) before the folder was in place.
    #[error("interrupted: nothing was installed")]
    Interrupted,
    /// A file operation failed.
    #[error("{}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl EnvtestError {
    /// An [`EnvtestError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EnvtestError {
        let path = path.into();
        move |source| EnvtestError::Io { path, source }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_setup_envtest_reads_them() {
        for (text, want) in [
            (
                "1.32",
                Some(VersionSpec::Minor {
                    major: 1,
                    minor: 32,
                }),
            ),
            (
                "v1.32",
                Some(VersionSpec::Minor {
                    major: 1,
                    minor: 32,
                }),
            ),
            (
                "1.32.x",
                Some(VersionSpec::Minor {
                    major: 1,
                    minor: 32,
                }),
            ),
            (
                "1.32.*",
                Some(VersionSpec::Minor {
                    major: 1,
                    minor: 32,
                }),
            ),
            (
                "1.32.13",
                Some(VersionSpec::Exact(semver::Version::new(1, 32, 13))),
            ),
            (
                "v1.31.0",
                Some(VersionSpec::Exact(semver::Version::new(1, 31, 0))),
            ),
            ("1", None),
            ("1.32.13.1", None),
            ("1.x", None),
            ("1.32.-1", None),
            ("1.+32", None),
            ("latest", None),
            ("", None),
            ("1.32.0-beta.0", None),
        ] {
            let got = text.parse::<VersionSpec>();
            if let Some(want) = want {
                assert_eq!(got.unwrap(), want, "{text}");
            } else {
                let message = got.unwrap_err().to_string();
                assert!(message.starts_with("VERSION "), "{text}: {message}");
            }
        }
    }

    #[test]
    fn a_minor_matches_its_stable_patches_only() {
        let minor: VersionSpec = "1.32".parse().unwrap();
        let v = |s: &str| semver::Version::parse(s).unwrap();
        assert!(minor.matches(&v("1.32.0")));
        assert!(minor.matches(&v("1.32.13")));
        assert!(!minor.matches(&v("1.33.0")));
        assert!(!minor.matches(&v("1.32.1-rc.0")));
        let exact: VersionSpec = "1.32.2".parse().unwrap();
        assert!(exact.matches(&v("1.32.2")));
        assert!(!exact.matches(&v("1.32.3")));
        assert_eq!(minor.to_string(), "1.32.x");
        assert_eq!(exact.to_string(), "1.32.2");
    }

    #[test]
    fn platforms_map_from_rust_names_to_go_names() {
        let p = Platform::from_rust("linux", "x86_64").unwrap();
        assert_eq!(
            (p.suffix(), p.to_string()),
            ("linux-amd64".to_owned(), "linux/amd64".to_owned())
        );
        assert_eq!(
            Platform::from_rust("macos", "aarch64").unwrap().suffix(),
            "darwin-arm64"
        );
        let error = Platform::from_rust("windows", "x86_64").unwrap_err();
        assert!(error.to_string().contains("windows/x86_64"), "{error}");
        assert!(Platform::from_rust("linux", "riscv64").is_err());
        assert!(Platform::current().is_ok() || !cfg!(target_os = "linux"));
    }
}
