//! The workload cluster: a second kube-apiserver with Nodes, Pods and PodDisruptionBudgets.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::control_plane::BareApiserver;
use crate::{TestEnv, cluster, namespace};

use super::{APP_LABEL, KUBERNETES_VERSION, MIRROR_ANNOTATION, WORKLOAD_NAMESPACE};

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
    /// until the [`WorkloadKubelets`](super::WorkloadKubelets) stand-in confirms.
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

pub(super) fn now_json() -> Value {
    serde_json::to_value(Time(Timestamp::now())).unwrap_or(Value::Null)
}
