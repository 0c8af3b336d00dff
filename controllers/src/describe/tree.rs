//! The pipeline as a tree, built from the objects' JSON: pure, no client.
//!
//! Sources → syncers → images; plans → upgraders → clusters. Objects are read as JSON so that
//! a field another version of the manager adds or drops never stops the tree from printing.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use api::v1alpha1::SYNCER_NAME_LABEL as SYNCER_LABEL;
use serde::Serialize;
use serde_json::Value;

use crate::controllers::upgrader::cluster::PAUSED_ANNOTATION;

/// The objects of one namespace, as their JSON.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    /// DebianRepositorySources.
    pub sources: Vec<Value>,
    /// MachineImageSyncers.
    pub syncers: Vec<Value>,
    /// MachineImages.
    pub images: Vec<Value>,
    /// Plans.
    pub plans: Vec<Value>,
    /// ClusterClassClusterUpgraders and InClusterUpgradeAutomations.
    pub upgraders: Vec<Value>,
    /// Cluster API Clusters, or `None` when Cluster API is not installed.
    pub clusters: Option<Vec<Value>>,
}

/// How a node is doing, for colour and for scripts.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Ready, or nothing to do.
    Ok,
    /// Working towards it: building, progressing, waiting.
    Working,
    /// Paused by someone.
    Paused,
    /// Blocked or failed: needs a look.
    Failing,
    /// Not reported yet.
    Unknown,
}

/// One object in the tree.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Kind, such as `MachineImage`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// How it is doing.
    pub health: Health,
    /// The state in a word or two: a phase, or `Ready`, or a condition reason.
    pub state: String,
    /// The headline condition's message, if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Versions, IDs and the next step, in a few words.
    pub details: Vec<String>,
    /// Objects under it.
    pub children: Vec<Node>,
}

/// One namespace's tree.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Namespace {
    /// The namespace.
    pub namespace: String,
    /// Top-level nodes: sources, then images no syncer made, then plans, then upgraders
    /// without a plan.
    pub items: Vec<Node>,
}

/// Builds one namespace's tree. Every object appears exactly once.
pub fn build(namespace: &str, objects: &Objects) -> Namespace {
    let mut placed_images = BTreeSet::new();
    let mut placed_syncers = BTreeSet::new();
    let mut placed_upgraders = BTreeSet::new();
    let mut items = Vec::new();

    for source in sorted(&objects.sources) {
        let name = name_of(source);
        let mut node = source_node(source);
        for syncer in sorted(&objects.syncers) {
            let source_ref = &syncer["spec"]["sourceRef"];
            if str_at(source_ref, "kind") == "DebianRepositorySource"
                && str_at(source_ref, "name") == name
            {
                placed_syncers.insert(name_of(syncer).to_owned());
                node.children
                    .push(syncer_node(syncer, &objects.images, &mut placed_images));
            }
        }
        items.push(node);
    }
    for syncer in sorted(&objects.syncers) {
        if !placed_syncers.contains(name_of(syncer)) {
            items.push(syncer_node(syncer, &objects.images, &mut placed_images));
        }
    }
    for image in sorted(&objects.images) {
        if !placed_images.contains(name_of(image)) {
            items.push(image_node(image));
        }
    }
    for plan in sorted(&objects.plans) {
        let mut node = plan_node(plan);
        for upgrader in sorted(&objects.upgraders) {
            if str_at(&upgrader["spec"]["planRef"], "name") == name_of(plan) {
                placed_upgraders.insert(object_key(upgrader));
                node.children
                    .push(upgrader_node(upgrader, objects.clusters.as_deref()));
            }
        }
        items.push(node);
    }
    for upgrader in sorted(&objects.upgraders) {
        if !placed_upgraders.contains(&object_key(upgrader)) {
            let mut node = upgrader_node(upgrader, objects.clusters.as_deref());
            node.details.push(format!(
                "Plan/{} not found",
                str_at(&upgrader["spec"]["planRef"], "name")
            ));
            items.push(node);
        }
    }
    Namespace {
        namespace: namespace.to_owned(),
        items,
    }
}

fn source_node(source: &Value) -> Node {
    let versions: Vec<&str> = source["status"]["versions"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut details = vec![match (versions.first(), versions.last()) {
        (Some(first), Some(last)) if versions.len() > 1 => {
            format!("{} versions, {first} … {last}", versions.len())
        }
        (Some(only), _) => format!("1 version, {only}"),
        _ => "no versions".to_owned(),
    }];
    if let Some(verified) = condition(source, "Verified") {
        details.push(format!(
            "Verified={} ({})",
            str_at(verified, "status"),
            str_at(verified, "reason")
        ));
    }
    let mut node = node_from_ready(source, "DebianRepositorySource");
    node.details = details;
    node
}

fn syncer_node(syncer: &Value, images: &[Value], placed: &mut BTreeSet<String>) -> Node {
    let name = name_of(syncer);
    let mut node = node_from_ready(syncer, "MachineImageSyncer");
    if syncer["spec"]["paused"].as_bool() == Some(true) {
        node.health = Health::Paused;
        "Paused".clone_into(&mut node.state);
    }
    node.details
        .push(format!("range {}", str_at(&syncer["spec"], "versionRange")));
    let latest = str_at(&syncer["status"], "latestVersion");
    if !latest.is_empty() {
        node.details.push(format!("latest {latest}"));
    }
    let source_ref = &syncer["spec"]["sourceRef"];
    if str_at(source_ref, "kind") != "DebianRepositorySource" {
        node.details.push(format!(
            "source {}/{}",
            str_at(source_ref, "kind"),
            str_at(source_ref, "name")
        ));
    }
    let mut children: Vec<&Value> = images
        .iter()
        .filter(|image| label(image, SYNCER_LABEL) == Some(name))
        .collect();
    children.sort_by(|a, b| {
        image_version(b)
            .cmp(&image_version(a))
            .then_with(|| name_of(a).cmp(name_of(b)))
    });
    for image in children {
        placed.insert(name_of(image).to_owned());
        node.children.push(image_node(image));
    }
    node
}

fn image_node(image: &Value) -> Node {
    let phase = str_at(&image["status"], "phase");
    let ready = image["status"]["ready"].as_bool() == Some(true);
    let reason = condition(image, "Ready").map_or("", |c| str_at(c, "reason"));
    let (health, state) = match (ready, phase) {
        (true, _) => (Health::Ok, "Created".to_owned()),
        (false, "Failed") => (Health::Failing, failure_state("Failed", reason)),
        (false, "Building") => (Health::Working, "Building".to_owned()),
        (false, _) if reason.is_empty() => (Health::Unknown, "Pending".to_owned()),
        (false, _) => (Health::Failing, reason.to_owned()),
    };
    let mut details = vec![str_at(&image["spec"], "version").to_owned()];
    let id = str_at(&image["spec"], "id");
    if !id.is_empty() {
        details.push(format!("id {id}"));
    }
    if let Some(attempts) = image["status"]["attempts"].as_i64().filter(|a| *a > 1) {
        details.push(format!("{attempts} attempts"));
    }
    Node {
        kind: "MachineImage".to_owned(),
        name: name_of(image).to_owned(),
        health,
        state,
        message: if health == Health::Failing {
            condition(image, "Ready")
                .map_or("", |c| str_at(c, "message"))
                .to_owned()
        } else {
            String::new()
        },
        details,
        children: Vec::new(),
    }
}

fn plan_node(plan: &Value) -> Node {
    let mut node = node_from_ready(plan, "Plan");
    let phase = str_at(&plan["status"], "phase");
    if !phase.is_empty() {
        phase.clone_into(&mut node.state);
    }
    node.details
        .push(format!("range {}", str_at(&plan["spec"], "versionRange")));
    let details = &plan["status"]["machineImageDetails"];
    let version = str_at(details, "version");
    if !version.is_empty() {
        let image = str_at(&plan["status"]["machineImageRef"], "name");
        node.details.push(format!(
            "{version} (MachineImage/{image}, id {})",
            str_at(details, "id")
        ));
    }
    rollout_details(&plan["status"]["rollout"], &mut node);
    node
}

/// A rollout in a Plan's details: its phase, each wave's progress, the halted Cluster and when
/// the next wave opens.
fn rollout_details(rollout: &Value, node: &mut Node) {
    let Some(waves) = rollout["waves"].as_array() else {
        return;
    };
    node.details
        .push(format!("rollout {}", str_at(rollout, "phase")));
    let count = |wave: &Value, key: &str| wave[key].as_i64().unwrap_or(0);
    for wave in waves {
        let admitted: Vec<&str> = wave["admitted"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut line = format!(
            "wave {}: {}/{} updated, {} failed",
            str_at(wave, "name"),
            count(wave, "updated"),
            count(wave, "clusters"),
            count(wave, "failed"),
        );
        if !admitted.is_empty() {
            let _ = write!(line, ", admitted {}", admitted.join(", "));
        }
        let soaked = str_at(wave, "soakedUntil");
        if !soaked.is_empty() {
            let _ = write!(line, ", soaked until {soaked}");
        }
        node.details.push(line);
    }
    if let Some(halt) = rollout["halted"].as_object() {
        let text = |key: &str| halt.get(key).and_then(Value::as_str).unwrap_or_default();
        node.health = Health::Failing;
        node.details.push(format!(
            "halted at Cluster {} ({}): {}",
            text("cluster"),
            text("reason"),
            text("message")
        ));
    } else if str_at(rollout, "phase") == "Soaking"
        && let Some(opens) = waves
            .iter()
            .map(|w| str_at(w, "soakedUntil"))
            .filter(|t| !t.is_empty())
            .max()
    {
        node.details.push(format!("next wave opens at {opens}"));
    }
}

fn upgrader_node(upgrader: &Value, clusters: Option<&[Value]>) -> Node {
    let kind = str_at(upgrader, "kind");
    let mut node = node_from_ready(
        upgrader,
        if kind.is_empty() {
            "ClusterClassClusterUpgrader"
        } else {
            kind
        },
    );
    for (type_, health) in [
        ("Blocked", Health::Failing),
        ("Paused", Health::Paused),
        ("Progressing", Health::Working),
    ] {
        if let Some(c) = condition(upgrader, type_).filter(|c| str_at(c, "status") == "True") {
            node.health = health;
            node.state = failure_state(type_, str_at(c, "reason"));
            str_at(c, "message").clone_into(&mut node.message);
            break;
        }
    }
    if upgrader["spec"]["paused"].as_bool() == Some(true) {
        node.health = Health::Paused;
        "Paused".clone_into(&mut node.state);
    }
    let set = str_at(&upgrader["status"], "latestSetVersion");
    if !set.is_empty() {
        node.details.push(format!("set {set}"));
    }
    let next = &upgrader["status"]["nextStep"];
    let next_version = str_at(next, "version");
    if !next_version.is_empty() {
        let mut step = format!("next {next_version}");
        for (key, label) in [("reason", "reason"), ("notBefore", "not before")] {
            let value = str_at(next, key);
            if !value.is_empty() {
                let _ = write!(step, ", {label} {value}");
            }
        }
        node.details.push(step);
    }
    let cluster_name = str_at(&upgrader["spec"], "clusterName");
    node.children.push(match clusters {
        None => Node {
            kind: "Cluster".to_owned(),
            name: cluster_name.to_owned(),
            health: Health::Unknown,
            state: "Cluster API not installed".to_owned(),
            message: String::new(),
            details: Vec::new(),
            children: Vec::new(),
        },
        Some(clusters) => clusters
            .iter()
            .find(|c| name_of(c) == cluster_name)
            .map_or_else(
                || Node {
                    kind: "Cluster".to_owned(),
                    name: cluster_name.to_owned(),
                    health: Health::Failing,
                    state: "NotFound".to_owned(),
                    message: String::new(),
                    details: Vec::new(),
                    children: Vec::new(),
                },
                cluster_node,
            ),
    });
    if let Some(cluster) = node.children.last_mut() {
        cluster.children.extend(host_nodes(&upgrader["status"]));
        if let Some(progress) = upgrader["status"]["inPlace"].as_object() {
            let pools: Vec<String> = progress
                .get("pools")
                .and_then(Value::as_array)
                .map(|pools| {
                    pools
                        .iter()
                        .map(|p| format!("{} {}/{}", str_at(p, "name"), p["updated"], p["total"]))
                        .collect()
                })
                .unwrap_or_default();
            cluster.details.push(format!(
                "in place {}/{} hosts at {} ({})",
                progress.get("updated").unwrap_or(&Value::Null),
                progress.get("total").unwrap_or(&Value::Null),
                progress
                    .get("stamp")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                pools.join(", ")
            ));
        }
    }
    node
}

/// The in-place host records, one node each, under their Cluster.
fn host_nodes(status: &Value) -> Vec<Node> {
    let Some(hosts) = status["hosts"].as_array() else {
        return Vec::new();
    };
    hosts
        .iter()
        .map(|host| {
            let phase = str_at(host, "phase");
            let health = match phase {
                "Uncordoned" | "Released" => Health::Ok,
                "DrainTimeout"
                | "BootedImageMismatch"
                | "RetriesExhausted"
                | "DrainRefused"
                | "HostTimeout" => Health::Failing,
                _ => Health::Working,
            };
            let mut details = vec![match host["pool"].as_str() {
                Some(pool) => format!("pool {pool}"),
                None => "control plane".to_owned(),
            }];
            details.push(format!("node {}", str_at(host, "node")));
            for (key, label) in [("started", "started"), ("finished", "finished")] {
                let value = str_at(host, key);
                if !value.is_empty() {
                    details.push(format!("{label} {value}"));
                }
            }
            Node {
                kind: "ElementalHost".to_owned(),
                name: str_at(host, "host").to_owned(),
                health,
                state: phase.to_owned(),
                message: str_at(host, "message").to_owned(),
                details,
                children: Vec::new(),
            }
        })
        .collect()
}

fn cluster_node(cluster: &Value) -> Node {
    let paused = cluster["spec"]["paused"].as_bool() == Some(true)
        || label_or_annotation(cluster, "annotations", PAUSED_ANNOTATION).is_some();
    let topology = &cluster["spec"]["topology"];
    let phase = str_at(&cluster["status"], "phase");
    let (health, state) = if paused {
        (Health::Paused, "Paused".to_owned())
    } else if topology.is_null() {
        (Health::Failing, "NotClassBased".to_owned())
    } else if phase.is_empty() {
        (Health::Unknown, "Unknown".to_owned())
    } else {
        (Health::Ok, phase.to_owned())
    };
    let mut details = Vec::new();
    let version = str_at(topology, "version");
    if !version.is_empty() {
        details.push(format!("topology {version}"));
    }
    let class = topology["class"]
        .as_str()
        .or_else(|| topology["classRef"]["name"].as_str())
        .unwrap_or_default();
    if !class.is_empty() {
        details.push(format!("class {class}"));
    }
    Node {
        kind: "Cluster".to_owned(),
        name: name_of(cluster).to_owned(),
        health,
        state,
        message: String::new(),
        details,
        children: Vec::new(),
    }
}

/// A node whose headline is its `Ready` condition.
fn node_from_ready(object: &Value, kind: &str) -> Node {
    let (health, state, message) = match condition(object, "Ready") {
        Some(c) if str_at(c, "status") == "True" => (Health::Ok, "Ready".to_owned(), String::new()),
        Some(c) => (
            Health::Failing,
            failure_state("NotReady", str_at(c, "reason")),
            str_at(c, "message").to_owned(),
        ),
        None => (Health::Unknown, "Unknown".to_owned(), String::new()),
    };
    Node {
        kind: kind.to_owned(),
        name: name_of(object).to_owned(),
        health,
        state,
        message,
        details: Vec::new(),
        children: Vec::new(),
    }
}

fn failure_state(word: &str, reason: &str) -> String {
    if reason.is_empty() {
        word.to_owned()
    } else {
        format!("{word}: {reason}")
    }
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| str_at(c, "type") == type_)
}

fn str_at<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_default()
}

fn name_of(object: &Value) -> &str {
    str_at(&object["metadata"], "name")
}

fn object_key(object: &Value) -> String {
    format!("{}/{}", str_at(object, "kind"), name_of(object))
}

fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    label_or_annotation(object, "labels", key)
}

fn label_or_annotation<'a>(object: &'a Value, map: &str, key: &str) -> Option<&'a str> {
    object["metadata"][map][key].as_str()
}

fn image_version(image: &Value) -> Option<semver::Version> {
    api::version::parse_strict(str_at(&image["spec"], "version"))
}

fn sorted(objects: &[Value]) -> Vec<&Value> {
    let mut sorted: Vec<&Value> = objects.iter().collect();
    sorted.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    sorted
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ready(status: &str, reason: &str) -> Value {
        json!([{"type": "Ready", "status": status, "reason": reason, "message": format!("{reason} message")}])
    }

    fn source(name: &str, versions: &[&str]) -> Value {
        json!({"kind": "DebianRepositorySource", "metadata": {"name": name},
               "status": {"versions": versions, "conditions": ready("True", "Synced")}})
    }

    fn syncer(name: &str, source: &str) -> Value {
        json!({"kind": "MachineImageSyncer", "metadata": {"name": name},
               "spec": {"versionRange": "v1.31.x",
                        "sourceRef": {"kind": "DebianRepositorySource", "name": source}},
               "status": {"latestVersion": "v1.31.2", "conditions": ready("True", "ImageExists")}})
    }

    fn image(name: &str, version: &str, syncer: Option<&str>, phase: &str) -> Value {
        let labels = syncer.map_or_else(|| json!({}), |s| json!({ SYNCER_LABEL: s }));
        json!({"kind": "MachineImage", "metadata": {"name": name, "labels": labels},
               "spec": {"version": version, "id": if phase == "Created" { json!(format!("img-{version}")) } else { Value::Null }},
               "status": {"ready": phase == "Created", "phase": phase,
                          "conditions": ready(if phase == "Created" { "True" } else { "False" },
                                              if phase == "Failed" { "JobFailed" } else { "Built" })}})
    }

    fn plan(name: &str) -> Value {
        json!({"kind": "Plan", "metadata": {"name": name}, "spec": {"versionRange": "v1.31.x"},
               "status": {"phase": "FoundMachineImage", "conditions": ready("True", "FoundMachineImage"),
                          "machineImageDetails": {"version": "v1.31.2", "id": "img-v1.31.2"},
                          "machineImageRef": {"name": "s-v1.31.2"}}})
    }

    fn upgrader(name: &str, plan: &str, conditions: &Value) -> Value {
        json!({"kind": "ClusterClassClusterUpgrader", "metadata": {"name": name},
               "spec": {"clusterName": "prod", "planRef": {"name": plan}},
               "status": {"latestSetVersion": "v1.31.1", "conditions": conditions,
                          "nextStep": {"version": "v1.31.2", "reason": "NewImage"}}})
    }

    fn cluster(name: &str, version: &str) -> Value {
        json!({"kind": "Cluster", "metadata": {"name": name},
               "spec": {"topology": {"class": "quick-start", "version": version}},
               "status": {"phase": "Provisioned"}})
    }

    fn pipeline() -> Objects {
        Objects {
            sources: vec![source("k8s", &["v1.31.0", "v1.31.1", "v1.31.2"])],
            syncers: vec![syncer("s", "k8s")],
            images: vec![
                image("s-v1.31.1", "v1.31.1", Some("s"), "Created"),
                image("s-v1.31.2", "v1.31.2", Some("s"), "Created"),
                image("static", "v1.30.9", None, "Failed"),
            ],
            plans: vec![plan("p")],
            upgraders: vec![upgrader("u", "p", &ready("True", "ClusterUpToDate"))],
            clusters: Some(vec![cluster("prod", "v1.31.1")]),
        }
    }

    fn count(nodes: &[Node]) -> usize {
        nodes.iter().map(|n| 1 + count(&n.children)).sum()
    }

    #[test]
    fn pipeline_nests_sources_syncers_images_then_plans_upgraders_clusters() {
        let tree = build("default", &pipeline());
        let kinds: Vec<(&str, &str)> = tree
            .items
            .iter()
            .map(|n| (n.kind.as_str(), n.name.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("DebianRepositorySource", "k8s"),
                ("MachineImage", "static"),
                ("Plan", "p")
            ]
        );
        let source = &tree.items[0];
        assert_eq!(source.details[0], "3 versions, v1.31.0 … v1.31.2");
        let syncer = &source.children[0];
        assert_eq!(syncer.kind, "MachineImageSyncer");
        let images: Vec<&str> = syncer.children.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(images, ["s-v1.31.2", "s-v1.31.1"], "newest image first");
        let upgrader = &tree.items[2].children[0];
        assert_eq!(
            upgrader.details,
            ["set v1.31.1", "next v1.31.2, reason NewImage"]
        );
        let cluster = &upgrader.children[0];
        assert_eq!(
            (cluster.name.as_str(), cluster.health),
            ("prod", Health::Ok)
        );
        assert_eq!(cluster.details, ["topology v1.31.1", "class quick-start"]);
        // Every object once, plus no invented nodes: 1+1+3+1+1+1.
        assert_eq!(count(&tree.items), 8);
    }

    #[test]
    fn failures_blocks_and_pauses_set_the_health() {
        let mut objects = pipeline();
        let failed = build("default", &objects);
        assert_eq!(failed.items[1].health, Health::Failing);
        assert_eq!(failed.items[1].state, "Failed: JobFailed");
        assert_eq!(failed.items[1].message, "JobFailed message");

        objects.upgraders = vec![upgrader(
            "u",
            "p",
            &json!([{"type": "Blocked", "status": "True", "reason": "NoImageForIntermediateMinor", "message": "no v1.30 image"}]),
        )];
        let blocked = &build("default", &objects).items[2].children[0];
        assert_eq!(blocked.health, Health::Failing);
        assert_eq!(blocked.state, "Blocked: NoImageForIntermediateMinor");
        assert_eq!(blocked.message, "no v1.30 image");

        objects.upgraders[0]["spec"]["paused"] = json!(true);
        objects.clusters = Some(vec![cluster("prod", "v1.31.1")]);
        objects.clusters.as_mut().unwrap()[0]["metadata"]["annotations"] =
            json!({"cluster.x-k8s.io/paused": ""});
        let paused = &build("default", &objects).items[2].children[0];
        assert_eq!(paused.health, Health::Paused);
        assert_eq!(paused.children[0].health, Health::Paused);
    }

    #[test]
    fn in_place_hosts_show_under_their_cluster() {
        let mut objects = pipeline();
        objects.upgraders[0]["status"]["hosts"] = json!([
            {"host": "h1", "machine": "m1", "node": "n1", "phase": "Uncordoned", "image": "i", "stamp": "s",
             "started": "2026-11-29T10:00:00Z", "finished": "2026-11-29T10:05:00Z", "attempts": 0},
            {"host": "h2", "machine": "m2", "node": "n2", "pool": "md-a", "phase": "DrainTimeout", "image": "i",
             "stamp": "s", "started": "2026-11-29T10:06:00Z", "attempts": 0, "message": "not drained"},
        ]);
        objects.upgraders[0]["status"]["inPlace"] = json!({"image": "i", "stamp": "os-2", "updated": 1, "total": 2,
            "pools": [{"name": "control-plane", "controlPlane": true, "updated": 1, "total": 1}, {"name": "md-a", "updated": 0, "total": 1}]});
        let tree = build("default", &objects);
        let cluster = &tree.items[2].children[0].children[0];
        assert_eq!(cluster.kind, "Cluster");
        assert!(
            cluster
                .details
                .iter()
                .any(|d| d == "in place 1/2 hosts at os-2 (control-plane 1/1, md-a 0/1)"),
            "{:?}",
            cluster.details
        );
        let hosts: Vec<(&str, &str, Health)> = cluster
            .children
            .iter()
            .map(|h| (h.name.as_str(), h.state.as_str(), h.health))
            .collect();
        assert_eq!(
            hosts,
            [
                ("h1", "Uncordoned", Health::Ok),
                ("h2", "DrainTimeout", Health::Failing)
            ]
        );
        assert_eq!(cluster.children[1].message, "not drained");
        assert!(
            cluster.children[0]
                .details
                .contains(&"control plane".to_owned())
        );
        assert!(
            !cluster.children[1]
                .details
                .iter()
                .any(|d| d.starts_with("finished"))
        );
        assert!(
            cluster.children[0]
                .details
                .contains(&"finished 2026-11-29T10:05:00Z".to_owned())
        );
    }

    #[test]
    fn a_plan_shows_its_rollout_waves_halt_and_next_opening() {
        let mut halted = plan("fleet");
        halted["status"]["rollout"] = json!({"phase": "Halted", "waves": [
            {"name": "canary", "clusters": 1, "updated": 1, "failed": 0, "soakedUntil": "2026-01-01T00:05:00Z"},
            {"name": "prod", "clusters": 5, "admitted": ["p1", "p2"], "updated": 0, "failed": 1}],
            "halted": {"cluster": "p1", "reason": "StepTimeout", "message": "too slow", "time": "2026-01-01T01:00:00Z"}});
        let mut node = plan_node(&halted);
        assert_eq!(node.health, Health::Failing);
        assert!(
            node.details.contains(&"rollout Halted".to_owned()),
            "{:?}",
            node.details
        );
        assert!(node.details.contains(
            &"wave canary: 1/1 updated, 0 failed, soaked until 2026-01-01T00:05:00Z".to_owned()
        ));
        assert!(
            node.details
                .contains(&"wave prod: 0/5 updated, 1 failed, admitted p1, p2".to_owned())
        );
        assert!(
            node.details
                .contains(&"halted at Cluster p1 (StepTimeout): too slow".to_owned())
        );

        let mut soaking = plan("fleet");
        soaking["status"]["rollout"] = json!({"phase": "Soaking", "waves": [
            {"name": "canary", "clusters": 1, "updated": 1, "failed": 0, "soakedUntil": "2026-01-01T00:05:00Z"},
            {"name": "prod", "clusters": 5, "updated": 0, "failed": 0}]});
        node = plan_node(&soaking);
        assert!(
            node.details
                .contains(&"next wave opens at 2026-01-01T00:05:00Z".to_owned()),
            "{:?}",
            node.details
        );
    }

    #[test]
    fn missing_pieces_are_shown_not_dropped() {
        let mut objects = pipeline();
        objects.clusters = None;
        objects
            .upgraders
            .push(upgrader("orphan", "gone", &json!([])));
        objects.syncers.push(syncer("lonely", "elsewhere"));
        let plan_cluster = |tree: &Namespace| {
            let plan = tree.items.iter().find(|n| n.kind == "Plan").unwrap();
            plan.children[0].children[0].state.clone()
        };
        let tree = build("default", &objects);
        assert_eq!(plan_cluster(&tree), "Cluster API not installed");
        let orphan = tree.items.iter().find(|n| n.name == "orphan").unwrap();
        assert!(orphan.details.contains(&"Plan/gone not found".to_owned()));
        assert!(tree.items.iter().any(|n| n.name == "lonely"));

        objects.clusters = Some(vec![]);
        let tree = build("default", &objects);
        assert_eq!(plan_cluster(&tree), "NotFound");
        let mut no_topology = cluster("prod", "");
        no_topology["spec"] = json!({});
        objects.clusters = Some(vec![no_topology]);
        let tree = build("default", &objects);
        assert_eq!(plan_cluster(&tree), "NotClassBased");
    }
}
