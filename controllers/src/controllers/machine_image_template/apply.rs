//! The apply step: one status write when the status changed, then a Warning when the template
//! turns invalid.

use api::v1alpha1::{CONDITION_READY, MachineImageTemplate, MachineImageTemplateStatus};
use kube::{Api, ResourceExt};

use super::{Context, Error, FIELD_MANAGER, REASON_INVALID_JOB_TEMPLATE, Verdict};
use crate::runtime::Note;
use crate::runtime::status::apply_status;

/// Writes `status` when it differs from `current`; publishes the verdict when it newly refuses
/// the template.
pub(super) async fn apply(
    ctx: &Context,
    template: &MachineImageTemplate,
    current: &MachineImageTemplateStatus,
    status: &MachineImageTemplateStatus,
    verdict: Option<&Verdict>,
) -> Result<(), Error> {
    if status != current {
        let api: Api<MachineImageTemplate> = Api::namespaced(
            ctx.core.client.clone(),
            &template.namespace().unwrap_or_default(),
        );
        apply_status(&api, &template.name_any(), FIELD_MANAGER, status)
            .await
            .map_err(Error::WriteStatus)?;
    }
    let was_invalid = current
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == CONDITION_READY && c.reason == REASON_INVALID_JOB_TEMPLATE);
    if let Some(Verdict::Invalid(why)) = verdict
        && !was_invalid
    {
        ctx.core
            .events
            .publish(
                template,
                &Note::warning(REASON_INVALID_JOB_TEMPLATE, why.clone()),
            )
            .await;
    }
    Ok(())
}
