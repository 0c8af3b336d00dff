//! A monitor of both clusters: which hosts are out of service at every change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::crds::{elemental_hosts, update_label};
use super::fleet::{Fleet, Host};
use super::tasks::{Tasks, lock};
use super::workload::cordoned;

/// What the [`Monitor`] saw: which hosts were out of service (Node cordoned or host labelled
/// `pending`) at every change.
#[derive(Clone, Debug, Default)]
pub struct MonitorLog {
    /// Hosts whose Node is cordoned now.
    pub cordoned: BTreeSet<String>,
    /// Hosts labelled `pending` now.
    pub pending: BTreeSet<String>,
    /// The out-of-service set after every change, with the time since the start.
    pub timeline: Vec<(Duration, BTreeSet<String>)>,
    /// The largest out-of-service set seen.
    pub max_in_flight: usize,
    /// Hosts in the order they first went out of service.
    pub order: Vec<String>,
    /// Hosts in the order they were first labelled `pending`.
    pub pending_order: Vec<String>,
    /// Hosts ever cordoned.
    pub ever_cordoned: BTreeSet<String>,
    /// Errors from the watches.
    pub errors: Vec<String>,
}

impl MonitorLog {
    /// The hosts out of service now.
    pub fn in_flight(&self) -> BTreeSet<String> {
        self.cordoned.union(&self.pending).cloned().collect()
    }

    /// The first moment more than `limit` hosts were out of service, if any.
    pub fn first_over(&self, limit: usize) -> Option<&(Duration, BTreeSet<String>)> {
        self.timeline.iter().find(|(_, set)| set.len() > limit)
    }

    fn record(&mut self, at: Duration) {
        let now = self.in_flight();
        if self.timeline.last().is_some_and(|(_, last)| *last == now) {
            return;
        }
        for host in &now {
            if !self.order.contains(host) {
                self.order.push(host.clone());
            }
        }
        self.max_in_flight = self.max_in_flight.max(now.len());
        self.timeline.push((at, now));
    }
}

/// Watches the workload Nodes and the management ElementalHosts of a [`Fleet`] and records every
/// change of the set of hosts out of service, so a test can assert that never more than the
/// budget were at once, and in which order they went.
#[derive(Debug)]
pub struct Monitor {
    log: Arc<Mutex<MonitorLog>>,
    _tasks: Tasks,
}

impl Monitor {
    /// Starts both watches.
    pub fn spawn(management: &Client, workload: &Client, fleet: &Fleet) -> Self {
        let log = Arc::new(Mutex::new(MonitorLog::default()));
        let started = Instant::now();
        let mut tasks = Tasks::default();
        let node_to_host: BTreeMap<String, String> =
            fleet.hosts.iter().map(|h| (h.node(), h.host())).collect();
        let nodes: Api<Node> = Api::all(workload.clone());
        tasks.spawn(watch_into(nodes, log.clone(), "Node", move |log, node| {
            let Some(host) = node_to_host.get(&node.name_any()) else {
                return;
            };
            if cordoned(&node) {
                log.cordoned.insert(host.clone());
                log.ever_cordoned.insert(host.clone());
            } else {
                log.cordoned.remove(host);
            }
            log.record(started.elapsed());
        }));
        let hosts = elemental_hosts(management, &fleet.namespace);
        let known: BTreeSet<String> = fleet.hosts.iter().map(Host::host).collect();
        tasks.spawn(watch_into(
            hosts,
            log.clone(),
            "ElementalHost",
            move |log, host| {
                let name = host.name_any();
                if !known.contains(&name) {
                    return;
                }
                if update_label(&host) == Some("pending") {
                    if !log.pending_order.contains(&name) {
                        log.pending_order.push(name.clone());
                    }
                    log.pending.insert(name);
                } else {
                    log.pending.remove(&name);
                }
                log.record(started.elapsed());
            },
        ));
        Self { log, _tasks: tasks }
    }

    /// What it saw so far.
    pub fn log(&self) -> MonitorLog {
        lock(&self.log).clone()
    }
}

/// Watches `api` (backing off on errors) and hands every object seen to `apply` under the lock.
async fn watch_into<K>(
    api: Api<K>,
    log: Arc<Mutex<MonitorLog>>,
    what: &'static str,
    mut apply: impl FnMut(&mut MonitorLog, K) + Send + 'static,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        match stream.try_next().await {
            Ok(Some(watcher::Event::Apply(object) | watcher::Event::InitApply(object))) => {
                apply(&mut lock(&log), object);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => lock(&log).errors.push(format!("{what} watch: {e}")),
        }
    }
}

/// Fails unless `log` never had more than `limit` hosts out of service at once.
pub fn check_budget(log: &MonitorLog, limit: usize) -> Result<()> {
    if let Some((at, set)) = log.first_over(limit) {
        bail!(
            "{} hosts out of service at once at {at:?}: {set:?} (budget {limit}); timeline: {:?}",
            set.len(),
            log.timeline
        );
    }
    Ok(())
}
