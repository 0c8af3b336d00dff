//! The manager binary's lifecycle: readiness, SIGTERM, leader election, metrics, missing CRDs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use api::v1alpha1::{DebianRepositorySource, DebianRepositorySourceSpec};
use e2e::manager::{self, LEASE_NAME, Manager};
use e2e::{e2e_env, procs, status};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

/// How soon after start a manager must be ready against a real API server.
const READY_BUDGET: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_within_two_seconds_and_exits_cleanly_on_sigterm() {
    let env = e2e_env!("ready_within_two_seconds_and_exits_cleanly_on_sigterm");
    // Build or locate the binary first, so the budget measures the manager only.
    manager::binary().unwrap();
    let mut manager = Manager::spawn(env.manager_options()).unwrap();
    let mut answers: BTreeMap<u16, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready_after = loop {
        match manager.readyz().await {
            Some(200) => break manager.started().elapsed(),
            Some(code) => *answers.entry(code).or_default() += 1,
            None => {}
        }
        assert!(
            manager.try_exit().unwrap().is_none(),
            "the manager exited:\n{}",
            manager.log_tail()
        );
        assert!(
            Instant::now() < deadline,
            "never ready; answers {answers:?}; log:\n{}",
            manager.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        answers.keys().all(|code| *code != 200),
        "/readyz must not be 200 before the caches synced: {answers:?}"
    );
    assert!(
        ready_after <= READY_BUDGET,
        "ready after {ready_after:?}, budget {READY_BUDGET:?}; log:\n{}",
        manager.log_tail()
    );
    for path in ["/livez", "/healthz", "/readyz"] {
        let response = manager.get(path).await.unwrap();
        assert_eq!(response.status, 200, "{path}: {response:?}");
    }
    let started = Instant::now();
    let status = manager.terminate(Duration::from_secs(5)).await.unwrap();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running 5 s after SIGTERM; log:\n{}",
            manager.log_tail()
        )
    });
    assert!(
        status.success(),
        "exit status {status} after SIGTERM; log:\n{}",
        manager.log_tail()
    );
    eprintln!(
        "ready after {ready_after:?}; exited {:?} after SIGTERM",
        started.elapsed()
    );
}

/// Readiness follows the informer caches: a manager whose identity may not list anything stays
/// unready (while alive), and becomes ready once RBAC lets its watches sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_caches_to_sync() {
    let env = e2e_env!("readyz_waits_for_the_caches_to_sync");
    let sa_name = "restricted-manager";
    let sas: Api<ServiceAccount> = env.api();
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some(sa_name.into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        },
    )
    .await
    .unwrap();
    let token = sas
        .create_token_request(
            sa_name,
            &PostParams::default(),
            &TokenRequest {
                metadata: ObjectMeta::default(),
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                },
                status: None,
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let kubeconfig = procs::scratch_subdir("restricted-")
        .unwrap()
        .join("kubeconfig");
    let server = env.cluster.server().unwrap();
    std::fs::write(
        &kubeconfig,
        e2e::control_plane::kubeconfig_yaml(&server, &token, sa_name),
    )
    .unwrap();

    let mut options = env.manager_options().labelled("restricted-manager");
    options.kubeconfig = kubeconfig;
    let mut manager = Manager::spawn(options).unwrap();
    let watch_until = Instant::now() + Duration::from_secs(5);
    let mut live = false;
    while Instant::now() < watch_until {
        assert!(
            manager.try_exit().unwrap().is_none(),
            "the manager exited:\n{}",
            manager.log_tail()
        );
        assert_ne!(
            manager.readyz().await,
            Some(200),
            "ready without permission to list; log:\n{}",
            manager.log_tail()
        );
        live |= manager.get("/livez").await.is_ok_and(|r| r.status == 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        live,
        "/livez never answered 200; log:\n{}",
        manager.log_tail()
    );

    let bindings: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    bindings
        .create(
            &PostParams::default(),
            &ClusterRoleBinding {
                metadata: ObjectMeta {
                    name: Some(format!("{}-admin", env.namespace)),
                    ..ObjectMeta::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: "cluster-admin".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: sa_name.into(),
                    namespace: Some(env.namespace.clone()),
                    ..Subject::default()
                }]),
            },
        )
        .await
        .unwrap();
    // Watches retry with backoff (up to about 30 s between attempts).
    manager.wait_ready(Duration::from_secs(60)).await.unwrap();
}

/// Samples both managers' `/readyz`; returns how many answered 200.
async fn leaders(a: &Manager, b: &Manager) -> usize {
    let (ra, rb) = tokio::join!(a.readyz(), b.readyz());
    usize::from(ra == Some(200)) + usize::from(rb == Some(200))
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE_NAME)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_has_one_leader_and_fails_over_after_sigkill() {
    let env = e2e_env!("leader_election_has_one_leader_and_fails_over_after_sigkill");
    let lease_duration = Duration::from_secs(4);
    let options = env.manager_options().with_leader_election(&env.namespace);
    let mut a = Manager::spawn(options.clone().labelled("leader-a")).unwrap();
    let mut b = Manager::spawn(options.labelled("leader-b")).unwrap();
    let leases: Api<Lease> = env.api();

    let deadline = Instant::now() + Duration::from_secs(60);
    while leaders(&a, &b).await == 0 {
        assert!(
            Instant::now() < deadline,
            "nobody leads; logs:\n{}\n{}",
            a.log_tail(),
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Steady state: exactly one leader at every sample, and one Lease holder throughout.
    let first_holder = holder(&leases).await.expect("the Lease has no holder");
    let sample_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < sample_until {
        let n = leaders(&a, &b).await;
        assert_eq!(
            n,
            1,
            "{n} managers ready at once; logs:\n{}\n{}",
            a.log_tail(),
            b.log_tail()
        );
        assert_eq!(
            holder(&leases).await.as_deref(),
            Some(first_holder.as_str()),
            "the Lease changed hands at steady state"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (leader, standby) = if a.readyz().await == Some(200) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    leader.kill().unwrap();
    let killed = Instant::now();
    let margin = Duration::from_secs(6);
    loop {
        if standby.readyz().await == Some(200) {
            break;
        }
        assert!(
            killed.elapsed() <= lease_duration + margin,
            "the standby did not take over within {:?}; log:\n{}",
            lease_duration + margin,
            standby.log_tail()
        );
        assert!(
            standby.try_exit().unwrap().is_none(),
            "the standby exited:\n{}",
            standby.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took_over = killed.elapsed();
    let new_holder = holder(&leases)
        .await
        .expect("the Lease has no holder after failover");
    assert_ne!(
        new_holder, first_holder,
        "the Lease still names the killed leader"
    );
    eprintln!("failover after {took_over:?}: {first_holder} -> {new_holder}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_reconcile_counters_and_durations() {
    let env = e2e_env!("metrics_carry_reconcile_counters_and_durations");
    let mut manager = env.start_manager().await.unwrap();
    // Nothing listens on this port: the reconcile fails with FetchFailed.
    let port = procs::free_port().unwrap();
    let sources: Api<DebianRepositorySource> = env.api();
    let source = DebianRepositorySource::new(
        "unreachable",
        DebianRepositorySourceSpec {
            url: format!("http://127.0.0.1:{port}/"),
            interval: Some("10s".into()),
            timeout: Some("2s".into()),
            ..DebianRepositorySourceSpec::default()
        },
    );
    sources
        .create(&PostParams::default(), &source)
        .await
        .unwrap();
    e2e::wait_for(
        &sources,
        "unreachable",
        |s| status::condition_status(&status::to_json(s), "Ready").as_deref() == Some("False"),
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let runs = "kubernetes_upgrader_reconcile_runs_total";
    let failures = "kubernetes_upgrader_reconcile_failures_total";
    let syncs = "kubernetes_upgrader_debian_repository_syncs_total";
    let durations = "kubernetes_upgrader_reconcile_duration_seconds_count";
    let failed_sync = |s: &manager::Sample| {
        s.name == syncs
            && s.value >= 1.0
            && s.label("result")
                .is_some_and(|r| r != "Fetched" && r != "NotModified")
    };
    let text = e2e::eventually("reconcile metrics", Duration::from_secs(20), || {
        let manager = &manager;
        async move {
            let text = manager.metrics_text().await?;
            let samples = manager::parse_metrics(&text);
            let ok = manager::metric_sum(&samples, runs, &[]) >= 1.0
                && samples.iter().any(failed_sync)
                && manager::metric_sum(&samples, durations, &[]) >= 1.0;
            Ok(ok.then_some(text))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; log:\n{}", manager.log_tail()));
    let samples = manager::parse_metrics(&text);
    // A failed sync is status, not a failed reconcile: it counts by result in the controller's
    // own series, and the reconcile failure series are there (at zero) per category.
    assert!(samples.iter().any(failed_sync), "{text}");
    // Every controller has its WriteStatus series, the Debian source's among them.
    let write_status: Vec<_> = samples
        .iter()
        .filter(|s| s.name == failures && s.label("category") == Some("WriteStatus"))
        .filter_map(|s| s.label("controller"))
        .collect();
    assert!(
        write_status.contains(&"debianrepositorysource"),
        "no WriteStatus failure series of the Debian source in {text}"
    );
    assert!(manager::has_metric(
        &samples,
        "kubernetes_upgrader_reconcile_duration_seconds_bucket"
    ));
    // The probe port serves the same registry.
    let probe = manager.get("/metrics").await.unwrap();
    assert_eq!(probe.status, 200);
    assert!(probe.body.contains(runs), "no {runs} on the probe port");
    assert!(
        manager.try_exit().unwrap().is_none(),
        "the manager exited:\n{}",
        manager.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_crds_it_exits_naming_what_to_install() {
    let env = e2e_env!("without_crds_it_exits_naming_what_to_install");
    let Some(plane) = &env.cluster.local else {
        e2e::cluster::print_line(
            "skipping without_crds_it_exits_naming_what_to_install: needs KUBEBUILDER_ASSETS (it starts a second, empty API server)",
        );
        return;
    };
    let bare = plane.start_bare_apiserver().await.unwrap();
    let mut options = env.manager_options().labelled("manager-without-crds");
    options.kubeconfig = bare.kubeconfig.clone();
    options.extra_args = vec!["--crd-wait-timeout".into(), "2s".into()];
    let mut manager = Manager::spawn(options).unwrap();
    let status = manager
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("still running without CRDs; log:\n{}", manager.log_tail()));
    assert!(!status.success(), "exit status {status} without CRDs");
    let log = manager.log_tail().to_lowercase();
    assert!(
        log.contains("crd") && log.contains("install"),
        "the exit message does not say what to install:\n{log}"
    );
    assert_ne!(manager.readyz().await, Some(200));
    drop(bare);
}
