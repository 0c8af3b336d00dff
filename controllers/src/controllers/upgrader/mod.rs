//! The upgrader controller, one implementation serving ClusterClassClusterUpgrader and
//! InClusterUpgradeAutomation:
//! observe (the Plan and MachineImages from the shared caches, the Cluster through dynamic access,
//! and its rollout, [`finish`]) → plan (pure, [`gates::plan`]) → decide (pure, [`decide()`]) →
//! apply (at most one write to the Cluster, [`cluster::write_step`], then one status write when
//! something changed, then events on transitions).

pub mod apply;
pub mod claim;
pub mod cluster;
pub mod decide;
pub mod finish;
pub mod gates;
pub mod in_place;
pub mod index;
pub mod observe;
pub mod reason;
pub mod window;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use api::v1alpha1::{
    ClusterClassClusterUpgrader, InClusterUpgradeAutomation, InPlace, MachineImage, Plan,
    RETRY_HOSTS_ANNOTATION, UpgraderSpecView, UpgraderStatus,
};
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

pub use decide::{Decision, Observed, decide};
use observe::Read;

use crate::runtime::caches::{Cacheable, generation_or_annotation_changed, watch_config};
use crate::runtime::projection::Projected;
use crate::runtime::status::WriteError;
use crate::runtime::{
    ControllerMetrics, Events, ReconcileError, Registration, Reporter, Running, Shared, all_ready,
    drive, synced,
};

/// Field manager of the Cluster writes and the status writes.
pub const FIELD_MANAGER: &str = "kubernetes-upgrader-upgrader";
/// Event source component, as on Go main.
pub const COMPONENT: &str = "inclusterupgradeautomation-reconciler";
/// How long a discovery of Cluster API is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);

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

/// Either upgrader kind.
pub trait UpgraderKind: Cacheable + Resource<DynamicType = ()> {
    /// Name in logs and metrics.
    const CONTROLLER: &'static str;
    /// The kind, as messages name it.
    const KIND: &'static str;
    /// Which kind acts first when two upgraders of one age claim a Cluster (lower first).
    const CLAIM_RANK: u8;
    /// The shared spec.
    fn view(&self) -> UpgraderSpecView<'_>;
    /// The status, if any.
    fn upgrader_status(&self) -> Option<&UpgraderStatus>;
    /// `spec.inPlace`.
    fn in_place(&self) -> Option<&InPlace>;
}

impl UpgraderKind for ClusterClassClusterUpgrader {
    const CONTROLLER: &'static str = "clusterclassclusterupgrader";
    const KIND: &'static str = "ClusterClassClusterUpgrader";
    const CLAIM_RANK: u8 = 0;
    fn view(&self) -> UpgraderSpecView<'_> {
        self.spec.common()
    }
    fn upgrader_status(&self) -> Option<&UpgraderStatus> {
        self.status.as_ref()
    }
    fn in_place(&self) -> Option<&InPlace> {
        self.spec.in_place()
    }
}

impl UpgraderKind for InClusterUpgradeAutomation {
    const CONTROLLER: &'static str = "inclusterupgradeautomation";
    const KIND: &'static str = "InClusterUpgradeAutomation";
    const CLAIM_RANK: u8 = 1;
    fn view(&self) -> UpgraderSpecView<'_> {
        self.spec.common()
    }
    fn upgrader_status(&self) -> Option<&UpgraderStatus> {
        self.status.as_ref()
    }
    fn in_place(&self) -> Option<&InPlace> {
        self.spec.in_place()
    }
}

/// How the shared stores hold Plans and MachineImages.
type GuardedPlan = DeserializeGuard<Plan>;
type GuardedImage = DeserializeGuard<MachineImage>;

/// Shared state of one upgrader kind's controller.
pub struct Context {
    client: Client,
    metrics: ControllerMetrics,
    events: Events,
    plans: Store<GuardedPlan>,
    images: Store<GuardedImage>,
    access: Mutex<Option<(Instant, cluster::Access)>>,
    workloads: in_place::workload::Workloads,
    /// The Clusters as the dedicated watch last delivered them, once it runs.
    clusters: ClusterStore,
    /// Both kinds' upgraders, to find the one that acts on a Cluster; unset, every upgrader acts.
    claims: Option<claim::Claims>,
}

/// Where the Cluster watch leaves its store once Cluster API is discovered.
type ClusterStore = Arc<std::sync::OnceLock<Store<DynamicObject>>>;

/// Failures of the reconcile itself; gates are status, not errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error("the object cannot be read: {0}")]
    InvalidObject(String),
    /// Discovering Cluster API failed.
    #[error("discovering Cluster API")]
    Discovery(#[source] kube::Error),
    /// Reading the Cluster, its control plane or MachineDeployments failed.
    #[error("reading the Cluster {0}")]
    ReadCluster(String, #[source] WriteError),
    /// Writing the step to the Cluster failed.
    #[error("{0}")]
    WriteCluster(String, #[source] WriteError),
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] WriteError),
    /// Reading the Cluster's Machines, ElementalMachines, ElementalHosts or Nodes failed.
    #[error("reading the hosts of Cluster {0}")]
    ReadHosts(String, #[source] WriteError),
    /// A write of the in-place flow failed.
    #[error("updating a host in place: {0}")]
    WriteHost(String, #[source] WriteError),
}

impl ReconcileError for Error {
    const CATEGORIES: &'static [&'static str] = &[
        "InvalidObject",
        "Discovery",
        "ReadCluster",
        "WriteCluster",
        "WriteStatus",
        "ReadHosts",
        "WriteHost",
    ];

    fn category(&self) -> &'static str {
        match self {
            Self::InvalidObject(_) => "InvalidObject",
            Self::Discovery(_) => "Discovery",
            Self::ReadCluster(..) => "ReadCluster",
            Self::WriteCluster(..) => "WriteCluster",
            Self::WriteStatus(_) => "WriteStatus",
            Self::ReadHosts(..) => "ReadHosts",
            Self::WriteHost(..) => "WriteHost",
        }
    }

    /// v0.6's reason for a refused Cluster write; its companion for a refused host write.
    fn event_reason(&self) -> &'static str {
        match self {
            Self::WriteCluster(..) => "ErrorUpdatingVersion",
            Self::WriteHost(..) => "ErrorUpdatingHost",
            other => other.category(),
        }
    }
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
            events: Events::new(client.clone(), COMPONENT, instance),
            client,
            metrics,
            plans,
            images,
            access: Mutex::new(None),
            workloads: in_place::workload::Workloads::default(),
            clusters: ClusterStore::default(),
            claims: None,
        }
    }

    /// The context with the claims of both upgrader kinds checked.
    #[must_use]
    pub fn with_claims(mut self, claims: claim::Claims) -> Self {
        self.claims = Some(claims);
        self
    }

    /// The Cluster from the watch's store, if the watch has delivered it.
    fn cached_cluster(&self, namespace: &str, name: &str) -> Option<serde_json::Value> {
        let store = self.clusters.get()?;
        let resource = self
            .access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()?
            .1
            .resource
            .clone();
        let object = store.get(&ObjectRef::new_with(name, resource).within(namespace))?;
        serde_json::to_value(object.as_ref()).ok()
    }

    /// Cluster API as this server serves it, rediscovered after [`DISCOVERY_TTL`].
    async fn access(&self) -> Result<Option<cluster::Access>, Error> {
        {
            let cached = self.access.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, access)) = cached.as_ref()
                && at.elapsed() < DISCOVERY_TTL
            {
                return Ok(Some(access.clone()));
            }
        }
        let found = cluster::discover(&self.client)
            .await
            .map_err(Error::Discovery)?;
        if let Some(access) = &found {
            *self.access.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((Instant::now(), access.clone()));
        }
        Ok(found)
    }

    #[cfg(test)]
    fn with_access(self, access: cluster::Access) -> Self {
        *self.access.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), access));
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
    let ctx = Arc::new(
        Context::new(
            shared.client.clone(),
            reporter.metrics.clone(),
            shared.instance.clone(),
            plans.store.clone(),
            images.store.clone(),
        )
        .with_claims(claim::Claims::new(
            class.store.clone(),
            in_cluster.store.clone(),
        )),
    );
    let ready = all_ready(vec![
        synced(cache.store.clone()),
        synced(plans.store.clone()),
        synced(images.store.clone()),
        synced(class.store.clone()),
        synced(in_cluster.store.clone()),
    ]);
    let (
        Some(events),
        Some(plan_events),
        Some(image_events),
        Some(indexed),
        Some(class_events),
        Some(in_cluster_events),
    ) = (
        cache.subscribe(),
        plans.subscribe(),
        images.subscribe(),
        cache.subscribe(),
        class.subscribe(),
        in_cluster.subscribe(),
    )
    else {
        return Running::stream_ended(ready);
    };
    let shutdown = shared.shutdown.clone();
    let index = index::Index::new(cache.store.clone());
    keep_index(index.clone(), indexed, cache.deleted(), &shutdown);
    let trigger =
        generation_or_annotation_changed(events, cache.store.clone(), RETRY_HOSTS_ANNOTATION);
    let by_plan = index.clone();
    let by_deleted_plan = index.clone();
    let deleted_plans = plans.deleted();
    let by_image = index.clone();
    let by_claim = index.clone();
    let clusters = cluster_events::<K>(
        shared.client.clone(),
        shared.namespace.clone(),
        index,
        ctx.clusters.clone(),
        &shutdown,
    );
    let run = async move {
        let results = Controller::for_shared_stream(trigger, cache.store)
            .watches_shared_stream(plan_events, move |plan: Arc<GuardedPlan>| {
                by_plan.following(&plan.namespace().unwrap_or_default(), &plan.name_any())
            })
            .watches_shared_stream(deleted_plans, move |plan: Arc<GuardedPlan>| {
                by_deleted_plan.following(&plan.namespace().unwrap_or_default(), &plan.name_any())
            })
            // Any image of the namespace may change any of its upgraders' steps.
            .watches_shared_stream(image_events, move |image: Arc<GuardedImage>| {
                by_image.in_namespace(&image.namespace().unwrap_or_default())
            })
            .watches_shared_stream(class_events, claim::siblings::<K, _>(by_claim.clone()))
            .watches_shared_stream(class.deleted(), claim::siblings::<K, _>(by_claim.clone()))
            .watches_shared_stream(in_cluster_events, claim::siblings::<K, _>(by_claim.clone()))
            .watches_shared_stream(in_cluster.deleted(), claim::siblings::<K, _>(by_claim))
            .reconcile_on(clusters)
            .with_config(ControllerConfig::default().concurrency(16))
            .graceful_shutdown_on(shutdown.clone().wait())
            .run(reconcile::<K>, error_policy::<K>, ctx);
        drive(results, reporter, shutdown).await
    }
    .boxed();
    Running { ready, run }
}

/// Keeps `index` up to date with the upgraders the cache applies and deletes, until shutdown.
fn keep_index<K: UpgraderKind>(
    index: index::Index<K>,
    applied: impl futures::Stream<Item = Arc<DeserializeGuard<K>>> + Send + 'static,
    deleted: impl futures::Stream<Item = Arc<DeserializeGuard<K>>> + Send + 'static,
    shutdown: &crate::shutdown::Shutdown,
) {
    let changes = futures::stream::select(applied.map(|u| (true, u)), deleted.map(|u| (false, u)))
        .take_until(shutdown.clone().wait());
    tokio::spawn(changes.for_each(move |(live, upgrader)| {
        if live {
            index.apply(&upgrader);
        } else {
            index.delete(&upgrader);
        }
        futures::future::ready(())
    }));
}

/// The upgraders of each changed Cluster, from a dedicated dynamic watch of Clusters opened
/// once Cluster API is discovered (looked for again every minute while it is absent). The watch
/// keeps its store in `slot`, which reconciles read before they read the Cluster itself.
fn cluster_events<K: UpgraderKind>(
    client: Client,
    namespace: Option<String>,
    index: index::Index<K>,
    slot: ClusterStore,
    shutdown: &crate::shutdown::Shutdown,
) -> impl futures::Stream<Item = ObjectRef<DeserializeGuard<K>>> + Send + 'static {
    let (mut tx, rx) = futures::channel::mpsc::channel(256);
    let stopped = shutdown.clone();
    tokio::spawn(async move {
        let access = loop {
            if let Ok(Some(access)) = cluster::discover(&client).await {
                break access;
            }
            if tokio::time::timeout(decide::MISSING_POLL, stopped.clone().wait())
                .await
                .is_ok()
            {
                return;
            }
        };
        let api: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &access.resource),
            None => Api::all_with(client.clone(), &access.resource),
        };
        let writer = kube::runtime::reflector::store::Writer::new(access.resource.clone());
        let _ = slot.set(writer.as_reader());
        let objects = watcher(api, watch_config())
            .default_backoff()
            // What the upgraders read of a Cluster, before the store keeps it.
            .map_ok(|event| event.modify(DynamicObject::project))
            .reflect(writer)
            .applied_objects()
            .take_until(stopped.wait());
        futures::pin_mut!(objects);
        while let Some(event) = objects.next().await {
            let Ok(cluster) = event else { continue };
            let name = cluster.name_any();
            for upgrader in index.upgrading(&cluster.namespace().unwrap_or_default(), &name) {
                if futures::SinkExt::send(&mut tx, upgrader).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run expects
fn error_policy<K: UpgraderKind>(
    _obj: Arc<DeserializeGuard<K>>,
    err: &Error,
    _ctx: Arc<Context>,
) -> Action {
    match err {
        Error::InvalidObject(_) => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(10)),
    }
}

/// Reconciles one upgrader.
#[tracing::instrument(skip(obj, ctx), fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile<K: UpgraderKind>(
    obj: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile();
    let upgrader = match &obj.0 {
        Ok(upgrader) => upgrader,
        Err(invalid) => return Err(Error::InvalidObject(invalid.error.clone())),
    };
    let now = crate::runtime::now().0;
    reconcile_upgrader(upgrader, &ctx, now).await
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
    let observed = observe::observe(upgrader, ctx, now, read).await?;
    let default_status = UpgraderStatus::default();
    let subject = decide::Subject {
        spec: upgrader.view(),
        status: upgrader.upgrader_status().unwrap_or(&default_status),
        generation: upgrader.meta().generation,
    };
    let (decision, actions) = decide::reconcile_decision(subject, &observed, now);
    // A write is decided on the Cluster as the API server holds it now: a cached Cluster that is
    // no longer current means deciding again from a fresh read.
    if observed.cached
        && (decision.write.is_some() || !actions.is_empty())
        && !observe::still_current(ctx, &observed, upgrader.view().cluster_name).await?
    {
        return Box::pin(reconcile_body(upgrader, ctx, now, Read::Fresh)).await;
    }
    apply::apply(ctx, upgrader, &observed, decision, &actions, now).await
}

#[cfg(test)]
mod tests;
