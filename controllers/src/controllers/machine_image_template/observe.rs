//! The observe step: the images cloned from the template, from the shared cache, and, when the
//! template's generation changed, the API server's verdict on the Job rendered from it (a
//! server-side dry run of [`sample_image`]'s Job).

use std::sync::Arc;

use api::v1alpha1::{
    CLONED_FROM_ANNOTATION, DEBIAN_VERSION_ANNOTATION, MachineImage, MachineImageSpec,
    MachineImageTemplate,
};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use super::{
    Context, Error, FIELD_MANAGER, MAX_LISTED_IMAGES, SAMPLE_DEB_VERSION, SAMPLE_IMAGE,
    SAMPLE_VERSION, Verdict,
};
use crate::controllers::machine_image::render_job;
use crate::runtime::status::{ApiError, bounded};

/// The sample image a template's Job is rendered for in the dry run.
pub fn sample_image(template: &MachineImageTemplate) -> MachineImage {
    MachineImage {
        metadata: ObjectMeta {
            name: Some(SAMPLE_IMAGE.to_owned()),
            namespace: template.namespace(),
            annotations: Some(
                [(
                    DEBIAN_VERSION_ANNOTATION.to_owned(),
                    SAMPLE_DEB_VERSION.to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: MachineImageSpec {
            version: SAMPLE_VERSION.to_owned(),
            id: None,
            job_template: Arc::new(template.spec.template.spec.job_template.clone()),
        },
        status: None,
    }
}

/// The names of the images cloned from `template` (in its namespace), newest first, at most
/// [`MAX_LISTED_IMAGES`].
pub fn cloned_images<'a>(
    template: &MachineImageTemplate,
    images: impl IntoIterator<Item = &'a MachineImage>,
) -> Vec<String> {
    let name = template.name_any();
    let namespace = template.namespace();
    let mut cloned: Vec<&MachineImage> = images
        .into_iter()
        .filter(|i| {
            i.namespace() == namespace && i.annotations().get(CLONED_FROM_ANNOTATION) == Some(&name)
        })
        .collect();
    cloned.sort_by(|a, b| {
        b.creation_timestamp()
            .map(|t| t.0)
            .cmp(&a.creation_timestamp().map(|t| t.0))
            .then_with(|| b.name_any().cmp(&a.name_any()))
    });
    cloned
        .into_iter()
        .take(MAX_LISTED_IMAGES)
        .map(ResourceExt::name_any)
        .collect()
}

/// Renders the sample Job and submits it with `dryRun=All`. A refusal (4xx) is a verdict; any
/// other failure is an error to retry.
pub(super) async fn dry_run(
    ctx: &Context,
    namespace: &str,
    image: &MachineImage,
) -> Result<Verdict, Error> {
    let job = match render_job(image, 1, None) {
        Ok(job) => job,
        Err(err) => return Ok(Verdict::Invalid(err.to_string())),
    };
    let jobs: Api<Job> = Api::namespaced(ctx.core.client.clone(), namespace);
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    };
    match bounded(jobs.create(&params, &job)).await {
        // AlreadyExists comes from storage, after validation passed.
        Ok(_) => Ok(Verdict::Valid),
        Err(ApiError::Api(kube::Error::Api(status))) if status.code == 409 => Ok(Verdict::Valid),
        // Bad request or Invalid: the Job itself is refused. Anything else (forbidden, a
        // missing namespace, throttling, server errors) says nothing about the template.
        Err(ApiError::Api(kube::Error::Api(status))) if matches!(status.code, 400 | 422) => {
            Ok(Verdict::Invalid(format!(
                "the API server refuses the Job rendered from spec.template.spec.jobTemplate: {}",
                status.message
            )))
        }
        Err(source) => Err(Error::DryRun(source)),
    }
}
