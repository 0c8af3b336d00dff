//! A fake API server on loopback that is just enough to run the manager without a cluster. It serves our group's discovery, lists and
//! watches a set of DebianRepositorySources, applies status writes to them (bumping the
//! resourceVersion and sending a MODIFIED watch event, as the API server does), and records every
//! write.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const GROUP_PATH: &str = "/apis/kubernetesupgraded.dimitrikoshkin.com/v1alpha1";

/// What the fake serves.
#[derive(Clone, Debug, Default)]
pub struct FakeOptions {
    /// Whether discovery lists our CRDs.
    pub serve_crds: bool,
    /// How long the list of sources takes.
    pub list_delay: Duration,
    /// The DebianRepositorySources listed, as JSON objects.
    pub sources: Vec<Value>,
}

/// A recorded write.
#[derive(Clone, Debug)]
pub struct Write {
    /// `METHOD path?query`.
    pub request: String,
    /// The decoded body.
    pub body: Value,
}

#[derive(Default)]
struct Recorded {
    writes: Vec<Write>,
    requests: BTreeMap<String, u64>,
}

/// The sources as stored, and the latest resourceVersion.
struct Objects {
    items: Vec<Value>,
    resource_version: u64,
}

#[derive(Clone)]
struct FakeState {
    options: Arc<FakeOptions>,
    recorded: Arc<Mutex<Recorded>>,
    objects: Arc<Mutex<Objects>>,
    events: tokio::sync::broadcast::Sender<Value>,
}

/// A running fake API server.
pub struct FakeApiServer {
    address: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Starts serving on 127.0.0.1.
    pub async fn start(options: FakeOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let objects = Objects {
            items: options.sources.clone(),
            resource_version: 10,
        };
        let (events, _) = tokio::sync::broadcast::channel(4096);
        let state = FakeState {
            options: Arc::new(options),
            recorded: Arc::clone(&recorded),
            objects: Arc::new(Mutex::new(objects)),
            events,
        };
        let app = Router::new()
            .route("/{*path}", axum::routing::any(handle))
            .with_state(state);
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "fake API server failed");
            }
        });
        Ok(Self {
            address,
            recorded,
            task,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A kubeconfig pointing at it.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: admin\n  user:\n    token: fake\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: admin\ncurrent-context: fake\n",
            self.address
        )
    }

    /// Every write so far.
    pub fn writes(&self) -> Vec<Write> {
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .writes
            .clone()
    }

    /// Requests so far, by kind: `discovery`, `list`, `watch`, `patch status`, `create event`,
    /// `other`.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .requests
            .clone()
    }

    /// Forgets the writes and request counts so far.
    pub fn reset(&self) {
        *self.recorded.lock().unwrap_or_else(PoisonError::into_inner) = Recorded::default();
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// Our kinds' (plural, singular, kind), once per process: rendering the CRDs takes a good part
/// of a second in a debug build, far too long to repeat per request.
static NAMES: std::sync::LazyLock<Vec<(String, String, String)>> = std::sync::LazyLock::new(|| {
    api::v1alpha1::crds()
        .into_iter()
        .map(|crd| {
            (
                crd.spec.names.plural,
                crd.spec.names.singular.unwrap_or_default(),
                crd.spec.names.kind,
            )
        })
        .collect()
});

fn discovery() -> Value {
    let resources: Vec<Value> = NAMES
        .iter()
        .flat_map(|(plural, singular, kind)| {
            [
                json!({"name": plural, "singularName": singular, "namespaced": true, "kind": kind, "verbs": ["get", "list", "watch", "patch"]}),
                json!({"name": format!("{plural}/status"), "singularName": "", "namespaced": true, "kind": kind, "verbs": ["get", "patch"]}),
            ]
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1", "resources": resources})
}

async fn handle(
    State(state): State<FakeState>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let path = format!("/{path}");
    let query = query.unwrap_or_default();
    let options = &state.options;
    let is_list = path.starts_with(GROUP_PATH) && path.ends_with("/debianrepositorysources");
    // The other collections the manager's controllers watch hold nothing here.
    let is_empty_collection = !is_list && is_other_collection(&path);
    let kind = match (&method, path.as_str()) {
        (&Method::GET, GROUP_PATH) => "discovery",
        (&Method::GET, _) if is_list && query.contains("watch=true") => "watch",
        (&Method::GET, _) if is_list => "list",
        (&Method::GET, _) if is_empty_collection && query.contains("watch=true") => "empty watch",
        (&Method::GET, _) if is_empty_collection => "empty list",
        (&Method::PATCH, p) if p.ends_with("/status") => "patch status",
        (&Method::POST, p) if p.contains("/events") => "create event",
        _ => "other",
    };
    {
        let mut recorded = state
            .recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *recorded.requests.entry(kind.to_owned()).or_default() += 1;
        if method == Method::PATCH || method == Method::POST {
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            recorded.writes.push(Write {
                request: format!("{method} {path}?{query}"),
                body,
            });
        }
    }
    match kind {
        "discovery" if options.serve_crds => json_response(StatusCode::OK, &discovery()),
        "watch" => {
            let events = futures::stream::unfold(state.events.subscribe(), |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(event) => {
                            let line = Bytes::from(format!("{event}\n"));
                            return Some((Ok::<_, std::io::Error>(line), rx));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                Body::from_stream(events),
            )
                .into_response()
        }
        "list" => {
            tokio::time::sleep(options.list_delay).await;
            let objects = state.objects.lock().unwrap_or_else(PoisonError::into_inner);
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1", "kind": "DebianRepositorySourceList", "metadata": {"resourceVersion": objects.resource_version.to_string()}, "items": objects.items}),
            )
        }
        "patch status" => {
            let name = path
                .trim_end_matches("/status")
                .rsplit('/')
                .next()
                .unwrap_or_default();
            let applied: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut objects = state.objects.lock().unwrap_or_else(PoisonError::into_inner);
            objects.resource_version += 1;
            let version = objects.resource_version.to_string();
            let Some(object) = objects
                .items
                .iter_mut()
                .find(|s| s["metadata"]["name"] == name)
            else {
                return json_response(StatusCode::NOT_FOUND, &not_found(&path));
            };
            object["status"] = applied["status"].clone();
            object["metadata"]["resourceVersion"] = Value::String(version);
            let _ = state
                .events
                .send(json!({"type": "MODIFIED", "object": object}));
            json_response(StatusCode::OK, object)
        }
        "empty list" => {
            let version = state
                .objects
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .resource_version
                .to_string();
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version}, "items": []}),
            )
        }
        "empty watch" => (
            StatusCode::OK,
            [("content-type", "application/json")],
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>()),
        )
            .into_response(),
        "create event" => json_response(
            StatusCode::CREATED,
            &serde_json::from_slice(&body).unwrap_or(Value::Null),
        ),
        _ => json_response(StatusCode::NOT_FOUND, &not_found(&path)),
    }
}

/// Whether `path` is a collection of one of our other kinds, of the Jobs and Pods the build
/// controllers watch, or of the Namespaces whose build-pod rules they read.
fn is_other_collection(path: &str) -> bool {
    let last = path.rsplit('/').next().unwrap_or_default();
    (path.starts_with(GROUP_PATH) && NAMES.iter().any(|(plural, _, _)| plural == last))
        || (path.starts_with("/apis/batch/v1/") && last == "jobs")
        || (path.starts_with("/api/v1/") && last == "pods")
        || path == "/api/v1/namespaces"
}

fn not_found(path: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")})
}

/// A DebianRepositorySource object for the fake to list.
pub fn source_object(namespace: &str, name: &str, spec: &Value) -> Value {
    json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "DebianRepositorySource",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "generation": 1, "resourceVersion": "5"},
        "spec": spec,
    })
}
