//! A host rebooting into its new image looks dead to a MachineHealthCheck, which would delete its
//! Machine and reset the host. While a host is in flight its Machine carries Cluster API's
//! `cluster.x-k8s.io/skip-remediation`, with our value; once the host is verified (or its record
//! is gone: finished, released, or the host now backs another Machine) we remove it. An
//! annotation someone else set is left as it is. Pure.

use std::collections::BTreeSet;

use api::v1alpha1::{HostPhase, HostRecord};

use super::{Action, HostView, in_flight};

/// Cluster API's annotation that keeps a MachineHealthCheck from remediating a Machine.
pub const SKIP_REMEDIATION_ANNOTATION: &str = "cluster.x-k8s.io/skip-remediation";
/// The value we set it to, which tells our annotation from an operator's.
pub const SKIP_REMEDIATION_BY: &str = "kubernetes-upgrader";

/// Whether the Machine is held from remediation, by us or by anyone.
pub fn held(view: &HostView) -> bool {
    view.skip_remediation.is_some()
}

/// Whether the Machine carries the annotation with our value.
pub fn ours(view: &HostView) -> bool {
    view.skip_remediation.as_deref() == Some(SKIP_REMEDIATION_BY)
}

/// Whether `record`'s Machine must be held: from selection until the booted image is verified,
/// and while the host is blocked (it is still out of service, for an operator to look at).
pub fn wanted(record: &HostRecord) -> bool {
    in_flight(record.phase) && record.phase != HostPhase::Verified
}

/// The annotation writes `records` ask of `world`: set on every Machine whose host must be held
/// and is not, removed from every other Machine that carries ours.
pub fn actions<'r>(
    records: impl IntoIterator<Item = &'r HostRecord>,
    world: &[HostView],
) -> Vec<Action> {
    let holds: BTreeSet<(&str, &str)> = records
        .into_iter()
        .filter(|r| wanted(r))
        .map(|r| (r.host.as_str(), r.machine.as_str()))
        .collect();
    world
        .iter()
        .filter_map(|view| {
            let hold = holds.contains(&(view.host.as_str(), view.machine.as_str()));
            let machine = view.machine.clone();
            if hold && !held(view) {
                Some(Action::SkipRemediation { machine })
            } else if !hold && ours(view) {
                Some(Action::AllowRemediation { machine })
            } else {
                None
            }
        })
        .collect()
}
