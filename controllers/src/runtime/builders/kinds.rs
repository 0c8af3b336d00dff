//! Each kind's smallest valid spec, and the builder methods of the kinds tests shape most.

use api::v1alpha1::{
    ClusterClassClusterUpgrader, DebianRepositorySource, InClusterUpgradeAutomation, MachineImage,
    MachineImageDetails, MachineImagePhase, MachineImageStatus, MachineImageSyncer,
    MachineImageTemplate, Plan, PlanPhase, PlanStatus,
};
use serde_json::{Value, json};

use super::{Build, Fixture};

/// The build Job template of every test image and template: one container, `build`.
fn job_template() -> Value {
    json!({"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "build", "image": "builder"}],
    }})
}

impl Fixture for MachineImage {
    fn minimal_spec() -> Value {
        json!({"version": "v1.31.2", "jobTemplate": job_template()})
    }
}

impl Fixture for MachineImageTemplate {
    fn minimal_spec() -> Value {
        json!({"template": {"spec": {"jobTemplate": job_template()}}})
    }
}

impl Fixture for MachineImageSyncer {
    fn minimal_spec() -> Value {
        json!({
            "versionRange": "v1.27.x",
            "sourceRef": {"kind": "DebianRepositorySource", "name": "src"},
            "machineImageTemplateRef": {"name": "tpl"},
        })
    }
}

impl Fixture for DebianRepositorySource {
    fn minimal_spec() -> Value {
        json!({"url": "http://127.0.0.1:1/Packages"})
    }
}

impl Fixture for Plan {
    fn minimal_spec() -> Value {
        json!({"versionRange": "*"})
    }
}

impl Fixture for ClusterClassClusterUpgrader {
    fn minimal_spec() -> Value {
        json!({"clusterName": "c", "planRef": {"name": "p"}, "topologyVariable": "image"})
    }
}

impl Fixture for InClusterUpgradeAutomation {
    fn minimal_spec() -> Value {
        json!({"clusterName": "c", "planRef": {"name": "p"}, "topologyVariable": "image"})
    }
}

/// MachineImage builder methods.
pub trait ImageBuild: Sized {
    /// With `spec.version`.
    #[must_use]
    fn with_version(self, version: &str) -> Self;
    /// With `spec.id`: a static image, or one whose build handed its ID back.
    #[must_use]
    fn with_id(self, id: &str) -> Self;
    /// With `spec.jobTemplate` (JSON).
    #[must_use]
    fn with_job_template(self, job_template: &Value) -> Self;
    /// Built: `spec.id` is `id`, and the status says ready, phase `Created`.
    #[must_use]
    fn ready(self, id: &str) -> Self;
    /// Its status says not ready, whatever else it says.
    #[must_use]
    fn unready(self) -> Self;
}

impl ImageBuild for MachineImage {
    fn with_version(mut self, version: &str) -> Self {
        version.clone_into(&mut self.spec.version);
        self
    }

    fn with_id(mut self, id: &str) -> Self {
        self.spec.id = Some(id.to_owned());
        self
    }

    fn with_job_template(self, job_template: &Value) -> Self {
        self.with_spec(&json!({"jobTemplate": job_template}))
    }

    fn ready(self, id: &str) -> Self {
        let mut image = self.with_id(id);
        let status = image.status.get_or_insert_with(MachineImageStatus::default);
        status.ready = true;
        status.phase = Some(MachineImagePhase::Created);
        image
    }

    fn unready(mut self) -> Self {
        self.status
            .get_or_insert_with(MachineImageStatus::default)
            .ready = false;
        self
    }
}

/// Plan builder methods.
pub trait PlanBuild: Sized {
    /// With `spec.versionRange`.
    #[must_use]
    fn with_range(self, range: &str) -> Self;
    /// Its status says it found the image `id` of `version`.
    #[must_use]
    fn found(self, version: &str, id: &str) -> Self;
}

impl PlanBuild for Plan {
    fn with_range(mut self, range: &str) -> Self {
        range.clone_into(&mut self.spec.version_range);
        self
    }

    fn found(mut self, version: &str, id: &str) -> Self {
        let status = self.status.get_or_insert_with(PlanStatus::default);
        status.phase = Some(PlanPhase::FoundMachineImage);
        status.machine_image_details = Some(MachineImageDetails {
            version: Some(version.to_owned()),
            id: id.to_owned(),
        });
        self
    }
}

/// DebianRepositorySource builder methods.
pub trait SourceBuild: Sized {
    /// With `spec.url`.
    #[must_use]
    fn with_url(self, url: &str) -> Self;
}

impl SourceBuild for DebianRepositorySource {
    fn with_url(mut self, url: &str) -> Self {
        url.clone_into(&mut self.spec.url);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NAMESPACE, condition, now, ready, timestamp};
    use super::*;
    use kube::ResourceExt;

    #[test]
    fn every_kind_starts_valid_in_the_test_namespace() {
        let image = MachineImage::test("img");
        assert_eq!(image.name_any(), "img");
        assert_eq!(image.namespace().as_deref(), Some(NAMESPACE));
        assert_eq!(image.spec.version, "v1.31.2");
        assert_eq!(image.spec.job_template.spec.containers[0].name, "build");
        assert!(image.status.is_none());
        assert_eq!(MachineImageSyncer::test("s").spec.version_range, "v1.27.x");
        assert_eq!(
            MachineImageTemplate::test("t")
                .spec
                .template
                .spec
                .job_template
                .spec
                .containers
                .len(),
            1
        );
        assert_eq!(
            DebianRepositorySource::test("src").spec.url,
            "http://127.0.0.1:1/Packages"
        );
        assert_eq!(Plan::test("p").spec.version_range, "*");
        assert_eq!(
            ClusterClassClusterUpgrader::test("u").spec.cluster_name,
            "c"
        );
        assert_eq!(InClusterUpgradeAutomation::test("u").spec.cluster_name, "c");
    }

    #[test]
    fn builders_set_what_they_name_and_nothing_else() {
        let image = MachineImage::test("img")
            .in_namespace("other")
            .with_uid("uid-1")
            .with_generation(4)
            .with_label("os", "ubuntu")
            .with_annotation("a", "b")
            .created_at("2026-01-02T03:04:05Z")
            .with_version("v1.30.0")
            .ready("ami-1");
        assert_eq!(image.namespace().as_deref(), Some("other"));
        assert_eq!(image.metadata.uid.as_deref(), Some("uid-1"));
        assert_eq!(image.metadata.generation, Some(4));
        assert_eq!(image.labels()["os"], "ubuntu");
        assert_eq!(image.annotations()["a"], "b");
        assert_eq!(
            image
                .metadata
                .creation_timestamp
                .as_ref()
                .unwrap()
                .0
                .to_string(),
            "2026-01-02T03:04:05Z"
        );
        assert_eq!(image.spec.version, "v1.30.0");
        assert_eq!(image.spec.id.as_deref(), Some("ami-1"));
        let status = image.status.clone().unwrap();
        assert!(status.ready);
        assert_eq!(status.phase, Some(MachineImagePhase::Created));
        let unready = image.unready().status.unwrap();
        assert!(!unready.ready);
        assert_eq!(unready.phase, Some(MachineImagePhase::Created));

        let plan = Plan::test("p")
            .with_range("v1.31.x")
            .found("v1.31.1", "ami-1");
        let details = plan.status.unwrap().machine_image_details.unwrap();
        assert_eq!(
            (details.version.as_deref(), details.id.as_str()),
            (Some("v1.31.1"), "ami-1")
        );
        assert_eq!(plan.spec.version_range, "v1.31.x");

        let merged = MachineImageSyncer::test("s").with_spec(&json!({"maxImages": 3}));
        assert_eq!(merged.spec.max_images, Some(3));
        assert_eq!(
            merged.spec.version_range, "v1.27.x",
            "the rest of the spec stays"
        );
        let source = DebianRepositorySource::test("src")
            .with_url("http://mirror/")
            .with_status(&json!({"versions": ["v1.27.1"]}));
        assert_eq!(source.spec.url, "http://mirror/");
        assert_eq!(
            source.status.unwrap().versions,
            Some(vec!["v1.27.1".to_owned()])
        );
    }

    #[test]
    fn one_clock_and_one_condition_lookup() {
        assert_eq!(timestamp().to_string(), "2026-11-28T03:00:00Z");
        assert_eq!(now().0, timestamp());
        assert_eq!(
            super::super::at(60).0.as_second(),
            timestamp().as_second() + 60
        );
        let status = json!({"conditions": [
            {"type": "Ready", "status": "False", "reason": "Building", "message": "m"},
            {"type": "Verified", "status": "True", "reason": "Signed", "message": "by k"},
        ]});
        assert_eq!(ready(&status), ("False".into(), "Building".into()));
        assert_eq!(
            condition(&status, "Verified"),
            ("True".into(), "Signed".into(), "by k".into())
        );
    }
}
