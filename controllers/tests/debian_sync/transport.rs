//! Failures on the wire: HTTP statuses, missing roots, timeouts, truncated and stalled bodies,
//! refused connections, and what error messages may show.

use std::time::Duration;

use kubernetes_upgrader::debian::{Fetcher, RepositorySpec, SyncError};
use kubernetes_upgrader_testkit::debian::RepoServer;

use crate::support::{failure, fetched, flat_repo, init, spec, sync};

#[tokio::test]
async fn http_404_and_500() {
    let (server, key, _) = flat_repo().await;
    for compression in ["Packages.xz", "Packages.gz", "Packages"] {
        server.fail_with_status(compression, 404);
    }
    let (reason, message) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "HTTPStatus", "{message}");
    assert!(
        message.contains("HTTP 404") && message.contains("/Packages"),
        "{message}"
    );
    server.clear_faults();
    server.fail_with_status("InRelease", 500);
    let outcome = sync(&spec(server.url()), Some(&key.keyring().unwrap())).await;
    match outcome {
        Err(SyncError::HttpStatus { url, status }) => {
            assert_eq!(status, 500);
            assert_eq!(url, server.url_for("InRelease"));
        }
        other => panic!("{other:?}"),
    }
    server.clear_faults();
    server.fail_with_status("Packages.gz", 503);
    let (reason, _) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "HTTPStatus");
}

#[tokio::test]
async fn a_missing_root_is_an_http_failure_without_a_keyring_too() {
    let server = RepoServer::start().await.unwrap();
    let (reason, message) = failure(sync(&spec(server.url()), None).await);
    assert_eq!(reason, "HTTPStatus", "{message}");
    assert!(message.contains("repository root not found"), "{message}");
}

#[tokio::test]
async fn timeout_bounds_the_whole_sync() {
    let (server, key, _) = flat_repo().await;
    server.delay("Packages.gz", Duration::from_secs(5));
    let quick = RepositorySpec {
        timeout: Duration::from_millis(400),
        ..spec(server.url())
    };
    let started = std::time::Instant::now();
    let (reason, message) = failure(sync(&quick, Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "FetchFailed", "{message}");
    assert!(
        message.contains("Packages.gz") && message.contains("timed out"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn truncated_body_is_a_fetch_failure() {
    let (server, key, _) = flat_repo().await;
    server.truncate("Packages.gz", 100);
    let (reason, message) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "FetchFailed", "{message}");
    server.clear_faults();
    server.truncate("InRelease", 50);
    let (reason, message) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "FetchFailed", "{message}");
}

#[tokio::test]
async fn a_stalled_body_fails_at_the_idle_timeout() {
    let (server, key, _) = flat_repo().await;
    server.stall("Packages.gz", 10);
    init();
    let fetcher = Fetcher::with_idle_timeout(None, Duration::from_millis(300)).unwrap();
    let slow = RepositorySpec {
        timeout: Duration::from_secs(60),
        ..spec(server.url())
    };
    let started = std::time::Instant::now();
    let (reason, message) = failure(
        fetcher
            .sync(&slow, Some(&key.keyring().unwrap()), None)
            .await,
    );
    assert_eq!(reason, "FetchFailed", "{message}");
    assert!(message.contains("idle"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn connection_refused_after_stop() {
    let (server, key, _) = flat_repo().await;
    let url = server.url().to_owned();
    server.stop().await;
    let (reason, message) = failure(sync(&spec(&url), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "FetchFailed", "{message}");
    assert!(message.contains("InRelease"), "{message}");
}

#[tokio::test]
async fn credentials_in_the_url_are_sent_but_never_shown() {
    let (server, key, _) = flat_repo().await;
    let keyring = key.keyring().unwrap();
    let with_userinfo = server.url().replacen("http://", "http://robot:s3cret@", 1);
    let listing = fetched(sync(&spec(&with_userinfo), Some(&keyring)).await);
    assert!(server.requests_with_authorization() >= 2);
    assert!(
        !listing.index_url.contains("s3cret"),
        "{}",
        listing.index_url
    );
    assert!(
        listing.index_url.contains("redacted@"),
        "{}",
        listing.index_url
    );
    assert!(!listing.validators.url.contains("s3cret"));
    server.fail_with_status("Packages.gz", 500);
    let (_, message) = failure(sync(&spec(&with_userinfo), Some(&keyring)).await);
    assert!(
        !message.contains("s3cret") && !message.contains("robot"),
        "{message}"
    );
    server.remove("InRelease");
    server.remove("Release");
    let (_, message) = failure(sync(&spec(&with_userinfo), Some(&keyring)).await);
    assert!(!message.contains("s3cret"), "{message}");
}

#[tokio::test]
async fn messages_are_bounded_and_never_echo_the_release() {
    let server = RepoServer::start().await.unwrap();
    let junk = format!("Origin: x\n{}\n", "\u{1b}[2J NOT A FIELD ".repeat(200_000));
    server.put("Release", junk.clone());
    server.put("Packages", "Package: kubeadm\nVersion: 1.31.0-1.1\n");
    let (reason, message) = failure(sync(&spec(server.url()), None).await);
    assert_eq!(reason, "ParseError", "{message}");
    assert!(message.len() <= 1024, "{}", message.len());
    assert!(!message.contains("NOT A FIELD"), "{message}");
    assert!(!message.chars().any(char::is_control), "{message}");
    // A long URL is cut, not copied whole.
    let long = format!("{}{}/", server.url(), "a".repeat(5000));
    let (_, message) = failure(sync(&spec(&long), None).await);
    assert!(message.len() <= 1024, "{}", message.len());
}
