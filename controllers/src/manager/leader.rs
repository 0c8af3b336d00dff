//! Leader election on a coordination.k8s.io Lease, through kube-lease-manager.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::shutdown::Shutdown;

/// The lease name v0.6 used, so that a Go manager and ours never lead at once.
pub const DEFAULT_LEASE_NAME: &str = "91e8760d.dimitrikoshkin.com";

/// Where and as whom to take the lease.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity, unique among replicas.
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be created or read.
    #[error("leader election failed")]
    Lease(#[from] LeaseManagerError),
    /// Another replica took the lease.
    #[error("lost the leader lease; exiting so that a clean start takes over")]
    Lost,
    /// The lease task stopped.
    #[error("the leader election task stopped unexpectedly")]
    Stopped,
}

/// A held lease.
pub struct Lease {
    receiver: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl LeaderElection {
    /// Waits until this replica leads. `None` when shutdown came first.
    pub async fn acquire(
        &self,
        client: Client,
        shutdown: &Shutdown,
    ) -> Result<Option<Lease>, LeaderError> {
        let seconds = self.lease_duration.as_secs().max(2);
        let manager = LeaseManagerBuilder::new(client, &self.lease_name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(seconds)
            .with_grace((seconds / 3).max(1))
            .with_field_manager("kubernetes-upgrader-leader-election")
            .build()
            .await?;
        let (mut receiver, task) = manager.watch().await;
        tracing::info!(lease = %self.lease_name, namespace = %self.namespace, identity = %self.identity, "waiting for leadership");
        let leading = tokio::select! {
            result = receiver.wait_for(|leading| *leading) => result.is_ok(),
            () = shutdown.clone().wait() => false,
        };
        let lease = Lease { receiver, task };
        if leading {
            tracing::info!(identity = %self.identity, "became leader");
            Ok(Some(lease))
        } else if shutdown.is_requested() {
            lease.release().await;
            Ok(None)
        } else {
            Err(LeaderError::Stopped)
        }
    }
}

impl Lease {
    /// Resolves when leadership is lost.
    pub async fn lost(&self) -> LeaderError {
        let mut receiver = self.receiver.clone();
        match receiver.wait_for(|leading| !*leading).await {
            Ok(_) => LeaderError::Lost,
            Err(_) => LeaderError::Stopped,
        }
    }

    /// Gives the lease up so that a standby takes over at once.
    pub async fn release(self) {
        drop(self.receiver);
        match tokio::time::timeout(Duration::from_millis(1500), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader lease"),
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "releasing the leader lease failed"),
            Ok(Err(err)) => tracing::warn!(error = %err, "the leader election task failed"),
            Err(_) => tracing::warn!("releasing the leader lease timed out"),
        }
    }
}
