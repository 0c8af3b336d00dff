//! Names, references and printer-column fragments shared by every kind.

use k8s_openapi::api::core::v1::ObjectReference;

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
    reference: &'a ObjectReference,
    own_namespace: &'a str,
) -> Result<ResolvedRef<'a>, ReferenceError> {
    let name = reference
        .name
        .as_deref()
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

    fn reference(name: Option<&str>, namespace: Option<&str>) -> ObjectReference {
        ObjectReference {
            name: name.map(str::to_owned),
            namespace: namespace.map(str::to_owned),
            ..ObjectReference::default()
        }
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
