//! The alerts in `config/prometheus/`: every alert carries a summary and a runbook, every series it
//! reads is one the manager exports, and promtool accepts the rules and passes their unit tests
//! (`rules_test.yaml`). promtool comes with Debian's `prometheus` package; without it the promtool
//! part skips with one line, unless `E2E_REQUIRE` or `PROMTOOL_REQUIRE` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rule_object() -> Value {
    let text =
        std::fs::read_to_string(root().join("config/prometheus/prometheusrule.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn alerts(object: &Value) -> Vec<&Value> {
    object["spec"]["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

/// Every `.rs` file under `dir`, as one text.
fn sources(dir: &Path, into: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_alert_has_a_summary_a_runbook_and_reads_exported_series() {
    let object = rule_object();
    assert_eq!(object["kind"], "PrometheusRule");
    let alerts = alerts(&object);
    assert!(!alerts.is_empty());
    let mut code = String::new();
    sources(&root().join("controllers/src"), &mut code);
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains("\n### Alerts\n"),
        "the runbook section README.md#alerts"
    );
    for alert in alerts {
        let name = alert["alert"].as_str().unwrap();
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                alert["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name} needs the annotation {key}"
            );
        }
        assert!(readme.contains(name), "the README's runbook names {name}");
        let expr = alert["expr"].as_str().unwrap();
        let mut rest = expr;
        let mut series = 0;
        while let Some(at) = rest.find("kubernetes_upgrader_") {
            let tail = &rest[at + "kubernetes_upgrader_".len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let suffix = &tail[..end];
            assert!(
                code.contains(&format!("\"{suffix}\"")),
                "{name} reads kubernetes_upgrader_{suffix}, which the manager does not export"
            );
            series += 1;
            rest = &tail[end..];
        }
        assert!(series > 0, "{name} reads none of the manager's series");
    }
}

fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let required = ["E2E_REQUIRE", "PROMTOOL_REQUIRE"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        assert!(
            !required,
            "promtool is not on PATH: install Debian's prometheus package"
        );
        eprintln!(
            "skipping promtool checks: promtool is not on PATH (Debian's prometheus package)"
        );
    }
    found
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        serde_yaml::to_string(&rule_object()["spec"]).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        root().join("config/prometheus/rules_test.yaml"),
        dir.path().join("rules_test.yaml"),
    )
    .unwrap();
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "rules_test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
