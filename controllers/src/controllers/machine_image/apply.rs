//! The apply step: the attempt's Job (and [`settle`] on the answer: a taken name is read back and
//! refused unless it is ours), then `spec.id`, then the status; events last.

use api::v1alpha1::{MachineImage, OS_IMAGE_STAMP_ANNOTATION};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::{
    Context, Creation, Decision, Error, FIELD_MANAGER, Observed, RETRY_BASE, is_recorded, settle,
};
use crate::runtime::status::{ApiError, apply_status, bounded};

/// Carries out `decision`, decided on `observed`.
pub(super) async fn apply(
    ctx: &Context,
    observed: &Observed<'_>,
    mut decision: Decision,
) -> Result<Action, Error> {
    let image = observed.image;
    let namespace = image.namespace().unwrap_or_default();
    let name = image.name_any();
    let jobs_api: Api<Job> = Api::namespaced(ctx.core.client.clone(), &namespace);
    let images: Api<MachineImage> = Api::namespaced(ctx.core.client.clone(), &namespace);
    if let Some(job) = decision.create.clone() {
        let params = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.to_owned()),
        };
        let job_name = job.name_any();
        match bounded(jobs_api.create(&params, &job)).await {
            Ok(created) => decision = settle(observed, decision, Creation::Created(&created)),
            Err(ApiError::Api(kube::Error::Api(status))) if status.code == 409 => {
                let creating = |source| Error::CreatingJobError {
                    job: job_name.clone(),
                    source,
                };
                let Some(existing) = bounded(jobs_api.get_opt(&job_name))
                    .await
                    .map_err(creating)?
                else {
                    // Deleted since: the next reconcile creates it.
                    return Ok(Action::requeue(RETRY_BASE));
                };
                // Ours if the image's current status records it: this reconcile ran on a
                // stale copy, and the next one sees the Job.
                let fresh = bounded(images.get_opt(&name)).await.map_err(creating)?;
                if fresh.is_some_and(|f| is_recorded(&f, &existing)) {
                    return Ok(Action::requeue(RETRY_BASE));
                }
                decision = settle(observed, decision, Creation::NameTaken(&existing));
            }
            Err(source) => {
                return Err(Error::CreatingJobError {
                    job: job_name,
                    source,
                });
            }
        }
    }
    if let Some(write) = &decision.write_id {
        let body = serde_json::json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "MachineImage",
            "metadata": {"name": name, "annotations": {OS_IMAGE_STAMP_ANNOTATION: write.stamp}},
            "spec": {"id": write.id},
        });
        bounded(images.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        ))
        .await
        .map_err(Error::WriteImageId)?;
    }
    if image.status.as_ref() != Some(&decision.status) {
        apply_status(&images, &name, FIELD_MANAGER, &decision.status)
            .await
            .map_err(Error::WriteStatus)?;
    }
    for note in &decision.notes {
        ctx.core.events.publish(image, note).await;
    }
    Ok(decision
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}
