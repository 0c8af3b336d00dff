//! The apply step: the missing images first (AlreadyExists meaning done), so that the status
//! never claims an image that is not there; then one status write when something changed; then
//! the decision's events.

use api::v1alpha1::{MachineImage, MachineImageSyncer};
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use super::{Context, Decision, EVENT_CREATED, Error, FIELD_MANAGER};
use crate::runtime::Note;
use crate::runtime::status::{ApiError, apply_status, bounded};

/// Carries out `decision` for `syncer`.
pub(super) async fn apply(
    ctx: &Context,
    syncer: &MachineImageSyncer,
    decision: &Decision,
) -> Result<(), Error> {
    let namespace = syncer.namespace().unwrap_or_default();
    let api: Api<MachineImage> = Api::namespaced(ctx.core.client.clone(), &namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    for image in &decision.creates {
        let image_name = image.name_any();
        match bounded(api.create(&params, image)).await {
            Ok(_) => {
                let note = Note::normal(
                    EVENT_CREATED,
                    format!(
                        "created MachineImage {image_name} for version {}",
                        image.spec.version
                    ),
                );
                ctx.core.events.publish(syncer, &note).await;
            }
            // Created before: by an earlier reconcile that crashed, or one the cache has not
            // shown yet. Done either way.
            Err(ApiError::Api(kube::Error::Api(status))) if status.code == 409 => {}
            Err(source) => {
                return Err(Error::CreateMachineImageFailed {
                    name: image_name,
                    source,
                });
            }
        }
    }
    if syncer.status.clone().unwrap_or_default() != decision.status {
        let syncers: Api<MachineImageSyncer> = Api::namespaced(ctx.core.client.clone(), &namespace);
        apply_status(
            &syncers,
            &syncer.name_any(),
            FIELD_MANAGER,
            &decision.status,
        )
        .await
        .map_err(Error::WriteStatus)?;
    }
    for note in &decision.notes {
        ctx.core.events.publish(syncer, note).await;
    }
    Ok(())
}
