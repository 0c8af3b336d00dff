//! Version `v1alpha1`, the only served and stored version.

mod common;
mod debian_repository_source;
mod machine_image;
mod machine_image_syncer;
mod machine_image_template;
mod plan;
mod upgrader;

pub use common::*;
pub use debian_repository_source::*;
pub use machine_image::*;
pub use machine_image_syncer::*;
pub use machine_image_template::*;
pub use plan::*;
pub use upgrader::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

/// Every CRD of this version, in a stable order.
///
/// The embedded core/v1 PodSpec schemas lose their descriptions (`kubectl explain pod.spec` has
/// them), which keeps each CRD small enough for client-side `kubectl apply`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        DebianRepositorySource::crd(),
        MachineImageTemplate::crd(),
        MachineImageSyncer::crd(),
        MachineImage::crd(),
        Plan::crd(),
        ClusterClassClusterUpgrader::crd(),
        InClusterUpgradeAutomation::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                strip_pod_spec_descriptions(schema);
            }
        }
    }
    crds
}

fn strip_pod_spec_descriptions(schema: &mut JSONSchemaProps) {
    for (name, property) in schema.properties.iter_mut().flatten() {
        let pod_spec = (name == "jobTemplate")
            .then(|| property.properties.as_mut().and_then(|p| p.get_mut("spec")))
            .flatten();
        match pod_spec {
            Some(spec) => spec
                .properties
                .iter_mut()
                .flatten()
                .for_each(|(_, p)| strip_descriptions(p)),
            None => strip_pod_spec_descriptions(property),
        }
    }
}

fn strip_descriptions(schema: &mut JSONSchemaProps) {
    schema.description = None;
    schema
        .properties
        .iter_mut()
        .flatten()
        .for_each(|(_, p)| strip_descriptions(p));
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        strip_descriptions(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        strip_descriptions(extra);
    }
}

#[cfg(test)]
mod cel_tests;
