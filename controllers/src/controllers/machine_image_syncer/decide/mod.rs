//! The decide step (pure): read a source's JSON, and decide which MachineImages to create, the
//! status and the events. No client, no clock.

use std::collections::BTreeMap;
use std::time::Duration;

use api::conditions::{self, Desired, Status};
use api::constraint::{self, VersionRange};
use api::v1alpha1::{
    CLONED_FROM_ANNOTATION, CONDITION_READY, DEBIAN_VERSION_ANNOTATION, KUBERNETES_VERSION_LABEL,
    MAX_IMAGES_PER_RECONCILE, MachineImage, MachineImageSpec, MachineImageSyncer,
    MachineImageSyncerStatus, MachineImageTemplate, SYNCER_NAME_LABEL,
};
use api::version::parse_strict;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{Resource, ResourceExt};
use semver::Version;
use serde_json::Value;

use super::names::{image_name, valid_label_value};
use super::validate::{SpecError, Validated};
use crate::runtime::Note;
use crate::runtime::children::{APP_NAME, MANAGED_BY};

/// Condition type set while `spec.paused` is true.
pub const CONDITION_PAUSED: &str = "Paused";

/// Reason of `Ready=True`: every selected version has an image.
pub const REASON_SYNCED: &str = "Synced";
/// Reason of `Ready=False` while more images are to be created than one reconcile creates.
pub const REASON_PROGRESSING: &str = "Progressing";
/// Reason of `Ready=False` while `spec.maxImages` stops new images.
pub const REASON_MAX_IMAGES: &str = "MaxImagesReached";
/// Reason of `Ready=False` while `spec.maxConcurrentBuilds` builds run and more wait.
pub const REASON_WAITING_FOR_BUILDS: &str = "WaitingForBuilds";
/// Reason of `Paused=True`.
pub const REASON_PAUSED: &str = "Paused";
/// Reason of `Paused=False`.
pub const REASON_NOT_PAUSED: &str = "NotPaused";

/// v0.6 Warning event reasons, published on a transition into the matching condition.
pub const EVENT_GET_VERSIONS_FAILED: &str = "GetVersionsFromSourceFailed";
/// v0.6: no version could be selected.
pub const EVENT_NO_LATEST_VERSION: &str = "NoLatestVersionFromSource";
/// v0.6: the template could not be read.
pub const EVENT_GET_TEMPLATE_FAILED: &str = "GetMachineImageTemplateFailed";
/// v0.6: an image could not be created.
pub const EVENT_CREATE_FAILED: &str = "CreateMachineImageFailed";
/// v0.6 Normal event per created image.
pub const EVENT_CREATED: &str = "CreatedMachineImage";

/// Re-check period after a failed read of a source, when the interval is longer.
pub const RETRY_UNREACHABLE: Duration = Duration::from_secs(30);
/// Delay before the next reconcile when one reconcile could not create every image.
pub const NEXT_BATCH: Duration = Duration::from_millis(200);

/// What a source publishes, read from its JSON (the Source contract).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceView {
    /// `status.versions`, in order; entries that are not strings are dropped.
    pub versions: Vec<String>,
    /// `status.debianVersions`: Kubernetes version → Debian version, when the source has it.
    pub debian: BTreeMap<String, String>,
}

impl SourceView {
    /// Reads `status.versions` and, when present, `status.debianVersions` (a list of
    /// `{version, debian}`) from a source object's JSON. Anything else is ignored.
    pub fn from_json(object: &Value) -> Self {
        let status = &object["status"];
        let versions = status["versions"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let debian = status["debianVersions"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|e| {
                        Some((
                            bare(e["version"].as_str()?).to_owned(),
                            e["debian"].as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { versions, debian }
    }
}

fn bare(version: &str) -> &str {
    version.strip_prefix('v').unwrap_or(version)
}

/// Why the source's versions could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceFailure {
    /// The object (or its kind) does not exist.
    NotFound(String),
    /// Reading it failed.
    Unreachable(String),
}

/// One of the syncer's images: found by the two v0.6 labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    /// Its name.
    pub name: String,
    /// Its `kubernetes-version` label.
    pub version_label: String,
    /// Its `spec.version`, when it could be read.
    pub spec_version: Option<String>,
    /// Its build is still to finish: no ID yet, and not failed.
    pub building: bool,
}

impl Existing {
    /// Whether this image is the one of `version`.
    fn is_for(&self, version: &str, parsed: &Version) -> bool {
        self.version_label == version
            || self
                .spec_version
                .as_deref()
                .and_then(parse_strict)
                .is_some_and(|v| v.cmp_precedence(parsed).is_eq())
    }

    fn version(&self) -> Option<Version> {
        self.spec_version
            .as_deref()
            .and_then(parse_strict)
            .or_else(|| parse_strict(&self.version_label))
    }
}

/// Everything `decide` looks at.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The syncer.
    pub syncer: &'a MachineImageSyncer,
    /// The validated spec, or why it is invalid.
    pub validated: &'a Result<Validated, SpecError>,
    /// The source's versions; `None` when it was not read (paused, invalid spec).
    pub source: Option<&'a Result<SourceView, SourceFailure>>,
    /// The syncer's images.
    pub images: &'a [Existing],
    /// The template, `None` when it does not exist (or cannot be read).
    pub template: Option<&'a MachineImageTemplate>,
    /// The time for new condition transitions.
    pub now: &'a Time,
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Images to create, highest version first.
    pub creates: Vec<MachineImage>,
    /// The status to hold once the creates succeeded.
    pub status: MachineImageSyncerStatus,
    /// Events to publish after the status write (Warnings on a transition into a failure).
    pub notes: Vec<Note>,
    /// When to look again; `None` waits for a change.
    pub requeue: Option<Duration>,
}

/// Decides the images to create, the status and the events.
pub fn decide(observed: &Observed<'_>) -> Decision {
    let syncer = observed.syncer;
    let current = syncer.status.clone().unwrap_or_default();
    let current_conditions = current.conditions.clone().unwrap_or_default();
    let generation = syncer.metadata.generation;
    let paused = syncer.spec.paused.unwrap_or(false);

    let outcome = if paused {
        None
    } else {
        Some(outcome(observed))
    };
    let mut desired = vec![if paused {
        Desired::new(
            CONDITION_PAUSED,
            Status::True,
            REASON_PAUSED,
            "spec.paused is true: no MachineImage is created",
        )
    } else {
        Desired::new(
            CONDITION_PAUSED,
            Status::False,
            REASON_NOT_PAUSED,
            "spec.paused is not set",
        )
    }];
    let mut notes = Vec::new();
    let (creates, latest, requeue) = match outcome {
        None => (Vec::new(), current.latest_version.clone(), None),
        Some(outcome) => {
            let previous_reason =
                conditions::find(&current_conditions, CONDITION_READY).map(|c| c.reason.as_str());
            if outcome.ready.status != Status::True
                && previous_reason != Some(outcome.ready.reason.as_str())
                && let Some(event) = warning_for(&outcome.ready.reason)
            {
                notes.push(Note::warning(event, outcome.ready.message.clone()));
            }
            desired.push(outcome.ready);
            (outcome.creates, outcome.latest, outcome.requeue)
        }
    };
    let status = MachineImageSyncerStatus {
        latest_version: latest,
        conditions: Some(conditions::merge(
            &current_conditions,
            &desired,
            generation,
            observed.now,
        )),
        observed_generation: generation,
    };
    Decision {
        creates,
        status,
        notes,
        requeue,
    }
}

/// The v0.6 Warning reason for a `Ready=False` reason, if it has one.
fn warning_for(reason: &str) -> Option<&'static str> {
    match reason {
        "SourceNotFound" | "SourceUnreachable" | "SourceHasNoVersions" => {
            Some(EVENT_GET_VERSIONS_FAILED)
        }
        "NoVersionInRange" => Some(EVENT_NO_LATEST_VERSION),
        "TemplateNotFound" => Some(EVENT_GET_TEMPLATE_FAILED),
        "LabelValueInvalid" | REASON_MAX_IMAGES => Some(EVENT_CREATE_FAILED),
        _ => None,
    }
}

struct Outcome {
    ready: Desired,
    creates: Vec<MachineImage>,
    latest: Option<String>,
    requeue: Option<Duration>,
}

fn not_ready(reason: &'static str, message: String, latest: Option<String>) -> Outcome {
    Outcome {
        ready: Desired::new(CONDITION_READY, Status::False, reason, message),
        creates: Vec::new(),
        latest,
        requeue: None,
    }
}

/// The highest in-range version among the syncer's images and the versions about to get one.
fn latest_version<'a>(
    range: &VersionRange,
    images: &[Existing],
    created: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let candidates = images
        .iter()
        .filter_map(|i| {
            let label = Some(i.version_label.clone()).filter(|l| parse_strict(l).is_some());
            Some((i.version()?, label.or_else(|| i.spec_version.clone())?))
        })
        .chain(
            created
                .into_iter()
                .filter_map(|v| Some((parse_strict(v)?, v.to_owned()))),
        );
    constraint::select_highest(range, candidates).map(|(_, text)| text)
}

fn outcome(observed: &Observed<'_>) -> Outcome {
    let syncer = observed.syncer;
    let current_latest = syncer
        .status
        .as_ref()
        .and_then(|s| s.latest_version.clone());
    let valid = match observed.validated {
        Ok(valid) => valid,
        Err(err) => return not_ready(err.reason(), err.to_string(), current_latest),
    };
    let kept = latest_version(&valid.range, observed.images, []);
    let source_name = format!("{} {}", valid.source.kind, valid.source.name);
    let view = match observed.source {
        Some(Ok(view)) => view,
        Some(Err(SourceFailure::NotFound(message))) => {
            return not_ready("SourceNotFound", message.clone(), kept);
        }
        Some(Err(SourceFailure::Unreachable(message))) => {
            let mut out = not_ready("SourceUnreachable", message.clone(), kept);
            out.requeue = Some(
                valid
                    .interval
                    .map_or(RETRY_UNREACHABLE, |i| i.min(RETRY_UNREACHABLE)),
            );
            return out;
        }
        None => {
            return not_ready(
                "SourceNotFound",
                format!("{source_name} was not read"),
                kept,
            );
        }
    };
    let candidates: Vec<(Version, &str)> = view
        .versions
        .iter()
        .filter_map(|v| Some((parse_strict(v)?, v.as_str())))
        .collect();
    if candidates.is_empty() {
        let message = if view.versions.is_empty() {
            format!("{source_name} lists no versions in status.versions")
        } else {
            format!(
                "{source_name} lists {} entries in status.versions, none of them a semver version",
                view.versions.len()
            )
        };
        return not_ready("SourceHasNoVersions", message, kept);
    }
    let selected = constraint::select(&valid.range, valid.selection, candidates);
    if selected.is_empty() {
        return not_ready(
            "NoVersionInRange",
            format!(
                "none of the {} versions {source_name} lists is within {:?}",
                view.versions.len(),
                valid.range.to_string()
            ),
            kept,
        );
    }

    let syncer_name = syncer.name_any();
    let missing: Vec<&(Version, &str)> = selected
        .iter()
        .filter(|(parsed, text)| !observed.images.iter().any(|i| i.is_for(text, parsed)))
        .collect();
    let (buildable, bad_labels): (Vec<_>, Vec<_>) = missing
        .into_iter()
        .partition(|(_, text)| valid_label_value(text) && valid_label_value(&syncer_name));
    let template = match (buildable.is_empty(), observed.template) {
        (true, _) => None,
        (false, Some(template)) => Some(template),
        (false, None) => {
            return not_ready(
                "TemplateNotFound",
                format!(
                    "MachineImageTemplate {} not found in namespace {}",
                    valid.template, valid.source.namespace
                ),
                kept,
            );
        }
    };
    let room = valid.max_images.saturating_sub(observed.images.len());
    let building = observed.images.iter().filter(|i| i.building).count();
    let free_builds = valid.max_concurrent_builds.saturating_sub(building);
    let batch: Vec<&str> = buildable
        .iter()
        .take(MAX_IMAGES_PER_RECONCILE.min(room).min(free_builds))
        .map(|(_, text)| *text)
        .collect();
    let creates: Vec<MachineImage> = template
        .map(|template| {
            batch
                .iter()
                .filter_map(|version| build_image(syncer, template, version, view))
                .collect()
        })
        .unwrap_or_default();
    let latest = latest_version(&valid.range, observed.images, batch.iter().copied());
    let more = buildable.len() > batch.len();
    let limit = if !more {
        None
    } else if room <= batch.len() {
        Some(Desired::new(
            CONDITION_READY,
            Status::False,
            REASON_MAX_IMAGES,
            format!(
                "the syncer keeps {} MachineImages, its spec.maxImages ({}): {} selected versions get no image; delete old images or raise spec.maxImages",
                observed.images.len() + batch.len(),
                valid.max_images,
                buildable.len() - batch.len()
            ),
        ))
    } else if free_builds <= batch.len() {
        Some(Desired::new(
            CONDITION_READY,
            Status::False,
            REASON_WAITING_FOR_BUILDS,
            format!(
                "{} builds running, spec.maxConcurrentBuilds is {}: {} selected versions wait for a build to finish",
                building + batch.len(),
                valid.max_concurrent_builds,
                buildable.len() - batch.len()
            ),
        ))
    } else {
        None
    };

    if let Some((_, text)) = bad_labels.first() {
        let message = if valid_label_value(&syncer_name) {
            format!(
                "version {text:?} is not a valid label value for {KUBERNETES_VERSION_LABEL} (at most 63 characters of [A-Za-z0-9._-], alphanumeric at both ends); no MachineImage is created for it"
            )
        } else {
            format!(
                "the syncer name {syncer_name:?} is not a valid label value for {SYNCER_NAME_LABEL} (at most 63 characters); no MachineImage is created"
            )
        };
        return Outcome {
            ready: Desired::new(CONDITION_READY, Status::False, "LabelValueInvalid", message),
            creates,
            latest,
            requeue: more.then_some(NEXT_BATCH),
        };
    }
    if let Some(ready) = limit {
        // Images, or finished builds, change this: their events bring the syncer back.
        return Outcome {
            ready,
            creates,
            latest,
            requeue: valid.interval,
        };
    }
    let ready = if more {
        Desired::new(
            CONDITION_READY,
            Status::False,
            REASON_PROGRESSING,
            format!(
                "creating MachineImages for {} versions, {} at a time",
                buildable.len(),
                MAX_IMAGES_PER_RECONCILE
            ),
        )
    } else {
        Desired::new(
            CONDITION_READY,
            Status::True,
            REASON_SYNCED,
            format!(
                "every selected version has a MachineImage: {}",
                listing(selected.iter().map(|(_, t)| *t))
            ),
        )
    };
    Outcome {
        ready,
        creates,
        latest,
        requeue: if more {
            Some(NEXT_BATCH)
        } else {
            valid.interval
        },
    }
}

/// Longest list of versions a condition message names.
const MESSAGE_VERSIONS: usize = 10;

/// `versions`, highest first, cut after [`MESSAGE_VERSIONS`] with a count of the rest.
fn listing<'a>(versions: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = versions.len();
    let shown: Vec<&str> = versions.take(MESSAGE_VERSIONS).collect();
    let text = shown.join(", ");
    if total > shown.len() {
        format!("{text} and {} more", total - shown.len())
    } else {
        text
    }
}

/// The MachineImage of `version`: the template's labels and annotations under ours, a
/// controller owner reference to the syncer, and the template's job template.
pub fn build_image(
    syncer: &MachineImageSyncer,
    template: &MachineImageTemplate,
    version: &str,
    view: &SourceView,
) -> Option<MachineImage> {
    let syncer_name = syncer.name_any();
    let uid = syncer.uid()?;
    let mut owner = syncer.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    let from = template.spec.template.metadata.as_ref();
    let mut labels = from.and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.extend([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (SYNCER_NAME_LABEL.to_owned(), syncer_name.clone()),
        (KUBERNETES_VERSION_LABEL.to_owned(), version.to_owned()),
    ]);
    let mut annotations = from.and_then(|m| m.annotations.clone()).unwrap_or_default();
    annotations.insert(CLONED_FROM_ANNOTATION.to_owned(), template.name_any());
    if let Some(debian) = view.debian.get(bare(version)) {
        annotations.insert(DEBIAN_VERSION_ANNOTATION.to_owned(), debian.clone());
    }
    Some(MachineImage {
        metadata: ObjectMeta {
            name: Some(image_name(&syncer_name, &uid, version)),
            namespace: syncer.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: MachineImageSpec {
            version: version.to_owned(),
            id: None,
            job_template: std::sync::Arc::new(template.spec.template.spec.job_template.clone()),
        },
        status: None,
    })
}

#[cfg(test)]
mod tests;
