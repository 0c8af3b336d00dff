//! The controller manager: waits for the CRDs, serves probes and metrics, takes the leader lease
//! when asked to, runs every registered controller and stops them all on one shutdown signal.

mod http;
mod leader;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use kube::Client;
use kube::core::GroupVersion;

pub use http::Health;
pub use leader::{DEFAULT_LEASE_NAME, LeaderElection};

use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, Trigger};

/// Everything a controller needs from the manager.
#[derive(Clone)]
pub struct Shared {
    /// The API client.
    pub client: Client,
    /// Only this namespace is watched, when set.
    pub namespace: Option<String>,
    /// The manager's metrics.
    pub metrics: Arc<Metrics>,
    /// The reporting instance for events, normally the pod name.
    pub instance: Option<String>,
    /// Fires when the manager stops.
    pub shutdown: Shutdown,
}

/// A controller started by the manager.
pub struct Running {
    /// Resolves once the controller's caches have synced.
    pub ready: BoxFuture<'static, ()>,
    /// Runs the controller until shutdown.
    pub run: BoxFuture<'static, ()>,
}

/// A controller the manager knows how to start.
#[derive(Clone, Copy, Debug)]
pub struct Registration {
    /// Name used in logs and metrics.
    pub name: &'static str,
    /// Starts the controller.
    pub start: fn(&Shared) -> Running,
}

/// Resolves once `store` has seen its first complete list.
///
/// The store's readiness signal wakes only the last task that polled it, and the controller polls
/// it too, so this re-polls on a short timer instead of waiting once.
pub fn synced<K>(store: kube::runtime::reflector::Store<K>) -> BoxFuture<'static, ()>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    Box::pin(async move {
        while tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready())
            .await
            .is_err()
        {}
    })
}

/// Every controller this build ships.
pub const CONTROLLERS: &[Registration] = &[crate::debian_source::REGISTRATION];

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
    #[error("checking for the CRDs failed: {0}")]
    Discovery(#[source] kube::Error),
    /// The probe or metrics address could not be bound.
    #[error("binding the probe and metrics server failed: {0}")]
    Bind(#[source] std::io::Error),
    /// Leader election failed or the lease was lost.
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
}

/// Runs the manager until `shutdown` fires.
pub async fn run(
    client: Client,
    config: ManagerConfig,
    shutdown: Shutdown,
) -> Result<(), ManagerError> {
    wait_for_crds(&client, config.crd_wait, &shutdown).await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let servers = http::bind(
        &config.listen,
        Arc::clone(&health),
        Arc::clone(&metrics),
        shutdown.clone(),
    )
    .await
    .map_err(ManagerError::Bind)?;

    let lease = match &config.leader_election {
        Some(election) => match election.acquire(client.clone(), &shutdown).await? {
            Some(lease) => Some(lease),
            None => return Ok(()),
        },
        None => None,
    };

    // Losing the lease stops every controller: a new leader takes over from a clean start.
    let (controllers_trigger, controllers_shutdown) = Shutdown::new();
    let shared = Shared {
        client,
        namespace: config.namespace.clone(),
        metrics,
        instance: config.instance.clone(),
        shutdown: controllers_shutdown,
    };
    let mut ready = Vec::new();
    let mut runs = Vec::new();
    for registration in CONTROLLERS {
        tracing::info!(controller = registration.name, "starting controller");
        let running = (registration.start)(&shared);
        ready.push(running.ready);
        runs.push(tokio::spawn(running.run));
    }
    let readiness = {
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            join_all(ready).await;
            tracing::info!("caches synced; ready");
            health.set_ready(true);
        })
    };

    let outcome = supervise(lease.as_ref(), &shutdown, &controllers_trigger).await;
    health.set_ready(false);
    readiness.abort();
    controllers_trigger.fire();
    stop_controllers(runs).await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    drop(shared);
    for server in servers {
        let _ = server.await;
    }
    outcome
}

/// In-flight reconciles get this long to finish after shutdown; a slow repository fetch is cut
/// short rather than holding the process past its termination grace period.
const CONTROLLER_STOP_GRACE: Duration = Duration::from_secs(3);

async fn stop_controllers(runs: Vec<tokio::task::JoinHandle<()>>) {
    let aborts: Vec<_> = runs
        .iter()
        .map(tokio::task::JoinHandle::abort_handle)
        .collect();
    if let Ok(results) = tokio::time::timeout(CONTROLLER_STOP_GRACE, join_all(runs)).await {
        for err in results.into_iter().filter_map(Result::err) {
            tracing::error!(error = %err, "a controller task failed");
        }
    } else {
        tracing::warn!("controllers did not stop within {CONTROLLER_STOP_GRACE:?}; aborting them");
        aborts.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

async fn supervise(
    lease: Option<&leader::Lease>,
    shutdown: &Shutdown,
    controllers: &Trigger,
) -> Result<(), ManagerError> {
    let result = if let Some(lease) = lease {
        tokio::select! {
            () = shutdown.clone().wait() => Ok(()),
            lost = lease.lost() => Err(ManagerError::Leader(lost)),
        }
    } else {
        shutdown.clone().wait().await;
        Ok(())
    };
    controllers.fire();
    result
}

/// Polls discovery until every CRD of ours is served, or `timeout` passes.
async fn wait_for_crds(
    client: &Client,
    timeout: Duration,
    shutdown: &Shutdown,
) -> Result<(), ManagerError> {
    let wanted: Vec<String> = api::v1alpha1::crds()
        .into_iter()
        .map(|crd| crd.spec.names.plural)
        .collect();
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
