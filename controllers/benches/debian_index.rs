//! Benchmark of Debian index ingestion (decompress + scan + map), side by side with `zcat`,
//! `xzcat` and debian-packaging's control-paragraph parser on the same input, plus the peak RSS
//! of our ingestion measured in a child process at 1x and 2x index size.
//!
//! Run: `cargo bench -p kubernetes-upgrader --bench debian_index`
//! Environment: `BENCH_RUNS` (default 3, best of), `BENCH_PARAGRAPHS` (default 64000).

#![allow(clippy::cast_precision_loss)] // sizes and rates are only displayed

use std::fs::File;
use std::io::{BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use kubernetes_upgrader::debian::Compression;
use kubernetes_upgrader::debian::index::ingest_reader;
use kubernetes_upgrader::debian::versions::map_versions;
use kubernetes_upgrader_testkit::debian::synthetic_index;

const PACKAGE: &str = "kubeadm";
const ARCH: &str = "amd64";
const MAX_BYTES: u64 = 1 << 40;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let result = if args.first().map(String::as_str) == Some("--child") {
        child(&args[1..])
    } else {
        parent()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Child mode: ingest one file, then print the peak RSS (VmHWM, kB) and the version count.
fn child(args: &[String]) -> BenchResult<()> {
    let [mode, path] = args else {
        return Err("usage: --child gz|xz|none FILE".into());
    };
    let count = match mode.as_str() {
        "none" => 0,
        mode => {
            let compression = if mode == "gz" {
                Compression::Gzip
            } else {
                Compression::Xz
            };
            let file = File::open(path)?;
            let ingested = ingest_reader(file, path, compression, PACKAGE, ARCH, MAX_BYTES, None)?;
            ingested.summary.versions.len()
        }
    };
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmHWM in /proc/self/status")?;
    println!("{hwm} {count}");
    Ok(())
}

struct Files {
    plain: PathBuf,
    gz: PathBuf,
    xz: PathBuf,
    plain_len: u64,
    gz_len: u64,
    xz_len: u64,
}

fn write_files(dir: &Path, tag: &str, paragraphs: usize) -> BenchResult<Files> {
    let index = synthetic_index(paragraphs);
    let plain = dir.join(format!("Packages-{tag}"));
    let gz = dir.join(format!("Packages-{tag}.gz"));
    let xz = dir.join(format!("Packages-{tag}.xz"));
    std::fs::write(&plain, &index)?;
    let mut encoder =
        flate2::write::GzEncoder::new(File::create(&gz)?, flate2::Compression::new(9));
    encoder.write_all(&index)?;
    encoder.finish()?;
    let mut encoder = xz2::write::XzEncoder::new(File::create(&xz)?, 6);
    encoder.write_all(&index)?;
    encoder.finish()?;
    Ok(Files {
        plain_len: std::fs::metadata(&plain)?.len(),
        gz_len: std::fs::metadata(&gz)?.len(),
        xz_len: std::fs::metadata(&xz)?.len(),
        plain,
        gz,
        xz,
    })
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> BenchResult<T>) -> BenchResult<(Duration, T)> {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        let value = f()?;
        best = best.min(started.elapsed());
        last = Some(value);
    }
    Ok((best, last.ok_or("no run")?))
}

fn ours(path: &Path, compression: Compression) -> BenchResult<Vec<String>> {
    let file = File::open(path)?;
    let ingested = ingest_reader(
        file,
        &path.display().to_string(),
        compression,
        PACKAGE,
        ARCH,
        MAX_BYTES,
        None,
    )?;
    Ok(ingested.summary.versions)
}

fn tool(program: &str, path: &Path) -> BenchResult<()> {
    let status = Command::new(program)
        .arg(path)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("{program} failed: {status}").into());
    }
    Ok(())
}

/// debian-packaging's control-paragraph parser over the same decompressed stream (flate2's
/// reader), with the same filter and mapping.
fn debian_packaging_parser(path: &Path) -> BenchResult<Vec<String>> {
    use debian_packaging::control::ControlParagraphReader;
    let reader = BufReader::with_capacity(
        64 * 1024,
        flate2::read::MultiGzDecoder::new(BufReader::new(File::open(path)?)),
    );
    let mut raw = Vec::new();
    for paragraph in ControlParagraphReader::new(reader) {
        let paragraph = paragraph?;
        if paragraph.field_str("Package") != Some(PACKAGE) {
            continue;
        }
        match paragraph.field_str("Architecture") {
            None | Some("all" | ARCH) => {}
            Some(_) => continue,
        }
        if let Some(version) = paragraph.field_str("Version") {
            raw.push(version.to_owned());
        }
    }
    Ok(map_versions(raw.iter().map(String::as_str)).0)
}

fn child_rss(mode: &str, path: &Path) -> BenchResult<u64> {
    let output = Command::new(std::env::current_exe()?)
        .arg("--child")
        .arg(mode)
        .arg(path)
        .output()?;
    if !output.status.success() {
        return Err(format!("child failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    let text = String::from_utf8(output.stdout)?;
    let kb = text
        .split_whitespace()
        .next()
        .ok_or("empty child output")?
        .parse::<u64>()?;
    Ok(kb)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn parent() -> BenchResult<()> {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let paragraphs: usize = std::env::var("BENCH_PARAGRAPHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64_000);
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let one = write_files(dir.path(), "1x", paragraphs)?;
    let two = write_files(dir.path(), "2x", paragraphs * 2)?;
    println!(
        "debian_index: {paragraphs} paragraphs, {:.1} MiB plain, {:.1} MiB .gz (-9), {:.1} MiB .xz (-6); \
         2x: {:.1} MiB plain; generated in {:.1?}; best of {runs} runs; {} CPUs",
        mib(one.plain_len),
        mib(one.gz_len),
        mib(one.xz_len),
        mib(two.plain_len),
        started.elapsed(),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
    );

    let (zcat, ()) = best_of(runs, || tool("zcat", &one.gz))?;
    let (xzcat, ()) = best_of(runs, || tool("xzcat", &one.xz))?;
    let (ours_gz, versions_gz) = best_of(runs, || ours(&one.gz, Compression::Gzip))?;
    let (ours_xz, versions_xz) = best_of(runs, || ours(&one.xz, Compression::Xz))?;
    let (ours_plain, versions_plain) = best_of(runs, || ours(&one.plain, Compression::None))?;
    let (dp, versions_dp) = best_of(runs, || debian_packaging_parser(&one.gz))?;
    if versions_gz != versions_xz || versions_gz != versions_plain || versions_gz != versions_dp {
        return Err("the readers disagree on the versions".into());
    }

    let rss_base = child_rss("none", &one.gz)?;
    let rss = [
        ("gz 1x", child_rss("gz", &one.gz)?),
        ("xz 1x", child_rss("xz", &one.xz)?),
        ("gz 2x", child_rss("gz", &two.gz)?),
        ("xz 2x", child_rss("xz", &two.xz)?),
    ];

    let secs = |d: Duration| d.as_secs_f64();
    let rate = |d: Duration| mib(one.plain_len) / d.as_secs_f64();
    println!(
        "{} kubeadm versions for {ARCH}: {}",
        versions_gz.len(),
        versions_gz.join(" ")
    );
    println!();
    println!(
        "{:<58} {:>9} {:>12} {:>10}",
        "wall time (decompressed MiB/s)", "seconds", "MiB/s", "vs zcat"
    );
    let rows = [
        ("zcat FILE.gz >/dev/null", zcat),
        ("ours: .gz ingestion (decompress+scan+map)", ours_gz),
        ("debian-packaging ControlParagraphReader on .gz", dp),
        ("xzcat FILE.xz >/dev/null", xzcat),
        ("ours: .xz ingestion (decompress+scan+map)", ours_xz),
        ("ours: plain ingestion (scan+map only)", ours_plain),
    ];
    for (name, time) in rows {
        println!(
            "{name:<58} {:>9.3} {:>12.1} {:>9.2}x",
            secs(time),
            rate(time),
            secs(time) / secs(zcat)
        );
    }
    println!();
    println!(
        "ours .gz / zcat = {:.2}; ours .xz / xzcat = {:.2}; debian-packaging / ours .gz = {:.2}",
        secs(ours_gz) / secs(zcat),
        secs(ours_xz) / secs(xzcat),
        secs(dp) / secs(ours_gz)
    );
    println!();
    println!("peak RSS of ingestion in a child process (VmHWM)");
    println!(
        "{:<20} {:>10}",
        "child doing nothing",
        format!("{:.1} MiB", rss_base as f64 / 1024.0)
    );
    for (name, kb) in rss {
        println!(
            "{name:<20} {:>10}",
            format!("{:.1} MiB", kb as f64 / 1024.0)
        );
    }
    let worst = rss.iter().map(|(_, kb)| *kb).max().unwrap_or(0);
    println!();
    println!(
        "targets: .gz ingestion no slower than zcat: {}; peak RSS < 16 MiB at 1x and 2x: {} (max {:.1} MiB)",
        if ours_gz <= zcat { "met" } else { "MISSED" },
        if worst < 16 * 1024 { "met" } else { "MISSED" },
        worst as f64 / 1024.0
    );
    Ok(())
}
