//! Elemental in-place OS updates on two real API servers.
//!
//! - The **management** cluster is the harness's API server: our CRDs, the minimal Cluster CRD,
//!   and the minimal Cluster API `Machine` and Elemental `ElementalMachine` / `ElementalHost`
//!   CRDs installed here ([`install_crds`]), schemaless where the real ones are (so a
//!   server-side apply of `osVersionManagement.osVersion.imageUri` is tracked field by field).
//! - The **workload** cluster is a second kube-apiserver on the same etcd ([`Workload`]), with
//!   Nodes, Pods bound to them and PodDisruptionBudgets.
//!
//! Nothing runs on the workload cluster and no Elemental agent runs anywhere, so stand-ins do
//! their part: [`WorkloadKubelets`] (finishes graceful pod deletions, refreshes Node heartbeats,
//! and computes PodDisruptionBudget status as kube-controller-manager's disruption controller
//! would),
//! [`Agent`] (the Elemental agent and host controller: updates a host labelled `pending` whose
//! ElementalMachine names a new image, reboots it (a new `bootID`), then labels it `done`), and [`Monitor`] (watches both
//! clusters and records which hosts are out of service at every change).

pub use kubernetes_upgrader::controllers::upgrader::in_place::OS_VERSION_RECONCILIATION_FAILED;
pub use kubernetes_upgrader::controllers::upgrader::in_place::observe::{
    CLUSTER_NAME_LABEL, CONTROL_PLANE_LABEL, DEPLOYMENT_NAME_LABEL, ELEMENTAL_HOST,
    ELEMENTAL_MACHINE, IN_PLACE_UPDATE_LABEL as IN_PLACE_UPDATE, MIRROR_ANNOTATION,
    OS_VERSION_READY, evictable,
};
pub use kubernetes_upgrader::controllers::upgrader::in_place::remediation::SKIP_REMEDIATION_ANNOTATION as SKIP_REMEDIATION;
pub use kubernetes_upgrader::controllers::upgrader::in_place::spare::{INSTALLED, MACHINE_NAME};

mod agent;
mod crds;
mod fleet;
mod image;
mod kubelets;
mod monitor;
mod tasks;
mod workload;

pub use agent::{Agent, AgentConfig, AgentLog, Behaviour, PendingSeen, Update};
pub use crds::{
    elemental_host_crd, elemental_hosts, elemental_machine_crd, elemental_machines, image_uri,
    install_crds, machine_crd, machines, managed_fields_of, skip_remediation, update_label,
};
pub use fleet::{
    Fleet, Host, create_elemental_host, initial_os_version_management, kubeconfig_secret,
};
pub use image::{OsImage, os_release};
pub use kubelets::{WorkloadKubelets, WorkloadKubeletsLog};
pub use monitor::{Monitor, MonitorLog, check_budget};
pub use tasks::Tasks;
pub use workload::{
    PodKind, Workload, client_without_retries, cordoned, labels, node_os_image, pods_on,
};

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
