//! One shutdown signal, fanned out: every controller, the HTTP server and background tasks wait
//! on a clone of the same [`Shutdown`].

use tokio::sync::watch;

/// Resolves once shutdown has been requested.
#[derive(Clone, Debug)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// Requests shutdown.
#[derive(Debug)]
pub struct Trigger {
    sender: watch::Sender<bool>,
}

impl Trigger {
    /// Requests shutdown; every [`Shutdown`] resolves.
    pub fn fire(&self) {
        self.sender.send_replace(true);
    }
}

impl Shutdown {
    /// A new signal and the trigger that fires it.
    pub fn new() -> (Trigger, Self) {
        let (sender, receiver) = watch::channel(false);
        (Trigger { sender }, Self { receiver })
    }

    /// A signal fired by SIGTERM or SIGINT.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let (trigger, shutdown) = Self::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            }
            trigger.fire();
        });
        Ok(shutdown)
    }

    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Waits until shutdown is requested (or every trigger is gone).
    pub async fn wait(mut self) {
        let _ = self.receiver.wait_for(|requested| *requested).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_resolves_once_fired() {
        let (trigger, shutdown) = Shutdown::new();
        let a = tokio::spawn(shutdown.clone().wait());
        let b = tokio::spawn(shutdown.clone().wait());
        assert!(!shutdown.is_requested());
        trigger.fire();
        tokio::time::timeout(std::time::Duration::from_secs(1), async {
            a.await.unwrap();
            b.await.unwrap();
        })
        .await
        .unwrap();
        assert!(shutdown.is_requested());
    }
}
