//! What the handlers read: the upgraders, Plans and MachineImages from the manager's shared
//! caches, and, when a hook concerns a Cluster an upgrader names, the Cluster, its Elemental
//! hosts and their Nodes with the same reads (and RBAC) as the upgrader.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use api::v1alpha1::{
    ClusterClassClusterUpgrader, InClusterUpgradeAutomation, MachineImage, Plan, UpgraderSpecView,
};
use kube::core::{ApiResource, DeserializeGuard, GroupVersionKind};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::handlers::Owner;
use super::handlers::after::Stamps;
use crate::controllers::upgrader::claim::{self, Claimant};
use crate::controllers::upgrader::cluster::{self, Access};
use crate::controllers::upgrader::gates::Image;
use crate::controllers::upgrader::in_place::observe::{Management, NodeState};
use crate::controllers::upgrader::in_place::workload::{Unreachable, Workloads};
use crate::controllers::upgrader::{UpgraderKind, in_place};
use crate::runtime::status::ApiError;

/// How long a discovery of Cluster API is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);

/// Why a read failed; the hook answers `Failure` with it, which holds the upgrade.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Discovering Cluster API failed.
    #[error("discovering Cluster API")]
    Discovery(#[source] kube::Error),
    /// Cluster API is not served.
    #[error("the API group cluster.x-k8s.io is not served")]
    ClusterApiMissing,
    /// Reading the Cluster failed.
    #[error("reading Cluster {0}")]
    Cluster(String, #[source] ApiError),
    /// Reading the Machines, ElementalMachines or ElementalHosts failed.
    #[error("reading the Elemental hosts of Cluster {0}")]
    Hosts(String, #[source] ApiError),
    /// The workload cluster cannot be reached.
    #[error("reaching the workload cluster of Cluster {0}")]
    Workload(String, #[source] Unreachable),
    /// Reading the workload cluster's Nodes failed.
    #[error("reading the Nodes of Cluster {0}")]
    Nodes(String, #[source] ApiError),
}

/// An upgrader of either kind, as the cache held it.
#[derive(Clone, Debug)]
pub enum Upgrader {
    /// A ClusterClassClusterUpgrader.
    Class(ClusterClassClusterUpgrader),
    /// An InClusterUpgradeAutomation.
    InCluster(InClusterUpgradeAutomation),
}

impl Upgrader {
    /// The shared spec.
    pub fn view(&self) -> UpgraderSpecView<'_> {
        match self {
            Self::Class(u) => u.view(),
            Self::InCluster(u) => u.view(),
        }
    }
}

/// The upgrader that acts on a Cluster.
#[derive(Clone, Debug)]
pub struct Acting {
    /// Who it is.
    pub claimant: Claimant,
    /// The upgrader.
    pub upgrader: Upgrader,
    /// Its namespace.
    pub namespace: String,
}

impl Acting {
    /// The handlers' view of it.
    pub fn owner(&self) -> Owner<'_> {
        Owner {
            claimant: &self.claimant,
            spec: self.upgrader.view(),
            namespace: &self.namespace,
        }
    }
}

/// The caches and clients the handlers read through.
pub struct Observer {
    client: Client,
    class: Store<DeserializeGuard<ClusterClassClusterUpgrader>>,
    in_cluster: Store<DeserializeGuard<InClusterUpgradeAutomation>>,
    plans: Store<DeserializeGuard<Plan>>,
    images: Store<DeserializeGuard<MachineImage>>,
    access: Mutex<Option<(Instant, Access)>>,
    workloads: Workloads,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").finish_non_exhaustive()
    }
}

/// The stores an [`Observer`] reads.
#[derive(Clone)]
pub struct Stores {
    /// ClusterClassClusterUpgraders.
    pub class: Store<DeserializeGuard<ClusterClassClusterUpgrader>>,
    /// InClusterUpgradeAutomations.
    pub in_cluster: Store<DeserializeGuard<InClusterUpgradeAutomation>>,
    /// Plans.
    pub plans: Store<DeserializeGuard<Plan>>,
    /// MachineImages.
    pub images: Store<DeserializeGuard<MachineImage>>,
}

impl Observer {
    /// An observer over the shared stores.
    pub fn new(client: Client, stores: Stores) -> Self {
        Self {
            client,
            class: stores.class,
            in_cluster: stores.in_cluster,
            plans: stores.plans,
            images: stores.images,
            access: Mutex::new(None),
            workloads: Workloads::default(),
        }
    }

    /// The upgrader that acts on Cluster `namespace/name`, by the upgraders' own claim rule;
    /// `None` when no upgrader names it: the Cluster is not ours.
    pub fn acting(&self, namespace: &str, name: &str) -> Option<Acting> {
        let mut all: Vec<(Claimant, Upgrader)> = Vec::new();
        for guarded in self.class.state() {
            if let Ok(u) = &guarded.0
                && claim::claims(u, namespace, name)
            {
                all.push((Claimant::of(u), Upgrader::Class(u.clone())));
            }
        }
        for guarded in self.in_cluster.state() {
            if let Ok(u) = &guarded.0
                && claim::claims(u, namespace, name)
            {
                all.push((Claimant::of(u), Upgrader::InCluster(u.clone())));
            }
        }
        let first = claim::acting(all.iter().map(|(c, _)| c))?.clone();
        let (claimant, upgrader) = all.into_iter().find(|(c, _)| *c == first)?;
        Some(Acting {
            claimant,
            upgrader,
            namespace: namespace.to_owned(),
        })
    }

    /// The usable images of `owner`'s Plan, as the upgrader lists them; `None` when the Plan
    /// does not exist.
    pub fn plan_images(&self, owner: &Owner<'_>) -> Option<Vec<Image>> {
        let plan = self
            .plans
            .get(&ObjectRef::new(&owner.spec.plan_ref.name).within(owner.namespace))?;
        let plan = plan.0.as_ref().ok()?;
        let images = self.images.state();
        Some(crate::controllers::images::usable(
            images.iter().filter_map(|i| i.0.as_ref().ok()),
            owner.namespace,
            plan.spec.machine_image_selector.as_ref(),
        ))
    }

    /// Whether the Plan of `owner` admits Cluster `name` (with `labels`) to its target now, as
    /// the upgrader's gate reads it: unrestricted without a rollout or without the Plan.
    pub fn admission(
        &self,
        owner: &Owner<'_>,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
        now: k8s_openapi::jiff::Timestamp,
    ) -> crate::controllers::rollout::Admission {
        let plan = self
            .plans
            .get(&ObjectRef::new(&owner.spec.plan_ref.name).within(owner.namespace));
        let Some(plan) = plan.as_ref().and_then(|p| p.0.as_ref().ok()) else {
            return crate::controllers::rollout::Admission::Unrestricted;
        };
        let status = plan.status.as_ref();
        crate::controllers::rollout::admission(
            plan.spec.rollout.as_ref(),
            status.and_then(|s| s.rollout.as_ref()),
            status.and_then(|s| s.machine_image_details.as_ref()),
            name,
            labels,
            now,
        )
    }

    /// The build stamps of `namespace`'s MachineImages by image ID, as the in-place flow reads
    /// them: an ID several images share may be booted with any of their stamps.
    pub fn stamps(&self, namespace: &str) -> Stamps {
        let images = self.images.state();
        let of_namespace = images
            .iter()
            .filter_map(|guarded| guarded.0.as_ref().ok())
            .filter(|image| image.namespace().as_deref() == Some(namespace));
        in_place::verify::stamps(of_namespace, None)
    }

    /// Cluster API as this server serves it, rediscovered after [`DISCOVERY_TTL`].
    pub async fn access(&self) -> Result<Access, ReadError> {
        if let Some((at, access)) = self
            .access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(access.clone());
        }
        let found = cluster::discover(&self.client)
            .await
            .map_err(ReadError::Discovery)?
            .ok_or(ReadError::ClusterApiMissing)?;
        *self.access.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), found.clone()));
        Ok(found)
    }

    /// The Cluster as the API server holds it now.
    pub async fn cluster(
        &self,
        access: &Access,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ReadError> {
        cluster::get(&self.client, access, namespace, name)
            .await
            .map_err(|e| ReadError::Cluster(name.to_owned(), e))
    }

    /// The Cluster's Machines, ElementalMachines and ElementalHosts.
    pub async fn management(
        &self,
        access: &Access,
        namespace: &str,
        name: &str,
    ) -> Result<Management, ReadError> {
        let machine = ApiResource::from_gvk(&GroupVersionKind::gvk(
            cluster::GROUP,
            &access.resource.version,
            "Machine",
        ));
        in_place::observe::management(&self.client, &machine, namespace, name)
            .await
            .map_err(|e| ReadError::Hosts(name.to_owned(), e))
    }

    /// The workload cluster's Nodes named in `nodes`.
    pub async fn nodes(
        &self,
        namespace: &str,
        name: &str,
        nodes: &[String],
    ) -> Result<BTreeMap<String, NodeState>, ReadError> {
        let client = self
            .workloads
            .client(&self.client, namespace, name)
            .await
            .map_err(|e| ReadError::Workload(name.to_owned(), e))?;
        in_place::observe::nodes(&client, nodes)
            .await
            .map_err(|e| ReadError::Nodes(name.to_owned(), e))
    }
}

/// The shared stores the observer reads, asked of the manager's caches.
pub fn stores(caches: &crate::runtime::Caches) -> Stores {
    Stores {
        class: caches
            .cache::<DeserializeGuard<ClusterClassClusterUpgrader>>()
            .store,
        in_cluster: caches
            .cache::<DeserializeGuard<InClusterUpgradeAutomation>>()
            .store,
        plans: caches.cache::<DeserializeGuard<Plan>>().store,
        images: caches.cache::<DeserializeGuard<MachineImage>>().store,
    }
}

/// Resolves once every store has listed.
pub fn synced(stores: &Stores) -> futures::future::BoxFuture<'static, ()> {
    crate::runtime::all_ready(vec![
        crate::runtime::synced(stores.class.clone()),
        crate::runtime::synced(stores.in_cluster.clone()),
        crate::runtime::synced(stores.plans.clone()),
        crate::runtime::synced(stores.images.clone()),
    ])
}

/// Builds the observed stores in tests: `Arc`s of what the caches would hold.
#[cfg(test)]
pub fn store_of<K>(items: Vec<K>) -> Store<DeserializeGuard<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
{
    let (reader, mut writer) = kube::runtime::reflector::store();
    for item in items {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(DeserializeGuard(Ok(
            item,
        ))));
    }
    reader
}
