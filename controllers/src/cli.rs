//! Command-line interface. Every flag has an environment fallback. Without a subcommand the
//! binary runs the manager, so v0.6 Deployments (`/manager --leader-elect …`) keep working.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::debian::cli::VersionsArgs;
use crate::envtest::cli::EnvtestArgs;
use crate::manager::DEFAULT_LEASE_NAME;
use crate::telemetry::LogFormat;

/// Builds machine images when Kubernetes releases appear and upgrades ClusterClass clusters to them.
#[derive(Debug, Parser)]
#[command(
    name = "kubernetes-upgrader",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Manager flags, for `kubernetes-upgrader [FLAGS]` without a subcommand.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every controller against the current kubeconfig or in-cluster config.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crds(CrdsArgs),
    /// List the Kubernetes versions a Debian repository holds, as a DebianRepositorySource would.
    Versions(VersionsArgs),
    /// Print the pipeline as a tree: sources, syncers, images, plans, upgraders and clusters.
    Status(StatusArgs),
    /// Fetch a local control plane for tests and the demo, as `setup-envtest` does.
    Envtest(EnvtestArgs),
}

/// Flags of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Namespace to show; the kubeconfig's namespace when omitted.
    #[arg(short, long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Show every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = StatusOutput::Text)]
    pub output: StatusOutput,
}

/// Output formats of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusOutput {
    /// A tree, in colour on a terminal (unless `NO_COLOR` is set).
    Text,
    /// The same tree as JSON.
    Json,
}

/// Flags of `crds`.
#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Also print the ValidatingAdmissionPolicies (and bindings) shipped with the CRDs.
    #[arg(long)]
    pub with_policies: bool,
}

/// Flags of `run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Address for /metrics (also served on the probe address); `0` serves it only there.
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = ":8080")]
    pub metrics_bind_address: String,
    /// Address for /livez, /healthz, /readyz and /metrics.
    #[arg(long, env = "HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081")]
    pub health_probe_bind_address: String,
    /// Take a Lease before running controllers, so that only one replica acts.
    #[arg(long, env = "LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease; defaults to the pod's namespace.
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, env = "LEADER_ELECTION_ID", default_value = DEFAULT_LEASE_NAME)]
    pub leader_election_id: String,
    /// How long the Lease lasts without renewal, such as 15s.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Log format; the level comes from RUST_LOG.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// This replica's name, for events and the Lease identity.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// How long to wait for the CRDs to be served before exiting.
    #[arg(long, env = "CRD_WAIT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub crd_wait_timeout: Duration,
    /// Address of the Cluster API Runtime Extension (HTTPS), such as `:9443`; `0` turns it off.
    #[arg(long, env = "EXTENSION_BIND_ADDRESS", default_value = "0")]
    pub extension_bind_address: String,
    /// Folder holding the extension's serving certificate and key (`tls.crt`, `tls.key`),
    /// read again when they change.
    #[arg(
        long,
        env = "EXTENSION_CERT_DIR",
        default_value = "/tmp/k8s-webhook-server/serving-certs"
    )]
    pub extension_cert_dir: std::path::PathBuf,
    /// The name of the ExtensionConfig that registers the extension with Cluster API: a
    /// ClusterClass whose `spec.upgrade.external.generateUpgradePlanExtension` is
    /// `generate-upgrade-plan.<this name>` lets the upgrader write a target several minors ahead
    /// in one step (imageMap mode).
    #[arg(
        long,
        env = "EXTENSION_CONFIG_NAME",
        default_value = crate::controllers::upgrader::chain::DEFAULT_EXTENSION_CONFIG,
        value_parser = parse_label
    )]
    pub extension_config_name: String,
    /// Accepted for v0.6 compatibility: debug, info, error or a number; used when RUST_LOG is unset.
    #[arg(long, hide = true)]
    pub zap_log_level: Option<String>,
    /// Accepted for v0.6 compatibility: `json` selects JSON logs.
    #[arg(long, hide = true)]
    pub zap_encoder: Option<String>,
    /// Accepted for v0.6 compatibility: development mode logs at debug level.
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub zap_devel: Option<bool>,
    /// Accepted for v0.6 compatibility and ignored.
    #[arg(long, hide = true)]
    pub zap_stacktrace_level: Option<String>,
    /// Accepted for v0.6 compatibility and ignored.
    #[arg(long, hide = true)]
    pub zap_time_encoding: Option<String>,
}

/// A DNS-1123 label, as Kubernetes object names such as an ExtensionConfig's.
fn parse_label(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)"
        ))
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    api::durations::parse_positive(text).map_err(|e| e.to_string())
}

impl RunArgs {
    /// The log format after mapping `--zap-encoder`.
    pub fn effective_log_format(&self) -> LogFormat {
        match self.zap_encoder.as_deref() {
            Some("json") => LogFormat::Json,
            Some("console") => LogFormat::Text,
            _ => self.log_format,
        }
    }

    /// The level used when RUST_LOG is unset, after mapping `--zap-log-level` and `--zap-devel`.
    pub fn default_log_level(&self) -> &'static str {
        match self.zap_log_level.as_deref() {
            Some("debug") => "debug",
            Some("error") => "error",
            Some(n) if n.parse::<u8>().is_ok_and(|n| n > 0) => "debug",
            _ if self.zap_devel == Some(true) => "debug",
            _ => "info",
        }
    }

    /// Where the Runtime Extension listens; `None` when it is off (`0`).
    pub fn extension_address(&self) -> Result<Option<SocketAddr>, String> {
        match self.extension_bind_address.as_str() {
            "0" | "" => Ok(None),
            text => parse_address(text).map(Some),
        }
    }

    /// The distinct addresses to serve probes and metrics on.
    pub fn listen_addresses(&self) -> Result<Vec<SocketAddr>, String> {
        let mut out = vec![parse_address(&self.health_probe_bind_address)?];
        if self.metrics_bind_address != "0" {
            out.push(parse_address(&self.metrics_bind_address)?);
        }
        out.dedup();
        Ok(out)
    }
}

/// Parses a Go-style listen address: `:8080`, `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_owned()
    };
    full.to_socket_addrs()
        .map_err(|e| format!("{text:?} is not a listen address: {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn v06_flags_run_the_manager_without_a_subcommand() {
        let cli = Cli::try_parse_from([
            "manager",
            "--leader-elect",
            "--health-probe-bind-address=:8081",
            "--metrics-bind-address=127.0.0.1:8080",
            "--zap-devel",
            "--zap-encoder=json",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert!(cli.run.leader_elect);
        assert_eq!(cli.run.effective_log_format(), LogFormat::Json);
        assert_eq!(cli.run.default_log_level(), "debug");
        let addresses = cli.run.listen_addresses().unwrap();
        assert_eq!(addresses.len(), 2);
        assert_eq!(addresses[0].port(), 8081);
        assert!(addresses[0].ip().is_unspecified());
    }

    #[test]
    fn subcommands_parse() {
        let cli =
            Cli::try_parse_from(["k", "run", "--namespace", "team", "--lease-duration", "4s"])
                .unwrap();
        match cli.command {
            Some(Command::Run(run)) => {
                assert_eq!(run.namespace.as_deref(), Some("team"));
                assert_eq!(run.lease_duration, Duration::from_secs(4));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            Cli::try_parse_from(["k", "crds"]).unwrap().command,
            Some(Command::Crds(_))
        ));
        assert!(Cli::try_parse_from(["k", "run", "--lease-duration", "soon"]).is_err());
    }

    #[test]
    fn metrics_address_zero_means_probe_port_only() {
        let cli = Cli::try_parse_from(["k", "run", "--metrics-bind-address", "0"]).unwrap();
        let Some(Command::Run(run)) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.listen_addresses().unwrap().len(), 1);
        assert!(parse_address("not an address").is_err());
    }

    #[test]
    fn the_extension_is_off_unless_an_address_is_given() {
        let cli = Cli::try_parse_from(["k", "run"]).unwrap();
        let Some(Command::Run(run)) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.extension_address().unwrap(), None);
        assert_eq!(
            run.extension_cert_dir,
            std::path::PathBuf::from("/tmp/k8s-webhook-server/serving-certs")
        );
        let cli = Cli::try_parse_from([
            "k",
            "--extension-bind-address=:9443",
            "--extension-cert-dir=/certs",
        ])
        .unwrap();
        let address = cli.run.extension_address().unwrap().unwrap();
        assert_eq!(address.port(), 9443);
        assert!(address.ip().is_unspecified());
        assert_eq!(
            cli.run.extension_cert_dir,
            std::path::PathBuf::from("/certs")
        );
        assert_eq!(cli.run.extension_config_name, "kubernetes-upgrader");
        let cli = Cli::try_parse_from(["k", "--extension-config-name=capi-ext"]).unwrap();
        assert_eq!(cli.run.extension_config_name, "capi-ext");
        assert!(Cli::try_parse_from(["k", "--extension-config-name=Bad.Name"]).is_err());
        let cli = Cli::try_parse_from(["k", "--extension-bind-address=nowhere"]).unwrap();
        assert!(cli.run.extension_address().is_err());
    }
}
