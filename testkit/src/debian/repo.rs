//! Signed Debian repositories in both layouts (flat and `dists/`), built in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use kubernetes_upgrader::debian::index::Compression;

use super::index::compress;
use super::keys::{TestKey, clearsign, detached_signature};

/// One package paragraph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestPackage {
    /// `Package`.
    pub name: String,
    /// `Version`.
    pub version: String,
    /// `Architecture`, or none to leave the field out.
    pub architecture: Option<String>,
}

/// Repository layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Everything in one directory (pkgs.k8s.io).
    Flat,
    /// `dists/SUITE/COMPONENT/binary-ARCH/`.
    Dists {
        /// Suite, for example `stable`.
        suite: String,
        /// Component, for example `main`.
        component: String,
    },
}

/// Builds the files of a Debian repository.
#[derive(Clone, Debug)]
pub struct RepoBuilder {
    layout: Layout,
    packages: Vec<TestPackage>,
    architectures: Vec<String>,
    compressions: Vec<Compression>,
    signers: Vec<TestKey>,
    in_release: bool,
    release_gpg: bool,
    valid_until: Option<jiff::Timestamp>,
    date: Option<jiff::Timestamp>,
    acquire_by_hash: bool,
    index_override: Option<Vec<u8>>,
    raw_indexes: BTreeMap<Compression, Vec<u8>>,
    unlisted: BTreeSet<Compression>,
}

impl RepoBuilder {
    /// A flat repository, unsigned, with plain, gz and xz indexes, InRelease and Release.gpg
    /// once a signer is added.
    pub fn flat() -> Self {
        Self::new(Layout::Flat)
    }

    /// A dists-layout repository.
    pub fn dists(suite: &str, component: &str) -> Self {
        Self::new(Layout::Dists {
            suite: suite.to_owned(),
            component: component.to_owned(),
        })
    }

    fn new(layout: Layout) -> Self {
        Self {
            layout,
            packages: Vec::new(),
            architectures: Vec::new(),
            compressions: vec![Compression::None, Compression::Gzip, Compression::Xz],
            signers: Vec::new(),
            in_release: true,
            release_gpg: true,
            valid_until: None,
            date: None,
            acquire_by_hash: false,
            index_override: None,
            raw_indexes: BTreeMap::new(),
            unlisted: BTreeSet::new(),
        }
    }

    /// Adds a paragraph; `architecture` `None` leaves the field out.
    #[must_use]
    pub fn package(mut self, name: &str, version: &str, architecture: Option<&str>) -> Self {
        self.packages.push(TestPackage {
            name: name.to_owned(),
            version: version.to_owned(),
            architecture: architecture.map(str::to_owned),
        });
        self
    }

    /// Adds a kubeadm paragraph.
    #[must_use]
    pub fn kubeadm(self, version: &str, architecture: &str) -> Self {
        self.package("kubeadm", version, Some(architecture))
    }

    /// Adds kubeadm, kubelet and kubectl for a version on each architecture, plus cri-tools.
    #[must_use]
    pub fn kubernetes(mut self, version: &str, architectures: &[&str]) -> Self {
        for architecture in architectures {
            for name in ["kubeadm", "kubelet", "kubectl"] {
                self = self.package(name, version, Some(architecture));
            }
            self = self.package("cri-tools", "1.30.1-1.1", Some(architecture));
        }
        self
    }

    /// Architectures listed in the Release (and, for dists, given an index each). Defaults to
    /// the packages' architectures, or `amd64`.
    #[must_use]
    pub fn architectures(mut self, architectures: &[&str]) -> Self {
        self.architectures = architectures.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Which index compressions to write.
    #[must_use]
    pub fn compressions(mut self, compressions: &[Compression]) -> Self {
        self.compressions = compressions.to_vec();
        self
    }

    /// Signs with `key` (call again for several signatures).
    #[must_use]
    pub fn signed_by(mut self, key: &TestKey) -> Self {
        self.signers.push(key.clone());
        self
    }

    /// Whether to write InRelease when signed (default true).
    #[must_use]
    pub fn in_release(mut self, yes: bool) -> Self {
        self.in_release = yes;
        self
    }

    /// Whether to write Release.gpg when signed (default true).
    #[must_use]
    pub fn release_gpg(mut self, yes: bool) -> Self {
        self.release_gpg = yes;
        self
    }

    /// Sets `Valid-Until`.
    #[must_use]
    pub fn valid_until(mut self, until: jiff::Timestamp) -> Self {
        self.valid_until = Some(until);
        self
    }

    /// Sets `Date` (default: the time of [`RepoBuilder::build`]).
    #[must_use]
    pub fn date(mut self, date: jiff::Timestamp) -> Self {
        self.date = Some(date);
        self
    }

    /// Says `Acquire-By-Hash: yes` and also writes every index at `by-hash/SHA256/<hex>` beside it.
    #[must_use]
    pub fn acquire_by_hash(mut self, yes: bool) -> Self {
        self.acquire_by_hash = yes;
        self
    }

    /// Uses these bytes (uncompressed) as every index instead of generated paragraphs.
    #[must_use]
    pub fn index_text(mut self, text: impl Into<Vec<u8>>) -> Self {
        self.index_override = Some(text.into());
        self
    }

    /// Uses these bytes, as they are, for every index file with this compression (listed in the
    /// Release with their own size and SHA256): for corrupt or bomb-like compressed data.
    #[must_use]
    pub fn index_bytes(mut self, compression: Compression, bytes: impl Into<Vec<u8>>) -> Self {
        self.raw_indexes.insert(compression, bytes.into());
        self
    }

    /// Writes the index with this compression but leaves it out of the Release.
    #[must_use]
    pub fn unlisted(mut self, compression: Compression) -> Self {
        self.unlisted.insert(compression);
        self
    }

    /// The directory (relative to the repository root) holding the Release files.
    pub fn release_dir(&self) -> String {
        match &self.layout {
            Layout::Flat => String::new(),
            Layout::Dists { suite, .. } => format!("dists/{suite}/"),
        }
    }

    /// Path of an index relative to the repository root.
    pub fn index_path(&self, architecture: &str, compression: Compression) -> String {
        format!(
            "{}{}",
            self.release_dir(),
            self.index_release_path(architecture, compression)
        )
    }

    fn index_release_path(&self, architecture: &str, compression: Compression) -> String {
        match &self.layout {
            Layout::Flat => format!("Packages{}", compression.extension()),
            Layout::Dists { component, .. } => {
                format!(
                    "{component}/binary-{architecture}/Packages{}",
                    compression.extension()
                )
            }
        }
    }

    fn effective_architectures(&self) -> Vec<String> {
        if !self.architectures.is_empty() {
            return self.architectures.clone();
        }
        let set: BTreeSet<String> = self
            .packages
            .iter()
            .filter_map(|p| p.architecture.clone())
            .filter(|a| a != "all")
            .collect();
        if set.is_empty() {
            vec!["amd64".to_owned()]
        } else {
            set.into_iter().collect()
        }
    }

    /// The Packages text for one architecture (all packages for the flat layout).
    pub fn index_for(&self, architecture: Option<&str>) -> Vec<u8> {
        if let Some(text) = &self.index_override {
            return text.clone();
        }
        let mut out = String::new();
        for package in &self.packages {
            let keep = match (architecture, package.architecture.as_deref()) {
                (None, _) | (_, None | Some("all")) => true,
                (Some(wanted), Some(arch)) => wanted == arch,
            };
            if keep {
                out.push_str(&paragraph(package));
            }
        }
        out.into_bytes()
    }

    /// Builds every file.
    pub fn build(&self) -> anyhow::Result<Repository> {
        let mut files = BTreeMap::new();
        let mut listed: Vec<(String, Vec<u8>)> = Vec::new();
        let architectures = self.effective_architectures();
        let index_architectures: Vec<Option<&str>> = match self.layout {
            Layout::Flat => vec![None],
            Layout::Dists { .. } => architectures.iter().map(|a| Some(a.as_str())).collect(),
        };
        for architecture in index_architectures {
            let text = self.index_for(architecture);
            for &compression in &self.compressions {
                let bytes = match self.raw_indexes.get(&compression) {
                    Some(raw) => raw.clone(),
                    None => compress(&text, compression)?,
                };
                let release_path =
                    self.index_release_path(architecture.unwrap_or("amd64"), compression);
                if !self.unlisted.contains(&compression) {
                    listed.push((release_path.clone(), bytes.clone()));
                }
                if self.acquire_by_hash {
                    let dir = release_path.rsplit_once('/').map_or("", |(d, _)| d);
                    let slash = if dir.is_empty() { "" } else { "/" };
                    files.insert(
                        format!(
                            "{}{dir}{slash}by-hash/SHA256/{}",
                            self.release_dir(),
                            hex::encode(Sha256::digest(&bytes))
                        ),
                        Bytes::from(bytes.clone()),
                    );
                }
                files.insert(
                    format!("{}{release_path}", self.release_dir()),
                    Bytes::from(bytes),
                );
            }
        }
        let release = self.release_text(&architectures, &listed);
        let dir = self.release_dir();
        files.insert(format!("{dir}Release"), Bytes::from(release.clone()));
        if !self.signers.is_empty() {
            if self.in_release {
                files.insert(
                    format!("{dir}InRelease"),
                    Bytes::from(clearsign(&self.signers, &release)?),
                );
            }
            if self.release_gpg {
                files.insert(
                    format!("{dir}Release.gpg"),
                    Bytes::from(detached_signature(&self.signers, release.as_bytes())?),
                );
            }
        }
        Ok(Repository {
            files,
            release_dir: dir,
        })
    }

    fn release_text(&self, architectures: &[String], listed: &[(String, Vec<u8>)]) -> String {
        let now = self.date.unwrap_or_else(jiff::Timestamp::now);
        let (suite, component) = match &self.layout {
            Layout::Flat => ("stable".to_owned(), None),
            Layout::Dists { suite, component } => (suite.clone(), Some(component.clone())),
        };
        let mut text = format!(
            "Origin: kubernetes-upgrader tests\nLabel: test\nSuite: {suite}\nCodename: {suite}\nDate: {}\n",
            jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&now)
                .unwrap_or_default()
        );
        if let Some(until) = self.valid_until {
            let _ = writeln!(
                text,
                "Valid-Until: {}",
                jiff::fmt::rfc2822::DateTimePrinter::new()
                    .timestamp_to_rfc9110_string(&until)
                    .unwrap_or_default()
            );
        }
        if self.acquire_by_hash {
            text.push_str("Acquire-By-Hash: yes\n");
        }
        let _ = writeln!(text, "Architectures: {}", architectures.join(" "));
        if let Some(component) = component {
            let _ = writeln!(text, "Components: {component}");
        }
        text.push_str("Description: generated test repository\n");
        // MD5Sum is listed with wrong digests on purpose: only SHA256 may be trusted.
        text.push_str("MD5Sum:\n");
        for (path, bytes) in listed {
            let _ = writeln!(text, " {} {:>10} {path}", "0".repeat(32), bytes.len());
        }
        text.push_str("SHA256:\n");
        for (path, bytes) in listed {
            let _ = writeln!(
                text,
                " {} {:>10} {path}",
                hex::encode(Sha256::digest(bytes)),
                bytes.len()
            );
        }
        text
    }
}

fn paragraph(package: &TestPackage) -> String {
    let mut text = format!("Package: {}\n", package.name);
    if let Some(architecture) = &package.architecture {
        let _ = writeln!(text, "Architecture: {architecture}");
    }
    let arch = package.architecture.as_deref().unwrap_or("all");
    let _ = write!(
        text,
        "Version: {version}\nMaintainer: Kubernetes Authors <dev@kubernetes.io>\nInstalled-Size: 74512\n\
         Depends: cri-tools (>= 1.30.0), kubernetes-cni (>= 1.2.0)\n\
         Filename: pool/main/{name}_{version}_{arch}.deb\nSize: 10972464\n\
         SHA256: {digest}\nSection: admin\nPriority: optional\nHomepage: https://kubernetes.io\n\
         Description: Command-line utility for administering a Kubernetes cluster\n \
         Command-line utility for deploying a Kubernetes cluster.\n .\n \
         Generated for tests.\n\n",
        name = package.name,
        version = package.version,
        digest = hex::encode(Sha256::digest(format!(
            "{}{}{arch}",
            package.name, package.version
        ))),
    );
    text
}

/// The files of a generated repository, by path relative to its root.
#[derive(Clone, Debug, Default)]
pub struct Repository {
    /// Path (no leading slash) → content.
    pub files: BTreeMap<String, Bytes>,
    release_dir: String,
}

impl Repository {
    /// Content of a file.
    pub fn file(&self, path: &str) -> Option<&Bytes> {
        self.files.get(path)
    }

    /// Adds or replaces a file.
    pub fn insert(&mut self, path: &str, content: impl Into<Bytes>) {
        self.files.insert(path.to_owned(), content.into());
    }

    /// Removes a file.
    pub fn remove(&mut self, path: &str) -> Option<Bytes> {
        self.files.remove(path)
    }

    /// Path of the Release directory (empty for flat, `dists/SUITE/` for dists).
    pub fn release_dir(&self) -> &str {
        &self.release_dir
    }
}
