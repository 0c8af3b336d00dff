//! The index itself: corruption, checksums, size caps, malformed paragraphs, how Debian versions
//! map to Kubernetes versions, and reading a big index off the async workers.

use std::sync::Arc;
use std::time::Duration;

use kubernetes_upgrader::debian::{Compression, RepositorySpec};
use kubernetes_upgrader_testkit::debian::{RepoBuilder, TestKey, clearsign, compress};

use crate::support::{failure, fetched, flat_repo, gzip, serve, spec, sync};

#[tokio::test]
async fn corrupt_gzip_and_xz_are_parse_errors_when_the_digest_matches() {
    let key = TestKey::generate("archive").unwrap();
    let index = b"Package: kubeadm\nVersion: 1.31.0-1.1\nArchitecture: amd64\n\n".repeat(50);
    for compression in [Compression::Gzip, Compression::Xz] {
        let mut bytes = compress(&index, compression).unwrap();
        let middle = bytes.len() / 2;
        for b in &mut bytes[middle..middle + 8] {
            *b ^= 0xa5;
        }
        let builder = RepoBuilder::flat()
            .index_text(index.clone())
            .compressions(&[compression])
            .index_bytes(compression, bytes.clone())
            .signed_by(&key);
        let server = serve(&builder.build().unwrap()).await;
        let (reason, message) =
            failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
        assert_eq!(reason, "ParseError", "{compression:?}: {message}");
        assert!(message.contains("corrupt"), "{message}");
        // Unsigned, no Release at all: probed directly, same verdict.
        server.remove("Release");
        server.remove("InRelease");
        server.remove("Release.gpg");
        let (reason, message) = failure(sync(&spec(server.url()), None).await);
        assert_eq!(reason, "ParseError", "{compression:?}: {message}");
    }
}

#[tokio::test]
async fn wrong_hash_and_wrong_size_are_checksum_mismatches() {
    let (server, key, builder) = flat_repo().await;
    let keyring = key.keyring().unwrap();
    server.corrupt("Packages.gz");
    let (reason, message) = failure(sync(&spec(server.url()), Some(&keyring)).await);
    assert_eq!(reason, "ChecksumMismatch", "{message}");
    assert!(message.contains("SHA256"), "{message}");
    // Also without a keyring: the Release is still used for checksums.
    let (reason, _) = failure(sync(&spec(server.url()), None).await);
    assert_eq!(reason, "ChecksumMismatch");
    let repo = builder.build().unwrap();
    let mut longer = repo.file("Packages.xz").unwrap().to_vec();
    longer.extend_from_slice(b"trailing");
    server.clear_faults();
    server.fail_with_status("Packages.gz", 404);
    server.replace("Packages.xz", longer);
    let (reason, message) = failure(sync(&spec(server.url()), Some(&keyring)).await);
    assert_eq!(reason, "ChecksumMismatch", "{message}");
    // Another valid index, not the one the Release lists.
    let other = compress(b"Package: kubeadm\nVersion: 9.9.9-1\n", Compression::Xz).unwrap();
    server.replace("Packages.xz", other);
    let (reason, _) = failure(sync(&spec(server.url()), Some(&keyring)).await);
    assert_eq!(reason, "ChecksumMismatch");
}

#[tokio::test]
async fn oversized_index_and_gzip_bomb() {
    let (server, key, _) = flat_repo().await;
    let small = RepositorySpec {
        max_index_bytes: 1000,
        ..spec(server.url())
    };
    let (reason, message) = failure(sync(&small, Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "IndexTooLarge", "{message}");
    // 32 MiB of valid-looking paragraphs in a ~100 KiB gzip, with a 4 MiB cap.
    let paragraph = b"Package: kubeadm\nVersion: 1.31.0-1.1\nArchitecture: amd64\n\n";
    let huge = paragraph.repeat((32 << 20) / paragraph.len());
    let bomb = gzip(&huge);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let builder = RepoBuilder::flat()
        .index_text(&paragraph[..])
        .compressions(&[Compression::Gzip])
        .index_bytes(Compression::Gzip, bomb)
        .signed_by(&key);
    server.publish(&builder.build().unwrap());
    let capped = RepositorySpec {
        max_index_bytes: 4 << 20,
        ..spec(server.url())
    };
    let (reason, message) = failure(sync(&capped, Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "IndexTooLarge", "{message}");
    assert!(message.contains("maxIndexSize"), "{message}");
}

#[tokio::test]
async fn malformed_paragraphs_and_non_utf8_bytes() {
    let key = TestKey::generate("archive").unwrap();
    let mut index =
        b"Package: kubeadm\nVersion: 1.29.0-1.1\nArchitecture: amd64\nDescription: caf\xe9\n\n"
            .to_vec();
    index.extend_from_slice(b"Package: kubeadm\nno colon here\nVersion: 1.29.9-1.1\n\n");
    index.extend_from_slice(b"Package: kubeadm\nVersion: 1.29.\xff-1.1\n\n");
    index.extend_from_slice(b"\xff\xfe\x00garbage\n\n");
    index.extend_from_slice(b"Package: kubeadm\r\nVersion: 1.29.1-1.1\r\nArchitecture: amd64\r\n");
    let builder = RepoBuilder::flat().index_text(index).signed_by(&key);
    let server = serve(&builder.build().unwrap()).await;
    let listing = fetched(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(listing.versions, ["v1.29.0", "v1.29.1"]);
    assert_eq!(listing.skipped, 1);
    // Nothing usable: an HTML page served as the index.
    let html = b"<html>\n<head><title>502 Bad Gateway</title></head>\n</html>\n".to_vec();
    server.publish(
        &RepoBuilder::flat()
            .index_text(html)
            .signed_by(&key)
            .build()
            .unwrap(),
    );
    let (reason, message) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "ParseError", "{message}");
    // Well-formed, but no kubeadm at all.
    server.publish(
        &RepoBuilder::flat()
            .package("cri-tools", "1.30.1-1.1", Some("amd64"))
            .signed_by(&key)
            .build()
            .unwrap(),
    );
    let (reason, message) = failure(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(reason, "NoMatchingPackages", "{message}");
}

#[tokio::test]
async fn versions_are_deduplicated_sorted_and_mapped() {
    let key = TestKey::generate("archive").unwrap();
    let builder = RepoBuilder::flat()
        .kubeadm("1.30.10-1.1", "amd64")
        .kubeadm("1.30.2-1.1", "amd64")
        .kubeadm("1.30.2-1.1", "amd64")
        .kubeadm("1:1.30.2-1.1", "amd64")
        .kubeadm("1.27.3-00", "amd64")
        .package("kubeadm", "1.31.0-1.1", Some("all"))
        .package("kubeadm", "1.31.1-1.1", None)
        .kubeadm("1.2.3+dfsg-1", "amd64")
        .kubeadm("2.0~rc1-1", "amd64")
        .kubeadm("1.2.3.4-1", "amd64")
        .kubeadm("1.99.0-1.1", "arm64")
        .signed_by(&key);
    let server = serve(&builder.build().unwrap()).await;
    let listing = fetched(sync(&spec(server.url()), Some(&key.keyring().unwrap())).await);
    assert_eq!(
        listing.versions,
        ["v1.27.3", "v1.30.2", "v1.30.10", "v1.31.0", "v1.31.1"]
    );
    assert_eq!(listing.skipped, 3);
    assert_eq!(
        listing.debian_versions,
        [
            "1.30.10-1.1",
            "1.30.2-1.1",
            "1:1.30.2-1.1",
            "1.27.3-00",
            "1.31.0-1.1",
            "1.31.1-1.1",
            "1.2.3+dfsg-1",
            "2.0~rc1-1",
            "1.2.3.4-1"
        ]
    );
}

/// Decoding a large index and verifying a large InRelease happen off the
/// async workers, so a current-thread runtime keeps serving another task meanwhile.
#[test]
fn a_current_thread_runtime_keeps_serving_while_a_big_index_is_read() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let key = TestKey::generate("archive").unwrap();
        // Highly compressible: each downloaded chunk decompresses to megabytes at once.
        let mut index = Vec::new();
        let paragraph =
            b"Package: kubelet\nVersion: 1.31.0-1.1\nArchitecture: amd64\nDescription: x\n\n";
        while index.len() < 16 << 20 {
            index.extend_from_slice(paragraph);
        }
        index.extend_from_slice(b"Package: kubeadm\nVersion: 1.31.0-1.1\nArchitecture: amd64\n");
        let mut repo = RepoBuilder::flat()
            .index_text(index)
            .compressions(&[Compression::Gzip])
            .build()
            .unwrap();
        // A 12 MiB signed Release: verifying and parsing it is one long computation.
        let mut release = String::from_utf8(repo.file("Release").unwrap().to_vec()).unwrap();
        release.push_str("X-Padding: start\n");
        while release.len() < 12 << 20 {
            release.push_str(" padding padding padding padding padding padding padding padding\n");
        }
        repo.insert(
            "InRelease",
            clearsign(std::slice::from_ref(&key), &release).unwrap(),
        );
        // The server runs on its own runtime, so only the client shares this thread.
        let (ready, served) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let server = serve(&repo).await;
                    ready.send(server.url().to_owned()).unwrap();
                    let _ = stopped.await;
                });
        });
        let url = served.recv().unwrap();
        let gap = Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let ticker = {
            let gap = Arc::clone(&gap);
            tokio::spawn(async move {
                let mut last = std::time::Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let now = std::time::Instant::now();
                    let mut worst = gap.lock().unwrap();
                    *worst = (*worst).max(now - last);
                    last = now;
                }
            })
        };
        let big = RepositorySpec {
            max_index_bytes: 64 << 20,
            timeout: Duration::from_secs(120),
            ..spec(&url)
        };
        let started = std::time::Instant::now();
        let listing = fetched(sync(&big, Some(&key.keyring().unwrap())).await);
        let took = started.elapsed();
        ticker.abort();
        let _ = stop.send(());
        thread.join().unwrap();
        assert_eq!(listing.versions, ["v1.31.0"]);
        let worst = *gap.lock().unwrap();
        assert!(
            worst < Duration::from_millis(250) && worst * 2 < took,
            "the runtime was blocked for {worst:?} of a {took:?} sync"
        );
    });
}
