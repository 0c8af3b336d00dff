//! Signed Debian repositories served from loopback, for the DebianRepositorySource suites,
//! built on `kubernetes_upgrader_testkit::debian`.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use api::v1alpha1::{DebianRepositorySource, DebianRepositorySourceSpec, SignedBy};

pub use kubernetes_upgrader::debian::Compression;
pub use kubernetes_upgrader_testkit::debian::{
    Fault, Layout, RepoBuilder, RepoServer, Repository, TestKey, clearsign, clearsign_flooded,
    detached_signature,
};

/// Architectures every served repository carries (the source lists `amd64`, its default).
pub const ARCHITECTURES: [&str; 2] = ["amd64", "arm64"];

/// A repository signed by a fresh key and served on loopback. Publishing new versions and
/// injecting faults go through it.
#[derive(Debug)]
pub struct ServedRepo {
    /// The HTTP server (request counters, faults).
    pub server: RepoServer,
    /// The key that signs the repository.
    pub key: TestKey,
    /// The layout.
    pub layout: Layout,
    /// Debian versions of kubeadm (and friends) currently published.
    pub debian_versions: Vec<String>,
    /// The files currently published.
    pub repository: Repository,
}

impl ServedRepo {
    /// A flat repository (pkgs.k8s.io style) with `debian_versions` (such as `1.27.1-1.1`).
    pub async fn flat(debian_versions: &[&str]) -> Result<Self> {
        Self::start(Layout::Flat, debian_versions).await
    }

    /// A dists repository (`deb URL SUITE COMPONENT`).
    pub async fn dists(suite: &str, component: &str, debian_versions: &[&str]) -> Result<Self> {
        Self::start(
            Layout::Dists {
                suite: suite.to_owned(),
                component: component.to_owned(),
            },
            debian_versions,
        )
        .await
    }

    async fn start(layout: Layout, debian_versions: &[&str]) -> Result<Self> {
        let key = TestKey::generate("kubernetes-upgrader e2e archive")?;
        let server = RepoServer::start().await?;
        let debian_versions: Vec<String> =
            debian_versions.iter().map(|v| (*v).to_owned()).collect();
        let repository = build(&layout, &key, &debian_versions, |b| b)?;
        server.publish(&repository);
        Ok(Self {
            server,
            key,
            layout,
            debian_versions,
            repository,
        })
    }

    /// The repository root URL, as a source's `spec.url`.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Publishes a new repository version holding `debian_versions`.
    pub fn publish_versions(&mut self, debian_versions: &[&str]) -> Result<()> {
        self.publish_with(debian_versions, |b| b)
    }

    /// Publishes a new repository version holding `debian_versions`, its Release adjusted by
    /// `adjust` (a `Date`, a `Valid-Until`).
    pub fn publish_with(
        &mut self,
        debian_versions: &[&str],
        adjust: impl FnOnce(RepoBuilder) -> RepoBuilder,
    ) -> Result<()> {
        self.repository = self.build_with(debian_versions, adjust)?;
        self.debian_versions = debian_versions.iter().map(|v| (*v).to_owned()).collect();
        self.server.publish(&self.repository);
        Ok(())
    }

    /// A repository version signed by this repository's key, without publishing it: what a
    /// hostile mirror serves instead (an older Release, one dated in the future) through
    /// `server.publish`, while [`ServedRepo::expected_versions`] stays what was published.
    pub fn build_with(
        &self,
        debian_versions: &[&str],
        adjust: impl FnOnce(RepoBuilder) -> RepoBuilder,
    ) -> Result<Repository> {
        let versions: Vec<String> = debian_versions.iter().map(|v| (*v).to_owned()).collect();
        build(&self.layout, &self.key, &versions, adjust)
    }

    /// Serves the current Release with a flood of `copies` signature packets by an untrusted
    /// key ahead of the trusted signature.
    pub fn flood_signatures(&self, copies: usize) -> Result<()> {
        let untrusted = TestKey::generate("flood")?;
        let (dir, text) = self.release_text()?;
        self.server.replace(
            &format!("{dir}InRelease"),
            clearsign_flooded(&untrusted, copies, std::slice::from_ref(&self.key), &text)?,
        );
        Ok(())
    }

    /// Publishes the current versions plus `debian_version`.
    pub fn publish_added(&mut self, debian_version: &str) -> Result<()> {
        let mut versions: Vec<String> = self.debian_versions.clone();
        versions.push(debian_version.to_owned());
        let refs: Vec<&str> = versions.iter().map(String::as_str).collect();
        self.publish_versions(&refs)
    }

    /// What a source should publish for the current versions.
    pub fn expected_versions(&self) -> Vec<String> {
        expected_versions(&self.debian_versions)
    }

    fn builder(&self) -> RepoBuilder {
        builder(&self.layout)
    }

    /// Paths of the Release files (`InRelease`, `Release`, `Release.gpg`).
    pub fn release_paths(&self) -> Vec<String> {
        let dir = self.builder().release_dir();
        ["InRelease", "Release", "Release.gpg"]
            .iter()
            .map(|f| format!("{dir}{f}"))
            .collect()
    }

    /// Paths of every amd64 index, in every compression.
    pub fn index_paths(&self) -> Vec<String> {
        let builder = self.builder();
        [Compression::None, Compression::Gzip, Compression::Xz]
            .iter()
            .map(|c| builder.index_path("amd64", *c))
            .collect()
    }

    /// Every Release file and index answers `status`.
    pub fn fail_with_status(&self, status: u16) {
        for path in self.release_paths().iter().chain(&self.index_paths()) {
            self.server.fail_with_status(path, status);
        }
    }

    /// The directory of the Release files and the current Release's text.
    fn release_text(&self) -> Result<(String, String)> {
        let dir = self.builder().release_dir();
        let release = self
            .repository
            .file(&format!("{dir}Release"))
            .context("the repository has no Release")?;
        Ok((dir, String::from_utf8(release.to_vec())?))
    }

    /// Serves the current Release signed by another, untrusted key.
    pub fn sign_with_untrusted_key(&self) -> Result<()> {
        let untrusted = TestKey::generate("untrusted")?;
        let (dir, text) = self.release_text()?;
        self.server.replace(
            &format!("{dir}InRelease"),
            clearsign(std::slice::from_ref(&untrusted), &text)?,
        );
        self.server.replace(
            &format!("{dir}Release.gpg"),
            detached_signature(std::slice::from_ref(&untrusted), text.as_bytes())?,
        );
        Ok(())
    }

    /// Every index is served with bytes flipped (its size still matches the Release).
    pub fn corrupt_indexes(&self) {
        for path in self.index_paths() {
            self.server.corrupt(&path);
        }
    }

    /// Every index is cut short after `keep` bytes.
    pub fn truncate_indexes(&self, keep: usize) {
        for path in self.index_paths() {
            self.server.truncate(&path, keep);
        }
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.server.clear_faults();
    }

    /// A source for this repository (dists fields set for that layout), checked every
    /// `interval`, trusting `signed_by`.
    pub fn source(
        &self,
        name: &str,
        interval: &str,
        signed_by: Option<SignedBy>,
    ) -> DebianRepositorySource {
        let (suite, component) = match &self.layout {
            Layout::Flat => (None, None),
            Layout::Dists { suite, component } => (Some(suite.clone()), Some(component.clone())),
        };
        DebianRepositorySource::new(
            name,
            DebianRepositorySourceSpec {
                url: self.url().to_owned(),
                suite,
                component,
                signed_by,
                interval: Some(interval.to_owned()),
                timeout: Some("5s".to_owned()),
                ..DebianRepositorySourceSpec::default()
            },
        )
    }

    /// `signedBy` with this repository's key inline (armored).
    pub fn inline_key(&self) -> Result<SignedBy> {
        Ok(SignedBy {
            inline: Some(self.key.armored_public_key()?),
            ..SignedBy::default()
        })
    }
}

fn builder(layout: &Layout) -> RepoBuilder {
    match layout {
        Layout::Flat => RepoBuilder::flat(),
        Layout::Dists { suite, component } => RepoBuilder::dists(suite, component),
    }
}

fn build(
    layout: &Layout,
    key: &TestKey,
    debian_versions: &[String],
    adjust: impl FnOnce(RepoBuilder) -> RepoBuilder,
) -> Result<Repository> {
    let mut builder = builder(layout).architectures(&ARCHITECTURES);
    for version in debian_versions {
        builder = builder.kubernetes(version, &ARCHITECTURES);
    }
    adjust(builder.signed_by(key)).build()
}

/// A source's `status.versions`, empty when it has none.
pub fn published_versions(source: &DebianRepositorySource) -> Vec<String> {
    source
        .status
        .as_ref()
        .and_then(|s| s.versions.clone())
        .unwrap_or_default()
}

/// The `status.versions` a source publishes for these Debian versions: epoch and revision
/// dropped, `v`-prefixed, de-duplicated and sorted ascending by semver.
pub fn expected_versions<S: AsRef<str>>(debian_versions: &[S]) -> Vec<String> {
    let parsed: BTreeSet<(u64, u64, u64)> = debian_versions
        .iter()
        .filter_map(|v| {
            let v = v.as_ref();
            let upstream = v.split_once(':').map_or(v, |(_, rest)| rest);
            let upstream = upstream.rsplit_once('-').map_or(upstream, |(u, _)| u);
            let mut parts = upstream.split('.').map(str::parse::<u64>);
            let major = parts.next()?.ok()?;
            let minor = parts.next()?.ok()?;
            let patch = parts.next()?.ok()?;
            parts.next().is_none().then_some((major, minor, patch))
        })
        .collect();
    parsed
        .into_iter()
        .map(|(a, b, c)| format!("v{a}.{b}.{c}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions_are_sorted_deduplicated_and_prefixed() {
        let got = expected_versions(&[
            "1.27.10-1.1",
            "1.27.2-1.1",
            "1.27.2-2.1",
            "1:1.28.0-1.1",
            "1.27.0.1-1",
        ]);
        assert_eq!(got, ["v1.27.2", "v1.27.10", "v1.28.0"]);
    }
}
