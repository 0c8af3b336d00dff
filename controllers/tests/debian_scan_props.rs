//! Property tests of the streaming index scanner: it never panics on arbitrary bytes (however
//! they are chunked, compressed or not), and on well-formed generated indexes it agrees with a
//! simple reference parser that reads the whole text at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;

use kubernetes_upgrader::debian::Compression;
use kubernetes_upgrader::debian::index::ingest_reader;
use kubernetes_upgrader::debian::scan::{MAX_VERSION_BYTES, ScanSummary, Scanner};
use kubernetes_upgrader::debian::versions::kubernetes_version;
use proptest::prelude::*;

fn scan_chunked(data: &[u8], splits: &[usize]) -> Option<ScanSummary> {
    let mut scanner = Scanner::new("kubeadm", "amd64");
    let mut rest = data;
    let mut sizes = splits.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let (head, tail) = rest.split_at(size);
        scanner.feed(head).ok()?;
        rest = tail;
    }
    scanner.finish().ok()
}

/// What a reader of the whole text expects: `(debian_versions, versions, skipped, matched)`.
fn reference(text: &str) -> (Vec<String>, Vec<String>, u64, u64) {
    let mut paragraphs: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim_matches([' ', '\t']).is_empty() {
            paragraphs.push(Vec::new());
        } else if line.starts_with([' ', '\t']) {
            // continuation of a field we do not read
        } else {
            let (name, value) = line.split_once(':').unwrap();
            paragraphs
                .last_mut()
                .unwrap()
                .push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let mut raw = Vec::new();
    let mut seen = HashSet::new();
    let mut versions = Vec::new();
    let mut skipped = 0;
    let mut matched = 0;
    for paragraph in paragraphs {
        let get = |name: &str| {
            paragraph
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if get("package") != Some("kubeadm") {
            continue;
        }
        if !matches!(get("architecture"), None | Some("amd64" | "all")) {
            continue;
        }
        matched += 1;
        let Some(version) = get("version").filter(|v| v.len() <= MAX_VERSION_BYTES) else {
            // Missing, or too long to be a real version: skipped and not kept.
            skipped += 1;
            continue;
        };
        match kubernetes_version(version) {
            Some(v) => versions.push(v),
            None => skipped += 1,
        }
        if seen.insert(version.to_owned()) {
            raw.push(version.to_owned());
        }
    }
    versions.sort();
    versions.dedup();
    (
        raw,
        versions.iter().map(|v| format!("v{v}")).collect(),
        skipped,
        matched,
    )
}

fn field_name(tracked: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(tracked.to_owned()),
        Just(tracked.to_ascii_lowercase()),
        Just(tracked.to_ascii_uppercase()),
    ]
}

fn version() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..3, 0u8..40, 0u8..20).prop_map(|(a, b, c)| format!("{a}.{b}.{c}-1.1")),
        (0u8..3, 0u8..40, 0u8..20).prop_map(|(a, b, c)| format!("1:{a}.{b}.{c}-00")),
        Just("1.2.3+dfsg-1".to_owned()),
        Just("2.0~rc1-1".to_owned()),
        Just("1.2.3.4".to_owned()),
        // Well-formed, but longer than any real version: skipped, never kept.
        (MAX_VERSION_BYTES - 5..MAX_VERSION_BYTES + 40)
            .prop_map(|length| format!("1.2.3-{}", "1".repeat(length - 6))),
    ]
}

/// One well-formed paragraph as its lines.
fn paragraph() -> impl Strategy<Value = Vec<String>> {
    (
        prop_oneof![
            Just("kubeadm"),
            Just("kubelet"),
            Just("Kubeadm"),
            Just("cri-tools")
        ],
        prop::option::of(prop_oneof![Just("amd64"), Just("arm64"), Just("all")]),
        prop::option::weighted(0.9, version()),
        field_name("Package"),
        field_name("Version"),
        field_name("Architecture"),
        prop::collection::vec(("[A-Z][a-z-]{1,12}", "[ -~]{0,40}", 0usize..3), 0..4),
        any::<u64>(),
    )
        .prop_map(|(package, arch, version, pn, vn, an, others, order)| {
            // Groups of lines: a field and its continuation lines.
            let mut groups = vec![vec![format!("{pn}: {package}")]];
            if let Some(arch) = arch {
                groups.push(vec![format!("{an}:{arch}")]);
            }
            if let Some(version) = version {
                groups.push(vec![format!("{vn}: {version}  ")]);
            }
            for (name, value, continuations) in others {
                let lower = name.to_ascii_lowercase();
                if ["package", "version", "architecture"].contains(&lower.as_str()) {
                    continue;
                }
                let mut group = vec![format!("{name}: {value}")];
                for i in 0..continuations {
                    group.push(if i % 2 == 0 {
                        " .".to_owned()
                    } else {
                        "\tmore text".to_owned()
                    });
                }
                groups.push(group);
            }
            // Move the package field somewhere else, deterministically per case.
            let to = usize::try_from(order % groups.len() as u64).unwrap_or(0);
            let first = groups.remove(0);
            groups.insert(to, first);
            groups.concat()
        })
}

fn index() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(paragraph(), 0..30),
        prop_oneof![Just("\n"), Just("\r\n")],
        prop_oneof![Just(""), Just(" "), Just("\t ")],
        any::<bool>(),
    )
        .prop_map(|(paragraphs, eol, blank, trailing)| {
            let mut text = String::new();
            for (i, lines) in paragraphs.iter().enumerate() {
                if i > 0 {
                    text.push_str(blank);
                    text.push_str(eol);
                }
                for line in lines {
                    text.push_str(line);
                    text.push_str(eol);
                }
            }
            if !trailing {
                text = text.trim_end_matches(['\r', '\n']).to_owned();
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_bytes(
        data in prop::collection::vec(any::<u8>(), 0..4096),
        splits in prop::collection::vec(1usize..700, 1..8),
    ) {
        let _ = scan_chunked(&data, &splits);
        for compression in [Compression::None, Compression::Gzip, Compression::Xz] {
            let _ = ingest_reader(&data[..], "prop", compression, "kubeadm", "amd64", 1 << 20, None);
        }
    }

    #[test]
    fn never_panics_on_index_like_noise(
        pieces in prop::collection::vec(
            prop::sample::select(vec![
                &b"Package: kubeadm"[..], b"Version: 1.2.3-1", b"Architecture: all", b"\n", b"\r\n",
                b" ", b"\t", b":", b"\xff\xfe", b"package:", b"\x00", b"1:", b"-",
            ]),
            0..200,
        ),
        splits in prop::collection::vec(1usize..64, 1..8),
    ) {
        let data: Vec<u8> = pieces.concat();
        if let Some(summary) = scan_chunked(&data, &splits) {
            prop_assert!(summary.skipped <= summary.matched);
            prop_assert!(summary.versions.len() <= summary.debian_versions.len());
        }
    }

    #[test]
    fn agrees_with_the_reference_parser(
        text in index(),
        splits in prop::collection::vec(1usize..300, 1..8),
    ) {
        let summary = scan_chunked(text.as_bytes(), &splits).unwrap();
        let (raw, versions, skipped, matched) = reference(&text);
        prop_assert_eq!(summary.malformed, 0);
        prop_assert_eq!(summary.debian_versions, raw);
        prop_assert_eq!(summary.versions, versions);
        prop_assert_eq!(summary.skipped, skipped);
        prop_assert_eq!(summary.matched, matched);
    }
}
