//! `AfterControlPlaneUpgrade` and `AfterWorkersUpgrade`: held until every Elemental host of the
//! part that moved boots the stamp of the image its ElementalMachine names (S4, S10), so that a
//! fallback boot, which the agent reports as success, holds the next part. Pure.

use super::{HOLD_SECONDS, Held};
use crate::controllers::upgrader::in_place::{self, HostView, Role};

/// The part of a Cluster an after-hook reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The control plane's hosts.
    ControlPlane,
    /// Every worker pool's hosts.
    Workers,
}

impl Part {
    fn holds(self, role: &Role) -> bool {
        matches!(
            (self, role),
            (Self::ControlPlane, Role::ControlPlane) | (Self::Workers, Role::Worker(_))
        )
    }
}

pub use crate::controllers::upgrader::in_place::verify::Stamps;

/// The first host of `part` whose boot is not verified, if any. A host whose ElementalMachine
/// names no image has nothing to verify; one whose image no MachineImage stamps cannot be
/// verified, and holds.
pub fn hold(part: Part, hosts: &[HostView], stamps: &Stamps) -> Option<Held> {
    let mut ordered: Vec<&HostView> = hosts.iter().filter(|h| part.holds(&h.role)).collect();
    ordered.sort_by(|a, b| a.host.cmp(&b.host));
    ordered.into_iter().find_map(|host| {
        let image = host.image_uri.as_deref().filter(|i| !i.is_empty())?;
        let why = match stamps.get(image) {
            None => format!("its image {image} is not a MachineImage of the namespace, so its boot cannot be verified"),
            Some(known) if known.is_empty() => format!("its image {image} carries no stamp, so its boot cannot be verified"),
            Some(known) => {
                let wanted = known.iter().map(String::as_str).collect::<Vec<_>>().join(" or ");
                match host.os_image.as_deref() {
                    None => format!("its Node has not reported the OS it booted (waiting for {wanted})"),
                    Some(booted) if known.iter().any(|s| in_place::carries_stamp(booted, s)) => return None,
                    Some(booted) => format!("it booted {booted:?}, not {wanted} of its image {image} (a fallback boot?)"),
                }
            }
        };
        Some(Held {
            seconds: HOLD_SECONDS,
            message: format!("ElementalHost {} (Machine {}): {why}", host.host, host.machine),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, role: Role, image: Option<&str>, booted: Option<&str>) -> HostView {
        HostView {
            os_image: booted.map(str::to_owned),
            image_uri: image.map(str::to_owned),
            ..crate::controllers::upgrader::in_place::tests::view(name, role)
        }
    }

    const NEW: &str = "oci://r/os@sha256:11";
    const OLD: &str = "oci://r/os@sha256:00";

    fn stamps() -> Stamps {
        [
            (NEW.to_owned(), ["os-1.31.4-b2".to_owned()].into()),
            (OLD.to_owned(), ["os-1.30.5-b1".to_owned()].into()),
            (
                "oci://r/os@sha256:22".to_owned(),
                std::collections::BTreeSet::new(),
            ),
        ]
        .into()
    }

    #[test]
    fn every_host_of_the_part_booting_its_stamp_passes() {
        let hosts = [
            host(
                "cp-0",
                Role::ControlPlane,
                Some(NEW),
                Some("Elemental os-1.31.4-b2"),
            ),
            host(
                "cp-1",
                Role::ControlPlane,
                Some(NEW),
                Some("Elemental os-1.31.4-b2"),
            ),
            // A worker still on the old image does not hold the control plane's hook.
            host(
                "w-0",
                Role::Worker("md-0".into()),
                Some(OLD),
                Some("Elemental os-1.30.5-b1"),
            ),
            // No image named: nothing to verify.
            host("w-1", Role::Worker("md-0".into()), None, None),
        ];
        assert_eq!(hold(Part::ControlPlane, &hosts, &stamps()), None);
        assert_eq!(hold(Part::Workers, &hosts, &stamps()), None);
        assert_eq!(hold(Part::Workers, &[], &stamps()), None);
    }

    #[test]
    fn a_fallback_boot_an_unreported_boot_or_an_unstamped_image_holds() {
        // The agent said done, but the host came back on the old snapshot.
        let fallback = [host(
            "cp-0",
            Role::ControlPlane,
            Some(NEW),
            Some("Elemental os-1.30.5-b1"),
        )];
        let h = hold(Part::ControlPlane, &fallback, &stamps()).unwrap();
        assert_eq!(h.seconds, 30);
        assert_eq!(
            h.message,
            "ElementalHost cp-0 (Machine m-cp-0): it booted \"Elemental os-1.30.5-b1\", not os-1.31.4-b2 of its image oci://r/os@sha256:11 (a fallback boot?)"
        );
        // A stamp that is a prefix of the booted one is not it.
        let prefix = [host(
            "w-0",
            Role::Worker("md-0".into()),
            Some(NEW),
            Some("os-1.31.4-b23"),
        )];
        assert!(hold(Part::Workers, &prefix, &stamps()).is_some());
        let unreported = [host("w-0", Role::Worker("md-0".into()), Some(NEW), None)];
        assert!(
            hold(Part::Workers, &unreported, &stamps())
                .unwrap()
                .message
                .contains("has not reported")
        );
        let unstamped = [host(
            "w-0",
            Role::Worker("md-0".into()),
            Some("oci://r/os@sha256:22"),
            Some("x"),
        )];
        assert!(
            hold(Part::Workers, &unstamped, &stamps())
                .unwrap()
                .message
                .contains("carries no stamp")
        );
        let foreign = [host(
            "w-0",
            Role::Worker("md-0".into()),
            Some("oci://elsewhere/os:1"),
            Some("x"),
        )];
        assert!(
            hold(Part::Workers, &foreign, &stamps())
                .unwrap()
                .message
                .contains("not a MachineImage")
        );
    }

    #[test]
    fn the_first_unverified_host_by_name_is_reported() {
        let hosts = [
            host("w-b", Role::Worker("md-1".into()), Some(NEW), None),
            host(
                "w-a",
                Role::Worker("md-0".into()),
                Some(NEW),
                Some("os-1.30.5-b1"),
            ),
        ];
        assert!(
            hold(Part::Workers, &hosts, &stamps())
                .unwrap()
                .message
                .starts_with("ElementalHost w-a")
        );
    }

    #[test]
    fn an_id_two_images_share_passes_with_either_stamp_and_names_both() {
        let shared: Stamps = [(
            NEW.to_owned(),
            ["os-a-1".to_owned(), "os-b-1".to_owned()].into(),
        )]
        .into();
        for booted in ["Elemental os-a-1", "Elemental os-b-1"] {
            let hosts = [host(
                "w-0",
                Role::Worker("md-0".into()),
                Some(NEW),
                Some(booted),
            )];
            assert_eq!(hold(Part::Workers, &hosts, &shared), None, "{booted}");
        }
        let fallback = [host(
            "w-0",
            Role::Worker("md-0".into()),
            Some(NEW),
            Some("os-0"),
        )];
        let held = hold(Part::Workers, &fallback, &shared).unwrap();
        assert!(
            held.message.contains("not os-a-1 or os-b-1"),
            "{}",
            held.message
        );
    }
}
