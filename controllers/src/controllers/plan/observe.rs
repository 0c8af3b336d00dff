//! The observe step: the MachineImages a Plan can pick, from the shared cache, in one pass that
//! keeps only the best of each minor within its range ([`choices`]).

use api::constraint::VersionRange;
use api::v1alpha1::Plan;
use kube::ResourceExt;

use super::Context;
use crate::controllers::images::{Image, choices};

/// The images [`super::decide()`] chooses among; none when the range is invalid (the decision
/// reports it).
pub(super) fn observe(plan: &Plan, ctx: &Context) -> Vec<Image> {
    let Ok(range) = VersionRange::parse(&plan.spec.version_range) else {
        return Vec::new();
    };
    let state = ctx.images.state();
    choices(
        state.iter().filter_map(|i| i.0.as_ref().ok()),
        &plan.namespace().unwrap_or_default(),
        plan.spec.machine_image_selector.as_ref(),
        &range,
    )
}
