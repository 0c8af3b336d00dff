//! Packages indexes: a large synthetic one for benchmarks, and their compressions.

use std::fmt::Write as _;
use std::io::Write as _;

use kubernetes_upgrader::debian::index::Compression;

/// Deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

const WORDS: &[&str] = &[
    "library",
    "runtime",
    "support",
    "files",
    "for",
    "the",
    "GNU",
    "C",
    "compiler",
    "shared",
    "development",
    "headers",
    "documentation",
    "utilities",
    "network",
    "kernel",
    "cluster",
    "container",
    "daemon",
    "client",
    "server",
    "package",
    "provides",
    "implementation",
    "of",
    "and",
    "with",
    "a",
    "an",
    "to",
    "Python",
    "module",
    "bindings",
    "data",
    "tools",
    "command",
    "line",
    "interface",
    "graphical",
    "toolkit",
    "system",
    "service",
    "manager",
    "secure",
];

const ARCHES: &[&str] = &["amd64", "arm64", "ppc64el", "s390x", "all"];

/// A deterministic, realistic Packages index of `paragraphs` paragraphs (about 850 bytes each): a few Kubernetes packages with many
/// versions on every architecture, in a sea of ordinary packages.
pub fn synthetic_index(paragraphs: usize) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = String::with_capacity(paragraphs * 900);
    let kube = [
        "kubeadm",
        "kubelet",
        "kubectl",
        "cri-tools",
        "kubernetes-cni",
    ];
    for i in 0..paragraphs {
        let arch = ARCHES[rng.below(ARCHES.len())];
        let (name, version) = if i % 97 == 0 {
            let minor = 20 + rng.below(13);
            let patch = rng.below(15);
            let name = kube[rng.below(kube.len())];
            (name.to_owned(), format!("1.{minor}.{patch}-1.1"))
        } else {
            let base = WORDS[rng.below(WORDS.len())];
            (
                format!("lib{base}{}-{}", rng.below(400), rng.below(9)),
                format!(
                    "{}.{}.{}-{}",
                    rng.below(10),
                    rng.below(40),
                    rng.below(30),
                    1 + rng.below(4)
                ),
            )
        };
        let _ = write!(
            out,
            "Package: {name}\nSource: {name}-src\nVersion: {version}\nInstalled-Size: {}\n\
             Maintainer: Debian Maintainers <maintainers-{}@lists.debian.org>\nArchitecture: {arch}\n\
             Depends: libc6 (>= 2.{}), libgcc-s1 (>= 3.0), lib{}{} (>= {}.{})\n",
            rng.below(90_000),
            rng.below(500),
            rng.below(40),
            WORDS[rng.below(WORDS.len())],
            rng.below(50),
            rng.below(5),
            rng.below(20),
        );
        out.push_str("Description: ");
        for _ in 0..6 + rng.below(6) {
            out.push_str(WORDS[rng.below(WORDS.len())]);
            out.push(' ');
        }
        out.push('\n');
        for _ in 0..2 + rng.below(3) {
            out.push(' ');
            for _ in 0..8 + rng.below(6) {
                out.push_str(WORDS[rng.below(WORDS.len())]);
                out.push(' ');
            }
            out.push('\n');
        }
        let _ = write!(
            out,
            "Multi-Arch: same\nHomepage: https://example.org/{name}\nDescription-md5: {:032x}\n\
             Section: libs\nPriority: optional\nFilename: pool/main/{}/{name}/{name}_{version}_{arch}.deb\n\
             Size: {}\nMD5sum: {:032x}\nSHA256: {:016x}{:016x}{:016x}{:016x}\n\n",
            u128::from(rng.next()) << 64 | u128::from(rng.next()),
            &name[..1],
            rng.below(5_000_000),
            u128::from(rng.next()) << 64 | u128::from(rng.next()),
            rng.next(),
            rng.next(),
            rng.next(),
            rng.next(),
        );
    }
    out.into_bytes()
}

/// Compresses `data` as an index file would be.
pub fn compress(data: &[u8], compression: Compression) -> anyhow::Result<Vec<u8>> {
    Ok(match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data)?;
            encoder.finish()?
        }
        Compression::Xz => {
            let mut encoder = xz2::write::XzEncoder::new(Vec::new(), 6);
            encoder.write_all(data)?;
            encoder.finish()?
        }
    })
}
