//! The envtest release index controller-tools publishes, and the choice of one archive in it.
//!
//! ```yaml
//! releases:
//!   v1.32.0:
//!     envtest-v1.32.0-linux-amd64.tar.gz:
//!       hash: <SHA-512 of the archive, hex>
//!       selfLink: https://github.com/kubernetes-sigs/controller-tools/releases/download/…
//! ```
//!
//! As setup-envtest does, the version and platform come from the archive's name; the release key
//! only groups them. The index is untrusted: only the chosen entry is checked (a 128-digit hex
//! hash, an http(s) link, relative links resolved against the index's URL for mirrors), so a
//! malformed entry elsewhere does not stop anyone.

use std::collections::BTreeMap;

use reqwest::Url;
use serde::Deserialize;

use super::{EnvtestError, Platform, VersionSpec};
use crate::text::redact_url;

/// The parsed index.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Index {
    /// Release key (`v1.32.0`) → archive name → archive.
    #[serde(default)]
    pub releases: BTreeMap<String, BTreeMap<String, IndexedArchive>>,
}

/// One archive of the index, as written there.
#[derive(Clone, Debug, Deserialize)]
pub struct IndexedArchive {
    /// The archive's SHA-512, hex.
    #[serde(default)]
    pub hash: String,
    /// Where to download it.
    #[serde(default, rename = "selfLink")]
    pub self_link: String,
}

/// The archive chosen for a version and platform, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// Its Kubernetes version.
    pub version: semver::Version,
    /// Its platform.
    pub platform: Platform,
    /// Its name, `envtest-vX.Y.Z-OS-ARCH.tar.gz`.
    pub archive: String,
    /// Where to download it.
    pub url: Url,
    /// Its SHA-512, lowercase hex.
    pub sha512: String,
}

/// The version and `OS-ARCH` an archive name carries: `envtest-v1.32.0-linux-amd64.tar.gz`.
pub fn parse_archive_name(name: &str) -> Option<(semver::Version, &str, &str)> {
    let rest = name.strip_prefix("envtest-v")?.strip_suffix(".tar.gz")?;
    let mut parts = rest.rsplitn(3, '-');
    let arch = parts.next()?;
    let os = parts.next()?;
    let version = semver::Version::parse(parts.next()?).ok()?;
    Some((version, os, arch))
}

impl Index {
    /// Parses the YAML of an index fetched from `url` (for messages).
    pub fn parse(text: &str, url: &str) -> Result<Index, EnvtestError> {
        let index: Index = serde_yaml::from_str(text).map_err(|e| EnvtestError::IndexFormat {
            url: redact_url(url),
            message: e.to_string(),
        })?;
        if index.releases.is_empty() {
            return Err(EnvtestError::IndexFormat {
                url: redact_url(url),
                message: "it lists no releases".to_owned(),
            });
        }
        Ok(index)
    }

    /// The newest archive for `platform` that `wanted` matches, its hash and link checked;
    /// relative links are resolved against `index_url`.
    pub fn select(
        &self,
        wanted: &VersionSpec,
        platform: Platform,
        index_url: &Url,
    ) -> Result<Release, EnvtestError> {
        let for_platform = || {
            self.releases
                .values()
                .flatten()
                .filter_map(|(name, archive)| {
                    let (version, os, arch) = parse_archive_name(name)?;
                    (os == platform.os.as_str() && arch == platform.arch.as_str())
                        .then_some((version, name, archive))
                })
        };
        let Some((version, name, archive)) = for_platform()
            .filter(|(version, _, _)| wanted.matches(version))
            .max_by(|a, b| a.0.cmp(&b.0))
        else {
            let mut available: Vec<semver::Version> = for_platform()
                .map(|(version, _, _)| version)
                .filter(|v| v.pre.is_empty())
                .collect();
            available.sort();
            available.dedup();
            let shown: Vec<String> = available
                .iter()
                .rev()
                .take(8)
                .map(ToString::to_string)
                .collect();
            return Err(EnvtestError::NotInIndex {
                wanted: wanted.to_string(),
                platform,
                available: if shown.is_empty() {
                    "none for this platform".to_owned()
                } else {
                    shown.join(", ")
                },
            });
        };
        let entry_error = |field, message: String| EnvtestError::IndexEntry {
            archive: name.clone(),
            field,
            message,
        };
        let sha512 = archive.hash.trim().to_ascii_lowercase();
        if sha512.len() != 128 || !sha512.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(entry_error(
                "hash",
                "is not a SHA-512 digest (128 hex digits)".to_owned(),
            ));
        }
        let url = index_url
            .join(archive.self_link.trim())
            .map_err(|e| entry_error("selfLink", format!("is not a URL: {e}")))?;
        if archive.self_link.trim().is_empty() || !matches!(url.scheme(), "http" | "https") {
            return Err(entry_error(
                "selfLink",
                format!(
                    "is not an http(s) link: {:?}",
                    redact_url(&archive.self_link)
                ),
            ));
        }
        Ok(Release {
            version,
            platform,
            archive: name.clone(),
            url,
            sha512,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fmt::Write as _;

    use super::*;
    use crate::envtest::{Arch, Os};

    const LINUX_AMD64: Platform = Platform {
        os: Os::Linux,
        arch: Arch::Amd64,
    };
    const DARWIN_ARM64: Platform = Platform {
        os: Os::Darwin,
        arch: Arch::Arm64,
    };

    fn hash(seed: char) -> String {
        std::iter::repeat_n(seed, 128).collect()
    }

    /// The published shape: several releases, every platform, pre-releases, unsorted keys.
    fn published() -> String {
        let mut yaml = String::from("releases:\n");
        let platforms = [
            "darwin-amd64",
            "darwin-arm64",
            "linux-amd64",
            "linux-arm64",
            "linux-ppc64le",
            "linux-s390x",
            "windows-amd64",
        ];
        for (version, seed) in [
            ("v1.32.0", 'a'),
            ("v1.31.0", 'b'),
            ("v1.32.2", 'c'),
            ("v1.33.0-alpha.2", 'd'),
            ("v1.32.10", 'e'),
            ("v1.33.0", 'f'),
        ] {
            writeln!(yaml, "  {version}:").unwrap();
            for platform in platforms {
                writeln!(
                    yaml,
                    "    envtest-{version}-{platform}.tar.gz:\n      hash: {}\n      selfLink: https://github.com/kubernetes-sigs/controller-tools/releases/download/envtest-{version}/envtest-{version}-{platform}.tar.gz",
                    hash(seed)
                )
                .unwrap();
            }
        }
        yaml
    }

    fn index_url() -> Url {
        Url::parse("https://mirror.example/envtest/envtest-releases.yaml").unwrap()
    }

    #[test]
    fn the_newest_patch_of_the_minor_for_the_platform_is_chosen() {
        let index = Index::parse(&published(), "https://x/index.yaml").unwrap();
        let release = index
            .select(&"1.32".parse().unwrap(), LINUX_AMD64, &index_url())
            .unwrap();
        assert_eq!(release.version, semver::Version::new(1, 32, 10));
        assert_eq!(release.archive, "envtest-v1.32.10-linux-amd64.tar.gz");
        assert_eq!(
            release.url.as_str(),
            "https://github.com/kubernetes-sigs/controller-tools/releases/download/envtest-v1.32.10/envtest-v1.32.10-linux-amd64.tar.gz"
        );
        assert_eq!(release.sha512, hash('e'));

        let darwin = index
            .select(&"1.32.2".parse().unwrap(), DARWIN_ARM64, &index_url())
            .unwrap();
        assert_eq!(darwin.archive, "envtest-v1.32.2-darwin-arm64.tar.gz");
        assert_eq!(darwin.sha512, hash('c'));

        // A minor with only a pre-release and a stable release: the stable one.
        let newest = index
            .select(&"1.33".parse().unwrap(), LINUX_AMD64, &index_url())
            .unwrap();
        assert_eq!(newest.version, semver::Version::new(1, 33, 0));
    }

    #[test]
    fn a_missing_version_names_what_the_index_has() {
        let index = Index::parse(&published(), "https://x/index.yaml").unwrap();
        let error = index
            .select(&"1.34".parse().unwrap(), DARWIN_ARM64, &index_url())
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "the index has no envtest archive for Kubernetes 1.34.x on darwin/arm64 (it has 1.33.0, 1.32.10, 1.32.2, 1.32.0, 1.31.0)"
        );
        let only_linux = Index::parse(
            &format!(
                "releases:\n  v1.32.0:\n    envtest-v1.32.0-linux-amd64.tar.gz:\n      hash: {}\n      selfLink: https://x/a.tar.gz\n",
                hash('a')
            ),
            "https://x/index.yaml",
        )
        .unwrap();
        let error = only_linux
            .select(&"1.32".parse().unwrap(), DARWIN_ARM64, &index_url())
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with("(it has none for this platform)"),
            "{error}"
        );
    }

    #[test]
    fn the_chosen_entry_is_checked_and_relative_links_follow_the_index() {
        let entry = |hash: &str, link: &str| {
            format!(
                "releases:\n  v1.32.0:\n    envtest-v1.32.0-linux-amd64.tar.gz:\n      hash: {hash}\n      selfLink: {link}\n    envtest-v1.31.0-linux-amd64.tar.gz:\n      hash: nonsense\n      selfLink: ftp://elsewhere\n"
            )
        };
        let select = |yaml: String| {
            Index::parse(&yaml, "https://x/index.yaml").unwrap().select(
                &"1.32".parse().unwrap(),
                LINUX_AMD64,
                &index_url(),
            )
        };
        let upper = hash('A');
        let release = select(entry(&upper, "archives/envtest-v1.32.0-linux-amd64.tar.gz")).unwrap();
        assert_eq!(release.sha512, hash('a'));
        assert_eq!(
            release.url.as_str(),
            "https://mirror.example/envtest/archives/envtest-v1.32.0-linux-amd64.tar.gz"
        );
        for (hash, link, field) in [
            ("abc".to_owned(), "https://x/a.tar.gz", "hash"),
            (hash('g'), "https://x/a.tar.gz", "hash"),
            (String::new(), "https://x/a.tar.gz", "hash"),
            (hash('a'), "ftp://x/a.tar.gz", "selfLink"),
            (hash('a'), "''", "selfLink"),
            (hash('a'), "https://user:secret@[::1", "selfLink"),
        ] {
            let error = select(entry(&hash, link)).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!(
                    "the index entry envtest-v1.32.0-linux-amd64.tar.gz: {field} "
                )),
                "{hash} {link}: {error}"
            );
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn what_is_not_an_index_is_refused() {
        for text in [
            "releases: [1, 2]",
            "- a\n- b\n",
            "releases: {}\n",
            "{}",
            "releases:\n  v1: {x: 1}\n",
        ] {
            let error = Index::parse(text, "https://u:p@x/index.yaml")
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("the index at https://"),
                "{text}: {error}"
            );
            assert!(!error.contains("u:p"), "{error}");
        }
    }

    #[test]
    fn archive_names_carry_version_and_platform() {
        assert_eq!(
            parse_archive_name("envtest-v1.34.0-alpha.1-linux-amd64.tar.gz"),
            Some((
                semver::Version::parse("1.34.0-alpha.1").unwrap(),
                "linux",
                "amd64"
            ))
        );
        assert_eq!(
            parse_archive_name("envtest-v1.32.0-linux-amd64.tar.gz.sha512"),
            None
        );
        assert_eq!(
            parse_archive_name("kubebuilder-tools-1.32.0-linux-amd64.tar.gz"),
            None
        );
        assert_eq!(parse_archive_name("envtest-v1.32-linux-amd64.tar.gz"), None);
    }
}
