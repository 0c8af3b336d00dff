//! MachineImageSyncer fixtures shared by the syncer suite, the chaos run and the latency bench:
//! a template, a syncer, the images a syncer made, and an operator's nudge that makes a
//! DebianRepositorySource re-read its repository now instead of at its next interval.

use std::collections::BTreeMap;

use anyhow::Result;
use api::v1alpha1::{
    DebianRepositorySource, KUBERNETES_VERSION_LABEL, MachineImage, MachineImageSyncer,
    MachineImageTemplate, SYNCER_NAME_LABEL,
};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Field manager of the test's own writes.
pub const TEST_MANAGER: &str = "e2e-syncer";

/// A MachineImageTemplate named `name` with a label, an annotation and a one-container job.
pub fn template(name: &str) -> Result<MachineImageTemplate> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "MachineImageTemplate",
        "metadata": {"name": name},
        "spec": {"template": {
            "metadata": {
                "labels": {"imageBuilderVersion": "v1"},
                "annotations": {"team": "infra"},
            },
            "spec": {"jobTemplate": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "build", "image": "registry.example/builder:1", "args": ["build"]}],
            }}},
        }},
    }))?)
}

/// A syncer named `name` over the DebianRepositorySource `source` and the template `template`,
/// with `extra` merged into its spec. Its `maxConcurrentBuilds` is 100 unless `extra` sets it:
/// the suites that use it check which images are created, and no kubelet finishes their builds.
pub fn syncer(
    name: &str,
    range: &str,
    source: &str,
    template: &str,
    extra: &serde_json::Value,
) -> Result<MachineImageSyncer> {
    let mut spec = json!({
        "versionRange": range,
        "sourceRef": {
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "DebianRepositorySource",
            "name": source,
        },
        "machineImageTemplateRef": {"name": template},
        "maxConcurrentBuilds": 100,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "MachineImageSyncer",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

/// Creates `object` in `namespace`.
pub async fn create<K>(client: &Client, namespace: &str, object: &K) -> Result<K>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api.create(&PostParams::default(), object).await?)
}

/// The MachineImages carrying the syncer label `syncer`, by version label.
pub async fn images_of(
    client: &Client,
    namespace: &str,
    syncer: &str,
) -> Result<BTreeMap<String, Vec<MachineImage>>> {
    let api: Api<MachineImage> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default().labels(&format!("{SYNCER_NAME_LABEL}={syncer}")))
        .await?;
    let mut by_version: BTreeMap<String, Vec<MachineImage>> = BTreeMap::new();
    for image in list.items {
        let version = image
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(KUBERNETES_VERSION_LABEL))
            .cloned()
            .unwrap_or_default();
        by_version.entry(version).or_default().push(image);
    }
    Ok(by_version)
}

/// Makes the source re-read its repository now, as an operator could: a change of
/// `spec.timeout` (alternating between 5 s and 6 s with `nudge`) is a new generation, which the
/// DebianRepositorySource controller syncs at once.
pub async fn resync_source(client: &Client, namespace: &str, name: &str, nudge: u32) -> Result<()> {
    let api: Api<DebianRepositorySource> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"spec": {"timeout": format!("{}s", 5 + nudge % 2)}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Sets `spec.paused` of the syncer `name`.
pub async fn set_paused(client: &Client, namespace: &str, name: &str, paused: bool) -> Result<()> {
    let api: Api<MachineImageSyncer> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"spec": {"paused": paused}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
