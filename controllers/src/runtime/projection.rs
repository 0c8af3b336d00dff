//! What the shared caches keep of each kind: the fields some controller reads from the cache,
//! and nothing else. Every watch event is projected before it reaches a store (and before a
//! deletion reaches [`super::Cache::deleted`]).
//!
//! Every kind loses `metadata.managedFields` and the `last-applied-configuration` annotation:
//! no controller reads them, and they often outweigh the rest of the object. Beyond that:
//!
//! | Kind | Also dropped | Who reads what from the cache |
//! |---|---|---|
//! | MachineImage | `spec.jobTemplate` | Plan and upgraders: namespace, labels, `spec.version`, `spec.id`, `status.ready`, `status.buildCompletionTime`, creation time. Syncer: labels, `spec.version`, `spec.id`. Template: the cloned-from annotation, creation time. MachineImage: everything but the template, which it reads with a GET of the one image when the reconcile may use it ([`lacks_job_template`]). |
//! | Plan, upgraders, syncers, templates, sources | nothing | their own controllers read spec and status; the upgraders read a Plan's selector and status |
//! | Job (labelled with an image name) | nothing | MachineImage: labels, owners, annotations, the pod template's containers, status |
//! | Namespace | nothing | MachineImage: the build-pod labels and annotations |
//! | ConfigMap, Secret, Pod (owned children) | nothing | a controller that owns them, through `children::owned_cache` |
//! | Cluster API Cluster (the upgraders' own watch, shared by both kinds) | everything but the fields in [`cluster`]'s table: it is stored typed ([`cluster::CachedCluster`]), never as a JSON tree | upgraders: the pause, topology, the control plane reference, labels, generation, resourceVersion, the rollout's conditions and summaries |

use std::sync::{Arc, LazyLock};

use api::v1alpha1::{
    ClusterClassClusterUpgrader, DebianRepositorySource, InClusterUpgradeAutomation, JobTemplate,
    MachineImage, MachineImageSyncer, MachineImageTemplate, Plan,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DeserializeGuard;

pub mod cluster;

/// The annotation `kubectl apply` keeps its last applied object in.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A kind a shared cache may hold: how it is cut down before it is stored.
pub trait Projected {
    /// Drops what no controller reads from the cache.
    fn project(&mut self);
}

/// Drops `managedFields` and the `last-applied-configuration` annotation.
pub fn strip_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

impl<K: Projected> Projected for DeserializeGuard<K> {
    fn project(&mut self) {
        match &mut self.0 {
            Ok(object) => object.project(),
            Err(invalid) => strip_metadata(&mut invalid.metadata),
        }
    }
}

/// The one empty template every cached image shares.
static NO_JOB_TEMPLATE: LazyLock<Arc<JobTemplate>> = LazyLock::new(Arc::default);

impl Projected for MachineImage {
    fn project(&mut self) {
        strip_metadata(&mut self.metadata);
        self.spec.job_template = Arc::clone(&NO_JOB_TEMPLATE);
    }
}

/// Whether `image` came from the shared cache, which drops `spec.jobTemplate`: the API server
/// refuses a template without containers, so only a projected image has none.
pub fn lacks_job_template(image: &MachineImage) -> bool {
    image.spec.job_template.spec.containers.is_empty()
}

/// Kinds that keep everything but the metadata [`strip_metadata`] drops.
macro_rules! metadata_only {
    ($($kind:ty),* $(,)?) => {$(
        impl Projected for $kind {
            fn project(&mut self) {
                strip_metadata(&mut self.metadata);
            }
        }
    )*};
}

metadata_only!(
    Plan,
    ClusterClassClusterUpgrader,
    InClusterUpgradeAutomation,
    MachineImageSyncer,
    MachineImageTemplate,
    DebianRepositorySource,
    Job,
    Namespace,
    // Kinds a controller may own as children (`children::owned_cache`).
    ConfigMap,
    Secret,
    Pod,
);

#[cfg(test)]
mod tests;
