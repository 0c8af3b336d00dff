//! A streaming scanner for `Packages` indexes.
//!
//! Bytes are pushed in chunks of any size; the scanner keeps only the current partial line and
//! the three fields it needs from the current paragraph, so its memory does not grow with the
//! index. It reads `Package`, `Version` and `Architecture` (field names case-insensitive) and
//! never assumes UTF-8: only a matching paragraph's `Version` has to be UTF-8 to be used.
//!
//! Handling of malformed input, decided here once:
//! - a line longer than [`MAX_LINE_BYTES`] stops the scan ([`ScanError::LineTooLong`], reported
//!   as `IndexTooLarge`);
//! - a paragraph with a line that is neither `Name: value` nor a continuation, an empty name, a
//!   repeated or empty `Package`/`Version`/`Architecture`, or a continuation of one of those three
//!   is *malformed*: it is skipped and counted, and the scan goes on;
//! - a matching paragraph with no `Version`, or a `Version` that is not UTF-8, is counted as
//!   skipped, like a version that is not semver;
//! - an index with malformed paragraphs and not a single well-formed one with a `Package` field
//!   is not a Packages index at all (an HTML error page, binary data): the caller reports
//!   `ParseError`.
//!
//! Lines end in LF or CRLF; lines holding only spaces and tabs separate paragraphs, as an empty
//! line does.

use std::collections::HashMap;
use std::sync::Arc;

use memchr::{memchr, memchr_iter};

use super::versions::kubernetes_version;

/// Longest line accepted, in bytes. Real indexes stay far below (long `Description` lines are
/// a few KiB).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Longest `Version` value kept, in bytes. Real ones are a few dozen bytes; a longer value is
/// skipped (and counted) without being copied.
pub const MAX_VERSION_BYTES: usize = 256;

/// Most distinct matching Debian versions accepted from one index.
pub const MAX_DISTINCT_MATCHES: usize = 65_536;

/// Why a scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanError {
    /// A line longer than [`MAX_LINE_BYTES`].
    LineTooLong {
        /// 1-based line number.
        line: u64,
    },
    /// More than [`MAX_DISTINCT_MATCHES`] distinct matching versions.
    TooManyMatches,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LineTooLong { line } => {
                write!(f, "line {line} is longer than {MAX_LINE_BYTES} bytes")
            }
            Self::TooManyMatches => {
                write!(
                    f,
                    "more than {MAX_DISTINCT_MATCHES} distinct matching versions"
                )
            }
        }
    }
}

/// What a finished scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// `vX.Y.Z`, de-duplicated and sorted ascending by semver.
    pub versions: Vec<String>,
    /// Distinct raw `Version` values of the matching paragraphs, in order of first appearance.
    pub debian_versions: Vec<String>,
    /// Matching paragraphs whose version is missing, not UTF-8, or not semver.
    pub skipped: u64,
    /// Matching paragraphs.
    pub matched: u64,
    /// All paragraphs.
    pub paragraphs: u64,
    /// Well-formed paragraphs with a `Package` field.
    pub with_package: u64,
    /// Malformed paragraphs (skipped).
    pub malformed: u64,
    /// Bytes scanned.
    pub bytes: u64,
}

impl ScanSummary {
    /// True when the input had content but not one usable paragraph: not a Packages index.
    pub fn is_unusable(&self) -> bool {
        self.with_package == 0 && self.malformed > 0
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Package,
    Version,
    Architecture,
}

#[derive(Default)]
struct Value {
    set: bool,
    /// Longer than the slot keeps: set, but its bytes were not copied.
    too_long: bool,
    bytes: Vec<u8>,
}

impl Value {
    fn reset(&mut self) {
        self.set = false;
        self.too_long = false;
        self.bytes.clear();
    }
}

/// The push-based scanner. Feed it with [`Scanner::feed`], then call [`Scanner::finish`].
pub struct Scanner {
    package: Vec<u8>,
    architecture: Vec<u8>,
    partial: Vec<u8>,
    line_number: u64,
    in_paragraph: bool,
    malformed: bool,
    last_tracked: bool,
    values: [Value; 3],
    /// Each distinct matching version once: shared with `order`, not copied.
    seen: HashMap<Arc<str>, bool>,
    order: Vec<Arc<str>>,
    parsed: Vec<semver::Version>,
    summary: ScanSummary,
}

impl Scanner {
    /// A scanner keeping paragraphs for `package` (exact, case-sensitive) on `architecture`
    /// (or `all`, or no `Architecture` field).
    pub fn new(package: &str, architecture: &str) -> Self {
        Self {
            package: package.as_bytes().to_vec(),
            architecture: architecture.as_bytes().to_vec(),
            partial: Vec::new(),
            line_number: 0,
            in_paragraph: false,
            malformed: false,
            last_tracked: false,
            values: [Value::default(), Value::default(), Value::default()],
            seen: HashMap::new(),
            order: Vec::new(),
            parsed: Vec::new(),
            summary: ScanSummary::default(),
        }
    }

    /// Scans the next bytes of the index.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ScanError> {
        self.summary.bytes += data.len() as u64;
        if !self.partial.is_empty() {
            let Some(end) = memchr(b'\n', data) else {
                self.check_length(self.partial.len() + data.len())?;
                self.partial.extend_from_slice(data);
                return Ok(());
            };
            self.check_length(self.partial.len() + end)?;
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&data[..end]);
            let result = self.line(&line);
            line.clear();
            self.partial = line;
            result?;
            data = &data[end + 1..];
        }
        let mut start = 0;
        for end in memchr_iter(b'\n', data) {
            self.check_length(end - start)?;
            self.line(&data[start..end])?;
            start = end + 1;
        }
        let rest = &data[start..];
        self.check_length(rest.len())?;
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// Ends the scan: the last line need not end in a newline.
    pub fn finish(mut self) -> Result<ScanSummary, ScanError> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line)?;
        }
        self.end_paragraph()?;
        self.seen.clear();
        self.summary.debian_versions = self.order.iter().map(ToString::to_string).collect();
        self.parsed.sort();
        self.parsed.dedup();
        self.summary.versions = self.parsed.iter().map(|v| format!("v{v}")).collect();
        Ok(self.summary)
    }

    fn check_length(&self, length: usize) -> Result<(), ScanError> {
        if length > MAX_LINE_BYTES {
            Err(ScanError::LineTooLong {
                line: self.line_number + 1,
            })
        } else {
            Ok(())
        }
    }

    fn line(&mut self, line: &[u8]) -> Result<(), ScanError> {
        self.line_number += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(&first) = line.first() else {
            return self.end_paragraph();
        };
        if first == b' ' || first == b'\t' {
            if line.iter().all(|&b| b == b' ' || b == b'\t') {
                return self.end_paragraph();
            }
            // A continuation: only the fields we read must not be folded.
            if !self.in_paragraph || self.last_tracked {
                self.in_paragraph = true;
                self.malformed = true;
            }
            return Ok(());
        }
        self.in_paragraph = true;
        self.last_tracked = false;
        let colon = match memchr(b':', line) {
            Some(0) | None => {
                self.malformed = true;
                return Ok(());
            }
            Some(colon) => colon,
        };
        let name = &line[..colon];
        let slot = match name.len() {
            7 if name.eq_ignore_ascii_case(b"package") => Slot::Package,
            7 if name.eq_ignore_ascii_case(b"version") => Slot::Version,
            12 if name.eq_ignore_ascii_case(b"architecture") => Slot::Architecture,
            _ => return Ok(()),
        };
        self.last_tracked = true;
        let value = line[colon + 1..].trim_ascii();
        let stored = &mut self.values[slot as usize];
        if stored.set || value.is_empty() {
            self.malformed = true;
        } else if slot == Slot::Version && value.len() > MAX_VERSION_BYTES {
            stored.set = true;
            stored.too_long = true;
        } else {
            stored.set = true;
            stored.bytes.extend_from_slice(value);
        }
        Ok(())
    }

    fn end_paragraph(&mut self) -> Result<(), ScanError> {
        if !self.in_paragraph {
            return Ok(());
        }
        self.summary.paragraphs += 1;
        let result = if self.malformed {
            self.summary.malformed += 1;
            Ok(())
        } else if self.values[Slot::Package as usize].set {
            self.summary.with_package += 1;
            let package = &self.values[Slot::Package as usize].bytes;
            let architecture = &self.values[Slot::Architecture as usize];
            if *package == self.package
                && (!architecture.set
                    || architecture.bytes == self.architecture
                    || architecture.bytes == b"all")
            {
                self.matched()
            } else {
                Ok(())
            }
        } else {
            Ok(())
        };
        self.in_paragraph = false;
        self.malformed = false;
        self.last_tracked = false;
        for value in &mut self.values {
            value.reset();
        }
        result
    }

    fn matched(&mut self) -> Result<(), ScanError> {
        self.summary.matched += 1;
        let version = &self.values[Slot::Version as usize];
        let Some(raw) = (version.set && !version.too_long)
            .then(|| std::str::from_utf8(&version.bytes).ok())
            .flatten()
        else {
            self.summary.skipped += 1;
            return Ok(());
        };
        if let Some(&semver) = self.seen.get(raw) {
            if !semver {
                self.summary.skipped += 1;
            }
            return Ok(());
        }
        if self.seen.len() >= MAX_DISTINCT_MATCHES {
            return Err(ScanError::TooManyMatches);
        }
        let parsed = kubernetes_version(raw);
        let shared: Arc<str> = Arc::from(raw);
        self.seen.insert(Arc::clone(&shared), parsed.is_some());
        self.order.push(shared);
        match parsed {
            Some(version) => self.parsed.push(version),
            None => self.summary.skipped += 1,
        }
        Ok(())
    }
}

/// Scans a whole in-memory index (tests and small inputs).
pub fn scan_bytes(
    data: &[u8],
    package: &str,
    architecture: &str,
) -> Result<ScanSummary, ScanError> {
    let mut scanner = Scanner::new(package, architecture);
    scanner.feed(data)?;
    scanner.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
Package: cri-tools
Version: 1.27.0-1.1
Architecture: amd64

Package: kubeadm
Version: 1.27.0-2.1
Architecture: amd64
Description: Command-line utility
 for administering a Kubernetes cluster
 .
 with continuation lines

Package: kubeadm
Version: 1.27.0-2.1
Architecture: arm64

package: kubeadm
VERSION: 1.27.1-1.1
Architecture: amd64

Package: kubeadm
Version: 1.27.1-1.1
Architecture: ppc64el
";

    #[test]
    fn reference_fixture_yields_two_versions_for_amd64() {
        let summary = scan_bytes(FIXTURE.as_bytes(), "kubeadm", "amd64").unwrap();
        assert_eq!(summary.versions, ["v1.27.0", "v1.27.1"]);
        assert_eq!(summary.debian_versions, ["1.27.0-2.1", "1.27.1-1.1"]);
        assert_eq!(summary.skipped, 0);
        assert_eq!(summary.paragraphs, 5);
        let arm = scan_bytes(FIXTURE.as_bytes(), "kubeadm", "arm64").unwrap();
        assert_eq!(arm.versions, ["v1.27.0"]);
    }

    #[test]
    fn every_chunking_gives_the_same_result() {
        let whole = scan_bytes(FIXTURE.as_bytes(), "kubeadm", "amd64").unwrap();
        for size in 1..40 {
            let mut scanner = Scanner::new("kubeadm", "amd64");
            for chunk in FIXTURE.as_bytes().chunks(size) {
                scanner.feed(chunk).unwrap();
            }
            assert_eq!(scanner.finish().unwrap(), whole, "chunk size {size}");
        }
    }

    #[test]
    fn all_and_missing_architecture_match_and_package_is_case_sensitive() {
        let index = "Package: kubeadm\nVersion: 1.30.0-1.1\nArchitecture: all\n\n\
                     Package: kubeadm\nVersion: 1.30.1-1.1\n\n\
                     Package: Kubeadm\nVersion: 1.30.2-1.1\n\n\
                     Package: kubeadm-extra\nVersion: 1.30.3-1.1\n";
        let summary = scan_bytes(index.as_bytes(), "kubeadm", "s390x").unwrap();
        assert_eq!(summary.versions, ["v1.30.0", "v1.30.1"]);
    }

    #[test]
    fn crlf_whitespace_separators_and_no_trailing_newline() {
        let index = "Package: kubeadm\r\nVersion: 1.29.0-1.1 \r\n \t\r\nPackage: kubeadm\r\nVersion:1.29.1-1.1";
        let summary = scan_bytes(index.as_bytes(), "kubeadm", "amd64").unwrap();
        assert_eq!(summary.versions, ["v1.29.0", "v1.29.1"]);
        assert_eq!(summary.paragraphs, 2);
    }

    #[test]
    fn malformed_paragraphs_are_skipped_and_counted() {
        let index = "Package: kubeadm\nVersion: 1.1.0-1\nthis line has no colon\n\n\
                     Package: kubeadm\nPackage: kubeadm\nVersion: 1.2.0-1\n\n\
                     Package: kubeadm\nVersion:\n 1.3.0-1\n\n\
                     : empty name\nPackage: kubeadm\nVersion: 1.4.0-1\n\n\
                     \x20leading continuation\nPackage: kubeadm\nVersion: 1.5.0-1\n\n\
                     Package: kubeadm\nVersion: 1.6.0-1\n";
        let summary = scan_bytes(index.as_bytes(), "kubeadm", "amd64").unwrap();
        assert_eq!(summary.versions, ["v1.6.0"]);
        assert_eq!(summary.malformed, 5);
        assert!(!summary.is_unusable());
    }

    #[test]
    fn binary_and_html_input_is_unusable() {
        let html = b"<html>\n<body>Service unavailable</body>\n</html>\n";
        assert!(scan_bytes(html, "kubeadm", "amd64").unwrap().is_unusable());
        let binary: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        assert!(
            scan_bytes(&binary, "kubeadm", "amd64")
                .unwrap()
                .is_unusable()
        );
        let empty = scan_bytes(b"", "kubeadm", "amd64").unwrap();
        assert!(!empty.is_unusable());
        assert_eq!(empty.matched, 0);
    }

    #[test]
    fn non_utf8_is_harmless() {
        let mut index =
            b"Package: kubeadm\nVersion: 1.2.3-1\nDescription: caf\xe9 \xff\xfe\n\n".to_vec();
        index.extend_from_slice(b"Package: kubeadm\nVersion: 1.2.\xff-1\n\n");
        index.extend_from_slice(b"Package: kube\xffadm\nVersion: 1.2.5-1\n\n");
        let summary = scan_bytes(&index, "kubeadm", "amd64").unwrap();
        assert_eq!(summary.versions, ["v1.2.3"]);
        assert_eq!(summary.skipped, 1);
    }

    #[test]
    fn duplicates_counted_once_and_skips_per_paragraph() {
        let index = "Package: kubeadm\nVersion: 1.2.3-1\n\nPackage: kubeadm\nVersion: 1.2.3-1\n\n\
                     Package: kubeadm\nVersion: 1:1.2.3-1\n\nPackage: kubeadm\nVersion: 2.0~rc1-1\n\n\
                     Package: kubeadm\nVersion: 2.0~rc1-1\n\nPackage: kubeadm\nArchitecture: amd64\n";
        let summary = scan_bytes(index.as_bytes(), "kubeadm", "amd64").unwrap();
        assert_eq!(summary.versions, ["v1.2.3"]);
        assert_eq!(
            summary.debian_versions,
            ["1.2.3-1", "1:1.2.3-1", "2.0~rc1-1"]
        );
        assert_eq!(summary.skipped, 3);
        assert_eq!(summary.matched, 6);
    }

    #[test]
    fn overlong_versions_are_skipped_and_not_kept() {
        let long = format!("1.2.3-{}", "1".repeat(MAX_VERSION_BYTES));
        let edge = format!("1.2.4-{}", "1".repeat(MAX_VERSION_BYTES - 6));
        let index = format!(
            "Package: kubeadm\nVersion: {long}\n\nPackage: kubeadm\nVersion: {edge}\n\n\
             Package: kubeadm\nVersion: {long}\n"
        );
        let summary = scan_bytes(index.as_bytes(), "kubeadm", "amd64").unwrap();
        assert_eq!(summary.versions, ["v1.2.4"]);
        assert_eq!(summary.debian_versions, [edge]);
        assert_eq!(summary.skipped, 2);
        assert_eq!(summary.matched, 3);
    }

    #[test]
    fn long_lines_stop_the_scan() {
        let mut index = b"Package: kubeadm\nDescription: ".to_vec();
        index.resize(index.len() + MAX_LINE_BYTES + 10, b'a');
        let mut scanner = Scanner::new("kubeadm", "amd64");
        let mut result = Ok(());
        for chunk in index.chunks(4096) {
            result = scanner.feed(chunk);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ScanError::LineTooLong { line: 2 }));
        assert_eq!(
            scan_bytes(&index, "kubeadm", "amd64"),
            Err(ScanError::LineTooLong { line: 2 })
        );
    }
}
