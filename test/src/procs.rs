//! Child processes that never outlive the test binary.
//!
//! Every process the harness starts is recorded in a pid file. A watchdog shell, started once
//! per test binary in its own process group, polls the test binary's pid; when the binary is
//! gone (normal exit, panic, `kill -9`), it sends SIGKILL to every recorded pid and removes the
//! harness's scratch directory. Processes owned by a test are also killed by their guard's
//! `Drop`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Scratch space and the pid registry shared by everything the harness starts.
struct Registry {
    dir: PathBuf,
    pid_file: PathBuf,
    pids: Mutex<BTreeSet<u32>>,
}

static REGISTRY: OnceLock<Result<Registry, String>> = OnceLock::new();

const WATCHDOG: &str = r#"parent="$1"; pids="$2"; dir="$3"
while kill -0 "$parent" 2>/dev/null; do sleep 0.5; done
if [ -f "$pids" ]; then
  for p in $(cat "$pids"); do kill -9 "$p" 2>/dev/null; done
fi
rm -rf "$dir"
"#;

fn registry() -> Result<&'static Registry> {
    REGISTRY
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("kubernetes-upgrader-e2e-")
                .tempdir()
                .map_err(|e| format!("creating the harness scratch directory: {e}"))?
                .keep();
            let pid_file = dir.join("pids");
            fs::write(&pid_file, "").map_err(|e| format!("writing {}: {e}", pid_file.display()))?;
            let mut watchdog = Command::new("sh");
            watchdog
                .arg("-c")
                .arg(WATCHDOG)
                .arg("e2e-watchdog")
                .arg(std::process::id().to_string())
                .arg(&pid_file)
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // Its own process group: a Ctrl-C that kills the tests must not kill the cleaner.
            std::os::unix::process::CommandExt::process_group(&mut watchdog, 0);
            watchdog
                .spawn()
                .map_err(|e| format!("starting the watchdog shell (sh): {e}"))?;
            Ok(Registry {
                dir,
                pid_file,
                pids: Mutex::new(BTreeSet::new()),
            })
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

impl Registry {
    fn update(&self, f: impl FnOnce(&mut BTreeSet<u32>)) -> Result<()> {
        let mut pids = self
            .pids
            .lock()
            .map_err(|_| anyhow::anyhow!("pid registry poisoned"))?;
        f(&mut pids);
        let text: String = pids.iter().fold(String::new(), |mut text, p| {
            text.push_str(&p.to_string());
            text.push('\n');
            text
        });
        let tmp = self.pid_file.with_extension("tmp");
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.pid_file)
            .with_context(|| format!("writing {}", self.pid_file.display()))
    }
}

/// The harness's scratch directory for this test binary, removed by the watchdog at exit.
pub fn scratch_dir() -> Result<&'static Path> {
    Ok(&registry()?.dir)
}

/// A fresh directory under [`scratch_dir`].
pub fn scratch_subdir(prefix: &str) -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(scratch_dir()?)?
        .keep();
    Ok(dir)
}

/// A free loopback port.
pub use kubernetes_upgrader_testkit::free_port;

/// Sends `signal` (such as `TERM` or `KILL`) to `pid` with the shell's `kill`.
pub fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\"",
            "kill",
            signal,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -s {signal} {pid} failed: {status}");
    }
    Ok(())
}

/// A child process with its output in a log file. It is killed (SIGKILL) when dropped, and
/// by the watchdog if the test binary dies first.
pub struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl ChildGuard {
    /// Starts `command` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        let registry = registry()?;
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        let pid = child.id();
        registry.update(|pids| {
            pids.insert(pid);
        })?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            exit: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file holding stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `max_bytes` of the log.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        tail(&self.log, max_bytes)
    }

    /// The exit status if the process has exited (and has been reaped).
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
            if self.exit.is_some() {
                let pid = self.child.id();
                registry()?.update(|pids| {
                    pids.remove(&pid);
                })?;
            }
        }
        Ok(self.exit)
    }

    /// Sends a signal (`TERM`, `KILL`, …) unless the process has already exited.
    pub fn signal(&mut self, signal: &str) -> Result<()> {
        if self.try_exit()?.is_some() {
            return Ok(());
        }
        send_signal(self.pid(), signal)
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        // `Child::kill` sends SIGKILL; it can only fail if the child was already reaped.
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.exit = Some(status);
        let pid = self.child.id();
        registry()?.update(|pids| {
            pids.remove(&pid);
        })?;
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The last `max_bytes` of a file, lossily decoded; empty if unreadable.
pub fn tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
