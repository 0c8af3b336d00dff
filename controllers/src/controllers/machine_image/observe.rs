//! The observe step: the whole image when the cache's projection lacks its job template and
//! this reconcile may use it; the Job its status records (from the label-filtered cache, or read
//! directly when the cache lacks it, so a stale cache is never taken for a deleted Job) and the
//! pods of a finished one; and what its namespace allows build pods.

use std::borrow::Cow;

use api::v1alpha1::{MachineImage, REBUILD_ANNOTATION};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{BuildPodPolicy, Context, Error, JOB_NAME_LABEL, is_recorded, needs_pods};
use crate::runtime::projection::lacks_job_template;
use crate::runtime::status::bounded;

/// The image's recorded Job as observed.
pub(super) struct Recorded {
    /// The Job, when it is ours and not being deleted.
    pub latest: Option<Job>,
    /// The status records a Job that is gone, being deleted, or replaced by another under its name.
    pub job_gone: bool,
    /// The pods of `latest`, when its outcome needs them.
    pub pods: Vec<Pod>,
}

/// The whole image, read when the cached one lacks `spec.jobTemplate` and this reconcile may
/// use it: the image has no ID, a rebuild is asked, or its status records a Job (whose ID
/// container the template names). A static image with none of these is decided without it. `None`: the image
/// is gone.
pub(super) async fn with_job_template<'a>(
    image: &'a MachineImage,
    ctx: &Context,
) -> Result<Option<Cow<'a, MachineImage>>, Error> {
    let needed = image.spec.id.as_deref().is_none_or(str::is_empty)
        || image.annotations().contains_key(REBUILD_ANNOTATION)
        || image.status.as_ref().is_some_and(|s| s.job_ref.is_some());
    if !needed || !lacks_job_template(image) {
        return Ok(Some(Cow::Borrowed(image)));
    }
    let api: Api<MachineImage> = Api::namespaced(
        ctx.core.client.clone(),
        &image.namespace().unwrap_or_default(),
    );
    let found = bounded(api.get_opt(&image.name_any()))
        .await
        .map_err(Error::GetImageError)?;
    Ok(found.map(Cow::Owned))
}

/// The Job `image`'s status records, and its pods when its outcome needs them.
pub(super) async fn recorded_job(image: &MachineImage, ctx: &Context) -> Result<Recorded, Error> {
    let namespace = image.namespace().unwrap_or_default();
    let mut latest = None;
    let mut job_gone = false;
    let referenced = image
        .status
        .as_ref()
        .and_then(|s| s.job_ref.as_ref())
        .and_then(|r| r.name.clone());
    if let Some(job) = referenced {
        let cached = ctx
            .jobs
            .get(&ObjectRef::new(&job).within(&namespace))
            .map(|j| (*j).clone())
            .filter(|j| is_recorded(image, j));
        let found = if let Some(found) = cached {
            Some(found)
        } else {
            let jobs_api: Api<Job> = Api::namespaced(ctx.core.client.clone(), &namespace);
            bounded(jobs_api.get_opt(&job))
                .await
                .map_err(|source| Error::GetLatestJobsError { job, source })?
        };
        match found {
            // Being deleted (held by a finalizer, such as the orphan one) counts as deleted.
            Some(found)
                if is_recorded(image, &found) && found.metadata.deletion_timestamp.is_none() =>
            {
                latest = Some(found);
            }
            // Gone, being deleted, or another Job under its name: ours is gone.
            _ => job_gone = true,
        }
    }
    let pods = match &latest {
        Some(job) if needs_pods(job) => {
            let pods_api: Api<Pod> = Api::namespaced(ctx.core.client.clone(), &namespace);
            let selector = format!("{JOB_NAME_LABEL}={}", job.name_any());
            bounded(pods_api.list(&ListParams::default().labels(&selector)))
                .await
                .map_err(|source| Error::GetLatestJobsError {
                    job: job.name_any(),
                    source,
                })?
                .items
        }
        _ => Vec::new(),
    };
    Ok(Recorded {
        latest,
        job_gone,
        pods,
    })
}

/// What the namespace of an image allows build pods: from the cache, or read when the cache
/// has not seen it yet (a namespace just made). A namespace that is gone allows the baseline.
pub(super) async fn build_pod_policy(
    ctx: &Context,
    namespace: &str,
) -> Result<BuildPodPolicy, Error> {
    if let Some(cached) = ctx.namespaces.get(&ObjectRef::new(namespace)) {
        return Ok(BuildPodPolicy::of(&cached));
    }
    let api: Api<Namespace> = Api::all(ctx.core.client.clone());
    match bounded(api.get_opt(namespace)).await {
        Ok(found) => Ok(found.as_ref().map(BuildPodPolicy::of).unwrap_or_default()),
        Err(source) => Err(Error::GetNamespaceError {
            namespace: namespace.to_owned(),
            source,
        }),
    }
}
