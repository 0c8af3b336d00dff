//! Mapping Debian package versions to Kubernetes versions (§5.2 and §6.21 of the v0.6 spec).

use debian_packaging::package_version::PackageVersion;

/// Maps a Debian version `[epoch:]upstream[-revision]` to `vMAJOR.MINOR.PATCH`.
///
/// The epoch and the revision are dropped. The upstream part must be strict semver with no
/// pre-release or build part (`1.2.3+dfsg`, `2.0~rc1` and four-part versions give `None`), and
/// the whole string must be a valid Debian version.
pub fn kubernetes_version(debian: &str) -> Option<semver::Version> {
    let parsed = PackageVersion::parse(debian).ok()?;
    if parsed.debian_revision() == Some("") {
        return None;
    }
    let upstream = parsed.upstream_version();
    // semver accepts `1.2.3-rc.1` and `1.2.3+b`; the Debian upstream part never reaches here with
    // a hyphen unless a revision follows, so refusing anything but digits and dots is enough.
    if !upstream.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let version = semver::Version::parse(upstream).ok()?;
    (version.pre.is_empty() && version.build.is_empty()).then_some(version)
}

/// The `vX.Y.Z` strings for the given Debian versions: de-duplicated, sorted ascending by
/// semver. Returns the strings and how many inputs were skipped as not semver.
pub fn map_versions<'a>(debian_versions: impl IntoIterator<Item = &'a str>) -> (Vec<String>, u64) {
    let mut skipped = 0u64;
    let mut parsed: Vec<semver::Version> = Vec::new();
    for raw in debian_versions {
        match kubernetes_version(raw) {
            Some(version) => parsed.push(version),
            None => skipped += 1,
        }
    }
    parsed.sort();
    parsed.dedup();
    (parsed.iter().map(|v| format!("v{v}")).collect(), skipped)
}

/// For each Kubernetes version the Debian versions map to, the highest Debian version (dpkg
/// ordering: epoch, upstream, revision) that maps to it; sorted ascending by the Kubernetes
/// version, as [`map_versions`] sorts. Versions that do not map are left out.
pub fn highest_debian_versions<'a>(
    debian_versions: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, String)> {
    let mut highest: std::collections::BTreeMap<semver::Version, (PackageVersion, &'a str)> =
        std::collections::BTreeMap::new();
    for raw in debian_versions {
        let (Some(version), Ok(parsed)) = (kubernetes_version(raw), PackageVersion::parse(raw))
        else {
            continue;
        };
        match highest.entry(version) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert((parsed, raw));
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                if parsed > slot.get().0 {
                    slot.insert((parsed, raw));
                }
            }
        }
    }
    highest
        .into_iter()
        .map(|(version, (_, raw))| (format!("v{version}"), raw.to_owned()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_debian_revision_stands_for_each_version() {
        let input = [
            "1.30.1-1.1",
            "1.9.0-00",
            "1:1.30.0-1.1",
            "1.30.1-1.10",
            "1.30.1-1.2",
            "1.30.0-2.1",
            "1.2.3+dfsg",
        ];
        let pairs = highest_debian_versions(input);
        assert_eq!(
            pairs,
            [
                ("v1.9.0".to_owned(), "1.9.0-00".to_owned()),
                // The epoch outranks any revision.
                ("v1.30.0".to_owned(), "1:1.30.0-1.1".to_owned()),
                // 1.10 > 1.2 > 1.1 in dpkg ordering, not in string ordering.
                ("v1.30.1".to_owned(), "1.30.1-1.10".to_owned()),
            ]
        );
        let versions: Vec<String> = pairs.into_iter().map(|(v, _)| v).collect();
        assert_eq!(
            versions,
            map_versions(input).0,
            "the same order as versions"
        );
    }

    #[test]
    fn maps_pkgs_k8s_io_and_legacy_versions() {
        for (debian, expected) in [
            ("1.31.2-1.1", Some("1.31.2")),
            ("1:1.31.2-1.1", Some("1.31.2")),
            ("1.27.3-00", Some("1.27.3")),
            ("1.27.0-2.1", Some("1.27.0")),
            ("1.30.0", Some("1.30.0")),
            ("10:1.2.3-1", Some("1.2.3")),
            ("1.2.3+dfsg-1", None),
            ("2.0~rc1-1", None),
            ("1.2.3.4-1", None),
            ("1.2-1", None),
            ("1.02.3-1", None),
            ("1.2.3-rc.1-1", None),
            ("x:1.2.3-1", None),
            ("", None),
            ("v1.2.3", None),
            ("1.2.3-", None),
        ] {
            assert_eq!(
                kubernetes_version(debian).map(|v| v.to_string()).as_deref(),
                expected,
                "{debian}"
            );
        }
    }

    #[test]
    fn dedups_sorts_and_counts() {
        let (versions, skipped) = map_versions([
            "1.30.1-1.1",
            "1.9.0-00",
            "1:1.30.1-1.1",
            "1.30.0-2.1",
            "1.2.3+dfsg",
            "1.30.1-1.2",
        ]);
        assert_eq!(versions, ["v1.9.0", "v1.30.0", "v1.30.1"]);
        assert_eq!(skipped, 1);
    }
}
