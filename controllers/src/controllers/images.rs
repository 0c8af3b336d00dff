//! The MachineImages a Plan and the upgrader may use: [`usable`] lists them, [`choices`] keeps
//! only those a Plan can pick. Pure; the Plan picks its image among them and the upgrader takes
//! its intermediate steps from the same list.

use std::collections::BTreeMap;

use api::constraint::VersionRange;
use api::v1alpha1::MachineImage;
use semver::Version;

/// A ready MachineImage the upgrader may use: Ready, with an ID, matching the Plan's selector (see [`usable`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Its `spec.version`, parsed strictly.
    pub version: Version,
    /// Its `spec.version` as written.
    pub spec_version: String,
    /// Its `spec.id`.
    pub id: String,
    /// Its name.
    pub name: String,
}

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
