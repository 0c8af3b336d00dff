//! The manager binary against a small fake API server on loopback: waits for its CRDs, turns ready
//! only after its cache has synced, syncs a signed repository into one status write, and exits
//! cleanly on SIGTERM. These need no API server, so they run in every `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e::{Manager, ManagerOptions};
use kubernetes_upgrader_testkit::debian::{RepoBuilder, RepoServer, TestKey};
use kubernetes_upgrader_testkit::fake_api::{FakeApiServer, FakeOptions, source_object};
use serde_json::json;

fn manager(fake: &FakeApiServer, extra: &[&str]) -> Manager {
    Manager::spawn(ManagerOptions::for_fake_api(fake).unwrap().with_args(extra)).unwrap()
}

#[tokio::test]
async fn exits_with_an_actionable_message_without_crds() {
    let fake = FakeApiServer::start(FakeOptions::default()).await.unwrap();
    let mut manager = manager(&fake, &["--crd-wait-timeout=1s"]);
    let status = manager
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the manager did not exit within 10 s");
    let stderr = manager.log_tail();
    assert!(!status.success());
    assert!(stderr.contains("CRDs are not installed"), "{stderr}");
    assert!(
        stderr.contains("kubectl apply --server-side -f config/crd/"),
        "{stderr}"
    );
}

#[tokio::test]
async fn ready_after_sync_writes_status_once_and_stops_on_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = TestKey::generate("lifecycle").unwrap();
    let repo = RepoBuilder::flat()
        .kubernetes("1.31.0-1.1", &["amd64", "arm64"])
        .kubernetes("1.31.2-1.1", &["amd64", "arm64"])
        .signed_by(&key)
        .build()
        .unwrap();
    let repo_server = RepoServer::start().await.unwrap();
    repo_server.publish(&repo);
    let source = source_object(
        "team",
        "k8s",
        &json!({"url": repo_server.url(), "signedBy": {"inline": key.armored_public_key().unwrap()}}),
    );
    let fake = FakeApiServer::start(FakeOptions {
        serve_crds: true,
        list_delay: Duration::from_millis(700),
        sources: vec![source],
    })
    .await
    .unwrap();
    let mut manager = manager(&fake, &[]);
    let started = manager.started();

    // Not ready while the list is still outstanding, then ready.
    let mut saw_not_ready = false;
    let mut ready_after = None;
    while started.elapsed() < Duration::from_secs(10) {
        match manager.readyz().await {
            Some(200) => {
                ready_after = Some(started.elapsed());
                break;
            }
            Some(503) => saw_not_ready = true,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let ready_after = ready_after.unwrap_or_else(|| {
        panic!(
            "the manager never became ready; requests {:?}; log:\n{}",
            fake.requests(),
            manager.log_tail()
        )
    });
    assert!(
        saw_not_ready,
        "readyz answered 200 before the cache synced after {ready_after:?}; log:\n{}",
        manager.log_tail()
    );
    // The list takes 0.7 s; the rest is process start on a loaded 2-CPU machine.
    assert!(
        ready_after < Duration::from_secs(8),
        "ready after {ready_after:?}; requests {:?}; log:\n{}",
        fake.requests(),
        manager.log_tail()
    );

    // One status write by server-side apply, then events.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status_write = loop {
        let writes = fake.writes();
        if let Some(write) = writes.into_iter().find(|w| w.request.contains("/status")) {
            break write;
        }
        assert!(Instant::now() < deadline, "no status write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status_write.request.starts_with("PATCH "),
        "{}",
        status_write.request
    );
    assert!(
        status_write
            .request
            .contains("fieldManager=kubernetes-upgrader-debianrepositorysource")
    );
    assert!(status_write.request.contains("force=true"));
    let status = &status_write.body["status"];
    assert_eq!(status["versions"], json!(["v1.31.0", "v1.31.2"]));
    assert_eq!(status["signingKeyFingerprint"], key.fingerprint());
    let conditions = status["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    );
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Verified" && c["status"] == "True")
    );

    let metrics = manager.metrics_text().await.unwrap();
    assert!(
        metrics.contains(
            "kubernetes_upgrader_reconcile_runs_total{controller=\"debianrepositorysource\"}"
        ),
        "{metrics}"
    );

    let stopping = Instant::now();
    let exit = manager
        .terminate(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("still running 5 s after SIGTERM");
    assert!(exit.success(), "{exit:?}");
    assert!(stopping.elapsed() < Duration::from_secs(5));
    assert_eq!(
        fake.requests().get("patch status"),
        Some(&1),
        "exactly one status write"
    );
}
