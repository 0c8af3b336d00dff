//! A loopback etcd + kube-apiserver pair from `KUBEBUILDER_ASSETS`, envtest style.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::Rng;

use crate::http;
use crate::procs::{self, ChildGuard};
use kubernetes_upgrader::envtest;

/// How long etcd and kube-apiserver get to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The binaries of a `KUBEBUILDER_ASSETS` folder.
#[derive(Clone, Debug)]
pub struct Assets {
    /// `etcd` (from the folder, or from `PATH` as a fallback, e.g. Debian's `etcd-server`).
    pub etcd: PathBuf,
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kube-controller-manager`, when the folder has one.
    pub kube_controller_manager: Option<PathBuf>,
}

impl Assets {
    /// Reads `KUBEBUILDER_ASSETS`; `Ok(None)` when it is unset or empty.
    pub fn from_env() -> Result<Option<Self>> {
        let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|d| !d.is_empty()) else {
            return Ok(None);
        };
        Self::in_folder(&PathBuf::from(dir)).map(Some)
    }

    /// The newest control plane for this machine in setup-envtest's default folder, where
    /// `setup-envtest use` and `kubernetes-upgrader envtest use` put them
    /// (`$HOME/.local/share/kubebuilder-envtest/k8s/<version>-<os>-<arch>` on Linux); `None`
    /// when there is none.
    pub fn from_setup_envtest() -> Option<Self> {
        let platform = envtest::Platform::current().ok()?;
        let (_, dir) = envtest::Store::default_location()
            .ok()?
            .installed(None, platform)?;
        Self::in_folder(&dir).ok()
    }

    fn in_folder(dir: &Path) -> Result<Self> {
        let kube_apiserver = dir.join("kube-apiserver");
        if !kube_apiserver.is_file() {
            bail!("KUBEBUILDER_ASSETS={} has no kube-apiserver", dir.display());
        }
        let etcd = dir.join("etcd");
        let etcd = if etcd.is_file() {
            etcd
        } else {
            which("etcd").with_context(|| {
                format!(
                    "KUBEBUILDER_ASSETS={} has no etcd, and none is on PATH",
                    dir.display()
                )
            })?
        };
        let kcm = dir.join("kube-controller-manager");
        Ok(Self {
            etcd,
            kube_apiserver,
            kube_controller_manager: kcm.is_file().then_some(kcm),
        })
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A running etcd and kube-apiserver. Lives for the whole test binary; the processes are
/// killed by the watchdog (see [`crate::procs`]) when the binary exits.
#[derive(Debug)]
pub struct ControlPlane {
    /// The binaries.
    pub assets: Assets,
    /// Scratch directory of this control plane (data, certificates, logs).
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// The apiserver's secure port.
    pub port: u16,
    /// etcd's client URL.
    pub etcd_url: String,
    /// The admin bearer token (user `e2e-admin`, group `system:masters`).
    pub admin_token: String,
    /// Kubeconfig for the admin (insecure-skip-tls-verify + token).
    pub kubeconfig: PathBuf,
    /// The service-account signing key (PKCS#8 PEM), for kube-controller-manager.
    pub service_account_key: PathBuf,
    /// The apiserver's serving certificate bundle in `--cert-dir`.
    pub cert_dir: PathBuf,
    etcd: Mutex<ChildGuard>,
    apiserver: Mutex<ChildGuard>,
    controller_manager: tokio::sync::OnceCell<Result<ControllerManager, String>>,
}

/// A running kube-controller-manager.
#[derive(Debug)]
pub struct ControllerManager {
    /// Its process.
    pub process: Mutex<ChildGuard>,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until both are ready. A
    /// port taken between choosing it and binding it (another test's process got it first) is
    /// tried again on new ports, twice at most.
    pub async fn start(assets: Assets) -> Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(assets.clone()).await {
                Err(err)
                    if attempt < 3 && format!("{err:#}").contains("address already in use") =>
                {
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    async fn start_once(assets: Assets) -> Result<Self> {
        let dir = procs::scratch_subdir("control-plane-")?;
        let etcd_port = procs::free_port()?;
        let peer_port = procs::free_port()?;
        let port = procs::free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");

        let etcd_data = dir.join("etcd-data");
        fs::create_dir_all(&etcd_data)?;
        let mut etcd_cmd = Command::new(&assets.etcd);
        etcd_cmd
            .arg(format!("--data-dir={}", etcd_data.display()))
            .arg("--name=e2e")
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=e2e=http://127.0.0.1:{peer_port}"
            ))
            .arg("--listen-metrics-urls=")
            .current_dir(&dir);
        let mut etcd = ChildGuard::spawn("etcd", etcd_cmd, &dir.join("etcd.log"))?;
        wait_etcd(&mut etcd, etcd_port).await?;

        let cert_dir = dir.join("certs");
        fs::create_dir_all(&cert_dir)?;
        let (private_pem, public_pem) = service_account_key_pair(&dir)?;
        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        fs::write(&sa_key, private_pem)?;
        fs::write(&sa_pub, public_pem)?;
        let admin_token = random_token();
        let tokens = dir.join("tokens.csv");
        fs::write(
            &tokens,
            format!("{admin_token},e2e-admin,e2e-admin-uid,\"system:masters\"\n"),
        )?;

        let server = format!("https://127.0.0.1:{port}");
        let files = ApiserverFiles {
            etcd_url: &etcd_url,
            port,
            cert_dir: &cert_dir,
            tokens: &tokens,
            sa_pub: &sa_pub,
            sa_key: &sa_key,
            workdir: &dir,
        };
        let api_cmd = apiserver_command(&assets.kube_apiserver, &files);
        let mut apiserver =
            ChildGuard::spawn("kube-apiserver", api_cmd, &dir.join("kube-apiserver.log"))?;

        let kubeconfig = dir.join("kubeconfig");
        fs::write(
            &kubeconfig,
            kubeconfig_yaml(&server, &admin_token, "e2e-admin"),
        )?;
        wait_apiserver_ready(&mut apiserver, &kubeconfig).await?;

        Ok(Self {
            assets,
            dir,
            server,
            port,
            etcd_url,
            admin_token,
            kubeconfig,
            service_account_key: sa_key,
            cert_dir,
            etcd: Mutex::new(etcd),
            apiserver: Mutex::new(apiserver),
            controller_manager: tokio::sync::OnceCell::new(),
        })
    }

    /// Starts a second kube-apiserver on the same etcd under a fresh `--etcd-prefix`: an empty
    /// cluster without our CRDs, for tests of what happens when they are missing.
    pub async fn start_bare_apiserver(&self) -> Result<BareApiserver> {
        let dir = procs::scratch_subdir("bare-apiserver-")?;
        let cert_dir = dir.join("certs");
        fs::create_dir_all(&cert_dir)?;
        let port = procs::free_port()?;
        let files = ApiserverFiles {
            etcd_url: &self.etcd_url,
            port,
            cert_dir: &cert_dir,
            tokens: &self.dir.join("tokens.csv"),
            sa_pub: &self.dir.join("sa.pub"),
            sa_key: &self.service_account_key,
            workdir: &dir,
        };
        let mut cmd = apiserver_command(&self.assets.kube_apiserver, &files);
        cmd.arg(format!("--etcd-prefix=/bare-{}", random_token()));
        let log = dir.join("kube-apiserver.log");
        let mut process = ChildGuard::spawn("kube-apiserver (bare)", cmd, &log)?;
        let kubeconfig = dir.join("kubeconfig");
        let server = format!("https://127.0.0.1:{port}");
        fs::write(
            &kubeconfig,
            kubeconfig_yaml(&server, &self.admin_token, "e2e-admin"),
        )?;
        wait_apiserver_ready(&mut process, &kubeconfig).await?;
        Ok(BareApiserver {
            kubeconfig,
            server,
            token: self.admin_token.clone(),
            ca_bundle: cert_dir.join("apiserver.crt"),
            process,
        })
    }

    /// The last bytes of the apiserver's log.
    pub fn apiserver_log_tail(&self) -> String {
        self.apiserver
            .lock()
            .map(|a| a.log_tail(8000))
            .unwrap_or_default()
    }

    /// The last bytes of etcd's log.
    pub fn etcd_log_tail(&self) -> String {
        self.etcd
            .lock()
            .map(|a| a.log_tail(8000))
            .unwrap_or_default()
    }

    /// Starts kube-controller-manager once (garbage collection, namespace deletion, default
    /// ServiceAccounts). `Ok(false)` when the assets folder has none.
    ///
    /// It also runs the job controller, which owns Job status: tests that simulate builds by
    /// writing Job status must not run in a binary that started it.
    pub async fn ensure_controller_manager(&self) -> Result<bool> {
        let Some(binary) = self.assets.kube_controller_manager.clone() else {
            return Ok(false);
        };
        let started = self
            .controller_manager
            .get_or_init(|| async {
                let mut cmd = Command::new(&binary);
                cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
                    .arg(format!(
                        "--service-account-private-key-file={}",
                        self.service_account_key.display()
                    ))
                    .arg(format!(
                        "--root-ca-file={}",
                        self.cert_dir.join("apiserver.crt").display()
                    ))
                    .arg("--controllers=*")
                    .arg("--leader-elect=false")
                    .arg("--secure-port=0")
                    .current_dir(&self.dir);
                let process =
                    ChildGuard::spawn("kube-controller-manager", cmd, &self.dir.join("kcm.log"))
                        .map_err(|e| format!("{e:#}"))?;
                Ok(ControllerManager {
                    process: Mutex::new(process),
                })
            })
            .await;
        match started {
            Ok(_) => Ok(true),
            Err(e) => bail!("{e}"),
        }
    }
}

/// A kube-apiserver without our CRDs; stopped when dropped.
#[derive(Debug)]
pub struct BareApiserver {
    /// Admin kubeconfig for it.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// The admin bearer token.
    pub token: String,
    /// Its self-signed serving certificate and the CA that signed it (`--cert-dir`).
    pub ca_bundle: PathBuf,
    /// Its process.
    pub process: ChildGuard,
}

impl BareApiserver {
    /// An admin kubeconfig that verifies the server against its CA (inline, as Cluster API
    /// writes them), for a workload cluster's `<cluster>-kubeconfig` Secret.
    pub fn verified_kubeconfig(&self) -> Result<String> {
        use base64::Engine as _;
        let ca = fs::read(&self.ca_bundle)
            .with_context(|| format!("reading {}", self.ca_bundle.display()))?;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        let server = serde_json::to_string(&self.server)?;
        let token = serde_json::to_string(&self.token)?;
        Ok(format!(
            "apiVersion: v1
kind: Config
clusters:
- name: workload
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: workload-admin
  user:
    token: {token}
contexts:
- name: workload-admin@workload
  context:
    cluster: workload
    user: workload-admin
current-context: workload-admin@workload
"
        ))
    }
}

struct ApiserverFiles<'a> {
    etcd_url: &'a str,
    port: u16,
    cert_dir: &'a Path,
    tokens: &'a Path,
    sa_pub: &'a Path,
    sa_key: &'a Path,
    workdir: &'a Path,
}

/// kube-apiserver with exactly the flags of `real-apiserver.md`.
fn apiserver_command(binary: &Path, files: &ApiserverFiles<'_>) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--etcd-servers={}", files.etcd_url))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={}", files.port))
        .arg(format!("--cert-dir={}", files.cert_dir.display()))
        .arg(format!("--token-auth-file={}", files.tokens.display()))
        .arg("--authorization-mode=RBAC")
        .arg(format!(
            "--service-account-issuer=https://127.0.0.1:{}",
            files.port
        ))
        .arg(format!(
            "--service-account-key-file={}",
            files.sa_pub.display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            files.sa_key.display()
        ))
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg("--allow-privileged=true")
        .arg("--disable-admission-plugins=ServiceAccount")
        .arg("--endpoint-reconciler-type=none")
        .current_dir(files.workdir);
    cmd
}

async fn wait_apiserver_ready(apiserver: &mut ChildGuard, kubeconfig: &Path) -> Result<()> {
    let client = crate::cluster::client_from_kubeconfig(kubeconfig).await?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = apiserver.try_exit()? {
            bail!(
                "kube-apiserver exited with {status} before it was ready; log tail:\n{}",
                apiserver.log_tail(6000)
            );
        }
        let request = ::http::Request::get("/readyz").body(Vec::new())?;
        let last = match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => body,
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!(
                "kube-apiserver not ready after {START_TIMEOUT:?}: {last}; log tail:\n{}",
                apiserver.log_tail(6000)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_etcd(etcd: &mut ChildGuard, port: u16) -> Result<()> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = etcd.try_exit()? {
            bail!(
                "etcd exited with {status} before it was healthy; log tail:\n{}",
                etcd.log_tail(6000)
            );
        }
        let last = match http::get(addr, "/health").await {
            Ok(r) if r.status == 200 && r.body.replace(' ', "").contains("\"health\":\"true\"") => {
                return Ok(());
            }
            Ok(r) => format!("HTTP {}: {}", r.status, r.body),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "etcd not healthy after {START_TIMEOUT:?}: {last}; log tail:\n{}",
                etcd.log_tail(6000)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A random 32-character hex token.
pub fn random_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// A kubeconfig for `server` with a bearer token, skipping TLS verification (the apiserver's
/// certificate is self-signed at start).
pub fn kubeconfig_yaml(server: &str, token: &str, user: &str) -> String {
    let server = serde_json::to_string(server).unwrap_or_default();
    let token = serde_json::to_string(token).unwrap_or_default();
    let user = serde_json::to_string(user).unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: {user}
current-context: e2e
"
    )
}

/// An RSA key pair for service-account tokens as (PKCS#8 private PEM, SPKI public PEM):
/// from `openssl` when it is installed, otherwise from the `rsa` crate.
pub fn service_account_key_pair(dir: &Path) -> Result<(String, String)> {
    match openssl_key_pair(dir) {
        Ok(pair) => Ok(pair),
        Err(openssl_error) => rust_key_pair().with_context(|| {
            format!("openssl failed ({openssl_error:#}), and so did the rsa crate")
        }),
    }
}

fn openssl_key_pair(dir: &Path) -> Result<(String, String)> {
    let key = dir.join("sa-openssl.key");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running openssl genpkey")?;
    if !status.success() {
        bail!("openssl genpkey: {status}");
    }
    let output = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running openssl pkey")?;
    if !output.status.success() {
        bail!("openssl pkey -pubout: {}", output.status);
    }
    let private = fs::read_to_string(&key)?;
    let public = String::from_utf8(output.stdout)?;
    Ok((private, public))
}

fn rust_key_pair() -> Result<(String, String)> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)?;
    let public = private.to_public_key();
    let private_pem = private.to_pkcs8_pem(LineEnding::LF)?.to_string();
    let public_pem = public.to_public_key_pem(LineEnding::LF)?;
    Ok((private_pem, public_pem))
}
