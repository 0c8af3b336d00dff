//! The manager binary with many DebianRepositorySources against one signed repository, with a
//! fake API server on loopback standing in for kube-apiserver (the `e2e` crate's `load` binary
//! does the same against a real one). It reports the manager's peak RSS next to an idle manager's,
//! the API requests per minute at steady state by kind (writes should be zero), and the
//! repository requests per interval (conditional GETs answered 304).
//!
//! `cargo bench -p kubernetes-upgrader --features testing --bench manager_load`;
//! `LOAD_SOURCES` (500), `LOAD_INTERVAL` (30s) and `LOAD_WINDOW_INTERVALS` (2) tune it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss
)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubernetes_upgrader::debian::testing::{RepoBuilder, RepoServer, TestKey};
use kubernetes_upgrader::testing::{
    FakeApiServer, FakeOptions, free_port, http_get, source_object,
};
use serde_json::{Value, json};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

struct Manager {
    child: Child,
    health: u16,
    _dir: tempfile::TempDir,
}

impl Manager {
    async fn start(fake: &FakeApiServer) -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, fake.kubeconfig()).unwrap();
        let health = free_port().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kubernetes-upgrader"))
            .args([
                "run",
                &format!("--health-probe-bind-address=127.0.0.1:{health}"),
            ])
            .arg("--metrics-bind-address=0")
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let manager = Manager {
            child,
            health,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(manager.health, "/readyz").await.map(|(c, _)| c) != Some(200) {
            assert!(Instant::now() < deadline, "the manager never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        manager
    }

    fn peak_rss_mib(&self) -> f64 {
        proc_status_kib(self.child.id(), "VmHWM:") as f64 / 1024.0
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap();
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sources: usize = env_or("LOAD_SOURCES", 500);
    let interval_text: String = env_or("LOAD_INTERVAL", "30s".to_owned());
    let interval = api::durations::parse_positive(&interval_text).unwrap();
    let window_intervals: u32 = env_or("LOAD_WINDOW_INTERVALS", 2);

    let key = TestKey::generate("load").unwrap();
    let repo = RepoBuilder::flat()
        .kubernetes("1.31.0-1.1", &["amd64", "arm64"])
        .kubernetes("1.31.1-1.1", &["amd64", "arm64"])
        .kubernetes("1.31.2-1.1", &["amd64", "arm64"])
        .signed_by(&key)
        .build()
        .unwrap();
    let repo_server = RepoServer::start().await.unwrap();
    repo_server.publish(&repo);
    let armored = key.armored_public_key().unwrap();

    // Baseline: the same binary with nothing to reconcile.
    let idle_fake = FakeApiServer::start(FakeOptions {
        serve_crds: true,
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let idle = Manager::start(&idle_fake).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = idle.peak_rss_mib();
    idle.stop();

    let objects: Vec<Value> = (0..sources)
        .map(|i| {
            source_object(
                &format!("team-{}", i % 10),
                &format!("source-{i}"),
                &json!({"url": repo_server.url(), "interval": interval_text, "signedBy": {"inline": armored}}),
            )
        })
        .collect();
    let fake = FakeApiServer::start(FakeOptions {
        serve_crds: true,
        sources: objects,
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let manager = Manager::start(&fake).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while fake.requests().get("patch status").copied().unwrap_or(0) < sources as u64 {
        assert!(
            Instant::now() < deadline,
            "not every source synced: {:?}",
            fake.requests()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_synced = started.elapsed();
    let initial = fake.requests();

    fake.reset();
    repo_server.reset_counters();
    let window = interval * window_intervals + interval / 5;
    tokio::time::sleep(window).await;
    let steady = fake.requests();
    let repo_requests = repo_server.requests();
    let repo_304 = repo_server.not_modified();
    let peak = manager.peak_rss_mib();
    manager.stop();

    let minutes = window.as_secs_f64() / 60.0;
    let writes: u64 = ["patch status", "create event"]
        .iter()
        .filter_map(|k| steady.get(*k))
        .sum();
    let reads: u64 = steady
        .iter()
        .filter(|(k, _)| !["patch status", "create event"].contains(&k.as_str()))
        .map(|(_, v)| *v)
        .sum();
    let intervals = f64::from(window_intervals) + 0.2;
    println!(
        "manager_load: {sources} signed DebianRepositorySources, interval {interval_text}, steady window {window:?}; {} CPUs",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!("all synced after {all_synced:.2?}; initial requests by kind: {initial:?}");
    println!();
    println!("{:<52} {:>12}", "measure", "value");
    println!(
        "{:<52} {:>12.1}",
        "peak RSS, idle manager (MiB, baseline)", idle_rss
    );
    println!(
        "{:<52} {:>12.1}",
        format!("peak RSS with {sources} sources (MiB)"),
        peak
    );
    println!("{:<52} {:>12.2}", "ratio to idle", peak / idle_rss);
    println!(
        "{:<52} {:>12.1}",
        "API writes per minute at steady state",
        writes as f64 / minutes
    );
    println!(
        "{:<52} {:>12.1}",
        "API reads per minute at steady state",
        reads as f64 / minutes
    );
    println!(
        "{:<52} {:>12.1}",
        "repository requests per interval",
        repo_requests as f64 / intervals
    );
    println!(
        "{:<52} {:>12.1}",
        "  of which answered 304",
        repo_304 as f64 / intervals
    );
    println!(
        "{:<52} {:>12.2}",
        "repository requests per source per interval",
        repo_requests as f64 / intervals / sources as f64
    );
    println!("steady-state requests by kind: {steady:?}");
}
