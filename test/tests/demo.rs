//! `make demo` runs end to end: its own control plane, the served repository, the manager and
//! the stand-ins, until a newly published version reaches the demo Cluster; and Ctrl-C stops it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{cluster, control_plane::Assets, procs};
use kubernetes_upgrader_testkit::debian::RepoServer;
use sha2::{Digest as _, Sha512};

fn demo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_demo"));
    command
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The demo starts its own control plane from the assets; with only `E2E_KUBECONFIG` there
/// is none to start.
fn assets_or_skip(test: &str) -> bool {
    let found =
        Assets::from_env().ok().flatten().is_some() || Assets::from_setup_envtest().is_some();
    if !found {
        cluster::skip(
            test,
            "the demo starts its own control plane: set KUBEBUILDER_ASSETS",
        );
    }
    found
}

#[test]
fn demo_converges_from_a_new_repository_version_to_the_cluster() {
    if !assets_or_skip("demo_converges_from_a_new_repository_version_to_the_cluster") {
        return;
    }
    // The manager binary the demo starts must exist.
    e2e::manager::binary().unwrap();
    let started = Instant::now();
    let output = demo().env("DEMO_EXIT_WHEN_DONE", "1").output().unwrap();
    assert_converged(&output, started);
}

/// The demo ran to the end: both releases reached the Cluster, and the tree was printed plain.
fn assert_converged(output: &std::process::Output, started: Instant) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed after {:?}:\n{stdout}\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "build Job finisher: build Job",
        "Cluster API stand-in: rollout of capi-quickstart to v1.31.1 finished",
        "publishing kubeadm 1.31.2-1.1",
        "Cluster API stand-in: rollout of capi-quickstart to v1.31.2 finished",
        "converged in",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The tree as the pipeline converged, plain (not a terminal).
    assert!(
        stdout.contains("└─Cluster/capi-quickstart  Provisioned  topology v1.31.2"),
        "{stdout}"
    );
    assert!(!stdout.contains('\u{1b}'));
}

/// A fresh machine: an empty `$HOME`, no `KUBEBUILDER_ASSETS`, and controller-tools' release index
/// mirrored on loopback (`ENVTEST_INDEX_URL`), holding this machine's control plane repacked as
/// controller-tools publishes it. `make demo` runs `make control-plane`, then the demo binary; this
/// runs the same two steps (the demo binary directly, as a nested `cargo run` would contend for
/// the build this test runs in). The first fetches and unpacks, the demo converges on it, and a
/// second `make control-plane` downloads nothing.
#[test]
fn on_a_fresh_machine_make_demo_fetches_the_control_plane_then_converges() {
    let test = "on_a_fresh_machine_make_demo_fetches_the_control_plane_then_converges";
    let Some(assets) = Assets::from_env()
        .ok()
        .flatten()
        .or_else(Assets::from_setup_envtest)
    else {
        cluster::skip(
            test,
            "repacks the control plane of KUBEBUILDER_ASSETS: set it",
        );
        return;
    };
    if !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|dir| dir.join("make").is_file())
    {
        cluster::skip(test, "runs `make control-plane`: install make");
        return;
    }
    let manager = e2e::manager::binary().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(RepoServer::start()).unwrap();
    let version = published_version(&assets);
    let platform = kubernetes_upgrader::envtest::Platform::current().unwrap();
    let name = format!("envtest-v{version}-{}.tar.gz", platform.suffix());
    let archive = repack(&assets);
    server.put(
        "envtest-releases.yaml",
        format!(
            "releases:\n  v{version}:\n    {name}:\n      hash: {}\n      selfLink: {}\n",
            hex::encode(Sha512::digest(&archive)),
            server.url_for(&format!("releases/{name}"))
        ),
    );
    server.put(&format!("releases/{name}"), archive);

    let home = tempfile::tempdir().unwrap();
    let fresh = |command: &mut Command| {
        command
            .env("HOME", home.path())
            .env("ENVTEST_INDEX_URL", server.url_for("envtest-releases.yaml"))
            .env("NO_COLOR", "1")
            .env_remove("KUBEBUILDER_ASSETS")
            .env_remove("E2E_KUBECONFIG")
            .env_remove("XDG_DATA_HOME")
            .env_remove("OFFLINE")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    };
    let make_control_plane = || {
        let mut make = Command::new("make");
        make.arg("-s")
            .arg("--no-print-directory")
            .arg("-C")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .arg("control-plane")
            .arg(format!("UPGRADER={}", manager.display()));
        fresh(&mut make);
        make.output().unwrap()
    };

    let fetched = make_control_plane();
    let stderr = String::from_utf8_lossy(&fetched.stderr);
    assert!(fetched.status.success(), "{stderr}");
    assert!(
        stderr.contains("envtest: no Kubernetes 1.32.x") && stderr.contains(": fetching its etcd"),
        "{stderr}"
    );
    assert!(stderr.contains("SHA-512 verified"), "{stderr}");
    let folder = home.path().join(format!(
        ".local/share/kubebuilder-envtest/k8s/{version}-{}",
        platform.suffix()
    ));
    for binary in ["etcd", "kube-apiserver"] {
        assert!(
            folder.join(binary).is_file(),
            "{} has no {binary}",
            folder.display()
        );
    }
    assert_eq!(server.requests(), 2);

    let started = Instant::now();
    let mut demo = demo();
    fresh(&mut demo);
    let output = demo.env("DEMO_EXIT_WHEN_DONE", "1").output().unwrap();
    assert_converged(&output, started);

    let again = make_control_plane();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("is already in"), "{stderr}");
    assert_eq!(server.requests(), 2, "the second run downloaded again");
}

/// The version the archive is published as: the assets' folder name when it is a 1.32 release
/// (what `make` asks for), 1.32.0 otherwise.
fn published_version(assets: &Assets) -> semver::Version {
    assets
        .kube_apiserver
        .parent()
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .and_then(|name| name.split('-').next())
        .and_then(|v| semver::Version::parse(v).ok())
        .filter(|v| (v.major, v.minor) == (1, 32))
        .unwrap_or_else(|| semver::Version::new(1, 32, 0))
}

/// etcd and kube-apiserver as a gzip'd tar in controller-tools' layout,
/// `controller-tools/envtest/<binary>`. The published archives also hold kubectl, which `envtest
/// use` takes when present (its loopback tests cover that); the demo does not need it, and
/// leaving it out halves what this debug build compresses and hashes.
fn repack(assets: &Assets) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, path) in [
        ("etcd", &assets.etcd),
        ("kube-apiserver", &assets.kube_apiserver),
    ] {
        // Symlinks (install.sh links Debian's etcd) are followed: the archive holds files.
        let mut file = std::fs::File::open(path).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(file.metadata().unwrap().len());
        header.set_mode(0o755);
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("controller-tools/envtest/{name}"),
            &mut file,
        )
        .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

#[test]
fn ctrl_c_stops_the_demo_and_everything_it_started() {
    if !assets_or_skip("ctrl_c_stops_the_demo_and_everything_it_started") {
        return;
    }
    e2e::manager::binary().unwrap();
    let mut child = demo().spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut kubeconfig = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let line = lines.next().unwrap().unwrap();
        if let Some(rest) = line.split("kubeconfig ").nth(1) {
            kubeconfig = Some(rest.trim().to_owned());
        }
        if line.contains("manager ready") {
            break;
        }
    }
    let kubeconfig = kubeconfig.expect("the demo names its kubeconfig");
    let scratch = std::path::Path::new(&kubeconfig)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    procs::send_signal(child.id(), "INT").unwrap();
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "the demo ignored Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit after Ctrl-C: {status}");
    // Its watchdog removes the scratch folder (control plane data, kubeconfig) once it is gone.
    let gone = Instant::now();
    while scratch.exists() {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "{} left behind",
            scratch.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
