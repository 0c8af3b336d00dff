//! The ready-to-use templates in `jobs/`: each renders into a Job with the injected environment,
//! its volumes, its securityContext and the image-ID hand-off wired to the right container.

use std::collections::BTreeMap;

use super::*;
use crate::controllers::machine_image::id_container;
use crate::controllers::machine_image::render_job;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec};

const CAPD: &str = include_str!("../../../../jobs/capd.yaml");
const VSPHERE: &str = include_str!("../../../../jobs/vsphere-ova.yaml");
const ELEMENTAL: &str = include_str!("../../../../jobs/elemental-os.yaml");
const ELEMENTAL_DOCKERFILE: &str = include_str!("../../../../jobs/elemental-os-dockerfile.yaml");

/// The template in `yaml`, stored in namespace `builds`, and the Job rendered from it.
fn rendered(yaml: &str) -> (MachineImage, Job, PodSpec) {
    let mut template: MachineImageTemplate = serde_yaml::from_str(yaml).unwrap();
    template.metadata.namespace = Some("builds".into());
    let image = sample_image(&template);
    let job = render_job(&image, 1, None).unwrap();
    let pod = job.spec.clone().unwrap().template.spec.unwrap();
    (image, job, pod)
}

fn env(container: &Container) -> BTreeMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn script(container: &Container) -> String {
    container.args.clone().unwrap_or_default().join("\n")
}

fn mounts(container: &Container) -> BTreeMap<String, String> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect()
}

fn assert_injected(container: &Container) {
    let env = env(container);
    for (key, value) in [
        ("KUBERNETES_VERSION", SAMPLE_VERSION),
        ("KUBERNETES_SEMVER", "1.31.0"),
        ("KUBERNETES_SERIES", "v1.31"),
        ("KUBERNETES_DEB_VERSION", SAMPLE_DEB_VERSION),
        ("MACHINE_IMAGE_NAME", SAMPLE_IMAGE),
        ("MACHINE_IMAGE_STAMP", "template-dry-run-1"),
    ] {
        assert_eq!(
            env.get(key).map(String::as_str),
            Some(value),
            "{} {key}",
            container.name
        );
    }
}

/// The container the controller reads the ID from writes it to its termination log.
fn assert_hands_off(image: &MachineImage, job: &Job, pod: &PodSpec, expected: &str) {
    let container = id_container(job, image).unwrap();
    assert_eq!(container, expected);
    let c = pod.containers.iter().find(|c| c.name == container).unwrap();
    assert!(
        script(c).contains("> /dev/termination-log"),
        "{}",
        script(c)
    );
    assert_eq!(
        c.termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    assert_eq!(c.termination_message_policy.as_deref(), Some("File"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert!(pod.service_account_name.is_none(), "no RBAC needed");
}

#[test]
fn capd_resolves_the_kind_node_image_unprivileged() {
    let (image, job, pod) = rendered(CAPD);
    assert_hands_off(&image, &job, &pod, "resolve");
    let resolve = &pod.containers[0];
    assert_injected(resolve);
    assert_eq!(env(resolve)["HOME"], "/tmp");
    assert!(script(resolve).contains("docker.io/kindest/node:${KUBERNETES_VERSION}"));
    assert!(script(resolve).contains("crane digest"));
    assert_eq!(mounts(resolve)["tmp"], "/tmp");
    let security = resolve.security_context.clone().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.unwrap().drop,
        Some(vec!["ALL".to_owned()])
    );
    let pod_security = pod.security_context.clone().unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(job.spec.unwrap().backoff_limit, Some(2));
}

#[test]
fn vsphere_uses_pkgs_k8s_io_versions_and_the_credentials_secret() {
    let (image, job, pod) = rendered(VSPHERE);
    assert_hands_off(&image, &job, &pod, "image-builder");
    let builder = &pod.containers[0];
    assert_injected(builder);
    let script = script(builder);
    assert!(
        script.contains(r#"deb="${KUBERNETES_DEB_VERSION:-${KUBERNETES_SEMVER}-1.1}""#),
        "{script}"
    );
    assert!(
        !script.contains("-00"),
        "the retired apt.kubernetes.io suffix"
    );
    assert!(script.contains(r#""kubernetes_deb_version": "${deb}""#));
    assert!(script.contains("PACKER_VAR_FILES=\"/secrets/vsphere.json"));
    assert!(script.contains("jq -r '.builds[-1].custom_data.vm_name"));
    assert_eq!(mounts(builder)["vsphere-credentials"], "/secrets");
    let secret = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "vsphere-credentials")
        .and_then(|v| v.secret.clone())
        .unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("vsphere-credentials"));
    let security = builder.security_context.clone().unwrap();
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
}

#[test]
fn elemental_builds_rootless_pushes_with_the_secret_and_hands_off_a_digest() {
    let (image, job, pod) = rendered(ELEMENTAL);
    assert_hands_off(&image, &job, &pod, "publish");
    let build = &pod.init_containers.as_ref().unwrap()[0];
    let publish = &pod.containers[0];
    assert_injected(build);
    assert_injected(publish);
    let build_script = script(build);
    assert!(
        build_script.contains("buildah bud --isolation=chroot"),
        "{build_script}"
    );
    assert!(build_script.contains("--build-arg MACHINE_IMAGE_STAMP=\"${MACHINE_IMAGE_STAMP}\""));
    assert!(build_script.contains("--digestfile /out/digest"));
    assert!(
        build_script
            .contains("printf 'oci://%s@%s' \"$ref\" \"$(cat /out/digest)\" > /out/image-id")
    );
    assert_eq!(env(build)["REGISTRY_AUTH_FILE"], "/auth/.dockerconfigjson");
    assert_eq!(mounts(build)["dockerfile"], "/dockerfile");
    assert_eq!(mounts(build)["out"], "/out");
    assert_eq!(mounts(publish)["out"], "/out");
    let build_security = build.security_context.clone().unwrap();
    assert_eq!(build_security.privileged, Some(false));
    assert_eq!(build_security.run_as_user, Some(1000));
    assert_eq!(build_security.run_as_non_root, Some(true));
    let publish_security = publish.security_context.clone().unwrap();
    assert_eq!(publish_security.privileged, Some(false));
    assert_eq!(
        publish_security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    assert!(script(publish).contains("elemental build-iso -o /iso -n \"${MACHINE_IMAGE_STAMP}\""));
    let volumes: BTreeMap<String, _> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.clone(), v.clone()))
        .collect();
    assert_eq!(
        volumes["dockerfile"].config_map.as_ref().unwrap().name,
        "elemental-os-dockerfile"
    );
    assert_eq!(
        volumes["registry-auth"]
            .secret
            .as_ref()
            .unwrap()
            .secret_name
            .as_deref(),
        Some("elemental-registry")
    );

    // The Dockerfile stamps the build into /etc/os-release and installs this version's tools.
    let config_map: ConfigMap = serde_yaml::from_str(ELEMENTAL_DOCKERFILE).unwrap();
    assert_eq!(
        config_map.metadata.name.as_deref(),
        Some("elemental-os-dockerfile")
    );
    let dockerfile = &config_map.data.unwrap()["Dockerfile"];
    for needle in [
        "ARG MACHINE_IMAGE_STAMP",
        "PRETTY_NAME=",
        "IMAGE_VERSION=",
        "dl.k8s.io/release/${KUBERNETES_VERSION}/bin/linux/amd64/$bin",
        "for bin in kubeadm kubelet kubectl",
        "elemental init --force",
    ] {
        assert!(dockerfile.contains(needle), "{needle}");
    }
}

/// The Pod Security level `jobs/README.md` states for each template: CAPD and vSphere run
/// within baseline; Elemental needs `privileged` (Unconfined seccomp and AppArmor for buildah).
#[test]
fn each_template_needs_the_pod_security_level_its_readme_states() {
    use crate::controllers::machine_image::pod_security::{BuildPodPolicy, check};
    let baseline = BuildPodPolicy::default();
    let privileged = BuildPodPolicy {
        privileged: true,
        ..BuildPodPolicy::default()
    };
    for yaml in [CAPD, VSPHERE] {
        let (image, _, pod) = rendered(yaml);
        assert_eq!(
            check(&pod, "builds", &baseline),
            Ok(()),
            "{}",
            image.name_any()
        );
    }
    let (_, _, pod) = rendered(ELEMENTAL);
    let refusal = check(&pod, "builds", &baseline).unwrap_err();
    let fields: Vec<&str> = refusal
        .violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.jobTemplate.spec.initContainers[0].securityContext.seccompProfile.type",
            "spec.jobTemplate.spec.initContainers[0].securityContext.appArmorProfile.type",
        ]
    );
    assert_eq!(check(&pod, "builds", &privileged), Ok(()));
    let readme = include_str!("../../../../jobs/README.md");
    for (file, level) in [
        ("capd.yaml", "baseline"),
        ("vsphere-ova.yaml", "baseline"),
        ("elemental-os.yaml", "privileged"),
    ] {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{file}`")))
            .unwrap_or_else(|| panic!("jobs/README.md has no row for {file}"));
        assert!(
            row.contains(&format!("Pod Security: `{level}`")),
            "{file} must say `{level}`: {row}"
        );
    }
}
