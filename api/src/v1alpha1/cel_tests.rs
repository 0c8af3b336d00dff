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
        json!({"versionRange": range, "sourceRef": {"kind": "DebianRepositorySource", "name": "s"}, "machineImageTemplateRef": {"name": "t"}, "interval": interval}),
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
    assert!(
        validate_cel(&source(
            json!({"url": "HTTPS://pkgs.k8s.io/core:/stable:/v1.31/deb/"})
        ))
        .is_ok()
    );
    assert!(validate_cel(&source(json!({"url": "Http://mirror/Packages?token=a#b"}))).is_ok());
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
        json!("+5m"),
    ] {
        assert!(validate_cel(&syncer("v1.27.x", ok.clone())).is_ok(), "{ok}");
    }
    for bad in [json!("soon"), json!(-1), json!("-1h"), json!("-5")] {
        refused_with(
            &syncer("v1.27.x", bad),
            "spec.interval must be a non-negative integer of nanoseconds or a duration",
        );
    }
}

#[test]
fn syncer_source_ref_needs_a_kind() {
    let mut s = syncer("v1.27.x", json!("1h"));
    s.spec.source_ref.kind = None;
    refused_with(&s, "spec.sourceRef.kind must be set");
    s.spec.source_ref.kind = Some(String::new());
    refused_with(&s, "spec.sourceRef.kind must be set");
}

fn image(version: &str) -> MachineImage {
    object(
        "MachineImage",
        json!({"version": version, "jobTemplate": {"spec": {"containers": [{"name": "b", "image": "busybox"}]}}}),
    )
}

#[test]
fn image_version_is_a_kubernetes_version() {
    for ok in [
        "v1.27.3",
        "1.27.3",
        "v1.31.0-rc.1",
        "v1.31.0+build.7",
        "v0.0.0",
    ] {
        assert!(validate_cel(&image(ok)).is_ok(), "{ok}");
    }
    for bad in [
        "latest",
        "v1.27",
        "1.27.x",
        "vv1.27.3",
        "v1.27.03",
        "v1.31.0-01",
        " v1.27.3",
    ] {
        refused_with(&image(bad), "spec.version must be a Kubernetes version");
    }
}

fn plan_with_selector(selector: Value) -> Plan {
    object(
        "Plan",
        json!({"versionRange": "v1.27.x", "machineImageSelector": selector}),
    )
}

#[test]
fn plan_selector_requirements_are_consistent() {
    for ok in [
        json!({}),
        json!({"matchLabels": {"imageBuilderVersion": "v1", "example.com/os": ""}}),
        json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["v1"]}]}),
        json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
        json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist", "values": []}]}),
    ] {
        assert!(
            validate_cel(&plan_with_selector(ok.clone())).is_ok(),
            "{ok}"
        );
    }
    for bad in [
        json!({"matchExpressions": [{"key": "tier", "operator": "In"}]}),
        json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": []}]}),
        json!({"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["v1"]}]}),
    ] {
        refused_with(
            &plan_with_selector(bad),
            "values must be non-empty for the In and NotIn operators",
        );
    }
    refused_with(
        &plan_with_selector(json!({"matchLabels": {"bad key!": "v1"}})),
        "matchLabels keys must be label keys",
    );
    refused_with(
        &plan_with_selector(json!({"matchExpressions": [{"key": "-tier", "operator": "Exists"}]})),
        "key must be a label key",
    );
}

#[test]
fn signed_by_references_name_their_object() {
    refused_with(
        &source(
            json!({"url": "https://r.example/", "signedBy": {"configMapKeyRef": {"key": "k"}}}),
        ),
        "spec.signedBy.configMapKeyRef.name must name a ConfigMap",
    );
    refused_with(
        &source(
            json!({"url": "https://r.example/", "signedBy": {"secretKeyRef": {"name": "", "key": "k"}}}),
        ),
        "spec.signedBy.secretKeyRef.name must name a Secret",
    );
    let named = source(
        json!({"url": "https://r.example/", "signedBy": {"secretKeyRef": {"name": "keys", "key": "k"}}}),
    );
    assert!(validate_cel(&named).is_ok());
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
        prop::option::of(prop_oneof![
            Just("-rc.1"),
            Just("-0"),
            Just("-01"),
            Just("-rc.007"),
            Just("-0a.1"),
            Just("+build.007")
        ]),
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
        Just(",,"),
        Just("\t"),
        Just(",\n"),
        Just("\r\n||\t"),
        Just("\t-\t"),
        Just("\u{b}")
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

fn version_text() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        Just("0".to_owned()),
        Just("00".to_owned()),
        Just("01".to_owned()),
        Just("x".to_owned()),
        Just("99999999999999999999".to_owned()),
        (0u32..40).prop_map(|n| n.to_string())
    ];
    let suffix = prop_oneof![
        Just(""),
        Just("-rc.1"),
        Just("-0"),
        Just("-01"),
        Just("-0a"),
        Just("-"),
        Just("-rc..1"),
        Just("+build.007"),
        Just("+"),
        Just("-alpha+b"),
        Just(" "),
        Just(".4")
    ];
    (
        prop_oneof![Just(""), Just("v"), Just("V"), Just("vv")],
        number.clone(),
        prop::option::of(number.clone()),
        prop::option::of(number),
        suffix,
    )
        .prop_map(|(v, a, b, c, suffix)| {
            let mut s = format!("{v}{a}");
            for part in [b, c].into_iter().flatten() {
                s.push('.');
                s.push_str(&part);
            }
            s.push_str(suffix);
            s
        })
}

/// A kind holding only the image version rule: the full MachineImage schema (a PodSpec) makes
/// each offline evaluation slow.
#[derive(
    kube::CustomResource, kube::KubeSchema, serde::Serialize, serde::Deserialize, Clone, Debug,
)]
#[kube(
    group = "probe.example",
    version = "v1",
    kind = "VersionProbe",
    namespaced
)]
struct VersionProbeSpec {
    #[x_kube(validation = super::machine_image::version_rule())]
    version: String,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Admission accepts exactly the image versions the controllers parse strictly.
    #[test]
    fn image_version_rule_agrees_with_the_strict_parser(version in version_text()) {
        let probe = VersionProbe::new("x", VersionProbeSpec { version: version.clone() });
        let admitted = validate_cel(&probe).is_ok();
        let parsed = crate::version::parse_strict(&version).is_some();
        prop_assert_eq!(admitted, parsed, "version {:?}", version);
    }
}

fn rollout(rollout: Value) -> Plan {
    object(
        "Plan",
        json!({"versionRange": "v1.31.x", "rollout": rollout}),
    )
}

#[test]
fn rollout_rules_accept_and_refuse_with_the_field() {
    for ok in [
        json!({"waves": [{"name": "canary", "clusterSelector": {"matchLabels": {"ring": "canary"}}, "maxConcurrent": 1, "soak": "30m"}, {"name": "everyone", "clusterSelector": {}, "maxConcurrent": "10%"}], "stepTimeout": "2h"}),
        json!({"waves": [{"name": "all"}]}),
        json!({"waves": [{"name": "a", "maxConcurrent": "100%", "soak": "0s"}, {"name": "b", "maxConcurrent": 256}], "stepTimeout": "1s"}),
    ] {
        let r = validate_cel(&rollout(ok.clone()));
        assert!(r.is_ok(), "{ok}: {r:?}");
    }
    // Wave names are the keys of a list-map: the API server refuses a duplicate (see the invalid
    // admission manifests).
    // maxConcurrent's bounds are schema value validations (minimum, maximum, pattern): see
    // the invalid admission manifests.
    refused_with(
        &rollout(json!({"waves": [{"name": "a", "soak": "30 minutes"}]})),
        "spec.rollout.waves[].soak",
    );
    refused_with(
        &rollout(json!({"waves": [{"name": "a"}], "stepTimeout": "0s"})),
        "spec.rollout.stepTimeout",
    );
}
