//! Build hand-off bench (not a test): how long from a build Job turning `Complete` to its
//! MachineImage being `ready` with `spec.id` set, on the real API server with the real manager.
//! Each build hands off its ID through the termination message, so the manager also lists the
//! Job's pods. Builds run one after another; reports p50, p99 and the maximum.
//!
//! `cargo run -p e2e --bin image_ready`, with `KUBEBUILDER_ASSETS` or `E2E_KUBECONFIG` and the
//! manager binary built. `BENCH_BUILDS` (default 20) sets the number of builds.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::v1alpha1::MachineImage;
use e2e::manager::{Manager, ManagerOptions};
use e2e::stats::percentile;
use e2e::{SKIP_HINT, builds, cluster, namespace};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use kubernetes_upgrader::controllers::machine_image::job_name;
use serde_json::json;

/// How often the bench looks at the image while it waits.
const POLL: Duration = Duration::from_millis(5);
const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<()> {
    if !cluster::configured() {
        let _ = writeln!(std::io::stderr(), "skipping image_ready: {SKIP_HINT}");
        return Ok(());
    }
    let count: usize = std::env::var("BENCH_BUILDS")
        .ok()
        .map(|v| v.trim().parse())
        .transpose()
        .context("BENCH_BUILDS must be a number")?
        .unwrap_or(20);
    let cluster = cluster::shared().await?.context("no cluster")?;
    let client = cluster.client().await?;
    let ns = namespace::create(&client, "e2e-image-bench").await?;
    let mut manager = Manager::spawn(
        ManagerOptions::new(&cluster.manager_kubeconfig, &ns).labelled("image-bench-manager"),
    )?;
    manager.wait_ready(Duration::from_secs(120)).await?;
    let images: Api<MachineImage> = Api::namespaced(client.clone(), &ns);

    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("bench-{i}");
        let image: MachineImage = serde_json::from_value(json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "MachineImage",
            "metadata": {"name": name},
            "spec": {"version": "v1.31.2", "jobTemplate": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "build", "image": "registry.example/builder:v1"}]
            }}}
        }))?;
        let image = images.create(&PostParams::default(), &image).await?;
        let job = job_name(&name, &image.uid().context("no uid")?, 1);
        builds::wait_for_job(
            &client,
            &ns,
            &format!("kubernetesupgraded.dimitrikoshkin.com/machine-image-name={name}"),
            TIMEOUT,
        )
        .await?;
        let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns);
        let created = jobs.get(&job).await?;
        let pod = builds::create_build_pod(&client, &created, "bench").await?;
        builds::pod_succeeded(&client, &pod, &format!("ami-{i}")).await?;

        let started = Instant::now();
        builds::job_succeeded(&client, &ns, &job).await?;
        loop {
            let current = images.get(&name).await?;
            let ready = current.status.as_ref().is_some_and(|s| s.ready)
                && current.spec.id.as_deref() == Some(format!("ami-{i}").as_str());
            if ready {
                samples.push(started.elapsed());
                break;
            }
            if started.elapsed() > TIMEOUT {
                bail!("{name} was not ready {TIMEOUT:?} after its Job completed");
            }
            tokio::time::sleep(POLL).await;
        }
    }
    manager.terminate(Duration::from_secs(10)).await?;

    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "Job Complete -> MachineImage ready with spec.id, {count} builds (termination-message hand-off):"
    )?;
    writeln!(
        out,
        "  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   min {:.1} ms",
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples[samples.len() - 1]),
        ms(samples[0]),
    )?;
    Ok(())
}
