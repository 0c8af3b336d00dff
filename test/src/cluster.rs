//! Which API server the suites use, set up once per test binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::control_plane::{Assets, ControlPlane};
use crate::install;

/// The one line printed by every skipped end-to-end test.
pub const SKIP_HINT: &str = "set KUBEBUILDER_ASSETS to a folder with etcd and kube-apiserver (`kubernetes-upgrader envtest use` or `setup-envtest use 1.32` puts one in setup-envtest's folder, which is found without it), or E2E_KUBECONFIG to a kubeconfig";

/// Set (to anything but empty) when every end-to-end test must run: a test that would skip
/// fails instead. `.ci/run` sets it once it has found the assets.
pub const REQUIRE_ENV: &str = "E2E_REQUIRE";

/// Whether skipping is a failure in this run.
pub fn skipping_forbidden() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty())
}

/// The API server of this test binary, with our CRDs and admission policy installed.
#[derive(Debug)]
pub struct Cluster {
    /// Admin kubeconfig, for clients.
    pub kubeconfig: PathBuf,
    /// The manager's kubeconfig: a token of its own ServiceAccount, bound to the roles of
    /// `config/rbac`, so the suites run it with exactly the RBAC it ships with. The admin
    /// kubeconfig for [`existing`] clusters.
    pub manager_kubeconfig: PathBuf,
    /// The control plane the harness started, or `None` for an `E2E_KUBECONFIG` cluster.
    pub local: Option<ControlPlane>,
}

static CLUSTER: tokio::sync::OnceCell<Result<Option<Arc<Cluster>>, String>> =
    tokio::sync::OnceCell::const_new();

/// Where the suites should run, from the environment.
enum Target {
    Local(Assets),
    External(PathBuf),
    None,
}

/// Looks where the ecosystem keeps a control plane: `KUBEBUILDER_ASSETS`, then setup-envtest's
/// default folder, then `E2E_KUBECONFIG`.
fn target() -> Result<Target> {
    if let Some(assets) = Assets::from_env()? {
        return Ok(Target::Local(assets));
    }
    if let Some(assets) = Assets::from_setup_envtest() {
        return Ok(Target::Local(assets));
    }
    match std::env::var_os("E2E_KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(path) => Ok(Target::External(PathBuf::from(path))),
        None => Ok(Target::None),
    }
}

/// Whether an API server is configured at all (without starting anything).
pub fn configured() -> bool {
    !matches!(target(), Ok(Target::None))
}

/// Prints the skip line for `test` straight to stderr, past libtest's output capture; fails the
/// test instead when skipping is forbidden ([`REQUIRE_ENV`]).
pub fn print_skip(test: &str) {
    skip(test, SKIP_HINT);
}

/// Skips `test` for `why` with one line, or fails it when skipping is forbidden.
pub fn skip(test: &str, why: &str) {
    assert!(
        !skipping_forbidden(),
        "{test} would be skipped ({why}), but {REQUIRE_ENV} is set: every end-to-end test must run"
    );
    print_line(&format!("skipping {test}: {why}"));
}

/// Writes one whole line straight to stderr (one write, past libtest's output capture).
pub fn print_line(line: &str) {
    let mut text = line.to_owned();
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The cluster of this test binary, started and prepared on first use. `Ok(None)` when none
/// is configured. A failed setup is remembered, so every later test fails fast with the
/// same message.
pub async fn shared() -> Result<Option<Arc<Cluster>>> {
    let cell = CLUSTER
        .get_or_init(|| async {
            match setup().await {
                Ok(cluster) => Ok(cluster.map(Arc::new)),
                Err(e) => Err(format!("{e:#}")),
            }
        })
        .await;
    cell.clone()
        .map_err(|e| anyhow::anyhow!("end-to-end cluster setup failed earlier: {e}"))
}

async fn setup() -> Result<Option<Cluster>> {
    install_crypto_provider();
    let cluster = match target()? {
        Target::None => return Ok(None),
        Target::Local(assets) => {
            let plane = ControlPlane::start(assets)
                .await
                .context("starting etcd and kube-apiserver")?;
            Cluster {
                manager_kubeconfig: plane.kubeconfig.clone(),
                kubeconfig: plane.kubeconfig.clone(),
                local: Some(plane),
            }
        }
        Target::External(path) => {
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("E2E_KUBECONFIG={} is not readable", path.display()))?;
            Cluster {
                manager_kubeconfig: path.clone(),
                kubeconfig: path,
                local: None,
            }
        }
    };
    let mut cluster = prepare(cluster).await?;
    cluster.manager_kubeconfig = manager_identity(&cluster)
        .await
        .context("setting up the manager's ServiceAccount from config/rbac")?;
    Ok(Some(cluster))
}

/// How long the manager's token lives: longer than any test binary runs.
const MANAGER_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Installs `config/rbac` and writes a kubeconfig holding a token of the manager's
/// ServiceAccount (TokenRequest API); returns its path once RBAC lets the token list images.
async fn manager_identity(cluster: &Cluster) -> Result<PathBuf> {
    let admin = client_from_kubeconfig(&cluster.kubeconfig).await?;
    install::install_manager_rbac(&admin).await?;
    let token = install::manager_token(&admin, MANAGER_TOKEN_LIFETIME).await?;
    let user = format!(
        "system:serviceaccount:{}:{}",
        install::MANAGER_NAMESPACE,
        install::MANAGER_SERVICE_ACCOUNT
    );
    let dir = crate::procs::scratch_subdir("manager-identity-")?;
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        crate::control_plane::kubeconfig_yaml(&cluster.server()?, &token, &user),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    let manager = client_from_kubeconfig(&path).await?;
    install::wait_authorized(&manager, std::time::Duration::from_secs(30)).await?;
    Ok(path)
}

/// The cluster of `kubeconfig`, with our CRDs and admission policies installed: for tools such
/// as the demo that were asked to use an existing cluster.
pub async fn existing(kubeconfig: &Path) -> Result<Cluster> {
    install_crypto_provider();
    let path = std::fs::canonicalize(kubeconfig)
        .with_context(|| format!("{} is not readable", kubeconfig.display()))?;
    prepare(Cluster {
        manager_kubeconfig: path.clone(),
        kubeconfig: path,
        local: None,
    })
    .await
}

async fn prepare(cluster: Cluster) -> Result<Cluster> {
    let client = client_from_kubeconfig(&cluster.kubeconfig).await?;
    install::install_all(&client)
        .await
        .context("installing CRDs and admission policies")?;
    Ok(cluster)
}

/// Installs ring as the process-wide rustls provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A fresh client for `kubeconfig`. Build one per test: a client belongs to the tokio runtime
/// it was first used on.
pub async fn client_from_kubeconfig(kubeconfig: &Path) -> Result<Client> {
    install_crypto_provider();
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", kubeconfig.display()))?;
    Client::try_from(config).context("building a kube client")
}

impl Cluster {
    /// A fresh client with the manager's identity.
    pub async fn manager_client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.manager_kubeconfig).await
    }

    /// A fresh admin client.
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// The API server URL from the kubeconfig.
    pub fn server(&self) -> Result<String> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let current = kc.current_context.clone().unwrap_or_default();
        let cluster_name = kc
            .contexts
            .iter()
            .find(|c| c.name == current)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone())
            .unwrap_or_default();
        kc.clusters
            .iter()
            .find(|c| c.name == cluster_name)
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .context("no server in the kubeconfig's current context")
    }
}
