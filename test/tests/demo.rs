//! `make demo` runs end to end: its own control plane, the served repository, the manager and
//! the stand-ins, until a newly published version reaches the demo Cluster; and Ctrl-C stops it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{cluster, control_plane::Assets, procs};

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
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed after {:?}:\n{stdout}\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "kubelet stand-in: build Job",
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
