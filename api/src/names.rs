//! Kubernetes object names, checked before they are used: a name read from another object must
//! never change the path or query of a request built from it.

/// The pattern of a DNS-1123 subdomain, for CEL rules (lengths are checked apart).
pub const DNS_SUBDOMAIN_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Whether `name` is a DNS-1123 subdomain: at most 253 characters of dot-separated labels of
/// lowercase alphanumerics and `-`, alphanumeric at both ends. Most object names are.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_label)
}

/// Whether `name` is a DNS-1123 label (at most 63 characters, no dots): namespaces, API versions.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && is_label(name)
}

/// Whether `kind` can be a kind: ASCII letters and digits, starting with a letter.
pub fn is_kind(kind: &str) -> bool {
    kind.len() <= 63
        && kind.starts_with(|c: char| c.is_ascii_alphabetic())
        && kind.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        for good in ["c", "c-1", "a.b", "0abc", "x".repeat(63).as_str()] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in [
            "",
            "x?",
            "x/y",
            "X",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a b",
            "a%2F",
            "a#",
            "x".repeat(254).as_str(),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn labels_and_kinds() {
        assert!(is_dns_label("v1beta1"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"x".repeat(64)));
        assert!(is_kind("KubeadmControlPlane"));
        assert!(!is_kind("Kind/../x"));
        assert!(!is_kind("1Kind"));
        assert!(!is_kind(""));
    }
}
