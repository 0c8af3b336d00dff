//! Rendering a build Job from a MachineImage (pure): its deterministic name per attempt, labels,
//! owner reference, Job knobs and the environment injected into every container. The
//! MachineImageTemplate controller renders the same Job for its server-side dry run.

use std::collections::BTreeMap;

use api::v1alpha1::{
    ATTEMPT_ANNOTATION, JOB_TEMPLATE_HASH_ANNOTATION, JobTemplate, KUBERNETES_VERSION_ENV,
    MACHINE_IMAGE_NAME_LABEL, MachineImage, OS_IMAGE_STAMP_ANNOTATION, REBUILD_ANNOTATION,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodTemplateSpec};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest as _, Sha256};

use crate::runtime::children::{APP_NAME, MANAGED_BY};

/// `KUBERNETES_SEMVER`: the version without its `v`, such as `1.31.2`.
pub const ENV_SEMVER: &str = "KUBERNETES_SEMVER";
/// `KUBERNETES_SERIES`: the minor series, such as `v1.31`.
pub const ENV_SERIES: &str = "KUBERNETES_SERIES";
/// `KUBERNETES_DEB_VERSION`: the Debian package version, such as `1.31.2-1.1`.
pub const ENV_DEB_VERSION: &str = "KUBERNETES_DEB_VERSION";
/// `MACHINE_IMAGE_NAME`: the MachineImage's name.
pub const ENV_IMAGE_NAME: &str = "MACHINE_IMAGE_NAME";
/// `MACHINE_IMAGE_STAMP`: `<image>-<uid>-<attempt>`, unique per build.
pub const ENV_STAMP: &str = "MACHINE_IMAGE_STAMP";

/// The event component, also `app.kubernetes.io/component` of the Jobs.
pub const COMPONENT: &str = "machineimage-reconciler";

/// Longest Kubernetes object name that is also a label value (a Job's name is both).
const MAX_NAME: usize = 63;
/// Length of the derived suffix, as v0.6's `generateName`.
const SUFFIX_LEN: usize = 5;
/// The alphabet of Kubernetes' generated suffixes (no vowels, no look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Longest Debian version accepted in `KUBERNETES_DEB_VERSION`.
const MAX_DEB_VERSION: usize = 128;

/// Why no Job can be rendered. Each is a condition reason, and the image waits for a change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// `spec.version` is not strict semver.
    #[error("spec.version {0:?} is not a Kubernetes version such as v1.31.2")]
    InvalidVersion(String),
    /// The Debian version annotation is not a Debian version.
    #[error(
        "the annotation kubernetes-upgrader.dimitrikoshkin.com/debian-version {0:?} is not a Debian version such as 1.31.2-1.1"
    )]
    InvalidDebianVersion(String),
    /// The image name cannot be a label value.
    #[error(
        "the MachineImage name {0:?} cannot be the value of the label {MACHINE_IMAGE_NAME_LABEL}: at most 63 characters of [A-Za-z0-9._-], alphanumeric at both ends"
    )]
    LabelValueInvalid(String),
}

impl RenderError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidVersion(_) | Self::InvalidDebianVersion(_) => "InvalidVersion",
            Self::LabelValueInvalid(_) => "LabelValueInvalid",
        }
    }
}

/// The name of the Job of `attempt` for the image `image` with uid `uid`: the image's name,
/// shortened so that the whole stays a 63-character DNS label, `-`, and five characters derived
/// from the uid and the attempt.
pub fn job_name(image: &str, uid: &str, attempt: i32) -> String {
    let digest = Sha256::digest(format!("{uid}/{attempt}"));
    let suffix: String = digest
        .iter()
        .take(SUFFIX_LEN)
        .map(|b| char::from(SUFFIX_ALPHABET[usize::from(*b) % SUFFIX_ALPHABET.len()]))
        .collect();
    let label: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(MAX_NAME - SUFFIX_LEN - 1)
        .collect();
    let prefix = label.trim_matches('-');
    format!("{prefix}-{suffix}")
}

/// How many characters of the image's UID a stamp carries.
const STAMP_UID_LEN: usize = 8;

/// `MACHINE_IMAGE_STAMP` of one build: `<image>-<uid>-<attempt>`, where `<uid>` is the start of
/// the MachineImage's UID, so that an image deleted and recreated under the same name stamps its
/// builds differently. An image not stored yet (a dry run) has no UID: `<image>-<attempt>`.
pub fn stamp(image: &str, uid: &str, attempt: i32) -> String {
    let build: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(STAMP_UID_LEN)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if build.is_empty() {
        format!("{image}-{attempt}")
    } else {
        format!("{image}-{build}-{attempt}")
    }
}

/// A short, stable hash of a job template, recorded per attempt.
pub fn template_hash(template: &JobTemplate) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// Whether `value` is a valid label value.
pub fn is_label_value(value: &str) -> bool {
    value.len() <= MAX_NAME
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && (value.is_empty()
            || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

/// Whether `text` is a Debian version: `[epoch:]upstream[-revision]`, the upstream part starting
/// with a digit, made only of the characters Debian allows.
pub fn is_debian_version(text: &str) -> bool {
    if text.is_empty() || text.len() > MAX_DEB_VERSION {
        return false;
    }
    let (epoch, rest) = match text.split_once(':') {
        Some((epoch, rest)) => (Some(epoch), rest),
        None => (None, text),
    };
    if epoch.is_some_and(|e| e.is_empty() || !e.chars().all(|c| c.is_ascii_digit())) {
        return false;
    }
    let (upstream, revision) = match rest.rsplit_once('-') {
        Some((upstream, revision)) => (upstream, Some(revision)),
        None => (rest, None),
    };
    let upstream_ok = upstream.starts_with(|c: char| c.is_ascii_digit())
        && upstream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | '-' | ':'));
    let revision_ok = revision.is_none_or(|r| {
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~'))
    });
    upstream_ok
        && revision_ok
        && debian_packaging::package_version::PackageVersion::parse(text).is_ok()
}

/// The environment every build container receives, in order; `stamp` is the build's
/// [`stamp`].
pub fn build_env(
    image: &str,
    version: &str,
    debian_version: Option<&str>,
    stamp: &str,
) -> Result<Vec<EnvVar>, RenderError> {
    let parsed = api::version::parse_strict(version)
        .ok_or_else(|| RenderError::InvalidVersion(version.to_owned()))?;
    if let Some(deb) = debian_version
        && !is_debian_version(deb)
    {
        return Err(RenderError::InvalidDebianVersion(deb.to_owned()));
    }
    let var = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    };
    let mut env = vec![
        var(KUBERNETES_VERSION_ENV, version.to_owned()),
        var(ENV_SEMVER, parsed.to_string()),
        var(ENV_SERIES, format!("v{}.{}", parsed.major, parsed.minor)),
    ];
    if let Some(deb) = debian_version {
        env.push(var(ENV_DEB_VERSION, deb.to_owned()));
    }
    env.push(var(ENV_IMAGE_NAME, image.to_owned()));
    env.push(var(ENV_STAMP, stamp.to_owned()));
    Ok(env)
}

/// `container` with every entry named like one of `env` removed, then `env` appended once.
fn inject(container: &mut Container, env: &[EnvVar]) {
    let entries = container.env.get_or_insert_default();
    entries.retain(|e| !env.iter().any(|i| i.name == e.name));
    entries.extend(env.iter().cloned());
}

/// The labels of a build Job and its pods.
pub fn job_labels(image: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MACHINE_IMAGE_NAME_LABEL.to_owned(), image.to_owned()),
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), image.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            COMPONENT.to_owned(),
        ),
    ])
}

/// The build Job of `attempt` for `image`, rendered from its job template: named by
/// [`job_name`], owned by the image (when it is stored), labelled, carrying the attempt, the
/// template hash, the stamp and the rebuild value it answers, and the injected environment.
pub fn render_job(
    image: &MachineImage,
    attempt: i32,
    rebuild: Option<&str>,
) -> Result<Job, RenderError> {
    let name = image.name_any();
    if name.is_empty() || !is_label_value(&name) {
        return Err(RenderError::LabelValueInvalid(name));
    }
    let debian_version = image
        .annotations()
        .get(api::v1alpha1::DEBIAN_VERSION_ANNOTATION)
        .map(String::as_str);
    let uid = image.uid().unwrap_or_default();
    let build_stamp = stamp(&name, &uid, attempt);
    let env = build_env(&name, &image.spec.version, debian_version, &build_stamp)?;
    let template = &image.spec.job_template;
    let mut pod_spec = template.spec.clone();
    for container in pod_spec
        .containers
        .iter_mut()
        .chain(pod_spec.init_containers.iter_mut().flatten())
    {
        inject(container, &env);
    }
    if pod_spec.restart_policy.is_none() {
        // A Job refuses `Always`, the pod default; a build runs once per pod.
        pod_spec.restart_policy = Some("Never".to_owned());
    }
    let labels = job_labels(&name);
    let mut annotations = BTreeMap::from([
        (ATTEMPT_ANNOTATION.to_owned(), attempt.to_string()),
        (
            JOB_TEMPLATE_HASH_ANNOTATION.to_owned(),
            template_hash(template),
        ),
        (OS_IMAGE_STAMP_ANNOTATION.to_owned(), build_stamp),
    ]);
    if let Some(rebuild) = rebuild {
        annotations.insert(REBUILD_ANNOTATION.to_owned(), rebuild.to_owned());
    }
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, &uid, attempt)),
            namespace: image.namespace(),
            labels: Some(labels.clone()),
            annotations: Some(annotations),
            owner_references: image.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: template.backoff_limit,
            active_deadline_seconds: template.active_deadline_seconds,
            ttl_seconds_after_finished: template.ttl_seconds_after_finished,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::builders::{Build, Fixture, ImageBuild};
    use serde_json::json;

    fn image(name: &str, version: &str, annotations: &serde_json::Value) -> MachineImage {
        let mut image = MachineImage::test(name)
            .with_uid("uid-1")
            .with_generation(1)
            .with_version(version)
            .with_job_template(&json!({
                "backoffLimit": 2,
                "ttlSecondsAfterFinished": 60,
                "spec": {
                    "initContainers": [{"name": "fetch", "image": "busybox", "env": [{"name": "KUBERNETES_VERSION", "value": "stale"}]}],
                    "containers": [
                        {"name": "build", "image": "builder", "env": [
                            {"name": "KUBERNETES_VERSION", "value": "v0.0.1"},
                            {"name": "KUBERNETES_VERSION", "value": "v0.0.2"},
                            {"name": "KEEP", "value": "me"}
                        ]},
                        {"name": "publish", "image": "publisher"}
                    ]
                }
            }));
        for (key, value) in annotations.as_object().unwrap() {
            image = image.with_annotation(key, value.as_str().unwrap());
        }
        image
    }

    fn env_of(container: &Container) -> Vec<(String, String)> {
        container
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn job_names_are_deterministic_per_attempt_and_valid_labels() {
        let first = job_name("img", "uid-1", 1);
        assert_eq!(first, job_name("img", "uid-1", 1));
        assert_ne!(first, job_name("img", "uid-1", 2));
        assert_ne!(first, job_name("img", "uid-2", 1));
        assert!(first.starts_with("img-") && first.len() == 9, "{first}");
        let long = job_name(&format!("{}.v1.31.2", "a".repeat(70)), "uid-1", 3);
        assert_eq!(long.len(), 63, "{long}");
        assert!(is_label_value(&long) && !long.contains('.'), "{long}");
        let dotted = job_name("img-v1.31.2", "u", 1);
        assert!(dotted.starts_with("img-v1-31-2-"), "{dotted}");
        // Cutting after a dash never leaves a double dash or a dash at the end of the prefix.
        let cut = job_name(&format!("{}-b", "a".repeat(56)), "u", 1);
        assert!(!cut.contains("--"), "{cut}");
    }

    #[test]
    fn a_stamp_names_the_image_its_build_and_the_attempt() {
        let first = "3f2a9c1e-0b6d-4c1e-9d7a-2f1e0c9b8a77";
        let recreated = "9b0c7d21-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
        assert_eq!(stamp("os", first, 2), "os-3f2a9c1e-2");
        // The same name deleted and created again builds under another stamp.
        assert_ne!(stamp("os", first, 1), stamp("os", recreated, 1));
        assert_ne!(stamp("os", first, 1), stamp("os", first, 2));
        // Only letters and digits of the UID, lower case: a whole word of the osImage.
        assert_eq!(stamp("os", "AB-cd/ef", 1), "os-abcdef-1");
        // An image not stored yet (the template's dry run) has no UID.
        assert_eq!(stamp("os", "", 1), "os-1");
        // The longest name still makes a valid image tag (at most 128 characters).
        let longest = stamp(&"a".repeat(63), first, i32::MAX);
        assert!(longest.len() <= 128, "{longest}");
    }

    #[test]
    fn the_environment_is_injected_once_into_every_container() {
        let image = image(
            "img",
            "v1.31.2",
            &json!({"kubernetes-upgrader.dimitrikoshkin.com/debian-version": "1.31.2-1.1"}),
        );
        let job = render_job(&image, 3, Some("r1")).unwrap();
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let injected = [
            ("KUBERNETES_VERSION", "v1.31.2"),
            ("KUBERNETES_SEMVER", "1.31.2"),
            ("KUBERNETES_SERIES", "v1.31"),
            ("KUBERNETES_DEB_VERSION", "1.31.2-1.1"),
            ("MACHINE_IMAGE_NAME", "img"),
            ("MACHINE_IMAGE_STAMP", "img-uid1-3"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let mut build = vec![("KEEP".to_owned(), "me".to_owned())];
        build.extend(injected.clone());
        assert_eq!(env_of(&pod.containers[0]), build);
        assert_eq!(env_of(&pod.containers[1]), injected);
        assert_eq!(env_of(&pod.init_containers.as_ref().unwrap()[0]), injected);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn without_the_annotation_there_is_no_deb_version() {
        let job = render_job(&image("img", "1.31.2", &json!({})), 1, None).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        let names: Vec<String> = env_of(&pod.containers[1])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            names,
            [
                "KUBERNETES_VERSION",
                "KUBERNETES_SEMVER",
                "KUBERNETES_SERIES",
                "MACHINE_IMAGE_NAME",
                "MACHINE_IMAGE_STAMP"
            ]
        );
        assert_eq!(env_of(&pod.containers[1])[0].1, "1.31.2");
    }

    #[test]
    fn the_job_is_labelled_owned_annotated_and_carries_the_knobs() {
        let image = image("img", "v1.31.2", &json!({}));
        let job = render_job(&image, 2, Some("again")).unwrap();
        let labels = job.labels();
        assert_eq!(labels[MACHINE_IMAGE_NAME_LABEL], "img");
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "kubernetes-upgrader"
        );
        assert_eq!(labels["app.kubernetes.io/component"], COMPONENT);
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(
            spec.template.metadata.as_ref().unwrap().labels.as_ref(),
            Some(labels)
        );
        let owner = &job.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("MachineImage", "uid-1", Some(true))
        );
        let annotations = job.annotations();
        assert_eq!(annotations[ATTEMPT_ANNOTATION], "2");
        assert_eq!(annotations[OS_IMAGE_STAMP_ANNOTATION], "img-uid1-2");
        assert_eq!(annotations[REBUILD_ANNOTATION], "again");
        assert_eq!(
            annotations[JOB_TEMPLATE_HASH_ANNOTATION],
            template_hash(&image.spec.job_template)
        );
        assert_eq!(job.name_any(), job_name("img", "uid-1", 2));
        assert_eq!(job.namespace().as_deref(), Some("team"));
        assert_eq!(
            (
                spec.backoff_limit,
                spec.ttl_seconds_after_finished,
                spec.active_deadline_seconds
            ),
            (Some(2), Some(60), None)
        );
    }

    #[test]
    fn invalid_inputs_render_no_job() {
        let cases = [
            (image("img", "v1.31", &json!({})), "InvalidVersion"),
            (image("img", "latest", &json!({})), "InvalidVersion"),
            (
                image(
                    "img",
                    "v1.31.2",
                    &json!({"kubernetes-upgrader.dimitrikoshkin.com/debian-version": "1.31.2-00; rm -rf /"}),
                ),
                "InvalidVersion",
            ),
            (
                image(&"a".repeat(64), "v1.31.2", &json!({})),
                "LabelValueInvalid",
            ),
        ];
        for (image, reason) in cases {
            let err = render_job(&image, 1, None).unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
        }
    }

    #[test]
    fn debian_versions_are_checked() {
        for ok in [
            "1.31.2-1.1",
            "1:1.27.0-2.1",
            "1.27.3-00",
            "1.31.2",
            "1.31.2~rc.1-1.1",
        ] {
            assert!(is_debian_version(ok), "{ok}");
        }
        for bad in [
            "",
            "v1.31.2",
            "1.31.2 -1",
            "1.31.2-",
            "a:1.0",
            "1.0\n",
            &"1".repeat(200),
        ] {
            assert!(!is_debian_version(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_template_hash_follows_the_template() {
        let a = image("img", "v1.31.2", &json!({}));
        let mut b = a.clone();
        assert_eq!(
            template_hash(&a.spec.job_template),
            template_hash(&b.spec.job_template)
        );
        std::sync::Arc::make_mut(&mut b.spec.job_template).backoff_limit = Some(3);
        assert_ne!(
            template_hash(&a.spec.job_template),
            template_hash(&b.spec.job_template)
        );
    }
}
