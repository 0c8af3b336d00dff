//! The upgrader controller, one implementation serving ClusterClassClusterUpgrader and
//! InClusterUpgradeAutomation:
//! observe (the Plan and MachineImages from the shared caches, the Cluster through dynamic access,
//! and its rollout, [`finish`]) → plan (pure, [`gates::plan`]) → decide (pure, [`decide()`]) →
//! apply (at most one write to the Cluster, [`cluster::write_step`], then one status write when
//! something changed, then events on transitions).

pub mod cluster;
pub mod decide;
pub mod finish;
pub mod gates;
pub mod in_place;
pub mod index;
pub mod window;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use api::v1alpha1::{
    ClusterClassClusterUpgrader, InClusterUpgradeAutomation, InPlace, MachineImage,
    OS_IMAGE_STAMP_ANNOTATION, Plan, RETRY_HOSTS_ANNOTATION, UpgraderSpecView, UpgraderStatus,
};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

pub use decide::{Decision, Observed, decide};

use crate::runtime::caches::{Cacheable, generation_or_annotation_changed};
use crate::runtime::status::{WriteError, apply_status};
use crate::runtime::{
    ControllerMetrics, Events, Note, ReconcileError, Registration, Reporter, Running, Shared,
    all_ready, drive, synced,
};
use finish::Rollout;
use gates::{ClusterState, PlanState};

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
    /// The shared spec.
    fn view(&self) -> UpgraderSpecView<'_>;
    /// The status, if any.
    fn upgrader_status(&self) -> Option<&UpgraderStatus>;
    /// `spec.inPlace`.
    fn in_place(&self) -> Option<&InPlace>;
}

impl UpgraderKind for ClusterClassClusterUpgrader {
    const CONTROLLER: &'static str = "clusterclassclusterupgrader";
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
}

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
    #[error("writing the step to the Cluster")]
    WriteCluster(#[source] WriteError),
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] WriteError),
    /// Reading the Cluster's Machines, ElementalMachines, ElementalHosts or Nodes failed.
    #[error("reading the hosts of Cluster {0}")]
    ReadHosts(String, #[source] WriteError),
    /// A write of the in-place flow failed.
    #[error("updating hosts in place")]
    WriteHost(#[source] WriteError),
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
            Self::WriteCluster(_) => "WriteCluster",
            Self::WriteStatus(_) => "WriteStatus",
            Self::ReadHosts(..) => "ReadHosts",
            Self::WriteHost(_) => "WriteHost",
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
        }
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
    let ctx = Arc::new(Context::new(
        shared.client.clone(),
        reporter.metrics.clone(),
        shared.instance.clone(),
        plans.store.clone(),
        images.store.clone(),
    ));
    let ready = all_ready(vec![
        synced(cache.store.clone()),
        synced(plans.store.clone()),
        synced(images.store.clone()),
    ]);
    let (Some(events), Some(plan_events), Some(image_events), Some(indexed)) = (
        cache.subscribe(),
        plans.subscribe(),
        images.subscribe(),
        cache.subscribe(),
    ) else {
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
    let clusters = cluster_events::<K>(
        shared.client.clone(),
        shared.namespace.clone(),
        index,
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
/// once Cluster API is discovered (looked for again every minute while it is absent).
fn cluster_events<K: UpgraderKind>(
    client: Client,
    namespace: Option<String>,
    index: index::Index<K>,
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
        let objects = watcher(api, watcher::Config::default())
            .default_backoff()
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
    Box::pin(reconcile_body(upgrader, ctx, now)).await
}

async fn reconcile_body<K: UpgraderKind>(
    upgrader: &K,
    ctx: &Context,
    now: Timestamp,
) -> Result<Action, Error> {
    let namespace = upgrader.namespace().unwrap_or_default();
    let spec = upgrader.view();
    let default_status = UpgraderStatus::default();
    let current = upgrader.upgrader_status().unwrap_or(&default_status);

    // Observe.
    let plan = plan_state(ctx, &namespace, spec.plan_ref.name.as_str());
    let selector = match &plan {
        Some(p) => p.spec.machine_image_selector.clone(),
        None => None,
    };
    let images_state = ctx.images.state();
    let images = crate::controllers::plan::select::usable(
        images_state.iter().filter_map(|i| i.0.as_ref().ok()),
        &namespace,
        selector.as_ref(),
    );
    let plan_state = match &plan {
        None => PlanState::NotFound,
        Some(p) => {
            let details = p
                .status
                .as_ref()
                .and_then(|s| s.machine_image_details.as_ref());
            PlanState::Found {
                version: details.and_then(|d| d.version.clone()),
                id: details.map(|d| d.id.clone()),
            }
        }
    };
    let reference = upgrader.object_ref(&());
    let (records, retry_hosts) = in_place::flow::retried(
        current.hosts.as_deref().unwrap_or_default(),
        upgrader
            .annotations()
            .get(RETRY_HOSTS_ANNOTATION)
            .map(String::as_str),
        current.retry_hosts.as_deref(),
        now,
    );
    let busy = records.iter().any(|r| in_place::in_flight(r.phase));
    // A paused upgrader still carries the hosts it started to the end.
    let (cluster_state, raw, access) = if spec.paused && !busy {
        (ClusterState::NotFound, None, None)
    } else {
        observe_cluster(ctx, &namespace, spec.cluster_name).await?
    };

    // Plan and decide.
    let planned = gates::plan(&gates::Inputs {
        spec,
        cluster: &cluster_state,
        plan: &plan_state,
        images: &images,
        now,
    });
    let wanted = wanted_in_place(
        upgrader,
        &cluster_state,
        &plan_state,
        &images,
        &images_state,
        now,
    );
    let needs_hosts = in_place::flow::needs_hosts(&planned, wanted.is_some(), &records);
    let read_workload = wanted.is_some() || busy;
    let observed_hosts = match access.as_ref() {
        Some(access) if needs_hosts => Some(
            Box::pin(observe_hosts(
                ctx,
                access,
                &namespace,
                spec.cluster_name,
                read_workload,
            ))
            .await?,
        ),
        _ => None,
    };
    let (world, spare, workload, unreachable) = match observed_hosts {
        Some(Ok((world, spare, workload))) => (world, spare, workload, None),
        Some(Err(unreachable)) => (None, None, None, Some(unreachable)),
        None => (None, None, None, None),
    };
    let fallback =
        in_place::Settings::from_spec(&InPlace::default()).unwrap_or(in_place::Settings {
            max_unavailable: 1,
            drain_timeout: Duration::from_secs(600),
            retries: 1,
        });
    let joined = match unreachable {
        // Blocked, the records kept as they are, until the kubeconfig Secret works.
        Some(unreachable) => in_place::flow::unreachable(
            &records,
            unreachable.is_invalid_kubeconfig(),
            crate::runtime::cause_chain(&unreachable),
        ),
        None => in_place::flow::decide(in_place::flow::Inputs {
            planned,
            wanted,
            records: &records,
            world: world.as_ref().map(|(views, _)| views.as_slice()),
            spare,
            fallback,
            now,
        }),
    };
    let rollout = match &cluster_state {
        ClusterState::Found(view) => view.topology.as_ref().and_then(|t| {
            api::version::parse_lenient(&t.version).map(|v| (v, view.finished.is_ok()))
        }),
        _ => None,
    };
    let now_time = Time(now);
    let mut decision = decide(
        &joined.plan,
        &Observed {
            generation: upgrader.meta().generation,
            status: current,
            cluster: spec.cluster_name,
            rollout,
            now: &now_time,
        },
    );
    decision.status.hosts = (!joined.records.is_empty()).then(|| joined.records.clone());
    if let (Some(progress), ClusterState::Found(view)) = (&joined.progress, &cluster_state)
        && let Some(topology) = &view.topology
    {
        let history = in_place::flow::history(
            decision.status.history.as_deref().unwrap_or_default(),
            &joined.plan,
            &topology.version,
            &progress.image,
            now,
        );
        decision.status.history = (!history.is_empty()).then_some(history);
        decision.status.in_place = Some(progress.clone());
    }
    decision.status.retry_hosts = retry_hosts;
    decision
        .notes
        .extend(joined.notes.iter().cloned().map(|mut note| {
            if let Some(host) = note.related.as_mut() {
                host.namespace = Some(namespace.clone());
            }
            note
        }));
    if let Some(wait) = joined.requeue {
        decision.requeue = Some(decision.requeue.map_or(wait, |w| w.min(wait)));
    }

    // Apply: the step first, then the status that records it.
    if let Some(step) = decision.write.clone() {
        write_step(
            ctx,
            &reference,
            spec.cluster_name,
            raw.as_ref(),
            access.as_ref(),
            step,
        )
        .await?;
    }
    if decision.status != *current {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_status(&api, &upgrader.name_any(), FIELD_MANAGER, &decision.status)
            .await
            .map_err(Error::WriteStatus)?;
    }
    // The host writes come after the records that name them are persisted.
    if let (Some((_, management)), Some(workload)) = (&world, &workload) {
        let recovery = upgrader
            .in_place()
            .and_then(|p| p.upgrade_recovery)
            .unwrap_or(false);
        for action in &joined.actions {
            if let Err(err) = Box::pin(perform(
                ctx, workload, management, &namespace, action, recovery,
            ))
            .await
            {
                ctx.events
                    .publish_to(
                        &reference,
                        &Note::warning(
                            "ErrorUpdatingHost",
                            format!("{action:?} failed: {}", crate::runtime::cause_chain(&err)),
                        ),
                    )
                    .await;
                return Err(Error::WriteHost(err));
            }
        }
    }
    for note in &decision.notes {
        ctx.events.publish_to(&reference, note).await;
    }
    let requeue = if joined.actions.is_empty() {
        decision.requeue
    } else {
        // Look again soon: the writes just made are observed next.
        Some(Duration::from_secs(1))
    };
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Writes `step` to the Cluster; a failure is a Warning event and an error.
async fn write_step(
    ctx: &Context,
    upgrader: &ObjectReference,
    name: &str,
    raw: Option<&serde_json::Value>,
    access: Option<&cluster::Access>,
    step: gates::Step,
) -> Result<(), Error> {
    let (Some(raw), Some(access)) = (raw, access) else {
        return Ok(());
    };
    let namespace = upgrader.namespace.clone().unwrap_or_default();
    let written = cluster::write_step(
        &ctx.client,
        access,
        &namespace,
        name,
        raw,
        &step,
        FIELD_MANAGER,
    )
    .await;
    if let Err(err) = written {
        ctx.events
            .publish_to(
                upgrader,
                &Note::warning(
                    "ErrorUpdatingVersion",
                    format!(
                        "writing {} to Cluster {name} failed: {}",
                        step.version_string(),
                        crate::runtime::cause_chain(&err)
                    ),
                ),
            )
            .await;
        return Err(Error::WriteCluster(err));
    }
    Ok(())
}

/// The in-place update the Plan asks for: `spec.inPlace` is set and the Plan's ready image has
/// the Cluster's Kubernetes version.
fn wanted_in_place<K: UpgraderKind>(
    upgrader: &K,
    cluster: &ClusterState,
    plan: &PlanState,
    images: &[gates::Image],
    stored: &[Arc<GuardedImage>],
    now: Timestamp,
) -> Option<in_place::flow::Wanted> {
    let namespace = upgrader.namespace();
    let stamps = stored
        .iter()
        .filter_map(|i| i.0.as_ref().ok())
        .filter(|i| i.namespace() == namespace);
    let settings = in_place::Settings::from_spec(upgrader.in_place()?).ok()?;
    let ClusterState::Found(view) = cluster else {
        return None;
    };
    let topology = view.topology.as_ref()?;
    let version = gates::cluster_version(topology).ok()?;
    let (target, id) = gates::plan_target(plan, images).ok()?;
    if !target.cmp_precedence(&version).is_eq() {
        return None;
    }
    let spec = upgrader.view();
    let held = gates::paused_upgrader(&spec)
        .and_then(|()| gates::paused_cluster(view))
        .and_then(|()| gates::previous_finished(view))
        .and_then(|()| gates::in_window(&spec, now))
        .and_then(|()| gates::dry_run(&spec))
        .err();
    // `plan_target` found a ready image with this ID; the stamp is on one of them.
    let stamp = stamps
        .filter(|i| i.spec.id.as_deref() == Some(id.as_str()))
        .find_map(|i| i.annotations().get(OS_IMAGE_STAMP_ANNOTATION).cloned());
    Some(in_place::flow::Wanted {
        settings,
        image: id,
        stamp,
        version,
        held,
    })
}

/// The hosts as observed: their views with the management reads behind them, the spare-host
/// gate's answer, and the workload client (read only when `workload` is asked for).
type ObservedHosts = (
    Option<(Vec<in_place::HostView>, in_place::observe::Management)>,
    Option<Result<(), in_place::spare::NoSpareHost>>,
    Option<Client>,
);

async fn observe_hosts(
    ctx: &Context,
    access: &cluster::Access,
    namespace: &str,
    cluster_name: &str,
    workload: bool,
) -> Result<Result<ObservedHosts, in_place::workload::Unreachable>, Error> {
    let read = |e| Error::ReadHosts(cluster_name.to_owned(), e);
    let machine = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        cluster::GROUP,
        &access.resource.version,
        "Machine",
    ));
    let management = in_place::observe::management(&ctx.client, &machine, namespace, cluster_name)
        .await
        .map_err(read)?;
    if !management.is_elemental() {
        return Ok(Ok((Some((Vec::new(), management)), None, None)));
    }
    let pools = management.pools();
    let pool_refs: Vec<in_place::spare::Pool<'_>> = pools
        .iter()
        .map(|(name, selector)| in_place::spare::Pool { name, selector })
        .collect();
    let labels: Vec<&BTreeMap<String, String>> =
        management.hosts.values().map(|h| &h.labels).collect();
    let spare = Some(in_place::spare::check(&pool_refs, &labels));
    if !workload {
        let views = management.views(&BTreeMap::new(), &BTreeMap::new());
        return Ok(Ok((Some((views, management)), spare, None)));
    }
    let client = match ctx
        .workloads
        .client(&ctx.client, namespace, cluster_name)
        .await
    {
        Ok(client) => client,
        Err(unreachable) => return Ok(Err(unreachable)),
    };
    let names: Vec<String> = management
        .machines
        .iter()
        .filter_map(|m| m.node.clone())
        .collect();
    let reads = async {
        let nodes = in_place::observe::nodes(&client, &names).await?;
        let mut drained = BTreeMap::new();
        for name in names
            .iter()
            .filter(|n| nodes.get(*n).is_some_and(|n| n.cordoned))
        {
            let left = in_place::observe::evictable_pods(&client, name).await?;
            drained.insert(name.clone(), left.is_empty());
        }
        Ok((nodes, drained))
    };
    // One slow workload cluster must not hold a worker: its reads share one deadline.
    let (nodes, drained) =
        match tokio::time::timeout(in_place::workload::READ_DEADLINE, reads).await {
            Ok(read_all) => read_all.map_err(read)?,
            Err(_) => {
                return Ok(Err(in_place::workload::Unreachable::Slow(
                    in_place::workload::READ_DEADLINE,
                )));
            }
        };
    let views = management.views(&nodes, &drained);
    Ok(Ok((Some((views, management)), spare, Some(client))))
}

/// Performs one in-place write.
async fn perform(
    ctx: &Context,
    workload: &Client,
    management: &in_place::observe::Management,
    namespace: &str,
    action: &in_place::Action,
    upgrade_recovery: bool,
) -> Result<(), WriteError> {
    use in_place::workload as write;
    match action {
        in_place::Action::Cordon { node } => {
            write::set_unschedulable(workload, node, true, FIELD_MANAGER).await
        }
        in_place::Action::Uncordon { node } => {
            write::set_unschedulable(workload, node, false, FIELD_MANAGER).await
        }
        in_place::Action::Evict { node } => write::evict(workload, node).await.map(|_| ()),
        in_place::Action::LabelPending { host } => {
            write::label_pending(&ctx.client, namespace, host, FIELD_MANAGER).await
        }
        in_place::Action::ApplyImage { machine, image } => {
            let Some(infrastructure) = management.infrastructure_of(machine) else {
                return Ok(());
            };
            write::apply_image(
                &ctx.client,
                namespace,
                infrastructure,
                image,
                upgrade_recovery,
                FIELD_MANAGER,
            )
            .await
        }
    }
}

fn plan_state(ctx: &Context, namespace: &str, name: &str) -> Option<Plan> {
    ctx.plans
        .get(&ObjectRef::new(name).within(namespace))
        .and_then(|p| p.0.as_ref().ok().cloned())
}

type ObservedCluster = (
    ClusterState,
    Option<serde_json::Value>,
    Option<cluster::Access>,
);

/// Reads the Cluster and, when its status carries no version lists, its control plane and
/// MachineDeployments; fills in whether its current step has finished.
async fn observe_cluster(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<ObservedCluster, Error> {
    let Some(access) = ctx.access().await? else {
        return Ok((ClusterState::ApiMissing, None, None));
    };
    if !api::names::is_dns_subdomain(name) {
        // Admission refuses such a name; one stored before that rule names no Cluster.
        return Ok((ClusterState::NotFound, None, Some(access)));
    }
    let read = |e| Error::ReadCluster(name.to_owned(), e);
    let Some(raw) = cluster::get(&ctx.client, &access, namespace, name)
        .await
        .map_err(read)?
    else {
        return Ok((ClusterState::NotFound, None, Some(access)));
    };
    let mut view = cluster::view(&raw);
    if let Some(version) = view
        .topology
        .as_ref()
        .and_then(|t| api::version::parse_lenient(&t.version))
    {
        let mut rollout = Rollout {
            api: access.api,
            cluster: &raw,
            control_plane: None,
            machine_deployments: None,
        };
        view.finished = if finish::objects_needed(&rollout, &version) {
            let control_plane = cluster::control_plane(&ctx.client, access.api, namespace, &raw)
                .await
                .map_err(read)?;
            let deployments = cluster::machine_deployments(&ctx.client, &access, namespace, name)
                .await
                .map_err(read)?;
            rollout.control_plane = control_plane.as_ref();
            rollout.machine_deployments = Some(&deployments);
            finish::finished(&rollout, &version)
        } else {
            finish::finished(&rollout, &version)
        };
    }
    Ok((ClusterState::Found(view), Some(raw), Some(access)))
}

#[cfg(test)]
mod tests;
