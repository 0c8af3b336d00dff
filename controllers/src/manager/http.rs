//! `/livez`, `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::runtime::Metrics;
use crate::shutdown::Shutdown;

/// What the probes report.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the manager ready (caches synced and, with leader election, leading) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { health, metrics })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    match state.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Binds every distinct address and serves the probes and metrics on each until shutdown.
pub async fn bind(
    addresses: &[SocketAddr],
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut unique: Vec<SocketAddr> = addresses.to_vec();
    unique.dedup();
    let mut servers = Vec::new();
    for address in unique {
        let listener = tokio::net::TcpListener::bind(address).await?;
        tracing::info!(%address, "serving /livez, /readyz and /metrics");
        let app = router(Arc::clone(&health), Arc::clone(&metrics));
        let stop = shutdown.clone();
        servers.push(tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(stop.wait())
                .await
            {
                tracing::error!(error = %err, "HTTP server failed");
            }
        }));
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubernetes_upgrader_testkit::http::get;

    async fn status(address: SocketAddr, path: &str) -> u16 {
        get(address, path).await.unwrap().status
    }

    #[tokio::test]
    async fn readyz_follows_health_and_metrics_are_served() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = probe.local_addr().unwrap();
        drop(probe);
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::default());
        drop(metrics.controller("test", &[]).reconcile());
        let (trigger, shutdown) = Shutdown::new();
        let servers = bind(&[address, address], Arc::clone(&health), metrics, shutdown)
            .await
            .unwrap();
        assert_eq!(servers.len(), 1);
        assert_eq!(status(address, "/readyz").await, 503);
        assert_eq!(status(address, "/livez").await, 200);
        health.set_ready(true);
        assert_eq!(status(address, "/readyz").await, 200);
        let metrics = get(address, "/metrics").await.unwrap().body;
        assert!(
            metrics.contains("kubernetes_upgrader_reconcile_runs_total{controller=\"test\"} 1")
        );
        trigger.fire();
        for server in servers {
            tokio::time::timeout(std::time::Duration::from_secs(2), server)
                .await
                .unwrap()
                .unwrap();
        }
    }
}
