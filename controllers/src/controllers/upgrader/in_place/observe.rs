//! What the in-place flow sees of a Cluster's hosts: its Machines, their ElementalMachines and
//! ElementalHosts in the management cluster, and their Nodes and pods in the workload cluster.
//! The parsing is pure; [`management`] and [`nodes`] are the reads.

use std::collections::{BTreeMap, BTreeSet};

use api::v1alpha1::{CORDONED_BY_ANNOTATION, LabelSelector};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

use super::drain::{self, Disposition};
use super::remediation::SKIP_REMEDIATION_ANNOTATION;
use super::{HostView, Role, UpdateLabel};
use crate::runtime::status::{ApiError, bounded};

/// Machine label naming its Cluster.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// Machine label marking the control plane.
pub const CONTROL_PLANE_LABEL: &str = "cluster.x-k8s.io/control-plane";
/// Machine label naming its MachineDeployment.
pub const DEPLOYMENT_NAME_LABEL: &str = "cluster.x-k8s.io/deployment-name";
/// The ElementalHost label the agent acts on.
pub const IN_PLACE_UPDATE_LABEL: &str =
    "elementalhost.infrastructure.cluster.x-k8s.io/in-place-update";
/// The Elemental provider's API group and version.
pub const ELEMENTAL_API_VERSION: &str = "infrastructure.cluster.x-k8s.io/v1beta1";
/// The Elemental infrastructure Machine kind.
pub const ELEMENTAL_MACHINE: &str = "ElementalMachine";
/// The Elemental host kind.
pub const ELEMENTAL_HOST: &str = "ElementalHost";
pub use super::drain::MIRROR_ANNOTATION;
/// The ElementalHost condition the agent reports OS updates on.
pub const OS_VERSION_READY: &str = "OSVersionReady";

/// One of the Cluster's Machines backed by an ElementalMachine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementalMachineRef {
    /// The Machine.
    pub machine: String,
    /// Its ElementalMachine.
    pub infrastructure: String,
    /// Control plane or worker pool.
    pub role: Role,
    /// `status.nodeRef.name`.
    pub node: Option<String>,
    /// The value of its `cluster.x-k8s.io/skip-remediation` annotation.
    pub skip_remediation: Option<String>,
}

/// A Machine's role and infrastructure, when an ElementalMachine backs it.
pub fn machine(object: &Value) -> Option<ElementalMachineRef> {
    let name = object.pointer("/metadata/name")?.as_str()?.to_owned();
    let labels = object.pointer("/metadata/labels");
    let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
    let role = if label(CONTROL_PLANE_LABEL).is_some() {
        Role::ControlPlane
    } else {
        Role::Worker(label(DEPLOYMENT_NAME_LABEL).unwrap_or_default().to_owned())
    };
    let reference = object.pointer("/spec/infrastructureRef")?;
    if reference.get("kind").and_then(Value::as_str) != Some(ELEMENTAL_MACHINE) {
        return None;
    }
    // v1beta1 names the apiVersion, v1beta2 only the apiGroup.
    let group = reference
        .get("apiGroup")
        .and_then(Value::as_str)
        .or_else(|| {
            reference
                .get("apiVersion")
                .and_then(Value::as_str)
                .and_then(|v| v.split('/').next())
        });
    if group.is_some_and(|g| Some(g) != ELEMENTAL_API_VERSION.split('/').next()) {
        return None;
    }
    // Names read here go into request paths: one that is not a valid object name is refused.
    let infrastructure = reference
        .get("name")?
        .as_str()
        .filter(|n| api::names::is_dns_subdomain(n))?;
    Some(ElementalMachineRef {
        machine: name,
        infrastructure: infrastructure.to_owned(),
        role,
        node: object
            .pointer("/status/nodeRef/name")
            .and_then(Value::as_str)
            .filter(|n| api::names::is_dns_subdomain(n))
            .map(str::to_owned),
        skip_remediation: object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SKIP_REMEDIATION_ANNOTATION))
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// What is read of an ElementalMachine.
#[derive(Clone, Debug, PartialEq)]
pub struct ElementalMachine {
    /// `metadata.uid`: the image apply names it, so that it never recreates a deleted object.
    pub uid: Option<String>,
    /// `spec.hostRef.name`.
    pub host: Option<String>,
    /// `spec.osVersionManagement.osVersion.imageUri`.
    pub image_uri: Option<String>,
    /// `spec.selector`, which picks hosts for it: empty when omitted (any host), `None` when it
    /// cannot be read.
    pub selector: Option<LabelSelector>,
}

/// Parses an ElementalMachine.
pub fn elemental_machine(object: &Value) -> ElementalMachine {
    ElementalMachine {
        uid: object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        host: object
            .pointer("/spec/hostRef/name")
            .and_then(Value::as_str)
            .filter(|n| api::names::is_dns_subdomain(n))
            .map(str::to_owned),
        image_uri: object
            .pointer("/spec/osVersionManagement/osVersion/imageUri")
            .and_then(Value::as_str)
            .map(str::to_owned),
        selector: match object.pointer("/spec/selector") {
            None | Some(Value::Null) => Some(LabelSelector::default()),
            Some(s) => serde_json::from_value(s.clone()).ok(),
        },
    }
}

/// What is read of an ElementalHost.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ElementalHost {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The `in-place-update` label.
    pub label: Option<UpdateLabel>,
    /// The `OSVersionReady` condition's reason.
    pub os_reason: Option<String>,
}

/// Parses an ElementalHost.
pub fn elemental_host(object: &Value) -> ElementalHost {
    let labels: BTreeMap<String, String> = object
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    let label = match labels.get(IN_PLACE_UPDATE_LABEL).map(String::as_str) {
        Some("pending") => Some(UpdateLabel::Pending),
        Some("done") => Some(UpdateLabel::Done),
        _ => None,
    };
    let condition = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(OS_VERSION_READY))
        });
    let os_reason = condition
        .and_then(|c| c.get("reason"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    ElementalHost {
        labels,
        label,
        os_reason,
    }
}

/// What is read of a workload Node.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeState {
    /// `spec.unschedulable`.
    pub cordoned: bool,
    /// The `cordoned-by` mark: the upgrader that cordoned it, as `<kind>/<name>`.
    pub cordoned_by: Option<String>,
    /// `status.nodeInfo.osImage`.
    pub os_image: Option<String>,
    /// `status.nodeInfo.bootID`.
    pub boot_id: Option<String>,
}

/// The longest boot ID taken from a Node (the kernel's is a 36-character UUID).
pub const MAX_BOOT_ID: usize = 64;

/// Parses a Node. Its clock is never read: the heartbeat times are the kubelet's.
pub fn node(node: &Node) -> NodeState {
    let status = node.status.as_ref();
    let info = status.and_then(|s| s.node_info.as_ref());
    NodeState {
        cordoned: node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        cordoned_by: node.annotations().get(CORDONED_BY_ANNOTATION).cloned(),
        os_image: info.map(|i| i.os_image.clone()).filter(|i| !i.is_empty()),
        // Written by the workload's kubelet: one that is empty, too long or not printable is
        // no boot ID.
        boot_id: info.map(|i| i.boot_id.clone()).filter(|b| {
            !b.is_empty() && b.len() <= MAX_BOOT_ID && b.chars().all(|c| c.is_ascii_graphic())
        }),
    }
}

/// Whether a drain must move `pod` (or refuses to): not a DaemonSet pod, not a mirror pod, not
/// finished.
pub fn evictable(pod: &Pod) -> bool {
    let all = drain::Options {
        force: true,
        delete_empty_dir_data: true,
    };
    drain::disposition(pod, all, true) != Disposition::Skip
}

/// Everything read of the management cluster for one Cluster.
#[derive(Clone, Debug, Default)]
pub struct Management {
    /// The Cluster's Elemental Machines.
    pub machines: Vec<ElementalMachineRef>,
    /// ElementalMachines of the namespace, by name.
    pub elemental_machines: BTreeMap<String, ElementalMachine>,
    /// ElementalHosts of the namespace, by name.
    pub hosts: BTreeMap<String, ElementalHost>,
}

impl Management {
    /// Whether the Cluster runs on Elemental.
    pub fn is_elemental(&self) -> bool {
        !self.machines.is_empty()
    }

    /// The ElementalMachine behind the Machine `machine`.
    pub fn infrastructure_of(&self, machine: &str) -> Option<&str> {
        self.machines
            .iter()
            .find(|m| m.machine == machine)
            .map(|m| m.infrastructure.as_str())
    }

    /// The UID of the ElementalMachine named `name`, as observed.
    pub fn elemental_machine_uid(&self, name: &str) -> Option<&str> {
        self.elemental_machines
            .get(name)
            .and_then(|m| m.uid.as_deref())
    }

    /// The host views, with the workload's Nodes filled in from `nodes` and the drains of the
    /// cordoned ones from `drains`; `owner` is this upgrader's `cordoned-by` mark, and `live`
    /// the marks of every upgrader that still claims the Cluster (a mark outside it is adopted;
    /// `None` adopts nothing).
    pub fn views(
        &self,
        nodes: &BTreeMap<String, NodeState>,
        drains: &BTreeMap<String, drain::Plan>,
        owner: &str,
        live: Option<&BTreeSet<String>>,
    ) -> Vec<HostView> {
        self.machines
            .iter()
            .filter_map(|m| {
                let infra = self.elemental_machines.get(&m.infrastructure)?;
                let host_name = infra.host.clone()?;
                let host = self.hosts.get(&host_name).cloned().unwrap_or_default();
                let node = m.node.as_ref().and_then(|n| nodes.get(n));
                let drain = m.node.as_ref().and_then(|n| drains.get(n));
                Some(HostView {
                    host: host_name,
                    machine: m.machine.clone(),
                    // Without its Node, a host cannot be drained, so it is not selected.
                    node: m.node.clone().filter(|_| node.is_some()),
                    role: m.role.clone(),
                    cordoned: node.is_some_and(|n| n.cordoned),
                    drained: drain.is_some_and(|d| d.remaining == 0),
                    refused: drain.and_then(|d| d.refused.clone()),
                    cordoned_by_us: node.is_some_and(|n| n.cordoned_by.as_deref() == Some(owner)),
                    orphan_mark: node
                        .filter(|n| n.cordoned)
                        .and_then(|n| n.cordoned_by.clone())
                        .filter(|m| m != owner && live.is_some_and(|l| !l.contains(m))),
                    label: host.label,
                    os_reason: host.os_reason,
                    os_image: node.and_then(|n| n.os_image.clone()),
                    boot_id: node.and_then(|n| n.boot_id.clone()),
                    image_uri: infra.image_uri.clone(),
                    skip_remediation: m.skip_remediation.clone(),
                })
            })
            .collect()
    }

    /// Each pool with the selector of one of its ElementalMachines, for the spare-host gate.
    pub fn pools(&self) -> Vec<(String, Option<LabelSelector>)> {
        let mut pools: BTreeMap<String, Option<LabelSelector>> = BTreeMap::new();
        for m in &self.machines {
            let name = match &m.role {
                Role::ControlPlane => super::CONTROL_PLANE_POOL.to_owned(),
                Role::Worker(pool) => pool.clone(),
            };
            if let Some(machine) = self.elemental_machines.get(&m.infrastructure) {
                pools
                    .entry(name)
                    .or_insert_with(|| machine.selector.clone());
            }
        }
        pools.into_iter().collect()
    }
}

/// Cluster API's Machine resource in the served `version` (`v1beta1`, `v1beta2`).
pub fn machine_resource(version: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        crate::controllers::upgrader::cluster::GROUP,
        version,
        "Machine",
    ))
}

/// The Elemental resource of `kind`.
pub fn elemental_resource(kind: &str) -> ApiResource {
    let (group, version) = ELEMENTAL_API_VERSION
        .split_once('/')
        .unwrap_or(("infrastructure.cluster.x-k8s.io", "v1beta1"));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// Reads the Cluster's Machines (in the served Cluster API `version`), and the namespace's
/// ElementalMachines and ElementalHosts. A missing Elemental API reads as no Elemental Machines.
pub async fn management(
    client: &Client,
    machine_resource: &ApiResource,
    namespace: &str,
    cluster: &str,
) -> Result<Management, ApiError> {
    let machines: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, machine_resource);
    let selector = ListParams::default().labels(&format!("{CLUSTER_NAME_LABEL}={cluster}"));
    let listed = match bounded(machines.list(&selector)).await {
        Ok(list) => list.items,
        Err(ApiError::Api(kube::Error::Api(e))) if e.code == 404 => Vec::new(),
        Err(e) => return Err(e),
    };
    let machines: Vec<ElementalMachineRef> = listed
        .iter()
        .filter_map(|m| serde_json::to_value(m).ok())
        .filter_map(|m| machine(&m))
        .collect();
    if machines.is_empty() {
        return Ok(Management::default());
    }
    let elemental_machines = list_elemental(client, namespace, ELEMENTAL_MACHINE)
        .await?
        .into_iter()
        .map(|(name, o)| (name, elemental_machine(&o)))
        .collect();
    let hosts = list_elemental(client, namespace, ELEMENTAL_HOST)
        .await?
        .into_iter()
        .map(|(name, o)| (name, elemental_host(&o)))
        .collect();
    Ok(Management {
        machines,
        elemental_machines,
        hosts,
    })
}

/// The namespace's Elemental objects of `kind`, by name, as JSON.
async fn list_elemental(
    client: &Client,
    namespace: &str,
    kind: &str,
) -> Result<Vec<(String, Value)>, ApiError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &elemental_resource(kind));
    let items = bounded(api.list(&ListParams::default())).await?.items;
    Ok(items
        .into_iter()
        .filter_map(|o| Some((o.name_any(), serde_json::to_value(o).ok()?)))
        .collect())
}

/// The workload cluster's Nodes named in `names`.
pub async fn nodes(
    client: &Client,
    names: &[String],
) -> Result<BTreeMap<String, NodeState>, ApiError> {
    let api: Api<Node> = Api::all(client.clone());
    let mut out = BTreeMap::new();
    for name in names {
        if let Some(found) = bounded(api.get_opt(name)).await? {
            out.insert(name.clone(), node(&found));
        }
    }
    Ok(out)
}

/// The most pods read from one Node (the kubelet's default is 110); a Node with more is an
/// error, not a partial drain.
pub const MAX_PODS_PER_NODE: u32 = 1000;

/// The drain of `node` under `options`, from its pods and the DaemonSets they belong to.
pub async fn drain_plan(
    client: &Client,
    node: &str,
    options: drain::Options,
) -> Result<drain::Plan, ApiError> {
    let pods = pods_on(client, node).await?;
    // The DaemonSets of running DaemonSet pods, each read once: a gone one orphans its pods.
    let mut daemon_sets: BTreeMap<(String, String), bool> = BTreeMap::new();
    for pod in &pods {
        if let Some(("DaemonSet", name)) = drain::controller(pod)
            && !drain::finished(pod)
        {
            daemon_sets.insert((pod.namespace().unwrap_or_default(), name.to_owned()), true);
        }
    }
    for ((namespace, name), exists) in &mut daemon_sets {
        let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
        *exists = bounded(api.get_metadata_opt(name)).await?.is_some();
    }
    Ok(drain::plan(&pods, options, |namespace, name| {
        daemon_sets
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
            .unwrap_or(true)
    }))
}

/// Every pod bound to `node`.
pub async fn pods_on(client: &Client, node: &str) -> Result<Vec<Pod>, ApiError> {
    let api: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default()
        .fields(&format!("spec.nodeName={node}"))
        .limit(MAX_PODS_PER_NODE);
    let pods = bounded(api.list(&on_node)).await?;
    if pods
        .metadata
        .continue_
        .as_deref()
        .is_some_and(|c| !c.is_empty())
    {
        return Err(ApiError::TooMany(format!(
            "Node {node} has more than {MAX_PODS_PER_NODE} pods"
        )));
    }
    Ok(pods.items)
}
