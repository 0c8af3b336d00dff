//! What one cached object costs in the manager's heap, per kind, as the API server sends it and
//! as the shared caches keep it ([`Projected`]); and the Plan's reconcile decision over a store
//! of 10,000 MachineImages.
//!
//! Each kind is parsed `BENCH_OBJECTS` times (default 10,000) from the JSON the API server
//! returns for it (with its `managedFields`), into the `Arc<DeserializeGuard<K>>` a store holds,
//! whole and projected, each in its own child process that reads its resident set before and after.
//!
//! Run: `cargo bench -p kubernetes-upgrader --bench cache_footprint`
//! Environment: `BENCH_OBJECTS`, `BENCH_IMAGES` (default 10,000), `BENCH_RUNS` (default 200).

#![allow(clippy::cast_precision_loss)] // sizes and times are only displayed

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::constraint::VersionRange;
use api::v1alpha1::{
    ClusterClassClusterUpgrader, DebianRepositorySource, MachineImage, MachineImageSyncer,
    MachineImageTemplate, Plan, PlanStatus,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use kube::core::DeserializeGuard;
use kubernetes_upgrader::controllers::{images, plan};
use kubernetes_upgrader::runtime::projection::Projected;
use kubernetes_upgrader::runtime::projection::cluster::CachedCluster;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const GROUP: &str = "kubernetesupgraded.dimitrikoshkin.com/v1alpha1";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `fieldsV1` tree for `value`.
fn fields(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (format!("f:{k}"), fields(v)))
                .collect(),
        ),
        _ => json!({}),
    }
}

/// Managed fields as the API server records them: the creator's apply or update, and the
/// controller's status apply.
fn managed_fields(spec: &Value, status: &Value) -> Value {
    json!([
        {"manager": "kubectl", "operation": "Apply", "apiVersion": GROUP, "time": "2026-01-01T00:00:00Z",
         "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:os": {}}}, "f:spec": fields(spec)}},
        {"manager": "kubernetes-upgrader", "operation": "Apply", "apiVersion": GROUP, "time": "2026-01-01T00:00:01Z",
         "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {"f:status": fields(status)}},
    ])
}

/// An object as the API server returns it: `kind`, namespaced `name`, `spec` and `status`.
fn object(api_version: &str, kind: &str, name: &str, spec: &Value, status: &Value) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {
            "name": name, "namespace": "fleet-0", "uid": format!("8c0f7d3e-5a7b-4c1e-9f00-{:012}", name.len()),
            "resourceVersion": "123456", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"os": "scale"},
            "managedFields": managed_fields(spec, status),
        },
        "spec": spec,
        "status": status,
    })
}

fn ready_condition(reason: &str, message: &str) -> Value {
    json!([{"type": "Ready", "status": "True", "reason": reason, "message": message,
            "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:01Z"}])
}

fn image(i: usize) -> Value {
    let version = format!("v1.{}.{}", 28 + i / 250, i % 250);
    object(
        GROUP,
        "MachineImage",
        &format!("img-{}", version.replace('.', "-")),
        &json!({"version": version, "id": format!("ami-0123456789abcdef{i}"), "jobTemplate": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "build", "image": "registry.example/builder:v1",
                "args": ["--kubernetes", version]}]}}}),
        &json!({"ready": true, "phase": "Created", "observedGeneration": 1,
            "conditions": ready_condition("Built", &format!("the image ID is ami-0123456789abcdef{i}"))}),
    )
}

fn plan(i: usize) -> Value {
    object(
        GROUP,
        "Plan",
        &format!("plan-{i}"),
        &json!({"versionRange": ">=1.28.0", "machineImageSelector": {"matchLabels": {"os": "scale"}}}),
        &json!({"phase": "FoundMachineImage", "observedGeneration": 1,
            "machineImageDetails": {"id": "ami-0123456789abcdef", "version": "v1.31.249"},
            "machineImageRef": {"apiVersion": GROUP, "kind": "MachineImage", "name": "img-v1-31-249", "namespace": "fleet-0"},
            "conditions": ready_condition("FoundMachineImage", "MachineImage img-v1-31-249 (1.31.249) is the newest ready image in >=1.28.0")}),
    )
}

fn upgrader(i: usize) -> Value {
    object(
        GROUP,
        "ClusterClassClusterUpgrader",
        &format!("c-{i:04}"),
        &json!({"clusterName": format!("c-{i:04}"), "planRef": {"name": "fleet"}}),
        &json!({"observedGeneration": 1,
            "conditions": ready_condition("ClusterUsingLatestVersion", "Cluster c-0001 runs v1.31.249, the Plan's version")}),
    )
}

fn source(i: usize) -> Value {
    object(
        GROUP,
        "DebianRepositorySource",
        &format!("src-{i:04}"),
        &json!({"url": "http://127.0.0.1:8080/repo", "interval": "1h", "timeout": "5s"}),
        &json!({"observedGeneration": 1, "lastSyncTime": "2026-01-01T00:00:01Z",
            "versions": ["v1.31.0", "v1.31.1"],
            "conditions": ready_condition("Synced", "2 versions")}),
    )
}

fn syncer(i: usize) -> Value {
    object(
        GROUP,
        "MachineImageSyncer",
        &format!("syncer-{i:04}"),
        &json!({"versionRange": ">=1.28.0", "sourceRef": {"name": "src-0000"},
            "machineImageTemplateRef": {"name": "template"}}),
        &json!({"observedGeneration": 1, "conditions": ready_condition("Synced", "2 images")}),
    )
}

fn template(i: usize) -> Value {
    object(
        GROUP,
        "MachineImageTemplate",
        &format!("template-{i:04}"),
        &json!({"template": {"spec": {"jobTemplate": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "build", "image": "registry.example/builder:v1"}]}}}}}),
        &json!({"observedGeneration": 1, "conditions": ready_condition("Valid", "the rendered Job is valid")}),
    )
}

fn job(i: usize) -> Value {
    let mut job = object(
        "batch/v1",
        "Job",
        &format!("img-v1-31-{i}-build-1"),
        &json!({"backoffLimit": 6, "completions": 1, "parallelism": 1,
            "template": {"metadata": {"labels": {"app": "build"}}, "spec": {"restartPolicy": "Never",
                "containers": [{"name": "build", "image": "registry.example/builder:v1",
                    "env": [{"name": "KUBERNETES_VERSION", "value": "v1.31.1"}],
                    "resources": {}, "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
                "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
                "securityContext": {}, "terminationGracePeriodSeconds": 30}}}),
        &json!({"succeeded": 1, "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:10:00Z",
            "conditions": [{"type": "Complete", "status": "True", "lastProbeTime": "2026-01-01T00:10:00Z",
                "lastTransitionTime": "2026-01-01T00:10:00Z"}]}),
    );
    job["metadata"]["labels"]["kubernetesupgraded.dimitrikoshkin.com/machine-image-name"] =
        json!("img");
    job
}

/// A Cluster API Cluster as a v1beta1 server sends it: topology, references, network, the
/// v1beta1 conditions and the v1beta2 view of its status, managed by the topology controller.
fn cluster(i: usize) -> Value {
    let condition = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": "",
            "observedGeneration": 2, "lastTransitionTime": "2026-01-01T00:00:01Z"})
    };
    let v1beta2 = json!({
        "conditions": [
            condition("Available", "True", "Available"), condition("InfrastructureReady", "True", "Ready"),
            condition("ControlPlaneInitialized", "True", "Initialized"), condition("ControlPlaneAvailable", "True", "Available"),
            condition("WorkersAvailable", "True", "Available"), condition("MachinesReady", "True", "Ready"),
            condition("MachinesUpToDate", "True", "UpToDate"), condition("RemoteConnectionProbe", "True", "Healthy"),
            condition("ScalingUp", "False", "NotScalingUp"), condition("ScalingDown", "False", "NotScalingDown"),
            condition("Remediating", "False", "NotRemediating"), condition("Deleting", "False", "NotDeleting"),
            condition("TopologyReconciled", "True", "ReconcileSucceeded"), condition("RollingOut", "False", "NotRollingOut"),
            condition("ControlPlaneMachinesUpToDate", "True", "UpToDate"), condition("WorkerMachinesUpToDate", "True", "UpToDate"),
            condition("Paused", "False", "NotPaused")],
        "controlPlane": {"desiredReplicas": 3, "replicas": 3, "readyReplicas": 3, "availableReplicas": 3, "upToDateReplicas": 3,
            "versions": [{"version": "v1.31.2", "replicas": 3}]},
        "workers": {"desiredReplicas": 2, "replicas": 2, "readyReplicas": 2, "availableReplicas": 2, "upToDateReplicas": 2,
            "versions": [{"version": "v1.31.2", "replicas": 2}]},
    });
    let spec = json!({
        "clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}, "services": {"cidrBlocks": ["10.128.0.0/12"]}, "serviceDomain": "cluster.local"},
        "controlPlaneEndpoint": {"host": format!("10.0.{}.{}", i / 250, i % 250), "port": 6443},
        "controlPlaneRef": {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
            "name": format!("c-{i:04}-cp"), "namespace": "fleet-0"},
        "infrastructureRef": {"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "DockerCluster",
            "name": format!("c-{i:04}-infra"), "namespace": "fleet-0"},
        "topology": {"class": "quick-start", "version": "v1.31.2",
            "controlPlane": {"replicas": 3, "metadata": {}},
            "workers": {"machineDeployments": [{"class": "default-worker", "name": "md-0", "replicas": 2}]},
            "variables": [{"name": "imageID", "value": format!("ami-0123456789abcdef{i}")},
                {"name": "imageRepository", "value": "registry.example"}]},
    });
    let status = json!({
        "observedGeneration": 2, "phase": "Provisioned", "controlPlaneReady": true, "infrastructureReady": true,
        "conditions": [condition("Ready", "True", ""), condition("ControlPlaneInitialized", "True", ""),
            condition("ControlPlaneReady", "True", ""), condition("InfrastructureReady", "True", ""),
            condition("TopologyReconciled", "True", "")],
        "v1beta2": v1beta2,
    });
    let mut cluster = object(
        "cluster.x-k8s.io/v1beta1",
        "Cluster",
        &format!("c-{i:04}"),
        &spec,
        &status,
    );
    cluster["metadata"]["generation"] = json!(2);
    cluster["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"] = json!(format!("c-{i:04}"));
    cluster["metadata"]["labels"]["topology.cluster.x-k8s.io/owned"] = json!("");
    cluster["metadata"]["finalizers"] = json!(["cluster.cluster.x-k8s.io"]);
    cluster
}

fn namespace(i: usize) -> Value {
    let mut ns = object(
        "v1",
        "Namespace",
        &format!("fleet-{i}"),
        &json!({"finalizers": ["kubernetes"]}),
        &json!({"phase": "Active"}),
    );
    if let Some(meta) = ns["metadata"].as_object_mut() {
        meta.remove("namespace");
    }
    ns
}

/// This process's resident set, in bytes.
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<usize>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// In a child process: the resident bytes `count` objects of `make` take in a store's `Arc`s,
/// parsed from the JSON the API server sends, whole or projected as the caches keep them.
fn measure<K>(make: fn(usize) -> Value, count: usize, project: bool) -> usize
where
    K: DeserializeOwned + kube::Resource + Clone,
    DeserializeGuard<K>: Projected,
{
    if project {
        measure_as::<K>(make, count, Projected::project)
    } else {
        measure_as::<K>(make, count, |_| {})
    }
}

/// [`measure`], each object parsed as `K`, then cut by `cut`.
fn measure_as<K>(make: fn(usize) -> Value, count: usize, cut: fn(&mut DeserializeGuard<K>)) -> usize
where
    K: DeserializeOwned + kube::Resource + Clone,
{
    let texts: Vec<Vec<u8>> = (0..count)
        .map(|i| serde_json::to_vec(&make(i)).unwrap_or_default())
        .collect();
    let before = rss();
    let stored: Vec<Arc<DeserializeGuard<K>>> = texts
        .iter()
        .filter_map(|t| serde_json::from_slice::<DeserializeGuard<K>>(t).ok())
        .map(|mut o| {
            cut(&mut o);
            Arc::new(o)
        })
        .collect();
    let after = rss();
    std::hint::black_box(&stored);
    if stored.len() != count {
        return 0;
    }
    after.saturating_sub(before) / count
}

/// The child-process measure of one kind: (count, projected) to bytes per object.
type Measure = fn(usize, bool) -> usize;
/// One kind: its name, its `i`th object as JSON, and its measure.
type Kind = (&'static str, fn(usize) -> Value, Measure);

fn kinds() -> Vec<Kind> {
    vec![
        ("MachineImage", image, |n, p| {
            measure::<MachineImage>(image, n, p)
        }),
        ("Plan", plan, |n, p| measure::<Plan>(plan, n, p)),
        ("ClusterClassClusterUpgrader", upgrader, |n, p| {
            measure::<ClusterClassClusterUpgrader>(upgrader, n, p)
        }),
        ("DebianRepositorySource", source, |n, p| {
            measure::<DebianRepositorySource>(source, n, p)
        }),
        ("MachineImageSyncer", syncer, |n, p| {
            measure::<MachineImageSyncer>(syncer, n, p)
        }),
        ("MachineImageTemplate", template, |n, p| {
            measure::<MachineImageTemplate>(template, n, p)
        }),
        ("Job (build)", job, |n, p| measure::<Job>(job, n, p)),
        ("Namespace", namespace, |n, p| {
            measure::<Namespace>(namespace, n, p)
        }),
        // Whole: a dynamic object's JSON tree; cached: the upgraders' typed view.
        ("Cluster (v1beta1)", cluster, |n, p| {
            if p {
                measure::<CachedCluster>(cluster, n, true)
            } else {
                measure_as::<DynamicObject>(cluster, n, |_| {})
            }
        }),
    ]
}

/// Runs this binary again as `child KIND PROJECT COUNT` and reads the bytes it prints.
fn in_child(kind: &str, project: bool, count: usize) -> Option<usize> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .args(["child", kind, if project { "projected" } else { "whole" }])
        .arg(count.to_string())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, child, kind, mode, count] = args.as_slice()
        && child == "child"
    {
        let count: usize = count.parse().unwrap_or(1).max(1);
        let Some((_, _, measure)) = kinds().into_iter().find(|(k, _, _)| k == kind) else {
            return ExitCode::FAILURE;
        };
        println!("{}", measure(count, mode == "projected"));
        return ExitCode::SUCCESS;
    }
    let count = env_or("BENCH_OBJECTS", 10_000);
    println!(
        "resident bytes per cached object ({count} of each, each kind in its own process; JSON as the API server sends it, managedFields included)"
    );
    println!(
        "{:<30} {:>10} {:>12} {:>12}",
        "kind", "JSON", "parsed", "cached"
    );
    for (kind, make, _) in kinds() {
        let json_bytes = serde_json::to_vec(&make(1)).map_or(0, |v| v.len());
        let whole = in_child(kind, false, count);
        let projected = in_child(kind, true, count);
        let show = |b: Option<usize>| b.map_or_else(|| "failed".to_owned(), |b| b.to_string());
        println!(
            "{kind:<30} {json_bytes:>10} {:>12} {:>12}",
            show(whole),
            show(projected)
        );
    }

    // The Plan's decision over a store of N images in 10 namespaces.
    let images = env_or("BENCH_IMAGES", 10_000);
    let runs = env_or("BENCH_RUNS", 200).max(1);
    let store: Vec<Arc<DeserializeGuard<MachineImage>>> = (0..images)
        .filter_map(|i| {
            let mut value = image(i / 10);
            value["metadata"]["namespace"] = json!(format!("fleet-{}", i % 10));
            let mut parsed: DeserializeGuard<MachineImage> = serde_json::from_value(value).ok()?;
            parsed.project();
            Some(Arc::new(parsed))
        })
        .collect();
    let plan: Plan = match serde_json::from_value(plan(0)) {
        Ok(plan) => plan,
        Err(err) => {
            eprintln!("the Plan does not parse: {err}");
            return ExitCode::FAILURE;
        }
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let state = store.clone();
            let range = VersionRange::parse(&plan.spec.version_range).ok();
            let choices = range.map(|r| {
                images::choices(
                    state.iter().filter_map(|i| i.0.as_ref().ok()),
                    "fleet-0",
                    plan.spec.machine_image_selector.as_ref(),
                    &r,
                )
            });
            let decision = plan::decide(
                &plan.spec,
                Some(1),
                "fleet-0",
                &choices.unwrap_or_default(),
                &PlanStatus::default(),
                &now,
            );
            std::hint::black_box(decision);
            started.elapsed()
        })
        .collect();
    times.sort();
    let at = |p: usize| {
        times
            .get((times.len() - 1) * p / 100)
            .map_or(0.0, |t| t.as_secs_f64() * 1000.0)
    };
    println!(
        "\nPlan decision over {images} cached images (10 namespaces, {} in its own): p50 {:.2} ms, p99 {:.2} ms ({runs} runs)",
        images / 10,
        at(50),
        at(99)
    );
    ExitCode::SUCCESS
}
