//! Kubernetes version strings: the strict form candidates must have, and the lenient form the
//! upgrader reads from Plans and Clusters.

use semver::Version;

/// A prerelease identifier (RE2): numeric without a leading zero, or alphanumeric (semver 2.0.0).
pub const PRERELEASE_IDENTIFIER: &str = "(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)";
/// A build metadata identifier (RE2).
pub const BUILD_IDENTIFIER: &str = "[0-9A-Za-z-]+";

/// The regular expression (RE2) that accepts exactly what [`parse_strict`] accepts, for the
/// admission rule on `MachineImage.spec.version`.
pub fn strict_pattern() -> String {
    // 19 digits keep every number within u64.
    let number = "(0|[1-9][0-9]{0,18})";
    let pre = PRERELEASE_IDENTIFIER;
    format!(
        "^v?{number}[.]{number}[.]{number}(-{pre}([.]{pre})*)?([+]{BUILD_IDENTIFIER}([.]{BUILD_IDENTIFIER})*)?$"
    )
}

/// Parses a candidate version strictly: one optional leading `v`, then
/// `MAJOR.MINOR.PATCH[-pre][+build]`. Anything else is `None`, and callers skip it.
pub fn parse_strict(text: &str) -> Option<Version> {
    Version::parse(text.strip_prefix('v').unwrap_or(text)).ok()
}

/// Parses leniently, as v0.6 read Plan and Cluster versions: the `v` is optional and missing
/// minor or patch parts are zero (`v1.27` is 1.27.0).
pub fn parse_lenient(text: &str) -> Option<Version> {
    let bare = text.trim().strip_prefix('v').unwrap_or(text.trim());
    if let Some(v) = parse_strict(bare) {
        return Some(v);
    }
    let (core, suffix) = match bare.find(['-', '+']) {
        Some(at) => bare.split_at(at),
        None => (bare, ""),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let mut padded = parts.clone();
    padded.resize(3, "0");
    Version::parse(&format!("{}{suffix}", padded.join("."))).ok()
}

/// The form written to the API: `v` followed by the canonical semver string.
pub fn with_v(version: &Version) -> String {
    format!("v{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_accepts_only_full_semver() {
        assert_eq!(parse_strict("v1.27.3"), Some(Version::new(1, 27, 3)));
        assert_eq!(parse_strict("1.27.3"), Some(Version::new(1, 27, 3)));
        assert!(parse_strict("v1.28.0-rc.1+abc").is_some());
        for bad in [
            "1.27", "1.0.0.1", "1.0.0p", "b1.2.3", "vv1.2.3", "", "01.2.3",
        ] {
            assert_eq!(parse_strict(bad), None, "{bad}");
        }
    }

    #[test]
    fn lenient_fills_missing_parts() {
        assert_eq!(parse_lenient("v1.27"), Some(Version::new(1, 27, 0)));
        assert_eq!(parse_lenient("1"), Some(Version::new(1, 0, 0)));
        assert_eq!(parse_lenient("v1.27.3"), Some(Version::new(1, 27, 3)));
        assert_eq!(
            parse_lenient("1.28-rc.1").map(|v| v.to_string()),
            Some("1.28.0-rc.1".into())
        );
        assert_eq!(parse_lenient("one"), None);
        assert_eq!(parse_lenient("1.2.3.4"), None);
    }

    #[test]
    fn with_v_keeps_one_v() {
        let v = parse_lenient("v1.28.0-rc.1+b").unwrap();
        assert_eq!(with_v(&v), "v1.28.0-rc.1+b");
    }
}
