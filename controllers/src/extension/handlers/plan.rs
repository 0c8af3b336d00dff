//! `GenerateUpgradePlan`: the control plane's path from its version to the Cluster's target,
//! through the acting upgrader's Plan's ready images. Pure.

use semver::Version;

use super::Owner;
use crate::controllers::upgrader::gates::{self, Image, Reason};
use crate::extension::wire::GenerateUpgradePlanResponse;

/// The plan for a control plane at `from` going to `to`, the Cluster's `spec.topology.version`:
/// for each minor after `from` up to `to`'s, the highest ready image of that minor (as the
/// upgrader's own one-minor step picks it), ending exactly at `to`, which must itself have a
/// ready image. `owner` is the upgrader that acts on the Cluster; `images` its Plan's usable
/// images, `None` when the Plan does not exist.
pub fn generate(
    owner: Option<&Owner<'_>>,
    images: Option<&[Image]>,
    from: &str,
    to: &str,
) -> GenerateUpgradePlanResponse {
    match steps(owner, images, from, to) {
        Ok(steps) => GenerateUpgradePlanResponse::plan(steps),
        Err(message) => GenerateUpgradePlanResponse::failure(message),
    }
}

fn steps(
    owner: Option<&Owner<'_>>,
    images: Option<&[Image]>,
    from: &str,
    to: &str,
) -> Result<Vec<String>, String> {
    let Some(owner) = owner else {
        return Err(
            "no ClusterClassClusterUpgrader or InClusterUpgradeAutomation names this Cluster in its namespace"
                .to_owned(),
        );
    };
    let plan = owner.plan_name();
    let Some(images) = images else {
        return Err(format!(
            "Plan {plan} named by {} does not exist",
            owner.claimant
        ));
    };
    let parse = |field: &str, text: &str| {
        api::version::parse_lenient(text)
            .ok_or_else(|| format!("{field} {text:?} is not a Kubernetes version"))
    };
    let current = parse("fromControlPlaneKubernetesVersion", from)?;
    let target = parse("toKubernetesVersion", to)?;
    if target.cmp_precedence(&current).is_lt() {
        return Err(format!(
            "toKubernetesVersion {to} is older than the control plane's {from}"
        ));
    }
    if target.cmp_precedence(&current).is_eq() {
        return Ok(Vec::new());
    }
    let Some(target_image) = images
        .iter()
        .find(|i| i.version.cmp_precedence(&target).is_eq())
    else {
        return Err(format!("no ready image of {to} in Plan {plan}"));
    };
    let mut out = Vec::new();
    let mut at: Version = current;
    loop {
        let (next, _) =
            gates::one_minor(&at, &target, &target_image.id, images).map_err(|hold| {
                if hold.reason == Reason::NoImageForIntermediateMinor {
                    format!(
                        "no ready image of minor {}.{} in Plan {plan}",
                        at.major,
                        at.minor + 1
                    )
                } else {
                    format!("{to} cannot be reached from {from}: {}", hold.message)
                }
            })?;
        if next.cmp_precedence(&target).is_eq() {
            // Cluster API hands the string to the control plane as written.
            out.push(to.to_owned());
            return Ok(out);
        }
        out.push(api::version::with_v(&next));
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::upgrader::claim::Claimant;
    use crate::extension::handlers::tests::{claimant, image, spec};
    use crate::extension::wire::Status;

    fn versions(response: &GenerateUpgradePlanResponse) -> Vec<&str> {
        response
            .control_plane_upgrades
            .iter()
            .map(|s| s.version.as_str())
            .collect()
    }

    fn owner<'a>(
        claimant: &'a Claimant,
        spec: &'a api::v1alpha1::ClusterClassClusterUpgrader,
    ) -> Owner<'a> {
        Owner {
            claimant,
            spec: crate::controllers::upgrader::UpgraderKind::view(spec),
            namespace: "fleet",
        }
    }

    #[test]
    fn two_minors_walk_the_highest_ready_image_of_each_and_end_at_the_target() {
        let c = claimant();
        let s = spec();
        let images = vec![
            image("1.31.2", "img-31-2"),
            image("1.31.4", "img-31-4"),
            image("1.32.1", "img-32-1"),
            image("1.32.3", "img-32-3"),
            image("1.33.0", "img-33-0"),
        ];
        let answer = generate(Some(&owner(&c, &s)), Some(&images), "v1.30.5", "v1.32.1");
        assert_eq!(answer.status, Status::Success, "{}", answer.message);
        // The target's own minor stops at the target, not at v1.32.3.
        assert_eq!(versions(&answer), ["v1.31.4", "v1.32.1"]);
        assert!(answer.workers_upgrades.is_empty());
        // Three minors.
        let answer = generate(Some(&owner(&c, &s)), Some(&images), "v1.30.5", "v1.33.0");
        assert_eq!(versions(&answer), ["v1.31.4", "v1.32.3", "v1.33.0"]);
        // A patch or one minor is the target alone; at the target, nothing.
        let answer = generate(Some(&owner(&c, &s)), Some(&images), "v1.32.1", "v1.32.3");
        assert_eq!(versions(&answer), ["v1.32.3"]);
        let answer = generate(Some(&owner(&c, &s)), Some(&images), "v1.31.4", "v1.32.3");
        assert_eq!(versions(&answer), ["v1.32.3"]);
        let answer = generate(Some(&owner(&c, &s)), Some(&images), "v1.32.1", "v1.32.1");
        assert_eq!(answer.status, Status::Success);
        assert!(answer.control_plane_upgrades.is_empty());
    }

    #[test]
    fn the_target_is_kept_as_written() {
        let c = claimant();
        let s = spec();
        let images = vec![image("1.31.4", "a"), image("1.32.1", "b")];
        let answer = generate(Some(&owner(&c, &s)), Some(&images), "1.30.5", "1.32.1");
        assert_eq!(versions(&answer), ["v1.31.4", "1.32.1"]);
    }

    #[test]
    fn a_missing_minor_a_missing_target_or_no_upgrader_refuses_the_plan() {
        let c = claimant();
        let s = spec();
        let o = owner(&c, &s);
        let no_31 = vec![image("1.30.9", "a"), image("1.32.1", "b")];
        let answer = generate(Some(&o), Some(&no_31), "v1.30.5", "v1.32.1");
        assert_eq!(answer.status, Status::Failure);
        assert_eq!(
            answer.message,
            "no ready image of minor 1.31 in Plan fleet/plan-a"
        );
        assert!(answer.control_plane_upgrades.is_empty());
        // A prerelease of the minor is not a step.
        let pre = vec![image("1.31.0-rc.1", "a"), image("1.32.1", "b")];
        assert_eq!(
            generate(Some(&o), Some(&pre), "v1.30.5", "v1.32.1").message,
            "no ready image of minor 1.31 in Plan fleet/plan-a"
        );
        let no_target = vec![image("1.31.4", "a"), image("1.32.3", "b")];
        let answer = generate(Some(&o), Some(&no_target), "v1.30.5", "v1.32.1");
        assert_eq!(answer.status, Status::Failure);
        assert_eq!(
            answer.message,
            "no ready image of v1.32.1 in Plan fleet/plan-a"
        );
        let answer = generate(None, Some(&no_target), "v1.30.5", "v1.32.1");
        assert_eq!(answer.status, Status::Failure);
        assert!(
            answer
                .message
                .contains("ClusterClassClusterUpgrader or InClusterUpgradeAutomation"),
            "{}",
            answer.message
        );
        let answer = generate(Some(&o), None, "v1.30.5", "v1.32.1");
        assert_eq!(
            answer.message,
            "Plan fleet/plan-a named by ClusterClassClusterUpgrader/up does not exist"
        );
    }

    #[test]
    fn downgrades_majors_and_bad_versions_are_refused_naming_the_field() {
        let c = claimant();
        let s = spec();
        let o = owner(&c, &s);
        let images = vec![
            image("1.31.4", "a"),
            image("2.0.0", "b"),
            image("1.29.0", "c"),
        ];
        assert!(
            generate(Some(&o), Some(&images), "v1.30.5", "v1.29.0")
                .message
                .contains("older")
        );
        assert!(
            generate(Some(&o), Some(&images), "v1.30.5", "v2.0.0")
                .message
                .contains("major")
        );
        assert_eq!(
            generate(Some(&o), Some(&images), "latest", "v1.31.4").message,
            "fromControlPlaneKubernetesVersion \"latest\" is not a Kubernetes version"
        );
        assert!(
            generate(Some(&o), Some(&images), "v1.30.5", "")
                .message
                .starts_with("toKubernetesVersion")
        );
    }
}
