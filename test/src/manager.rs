//! The real manager binary (`kubernetes-upgrader run`), started and stopped by tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use kubernetes_upgrader_testkit::fake_api::FakeApiServer;

use crate::http;
use crate::manifests::workspace_root;
use crate::procs::{self, ChildGuard};

/// The default leader-election Lease name, kept from v0.6.
pub const LEASE_NAME: &str = "91e8760d.dimitrikoshkin.com";

static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The manager binary: `KUBERNETES_UPGRADER_BIN`, else `kubernetes-upgrader` next to the test
/// binary's profile directory (built, or rebuilt when older than the sources, with `cargo
/// build -p kubernetes-upgrader --bin kubernetes-upgrader`).
pub fn binary() -> Result<PathBuf> {
    BINARY
        .get_or_init(|| locate_binary().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn locate_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KUBERNETES_UPGRADER_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("KUBERNETES_UPGRADER_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the test binary")?;
    // target/<profile>/deps/<test>-<hash>, or target/<profile>/<bin> for the load binary.
    let mut profile_dir = exe
        .parent()
        .context("test binary has no parent directory")?
        .to_path_buf();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let candidate = profile_dir.join("kubernetes-upgrader");
    if candidate.is_file() && !stale(&candidate) {
        return Ok(candidate);
    }
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "kubernetes-upgrader",
        "--bin",
        "kubernetes-upgrader",
    ])
    .current_dir(workspace_root());
    if release {
        cmd.arg("--release");
    }
    // Build into the target directory the test binary lives in.
    if let Some(target_dir) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target_dir);
    }
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    if !candidate.is_file() {
        bail!("{} is missing after cargo build", candidate.display());
    }
    Ok(candidate)
}

/// Whether `binary` is older than any source file of the controllers or the API.
fn stale(binary: &Path) -> bool {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    let root = workspace_root();
    let sources = [
        root.join("controllers"),
        root.join("api"),
        root.join("Cargo.lock"),
    ];
    sources.iter().any(|p| newest(p).is_some_and(|t| t > built))
}

fn newest(path: &Path) -> Option<SystemTime> {
    let meta = path.metadata().ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest(&e.path()))
        .max()
}

/// Leader-election flags.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// `--leader-election-namespace`.
    pub namespace: String,
    /// `--leader-election-id`; the default Lease name when `None`.
    pub id: Option<String>,
    /// `--lease-duration`, such as `4s`.
    pub lease_duration: Option<String>,
}

/// How to run the manager.
#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// Kubeconfig, passed as `KUBECONFIG`.
    pub kubeconfig: PathBuf,
    /// `--namespace`: watch only this namespace (tests share an API server, so each test's
    /// manager keeps to its own namespace).
    pub namespace: Option<String>,
    /// `--leader-elect` and its flags.
    pub leader_election: Option<LeaderElection>,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// More arguments after `run`.
    pub extra_args: Vec<String>,
    /// More environment variables (`RUST_LOG` defaults to `info`).
    pub env: Vec<(String, String)>,
    /// Label for log files and messages.
    pub label: String,
}

impl ManagerOptions {
    /// Options for a manager confined to `namespace`.
    pub fn new(kubeconfig: &Path, namespace: &str) -> Self {
        Self {
            kubeconfig: kubeconfig.to_owned(),
            namespace: Some(namespace.to_owned()),
            leader_election: None,
            log_format: Some("text".to_owned()),
            extra_args: Vec::new(),
            env: Vec::new(),
            label: "manager".to_owned(),
        }
    }

    /// With leader election on a Lease in `namespace` with a 4 s lease.
    #[must_use]
    pub fn with_leader_election(mut self, namespace: &str) -> Self {
        self.leader_election = Some(LeaderElection {
            namespace: namespace.to_owned(),
            id: None,
            lease_duration: Some("4s".to_owned()),
        });
        self
    }

    /// Options for a manager against `fake`, watching every namespace; the kubeconfig is written
    /// to the harness's scratch directory.
    pub fn for_fake_api(fake: &FakeApiServer) -> Result<Self> {
        let dir = procs::scratch_subdir("fake-api-")?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, fake.kubeconfig())
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        let mut options = Self::new(&kubeconfig, "");
        options.namespace = None;
        Ok(options.labelled("manager-fake-api"))
    }

    /// With more arguments after `run`.
    #[must_use]
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// With another label.
    #[must_use]
    pub fn labelled(mut self, label: &str) -> Self {
        label.clone_into(&mut self.label);
        self
    }
}

/// A running manager process with its probe and metrics ports.
#[derive(Debug)]
pub struct Manager {
    options: ManagerOptions,
    process: ChildGuard,
    started: Instant,
    /// `--health-probe-bind-address`.
    pub health: SocketAddr,
    /// `--metrics-bind-address`.
    pub metrics: SocketAddr,
    restarts: u32,
}

impl Manager {
    /// Starts the binary (it is killed when the `Manager` is dropped).
    pub fn spawn(options: ManagerOptions) -> Result<Self> {
        let (process, health, metrics) = spawn_process(&options, 0)?;
        Ok(Self {
            options,
            process,
            started: Instant::now(),
            health,
            metrics,
            restarts: 0,
        })
    }

    /// The options it runs with.
    pub fn options(&self) -> &ManagerOptions {
        &self.options
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// When the current process was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The tail of the current process's log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail(16_000)
    }

    /// The current process's log file.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// `GET` a path on the health port.
    pub async fn get(&self, path: &str) -> Result<http::Response> {
        http::get(self.health, path).await
    }

    /// The `/readyz` status code, or `None` while nothing answers.
    pub async fn readyz(&self) -> Option<u16> {
        self.get("/readyz").await.ok().map(|r| r.status)
    }

    /// Waits until `/readyz` answers 200; returns the time since the process started.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.readyz().await == Some(200) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.process.try_exit()? {
                bail!(
                    "{} exited with {status} before it was ready; log tail:\n{}",
                    self.options.label,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {timeout:?}; log tail:\n{}",
                    self.options.label,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The metrics port's `/metrics` text.
    pub async fn metrics_text(&self) -> Result<String> {
        let response = http::get(self.metrics, "/metrics").await?;
        if response.status != 200 {
            bail!("GET /metrics on the metrics port: HTTP {}", response.status);
        }
        Ok(response.body)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; `None` if it did not exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.process.signal("TERM")?;
        self.process.wait_exit(timeout).await
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.process.kill()
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        self.process.try_exit()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.process.wait_exit(timeout).await
    }

    /// Kills the current process (SIGKILL) if it still runs, and starts a new one with the
    /// same options on fresh ports.
    pub fn restart(&mut self) -> Result<()> {
        self.process.kill()?;
        self.restarts += 1;
        let (process, health, metrics) = spawn_process(&self.options, self.restarts)?;
        self.process = process;
        self.health = health;
        self.metrics = metrics;
        self.started = Instant::now();
        Ok(())
    }

    /// How often [`Manager::restart`] was called.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }
}

fn spawn_process(
    options: &ManagerOptions,
    generation: u32,
) -> Result<(ChildGuard, SocketAddr, SocketAddr)> {
    let binary = binary()?;
    let health: SocketAddr = ([127, 0, 0, 1], procs::free_port()?).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], procs::free_port()?).into();
    let mut cmd = Command::new(&binary);
    cmd.arg("run")
        .arg("--health-probe-bind-address")
        .arg(health.to_string())
        .arg("--metrics-bind-address")
        .arg(metrics.to_string());
    if let Some(le) = &options.leader_election {
        cmd.arg("--leader-elect")
            .arg("--leader-election-namespace")
            .arg(&le.namespace);
        if let Some(id) = &le.id {
            cmd.arg("--leader-election-id").arg(id);
        }
        if let Some(d) = &le.lease_duration {
            cmd.arg("--lease-duration").arg(d);
        }
    }
    if let Some(ns) = &options.namespace {
        cmd.arg("--namespace").arg(ns);
    }
    if let Some(format) = &options.log_format {
        cmd.arg("--log-format").arg(format);
    }
    cmd.args(&options.extra_args);
    cmd.env("KUBECONFIG", &options.kubeconfig);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    for (k, v) in &options.env {
        cmd.env(k, v);
    }
    let dir = procs::scratch_dir()?;
    let log = dir.join(format!(
        "{}-{}-{generation}.log",
        crate::namespace::dns_fragment(&options.label, 40),
        crate::namespace::random_suffix(5)
    ));
    let process = ChildGuard::spawn(&options.label, cmd, &log)?;
    Ok((process, health, metrics))
}

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name (with `_total`, `_bucket`, … suffixes).
    pub name: String,
    /// Labels in order of appearance.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the samples of a Prometheus text exposition (comments and malformed lines skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(other) => value.push(other),
                                None => return None,
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &inner[end? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of every sample named `name` whose labels include all of `labels`.
pub fn metric_sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// Whether any sample is named `name`.
pub fn has_metric(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|s| s.name == name)
}

pub use kubernetes_upgrader_testkit::{peak_rss_kib, rss_kib};

#[cfg(test)]
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP x y\n# TYPE kubernetes_upgrader_reconcile_runs counter\n\
            kubernetes_upgrader_reconcile_runs_total{controller=\"debianrepositorysource\"} 3\n\
            kubernetes_upgrader_reconcile_failures_total{controller=\"a\",reason=\"HTTPStatus\"} 2\n\
            apiserver_request_total{code=\"200\",verb=\"LIST\",resource=\"a,b\"} 7 1700000000\n\
            up 1\n";
        let samples = parse_metrics(text);
        assert_eq!(samples.len(), 4);
        assert_eq!(
            metric_sum(&samples, "kubernetes_upgrader_reconcile_runs_total", &[]),
            3.0
        );
        assert_eq!(
            metric_sum(
                &samples,
                "kubernetes_upgrader_reconcile_failures_total",
                &[("reason", "HTTPStatus")]
            ),
            2.0
        );
        assert_eq!(samples[2].label("resource"), Some("a,b"));
        assert_eq!(samples[2].value, 7.0);
        assert_eq!(
            samples[3],
            Sample {
                name: "up".into(),
                labels: vec![],
                value: 1.0
            }
        );
    }
}
