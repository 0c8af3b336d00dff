//! The manager's RBAC against the code: every rule of `config/rbac/role.yaml` and
//! `config/rbac/leader_election_role.yaml` must name its callers, and they must make the calls.
//!
//! How it works. The comment lines `# caller: PATH` (one or more) directly above a rule name the
//! source files, relative to the workspace root, that make the rule's calls. For each resource
//! and verb the rule grants, at least one named file must
//! - name the resource's Rust type or kind ([`TYPES`]), and
//! - contain a kube API call of that verb ([`CALLS`]): `get_opt(` for `get`; a watch (the shared
//!   caches' `cache::<`, `cache_with::<`, or `watcher(`) for `list` and `watch`, or `.list(` for
//!   `list`; `.create(`; `.patch(`; for a `/status` subresource, `apply_status(`,
//!   `apply_status_at(` or `patch_status(`.
//!
//! `# caller: PATH via ITEM` names a library item that makes the calls itself
//! (kube-lease-manager's builder): the file must use ITEM, and the rule may grant only
//! the verbs [`LIBRARIES`] lists for it. Finally no resource gets the same verb from two rules.
//!
//! This is a textual check, not a proof: it fails when a rule has no caller, when a caller
//! file is gone or no longer makes that kind of call on that resource, and when a verb such as
//! `delete` is granted that no caller makes. It cannot tell which object a call reaches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::Value;

/// The Rust type or kind a caller must name, per resource (subresource stripped).
const TYPES: &[(&str, &str)] = &[
    ("debianrepositorysources", "DebianRepositorySource"),
    ("machineimages", "MachineImage"),
    ("machineimagetemplates", "MachineImageTemplate"),
    ("machineimagesyncers", "MachineImageSyncer"),
    ("plans", "Plan"),
    (
        "clusterclassclusterupgraders",
        "ClusterClassClusterUpgrader",
    ),
    ("inclusterupgradeautomations", "InClusterUpgradeAutomation"),
    ("jobs", "Job"),
    ("pods", "Pod"),
    ("clusters", "Cluster"),
    ("clusterclasses", "ClusterClass"),
    ("machinedeployments", "MachineDeployment"),
    ("machines", "Machine"),
    ("elementalhosts", "ElementalHost"),
    ("elementalmachines", "ElementalMachine"),
    // Read through the Cluster's reference, whatever the provider.
    ("kubeadmcontrolplanes", "controlPlaneRef"),
    ("rke2controlplanes", "controlPlaneRef"),
    ("customresourcedefinitions", "CustomResourceDefinition"),
    ("configmaps", "ConfigMap"),
    ("secrets", "Secret"),
    ("events", "Event"),
    ("leases", "Lease"),
    ("namespaces", "Namespace"),
];

/// The kube API calls that make each verb: (verb, on a `/status` subresource, patterns).
const CALLS: &[(&str, bool, &[&str])] = &[
    ("get", false, &["get_opt("]),
    (
        "list",
        false,
        &[".list(", "cache::<", "cache_with::<", "watcher("],
    ),
    ("watch", false, &["cache::<", "cache_with::<", "watcher("]),
    ("create", false, &[".create("]),
    ("patch", false, &[".patch("]),
    ("update", false, &[".replace("]),
    ("delete", false, &[".delete("]),
    (
        "patch",
        true,
        &["apply_status(", "apply_status_at(", "patch_status("],
    ),
];

/// Library items that make API calls themselves, and the verbs they use.
const LIBRARIES: &[(&str, &[&str])] = &[
    // kube_lease_manager: reads the Lease, creates it if absent, patches it to take, renew and
    // release it.
    ("LeaseManagerBuilder", &["get", "create", "patch"]),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One caller comment.
#[derive(Debug)]
struct Caller {
    path: String,
    via: Option<String>,
}

/// A rule with the callers named above it.
#[derive(Debug)]
struct Rule {
    file: &'static str,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    callers: Vec<Caller>,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The rules of `file`, each with the `# caller:` lines of the comment block right above it.
fn rules(file: &'static str) -> Vec<Rule> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    // The caller blocks, in order of the rules they precede.
    let mut blocks = Vec::new();
    let mut block = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(comment) = trimmed.strip_prefix('#') {
            if let Some(caller) = comment.trim().strip_prefix("caller:") {
                let caller = caller.trim();
                let (path, via) = match caller.split_once(" via ") {
                    Some((path, via)) => (path.trim(), Some(via.trim().to_owned())),
                    None => (caller, None),
                };
                block.push(Caller {
                    path: path.to_owned(),
                    via,
                });
            }
        } else if trimmed.starts_with("- apiGroups:") {
            blocks.push(std::mem::take(&mut block));
        } else {
            assert!(
                block.is_empty(),
                "{file}: a `# caller:` comment is not directly above a rule: {line:?}"
            );
        }
    }
    let mut rules = Vec::new();
    let mut blocks = blocks.into_iter();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc = Value::deserialize(doc).unwrap();
        for rule in doc["rules"].as_array().into_iter().flatten() {
            rules.push(Rule {
                file,
                groups: strings(&rule["apiGroups"]),
                resources: strings(&rule["resources"]),
                verbs: strings(&rule["verbs"]),
                callers: blocks.next().expect("a caller block per rule"),
            });
        }
    }
    assert!(
        blocks.next().is_none(),
        "{file}: more rules in text than in YAML"
    );
    rules
}

fn all_rules() -> Vec<Rule> {
    let mut all = rules("config/rbac/role.yaml");
    all.extend(rules("config/rbac/leader_election_role.yaml"));
    all
}

/// Why the callers of `rule` do not make `verb` on `resource`, if they do not.
fn unexplained(rule: &Rule, resource: &str, verb: &str) -> Option<String> {
    let (plural, status) = match resource.split_once('/') {
        Some((plural, "status")) => (plural, true),
        Some((_, other)) => return Some(format!("no check knows the subresource {other}")),
        None => (resource, false),
    };
    let Some((_, kind)) = TYPES.iter().find(|(r, _)| *r == plural) else {
        return Some(format!(
            "{plural} is not in TYPES: add the type its callers name"
        ));
    };
    let mut tried = Vec::new();
    for caller in &rule.callers {
        let path = root().join(&caller.path);
        let Ok(source) = std::fs::read_to_string(&path) else {
            return Some(format!("the caller {} does not exist", caller.path));
        };
        if !source.contains(kind) {
            tried.push(format!("{} does not name {kind}", caller.path));
            continue;
        }
        if let Some(via) = &caller.via {
            let Some((_, verbs)) = LIBRARIES.iter().find(|(item, _)| item == via) else {
                return Some(format!("{via} is not in LIBRARIES"));
            };
            if source.contains(via.as_str()) && verbs.contains(&verb) {
                return None;
            }
            tried.push(format!("{} via {via} does not {verb}", caller.path));
            continue;
        }
        let patterns: Vec<&str> = CALLS
            .iter()
            .filter(|(v, s, _)| *v == verb && *s == status)
            .flat_map(|(_, _, p)| p.iter().copied())
            .collect();
        if patterns.iter().any(|p| source.contains(p)) {
            return None;
        }
        tried.push(format!("{} has none of {patterns:?}", caller.path));
    }
    if rule.callers.is_empty() {
        return Some("the rule has no `# caller:` comment".to_owned());
    }
    Some(tried.join("; "))
}

#[test]
fn every_rule_names_callers_that_make_its_calls() {
    let rules = all_rules();
    assert!(rules.len() > 10, "{} rules parsed", rules.len());
    let mut failures = Vec::new();
    for rule in &rules {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                if let Some(why) = unexplained(rule, resource, verb) {
                    failures.push(format!(
                        "{}: {verb} on {:?}/{resource}: {why}",
                        rule.file, rule.groups
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_verb_is_granted_twice() {
    let mut granted: BTreeMap<(String, String, String), &'static str> = BTreeMap::new();
    for rule in all_rules() {
        for group in &rule.groups {
            for resource in &rule.resources {
                for verb in &rule.verbs {
                    let key = (group.clone(), resource.clone(), verb.clone());
                    if let Some(first) = granted.insert(key, rule.file) {
                        panic!(
                            "{verb} on {group}/{resource} is granted twice ({first}, {})",
                            rule.file
                        );
                    }
                }
            }
        }
    }
    // The manager never deletes or updates anything; nothing grants it to.
    let forbidden: Vec<_> = granted
        .keys()
        .filter(|(_, _, verb)| ["delete", "update", "*"].contains(&verb.as_str()))
        .collect();
    assert!(forbidden.is_empty(), "granted: {forbidden:?}");
}

/// The check itself: a rule without callers, a caller that makes no such call, a verb no
/// caller makes, and a caller that does not exist are each refused.
#[test]
fn the_check_refuses_what_it_should() {
    let rule = |resources: &[&str], verbs: &[&str], callers: &[&str]| Rule {
        file: "test",
        groups: vec!["batch".into()],
        resources: resources.iter().map(|&r| r.to_owned()).collect(),
        verbs: verbs.iter().map(|&v| v.to_owned()).collect(),
        callers: callers
            .iter()
            .map(|c| match c.split_once(" via ") {
                Some((path, via)) => Caller {
                    path: path.into(),
                    via: Some(via.into()),
                },
                None => Caller {
                    path: (*c).into(),
                    via: None,
                },
            })
            .collect(),
    };
    let image = "controllers/src/controllers/machine_image/apply.rs";
    assert_eq!(
        unexplained(&rule(&["jobs"], &["create"], &[image]), "jobs", "create"),
        None
    );
    assert!(unexplained(&rule(&["jobs"], &["delete"], &[image]), "jobs", "delete").is_some());
    assert!(unexplained(&rule(&["jobs"], &["get"], &[]), "jobs", "get").is_some());
    // The plan controller makes no call on Jobs.
    let plan = "controllers/src/controllers/plan/apply.rs";
    assert!(unexplained(&rule(&["jobs"], &["get"], &[plan]), "jobs", "get").is_some());
    assert!(
        unexplained(
            &rule(&["jobs"], &["get"], &["controllers/src/gone.rs"]),
            "jobs",
            "get"
        )
        .is_some()
    );
    // A status write is not a patch of the object, nor the reverse.
    let status = unexplained(
        &rule(&["plans/status"], &["patch"], &[plan]),
        "plans/status",
        "patch",
    );
    assert_eq!(status, None);
    assert!(unexplained(&rule(&["plans"], &["patch"], &[plan]), "plans", "patch").is_some());
    // A library item grants only its own verbs.
    let leases = "controllers/src/manager/leader.rs via LeaseManagerBuilder";
    assert_eq!(
        unexplained(
            &rule(&["leases"], &["create"], &[leases]),
            "leases",
            "create"
        ),
        None
    );
    assert!(
        unexplained(
            &rule(&["leases"], &["delete"], &[leases]),
            "leases",
            "delete"
        )
        .is_some()
    );
}
