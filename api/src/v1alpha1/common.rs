//! Names, references and printer-column fragments shared by every kind.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Annotation on a build Job carrying the built image's ID; copied to `MachineImage.spec.id`.
pub const IMAGE_ID_ANNOTATION: &str = "kubernetesupgraded.dimitrikoshkin.com/image-id";
/// Label on a build Job naming the MachineImage that owns it.
pub const MACHINE_IMAGE_NAME_LABEL: &str =
    "kubernetesupgraded.dimitrikoshkin.com/machine-image-name";
/// Annotation on a MachineImage requesting a new build whenever its value changes.
pub const REBUILD_ANNOTATION: &str = "kubernetesupgraded.dimitrikoshkin.com/rebuild";
/// Label on a syncer-created MachineImage naming its MachineImageSyncer.
pub const SYNCER_NAME_LABEL: &str =
    "kubernetes-upgrader.dimitrikoshkin.com/machine-image-syncer-name";
/// Label on a syncer-created MachineImage holding its Kubernetes version.
pub const KUBERNETES_VERSION_LABEL: &str =
    "kubernetes-upgrader.dimitrikoshkin.com/kubernetes-version";
/// Annotation on a syncer-created MachineImage naming the template it was cloned from.
pub const CLONED_FROM_ANNOTATION: &str = "kubernetes-upgrader.dimitrikoshkin.com/cloned-from";
/// Environment variable holding the version to build, injected into every build container.
pub const KUBERNETES_VERSION_ENV: &str = "KUBERNETES_VERSION";

/// The condition type every reconciled kind reports.
pub const CONDITION_READY: &str = "Ready";

/// A reference from one object to another in its own namespace. It has the fields and JSON form
/// of core/v1 `ObjectReference`, as in v0.6, and is replaced as a whole under server-side apply
/// (`x-kubernetes-map-type: atomic`), so no subfield of an earlier reference survives a change.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// API version of the referent, such as `kubernetesupgraded.dimitrikoshkin.com/v1alpha1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 317))]
    pub api_version: Option<String>,
    /// Kind of the referent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub kind: Option<String>,
    /// Name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the referent: empty or this object's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// UID of the referent; not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub uid: Option<String>,
    /// Resource version of the referent; not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub resource_version: Option<String>,
    /// A part of the referent; not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub field_path: Option<String>,
}

/// A label selector with the fields and JSON form of metav1 `LabelSelector`, checked at admission:
/// label keys and values must be valid, operators known, and values consistent with them.
/// Replaced as a whole under server-side apply, as in v0.6.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels an object must carry, each with exactly this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = kube::core::Rule::new(label_keys_rule()).message("spec.machineImageSelector.matchLabels keys must be label keys: an optional DNS prefix and '/', then up to 63 characters of [A-Za-z0-9._-], alphanumeric at both ends"))]
    pub match_labels: Option<BTreeMap<String, LabelValue>>,
    /// Requirements an object's labels must meet, all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// A label value: up to 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends, or empty.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(transparent)]
pub struct LabelValue(
    #[schemars(length(max = 63), regex(pattern = LABEL_VALUE_PATTERN))] pub String,
);

/// One requirement of a [`LabelSelector`].
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = kube::core::Rule::new("self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)").message("spec.machineImageSelector.matchExpressions[].values must be non-empty for the In and NotIn operators, and empty for Exists and DoesNotExist"))]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches('{LABEL_KEY_PATTERN}')")).message("spec.machineImageSelector.matchExpressions[].key must be a label key: an optional DNS prefix and '/', then up to 63 characters of [A-Za-z0-9._-], alphanumeric at both ends"))]
    pub key: String,
    /// How the key relates to the values.
    pub operator: SelectorOperator,
    /// The values for `In` and `NotIn`; empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub values: Option<Vec<LabelValue>>,
}

/// The operator of a [`LabelSelectorRequirement`].
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    /// The label's value is one of the values.
    In,
    /// The label is absent, or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// A valid label value (empty included).
pub const LABEL_VALUE_PATTERN: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// A valid label key: an optional DNS subdomain prefix and `/`, then a name.
pub const LABEL_KEY_PATTERN: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";

fn label_keys_rule() -> String {
    format!("self.all(k, k.matches('{LABEL_KEY_PATTERN}'))")
}

impl LabelSelector {
    /// Whether `labels` meet every label and requirement; an empty selector matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let labels_match = self
            .match_labels
            .iter()
            .flatten()
            .all(|(key, value)| labels.get(key) == Some(&value.0));
        labels_match
            && self
                .match_expressions
                .iter()
                .flatten()
                .all(|requirement| requirement.matches(labels))
    }
}

impl LabelSelectorRequirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let listed = || {
            value.is_some_and(|v| {
                self.values
                    .iter()
                    .flatten()
                    .any(|candidate| candidate.0 == *v)
            })
        };
        match self.operator {
            SelectorOperator::In => listed(),
            SelectorOperator::NotIn => !listed(),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// Where a reference points once an empty namespace is resolved to the referrer's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedRef<'a> {
    /// Namespace of the referenced object.
    pub namespace: &'a str,
    /// Name of the referenced object.
    pub name: &'a str,
}

/// Why a reference cannot be followed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The reference names no object.
    #[error("{field}.name must be set")]
    MissingName {
        /// JSON path of the reference.
        field: &'static str,
    },
    /// The reference leaves the referrer's namespace.
    #[error(
        "{field}.namespace {namespace:?} must be empty or equal to the object's namespace {own:?}"
    )]
    CrossNamespace {
        /// JSON path of the reference.
        field: &'static str,
        /// The namespace the reference names.
        namespace: String,
        /// The referrer's namespace.
        own: String,
    },
}

/// Resolves `reference` against the namespace of the object holding it: empty means the same
/// namespace, any other namespace is refused.
pub fn resolve_reference<'a>(
    field: &'static str,
    reference: &'a ObjectRef,
    own_namespace: &'a str,
) -> Result<ResolvedRef<'a>, ReferenceError> {
    let name = Some(reference.name.as_str())
        .filter(|n| !n.is_empty())
        .ok_or(ReferenceError::MissingName { field })?;
    match reference.namespace.as_deref() {
        None | Some("") => Ok(ResolvedRef {
            namespace: own_namespace,
            name,
        }),
        Some(ns) if ns == own_namespace => Ok(ResolvedRef {
            namespace: ns,
            name,
        }),
        Some(ns) => Err(ReferenceError::CrossNamespace {
            field,
            namespace: ns.to_owned(),
            own: own_namespace.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: Option<&str>, namespace: Option<&str>) -> ObjectRef {
        ObjectRef {
            name: name.unwrap_or_default().to_owned(),
            namespace: namespace.map(str::to_owned),
            ..ObjectRef::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn selector(yaml: serde_json::Value) -> LabelSelector {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn selectors_match_like_metav1() {
        let on = labels(&[("tier", "v1"), ("os", "elemental")]);
        let cases = [
            (serde_json::json!({}), true),
            (serde_json::json!({"matchLabels": {"tier": "v1"}}), true),
            (serde_json::json!({"matchLabels": {"tier": "v2"}}), false),
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["v0", "v1"]}]}),
                true,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["v1"]}]}),
                false,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "absent", "operator": "NotIn", "values": ["v1"]}]}),
                true,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "os", "operator": "Exists"}]}),
                true,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "os", "operator": "DoesNotExist"}]}),
                false,
            ),
            (
                serde_json::json!({"matchLabels": {"tier": "v1"}, "matchExpressions": [{"key": "absent", "operator": "Exists"}]}),
                false,
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(selector(yaml.clone()).matches(&on), want, "{yaml}");
        }
        assert!(
            serde_json::from_value::<LabelSelector>(
                serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})
            )
            .is_err()
        );
    }

    #[test]
    fn empty_namespace_resolves_to_own() {
        for ns in [None, Some("")] {
            let r = reference(Some("a"), ns);
            assert_eq!(
                resolve_reference("spec.planRef", &r, "team"),
                Ok(ResolvedRef {
                    namespace: "team",
                    name: "a"
                })
            );
        }
    }

    #[test]
    fn same_namespace_is_accepted_and_other_refused() {
        let same = reference(Some("a"), Some("team"));
        assert!(resolve_reference("spec.planRef", &same, "team").is_ok());
        let other = reference(Some("a"), Some("kube-system"));
        let err = resolve_reference("spec.planRef", &other, "team").unwrap_err();
        assert!(
            err.to_string()
                .contains("spec.planRef.namespace \"kube-system\""),
            "{err}"
        );
    }

    #[test]
    fn missing_name_is_refused() {
        for name in [None, Some("")] {
            let r = reference(name, None);
            assert_eq!(
                resolve_reference("spec.sourceRef", &r, "team"),
                Err(ReferenceError::MissingName {
                    field: "spec.sourceRef"
                })
            );
        }
    }
}
