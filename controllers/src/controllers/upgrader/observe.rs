//! Observe: everything one reconcile decides on, read once. The Plan and MachineImages come from
//! the shared caches, the Cluster from the Cluster watch's store (or the API server), and, when
//! the decision needs them, the Cluster's hosts: Machines, ElementalMachines and ElementalHosts in
//! the management cluster, Nodes and pods in the workload cluster.

use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use api::v1alpha1::{
    HostRecord, MachineImage, Plan, RETRY_HOSTS_ANNOTATION, RolloutMembership, UpgraderStatus,
};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use super::finish::{self, Rollout};
use super::gates::{self, ClusterState, PlanState};
use super::{Context, Error, UpgraderKind, chain, claim, cluster, in_place};
use crate::controllers::rollout;
use crate::runtime::projection::cluster::CachedCluster;

/// How long a discovery of Cluster API is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);

/// Where a reconcile reads the Cluster from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// The watch's store when it holds the Cluster, else the API server.
    Cached,
    /// The API server.
    Fresh,
}

/// Everything one reconcile decides on.
pub struct Observation {
    /// The upgrader's namespace.
    pub namespace: String,
    /// The Plan's choice.
    pub plan: PlanState,
    /// The usable images of the namespace, by the Plan's selector.
    pub images: Vec<gates::Image>,
    /// The host records, blocked ones started over on a new `retry-hosts` value.
    pub records: Vec<HostRecord>,
    /// The `retry-hosts` value the records answer.
    pub retry_hosts: Option<String>,
    /// The Cluster.
    pub cluster: ClusterState,
    /// The Cluster object it was read from.
    pub raw: Option<serde_json::Value>,
    /// How Cluster API is served.
    pub access: Option<cluster::Access>,
    /// Whether the Cluster came from the watch's store.
    pub cached: bool,
    /// The in-place update the Plan asks for, if any.
    pub wanted: Option<in_place::flow::Wanted>,
    /// `spec.inPlace` with its defaults, which hosts in flight continue under.
    pub in_place: Option<in_place::Settings>,
    /// The build stamps of the namespace's images, by image ID (the Plan's chosen image's alone
    /// for its ID).
    pub stamps: in_place::verify::Stamps,
    /// The hosts, when the decision needs them, or why the workload cluster cannot be read.
    pub hosts: Option<Result<ObservedHosts, in_place::workload::Unreachable>>,
    /// Another upgrader that acts on the Cluster, when this one does not.
    pub claimed_by: Option<claim::Claimant>,
    /// The Cluster's ClusterClass names our `GenerateUpgradePlan` handler (read only when the
    /// Plan's target is more than one minor ahead).
    pub chained: bool,
    /// The Cluster's place in the Plan's rollout, when the Plan has one.
    pub membership: Option<RolloutMembership>,
}

/// Reads everything the reconcile of `upgrader` decides on.
pub async fn observe<K: UpgraderKind>(
    upgrader: &K,
    ctx: &Context,
    now: Timestamp,
    read: Read,
) -> Result<Observation, Error> {
    let namespace = upgrader.namespace().unwrap_or_default();
    let spec = upgrader.view();
    let default_status = UpgraderStatus::default();
    let current = upgrader.upgrader_status().unwrap_or(&default_status);
    let plan = plan_state(ctx, &namespace, spec.plan_ref.name.as_str());
    let selector = plan
        .as_ref()
        .and_then(|p| p.spec.machine_image_selector.clone());
    let images_state = ctx.images.state();
    let images = crate::controllers::images::usable(
        images_state.iter().filter_map(|i| i.0.as_ref().ok()),
        &namespace,
        selector.as_ref(),
    );
    let chosen = plan.as_ref().and_then(|p| chosen_image(p, &namespace));
    let plan_object = plan;
    let plan = match &plan_object {
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
    let claimed_by = ctx.claims.as_ref().and_then(|c| c.claimed_by(upgrader));
    // A paused upgrader still carries the hosts it started to the end; one that does not act
    // reads nothing of the Cluster.
    let (mut cluster, raw, access, cached) = if (spec.paused && !busy) || claimed_by.is_some() {
        (ClusterState::NotFound, None, None, false)
    } else {
        observe_cluster(ctx, &namespace, spec.cluster_name, read).await?
    };
    // The ClusterClass changes the step in map mode; in the other modes it is read only while no
    // step is pending, to say once that the chain is not taken.
    let chained = match (&raw, &access) {
        (Some(raw), Some(access))
            if chain::beyond_one_minor(&cluster, &plan, &images)
                && (spec.image_map.is_some() || current.next_step.is_none()) =>
        {
            chain::offered(&ctx.core.client, access, raw, &namespace, &ctx.registered).await
        }
        _ => false,
    };
    let membership = admit_cluster(&mut cluster, plan_object.as_ref(), spec.cluster_name, now);
    let planned = gates::plan(&gates::Inputs {
        spec,
        cluster: &cluster,
        plan: &plan,
        images: &images,
        now,
        chained,
    });
    let stored: Vec<&MachineImage> = images_state
        .iter()
        .filter_map(|i| i.0.as_ref().ok())
        .filter(|i| i.namespace().as_deref() == Some(namespace.as_str()))
        .collect();
    let chosen = chosen
        .as_ref()
        .map(|(name, id)| (name.as_str(), id.as_str()));
    let stamps = in_place::verify::stamps(stored.iter().copied(), chosen);
    let wanted = wanted_in_place(upgrader, &cluster, &plan, &images, &stored, chosen, now);
    // With `spec.inPlace`, the hosts are looked at on every pass: a Node a gone upgrader of this
    // Cluster cordoned is adopted and released even when no update is wanted.
    let in_place_set = upgrader.in_place().is_some() && claimed_by.is_none();
    let reads = HostReads {
        // A topology step is written only once every host's Node is seen to run its build.
        workload: wanted.is_some()
            || busy
            || in_place_set
            || matches!(planned, gates::Plan::Write(_)),
        owner: cordon_owner(upgrader),
        live: ctx
            .claims
            .as_ref()
            .map(|c| c.marks(&namespace, spec.cluster_name)),
        drain: in_place::drain::Options::from_spec(
            upgrader.in_place().and_then(|p| p.drain.as_ref()),
        ),
    };
    let hosts = match access.as_ref() {
        Some(access)
            if in_place::flow::needs_hosts(
                &planned,
                wanted.is_some() || in_place_set,
                &records,
            ) =>
        {
            Some(
                Box::pin(observe_hosts(
                    ctx,
                    access,
                    &namespace,
                    spec.cluster_name,
                    &reads,
                ))
                .await?,
            )
        }
        _ => None,
    };
    Ok(Observation {
        namespace,
        plan,
        images,
        records,
        retry_hosts,
        cluster,
        raw,
        access,
        cached,
        wanted,
        in_place: upgrader
            .in_place()
            .and_then(|p| in_place::Settings::from_spec(p).ok()),
        stamps,
        hosts,
        claimed_by,
        chained,
        membership,
    })
}

/// Reads the Plan's rollout for the Cluster: its admission (for the gates) and its place in the
/// rollout (for the Plan, through the upgrader's status).
fn admit_cluster(
    cluster: &mut ClusterState,
    plan: Option<&Plan>,
    name: &str,
    now: Timestamp,
) -> Option<RolloutMembership> {
    let ClusterState::Found(view) = cluster else {
        return None;
    };
    let plan = plan?;
    let rollout = plan.spec.rollout.as_ref()?;
    let status = plan.status.as_ref();
    view.admission = rollout::admission(
        Some(rollout),
        status.and_then(|s| s.rollout.as_ref()),
        status.and_then(|s| s.machine_image_details.as_ref()),
        name,
        &view.labels,
        now,
    );
    Some(RolloutMembership {
        wave: rollout::wave_of(rollout, &view.labels).map(|i| rollout.waves[i].name.clone()),
        cluster_available: view.available,
    })
}

/// The Plan's chosen MachineImage (`status.machineImageRef`, in the Plan's namespace) and the
/// image ID the Plan reports for it.
fn chosen_image(plan: &Plan, namespace: &str) -> Option<(String, String)> {
    let status = plan.status.as_ref()?;
    let reference = status.machine_image_ref.as_ref()?;
    if reference
        .namespace
        .as_deref()
        .is_some_and(|n| n != namespace)
    {
        return None;
    }
    let id = status.machine_image_details.as_ref()?.id.clone();
    Some((reference.name.clone()?, id))
}

/// The `cordoned-by` mark of `upgrader`: `<kind>/<name>`.
pub fn cordon_owner<K: UpgraderKind>(upgrader: &K) -> String {
    format!("{}/{}", K::kind(&()), upgrader.name_any())
}

/// What to read of the hosts besides the management cluster.
struct HostReads {
    /// Read the workload cluster's Nodes and pods.
    workload: bool,
    /// This upgrader's `cordoned-by` mark.
    owner: String,
    /// The marks of every upgrader that claims the Cluster; `None` adopts nothing.
    live: Option<std::collections::BTreeSet<String>>,
    /// Which pods a drain moves.
    drain: in_place::drain::Options,
}

/// The Cluster as the API server holds it now, when it is still the one the observation was
/// decided on (the same resourceVersion); `None` when it changed or is gone. Without Cluster API
/// there is nothing to read: the observation's own object.
pub async fn still_current(
    ctx: &Context,
    observed: &Observation,
    name: &str,
) -> Result<Option<Option<serde_json::Value>>, Error> {
    let Some(access) = observed.access.as_ref() else {
        return Ok(Some(observed.raw.clone()));
    };
    let fresh = cluster::get(&ctx.core.client, access, &observed.namespace, name)
        .await
        .map_err(|e| Error::ReadCluster(name.to_owned(), e))?;
    let same = fresh.as_ref().map(resource_version) == observed.raw.as_ref().map(resource_version);
    Ok(same.then_some(fresh))
}

/// The in-place update the Plan asks for: `spec.inPlace` is set and the Plan's ready image has
/// the Cluster's Kubernetes version. Its stamp is the one of the Plan's chosen MachineImage
/// (`stored`: the namespace's images), not of any other image with the same ID.
fn wanted_in_place<K: UpgraderKind>(
    upgrader: &K,
    cluster: &ClusterState,
    plan: &PlanState,
    images: &[gates::Image],
    stored: &[&MachineImage],
    chosen: Option<(&str, &str)>,
    now: Timestamp,
) -> Option<in_place::flow::Wanted> {
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
        .and_then(|()| gates::may_start(&spec, view, now))
        .err();
    let stamp = chosen.and_then(|(name, chosen_id)| {
        (chosen_id == id)
            .then(|| in_place::verify::chosen_stamp(stored.iter().copied(), name, &id))
            .flatten()
    });
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
pub type ObservedHosts = (
    Option<(Vec<in_place::HostView>, in_place::observe::Management)>,
    Option<Result<(), in_place::spare::NoSpareHost>>,
    Option<Client>,
);

async fn observe_hosts(
    ctx: &Context,
    access: &cluster::Access,
    namespace: &str,
    cluster_name: &str,
    reads: &HostReads,
) -> Result<Result<ObservedHosts, in_place::workload::Unreachable>, Error> {
    let read = |e| Error::ReadHosts(cluster_name.to_owned(), e);
    let machine = in_place::observe::machine_resource(&access.resource.version);
    let management =
        in_place::observe::management(&ctx.core.client, &machine, namespace, cluster_name)
            .await
            .map_err(read)?;
    if !management.is_elemental() {
        return Ok(Ok((Some((Vec::new(), management)), None, None)));
    }
    let pools = management.pools();
    let pool_refs: Vec<in_place::spare::Pool<'_>> = pools
        .iter()
        .map(|(name, selector)| in_place::spare::Pool {
            name,
            selector: selector.as_ref(),
        })
        .collect();
    let labels: Vec<&BTreeMap<String, String>> =
        management.hosts.values().map(|h| &h.labels).collect();
    let spare = Some(in_place::spare::check(&pool_refs, &labels));
    if !reads.workload {
        let views = management.views(
            &BTreeMap::new(),
            &BTreeMap::new(),
            &reads.owner,
            reads.live.as_ref(),
        );
        return Ok(Ok((Some((views, management)), spare, None)));
    }
    let client = match ctx
        .workloads
        .client(&ctx.core.client, namespace, cluster_name)
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
    let read_all = async {
        let nodes = in_place::observe::nodes(&client, &names).await?;
        let mut drains = BTreeMap::new();
        for name in names
            .iter()
            .filter(|n| nodes.get(*n).is_some_and(|n| n.cordoned))
        {
            let drain = in_place::observe::drain_plan(&client, name, reads.drain).await?;
            drains.insert(name.clone(), drain);
        }
        Ok((nodes, drains))
    };
    // One slow workload cluster must not hold a worker: its reads share one deadline.
    // A workload cluster that does not answer (its only control-plane host rebooting) is
    // reported in status, not as a failed reconcile.
    let (nodes, drains) =
        match tokio::time::timeout(in_place::workload::READ_DEADLINE, read_all).await {
            Ok(Ok(read_all)) => read_all,
            Ok(Err(unanswered)) => {
                return Ok(Err(in_place::workload::Unreachable::Unanswered(unanswered)));
            }
            Err(_) => {
                return Ok(Err(in_place::workload::Unreachable::Slow(
                    in_place::workload::READ_DEADLINE,
                )));
            }
        };
    let views = management.views(&nodes, &drains, &reads.owner, reads.live.as_ref());
    Ok(Ok((Some((views, management)), spare, Some(client))))
}

fn plan_state(ctx: &Context, namespace: &str, name: &str) -> Option<Plan> {
    ctx.plans
        .get(&ObjectRef::new(name).within(namespace))
        .and_then(|p| p.0.as_ref().ok().cloned())
}

/// The Cluster's state, the object it came from, how Cluster API is served, and whether the
/// object came from the watch's store.
type ObservedCluster = (
    ClusterState,
    Option<serde_json::Value>,
    Option<cluster::Access>,
    bool,
);

fn resource_version(cluster: &serde_json::Value) -> Option<&str> {
    cluster.pointer("/metadata/resourceVersion")?.as_str()
}

/// Reads the Cluster and, when its status carries no version lists, its control plane and
/// MachineDeployments; fills in whether its current step has finished.
async fn observe_cluster(
    ctx: &Context,
    namespace: &str,
    name: &str,
    from: Read,
) -> Result<ObservedCluster, Error> {
    let Some(access) = ctx.access().await? else {
        return Ok((ClusterState::ApiMissing, None, None, false));
    };
    if !api::names::is_dns_subdomain(name) {
        // Admission refuses such a name; one stored before that rule names no Cluster.
        return Ok((ClusterState::NotFound, None, Some(access), false));
    }
    let read = |e| Error::ReadCluster(name.to_owned(), e);
    let cached = match from {
        Read::Cached => ctx.cached_cluster(namespace, name),
        Read::Fresh => None,
    };
    let from_cache = cached.is_some();
    let raw = match cached {
        Some(raw) => raw,
        None => match cluster::get(&ctx.core.client, &access, namespace, name)
            .await
            .map_err(read)?
        {
            Some(raw) => raw,
            None => return Ok((ClusterState::NotFound, None, Some(access), false)),
        },
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
            let control_plane =
                cluster::control_plane(&ctx.core.client, access.api, namespace, &raw)
                    .await
                    .map_err(read)?;
            let deployments =
                cluster::machine_deployments(&ctx.core.client, &access, namespace, name)
                    .await
                    .map_err(read)?;
            rollout.control_plane = control_plane.as_ref();
            rollout.machine_deployments = Some(&deployments);
            finish::finished(&rollout, &version)
        } else {
            finish::finished(&rollout, &version)
        };
    }
    Ok((
        ClusterState::Found(view),
        Some(raw),
        Some(access),
        from_cache,
    ))
}

impl Context {
    /// The Cluster from the watch's store, if the watch has delivered it (and it could be read):
    /// the paths the store keeps of it.
    pub(super) fn cached_cluster(&self, namespace: &str, name: &str) -> Option<serde_json::Value> {
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
        object.0.as_ref().ok().map(CachedCluster::to_json)
    }

    /// Cluster API as this server serves it, rediscovered after [`DISCOVERY_TTL`].
    pub(super) async fn access(&self) -> Result<Option<cluster::Access>, Error> {
        {
            let cached = self.access.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, access)) = cached.as_ref()
                && at.elapsed() < DISCOVERY_TTL
            {
                return Ok(Some(access.clone()));
            }
        }
        let found = cluster::discover(&self.core.client)
            .await
            .map_err(Error::Discovery)?;
        if let Some(access) = &found {
            *self.access.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((Instant::now(), access.clone()));
        }
        Ok(found)
    }
}
