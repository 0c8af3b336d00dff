//! The Elemental agent and host controller, stood in for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::crds::{elemental_hosts, elemental_machines, image_uri, update_label};
use super::fleet::Fleet;
use super::image::{OsImage, os_release};
use super::kubelets::heartbeat;
use super::tasks::{Tasks, lock};
use super::workload::{cordoned, now_json, pods_on};
use super::{IN_PLACE_UPDATE, OS_VERSION_READY, OS_VERSION_RECONCILIATION_FAILED, evictable};

/// How the agent stand-in updates one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Boots the new image: the Node reports its stamp; then `done`.
    Normal,
    /// Boot assessment falls back: the Node keeps reporting the OLD stamp, yet the host is
    /// labelled `done` with `OSVersionReady` True (`upgrade-safety.md` §3.3, trap 1).
    Fallback,
    /// The first `times` tries fail (`OSVersionReady` False, `OSVersionReconciliationFailed`,
    /// the label left `pending`), each failure shown for `hold` before the next try
    /// (`WaitingForOSReconcile`); then it boots the new image.
    Fail {
        /// Failed tries before the one that works.
        times: u32,
        /// How long each failure and each next try is shown.
        hold: Duration,
    },
    /// The host goes down for its update and never comes back: no new boot, no `done`.
    NeverBack,
}

/// A host the agent saw turn `pending`, with the state of its Node at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSeen {
    /// The ElementalHost.
    pub host: String,
    /// Time since the agent started.
    pub at: Duration,
    /// Whether its Node was cordoned then.
    pub node_cordoned: bool,
    /// The evictable pods (not DaemonSet, not mirror) still bound to the Node then, with
    /// ` (terminating)` after those being deleted.
    pub pods_left: Vec<String>,
}

/// One OS update the agent carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The ElementalHost.
    pub host: String,
    /// The ElementalMachine's `imageUri` it updated to.
    pub image: String,
    /// The stamp the Node reports afterwards.
    pub booted_stamp: String,
    /// Time since the agent started.
    pub at: Duration,
}

/// What the agent stand-in saw and did.
#[derive(Clone, Debug, Default)]
pub struct AgentLog {
    /// Every turn of a host's label to `pending`, in order.
    pub pending: Vec<PendingSeen>,
    /// Every update, in order.
    pub updates: Vec<Update>,
    /// Hosts that went down for an update and never came back ([`Behaviour::NeverBack`]).
    pub gone: Vec<String>,
    /// OS update failures reported, as (host, try).
    pub failures: Vec<(String, u32)>,
    /// Contract breaches it saw: an ElementalMachine's image changed while its host was not
    /// labelled `pending`.
    pub violations: Vec<String>,
    /// Errors it met.
    pub errors: Vec<String>,
}

/// One host as the agent knows it.
#[derive(Clone, Debug)]
struct AgentHost {
    node: String,
    behaviour: Behaviour,
    /// The `imageUri` last reconciled (its correlation ID, in the real agent).
    applied: String,
    /// The stamp the host runs.
    running: String,
    last_label: Option<String>,
    attempt: Option<Instant>,
    failed_at: Option<Instant>,
    failures: u32,
    /// Boots since the start: the Node's bootID is `boot-<node>-<boots>`.
    boots: u32,
}

/// Stands in for the Elemental agent on each host together with the provider's host
/// controller: every 100 ms it reads the ElementalMachines (first) and the ElementalHosts of the
/// namespace. A host labelled `pending` whose ElementalMachine names an `imageUri` other than
/// the one last reconciled gets updated: after `delay`, the Node reports the booted image and
/// its new boot (`osImage` and `bootID`, with a fresh heartbeat, as the kubelet would after the
/// reboot), then the host is
/// labelled `done` with `OSVersionReady` True. [`Behaviour`] sets per host how it goes.
#[derive(Debug)]
pub struct Agent {
    log: Arc<Mutex<AgentLog>>,
    _tasks: Tasks,
}

/// The agent stand-in's configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The management namespace.
    pub namespace: String,
    /// Per ElementalHost: its Node and its behaviour.
    pub hosts: BTreeMap<String, (String, Behaviour)>,
    /// The image every host runs at the start.
    pub current: OsImage,
    /// Every image the agent can boot, by `imageUri`.
    pub stamps: BTreeMap<String, String>,
    /// How long an update takes.
    pub delay: Duration,
}

impl AgentConfig {
    /// Every host of `fleet` behaving [`Behaviour::Normal`], running `current`, able to boot
    /// `images`, with updates of 500 ms.
    pub fn new(fleet: &Fleet, current: &OsImage, images: &[&OsImage]) -> Self {
        Self {
            namespace: fleet.namespace.clone(),
            hosts: fleet
                .hosts
                .iter()
                .map(|h| (h.host(), (h.node(), Behaviour::Normal)))
                .collect(),
            current: current.clone(),
            stamps: images
                .iter()
                .chain(std::iter::once(&current))
                .map(|i| (i.uri.clone(), i.stamp.clone()))
                .collect(),
            delay: Duration::from_millis(500),
        }
    }

    /// With `behaviour` for `host` (its ElementalHost name).
    #[must_use]
    pub fn behaving(mut self, host: &str, behaviour: Behaviour) -> Self {
        if let Some(entry) = self.hosts.get_mut(host) {
            entry.1 = behaviour;
        }
        self
    }
}

impl Agent {
    /// Starts it: `management` reaches the ElementalMachines and hosts, `workload` the Nodes.
    pub fn spawn(management: Client, workload: Client, config: AgentConfig) -> Self {
        let log = Arc::new(Mutex::new(AgentLog::default()));
        let mut hosts: BTreeMap<String, AgentHost> = config
            .hosts
            .iter()
            .map(|(host, (node, behaviour))| {
                (
                    host.clone(),
                    AgentHost {
                        node: node.clone(),
                        behaviour: *behaviour,
                        applied: config.current.uri.clone(),
                        running: config.current.stamp.clone(),
                        last_label: None,
                        attempt: None,
                        failed_at: None,
                        failures: 0,
                        boots: 0,
                    },
                )
            })
            .collect();
        let shared = log.clone();
        let mut tasks = Tasks::default();
        tasks.spawn(async move {
            let started = Instant::now();
            loop {
                let pass = agent_pass(
                    &management,
                    &workload,
                    &config,
                    &mut hosts,
                    &shared,
                    started,
                );
                if let Err(e) = pass.await {
                    lock(&shared).errors.push(format!("{e:#}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { log, _tasks: tasks }
    }

    /// What it saw and did so far.
    pub fn log(&self) -> AgentLog {
        lock(&self.log).clone()
    }
}

async fn agent_pass(
    management: &Client,
    workload: &Client,
    config: &AgentConfig,
    hosts: &mut BTreeMap<String, AgentHost>,
    log: &Mutex<AgentLog>,
    started: Instant,
) -> Result<()> {
    // Machines first: an image seen here was written before the labels read below.
    let machines = elemental_machines(management, &config.namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let images: BTreeMap<String, String> = machines
        .iter()
        .filter_map(|em| {
            let host = em.data["spec"]["hostRef"]["name"].as_str()?;
            Some((host.to_owned(), image_uri(em)?.to_owned()))
        })
        .collect();
    let host_api = elemental_hosts(management, &config.namespace);
    for object in host_api.list(&ListParams::default()).await?.items {
        let name = object.name_any();
        let Some(state) = hosts.get_mut(&name) else {
            continue;
        };
        let label = update_label(&object).map(str::to_owned);
        let pending = label.as_deref() == Some("pending");
        if pending && state.last_label.as_deref() != Some("pending") {
            let seen = observe_node(workload, &state.node).await?;
            lock(log).pending.push(PendingSeen {
                host: name.clone(),
                at: started.elapsed(),
                node_cordoned: seen.0,
                pods_left: seen.1,
            });
        }
        state.last_label.clone_from(&label);
        let Some(image) = images.get(&name).filter(|i| !i.is_empty()) else {
            continue;
        };
        if *image == state.applied {
            continue;
        }
        if !pending {
            let violation = format!(
                "ElementalMachine of {name} names {image} while the host is labelled {label:?}"
            );
            let mut log = lock(log);
            if !log.violations.contains(&violation) {
                log.violations.push(violation);
            }
            continue;
        }
        let attempt = *state.attempt.get_or_insert_with(Instant::now);
        if attempt.elapsed() < config.delay {
            continue;
        }
        if let Behaviour::Fail { times, hold } = state.behaviour {
            match state.failed_at {
                // The failure stays reported for `hold`.
                Some(at) if at.elapsed() < hold => continue,
                Some(_) => {
                    // The next try begins, and takes `hold`.
                    state.failed_at = None;
                    state.attempt = Some(Instant::now() + hold.saturating_sub(config.delay));
                    os_version_ready(&host_api, &name, false, "WaitingForOSReconcile").await?;
                    continue;
                }
                None if state.failures < times => {
                    state.failures += 1;
                    state.failed_at = Some(Instant::now());
                    lock(log).failures.push((name.clone(), state.failures));
                    os_version_ready(&host_api, &name, false, OS_VERSION_RECONCILIATION_FAILED)
                        .await?;
                    continue;
                }
                None => {}
            }
        }
        if state.behaviour == Behaviour::NeverBack {
            if !lock(log).gone.contains(&name) {
                lock(log).gone.push(name.clone());
            }
            continue;
        }
        let booted = match state.behaviour {
            Behaviour::Fallback => state.running.clone(),
            _ => config
                .stamps
                .get(image)
                .cloned()
                .with_context(|| format!("the agent stand-in knows no stamp for {image}"))?,
        };
        // A reboot, into the new image or (a fallback) the old one: a new boot ID.
        state.boots += 1;
        let boot = format!("boot-{}-{}", state.node, state.boots);
        heartbeat(
            workload,
            &state.node,
            Some((os_release(&booted).as_str(), boot.as_str())),
        )
        .await?;
        os_version_ready(&host_api, &name, true, "").await?;
        host_api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {IN_PLACE_UPDATE: "done"}}})),
            )
            .await?;
        state.applied.clone_from(image);
        state.running.clone_from(&booted);
        state.attempt = None;
        state.failed_at = None;
        state.last_label = Some("done".into());
        lock(log).updates.push(Update {
            host: name,
            image: image.clone(),
            booted_stamp: booted,
            at: started.elapsed(),
        });
    }
    Ok(())
}

/// Whether `node` is cordoned, and its evictable pods.
async fn observe_node(workload: &Client, node: &str) -> Result<(bool, Vec<String>)> {
    let nodes: Api<Node> = Api::all(workload.clone());
    let cordon = cordoned(&nodes.get(node).await?);
    let pods = pods_on(workload, node)
        .await?
        .iter()
        .filter(|p| evictable(p))
        .map(|p| {
            let mut name = p.name_any();
            if p.metadata.deletion_timestamp.is_some() {
                name.push_str(" (terminating)");
            }
            name
        })
        .collect();
    Ok((cordon, pods))
}

/// Sets the host's `OSVersionReady` condition (and its phase) as the agent reports them.
async fn os_version_ready(
    hosts: &Api<DynamicObject>,
    host: &str,
    ready: bool,
    reason: &str,
) -> Result<()> {
    let now = now_json();
    let mut condition = json!({
        "type": OS_VERSION_READY,
        "status": if ready { "True" } else { "False" },
        "lastTransitionTime": now,
    });
    if !ready {
        condition["reason"] = json!(reason);
        condition["severity"] = json!(if reason == OS_VERSION_RECONCILIATION_FAILED {
            "Error"
        } else {
            "Info"
        });
        condition["message"] = json!(format!("OS version reconciliation: {reason}"));
    }
    let phase = if ready {
        "Running"
    } else {
        "Reconciling OS Version"
    };
    let body = json!({"status": {
        "phase": phase,
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            condition,
        ],
    }});
    hosts
        .patch_status(host, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}
