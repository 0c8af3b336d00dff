//! Signatures and keyrings: InRelease and Release.gpg, tampering, unknown, revoked and expired
//! keys, subkeys, several keys and signatures, weak hashes and signature floods.

use std::time::Duration;

use kubernetes_upgrader::debian::{Keyring, SyncError, SyncOutcome};
use kubernetes_upgrader_testkit::debian::{
    KeyOptions, RepoBuilder, RepoServer, TestKey, binary_keyring, clearsign, clearsign_flooded,
};

use crate::support::{
    dists_spec, failure, fetched, fetcher, flat_repo, hours, serve, spec, sync, sync_at,
};

#[tokio::test]
async fn missing_release_files_with_a_keyring_are_a_signature_failure() {
    // A root without InRelease and Release is an HTTP failure, not a signature one.
    let (server, key, _) = flat_repo().await;
    server.remove("InRelease");
    server.remove("Release");
    let (reason, message) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "HTTPStatus", "{message}");
    assert!(
        message.contains("repository root not found") && message.contains("404"),
        "{message}"
    );
    // InRelease gone and Release.gpg gone: Release alone proves nothing.
    let (server, key, builder) = flat_repo().await;
    let _ = builder;
    server.remove("InRelease");
    server.remove("Release.gpg");
    let (reason, message) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "SignatureInvalid", "{message}");
    assert!(message.contains("Release.gpg"), "{message}");
}

#[tokio::test]
async fn tampered_release_and_unknown_keys_are_refused() {
    let (server, key, builder) = flat_repo().await;
    let repo = builder.build().unwrap();
    let inrelease = String::from_utf8(repo.file("InRelease").unwrap().to_vec()).unwrap();
    let tampered = inrelease.replacen("Label: test", "Label: evil", 1);
    assert_ne!(tampered, inrelease);
    server.replace("InRelease", tampered);
    let (reason, message) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "SignatureInvalid", "{message}");
    server.clear_faults();
    let stranger = TestKey::generate("stranger").unwrap();
    let (reason, message) =
        failure(sync(&spec(server.url()), Some(&stranger.keyring().unwrap())).await);
    assert_eq!(reason, "SignatureInvalid", "{message}");
    assert!(message.contains(&stranger.fingerprint()), "{message}");
    // Unsigned InRelease content with a keyring.
    server.replace("InRelease", repo.file("Release").unwrap().clone());
    let (reason, _) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "SignatureInvalid");
    // A Release.gpg by the wrong key.
    server.remove("InRelease");
    server.clear_faults();
    server.put(
        "Release.gpg",
        stranger
            .detached_signature(repo.file("Release").unwrap())
            .unwrap(),
    );
    let (reason, _) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "SignatureInvalid");
}

#[tokio::test]
async fn release_gpg_fallback_and_its_304() {
    let key = TestKey::generate("archive").unwrap();
    let builder = RepoBuilder::flat()
        .kubeadm("1.31.0-1.1", "amd64")
        .signed_by(&key)
        .in_release(false);
    let server = serve(&builder.build().unwrap()).await;
    let fetcher = fetcher();
    let listing = fetched(
        fetcher
            .sync(&spec(server.url()), Some(&key.keyring().unwrap()), None)
            .await,
    );
    assert_eq!(listing.versions, ["v1.31.0"]);
    assert_eq!(
        listing.signing_key_fingerprint.as_deref(),
        Some(key.fingerprint().as_str())
    );
    assert_eq!(listing.validators.url, server.url_for("Release"));
    let again = fetcher
        .sync(
            &spec(server.url()),
            Some(&key.keyring().unwrap()),
            Some(&listing.validators),
        )
        .await;
    assert_eq!(again.unwrap(), SyncOutcome::NotModified);
    // dists too.
    let builder = RepoBuilder::dists("stable", "main")
        .kubeadm("1.31.0-1.1", "amd64")
        .signed_by(&key)
        .in_release(false);
    server.publish(&builder.build().unwrap());
    let listing = fetched(
        fetcher
            .sync(
                &dists_spec(server.url()),
                Some(&key.keyring().unwrap()),
                None,
            )
            .await,
    );
    assert_eq!(listing.versions, ["v1.31.0"]);
}

#[tokio::test]
async fn subkey_signed_release_verifies_with_the_primary_key() {
    let key = TestKey::generate_with_signing_subkey("ubuntu").unwrap();
    for in_release in [true, false] {
        let builder = RepoBuilder::dists("stable", "main")
            .kubeadm("1.31.0-1.1", "amd64")
            .signed_by(&key)
            .in_release(in_release);
        let server = serve(&builder.build().unwrap()).await;
        let keyring = Keyring::parse(&key.binary_public_key().unwrap()).unwrap();
        let listing = fetched(sync(&dists_spec(server.url()), Some(&keyring)).await);
        assert_eq!(
            listing.signing_key_fingerprint.as_deref(),
            Some(key.fingerprint().as_str())
        );
    }
}

#[tokio::test]
async fn keyrings_with_several_keys_and_releases_with_several_signatures() {
    let first = TestKey::generate("first").unwrap();
    let second = TestKey::generate_with_signing_subkey("second").unwrap();
    let third = TestKey::generate("third").unwrap();
    // Binary keyring, many keys concatenated.
    let binary = Keyring::parse(&binary_keyring(&[&first, &second, &third]).unwrap()).unwrap();
    assert_eq!(
        binary.fingerprints(),
        [
            first.fingerprint(),
            second.fingerprint(),
            third.fingerprint()
        ]
    );
    // Armored: several blocks in one file.
    let armored = format!(
        "{}\n{}\n",
        first.armored_public_key().unwrap(),
        third.armored_public_key().unwrap()
    );
    let mut keyring = Keyring::parse(armored.as_bytes()).unwrap();
    assert_eq!(
        keyring.fingerprints(),
        [first.fingerprint(), third.fingerprint()]
    );
    keyring.extend(Keyring::parse(second.armored_public_key().unwrap().as_bytes()).unwrap());
    keyring.extend(Keyring::parse(first.armored_public_key().unwrap().as_bytes()).unwrap());
    assert_eq!(keyring.len(), 3);
    assert!(Keyring::parse(b"not a key").is_err());
    assert_eq!(Keyring::parse(b"").unwrap_err().reason(), "ParseError");

    // Signed by a stranger and by `third`: valid because one signature verifies.
    let stranger = TestKey::generate("stranger").unwrap();
    for in_release in [true, false] {
        let builder = RepoBuilder::flat()
            .kubeadm("1.31.0-1.1", "amd64")
            .signed_by(&stranger)
            .signed_by(&second)
            .signed_by(&third)
            .in_release(in_release);
        let server = serve(&builder.build().unwrap()).await;
        let only_third = third.keyring().unwrap();
        let listing = fetched(sync(&spec(server.url()), Some(&only_third)).await);
        assert_eq!(
            listing.signing_key_fingerprint.as_deref(),
            Some(third.fingerprint().as_str())
        );
        let only_second = Keyring::parse(&second.binary_public_key().unwrap()).unwrap();
        let listing = fetched(sync(&spec(server.url()), Some(&only_second)).await);
        assert_eq!(
            listing.signing_key_fingerprint.as_deref(),
            Some(second.fingerprint().as_str())
        );
        let neither = first.keyring().unwrap();
        let (reason, _) = failure(sync(&spec(server.url()), Some(&neither)).await);
        assert_eq!(reason, "SignatureInvalid");
    }
}

#[tokio::test]
async fn only_the_first_signatures_are_considered() {
    let key = TestKey::generate("archive").unwrap();
    let stranger = TestKey::generate("stranger").unwrap();
    let builder = RepoBuilder::flat().kubeadm("1.31.0-1.1", "amd64");
    let release = builder.build().unwrap();
    let text = std::str::from_utf8(release.file("Release").unwrap())
        .unwrap()
        .to_owned();
    let server = serve(&release).await;
    let keyring = key.keyring().unwrap();
    let signed_after = |strangers: usize| {
        let mut signers = vec![stranger.clone(); strangers];
        signers.push(key.clone());
        clearsign(&signers, &text).unwrap()
    };
    server.put("InRelease", signed_after(7));
    fetched(sync(&spec(server.url()), Some(&keyring)).await);
    server.put("InRelease", signed_after(8));
    let (reason, message) = failure(sync(&spec(server.url()), Some(&keyring)).await);
    assert_eq!(reason, "SignatureInvalid", "{message}");
    assert!(message.contains("only the first 8"), "{message}");
    // A flood of packets ahead of a good one costs no more than the cap, and is refused.
    server.put("InRelease", signed_after(5000));
    let started = std::time::Instant::now();
    let (reason, _) = failure(sync(&spec(server.url()), Some(&keyring)).await);
    assert_eq!(reason, "SignatureInvalid");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn a_flood_of_copied_signature_packets_is_refused_and_the_trusted_one_first_is_not() {
    let key = TestKey::generate("archive").unwrap();
    let stranger = TestKey::generate("stranger").unwrap();
    let release = RepoBuilder::flat()
        .kubeadm("1.31.0-1.1", "amd64")
        .build()
        .unwrap();
    let text = std::str::from_utf8(release.file("Release").unwrap()).unwrap();
    let server = serve(&release).await;
    let keyring = key.keyring().unwrap();
    let flooded = clearsign_flooded(&stranger, 3000, std::slice::from_ref(&key), text).unwrap();
    assert!(flooded.len() > 3000 * 100, "{} bytes", flooded.len());
    server.put("InRelease", flooded);
    let (reason, message) = failure(sync(&spec(server.url()), Some(&keyring)).await);
    assert_eq!(reason, "SignatureInvalid", "{message}");
    assert!(message.contains("only the first 8"), "{message}");
    server.put(
        "InRelease",
        clearsign_flooded(&key, 3000, &[], text).unwrap(),
    );
    fetched(sync(&spec(server.url()), Some(&keyring)).await);
}

#[tokio::test]
async fn weak_hashes_and_bad_signature_times_are_refused() {
    let key = TestKey::generate("archive").unwrap();
    let keyring = key.keyring().unwrap();
    let server = RepoServer::start().await.unwrap();
    let now = jiff::Timestamp::now();
    for (signer, why) in [
        (
            key.hashing_with(pgp::crypto::hash::HashAlgorithm::SHA1),
            "SHA1",
        ),
        (
            key.hashing_with(pgp::crypto::hash::HashAlgorithm::MD5),
            "MD5",
        ),
        (key.signing_at(now + hours(2)), "future"),
        (
            key.signing_at(now - hours(2))
                .signatures_expiring_after(Duration::from_secs(3600)),
            "expired",
        ),
    ] {
        let repo = RepoBuilder::flat()
            .kubeadm("1.31.0-1.1", "amd64")
            .signed_by(&signer)
            .build()
            .unwrap();
        server.publish(&repo);
        let (reason, message) = failure(sync(&spec(server.url()), Some(&keyring)).await);
        assert_eq!(reason, "SignatureInvalid", "{why}: {message}");
        assert!(message.contains(why), "{why}: {message}");
        // Release.gpg is held to the same rules.
        server.remove("InRelease");
        let (reason, message) = failure(sync(&spec(server.url()), Some(&keyring)).await);
        assert_eq!(reason, "SignatureInvalid", "{why}: {message}");
    }
    // SHA-512 is fine.
    let repo = RepoBuilder::flat()
        .kubeadm("1.31.0-1.1", "amd64")
        .signed_by(&key.hashing_with(pgp::crypto::hash::HashAlgorithm::SHA2_512))
        .build()
        .unwrap();
    server.publish(&repo);
    fetched(sync(&spec(server.url()), Some(&keyring)).await);
}

async fn verifies(
    key: &TestKey,
    signer: &TestKey,
    now: jiff::Timestamp,
) -> Result<SyncOutcome, SyncError> {
    let repo = RepoBuilder::flat()
        .kubeadm("1.31.0-1.1", "amd64")
        .signed_by(signer)
        .build()
        .unwrap();
    let server = serve(&repo).await;
    let keyring = Keyring::parse_at(key.armored_public_key().unwrap().as_bytes(), now).unwrap();
    sync_at(now, &spec(server.url()), Some(&keyring)).await
}

#[tokio::test]
async fn revoked_and_expired_keys_and_subkeys_do_not_verify() {
    let now = jiff::Timestamp::now();
    // Revoked primary key: left out when the keyring loads.
    let key = TestKey::generate("archive").unwrap();
    let revoked = key.revoked().unwrap();
    let keyring = revoked.keyring().unwrap();
    assert!(keyring.is_empty());
    assert_eq!(keyring.dropped(), [(key.fingerprint(), "revoked")]);
    let (reason, message) = failure(verifies(&revoked, &key, now).await);
    assert_eq!(reason, "SignatureInvalid", "{message}");
    assert!(message.contains("revoked"), "{message}");
    fetched(verifies(&key, &key, now).await);

    // Revoked signing subkey: the revocation is not taken for a binding.
    let subkeyed = TestKey::generate_with_signing_subkey("archive").unwrap();
    fetched(verifies(&subkeyed, &subkeyed, now).await);
    let subkey_revoked = subkeyed.subkey_revoked().unwrap();
    let (reason, message) = failure(verifies(&subkey_revoked, &subkeyed, now).await);
    assert_eq!(reason, "SignatureInvalid", "{message}");

    // A primary key created `age` hours ago that lives two hours.
    let living_two_hours = |age: i64| {
        TestKey::generate_with(
            "archive",
            &KeyOptions {
                created: Some(now - hours(age)),
                expires_after: Some(Duration::from_secs(2 * 3600)),
                ..KeyOptions::default()
            },
        )
        .unwrap()
    };
    // Expired an hour ago.
    let expired = living_two_hours(3);
    let keyring = expired.keyring().unwrap();
    assert_eq!(keyring.dropped(), [(expired.fingerprint(), "expired")]);
    let (reason, message) = failure(verifies(&expired, &expired, now).await);
    assert_eq!(reason, "SignatureInvalid", "{message}");
    assert!(message.contains("expired"), "{message}");

    // A key valid now, checked as of a time after its expiry (the keyring loaded before).
    let expiring = living_two_hours(1);
    fetched(verifies(&expiring, &expiring, now).await);
    let repo = RepoBuilder::flat()
        .kubeadm("1.31.0-1.1", "amd64")
        .signed_by(&expiring)
        .build()
        .unwrap();
    let server = serve(&repo).await;
    let loaded_earlier = expiring.keyring().unwrap();
    let (reason, message) =
        failure(sync_at(now + hours(3), &spec(server.url()), Some(&loaded_earlier)).await);
    assert_eq!(reason, "SignatureInvalid", "{message}");
    // A signature dated before the key existed.
    let (reason, _) = failure(verifies(&expiring, &expiring.signing_at(now - hours(2)), now).await);
    assert_eq!(reason, "SignatureInvalid");

    // An expired signing subkey.
    let subkey_expired = TestKey::generate_with(
        "archive",
        &KeyOptions {
            signing_subkey: true,
            created: Some(now - hours(3)),
            subkey_expires_after: Some(Duration::from_secs(3600)),
            ..KeyOptions::default()
        },
    )
    .unwrap();
    let (reason, _) = failure(verifies(&subkey_expired, &subkey_expired, now).await);
    assert_eq!(reason, "SignatureInvalid");
}
