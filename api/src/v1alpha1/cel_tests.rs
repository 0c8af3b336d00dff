//! Every CEL rule, checked offline: one accepted and one refused case each, with the message.
#![allow(clippy::needless_pass_by_value, clippy::format_push_string)]

use kube::core::cel::validate_cel;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;
use crate::constraint::VersionRange;

fn object<K: DeserializeOwned>(kind: &str, spec: Value) -> K {
    serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "team"},
        "spec": spec,
    }))
    .unwrap()
}

fn refused_with<K: kube::CustomResourceExt + serde::Serialize>(obj: &K, message: &str) {
    let errors = validate_cel(obj).expect_err("should be refused");
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|e| e.contains(message)),
        "expected {message:?} in {text:?}"
    );
}

fn source(spec: Value) -> DebianRepositorySource {
    object("DebianRepositorySource", spec)
}

fn syncer(range: &str, interval: Value) -> MachineImageSyncer {
    object(
        "MachineImageSyncer",
        json!({"versionRange": range, "sourceRef": {"name": "s"}, "machineImageTemplateRef": {"name": "t"}, "interval": interval}),
    )
}

fn plan(range: &str) -> Plan {
    object("Plan", json!({"versionRange": range}))
}

#[test]
fn source_url_must_be_http() {
    let r = validate_cel(&source(
        json!({"url": "https://pkgs.k8s.io/core:/stable:/v1.31/deb/"}),
    ));
    assert!(r.is_ok(), "{r:?}");
    assert!(validate_cel(&source(json!({"url": "http://127.0.0.1:8080/Packages"}))).is_ok());
    refused_with(
        &source(json!({"url": "ftp://mirror/debian"})),
        "spec.url must be an http:// or https:// URL",
    );
}

#[test]
fn source_suite_and_component_go_together() {
    assert!(
        validate_cel(&source(
            json!({"url": "https://d/", "suite": "stable", "component": "main"})
        ))
        .is_ok()
    );
    refused_with(
        &source(json!({"url": "https://d/", "suite": "stable"})),
        "spec.suite and spec.component must be set together",
    );
}

#[test]
fn source_signed_by_needs_exactly_one_key_source() {
    let inline = json!({"url": "https://d/", "signedBy": {"inline": "-----BEGIN PGP PUBLIC KEY BLOCK-----"}});
    assert!(validate_cel(&source(inline)).is_ok());
    let two = json!({"url": "https://d/", "signedBy": {"inline": "k", "configMapKeyRef": {"name": "c", "key": "k"}}});
    refused_with(&source(two), "spec.signedBy must set exactly one of");
    refused_with(
        &source(json!({"url": "https://d/", "signedBy": {}})),
        "spec.signedBy must set exactly one of",
    );
}

#[test]
fn source_durations_and_sizes() {
    assert!(validate_cel(&source(json!({"url": "https://d/", "interval": "1h30m", "timeout": "30s", "maxIndexSize": "64Mi"}))).is_ok());
    assert!(
        validate_cel(&source(
            json!({"url": "https://d/", "maxIndexSize": "1048576"})
        ))
        .is_ok()
    );
    refused_with(
        &source(json!({"url": "https://d/", "maxIndexSize": "0Mi"})),
        "spec.maxIndexSize must be a positive byte size",
    );
    refused_with(
        &source(json!({"url": "https://d/", "interval": "5 minutes"})),
        "spec.interval must be a duration",
    );
    refused_with(
        &source(json!({"url": "https://d/", "interval": "5s"})),
        "at least 10s",
    );
    refused_with(
        &source(json!({"url": "https://d/", "timeout": "0s"})),
        "spec.timeout must be a duration between 1s and 1h",
    );
    refused_with(
        &source(json!({"url": "https://d/", "timeout": "2h"})),
        "spec.timeout must be a duration between 1s and 1h",
    );
    refused_with(
        &source(json!({"url": "https://d/", "maxIndexSize": "lots"})),
        "spec.maxIndexSize must be a positive byte size",
    );
    refused_with(
        &source(json!({"url": "https://d/", "caBundle": "not pem"})),
        "spec.caBundle must hold PEM certificates",
    );
}

#[test]
fn syncer_interval_is_nanoseconds_or_a_duration() {
    for ok in [
        json!(3_600_000_000_000_i64),
        json!("1h"),
        json!("30m"),
        json!("1h30m"),
        json!("90s"),
        json!("0"),
        json!(0),
        json!(-1),
    ] {
        assert!(validate_cel(&syncer("v1.27.x", ok.clone())).is_ok(), "{ok}");
    }
    refused_with(
        &syncer("v1.27.x", json!("soon")),
        "spec.interval must be an integer of nanoseconds or a duration",
    );
}

#[test]
fn version_ranges_are_checked_on_syncers_and_plans() {
    for ok in [
        "v1.27.x",
        "~1.27",
        ">= 1.27.0, < 1.29.0",
        "1.26 - 1.27",
        "1.26.x || 1.28.x",
    ] {
        assert!(validate_cel(&syncer(ok, json!("1h"))).is_ok(), "{ok}");
        assert!(validate_cel(&plan(ok)).is_ok(), "{ok}");
    }
    for bad in ["1x", "x1", "a", "-1", "1.0.0p", ">"] {
        refused_with(&syncer(bad, json!("1h")), crate::constraint::CEL_MESSAGE);
        refused_with(&plan(bad), crate::constraint::CEL_MESSAGE);
    }
}

#[test]
fn job_templates_need_a_container() {
    let image = |containers: Value| -> MachineImage {
        object(
            "MachineImage",
            json!({"version": "v1.27.3", "jobTemplate": {"spec": {"containers": containers}}}),
        )
    };
    assert!(validate_cel(&image(json!([{"name": "build", "image": "busybox"}]))).is_ok());
    refused_with(
        &image(json!([])),
        "jobTemplate.spec.containers must hold at least one container",
    );
    let template: MachineImageTemplate = object(
        "MachineImageTemplate",
        json!({"template": {"spec": {"jobTemplate": {"spec": {"containers": []}}}}}),
    );
    refused_with(
        &template,
        "jobTemplate.spec.containers must hold at least one container",
    );
}

fn range_text() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("x".to_owned()),
        Just("*".to_owned()),
        (0u32..40).prop_map(|n| n.to_string())
    ];
    let version = (
        prop::option::of(Just("v")),
        part.clone(),
        prop::option::of(part.clone()),
        prop::option::of(part),
        prop::option::of(Just("-rc.1")),
    )
        .prop_map(|(v, a, b, c, pre)| {
            let mut s = format!("{}{a}", v.unwrap_or(""));
            if let Some(b) = b {
                s.push_str(&format!(".{b}"));
                if let Some(c) = c {
                    s.push_str(&format!(".{c}"));
                }
            }
            s.push_str(pre.unwrap_or(""));
            s
        });
    let op = prop_oneof![
        Just(""),
        Just("="),
        Just("!="),
        Just(">"),
        Just("<"),
        Just(">="),
        Just("<="),
        Just("~"),
        Just("^"),
        Just("=>"),
        Just("~>")
    ];
    let sep = prop_oneof![
        Just(" "),
        Just(", "),
        Just(","),
        Just(" || "),
        Just(" - "),
        Just("  "),
        Just("|"),
        Just(",,")
    ];
    let junk = prop_oneof![
        Just(""),
        Just("a"),
        Just("-"),
        Just("p"),
        Just(" "),
        Just("."),
        Just("||")
    ];
    prop::collection::vec((op, version, sep, junk), 1..4).prop_map(|terms| {
        let mut out = String::new();
        for (i, (op, version, sep, junk)) in terms.iter().enumerate() {
            if i > 0 {
                out.push_str(sep);
            }
            out.push_str(&format!("{op}{version}{junk}"));
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// What admission accepts is exactly what the controllers can parse.
    #[test]
    fn cel_pattern_agrees_with_the_parser(range in range_text()) {
        let admitted = validate_cel(&plan(&range)).is_ok();
        let parsed = VersionRange::parse(&range).is_ok();
        prop_assert_eq!(admitted, parsed, "range {:?}", range);
    }
}
