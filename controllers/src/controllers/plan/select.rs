//! Which MachineImages count, and which one a Plan picks. Pure; the upgrader uses the same
//! [`usable`] filter for its intermediate steps.

use std::collections::BTreeMap;

use api::conditions::{Desired, merge};
use api::constraint::{VersionRange, select_highest};
use api::v1alpha1::{
    CONDITION_READY, MAX_CANDIDATES, MachineImage, MachineImageDetails, PlanCandidate, PlanPhase,
    PlanSpec, PlanStatus,
};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;

use crate::controllers::upgrader::gates::Image;
use crate::runtime::Note;

/// The images a Plan may use: in `namespace`, Ready (`status.ready`), with a non-empty
/// `spec.id` and a strict version, matching `selector` (omitted matches all). On equal versions
/// the first one wins, so they come newest first: the most recently completed build (a rebuilt
/// OS for the same Kubernetes version), or for a static image its creation; then by name.
pub fn usable<'a>(
    images: impl IntoIterator<Item = &'a MachineImage>,
    namespace: &str,
    selector: Option<&api::v1alpha1::LabelSelector>,
) -> Vec<Image> {
    let mut out: Vec<Usable<'a>> = images
        .into_iter()
        .filter_map(|i| Usable::of(i, namespace, selector))
        .collect();
    out.sort_by(Usable::listing_order);
    out.into_iter().map(Usable::image).collect()
}

/// The images [`decide`] can pick among `images`, in one pass that clones none of them: of each
/// minor within `range`, the usable image [`usable`] would list first among the highest. With
/// them, [`decide`] decides as with every usable image.
pub fn choices<'a>(
    images: impl IntoIterator<Item = &'a MachineImage>,
    namespace: &str,
    selector: Option<&api::v1alpha1::LabelSelector>,
    range: &VersionRange,
) -> Vec<Image> {
    let mut best: BTreeMap<(u64, u64), Usable<'a>> = BTreeMap::new();
    for candidate in images
        .into_iter()
        .filter_map(|i| Usable::of(i, namespace, selector))
        .filter(|u| range.matches(&u.version))
    {
        let key = (candidate.version.major, candidate.version.minor);
        match best.get(&key) {
            Some(held) if !candidate.beats(held) => {}
            _ => {
                best.insert(key, candidate);
            }
        }
    }
    let mut out: Vec<Usable<'a>> = best.into_values().collect();
    out.sort_by(Usable::listing_order);
    out.into_iter().map(Usable::image).collect()
}

/// A usable image, borrowed.
struct Usable<'a> {
    image: &'a MachineImage,
    id: &'a str,
    version: semver::Version,
    made: Option<k8s_openapi::jiff::Timestamp>,
}

impl<'a> Usable<'a> {
    /// `image` if it is usable (see [`usable`]).
    fn of(
        image: &'a MachineImage,
        namespace: &str,
        selector: Option<&api::v1alpha1::LabelSelector>,
    ) -> Option<Self> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        if image.metadata.namespace.as_deref() != Some(namespace) {
            return None;
        }
        let status = image.status.as_ref().filter(|s| s.ready)?;
        if !selector.is_none_or(|s| s.matches(image.metadata.labels.as_ref().unwrap_or(&EMPTY))) {
            return None;
        }
        let id = image.spec.id.as_deref().filter(|id| !id.is_empty())?;
        let version = api::version::parse_strict(&image.spec.version)?;
        let made = status
            .build_completion_time
            .as_ref()
            .or(image.metadata.creation_timestamp.as_ref())
            .map(|t| t.0);
        Some(Self {
            image,
            id,
            version,
            made,
        })
    }

    fn name(&self) -> &str {
        self.image.metadata.name.as_deref().unwrap_or_default()
    }

    /// Newest first, then by name.
    fn listing_order(a: &Self, b: &Self) -> std::cmp::Ordering {
        b.made.cmp(&a.made).then_with(|| a.name().cmp(b.name()))
    }

    /// Higher by precedence, or as high and listed first.
    fn beats(&self, other: &Self) -> bool {
        self.version
            .cmp_precedence(&other.version)
            .then_with(|| Self::listing_order(other, self))
            .is_gt()
    }

    fn image(self) -> Image {
        Image {
            spec_version: self.image.spec.version.clone(),
            name: self.name().to_owned(),
            version: self.version,
            id: self.id.to_owned(),
        }
    }
}

/// What a Plan reconcile decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The status to hold.
    pub status: PlanStatus,
    /// Events to publish.
    pub notes: Vec<Note>,
}

/// Picks the highest usable image in range and the highest per minor, and builds the status.
pub fn decide(
    spec: &PlanSpec,
    generation: Option<i64>,
    namespace: &str,
    images: &[Image],
    current: &PlanStatus,
    now: &Time,
) -> Decision {
    let (phase, chosen, candidates, ready) = match VersionRange::parse(&spec.version_range) {
        Err(err) => (
            PlanPhase::NoSuitableMachineImage,
            None,
            Vec::new(),
            Desired::new(
                CONDITION_READY,
                false,
                "InvalidVersionRange",
                format!(
                    "spec.versionRange {:?} is invalid: {err}",
                    spec.version_range
                ),
            ),
        ),
        Ok(range) => {
            let chosen = select_highest(&range, images.iter().map(|i| (i.version.clone(), i)))
                .map(|(_, i)| i.clone());
            let candidates = per_minor(&range, images);
            match &chosen {
                Some(image) => (
                    PlanPhase::FoundMachineImage,
                    chosen.clone(),
                    candidates,
                    Desired::new(
                        CONDITION_READY,
                        true,
                        "FoundMachineImage",
                        format!(
                            "MachineImage {} ({}) is the newest ready image in {}",
                            image.name, image.version, spec.version_range
                        ),
                    ),
                ),
                None => (
                    PlanPhase::NoSuitableMachineImage,
                    None,
                    candidates,
                    Desired::new(
                        CONDITION_READY,
                        false,
                        "NoSuitableMachineImage",
                        format!(
                            "no ready MachineImage with an ID matches the selector within {}",
                            spec.version_range
                        ),
                    ),
                ),
            }
        }
    };
    let was_found = current.phase == Some(PlanPhase::FoundMachineImage);
    let mut notes = Vec::new();
    if chosen.is_none() && (was_found || current.phase.is_none()) {
        notes.push(Note::warning(
            "LatestVersionNotFound",
            format!(
                "no ready MachineImage matches the selector within versionRange {:?}",
                spec.version_range
            ),
        ));
    }
    let conditions = merge(
        current.conditions.as_deref().unwrap_or_default(),
        &[ready],
        generation,
        now,
    );
    let status = PlanStatus {
        phase: Some(phase),
        machine_image_details: chosen.as_ref().map(|i| MachineImageDetails {
            version: Some(i.spec_version.clone()),
            id: i.id.clone(),
        }),
        machine_image_ref: chosen.as_ref().map(|i| ObjectReference {
            api_version: Some(MachineImage::api_version(&()).into_owned()),
            kind: Some(MachineImage::kind(&()).into_owned()),
            name: Some(i.name.clone()),
            namespace: Some(namespace.to_owned()),
            ..ObjectReference::default()
        }),
        conditions: Some(conditions),
        observed_generation: generation,
        candidates: (!candidates.is_empty()).then_some(candidates),
    };
    Decision { status, notes }
}

/// The highest usable image of each minor within `range`, ascending, the newest
/// [`MAX_CANDIDATES`] kept.
fn per_minor(range: &VersionRange, images: &[Image]) -> Vec<PlanCandidate> {
    let mut by_minor: BTreeMap<(u64, u64), &Image> = BTreeMap::new();
    for image in images.iter().filter(|i| range.matches(&i.version)) {
        let key = (image.version.major, image.version.minor);
        match by_minor.get(&key) {
            Some(best) if image.version.cmp_precedence(&best.version).is_le() => {}
            _ => {
                by_minor.insert(key, image);
            }
        }
    }
    let all: Vec<PlanCandidate> = by_minor
        .values()
        .map(|i| PlanCandidate {
            version: api::version::with_v(&i.version),
            id: i.id.clone(),
            name: i.name.clone(),
        })
        .collect();
    let skip = all.len().saturating_sub(MAX_CANDIDATES);
    all.into_iter().skip(skip).collect()
}
