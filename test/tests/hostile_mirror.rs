//! A hostile mirror against DebianRepositorySources on the real API server: forged
//! 304s past `Valid-Until`, a replayed older signed Release (also across a manager restart), a
//! Release dated in the future and a signature flood. Four sources, one manager, run side by
//! side so the suite takes about half a minute. Throughout, no source's published versions move
//! backwards, and `/readyz` answers within 1 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use api::v1alpha1::DebianRepositorySource;
use e2e::e2e_env;
use e2e::manager::{metric_sum, parse_metrics};
use e2e::repo::{Fault, ServedRepo, published_versions};
use e2e::status::{condition_message, condition_reason, condition_status, to_json};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

const INTERVAL: &str = "10s";
/// One interval plus its jitter plus a margin for the sync itself.
const ONE_INTERVAL: Duration = Duration::from_secs(10 + 1 + 4);
/// Longest `/readyz` answer allowed.
const READYZ_LIMIT: Duration = Duration::from_secs(1);
/// The four sources, each on its own repository.
const NAMES: [&str; 4] = ["expiring", "replayed", "future", "flooded"];
/// What each is refused with once its mirror turns hostile.
const REFUSALS: [&str; 4] = [
    "ReleaseExpired",
    "ReleaseReplayed",
    "ReleaseNotYetValid",
    "SignatureInvalid",
];

/// Each source's name with its repository.
fn named(repos: [&ServedRepo; 4]) -> impl Iterator<Item = (&'static str, &ServedRepo)> {
    NAMES.into_iter().zip(repos)
}

/// The password in the URL of one source; it must show up nowhere.
const PASSWORD: &str = "s3cret-e2e";

fn semver(version: &str) -> semver::Version {
    semver::Version::parse(version.trim_start_matches('v')).unwrap()
}

/// Polls every source's `status.versions` until stopped; fails as soon as one drops a version
/// it published before. Returns the number of polls.
async fn watch_versions(
    api: Api<DebianRepositorySource>,
    names: Vec<&'static str>,
    mut stop: watch::Receiver<bool>,
) -> Result<usize, String> {
    let mut seen: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut polls = 0;
    while !*stop.borrow() {
        for name in &names {
            let Ok(Some(source)) = api.get_opt(name).await else {
                continue;
            };
            let now = published_versions(&source);
            let before = seen.entry(name).or_default();
            if let Some(lost) = before.iter().find(|v| !now.contains(v)) {
                return Err(format!("{name} dropped {lost}: {before:?} -> {now:?}"));
            }
            let highest = |list: &[String]| list.iter().map(|v| semver(v)).max();
            if highest(&now) < highest(before) {
                return Err(format!("{name} moved backwards: {before:?} -> {now:?}"));
            }
            *before = now;
        }
        polls += 1;
        let _ = tokio::time::timeout(Duration::from_millis(200), stop.changed()).await;
    }
    Ok(polls)
}

/// Polls `/readyz` every ~100 ms on the address `health` holds (paused while it holds `None`,
/// across a restart) until stopped. Fails on an answer other than 200; returns the slowest
/// answer and the number of probes.
async fn watch_readyz(
    health: watch::Receiver<Option<SocketAddr>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(Duration, usize), String> {
    let mut slowest = Duration::ZERO;
    let mut probes = 0;
    while !*stop.borrow() {
        let address = *health.borrow();
        if let Some(address) = address {
            let started = Instant::now();
            let answer = e2e::http::get(address, "/readyz").await;
            let took = started.elapsed();
            // A restart may have begun while the probe was out.
            if *health.borrow() == Some(address) {
                match answer {
                    Ok(response) if response.status == 200 => {}
                    Ok(response) => return Err(format!("/readyz answered {}", response.status)),
                    Err(e) => return Err(format!("/readyz failed after {took:?}: {e:#}")),
                }
                slowest = slowest.max(took);
                probes += 1;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), stop.changed()).await;
    }
    Ok((slowest, probes))
}

/// Waits until `name` is Ready and Verified with the `expected` versions, or, with a `reason`,
/// until both conditions are False with it.
async fn wait_until(
    api: &Api<DebianRepositorySource>,
    name: &str,
    expected: Result<&[String], &str>,
    timeout: Duration,
    manager: &e2e::Manager,
) -> DebianRepositorySource {
    e2e::wait_for(
        api,
        name,
        |s| {
            let json = to_json(s);
            let holds = |type_, status, reason: Option<&str>| {
                condition_status(&json, type_).as_deref() == Some(status)
                    && reason.is_none_or(|r| condition_reason(&json, type_).as_deref() == Some(r))
            };
            match expected {
                Ok(versions) => {
                    holds("Ready", "True", None)
                        && holds("Verified", "True", None)
                        && published_versions(s) == versions
                }
                Err(reason) => {
                    holds("Ready", "False", Some(reason))
                        && holds("Verified", "False", Some(reason))
                }
            }
        },
        timeout,
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: {e:#}\nmanager log:\n{}", manager.log_tail()))
}

/// Syncs by result, as the current manager process counts them.
async fn syncs(manager: &e2e::Manager, result: &str) -> f64 {
    let text = manager.metrics_text().await.unwrap_or_default();
    metric_sum(
        &parse_metrics(&text),
        "kubernetes_upgrader_debian_repository_syncs_total",
        &[("result", result)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_mirror_cannot_roll_back_freeze_or_stall_a_source() {
    let env = e2e_env!("a_hostile_mirror_cannot_roll_back_freeze_or_stall_a_source");
    let suite = Instant::now();
    let mut options = env.manager_options();
    // The client's debug lines print the index URL: they must print it redacted.
    options
        .env
        .push(("RUST_LOG".into(), "info,kubernetes_upgrader=debug".into()));
    let mut manager = e2e::Manager::spawn(options).unwrap();
    manager.wait_ready(Duration::from_secs(60)).await.unwrap();
    eprintln!("{:?}: manager ready", suite.elapsed());

    // Four repositories, each signed by its own key. `expiring` says its Release is valid for
    // a short while only: long enough for the first sync even on a loaded machine, over soon
    // after.
    let mut expiring = ServedRepo::flat(&["1.30.0-1.1"]).await.unwrap();
    let valid_until = Timestamp::now() + SignedDuration::from_secs(20);
    expiring
        .publish_with(&["1.30.0-1.1"], |b| b.valid_until(valid_until))
        .unwrap();
    let mut replayed = ServedRepo::flat(&["1.30.0-1.1", "1.30.1-1.1", "1.30.1-1.2"])
        .await
        .unwrap();
    let mut future = ServedRepo::flat(&["1.29.0-1.1"]).await.unwrap();
    let mut flooded = ServedRepo::flat(&["1.28.0-1.1"]).await.unwrap();

    eprintln!("{:?}: repositories served", suite.elapsed());
    let api: Api<DebianRepositorySource> = env.api();
    for (name, repo) in named([&expiring, &replayed, &future, &flooded]) {
        let mut source = repo.source(name, INTERVAL, Some(repo.inline_key().unwrap()));
        if name == "future" {
            source.spec.url = repo
                .url()
                .replace("http://", &format!("http://e2e-user:{PASSWORD}@"));
        }
        api.create(&PostParams::default(), &source).await.unwrap();
    }

    let (stop, stopped) = watch::channel(false);
    let (health, health_seen) = watch::channel(Some(manager.health));
    let versions_watch = tokio::spawn(watch_versions(api.clone(), NAMES.to_vec(), stopped.clone()));
    let readyz_watch = tokio::spawn(watch_readyz(health_seen, stopped));

    for (name, repo) in named([&expiring, &replayed, &future, &flooded]) {
        wait_until(
            &api,
            name,
            Ok(&repo.expected_versions()),
            Duration::from_secs(30),
            &manager,
        )
        .await;
        eprintln!("{:?}: {name} Ready", suite.elapsed());
    }
    // The build pipeline's view: the highest Debian revision of each version.
    let listed = api.get("replayed").await.unwrap();
    let debian: Vec<(String, String)> = listed
        .status
        .and_then(|s| s.debian_versions)
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d.version, d.debian))
        .collect();
    assert_eq!(
        debian,
        [
            ("v1.30.0".to_owned(), "1.30.0-1.1".to_owned()),
            ("v1.30.1".to_owned(), "1.30.1-1.2".to_owned())
        ]
    );
    eprintln!("{:?}: four sources Ready", suite.elapsed());

    // The attacks. Each repository's published record (its expected versions) stays the last
    // good one; the mirror serves something else.
    expiring.server.inject("InRelease", Fault::Status(304));
    let now = Timestamp::now();
    replayed.server.publish(
        &replayed
            .build_with(&["1.30.0-1.1"], |b| {
                b.date(now - SignedDuration::from_hours(1))
            })
            .unwrap(),
    );
    future.server.publish(
        &future
            .build_with(&["1.29.0-1.1", "1.29.1-1.1"], |b| {
                b.date(now + SignedDuration::from_hours(2))
            })
            .unwrap(),
    );
    flooded.flood_signatures(3000).unwrap();

    // The forged 304 is refused at the first poll past Valid-Until.
    let until_expired =
        Duration::try_from(valid_until.duration_since(Timestamp::now())).unwrap_or_default();
    for ((name, repo), reason) in named([&expiring, &replayed, &future, &flooded]).zip(REFUSALS) {
        let budget = ONE_INTERVAL + Duration::from_secs(5);
        let refused = wait_until(
            &api,
            name,
            Err(reason),
            if name == "expiring" {
                until_expired + budget
            } else {
                budget
            },
            &manager,
        )
        .await;
        assert_eq!(
            published_versions(&refused),
            repo.expected_versions(),
            "{name}: the last good versions are kept"
        );
        if name == "flooded" {
            let message = condition_message(&to_json(&refused), "Ready").unwrap_or_default();
            assert!(message.contains("only the first 8"), "{message}");
        }
    }
    for (name, reason) in NAMES.into_iter().zip(REFUSALS) {
        e2e::eventually(
            &format!("a Warning event for {name}: {reason}"),
            Duration::from_secs(5),
            || {
                let env = &env;
                async move {
                    let found = env
                        .warnings(name)
                        .await
                        .unwrap()
                        .into_iter()
                        .filter_map(|e| e.note)
                        .any(|n| n.starts_with(reason));
                    Ok(found.then_some(()))
                }
            },
        )
        .await
        .unwrap();
    }
    eprintln!("{:?}: four attacks refused", suite.elapsed());

    // A restart: the new process has no memory, only the status. It must still refuse the
    // forged 304 (past Valid-Until, on a request that carries no validators) and the replay.
    let first_log = manager.log_path().to_owned();
    health.send_replace(None);
    manager.restart().unwrap();
    manager.wait_ready(Duration::from_secs(60)).await.unwrap();
    health.send_replace(Some(manager.health));
    e2e::eventually(
        "the restarted manager refusing the expired and the replayed Release",
        ONE_INTERVAL,
        || {
            let manager = &manager;
            async move {
                let expired = syncs(manager, "ReleaseExpired").await;
                let replay = syncs(manager, "ReleaseReplayed").await;
                Ok((expired >= 1.0 && replay >= 1.0).then_some(()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nmanager log:\n{}", manager.log_tail()));
    for ((name, repo), reason) in named([&expiring, &replayed, &future, &flooded]).zip(REFUSALS) {
        let source = api.get(name).await.unwrap();
        let json = to_json(&source);
        assert_eq!(
            condition_reason(&json, "Ready").as_deref(),
            Some(reason),
            "{name} after the restart: {json:#}"
        );
        assert_eq!(
            published_versions(&source),
            repo.expected_versions(),
            "{name}"
        );
    }
    eprintln!("{:?}: refused again after a restart", suite.elapsed());

    // The mirror recovers with newer Releases: every source moves forward again.
    expiring.server.clear_faults();
    flooded.server.clear_faults();
    expiring.publish_added("1.30.5-1.1").unwrap();
    replayed.publish_added("1.30.2-1.1").unwrap();
    future.publish_added("1.29.1-1.1").unwrap();
    flooded.publish_added("1.28.1-1.1").unwrap();
    for (name, repo) in named([&expiring, &replayed, &future, &flooded]) {
        wait_until(
            &api,
            name,
            Ok(&repo.expected_versions()),
            ONE_INTERVAL,
            &manager,
        )
        .await;
    }
    eprintln!("{:?}: recovered", suite.elapsed());

    stop.send_replace(true);
    let polls = versions_watch
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let (slowest, probes) = readyz_watch
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("versions polled {polls} times; /readyz probed {probes} times, slowest {slowest:?}");
    assert!(polls > 20, "too few polls of the versions: {polls}");
    assert!(probes > 50, "too few /readyz probes: {probes}");
    assert!(
        slowest < READYZ_LIMIT,
        "/readyz took {slowest:?}, more than {READYZ_LIMIT:?}"
    );

    // The password in `future`'s URL is sent, and shown nowhere.
    assert!(future.server.requests_with_authorization() > 0);
    let source = api.get("future").await.unwrap();
    let status = serde_json::to_string(&source.status).unwrap();
    assert!(status.contains("redacted@"), "{status}");
    let notes = serde_json::to_string(&env.warnings("future").await.unwrap()).unwrap();
    let logs =
        e2e::procs::tail(&first_log, 1 << 24) + &e2e::procs::tail(manager.log_path(), 1 << 24);
    assert!(
        logs.contains("redacted@"),
        "the debug lines print the URL, redacted"
    );
    for (what, text) in [("status", status), ("events", notes), ("logs", logs)] {
        assert!(!text.contains(PASSWORD), "the password is in the {what}");
    }
    eprintln!("{:?}: suite done", suite.elapsed());
}
