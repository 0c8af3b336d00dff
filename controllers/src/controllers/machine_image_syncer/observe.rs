//! The observe step: the source's versions (a DebianRepositorySource from the shared cache, any
//! other kind through discovery and the dynamic API), the syncer's images and its template,
//! from the shared caches.

use api::v1alpha1::{
    KUBERNETES_VERSION_LABEL, MachineImagePhase, MachineImageTemplate, SYNCER_NAME_LABEL,
};
use kube::api::{DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use super::{Context, Existing, GuardedImage, SourceFailure, SourceRef, SourceView};
use crate::runtime::status::bounded;

/// The syncer's images in the cache: those carrying both v0.6 labels with its name.
pub(super) fn existing_images(
    store: &Store<GuardedImage>,
    namespace: &str,
    syncer: &str,
) -> Vec<Existing> {
    let mut images: Vec<Existing> = store
        .state()
        .iter()
        .filter(|i| i.namespace().as_deref() == Some(namespace))
        .filter(|i| i.labels().get(SYNCER_NAME_LABEL).map(String::as_str) == Some(syncer))
        .filter_map(|i| {
            Some(Existing {
                name: i.name_any(),
                version_label: i.labels().get(KUBERNETES_VERSION_LABEL)?.clone(),
                spec_version: i.0.as_ref().ok().map(|image| image.spec.version.clone()),
                building: i.0.as_ref().ok().is_some_and(|image| {
                    image.spec.id.as_deref().is_none_or(str::is_empty)
                        && image.status.as_ref().and_then(|s| s.phase)
                            != Some(MachineImagePhase::Failed)
                }),
            })
        })
        .collect();
    images.sort_by(|a, b| a.name.cmp(&b.name));
    images
}

/// The syncer's template, from the shared cache.
pub(super) fn template(ctx: &Context, namespace: &str, name: &str) -> Option<MachineImageTemplate> {
    ctx.stores
        .templates
        .get(&ObjectRef::new(name).within(namespace))
        .and_then(|t| t.0.as_ref().ok().cloned())
}

/// Reads the source's versions: a DebianRepositorySource from the shared cache, any other kind
/// through discovery and the dynamic API.
pub(super) async fn read_source(
    ctx: &Context,
    source: &SourceRef,
) -> Result<SourceView, SourceFailure> {
    let what = format!(
        "{} {}/{} ({})",
        source.kind, source.namespace, source.name, source.api_version
    );
    if source.is_watched() {
        let cached = ctx
            .stores
            .sources
            .get(&ObjectRef::new(&source.name).within(&source.namespace))
            .ok_or_else(|| SourceFailure::NotFound(format!("{what} not found")))?;
        let object = cached.0.as_ref().map_err(|invalid| {
            SourceFailure::Unreachable(format!("{what} cannot be read: {}", invalid.error))
        })?;
        let json = serde_json::to_value(object)
            .map_err(|e| SourceFailure::Unreachable(format!("{what} cannot be read: {e}")))?;
        let view = SourceView::from_json(&json);
        tracing::debug!(source = %what, versions = view.versions.len(), resource_version = ?object.resource_version(), "read the source from the cache");
        return Ok(view);
    }
    let (group, version) = match source.api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", source.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &source.kind);
    let resource = match tokio::time::timeout(
        crate::runtime::status::API_TIMEOUT,
        kube::discovery::pinned_kind(&ctx.core.client, &gvk),
    )
    .await
    {
        Ok(Ok((resource, _))) => resource,
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
            return Err(SourceFailure::NotFound(format!(
                "{what}: the API server does not serve this kind"
            )));
        }
        Ok(Err(kube::Error::Discovery(err))) => {
            return Err(SourceFailure::NotFound(format!(
                "{what}: the API server does not serve this kind: {err}"
            )));
        }
        Ok(Err(err)) => {
            return Err(SourceFailure::Unreachable(format!(
                "{what}: discovery failed: {}",
                crate::runtime::cause_chain(&err)
            )));
        }
        Err(_) => {
            return Err(SourceFailure::Unreachable(format!(
                "{what}: discovery did not answer"
            )));
        }
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.core.client.clone(), &source.namespace, &resource);
    match bounded(api.get_opt(&source.name)).await {
        Ok(Some(object)) => serde_json::to_value(&object)
            .map(|json| SourceView::from_json(&json))
            .map_err(|e| SourceFailure::Unreachable(format!("{what} cannot be read: {e}"))),
        Ok(None) => Err(SourceFailure::NotFound(format!("{what} not found"))),
        Err(err) => Err(SourceFailure::Unreachable(format!(
            "{what} cannot be read: {}",
            crate::runtime::cause_chain(&err)
        ))),
    }
}
