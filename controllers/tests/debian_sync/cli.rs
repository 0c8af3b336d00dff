//! The `versions` command.

use std::io::Write as _;

use kubernetes_upgrader_testkit::debian::{RepoServer, TestKey};

use crate::support::{flat_repo, init};

#[tokio::test]
async fn cli_versions_command() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: kubernetes_upgrader::debian::VersionsArgs,
    }
    init();
    let (server, key, _) = flat_repo().await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&key.binary_public_key().unwrap()).unwrap();
    let keyring = file.path().to_str().unwrap().to_owned();
    let ok = Cli::try_parse_from([
        "versions",
        server.url(),
        "--keyring",
        &keyring,
        "--format",
        "json",
    ])
    .unwrap();
    assert_eq!(ok.args.arch, "amd64");
    assert_eq!(ok.args.package, "kubeadm");
    let code = kubernetes_upgrader::debian::run_versions(ok.args)
        .await
        .unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let stranger = TestKey::generate("stranger").unwrap();
    let mut other = tempfile::NamedTempFile::new().unwrap();
    other
        .write_all(stranger.armored_public_key().unwrap().as_bytes())
        .unwrap();
    let bad = Cli::try_parse_from([
        "versions",
        server.url(),
        "--keyring",
        other.path().to_str().unwrap(),
    ])
    .unwrap();
    let code = kubernetes_upgrader::debian::run_versions(bad.args)
        .await
        .unwrap();
    assert_eq!(code, std::process::ExitCode::FAILURE);
    let bad_size =
        Cli::try_parse_from(["versions", server.url(), "--max-index-size", "lots"]).unwrap();
    let code = kubernetes_upgrader::debian::run_versions(bad_size.args)
        .await
        .unwrap();
    assert_eq!(code, std::process::ExitCode::FAILURE);
    assert!(Cli::try_parse_from(["versions", server.url(), "--suite", "stable"]).is_err());
}

/// The CLI says once on stderr that nothing was verified without `--keyring`, and a
/// missing repository root is an HTTP failure.
#[tokio::test]
async fn cli_without_a_keyring_says_nothing_was_verified() {
    let (server, _, _) = flat_repo().await;
    let binary = env!("CARGO_BIN_EXE_kubernetes-upgrader");
    let output = tokio::process::Command::new(binary)
        .args(["versions", server.url()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout, "v1.31.1\nv1.31.2\n");
    assert_eq!(stderr.matches("not verified").count(), 1, "{stderr}");
    let empty = RepoServer::start().await.unwrap();
    let output = tokio::process::Command::new(binary)
        .args(["versions", empty.url()])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success());
    assert!(
        stderr.starts_with("error: HTTPStatus: repository root not found"),
        "{stderr}"
    );
}
