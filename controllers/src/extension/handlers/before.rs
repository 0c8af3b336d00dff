//! `BeforeClusterUpgrade`, `BeforeControlPlaneUpgrade` and `BeforeWorkersUpgrade`: held while any
//! gate of the acting upgrader would hold a step it wrote itself (S16): the upgrader or the
//! Cluster paused (S6), the maintenance window closed (S7), dry run, the Cluster not `Available`
//! or an Elemental pool without a spare host (S9). Whether the previous step finished is left
//! to Cluster API, which walks the steps. Pure.

use jiff::Timestamp;
use serde_json::Value;

use super::{HOLD_SECONDS, Held, Owner, WINDOW_MAX_SECONDS};
use crate::controllers::upgrader::finish::ClusterApi;
use crate::controllers::upgrader::gates::{self, ClusterView, Hold, Reason};
use crate::controllers::upgrader::in_place::spare::NoSpareHost;

/// What the before-hooks decide on.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The upgrader that acts on the Cluster.
    pub owner: Owner<'a>,
    /// The Cluster as the planner reads it (its pause).
    pub cluster: &'a ClusterView,
    /// Whether the Cluster is `Available`, or why not.
    pub available: Result<(), String>,
    /// The spare-host gate for the pools this hook moves, on an Elemental Cluster.
    pub spare: Option<Result<(), NoSpareHost>>,
    /// The clock.
    pub now: Timestamp,
}

/// The first gate that holds, if any, in the upgrader's order.
pub fn hold(inputs: &Inputs<'_>) -> Option<Held> {
    let spec = &inputs.owner.spec;
    let gate = gates::paused_upgrader(spec)
        .and_then(|()| gates::admitted(inputs.cluster))
        .and_then(|()| gates::paused_cluster(inputs.cluster))
        .and_then(|()| gates::in_window(spec, inputs.now))
        .and_then(|()| gates::dry_run(spec))
        .and_then(|()| {
            inputs.available.clone().map_err(|why| {
                Hold::new(
                    Reason::PreviousStepUnfinished,
                    format!("the Cluster is not Available: {why}"),
                )
            })
        })
        .and_then(|()| match &inputs.spare {
            Some(Err(missing)) => Err(Hold::new(Reason::NoSpareHost, missing.to_string())),
            _ => Ok(()),
        });
    let hold = gate.err()?;
    Some(Held {
        seconds: seconds(&hold, inputs.now),
        message: format!(
            "{} holds the upgrade: {}",
            inputs.owner.claimant, hold.message
        ),
    })
}

/// A closed window holds until it opens, at most [`WINDOW_MAX_SECONDS`]; every other hold
/// [`HOLD_SECONDS`].
fn seconds(hold: &Hold, now: Timestamp) -> i32 {
    if hold.reason != Reason::OutsideMaintenanceWindow {
        return HOLD_SECONDS;
    }
    hold.not_before.map_or(WINDOW_MAX_SECONDS, |opens| {
        let wait = opens.duration_since(now).as_secs();
        // A part of a second left still waits a whole one.
        let wait = if opens.duration_since(now).subsec_nanos() > 0 {
            wait + 1
        } else {
            wait
        };
        i32::try_from(wait.clamp(1, i64::from(WINDOW_MAX_SECONDS))).unwrap_or(WINDOW_MAX_SECONDS)
    })
}

/// Whether the Cluster reports `Available=True`: in `status.conditions` when read as v1beta2,
/// in `status.v1beta2.conditions` when read as v1beta1. A missing condition is not available.
pub fn available(api: ClusterApi, cluster: &Value) -> Result<(), String> {
    let path = match api {
        ClusterApi::V1Beta2 => "/status/conditions",
        ClusterApi::V1Beta1 => "/status/v1beta2/conditions",
    };
    let condition = cluster
        .pointer(path)
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Available"))
        });
    let Some(condition) = condition else {
        return Err("it reports no Available condition".to_owned());
    };
    match condition.get("status").and_then(Value::as_str) {
        Some("True") => Ok(()),
        other => Err(format!(
            "Available is {} ({})",
            other.unwrap_or("unset"),
            condition
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::upgrader::UpgraderKind;
    use crate::extension::handlers::tests::{claimant, spec, spec_with};
    use serde_json::json;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn view(paused: bool) -> ClusterView {
        ClusterView {
            paused,
            topology: None,
            finished: Err("a Cluster API upgrade is running".into()),
            labels: std::collections::BTreeMap::new(),
            available: None,
            admission: crate::controllers::rollout::Admission::Unrestricted,
        }
    }

    fn held(
        upgrader: &api::v1alpha1::ClusterClassClusterUpgrader,
        cluster: &ClusterView,
        available: Result<(), String>,
        spare: Option<Result<(), NoSpareHost>>,
        now: &str,
    ) -> Option<Held> {
        let c = claimant();
        hold(&Inputs {
            owner: Owner {
                claimant: &c,
                spec: upgrader.view(),
                namespace: "fleet",
            },
            cluster,
            available,
            spare,
            now: at(now),
        })
    }

    const NOW: &str = "2026-03-07T23:00:00Z";

    #[test]
    fn nothing_holds_an_open_healthy_cluster_even_while_its_upgrade_runs() {
        assert_eq!(held(&spec(), &view(false), Ok(()), Some(Ok(())), NOW), None);
    }

    #[test]
    fn pause_dry_run_unavailable_and_no_spare_host_hold_thirty_seconds_each() {
        let paused = spec_with(json!({"paused": true}));
        let h = held(&paused, &view(false), Ok(()), None, NOW).unwrap();
        assert_eq!(h.seconds, 30);
        assert_eq!(
            h.message,
            "ClusterClassClusterUpgrader/up holds the upgrade: spec.paused is true"
        );
        let h = held(&spec(), &view(true), Ok(()), None, NOW).unwrap();
        assert_eq!(h.seconds, 30);
        assert!(h.message.contains("the Cluster is paused"), "{}", h.message);
        let dry = spec_with(json!({"dryRun": true}));
        let h = held(&dry, &view(false), Ok(()), None, NOW).unwrap();
        assert_eq!(h.seconds, 30);
        assert!(h.message.contains("spec.dryRun"), "{}", h.message);
        let h = held(
            &spec(),
            &view(false),
            Err("Available is False (scaling)".into()),
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(
            (
                h.seconds,
                h.message.contains("not Available: Available is False")
            ),
            (30, true),
            "{}",
            h.message
        );
        let h = held(
            &spec(),
            &view(false),
            Ok(()),
            Some(Err(NoSpareHost {
                pool: "md-0".into(),
            })),
            NOW,
        )
        .unwrap();
        assert_eq!(h.seconds, 30);
        assert!(
            h.message
                .contains("pool md-0 has no installed, unassociated ElementalHost"),
            "{}",
            h.message
        );
    }

    #[test]
    fn a_fleet_rollout_that_has_not_admitted_the_cluster_holds_it() {
        use crate::controllers::rollout::Admission;
        for (admission, words) in [
            (Admission::NotInAnyWave, "wave"),
            (Admission::Halted("c7 failed".into()), "c7 failed"),
            (
                Admission::Waiting {
                    wave: "prod".into(),
                    not_before: None,
                },
                "prod",
            ),
        ] {
            let mut cluster = view(false);
            cluster.admission = admission;
            let h = held(&spec(), &cluster, Ok(()), Some(Ok(())), NOW).unwrap();
            assert_eq!(h.seconds, 30);
            assert!(h.message.contains(words), "{}", h.message);
        }
        let mut admitted = view(false);
        admitted.admission = Admission::Admitted;
        assert_eq!(held(&spec(), &admitted, Ok(()), Some(Ok(())), NOW), None);
    }

    #[test]
    fn a_closed_window_holds_until_it_opens_at_most_ten_minutes() {
        let nightly = spec_with(
            json!({"maintenanceWindow": {"schedule": "0 2 * * *", "duration": "1h", "timeZone": "UTC"}}),
        );
        // Opens in three minutes.
        let h = held(&nightly, &view(false), Ok(()), None, "2026-03-08T01:57:00Z").unwrap();
        assert_eq!(h.seconds, 180);
        assert!(
            h.message
                .contains("maintenance window is closed; it opens at 2026-03-08T02:00:00Z"),
            "{}",
            h.message
        );
        // Opens in three hours: asked again in ten minutes.
        assert_eq!(
            held(&nightly, &view(false), Ok(()), None, NOW)
                .unwrap()
                .seconds,
            600
        );
        // Open: passes.
        assert_eq!(
            held(&nightly, &view(false), Ok(()), None, "2026-03-08T02:30:00Z"),
            None
        );
        // Half a second before it opens still waits one second.
        assert_eq!(
            held(
                &nightly,
                &view(false),
                Ok(()),
                None,
                "2026-03-08T01:59:59.5Z"
            )
            .unwrap()
            .seconds,
            1
        );
        // The pause is reported before the window.
        let both = spec_with(
            json!({"paused": true, "maintenanceWindow": {"schedule": "0 2 * * *", "duration": "1h"}}),
        );
        assert_eq!(
            held(&both, &view(false), Ok(()), None, NOW)
                .unwrap()
                .seconds,
            30
        );
    }

    #[test]
    fn available_reads_the_condition_of_the_served_version() {
        let v2 = json!({"status": {"conditions": [{"type": "Available", "status": "True"}]}});
        assert_eq!(available(ClusterApi::V1Beta2, &v2), Ok(()));
        assert!(available(ClusterApi::V1Beta1, &v2).is_err());
        let v1 = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}], "v1beta2": {"conditions": [{"type": "Available", "status": "False", "message": "1 of 3 control plane machines"}]}}});
        assert_eq!(
            available(ClusterApi::V1Beta1, &v1),
            Err("Available is False (1 of 3 control plane machines)".into())
        );
        assert_eq!(
            available(ClusterApi::V1Beta2, &json!({})),
            Err("it reports no Available condition".into())
        );
    }
}
