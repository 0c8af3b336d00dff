//! The `kubernetesupgraded.dimitrikoshkin.com/v1alpha1` API: custom resource types and the pure
//! helpers that interpret them. No client, no runtime: only types, parsing and validation.

// `printcolumn(name = .., type_ = "string", ..)` repeats `type_` across columns by design.
#![allow(clippy::duplicated_attributes)]
#![deny(missing_docs)]

pub mod conditions;
pub mod constraint;
pub mod durations;
pub mod names;
pub mod quantity;
pub mod v1alpha1;
pub mod version;

/// The API group of every kind in this crate.
pub const GROUP: &str = "kubernetesupgraded.dimitrikoshkin.com";
/// The only API version.
pub const VERSION: &str = "v1alpha1";
/// The category that lists every kind: `kubectl get cluster-upgrader`.
pub const CATEGORY: &str = "cluster-upgrader";
