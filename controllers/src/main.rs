//! `kubernetes-upgrader`: wiring only.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use kubernetes_upgrader::cli::{Cli, Command, RunArgs};
use kubernetes_upgrader::manager::{self, LeaderElection, ManagerConfig};
use kubernetes_upgrader::shutdown::Shutdown;
use kubernetes_upgrader::{controllers, crdgen, debian, describe, envtest, extension, telemetry};

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
const DEFAULT_NAMESPACE: &str = "kubernetes-upgrader-system";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest and kube share one rustls provider; with none installed rustls would panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Some(Command::Crds(args)) => crdgen::render(args.with_policies)
            .map(|yaml| {
                print!("{yaml}");
                ExitCode::SUCCESS
            })
            .context("rendering the CRDs"),
        Some(Command::Versions(args)) => {
            telemetry::init(telemetry::LogFormat::Text, "warn");
            debian::cli::run_versions(args).await
        }
        Some(Command::Status(args)) => describe::run(args).await,
        Some(Command::Envtest(args)) => envtest::cli::run(args).await,
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    telemetry::init(args.effective_log_format(), args.default_log_level());
    let listen = args.listen_addresses().map_err(anyhow::Error::msg)?;
    let extension_address = args
        .extension_address()
        .map_err(|e| anyhow::anyhow!("--extension-bind-address: {e}"))?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration found (set KUBECONFIG or run in a cluster)")?;
    let identity = args.pod_name.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "kubernetes-upgrader".to_owned());
        format!("{host}-{:08x}", rand::random::<u32>())
    });
    let leader_election = args.leader_elect.then(|| LeaderElection {
        namespace: args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| {
                std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                    .ok()
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        lease_name: args.leader_election_id.clone(),
        identity,
        lease_duration: args.lease_duration,
    });
    let config = ManagerConfig {
        namespace: args.namespace.clone(),
        listen,
        leader_election,
        crd_wait: args.crd_wait_timeout,
        instance: args.pod_name.clone(),
        extension_config: args.extension_config_name.clone(),
    };
    let shutdown = Shutdown::on_signals().context("installing the signal handlers")?;
    // The extension answers Discovery from the start; its hooks once this replica leads.
    let mut companions = Vec::new();
    if let Some(address) = extension_address {
        let settings = extension::Settings {
            address,
            cert_dir: args.extension_cert_dir.clone(),
        };
        let server = extension::start(&settings, shutdown.clone())
            .await
            .context("starting the Cluster API Runtime Extension")?;
        companions.push(server.companion());
    }
    manager::run_with(client, config, controllers::ALL, &companions, shutdown).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
