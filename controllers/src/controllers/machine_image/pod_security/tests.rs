//! One case per rule: what the baseline profile refuses, the field a refusal names, and what the
//! namespace's label and annotation allow.

use super::*;
use kube::core::cel::{AdmissionRequest, VapEvaluator, VapExpression};
use serde_json::{Value, json};

/// A build pod that uses everything the baseline profile allows.
fn allowed() -> Value {
    json!({
        "restartPolicy": "Never",
        "serviceAccountName": "default",
        "securityContext": {
            "runAsUser": 0,
            "seccompProfile": {"type": "RuntimeDefault"},
            "appArmorProfile": {"type": "Localhost", "localhostProfile": "builds"},
            "seLinuxOptions": {"type": "container_t", "level": "s0:c1,c2"},
            "sysctls": [{"name": "net.ipv4.ping_group_range", "value": "0 2147483647"}]
        },
        "initContainers": [{"name": "fetch", "image": "busybox"}],
        "containers": [{
            "name": "build",
            "image": "builder",
            "ports": [{"containerPort": 8080, "hostPort": 0}],
            "livenessProbe": {"httpGet": {"port": 8080, "path": "/"}},
            "lifecycle": {"preStop": {"tcpSocket": {"port": 8080}}},
            "securityContext": {
                "privileged": false,
                "allowPrivilegeEscalation": true,
                "procMount": "Default",
                "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID", "NET_BIND_SERVICE"]},
                "seccompProfile": {"type": "Localhost", "localhostProfile": "builds.json"},
                "appArmorProfile": {"type": "RuntimeDefault"},
                "windowsOptions": {"hostProcess": false}
            }
        }],
        "volumes": [{"name": "work", "emptyDir": {}}]
    })
}

fn spec(value: &Value) -> PodSpec {
    serde_json::from_value(value.clone()).unwrap()
}

fn with(change: impl FnOnce(&mut Value)) -> Value {
    let mut value = allowed();
    change(&mut value);
    value
}

fn baseline() -> BuildPodPolicy {
    BuildPodPolicy::default()
}

fn privileged() -> BuildPodPolicy {
    BuildPodPolicy {
        privileged: true,
        ..BuildPodPolicy::default()
    }
}

fn fields(refusal: &Refusal) -> Vec<&str> {
    refusal
        .violations
        .iter()
        .map(|v| v.field.as_str())
        .collect()
}

#[test]
fn a_pod_within_the_baseline_profile_is_allowed() {
    assert_eq!(check(&spec(&allowed()), "team", &baseline()), Ok(()));
    let minimal = spec(&json!({"containers": [{"name": "build", "image": "b"}]}));
    assert_eq!(check(&minimal, "team", &baseline()), Ok(()));
}

/// Each baseline rule (and `nodeName`): what breaks it, and the one field the refusal names.
fn baseline_cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "privileged container",
            with(|s| s["containers"][0]["securityContext"]["privileged"] = json!(true)),
            "spec.jobTemplate.spec.containers[0].securityContext.privileged",
        ),
        (
            "privileged init container",
            with(|s| s["initContainers"][0]["securityContext"] = json!({"privileged": true})),
            "spec.jobTemplate.spec.initContainers[0].securityContext.privileged",
        ),
        (
            "privileged ephemeral container",
            with(|s| {
                s["ephemeralContainers"] = json!([{"name": "debug", "image": "b", "securityContext": {"privileged": true}}]);
            }),
            "spec.jobTemplate.spec.ephemeralContainers[0].securityContext.privileged",
        ),
        (
            "hostPath volume",
            with(|s| {
                s["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "root", "hostPath": {"path": "/"}}));
            }),
            "spec.jobTemplate.spec.volumes[1].hostPath",
        ),
        (
            "host network",
            with(|s| s["hostNetwork"] = json!(true)),
            "spec.jobTemplate.spec.hostNetwork",
        ),
        (
            "host PID",
            with(|s| s["hostPID"] = json!(true)),
            "spec.jobTemplate.spec.hostPID",
        ),
        (
            "host IPC",
            with(|s| s["hostIPC"] = json!(true)),
            "spec.jobTemplate.spec.hostIPC",
        ),
        (
            "a capability beyond the default set",
            with(|s| {
                s["containers"][0]["securityContext"]["capabilities"]["add"] =
                    json!(["SETUID", "SYS_ADMIN"]);
            }),
            "spec.jobTemplate.spec.containers[0].securityContext.capabilities.add",
        ),
        (
            "NET_RAW, outside the default set",
            with(|s| {
                s["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["NET_RAW"]);
            }),
            "spec.jobTemplate.spec.containers[0].securityContext.capabilities.add",
        ),
        (
            "Unconfined seccomp, pod",
            with(|s| s["securityContext"]["seccompProfile"] = json!({"type": "Unconfined"})),
            "spec.jobTemplate.spec.securityContext.seccompProfile.type",
        ),
        (
            "Unconfined seccomp, container",
            with(|s| {
                s["containers"][0]["securityContext"]["seccompProfile"] =
                    json!({"type": "Unconfined"});
            }),
            "spec.jobTemplate.spec.containers[0].securityContext.seccompProfile.type",
        ),
        (
            "Unconfined AppArmor, pod",
            with(|s| s["securityContext"]["appArmorProfile"] = json!({"type": "Unconfined"})),
            "spec.jobTemplate.spec.securityContext.appArmorProfile.type",
        ),
        (
            "Unconfined AppArmor, container",
            with(|s| {
                s["containers"][0]["securityContext"]["appArmorProfile"] =
                    json!({"type": "Unconfined"});
            }),
            "spec.jobTemplate.spec.containers[0].securityContext.appArmorProfile.type",
        ),
        (
            "an SELinux type outside the container types",
            with(|s| s["securityContext"]["seLinuxOptions"]["type"] = json!("spc_t")),
            "spec.jobTemplate.spec.securityContext.seLinuxOptions.type",
        ),
        (
            "an SELinux user",
            with(|s| {
                s["containers"][0]["securityContext"]["seLinuxOptions"] =
                    json!({"user": "system_u"});
            }),
            "spec.jobTemplate.spec.containers[0].securityContext.seLinuxOptions.user",
        ),
        (
            "an SELinux role",
            with(|s| s["securityContext"]["seLinuxOptions"]["role"] = json!("system_r")),
            "spec.jobTemplate.spec.securityContext.seLinuxOptions.role",
        ),
        (
            "an unmasked /proc",
            with(|s| s["containers"][0]["securityContext"]["procMount"] = json!("Unmasked")),
            "spec.jobTemplate.spec.containers[0].securityContext.procMount",
        ),
        (
            "an unsafe sysctl",
            with(|s| {
                s["securityContext"]["sysctls"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "kernel.msgmax", "value": "1"}));
            }),
            "spec.jobTemplate.spec.securityContext.sysctls[1].name",
        ),
        (
            "a host port",
            with(|s| s["containers"][0]["ports"][0]["hostPort"] = json!(2375)),
            "spec.jobTemplate.spec.containers[0].ports[0].hostPort",
        ),
        (
            "a probe's host",
            with(|s| s["containers"][0]["livenessProbe"]["httpGet"]["host"] = json!("10.0.0.1")),
            "spec.jobTemplate.spec.containers[0].livenessProbe.httpGet.host",
        ),
        (
            "a lifecycle hook's host",
            with(|s| {
                s["containers"][0]["lifecycle"]["preStop"]["tcpSocket"]["host"] =
                    json!("metadata.internal");
            }),
            "spec.jobTemplate.spec.containers[0].lifecycle.preStop.tcpSocket.host",
        ),
        (
            "a Windows host process",
            with(|s| {
                s["containers"][0]["securityContext"]["windowsOptions"]["hostProcess"] =
                    json!(true);
            }),
            "spec.jobTemplate.spec.containers[0].securityContext.windowsOptions.hostProcess",
        ),
        (
            "a node chosen by name",
            with(|s| s["nodeName"] = json!("control-plane-0")),
            "spec.jobTemplate.spec.nodeName",
        ),
    ]
}

#[test]
fn each_baseline_rule_names_its_field_and_the_label_lifts_it() {
    let c = "spec.jobTemplate.spec.containers[0]";
    let cases = baseline_cases();
    assert!(
        cases
            .iter()
            .all(|(_, _, field)| field.starts_with("spec.jobTemplate.spec."))
    );
    for (what, pod, field) in &cases {
        let pod = &spec(pod);
        let refusal = check(pod, "team", &baseline()).expect_err(what);
        assert_eq!(fields(&refusal), [*field], "{what}");
        assert_eq!(
            refusal.violations[0].allowed_by,
            AllowedBy::PrivilegedLabel,
            "{what}"
        );
        let message = refusal.to_string();
        assert!(message.contains(field), "{what}: {message}");
        assert!(
            message.contains(
                "the namespace label kubernetesupgraded.dimitrikoshkin.com/build-pod-security=privileged allows it"
            ),
            "{what}: {message}"
        );
        assert_eq!(check(pod, "team", &privileged()), Ok(()), "{what}");
    }
    // Container violations say which container.
    let refusal = check(&spec(&cases[0].1), "team", &baseline()).unwrap_err();
    assert_eq!(
        refusal.violations[0].to_string(),
        format!("{c}.securityContext.privileged is true (container \"build\")")
    );
}

#[test]
fn service_accounts_need_the_annotation_even_when_privileged() {
    for field in ["serviceAccountName", "serviceAccount"] {
        let pod = spec(&with(|s| s[field] = json!("cluster-admin-sa")));
        for policy in [baseline(), privileged()] {
            let refusal = check(&pod, "team", &policy).unwrap_err();
            assert_eq!(fields(&refusal), [format!("spec.jobTemplate.spec.{field}")]);
            assert_eq!(
                refusal.violations[0].allowed_by,
                AllowedBy::ServiceAccount("cluster-admin-sa".into())
            );
            let message = refusal.to_string();
            assert!(
                message.contains("kubernetesupgraded.dimitrikoshkin.com/build-service-accounts"),
                "{message}"
            );
            assert!(!message.contains("build-pod-security"), "{message}");
        }
        let listed = BuildPodPolicy {
            service_accounts: ["builder".into(), "cluster-admin-sa".into()].into(),
            ..BuildPodPolicy::default()
        };
        assert_eq!(check(&pod, "team", &listed), Ok(()));
    }
    for ok in ["", "default"] {
        let pod = spec(&with(|s| s["serviceAccountName"] = json!(ok)));
        assert_eq!(check(&pod, "team", &baseline()), Ok(()), "{ok:?}");
    }
}

#[test]
fn the_namespace_sets_the_policy() {
    let ns = |labels: Value, annotations: Value| -> Namespace {
        serde_json::from_value(json!({
            "metadata": {"name": "team", "labels": labels, "annotations": annotations}
        }))
        .unwrap()
    };
    assert_eq!(BuildPodPolicy::of(&ns(json!({}), json!({}))), baseline());
    assert_eq!(
        BuildPodPolicy::of(&ns(
            json!({BUILD_POD_SECURITY_LABEL: "privileged"}),
            json!({})
        )),
        privileged()
    );
    // Only `privileged` lifts the profile.
    for value in ["baseline", "Privileged", "true", ""] {
        assert!(
            !BuildPodPolicy::of(&ns(json!({BUILD_POD_SECURITY_LABEL: value}), json!({})))
                .privileged,
            "{value:?}"
        );
    }
    // An annotation of the same name does not; a label of the accounts' name does not list any.
    let policy = BuildPodPolicy::of(&ns(
        json!({BUILD_SERVICE_ACCOUNTS_ANNOTATION: "x"}),
        json!({BUILD_POD_SECURITY_LABEL: "privileged", BUILD_SERVICE_ACCOUNTS_ANNOTATION: " builder, ,publisher,"}),
    ));
    assert!(!policy.privileged);
    assert_eq!(
        policy.service_accounts,
        BTreeSet::from(["builder".to_owned(), "publisher".to_owned()])
    );
}

#[test]
fn a_refusal_lists_every_violation_boundedly() {
    let pod = spec(&with(|s| {
        s["hostNetwork"] = json!(true);
        s["hostPID"] = json!(true);
        s["hostIPC"] = json!(true);
        s["nodeName"] = json!("n".repeat(300));
        s["containers"][0]["securityContext"]["privileged"] = json!(true);
        s["serviceAccountName"] = json!("builder");
    }));
    let refusal = check(&pod, "team", &baseline()).unwrap_err();
    assert_eq!(refusal.violations.len(), 6);
    let message = refusal.to_string();
    assert!(message.contains(" and 1 more; "), "{message}");
    assert!(message.contains("allows them. "), "{message}");
    assert!(
        message.contains("serviceAccountName is \"builder\""),
        "{message}"
    );
    assert!(
        message.contains(&format!("{:?}…", "n".repeat(63))),
        "{message}"
    );
    assert!(
        message.len() < crate::text::MAX_MESSAGE_BYTES,
        "{}",
        message.len()
    );
}

#[test]
fn every_admission_rule_names_its_field_and_what_allows_it() {
    let rules = admission_rules();
    // One per check above: 13 profile rules and the service accounts.
    assert_eq!(rules.len(), 14);
    for rule in &rules[..13] {
        assert!(
            rule.expression.starts_with("variables.privileged || ("),
            "{rule:?}"
        );
        assert!(rule.message.starts_with("spec.template.spec."), "{rule:?}");
        assert!(rule.message.contains(BUILD_POD_SECURITY_LABEL), "{rule:?}");
        assert_eq!(
            rule.expression.matches('(').count(),
            rule.expression.matches(')').count(),
            "{rule:?}"
        );
    }
    let accounts = &rules[13];
    assert!(!accounts.expression.contains("variables.privileged"));
    assert!(accounts.message.contains(BUILD_SERVICE_ACCOUNTS_ANNOTATION));
    let all: String = rules.iter().map(|r| r.expression.clone()).collect();
    for list in [
        BASELINE_CAPABILITIES,
        SAFE_SYSCTLS,
        SELINUX_TYPES,
        PROFILE_TYPES,
    ] {
        for item in list {
            assert!(all.contains(&format!("'{item}'")), "{item}");
        }
    }
    let names: Vec<&str> = admission_variables().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["spec", "containers", "privileged", "serviceAccounts"]
    );
}

/// How the offline evaluator shows the map key `key`: it escapes map keys as the API server
/// escapes only schema property names (`.` as `__dot__`, …), so `'a.b/c' in labels` is false
/// offline. The rules are evaluated offline with their keys written that way.
fn offline_key(key: &str) -> String {
    let evaluator = VapEvaluator::builder()
        .object(json!({}))
        .namespace_object(json!({"metadata": {"labels": {key: "x"}}}))
        .request(AdmissionRequest::default())
        .build();
    let shown = evaluator.evaluate(&[VapExpression {
        expression: "namespaceObject.metadata.labels.map(k, k)[0] == 'unknown'".to_owned(),
        message: None,
        message_expression: Some("namespaceObject.metadata.labels.map(k, k)[0]".to_owned()),
    }]);
    shown[0].message.clone().unwrap()
}

/// The admission rules with every `variables.x` written out, as the offline evaluator has no
/// variables, and the namespace's keys as it shows them.
fn offline_rules() -> Vec<VapExpression> {
    let mut expanded: Vec<(String, String)> = Vec::new();
    let substitute = |text: &str, known: &[(String, String)]| {
        let mut text = text.to_owned();
        let mut by_length = known.to_vec();
        by_length.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        for (name, expression) in by_length {
            text = text.replace(&format!("variables.{name}"), &format!("({expression})"));
        }
        text
    };
    for (name, expression) in admission_variables() {
        let written = substitute(&expression, &expanded);
        expanded.push((name.to_owned(), written));
    }
    let keys = [BUILD_POD_SECURITY_LABEL, BUILD_SERVICE_ACCOUNTS_ANNOTATION]
        .map(|key| (format!("'{key}'"), format!("'{}'", offline_key(key))));
    admission_rules()
        .into_iter()
        .map(|rule| VapExpression {
            expression: keys.iter().fold(
                substitute(&rule.expression, &expanded),
                |text, (key, shown)| text.replace(key, shown),
            ),
            message: Some(rule.message),
            message_expression: None,
        })
        .collect()
}

/// The messages of the admission rules a Job with `pod` fails in a namespace with `metadata`.
fn admission_refusals(pod: &Value, metadata: &Value) -> Vec<String> {
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "img-abcde", "namespace": "team"},
        "spec": {"template": {"spec": pod}},
    });
    let mut namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata});
    namespace["metadata"]["name"] = json!("team");
    let evaluator = VapEvaluator::builder()
        .object(job)
        .namespace_object(namespace)
        .request(AdmissionRequest::default())
        .build();
    evaluator
        .evaluate(&offline_rules())
        .into_iter()
        .filter(|r| !r.passed)
        .map(|r| r.message.unwrap_or_default())
        .collect()
}

/// The policy and `check` agree on every case: the same pods refused, for the same field, and
/// the same label and annotation lifting them.
#[test]
fn the_admission_rules_agree_with_the_check() {
    let unlabelled = json!({});
    let lifted = json!({"labels": {BUILD_POD_SECURITY_LABEL: "privileged"}});
    assert_eq!(
        admission_refusals(&allowed(), &unlabelled),
        Vec::<String>::new()
    );
    for (what, pod, field) in baseline_cases() {
        if field.contains("ephemeralContainers") {
            // The API server refuses ephemeral containers in a pod template before any policy.
            continue;
        }
        let refused = admission_refusals(&pod, &unlabelled);
        assert_eq!(refused.len(), 1, "{what}: {refused:?}");
        // The check names `spec.jobTemplate.spec.x[0].y`, the policy `spec.template.spec.x[*].y`.
        let last = field.rsplit('.').next().unwrap();
        assert!(
            refused[0].contains(last),
            "{what}: {} lacks {last}",
            refused[0]
        );
        assert!(refused[0].contains(BUILD_POD_SECURITY_LABEL), "{what}");
        assert_eq!(
            admission_refusals(&pod, &lifted),
            Vec::<String>::new(),
            "{what}"
        );
    }
    for field in ["serviceAccountName", "serviceAccount"] {
        let pod = with(|s| s[field] = json!("builder"));
        for metadata in [&unlabelled, &lifted] {
            let refused = admission_refusals(&pod, metadata);
            assert_eq!(refused.len(), 1, "{field}: {refused:?}");
            assert!(refused[0].contains(BUILD_SERVICE_ACCOUNTS_ANNOTATION));
        }
        let listed =
            json!({"annotations": {BUILD_SERVICE_ACCOUNTS_ANNOTATION: "publisher, builder"}});
        assert_eq!(
            admission_refusals(&pod, &listed),
            Vec::<String>::new(),
            "{field}"
        );
        let other = json!({"annotations": {BUILD_SERVICE_ACCOUNTS_ANNOTATION: "builders"}});
        assert_eq!(admission_refusals(&pod, &other).len(), 1, "{field}");
    }
    // Only the exact value lifts the profile.
    let (_, pod, _) = &baseline_cases()[0];
    let wrong = json!({"labels": {BUILD_POD_SECURITY_LABEL: "Privileged"}});
    assert_eq!(admission_refusals(pod, &wrong).len(), 1);
}
