//! What controllers and the manager share, so that neither names the other: the [`Shared`]
//! handles (client, metrics, caches, shutdown), a controller's [`Registration`] and [`Running`]
//! futures, the skeleton every controller runs on ([`controller`]), the one place that reports a
//! failed reconcile ([`Reporter`]), status writes, events, backoff, owned children and the
//! choreography fixtures.
//!
//! See `controllers/README.md` for the checklist a new controller follows.

pub mod backoff;
#[cfg(test)]
pub mod builders;
pub mod caches;
pub mod children;
pub mod controller;
pub mod events;
#[cfg(test)]
pub mod fixtures;
pub mod metrics;
pub mod projection;
pub mod state_metrics;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::runtime::controller::{self as kube_controller, Action};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource};

pub use caches::{Cache, Caches};
pub use events::{Events, Note, cause_chain};
pub use metrics::{ControllerMetrics, Metrics};

use crate::shutdown::Shutdown;

/// The ExtensionConfig name used when none is configured, as `config/extension/` installs it.
pub const DEFAULT_EXTENSION_CONFIG: &str = "kubernetes-upgrader";

/// Everything a controller needs from the manager.
#[derive(Clone)]
pub struct Shared {
    /// The API client.
    pub client: Client,
    /// Only this namespace is watched, when set.
    pub namespace: Option<String>,
    /// The manager's metrics registry.
    pub metrics: Arc<Metrics>,
    /// The reporting instance for events, normally the pod name.
    pub instance: Option<String>,
    /// Fires when the controllers stop.
    pub shutdown: Shutdown,
    /// One reflector per watched kind, shared by every controller.
    pub caches: Arc<Caches>,
    /// The name of the ExtensionConfig that registers the Runtime Extension with Cluster API.
    pub extension_config: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Handles over `client`; `namespace` confines every watch.
    pub fn new(
        client: Client,
        namespace: Option<String>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
        shutdown: Shutdown,
    ) -> Self {
        let caches = Arc::new(Caches::new(
            client.clone(),
            namespace.clone(),
            shutdown.clone(),
        ));
        Self {
            client,
            namespace,
            metrics,
            instance,
            shutdown,
            caches,
            extension_config: DEFAULT_EXTENSION_CONFIG.to_owned(),
        }
    }

    /// The API of a namespaced kind, over the watched namespace (or all).
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

/// Why a controller stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Its event stream ended although shutdown was not requested.
    #[error("its event stream ended")]
    StreamEnded,
    /// A shared watch stopped.
    #[error("the watch of {kind} ended")]
    WatchEnded {
        /// The kind watched.
        kind: String,
    },
}

/// A controller started by the manager.
pub struct Running {
    /// Resolves once the controller's caches have synced.
    pub ready: BoxFuture<'static, ()>,
    /// Runs the controller until shutdown; returning before shutdown, with `Ok` or `Err`, is a
    /// failure the manager acts on.
    pub run: BoxFuture<'static, Result<(), ControllerError>>,
}

impl Running {
    /// A controller that cannot run (a shared watch was started before it subscribed): it
    /// reports [`ControllerError::StreamEnded`] at once.
    pub fn stream_ended(ready: BoxFuture<'static, ()>) -> Self {
        Self {
            ready,
            run: Box::pin(async { Err(ControllerError::StreamEnded) }),
        }
    }
}

/// Resolves once every one of `readiness` has.
pub fn all_ready(readiness: Vec<BoxFuture<'static, ()>>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        futures::future::join_all(readiness).await;
    })
}

/// A controller the manager knows how to start.
#[derive(Clone, Copy, Debug)]
pub struct Registration {
    /// Name used in logs and metrics.
    pub name: &'static str,
    /// The categories of its reconcile error (`ReconcileError::CATEGORIES`), so the manager can
    /// show its failure series at zero from the start, before it leads.
    pub categories: &'static [&'static str],
    /// Starts the controller.
    pub start: fn(&Shared) -> Running,
}

/// Resolves once `store` has seen its first complete list.
///
/// The store's readiness signal wakes only the last task that polled it, and the controller polls
/// it too, so this re-polls on a short timer instead of waiting once.
pub fn synced<K>(store: Store<K>) -> BoxFuture<'static, ()>
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

/// The time of a reconcile, in whole seconds (the precision of metav1 `Time` on the wire), so
/// that a status written now compares equal when it is read back.
pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    use k8s_openapi::jiff::Timestamp;
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()),
    )
}

/// Runs a controller's result stream to its end, reporting each result through `reporter`.
/// Ending before `shutdown` was requested is [`ControllerError::StreamEnded`].
pub async fn drive<K, E, Q>(
    results: impl futures::Stream<Item = Result<(ObjectRef<K>, Action), kube_controller::Error<E, Q>>>,
    reporter: Reporter,
    shutdown: Shutdown,
) -> Result<(), ControllerError>
where
    K: Resource<DynamicType = ()>,
    E: ReconcileError,
    Q: std::error::Error + 'static,
{
    use futures::StreamExt;
    results
        .for_each(|result| {
            let reporter = reporter.clone();
            async move { reporter.report(result).await }
        })
        .await;
    if shutdown.is_requested() {
        Ok(())
    } else {
        Err(ControllerError::StreamEnded)
    }
}

/// A controller's reconcile error: a stable category, used as the metric label and the Warning
/// event's reason.
///
/// Derived, never written by hand: a `thiserror` enum with `strum::IntoStaticStr` (the category
/// is the PascalCase variant name), `strum::VariantNames` (every category, registered at zero
/// at start) and `strum::EnumProperty` (a variant marked `#[strum(props(event_reason = ".."))]`
/// names its Warning event otherwise, where a wire contract says so).
pub trait ReconcileError: std::error::Error + Send + Sync + 'static {
    /// Every category this error can have, registered at zero at start.
    const CATEGORIES: &'static [&'static str];

    /// The PascalCase category of this error.
    fn category(&self) -> &'static str;

    /// The reason of the Warning event this failure becomes: the category, unless a wire
    /// contract names the event otherwise.
    fn event_reason(&self) -> &'static str;
}

impl<E> ReconcileError for E
where
    E: std::error::Error + strum::VariantNames + strum::EnumProperty + Send + Sync + 'static,
    for<'a> &'a E: Into<&'static str>,
{
    const CATEGORIES: &'static [&'static str] = E::VARIANTS;

    fn category(&self) -> &'static str {
        self.into()
    }

    fn event_reason(&self) -> &'static str {
        self.get_str("event_reason")
            .unwrap_or_else(|| self.category())
    }
}

/// The category of failures that happen outside a reconcile (watch errors, the queue).
pub const CATEGORY_WATCH: &str = "Watch";

/// The one place a controller's results are reported: a failed reconcile becomes a Warning
/// event (reason: the category; note: the cause chain cut to 1 KiB), a log line and a count in
/// `reconcile_failures{controller, category}`.
#[derive(Clone, Debug)]
pub struct Reporter {
    /// The controller's series.
    pub metrics: ControllerMetrics,
    events: Events,
    controller: &'static str,
}

impl Reporter {
    /// A reporter for `controller`, whose events come from `component`; registers the
    /// controller's series for each category of `E`.
    pub fn new<E: ReconcileError>(
        shared: &Shared,
        controller: &'static str,
        component: &str,
    ) -> Self {
        Self {
            metrics: shared.metrics.controller(controller, E::CATEGORIES),
            events: Events::new(shared.client.clone(), component, shared.instance.clone()),
            controller,
        }
    }

    /// Reports one result of `Controller::run`.
    pub async fn report<K, E, Q>(
        &self,
        result: Result<(ObjectRef<K>, Action), kube_controller::Error<E, Q>>,
    ) where
        K: Resource<DynamicType = ()>,
        E: ReconcileError,
        Q: std::error::Error + 'static,
    {
        match result {
            Ok(_) => {}
            Err(kube_controller::Error::ReconcilerFailed(err, object)) => {
                let category = err.category();
                let note = cause_chain(&err);
                self.metrics.failure(category);
                tracing::warn!(controller = self.controller, object = %object, category, error = %note, "reconcile failed");
                self.events
                    .publish_to(&(*object).into(), &Note::warning(err.event_reason(), note))
                    .await;
            }
            Err(other) => {
                self.metrics.failure(CATEGORY_WATCH);
                tracing::warn!(controller = self.controller, error = %cause_chain(&other), "controller stream error");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::v1alpha1::DebianRepositorySource;
    use fixtures::{STEP, mock_client, within};

    #[derive(
        Debug, thiserror::Error, strum::IntoStaticStr, strum::VariantNames, strum::EnumProperty,
    )]
    enum TestError {
        #[error("writing status")]
        WriteStatus(#[source] std::io::Error),
        #[error("writing the Cluster")]
        #[strum(props(event_reason = "ErrorUpdatingVersion"))]
        WriteCluster(#[source] std::io::Error),
    }

    #[test]
    fn categories_are_the_variant_names_and_a_property_renames_the_event() {
        assert_eq!(TestError::CATEGORIES, ["WriteStatus", "WriteCluster"]);
        let status = TestError::WriteStatus(std::io::Error::other("x"));
        assert_eq!(
            (status.category(), status.event_reason()),
            ("WriteStatus", "WriteStatus")
        );
        let cluster = TestError::WriteCluster(std::io::Error::other("x"));
        assert_eq!(
            (cluster.category(), cluster.event_reason()),
            ("WriteCluster", "ErrorUpdatingVersion")
        );
    }

    #[tokio::test]
    async fn a_failed_reconcile_is_one_warning_one_count_and_a_capped_cause_chain() {
        let (client, verifier) = mock_client();
        let (_trigger, shutdown) = Shutdown::new();
        let metrics = Arc::new(Metrics::default());
        let shared = Shared::new(
            client,
            None,
            Arc::clone(&metrics),
            Some("pod-1".into()),
            shutdown,
        );
        let reporter = Reporter::new::<TestError>(&shared, "test", "test-reconciler");
        let before = metrics.encode().unwrap();
        let series = "kubernetes_upgrader_reconcile_failures_total{controller=\"test\",category=\"WriteStatus\"}";
        assert!(before.contains(&format!("{series} 0")), "{before}");

        let scenario = verifier.run(|mut server| async move {
            let call = server.next().await;
            assert_eq!(call.method, http::Method::POST);
            assert!(
                call.uri
                    .starts_with("/apis/events.k8s.io/v1/namespaces/team/events")
            );
            assert_eq!(call.body["type"], "Warning");
            assert_eq!(call.body["reason"], "WriteStatus");
            assert_eq!(call.body["reportingController"], "test-reconciler");
            assert_eq!(call.body["reportingInstance"], "pod-1");
            assert_eq!(call.body["regarding"]["kind"], "DebianRepositorySource");
            assert_eq!(call.body["regarding"]["name"], "src");
            let note = call.body["note"].as_str().unwrap().to_owned();
            assert!(note.starts_with("writing status: conflict "), "{note}");
            assert!(
                note.len() <= events::MAX_NOTE_BYTES && note.len() > 1000,
                "{}",
                note.len()
            );
            let event = call.body.clone();
            call.reply(201, &event);
            server
        });
        let object = ObjectRef::<DebianRepositorySource>::new("src").within("team");
        let err = TestError::WriteStatus(std::io::Error::other(format!(
            "conflict {}",
            "x".repeat(4000)
        )));
        let result: Result<
            (ObjectRef<DebianRepositorySource>, Action),
            kube_controller::Error<TestError, std::io::Error>,
        > = Err(kube_controller::Error::ReconcilerFailed(
            err,
            Box::new(object.erase()),
        ));
        within("the report", STEP, reporter.report(result)).await;
        scenario.finish().await;
        let after = metrics.encode().unwrap();
        assert!(after.contains(&format!("{series} 1")), "{after}");
    }
}
