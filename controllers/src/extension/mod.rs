//! The Cluster API Runtime Extension: Cluster API asks it for the path of a chained upgrade
//! (`GenerateUpgradePlan`, answered from the Plan's ready images) and before and after each part
//! of any upgrade, whoever changed the version, so that the upgraders' gates hold a hand-made
//! upgrade as they hold their own steps.
//!
//! [`start`] serves HTTPS from process start ([`server`]), so Discovery answers within Cluster
//! API's 60 s warm-up; the hooks answer from the shared caches once this replica leads and they
//! have synced ([`Extension::companion`]), and `Failure` (which holds) before that. The
//! Service selects ready pods, and only the leader is ready.

pub mod handlers;
pub mod hooks;
pub mod observe;
pub mod server;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::FutureExt;

use crate::manager::Companion;
use crate::runtime::{Running, Shared};
use crate::shutdown::Shutdown;
use observe::Observer;
use wire::Hook;

/// Cluster API cancels a call after `timeoutSeconds`; an answer that is not ready a second
/// before is a `Failure`, which holds, rather than no answer.
const ANSWER_DEADLINE: Duration = Duration::from_secs(9);
/// The largest request body read (Cluster API sends one Cluster).
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Where and with what certificate the extension serves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The HTTPS address.
    pub address: SocketAddr,
    /// The folder holding `tls.crt` and `tls.key`.
    pub cert_dir: PathBuf,
}

/// Why the extension cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The serving certificate cannot be used.
    #[error("the extension's serving certificate")]
    Certificate(#[from] server::CertError),
    /// rustls refused the configuration.
    #[error("configuring TLS for the extension")]
    Tls(#[from] rustls::Error),
    /// The address cannot be bound.
    #[error("binding the extension address {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// The observer the hooks answer from, set while this replica leads.
type Slot = Arc<RwLock<Option<Arc<Observer>>>>;

/// The running extension server.
#[derive(Debug)]
pub struct Extension {
    slot: Slot,
    /// The address it listens on.
    pub local: SocketAddr,
}

/// Binds `settings.address` and serves until `shutdown`.
pub async fn start(settings: &Settings, shutdown: Shutdown) -> Result<Extension, StartError> {
    let certificates = Arc::new(server::Certificates::load(&settings.cert_dir)?);
    server::keep_reloading(Arc::clone(&certificates), shutdown.clone());
    let config = server::tls_config(certificates)?;
    let tcp = tokio::net::TcpListener::bind(settings.address)
        .await
        .map_err(|e| StartError::Bind(settings.address, e))?;
    let listener = server::TlsListener::new(tcp, config, shutdown.clone())
        .map_err(|e| StartError::Bind(settings.address, e))?;
    let local = axum::serve::Listener::local_addr(&listener)
        .map_err(|e| StartError::Bind(settings.address, e))?;
    let slot = Slot::default();
    let app = router(Arc::clone(&slot));
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.wait())
            .await
        {
            tracing::error!(error = %err, "the extension server failed");
        }
    });
    tracing::info!(address = %local, "serving the Cluster API Runtime Extension");
    Ok(Extension { slot, local })
}

impl Extension {
    /// What the manager starts with the controllers while this replica leads: the observer over
    /// the shared caches, handed to the hooks once they have synced and taken back at stop.
    pub fn companion(&self) -> Companion {
        let slot = Arc::clone(&self.slot);
        Companion {
            name: "extension",
            start: Arc::new(move |shared: &Shared| lead(shared, Arc::clone(&slot))),
        }
    }
}

fn lead(shared: &Shared, slot: Slot) -> Running {
    let stores = observe::stores(&shared.caches);
    let synced = observe::synced(&stores);
    let observer = Arc::new(Observer::new(shared.client.clone(), stores));
    let shutdown = shared.shutdown.clone();
    // Ready once the hooks answer from synced caches, so that a ready replica never fails them
    // for want of its caches.
    let (answering, answers) = tokio::sync::oneshot::channel::<()>();
    let ready = async move {
        let _ = answers.await;
    }
    .boxed();
    let run = async move {
        tokio::select! {
            () = synced => {
                *slot.write().unwrap_or_else(PoisonError::into_inner) = Some(observer);
                let _ = answering.send(());
                tracing::info!("the extension answers hooks");
                shutdown.wait().await;
            }
            () = shutdown.clone().wait() => {}
        }
        *slot.write().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }
    .boxed();
    Running { ready, run }
}

fn router(slot: Slot) -> Router {
    let mut app = Router::new().route(&wire::discovery_path(), post(discovery));
    for hook in Hook::ALL {
        app = app.route(
            &hook.path(),
            post(move |State(slot): State<Slot>, body: Bytes| answer(slot, hook, body)),
        );
    }
    app.layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(slot)
}

fn json(body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn discovery() -> Response {
    json(&wire::discovery())
}

async fn answer(slot: Slot, hook: Hook, body: Bytes) -> Response {
    let observer = slot.read().unwrap_or_else(PoisonError::into_inner).clone();
    let now = crate::runtime::now().0;
    let answered = tokio::time::timeout(
        ANSWER_DEADLINE,
        hooks::answer(observer.as_deref(), hook, &body, now),
    )
    .await;
    if let Ok(response) = answered {
        tracing::debug!(
            hook = hook.name(),
            status = %response["status"],
            retry_after_seconds = %response["retryAfterSeconds"],
            message = %response["message"],
            "extension answered"
        );
        return json(&response);
    }
    let message = format!("no answer within {ANSWER_DEADLINE:?}; ask again");
    match hook {
        Hook::GenerateUpgradePlan => json(&wire::GenerateUpgradePlanResponse::failure(message)),
        _ => json(&wire::HookResponse::failure(hook, message)),
    }
}

#[cfg(test)]
mod tests;
