//! The manager binary against a small fake API server on loopback: waits for its CRDs, turns ready
//! only after its cache has synced, syncs a signed repository into one status write, and exits
//! cleanly on SIGTERM. (The real-API-server suites live in the `e2e` crate.)
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use kubernetes_upgrader::debian::testing::{RepoBuilder, RepoServer, TestKey};
use serde_json::{Value, json};

const GROUP_PATH: &str = "/apis/kubernetesupgraded.dimitrikoshkin.com/v1alpha1";

#[derive(Clone, Default)]
struct Fake {
    serve_crds: bool,
    list_delay: Duration,
    sources: Vec<Value>,
    writes: Arc<Mutex<Vec<(String, Value)>>>,
}

async fn handle(
    State(fake): State<Fake>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let path = format!("/{path}");
    let query = query.unwrap_or_default();
    let json_response = |status: StatusCode, value: Value| {
        (
            status,
            [("content-type", "application/json")],
            value.to_string(),
        )
            .into_response()
    };
    if path == GROUP_PATH && fake.serve_crds {
        let resources: Vec<Value> = api::v1alpha1::crds()
            .into_iter()
            .flat_map(|crd| {
                let plural = crd.spec.names.plural.clone();
                [
                    json!({"name": plural, "singularName": crd.spec.names.singular, "namespaced": true, "kind": crd.spec.names.kind, "verbs": ["get", "list", "watch", "patch"]}),
                    json!({"name": format!("{plural}/status"), "singularName": "", "namespaced": true, "kind": crd.spec.names.kind, "verbs": ["get", "patch"]}),
                ]
            })
            .collect();
        return json_response(
            StatusCode::OK,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1", "resources": resources}),
        );
    }
    if path == format!("{GROUP_PATH}/debianrepositorysources") && method == Method::GET {
        if query.contains("watch=true") {
            let body =
                Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
            return (StatusCode::OK, [("content-type", "application/json")], body).into_response();
        }
        tokio::time::sleep(fake.list_delay).await;
        return json_response(
            StatusCode::OK,
            json!({"apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1", "kind": "DebianRepositorySourceList", "metadata": {"resourceVersion": "10"}, "items": fake.sources}),
        );
    }
    if method == Method::PATCH || method == Method::POST {
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        fake.writes
            .lock()
            .unwrap()
            .push((format!("{method} {path}?{query}"), value.clone()));
        let mut answer = fake.sources.first().cloned().unwrap_or(Value::Null);
        if path.ends_with("/status") {
            answer["status"] = value["status"].clone();
        } else {
            answer = value;
        }
        return json_response(StatusCode::OK, answer);
    }
    json_response(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
    )
}

async fn start_fake(fake: Fake) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/{*path}", axum::routing::any(handle))
        .with_state(fake);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kubeconfig(dir: &tempfile::TempDir, server: SocketAddr) -> std::path::PathBuf {
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{server}\nusers:\n- name: admin\n  user:\n    token: fake\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: admin\ncurrent-context: fake\n"
        ),
    )
    .unwrap();
    path
}

/// Kills the manager if a test fails before it stops it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn manager(kubeconfig: &std::path::Path, health: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kubernetes-upgrader"))
        .arg("run")
        .arg(format!("--health-probe-bind-address=127.0.0.1:{health}"))
        .arg("--metrics-bind-address=0")
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn status_of(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the manager did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn exits_with_an_actionable_message_without_crds() {
    let server = start_fake(Fake::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let child = manager(
        &kubeconfig(&dir, server),
        free_port(),
        &["--crd-wait-timeout=1s"],
    );
    let mut guard = Guard(child);
    let status = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut guard.0, Duration::from_secs(10));
        let mut stderr = String::new();
        std::io::Read::read_to_string(guard.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    assert!(!status.0.success());
    assert!(status.1.contains("CRDs are not installed"), "{}", status.1);
    assert!(
        status
            .1
            .contains("kubectl apply --server-side -f config/crd/"),
        "{}",
        status.1
    );
}

#[tokio::test]
async fn ready_after_sync_writes_status_once_and_stops_on_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = TestKey::generate("lifecycle").unwrap();
    let repo = RepoBuilder::flat()
        .kubernetes("1.31.0-1.1", &["amd64", "arm64"])
        .kubernetes("1.31.2-1.1", &["amd64", "arm64"])
        .signed_by(&key)
        .build()
        .unwrap();
    let repo_server = RepoServer::start().await.unwrap();
    repo_server.publish(&repo);
    let source = json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "DebianRepositorySource",
        "metadata": {"name": "k8s", "namespace": "team", "uid": "uid-1", "generation": 1, "resourceVersion": "5"},
        "spec": {"url": repo_server.url(), "signedBy": {"inline": key.armored_public_key().unwrap()}},
    });
    let fake = Fake {
        serve_crds: true,
        list_delay: Duration::from_millis(700),
        sources: vec![source],
        writes: Arc::default(),
    };
    let writes = Arc::clone(&fake.writes);
    let server = start_fake(fake).await;
    let dir = tempfile::tempdir().unwrap();
    let health = free_port();
    let started = Instant::now();
    let mut guard = Guard(manager(&kubeconfig(&dir, server), health, &[]));

    // Not ready while the list is still outstanding, then ready within 2 s.
    let mut saw_not_ready = false;
    let mut ready_after = None;
    while started.elapsed() < Duration::from_secs(10) {
        match status_of(health, "/readyz").await {
            Some(200) => {
                ready_after = Some(started.elapsed());
                break;
            }
            Some(503) => saw_not_ready = true,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let ready_after = ready_after.expect("the manager never became ready");
    assert!(saw_not_ready, "readyz answered 200 before the cache synced");
    assert!(
        ready_after < Duration::from_secs(3),
        "ready after {ready_after:?}"
    );

    // One status write by server-side apply, then events.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status_write = loop {
        if let Some(write) = writes
            .lock()
            .unwrap()
            .iter()
            .find(|(what, _)| what.contains("/status"))
            .cloned()
        {
            break write;
        }
        assert!(Instant::now() < deadline, "no status write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status_write.0.starts_with("PATCH "), "{}", status_write.0);
    assert!(
        status_write
            .0
            .contains("fieldManager=kubernetes-upgrader-debianrepositorysource")
    );
    assert!(status_write.0.contains("force=true"));
    let status = &status_write.1["status"];
    assert_eq!(status["versions"], json!(["v1.31.0", "v1.31.2"]));
    assert_eq!(status["signingKeyFingerprint"], key.fingerprint());
    let conditions = status["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    );
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Verified" && c["status"] == "True")
    );

    let metrics = reqwest_free_get(health, "/metrics").await;
    assert!(
        metrics.contains(
            "kubernetes_upgrader_reconcile_runs_total{controller=\"debianrepositorysource\"}"
        ),
        "{metrics}"
    );

    let stopping = Instant::now();
    terminate(&guard.0);
    let exit = tokio::task::spawn_blocking(move || wait_exit(&mut guard.0, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(stopping.elapsed() < Duration::from_secs(5));
    let status_writes = writes
        .lock()
        .unwrap()
        .iter()
        .filter(|(what, _)| what.contains("/status"))
        .count();
    assert_eq!(status_writes, 1, "exactly one status write");
}

async fn reqwest_free_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}
