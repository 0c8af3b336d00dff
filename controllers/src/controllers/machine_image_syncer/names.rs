//! Deterministic MachineImage names and label value checks: pure, no client.
//!
//! A syncer-created image is named `<syncer>-<version>-<suffix>`, where the five-character suffix
//! is derived from the syncer's UID and the version. A retry after a crash, a race between two
//! reconciles or a stale cache therefore meets AlreadyExists instead of creating a second image.

use sha2::{Digest as _, Sha256};

/// Longest object name (a DNS subdomain).
pub const MAX_NAME: usize = 253;
/// Length of the generated suffix, as Kubernetes' `generateName`.
pub const SUFFIX_LEN: usize = 5;
/// Longest label value.
pub const MAX_LABEL_VALUE: usize = 63;

/// The alphabet of Kubernetes' `generateName` suffixes (no vowels, no look-alikes).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The five-character suffix of the image of `version` for the syncer `uid`.
pub fn suffix(uid: &str, version: &str) -> String {
    let digest = Sha256::new()
        .chain_update(uid.as_bytes())
        .chain_update([0])
        .chain_update(version.as_bytes())
        .finalize();
    digest
        .iter()
        .take(SUFFIX_LEN)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// The name of the image of `version` for the syncer `syncer` (whose UID is `uid`): lowercased,
/// with every character a DNS subdomain does not allow mapped to `-`, a `.` that does not sit
/// between two alphanumerics mapped to `-`, and the prefix cut so that the whole fits in 253
/// characters. Distinct versions map to distinct names through the suffix, which hashes the
/// version as written.
pub fn image_name(syncer: &str, uid: &str, version: &str) -> String {
    let mut prefix: Vec<u8> = format!("{syncer}-{version}")
        .to_ascii_lowercase()
        .bytes()
        .map(|b| {
            if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' {
                b
            } else {
                b'-'
            }
        })
        .collect();
    prefix.truncate(MAX_NAME - SUFFIX_LEN - 1);
    // A DNS label (between dots) starts and ends with an alphanumeric.
    let alnum = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    for i in 0..prefix.len() {
        if prefix[i] == b'.' && !(alnum(prefix.get(i.wrapping_sub(1))) && alnum(prefix.get(i + 1)))
        {
            prefix[i] = b'-';
        }
    }
    while prefix.first().is_some_and(|b| !b.is_ascii_alphanumeric()) {
        prefix.remove(0);
    }
    let mut name = String::from_utf8_lossy(&prefix).into_owned();
    if !name.is_empty() {
        name.push('-');
    }
    name.push_str(&suffix(uid, version));
    name
}

/// Whether `value` is a valid label value: at most 63 characters of `[A-Za-z0-9._-]`, beginning
/// and ending with an alphanumeric (or empty).
pub fn valid_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    value.len() <= MAX_LABEL_VALUE
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A DNS subdomain, as the API server checks `metadata.name`.
    fn is_dns_subdomain(name: &str) -> bool {
        let re =
            regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
                .unwrap();
        name.len() <= MAX_NAME && re.is_match(name)
    }

    #[test]
    fn names_follow_the_v06_shape() {
        let name = image_name("machineimagesyncer-sample", "uid-1", "v1.27.6");
        assert!(
            name.starts_with("machineimagesyncer-sample-v1.27.6-"),
            "{name}"
        );
        assert_eq!(name.len(), "machineimagesyncer-sample-v1.27.6-".len() + 5);
        assert_eq!(
            name,
            image_name("machineimagesyncer-sample", "uid-1", "v1.27.6")
        );
        assert_ne!(
            name,
            image_name("machineimagesyncer-sample", "uid-2", "v1.27.6")
        );
        assert!(
            name[name.len() - 5..]
                .bytes()
                .all(|b| ALPHABET.contains(&b))
        );
    }

    #[test]
    fn invalid_characters_map_deterministically() {
        let plus = image_name("s", "u", "v1.28.0-RC.1+Build.7");
        assert!(plus.starts_with("s-v1.28.0-rc.1-build.7-"), "{plus}");
        assert!(is_dns_subdomain(&plus), "{plus}");
        // The same mapped text from two versions: the suffix tells them apart.
        let dash = image_name("s", "u", "v1.28.0-rc.1-build.7");
        assert_ne!(plus, dash);
        let dots = image_name("s", "u", "1.2.3-a.-b..c");
        assert!(is_dns_subdomain(&dots), "{dots}");
        let long = image_name(&"a".repeat(253), "u", "v1.27.1");
        assert_eq!(long.len(), MAX_NAME);
        assert!(is_dns_subdomain(&long), "{long}");
    }

    #[test]
    fn label_values() {
        for ok in [
            "",
            "v1.27.6",
            "a",
            "machineimagesyncer-sample",
            &"a".repeat(63),
        ] {
            assert!(valid_label_value(ok), "{ok}");
        }
        for bad in [
            "v1.28.0+build",
            "-a",
            "a-",
            ".a",
            "a b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(!valid_label_value(bad), "{bad}");
        }
    }

    fn syncer_name() -> impl Strategy<Value = String> {
        prop::string::string_regex("[a-z0-9]([-a-z0-9]{0,60}[a-z0-9])?(\\.[a-z0-9]{1,20}){0,8}")
            .unwrap()
    }

    fn version() -> impl Strategy<Value = String> {
        prop::string::string_regex(
            "v?(0|[1-9][0-9]{0,3})\\.(0|[1-9][0-9]{0,3})\\.(0|[1-9][0-9]{0,3})(-[0-9A-Za-z-]{1,8}(\\.[0-9A-Za-z-]{1,8}){0,2})?(\\+[0-9A-Za-z-]{1,8}(\\.[0-9A-Za-z-]{1,8}){0,2})?",
        )
        .unwrap()
    }

    proptest! {
        #[test]
        fn names_are_deterministic_valid_and_distinct(
            syncer in syncer_name(),
            uid in "[a-f0-9-]{36}",
            a in version(),
            b in version(),
        ) {
            let name = image_name(&syncer, &uid, &a);
            prop_assert_eq!(&name, &image_name(&syncer, &uid, &a));
            prop_assert!(is_dns_subdomain(&name), "{}", name);
            if a != b {
                prop_assert_ne!(name, image_name(&syncer, &uid, &b));
            }
        }
    }
}
