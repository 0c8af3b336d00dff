//! The HTTP side: one client with our limits, and the sync that ties Release, verification and
//! index ingestion together.
//!
//! Every request URL is built with a URL type from the parsed `spec.url` (never by joining
//! strings), so a `?` or `#` in the spec cannot swallow a path suffix. Redirects are bounded and
//! never go from https to http. A server that stops sending mid-body fails after
//! [`IDLE_READ_TIMEOUT`]. Verification, decompression and scanning run on blocking threads, off
//! the async workers.

use std::error::Error as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use reqwest::{Response, StatusCode, Url};
use tokio::time::Instant;

use super::index::{Compression, Expected, Ingest, Ingested};
use super::keyring::Keyring;
use super::message::redact_url;
use super::release::{MAX_RELEASE_BYTES, Release};
use super::{
    Listing, RepositorySpec, SharedClock, SyncError, SyncOutcome, SystemClock, Validators,
};

/// Redirects followed per request (pkgs.k8s.io redirects once to its CDN).
pub const MAX_REDIRECTS: usize = 5;
/// Time allowed to open a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the next bytes of a response: a server that stalls mid-body fails this fast,
/// not at the end of the whole sync's timeout.
pub const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Downloaded chunks buffered between the network and the ingesting thread. Loopback and LAN
/// mirrors send faster than gzip decodes, so a deeper queue only holds more memory (at 8, the
/// `versions` CLI peaked at 19 MiB on a 50 MB index; at 2, 15.5 MiB and no slower than zcat).
const CHUNKS_IN_FLIGHT: usize = 2;

/// One HTTP client with our limits: rustls with the system roots plus an optional PEM bundle,
/// proxies from the environment, at most [`MAX_REDIRECTS`] redirects (never https → http), a
/// connect timeout and an idle read timeout; plus the clock that Release times are checked with.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    clock: SharedClock,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

/// Why a redirect is not followed, if it is not.
pub fn redirect_refusal(previous: &[Url], next: &Url) -> Option<String> {
    if previous.len() > MAX_REDIRECTS {
        return Some(format!("more than {MAX_REDIRECTS} redirects"));
    }
    if !matches!(next.scheme(), "http" | "https") {
        return Some(format!("refusing a redirect to a {} URL", next.scheme()));
    }
    if next.scheme() != "https" && previous.iter().any(|u| u.scheme() == "https") {
        return Some(format!(
            "refusing a redirect from https to http ({})",
            redact_url(next.as_str())
        ));
    }
    None
}

#[derive(Debug)]
struct RedirectRefused(String);

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedirectRefused {}

impl Fetcher {
    /// Builds the client. `ca_bundle` is PEM text holding one or more certificates, trusted in
    /// addition to the system roots.
    pub fn new(ca_bundle: Option<&str>) -> Result<Fetcher, SyncError> {
        Self::with_idle_timeout(ca_bundle, IDLE_READ_TIMEOUT)
    }

    /// [`Fetcher::new`] with another idle read timeout.
    pub fn with_idle_timeout(
        ca_bundle: Option<&str>,
        idle: Duration,
    ) -> Result<Fetcher, SyncError> {
        let failed = |message: String| SyncError::FetchFailed {
            url: "(client setup)".to_owned(),
            message,
        };
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            match redirect_refusal(attempt.previous(), attempt.url()) {
                None => attempt.follow(),
                Some(reason) => attempt.error(RedirectRefused(reason)),
            }
        });
        let mut builder = reqwest::Client::builder()
            .redirect(policy)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(idle)
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
        Ok(Fetcher {
            client,
            clock: Arc::new(SystemClock),
        })
    }

    /// The same client, checking Release times against `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: SharedClock) -> Fetcher {
        self.clock = clock;
        self
    }

    /// Reads the repository once: see the module documentation of [`super`].
    ///
    /// `previous` is what the last accepted sync returned ([`Listing::validators`]): its HTTP
    /// validators make the Release request conditional, a 304 is accepted only while its
    /// `valid_until` has not passed, and a Release older than its `release_date` is refused.
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
            now: self.clock.now(),
            deadline: Instant::now() + spec.timeout,
        };
        session.run(&target).await
    }
}

/// Whether `index_url` (a [`Listing::index_url`]) was read through the Release that `spec`
/// reads: it lies below that Release's directory. The accepted Release's `Date` and
/// `Valid-Until` kept beside such a listing belong to `spec`'s repository; after a change to
/// another repository (URL, suite or component) they do not, and a fresh start is made there.
pub fn index_url_belongs_to(spec: &RepositorySpec, index_url: &str) -> bool {
    let Ok(target) = Target::parse(spec) else {
        return false;
    };
    let mut dir = match target {
        Target::Repository { release_dir, .. } => release_dir,
        Target::Index { dir, .. } => dir,
    };
    dir.set_query(None);
    let index = index_url.split(['?', '#']).next().unwrap_or_default();
    index.starts_with(&redact_url(dir.as_str()))
}

/// Where to look, derived from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A repository root: `release_dir` holds the (In)Release, and index paths in the Release
    /// are `index_prefix` + `Packages{,.gz,.xz}`, relative to `release_dir`.
    Repository {
        release_dir: Url,
        index_prefix: String,
    },
    /// A direct index URL (v0.6 meaning), fetched as written; `dir` is its directory, `name`
    /// its file name.
    Index {
        url: Url,
        dir: Url,
        name: String,
        compression: Compression,
    },
}

/// `base` (a directory URL: its path ends in `/`) with `relative` appended to its path. The
/// query of `base` is kept (a token in the spec goes with every request); `relative` is
/// percent-encoded as a path, so it cannot add a query or fragment.
fn join(base: &Url, relative: &str) -> Url {
    let mut url = base.clone();
    let mut path = base.path().to_owned();
    if !path.ends_with('/') {
        path.push('/');
    }
    path.push_str(relative.trim_start_matches('/'));
    url.set_path(&path);
    url
}

impl Target {
    fn parse(spec: &RepositorySpec) -> Result<Target, SyncError> {
        let raw = spec.url.trim();
        let invalid = |message: &str| SyncError::FetchFailed {
            url: raw.to_owned(),
            message: message.to_owned(),
        };
        let mut url = Url::parse(raw).map_err(|e| invalid(&format!("not a valid URL: {e}")))?;
        // Url::parse lower-cases the scheme: HTTPS:// is https://.
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(invalid("only http and https URLs are supported"));
        }
        url.set_fragment(None);
        let path = url.path().to_owned();
        if !path.ends_with('/')
            && let Some((dir_path, name)) = path.rsplit_once('/')
            && let Some(compression) = Compression::of_index_path(name)
        {
            let mut dir = url.clone();
            dir.set_path(&format!("{dir_path}/"));
            return Ok(Target::Index {
                url,
                dir,
                name: name.to_owned(),
                compression,
            });
        }
        if !path.ends_with('/') {
            url.set_path(&format!("{path}/"));
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
                release_dir: join(&url, &format!("dists/{}/", suite.trim_matches('/'))),
                index_prefix: format!(
                    "{}/binary-{}/",
                    component.trim_matches('/'),
                    spec.architecture
                ),
            }),
            (None, None) => Ok(Target::Repository {
                release_dir: url,
                index_prefix: String::new(),
            }),
            _ => Err(SyncError::ParseError(format!(
                "{raw}: suite and component must be set together (dists layout) or both left out (flat layout)"
            ))),
        }
    }
}

/// Outcome of one GET.
enum Got {
    /// 304; `asked` says whether the request carried validators (a 304 to an unconditional
    /// request is the server's word alone).
    NotModified {
        asked: bool,
    },
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

/// One index to try: where, how compressed, and what the Release says about it.
struct Candidate {
    url: Url,
    compression: Compression,
    expected: Option<Expected>,
}

struct Session<'a> {
    client: &'a reqwest::Client,
    spec: &'a RepositorySpec,
    keyring: Option<&'a Keyring>,
    previous: Option<&'a Validators>,
    now: jiff::Timestamp,
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
                let plain = Candidate {
                    url: url.clone(),
                    compression: *compression,
                    expected: None,
                };
                if self.keyring.is_none() {
                    return self.probe(vec![plain], None).await;
                }
                let (release, validators) = match self.release(dir).await? {
                    ReleaseRead::NotModified => return Ok(SyncOutcome::NotModified),
                    ReleaseRead::Found(release, validators) => (release, validators),
                    ReleaseRead::Missing => {
                        return Err(SyncError::RepositoryNotFound {
                            url: redact_url(dir.as_str()),
                        });
                    }
                };
                let entries = release.sha256_entries()?;
                let Some(expected) = entries.get(name.as_str()) else {
                    return Err(SyncError::ChecksumMismatch(format!(
                        "{}: lists no SHA256 for {name}, so {} cannot be verified",
                        release.url(),
                        redact_url(url.as_str())
                    )));
                };
                let candidate = Candidate {
                    expected: Some(expected.clone()),
                    ..plain
                };
                let candidates = Self::by_hash(&release, dir, name, candidate);
                self.listed(candidates, release, validators).await
            }
            Target::Repository {
                release_dir,
                index_prefix,
            } => {
                let probes: Vec<Candidate> = Compression::PREFERRED
                    .iter()
                    .map(|c| Candidate {
                        url: join(
                            release_dir,
                            &format!("{index_prefix}Packages{}", c.extension()),
                        ),
                        compression: *c,
                        expected: None,
                    })
                    .collect();
                let (release, validators) = match self.release(release_dir).await? {
                    ReleaseRead::NotModified => return Ok(SyncOutcome::NotModified),
                    ReleaseRead::Missing => return self.probe(probes, Some(release_dir)).await,
                    ReleaseRead::Found(release, validators) => (release, validators),
                };
                let entries = release.sha256_entries()?;
                let candidates: Vec<Candidate> = Compression::PREFERRED
                    .iter()
                    .filter_map(|c| {
                        let path = format!("{index_prefix}Packages{}", c.extension());
                        entries.get(&path).map(|e| {
                            Self::by_hash(
                                &release,
                                release_dir,
                                &path,
                                Candidate {
                                    url: join(release_dir, &path),
                                    compression: *c,
                                    expected: Some(e.clone()),
                                },
                            )
                        })
                    })
                    .flatten()
                    .collect();
                if candidates.is_empty() {
                    if !release.lists_architecture(&self.spec.architecture) {
                        return Err(self.no_match(release.url()));
                    }
                    if self.keyring.is_some() {
                        return Err(SyncError::ChecksumMismatch(format!(
                            "{}: lists no SHA256 for {index_prefix}Packages{{.gz,.xz,}}, so no index can be verified",
                            release.url()
                        )));
                    }
                    tracing::debug!(release = release.url(), "Release lists no index; probing");
                    return self.probe(probes, None).await;
                }
                self.listed(candidates, release, validators).await
            }
        }
    }

    /// With `Acquire-By-Hash: yes`, the index at `by-hash/SHA256/<hex>` beside `path` first, then
    /// `path` itself (a mirror without the by-hash file answers 404).
    fn by_hash(
        release: &Release,
        release_dir: &Url,
        path: &str,
        candidate: Candidate,
    ) -> Vec<Candidate> {
        let Some(expected) = candidate
            .expected
            .as_ref()
            .filter(|_| release.acquire_by_hash())
        else {
            return vec![candidate];
        };
        let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        let hashed = if dir.is_empty() {
            format!("by-hash/SHA256/{}", expected.sha256)
        } else {
            format!("{dir}/by-hash/SHA256/{}", expected.sha256)
        };
        vec![
            Candidate {
                url: join(release_dir, &hashed),
                compression: candidate.compression,
                expected: candidate.expected.clone(),
            },
            candidate,
        ]
    }

    /// Reads the first listed index that exists.
    async fn listed(
        &self,
        candidates: Vec<Candidate>,
        release: Box<Release>,
        validators: Validators,
    ) -> Result<SyncOutcome, SyncError> {
        let mut last = None;
        for candidate in candidates {
            match self.index(&candidate, false).await? {
                Got2::NotFound => {
                    tracing::debug!(url = %redact_url(candidate.url.as_str()), "listed index is missing; trying the next one");
                    last = Some(candidate.url);
                }
                Got2::NotModified => return Ok(SyncOutcome::NotModified),
                Got2::Ingested(ingested, _) => {
                    return self.listing(
                        &candidate.url,
                        *ingested,
                        release.fingerprint.clone(),
                        validators,
                    );
                }
            }
        }
        Err(SyncError::HttpStatus {
            url: last.map(|u| redact_url(u.as_str())).unwrap_or_default(),
            status: 404,
        })
    }

    /// Reads indexes without a Release (no keyring): the first that exists wins; validators
    /// belong to the index. `root` is the repository root when no Release was found there.
    async fn probe(
        &self,
        probes: Vec<Candidate>,
        root: Option<&Url>,
    ) -> Result<SyncOutcome, SyncError> {
        let mut last = None;
        for candidate in probes {
            match self.index(&candidate, true).await? {
                Got2::NotFound => last = Some(candidate.url),
                Got2::NotModified => return Ok(SyncOutcome::NotModified),
                Got2::Ingested(ingested, validators) => {
                    return self.listing(&candidate.url, *ingested, None, validators);
                }
            }
        }
        if let Some(root) = root {
            return Err(SyncError::RepositoryNotFound {
                url: redact_url(root.as_str()),
            });
        }
        Err(SyncError::HttpStatus {
            url: last.map(|u| redact_url(u.as_str())).unwrap_or_default(),
            status: 404,
        })
    }

    fn no_match(&self, index_url: &str) -> SyncError {
        SyncError::NoMatchingPackages {
            package: self.spec.package.clone(),
            architecture: self.spec.architecture.clone(),
            index_url: redact_url(index_url),
        }
    }

    fn listing(
        &self,
        url: &Url,
        ingested: Ingested,
        fingerprint: Option<String>,
        validators: Validators,
    ) -> Result<SyncOutcome, SyncError> {
        let url = redact_url(url.as_str());
        let Ingested {
            summary, sha256, ..
        } = ingested;
        if summary.matched == 0 {
            return Err(self.no_match(&url));
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
            index_url: url,
            index_sha256: sha256,
            signing_key_fingerprint: fingerprint,
            validators,
        }))
    }

    /// A 304 for the Release is only as good as the Release it stands for: refused once that
    /// Release's `Valid-Until` has passed, whether or not the request was conditional (a
    /// freshly started controller remembers the accepted Release's times, not its validators).
    /// Otherwise a 304 to an unconditional request is an HTTP error.
    fn not_modified(&self, url: &Url, asked: bool) -> Result<ReleaseRead, SyncError> {
        if let Some(until) = self.previous.and_then(|p| p.valid_until)
            && until < self.now
        {
            return Err(SyncError::ReleaseExpired(format!(
                "{}: the server answered 304 Not Modified, but the Release accepted before expired at {until} (Valid-Until)",
                redact_url(url.as_str())
            )));
        }
        if !asked {
            return Err(SyncError::HttpStatus {
                url: redact_url(url.as_str()),
                status: 304,
            });
        }
        Ok(ReleaseRead::NotModified)
    }

    /// Verifies and parses a Release on a blocking thread, then checks it against the last
    /// accepted one.
    async fn verify(
        &self,
        url: &Url,
        body: Vec<u8>,
        signature: Option<(Url, Vec<u8>)>,
        mut validators: Validators,
    ) -> Result<ReleaseRead, SyncError> {
        let keyring = self.keyring.cloned();
        let now = self.now;
        let shown = redact_url(url.as_str());
        let release = tokio::task::spawn_blocking(move || match signature {
            None => Release::from_inrelease(&shown, &body, keyring.as_ref(), now),
            Some((signature_url, signature)) => Release::from_release(
                &shown,
                &body,
                keyring.as_ref(),
                Some((&redact_url(signature_url.as_str()), &signature)),
                now,
            ),
        })
        .await
        .map_err(|e| SyncError::ParseError(format!("verifying the Release: {e}")))??;
        release.check_not_replayed(self.previous)?;
        if release.fingerprint.is_some() {
            validators.release_date = release.date;
            validators.valid_until = release.valid_until;
        }
        Ok(ReleaseRead::Found(Box::new(release), validators))
    }

    /// InRelease, else Release (+ Release.gpg with a keyring).
    async fn release(&self, dir: &Url) -> Result<ReleaseRead, SyncError> {
        let inrelease = join(dir, "InRelease");
        match self.get(&inrelease, true).await? {
            Got::NotModified { asked } => return self.not_modified(&inrelease, asked),
            Got::Body(response, validators) => {
                let body = self.read_small(&inrelease, response).await?;
                return self.verify(&inrelease, body, None, validators).await;
            }
            Got::NotFound => {}
        }
        let plain = join(dir, "Release");
        let (body, validators) = match self.get(&plain, true).await? {
            Got::NotModified { asked } => return self.not_modified(&plain, asked),
            Got::NotFound if self.keyring.is_some() => {
                return Err(SyncError::RepositoryNotFound {
                    url: redact_url(dir.as_str()),
                });
            }
            Got::NotFound => return Ok(ReleaseRead::Missing),
            Got::Body(response, validators) => {
                (self.read_small(&plain, response).await?, validators)
            }
        };
        if self.keyring.is_none() {
            let shown = redact_url(plain.as_str());
            let now = self.now;
            let release = tokio::task::spawn_blocking(move || {
                Release::from_release(&shown, &body, None, None, now)
            })
            .await
            .map_err(|e| SyncError::ParseError(format!("reading the Release: {e}")))??;
            return Ok(ReleaseRead::Found(Box::new(release), validators));
        }
        let signature_url = join(dir, "Release.gpg");
        let signature = match self.get(&signature_url, false).await? {
            Got::Body(response, _) => self.read_small(&signature_url, response).await?,
            Got::NotFound => {
                return Err(SyncError::SignatureInvalid(format!(
                    "{}: missing (and there is no InRelease), so {} cannot be verified",
                    redact_url(signature_url.as_str()),
                    redact_url(plain.as_str())
                )));
            }
            Got::NotModified { .. } => {
                return Err(SyncError::HttpStatus {
                    url: redact_url(signature_url.as_str()),
                    status: 304,
                });
            }
        };
        self.verify(&plain, body, Some((signature_url, signature)), validators)
            .await
    }

    /// Fetches and ingests one index. The bytes go to a blocking thread that hashes,
    /// decompresses and scans them, so the async worker only moves bytes.
    async fn index(&self, candidate: &Candidate, conditional: bool) -> Result<Got2, SyncError> {
        let url = &candidate.url;
        let shown = redact_url(url.as_str());
        let (mut response, validators) = match self.get(url, conditional).await? {
            Got::NotModified { asked: true } => return Ok(Got2::NotModified),
            Got::NotModified { asked: false } => {
                return Err(SyncError::HttpStatus {
                    url: shown,
                    status: 304,
                });
            }
            Got::NotFound => return Ok(Got2::NotFound),
            Got::Body(response, validators) => (response, validators),
        };
        let spec = self.spec;
        if let (Some(length), Some(expected)) = (response.content_length(), &candidate.expected)
            && length != expected.size
        {
            return Err(SyncError::ChecksumMismatch(format!(
                "{shown}: the server sends {length} bytes, the Release lists {}",
                expected.size
            )));
        }
        let mut ingest = Ingest::new(
            &shown,
            candidate.compression,
            &spec.package,
            &spec.architecture,
            spec.max_index_bytes,
            candidate.expected.clone(),
        )?;
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(CHUNKS_IN_FLIGHT);
        // The worker's verdict: `Err(Ok(e))` stopped early on the data, `Err(Err(e))` at the end.
        let worker = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = receiver.blocking_recv() {
                ingest.push(&chunk).map_err(Ok)?;
            }
            ingest.finish().map_err(Err)
        });
        let download = async {
            while let Some(chunk) = self
                .within(url, response.chunk())
                .await?
                .map_err(|e| fetch_failed(url, &e))?
            {
                if sender.send(chunk).await.is_err() {
                    // The worker stopped with its verdict.
                    break;
                }
            }
            Ok::<(), SyncError>(())
        };
        let downloaded = download.await;
        drop(sender);
        let verdict = worker
            .await
            .map_err(|e| SyncError::ParseError(format!("{shown}: ingestion: {e}")))?;
        match (downloaded, verdict) {
            // What the data said wins over a failure to download the rest of it.
            (_, Err(Ok(stopped))) => Err(stopped),
            (Err(error), _) | (Ok(()), Err(Err(error))) => Err(error),
            (Ok(()), Ok(ingested)) => Ok(Got2::Ingested(Box::new(ingested), validators)),
        }
    }

    async fn read_small(
        &self,
        url: &Url,
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
                    "{}: larger than the {MAX_RELEASE_BYTES} bytes allowed for Release files",
                    redact_url(url.as_str())
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// One GET. `conditional` allows If-None-Match / If-Modified-Since when the previous
    /// validators belong to this URL. 404 is reported as [`Got::NotFound`] for the caller's
    /// fallbacks; other non-2xx statuses are errors.
    async fn get(&self, url: &Url, conditional: bool) -> Result<Got, SyncError> {
        let shown = redact_url(url.as_str());
        let mut request = self.client.get(url.clone());
        let mut sent_validators = false;
        if let Some(previous) = self.previous.filter(|p| conditional && p.url == shown) {
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
        if status == StatusCode::NOT_MODIFIED && (sent_validators || conditional) {
            return Ok(Got::NotModified {
                asked: sent_validators,
            });
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(Got::NotFound);
        }
        if !status.is_success() {
            return Err(SyncError::HttpStatus {
                url: shown,
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
            url: shown,
            etag: header(ETAG),
            last_modified: header(LAST_MODIFIED),
            release_date: None,
            valid_until: None,
        };
        Ok(Got::Body(Box::new(response), validators))
    }

    /// Runs `future` within the sync's deadline.
    async fn within<F: Future>(&self, url: &Url, future: F) -> Result<F::Output, SyncError> {
        tokio::time::timeout_at(self.deadline, future)
            .await
            .map_err(|_| SyncError::FetchFailed {
                url: redact_url(url.as_str()),
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
    Ingested(Box<Ingested>, Validators),
}

fn fetch_failed(url: &Url, error: &reqwest::Error) -> SyncError {
    SyncError::FetchFailed {
        url: redact_url(url.as_str()),
        message: chain(error),
    }
}

/// An error and its sources on one line, without reqwest's copy of the URL.
pub(crate) fn chain(error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() {
        "timed out (no data within the idle read timeout)".to_owned()
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

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
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
                release_dir: url("https://pkgs.k8s.io/core:/stable:/v1.31/deb/"),
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
                release_dir: url("http://deb.debian.org/debian/dists/bookworm/"),
                index_prefix: "main/binary-arm64/".to_owned()
            }
        );
        assert_eq!(
            Target::parse(&spec("https://x/deb/Packages.gz", None, None)).unwrap(),
            Target::Index {
                url: url("https://x/deb/Packages.gz"),
                dir: url("https://x/deb/"),
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

    #[test]
    fn an_index_url_with_a_query_is_an_index_and_is_fetched_as_written() {
        assert_eq!(
            Target::parse(&spec("https://x/deb/Packages?token=a/b#frag", None, None)).unwrap(),
            Target::Index {
                url: url("https://x/deb/Packages?token=a/b"),
                dir: url("https://x/deb/?token=a/b"),
                name: "Packages".to_owned(),
                compression: Compression::None
            }
        );
    }

    #[test]
    fn schemes_are_case_insensitive() {
        assert_eq!(
            Target::parse(&spec("HTTPS://X/deb/", None, None)).unwrap(),
            Target::Repository {
                release_dir: url("https://x/deb/"),
                index_prefix: String::new()
            }
        );
        assert!(matches!(
            Target::parse(&spec("Http://x/Packages.XZ", None, None)).unwrap(),
            Target::Repository { .. }
        ));
    }

    #[test]
    fn query_and_fragment_cannot_swallow_path_suffixes() {
        let Target::Repository { release_dir, .. } =
            Target::parse(&spec("http://x/repo?t=1#f", Some("sta?ble"), Some("main"))).unwrap()
        else {
            panic!("a repository");
        };
        let inrelease = join(&release_dir, "InRelease");
        assert_eq!(inrelease.path(), "/repo/dists/sta%3Fble/InRelease");
        assert_eq!(inrelease.query(), Some("t=1"));
        assert_eq!(inrelease.fragment(), None);
        assert_eq!(
            join(&url("http://x/deb/"), "main/by-hash/SHA256/ab#c?d").as_str(),
            "http://x/deb/main/by-hash/SHA256/ab%23c%3Fd"
        );
    }

    #[test]
    fn index_urls_belong_to_the_repository_whose_release_lists_them() {
        let flat = spec("https://u:p@x/deb?t=1", None, None);
        assert!(index_url_belongs_to(
            &flat,
            "https://redacted@x/deb/Packages.gz?t=1"
        ));
        assert!(index_url_belongs_to(
            &flat,
            "https://redacted@x/deb/by-hash/SHA256/ab?t=1"
        ));
        assert!(!index_url_belongs_to(
            &flat,
            "https://redacted@x/other/Packages.gz"
        ));
        assert!(!index_url_belongs_to(
            &flat,
            "https://redacted@y/deb/Packages"
        ));
        let dists = spec("http://x/debian", Some("stable"), Some("main"));
        assert!(index_url_belongs_to(
            &dists,
            "http://x/debian/dists/stable/main/binary-arm64/Packages.xz"
        ));
        let other_suite = spec("http://x/debian", Some("testing"), Some("main"));
        assert!(!index_url_belongs_to(
            &other_suite,
            "http://x/debian/dists/stable/main/binary-arm64/Packages.xz"
        ));
        let direct = spec("http://x/deb/Packages", None, None);
        assert!(index_url_belongs_to(&direct, "http://x/deb/Packages"));
        assert!(!index_url_belongs_to(
            &spec("ftp://x/", None, None),
            "ftp://x/Packages"
        ));
    }

    #[test]
    fn redirects_never_go_from_https_to_http() {
        let https = url("https://pkgs.k8s.io/core/InRelease");
        let cdn = url("https://cdn.example/InRelease");
        let plain = url("http://cdn.example/InRelease");
        assert_eq!(redirect_refusal(std::slice::from_ref(&https), &cdn), None);
        assert_eq!(redirect_refusal(std::slice::from_ref(&plain), &cdn), None);
        assert_eq!(redirect_refusal(std::slice::from_ref(&plain), &plain), None);
        let refused = redirect_refusal(&[https.clone(), cdn.clone()], &plain).unwrap();
        assert!(refused.contains("https to http"), "{refused}");
        assert!(redirect_refusal(&[https], &url("file:///etc/passwd")).is_some());
        let many = vec![cdn.clone(); MAX_REDIRECTS + 1];
        assert!(redirect_refusal(&many, &cdn).unwrap().contains("redirects"));
        assert_eq!(redirect_refusal(&many[..MAX_REDIRECTS], &cdn), None);
    }
}
