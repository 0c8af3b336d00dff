//! The controller manager: waits for the CRDs, serves probes and metrics, takes the leader lease
//! when asked to, runs the controllers it is handed (it knows none by name) with their shared
//! watches, supervises them, and stops them all on one shutdown signal.
//!
//! A controller or watch that ends before shutdown makes `/readyz` fail and the manager return an
//! error naming it and its cause, so the process exits non-zero and is restarted.

mod http;
mod leader;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kube::Client;
use kube::core::GroupVersion;
use tokio::task::JoinSet;

pub use http::Health;
pub use leader::{DEFAULT_LEASE_NAME, LeaderElection};

use crate::runtime::state_metrics::StateCollector;
use crate::runtime::{ControllerError, Metrics, Registration, Running, Shared};
use crate::shutdown::Shutdown;

/// How the manager runs.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Only this namespace is watched, when set.
    pub namespace: Option<String>,
    /// Where probes and metrics are served; duplicates are bound once.
    pub listen: Vec<SocketAddr>,
    /// Leader election, when enabled.
    pub leader_election: Option<LeaderElection>,
    /// How long to wait for the CRDs before giving up.
    pub crd_wait: Duration,
    /// The reporting instance for events, normally the pod name.
    pub instance: Option<String>,
    /// The ExtensionConfig that registers the Runtime Extension (for its handlers' names).
    pub extension_config: String,
}

/// Why the manager stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The CRDs are not installed.
    #[error(
        "the kubernetesupgraded.dimitrikoshkin.com/v1alpha1 CRDs are not installed (missing: {missing}); install them with `kubectl apply --server-side -f config/crd/` or `kubernetes-upgrader crds | kubectl apply --server-side -f -`"
    )]
    CrdsMissing {
        /// Plurals that were not served.
        missing: String,
    },
    /// Discovery failed.
    #[error("checking for the CRDs failed")]
    Discovery(#[source] kube::Error),
    /// The probe or metrics address could not be bound.
    #[error("binding the probe and metrics server failed")]
    Bind(#[source] std::io::Error),
    /// Leader election failed or the lease was lost.
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
    /// A controller or shared watch stopped before shutdown.
    #[error("{name} stopped unexpectedly")]
    ControllerFailed {
        /// The controller or watch.
        name: String,
        /// Why.
        #[source]
        cause: Stopped,
    },
}

/// How a supervised task ended before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    /// It returned an error.
    #[error(transparent)]
    Failed(#[from] ControllerError),
    /// It returned without an error.
    #[error("it returned although shutdown was not requested")]
    Returned,
    /// It panicked or was cancelled.
    #[error("its task ended abnormally")]
    Panicked(#[source] tokio::task::JoinError),
}

/// Something started with the controllers, from the same [`Shared`] handles, while this replica
/// leads, and supervised as they are (a server's handlers, for example).
#[derive(Clone)]
pub struct Companion {
    /// Name used in logs.
    pub name: &'static str,
    /// Starts it.
    pub start: Arc<dyn Fn(&Shared) -> Running + Send + Sync>,
}

impl std::fmt::Debug for Companion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Companion")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Runs `controllers` until `shutdown` fires, or until one of them stops.
pub async fn run(
    client: Client,
    config: ManagerConfig,
    controllers: &[Registration],
    shutdown: Shutdown,
) -> Result<(), ManagerError> {
    run_with(client, config, controllers, &[], shutdown).await
}

/// [`run`], also starting `companions` with the controllers.
pub async fn run_with(
    client: Client,
    config: ManagerConfig,
    controllers: &[Registration],
    companions: &[Companion],
    shutdown: Shutdown,
) -> Result<(), ManagerError> {
    wait_for_crds(&client, config.crd_wait, &shutdown).await?;
    let metrics = Arc::new(Metrics::default());
    // Every controller's series show from the start, also on a replica waiting for the lease.
    for registration in controllers {
        metrics.controller(registration.name, registration.categories);
    }
    let health = Arc::new(Health::default());
    // The servers outlive the controllers, so that /readyz reports a failed controller, and stop
    // when the manager returns.
    let (servers_trigger, servers_shutdown) = Shutdown::new();
    let servers = http::bind(
        &config.listen,
        Arc::clone(&health),
        Arc::clone(&metrics),
        servers_shutdown,
    )
    .await
    .map_err(ManagerError::Bind)?;
    let outcome = run_controllers(
        client,
        &config,
        (controllers, companions),
        &shutdown,
        metrics,
        &health,
    )
    .await;
    servers_trigger.fire();
    for server in servers {
        let _ = server.await;
    }
    outcome
}

async fn run_controllers(
    client: Client,
    config: &ManagerConfig,
    (controllers, companions): (&[Registration], &[Companion]),
    shutdown: &Shutdown,
    metrics: Arc<Metrics>,
    health: &Arc<Health>,
) -> Result<(), ManagerError> {
    let lease = match &config.leader_election {
        Some(election) => match election.acquire(client.clone(), shutdown).await? {
            Some(lease) => Some(lease),
            None => return Ok(()),
        },
        None => None,
    };

    // Losing the lease stops every controller: a new leader takes over from a clean start.
    let (controllers_trigger, controllers_shutdown) = Shutdown::new();
    let mut shared = Shared::new(
        client,
        config.namespace.clone(),
        metrics,
        config.instance.clone(),
        controllers_shutdown,
    );
    shared.extension_config.clone_from(&config.extension_config);
    let mut ready = Vec::new();
    let mut tasks = JoinSet::new();
    let mut started = Vec::new();
    for registration in controllers {
        tracing::info!(controller = registration.name, "starting controller");
        started.push((registration.name.to_owned(), (registration.start)(&shared)));
    }
    for companion in companions {
        tracing::info!(companion = companion.name, "starting");
        started.push((companion.name.to_owned(), (companion.start)(&shared)));
    }
    shared
        .metrics
        .set_state(Some(Box::new(StateCollector::new(&shared.caches))));
    // Each kind the controllers asked for is watched once, for all of them.
    started.extend(shared.caches.start());
    for (name, running) in started {
        ready.push(running.ready);
        tasks.spawn(async move { (name, running.run.await) });
    }
    let readiness = {
        let health = Arc::clone(health);
        tokio::spawn(async move {
            join_all(ready).await;
            tracing::info!("caches synced; ready");
            health.set_ready(true);
        })
    };

    let outcome = supervise(lease.as_ref(), shutdown, &mut tasks).await;
    health.set_ready(false);
    readiness.abort();
    if let Err(err) = &outcome {
        tracing::error!(error = %crate::runtime::cause_chain(err), "stopping every controller");
    }
    shared.metrics.set_state(None);
    controllers_trigger.fire();
    stop_controllers(tasks).await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    drop(shared);
    outcome
}

/// In-flight reconciles get this long to finish after shutdown; a slow repository fetch is cut
/// short rather than holding the process past its termination grace period.
const CONTROLLER_STOP_GRACE: Duration = Duration::from_secs(3);

type Task = (String, Result<(), ControllerError>);

async fn stop_controllers(mut tasks: JoinSet<Task>) {
    let drain = async {
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok((name, Err(err))) => {
                    tracing::error!(controller = %name, error = %crate::runtime::cause_chain(&err), "a controller failed while stopping");
                }
                Err(err) if !err.is_cancelled() => {
                    tracing::error!(error = %err, "a controller task failed while stopping");
                }
                _ => {}
            }
        }
    };
    if tokio::time::timeout(CONTROLLER_STOP_GRACE, drain)
        .await
        .is_err()
    {
        tracing::warn!("controllers did not stop within {CONTROLLER_STOP_GRACE:?}; aborting them");
        tasks.abort_all();
    }
}

/// Waits for shutdown, the loss of the lease, or the first controller or watch to stop.
async fn supervise(
    lease: Option<&leader::Lease>,
    shutdown: &Shutdown,
    tasks: &mut JoinSet<Task>,
) -> Result<(), ManagerError> {
    let lost = async {
        match lease {
            Some(lease) => lease.lost().await,
            None => std::future::pending().await,
        }
    };
    let stopped = async {
        match tasks.join_next().await {
            Some(Ok((name, Ok(())))) => (name, Stopped::Returned),
            Some(Ok((name, Err(err)))) => (name, Stopped::Failed(err)),
            Some(Err(err)) => ("a controller".to_owned(), Stopped::Panicked(err)),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown.clone().wait() => Ok(()),
        lost = lost => Err(ManagerError::Leader(lost)),
        (name, cause) = stopped => Err(ManagerError::ControllerFailed { name, cause }),
    }
}

/// Polls discovery until every CRD of ours is served, or `timeout` passes.
async fn wait_for_crds(
    client: &Client,
    timeout: Duration,
    shutdown: &Shutdown,
) -> Result<(), ManagerError> {
    // Names only: generating the CRDs' schemas would cost the idle manager megabytes.
    let wanted: Vec<String> = api::v1alpha1::plurals();
    let group_version = GroupVersion::gv(api::GROUP, api::VERSION);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let served: Vec<String> = match client
            .list_api_group_resources(&group_version.api_version())
            .await
        {
            Ok(list) => list.resources.into_iter().map(|r| r.name).collect(),
            Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
            Err(err) => return Err(ManagerError::Discovery(err)),
        };
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|plural| !served.contains(plural))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline || shutdown.is_requested() {
            return Err(ManagerError::CrdsMissing {
                missing: missing.join(", "),
            });
        }
        tracing::info!(missing = %missing.join(", "), "waiting for CRDs");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
