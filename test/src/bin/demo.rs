//! `make demo`: the whole pipeline on one machine, with no cluster.
//!
//! It starts etcd and kube-apiserver from the test assets (`KUBEBUILDER_ASSETS`, or
//! setup-envtest's folder, which `make demo` fills on first use with `kubernetes-upgrader envtest
//! use`), or uses the current kubeconfig with `--use-current-context`;
//! installs the CRDs and policies; serves a signed Debian repository on loopback; starts the
//! manager; applies the CAPD sample and a demo Cluster; and stands in for the kubelet (build
//! Jobs finish through the termination message) and for Cluster API (each rollout reports
//! finished). It prints the `status` tree as the pipeline converges, then publishes a new patch
//! release and follows it to the Cluster. Ctrl-C stops everything it started.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::v1alpha1::DebianRepositorySource;
use e2e::manager::{Manager, ManagerOptions};
use e2e::repo::ServedRepo;
use e2e::stand_in::{BuildJobFinisher, ClusterApi, HandOff, Rollout};
use e2e::{SKIP_HINT, capi, cluster, manifests, namespace};
use kube::api::PostParams;
use kube::{Api, Client};
use kubernetes_upgrader::describe;
use kubernetes_upgrader::describe::render::Style;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

/// The first releases in the demo repository; the demo publishes `LATER` once these are done.
const FIRST: [&str; 3] = ["1.30.4-1.1", "1.31.0-1.1", "1.31.1-1.1"];
const LATER: &str = "1.31.2-1.1";
/// Where the demo Cluster starts, and where each phase must take it.
const CLUSTER_START: &str = "v1.30.4";
const FIRST_TARGET: &str = "v1.31.1";
const LATER_TARGET: &str = "v1.31.2";
const CLUSTER: &str = "capi-quickstart";
const CLUSTER_API_VERSION: &str = "v1beta1";
/// How long the Cluster API stand-in takes to "roll out" a new version.
const ROLLOUT: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // Ctrl-C from here on stops the demo cleanly (the handler is in place before anything starts).
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
    let use_current = std::env::args().any(|a| a == "--use-current-context");
    if !use_current && !cluster::configured() {
        bail!("no control plane to start: {SKIP_HINT} (or pass --use-current-context)");
    }
    let exit_when_done = std::env::var_os("DEMO_EXIT_WHEN_DONE").is_some();
    let style = if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        Style::Colour
    } else {
        Style::Plain
    };

    let cluster = if use_current {
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config")))
            .context("--use-current-context: set KUBECONFIG")?;
        say(&format!(
            "using the cluster of {}: installing the CRDs and admission policies there",
            kubeconfig.display()
        ));
        std::sync::Arc::new(cluster::existing(&kubeconfig).await?)
    } else {
        say("starting etcd and kube-apiserver, installing the CRDs and admission policies");
        cluster::shared().await?.context("no control plane")?
    };
    let client = cluster.client().await?;
    let ns = namespace::create(&client, "demo").await?;
    say(&format!(
        "namespace {ns}; kubeconfig {}",
        cluster.kubeconfig.display()
    ));

    let mut repo = ServedRepo::flat(&FIRST).await?;
    say(&format!(
        "serving a signed Debian repository on {} with kubeadm {}",
        repo.server.url(),
        FIRST.join(", ")
    ));

    let mut manager = Manager::spawn(ManagerOptions::new(&cluster.manager_kubeconfig, &ns))?;
    manager.wait_ready(Duration::from_secs(60)).await?;
    say("manager ready");

    apply_sample(&client, &ns, &repo).await?;
    say(&format!(
        "applied the CAPD sample and Cluster {CLUSTER} at {CLUSTER_START}"
    ));

    let mut finisher = BuildJobFinisher::default();
    let mut cluster_api = ClusterApi::new(CLUSTER_API_VERSION, CLUSTER, CLUSTER_START, ROLLOUT);
    let mut last_tree = String::new();
    let mut published_later = false;
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = interrupt.recv() => {
                say("Ctrl-C: stopping the manager, the repository and the control plane");
                let _ = manager.terminate(Duration::from_secs(5)).await;
                return Ok(());
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if let Some(status) = manager.try_exit()? {
            bail!("the manager exited with {status}:\n{}", manager.log_tail());
        }
        let builds = finisher.finish_new_jobs(
            &client,
            &ns,
            |_| HandOff::TerminationMessage,
            |_, version| format!("docker.io/kindest/node:{version}"),
        );
        for build in Box::pin(builds).await? {
            say(&format!(
                "build Job finisher: build Job {} finished; termination message {}",
                build.job, build.id
            ));
        }
        match cluster_api.poll(&client, &ns).await? {
            Rollout::Started(version) => {
                say(&format!(
                    "Cluster API stand-in: {CLUSTER} set to {version}; rolling out"
                ));
            }
            Rollout::Finished(version) => {
                say(&format!(
                    "Cluster API stand-in: rollout of {CLUSTER} to {version} finished"
                ));
            }
            Rollout::Idle(_) => {}
        }
        let finished = cluster_api.reported().map(str::to_owned);
        let tree = describe::text(&client, Some(&ns), style).await?;
        if tree != last_tree {
            println!(
                "\n── {:>5.1}s ─────────────────────────────",
                started.elapsed().as_secs_f64()
            );
            print!("{tree}");
            let _ = std::io::stdout().flush();
            last_tree = tree;
        }
        match finished.as_deref() {
            Some(FIRST_TARGET) if !published_later => {
                repo.publish_added(LATER)?;
                published_later = true;
                say(&format!("publishing kubeadm {LATER} in the repository"));
            }
            Some(LATER_TARGET) => {
                say(&format!(
                    "converged in {:.1}s: a new repository version reached the Cluster",
                    started.elapsed().as_secs_f64()
                ));
                if exit_when_done {
                    let _ = manager.terminate(Duration::from_secs(5)).await;
                    return Ok(());
                }
                say("Ctrl-C to stop");
                interrupt.recv().await;
                let _ = manager.terminate(Duration::from_secs(5)).await;
                return Ok(());
            }
            _ => {}
        }
    }
}

fn say(line: &str) {
    println!("[demo] {line}");
}

/// The CAPD sample (jobs/capd.yaml as the template), its source on the served repository, a
/// Plan, an upgrader and the demo Cluster.
async fn apply_sample(client: &Client, ns: &str, repo: &ServedRepo) -> Result<()> {
    let sources: Api<DebianRepositorySource> = Api::namespaced(client.clone(), ns);
    sources
        .create(
            &PostParams::default(),
            &repo.source("kubernetes", "10s", Some(repo.inline_key()?)),
        )
        .await
        .context("creating the DebianRepositorySource")?;
    let template_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../jobs/capd.yaml");
    let template: Value = serde_yaml::from_str(
        &std::fs::read_to_string(&template_path)
            .with_context(|| format!("reading {}", template_path.display()))?,
    )?;
    let template_name = template["metadata"]["name"]
        .as_str()
        .context("jobs/capd.yaml has no name")?
        .to_owned();
    let objects = [
        template,
        json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "MachineImageSyncer",
            "metadata": {"name": "kubernetes-1-31"},
            "spec": {
                "versionRange": "v1.31.x",
                "sourceRef": {"apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
                              "kind": "DebianRepositorySource", "name": "kubernetes"},
                "machineImageTemplateRef": {"name": template_name},
            }
        }),
        json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "Plan",
            "metadata": {"name": "capd-1-31"},
            "spec": {"versionRange": "v1.31.x",
                     "machineImageSelector": {"matchLabels": {"imageBuilderVersion": "v1"}}}
        }),
        json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "ClusterClassClusterUpgrader",
            "metadata": {"name": CLUSTER},
            "spec": {"clusterName": CLUSTER, "planRef": {"name": "capd-1-31"}}
        }),
        json!({
            "apiVersion": format!("{}/{CLUSTER_API_VERSION}", capi::GROUP),
            "kind": "Cluster",
            "metadata": {"name": CLUSTER},
            "spec": {"topology": {"class": "quick-start", "version": CLUSTER_START,
                                  "variables": [{"name": "imageRepository", "value": "kindest"}]}}
        }),
    ];
    for object in &objects {
        manifests::apply(client, object, ns).await?;
    }
    capi::rollout_finished(client, ns, CLUSTER_API_VERSION, CLUSTER, CLUSTER_START).await?;
    Ok(())
}
