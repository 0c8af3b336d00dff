//! `kubernetes-upgrader envtest use` against a loopback server holding an index in the published
//! format and archives built here (stub binaries in the published layout), with an empty `$HOME`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use kubernetes_upgrader_testkit::debian::RepoServer;
use sha2::{Digest as _, Sha512};

const VERSIONS: [&str; 5] = ["1.31.9", "1.32.0", "1.32.4", "1.33.0-beta.0", "1.33.1"];
const PLATFORMS: [&str; 4] = ["linux-amd64", "linux-arm64", "darwin-amd64", "darwin-arm64"];

/// An archive as controller-tools packs it: `controller-tools/envtest/{etcd,kube-apiserver,kubectl}`,
/// each stub saying which version and platform it belongs to.
fn archive(version: &str, platform: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for binary in ["etcd", "kube-apiserver", "kubectl"] {
        let body = format!("#!/bin/sh\necho {binary} {version} {platform}\n");
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("controller-tools/envtest/{binary}"),
            body.as_bytes(),
        )
        .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn sha512(bytes: &[u8]) -> String {
    hex::encode(Sha512::digest(bytes))
}

fn archive_name(version: &str, platform: &str) -> String {
    format!("envtest-v{version}-{platform}.tar.gz")
}

/// Serves every archive under `releases/` and the index at `index.yaml`, with absolute links
/// the way controller-tools writes them. `hash_of` may lie about one archive.
fn publish(server: &RepoServer, hash_of: impl Fn(&str, &[u8]) -> String) {
    let mut index = String::from("releases:\n");
    for version in VERSIONS {
        writeln!(index, "  v{version}:").unwrap();
        for platform in PLATFORMS {
            let name = archive_name(version, platform);
            let bytes = archive(version, platform);
            let path = format!("releases/{name}");
            writeln!(
                index,
                "    {name}:\n      hash: {}\n      selfLink: {}",
                hash_of(&name, &bytes),
                server.url_for(&path)
            )
            .unwrap();
            server.put(&path, bytes);
        }
    }
    server.put("index.yaml", index);
}

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// setup-envtest's `k8s` folder under this `$HOME` (Linux layout).
    fn k8s(&self) -> PathBuf {
        self.dir.path().join(".local/share/kubebuilder-envtest/k8s")
    }

    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.k8s())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn command(&self, index_url: &str, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubernetes-upgrader"));
        command
            .arg("envtest")
            .arg("use")
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("XDG_DATA_HOME")
            .env("ENVTEST_INDEX_URL", index_url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, index_url: &str, args: &[&str]) -> Output {
        tokio::time::timeout(
            Duration::from_secs(60),
            self.command(index_url, args).output(),
        )
        .await
        .expect("envtest use hung")
        .unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_patch_for_the_platform_is_fetched_once_and_then_reused() {
    let server = RepoServer::start().await.unwrap();
    publish(&server, |_, bytes| sha512(bytes));
    let index = server.url_for("index.yaml");
    let home = Home::new();

    let output = home
        .run(&index, &["--os", "darwin", "--arch", "arm64"])
        .await;
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let folder = home.k8s().join("1.32.4-darwin-arm64");
    assert_eq!(text(&output.stdout), format!("{}\n", folder.display()));
    for binary in ["etcd", "kube-apiserver", "kubectl"] {
        assert_eq!(
            read(&folder.join(binary)),
            format!("#!/bin/sh\necho {binary} 1.32.4 darwin-arm64\n")
        );
    }
    assert!(
        stderr.contains(&format!(
            "envtest: no Kubernetes 1.32.x (darwin/arm64) in {}: fetching its etcd, kube-apiserver and kubectl",
            home.k8s().display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("SHA-512 verified"), "{stderr}");
    // Only the index and that one archive were read.
    assert_eq!(server.requests_for("index.yaml"), 1);
    let chosen = format!("releases/{}", archive_name("1.32.4", "darwin-arm64"));
    assert_eq!(server.requests_for(&chosen), 1);
    assert_eq!(server.requests(), 2);
    assert_eq!(home.listing(), ["1.32.4-darwin-arm64"]);

    // A second run downloads nothing, not even the index.
    let again = home
        .run(&index, &["1.32", "--os", "darwin", "--arch", "arm64"])
        .await;
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(again.stdout, output.stdout);
    assert!(
        text(&again.stderr).contains("is already in"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(server.requests(), 2);

    // This machine's platform by default, and an exact patch when one is named.
    let exact = home.run(&index, &["1.32.0"]).await;
    assert!(exact.status.success(), "{}", text(&exact.stderr));
    let here = home.k8s().join(format!(
        "1.32.0-linux-{}",
        if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            "amd64"
        }
    ));
    assert_eq!(text(&exact.stdout), format!("{}\n", here.display()));
    assert!(read(&here.join("etcd")).contains("etcd 1.32.0 linux-"));

    // Another minor is fetched even with 1.32 in place, unless any installed version will do.
    let prefer = home
        .run(
            &index,
            &[
                "1.33",
                "--prefer-installed",
                "--os",
                "darwin",
                "--arch",
                "arm64",
            ],
        )
        .await;
    assert_eq!(prefer.stdout, output.stdout, "{}", text(&prefer.stderr));
    let newer = home
        .run(&index, &["1.33", "--os", "darwin", "--arch", "arm64"])
        .await;
    assert!(newer.status.success(), "{}", text(&newer.stderr));
    // 1.33.0-beta.0 is a pre-release: 1.33.1 is the newest patch.
    assert!(read(&home.k8s().join("1.33.1-darwin-arm64/etcd")).contains("1.33.1"));

    let missing = home.run(&index, &["1.40"]).await;
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("the index has no envtest archive for Kubernetes 1.40.x"),
        "{}",
        text(&missing.stderr)
    );
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_hash_is_refused_and_nothing_is_kept() {
    let server = RepoServer::start().await.unwrap();
    let liar = archive_name("1.32.4", "linux-amd64");
    publish(&server, |name, bytes| {
        if name == liar {
            sha512(b"something else")
        } else {
            sha512(bytes)
        }
    });
    let home = Home::new();
    let output = home
        .run(
            &server.url_for("index.yaml"),
            &["--os", "linux", "--arch", "amd64"],
        )
        .await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("error: {liar}: SHA-512 mismatch, refusing it")),
        "{stderr}"
    );
    assert!(stderr.contains(&sha512(b"something else")), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(home.listing().is_empty(), "{:?}", home.listing());
    assert!(!stderr.contains("unpacked"), "{stderr}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envtest_index_url_points_at_a_mirror_with_relative_links() {
    let server = RepoServer::start().await.unwrap();
    let bytes = archive("1.32.7", "linux-amd64");
    let name = archive_name("1.32.7", "linux-amd64");
    server.put(&format!("mirror/files/{name}"), bytes.clone());
    server.put(
        "mirror/envtest-releases.yaml",
        format!(
            "releases:\n  v1.32.7:\n    {name}:\n      hash: {}\n      selfLink: files/{name}\n",
            sha512(&bytes)
        ),
    );
    let home = Home::new();
    let output = home
        .run(
            &server.url_for("mirror/envtest-releases.yaml"),
            &["--os", "linux", "--arch", "amd64"],
        )
        .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(server.requests_for("mirror/envtest-releases.yaml"), 1);
    assert_eq!(server.requests_for(&format!("mirror/files/{name}")), 1);
    assert!(read(&home.k8s().join("1.32.7-linux-amd64/kube-apiserver")).contains("1.32.7"));

    // A URL that is not http(s) is refused, naming the variable.
    let output = home
        .run(
            "file:///etc/passwd",
            &["1.33", "--os", "linux", "--arch", "amd64"],
        )
        .await;
    assert!(
        text(&output.stderr)
            .contains("--index-url (ENVTEST_INDEX_URL) \"file:///etc/passwd\": not an http(s) URL"),
        "{}",
        text(&output.stderr)
    );
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_leaves_no_half_written_folder() {
    let server = RepoServer::start().await.unwrap();
    publish(&server, |_, bytes| sha512(bytes));
    let index = server.url_for("index.yaml");
    let path = format!("releases/{}", archive_name("1.32.4", "linux-amd64"));
    let args = ["--os", "linux", "--arch", "amd64"];
    let home = Home::new();

    // The connection drops midway.
    server.truncate(&path, 100);
    let output = home.run(&index, &args).await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("error: fetching http://"),
        "{}",
        text(&output.stderr)
    );
    assert!(home.listing().is_empty(), "{:?}", home.listing());

    // Ctrl-C while the download stalls: the staging file goes too.
    server.stall(&path, 100);
    let mut child = home.command(&index, &args).spawn().unwrap();
    let staging = wait_for_staging(&home).await;
    kill(child.id().unwrap(), "INT");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("Ctrl-C ignored")
        .unwrap();
    assert!(!status.success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(
        stderr.contains("error: interrupted: nothing was installed"),
        "{stderr}"
    );
    assert!(!staging.exists());
    assert!(home.listing().is_empty(), "{:?}", home.listing());

    // Killed outright: only the hidden staging file can stay, never the version folder; the
    // next run installs a complete one.
    let mut child = home.command(&index, &args).spawn().unwrap();
    let staging = wait_for_staging(&home).await;
    kill(child.id().unwrap(), "KILL");
    let _ = child.wait().await;
    assert_eq!(home.listing().len(), 1, "{:?}", home.listing());
    assert!(staging.exists());
    server.clear_faults();
    let output = home.run(&index, &args).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let folder = home.k8s().join("1.32.4-linux-amd64");
    assert!(read(&folder.join("etcd")).contains("etcd 1.32.4 linux-amd64"));
    assert!(read(&folder.join("kube-apiserver")).contains("1.32.4"));
}

async fn wait_for_staging(home: &Home) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(name) = home
            .listing()
            .into_iter()
            .find(|n| n.starts_with(".envtest-"))
        {
            return home.k8s().join(name);
        }
        assert!(Instant::now() < deadline, "no download started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
