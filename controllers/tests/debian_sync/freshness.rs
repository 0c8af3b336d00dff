//! How old a Release may be: `Valid-Until`, 304s past it, replays of an older signed Release,
//! and Releases dated in the future.

use kubernetes_upgrader::debian::{MAX_CLOCK_SKEW, SyncOutcome, Validators};
use kubernetes_upgrader_testkit::debian::{RepoBuilder, RepoServer, TestKey};

use crate::support::{at, failure, fetched, fetcher, hours, serve, spec, sync, sync_at};

#[tokio::test]
async fn expired_release_is_refused() {
    let key = TestKey::generate("archive").unwrap();
    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let builder = RepoBuilder::flat()
        .kubeadm("1.31.0-1.1", "amd64")
        .signed_by(&key)
        .valid_until(past);
    let server = serve(&builder.build().unwrap()).await;
    let (reason, message) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    // Its own reason: the signature is fine, the Release is out of date.
    assert_eq!(reason, "ReleaseExpired", "{message}");
    assert!(message.contains("Valid-Until"), "{message}");
    let future = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    server.publish(&builder.valid_until(future).build().unwrap());
    fetched(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
}

#[tokio::test]
async fn a_304_is_refused_once_the_accepted_release_has_expired() {
    let key = TestKey::generate("archive").unwrap();
    let now = jiff::Timestamp::now();
    let builder = RepoBuilder::flat()
        .kubeadm("1.31.0-1.1", "amd64")
        .signed_by(&key)
        .valid_until(now + hours(1));
    let server = serve(&builder.build().unwrap()).await;
    let keyring = key.keyring().unwrap();
    let first = fetched(sync_at(now, &spec(server.url()), Some(&keyring)).await);
    let until = first.valid_until().unwrap();
    assert_eq!(until.as_second(), (now + hours(1)).as_second());
    assert_eq!(first.validators.valid_until, Some(until));
    assert!(first.release_date().is_some());
    // Within Valid-Until, a 304 is fine.
    let later = at(fetcher(), now + jiff::SignedDuration::from_mins(30))
        .sync(&spec(server.url()), Some(&keyring), Some(&first.validators))
        .await
        .unwrap();
    assert_eq!(later, SyncOutcome::NotModified);
    // Past it, the same 304 (stale or forged) is refused, with its own reason.
    server.reset_counters();
    let (reason, message) = failure(
        at(fetcher(), now + hours(2))
            .sync(&spec(server.url()), Some(&keyring), Some(&first.validators))
            .await,
    );
    assert_eq!(server.not_modified(), 1);
    assert_eq!(reason, "ReleaseExpired", "{message}");
    assert!(
        message.contains("304") && message.contains("Valid-Until"),
        "{message}"
    );
    // A freshly started controller remembers the accepted Release's times (from status), not
    // the HTTP validators: a forged 304 to its unconditional request is refused past
    // Valid-Until, and is an HTTP error before it.
    let from_status = Validators {
        release_date: first.release_date(),
        valid_until: first.valid_until(),
        ..Validators::default()
    };
    server.fail_with_status("InRelease", 304);
    let (reason, message) = failure(
        at(fetcher(), now + hours(2))
            .sync(&spec(server.url()), Some(&keyring), Some(&from_status))
            .await,
    );
    assert_eq!(reason, "ReleaseExpired", "{message}");
    let (reason, message) = failure(
        at(fetcher(), now)
            .sync(&spec(server.url()), Some(&keyring), Some(&from_status))
            .await,
    );
    assert_eq!(reason, "HTTPStatus", "{message}");
    assert!(message.contains("304"), "{message}");
}

#[tokio::test]
async fn an_older_signed_release_is_refused_as_a_replay() {
    let key = TestKey::generate("archive").unwrap();
    let now = jiff::Timestamp::now();
    let old = RepoBuilder::flat()
        .kubeadm("1.31.0-1.1", "amd64")
        .signed_by(&key)
        .date(now - hours(48))
        .build()
        .unwrap();
    let new = RepoBuilder::flat()
        .kubeadm("1.31.0-1.1", "amd64")
        .kubeadm("1.31.1-1.1", "amd64")
        .signed_by(&key)
        .date(now - hours(1))
        .build()
        .unwrap();
    let server = serve(&new).await;
    let keyring = key.keyring().unwrap();
    let accepted = fetched(sync_at(now, &spec(server.url()), Some(&keyring)).await);
    assert_eq!(
        accepted.release_date().map(jiff::Timestamp::as_second),
        Some((now - hours(1)).as_second())
    );
    // The same Release again (say, after the validators were lost) is fine.
    let again = Validators {
        etag: None,
        last_modified: None,
        ..accepted.validators.clone()
    };
    fetched(
        at(fetcher(), now)
            .sync(&spec(server.url()), Some(&keyring), Some(&again))
            .await,
    );
    // An older signed Release, served in its place, would shrink the list: refused.
    let sync_after_accepted = async || {
        failure(
            at(fetcher(), now)
                .sync(
                    &spec(server.url()),
                    Some(&keyring),
                    Some(&accepted.validators),
                )
                .await,
        )
    };
    server.publish(&old);
    let (reason, message) = sync_after_accepted().await;
    assert_eq!(reason, "ReleaseReplayed", "{message}");
    // Release + Release.gpg are held to the same rule.
    server.remove("InRelease");
    let (reason, _) = sync_after_accepted().await;
    assert_eq!(reason, "ReleaseReplayed");
}

#[tokio::test]
async fn a_release_dated_in_the_future_is_refused() {
    let key = TestKey::generate("archive").unwrap();
    let now = jiff::Timestamp::now();
    let skew = jiff::SignedDuration::try_from(MAX_CLOCK_SKEW).unwrap();
    let server = RepoServer::start().await.unwrap();
    let keyring = key.keyring().unwrap();
    let ahead = |by: jiff::SignedDuration| {
        RepoBuilder::flat()
            .kubeadm("1.31.0-1.1", "amd64")
            .signed_by(&key)
            .date(now + by)
            .build()
            .unwrap()
    };
    server.publish(&ahead(skew + jiff::SignedDuration::from_secs(60)));
    let (reason, message) = failure(sync_at(now, &spec(server.url()), Some(&keyring)).await);
    assert_eq!(reason, "ReleaseNotYetValid", "{message}");
    // Within the skew, accepted.
    server.publish(&ahead(skew - jiff::SignedDuration::from_secs(60)));
    fetched(sync_at(now, &spec(server.url()), Some(&keyring)).await);
}
