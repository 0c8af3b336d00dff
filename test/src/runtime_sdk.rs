//! A Cluster API stand-in for the Runtime Extension, behaving as the Runtime SDK's client does
//! (`capi-runtime-sdk.md`): it reads Discovery over TLS, verifying the serving certificate
//! against the CA bundle, validates it as Cluster API would, asks `GenerateUpgradePlan` when a
//! Cluster's version jumps, validates the plan, and walks it calling the lifecycle hooks in
//! Cluster API's order, honouring `retryAfterSeconds` (a held hook is not asked again before it
//! has passed). It records every call.
//!
//! The test's own CA and serving certificate come from `openssl`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

/// The hooks API version.
pub const API_VERSION: &str = "hooks.runtime.cluster.x-k8s.io/v1alpha1";

/// Writes a CA (`ca.crt`) and a serving certificate for `dns` and 127.0.0.1 signed by it
/// (`tls.crt`, `tls.key`) into `dir`. `Ok(false)` when `openssl` is not installed.
pub fn make_certificates(dir: &Path, dns: &str) -> Result<bool> {
    if Command::new("openssl").arg("version").output().is_err() {
        return Ok(false);
    }
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl")?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=e2e extension CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ])?;
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        &format!("/CN={dns}"),
    ])?;
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=DNS:{dns},IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.crt",
    ])?;
    Ok(true)
}

/// One call the stand-in made, and the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The hook.
    pub hook: String,
    /// The versions the request carried, as Cluster API names them.
    pub versions: String,
    /// `status`.
    pub status: String,
    /// `retryAfterSeconds` (0 for GenerateUpgradePlan).
    pub retry: i64,
    /// `message`.
    pub message: String,
}

/// The stand-in: the handlers it discovered and the calls it made.
pub struct ClusterApi {
    http: reqwest::Client,
    base: String,
    handlers: BTreeMap<String, String>,
    /// Every call, in order.
    pub calls: Vec<Call>,
}

impl std::fmt::Debug for ClusterApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterApi")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl ClusterApi {
    /// A client of the extension at `https://<dns>:<port>` (resolved to `address`), trusting only
    /// `ca_pem`, as an ExtensionConfig's `caBundle`.
    pub fn new(dns: &str, address: SocketAddr, ca_pem: &[u8]) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca_pem)?])
            .resolve(dns, address)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            base: format!("https://{dns}:{}", address.port()),
            handlers: BTreeMap::new(),
            calls: Vec::new(),
        })
    }

    async fn post(&self, path: &str, timeout: Duration, body: &Value) -> Result<Value> {
        // Cluster API sends no Content-Type and appends the timeout as a Go duration.
        let response = self
            .http
            .post(format!(
                "{}{path}?timeout={}s",
                self.base,
                timeout.as_secs()
            ))
            .timeout(timeout)
            .body(serde_json::to_vec(body)?)
            .send()
            .await?;
        ensure!(
            response.status() == 200,
            "{path} answered {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// Discovery, validated as Cluster API does (`defaultAndValidateDiscoveryResponse`).
    pub async fn discover(&mut self) -> Result<Value> {
        let answer = self
            .post(
                &format!("/{API_VERSION}/discovery"),
                Duration::from_secs(10),
                &json!({"apiVersion": API_VERSION, "kind": "DiscoveryRequest"}),
            )
            .await?;
        ensure!(answer["status"] == "Success", "discovery: {answer}");
        let handlers = answer["handlers"].as_array().context("no handlers")?;
        self.handlers.clear();
        for handler in handlers {
            let name = handler["name"]
                .as_str()
                .context("a handler without a name")?;
            ensure!(
                is_dns_label(name),
                "handler name {name:?} is not a DNS-1123 label"
            );
            ensure!(
                handler["requestHook"]["apiVersion"] == API_VERSION,
                "{handler}"
            );
            let hook = handler["requestHook"]["hook"].as_str().context("no hook")?;
            let timeout = handler["timeoutSeconds"].as_i64().unwrap_or(10);
            ensure!((0..=30).contains(&timeout), "timeoutSeconds {timeout}");
            ensure!(
                matches!(
                    handler["failurePolicy"].as_str(),
                    None | Some("Fail" | "Ignore")
                ),
                "{handler}"
            );
            let path = format!("/{API_VERSION}/{}/{name}", hook.to_ascii_lowercase());
            ensure!(
                self.handlers.insert(hook.to_owned(), path).is_none(),
                "two handlers for {hook}"
            );
        }
        Ok(answer)
    }

    /// One call of `hook` with `request` (its fields besides `apiVersion` and `kind`).
    pub async fn call(&mut self, hook: &str, versions: String, request: Value) -> Result<Value> {
        let path = self
            .handlers
            .get(hook)
            .ok_or_else(|| anyhow!("no handler discovered for {hook}"))?
            .clone();
        let mut body = json!({"apiVersion": API_VERSION, "kind": format!("{hook}Request")});
        if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), request) {
            body.extend(fields);
        }
        let answer = self.post(&path, Duration::from_secs(10), &body).await?;
        ensure!(answer["kind"] == format!("{hook}Response"), "{answer}");
        self.calls.push(Call {
            hook: hook.to_owned(),
            versions,
            status: answer["status"].as_str().unwrap_or_default().to_owned(),
            retry: answer["retryAfterSeconds"].as_i64().unwrap_or(0),
            message: answer["message"].as_str().unwrap_or_default().to_owned(),
        });
        Ok(answer)
    }

    /// `GenerateUpgradePlan`, validated as `DefaultAndValidateUpgradePlans` does: `Err` with the
    /// extension's message on `Failure`.
    pub async fn plan(
        &mut self,
        cluster: &Value,
        from: &str,
        to: &str,
    ) -> Result<std::result::Result<Vec<String>, String>> {
        let answer = self
            .call(
                "GenerateUpgradePlan",
                format!("{from}->{to}"),
                json!({"cluster": cluster, "fromControlPlaneKubernetesVersion": from,
                       "fromWorkersKubernetesVersion": from, "toKubernetesVersion": to}),
            )
            .await?;
        if answer["status"] != "Success" {
            return Ok(Err(answer["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()));
        }
        let steps: Vec<String> = answer["controlPlaneUpgrades"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["version"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let parse = |v: &str| semver::Version::parse(v.trim_start_matches('v'));
        let mut minor = parse(from)?.minor;
        for step in &steps {
            let next = parse(step)?.minor;
            ensure!(
                next == minor + 1 || (next == minor && step == to),
                "plan {steps:?} skips or repeats a minor"
            );
            minor = next;
        }
        ensure!(
            steps.last().map(String::as_str) == Some(to),
            "plan {steps:?} does not end at {to}"
        );
        Ok(Ok(steps))
    }

    /// Calls `hook` until it passes, honouring `retryAfterSeconds`; `Err` after `patience`.
    pub async fn until_passes(
        &mut self,
        hook: &str,
        versions: &str,
        request: Value,
        patience: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            let answer = self
                .call(hook, versions.to_owned(), request.clone())
                .await?;
            ensure!(answer["status"] == "Success", "{hook} failed: {answer}");
            let retry = answer["retryAfterSeconds"].as_u64().unwrap_or(0);
            if retry == 0 {
                return Ok(());
            }
            let wait = Duration::from_secs(retry);
            if Instant::now() + wait > deadline {
                bail!("{hook} still holds after {patience:?}: {answer}");
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Walks `plan` from `from` as Cluster API does (`capi-runtime-sdk.md` §8), the workers
    /// going to the target in one step: BeforeClusterUpgrade, then for each step
    /// BeforeControlPlaneUpgrade and, once the control plane rolled (`rolled`), AfterControl-
    /// PlaneUpgrade; then BeforeWorkersUpgrade and AfterWorkersUpgrade.
    pub async fn walk(
        &mut self,
        cluster: &Value,
        from: &str,
        plan: &[String],
        patience: Duration,
    ) -> Result<()> {
        let to = plan.last().context("an empty plan")?.clone();
        let steps =
            |rest: &[String]| -> Value { rest.iter().map(|v| json!({"version": v})).collect() };
        let workers = json!([{"version": to}]);
        self.until_passes(
            "BeforeClusterUpgrade",
            &format!("{from}->{to}"),
            json!({"cluster": cluster, "fromKubernetesVersion": from, "toKubernetesVersion": to,
                   "controlPlaneUpgrades": steps(plan), "workersUpgrades": workers}),
            patience,
        )
        .await?;
        let mut at = from.to_owned();
        for (i, step) in plan.iter().enumerate() {
            self.until_passes(
                "BeforeControlPlaneUpgrade",
                &format!("{at}->{step}"),
                json!({"cluster": cluster, "fromKubernetesVersion": at, "toKubernetesVersion": step,
                       "controlPlaneUpgrades": steps(&plan[i..]), "workersUpgrades": workers}),
                patience,
            )
            .await?;
            self.until_passes(
                "AfterControlPlaneUpgrade",
                step,
                json!({"cluster": cluster, "kubernetesVersion": step,
                       "controlPlaneUpgrades": steps(&plan[i + 1..]), "workersUpgrades": workers}),
                patience,
            )
            .await?;
            at.clone_from(step);
        }
        self.until_passes(
            "BeforeWorkersUpgrade",
            &format!("{from}->{to}"),
            json!({"cluster": cluster, "fromKubernetesVersion": from, "toKubernetesVersion": to,
                   "workersUpgrades": workers}),
            patience,
        )
        .await?;
        self.until_passes(
            "AfterWorkersUpgrade",
            &to,
            json!({"cluster": cluster, "kubernetesVersion": to}),
            patience,
        )
        .await
    }

    /// The calls as `Hook(versions)=retry`, for assertions.
    pub fn trace(&self) -> Vec<String> {
        self.calls
            .iter()
            .map(|c| {
                format!(
                    "{}({})={}",
                    c.hook,
                    c.versions,
                    if c.status == "Success" {
                        c.retry.to_string()
                    } else {
                        c.status.clone()
                    }
                )
            })
            .collect()
    }
}

/// The Cluster as Cluster API sends it in a request: `status` and `managedFields` dropped.
pub fn request_cluster(object: &kube::api::DynamicObject) -> Result<Value> {
    let mut cluster = serde_json::to_value(object)?;
    if let Some(map) = cluster.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = cluster.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    Ok(cluster)
}
