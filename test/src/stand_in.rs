//! Stand-ins that run beside the manager: [`BuildJobFinisher`], which finishes every new build Job
//! as the kubelet and the job controller would, and
//! Cluster API reporting each rollout finished a little after the Cluster's version changed.
//! The demo and the whole-chain suites share them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::{builds, capi};

pub use api::v1alpha1::{IMAGE_ID_ANNOTATION, MACHINE_IMAGE_NAME_LABEL as JOB_LABEL};

/// How a finished build hands its image ID back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOff {
    /// The build container's termination message (no RBAC in the pod).
    TerminationMessage,
    /// The v0.6 annotation on the Job, as the v0.6 samples' `kubectl annotate` does.
    Annotation,
}

/// Finishes build Jobs the way the kubelet and the job controller would, each once.
#[derive(Debug, Default)]
pub struct BuildJobFinisher {
    finished: BTreeSet<String>,
}

/// One build the [`BuildJobFinisher`] finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The Job.
    pub job: String,
    /// The image ID it handed back.
    pub id: String,
}

impl BuildJobFinisher {
    /// Finishes every build Job in `namespace` not finished yet, handing off the image ID
    /// `id_for(hand_off, version)` the way `hand_off(job)` says. Jobs that already carry a condition
    /// (finished by someone else) are left alone.
    pub async fn finish_new_jobs(
        &mut self,
        client: &Client,
        namespace: &str,
        hand_off: impl Fn(&Job) -> HandOff,
        id_for: impl Fn(HandOff, &str) -> String,
    ) -> Result<Vec<Finished>> {
        let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
        let mut done = Vec::new();
        for job in jobs
            .list(&ListParams::default().labels(JOB_LABEL))
            .await?
            .items
        {
            let name = job.name_any();
            let settled = job
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| !c.is_empty());
            if self.finished.contains(&name) || settled || job.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let how = hand_off(&job);
            let id = id_for(
                how,
                &job_env(&job, "KUBERNETES_VERSION").unwrap_or_default(),
            );
            match how {
                HandOff::TerminationMessage => {
                    builds::build_succeeded_with_termination_message(client, namespace, &name, &id)
                        .await?;
                }
                HandOff::Annotation => {
                    let patch = json!({"metadata": {"annotations": {IMAGE_ID_ANNOTATION: id}}});
                    jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    builds::job_succeeded(client, namespace, &name).await?;
                }
            }
            self.finished.insert(name.clone());
            done.push(Finished { job: name, id });
        }
        Ok(done)
    }
}

/// The value of the environment variable `name` in the Job's first container that sets it.
pub fn job_env(job: &Job, name: &str) -> Option<String> {
    job.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// Reports a Cluster's rollout finished `delay` after its `spec.topology.version` changed.
#[derive(Debug)]
pub struct ClusterApi {
    api_version: String,
    name: String,
    delay: Duration,
    reported: Option<String>,
    rolling: Option<(String, Instant)>,
}

/// What the Cluster API stand-in saw on one poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Nothing changed; the version last reported finished.
    Idle(Option<String>),
    /// The Cluster was set to this version; its rollout started.
    Started(String),
    /// The rollout to this version was reported finished.
    Finished(String),
}

impl ClusterApi {
    /// A stand-in for the Cluster `name`, read in `api_version`, that has already reported
    /// `current` finished.
    pub fn new(api_version: &str, name: &str, current: &str, delay: Duration) -> Self {
        Self {
            api_version: api_version.to_owned(),
            name: name.to_owned(),
            delay,
            reported: Some(current.to_owned()),
            rolling: None,
        }
    }

    /// One poll: notices a new version, or reports a started rollout finished once `delay`
    /// has passed.
    pub async fn poll(&mut self, client: &Client, namespace: &str) -> Result<Rollout> {
        let cluster = capi::clusters(client, namespace, &self.api_version)
            .get(&self.name)
            .await?;
        let version = cluster.data["spec"]["topology"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if self.reported.as_deref() == Some(version.as_str()) {
            return Ok(Rollout::Idle(self.reported.clone()));
        }
        match &self.rolling {
            Some((rolling, since)) if *rolling == version => {
                if since.elapsed() < self.delay {
                    return Ok(Rollout::Idle(self.reported.clone()));
                }
                capi::rollout_finished(client, namespace, &self.api_version, &self.name, &version)
                    .await?;
                self.reported = Some(version.clone());
                self.rolling = None;
                Ok(Rollout::Finished(version))
            }
            _ => {
                self.rolling = Some((version.clone(), Instant::now()));
                Ok(Rollout::Started(version))
            }
        }
    }

    /// The version last reported finished.
    pub fn reported(&self) -> Option<&str> {
        self.reported.as_deref()
    }
}
