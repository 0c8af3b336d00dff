//! Whole-process benchmark of `kubernetes-upgrader versions`: a generated ~50 MB
//! Packages index, listed as both `.gz` and `.xz` in a signed InRelease served from loopback,
//! read with `--keyring`. Side by side on the same machine, `zcat` decompresses the `.gz` the
//! CLI picks. Both run under `/usr/bin/time -f %M` for their peak RSS.
//!
//! Run: `cargo bench -p kubernetes-upgrader --bench debian_cli`
//! Environment: `BENCH_RUNS` (default 5), `BENCH_PARAGRAPHS` (default 60000, about 50 MB).
//! Targets: CLI wall time at most 1.0 x zcat (best of runs), peak RSS at most 16 MiB.

#![allow(clippy::cast_precision_loss)] // sizes and rates are only displayed

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use kubernetes_upgrader::debian::Compression;
use kubernetes_upgrader_testkit::debian::{RepoBuilder, RepoServer, TestKey, synthetic_index};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const RSS_TARGET_KIB: u64 = 16 * 1024;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("debian_cli: a target was missed");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `program args` under `/usr/bin/time -f %M` with stdout discarded: wall time and peak
/// RSS in KiB.
fn measure(program: &Path, args: &[&str]) -> BenchResult<(Duration, u64)> {
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8(output.stderr)?;
    if !output.status.success() {
        return Err(format!("{} failed: {stderr}", program.display()).into());
    }
    let rss = stderr
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("no peak RSS in {stderr:?}"))?;
    Ok((elapsed, rss))
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn run() -> BenchResult<bool> {
    let runs = env_or("BENCH_RUNS", 5);
    let paragraphs = env_or("BENCH_PARAGRAPHS", 60_000);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let index = synthetic_index(paragraphs);
    let gz = kubernetes_upgrader_testkit::debian::compress(&index, Compression::Gzip)?;
    // The .xz is listed too (so the CLI has to choose); its preset only changes generation time.
    let xz = {
        use std::io::Write as _;
        let mut encoder = xz2::write::XzEncoder::new(Vec::new(), 1);
        encoder.write_all(&index)?;
        encoder.finish()?
    };
    let key = TestKey::generate("bench")?;
    let repo = RepoBuilder::flat()
        .index_text(index.clone())
        .compressions(&[Compression::Gzip, Compression::Xz])
        .index_bytes(Compression::Gzip, gz.clone())
        .index_bytes(Compression::Xz, xz.clone())
        .signed_by(&key)
        .build()?;
    let gz_path = dir.path().join("Packages.gz");
    std::fs::write(&gz_path, &gz)?;
    let keyring = dir.path().join("keyring.gpg");
    std::fs::write(&keyring, key.binary_public_key()?)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let server = runtime.block_on(RepoServer::start())?;
    server.publish(&repo);
    let url = server.url().to_owned();
    let binary = Path::new(env!("CARGO_BIN_EXE_kubernetes-upgrader"));
    let keyring_arg = keyring.display().to_string();
    let cli_args = ["versions", url.as_str(), "--keyring", keyring_arg.as_str()];
    let gz_arg = gz_path.display().to_string();

    println!(
        "debian_cli: {paragraphs} paragraphs, {:.1} MiB plain, {:.1} MiB .gz (-6), {:.1} MiB .xz (-1), \
         generated in {:.1?}; best of {runs} runs, alternating; {} CPUs",
        mib(index.len() as u64),
        mib(gz.len() as u64),
        mib(xz.len() as u64),
        started.elapsed(),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
    );
    // Warm the page cache and check the CLI picks the .gz.
    measure(Path::new("/usr/bin/zcat"), &[&gz_arg])?;
    server.reset_counters();
    measure(binary, &cli_args)?;
    if server.requests_for("Packages.gz") != 1 || server.requests_for("Packages.xz") != 0 {
        return Err("the CLI did not read the .gz".into());
    }

    let mut zcat = (Duration::MAX, 0u64);
    let mut cli = (Duration::MAX, 0u64);
    let mut ratios = Vec::new();
    for _ in 0..runs {
        let z = measure(Path::new("/usr/bin/zcat"), &[&gz_arg])?;
        let c = measure(binary, &cli_args)?;
        ratios.push(secs(c.0) / secs(z.0));
        zcat = (zcat.0.min(z.0), zcat.1.max(z.1));
        cli = (cli.0.min(c.0), cli.1.max(c.1));
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    let ratio = secs(cli.0) / secs(zcat.0);
    println!(
        "{:<60} {:>8} {:>12}",
        "whole process", "seconds", "peak RSS"
    );
    println!(
        "{:<60} {:>8.3} {:>8.1} MiB",
        "zcat Packages.gz >/dev/null (baseline)",
        secs(zcat.0),
        zcat.1 as f64 / 1024.0
    );
    println!(
        "{:<60} {:>8.3} {:>8.1} MiB",
        "kubernetes-upgrader versions URL --keyring K (reads .gz)",
        secs(cli.0),
        cli.1 as f64 / 1024.0
    );
    let time_met = ratio <= 1.0;
    let rss_met = cli.1 <= RSS_TARGET_KIB;
    println!(
        "CLI / zcat: {ratio:.2} (best of each), median of paired runs {median:.2}; \
         targets: <= 1.0 x zcat: {}; peak RSS <= 16 MiB: {} ({:.1} MiB)",
        if time_met { "met" } else { "MISSED" },
        if rss_met { "met" } else { "MISSED" },
        cli.1 as f64 / 1024.0
    );
    runtime.block_on(server.stop());
    Ok(time_met && rss_met)
}
