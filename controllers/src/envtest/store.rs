//! setup-envtest's folder: `<data dir>/kubebuilder-envtest/k8s/X.Y.Z-OS-ARCH/{etcd,…}`.
//!
//! The data dir follows setup-envtest: `$XDG_DATA_HOME` or `$HOME/.local/share` on Linux,
//! `$HOME/Library/Application Support` (and `io.kubebuilder.envtest`) on macOS. Everything
//! half-done lives under a hidden `.envtest-…` name in the same `k8s/` folder (which no lookup
//! reads) and becomes a version folder only by one rename.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{BINARIES, EnvtestError, Platform, REQUIRED, VersionSpec};

/// Largest single binary taken from an archive (kube-apiserver 1.32 is about 90 MiB).
pub const MAX_BINARY_BYTES: u64 = 512 << 20;
/// Largest decompressed stream read from an archive.
pub const MAX_UNPACKED_BYTES: u64 = 2 << 30;
/// Most entries read from an archive (the published ones hold five).
pub const MAX_ENTRIES: usize = 256;
/// Staging files and folders older than this belong to a run that was killed.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);
/// Prefix of every staging name.
const STAGING_PREFIX: &str = ".envtest-";

/// setup-envtest's store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// setup-envtest's default store for this machine.
    pub fn default_location() -> Result<Store, EnvtestError> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = if cfg!(target_os = "macos") {
            var("HOME")
                .ok_or(EnvtestError::NoStore("$HOME is not set"))?
                .join("Library/Application Support/io.kubebuilder.envtest")
        } else {
            var("XDG_DATA_HOME")
                .or_else(|| var("HOME").map(|home| home.join(".local/share")))
                .ok_or(EnvtestError::NoStore(
                    "neither $XDG_DATA_HOME nor $HOME is set",
                ))?
                .join("kubebuilder-envtest")
        };
        Ok(Store { root })
    }

    /// A store at `root` (setup-envtest's `--bin-dir`).
    pub fn at(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The folder that holds one folder per version and platform.
    pub fn versions_dir(&self) -> PathBuf {
        self.root.join("k8s")
    }

    /// The folder of `version` on `platform`, whether it exists or not.
    pub fn folder(&self, version: &semver::Version, platform: Platform) -> PathBuf {
        self.versions_dir().join(format!(
            "{}.{}.{}-{}",
            version.major,
            version.minor,
            version.patch,
            platform.suffix()
        ))
    }

    /// The newest folder for `platform` that holds a `kube-apiserver` and whose version `wanted`
    /// matches (any version when `None`). etcd may still come from `PATH`, as the harness allows.
    pub fn installed(
        &self,
        wanted: Option<&VersionSpec>,
        platform: Platform,
    ) -> Option<(semver::Version, PathBuf)> {
        let suffix = format!("-{}", platform.suffix());
        fs::read_dir(self.versions_dir())
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let version = semver::Version::parse(name.strip_suffix(&suffix)?).ok()?;
                let dir = entry.path();
                (wanted.is_none_or(|w| w.matches(&version)) && dir.join("kube-apiserver").is_file())
                    .then_some((version, dir))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
    }

    /// A new, empty staging file for the archive of `version` (removed when dropped).
    pub fn staging_file(
        &self,
        version: &semver::Version,
        platform: Platform,
    ) -> Result<(Staged, File), EnvtestError> {
        let dir = self.versions_dir();
        fs::create_dir_all(&dir).map_err(EnvtestError::io(&dir))?;
        let path = self.staging_path(version, platform, "tar.gz");
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(EnvtestError::io(&path))?;
        Ok((Staged::new(path), file))
    }

    /// Unpacks the archive at `archive` (already verified) into the folder of `version`: into a
    /// staging folder first, then renamed into place. Returns the folder.
    pub fn install(
        &self,
        archive: &Path,
        name: &str,
        version: &semver::Version,
        platform: Platform,
    ) -> Result<PathBuf, EnvtestError> {
        let staging = Staged::new(self.staging_path(version, platform, "unpack"));
        fs::create_dir(&staging.path).map_err(EnvtestError::io(&staging.path))?;
        unpack(archive, name, &staging.path)?;
        let target = self.folder(version, platform);
        if fs::rename(&staging.path, &target).is_ok() {
            staging.keep();
            return Ok(target);
        }
        if target.join("kube-apiserver").is_file() {
            // Another run put it there meanwhile; ours is dropped.
            return Ok(target);
        }
        // An incomplete folder of that name (not ours): set it aside, then swap ours in.
        let aside = Staged::new(self.staging_path(version, platform, "old"));
        fs::rename(&target, &aside.path).map_err(EnvtestError::io(&target))?;
        fs::rename(&staging.path, &target).map_err(EnvtestError::io(&target))?;
        staging.keep();
        Ok(target)
    }

    /// Removes staging files and folders left by runs that were killed (older than
    /// [`STALE_AFTER`]); a run still writing keeps its files fresh.
    pub fn sweep_stale(&self) {
        let Ok(entries) = fs::read_dir(self.versions_dir()) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let stale = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .is_some_and(|m| {
                    SystemTime::now()
                        .duration_since(m)
                        .is_ok_and(|age| age > STALE_AFTER)
                });
            if stale
                && entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(STAGING_PREFIX)
            {
                Staged::new(entry.path()).remove();
            }
        }
    }

    fn staging_path(&self, version: &semver::Version, platform: Platform, kind: &str) -> PathBuf {
        let folder = self.folder(version, platform);
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.versions_dir().join(format!(
            "{STAGING_PREFIX}{name}-{}-{:08x}.{kind}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }
}

/// A staging file or folder, removed when dropped unless kept.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    keep: bool,
}

impl Staged {
    fn new(path: PathBuf) -> Staged {
        Staged { path, keep: false }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) {
        self.keep = true;
    }

    fn remove(&self) {
        if self.path.is_dir() {
            let _ = fs::remove_dir_all(&self.path);
        } else {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.keep {
            self.remove();
        }
    }
}

/// A reader that fails once more than `left` bytes came through it.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "it unpacks to more than {MAX_UNPACKED_BYTES} bytes"
            ))
        })?;
        Ok(n)
    }
}

/// Unpacks the [`BINARIES`] of a gzip'd tar into `into`, executable, and checks that the
/// [`REQUIRED`] ones are there. Only regular files whose name is one of them are taken, wherever
/// they sit in the archive (the published layout is `controller-tools/envtest/<name>`); a path
/// with `..` or a root, or a second file of one name, refuses the archive.
pub fn unpack(archive: &Path, name: &str, into: &Path) -> Result<Vec<&'static str>, EnvtestError> {
    let refuse = |message: String| EnvtestError::Unpack {
        archive: name.to_owned(),
        message,
    };
    let file = File::open(archive).map_err(EnvtestError::io(archive))?;
    let gzip = flate2::read::GzDecoder::new(BufReader::new(file));
    let mut tar = tar::Archive::new(Bounded {
        inner: gzip,
        left: MAX_UNPACKED_BYTES,
    });
    let mut taken = BTreeSet::new();
    let entries = tar.entries().map_err(|e| refuse(e.to_string()))?;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(refuse(format!("it holds more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| refuse(e.to_string()))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| refuse(e.to_string()))?
            .into_owned();
        let Some(binary) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| BINARIES.into_iter().find(|b| *b == n))
        else {
            continue;
        };
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(refuse(format!("unsafe path {}", path.display())));
        }
        if !taken.insert(binary) {
            return Err(refuse(format!("it holds {binary} twice")));
        }
        let size = entry.header().size().map_err(|e| refuse(e.to_string()))?;
        if size > MAX_BINARY_BYTES {
            return Err(refuse(format!(
                "{binary} is larger than {MAX_BINARY_BYTES} bytes"
            )));
        }
        let out_path = into.join(binary);
        let mut out = executable(&out_path)?;
        io::copy(&mut (&mut entry).take(MAX_BINARY_BYTES), &mut out)
            .map_err(|e| refuse(format!("{binary}: {e}")))?;
        out.sync_all().map_err(EnvtestError::io(&out_path))?;
    }
    let missing: Vec<&str> = REQUIRED
        .into_iter()
        .filter(|b| !taken.contains(b))
        .collect();
    if !missing.is_empty() {
        return Err(refuse(format!("it holds no {}", missing.join(" and no "))));
    }
    Ok(taken.into_iter().collect())
}

fn executable(path: &Path) -> Result<File, EnvtestError> {
    let mut options = File::options();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o755);
    }
    options.open(path).map_err(EnvtestError::io(path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::envtest::{Arch, Os};

    const LINUX_AMD64: Platform = Platform {
        os: Os::Linux,
        arch: Arch::Amd64,
    };

    /// A gzip'd tar of `(path, type, contents)`.
    fn archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/bin/true").unwrap();
            }
            // `append_data` refuses `..`; write the name into the header directly.
            let name = path.as_bytes();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn published(extra: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut entries = vec![
            ("controller-tools/", tar::EntryType::Directory, &b""[..]),
            (
                "controller-tools/envtest/",
                tar::EntryType::Directory,
                &b""[..],
            ),
            (
                "controller-tools/envtest/etcd",
                tar::EntryType::Regular,
                &b"etcd"[..],
            ),
            (
                "controller-tools/envtest/kube-apiserver",
                tar::EntryType::Regular,
                &b"apiserver"[..],
            ),
            (
                "controller-tools/envtest/kubectl",
                tar::EntryType::Regular,
                &b"kubectl"[..],
            ),
        ];
        entries.extend_from_slice(extra);
        archive(&entries)
    }

    fn staged_listing(store: &Store) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(store.versions_dir())
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

    fn install(store: &Store, bytes: &[u8]) -> Result<PathBuf, EnvtestError> {
        let version = semver::Version::new(1, 32, 2);
        let (staged, _) = store.staging_file(&version, LINUX_AMD64).unwrap();
        fs::write(staged.path(), bytes).unwrap();
        store.install(
            staged.path(),
            "envtest-v1.32.2-linux-amd64.tar.gz",
            &version,
            LINUX_AMD64,
        )
    }

    #[test]
    fn the_published_layout_unpacks_into_the_version_folder_executable() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::at(home.path());
        let junk = [(
            "controller-tools/envtest/README",
            tar::EntryType::Regular,
            &b"x"[..],
        )];
        let folder = install(&store, &published(&junk)).unwrap();
        assert_eq!(folder, home.path().join("k8s/1.32.2-linux-amd64"));
        assert_eq!(
            fs::read(folder.join("kube-apiserver")).unwrap(),
            b"apiserver"
        );
        assert_eq!(fs::read(folder.join("etcd")).unwrap(), b"etcd");
        assert_eq!(fs::read(folder.join("kubectl")).unwrap(), b"kubectl");
        assert!(!folder.join("README").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(folder.join("etcd"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111, "{mode:o}");
        }
        // Nothing staged is left beside it.
        assert_eq!(staged_listing(&store), ["1.32.2-linux-amd64"]);
        assert_eq!(
            store.installed(Some(&"1.32".parse().unwrap()), LINUX_AMD64),
            Some((semver::Version::new(1, 32, 2), folder))
        );
    }

    #[test]
    fn a_bad_archive_leaves_no_folder_and_no_staging() {
        let regular = tar::EntryType::Regular;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not gzip at all".to_vec(), "unpacking"),
            (
                archive(&[("controller-tools/envtest/kube-apiserver", regular, b"a")]),
                "it holds no etcd",
            ),
            (
                archive(&[
                    ("controller-tools/envtest/kube-apiserver", regular, b"a"),
                    (
                        "controller-tools/envtest/etcd",
                        tar::EntryType::Symlink,
                        b"",
                    ),
                ]),
                "it holds no etcd",
            ),
            (
                published(&[("../../etcd", regular, b"evil")]),
                "unsafe path ../../etcd",
            ),
            (
                published(&[("other/etcd", regular, b"again")]),
                "it holds etcd twice",
            ),
        ];
        for (bytes, want) in cases {
            let home = tempfile::tempdir().unwrap();
            let store = Store::at(home.path());
            let error = install(&store, &bytes).unwrap_err().to_string();
            assert!(error.contains(want), "{want}: {error}");
            assert!(
                staged_listing(&store).is_empty(),
                "{want}: {:?}",
                staged_listing(&store)
            );
            assert!(!home.path().join("etcd").exists());
        }
    }

    #[test]
    fn an_incomplete_folder_is_replaced_and_a_complete_one_kept() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::at(home.path());
        let target = home.path().join("k8s/1.32.2-linux-amd64");
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("leftover"), b"x").unwrap();
        install(&store, &published(&[])).unwrap();
        assert!(!target.join("leftover").exists());
        assert_eq!(fs::read(target.join("etcd")).unwrap(), b"etcd");
        assert_eq!(staged_listing(&store), ["1.32.2-linux-amd64"]);

        // Complete already (another run won the race): kept as it is.
        fs::write(target.join("etcd"), b"theirs").unwrap();
        install(&store, &published(&[])).unwrap();
        assert_eq!(fs::read(target.join("etcd")).unwrap(), b"theirs");
        assert_eq!(staged_listing(&store), ["1.32.2-linux-amd64"]);
    }

    #[test]
    fn the_newest_complete_folder_for_the_platform_wins() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::at(home.path());
        for (name, complete) in [
            ("1.30.0-linux-amd64", true),
            ("1.32.13-linux-amd64", true),
            ("1.32.2-linux-amd64", true),
            ("1.33.0-linux-amd64", false),
            ("1.99.0-darwin-arm64", true),
            ("not-a-version-linux-amd64", true),
            (".envtest-1.40.0-linux-amd64-1-0.unpack", true),
        ] {
            let dir = store.versions_dir().join(name);
            fs::create_dir_all(&dir).unwrap();
            if complete {
                fs::write(dir.join("kube-apiserver"), b"").unwrap();
            }
        }
        let folder = |name: &str| store.versions_dir().join(name);
        assert_eq!(
            store.installed(None, LINUX_AMD64).map(|(_, d)| d),
            Some(folder("1.32.13-linux-amd64"))
        );
        assert_eq!(
            store
                .installed(Some(&"1.30".parse().unwrap()), LINUX_AMD64)
                .map(|(_, d)| d),
            Some(folder("1.30.0-linux-amd64"))
        );
        assert_eq!(
            store.installed(Some(&"1.33".parse().unwrap()), LINUX_AMD64),
            None
        );
        let darwin = Platform {
            os: Os::Darwin,
            arch: Arch::Arm64,
        };
        assert_eq!(
            store.installed(None, darwin).map(|(_, d)| d),
            Some(folder("1.99.0-darwin-arm64"))
        );
        assert_eq!(
            Store::at(home.path().join("absent")).installed(None, LINUX_AMD64),
            None
        );
    }

    #[test]
    fn stale_staging_is_swept_and_fresh_staging_kept() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::at(home.path());
        let version = semver::Version::new(1, 32, 2);
        let (fresh, _) = store.staging_file(&version, LINUX_AMD64).unwrap();
        let old = store
            .versions_dir()
            .join(".envtest-1.32.2-linux-amd64-1-00000000.unpack");
        fs::create_dir_all(old.join("inner")).unwrap();
        let long_ago = SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
        File::open(&old).unwrap().set_modified(long_ago).unwrap();
        let unrelated = store.versions_dir().join("notes.txt");
        fs::write(&unrelated, b"x").unwrap();
        File::options()
            .write(true)
            .open(&unrelated)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        store.sweep_stale();
        assert!(!old.exists());
        assert!(fresh.path().exists());
        assert!(unrelated.exists());
    }
}
