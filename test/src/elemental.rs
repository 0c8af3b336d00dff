//! Elemental in-place OS updates on two real API servers (issue 12).
//!
//! - The **management** cluster is the harness's API server: our CRDs, the minimal Cluster CRD,
//!   and the minimal Cluster API `Machine` and Elemental `ElementalMachine` / `ElementalHost`
//!   CRDs installed here ([`install_crds`]), schemaless where the real ones are (so a
//!   server-side apply of `osVersionManagement.osVersion.imageUri` is tracked field by field).
//! - The **workload** cluster is a second kube-apiserver on the same etcd ([`Workload`]), with
//!   Nodes, Pods bound to them and PodDisruptionBudgets.
//!
//! Nothing runs on the workload cluster and no Elemental agent runs anywhere, so stand-ins do
//! their part: [`Kubelet`] (finishes graceful pod deletions, refreshes Node heartbeats, and
//! computes PodDisruptionBudget status as kube-controller-manager's disruption controller would),
//! [`Agent`] (the Elemental agent and host controller: updates a host labelled `pending` whose
//! ElementalMachine names a new image, then labels it `done`), and [`Monitor`] (watches both
//! clusters and records which hosts are out of service at every change).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub use kubernetes_upgrader::controllers::upgrader::in_place::OS_VERSION_RECONCILIATION_FAILED;
pub use kubernetes_upgrader::controllers::upgrader::in_place::observe::{
    CLUSTER_NAME_LABEL, CONTROL_PLANE_LABEL, DEPLOYMENT_NAME_LABEL, ELEMENTAL_HOST,
    ELEMENTAL_MACHINE, IN_PLACE_UPDATE_LABEL as IN_PLACE_UPDATE, MIRROR_ANNOTATION,
    OS_VERSION_READY, evictable,
};
pub use kubernetes_upgrader::controllers::upgrader::in_place::spare::{INSTALLED, MACHINE_NAME};

use crate::control_plane::BareApiserver;
use crate::manifests::FIELD_MANAGER;
use crate::{TestEnv, cluster, install, namespace};

/// The Elemental provider's API group.
pub const INFRA_GROUP: &str = "infrastructure.cluster.x-k8s.io";
/// The Elemental provider's (and Cluster API's) API version used here.
pub const V1BETA1: &str = "v1beta1";
/// Name of the minimal Machine CRD.
pub const MACHINE_CRD: &str = "machines.cluster.x-k8s.io";
/// Name of the minimal ElementalMachine CRD.
pub const ELEMENTAL_MACHINE_CRD: &str = "elementalmachines.infrastructure.cluster.x-k8s.io";
/// Name of the minimal ElementalHost CRD.
pub const ELEMENTAL_HOST_CRD: &str = "elementalhosts.infrastructure.cluster.x-k8s.io";
/// The label the fixtures' ElementalMachine selectors match hosts by.
pub const POOL_LABEL: &str = "e2e.example/pool";
/// What a control-plane host's [`POOL_LABEL`] says.
pub const CONTROL_PLANE_POOL: &str = "control-plane";
/// The workload cluster's namespace for the fixtures' pods.
pub const WORKLOAD_NAMESPACE: &str = "apps";
/// The label of the fixtures' ordinary (evictable) pods.
pub const APP_LABEL: &str = "app";
/// Kubernetes version of every fixture (Cluster, Machines, kubelets).
pub const KUBERNETES_VERSION: &str = "v1.31.1";

// ---------------------------------------------------------------------------------------------
// CRDs

/// A minimal namespaced v1beta1 CRD with the status subresource whose spec and status preserve
/// unknown fields; `spec_properties` declares fields of the spec.
fn minimal_crd(group: &str, kind: &str, plural: &str, spec_properties: &Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_lowercase(),
            },
            "scope": "Namespaced",
            "versions": [{
                "name": V1BETA1,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "properties": spec_properties,
                        },
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                }},
            }],
        },
    })
}

/// `osVersionManagement` as the Elemental provider declares it: a schemaless object.
fn os_version_management_schema() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// The minimal `machines.cluster.x-k8s.io` CRD (v1beta1, as the harness's Cluster CRD).
pub fn machine_crd() -> Value {
    minimal_crd(crate::capi::GROUP, "Machine", "machines", &json!({}))
}

/// The minimal `elementalmachines.infrastructure.cluster.x-k8s.io` CRD.
pub fn elemental_machine_crd() -> Value {
    minimal_crd(
        INFRA_GROUP,
        "ElementalMachine",
        "elementalmachines",
        &json!({"osVersionManagement": os_version_management_schema()}),
    )
}

/// The minimal `elementalhosts.infrastructure.cluster.x-k8s.io` CRD.
pub fn elemental_host_crd() -> Value {
    minimal_crd(
        INFRA_GROUP,
        "ElementalHost",
        "elementalhosts",
        &json!({"osVersionManagement": os_version_management_schema()}),
    )
}

static CRDS: tokio::sync::OnceCell<Result<(), String>> = tokio::sync::OnceCell::const_new();

/// Installs the Machine, ElementalMachine and ElementalHost CRDs (forced server-side apply)
/// once per test binary, and waits until they are Established and served.
pub async fn install_crds(client: &Client) -> Result<()> {
    CRDS.get_or_init(|| async {
        apply_crds(client)
            .await
            .map_err(|e| format!("installing the Elemental CRDs: {e:#}"))
    })
    .await
    .clone()
    .map_err(anyhow::Error::msg)
}

async fn apply_crds(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in [machine_crd(), elemental_machine_crd(), elemental_host_crd()] {
        let crd: CustomResourceDefinition = serde_json::from_value(doc)?;
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying {name}"))?;
        install::wait_established(&crds, &name, Duration::from_secs(60)).await?;
    }
    // Discovery of a just-established CRD can lag: wait until each kind lists.
    let probe_ns = "default";
    for api in [
        machines(client, probe_ns),
        elemental_machines(client, probe_ns),
        elemental_hosts(client, probe_ns),
    ] {
        crate::eventually("the Elemental CRDs served", Duration::from_secs(30), || {
            let api = api.clone();
            async move { Ok(api.list(&ListParams::default()).await.ok().map(|_| ())) }
        })
        .await?;
    }
    Ok(())
}

fn dynamic(
    client: &Client,
    namespace: &str,
    group: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, V1BETA1, kind), plural);
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// The Cluster API Machines of `namespace`.
pub fn machines(client: &Client, namespace: &str) -> Api<DynamicObject> {
    dynamic(client, namespace, crate::capi::GROUP, "Machine", "machines")
}

/// The ElementalMachines of `namespace`.
pub fn elemental_machines(client: &Client, namespace: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        namespace,
        INFRA_GROUP,
        "ElementalMachine",
        "elementalmachines",
    )
}

/// The ElementalHosts of `namespace`.
pub fn elemental_hosts(client: &Client, namespace: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        namespace,
        INFRA_GROUP,
        "ElementalHost",
        "elementalhosts",
    )
}

/// `spec.osVersionManagement.osVersion.imageUri` of an ElementalMachine (or host).
pub fn image_uri(object: &DynamicObject) -> Option<&str> {
    object.data["spec"]["osVersionManagement"]["osVersion"]["imageUri"].as_str()
}

/// The host's in-place-update label.
pub fn update_label(object: &DynamicObject) -> Option<&str> {
    object.labels().get(IN_PLACE_UPDATE).map(String::as_str)
}

/// The leaf fields that field manager `manager` owns on `object` (dotted paths, e.g.
/// `spec.osVersionManagement.osVersion.imageUri`), by operation. A map's own entry (`.`) is not a
/// leaf: it only says the manager wants the map to exist.
pub fn managed_fields_of(object: &DynamicObject, manager: &str) -> Vec<(String, Vec<String>)> {
    object
        .managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .map(|m| {
            let mut leaves = Vec::new();
            if let Some(fields) = &m.fields_v1 {
                leaf_fields(&fields.0, "", &mut leaves);
            }
            (m.operation.clone().unwrap_or_default(), leaves)
        })
        .collect()
}

fn leaf_fields(fields: &Value, prefix: &str, out: &mut Vec<String>) {
    let Some(map) = fields.as_object() else {
        return;
    };
    for (key, sub) in map {
        if key == "." {
            continue;
        }
        let name = key.strip_prefix("f:").unwrap_or(key);
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        };
        let children = sub.as_object().is_some_and(|m| m.keys().any(|k| k != "."));
        if children {
            leaf_fields(sub, &path, out);
        } else {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Images

/// An Elemental OS image: its `imageUri` and the stamp its `/etc/os-release` carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsImage {
    /// `oci://registry.example/os@sha256:<64 hex>`.
    pub uri: String,
    /// The build's stamp, e.g. `os-v1-31-1-b2`.
    pub stamp: String,
}

impl OsImage {
    /// The `build`-th build of the OS for Kubernetes v1.31.1: digest `<build as 2 hex>` × 32,
    /// stamp `os-v1-31-1-b<build>`.
    pub fn build(build: u8) -> Self {
        Self::of_version("v1.31.1", build)
    }

    /// The `build`-th build for `version` (`vX.Y.Z`).
    pub fn of_version(version: &str, build: u8) -> Self {
        let digest = format!("{build:02x}").repeat(32);
        Self {
            uri: format!("oci://registry.example/os@sha256:{digest}"),
            stamp: format!("os-{}-b{build}", version.replace('.', "-")),
        }
    }

    /// What a Node booted from this image reports as `status.nodeInfo.osImage`.
    pub fn os_release(&self) -> String {
        os_release(&self.stamp)
    }
}

/// The `PRETTY_NAME` of an image stamped `stamp` (the kubelet's `osImage`).
pub fn os_release(stamp: &str) -> String {
    format!("Elemental OS {stamp}")
}

// ---------------------------------------------------------------------------------------------
// The workload cluster

/// The workload cluster: a second kube-apiserver, stopped when dropped.
pub struct Workload {
    /// The apiserver process.
    pub apiserver: BareApiserver,
    /// Its admin client.
    pub client: Client,
    /// The kubeconfig for the `<cluster>-kubeconfig` Secret: inline CA and token, TLS verified.
    pub kubeconfig: Vec<u8>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("kubeconfig", &self.apiserver.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl Workload {
    /// Starts it beside `env`'s control plane, with the namespace [`WORKLOAD_NAMESPACE`].
    /// `Ok(None)` after a skip line when `env` is an external cluster (nothing to start it on).
    pub async fn start(env: &TestEnv) -> Result<Option<Self>> {
        let Some(plane) = &env.cluster.local else {
            cluster::skip(
                &env.test,
                "needs KUBEBUILDER_ASSETS: it starts a second API server as the workload cluster",
            );
            return Ok(None);
        };
        let apiserver = plane.start_bare_apiserver().await?;
        let client = client_without_retries(&apiserver.kubeconfig).await?;
        let kubeconfig = apiserver.verified_kubeconfig()?.into_bytes();
        namespace::ensure(&client, WORKLOAD_NAMESPACE).await?;
        // The DaemonSet the fixtures' DaemonSet pods belong to: a drain leaves them only while
        // it exists (nothing runs it: no controller-manager).
        let daemon_set: DaemonSet = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "node-agent", "namespace": WORKLOAD_NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {APP_LABEL: "node-agent"}},
                "template": {
                    "metadata": {"labels": {APP_LABEL: "node-agent"}},
                    "spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1"}]},
                },
            },
        }))?;
        Api::<DaemonSet>::namespaced(client.clone(), WORKLOAD_NAMESPACE)
            .create(&PostParams::default(), &daemon_set)
            .await?;
        Ok(Some(Self {
            apiserver,
            client,
            kubeconfig,
        }))
    }

    /// The kubeconfig path.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.apiserver.kubeconfig.clone()
    }

    /// The Nodes.
    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// The pods of [`WORKLOAD_NAMESPACE`].
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), WORKLOAD_NAMESPACE)
    }

    /// The PodDisruptionBudgets of [`WORKLOAD_NAMESPACE`].
    pub fn pdbs(&self) -> Api<PodDisruptionBudget> {
        Api::namespaced(self.client.clone(), WORKLOAD_NAMESPACE)
    }

    /// Creates the Node `name` with a full `status.nodeInfo` reporting `os_image`, and a Ready
    /// condition with a fresh heartbeat, as its kubelet would.
    pub async fn create_node(&self, name: &str, os_image: &str) -> Result<Node> {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "spec": {"providerID": format!("elemental://{name}")},
        }))?;
        self.nodes().create(&PostParams::default(), &node).await?;
        let now = now_json();
        let status = json!({"status": {
            "nodeInfo": {
                "machineID": format!("{:0>32}", name.len()),
                "systemUUID": format!("uuid-{name}"),
                "bootID": format!("boot-{name}-0"),
                "kernelVersion": "6.4.0-elemental",
                "osImage": os_image,
                "containerRuntimeVersion": "containerd://1.7.20",
                "kubeletVersion": KUBERNETES_VERSION,
                "kubeProxyVersion": KUBERNETES_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
        }});
        Ok(self
            .nodes()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?)
    }

    /// Creates a pod of `kind` bound to `node`, with `labels`, and reports it Running and Ready
    /// as its kubelet would. Its grace period is 30 s, so an eviction leaves it terminating
    /// until the [`Kubelet`] stand-in confirms.
    pub async fn create_pod(
        &self,
        name: &str,
        node: &str,
        kind: PodKind,
        labels: &BTreeMap<String, String>,
    ) -> Result<Pod> {
        let mut metadata = json!({"name": name, "namespace": WORKLOAD_NAMESPACE, "labels": labels});
        let mut volumes = json!([]);
        let replica_set = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
            "uid": "6a1f2c3e-0000-4000-8000-000000000002", "controller": true,
        }]);
        match kind {
            PodKind::Ordinary => metadata["ownerReferences"] = replica_set,
            PodKind::Bare => {}
            PodKind::EmptyDir => {
                metadata["ownerReferences"] = replica_set;
                volumes = json!([{"name": "scratch", "emptyDir": {}}]);
            }
            PodKind::DaemonSet => {
                metadata["ownerReferences"] = json!([{
                    "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "node-agent",
                    "uid": "6a1f2c3e-0000-4000-8000-000000000001", "controller": true,
                }]);
            }
            PodKind::Mirror => {
                metadata["annotations"] = json!({MIRROR_ANNOTATION: format!("hash-{name}")});
            }
        }
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 30,
                "containers": [{"name": "app", "image": "registry.example/app:1"}],
                "volumes": volumes,
            },
        }))?;
        self.pods().create(&PostParams::default(), &pod).await?;
        let now = now_json();
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
            ],
            "startTime": now,
        }});
        Ok(self
            .pods()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?)
    }

    /// The three kinds of pod on `node`: `app-<node>` (ordinary, labelled `app: web`),
    /// `ds-<node>` (DaemonSet-owned) and `mirror-<node>` (a static pod's mirror).
    pub async fn standard_pods(&self, node: &str) -> Result<()> {
        let web = labels(&[(APP_LABEL, "web")]);
        self.create_pod(&format!("app-{node}"), node, PodKind::Ordinary, &web)
            .await?;
        let agent = labels(&[(APP_LABEL, "node-agent")]);
        self.create_pod(&format!("ds-{node}"), node, PodKind::DaemonSet, &agent)
            .await?;
        let static_pod = labels(&[(APP_LABEL, "static")]);
        self.create_pod(
            &format!("mirror-{node}"),
            node,
            PodKind::Mirror,
            &static_pod,
        )
        .await?;
        Ok(())
    }

    /// Creates the PodDisruptionBudget `name` over pods labelled `selector` with `minAvailable`.
    pub async fn create_pdb(
        &self,
        name: &str,
        selector: &BTreeMap<String, String>,
        min_available: i32,
    ) -> Result<PodDisruptionBudget> {
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": WORKLOAD_NAMESPACE},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": selector}},
        }))?;
        Ok(self.pdbs().create(&PostParams::default(), &pdb).await?)
    }

    /// The Node `name`.
    pub async fn node(&self, name: &str) -> Result<Node> {
        Ok(self.nodes().get(name).await?)
    }

    /// The names of the pods bound to `node` in every namespace.
    pub async fn pods_on(&self, node: &str) -> Result<Vec<Pod>> {
        pods_on(&self.client, node).await
    }
}

/// A client for `kubeconfig` that hands back a `429 Too Many Requests` (an eviction refused by
/// a PodDisruptionBudget) at once: kube's default client retries it up to 15 times with
/// exponential backoff, for minutes.
pub async fn client_without_retries(kubeconfig: &std::path::Path) -> Result<Client> {
    cluster::install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    config.default_retry = false;
    Client::try_from(config).context("building a kube client")
}

/// What kind of pod a fixture pod is, for a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodKind {
    /// Controlled by a ReplicaSet: evicted by a drain.
    Ordinary,
    /// Managed by no controller: a drain refuses it unless `spec.inPlace.drain.force`.
    Bare,
    /// Controlled by a ReplicaSet, with an `emptyDir` volume: a drain refuses it unless
    /// `spec.inPlace.drain.deleteEmptyDirData`.
    EmptyDir,
    /// Owned by a DaemonSet: a drain leaves it.
    DaemonSet,
    /// A static pod's mirror: a drain leaves it.
    Mirror,
}

/// A label map from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The pods bound to `node`, in every namespace.
pub async fn pods_on(client: &Client, node: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::all(client.clone());
    Ok(pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?
        .items)
}

/// Whether the Node is cordoned.
pub fn cordoned(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

/// The Node's `status.nodeInfo.osImage`.
pub fn node_os_image(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|i| i.os_image.as_str())
}

fn now_json() -> Value {
    serde_json::to_value(Time(Timestamp::now())).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------------------------
// The management cluster's Elemental fleet

/// One host of the fleet: its Machine `m-<id>`, ElementalMachine `em-<id>`, ElementalHost
/// `host-<id>` and workload Node `node-<id>` (distinct names, so a mix-up shows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The id the names derive from.
    pub id: String,
    /// The worker pool (MachineDeployment); `None` for the control plane.
    pub pool: Option<String>,
}

impl Host {
    /// A control-plane host.
    pub fn control_plane(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            pool: None,
        }
    }

    /// A worker of `pool`.
    pub fn worker(id: &str, pool: &str) -> Self {
        Self {
            id: id.to_owned(),
            pool: Some(pool.to_owned()),
        }
    }

    /// The Machine's name.
    pub fn machine(&self) -> String {
        format!("m-{}", self.id)
    }

    /// The ElementalMachine's name.
    pub fn elemental_machine(&self) -> String {
        format!("em-{}", self.id)
    }

    /// The ElementalHost's name.
    pub fn host(&self) -> String {
        format!("host-{}", self.id)
    }

    /// The workload Node's name.
    pub fn node(&self) -> String {
        format!("node-{}", self.id)
    }

    /// The value of [`POOL_LABEL`] its ElementalMachine selects hosts by.
    pub fn pool_label(&self) -> &str {
        self.pool.as_deref().unwrap_or(CONTROL_PLANE_POOL)
    }

    /// The ElementalMachine's `spec.selector.matchLabels`.
    pub fn selector(&self) -> BTreeMap<String, String> {
        labels(&[(POOL_LABEL, self.pool_label())])
    }
}

/// The `osVersionManagement` every fixture ElementalMachine starts with: `image`, a pre-set
/// `debug: false` and a key unknown to us, which an update must leave untouched.
pub fn initial_os_version_management(image: &str) -> Value {
    json!({"osVersion": {"imageUri": image, "debug": false}, "someUnknownKey": "x"})
}

/// An Elemental Cluster's hosts, in the management cluster's `namespace`.
#[derive(Clone, Debug)]
pub struct Fleet {
    /// The management namespace.
    pub namespace: String,
    /// The Cluster's name.
    pub cluster: String,
    /// The hosts.
    pub hosts: Vec<Host>,
}

impl Fleet {
    /// Creates, for every host, the workload Node (booted from `current`) with the
    /// [`Workload::standard_pods`], and the Machine (with `status.nodeRef`), ElementalMachine
    /// and ElementalHost; and the Cluster's `<cluster>-kubeconfig` Secret.
    pub async fn create(
        management: &Client,
        namespace: &str,
        cluster: &str,
        hosts: Vec<Host>,
        workload: &Workload,
        current: &OsImage,
    ) -> Result<Self> {
        install_crds(management).await?;
        let fleet = Self {
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
            hosts,
        };
        for host in &fleet.hosts {
            workload
                .create_node(&host.node(), &current.os_release())
                .await?;
            workload.standard_pods(&host.node()).await?;
            fleet.create_host(management, host, current).await?;
        }
        kubeconfig_secret(management, namespace, cluster, &workload.kubeconfig).await?;
        Ok(fleet)
    }

    async fn create_host(&self, client: &Client, host: &Host, current: &OsImage) -> Result<()> {
        let ns = &self.namespace;
        let mut machine_labels = labels(&[(CLUSTER_NAME_LABEL, &self.cluster)]);
        match &host.pool {
            None => machine_labels.insert(CONTROL_PLANE_LABEL.into(), String::new()),
            Some(pool) => machine_labels.insert(DEPLOYMENT_NAME_LABEL.into(), pool.clone()),
        };
        let machine = json!({
            "apiVersion": format!("{}/{V1BETA1}", crate::capi::GROUP),
            "kind": "Machine",
            "metadata": {"name": host.machine(), "labels": machine_labels},
            "spec": {
                "clusterName": self.cluster,
                "version": KUBERNETES_VERSION,
                "bootstrap": {"dataSecretName": format!("{}-bootstrap", host.machine())},
                "infrastructureRef": {
                    "apiVersion": format!("{INFRA_GROUP}/{V1BETA1}"),
                    "kind": ELEMENTAL_MACHINE,
                    "name": host.elemental_machine(),
                    "namespace": ns,
                },
            },
        });
        let api = machines(client, ns);
        api.create(&PostParams::default(), &serde_json::from_value(machine)?)
            .await
            .with_context(|| format!("creating Machine {}", host.machine()))?;
        let status = json!({"status": {
            "phase": "Running",
            "nodeRef": {"apiVersion": "v1", "kind": "Node", "name": host.node()},
        }});
        api.patch_status(
            &host.machine(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;

        let osvm = initial_os_version_management(&current.uri);
        let em = json!({
            "apiVersion": format!("{INFRA_GROUP}/{V1BETA1}"),
            "kind": ELEMENTAL_MACHINE,
            "metadata": {"name": host.elemental_machine(), "labels": {CLUSTER_NAME_LABEL: self.cluster}},
            "spec": {
                "hostRef": {"name": host.host(), "namespace": ns},
                "providerID": format!("elemental://{ns}/{}", host.host()),
                "selector": {"matchLabels": host.selector()},
                "osVersionManagement": osvm,
            },
        });
        elemental_machines(client, ns)
            .create(&PostParams::default(), &serde_json::from_value(em)?)
            .await
            .with_context(|| format!("creating ElementalMachine {}", host.elemental_machine()))?;

        let mut host_labels = host.selector();
        host_labels.insert(INSTALLED.into(), "true".into());
        host_labels.insert(MACHINE_NAME.into(), host.machine());
        host_labels.insert(
            "elementalhost.infrastructure.cluster.x-k8s.io/elemental-machine-name".into(),
            host.elemental_machine(),
        );
        create_elemental_host(client, ns, &host.host(), &host_labels, Some(&osvm)).await?;
        Ok(())
    }

    /// The host whose Node is `node`.
    pub fn host_of_node(&self, node: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.node() == node)
    }

    /// The host named `host` (ElementalHost name).
    pub fn by_host(&self, host: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.host() == host)
    }
}

/// Creates the ElementalHost `name` with `labels`, reporting itself Running with
/// `OSVersionReady` True (and, when given, the `osVersionManagement` copied from its machine).
pub async fn create_elemental_host(
    client: &Client,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    os_version_management: Option<&Value>,
) -> Result<DynamicObject> {
    let mut spec = json!({});
    if let Some(osvm) = os_version_management {
        spec["osVersionManagement"] = osvm.clone();
    }
    let body = json!({
        "apiVersion": format!("{INFRA_GROUP}/{V1BETA1}"),
        "kind": ELEMENTAL_HOST,
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    });
    let api = elemental_hosts(client, namespace);
    api.create(&PostParams::default(), &serde_json::from_value(body)?)
        .await
        .with_context(|| format!("creating ElementalHost {name}"))?;
    let now = now_json();
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": OS_VERSION_READY, "status": "True", "lastTransitionTime": now},
        ],
    }});
    Ok(api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?)
}

/// Creates Cluster API's `<cluster>-kubeconfig` Secret with `kubeconfig` under `value`.
pub async fn kubeconfig_secret(
    client: &Client,
    namespace: &str,
    cluster: &str,
    kubeconfig: &[u8],
) -> Result<Secret> {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("{cluster}-kubeconfig"), "labels": {CLUSTER_NAME_LABEL: cluster}},
        "type": "cluster.x-k8s.io/secret",
        "data": {"value": k8s_openapi::ByteString(kubeconfig.to_vec())},
    }))?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    Ok(api.create(&PostParams::default(), &secret).await?)
}

// ---------------------------------------------------------------------------------------------
// Background tasks

/// Background tasks aborted when dropped.
#[derive(Debug, Default)]
pub struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(task));
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// The kubelet (and disruption controller) stand-in

/// What the [`Kubelet`] stand-in did.
#[derive(Clone, Debug, Default)]
pub struct KubeletLog {
    /// Pods whose graceful deletion it confirmed (deleted with grace period 0).
    pub confirmed_deletions: Vec<String>,
    /// Errors it met (a test may assert there are none).
    pub errors: Vec<String>,
}

/// Stands in for the workload cluster's kubelets and for kube-controller-manager's disruption
/// controller, which do not run on the bare apiserver:
/// - a pod with a `deletionTimestamp` (an eviction of a pod with a grace period) is deleted with
///   grace period 0, as the kubelet does once the containers stopped;
/// - every Node's `Ready` condition gets a fresh `lastHeartbeatTime` every `heartbeat` (a real
///   kubelet reports at least every `nodeStatusReportFrequency`; the test shortens it);
/// - every PodDisruptionBudget's status is computed from its pods (healthy = Running, Ready,
///   not terminating), with `observedGeneration`, so the Eviction API can grant or refuse.
#[derive(Debug)]
pub struct Kubelet {
    log: Arc<Mutex<KubeletLog>>,
    _tasks: Tasks,
}

impl Kubelet {
    /// Starts it on the workload cluster `client`.
    pub fn spawn(client: Client, heartbeat: Duration) -> Self {
        let log = Arc::new(Mutex::new(KubeletLog::default()));
        let mut tasks = Tasks::default();
        let shared = log.clone();
        tasks.spawn(async move {
            let mut last_heartbeat = Instant::now();
            loop {
                if let Err(e) = kubelet_pass(&client, &shared).await {
                    lock(&shared).errors.push(format!("{e:#}"));
                }
                if last_heartbeat.elapsed() >= heartbeat {
                    last_heartbeat = Instant::now();
                    if let Err(e) = heartbeat_all(&client).await {
                        lock(&shared).errors.push(format!("heartbeat: {e:#}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { log, _tasks: tasks }
    }

    /// What it did so far.
    pub fn log(&self) -> KubeletLog {
        lock(&self.log).clone()
    }
}

async fn kubelet_pass(client: &Client, log: &Mutex<KubeletLog>) -> Result<()> {
    let all: Api<Pod> = Api::all(client.clone());
    let pods = all.list(&ListParams::default()).await?.items;
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
    {
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => lock(log).confirmed_deletions.push(pod.name_any()),
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let pdbs: Api<PodDisruptionBudget> = Api::all(client.clone());
    for pdb in pdbs.list(&ListParams::default()).await?.items {
        disruption_status(client, &pdb, &pods).await?;
    }
    Ok(())
}

fn healthy(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Writes the PodDisruptionBudget's status as the disruption controller would (integer
/// `minAvailable` only), when it differs.
async fn disruption_status(client: &Client, pdb: &PodDisruptionBudget, pods: &[Pod]) -> Result<()> {
    let ns = pdb.namespace().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();
    let selector = spec
        .selector
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    let matching: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .collect();
    let expected = i32::try_from(matching.len()).unwrap_or(i32::MAX);
    let current = i32::try_from(matching.iter().filter(|p| healthy(p)).count()).unwrap_or(i32::MAX);
    let desired = match spec.min_available {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => n,
        _ => 0,
    };
    let allowed = (current - desired).max(0);
    let generation = pdb.metadata.generation.unwrap_or(1);
    let status = pdb.status.clone().unwrap_or_default();
    let same = status.observed_generation == Some(generation)
        && status.disruptions_allowed == allowed
        && status.current_healthy == current
        && status.desired_healthy == desired
        && status.expected_pods == expected
        && status
            .disrupted_pods
            .as_ref()
            .is_none_or(BTreeMap::is_empty);
    if same {
        return Ok(());
    }
    let (condition, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let body = json!({"status": {
        "observedGeneration": generation,
        "disruptionsAllowed": allowed,
        "currentHealthy": current,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptedPods": null,
        "conditions": [{"type": "DisruptionAllowed", "status": condition, "reason": reason, "message": "", "lastTransitionTime": now_json(), "observedGeneration": generation}],
    }});
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        &pdb.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&body),
    )
    .await?;
    Ok(())
}

/// A fresh `lastHeartbeatTime` on every Node's Ready condition.
async fn heartbeat_all(client: &Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes.list(&ListParams::default()).await?.items {
        heartbeat(client, &node.name_any(), None).await?;
    }
    Ok(())
}

/// Reports the Node's status as its kubelet would: a fresh Ready heartbeat and, when given, the
/// booted `os_image` (a strategic merge: the Ready entry is merged by type).
async fn heartbeat(client: &Client, node: &str, os_image: Option<&str>) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut status = json!({"conditions": [{"type": "Ready", "lastHeartbeatTime": now_json()}]});
    if let Some(os) = os_image {
        status["nodeInfo"] = json!({"osImage": os});
    }
    nodes
        .patch_status(
            node,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": status})),
        )
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The Elemental agent stand-in

/// How the agent stand-in updates one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Boots the new image: the Node reports its stamp; then `done`.
    Normal,
    /// Boot assessment falls back: the Node keeps reporting the OLD stamp, yet the host is
    /// labelled `done` with `OSVersionReady` True (`upgrade-safety.md` §3.3, trap 1).
    Fallback,
    /// The first `times` tries fail (`OSVersionReady` False, `OSVersionReconciliationFailed`,
    /// the label left `pending`), each failure shown for `hold` before the next try
    /// (`WaitingForOSReconcile`); then it boots the new image.
    Fail {
        /// Failed tries before the one that works.
        times: u32,
        /// How long each failure and each next try is shown.
        hold: Duration,
    },
}

/// A host the agent saw turn `pending`, with the state of its Node at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSeen {
    /// The ElementalHost.
    pub host: String,
    /// Time since the agent started.
    pub at: Duration,
    /// Whether its Node was cordoned then.
    pub node_cordoned: bool,
    /// The evictable pods (not DaemonSet, not mirror) still bound to the Node then, with
    /// ` (terminating)` after those being deleted.
    pub pods_left: Vec<String>,
}

/// One OS update the agent carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The ElementalHost.
    pub host: String,
    /// The ElementalMachine's `imageUri` it updated to.
    pub image: String,
    /// The stamp the Node reports afterwards.
    pub booted_stamp: String,
    /// Time since the agent started.
    pub at: Duration,
}

/// What the agent stand-in saw and did.
#[derive(Clone, Debug, Default)]
pub struct AgentLog {
    /// Every turn of a host's label to `pending`, in order.
    pub pending: Vec<PendingSeen>,
    /// Every update, in order.
    pub updates: Vec<Update>,
    /// OS update failures reported, as (host, try).
    pub failures: Vec<(String, u32)>,
    /// Contract breaches it saw: an ElementalMachine's image changed while its host was not
    /// labelled `pending`.
    pub violations: Vec<String>,
    /// Errors it met.
    pub errors: Vec<String>,
}

/// One host as the agent knows it.
#[derive(Clone, Debug)]
struct AgentHost {
    node: String,
    behaviour: Behaviour,
    /// The `imageUri` last reconciled (its correlation ID, in the real agent).
    applied: String,
    /// The stamp the host runs.
    running: String,
    last_label: Option<String>,
    attempt: Option<Instant>,
    failed_at: Option<Instant>,
    failures: u32,
}

/// Stands in for the Elemental agent on each host together with the provider's host
/// controller: every 100 ms it reads the ElementalMachines (first) and the ElementalHosts of the
/// namespace. A host labelled `pending` whose ElementalMachine names an `imageUri` other than
/// the one last reconciled gets updated: after `delay`, the Node reports the booted image
/// (`osImage`, with a fresh heartbeat, as the kubelet would after the reboot), then the host is
/// labelled `done` with `OSVersionReady` True. [`Behaviour`] sets per host how it goes.
#[derive(Debug)]
pub struct Agent {
    log: Arc<Mutex<AgentLog>>,
    _tasks: Tasks,
}

/// The agent stand-in's configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The management namespace.
    pub namespace: String,
    /// Per ElementalHost: its Node and its behaviour.
    pub hosts: BTreeMap<String, (String, Behaviour)>,
    /// The image every host runs at the start.
    pub current: OsImage,
    /// Every image the agent can boot, by `imageUri`.
    pub stamps: BTreeMap<String, String>,
    /// How long an update takes.
    pub delay: Duration,
}

impl AgentConfig {
    /// Every host of `fleet` behaving [`Behaviour::Normal`], running `current`, able to boot
    /// `images`, with updates of 500 ms.
    pub fn new(fleet: &Fleet, current: &OsImage, images: &[&OsImage]) -> Self {
        Self {
            namespace: fleet.namespace.clone(),
            hosts: fleet
                .hosts
                .iter()
                .map(|h| (h.host(), (h.node(), Behaviour::Normal)))
                .collect(),
            current: current.clone(),
            stamps: images
                .iter()
                .chain(std::iter::once(&current))
                .map(|i| (i.uri.clone(), i.stamp.clone()))
                .collect(),
            delay: Duration::from_millis(500),
        }
    }

    /// With `behaviour` for `host` (its ElementalHost name).
    #[must_use]
    pub fn behaving(mut self, host: &str, behaviour: Behaviour) -> Self {
        if let Some(entry) = self.hosts.get_mut(host) {
            entry.1 = behaviour;
        }
        self
    }
}

impl Agent {
    /// Starts it: `management` reaches the ElementalMachines and hosts, `workload` the Nodes.
    pub fn spawn(management: Client, workload: Client, config: AgentConfig) -> Self {
        let log = Arc::new(Mutex::new(AgentLog::default()));
        let mut hosts: BTreeMap<String, AgentHost> = config
            .hosts
            .iter()
            .map(|(host, (node, behaviour))| {
                (
                    host.clone(),
                    AgentHost {
                        node: node.clone(),
                        behaviour: *behaviour,
                        applied: config.current.uri.clone(),
                        running: config.current.stamp.clone(),
                        last_label: None,
                        attempt: None,
                        failed_at: None,
                        failures: 0,
                    },
                )
            })
            .collect();
        let shared = log.clone();
        let mut tasks = Tasks::default();
        tasks.spawn(async move {
            let started = Instant::now();
            loop {
                let pass = agent_pass(
                    &management,
                    &workload,
                    &config,
                    &mut hosts,
                    &shared,
                    started,
                );
                if let Err(e) = pass.await {
                    lock(&shared).errors.push(format!("{e:#}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { log, _tasks: tasks }
    }

    /// What it saw and did so far.
    pub fn log(&self) -> AgentLog {
        lock(&self.log).clone()
    }
}

async fn agent_pass(
    management: &Client,
    workload: &Client,
    config: &AgentConfig,
    hosts: &mut BTreeMap<String, AgentHost>,
    log: &Mutex<AgentLog>,
    started: Instant,
) -> Result<()> {
    // Machines first: an image seen here was written before the labels read below.
    let machines = elemental_machines(management, &config.namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let images: BTreeMap<String, String> = machines
        .iter()
        .filter_map(|em| {
            let host = em.data["spec"]["hostRef"]["name"].as_str()?;
            Some((host.to_owned(), image_uri(em)?.to_owned()))
        })
        .collect();
    let host_api = elemental_hosts(management, &config.namespace);
    for object in host_api.list(&ListParams::default()).await?.items {
        let name = object.name_any();
        let Some(state) = hosts.get_mut(&name) else {
            continue;
        };
        let label = update_label(&object).map(str::to_owned);
        let pending = label.as_deref() == Some("pending");
        if pending && state.last_label.as_deref() != Some("pending") {
            let seen = observe_node(workload, &state.node).await?;
            lock(log).pending.push(PendingSeen {
                host: name.clone(),
                at: started.elapsed(),
                node_cordoned: seen.0,
                pods_left: seen.1,
            });
        }
        state.last_label.clone_from(&label);
        let Some(image) = images.get(&name).filter(|i| !i.is_empty()) else {
            continue;
        };
        if *image == state.applied {
            continue;
        }
        if !pending {
            let violation = format!(
                "ElementalMachine of {name} names {image} while the host is labelled {label:?}"
            );
            let mut log = lock(log);
            if !log.violations.contains(&violation) {
                log.violations.push(violation);
            }
            continue;
        }
        let attempt = *state.attempt.get_or_insert_with(Instant::now);
        if attempt.elapsed() < config.delay {
            continue;
        }
        if let Behaviour::Fail { times, hold } = state.behaviour {
            match state.failed_at {
                // The failure stays reported for `hold`.
                Some(at) if at.elapsed() < hold => continue,
                Some(_) => {
                    // The next try begins, and takes `hold`.
                    state.failed_at = None;
                    state.attempt = Some(Instant::now() + hold.saturating_sub(config.delay));
                    os_version_ready(&host_api, &name, false, "WaitingForOSReconcile").await?;
                    continue;
                }
                None if state.failures < times => {
                    state.failures += 1;
                    state.failed_at = Some(Instant::now());
                    lock(log).failures.push((name.clone(), state.failures));
                    os_version_ready(&host_api, &name, false, OS_VERSION_RECONCILIATION_FAILED)
                        .await?;
                    continue;
                }
                None => {}
            }
        }
        let booted = match state.behaviour {
            Behaviour::Fallback => state.running.clone(),
            _ => config
                .stamps
                .get(image)
                .cloned()
                .with_context(|| format!("the agent stand-in knows no stamp for {image}"))?,
        };
        heartbeat(workload, &state.node, Some(&os_release(&booted))).await?;
        os_version_ready(&host_api, &name, true, "").await?;
        host_api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {IN_PLACE_UPDATE: "done"}}})),
            )
            .await?;
        state.applied.clone_from(image);
        state.running.clone_from(&booted);
        state.attempt = None;
        state.failed_at = None;
        state.last_label = Some("done".into());
        lock(log).updates.push(Update {
            host: name,
            image: image.clone(),
            booted_stamp: booted,
            at: started.elapsed(),
        });
    }
    Ok(())
}

/// Whether `node` is cordoned, and its evictable pods.
async fn observe_node(workload: &Client, node: &str) -> Result<(bool, Vec<String>)> {
    let nodes: Api<Node> = Api::all(workload.clone());
    let cordon = cordoned(&nodes.get(node).await?);
    let pods = pods_on(workload, node)
        .await?
        .iter()
        .filter(|p| evictable(p))
        .map(|p| {
            let mut name = p.name_any();
            if p.metadata.deletion_timestamp.is_some() {
                name.push_str(" (terminating)");
            }
            name
        })
        .collect();
    Ok((cordon, pods))
}

/// Sets the host's `OSVersionReady` condition (and its phase) as the agent reports them.
async fn os_version_ready(
    hosts: &Api<DynamicObject>,
    host: &str,
    ready: bool,
    reason: &str,
) -> Result<()> {
    let now = now_json();
    let mut condition = json!({
        "type": OS_VERSION_READY,
        "status": if ready { "True" } else { "False" },
        "lastTransitionTime": now,
    });
    if !ready {
        condition["reason"] = json!(reason);
        condition["severity"] = json!(if reason == OS_VERSION_RECONCILIATION_FAILED {
            "Error"
        } else {
            "Info"
        });
        condition["message"] = json!(format!("OS version reconciliation: {reason}"));
    }
    let phase = if ready {
        "Running"
    } else {
        "Reconciling OS Version"
    };
    let body = json!({"status": {
        "phase": phase,
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            condition,
        ],
    }});
    hosts
        .patch_status(host, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The monitor

/// What the [`Monitor`] saw: which hosts were out of service (Node cordoned or host labelled
/// `pending`) at every change.
#[derive(Clone, Debug, Default)]
pub struct MonitorLog {
    /// Hosts whose Node is cordoned now.
    pub cordoned: BTreeSet<String>,
    /// Hosts labelled `pending` now.
    pub pending: BTreeSet<String>,
    /// The out-of-service set after every change, with the time since the start.
    pub timeline: Vec<(Duration, BTreeSet<String>)>,
    /// The largest out-of-service set seen.
    pub max_in_flight: usize,
    /// Hosts in the order they first went out of service.
    pub order: Vec<String>,
    /// Hosts in the order they were first labelled `pending`.
    pub pending_order: Vec<String>,
    /// Hosts ever cordoned.
    pub ever_cordoned: BTreeSet<String>,
    /// Errors from the watches.
    pub errors: Vec<String>,
}

impl MonitorLog {
    /// The hosts out of service now.
    pub fn in_flight(&self) -> BTreeSet<String> {
        self.cordoned.union(&self.pending).cloned().collect()
    }

    /// The first moment more than `limit` hosts were out of service, if any.
    pub fn first_over(&self, limit: usize) -> Option<&(Duration, BTreeSet<String>)> {
        self.timeline.iter().find(|(_, set)| set.len() > limit)
    }

    fn record(&mut self, at: Duration) {
        let now = self.in_flight();
        if self.timeline.last().is_some_and(|(_, last)| *last == now) {
            return;
        }
        for host in &now {
            if !self.order.contains(host) {
                self.order.push(host.clone());
            }
        }
        self.max_in_flight = self.max_in_flight.max(now.len());
        self.timeline.push((at, now));
    }
}

/// Watches the workload Nodes and the management ElementalHosts of a [`Fleet`] and records every
/// change of the set of hosts out of service, so a test can assert that never more than the
/// budget were at once, and in which order they went.
#[derive(Debug)]
pub struct Monitor {
    log: Arc<Mutex<MonitorLog>>,
    _tasks: Tasks,
}

impl Monitor {
    /// Starts both watches.
    pub fn spawn(management: &Client, workload: &Client, fleet: &Fleet) -> Self {
        let log = Arc::new(Mutex::new(MonitorLog::default()));
        let started = Instant::now();
        let mut tasks = Tasks::default();
        let node_to_host: BTreeMap<String, String> =
            fleet.hosts.iter().map(|h| (h.node(), h.host())).collect();
        let nodes: Api<Node> = Api::all(workload.clone());
        tasks.spawn(watch_into(nodes, log.clone(), "Node", move |log, node| {
            let Some(host) = node_to_host.get(&node.name_any()) else {
                return;
            };
            if cordoned(&node) {
                log.cordoned.insert(host.clone());
                log.ever_cordoned.insert(host.clone());
            } else {
                log.cordoned.remove(host);
            }
            log.record(started.elapsed());
        }));
        let hosts = elemental_hosts(management, &fleet.namespace);
        let known: BTreeSet<String> = fleet.hosts.iter().map(Host::host).collect();
        tasks.spawn(watch_into(
            hosts,
            log.clone(),
            "ElementalHost",
            move |log, host| {
                let name = host.name_any();
                if !known.contains(&name) {
                    return;
                }
                if update_label(&host) == Some("pending") {
                    if !log.pending_order.contains(&name) {
                        log.pending_order.push(name.clone());
                    }
                    log.pending.insert(name);
                } else {
                    log.pending.remove(&name);
                }
                log.record(started.elapsed());
            },
        ));
        Self { log, _tasks: tasks }
    }

    /// What it saw so far.
    pub fn log(&self) -> MonitorLog {
        lock(&self.log).clone()
    }
}

/// Watches `api` (backing off on errors) and hands every object seen to `apply` under the lock.
async fn watch_into<K>(
    api: Api<K>,
    log: Arc<Mutex<MonitorLog>>,
    what: &'static str,
    mut apply: impl FnMut(&mut MonitorLog, K) + Send + 'static,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        match stream.try_next().await {
            Ok(Some(watcher::Event::Apply(object) | watcher::Event::InitApply(object))) => {
                apply(&mut lock(&log), object);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => lock(&log).errors.push(format!("{what} watch: {e}")),
        }
    }
}

/// Fails unless `log` never had more than `limit` hosts out of service at once.
pub fn check_budget(log: &MonitorLog, limit: usize) -> Result<()> {
    if let Some((at, set)) = log.first_over(limit) {
        bail!(
            "{} hosts out of service at once at {at:?}: {set:?} (budget {limit}); timeline: {:?}",
            set.len(),
            log.timeline
        );
    }
    Ok(())
}
