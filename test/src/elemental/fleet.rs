//! The management cluster's Elemental fleet: Machines, ElementalMachines and ElementalHosts.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::crds::{elemental_hosts, elemental_machines, install_crds, machines};
use super::image::OsImage;
use super::workload::{Workload, labels, now_json};
use super::{
    CLUSTER_NAME_LABEL, CONTROL_PLANE_LABEL, CONTROL_PLANE_POOL, DEPLOYMENT_NAME_LABEL,
    ELEMENTAL_HOST, ELEMENTAL_MACHINE, INFRA_GROUP, INSTALLED, KUBERNETES_VERSION, MACHINE_NAME,
    OS_VERSION_READY, POOL_LABEL, V1BETA1,
};

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
