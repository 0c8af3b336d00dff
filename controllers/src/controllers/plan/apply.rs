//! The apply step: one status write when the decision differs from the current status, then the
//! decision's events.

use api::v1alpha1::{Plan, PlanStatus};
use kube::{Api, ResourceExt};

use super::{Context, Decision, Error, FIELD_MANAGER};
use crate::runtime::status::apply_status;

/// Carries out `decision` for `plan`, whose status is `current`.
pub(super) async fn apply(
    ctx: &Context,
    plan: &Plan,
    current: &PlanStatus,
    decision: &Decision,
) -> Result<(), Error> {
    if decision.status != *current {
        let api: Api<Plan> = Api::namespaced(
            ctx.core.client.clone(),
            &plan.namespace().unwrap_or_default(),
        );
        apply_status(&api, &plan.name_any(), FIELD_MANAGER, &decision.status)
            .await
            .map_err(Error::WriteStatus)?;
    }
    for note in &decision.notes {
        ctx.core.events.publish(plan, note).await;
    }
    Ok(())
}
