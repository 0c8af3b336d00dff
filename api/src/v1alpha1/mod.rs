//! Version `v1alpha1`, the only served and stored version.

mod common;
mod debian_repository_source;
mod machine_image;
mod machine_image_syncer;
mod machine_image_template;
mod plan;
mod rollout;
mod upgrader;

pub use common::*;
pub use debian_repository_source::*;
pub use machine_image::*;
pub use machine_image_syncer::*;
pub use machine_image_template::*;
pub use plan::*;
pub use rollout::*;
pub use upgrader::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::{CustomResourceExt, Resource};

/// Every CRD of this version, in a stable order.
///
/// Three adjustments follow generation:
/// - the embedded core/v1 PodSpec schemas lose their descriptions (`kubectl explain pod.spec`
///   has them), which keeps each CRD small enough for client-side `kubectl apply`;
/// - a field with a default is not nullable, so the API server drops an explicit `null` and
///   applies the default (`interval: null` becomes 1h, as in v0.6);
/// - conditions carry the bounds of metav1.Condition (type, status, reason and message).
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
                visit(schema, &mut |s| {
                    if s.default.is_some() {
                        s.nullable = None;
                    }
                });
                visit(schema, &mut bound_conditions);
            }
        }
    }
    crds
}

/// The plural of every kind of [`crds`], in the same order, without generating their schemas
/// (the manager checks discovery for them at start).
pub fn plurals() -> Vec<String> {
    vec![
        DebianRepositorySource::plural(&()).into_owned(),
        MachineImageTemplate::plural(&()).into_owned(),
        MachineImageSyncer::plural(&()).into_owned(),
        MachineImage::plural(&()).into_owned(),
        Plan::plural(&()).into_owned(),
        ClusterClassClusterUpgrader::plural(&()).into_owned(),
        InClusterUpgradeAutomation::plural(&()).into_owned(),
    ]
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

/// Calls `f` on `schema` and every schema below it.
fn visit(schema: &mut JSONSchemaProps, f: &mut impl FnMut(&mut JSONSchemaProps)) {
    f(schema);
    for (_, property) in schema.properties.iter_mut().flatten() {
        visit(property, f);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        visit(items, f);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        visit(extra, f);
    }
}

/// Longest condition message the API accepts, as metav1.Condition declares it.
pub const CONDITION_MESSAGE_MAX: i64 = 32_768;

/// Gives every `conditions` list the bounds that metav1.Condition declares upstream.
fn bound_conditions(schema: &mut JSONSchemaProps) {
    let Some(conditions) = schema
        .properties
        .as_mut()
        .and_then(|p| p.get_mut("conditions"))
    else {
        return;
    };
    let Some(JSONSchemaPropsOrArray::Schema(item)) = conditions.items.as_mut() else {
        return;
    };
    let Some(fields) = item.properties.as_mut() else {
        return;
    };
    if let Some(message) = fields.get_mut("message") {
        message.max_length = Some(CONDITION_MESSAGE_MAX);
    }
    if let Some(reason) = fields.get_mut("reason") {
        reason.min_length = Some(1);
        reason.max_length = Some(1024);
        reason.pattern = Some("^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$".to_owned());
    }
    if let Some(type_) = fields.get_mut("type") {
        type_.max_length = Some(316);
    }
    if let Some(status) = fields.get_mut("status") {
        status.enum_ = Some(
            ["True", "False", "Unknown"]
                .map(|s| {
                    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON(
                        s.into(),
                    )
                })
                .to_vec(),
        );
    }
    conditions.max_items = Some(32);
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

#[cfg(test)]
mod tests {
    #[test]
    fn plurals_are_those_of_the_crds() {
        let from_crds: Vec<String> = super::crds()
            .into_iter()
            .map(|crd| crd.spec.names.plural)
            .collect();
        assert_eq!(super::plurals(), from_crds);
    }
}
