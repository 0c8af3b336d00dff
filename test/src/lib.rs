//! End-to-end harness for kubernetes-upgrader: a real kube-apiserver, our CRDs and admission
//! policies, the real manager binary, and stand-ins for what a kubelet would do.
//!
//! The API server is found in this order:
//! 1. `KUBEBUILDER_ASSETS` names a folder with `etcd` and `kube-apiserver`, or setup-envtest's
//!    folder holds one for this machine (`kubernetes-upgrader envtest use` puts it there; `make`
//!    does on first use): the harness starts them once per test binary on free loopback ports
//!    (see [`control_plane`]);
//! 2. `E2E_KUBECONFIG` names a kubeconfig: that cluster is used;
//! 3. otherwise each test prints one line saying what to set, and passes.
//!
//! A test starts with [`TestEnv::start`] (or the [`e2e_env!`] macro), which hands it a fresh
//! client and a fresh namespace.

pub mod bench;
pub mod builds;
pub mod capi;
pub mod chaos;
pub mod cluster;
pub mod control_plane;
pub mod elemental;
pub mod install;
pub mod manager;
pub mod manifests;
pub mod namespace;
pub mod procs;
pub mod repo;
pub mod runtime_sdk;
pub mod stand_in;
pub mod stats;
pub mod status;
pub mod syncer;
pub mod wait;

pub use kubernetes_upgrader_testkit::http;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use kube::{Api, Client, Resource};

pub use cluster::{Cluster, SKIP_HINT};
pub use manager::{Manager, ManagerOptions};
pub use status::{condition_reason, condition_status, to_json};
pub use wait::{assert_no_writes, eventually, wait_for};

/// One test's view of the cluster: a fresh client and its own namespace.
#[derive(Clone)]
pub struct TestEnv {
    /// The shared cluster of this test binary.
    pub cluster: Arc<Cluster>,
    /// An admin client built for this test's runtime.
    pub client: Client,
    /// This test's own namespace (never deleted).
    pub namespace: String,
    /// The test's name, for messages.
    pub test: String,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("namespace", &self.namespace)
            .field("test", &self.test)
            .finish_non_exhaustive()
    }
}

/// Starts the test `$name`, or returns from the calling test after printing the skip line.
#[macro_export]
macro_rules! e2e_env {
    ($name:expr) => {
        match $crate::TestEnv::start($name).await {
            Ok(Some(env)) => env,
            Ok(None) => return,
            Err(e) => ::std::panic!("{}: end-to-end setup failed: {e:#}", $name),
        }
    };
}

impl TestEnv {
    /// Prepares the shared cluster (first call only) and a fresh namespace for `test`.
    /// `Ok(None)` when no API server is configured; the skip line has then been printed.
    pub async fn start(test: &str) -> Result<Option<Self>> {
        let Some(cluster) = cluster::shared().await? else {
            cluster::print_skip(test);
            return Ok(None);
        };
        let client = cluster.client().await?;
        let namespace = namespace::create(
            &client,
            &format!("e2e-{}", namespace::dns_fragment(test, 40)),
        )
        .await?;
        // A test may run the manager with leader election in its namespace.
        install::install_leader_election_role(&client, &namespace).await?;
        Ok(Some(Self {
            cluster,
            client,
            namespace,
            test: test.to_owned(),
        }))
    }

    /// An API for a namespaced kind in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Warning events about the object `name` in this test's namespace.
    pub async fn warnings(&self, name: &str) -> Result<Vec<k8s_openapi::api::events::v1::Event>> {
        let events: Api<k8s_openapi::api::events::v1::Event> = self.api();
        Ok(events
            .list(&kube::api::ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .collect())
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.cluster.kubeconfig
    }

    /// The manager's kubeconfig: its own ServiceAccount with the RBAC of `config/rbac`.
    pub fn manager_kubeconfig(&self) -> &Path {
        &self.cluster.manager_kubeconfig
    }

    /// Manager options confined to this test's namespace, as the manager's ServiceAccount.
    pub fn manager_options(&self) -> ManagerOptions {
        ManagerOptions::new(self.manager_kubeconfig(), &self.namespace)
            .labelled(&format!("manager-{}", self.test))
    }

    /// Starts the manager binary for this test's namespace and waits until `/readyz` is 200.
    pub async fn start_manager(&self) -> Result<Manager> {
        let mut manager = Manager::spawn(self.manager_options())?;
        manager.wait_ready(Duration::from_secs(60)).await?;
        Ok(manager)
    }

    /// Another fresh namespace.
    pub async fn new_namespace(&self, prefix: &str) -> Result<String> {
        namespace::create(&self.client, prefix).await
    }

    /// Starts kube-controller-manager (garbage collection) once for this binary. Returns
    /// `false` after printing a skip line when it is unavailable: not in
    /// `KUBEBUILDER_ASSETS`, or on an `E2E_KUBECONFIG` cluster, which is assumed to run its own.
    pub async fn require_controller_manager(&self) -> Result<bool> {
        match &self.cluster.local {
            None => Ok(true),
            Some(plane) => {
                if plane.ensure_controller_manager().await? {
                    Ok(true)
                } else {
                    crate::cluster::skip(
                        &self.test,
                        "needs kube-controller-manager in KUBEBUILDER_ASSETS (garbage collection)",
                    );
                    Ok(false)
                }
            }
        }
    }
}
