use super::*;
use crate::controllers::images::usable;
use crate::controllers::machine_image::BuildPodPolicy;
use crate::controllers::machine_image_template::cloned_images;
use crate::runtime::builders::{Build, Fixture, ImageBuild, PlanBuild, SourceBuild};
use kube::ResourceExt;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const GROUP: &str = "kubernetesupgraded.dimitrikoshkin.com/v1alpha1";

/// `metadata` as the API server returns it for an object `kubectl apply` made: its own labels
/// and annotations, plus managed fields and the last applied configuration.
fn metadata(name: &str, labels: &Value, annotations: &Value) -> Value {
    let mut annotations = annotations.clone();
    annotations[LAST_APPLIED_ANNOTATION] = json!("{\"big\": \"copy of the whole object\"}");
    json!({
        "name": name, "namespace": "team", "uid": format!("uid-{name}"),
        "resourceVersion": "42", "generation": 3,
        "creationTimestamp": "2026-01-02T03:04:05Z",
        "labels": labels,
        "annotations": annotations,
        "ownerReferences": [{"apiVersion": "v1", "kind": "Owner", "name": "o", "uid": "uid-o", "controller": true}],
        "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
    })
}

fn parse<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).unwrap()
}

fn projected<K: Projected + Clone>(object: &K) -> K {
    let mut copy = object.clone();
    copy.project();
    copy
}

/// Every kind: managed fields and the last applied configuration go; the rest of the metadata
/// (labels, other annotations, owners, generation, uid, creation time) stays.
fn assert_metadata_kept(full: &ObjectMeta, projected: &ObjectMeta) {
    assert_eq!(projected.managed_fields, None);
    let mut expected = full.clone();
    expected.managed_fields = None;
    if let Some(annotations) = expected.annotations.as_mut() {
        assert!(annotations.remove(LAST_APPLIED_ANNOTATION).is_some());
        if annotations.is_empty() {
            expected.annotations = None;
        }
    }
    assert_eq!(*projected, expected);
}

/// `object` with the metadata [`metadata`] gives it.
fn as_served<K: Build>(mut object: K, labels: &Value, annotations: &Value) -> K {
    let name = object.name_any();
    *object.meta_mut() = parse(metadata(&name, labels, annotations));
    object
}

fn image(name: &str, version: &str, ready: bool) -> MachineImage {
    let image = MachineImage::test(name)
        .with_version(version)
        .with_id(&format!("ami-{name}"))
        .with_job_template(&json!({
            "imageIDContainer": "build", "ttlSecondsAfterFinished": 60,
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "build", "image": "registry.example/builder:v1",
                 "env": [{"name": "A", "value": "x".repeat(2000)}]}]}}))
        .with_status(
            &json!({"ready": ready, "phase": "Created", "observedGeneration": 3,
            "buildCompletionTime": "2026-01-02T04:00:00Z",
            "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                "reason": "Built", "message": "the image ID is x", "observedGeneration": 3,
                "lastTransitionTime": "2026-01-02T04:00:00Z"}]}),
        );
    as_served(
        image,
        &json!({"os": "ubuntu"}),
        &json!({api::v1alpha1::CLONED_FROM_ANNOTATION: "tpl"}),
    )
}

#[test]
fn an_image_keeps_what_the_plan_upgraders_syncer_and_template_read() {
    let full = vec![
        image("a", "v1.31.1", true),
        image("b", "v1.31.2", true),
        image("c", "v1.31.3", false),
    ];
    let cut: Vec<MachineImage> = full.iter().map(projected).collect();
    for (full, cut) in full.iter().zip(&cut) {
        assert_metadata_kept(&full.metadata, &cut.metadata);
        assert_eq!(cut.spec.version, full.spec.version);
        assert_eq!(cut.spec.id, full.spec.id);
        assert_eq!(cut.status, full.status);
        assert_eq!(*cut.spec.job_template, JobTemplate::default());
        assert!(lacks_job_template(cut));
        assert!(!lacks_job_template(full));
    }
    // The Plan's and upgraders' choice, and the template's list of its images, are unchanged.
    let selector: api::v1alpha1::LabelSelector = parse(json!({"matchLabels": {"os": "ubuntu"}}));
    assert_eq!(
        usable(&cut, "team", Some(&selector)),
        usable(&full, "team", Some(&selector))
    );
    assert_eq!(usable(&cut, "team", None).len(), 2);
    let template = MachineImageTemplate::test("tpl");
    assert_eq!(
        cloned_images(&template, &cut),
        cloned_images(&template, &full)
    );
    assert_eq!(cloned_images(&template, &cut).len(), 3);
}

#[test]
fn a_projected_image_is_much_smaller() {
    let full = image("a", "v1.31.1", true);
    let cut = projected(&full);
    let size = |i: &MachineImage| serde_json::to_vec(i).unwrap().len();
    assert!(
        size(&cut) * 3 < size(&full),
        "{} of {} bytes",
        size(&cut),
        size(&full)
    );
}

#[test]
fn a_plan_keeps_its_spec_and_status() {
    let plan = Plan::test("p")
        .with_range("v1.31.x")
        .with_spec(&json!({"machineImageSelector": {"matchLabels": {"os": "ubuntu"}}}))
        .found("v1.31.1", "ami-1");
    let full = as_served(plan, &json!({}), &json!({}));
    let cut = projected(&full);
    assert_metadata_kept(&full.metadata, &cut.metadata);
    assert_eq!(cut.spec, full.spec);
    assert_eq!(cut.status, full.status);
}

#[test]
fn an_upgrader_keeps_its_spec_status_and_retry_annotation() {
    let full = as_served(
        ClusterClassClusterUpgrader::test("u").with_status(&json!({"observedGeneration": 3})),
        &json!({}),
        &json!({api::v1alpha1::RETRY_HOSTS_ANNOTATION: "1"}),
    );
    let cut = projected(&full);
    assert_metadata_kept(&full.metadata, &cut.metadata);
    assert_eq!(cut.spec, full.spec);
    assert_eq!(cut.status, full.status);
    assert_eq!(
        cut.annotations().get(api::v1alpha1::RETRY_HOSTS_ANNOTATION),
        Some(&"1".to_owned())
    );
    let full = as_served(
        InClusterUpgradeAutomation::test("u"),
        &json!({}),
        &json!({}),
    );
    let cut = projected(&full);
    assert_metadata_kept(&full.metadata, &cut.metadata);
    assert_eq!(cut.spec, full.spec);
}

#[test]
fn syncers_templates_and_sources_keep_spec_and_status() {
    let syncer = as_served(MachineImageSyncer::test("s"), &json!({}), &json!({}));
    let cut = projected(&syncer);
    assert_metadata_kept(&syncer.metadata, &cut.metadata);
    assert_eq!(cut.spec, syncer.spec);
    assert_eq!(cut.status, syncer.status);

    let template = as_served(MachineImageTemplate::test("tpl"), &json!({}), &json!({}));
    let cut = projected(&template);
    assert_metadata_kept(&template.metadata, &cut.metadata);
    assert_eq!(cut.spec, template.spec);

    let source = DebianRepositorySource::test("src")
        .with_url("http://127.0.0.1:1/repo")
        .with_status(&json!({"versions": ["1.31.1-1.1"]}));
    let source = as_served(source, &json!({}), &json!({}));
    let cut = projected(&source);
    assert_metadata_kept(&source.metadata, &cut.metadata);
    assert_eq!(cut.spec, source.spec);
    assert_eq!(cut.status, source.status);
}

#[test]
fn a_build_job_keeps_labels_owners_annotations_template_and_status() {
    let full: Job = parse(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": metadata("j", &json!({api::v1alpha1::MACHINE_IMAGE_NAME_LABEL: "a"}),
            &json!({"kubernetesupgraded.dimitrikoshkin.com/image-id": "ami-1"})),
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "build", "image": "b"}]}}},
        "status": {"succeeded": 1},
    }));
    let cut = projected(&full);
    assert_metadata_kept(&full.metadata, &cut.metadata);
    assert_eq!(cut.spec, full.spec);
    assert_eq!(cut.status, full.status);
}

#[test]
fn a_namespace_keeps_what_build_pods_may_do() {
    use crate::controllers::machine_image::pod_security::{
        BUILD_POD_SECURITY_LABEL, BUILD_SERVICE_ACCOUNTS_ANNOTATION,
    };
    let mut meta = metadata(
        "team",
        &json!({BUILD_POD_SECURITY_LABEL: "privileged"}),
        &json!({BUILD_SERVICE_ACCOUNTS_ANNOTATION: "builder"}),
    );
    meta.as_object_mut().unwrap().remove("namespace");
    let full: Namespace = parse(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta}));
    let cut = projected(&full);
    assert_metadata_kept(&full.metadata, &cut.metadata);
    assert_eq!(BuildPodPolicy::of(&cut), BuildPodPolicy::of(&full));
    assert_ne!(BuildPodPolicy::of(&cut), BuildPodPolicy::default());
}

#[test]
fn an_object_that_does_not_parse_keeps_its_identity() {
    let guarded: DeserializeGuard<MachineImage> = parse(json!({
        "apiVersion": GROUP, "kind": "MachineImage",
        "metadata": metadata("bad", &json!({}), &json!({})),
        "spec": {"version": 7},
    }));
    assert!(guarded.0.is_err());
    let cut = projected(&guarded);
    let (Err(before), Err(after)) = (&guarded.0, &cut.0) else {
        panic!("the object parsed");
    };
    assert_metadata_kept(&before.metadata, &after.metadata);
    assert_eq!(after.error, before.error);
}

#[test]
fn a_watch_event_is_projected_before_it_is_stored() {
    let event =
        kube::runtime::watcher::Event::Apply(DeserializeGuard(Ok(image("a", "v1.31.1", true))))
            .modify(DeserializeGuard::<MachineImage>::project);
    let kube::runtime::watcher::Event::Apply(DeserializeGuard(Ok(stored))) = event else {
        panic!("not an applied image");
    };
    assert!(stored.metadata.managed_fields.is_none());
    assert!(lacks_job_template(&stored));
}

/// A Cluster as the API server serves it in `version` (`v1beta1` carries its v1beta2 view under
/// `status.v1beta2`): managed fields, other annotations, labels, conditions the upgraders do
/// not read, and every field they do.
fn served_cluster(version: &str) -> Value {
    let mut meta = metadata(
        "c",
        &json!({"cluster.x-k8s.io/cluster-name": "c", "wave": "canary"}),
        &json!({"cluster.x-k8s.io/paused": "", "other.example.com/note": "kept elsewhere"}),
    );
    meta["managedFields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"manager": "capi-topology", "operation": "Update", "apiVersion": "cluster.x-k8s.io/v1beta2",
            "subresource": "status", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:conditions": {}, "f:controlPlane": {}}}}));
    let v1beta2 = json!({
        "observedGeneration": 3,
        "conditions": [
            {"type": "InfrastructureReady", "status": "True", "reason": "Ready", "message": "long text"},
            {"type": "TopologyReconciled", "status": "True", "reason": "ReconcileSucceeded", "lastTransitionTime": "2026-01-02T03:04:05Z"},
            {"type": "ControlPlaneMachinesUpToDate", "status": "True", "reason": "UpToDate"},
            {"type": "WorkerMachinesUpToDate", "status": "True", "reason": "UpToDate"},
            {"type": "RollingOut", "status": "False", "reason": "NotRollingOut"},
            {"type": "Available", "status": "True", "reason": "Available", "message": ""}],
        "controlPlane": {"replicas": 3, "upToDateReplicas": 3, "readyReplicas": 3,
            "versions": [{"version": "v1.31.2", "replicas": 3}]},
        "workers": {"replicas": 2, "upToDateReplicas": 2, "availableReplicas": 2,
            "versions": [{"version": "v1.31.2", "replicas": 2}]},
        "phase": "Provisioned",
        "initialization": {"infrastructureProvisioned": true},
    });
    let (spec, status) = if version == "v1beta2" {
        (
            json!({"paused": false,
                "controlPlaneRef": {"apiGroup": "controlplane.cluster.x-k8s.io", "kind": "KubeadmControlPlane", "name": "c-cp"},
                "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "DockerCluster", "name": "c-infra"},
                "clusterNetwork": {"pods": {"cidrBlocks": ["192.168.0.0/16"]}},
                "topology": {"classRef": {"name": "quick-start", "namespace": "classes"}, "version": "v1.31.2",
                    "controlPlane": {"replicas": 3, "metadata": {"labels": {"a": "b"}}},
                    "workers": {"machineDeployments": [{"class": "default-worker", "name": "md-0", "replicas": 2}]},
                    "variables": [{"name": "imageID", "value": "ami-1"},
                        {"name": "machine", "value": {"image": {"id": "ami-1", "tags": [1, 2]}}}]}}),
            v1beta2,
        )
    } else {
        (
            json!({"controlPlaneRef": {"apiVersion": "controlplane.cluster.x-k8s.io/v1beta1", "kind": "KubeadmControlPlane",
                    "name": "c-cp", "namespace": "team", "uid": "uid-cp"},
                "topology": {"class": "quick-start", "version": "v1.31.2",
                    "variables": [{"name": "imageID", "value": "ami-1"}]}}),
            json!({"observedGeneration": 3, "phase": "Provisioned", "controlPlaneReady": true,
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-02T03:04:05Z"},
                    {"type": "TopologyReconciled", "status": "True"}],
                "v1beta2": v1beta2}),
        )
    };
    json!({
        "apiVersion": format!("cluster.x-k8s.io/{version}"), "kind": "Cluster",
        "metadata": meta, "spec": spec, "status": status,
    })
}

/// Every way the upgraders read a Cluster as JSON, each answer compared whole.
fn cluster_reads(cluster: &Value) -> Vec<String> {
    use crate::controllers::upgrader::chain::class_ref;
    use crate::controllers::upgrader::cluster::{has_version_lists, view};
    use crate::controllers::upgrader::finish::{ClusterApi, Rollout, finished, objects_needed};
    let mut reads = vec![
        format!("{:?}", view(cluster)),
        format!("{:?}", cluster.pointer("/metadata/resourceVersion")),
        format!("{:?}", cluster.pointer("/metadata/name")),
        format!("{:?}", cluster.pointer("/metadata/namespace")),
    ];
    for field in ["apiVersion", "apiGroup", "kind", "name"] {
        let path = format!("/spec/controlPlaneRef/{field}");
        reads.push(format!("{:?}", cluster.pointer(&path)));
    }
    for api in [ClusterApi::V1Beta1, ClusterApi::V1Beta2] {
        for target in ["v1.31.2", "v1.31.3", "v1.30.0"] {
            let rollout = Rollout {
                api,
                cluster,
                control_plane: None,
                machine_deployments: None,
            };
            let target = api::version::parse_lenient(target).unwrap();
            reads.push(format!("{:?}", finished(&rollout, &target)));
            reads.push(format!("{:?}", objects_needed(&rollout, &target)));
        }
        reads.push(format!("{:?}", has_version_lists(api, cluster)));
        reads.push(format!("{:?}", class_ref(api, cluster, "team")));
    }
    reads
}

/// `cluster` as the Cluster watch's store keeps it, as the upgraders read it back.
fn cached(cluster: &Value) -> Value {
    let mut guarded: DeserializeGuard<cluster::CachedCluster> = parse(cluster.clone());
    guarded.project();
    guarded.0.unwrap().to_json()
}

#[test]
fn a_cluster_keeps_what_the_upgraders_read() {
    for version in ["v1beta1", "v1beta2"] {
        let full = served_cluster(version);
        let cut = cached(&full);
        assert_eq!(cluster_reads(&cut), cluster_reads(&full), "{version}");
        // What the checks found: finished at v1.31.2 when read in its own version, paused,
        // two variables (one a JSON object), the wave label.
        let reads = cluster_reads(&cut);
        assert_eq!(
            reads.iter().filter(|r| *r == "Ok(())").count(),
            1,
            "{reads:?}"
        );
        let view = crate::controllers::upgrader::cluster::view(&cut);
        assert!(view.paused);
        assert_eq!(view.labels["wave"], "canary");
        assert_eq!(view.available, (version == "v1beta2").then_some(true));
        // Nothing else: no managed fields, no other annotation, no unread condition or field.
        assert!(cut["metadata"].get("managedFields").is_none());
        assert_eq!(
            cut["metadata"]["annotations"],
            json!({"cluster.x-k8s.io/paused": ""})
        );
        let text = cut.to_string();
        for gone in [
            "InfrastructureReady",
            "Ready\"",
            "phase",
            "message",
            "infrastructureRef",
            "clusterNetwork",
            "readyReplicas",
            "machineDeployments",
            "lastTransitionTime",
            "uid-cp",
            "ownerReferences",
            "creationTimestamp",
        ] {
            assert!(!text.contains(gone), "{gone} kept in {text}");
        }
    }
    let full = served_cluster("v1beta2");
    assert_eq!(
        cached(&full)["spec"]["topology"]["variables"],
        full["spec"]["topology"]["variables"]
    );
}

#[test]
fn each_unfinished_cluster_reads_the_same_from_the_cache() {
    use crate::controllers::upgrader::finish::UPGRADE_STEP_ANNOTATION;
    fn remove(value: &mut Value, key: &str) {
        value.as_object_mut().unwrap().remove(key);
    }
    type Mutation = fn(&mut Value);
    let cases: Vec<(&str, Mutation)> = vec![
        ("generation", |c| {
            c["metadata"]["generation"] = json!(4);
        }),
        ("no generation", |c| {
            remove(&mut c["metadata"], "generation");
        }),
        ("upgrading", |c| {
            c["metadata"]["annotations"][UPGRADE_STEP_ANNOTATION] = json!("v1.31.2");
        }),
        ("not paused", |c| {
            c["metadata"]["annotations"] = json!({});
        }),
        ("spec paused", |c| {
            c["spec"]["paused"] = json!(true);
        }),
        ("reason", |c| {
            c["status"]["conditions"][1]["reason"] = json!("ClusterUpgrading");
        }),
        ("rolling", |c| {
            c["status"]["conditions"][4]["status"] = json!("True");
        }),
        ("unavailable", |c| {
            c["status"]["conditions"][5]["status"] = json!("False");
        }),
        ("no conditions read", |c| {
            c["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        }),
        ("no conditions", |c| remove(&mut c["status"], "conditions")),
        ("plan", |c| {
            c["status"]["controlPlane"]["upgradePlan"] = json!([{"version": "v1.32.0"}]);
        }),
        ("empty plan", |c| {
            c["status"]["workers"]["upgradePlan"] = json!([]);
        }),
        ("replicas", |c| {
            c["status"]["workers"]["upToDateReplicas"] = json!(1);
        }),
        ("two versions", |c| {
            c["status"]["workers"]["versions"] =
                json!([{"version": "v1.30.9"}, {"version": "v1.31.2"}]);
        }),
        ("no versions", |c| {
            remove(&mut c["status"]["controlPlane"], "versions");
        }),
        ("no topology", |c| remove(&mut c["spec"], "topology")),
        ("no status", |c| {
            c["status"] = json!({});
        }),
    ];
    for (name, mutate) in cases {
        let mut full = served_cluster("v1beta2");
        mutate(&mut full);
        assert_eq!(
            cluster_reads(&cached(&full)),
            cluster_reads(&full),
            "{name}"
        );
        // The same change under a v1beta1 Cluster's status.v1beta2.
        let mut old = served_cluster("v1beta1");
        let mut inner = json!({"metadata": full["metadata"], "spec": full["spec"], "status": old["status"]["v1beta2"].clone()});
        mutate(&mut inner);
        old["metadata"] = inner["metadata"].take();
        old["status"]["v1beta2"] = inner["status"].take();
        assert_eq!(
            cluster_reads(&cached(&old)),
            cluster_reads(&old),
            "v1beta1 {name}"
        );
    }
}

#[test]
fn a_cluster_that_does_not_match_the_view_is_kept_as_its_metadata() {
    let mut full = served_cluster("v1beta2");
    full["spec"]["paused"] = json!("yes");
    let mut guarded: DeserializeGuard<cluster::CachedCluster> = parse(full);
    guarded.project();
    let invalid = guarded.0.unwrap_err();
    assert_eq!(invalid.metadata.name.as_deref(), Some("c"));
    assert!(invalid.metadata.managed_fields.is_none());
}
