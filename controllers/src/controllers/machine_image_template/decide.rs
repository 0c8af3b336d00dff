//! The decide step (pure): the status from the dry run's verdict, when one ran, and the cloned
//! images.

use api::conditions::{self, Desired};
use api::v1alpha1::{CONDITION_READY, MachineImageTemplate, MachineImageTemplateStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{REASON_INVALID_JOB_TEMPLATE, REASON_VALID, SAMPLE_VERSION};

/// What a dry run said about the template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The server accepts the rendered Job.
    Valid,
    /// The server, or rendering, refuses it, with the reason why.
    Invalid(String),
}

/// The desired status: the verdict (when a dry run ran; else the current Ready condition is kept)
/// and the cloned images.
pub fn decide(
    template: &MachineImageTemplate,
    verdict: Option<&Verdict>,
    images: Vec<String>,
    now: &Time,
) -> MachineImageTemplateStatus {
    let current = template.status.clone().unwrap_or_default();
    let conditions = match verdict {
        None => current.conditions.clone(),
        Some(verdict) => {
            let desired = match verdict {
                Verdict::Valid => Desired::new(
                    CONDITION_READY,
                    true,
                    REASON_VALID,
                    format!("a Job rendered for {SAMPLE_VERSION} passes a server-side dry run"),
                ),
                Verdict::Invalid(why) => Desired::new(
                    CONDITION_READY,
                    false,
                    REASON_INVALID_JOB_TEMPLATE,
                    crate::text::bounded(why),
                ),
            };
            Some(conditions::merge(
                current.conditions.as_deref().unwrap_or_default(),
                &[desired],
                template.metadata.generation,
                now,
            ))
        }
    };
    MachineImageTemplateStatus {
        conditions,
        observed_generation: if verdict.is_some() {
            template.metadata.generation
        } else {
            current.observed_generation
        },
        machine_images: Some(images).filter(|i| !i.is_empty()),
    }
}
