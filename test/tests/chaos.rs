//! Restart chaos: the manager is killed with SIGKILL and restarted at seeded random moments
//! while several DebianRepositorySources reconcile and new releases are published. Afterwards
//! every source is Ready with the right versions and none keeps writing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::v1alpha1::DebianRepositorySource;
use e2e::chaos::{self, ChaosConfig};
use e2e::repo::ServedRepo;
use e2e::status::{condition_status, observed_current, to_json};
use e2e::{Manager, e2e_env};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use rand::Rng;

const SOURCES_PER_REPO: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_converge_after_restart_chaos() {
    let env = e2e_env!("sources_converge_after_restart_chaos");
    let config = ChaosConfig::from_env().unwrap();
    let flat = ServedRepo::flat(&["1.27.0-1.1", "1.27.1-1.1"])
        .await
        .unwrap();
    let dists = ServedRepo::dists("stable", "main", &["1.30.0-1.1"])
        .await
        .unwrap();
    let repos = Arc::new(Mutex::new([flat, dists]));
    let api: Api<DebianRepositorySource> = env.api();

    // Which sources read which repository.
    let mut readers: BTreeMap<String, usize> = BTreeMap::new();
    let mut to_create = Vec::new();
    {
        let repos = repos.lock().unwrap();
        for (index, repo) in repos.iter().enumerate() {
            for n in 0..SOURCES_PER_REPO {
                let name = format!("source-{index}-{n}");
                let signed_by = (n % 2 == 0).then(|| repo.inline_key().unwrap());
                to_create.push(repo.source(&name, "10s", signed_by));
                readers.insert(name, index);
            }
        }
    }
    for source in &to_create {
        api.create(&PostParams::default(), source).await.unwrap();
    }

    let mut manager = Manager::spawn(env.manager_options()).unwrap();
    let mut next_patch = [2_u32, 1_u32];
    let perturb = |iteration: u32, rng: &mut rand::rngs::StdRng| {
        // Every few cycles one repository publishes a new patch release.
        let publish = iteration % 4 == 1;
        let which = rng.random_range(0..2_usize);
        let repos = Arc::clone(&repos);
        let version = if publish {
            let patch = next_patch[which];
            next_patch[which] += 1;
            Some(if which == 0 {
                format!("1.27.{patch}-1.1")
            } else {
                format!("1.30.{patch}-1.1")
            })
        } else {
            None
        };
        async move {
            if let Some(version) = version {
                repos.lock().unwrap()[which].publish_added(&version)?;
            }
            Ok(())
        }
    };
    let assert_final = || {
        let api = api.clone();
        let repos = Arc::clone(&repos);
        let readers = readers.clone();
        async move {
            let expected: Vec<Vec<String>> = repos
                .lock()
                .unwrap()
                .iter()
                .map(ServedRepo::expected_versions)
                .collect();
            // Converged: every source Ready with its repository's versions.
            for (name, repo) in &readers {
                let want = expected[*repo].clone();
                e2e::wait_for(
                    &api,
                    name,
                    |s: &DebianRepositorySource| {
                        let json = to_json(s);
                        condition_status(&json, "Ready").as_deref() == Some("True")
                            && observed_current(&json)
                            && s.status
                                .as_ref()
                                .and_then(|st| st.versions.clone())
                                .unwrap_or_default()
                                == want
                    },
                    Duration::from_secs(90),
                )
                .await?;
            }
            // No error loop: nothing is written for a whole interval (plus jitter).
            let before: BTreeMap<String, Option<String>> = api
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .map(|s| (s.name_any(), s.resource_version()))
                .collect();
            tokio::time::sleep(Duration::from_secs(12)).await;
            let after: BTreeMap<String, Option<String>> = api
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .map(|s| (s.name_any(), s.resource_version()))
                .collect();
            anyhow::ensure!(
                before == after,
                "sources were written at steady state: {before:?} -> {after:?}"
            );
            Ok(())
        }
    };
    let cycles = chaos::run(&mut manager, &config, perturb, assert_final)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(cycles.len(), config.iterations as usize);
    manager.wait_ready(Duration::from_secs(30)).await.unwrap();
}
