//! Trusted OpenPGP public keys, in the role of apt's `signed-by`.

use std::fmt::Write as _;

use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{Signature, SignatureType, SignatureVersion};
use pgp::types::{PublicKeyTrait, Tag};
use pgp::{Deserializable, SignedPublicKey, StandaloneSignature};
use sha2::Digest as _;

use super::{MAX_CLOCK_SKEW, SyncError};

const BEGIN_KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const END_KEY: &str = "-----END PGP PUBLIC KEY BLOCK-----";

/// Most signature packets considered in one `InRelease` or `Release.gpg` (Debian's carry three).
/// The rest are ignored, so a flood of packets costs no more than this many checks.
pub const MAX_SIGNATURES: usize = 8;

/// Which key of a [`TrustedKey`] signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Primary,
    Subkey(usize),
}

/// A key (primary or subkey) that may sign, with its validity interval.
#[derive(Clone, Debug)]
struct Signer {
    which: Which,
    key_id: pgp::types::KeyId,
    fingerprint: pgp::types::Fingerprint,
    algorithm: pgp::crypto::public_key::PublicKeyAlgorithm,
    /// Creation time, Unix seconds.
    created: i64,
    /// Expiry, Unix seconds (the primary key's expiry bounds its subkeys').
    expires: Option<i64>,
}

impl Signer {
    /// Whether a signature made at `signed` (Unix seconds) by this key is acceptable at `now`.
    fn valid(&self, signed: i64, now: i64) -> bool {
        signed >= self.created && self.expires.is_none_or(|e| signed < e && now < e)
    }
}

#[derive(Clone)]
struct TrustedKey {
    fingerprint: String,
    key: SignedPublicKey,
    signers: Vec<Signer>,
}

/// Trusted OpenPGP public keys: primary keys and their signing subkeys. Revoked and expired keys
/// and subkeys are left out when the keyring loads, and every key is held to its validity at
/// the signature's creation time and at verification time.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<TrustedKey>,
    /// Keys left out, with why: upper-case fingerprint and reason.
    dropped: Vec<(String, &'static str)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("fingerprints", &self.fingerprints())
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

/// Upper-case hex of a fingerprint.
pub fn fingerprint_hex(key: &impl PublicKeyTrait) -> String {
    hex::encode_upper(key.fingerprint().as_bytes())
}

fn seconds(time: &chrono::DateTime<chrono::Utc>) -> i64 {
    time.timestamp()
}

/// The non-zero expiry offset a signature states (a zero `KeyExpirationTime` means "never").
fn expiry_offset(signature: &Signature) -> Option<i64> {
    signature
        .key_expiration_time()
        .map(chrono::Duration::num_seconds)
        .filter(|s| *s > 0)
}

impl Keyring {
    /// Parses a keyring: one or more armored `PUBLIC KEY BLOCK`s, or a binary keyring (keys
    /// concatenated, as in `debian-archive-keyring`), as of the wall clock. A key that fails to
    /// parse fails the whole keyring, and so does a keyring without any key. Revoked and expired
    /// keys are left out (see [`Keyring::dropped`]).
    pub fn parse(bytes: &[u8]) -> Result<Keyring, SyncError> {
        Self::parse_at(bytes, jiff::Timestamp::now())
    }

    /// [`Keyring::parse`] as of `now`.
    pub fn parse_at(bytes: &[u8], now: jiff::Timestamp) -> Result<Keyring, SyncError> {
        let error = |message: String| SyncError::ParseError(format!("keyring: {message}"));
        let mut keys = Vec::new();
        if let Some(text) = armored_text(bytes) {
            let mut rest = text;
            while let Some(start) = rest.find(BEGIN_KEY) {
                let block = &rest[start..];
                let end = block
                    .find(END_KEY)
                    .map(|end| end + END_KEY.len())
                    .ok_or_else(|| error("armored block without its END line".to_owned()))?;
                let (parsed, _headers) = SignedPublicKey::from_armor_many(&block.as_bytes()[..end])
                    .map_err(|e| error(e.to_string()))?;
                for key in parsed {
                    keys.push(key.map_err(|e| error(e.to_string()))?);
                }
                rest = &block[end..];
            }
        } else {
            for key in SignedPublicKey::from_bytes_many(bytes) {
                keys.push(key.map_err(|e| error(e.to_string()))?);
            }
        }
        if keys.is_empty() {
            return Err(error("no OpenPGP public key found".to_owned()));
        }
        let mut keyring = Keyring {
            keys: Vec::new(),
            dropped: Vec::new(),
        };
        for key in keys {
            match trust(key, now.as_second()) {
                Ok(trusted) => keyring.keys.push(trusted),
                Err(dropped) => keyring.dropped.push(dropped),
            }
        }
        Ok(keyring)
    }

    /// Adds the keys of `other`.
    pub fn extend(&mut self, other: Keyring) {
        for key in other.keys {
            if !self.keys.iter().any(|k| k.fingerprint == key.fingerprint) {
                self.keys.push(key);
            }
        }
        self.dropped.extend(other.dropped);
    }

    /// Fingerprints of the trusted primary keys, upper-case hex.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.fingerprint.clone()).collect()
    }

    /// Keys left out when the keyring loaded: fingerprint and reason (`revoked`, `expired`).
    pub fn dropped(&self) -> &[(String, &'static str)] {
        &self.dropped
    }

    /// Number of trusted primary keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is trusted (every key was revoked or expired).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `signatures` over `data`: returns the fingerprint of the primary key owning the
    /// first key with a valid signature, as of `now`.
    ///
    /// Only the first [`MAX_SIGNATURES`] are considered. A signature is skipped, before any
    /// hashing, when it is not a v4 signature, uses MD5, SHA-1 or another non-SHA-2 hash, has no
    /// creation time, was made more than [`MAX_CLOCK_SKEW`] in the future or has expired, or when
    /// no trusted key has its issuer and algorithm. `data` is hashed once per hash algorithm.
    pub(crate) fn verify(
        &self,
        signatures: &[&Signature],
        data: &[u8],
        now: jiff::Timestamp,
    ) -> Result<String, String> {
        let now = now.as_second();
        let skew = i64::try_from(MAX_CLOCK_SKEW.as_secs()).unwrap_or(i64::MAX);
        let mut hashes: Vec<((HashAlgorithm, bool), DataHash)> = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        for signature in signatures.iter().take(MAX_SIGNATURES) {
            let config = &signature.config;
            if config.version() != SignatureVersion::V4 {
                refused.push(format!("a v{} signature", u8::from(config.version())));
                continue;
            }
            let Some(base) = DataHash::new(config.hash_alg) else {
                refused.push(format!("a {:?} signature", config.hash_alg));
                continue;
            };
            let Some(created) = signature.created().map(seconds) else {
                refused.push("a signature without creation time".to_owned());
                continue;
            };
            if created > now.saturating_add(skew) {
                refused.push("a signature made in the future".to_owned());
                continue;
            }
            if let Some(offset) = signature
                .signature_expiration_time()
                .map(chrono::Duration::num_seconds)
                .filter(|s| *s > 0)
                && created.saturating_add(offset) <= now
            {
                refused.push("an expired signature".to_owned());
                continue;
            }
            let candidates: Vec<(&TrustedKey, &Signer)> = self
                .keys
                .iter()
                .flat_map(|k| k.signers.iter().map(move |s| (k, s)))
                .filter(|(_, s)| s.algorithm == config.pub_alg && issued_by(signature, s))
                .collect();
            if candidates.is_empty() {
                continue;
            }
            if !candidates.iter().any(|(_, s)| s.valid(created, now)) {
                refused.push("a signature by an expired key".to_owned());
                continue;
            }
            let text = config.typ == SignatureType::Text;
            let key = (config.hash_alg, text);
            let hash = if let Some((_, hash)) = hashes.iter().find(|(k, _)| *k == key) {
                hash.clone()
            } else {
                let mut hash = base;
                if text {
                    hash.update(&canonical_text(data));
                } else {
                    hash.update(data);
                }
                hashes.push((key, hash.clone()));
                hash
            };
            let Some(digest) = hash.signature_digest(signature) else {
                continue;
            };
            if digest.get(..2) != Some(&signature.signed_hash_value[..]) {
                continue;
            }
            for (trusted, signer) in candidates {
                if !signer.valid(created, now) {
                    continue;
                }
                let verified = match signer.which {
                    Which::Primary => trusted.key.primary_key.verify_signature(
                        config.hash_alg,
                        &digest,
                        &signature.signature,
                    ),
                    Which::Subkey(index) => match trusted.key.public_subkeys.get(index) {
                        Some(subkey) => subkey.key.verify_signature(
                            config.hash_alg,
                            &digest,
                            &signature.signature,
                        ),
                        None => continue,
                    },
                };
                if verified.is_ok() {
                    return Ok(trusted.fingerprint.clone());
                }
            }
        }
        let mut message = format!(
            "none of its {} signatures verifies with a trusted key ({})",
            signatures.len(),
            self.fingerprints().join(", ")
        );
        if signatures.len() > MAX_SIGNATURES {
            let _ = write!(message, "; only the first {MAX_SIGNATURES} were considered");
        }
        refused.sort();
        refused.dedup();
        if !refused.is_empty() {
            let _ = write!(message, "; refused: {}", refused.join(", "));
        }
        if !self.dropped.is_empty() {
            let dropped: Vec<String> = self
                .dropped
                .iter()
                .map(|(fingerprint, why)| format!("{fingerprint} ({why})"))
                .collect();
            let _ = write!(message, "; left out of the keyring: {}", dropped.join(", "));
        }
        Err(message)
    }

    /// Verifies a detached signature (`Release.gpg`, armored or binary, possibly holding several
    /// signatures) over `content`. Returns the fingerprint of the first trusted key with a valid
    /// signature.
    pub(crate) fn verify_detached(
        &self,
        signature: &[u8],
        content: &[u8],
        now: jiff::Timestamp,
    ) -> Result<String, String> {
        // Parse one more than considered, to say that some were left out.
        let signatures: Vec<StandaloneSignature> = if let Some(text) = armored_text(signature) {
            let (parsed, _) = StandaloneSignature::from_armor_many(text.as_bytes())
                .map_err(|_| "cannot parse the signature".to_owned())?;
            parsed
                .filter_map(Result::ok)
                .take(MAX_SIGNATURES + 1)
                .collect()
        } else {
            StandaloneSignature::from_bytes_many(signature)
                .filter_map(Result::ok)
                .take(MAX_SIGNATURES + 1)
                .collect()
        };
        if signatures.is_empty() {
            return Err("no OpenPGP signature found".to_owned());
        }
        let packets: Vec<&Signature> = signatures.iter().map(|s| &s.signature).collect();
        self.verify(&packets, content, now)
    }
}

/// Whether `signature` names `signer` as its issuer (a signature naming no issuer may be by any
/// key, as OpenPGP allows).
fn issued_by(signature: &Signature, signer: &Signer) -> bool {
    let ids = signature.issuer();
    let fingerprints = signature.issuer_fingerprint();
    if ids.is_empty() && fingerprints.is_empty() {
        return true;
    }
    ids.contains(&&signer.key_id) || fingerprints.contains(&&signer.fingerprint)
}

/// Text as OpenPGP hashes a text signature's data: every line ending as CRLF.
fn canonical_text(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    let mut iter = data.iter().peekable();
    while let Some(&byte) = iter.next() {
        match byte {
            b'\r' => {
                if iter.peek() == Some(&&b'\n') {
                    iter.next();
                }
                out.extend_from_slice(b"\r\n");
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            other => out.push(other),
        }
    }
    out
}

/// A running hash over the signed data, cloned for each signature's trailer.
#[derive(Clone)]
enum DataHash {
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl DataHash {
    /// The SHA-2 hashes only: MD5, SHA-1 and RIPEMD-160 are refused, as apt refuses them.
    fn new(algorithm: HashAlgorithm) -> Option<DataHash> {
        match algorithm {
            HashAlgorithm::SHA2_224 => Some(Self::Sha224(sha2::Sha224::new())),
            HashAlgorithm::SHA2_256 => Some(Self::Sha256(sha2::Sha256::new())),
            HashAlgorithm::SHA2_384 => Some(Self::Sha384(sha2::Sha384::new())),
            HashAlgorithm::SHA2_512 => Some(Self::Sha512(sha2::Sha512::new())),
            _ => None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha224(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Sha384(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Self::Sha224(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Sha384(h) => h.finalize().to_vec(),
            Self::Sha512(h) => h.finalize().to_vec(),
        }
    }

    /// The digest a v4 signature signs: the data, the signature's hashed part and its trailer.
    fn signature_digest(mut self, signature: &Signature) -> Option<Vec<u8>> {
        let mut hashed = Vec::new();
        let length = signature.config.hash_signature_data(&mut hashed).ok()?;
        self.update(&hashed);
        self.update(&signature.config.trailer(length).ok()?);
        Some(self.finish())
    }
}

/// A key's trusted signers as of `now` (Unix seconds), or why the whole key is left out.
fn trust(key: SignedPublicKey, now: i64) -> Result<TrustedKey, (String, &'static str)> {
    let fingerprint = fingerprint_hex(&key);
    let primary = &key.primary_key;
    let revoked = key
        .details
        .revocation_signatures
        .iter()
        .any(|s| s.typ() == SignatureType::KeyRevocation && s.verify_key(primary).is_ok());
    if revoked {
        return Err((fingerprint, "revoked"));
    }
    let created = seconds(primary.created_at());
    // The latest verifying self-signature states the key's expiry.
    let latest = key
        .details
        .users
        .iter()
        .flat_map(|user| {
            user.signatures.iter().filter(move |s| {
                s.verify_certification(primary, Tag::UserId, &user.id)
                    .is_ok()
            })
        })
        .chain(
            key.details
                .direct_signatures
                .iter()
                .filter(|s| s.verify_key(primary).is_ok()),
        )
        .max_by_key(|s| s.created().map(seconds));
    let expires = latest
        .and_then(expiry_offset)
        .map(|offset| created.saturating_add(offset));
    if expires.is_some_and(|e| e <= now) {
        return Err((fingerprint, "expired"));
    }
    let mut signers = vec![Signer {
        which: Which::Primary,
        key_id: primary.key_id(),
        fingerprint: primary.fingerprint(),
        algorithm: primary.algorithm(),
        created,
        expires,
    }];
    for (index, subkey) in key.public_subkeys.iter().enumerate() {
        let verifies = |s: &&Signature| s.verify_key_binding(primary, &subkey.key).is_ok();
        let revoked = subkey
            .signatures
            .iter()
            .filter(|s| s.typ() == SignatureType::SubkeyRevocation)
            .any(|s| verifies(&s));
        let Some(binding) = subkey
            .signatures
            .iter()
            .filter(|s| s.typ() == SignatureType::SubkeyBinding)
            .filter(verifies)
            .max_by_key(|s| s.created().map(seconds))
        else {
            continue;
        };
        // A binding that states key flags must allow signing.
        if revoked || (has_key_flags(binding) && !binding.key_flags().sign()) {
            continue;
        }
        let subkey_created = seconds(subkey.key.created_at());
        let subkey_expires = expiry_offset(binding).map(|o| subkey_created.saturating_add(o));
        let expires = match (expires, subkey_expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if expires.is_some_and(|e| e <= now) {
            continue;
        }
        signers.push(Signer {
            which: Which::Subkey(index),
            key_id: subkey.key.key_id(),
            fingerprint: subkey.key.fingerprint(),
            algorithm: subkey.key.algorithm(),
            created: subkey_created,
            expires,
        });
    }
    Ok(TrustedKey {
        fingerprint,
        key,
        signers,
    })
}

fn has_key_flags(signature: &Signature) -> bool {
    signature
        .config
        .hashed_subpackets()
        .any(|p| matches!(p.data, pgp::packet::SubpacketData::KeyFlags(_)))
}

/// The input as text when it holds an ASCII-armored block.
fn armored_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.contains("-----BEGIN PGP ").then_some(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn text_signatures_hash_crlf_line_endings() {
        assert_eq!(canonical_text(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        assert_eq!(canonical_text(b"\r\n\n"), b"\r\n\r\n");
        assert_eq!(canonical_text(b""), b"");
    }

    #[test]
    fn only_sha2_hashes_are_accepted() {
        for weak in [
            HashAlgorithm::MD5,
            HashAlgorithm::SHA1,
            HashAlgorithm::RIPEMD160,
        ] {
            assert!(DataHash::new(weak).is_none(), "{weak:?}");
        }
        for strong in [
            HashAlgorithm::SHA2_224,
            HashAlgorithm::SHA2_256,
            HashAlgorithm::SHA2_384,
            HashAlgorithm::SHA2_512,
        ] {
            assert!(DataHash::new(strong).is_some(), "{strong:?}");
        }
    }

    #[test]
    fn a_signer_is_held_to_its_validity_at_signing_and_now() {
        let signer = |expires| Signer {
            which: Which::Primary,
            key_id: pgp::types::KeyId::from_slice(&[0u8; 8]).unwrap(),
            fingerprint: pgp::types::Fingerprint::V4([0u8; 20]),
            algorithm: pgp::crypto::public_key::PublicKeyAlgorithm::EdDSALegacy,
            created: 100,
            expires,
        };
        let forever = signer(None);
        assert!(forever.valid(100, 10_000));
        assert!(!forever.valid(99, 10_000), "signed before the key existed");
        let expiring = signer(Some(200));
        assert!(expiring.valid(150, 199));
        assert!(!expiring.valid(150, 200), "expired by now");
        assert!(!expiring.valid(200, 150), "signed after expiry");
    }
}
