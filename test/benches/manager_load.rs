//! The manager binary with many DebianRepositorySources against one signed repository, with a
//! fake API server on loopback standing in for kube-apiserver (the `e2e` crate's `load` binary
//! does the same against a real one). It reports the manager's peak RSS next to an idle manager's,
//! the API requests per minute at steady state by kind (writes should be zero), and the
//! repository requests per interval (conditional GETs answered 304).
//!
//! `cargo bench -p e2e --bench manager_load`;
//! `LOAD_SOURCES` (500), `LOAD_INTERVAL` (30s) and `LOAD_WINDOW_INTERVALS` (2) tune it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss
)]

use std::time::{Duration, Instant};

use e2e::manager::peak_rss_kib;
use e2e::{Manager, ManagerOptions};
use kubernetes_upgrader_testkit::debian::{RepoBuilder, RepoServer, TestKey};
use kubernetes_upgrader_testkit::fake_api::{FakeApiServer, FakeOptions, source_object};
use serde_json::{Value, json};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts the manager against `fake` and waits until it is ready.
async fn start_manager(fake: &FakeApiServer) -> Manager {
    let mut options = ManagerOptions::for_fake_api(fake).unwrap();
    options.env.push(("RUST_LOG".to_owned(), "warn".to_owned()));
    let mut manager = Manager::spawn(options).unwrap();
    manager.wait_ready(Duration::from_secs(30)).await.unwrap();
    manager
}

fn peak_rss_mib(manager: &Manager) -> f64 {
    peak_rss_kib(manager.pid()).unwrap() as f64 / 1024.0
}

async fn stop(mut manager: Manager) {
    manager.terminate(Duration::from_secs(10)).await.unwrap();
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
    let idle = start_manager(&idle_fake).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = peak_rss_mib(&idle);
    stop(idle).await;

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
    let manager = start_manager(&fake).await;
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
    let peak = peak_rss_mib(&manager);
    stop(manager).await;

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
