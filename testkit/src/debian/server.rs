//! A loopback HTTP server for generated repositories, with fault injection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use sha2::{Digest as _, Sha256};

use super::repo::Repository;

/// A fault served for one path instead of, or on top of, its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an empty body.
    Status(u16),
    /// Wait this long before answering.
    Delay(Duration),
    /// Declare the full length but send only this many bytes, then drop the connection.
    Truncate(usize),
    /// Flip bytes in the middle of the body.
    Corrupt,
    /// Serve these bytes instead (with their own ETag).
    Replace(Bytes),
    /// Redirect (302) to this location.
    Redirect(String),
    /// Send only this many bytes, then keep the connection open without sending anything more.
    Stall(usize),
}

#[derive(Clone)]
struct Served {
    body: Bytes,
    etag: String,
    last_modified: String,
}

#[derive(Default)]
struct ServerState {
    files: HashMap<String, Served>,
    faults: HashMap<String, Fault>,
    per_path: HashMap<String, u64>,
    generation: i64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<ServerState>,
    requests: AtomicU64,
    with_authorization: AtomicU64,
    not_modified: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A loopback HTTP server for repositories, with ETag/Last-Modified, 304s, request counters and
/// per-path fault injection.
pub struct RepoServer {
    url: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RepoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RepoServer {
    /// Starts serving on 127.0.0.1 and a free port, with no files.
    pub async fn start() -> anyhow::Result<RepoServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = signal.await;
                })
                .await;
        });
        Ok(RepoServer {
            url: format!("http://{address}/"),
            shared,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Base URL, ending in `/`: the root of what [`RepoServer::publish`] serves.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// URL of a path below the root.
    pub fn url_for(&self, path: &str) -> String {
        format!("{}{}", self.url, path.trim_start_matches('/'))
    }

    /// Serves `repo` at the root, replacing everything served before (a new repository version:
    /// changed files get new validators).
    pub fn publish(&self, repo: &Repository) {
        self.publish_at("", repo);
    }

    /// Serves `repo` below `prefix` (for example `other/`), replacing what was there.
    pub fn publish_at(&self, prefix: &str, repo: &Repository) {
        let prefix = prefix.trim_start_matches('/');
        let mut state = self.shared.lock();
        state.generation += 1;
        let generation = state.generation;
        state
            .files
            .retain(|path, _| prefix.is_empty() || !path.starts_with(prefix));
        if prefix.is_empty() {
            state.files.clear();
        }
        for (path, body) in &repo.files {
            let served = served(body.clone(), generation);
            state.files.insert(format!("{prefix}{path}"), served);
        }
    }

    /// Adds or replaces one file.
    pub fn put(&self, path: &str, body: impl Into<Bytes>) {
        let mut state = self.shared.lock();
        state.generation += 1;
        let served = served(body.into(), state.generation);
        state
            .files
            .insert(path.trim_start_matches('/').to_owned(), served);
    }

    /// Stops serving one file (404).
    pub fn remove(&self, path: &str) {
        self.shared
            .lock()
            .files
            .remove(path.trim_start_matches('/'));
    }

    /// Injects a fault for one path, replacing any fault there.
    pub fn inject(&self, path: &str, fault: Fault) {
        self.shared
            .lock()
            .faults
            .insert(path.trim_start_matches('/').to_owned(), fault);
    }

    /// Answers `status` for `path`.
    pub fn fail_with_status(&self, path: &str, status: u16) {
        self.inject(path, Fault::Status(status));
    }

    /// Delays answers for `path`.
    pub fn delay(&self, path: &str, delay: Duration) {
        self.inject(path, Fault::Delay(delay));
    }

    /// Sends only the first `keep` bytes of `path`, then drops the connection.
    pub fn truncate(&self, path: &str, keep: usize) {
        self.inject(path, Fault::Truncate(keep));
    }

    /// Sends the first `keep` bytes of `path`, then nothing more, without closing.
    pub fn stall(&self, path: &str, keep: usize) {
        self.inject(path, Fault::Stall(keep));
    }

    /// Flips bytes in the middle of `path`.
    pub fn corrupt(&self, path: &str) {
        self.inject(path, Fault::Corrupt);
    }

    /// Serves `body` for `path` without changing the published file.
    pub fn replace(&self, path: &str, body: impl Into<Bytes>) {
        self.inject(path, Fault::Replace(body.into()));
    }

    /// Redirects `path` to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.inject(path, Fault::Redirect(location.to_owned()));
    }

    /// Removes the fault for one path.
    pub fn clear_fault(&self, path: &str) {
        self.shared
            .lock()
            .faults
            .remove(path.trim_start_matches('/'));
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests that carried an `Authorization` header (credentials from the URL's userinfo).
    pub fn requests_with_authorization(&self) -> u64 {
        self.shared.with_authorization.load(Ordering::SeqCst)
    }

    /// 304 answers so far.
    pub fn not_modified(&self) -> u64 {
        self.shared.not_modified.load(Ordering::SeqCst)
    }

    /// Requests for one path so far.
    pub fn requests_for(&self, path: &str) -> u64 {
        self.shared
            .lock()
            .per_path
            .get(path.trim_start_matches('/'))
            .copied()
            .unwrap_or(0)
    }

    /// Resets every counter.
    pub fn reset_counters(&self) {
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.not_modified.store(0, Ordering::SeqCst);
        self.shared.with_authorization.store(0, Ordering::SeqCst);
        self.shared.lock().per_path.clear();
    }

    /// Stops the server: the port is closed and open connections are told to close.
    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    async fn shutdown_now(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn served(body: Bytes, generation: i64) -> Served {
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..20]);
    let time = jiff::Timestamp::from_second(1_700_000_000 + generation)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let last_modified = jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&time)
        .unwrap_or_default();
    Served {
        body,
        etag,
        last_modified,
    }
}

fn status_response(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

async fn handle(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/').to_owned();
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if headers.contains_key(header::AUTHORIZATION) {
        shared.with_authorization.fetch_add(1, Ordering::SeqCst);
    }
    let (fault, file) = {
        let mut state = shared.lock();
        *state.per_path.entry(path.clone()).or_default() += 1;
        (
            state.faults.get(&path).cloned(),
            state.files.get(&path).cloned(),
        )
    };
    let mut file = file;
    match fault.clone() {
        Some(Fault::Status(status)) => {
            return status_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            );
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Redirect(location)) => {
            let mut response = status_response(StatusCode::FOUND);
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            return response;
        }
        Some(Fault::Replace(body)) => file = Some(served(body, 0)),
        _ => {}
    }
    let Some(file) = file else {
        return status_response(StatusCode::NOT_FOUND);
    };
    let etag_matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == file.etag || t.trim() == "*")
        });
    let date_matches = !headers.contains_key(header::IF_NONE_MATCH)
        && headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == file.last_modified);
    let mut response = if etag_matches || date_matches {
        shared.not_modified.fetch_add(1, Ordering::SeqCst);
        status_response(StatusCode::NOT_MODIFIED)
    } else {
        match fault {
            Some(Fault::Stall(keep)) => {
                let keep = keep.min(file.body.len());
                let head = file.body.slice(..keep);
                let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(head)])
                    .chain(futures::stream::pending::<Result<Bytes, std::io::Error>>());
                let mut response = Response::new(Body::from_stream(stream));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(file.body.len()));
                response
            }
            Some(Fault::Truncate(keep)) => {
                let keep = keep.min(file.body.len());
                let head = file.body.slice(..keep);
                let stream = futures::stream::iter(vec![
                    Ok(head),
                    Err(std::io::Error::other("truncated on purpose")),
                ]);
                let mut response = Response::new(Body::from_stream(stream));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(file.body.len()));
                response
            }
            Some(Fault::Corrupt) => {
                let mut body = file.body.to_vec();
                let middle = body.len() / 2;
                for byte in body.iter_mut().skip(middle).take(4) {
                    *byte ^= 0x5a;
                }
                Response::new(Body::from(body))
            }
            _ => Response::new(Body::from(file.body.clone())),
        }
    };
    if let Ok(value) = HeaderValue::from_str(&file.etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    if let Ok(value) = HeaderValue::from_str(&file.last_modified) {
        response.headers_mut().insert(header::LAST_MODIFIED, value);
    }
    response
}
