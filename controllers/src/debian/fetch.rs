//! The HTTP side: one client with our limits, and the sync that ties Release, verification and
//! index ingestion together.

use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use reqwest::{Response, StatusCode};
use tokio::time::Instant;

use super::index::{Compression, Expected, Ingest, Ingested};
use super::keyring::Keyring;
use super::release::{MAX_RELEASE_BYTES, Release};
use super::{Listing, RepositorySpec, SyncError, SyncOutcome, Validators};

/// Redirects followed per request (pkgs.k8s.io redirects once to its CDN).
pub const MAX_REDIRECTS: usize = 5;
/// Time allowed to open a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// One HTTP client with our limits: rustls with the system roots plus an optional PEM bundle,
/// proxies from the environment, at most [`MAX_REDIRECTS`] redirects and a connect timeout.
#[derive(Clone, Debug)]
pub struct Fetcher {
    client: reqwest::Client,
}

impl Fetcher {
    /// Builds the client. `ca_bundle` is PEM text holding one or more certificates, trusted in
    /// addition to the system roots.
    pub fn new(ca_bundle: Option<&str>) -> Result<Fetcher, SyncError> {
        let failed = |message: String| SyncError::FetchFailed {
            url: "(client setup)".to_owned(),
            message,
        };
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("kubernetes-upgrader/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_bundle {
            let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| failed(format!("caBundle: {}", chain(&e))))?;
            if certificates.is_empty() {
                return Err(failed("caBundle holds no PEM certificate".to_owned()));
            }
            builder = builder.tls_certs_merge(certificates);
        }
        let client = builder.build().map_err(|e| failed(chain(&e)))?;
        Ok(Fetcher { client })
    }

    /// Reads the repository once: see the module documentation of [`super`].
    pub async fn sync(
        &self,
        spec: &RepositorySpec,
        keyring: Option<&Keyring>,
        previous: Option<&Validators>,
    ) -> Result<SyncOutcome, SyncError> {
        let target = Target::parse(spec)?;
        let session = Session {
            client: &self.client,
            spec,
            keyring,
            previous,
            deadline: Instant::now() + spec.timeout,
        };
        session.run(&target).await
    }
}

/// Where to look, derived from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A repository root: `release_dir` holds the (In)Release, and index paths in the Release
    /// are `index_prefix` + `Packages{,.gz,.xz}`, relative to `release_dir`.
    Repository {
        release_dir: String,
        index_prefix: String,
    },
    /// A direct index URL (v0.6 meaning); `dir` is its directory, `name` its file name.
    Index {
        url: String,
        dir: String,
        name: String,
        compression: Compression,
    },
}

impl Target {
    fn parse(spec: &RepositorySpec) -> Result<Target, SyncError> {
        let url = spec.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(SyncError::FetchFailed {
                url: url.to_owned(),
                message: "only http and https URLs are supported".to_owned(),
            });
        }
        let base = url.trim_end_matches('/');
        if !url.ends_with('/')
            && let Some((dir, name)) = base.rsplit_once('/')
            && let Some(compression) = Compression::of_index_path(name)
        {
            return Ok(Target::Index {
                url: base.to_owned(),
                dir: format!("{dir}/"),
                name: name.to_owned(),
                compression,
            });
        }
        let suite = spec
            .suite
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let component = spec
            .component
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        match (suite, component) {
            (Some(suite), Some(component)) => Ok(Target::Repository {
                release_dir: format!("{base}/dists/{}/", suite.trim_matches('/')),
                index_prefix: format!(
                    "{}/binary-{}/",
                    component.trim_matches('/'),
                    spec.architecture
                ),
            }),
            (None, None) => Ok(Target::Repository {
                release_dir: format!("{base}/"),
                index_prefix: String::new(),
            }),
            _ => Err(SyncError::ParseError(format!(
                "{url}: suite and component must be set together (dists layout) or both left out (flat layout)"
            ))),
        }
    }
}

/// Outcome of one GET.
enum Got {
    NotModified,
    NotFound,
    Body(Box<Response>, Validators),
}

/// What reading the Release gave.
enum ReleaseRead {
    NotModified,
    /// Neither InRelease nor Release exists (only possible without a keyring).
    Missing,
    Found(Box<Release>, Validators),
}

struct Session<'a> {
    client: &'a reqwest::Client,
    spec: &'a RepositorySpec,
    keyring: Option<&'a Keyring>,
    previous: Option<&'a Validators>,
    deadline: Instant,
}

impl Session<'_> {
    async fn run(&self, target: &Target) -> Result<SyncOutcome, SyncError> {
        match target {
            Target::Index {
                url,
                dir,
                name,
                compression,
            } => {
                if self.keyring.is_none() {
                    return self.probe(&[(url.clone(), *compression)]).await;
                }
                let (release, validators) = match self.release(dir).await? {
                    ReleaseRead::NotModified => return Ok(SyncOutcome::NotModified),
                    ReleaseRead::Found(release, validators) => (release, validators),
                    ReleaseRead::Missing => {
                        return Err(SyncError::SignatureInvalid(format!(
                            "{dir}: no InRelease or Release to verify {url} against"
                        )));
                    }
                };
                let entries = release.sha256_entries()?;
                let Some(expected) = entries.get(name.as_str()) else {
                    return Err(SyncError::ChecksumMismatch(format!(
                        "{}: lists no SHA256 for {name}, so {url} cannot be verified",
                        release.url()
                    )));
                };
                match self
                    .index(url, *compression, Some(expected.clone()), false)
                    .await?
                {
                    Got2::NotFound => Err(SyncError::HttpStatus {
                        url: url.clone(),
                        status: 404,
                    }),
                    Got2::NotModified => Ok(SyncOutcome::NotModified),
                    Got2::Ingested(ingested, _) => {
                        self.listing(url, ingested, release.fingerprint, validators)
                    }
                }
            }
            Target::Repository {
                release_dir,
                index_prefix,
            } => {
                let probes: Vec<(String, Compression)> = Compression::PREFERRED
                    .iter()
                    .map(|c| {
                        (
                            format!("{release_dir}{index_prefix}Packages{}", c.extension()),
                            *c,
                        )
                    })
                    .collect();
                let (release, validators) = match self.release(release_dir).await? {
                    ReleaseRead::NotModified => return Ok(SyncOutcome::NotModified),
                    ReleaseRead::Missing => return self.probe(&probes).await,
                    ReleaseRead::Found(release, validators) => (release, validators),
                };
                let entries = release.sha256_entries()?;
                let candidates: Vec<(String, Compression, Expected)> = Compression::PREFERRED
                    .iter()
                    .filter_map(|c| {
                        let path = format!("{index_prefix}Packages{}", c.extension());
                        entries
                            .get(&path)
                            .map(|e| (format!("{release_dir}{path}"), *c, e.clone()))
                    })
                    .collect();
                if candidates.is_empty() {
                    if !release.lists_architecture(&self.spec.architecture) {
                        return Err(self.no_match(release.url()));
                    }
                    if self.keyring.is_some() {
                        return Err(SyncError::ChecksumMismatch(format!(
                            "{}: lists no SHA256 for {index_prefix}Packages{{.xz,.gz,}}, so no index can be verified",
                            release.url()
                        )));
                    }
                    tracing::debug!(release = release.url(), "Release lists no index; probing");
                    return self.probe(&probes).await;
                }
                let mut last = String::new();
                for (url, compression, expected) in candidates {
                    match self.index(&url, compression, Some(expected), false).await? {
                        Got2::NotFound => {
                            tracing::debug!(%url, "listed index is missing; trying the next compression");
                            last = url;
                        }
                        Got2::NotModified => return Ok(SyncOutcome::NotModified),
                        Got2::Ingested(ingested, _) => {
                            return self.listing(&url, ingested, release.fingerprint, validators);
                        }
                    }
                }
                Err(SyncError::HttpStatus {
                    url: last,
                    status: 404,
                })
            }
        }
    }

    /// Reads indexes without a Release (no keyring): the first that exists wins; validators
    /// belong to the index.
    async fn probe(&self, probes: &[(String, Compression)]) -> Result<SyncOutcome, SyncError> {
        let mut last = String::new();
        for (url, compression) in probes {
            match self.index(url, *compression, None, true).await? {
                Got2::NotFound => last.clone_from(url),
                Got2::NotModified => return Ok(SyncOutcome::NotModified),
                Got2::Ingested(ingested, validators) => {
                    return self.listing(url, ingested, None, validators);
                }
            }
        }
        Err(SyncError::HttpStatus {
            url: last,
            status: 404,
        })
    }

    fn no_match(&self, index_url: &str) -> SyncError {
        SyncError::NoMatchingPackages {
            package: self.spec.package.clone(),
            architecture: self.spec.architecture.clone(),
            index_url: index_url.to_owned(),
        }
    }

    fn listing(
        &self,
        url: &str,
        ingested: Ingested,
        fingerprint: Option<String>,
        validators: Validators,
    ) -> Result<SyncOutcome, SyncError> {
        let summary = ingested.summary;
        if summary.matched == 0 {
            return Err(self.no_match(url));
        }
        tracing::debug!(
            %url,
            paragraphs = summary.paragraphs,
            malformed = summary.malformed,
            matched = summary.matched,
            skipped = summary.skipped,
            "index read"
        );
        Ok(SyncOutcome::Fetched(Listing {
            versions: summary.versions,
            debian_versions: summary.debian_versions,
            skipped: summary.skipped,
            index_url: url.to_owned(),
            index_sha256: ingested.sha256,
            signing_key_fingerprint: fingerprint,
            validators,
        }))
    }

    /// InRelease, else Release (+ Release.gpg with a keyring).
    async fn release(&self, dir: &str) -> Result<ReleaseRead, SyncError> {
        let now = jiff::Timestamp::now();
        let inrelease = format!("{dir}InRelease");
        match self.get(&inrelease, true).await? {
            Got::NotModified => return Ok(ReleaseRead::NotModified),
            Got::Body(response, validators) => {
                let body = self.read_small(&inrelease, response).await?;
                let release = Release::from_inrelease(&inrelease, &body, self.keyring, now)?;
                return Ok(ReleaseRead::Found(Box::new(release), validators));
            }
            Got::NotFound => {}
        }
        let plain = format!("{dir}Release");
        let (body, validators) = match self.get(&plain, true).await? {
            Got::NotModified => return Ok(ReleaseRead::NotModified),
            Got::NotFound if self.keyring.is_some() => {
                return Err(SyncError::SignatureInvalid(format!(
                    "{dir}: neither InRelease nor Release exists, so nothing can be verified"
                )));
            }
            Got::NotFound => return Ok(ReleaseRead::Missing),
            Got::Body(response, validators) => {
                (self.read_small(&plain, response).await?, validators)
            }
        };
        let signature_url = format!("{dir}Release.gpg");
        let signature = if self.keyring.is_some() {
            match self.get(&signature_url, false).await? {
                Got::Body(response, _) => Some(self.read_small(&signature_url, response).await?),
                Got::NotFound => {
                    return Err(SyncError::SignatureInvalid(format!(
                        "{signature_url}: missing (and there is no InRelease), so {plain} cannot be verified"
                    )));
                }
                Got::NotModified => {
                    return Err(SyncError::HttpStatus {
                        url: signature_url,
                        status: 304,
                    });
                }
            }
        } else {
            None
        };
        let release = Release::from_release(
            &plain,
            &body,
            self.keyring,
            signature.as_deref().map(|s| (signature_url.as_str(), s)),
            now,
        )?;
        Ok(ReleaseRead::Found(Box::new(release), validators))
    }

    /// Fetches and ingests one index.
    async fn index(
        &self,
        url: &str,
        compression: Compression,
        expected: Option<Expected>,
        conditional: bool,
    ) -> Result<Got2, SyncError> {
        let (mut response, validators) = match self.get(url, conditional).await? {
            Got::NotModified => return Ok(Got2::NotModified),
            Got::NotFound => return Ok(Got2::NotFound),
            Got::Body(response, validators) => (response, validators),
        };
        let spec = self.spec;
        if let (Some(length), Some(expected)) = (response.content_length(), &expected)
            && length != expected.size
        {
            return Err(SyncError::ChecksumMismatch(format!(
                "{url}: the server sends {length} bytes, the Release lists {}",
                expected.size
            )));
        }
        let mut ingest = Ingest::new(
            url,
            compression,
            &spec.package,
            &spec.architecture,
            spec.max_index_bytes,
            expected,
        )?;
        while let Some(chunk) = self
            .within(url, response.chunk())
            .await?
            .map_err(|e| fetch_failed(url, &e))?
        {
            ingest.push(&chunk)?;
        }
        Ok(Got2::Ingested(ingest.finish()?, validators))
    }

    async fn read_small(
        &self,
        url: &str,
        mut response: Box<Response>,
    ) -> Result<Vec<u8>, SyncError> {
        let mut body = Vec::new();
        while let Some(chunk) = self
            .within(url, response.chunk())
            .await?
            .map_err(|e| fetch_failed(url, &e))?
        {
            if (body.len() + chunk.len()) as u64 > MAX_RELEASE_BYTES {
                return Err(SyncError::IndexTooLarge(format!(
                    "{url}: larger than the {MAX_RELEASE_BYTES} bytes allowed for Release files"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// One GET. `conditional` allows If-None-Match / If-Modified-Since when the previous
    /// validators belong to this URL. 404 is reported as [`Got::NotFound`] for the caller's
    /// fallbacks; other non-2xx statuses are errors.
    async fn get(&self, url: &str, conditional: bool) -> Result<Got, SyncError> {
        let mut request = self.client.get(url);
        let mut sent_validators = false;
        if let Some(previous) = self.previous.filter(|p| conditional && p.url == url) {
            if let Some(etag) = &previous.etag {
                request = request.header(IF_NONE_MATCH, etag);
                sent_validators = true;
            }
            if let Some(last_modified) = &previous.last_modified {
                request = request.header(IF_MODIFIED_SINCE, last_modified);
                sent_validators = true;
            }
        }
        let response = self
            .within(url, request.send())
            .await?
            .map_err(|e| fetch_failed(url, &e))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED && sent_validators {
            return Ok(Got::NotModified);
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(Got::NotFound);
        }
        if !status.is_success() {
            return Err(SyncError::HttpStatus {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let validators = Validators {
            url: url.to_owned(),
            etag: header(ETAG),
            last_modified: header(LAST_MODIFIED),
        };
        Ok(Got::Body(Box::new(response), validators))
    }

    /// Runs `future` within the sync's deadline.
    async fn within<F: Future>(&self, url: &str, future: F) -> Result<F::Output, SyncError> {
        tokio::time::timeout_at(self.deadline, future)
            .await
            .map_err(|_| SyncError::FetchFailed {
                url: url.to_owned(),
                message: format!(
                    "timed out: the sync took longer than {:?} (timeout)",
                    self.spec.timeout
                ),
            })
    }
}

/// Outcome of fetching an index.
enum Got2 {
    NotModified,
    NotFound,
    Ingested(Ingested, Validators),
}

fn fetch_failed(url: &str, error: &reqwest::Error) -> SyncError {
    SyncError::FetchFailed {
        url: url.to_owned(),
        message: chain(error),
    }
}

/// An error and its sources on one line, without reqwest's copy of the URL.
fn chain(error: &reqwest::Error) -> String {
    let mut message = if error.is_redirect() {
        format!("more than {MAX_REDIRECTS} redirects")
    } else if error.is_timeout() {
        "timed out".to_owned()
    } else {
        String::new()
    };
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        source = cause.source();
    }
    if message.is_empty() {
        message = error.to_string();
    }
    message
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn spec(url: &str, suite: Option<&str>, component: Option<&str>) -> RepositorySpec {
        RepositorySpec {
            url: url.to_owned(),
            suite: suite.map(str::to_owned),
            component: component.map(str::to_owned),
            architecture: "arm64".to_owned(),
            package: "kubeadm".to_owned(),
            max_index_bytes: 1 << 20,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse(&spec(
                "https://pkgs.k8s.io/core:/stable:/v1.31/deb/",
                None,
                None
            ))
            .unwrap(),
            Target::Repository {
                release_dir: "https://pkgs.k8s.io/core:/stable:/v1.31/deb/".to_owned(),
                index_prefix: String::new()
            }
        );
        assert_eq!(
            Target::parse(&spec(
                "http://deb.debian.org/debian",
                Some("bookworm"),
                Some("main")
            ))
            .unwrap(),
            Target::Repository {
                release_dir: "http://deb.debian.org/debian/dists/bookworm/".to_owned(),
                index_prefix: "main/binary-arm64/".to_owned()
            }
        );
        assert_eq!(
            Target::parse(&spec("https://x/deb/Packages.gz", None, None)).unwrap(),
            Target::Index {
                url: "https://x/deb/Packages.gz".to_owned(),
                dir: "https://x/deb/".to_owned(),
                name: "Packages.gz".to_owned(),
                compression: Compression::Gzip
            }
        );
        assert_eq!(
            Target::parse(&spec("ftp://x/", None, None))
                .unwrap_err()
                .reason(),
            "FetchFailed"
        );
        assert_eq!(
            Target::parse(&spec("http://x/", Some("a"), None))
                .unwrap_err()
                .reason(),
            "ParseError"
        );
    }
}
