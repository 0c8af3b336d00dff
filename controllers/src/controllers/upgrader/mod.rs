//! The upgrader controller, one implementation serving ClusterClassClusterUpgrader and
//! InClusterUpgradeAutomation ([`UpgraderKind`]):
//! [`observe`] (the Plan and MachineImages from the shared caches, the Cluster from its watch's
//! store or read, its rollout, [`finish`], and the hosts when needed) → decide (pure,
//! [`decide::reconcile_decision`]: [`gates`] plan, [`in_place`] joins, the whole status, events
//! and requeue) → [`apply`] (at most one write to the Cluster, [`cluster::write_step`], one
//! status write when something changed, host writes, events). [`watch`] keeps the index of
//! upgraders and the Cluster watch; [`plan_change`] narrows a Plan's change to the upgraders it
//! concerns. `mod.rs` is wiring.

pub mod apply;
pub mod chain;
pub mod claim;
pub mod cluster;
pub mod decide;
pub mod finish;
pub mod gates;
pub mod in_place;
pub mod index;
mod kind;
pub mod observe;
pub mod plan_change;
pub mod reason;
mod watch;
pub mod window;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::v1alpha1::{
    ClusterClassClusterUpgrader, InClusterUpgradeAutomation, MachineImage, Plan,
    RETRY_HOSTS_ANNOTATION, UpgraderStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

pub use decide::{Decision, Observed, decide};
pub use kind::UpgraderKind;
use observe::Read;

use crate::runtime::controller::{Core, InvalidObject, Reconciler, Start, Trigger};
use crate::runtime::projection::cluster::CachedCluster;
use crate::runtime::status::ApiError;
use crate::runtime::{ControllerMetrics, ReconcileError, Registration, Reporter, Running, Shared};

/// Field manager of the Cluster writes and the status writes.
pub const FIELD_MANAGER: &str = "kubernetes-upgrader-upgrader";
/// Event source component, as on Go main.
pub const COMPONENT: &str = "inclusterupgradeautomation-reconciler";

/// The manager's handle on the ClusterClassClusterUpgrader controller.
pub const CLUSTER_CLASS_REGISTRATION: Registration = Registration {
    name: "clusterclassclusterupgrader",
    categories: Error::CATEGORIES,
    start: start::<ClusterClassClusterUpgrader>,
};

/// The manager's handle on the InClusterUpgradeAutomation controller.
pub const IN_CLUSTER_REGISTRATION: Registration = Registration {
    name: "inclusterupgradeautomation",
    categories: Error::CATEGORIES,
    start: start::<InClusterUpgradeAutomation>,
};

/// How the shared stores hold Plans and MachineImages.
type GuardedPlan = DeserializeGuard<Plan>;
type GuardedImage = DeserializeGuard<MachineImage>;

/// Shared state of one upgrader kind's controller.
pub struct Context {
    core: Core,
    plans: Store<GuardedPlan>,
    images: Store<GuardedImage>,
    access: Mutex<Option<(Instant, cluster::Access)>>,
    workloads: in_place::workload::Workloads,
    /// The Clusters as the dedicated watch last delivered them, once it runs.
    clusters: ClusterStore,
    /// Both kinds' upgraders, to find the one that acts on a Cluster; unset, every upgrader acts.
    claims: Option<claim::Claims>,
    /// The name Cluster API registers our `GenerateUpgradePlan` handler under.
    registered: String,
}

/// How the Cluster watch's store holds a Cluster: what the upgraders read of it.
type GuardedCluster = DeserializeGuard<CachedCluster>;

/// Where the Cluster watch leaves its store once Cluster API is discovered.
type ClusterStore = Arc<std::sync::OnceLock<Store<GuardedCluster>>>;

/// Failures of the reconcile itself; gates are status, not errors.
#[derive(
    Debug, thiserror::Error, strum::IntoStaticStr, strum::VariantNames, strum::EnumProperty,
)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error(transparent)]
    InvalidObject(#[from] InvalidObject),
    /// Discovering Cluster API failed.
    #[error("discovering Cluster API")]
    Discovery(#[source] kube::Error),
    /// Reading the Cluster, its control plane or MachineDeployments failed.
    #[error("reading the Cluster {0}")]
    ReadCluster(String, #[source] ApiError),
    /// Writing the step to the Cluster failed (v0.6's Warning reason).
    #[error("{0}")]
    #[strum(props(event_reason = "ErrorUpdatingVersion"))]
    WriteCluster(String, #[source] ApiError),
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] ApiError),
    /// Reading the Cluster's Machines, ElementalMachines, ElementalHosts or Nodes failed.
    #[error("reading the hosts of Cluster {0}")]
    ReadHosts(String, #[source] ApiError),
    /// A write of the in-place flow failed (the companion of v0.6's reason).
    #[error("updating a host in place: {0}")]
    #[strum(props(event_reason = "ErrorUpdatingHost"))]
    WriteHost(String, #[source] ApiError),
}

impl Context {
    /// A context over the shared stores.
    pub fn new(
        client: Client,
        metrics: ControllerMetrics,
        instance: Option<String>,
        plans: Store<GuardedPlan>,
        images: Store<GuardedImage>,
    ) -> Self {
        Self {
            core: Core::new(client, metrics, instance, COMPONENT),
            plans,
            images,
            access: Mutex::new(None),
            workloads: in_place::workload::Workloads::default(),
            clusters: ClusterStore::default(),
            claims: None,
            registered: chain::registered_name(chain::DEFAULT_EXTENSION_CONFIG),
        }
    }

    /// The context for an extension registered by the ExtensionConfig `name`.
    #[must_use]
    pub fn with_extension_config(mut self, name: &str) -> Self {
        self.registered = chain::registered_name(name);
        self
    }

    /// The context with the claims of both upgrader kinds checked.
    #[must_use]
    pub fn with_claims(mut self, claims: claim::Claims) -> Self {
        self.claims = Some(claims);
        self
    }

    #[cfg(test)]
    fn with_access(self, access: cluster::Access) -> Self {
        *self
            .access
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), access));
        self
    }
}

fn start<K: UpgraderKind>(shared: &Shared) -> Running {
    let cache = shared.caches.cache::<DeserializeGuard<K>>();
    let plans = shared.caches.cache::<GuardedPlan>();
    let images = shared.caches.cache::<GuardedImage>();
    let reporter = Reporter::new::<Error>(shared, K::CONTROLLER, COMPONENT);
    let class = shared
        .caches
        .cache::<DeserializeGuard<ClusterClassClusterUpgrader>>();
    let in_cluster = shared
        .caches
        .cache::<DeserializeGuard<InClusterUpgradeAutomation>>();
    let mut ctx = Context::new(
        shared.client.clone(),
        reporter.metrics.clone(),
        shared.instance.clone(),
        plans.store.clone(),
        images.store.clone(),
    )
    .with_claims(claim::Claims::new(
        class.store.clone(),
        in_cluster.store.clone(),
    ))
    .with_extension_config(&shared.extension_config);
    let trigger = Trigger::GenerationOrAnnotation(RETRY_HOSTS_ANNOTATION);
    let mut start = Start::new(shared, &cache, trigger, 16);
    let index = index::Index::new(start.store());
    if let Some(indexed) = start.subscribe() {
        watch::keep_index(index.clone(), indexed, cache.deleted(), &shared.shutdown);
    }
    let cluster_watch = watch::ClusterWatch::shared(shared);
    ctx.clusters = cluster_watch.store();
    let clusters = cluster_watch.events(index.clone());
    let (by_plan, by_deleted_plan, by_image) = (index.clone(), index.clone(), index.clone());
    let changes = plan_change::PlanChanges::default();
    let deleted_changes = changes.clone();
    start
        .watches(&plans, move |plan: Arc<GuardedPlan>| {
            let (namespace, name) = (plan.namespace().unwrap_or_default(), plan.name_any());
            match plan.0.as_ref().map(|p| changes.changed(p)) {
                Ok(plan_change::Reach::Clusters(clusters)) => clusters
                    .iter()
                    .flat_map(|cluster| by_plan.upgrading(&namespace, cluster))
                    .collect(),
                _ => by_plan.following(&namespace, &name),
            }
        })
        .watches_deleted(&plans, move |plan: Arc<GuardedPlan>| {
            let (namespace, name) = (plan.namespace().unwrap_or_default(), plan.name_any());
            deleted_changes.deleted(&namespace, &name);
            by_deleted_plan.following(&namespace, &name)
        })
        // Any image of the namespace may change any of its upgraders' steps.
        .watches(&images, move |image: Arc<GuardedImage>| {
            by_image.in_namespace(&image.namespace().unwrap_or_default())
        })
        // Another upgrader of the Cluster, of either kind, may take or leave the claim on it.
        .watches(&class, claim::siblings::<K, _>(index.clone()))
        .watches_deleted(&class, claim::siblings::<K, _>(index.clone()))
        .watches(&in_cluster, claim::siblings::<K, _>(index.clone()))
        .watches_deleted(&in_cluster, claim::siblings::<K, _>(index))
        .reconcile_on(clusters)
        .run(ctx, reporter)
}

impl<K: UpgraderKind> Reconciler<K> for Context {
    type Error = Error;

    fn core(&self) -> &Core {
        &self.core
    }

    async fn reconcile(&self, upgrader: &K, now: &Time) -> Result<Action, Error> {
        reconcile_upgrader(upgrader, self, now.0).await
    }

    fn retry(&self, _obj: &DeserializeGuard<K>, err: &Error) -> Action {
        match err {
            Error::InvalidObject(_) => Action::await_change(),
            _ => Action::requeue(Duration::from_secs(10)),
        }
    }
}

/// The reconcile body with the clock injected (boxed: the future is large).
pub async fn reconcile_upgrader<K: UpgraderKind>(
    upgrader: &K,
    ctx: &Context,
    now: Timestamp,
) -> Result<Action, Error> {
    Box::pin(reconcile_body(upgrader, ctx, now, Read::Cached)).await
}

async fn reconcile_body<K: UpgraderKind>(
    upgrader: &K,
    ctx: &Context,
    now: Timestamp,
    read: Read,
) -> Result<Action, Error> {
    let mut observed = observe::observe(upgrader, ctx, now, read).await?;
    let default_status = UpgraderStatus::default();
    let subject = decide::Subject {
        spec: upgrader.view(),
        status: upgrader.upgrader_status().unwrap_or(&default_status),
        generation: upgrader.meta().generation,
    };
    let (decision, actions) = decide::reconcile_decision(subject, &observed, now);
    // A write is decided on the Cluster as the API server holds it now: a cached Cluster that is
    // no longer current means deciding again from a fresh read. One that is current is written
    // from that read, the whole object, not the cache's view of it.
    if observed.cached && (decision.write.is_some() || !actions.is_empty()) {
        match observe::still_current(ctx, &observed, upgrader.view().cluster_name).await? {
            Some(fresh) => observed.raw = fresh,
            None => return Box::pin(reconcile_body(upgrader, ctx, now, Read::Fresh)).await,
        }
    }
    apply::apply(ctx, upgrader, &observed, decision, &actions, now).await
}

#[cfg(test)]
mod tests;
