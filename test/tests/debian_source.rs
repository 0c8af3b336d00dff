//! DebianRepositorySource against signed repositories served from loopback: verification,
//! versions, new releases, injected faults and zero writes at steady state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use api::v1alpha1::{DebianRepositorySource, SignedBy};
use e2e::repo::{ServedRepo, published_versions};
use e2e::status::{condition_reason, condition_status, observed_current, to_json};
use e2e::{TestEnv, e2e_env};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapKeySelector, Secret, SecretKeySelector};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

/// `spec.interval` of every source here.
const INTERVAL: &str = "10s";
const INTERVAL_SECS: u64 = 10;

/// One interval plus its jitter (a tenth) plus a margin for the reconcile itself.
fn one_interval() -> Duration {
    Duration::from_secs(INTERVAL_SECS + INTERVAL_SECS / 10 + 4)
}

fn ready_with(source: &DebianRepositorySource, expected: &[String]) -> bool {
    let json = to_json(source);
    condition_status(&json, "Ready").as_deref() == Some("True")
        && observed_current(&json)
        && published_versions(source) == expected
}

async fn create(env: &TestEnv, source: &DebianRepositorySource) -> Api<DebianRepositorySource> {
    let api: Api<DebianRepositorySource> = env.api();
    api.create(&PostParams::default(), source).await.unwrap();
    api
}

async fn wait_ready(
    api: &Api<DebianRepositorySource>,
    name: &str,
    expected: &[String],
    timeout: Duration,
) -> DebianRepositorySource {
    e2e::wait_for(api, name, |s| ready_with(s, expected), timeout)
        .await
        .unwrap()
}

fn assert_verified_by(source: &DebianRepositorySource, repo: &ServedRepo) {
    let json = to_json(source);
    assert_eq!(
        condition_status(&json, "Verified").as_deref(),
        Some("True"),
        "{json:#}"
    );
    let fingerprint = source
        .status
        .as_ref()
        .and_then(|s| s.signing_key_fingerprint.clone())
        .unwrap_or_default();
    assert!(
        fingerprint.eq_ignore_ascii_case(&repo.key.fingerprint()),
        "signingKeyFingerprint {fingerprint:?}, expected {}",
        repo.key.fingerprint()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_repository_signed_inline_publishes_sorted_versions_and_new_releases() {
    let env = e2e_env!("flat_repository_signed_inline_publishes_sorted_versions_and_new_releases");
    // Unsorted, with a duplicate upstream version (two revisions) and an epoch.
    let mut repo = ServedRepo::flat(&[
        "1.27.1-1.1",
        "1.27.0-2.1",
        "1.26.3-1.1",
        "1.27.1-2.1",
        "1:1.26.10-1.1",
    ])
    .await
    .unwrap();
    let expected = repo.expected_versions();
    assert_eq!(expected, ["v1.26.3", "v1.26.10", "v1.27.0", "v1.27.1"]);
    let manager = env.start_manager().await.unwrap();
    let api = create(
        &env,
        &repo.source("flat", INTERVAL, Some(repo.inline_key().unwrap())),
    )
    .await;
    let source = wait_ready(&api, "flat", &expected, Duration::from_secs(30)).await;
    assert_verified_by(&source, &repo);

    // A new release shows up within one interval.
    repo.publish_added("1.28.0-1.1").unwrap();
    let published = Instant::now();
    let expected = repo.expected_versions();
    wait_ready(&api, "flat", &expected, one_interval()).await;
    eprintln!(
        "new version listed {:?} after publishing",
        published.elapsed()
    );

    // Steady state: conditional requests (304) and no writes across two intervals.
    repo.server.reset_counters();
    e2e::assert_no_writes(&api, "flat", 2 * one_interval())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", manager.log_tail()));
    assert!(
        repo.server.not_modified() >= 1,
        "no 304 answers in two intervals: {} requests",
        repo.server.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dists_repository_with_keys_from_a_configmap_and_a_secret() {
    let env = e2e_env!("dists_repository_with_keys_from_a_configmap_and_a_secret");
    let repo = ServedRepo::dists(
        "stable",
        "main",
        &["1.30.2-1.1", "1.31.0-1.1", "1.30.10-1.1"],
    )
    .await
    .unwrap();
    let expected = repo.expected_versions();
    assert_eq!(expected, ["v1.30.2", "v1.30.10", "v1.31.0"]);

    let config_maps: Api<ConfigMap> = env.api();
    config_maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("archive-keyring".into()),
                    ..ObjectMeta::default()
                },
                binary_data: Some(
                    [(
                        "keyring.gpg".to_owned(),
                        ByteString(repo.key.binary_public_key().unwrap()),
                    )]
                    .into(),
                ),
                ..ConfigMap::default()
            },
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = env.api();
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("archive-key".into()),
                    ..ObjectMeta::default()
                },
                data: Some(
                    [(
                        "Release.key".to_owned(),
                        ByteString(repo.key.armored_public_key().unwrap().into_bytes()),
                    )]
                    .into(),
                ),
                ..Secret::default()
            },
        )
        .await
        .unwrap();

    let _manager = env.start_manager().await.unwrap();
    let from_config_map = SignedBy {
        config_map_key_ref: Some(ConfigMapKeySelector {
            name: "archive-keyring".into(),
            key: "keyring.gpg".into(),
            optional: None,
        }),
        ..SignedBy::default()
    };
    let from_secret = SignedBy {
        secret_key_ref: Some(SecretKeySelector {
            name: "archive-key".into(),
            key: "Release.key".into(),
            optional: None,
        }),
        ..SignedBy::default()
    };
    let api = create(
        &env,
        &repo.source("dists-configmap", INTERVAL, Some(from_config_map)),
    )
    .await;
    create(
        &env,
        &repo.source("dists-secret", INTERVAL, Some(from_secret)),
    )
    .await;
    for name in ["dists-configmap", "dists-secret"] {
        let source = wait_ready(&api, name, &expected, Duration::from_secs(30)).await;
        assert_verified_by(&source, &repo);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_signed_by_it_lists_versions_but_is_not_verified() {
    let env = e2e_env!("without_signed_by_it_lists_versions_but_is_not_verified");
    let repo = ServedRepo::flat(&["1.29.0-1.1", "1.29.1-1.1"])
        .await
        .unwrap();
    let _manager = env.start_manager().await.unwrap();
    let api = create(&env, &repo.source("unsigned", INTERVAL, None)).await;
    let source = wait_ready(
        &api,
        "unsigned",
        &repo.expected_versions(),
        Duration::from_secs(30),
    )
    .await;
    let json = to_json(&source);
    assert_eq!(
        condition_status(&json, "Verified").as_deref(),
        Some("False"),
        "{json:#}"
    );
    assert_eq!(
        condition_reason(&json, "Verified").as_deref(),
        Some("NoSignedBy"),
        "{json:#}"
    );
}

/// How a fault is set up on the served repository.
enum Fault {
    Status500,
    UntrustedSignature,
    CorruptIndex,
    TruncatedIndex,
}

/// Healthy source → fault → Ready=False with one of `reasons`, last good versions kept, a
/// Warning event, no writes for two intervals → fault cleared → Ready=True again.
async fn fault_scenario(test: &str, fault: Fault, reasons: &[&str]) {
    let env = e2e_env!(test);
    let mut repo = ServedRepo::flat(&["1.27.0-1.1", "1.27.1-1.1"])
        .await
        .unwrap();
    let good = repo.expected_versions();
    let manager = env.start_manager().await.unwrap();
    let name = "faulty";
    let api = create(
        &env,
        &repo.source(name, INTERVAL, Some(repo.inline_key().unwrap())),
    )
    .await;
    wait_ready(&api, name, &good, Duration::from_secs(30)).await;
    assert!(
        env.warnings(name).await.unwrap().is_empty(),
        "Warning events while healthy"
    );

    match fault {
        Fault::Status500 => repo.fail_with_status(500),
        Fault::UntrustedSignature => repo.sign_with_untrusted_key().unwrap(),
        // Index faults are only seen once the Release changes (an unchanged InRelease is a
        // 304 and the index is not fetched): publish a new release over the faulty indexes.
        Fault::CorruptIndex => {
            repo.corrupt_indexes();
            repo.publish_added("1.28.0-1.1").unwrap();
        }
        Fault::TruncatedIndex => {
            repo.truncate_indexes(200);
            repo.publish_added("1.28.0-1.1").unwrap();
        }
    }
    let failed = e2e::wait_for(
        &api,
        name,
        |s| {
            let json = to_json(s);
            condition_status(&json, "Ready").as_deref() == Some("False")
                && condition_reason(&json, "Ready").is_some_and(|r| reasons.contains(&r.as_str()))
        },
        one_interval() + Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nmanager log:\n{}", manager.log_tail()));
    assert_eq!(
        published_versions(&failed),
        good,
        "the last good versions must be kept"
    );

    let events = e2e::eventually("a Warning event", Duration::from_secs(10), || {
        let env = &env;
        async move {
            let found = env.warnings(name).await.unwrap();
            Ok((!found.is_empty()).then_some(found))
        }
    })
    .await
    .unwrap();
    eprintln!("warning: {:?} {:?}", events[0].reason, events[0].note);

    // Failing the same way again changes nothing: zero writes.
    e2e::assert_no_writes(&api, name, 2 * one_interval())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", manager.log_tail()));

    repo.clear_faults();
    let recovered = wait_ready(&api, name, &repo.expected_versions(), 2 * one_interval()).await;
    assert_verified_by(&recovered, &repo);
    assert!(recovered.resource_version().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_http_500_gives_http_status() {
    fault_scenario(
        "fault_http_500_gives_http_status",
        Fault::Status500,
        &["HTTPStatus"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_untrusted_signature_gives_signature_invalid() {
    fault_scenario(
        "fault_untrusted_signature_gives_signature_invalid",
        Fault::UntrustedSignature,
        &["SignatureInvalid"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_corrupt_index_gives_checksum_mismatch() {
    fault_scenario(
        "fault_corrupt_index_gives_checksum_mismatch",
        Fault::CorruptIndex,
        &["ChecksumMismatch"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_truncated_index_gives_fetch_failed_or_checksum_mismatch() {
    fault_scenario(
        "fault_truncated_index_gives_fetch_failed_or_checksum_mismatch",
        Fault::TruncatedIndex,
        &["FetchFailed", "ChecksumMismatch"],
    )
    .await;
}
