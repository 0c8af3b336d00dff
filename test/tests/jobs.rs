//! The templates in `jobs/` on the real API server: each one, and the Job rendered from it for a
//! sample version, passes a server-side dry run (what `kubectl apply --dry-run=server` checks).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use api::v1alpha1::MachineImageTemplate;
use e2e::e2e_env;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kubernetes_upgrader::controllers::machine_image::render_job;
use kubernetes_upgrader::controllers::machine_image_template::sample_image;

fn jobs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("jobs")
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        field_manager: Some("e2e-jobs".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_template_and_its_job_pass_a_server_side_dry_run() {
    let env = e2e_env!("every_template_and_its_job_pass_a_server_side_dry_run");
    let templates: Api<MachineImageTemplate> = env.api();
    let jobs: Api<Job> = env.api();
    let config_maps: Api<ConfigMap> = env.api();
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(jobs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        match doc["kind"].as_str() {
            Some("MachineImageTemplate") => {
                let mut template: MachineImageTemplate = serde_json::from_value(doc).unwrap();
                templates
                    .create(&dry_run(), &template)
                    .await
                    .unwrap_or_else(|e| panic!("{file}: the template is refused: {e}"));
                template.metadata.namespace = Some(env.namespace.clone());
                let job = render_job(&sample_image(&template), 1, None).unwrap();
                jobs.create(&dry_run(), &job)
                    .await
                    .unwrap_or_else(|e| panic!("{file}: its Job is refused: {e}"));
            }
            Some("ConfigMap") => {
                let map: ConfigMap = serde_json::from_value(doc).unwrap();
                config_maps
                    .create(&dry_run(), &map)
                    .await
                    .unwrap_or_else(|e| panic!("{file}: refused: {e}"));
            }
            other => panic!("{file}: unexpected kind {other:?}"),
        }
        checked.push(file);
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "capd.yaml",
            "elemental-os-dockerfile.yaml",
            "elemental-os.yaml",
            "vsphere-ova.yaml"
        ]
    );
    // Dry runs store nothing.
    assert!(
        templates
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
