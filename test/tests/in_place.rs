//! Elemental in-place OS updates on two real API servers: the management cluster
//! (our CRDs, minimal Cluster API and Elemental CRDs, the manager) and a workload cluster (Nodes,
//! Pods, PodDisruptionBudgets), with the kubelet and Elemental agent stand-ins of
//! `e2e::elemental`. The Plan's newest image has the Cluster's Kubernetes version and a new OS
//! build, so the upgrader updates the hosts in place instead of writing the topology.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/upgrader.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use api::v1alpha1::{CORDONED_BY_ANNOTATION, MachineImage, OS_IMAGE_STAMP_ANNOTATION};
use e2e::elemental::{
    Agent, AgentConfig, Behaviour, CONTROL_PLANE_POOL, Fleet, Host, IN_PLACE_UPDATE, INSTALLED,
    MACHINE_NAME, Monitor, OsImage, POOL_LABEL, PodKind, Workload, WorkloadKubelets, check_budget,
    cordoned, create_elemental_host, elemental_hosts, elemental_machines, image_uri,
    initial_os_version_management, labels, machines, managed_fields_of, node_os_image,
    skip_remediation, update_label,
};
use e2e::status::condition_message;
use e2e::{Manager, TestEnv, condition_reason, condition_status, e2e_env};
use kube::api::{EvictParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const CCCU: &str = "ClusterClassClusterUpgrader";
/// The upgrader's field manager.
const UPGRADER_MANAGER: &str = "kubernetes-upgrader-upgrader";
/// Long enough for a few hosts at a poll of ~2 s per phase.
const LONG: Duration = Duration::from_secs(150);
const CLUSTER: &str = "c";
const UPGRADER: &str = "u";
/// The value the upgrader gives `cluster.x-k8s.io/skip-remediation` on a Machine it holds.
const HELD_BY: &str = "kubernetes-upgrader";

/// The stand-ins and fixtures of one scenario. Fields drop in order: the stand-ins stop before
/// the workload cluster does.
struct Bed {
    kubelet: WorkloadKubelets,
    agent: Agent,
    monitor: Monitor,
    env: TestEnv,
    workload: Workload,
    fleet: Fleet,
    old: OsImage,
    new: OsImage,
}

/// Starts the workload cluster, creates `hosts` booted from build 1 and starts the stand-ins
/// (`agent` adjusts the agent's per-host behaviour). `None` when the test is skipped.
async fn bed(
    env: TestEnv,
    hosts: Vec<Host>,
    agent: impl FnOnce(AgentConfig) -> AgentConfig,
) -> Option<Bed> {
    let workload = Workload::start(&env).await.unwrap()?;
    let old = OsImage::build(1);
    let new = OsImage::build(2);
    let fleet = Fleet::create(&env.client, &env.namespace, CLUSTER, hosts, &workload, &old)
        .await
        .unwrap();
    let kubelet = WorkloadKubelets::spawn(workload.client.clone(), Duration::from_secs(1));
    let config = agent(AgentConfig::new(&fleet, &old, &[&new]));
    let agent = Agent::spawn(env.client.clone(), workload.client.clone(), config);
    let monitor = Monitor::spawn(&env.client, &workload.client, &fleet);
    Some(Bed {
        kubelet,
        agent,
        monitor,
        env,
        workload,
        fleet,
        old,
        new,
    })
}

impl Bed {
    /// A ready static MachineImage for `image` at `version` carrying its stamp annotation, a Plan
    /// over it, the Cluster at v1.31.1 with the topology variable `image` holding the old image,
    /// and the upgrader with `spec` merged over `{topologyVariable: image, inPlace: {..}}`.
    async fn upgrade_to(&self, image: &OsImage, version: &str, cluster_extra: Value, spec: Value) {
        let env = &self.env;
        support::static_image(env, "os-new", version, &image.uri)
            .await
            .unwrap();
        let images: Api<MachineImage> = env.api();
        images
            .patch(
                "os-new",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {OS_IMAGE_STAMP_ANNOTATION: image.stamp}}}),
                ),
            )
            .await
            .unwrap();
        support::plan(env, "p", ">=1.31.0").await.unwrap();
        let mut extra = json!({"spec": {"topology": {"variables": [
            {"name": "image", "value": self.old.uri},
            {"name": "other", "value": {"keep": true}},
        ]}}});
        support::merge(&mut extra, &cluster_extra);
        support::cluster(env, "v1beta1", CLUSTER, "v1.31.1", extra)
            .await
            .unwrap();
        let mut body = json!({
            "topologyVariable": "image",
            "inPlace": {"maxUnavailable": 1, "drainTimeout": "30s", "retries": 1},
        });
        support::merge(&mut body, &spec);
        support::upgrader(env, CCCU, UPGRADER, CLUSTER, "p", body)
            .await
            .unwrap();
    }

    /// [`Bed::upgrade_to`] the new build of the same Kubernetes version (an in-place update),
    /// then starts the manager.
    async fn start_in_place(&self, cluster_extra: Value, spec: Value) -> Manager {
        self.upgrade_to(&self.new, "v1.31.1", cluster_extra, spec)
            .await;
        self.env.start_manager().await.unwrap()
    }

    async fn upgrader(&self) -> Value {
        support::upgrader_json(&self.env, CCCU, UPGRADER)
            .await
            .unwrap()
    }

    /// Waits until the upgrader satisfies `pred`; the panic shows the last upgrader, the
    /// stand-ins' logs and the manager's log tail.
    async fn wait_upgrader(
        &self,
        what: &str,
        timeout: Duration,
        manager: &Manager,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let u = self.upgrader().await;
            if pred(&u) {
                return u;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}\nupgrader status: {:#}\nmonitor: {:?}\nagent: {:?}\nkubelet errors: {:?}\nmanager log tail:\n{}",
                u["status"],
                self.monitor.log(),
                self.agent.log(),
                self.kubelet.log().errors,
                manager.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_reason(&self, manager: &Manager, type_: &str, reason: &str) -> Value {
        self.wait_upgrader(&format!("{type_}={reason}"), LONG, manager, |u| {
            condition_reason(u, type_).as_deref() == Some(reason)
        })
        .await
    }

    /// Asserts that the upgrader reported the block `reason` in a Warning event, and that no
    /// reconcile of the in-place flow failed on the way (the upgrader's error categories for
    /// reading and writing hosts and status).
    async fn assert_blocked_warning(&self, reason: &str) {
        let warnings = self.env.warnings(UPGRADER).await.unwrap();
        let reasons: BTreeSet<&str> = warnings
            .iter()
            .filter_map(|e| e.reason.as_deref())
            .collect();
        let shown = warnings
            .iter()
            .map(|e| (&e.reason, &e.note))
            .collect::<Vec<_>>();
        assert!(reasons.contains(reason), "no {reason} warning: {shown:?}");
        let failures: Vec<&&str> = reasons
            .iter()
            .filter(|r| ["ReadHosts", "WriteHost", "WriteStatus"].contains(r))
            .collect();
        assert!(failures.is_empty(), "reconciles failed: {shown:?}");
    }

    async fn cluster_resource_version(&self) -> String {
        support::resource_version(&self.env, "v1beta1", CLUSTER)
            .await
            .unwrap()
    }
}

/// The host record of `host` in `status.hosts`.
fn record<'a>(u: &'a Value, host: &str) -> Option<&'a Value> {
    u["status"]["hosts"]
        .as_array()?
        .iter()
        .find(|r| r["host"] == host)
}

fn phase(u: &Value, host: &str) -> Option<String> {
    record(u, host)?["phase"].as_str().map(str::to_owned)
}

/// Control plane `cp0` and a worker `w0` of pool `md-a`.
fn two_hosts() -> Vec<Host> {
    vec![Host::control_plane("cp0"), Host::worker("w0", "md-a")]
}

/// Control plane `cp0`, then two workers of pool `md-a`.
fn three_hosts() -> Vec<Host> {
    vec![
        Host::control_plane("cp0"),
        Host::worker("w1", "md-a"),
        Host::worker("w0", "md-a"),
    ]
}

// ---------------------------------------------------------------------------------------------
// The harness alone (no manager)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_stand_ins_play_their_parts() {
    let env = e2e_env!("harness_stand_ins_play_their_parts");
    let hosts = vec![Host::control_plane("a"), Host::worker("b", "md-a")];
    let Some(bed) = bed(env, hosts, |c| c).await else {
        return;
    };
    let (a, b) = (bed.fleet.hosts[0].clone(), bed.fleet.hosts[1].clone());
    let w = &bed.workload;
    let guard = labels(&[("guard", "a")]);
    w.create_pod("guarded-a", &a.node(), PodKind::Ordinary, &guard)
        .await
        .unwrap();
    w.create_pdb("guard", &guard, 1).await.unwrap();

    // The disruption stand-in reports the budget exhausted.
    e2e::eventually("the PDB's status", Duration::from_secs(10), || async {
        let pdb = w.pdbs().get("guard").await?;
        let s = pdb.status.unwrap_or_default();
        Ok((s.observed_generation == pdb.metadata.generation
            && s.current_healthy == 1
            && s.disruptions_allowed == 0)
            .then_some(()))
    })
    .await
    .unwrap();

    // Cordon, then drain the way the controller must: the ordinary pod is evicted and, once the
    // kubelet stand-in confirms, gone; the guarded pod is refused by its budget.
    w.nodes()
        .patch(
            &a.node(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    let pods = w.pods();
    pods.evict(&format!("app-{}", a.node()), &EvictParams::default())
        .await
        .unwrap();
    e2e::eventually("the evicted pod gone", Duration::from_secs(10), || async {
        Ok(pods
            .get_opt(&format!("app-{}", a.node()))
            .await?
            .is_none()
            .then_some(()))
    })
    .await
    .unwrap();
    assert!(
        bed.kubelet
            .log()
            .confirmed_deletions
            .contains(&format!("app-{}", a.node())),
        "{:?}",
        bed.kubelet.log()
    );
    match pods.evict("guarded-a", &EvictParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 429, "{s:?}"),
        other => panic!("the budget let the eviction through: {other:?}"),
    }

    // Pending with the guarded pod still there: the agent records both.
    let hosts = elemental_hosts(&bed.env.client, &bed.env.namespace);
    hosts
        .patch(
            &a.host(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {IN_PLACE_UPDATE: "pending"}}})),
        )
        .await
        .unwrap();

    // A server-side apply of only `imageUri` keeps `debug` and the unknown key (schemaless map).
    let ems = elemental_machines(&bed.env.client, &bed.env.namespace);
    let apply = json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
        "kind": "ElementalMachine",
        "spec": {"osVersionManagement": {"osVersion": {"imageUri": bed.new.uri}}},
    });
    ems.patch(
        &a.elemental_machine(),
        &PatchParams::apply("e2e-probe").force(),
        &Patch::Apply(&apply),
    )
    .await
    .unwrap();
    let em = ems.get(&a.elemental_machine()).await.unwrap();
    let mut expected = initial_os_version_management(&bed.old.uri);
    expected["osVersion"]["imageUri"] = json!(bed.new.uri);
    assert_eq!(em.data["spec"]["osVersionManagement"], expected);
    assert_eq!(
        managed_fields_of(&em, "e2e-probe"),
        vec![(
            "Apply".to_owned(),
            vec!["spec.osVersionManagement.osVersion.imageUri".to_owned()]
        )]
    );

    // The agent updates the host: the Node reports the new stamp, the host is `done`.
    e2e::eventually("host a done", Duration::from_secs(10), || async {
        let h = hosts.get(&a.host()).await?;
        Ok((update_label(&h) == Some("done")).then_some(()))
    })
    .await
    .unwrap();
    let node = w.node(&a.node()).await.unwrap();
    assert_eq!(node_os_image(&node), Some(bed.new.os_release().as_str()));
    let h = hosts.get(&a.host()).await.unwrap();
    assert_eq!(
        condition_status(&e2e::to_json(&h), "OSVersionReady").as_deref(),
        Some("True")
    );
    let log = bed.agent.log();
    assert_eq!(log.pending.len(), 1, "{log:?}");
    assert_eq!(log.pending[0].host, a.host());
    assert!(log.pending[0].node_cordoned);
    assert_eq!(log.pending[0].pods_left, vec!["guarded-a".to_owned()]);
    assert_eq!(log.updates.len(), 1, "{log:?}");
    assert_eq!(log.updates[0].booted_stamp, bed.new.stamp);
    assert!(log.violations.is_empty(), "{log:?}");

    // An image written while the host is not `pending` is a breach, and nothing happens.
    ems.patch(
        &b.elemental_machine(),
        &PatchParams::apply("e2e-probe").force(),
        &Patch::Apply(&apply),
    )
    .await
    .unwrap();
    e2e::eventually("the breach recorded", Duration::from_secs(5), || async {
        Ok((!bed.agent.log().violations.is_empty()).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(bed.agent.log().updates.len(), 1);
    assert_eq!(
        node_os_image(&w.node(&b.node()).await.unwrap()),
        Some(bed.old.os_release().as_str())
    );

    // The monitor saw host a out of service, alone; uncordoning brings it back.
    w.nodes()
        .patch(
            &a.node(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": null}})),
        )
        .await
        .unwrap();
    e2e::eventually("host a back in service", Duration::from_secs(5), || async {
        Ok(bed.monitor.log().in_flight().is_empty().then_some(()))
    })
    .await
    .unwrap();
    let seen = bed.monitor.log();
    assert_eq!(seen.order, vec![a.host()]);
    assert_eq!(seen.pending_order, vec![a.host()]);
    assert_eq!(seen.max_in_flight, 1);
    assert!(seen.errors.is_empty(), "{seen:?}");
    assert!(
        bed.kubelet.log().errors.is_empty(),
        "{:?}",
        bed.kubelet.log()
    );
}

// ---------------------------------------------------------------------------------------------
// Scenarios against the manager

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_updated_one_after_another_control_plane_first() {
    let env = e2e_env!("hosts_are_updated_one_after_another_control_plane_first");
    let Some(bed) = bed(env, three_hosts(), |c| c).await else {
        return;
    };
    // A budget that allows the drains: four healthy web pods (one on a Node outside the
    // Cluster), at least one must stay.
    let w = &bed.workload;
    w.create_node("node-other", &bed.old.os_release())
        .await
        .unwrap();
    w.create_pod(
        "app-node-other",
        "node-other",
        PodKind::Ordinary,
        &labels(&[("app", "web")]),
    )
    .await
    .unwrap();
    w.create_pdb("web", &labels(&[("app", "web")]), 1)
        .await
        .unwrap();
    bed.upgrade_to(&bed.new, "v1.31.1", json!({}), json!({}))
        .await;
    let cluster_version = bed.cluster_resource_version().await;
    let manager = bed.env.start_manager().await.unwrap();

    // While the control plane's host is in flight, its Machine is held from remediation.
    let machine_api = machines(&bed.env.client, &bed.env.namespace);
    let cp_machine = bed.fleet.hosts[0].machine();
    e2e::eventually("the control plane's Machine held", LONG, || async {
        let m = machine_api.get(&cp_machine).await?;
        Ok((skip_remediation(&m) == Some(HELD_BY)).then_some(()))
    })
    .await
    .unwrap();

    let u = bed
        .wait_upgrader("Ready=InPlaceUpdated", LONG, &manager, |u| {
            condition_status(u, "Ready").as_deref() == Some("True")
                && condition_reason(u, "Ready").as_deref() == Some("InPlaceUpdated")
        })
        .await;

    // Strictly one after another, the control plane first.
    let seen = bed.monitor.log();
    check_budget(&seen, 1).unwrap();
    let cp = bed.fleet.hosts[0].host();
    assert_eq!(seen.order.len(), 3, "{seen:?}");
    assert_eq!(seen.order[0], cp, "the control plane goes first: {seen:?}");
    assert_eq!(seen.pending_order, seen.order, "{seen:?}");
    assert!(seen.in_flight().is_empty(), "{seen:?}");

    // `pending` only once the Node was cordoned and its evictable pods gone.
    let agent = bed.agent.log();
    assert_eq!(agent.pending.len(), 3, "{agent:?}");
    for p in &agent.pending {
        assert!(
            p.node_cordoned,
            "{} pending before its cordon: {p:?}",
            p.host
        );
        assert!(
            p.pods_left.is_empty(),
            "{} pending with pods left: {p:?}",
            p.host
        );
    }
    assert!(agent.violations.is_empty(), "{:?}", agent.violations);
    assert_eq!(agent.updates.len(), 3, "one update per host: {agent:?}");

    let ems = elemental_machines(&bed.env.client, &bed.env.namespace);
    for host in &bed.fleet.hosts {
        // Each Machine released to remediation once its host is done.
        let m = machine_api.get(&host.machine()).await.unwrap();
        assert_eq!(skip_remediation(&m), None, "{} still held", host.machine());
        // Each Node uncordoned and running the new build; DaemonSet and mirror pods untouched.
        let node = w.node(&host.node()).await.unwrap();
        assert!(!cordoned(&node), "{} still cordoned", host.node());
        assert_eq!(node_os_image(&node), Some(bed.new.os_release().as_str()));
        let left: BTreeSet<String> = w
            .pods_on(&host.node())
            .await
            .unwrap()
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        let kept: BTreeSet<String> = [
            format!("ds-{}", host.node()),
            format!("mirror-{}", host.node()),
        ]
        .into();
        assert_eq!(left, kept, "{}", host.node());

        // Only `imageUri` changed, and only it is owned by the upgrader.
        let em = ems.get(&host.elemental_machine()).await.unwrap();
        let mut expected = initial_os_version_management(&bed.old.uri);
        expected["osVersion"]["imageUri"] = json!(bed.new.uri);
        assert_eq!(em.data["spec"]["osVersionManagement"], expected);
        let owned = managed_fields_of(&em, UPGRADER_MANAGER);
        assert_eq!(
            owned,
            vec![(
                "Apply".to_owned(),
                vec!["spec.osVersionManagement.osVersion.imageUri".to_owned()]
            )],
            "{}",
            host.elemental_machine()
        );

        let r = record(&u, &host.host()).unwrap_or_else(|| panic!("no record of {}", host.host()));
        assert_eq!(r["phase"], "Uncordoned", "{r}");
        assert_eq!(r["node"], host.node());
        assert_eq!(r["machine"], host.machine());
        assert_eq!(r["image"], bed.new.uri);
        assert_eq!(r["stamp"], bed.new.stamp);
        assert!(r["finished"].is_string(), "{r}");
        assert_eq!(r["pool"].as_str(), host.pool.as_deref(), "{r}");
    }
    let progress = &u["status"]["inPlace"];
    assert_eq!(progress["image"], bed.new.uri);
    assert_eq!(progress["stamp"], bed.new.stamp);
    assert_eq!(
        (progress["updated"].as_i64(), progress["total"].as_i64()),
        (Some(3), Some(3))
    );
    let pools = progress["pools"].as_array().unwrap();
    assert_eq!(pools[0]["controlPlane"], true, "{progress}");
    assert_eq!(
        (pools[0]["updated"].as_i64(), pools[0]["total"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(pools[1]["name"], "md-a");
    assert_eq!(
        (pools[1]["updated"].as_i64(), pools[1]["total"].as_i64()),
        (Some(2), Some(2))
    );

    // In place: the topology is not written.
    assert_eq!(bed.cluster_resource_version().await, cluster_version);
    let t = support::topology(&bed.env, "v1beta1", CLUSTER)
        .await
        .unwrap();
    assert_eq!(support::variable(&t, "image"), Some(&json!(bed.old.uri)));
    assert_eq!(t["version"], "v1.31.1");

    // Steady state: no more writes to the upgrader or the ElementalMachines.
    let upgraders = support::upgraders(&bed.env, CCCU);
    let machines_before: Vec<Option<String>> = ems
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::resource_version)
        .collect();
    e2e::assert_no_writes(&upgraders, UPGRADER, Duration::from_secs(4))
        .await
        .unwrap();
    let machines_after: Vec<Option<String>> = ems
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::resource_version)
        .collect();
    assert_eq!(
        machines_before, machines_after,
        "ElementalMachines written at steady state"
    );

    // An event at each host transition.
    let events: Api<k8s_openapi::api::events::v1::Event> = bed.env.api();
    let events = events
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items;
    let mine: Vec<_> = events
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(UPGRADER))
        .collect();
    for reason in [
        "InPlaceHostCordoned",
        "InPlaceHostPending",
        "InPlaceHostUncordoned",
    ] {
        for host in &bed.fleet.hosts {
            assert!(
                mine.iter().any(|e| e.reason.as_deref() == Some(reason)
                    && e.note.as_deref().is_some_and(|n| n.contains(&host.host()))),
                "no {reason} event naming {}: {:?}",
                host.host(),
                mine.iter()
                    .map(|e| (&e.reason, &e.note, e.series.as_ref().map(|s| s.count)))
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_that_blocks_the_drain_times_out_and_nothing_moves_on() {
    let env = e2e_env!("a_budget_that_blocks_the_drain_times_out_and_nothing_moves_on");
    let hosts = two_hosts();
    let Some(bed) = bed(env, hosts, |c| c).await else {
        return;
    };
    let (cp, worker) = (bed.fleet.hosts[0].clone(), bed.fleet.hosts[1].clone());
    // Two guarded pods on the control-plane Node, minAvailable 2: no eviction is allowed.
    let guard = labels(&[("guard", "db")]);
    for i in 0..2 {
        bed.workload
            .create_pod(&format!("db-{i}"), &cp.node(), PodKind::Ordinary, &guard)
            .await
            .unwrap();
    }
    bed.workload.create_pdb("db", &guard, 2).await.unwrap();
    let manager = bed
        .start_in_place(json!({}), json!({"inPlace": {"drainTimeout": "5s"}}))
        .await;

    // Blocked within the drain timeout (5 s) and a few polls of the cordon.
    e2e::eventually("the control plane cordoned", LONG, || async {
        Ok((!bed.monitor.log().order.is_empty()).then_some(()))
    })
    .await
    .unwrap();
    let cordoned_at = Instant::now();
    let u = bed.wait_reason(&manager, "Blocked", "DrainTimeout").await;
    let took = cordoned_at.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "DrainTimeout {took:?} after the cordon, with drainTimeout 5s; manager log:\n{}",
        manager.log_tail()
    );
    assert_eq!(condition_status(&u, "Blocked").as_deref(), Some("True"));
    assert_eq!(
        phase(&u, &cp.host()).as_deref(),
        Some("DrainTimeout"),
        "{u:#}"
    );
    // It stays that way: the Node cordoned, never `pending`, no second host.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let u = bed.upgrader().await;
    assert_eq!(
        condition_reason(&u, "Blocked").as_deref(),
        Some("DrainTimeout")
    );
    assert_eq!(
        phase(&u, &cp.host()).as_deref(),
        Some("DrainTimeout"),
        "{u:#}"
    );
    assert!(
        record(&u, &worker.host()).is_none(),
        "a second host started: {u:#}"
    );
    assert!(cordoned(&bed.workload.node(&cp.node()).await.unwrap()));
    assert!(!cordoned(&bed.workload.node(&worker.node()).await.unwrap()));
    let seen = bed.monitor.log();
    assert_eq!(seen.order, vec![cp.host()], "{seen:?}");
    assert!(seen.pending_order.is_empty(), "labelled pending: {seen:?}");
    let host = elemental_hosts(&bed.env.client, &bed.env.namespace)
        .get(&cp.host())
        .await
        .unwrap();
    assert_eq!(update_label(&host), None);
    let em = elemental_machines(&bed.env.client, &bed.env.namespace)
        .get(&cp.elemental_machine())
        .await
        .unwrap();
    assert_eq!(
        image_uri(&em),
        Some(bed.old.uri.as_str()),
        "image written without pending"
    );
    for i in 0..2 {
        assert!(
            bed.workload
                .pods()
                .get_opt(&format!("db-{i}"))
                .await
                .unwrap()
                .is_some()
        );
    }
    // A refused eviction is the budget at work, not a failure.
    bed.assert_blocked_warning("DrainTimeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_boot_blocks_with_booted_image_mismatch_without_looping() {
    let env = e2e_env!("a_fallback_boot_blocks_with_booted_image_mismatch_without_looping");
    let hosts = two_hosts();
    let Some(bed) = bed(env, hosts, |c| c.behaving("host-cp0", Behaviour::Fallback)).await else {
        return;
    };
    let (cp, worker) = (bed.fleet.hosts[0].clone(), bed.fleet.hosts[1].clone());
    let manager = bed.start_in_place(json!({}), json!({})).await;

    let u = bed
        .wait_reason(&manager, "Blocked", "BootedImageMismatch")
        .await;
    assert_eq!(condition_status(&u, "Blocked").as_deref(), Some("True"));
    assert_eq!(
        phase(&u, &cp.host()).as_deref(),
        Some("BootedImageMismatch"),
        "{u:#}"
    );
    let message = condition_message(&u, "Blocked").unwrap_or_default();
    assert!(
        message.contains(&cp.host()) || message.contains(&cp.node()),
        "{message}"
    );

    // No loop: nothing is written any more, to the upgrader, the host or its machine, while
    // the kubelet stand-in keeps reporting the Node.
    let hosts = elemental_hosts(&bed.env.client, &bed.env.namespace);
    let ems = elemental_machines(&bed.env.client, &bed.env.namespace);
    let upgraders = support::upgraders(&bed.env, CCCU);
    let host_before = hosts.get(&cp.host()).await.unwrap();
    let em_before = ems.get(&cp.elemental_machine()).await.unwrap();
    e2e::assert_no_writes(&upgraders, UPGRADER, Duration::from_secs(6))
        .await
        .unwrap();
    assert_eq!(
        hosts.get(&cp.host()).await.unwrap().resource_version(),
        host_before.resource_version()
    );
    assert_eq!(
        ems.get(&cp.elemental_machine())
            .await
            .unwrap()
            .resource_version(),
        em_before.resource_version()
    );
    assert_eq!(update_label(&host_before), Some("done"));
    assert!(
        cordoned(&bed.workload.node(&cp.node()).await.unwrap()),
        "uncordoned after a mismatch"
    );
    assert!(!cordoned(&bed.workload.node(&worker.node()).await.unwrap()));
    assert!(record(&bed.upgrader().await, &worker.host()).is_none());
    let agent = bed.agent.log();
    assert_eq!(agent.updates.len(), 1, "{agent:?}");
    assert_eq!(agent.updates[0].booted_stamp, bed.old.stamp);
    let seen = bed.monitor.log();
    assert_eq!(seen.order, vec![cp.host()], "{seen:?}");
    bed.assert_blocked_warning("BootedImageMismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_comes_back_times_out_with_its_machine_held() {
    let env = e2e_env!("a_host_that_never_comes_back_times_out_with_its_machine_held");
    let Some(bed) = bed(env, two_hosts(), |c| {
        c.behaving("host-cp0", Behaviour::NeverBack)
    })
    .await
    else {
        return;
    };
    let (cp, worker) = (bed.fleet.hosts[0].clone(), bed.fleet.hosts[1].clone());
    let manager = bed
        .start_in_place(json!({}), json!({"inPlace": {"hostTimeout": "8s"}}))
        .await;
    let machine_api = machines(&bed.env.client, &bed.env.namespace);

    // Down for its update: `pending`, the image written, and its Machine held from remediation.
    bed.wait_upgrader("the control plane pending", LONG, &manager, |u| {
        phase(u, &cp.host()).as_deref() == Some("Pending")
    })
    .await;
    let pending_seen = Instant::now();
    let m = machine_api.get(&cp.machine()).await.unwrap();
    assert_eq!(skip_remediation(&m), Some(HELD_BY));
    let em = elemental_machines(&bed.env.client, &bed.env.namespace)
        .get(&cp.elemental_machine())
        .await
        .unwrap();
    assert_eq!(image_uri(&em), Some(bed.new.uri.as_str()));

    // Never back: blocked once hostTimeout (8 s) has passed since `pending`.
    let u = bed.wait_reason(&manager, "Blocked", "HostTimeout").await;
    let took = pending_seen.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "HostTimeout {took:?} after pending, with hostTimeout 8s; manager log:\n{}",
        manager.log_tail()
    );
    assert_eq!(condition_status(&u, "Blocked").as_deref(), Some("True"));
    let r = record(&u, &cp.host()).unwrap().clone();
    assert_eq!(r["phase"], "HostTimeout", "{r}");
    assert!(r["pendingSince"].is_string(), "{r}");
    let message = condition_message(&u, "Blocked").unwrap_or_default();
    assert!(message.contains(&cp.host()), "{message}");

    // It stays that way: nothing else starts, the Node stays cordoned, the Machine held.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let u = bed.upgrader().await;
    assert_eq!(
        condition_reason(&u, "Blocked").as_deref(),
        Some("HostTimeout")
    );
    assert!(
        record(&u, &worker.host()).is_none(),
        "a second host started: {u:#}"
    );
    assert!(cordoned(&bed.workload.node(&cp.node()).await.unwrap()));
    assert!(!cordoned(&bed.workload.node(&worker.node()).await.unwrap()));
    let m = machine_api.get(&cp.machine()).await.unwrap();
    assert_eq!(skip_remediation(&m), Some(HELD_BY), "the hold was lifted");
    let m = machine_api.get(&worker.machine()).await.unwrap();
    assert_eq!(skip_remediation(&m), None, "a host not in flight held");
    let agent = bed.agent.log();
    assert_eq!(agent.gone, vec![cp.host()], "{agent:?}");
    assert!(agent.updates.is_empty(), "{agent:?}");
    assert_eq!(bed.monitor.log().order, vec![cp.host()]);
    bed.assert_blocked_warning("HostTimeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_killed_at_every_phase_resumes_the_same_host() {
    let env = e2e_env!("a_manager_killed_at_every_phase_resumes_the_same_host");
    let hosts = two_hosts();
    let Some(bed) = bed(env, hosts, |c| c).await else {
        return;
    };
    let mut manager = bed.start_in_place(json!({}), json!({})).await;

    // Kill -9 and restart whenever a host record shows a phase not seen before.
    let mut seen: Vec<(String, String)> = Vec::new();
    let deadline = Instant::now() + LONG;
    loop {
        let u = bed.upgrader().await;
        let ready = condition_reason(&u, "Ready").as_deref() == Some("InPlaceUpdated");
        let records = u["status"]["hosts"].as_array().cloned().unwrap_or_default();
        let mut fresh = false;
        for r in &records {
            let key = (
                r["host"].as_str().unwrap_or_default().to_owned(),
                r["phase"].as_str().unwrap_or_default().to_owned(),
            );
            if !seen.contains(&key) {
                seen.push(key);
                fresh = true;
            }
        }
        // Never two hosts in flight in the persisted records either.
        let in_flight: Vec<&str> = records
            .iter()
            .filter(|r| r["phase"] != "Uncordoned")
            .filter_map(|r| r["host"].as_str())
            .collect();
        assert!(in_flight.len() <= 1, "two hosts in flight: {records:?}");
        if ready {
            break;
        }
        if fresh {
            manager.restart().unwrap();
            manager.wait_ready(Duration::from_secs(60)).await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "not finished after {LONG:?}; phases seen {seen:?}\nstatus {:#}\nmonitor {:?}\nagent {:?}\nlog:\n{}",
            u["status"],
            bed.monitor.log(),
            bed.agent.log(),
            manager.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The same host continued after every restart: each host's phases form one run, the
    // control plane's first, and each went through the whole flow.
    let cp = bed.fleet.hosts[0].host();
    let worker = bed.fleet.hosts[1].host();
    let order: Vec<&str> = seen.iter().map(|(h, _)| h.as_str()).collect();
    let first_worker = order.iter().position(|h| *h == worker).unwrap();
    assert!(
        order[..first_worker].iter().all(|h| *h == cp)
            && order[first_worker..].iter().all(|h| *h == worker),
        "hosts interleaved across restarts: {seen:?}"
    );
    assert!(
        seen[..first_worker].iter().any(|(_, p)| p == "Uncordoned"),
        "the worker started before the control plane finished: {seen:?}"
    );
    assert!(
        manager.restarts() >= 6,
        "only {} restarts: {seen:?}",
        manager.restarts()
    );
    check_budget(&bed.monitor.log(), 1).unwrap();
    let agent = bed.agent.log();
    assert_eq!(
        agent.pending.len(),
        2,
        "a host labelled pending twice: {agent:?}"
    );
    assert!(
        agent
            .pending
            .iter()
            .all(|p| p.node_cordoned && p.pods_left.is_empty()),
        "{agent:?}"
    );
    assert_eq!(agent.updates.len(), 2, "{agent:?}");
    assert!(agent.violations.is_empty(), "{agent:?}");
    for host in &bed.fleet.hosts {
        let node = bed.workload.node(&host.node()).await.unwrap();
        assert!(!cordoned(&node));
        assert_eq!(node_os_image(&node), Some(bed.new.os_release().as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_cluster_starts_no_host_until_unpaused() {
    let env = e2e_env!("a_paused_cluster_starts_no_host_until_unpaused");
    let hosts = two_hosts();
    let Some(bed) = bed(env, hosts, |c| c).await else {
        return;
    };
    let manager = bed
        .start_in_place(json!({"spec": {"paused": true}}), json!({}))
        .await;

    let u = bed.wait_reason(&manager, "Blocked", "ClusterPaused").await;
    assert_eq!(condition_status(&u, "Blocked").as_deref(), Some("True"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = bed.monitor.log();
    assert!(
        seen.order.is_empty(),
        "a host was taken out of service while paused: {seen:?}"
    );
    assert!(seen.pending_order.is_empty(), "{seen:?}");
    let u = bed.upgrader().await;
    assert!(
        u["status"]["hosts"].as_array().is_none_or(Vec::is_empty),
        "a host selected while paused: {u:#}"
    );
    assert!(bed.agent.log().violations.is_empty());

    // Unpaused, the update runs.
    support::clusters(&bed.env, "v1beta1")
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    // Cluster API observes the new generation.
    support::finish(&bed.env, "v1beta1", CLUSTER, "v1.31.1")
        .await
        .unwrap();
    bed.wait_upgrader("Ready=InPlaceUpdated", LONG, &manager, |u| {
        condition_reason(u, "Ready").as_deref() == Some("InPlaceUpdated")
    })
    .await;
    let seen = bed.monitor.log();
    check_budget(&seen, 1).unwrap();
    assert_eq!(seen.order.len(), 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_without_a_spare_host_is_blocked_naming_the_pool() {
    let env = e2e_env!("a_rollout_without_a_spare_host_is_blocked_naming_the_pool");
    let hosts = two_hosts();
    let Some(bed) = bed(env, hosts, |c| c).await else {
        return;
    };
    // A newer Kubernetes version: a topology step (a rollout), not an in-place update.
    let next = OsImage::of_version("v1.32.2", 3);
    bed.upgrade_to(&next, "v1.32.2", json!({}), json!({})).await;
    let ns = bed.env.namespace.clone();
    let client = bed.env.client.clone();
    // Not spares: installed but associated; matching but not installed.
    let mut associated = labels(&[(POOL_LABEL, "md-a"), (INSTALLED, "true")]);
    associated.insert(MACHINE_NAME.into(), "m-elsewhere".into());
    create_elemental_host(&client, &ns, "host-associated", &associated, None)
        .await
        .unwrap();
    create_elemental_host(
        &client,
        &ns,
        "host-uninstalled",
        &labels(&[(POOL_LABEL, "md-a")]),
        None,
    )
    .await
    .unwrap();
    // The control plane's pool has a spare; md-a has none.
    create_elemental_host(
        &client,
        &ns,
        "host-spare-cp",
        &labels(&[(POOL_LABEL, CONTROL_PLANE_POOL), (INSTALLED, "true")]),
        None,
    )
    .await
    .unwrap();
    let before = bed.cluster_resource_version().await;
    let manager = bed.env.start_manager().await.unwrap();

    let u = bed.wait_reason(&manager, "Blocked", "NoSpareHost").await;
    assert_eq!(condition_status(&u, "Blocked").as_deref(), Some("True"));
    let message = condition_message(&u, "Blocked").unwrap_or_default();
    assert!(
        message.contains("md-a"),
        "the message does not name the pool: {message}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        bed.cluster_resource_version().await,
        before,
        "the Cluster was written"
    );
    let t = support::topology(&bed.env, "v1beta1", CLUSTER)
        .await
        .unwrap();
    assert_eq!(t["version"], "v1.31.1");

    // A spare for md-a: the step is written.
    create_elemental_host(
        &client,
        &ns,
        "host-spare-md-a",
        &labels(&[(POOL_LABEL, "md-a"), (INSTALLED, "true")]),
        None,
    )
    .await
    .unwrap();
    let t = match support::wait_version(&bed.env, "v1beta1", CLUSTER, "v1.32.2").await {
        Ok(t) => t,
        Err(e) => panic!(
            "{e:#}\nupgrader: {:#}\nlog:\n{}",
            bed.upgrader().await["status"],
            manager.log_tail()
        ),
    };
    assert_eq!(support::variable(&t, "image"), Some(&json!(next.uri)));
    // No host was touched in place.
    assert!(bed.monitor.log().order.is_empty());
    assert!(bed.agent.log().pending.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_step_waits_until_every_node_runs_the_build_its_machine_names() {
    let env = e2e_env!("a_topology_step_waits_until_every_node_runs_the_build_its_machine_names");
    let Some(bed) = bed(env, two_hosts(), |c| c).await else {
        return;
    };
    let ns = bed.env.namespace.clone();
    let client = bed.env.client.clone();
    // A spare for each pool: only the booted images stand in the way of the step.
    for pool in [CONTROL_PLANE_POOL, "md-a"] {
        create_elemental_host(
            &client,
            &ns,
            &format!("host-spare-{pool}"),
            &labels(&[(POOL_LABEL, pool), (INSTALLED, "true")]),
            None,
        )
        .await
        .unwrap();
    }
    // The image the ElementalMachines name, stamped as another build than the Nodes booted
    // (an update that fell back, reporting ready all the same).
    support::static_image(&bed.env, "os-old", "v1.31.1", &bed.old.uri)
        .await
        .unwrap();
    let images: Api<MachineImage> = bed.env.api();
    let stamp = |stamp: &str| {
        Patch::Merge(json!({"metadata": {"annotations": {OS_IMAGE_STAMP_ANNOTATION: stamp}}}))
    };
    images
        .patch("os-old", &PatchParams::default(), &stamp("os-v1-31-1-b9"))
        .await
        .unwrap();
    let next = OsImage::of_version("v1.32.2", 3);
    bed.upgrade_to(&next, "v1.32.2", json!({}), json!({})).await;
    let before = bed.cluster_resource_version().await;
    let manager = bed.env.start_manager().await.unwrap();

    let u = bed
        .wait_reason(&manager, "Blocked", "BootedImageMismatch")
        .await;
    let message = condition_message(&u, "Blocked").unwrap_or_default();
    assert!(
        message.contains("host-cp0") && message.contains("os-v1-31-1-b9"),
        "{message}"
    );
    assert_eq!(u["status"]["nextStep"]["version"], "v1.32.2", "{u:#}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        bed.cluster_resource_version().await,
        before,
        "a step was written over a host running another build"
    );

    // The Nodes run the build the image names after all: the step is written.
    images
        .patch("os-old", &PatchParams::default(), &stamp(&bed.old.stamp))
        .await
        .unwrap();
    let t = match support::wait_version(&bed.env, "v1beta1", CLUSTER, "v1.32.2").await {
        Ok(t) => t,
        Err(e) => panic!(
            "{e:#}\nupgrader: {:#}\nlog:\n{}",
            bed.upgrader().await["status"],
            manager.log_tail()
        ),
    };
    assert_eq!(support::variable(&t, "image"), Some(&json!(next.uri)));
    assert!(bed.monitor.log().order.is_empty(), "a host was touched");
    bed.assert_blocked_warning("BootedImageMismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_block_and_the_retry_hosts_annotation_clears_the_block() {
    let env = e2e_env!("exhausted_retries_block_and_the_retry_hosts_annotation_clears_the_block");
    let hosts = two_hosts();
    // Two failed tries, each shown for 4 s (two polls), then the third try works.
    let failing = Behaviour::Fail {
        times: 2,
        hold: Duration::from_secs(4),
    };
    let Some(bed) = bed(env, hosts, |c| c.behaving("host-cp0", failing)).await else {
        return;
    };
    let (cp, worker) = (bed.fleet.hosts[0].clone(), bed.fleet.hosts[1].clone());
    let manager = bed.start_in_place(json!({}), json!({})).await;

    // retries: 1 allows one failure; the second exhausts them.
    let u = bed
        .wait_reason(&manager, "Blocked", "OSVersionReconciliationFailed")
        .await;
    let r = record(&u, &cp.host()).unwrap().clone();
    assert_eq!(r["phase"], "RetriesExhausted", "{r}");
    assert_eq!(r["attempts"], 2, "{r}");
    assert!(
        record(&u, &worker.host()).is_none(),
        "a second host started: {u:#}"
    );
    assert!(cordoned(&bed.workload.node(&cp.node()).await.unwrap()));
    assert_eq!(bed.agent.log().failures.len(), 2);

    // The agent's next try works meanwhile; still blocked until an operator says otherwise.
    e2e::eventually("the third try", Duration::from_secs(30), || async {
        Ok((!bed.agent.log().updates.is_empty()).then_some(()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let u = bed.upgrader().await;
    assert_eq!(phase(&u, &cp.host()).as_deref(), Some("RetriesExhausted"));
    assert!(!cordoned(&bed.workload.node(&worker.node()).await.unwrap()));

    // A new retry-hosts value clears the block: the host is finished and put back in service,
    // then the worker goes.
    support::upgraders(&bed.env, CCCU)
        .patch(
            UPGRADER,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {api::v1alpha1::RETRY_HOSTS_ANNOTATION: "1"}}}),
            ),
        )
        .await
        .unwrap();
    let u = bed
        .wait_upgrader("Ready=InPlaceUpdated", LONG, &manager, |u| {
            condition_reason(u, "Ready").as_deref() == Some("InPlaceUpdated")
        })
        .await;
    assert_eq!(u["status"]["retryHosts"], "1", "{:#}", u["status"]);
    assert_ne!(
        condition_status(&u, "Blocked").as_deref(),
        Some("True"),
        "{:#}",
        u["status"]
    );
    for host in &bed.fleet.hosts {
        let node = bed.workload.node(&host.node()).await.unwrap();
        assert!(
            !cordoned(&node),
            "{} left cordoned after the retry; status: {:#}",
            host.node(),
            u["status"]
        );
        assert_eq!(node_os_image(&node), Some(bed.new.os_release().as_str()));
    }
    check_budget(&bed.monitor.log(), 1).unwrap();
}

// ---------------------------------------------------------------------------------------------
// A hostile kubeconfig Secret

/// Replaces the Cluster's `<cluster>-kubeconfig` Secret's `value` with `kubeconfig`.
async fn set_kubeconfig(bed: &Bed, kubeconfig: &str) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = bed.env.api();
    let value = k8s_openapi::ByteString(kubeconfig.as_bytes().to_vec());
    secrets
        .patch(
            &format!("{CLUSTER}-kubeconfig"),
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"value": value}})),
        )
        .await
        .unwrap();
}

/// Changes the upgrader's spec (a new generation), so it reconciles now rather than at its poll.
async fn nudge(bed: &Bed, drain_timeout: &str) {
    support::upgraders(&bed.env, CCCU)
        .patch(
            UPGRADER,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"inPlace": {"drainTimeout": drain_timeout}}})),
        )
        .await
        .unwrap();
}

/// A kubeconfig for the tenant's `server`, with a CA that would verify, whose user is `user`
/// (YAML lines at the user's indent).
fn hostile_kubeconfig(bed: &Bed, server: &str, user: &str) -> String {
    let good: Value = serde_yaml::from_slice(&bed.workload.kubeconfig).unwrap();
    let ca = good["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap()
        .to_owned();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: w
  cluster:
    server: {server}
    insecure-skip-tls-verify: false
    certificate-authority-data: {ca}
contexts:
- name: w
  context: {{cluster: w, user: w}}
current-context: w
users:
- name: w
  user:
{user}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_workload_kubeconfig_is_refused_before_any_request() {
    let env = e2e_env!("a_hostile_workload_kubeconfig_is_refused_before_any_request");
    let Some(bed) = bed(env, two_hosts(), |c| c).await else {
        return;
    };
    // The tenant's listener counts every connection it is offered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    let listening = tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let scratch = tempfile::tempdir().unwrap();
    let token_file = scratch.path().join("token");
    std::fs::write(&token_file, "manager-token-marker").unwrap();
    let marker = scratch.path().join("MARKER");

    // tokenFile: the manager would send whatever that file holds to the tenant's server.
    let with_token_file = hostile_kubeconfig(
        &bed,
        &server,
        &format!(
            "    token: inline\n    tokenFile: {}\n",
            token_file.display()
        ),
    );
    set_kubeconfig(&bed, &with_token_file).await;
    let manager = bed.start_in_place(json!({}), json!({})).await;
    let u = bed
        .wait_reason(&manager, "Blocked", "InvalidWorkloadKubeconfig")
        .await;
    let message = condition_message(&u, "Blocked").unwrap_or_default();
    assert!(message.contains("users[w].user.tokenFile"), "{message}");
    assert_eq!(condition_status(&u, "Blocked").as_deref(), Some("True"));

    // exec: the manager would run the tenant's command in its own container.
    let with_exec = hostile_kubeconfig(
        &bed,
        &server,
        &format!(
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [\"-c\", \"touch {}\"]\n",
            marker.display()
        ),
    );
    set_kubeconfig(&bed, &with_exec).await;
    nudge(&bed, "31s").await;
    bed.wait_upgrader("the exec kubeconfig refused", LONG, &manager, |u| {
        condition_message(u, "Blocked").is_some_and(|m| m.contains("users[w].user.exec"))
    })
    .await;

    // Plain http, even with an inline token.
    let plain = hostile_kubeconfig(
        &bed,
        &server.replace("https", "http"),
        "    token: inline\n",
    );
    set_kubeconfig(&bed, &plain).await;
    nudge(&bed, "32s").await;
    bed.wait_upgrader("the http kubeconfig refused", LONG, &manager, |u| {
        condition_message(u, "Blocked").is_some_and(|m| m.contains("clusters[w].cluster.server"))
    })
    .await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the manager connected to the tenant's server"
    );
    assert!(!marker.exists(), "the manager ran the kubeconfig's command");
    let u = bed.upgrader().await;
    for host in &bed.fleet.hosts {
        assert!(record(&u, &host.host()).is_none(), "a host started: {u:#}");
        assert!(!cordoned(&bed.workload.node(&host.node()).await.unwrap()));
    }

    // Cluster API's own shape (inline CA, verified) works, and the update starts.
    set_kubeconfig(&bed, std::str::from_utf8(&bed.workload.kubeconfig).unwrap()).await;
    nudge(&bed, "33s").await;
    bed.wait_upgrader("the first host selected", LONG, &manager, |u| {
        record(u, &bed.fleet.hosts[0].host()).is_some()
    })
    .await;
    bed.assert_blocked_warning("InvalidWorkloadKubeconfig")
        .await;
    listening.abort();
}

// ---------------------------------------------------------------------------------------------
// Drain rules, release, the re-check before `pending`, and one failing write

/// The `cordoned-by` mark on a Node, if any.
fn cordoned_by(node: &k8s_openapi::api::core::v1::Node) -> Option<String> {
    node.annotations().get(CORDONED_BY_ANNOTATION).cloned()
}

/// Whether the pod is still there and not being deleted.
async fn running(bed: &Bed, name: &str) -> bool {
    bed.workload
        .pods()
        .get_opt(name)
        .await
        .unwrap()
        .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
}

async fn patch_upgrader(bed: &Bed, spec: Value) {
    support::upgraders(&bed.env, CCCU)
        .patch(
            UPGRADER,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_a_controller_and_one_with_empty_dir_survive_the_drain() {
    let env = e2e_env!("a_pod_without_a_controller_and_one_with_empty_dir_survive_the_drain");
    let Some(bed) = bed(env, two_hosts(), |c| c).await else {
        return;
    };
    let (cp, worker) = (bed.fleet.hosts[0].clone(), bed.fleet.hosts[1].clone());
    let none = labels(&[("role", "precious")]);
    let w = &bed.workload;
    w.create_pod("bare", &cp.node(), PodKind::Bare, &none)
        .await
        .unwrap();
    w.create_pod("scratch", &cp.node(), PodKind::EmptyDir, &none)
        .await
        .unwrap();
    let manager = bed.start_in_place(json!({}), json!({})).await;

    let u = bed.wait_reason(&manager, "Blocked", "DrainRefused").await;
    let message = condition_message(&u, "Blocked").unwrap_or_default();
    assert!(
        message.contains(&format!("{}/bare", e2e::elemental::WORKLOAD_NAMESPACE))
            && message.contains("spec.inPlace.drain.force"),
        "{message}"
    );
    assert_eq!(
        phase(&u, &cp.host()).as_deref(),
        Some("DrainRefused"),
        "{u:#}"
    );
    // Cordoned first, with our mark; nothing evicted while a pod is refused, not even the
    // ordinary one; no second host; never `pending`.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let node = w.node(&cp.node()).await.unwrap();
    assert!(cordoned(&node));
    assert_eq!(cordoned_by(&node), Some(format!("{CCCU}/{UPGRADER}")));
    for pod in ["bare", "scratch", &format!("app-{}", cp.node())] {
        assert!(running(&bed, pod).await, "{pod} was evicted");
    }
    let u = bed.upgrader().await;
    assert!(
        record(&u, &worker.host()).is_none(),
        "a second host started: {u:#}"
    );
    assert!(bed.monitor.log().pending_order.is_empty());
    bed.assert_blocked_warning("DrainRefused").await;

    // The bare pod goes and emptyDir data may be deleted: the drain goes on by itself (no
    // retry-hosts), the emptyDir pod is evicted, and the update finishes.
    w.pods()
        .delete("bare", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    patch_upgrader(
        &bed,
        json!({"inPlace": {"drain": {"deleteEmptyDirData": true}}}),
    )
    .await;
    bed.wait_reason(&manager, "Ready", "InPlaceUpdated").await;
    assert!(w.pods().get_opt("scratch").await.unwrap().is_none());
    let node = w.node(&cp.node()).await.unwrap();
    assert!(!cordoned(&node) && cordoned_by(&node).is_none(), "{node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_image_deleted_while_a_budget_holds_the_drain_releases_the_host() {
    let env = e2e_env!("the_target_image_deleted_while_a_budget_holds_the_drain_releases_the_host");
    let Some(bed) = bed(env, two_hosts(), |c| c).await else {
        return;
    };
    let cp = bed.fleet.hosts[0].clone();
    let guard = labels(&[("guard", "db")]);
    for i in 0..2 {
        bed.workload
            .create_pod(&format!("db-{i}"), &cp.node(), PodKind::Ordinary, &guard)
            .await
            .unwrap();
    }
    bed.workload.create_pdb("db", &guard, 2).await.unwrap();
    let manager = bed
        .start_in_place(json!({}), json!({"inPlace": {"drainTimeout": "10m"}}))
        .await;
    bed.wait_upgrader("the control plane held in its drain", LONG, &manager, |u| {
        phase(u, &cp.host()).as_deref() == Some("Cordoned")
    })
    .await;
    e2e::eventually("the Node cordoned", LONG, || async {
        Ok(cordoned(&bed.workload.node(&cp.node()).await?).then_some(()))
    })
    .await
    .unwrap();

    let images: Api<MachineImage> = bed.env.api();
    images
        .delete("os-new", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    let u = bed
        .wait_upgrader("the host released", LONG, &manager, |u| {
            phase(u, &cp.host()).as_deref() == Some("Released")
        })
        .await;
    let node = bed.workload.node(&cp.node()).await.unwrap();
    assert!(!cordoned(&node), "released but left cordoned: {node:?}");
    assert_eq!(cordoned_by(&node), None);
    assert!(
        record(&u, &cp.host()).unwrap()["finished"].is_string(),
        "{u:#}"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = bed.env.api();
    let events = events
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("InPlaceHostReleased")),
        "{events:?}"
    );
    // The ElementalMachine never got the image, and the guarded pods are still there.
    let em = elemental_machines(&bed.env.client, &bed.env.namespace)
        .get(&cp.elemental_machine())
        .await
        .unwrap();
    assert_eq!(image_uri(&em), Some(bed.old.uri.as_str()));
    for i in 0..2 {
        assert!(running(&bed, &format!("db-{i}")).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_host_uncordoned_by_hand_takes_a_pod_and_is_not_labelled_pending() {
    let env = e2e_env!("a_held_host_uncordoned_by_hand_takes_a_pod_and_is_not_labelled_pending");
    let Some(bed) = bed(env, two_hosts(), |c| c).await else {
        return;
    };
    let cp = bed.fleet.hosts[0].clone();
    let w = &bed.workload;
    let guard = labels(&[("guard", "db")]);
    for i in 0..2 {
        w.create_pod(&format!("db-{i}"), &cp.node(), PodKind::Ordinary, &guard)
            .await
            .unwrap();
    }
    w.create_pdb("db", &guard, 2).await.unwrap();
    let manager = bed
        .start_in_place(json!({}), json!({"inPlace": {"drainTimeout": "10m"}}))
        .await;
    bed.wait_upgrader("the control plane held in its drain", LONG, &manager, |u| {
        phase(u, &cp.host()).as_deref() == Some("Cordoned")
    })
    .await;
    // Paused, the drain finishes once the budget goes, and the host is held at `Drained`.
    patch_upgrader(&bed, json!({"paused": true})).await;
    w.pdbs()
        .delete("db", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    bed.wait_upgrader("the host held drained", LONG, &manager, |u| {
        phase(u, &cp.host()).as_deref() == Some("Drained")
    })
    .await;
    // An operator uncordons the Node, and it takes a pod that a budget keeps.
    w.nodes()
        .patch(
            &cp.node(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await
        .unwrap();
    let late = labels(&[("guard", "late")]);
    w.create_pod("late", &cp.node(), PodKind::Ordinary, &late)
        .await
        .unwrap();
    w.create_pdb("late", &late, 1).await.unwrap();
    patch_upgrader(&bed, json!({"paused": false})).await;

    // Cordoned and drained again, never `pending` while the pod runs.
    bed.wait_upgrader("the host back to its drain", LONG, &manager, |u| {
        phase(u, &cp.host()).as_deref() == Some("Cordoned")
    })
    .await;
    let hosts = elemental_hosts(&bed.env.client, &bed.env.namespace);
    for _ in 0..10 {
        assert_ne!(
            update_label(&hosts.get(&cp.host()).await.unwrap()),
            Some("pending")
        );
        assert!(running(&bed, "late").await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let node = w.node(&cp.node()).await.unwrap();
    assert!(cordoned(&node));
    assert_eq!(cordoned_by(&node), Some(format!("{CCCU}/{UPGRADER}")));
    assert!(bed.agent.log().pending.is_empty(), "{:?}", bed.agent.log());
    // The budget goes: the host is labelled `pending` only once the pod is gone.
    w.pdbs()
        .delete("late", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    bed.wait_upgrader("the host past pending", LONG, &manager, |u| {
        matches!(
            phase(u, &cp.host()).as_deref(),
            Some("Pending" | "Done" | "Verified" | "Uncordoned")
        )
    })
    .await;
    let seen = bed.agent.log();
    assert_eq!(seen.pending.len(), 1, "{seen:?}");
    assert!(
        seen.pending[0].node_cordoned && seen.pending[0].pods_left.is_empty(),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_eviction_does_not_stop_another_hosts_uncordon() {
    let env = e2e_env!("a_failing_eviction_does_not_stop_another_hosts_uncordon");
    let hosts = vec![Host::worker("w0", "md-a"), Host::worker("w1", "md-a")];
    let Some(bed) = bed(env, hosts, |c| c).await else {
        return;
    };
    let (w0, w1) = (bed.fleet.hosts[0].clone(), bed.fleet.hosts[1].clone());
    // Every eviction in the namespace `flaky` fails with a server error: its admission webhook
    // cannot be reached and fails closed.
    let client = bed.workload.client.clone();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "flaky", "labels": {"flaky": "true"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let webhooks: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(client.clone());
    webhooks
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "flaky-evictions"},
                "webhooks": [{
                    "name": "evictions.flaky.example",
                    "clientConfig": {"url": "https://127.0.0.1:9/validate"},
                    "rules": [{
                        "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                        "resources": ["pods/eviction"], "scope": "Namespaced",
                    }],
                    "namespaceSelector": {"matchLabels": {"flaky": "true"}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 1,
                }],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "flaky");
    let pod = json!({
        "metadata": {"name": "stuck", "namespace": "flaky", "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "stuck",
            "uid": "6a1f2c3e-0000-4000-8000-000000000003", "controller": true,
        }]},
        "spec": {
            "nodeName": w0.node(),
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
    });
    pods.create(
        &kube::api::PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
    match pods.evict("stuck", &EvictParams::default()).await {
        Err(kube::Error::Api(s)) => assert!(s.code >= 500, "{s:?}"),
        other => panic!("the eviction went through: {other:?}"),
    }

    let manager = bed
        .start_in_place(
            json!({}),
            json!({"inPlace": {"maxUnavailable": 2, "drainTimeout": "10m"}}),
        )
        .await;
    // w0's drain fails at every pass, before w1's writes in the same pass; w1 finishes anyway.
    let u = bed
        .wait_upgrader("w1 uncordoned", LONG, &manager, |u| {
            phase(u, &w1.host()).as_deref() == Some("Uncordoned")
        })
        .await;
    assert_eq!(phase(&u, &w0.host()).as_deref(), Some("Cordoned"), "{u:#}");
    let node = bed.workload.node(&w1.node()).await.unwrap();
    assert!(!cordoned(&node) && cordoned_by(&node).is_none(), "{node:?}");
    assert!(cordoned(&bed.workload.node(&w0.node()).await.unwrap()));
    assert!(pods.get_opt("stuck").await.unwrap().is_some());
    // The uncordon is a no-op on a Node that does not carry the caller's mark.
    kubernetes_upgrader::controllers::upgrader::in_place::workload::uncordon(
        &client,
        &w0.node(),
        "InClusterUpgradeAutomation/other",
        "e2e-probe",
    )
    .await
    .unwrap();
    let node = bed.workload.node(&w0.node()).await.unwrap();
    assert!(cordoned(&node), "{node:?}");
    assert_eq!(cordoned_by(&node), Some(format!("{CCCU}/{UPGRADER}")));
    // The failure is reported, once per failing reconcile, as the host write it was.
    let warnings = bed.env.warnings(UPGRADER).await.unwrap();
    assert!(
        warnings.iter().any(|e| matches!(
            e.reason.as_deref(),
            Some("ErrorUpdatingHost" | "WriteHost")
        ) && e.note.as_deref().is_some_and(|n| n.contains(&w0.node()))),
        "{:?}",
        warnings
            .iter()
            .map(|e| (&e.reason, &e.note))
            .collect::<Vec<_>>()
    );
}
