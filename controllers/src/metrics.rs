//! One Prometheus registry for the manager: reconcile runs, failures and durations per controller,
//! plus domain counters. Every label set is bounded.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller, such as `debianrepositorysource`.
    pub controller: &'static str,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The controller.
    pub controller: &'static str,
    /// The condition reason or error category.
    pub reason: &'static str,
}

/// Labels of a Debian repository sync.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// `Fetched`, `NotModified` or a failure reason.
    pub result: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The manager's metrics.
pub struct Metrics {
    registry: Registry,
    runs: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    debian_syncs: Family<SyncLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubernetes_upgrader");
        let runs = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration =
            Family::<ControllerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let debian_syncs = Family::<SyncLabels, Counter>::default();
        registry.register(
            "reconcile_runs",
            "Reconciles started, by controller",
            runs.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that ended in a failure, by controller and reason",
            failures.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconcile, by controller",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "debian_repository_syncs",
            "Debian repository syncs, by result",
            debian_syncs.clone(),
        );
        Self {
            registry,
            runs,
            failures,
            duration,
            debian_syncs,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the guard drops, so no return path is missed.
    pub fn reconcile(self: &Arc<Self>, controller: &'static str) -> ReconcileTimer {
        self.runs
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: Arc::clone(self),
            controller,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn failure(&self, controller: &'static str, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { controller, reason })
            .inc();
    }

    /// Counts a Debian repository sync.
    pub fn debian_sync(&self, result: &'static str) {
        self.debian_syncs
            .get_or_create(&SyncLabels { result })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Observes the reconcile duration when dropped.
pub struct ReconcileTimer {
    metrics: Arc<Metrics>,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_runs_failures_and_durations() {
        let metrics = Arc::new(Metrics::default());
        drop(metrics.reconcile("debianrepositorysource"));
        metrics.failure("debianrepositorysource", "HTTPStatus");
        metrics.debian_sync("NotModified");
        let text = metrics.encode().unwrap();
        assert!(text.contains(
            "kubernetes_upgrader_reconcile_runs_total{controller=\"debianrepositorysource\"} 1"
        ));
        assert!(text.contains("kubernetes_upgrader_reconcile_failures_total{controller=\"debianrepositorysource\",reason=\"HTTPStatus\"} 1"));
        assert!(text.contains("kubernetes_upgrader_reconcile_duration_seconds_count{controller=\"debianrepositorysource\"} 1"));
        assert!(text.contains(
            "kubernetes_upgrader_debian_repository_syncs_total{result=\"NotModified\"} 1"
        ));
    }
}
