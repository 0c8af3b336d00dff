//! Which build each host must be running, from the MachineImages' stamps, and the check that
//! holds every topology step on an Elemental Cluster until each host's Node runs the build its
//! ElementalMachine names (S4): a host whose update fell back to the old image still reports
//! ready. Pure.

use std::collections::{BTreeMap, BTreeSet};

use api::v1alpha1::{MachineImage, OS_IMAGE_STAMP_ANNOTATION};
use kube::ResourceExt;

use super::{Blocked, HostView, carries_stamp};
use crate::controllers::upgrader::reason::Reason;

/// The build stamps an image ID may be booted with.
pub type Stamps = BTreeMap<String, BTreeSet<String>>;

/// The stamp of `image`, when it has an ID and a stamp annotation.
fn stamp_of(image: &MachineImage) -> Option<(&str, &str)> {
    let id = image.spec.id.as_deref().filter(|i| !i.is_empty())?;
    let stamp = image
        .annotations()
        .get(OS_IMAGE_STAMP_ANNOTATION)
        .map(String::as_str)
        .filter(|s| !s.is_empty())?;
    Some((id, stamp))
}

/// The stamp of the Plan's chosen MachineImage (`status.machineImageRef`, named `chosen`), when
/// it still carries the Plan's image ID `id`. Another image with the same ID does not count: it
/// may be another build.
pub fn chosen_stamp<'a>(
    images: impl IntoIterator<Item = &'a MachineImage>,
    chosen: &str,
    id: &str,
) -> Option<String> {
    images
        .into_iter()
        .filter(|i| i.name_any() == chosen)
        .find_map(stamp_of)
        .filter(|(found, _)| *found == id)
        .map(|(_, stamp)| stamp.to_owned())
}

/// Per image ID, the stamps of the MachineImages (of one namespace) that carry it, empty when
/// none is stamped; for the ID of the Plan's chosen image (`chosen`: its name and ID), only that
/// image's stamp.
pub fn stamps<'a>(
    images: impl IntoIterator<Item = &'a MachineImage> + Clone,
    chosen: Option<(&str, &str)>,
) -> Stamps {
    let mut out = Stamps::new();
    for image in images.clone() {
        if let Some(id) = image.spec.id.as_deref().filter(|i| !i.is_empty()) {
            out.entry(id.to_owned()).or_default();
        }
        if let Some((id, stamp)) = stamp_of(image) {
            out.entry(id.to_owned())
                .or_default()
                .insert(stamp.to_owned());
        }
    }
    if let Some((name, id)) = chosen
        && let Some(stamp) = chosen_stamp(images, name, id)
    {
        out.insert(id.to_owned(), BTreeSet::from([stamp]));
    }
    out
}

/// The first host (by name) whose ElementalMachine names an image with a known stamp while its
/// Node does not report that build: `Blocked` with `BootedImageMismatch`.
pub fn booted_mismatch(world: &[HostView], stamps: &Stamps) -> Option<Blocked> {
    let mut hosts: Vec<&HostView> = world.iter().collect();
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    hosts.into_iter().find_map(|view| {
        let id = view.image_uri.as_deref()?;
        let expected = stamps.get(id).filter(|s| !s.is_empty())?;
        let os = view.os_image.as_deref();
        if os.is_some_and(|os| expected.iter().any(|s| carries_stamp(os, s))) {
            return None;
        }
        let wanted = expected
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" or ");
        let runs = match (view.node.as_deref(), os) {
            (Some(node), Some(os)) => format!("its Node {node} runs {os:?}"),
            (Some(node), None) => format!("its Node {node} reports no OS image"),
            (None, _) => "it has no Node".to_owned(),
        };
        Some(Blocked {
            reason: Reason::BootedImageMismatch,
            host: view.host.clone(),
            message: format!(
                "ElementalHost {} (Machine {}) should run {id} (build {wanted}), but {runs}; no next step is written until it does",
                view.host, view.machine
            ),
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::controllers::upgrader::in_place::Role;
    use crate::controllers::upgrader::in_place::tests::{NEW, OLD, view};

    fn image(name: &str, id: &str, stamp: Option<&str>) -> MachineImage {
        let mut annotations = serde_json::Map::new();
        if let Some(stamp) = stamp {
            annotations.insert(OS_IMAGE_STAMP_ANNOTATION.into(), stamp.into());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "MachineImage",
            "metadata": {"name": name, "namespace": "team", "annotations": annotations},
            "spec": {"version": "v1.31.1", "id": id, "jobTemplate": {"spec": {"containers": []}}},
        }))
        .unwrap()
    }

    #[test]
    fn the_plans_chosen_image_alone_names_the_stamp_of_its_id() {
        let images = [
            image("os-a", NEW, Some("os-a-1111-1")),
            // Recreated under another name with the same ID: another build.
            image("os-b", NEW, Some("os-b-2222-1")),
            image("os-old", OLD, Some("os-old-3333-1")),
            image("unstamped", "oci://r/os@sha256:x", None),
        ];
        let all = stamps(&images, None);
        assert_eq!(
            all.get(NEW).unwrap(),
            &BTreeSet::from(["os-a-1111-1".into(), "os-b-2222-1".into()])
        );
        // Known, and stamped by none: nothing to verify its boot with.
        assert_eq!(all.get("oci://r/os@sha256:x"), Some(&BTreeSet::new()));
        let chosen = stamps(&images, Some(("os-b", NEW)));
        assert_eq!(
            chosen.get(NEW).unwrap(),
            &BTreeSet::from(["os-b-2222-1".into()])
        );
        assert_eq!(
            chosen.get(OLD).unwrap(),
            &BTreeSet::from(["os-old-3333-1".into()])
        );
        assert_eq!(
            chosen_stamp(&images, "os-b", NEW).as_deref(),
            Some("os-b-2222-1")
        );
        // The chosen image no longer carries the Plan's ID: no stamp, not another image's.
        assert_eq!(chosen_stamp(&images, "os-old", NEW), None);
        assert_eq!(chosen_stamp(&images, "gone", NEW), None);
    }

    /// Each row: what the host's Node reports, and whether the step is held.
    #[test]
    fn a_step_waits_for_every_node_to_run_the_build_its_machine_names() {
        type Tweak = fn(&mut HostView);
        let known = Stamps::from([(NEW.to_owned(), BTreeSet::from(["os-2".to_owned()]))]);
        let rows: Vec<(&str, Tweak, Option<&str>)> = vec![
            (
                "booted the build",
                |v| v.os_image = Some("Elemental os-2".into()),
                None,
            ),
            (
                "fell back to the old build",
                |v| v.os_image = Some("Elemental os-1".into()),
                Some("runs \"Elemental os-1\""),
            ),
            (
                "a longer stamp is another build",
                |v| v.os_image = Some("Elemental os-21".into()),
                Some("runs"),
            ),
            (
                "no OS image reported",
                |v| v.os_image = None,
                Some("reports no OS image"),
            ),
            (
                "no Node",
                |v| {
                    v.node = None;
                    v.os_image = None;
                },
                Some("has no Node"),
            ),
            (
                "an image nobody stamped is not checked",
                |v| v.image_uri = Some("oci://r/os@sha256:unknown".into()),
                None,
            ),
            ("no image named", |v| v.image_uri = None, None),
        ];
        for (what, tweak, held) in rows {
            let mut host = view("w", Role::Worker("a".into()));
            host.image_uri = Some(NEW.into());
            tweak(&mut host);
            let out = booted_mismatch(&[host], &known);
            match held {
                None => assert_eq!(out, None, "{what}"),
                Some(part) => {
                    let blocked = out.unwrap_or_else(|| panic!("{what}: not held"));
                    assert_eq!(blocked.reason, Reason::BootedImageMismatch, "{what}");
                    assert_eq!(blocked.host, "w", "{what}");
                    assert!(
                        blocked.message.contains(part),
                        "{what}: {}",
                        blocked.message
                    );
                    assert!(blocked.message.contains("os-2"), "{what}");
                }
            }
        }
    }
}
