//! Test support shared with the end-to-end crate: generated OpenPGP keys, signed Debian
//! repositories in both layouts, and a loopback HTTP server with fault injection.
//!
//! ```ignore
//! let key = TestKey::generate("archive")?;
//! let repo = RepoBuilder::flat().kubeadm("1.31.2-1.1", "amd64").signed_by(&key).build()?;
//! let server = RepoServer::start().await?;
//! server.publish(&repo);
//! // sync server.url() with key.keyring()?
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use chrono::SubsecRound as _;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use pgp::cleartext::CleartextSignedMessage;
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{SignatureConfig, SignatureType, Subpacket, SubpacketData};
use pgp::ser::Serialize as _;
use pgp::types::{PublicKeyTrait as _, SecretKeyTrait, Tag};
use pgp::{
    ArmorOptions, KeyType, SecretKeyParamsBuilder, SignedPublicKey, SignedSecretKey,
    StandaloneSignature, SubkeyParamsBuilder,
};
use sha2::{Digest as _, Sha256};

use kubernetes_upgrader::debian::Keyring;
use kubernetes_upgrader::debian::index::Compression;
use kubernetes_upgrader::debian::keyring::fingerprint_hex;

/// A generated OpenPGP key pair (Ed25519), optionally signing through a subkey, with knobs for
/// the hostile and broken cases: expiry, revocation, weak hashes and signature times.
#[derive(Clone)]
pub struct TestKey {
    secret: SignedSecretKey,
    public: SignedPublicKey,
    sign_with_subkey: bool,
    hash: HashAlgorithm,
    signed_at: Option<chrono::DateTime<chrono::Utc>>,
    signature_lifetime: Option<chrono::Duration>,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// How [`TestKey::generate_with`] makes a key.
#[derive(Clone, Debug, Default)]
pub struct KeyOptions {
    /// Sign through a signing subkey (the primary key only certifies).
    pub signing_subkey: bool,
    /// Creation time of the key (and subkey); now when unset.
    pub created: Option<jiff::Timestamp>,
    /// The primary key expires this long after its creation (`KeyExpirationTime`).
    pub expires_after: Option<std::time::Duration>,
    /// The subkey expires this long after its creation.
    pub subkey_expires_after: Option<std::time::Duration>,
}

fn chrono_time(time: jiff::Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(time.as_second(), 0).unwrap_or_default()
}

fn chrono_duration(duration: std::time::Duration) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX))
}

impl TestKey {
    /// A new key whose primary key signs. Every call gives a different key, so a second call
    /// is the usual way to get an untrusted key.
    pub fn generate(name: &str) -> anyhow::Result<TestKey> {
        Self::generate_with(name, &KeyOptions::default())
    }

    /// A new key whose primary key only certifies; signatures are made by its signing subkey.
    pub fn generate_with_signing_subkey(name: &str) -> anyhow::Result<TestKey> {
        Self::generate_with(
            name,
            &KeyOptions {
                signing_subkey: true,
                ..KeyOptions::default()
            },
        )
    }

    /// A new key made as `options` say.
    pub fn generate_with(name: &str, options: &KeyOptions) -> anyhow::Result<TestKey> {
        let subkey = options.signing_subkey;
        let created = options
            .created
            .map_or_else(|| chrono::Utc::now().trunc_subsecs(0), chrono_time);
        let mut rng = rand08::thread_rng();
        let mut params = SecretKeyParamsBuilder::default();
        params
            .key_type(KeyType::EdDSALegacy)
            .can_certify(true)
            .can_sign(!subkey)
            .created_at(created)
            .primary_user_id(format!("{name} <{name}@repository.test>"));
        if subkey {
            params.subkey(
                SubkeyParamsBuilder::default()
                    .key_type(KeyType::EdDSALegacy)
                    .can_sign(true)
                    .created_at(created)
                    .build()
                    .map_err(|e| anyhow!("subkey parameters: {e}"))?,
            );
        }
        let params = params.build().map_err(|e| anyhow!("key parameters: {e}"))?;
        let secret = params
            .generate(&mut rng)
            .map_err(|e| anyhow!("generating key: {e}"))?
            .sign(&mut rng, String::new)
            .map_err(|e| anyhow!("self-signing key: {e}"))?;
        let mut public = secret
            .public_key()
            .sign(&mut rng, &secret, String::new)
            .map_err(|e| anyhow!("signing public key: {e}"))?;
        if let Some(after) = options.expires_after {
            for user in &mut public.details.users {
                user.signatures = re_signed(&user.signatures, after, |config| {
                    config.sign_certification(&secret, String::new, Tag::UserId, &user.id)
                })?;
            }
        }
        if let Some(after) = options.subkey_expires_after {
            for subkey in &mut public.public_subkeys {
                subkey.signatures = re_signed(&subkey.signatures, after, |config| {
                    config.sign_key_binding(&secret, String::new, &subkey.key)
                })?;
            }
        }
        Ok(TestKey {
            secret,
            public,
            sign_with_subkey: subkey,
            hash: HashAlgorithm::SHA2_256,
            signed_at: None,
            signature_lifetime: None,
        })
    }

    /// The same key with a valid revocation signature on its primary key.
    pub fn revoked(&self) -> anyhow::Result<TestKey> {
        let mut key = self.clone();
        let config = self.revocation_config(SignatureType::KeyRevocation);
        let revocation = config
            .sign_key(&self.secret, String::new, &self.public.primary_key)
            .map_err(|e| anyhow!("revoking: {e}"))?;
        key.public.details.revocation_signatures.push(revocation);
        Ok(key)
    }

    /// The same key with a valid revocation signature on its (first) subkey.
    pub fn subkey_revoked(&self) -> anyhow::Result<TestKey> {
        let mut key = self.clone();
        let config = self.revocation_config(SignatureType::SubkeyRevocation);
        let subkey = key
            .public
            .public_subkeys
            .first_mut()
            .ok_or_else(|| anyhow!("the key has no subkey"))?;
        let revocation = config
            .sign_key_binding(&self.secret, String::new, &subkey.key)
            .map_err(|e| anyhow!("revoking the subkey: {e}"))?;
        subkey.signatures.push(revocation);
        Ok(key)
    }

    fn revocation_config(&self, typ: SignatureType) -> SignatureConfig {
        let mut config = SignatureConfig::v4(typ, self.secret.algorithm(), HashAlgorithm::SHA2_256);
        config.hashed_subpackets = vec![
            Subpacket::regular(SubpacketData::IssuerFingerprint(self.secret.fingerprint())),
            Subpacket::regular(SubpacketData::SignatureCreationTime(
                chrono::Utc::now().trunc_subsecs(0),
            )),
        ];
        config.unhashed_subpackets = vec![Subpacket::regular(SubpacketData::Issuer(
            self.secret.key_id(),
        ))];
        config
    }

    /// The same key, signing with `hash` (for example SHA-1, which must be refused).
    #[must_use]
    pub fn hashing_with(&self, hash: HashAlgorithm) -> TestKey {
        TestKey {
            hash,
            ..self.clone()
        }
    }

    /// The same key, dating its signatures `at` instead of now.
    #[must_use]
    pub fn signing_at(&self, at: jiff::Timestamp) -> TestKey {
        TestKey {
            signed_at: Some(chrono_time(at)),
            ..self.clone()
        }
    }

    /// The same key, making signatures that expire `after` their creation.
    #[must_use]
    pub fn signatures_expiring_after(&self, after: std::time::Duration) -> TestKey {
        TestKey {
            signature_lifetime: Some(chrono_duration(after)),
            ..self.clone()
        }
    }

    /// The public key, ASCII-armored.
    pub fn armored_public_key(&self) -> anyhow::Result<String> {
        self.public
            .to_armored_string(ArmorOptions::default())
            .map_err(|e| anyhow!("armoring key: {e}"))
    }

    /// The public key as a binary (transferable) key, as in a `.gpg` keyring.
    pub fn binary_public_key(&self) -> anyhow::Result<Vec<u8>> {
        self.public
            .to_bytes()
            .map_err(|e| anyhow!("serializing key: {e}"))
    }

    /// Upper-case hex fingerprint of the primary key.
    pub fn fingerprint(&self) -> String {
        fingerprint_hex(&self.public)
    }

    /// A keyring trusting only this key.
    pub fn keyring(&self) -> anyhow::Result<Keyring> {
        Ok(Keyring::parse(self.armored_public_key()?.as_bytes())?)
    }

    fn sign(&self, typ: SignatureType, data: &[u8]) -> pgp::errors::Result<pgp::Signature> {
        let how = SignHow {
            typ,
            hash: self.hash,
            at: self
                .signed_at
                .unwrap_or_else(|| chrono::Utc::now().trunc_subsecs(0)),
            lifetime: self.signature_lifetime,
        };
        match self.secret.secret_subkeys.first() {
            Some(subkey) if self.sign_with_subkey => sign_with(&subkey.key, &how, data),
            _ => sign_with(&self.secret, &how, data),
        }
    }

    /// A detached, armored signature over `data` (as in `Release.gpg`).
    pub fn detached_signature(&self, data: &[u8]) -> anyhow::Result<String> {
        detached_signature(std::slice::from_ref(self), data)
    }
}

/// `signatures` made again with a `KeyExpirationTime` of `after`, by `sign`.
fn re_signed(
    signatures: &[pgp::Signature],
    after: std::time::Duration,
    sign: impl Fn(SignatureConfig) -> pgp::errors::Result<pgp::Signature>,
) -> anyhow::Result<Vec<pgp::Signature>> {
    signatures
        .iter()
        .map(|signature| {
            let mut config = signature.config.clone();
            config
                .hashed_subpackets
                .push(Subpacket::regular(SubpacketData::KeyExpirationTime(
                    chrono_duration(after),
                )));
            sign(config).map_err(|e| anyhow!("signing with an expiry: {e}"))
        })
        .collect()
}

struct SignHow {
    typ: SignatureType,
    hash: HashAlgorithm,
    at: chrono::DateTime<chrono::Utc>,
    lifetime: Option<chrono::Duration>,
}

fn sign_with(
    key: &impl SecretKeyTrait,
    how: &SignHow,
    data: &[u8],
) -> pgp::errors::Result<pgp::Signature> {
    let mut config = SignatureConfig::v4(how.typ, key.algorithm(), how.hash);
    config.hashed_subpackets = vec![
        Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint())),
        Subpacket::regular(SubpacketData::SignatureCreationTime(how.at)),
    ];
    if let Some(lifetime) = how.lifetime {
        config
            .hashed_subpackets
            .push(Subpacket::regular(SubpacketData::SignatureExpirationTime(
                lifetime,
            )));
    }
    config.unhashed_subpackets = vec![Subpacket::regular(SubpacketData::Issuer(key.key_id()))];
    config.sign(key, String::new, data)
}

/// An armored detached signature over `data` by each of `keys`.
pub fn detached_signature(keys: &[TestKey], data: &[u8]) -> anyhow::Result<String> {
    let mut armored = String::new();
    let signatures = keys
        .iter()
        .map(|k| {
            k.sign(SignatureType::Binary, data)
                .map(StandaloneSignature::new)
        })
        .collect::<pgp::errors::Result<Vec<_>>>()
        .map_err(|e| anyhow!("signing: {e}"))?;
    // One armor block holding every signature packet, as Debian's Release.gpg does.
    let mut packets = Vec::new();
    for signature in &signatures {
        signature
            .to_writer(&mut packets)
            .map_err(|e| anyhow!("serializing signature: {e}"))?;
    }
    armored.push_str(&armored_signatures(packets)?);
    Ok(armored)
}

/// Signature packets in one armored `PGP SIGNATURE` block.
fn armored_signatures(packets: Vec<u8>) -> anyhow::Result<String> {
    let mut out = Vec::new();
    pgp::armor::write(
        &RawPackets(packets),
        pgp::armor::BlockType::Signature,
        &mut out,
        None,
        true,
    )
    .map_err(|e| anyhow!("armoring signatures: {e}"))?;
    Ok(String::from_utf8(out)?)
}

struct RawPackets(Vec<u8>);

impl pgp::ser::Serialize for RawPackets {
    fn to_writer<W: std::io::Write>(&self, writer: &mut W) -> pgp::errors::Result<()> {
        writer.write_all(&self.0)?;
        Ok(())
    }
}

/// `text` clear-signed (as in `InRelease`) by each of `keys`.
pub fn clearsign(keys: &[TestKey], text: &str) -> anyhow::Result<String> {
    let message = CleartextSignedMessage::new_many(text, |data| {
        keys.iter()
            .map(|k| k.sign(SignatureType::Text, data))
            .collect()
    })
    .map_err(|e| anyhow!("clear-signing: {e}"))?;
    message
        .to_armored_string(ArmorOptions::default())
        .map_err(|e| anyhow!("armoring: {e}"))
}

/// `text` clear-signed with a flood of signature packets: `flood`'s signature `copies` times,
/// then one by each of `keys`. It costs one signing per key to make, however many copies.
pub fn clearsign_flooded(
    flood: &TestKey,
    copies: usize,
    keys: &[TestKey],
    text: &str,
) -> anyhow::Result<String> {
    let packets_of = |key: &TestKey| -> anyhow::Result<(String, Vec<u8>)> {
        let signed = clearsign(std::slice::from_ref(key), text)?;
        let at = signed
            .find("-----BEGIN PGP SIGNATURE-----")
            .context("the clear-signed text has no signature block")?;
        let mut packets = Vec::new();
        std::io::Read::read_to_end(
            &mut pgp::armor::Dearmor::new(&signed.as_bytes()[at..]),
            &mut packets,
        )
        .context("dearmoring the signature")?;
        Ok((signed[..at].to_owned(), packets))
    };
    let (head, one) = packets_of(flood)?;
    let mut packets = one.repeat(copies);
    for key in keys {
        packets.extend(packets_of(key)?.1);
    }
    Ok(format!("{head}{}", armored_signatures(packets)?))
}

/// A concatenation of binary public keys: a binary keyring with several keys.
pub fn binary_keyring(keys: &[&TestKey]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for key in keys {
        out.extend(key.binary_public_key()?);
    }
    Ok(out)
}

/// One package paragraph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestPackage {
    /// `Package`.
    pub name: String,
    /// `Version`.
    pub version: String,
    /// `Architecture`, or none to leave the field out.
    pub architecture: Option<String>,
}

/// Repository layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Everything in one directory (pkgs.k8s.io).
    Flat,
    /// `dists/SUITE/COMPONENT/binary-ARCH/`.
    Dists {
        /// Suite, for example `stable`.
        suite: String,
        /// Component, for example `main`.
        component: String,
    },
}

/// Builds the files of a Debian repository.
#[derive(Clone, Debug)]
pub struct RepoBuilder {
    layout: Layout,
    packages: Vec<TestPackage>,
    architectures: Vec<String>,
    compressions: Vec<Compression>,
    signers: Vec<TestKey>,
    in_release: bool,
    release_gpg: bool,
    valid_until: Option<jiff::Timestamp>,
    date: Option<jiff::Timestamp>,
    acquire_by_hash: bool,
    index_override: Option<Vec<u8>>,
    raw_indexes: BTreeMap<Compression, Vec<u8>>,
    unlisted: BTreeSet<Compression>,
}

impl RepoBuilder {
    /// A flat repository, unsigned, with plain, gz and xz indexes, InRelease and Release.gpg
    /// once a signer is added.
    pub fn flat() -> Self {
        Self::new(Layout::Flat)
    }

    /// A dists-layout repository.
    pub fn dists(suite: &str, component: &str) -> Self {
        Self::new(Layout::Dists {
            suite: suite.to_owned(),
            component: component.to_owned(),
        })
    }

    fn new(layout: Layout) -> Self {
        Self {
            layout,
            packages: Vec::new(),
            architectures: Vec::new(),
            compressions: vec![Compression::None, Compression::Gzip, Compression::Xz],
            signers: Vec::new(),
            in_release: true,
            release_gpg: true,
            valid_until: None,
            date: None,
            acquire_by_hash: false,
            index_override: None,
            raw_indexes: BTreeMap::new(),
            unlisted: BTreeSet::new(),
        }
    }

    /// Adds a paragraph; `architecture` `None` leaves the field out.
    #[must_use]
    pub fn package(mut self, name: &str, version: &str, architecture: Option<&str>) -> Self {
        self.packages.push(TestPackage {
            name: name.to_owned(),
            version: version.to_owned(),
            architecture: architecture.map(str::to_owned),
        });
        self
    }

    /// Adds a kubeadm paragraph.
    #[must_use]
    pub fn kubeadm(self, version: &str, architecture: &str) -> Self {
        self.package("kubeadm", version, Some(architecture))
    }

    /// Adds kubeadm, kubelet and kubectl for a version on each architecture, plus cri-tools.
    #[must_use]
    pub fn kubernetes(mut self, version: &str, architectures: &[&str]) -> Self {
        for architecture in architectures {
            for name in ["kubeadm", "kubelet", "kubectl"] {
                self = self.package(name, version, Some(architecture));
            }
            self = self.package("cri-tools", "1.30.1-1.1", Some(architecture));
        }
        self
    }

    /// Architectures listed in the Release (and, for dists, given an index each). Defaults to
    /// the packages' architectures, or `amd64`.
    #[must_use]
    pub fn architectures(mut self, architectures: &[&str]) -> Self {
        self.architectures = architectures.iter().map(|a| (*a).to_owned()).collect();
        self
    }

    /// Which index compressions to write.
    #[must_use]
    pub fn compressions(mut self, compressions: &[Compression]) -> Self {
        self.compressions = compressions.to_vec();
        self
    }

    /// Signs with `key` (call again for several signatures).
    #[must_use]
    pub fn signed_by(mut self, key: &TestKey) -> Self {
        self.signers.push(key.clone());
        self
    }

    /// Whether to write InRelease when signed (default true).
    #[must_use]
    pub fn in_release(mut self, yes: bool) -> Self {
        self.in_release = yes;
        self
    }

    /// Whether to write Release.gpg when signed (default true).
    #[must_use]
    pub fn release_gpg(mut self, yes: bool) -> Self {
        self.release_gpg = yes;
        self
    }

    /// Sets `Valid-Until`.
    #[must_use]
    pub fn valid_until(mut self, until: jiff::Timestamp) -> Self {
        self.valid_until = Some(until);
        self
    }

    /// Sets `Date` (default: the time of [`RepoBuilder::build`]).
    #[must_use]
    pub fn date(mut self, date: jiff::Timestamp) -> Self {
        self.date = Some(date);
        self
    }

    /// Says `Acquire-By-Hash: yes` and also writes every index at `by-hash/SHA256/<hex>` beside it.
    #[must_use]
    pub fn acquire_by_hash(mut self, yes: bool) -> Self {
        self.acquire_by_hash = yes;
        self
    }

    /// Uses these bytes (uncompressed) as every index instead of generated paragraphs.
    #[must_use]
    pub fn index_text(mut self, text: impl Into<Vec<u8>>) -> Self {
        self.index_override = Some(text.into());
        self
    }

    /// Uses these bytes, as they are, for every index file with this compression (listed in the
    /// Release with their own size and SHA256): for corrupt or bomb-like compressed data.
    #[must_use]
    pub fn index_bytes(mut self, compression: Compression, bytes: impl Into<Vec<u8>>) -> Self {
        self.raw_indexes.insert(compression, bytes.into());
        self
    }

    /// Writes the index with this compression but leaves it out of the Release.
    #[must_use]
    pub fn unlisted(mut self, compression: Compression) -> Self {
        self.unlisted.insert(compression);
        self
    }

    /// The directory (relative to the repository root) holding the Release files.
    pub fn release_dir(&self) -> String {
        match &self.layout {
            Layout::Flat => String::new(),
            Layout::Dists { suite, .. } => format!("dists/{suite}/"),
        }
    }

    /// Path of an index relative to the repository root.
    pub fn index_path(&self, architecture: &str, compression: Compression) -> String {
        format!(
            "{}{}",
            self.release_dir(),
            self.index_release_path(architecture, compression)
        )
    }

    fn index_release_path(&self, architecture: &str, compression: Compression) -> String {
        match &self.layout {
            Layout::Flat => format!("Packages{}", compression.extension()),
            Layout::Dists { component, .. } => {
                format!(
                    "{component}/binary-{architecture}/Packages{}",
                    compression.extension()
                )
            }
        }
    }

    fn effective_architectures(&self) -> Vec<String> {
        if !self.architectures.is_empty() {
            return self.architectures.clone();
        }
        let set: BTreeSet<String> = self
            .packages
            .iter()
            .filter_map(|p| p.architecture.clone())
            .filter(|a| a != "all")
            .collect();
        if set.is_empty() {
            vec!["amd64".to_owned()]
        } else {
            set.into_iter().collect()
        }
    }

    /// The Packages text for one architecture (all packages for the flat layout).
    pub fn index_for(&self, architecture: Option<&str>) -> Vec<u8> {
        if let Some(text) = &self.index_override {
            return text.clone();
        }
        let mut out = String::new();
        for package in &self.packages {
            let keep = match (architecture, package.architecture.as_deref()) {
                (None, _) | (_, None | Some("all")) => true,
                (Some(wanted), Some(arch)) => wanted == arch,
            };
            if keep {
                out.push_str(&paragraph(package));
            }
        }
        out.into_bytes()
    }

    /// Builds every file.
    pub fn build(&self) -> anyhow::Result<Repository> {
        let mut files = BTreeMap::new();
        let mut listed: Vec<(String, Vec<u8>)> = Vec::new();
        let architectures = self.effective_architectures();
        let index_architectures: Vec<Option<&str>> = match self.layout {
            Layout::Flat => vec![None],
            Layout::Dists { .. } => architectures.iter().map(|a| Some(a.as_str())).collect(),
        };
        for architecture in index_architectures {
            let text = self.index_for(architecture);
            for &compression in &self.compressions {
                let bytes = match self.raw_indexes.get(&compression) {
                    Some(raw) => raw.clone(),
                    None => compress(&text, compression)?,
                };
                let release_path =
                    self.index_release_path(architecture.unwrap_or("amd64"), compression);
                if !self.unlisted.contains(&compression) {
                    listed.push((release_path.clone(), bytes.clone()));
                }
                if self.acquire_by_hash {
                    let dir = release_path.rsplit_once('/').map_or("", |(d, _)| d);
                    let slash = if dir.is_empty() { "" } else { "/" };
                    files.insert(
                        format!(
                            "{}{dir}{slash}by-hash/SHA256/{}",
                            self.release_dir(),
                            hex::encode(Sha256::digest(&bytes))
                        ),
                        Bytes::from(bytes.clone()),
                    );
                }
                files.insert(
                    format!("{}{release_path}", self.release_dir()),
                    Bytes::from(bytes),
                );
            }
        }
        let release = self.release_text(&architectures, &listed);
        let dir = self.release_dir();
        files.insert(format!("{dir}Release"), Bytes::from(release.clone()));
        if !self.signers.is_empty() {
            if self.in_release {
                files.insert(
                    format!("{dir}InRelease"),
                    Bytes::from(clearsign(&self.signers, &release)?),
                );
            }
            if self.release_gpg {
                files.insert(
                    format!("{dir}Release.gpg"),
                    Bytes::from(detached_signature(&self.signers, release.as_bytes())?),
                );
            }
        }
        Ok(Repository {
            files,
            release_dir: dir,
        })
    }

    fn release_text(&self, architectures: &[String], listed: &[(String, Vec<u8>)]) -> String {
        let now = self.date.unwrap_or_else(jiff::Timestamp::now);
        let (suite, component) = match &self.layout {
            Layout::Flat => ("stable".to_owned(), None),
            Layout::Dists { suite, component } => (suite.clone(), Some(component.clone())),
        };
        let mut text = format!(
            "Origin: kubernetes-upgrader tests\nLabel: test\nSuite: {suite}\nCodename: {suite}\nDate: {}\n",
            jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&now)
                .unwrap_or_default()
        );
        if let Some(until) = self.valid_until {
            let _ = writeln!(
                text,
                "Valid-Until: {}",
                jiff::fmt::rfc2822::DateTimePrinter::new()
                    .timestamp_to_rfc9110_string(&until)
                    .unwrap_or_default()
            );
        }
        if self.acquire_by_hash {
            text.push_str("Acquire-By-Hash: yes\n");
        }
        let _ = writeln!(text, "Architectures: {}", architectures.join(" "));
        if let Some(component) = component {
            let _ = writeln!(text, "Components: {component}");
        }
        text.push_str("Description: generated test repository\n");
        // MD5Sum is listed with wrong digests on purpose: only SHA256 may be trusted.
        text.push_str("MD5Sum:\n");
        for (path, bytes) in listed {
            let _ = writeln!(text, " {} {:>10} {path}", "0".repeat(32), bytes.len());
        }
        text.push_str("SHA256:\n");
        for (path, bytes) in listed {
            let _ = writeln!(
                text,
                " {} {:>10} {path}",
                hex::encode(Sha256::digest(bytes)),
                bytes.len()
            );
        }
        text
    }
}

fn paragraph(package: &TestPackage) -> String {
    let mut text = format!("Package: {}\n", package.name);
    if let Some(architecture) = &package.architecture {
        let _ = writeln!(text, "Architecture: {architecture}");
    }
    let arch = package.architecture.as_deref().unwrap_or("all");
    let _ = write!(
        text,
        "Version: {version}\nMaintainer: Kubernetes Authors <dev@kubernetes.io>\nInstalled-Size: 74512\n\
         Depends: cri-tools (>= 1.30.0), kubernetes-cni (>= 1.2.0)\n\
         Filename: pool/main/{name}_{version}_{arch}.deb\nSize: 10972464\n\
         SHA256: {digest}\nSection: admin\nPriority: optional\nHomepage: https://kubernetes.io\n\
         Description: Command-line utility for administering a Kubernetes cluster\n \
         Command-line utility for deploying a Kubernetes cluster.\n .\n \
         Generated for tests.\n\n",
        name = package.name,
        version = package.version,
        digest = hex::encode(Sha256::digest(format!(
            "{}{}{arch}",
            package.name, package.version
        ))),
    );
    text
}

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

/// The files of a generated repository, by path relative to its root.
#[derive(Clone, Debug, Default)]
pub struct Repository {
    /// Path (no leading slash) → content.
    pub files: BTreeMap<String, Bytes>,
    release_dir: String,
}

impl Repository {
    /// Content of a file.
    pub fn file(&self, path: &str) -> Option<&Bytes> {
        self.files.get(path)
    }

    /// Adds or replaces a file.
    pub fn insert(&mut self, path: &str, content: impl Into<Bytes>) {
        self.files.insert(path.to_owned(), content.into());
    }

    /// Removes a file.
    pub fn remove(&mut self, path: &str) -> Option<Bytes> {
        self.files.remove(path)
    }

    /// Path of the Release directory (empty for flat, `dists/SUITE/` for dists).
    pub fn release_dir(&self) -> &str {
        &self.release_dir
    }
}

/// A fault served for one path instead of, or on top of, its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an empty body.
    Status(u16),
    /// Wait this long before answering.
    Delay(Duration),
    /// Declare the full length but send only this many bytes, then drop the connection.
    Truncate(usize),
    /// Flip bytes in the middle of the body.
    Corrupt,
    /// Serve these bytes instead (with their own ETag).
    Replace(Bytes),
    /// Redirect (302) to this location.
    Redirect(String),
    /// Send only this many bytes, then keep the connection open without sending anything more.
    Stall(usize),
}

#[derive(Clone)]
struct Served {
    body: Bytes,
    etag: String,
    last_modified: String,
}

#[derive(Default)]
struct ServerState {
    files: HashMap<String, Served>,
    faults: HashMap<String, Fault>,
    per_path: HashMap<String, u64>,
    generation: i64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<ServerState>,
    requests: AtomicU64,
    with_authorization: AtomicU64,
    not_modified: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A loopback HTTP server for repositories, with ETag/Last-Modified, 304s, request counters and
/// per-path fault injection.
pub struct RepoServer {
    url: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RepoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RepoServer {
    /// Starts serving on 127.0.0.1 and a free port, with no files.
    pub async fn start() -> anyhow::Result<RepoServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = signal.await;
                })
                .await;
        });
        Ok(RepoServer {
            url: format!("http://{address}/"),
            shared,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Base URL, ending in `/`: the root of what [`RepoServer::publish`] serves.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// URL of a path below the root.
    pub fn url_for(&self, path: &str) -> String {
        format!("{}{}", self.url, path.trim_start_matches('/'))
    }

    /// Serves `repo` at the root, replacing everything served before (a new repository version:
    /// changed files get new validators).
    pub fn publish(&self, repo: &Repository) {
        self.publish_at("", repo);
    }

    /// Serves `repo` below `prefix` (for example `other/`), replacing what was there.
    pub fn publish_at(&self, prefix: &str, repo: &Repository) {
        let prefix = prefix.trim_start_matches('/');
        let mut state = self.shared.lock();
        state.generation += 1;
        let generation = state.generation;
        state
            .files
            .retain(|path, _| prefix.is_empty() || !path.starts_with(prefix));
        if prefix.is_empty() {
            state.files.clear();
        }
        for (path, body) in &repo.files {
            let served = served(body.clone(), generation);
            state.files.insert(format!("{prefix}{path}"), served);
        }
    }

    /// Adds or replaces one file.
    pub fn put(&self, path: &str, body: impl Into<Bytes>) {
        let mut state = self.shared.lock();
        state.generation += 1;
        let served = served(body.into(), state.generation);
        state
            .files
            .insert(path.trim_start_matches('/').to_owned(), served);
    }

    /// Stops serving one file (404).
    pub fn remove(&self, path: &str) {
        self.shared
            .lock()
            .files
            .remove(path.trim_start_matches('/'));
    }

    /// Injects a fault for one path, replacing any fault there.
    pub fn inject(&self, path: &str, fault: Fault) {
        self.shared
            .lock()
            .faults
            .insert(path.trim_start_matches('/').to_owned(), fault);
    }

    /// Answers `status` for `path`.
    pub fn fail_with_status(&self, path: &str, status: u16) {
        self.inject(path, Fault::Status(status));
    }

    /// Delays answers for `path`.
    pub fn delay(&self, path: &str, delay: Duration) {
        self.inject(path, Fault::Delay(delay));
    }

    /// Sends only the first `keep` bytes of `path`, then drops the connection.
    pub fn truncate(&self, path: &str, keep: usize) {
        self.inject(path, Fault::Truncate(keep));
    }

    /// Sends the first `keep` bytes of `path`, then nothing more, without closing.
    pub fn stall(&self, path: &str, keep: usize) {
        self.inject(path, Fault::Stall(keep));
    }

    /// Flips bytes in the middle of `path`.
    pub fn corrupt(&self, path: &str) {
        self.inject(path, Fault::Corrupt);
    }

    /// Serves `body` for `path` without changing the published file.
    pub fn replace(&self, path: &str, body: impl Into<Bytes>) {
        self.inject(path, Fault::Replace(body.into()));
    }

    /// Redirects `path` to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.inject(path, Fault::Redirect(location.to_owned()));
    }

    /// Removes the fault for one path.
    pub fn clear_fault(&self, path: &str) {
        self.shared
            .lock()
            .faults
            .remove(path.trim_start_matches('/'));
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests that carried an `Authorization` header (credentials from the URL's userinfo).
    pub fn requests_with_authorization(&self) -> u64 {
        self.shared.with_authorization.load(Ordering::SeqCst)
    }

    /// 304 answers so far.
    pub fn not_modified(&self) -> u64 {
        self.shared.not_modified.load(Ordering::SeqCst)
    }

    /// Requests for one path so far.
    pub fn requests_for(&self, path: &str) -> u64 {
        self.shared
            .lock()
            .per_path
            .get(path.trim_start_matches('/'))
            .copied()
            .unwrap_or(0)
    }

    /// Resets every counter.
    pub fn reset_counters(&self) {
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.not_modified.store(0, Ordering::SeqCst);
        self.shared.with_authorization.store(0, Ordering::SeqCst);
        self.shared.lock().per_path.clear();
    }

    /// Stops the server: the port is closed and open connections are told to close.
    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    async fn shutdown_now(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn served(body: Bytes, generation: i64) -> Served {
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..20]);
    let time = jiff::Timestamp::from_second(1_700_000_000 + generation)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let last_modified = jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&time)
        .unwrap_or_default();
    Served {
        body,
        etag,
        last_modified,
    }
}

fn status_response(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

async fn handle(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/').to_owned();
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if headers.contains_key(header::AUTHORIZATION) {
        shared.with_authorization.fetch_add(1, Ordering::SeqCst);
    }
    let (fault, file) = {
        let mut state = shared.lock();
        *state.per_path.entry(path.clone()).or_default() += 1;
        (
            state.faults.get(&path).cloned(),
            state.files.get(&path).cloned(),
        )
    };
    let mut file = file;
    match fault.clone() {
        Some(Fault::Status(status)) => {
            return status_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            );
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Redirect(location)) => {
            let mut response = status_response(StatusCode::FOUND);
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            return response;
        }
        Some(Fault::Replace(body)) => file = Some(served(body, 0)),
        _ => {}
    }
    let Some(file) = file else {
        return status_response(StatusCode::NOT_FOUND);
    };
    let etag_matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == file.etag || t.trim() == "*")
        });
    let date_matches = !headers.contains_key(header::IF_NONE_MATCH)
        && headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == file.last_modified);
    let mut response = if etag_matches || date_matches {
        shared.not_modified.fetch_add(1, Ordering::SeqCst);
        status_response(StatusCode::NOT_MODIFIED)
    } else {
        match fault {
            Some(Fault::Stall(keep)) => {
                let keep = keep.min(file.body.len());
                let head = file.body.slice(..keep);
                let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(head)])
                    .chain(futures::stream::pending::<Result<Bytes, std::io::Error>>());
                let mut response = Response::new(Body::from_stream(stream));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(file.body.len()));
                response
            }
            Some(Fault::Truncate(keep)) => {
                let keep = keep.min(file.body.len());
                let head = file.body.slice(..keep);
                let stream = futures::stream::iter(vec![
                    Ok(head),
                    Err(std::io::Error::other("truncated on purpose")),
                ]);
                let mut response = Response::new(Body::from_stream(stream));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(file.body.len()));
                response
            }
            Some(Fault::Corrupt) => {
                let mut body = file.body.to_vec();
                let middle = body.len() / 2;
                for byte in body.iter_mut().skip(middle).take(4) {
                    *byte ^= 0x5a;
                }
                Response::new(Body::from(body))
            }
            _ => Response::new(Body::from(file.body.clone())),
        }
    };
    if let Ok(value) = HeaderValue::from_str(&file.etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    if let Ok(value) = HeaderValue::from_str(&file.last_modified) {
        response.headers_mut().insert(header::LAST_MODIFIED, value);
    }
    response
}
