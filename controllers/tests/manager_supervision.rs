//! The manager in-process against the fake API server: each kind is watched once however many
//! controllers use it, and a controller that dies makes `/readyz` fail and the manager return an
//! error (which `main` turns into a non-zero exit).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use kubernetes_upgrader::controllers::debian_source::{self, Guarded};
use kubernetes_upgrader::manager::{self, ManagerConfig, ManagerError};
use kubernetes_upgrader::runtime::{ControllerError, Registration, Running, Shared, synced};
use kubernetes_upgrader::shutdown::Shutdown;
use kubernetes_upgrader_testkit::fake_api::{FakeApiServer, FakeOptions, source_object};
use kubernetes_upgrader_testkit::{free_port, http};
use serde_json::json;

async fn fake(sources: usize) -> FakeApiServer {
    let sources = (0..sources)
        .map(|i| {
            source_object(
                "team",
                &format!("s{i}"),
                &json!({"url": "http://127.0.0.1:1/Packages"}),
            )
        })
        .collect();
    FakeApiServer::start(FakeOptions {
        serve_crds: true,
        sources,
        ..FakeOptions::default()
    })
    .await
    .unwrap()
}

fn client(fake: &FakeApiServer) -> kube::Client {
    let url = format!("http://{}", fake.address()).parse().unwrap();
    kube::Client::try_from(kube::Config::new(url)).unwrap()
}

fn config() -> (ManagerConfig, SocketAddr) {
    let address: SocketAddr = ([127, 0, 0, 1], free_port().unwrap()).into();
    let config = ManagerConfig {
        namespace: None,
        listen: vec![address],
        leader_election: None,
        crd_wait: Duration::from_secs(5),
        instance: None,
        extension_config: "kubernetes-upgrader".into(),
    };
    (config, address)
}

async fn readyz(address: SocketAddr) -> Option<u16> {
    http::get(address, "/readyz").await.ok().map(|r| r.status)
}

async fn wait_ready(address: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(address).await != Some(200) {
        assert!(Instant::now() < deadline, "the manager never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

static OBSERVED: AtomicUsize = AtomicUsize::new(0);

/// A second user of the DebianRepositorySource cache, as the Syncer will be.
fn observer(shared: &Shared) -> Running {
    let cache = shared.caches.cache::<Guarded>();
    let events = cache.subscribe().unwrap();
    let shutdown = shared.shutdown.clone();
    Running {
        ready: synced(cache.store),
        run: async move {
            events
                .take_until(shutdown.wait())
                .for_each(|_| async {
                    OBSERVED.fetch_add(1, Ordering::SeqCst);
                })
                .await;
            Ok(())
        }
        .boxed(),
    }
}

#[tokio::test]
async fn each_kind_is_watched_once_per_manager() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = fake(3).await;
    let (config, address) = config();
    let (trigger, shutdown) = Shutdown::new();
    let controllers = [
        debian_source::REGISTRATION,
        Registration {
            name: "observer",
            categories: &[],
            start: observer,
        },
    ];
    let manager = tokio::spawn({
        let client = client(&fake);
        async move { manager::run(client, config, &controllers, shutdown).await }
    });
    wait_ready(address).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while OBSERVED.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the observer saw {OBSERVED:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = http::get(address, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains(
            "kubernetes_upgrader_reconcile_failures_total{controller=\"observer\",category=\"Watch\"} 0"
        ),
        "{metrics}"
    );
    let requests = fake.requests();
    assert_eq!(requests.get("watch"), Some(&1), "{requests:?}");
    assert_eq!(requests.get("list"), Some(&1), "{requests:?}");
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(10), manager)
        .await
        .expect("the manager did not stop")
        .unwrap()
        .unwrap();
}

static DIE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Dies when told to.
fn dying(_shared: &Shared) -> Running {
    Running {
        ready: async {}.boxed(),
        run: async {
            DIE.notified().await;
            Err(ControllerError::StreamEnded)
        }
        .boxed(),
    }
}

/// Takes a second to finish its in-flight work once asked to stop.
fn slow_to_stop(shared: &Shared) -> Running {
    let shutdown = shared.shutdown.clone();
    Running {
        ready: async {}.boxed(),
        run: async move {
            shutdown.wait().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(())
        }
        .boxed(),
    }
}

#[tokio::test]
async fn a_dying_controller_fails_readyz_and_the_manager() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fake = fake(0).await;
    let (config, address) = config();
    let (_trigger, shutdown) = Shutdown::new();
    let controllers = [
        Registration {
            name: "dying",
            categories: &[],
            start: dying,
        },
        Registration {
            name: "slow",
            categories: &[],
            start: slow_to_stop,
        },
    ];
    let manager = tokio::spawn({
        let client = client(&fake);
        async move { manager::run(client, config, &controllers, shutdown).await }
    });
    wait_ready(address).await;
    DIE.notify_one();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut saw_unready = false;
    while !manager.is_finished() {
        match readyz(address).await {
            Some(503) => saw_unready = true,
            Some(200) => assert!(!saw_unready, "ready again after the failure"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "the manager did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_unready, "/readyz never failed");
    let err = manager.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ManagerError::ControllerFailed { name, .. } if name == "dying"),
        "{err:?}"
    );
    assert_eq!(
        kubernetes_upgrader::runtime::cause_chain(&err),
        "dying stopped unexpectedly: its event stream ended"
    );
    assert_eq!(
        readyz(address).await,
        None,
        "the probe server stops with the manager"
    );
}
