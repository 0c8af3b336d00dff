//! The validate step (pure, no client): the syncer's spec resolved (its source reference, its
//! template, its selection and bounds), or a typed, permanent error with its own condition
//! reason.

use std::time::Duration;

use api::constraint::{RangeError, Selection, VersionRange};
use api::v1alpha1::{
    DEFAULT_MAX_CONCURRENT_BUILDS, DEFAULT_MAX_IMAGES, DebianRepositorySource, MachineImageSyncer,
    ReferenceError, SyncStrategy, resolve_reference,
};
use kube::{Resource, ResourceExt};

/// The re-check period when `spec.interval` is unset (one hour, as v0.6).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);

/// This API's group and version, the default of `sourceRef.apiVersion`.
pub const API_VERSION: &str = "kubernetesupgraded.dimitrikoshkin.com/v1alpha1";

/// The source a syncer reads, its namespace resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRef {
    /// `group/version` (or `version` for the core group).
    pub api_version: String,
    /// The kind.
    pub kind: String,
    /// The name.
    pub name: String,
    /// The namespace: the syncer's.
    pub namespace: String,
}

impl SourceRef {
    /// Whether this names a DebianRepositorySource of this API, which is read from the watch.
    pub fn is_watched(&self) -> bool {
        self.api_version == API_VERSION && self.kind == DebianRepositorySource::kind(&()).as_ref()
    }
}

/// A spec the controller can act on.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The parsed `versionRange`.
    pub range: VersionRange,
    /// Which in-range versions get an image.
    pub selection: Selection,
    /// The source.
    pub source: SourceRef,
    /// The template's name, in the syncer's namespace.
    pub template: String,
    /// The periodic re-check, `None` when disabled.
    pub interval: Option<Duration>,
    /// The most images the syncer keeps.
    pub max_images: usize,
    /// The most of its builds running at once.
    pub max_concurrent_builds: usize,
}

/// Why a spec cannot be acted on. Each has its own condition reason; the controller waits for a
/// change of the spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `versionRange` does not parse (admission refuses these; stored objects may predate it).
    #[error("spec.versionRange: {0}")]
    InvalidVersionRange(#[source] RangeError),
    /// A reference leaves the syncer's namespace, or names nothing.
    #[error(transparent)]
    Reference(ReferenceError),
}

impl SpecError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidVersionRange(_) => "InvalidVersionRange",
            Self::Reference(ReferenceError::CrossNamespace { .. }) => "CrossNamespaceReference",
            Self::Reference(ReferenceError::MissingName { field }) => {
                if *field == "spec.sourceRef" {
                    "SourceNotFound"
                } else {
                    "TemplateNotFound"
                }
            }
        }
    }
}

/// The strategy as a [`Selection`] of the constraint module.
pub fn selection(strategy: Option<SyncStrategy>) -> Selection {
    match strategy.unwrap_or_default() {
        SyncStrategy::Latest => Selection::Highest,
        SyncStrategy::LatestPerMinor => Selection::HighestPerMinor,
        SyncStrategy::AllInRange => Selection::All,
    }
}

/// Checks what the controller needs from the spec.
pub fn validate(syncer: &MachineImageSyncer) -> Result<Validated, SpecError> {
    let namespace = syncer.namespace().unwrap_or_default();
    let spec = &syncer.spec;
    let range = VersionRange::parse(&spec.version_range).map_err(SpecError::InvalidVersionRange)?;
    let source = resolve_reference("spec.sourceRef", &spec.source_ref, &namespace)
        .map_err(SpecError::Reference)?;
    let template = resolve_reference(
        "spec.machineImageTemplateRef",
        &spec.machine_image_template_ref,
        &namespace,
    )
    .map_err(SpecError::Reference)?;
    let api_version = spec
        .source_ref
        .api_version
        .as_deref()
        .filter(|v| !v.is_empty())
        .unwrap_or(API_VERSION);
    // An interval that does not parse is refused at admission; the default applies otherwise.
    let interval = match &spec.interval {
        Some(i) => i.period().unwrap_or(Some(DEFAULT_INTERVAL)),
        None => Some(DEFAULT_INTERVAL),
    };
    Ok(Validated {
        range,
        selection: selection(spec.strategy),
        source: SourceRef {
            api_version: api_version.to_owned(),
            kind: spec.source_ref.kind.clone().unwrap_or_default(),
            name: source.name.to_owned(),
            namespace: source.namespace.to_owned(),
        },
        template: template.name.to_owned(),
        interval,
        max_images: spec.max_images.unwrap_or(DEFAULT_MAX_IMAGES) as usize,
        max_concurrent_builds: spec
            .max_concurrent_builds
            .unwrap_or(DEFAULT_MAX_CONCURRENT_BUILDS) as usize,
    })
}
