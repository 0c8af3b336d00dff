//! Trusted OpenPGP public keys, in the role of apt's `signed-by`.

use pgp::types::PublicKeyTrait;
use pgp::{Deserializable, SignedPublicKey, StandaloneSignature};

use super::SyncError;

const BEGIN_KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const END_KEY: &str = "-----END PGP PUBLIC KEY BLOCK-----";

struct TrustedKey {
    fingerprint: String,
    key: SignedPublicKey,
    /// Indexes into `key.public_subkeys` whose binding signature verifies and that may sign.
    subkeys: Vec<usize>,
}

/// Trusted OpenPGP public keys: primary keys and their signing subkeys.
pub struct Keyring {
    keys: Vec<TrustedKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("fingerprints", &self.fingerprints())
            .finish()
    }
}

/// Upper-case hex of a fingerprint.
pub fn fingerprint_hex(key: &impl PublicKeyTrait) -> String {
    hex::encode_upper(key.fingerprint().as_bytes())
}

impl Keyring {
    /// Parses a keyring: one or more armored `PUBLIC KEY BLOCK`s, or a binary keyring (keys
    /// concatenated, as in `debian-archive-keyring`). A key that fails to parse fails the whole
    /// keyring, and so does a keyring without any key.
    pub fn parse(bytes: &[u8]) -> Result<Keyring, SyncError> {
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
        Ok(Keyring {
            keys: keys.into_iter().map(trust).collect(),
        })
    }

    /// Adds the keys of `other`.
    pub fn extend(&mut self, other: Keyring) {
        for key in other.keys {
            if !self.keys.iter().any(|k| k.fingerprint == key.fingerprint) {
                self.keys.push(key);
            }
        }
    }

    /// Fingerprints of the primary keys, upper-case hex.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.fingerprint.clone()).collect()
    }

    /// Number of primary keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the keyring holds no key (never true for a parsed keyring).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Calls `check` with every trusted signing key (primary keys, then valid subkeys) until it
    /// returns true; returns the fingerprint of the primary key that owns the matching key.
    pub(crate) fn find_verifying(
        &self,
        mut check_primary: impl FnMut(&SignedPublicKey) -> bool,
        mut check_subkey: impl FnMut(&pgp::packet::PublicSubkey) -> bool,
    ) -> Option<String> {
        for trusted in &self.keys {
            if check_primary(&trusted.key) {
                return Some(trusted.fingerprint.clone());
            }
            for &index in &trusted.subkeys {
                if let Some(subkey) = trusted.key.public_subkeys.get(index)
                    && check_subkey(&subkey.key)
                {
                    return Some(trusted.fingerprint.clone());
                }
            }
        }
        None
    }

    /// Verifies a detached signature (`Release.gpg`, armored or binary, possibly holding several
    /// signatures) over `content`. Returns the fingerprint of the first trusted key with a valid
    /// signature.
    pub(crate) fn verify_detached(
        &self,
        signature: &[u8],
        content: &[u8],
    ) -> Result<String, String> {
        let signatures: Vec<StandaloneSignature> = if let Some(text) = armored_text(signature) {
            let (parsed, _) = StandaloneSignature::from_armor_many(text.as_bytes())
                .map_err(|e| format!("cannot parse the signature: {e}"))?;
            parsed.filter_map(Result::ok).collect()
        } else {
            StandaloneSignature::from_bytes_many(signature)
                .filter_map(Result::ok)
                .collect()
        };
        if signatures.is_empty() {
            return Err("no OpenPGP signature found".to_owned());
        }
        for signature in &signatures {
            let issued_by = |key: &dyn Fn() -> (pgp::types::KeyId, pgp::types::Fingerprint)| {
                let issuers = signature.signature.issuer();
                let fingerprints = signature.signature.issuer_fingerprint();
                if issuers.is_empty() && fingerprints.is_empty() {
                    return true;
                }
                let (id, fingerprint) = key();
                issuers.contains(&&id) || fingerprints.contains(&&fingerprint)
            };
            let found = self.find_verifying(
                |key| {
                    issued_by(&|| (key.key_id(), key.fingerprint()))
                        && signature.verify(key, content).is_ok()
                },
                |key| {
                    issued_by(&|| (key.key_id(), key.fingerprint()))
                        && signature.verify(key, content).is_ok()
                },
            );
            if let Some(fingerprint) = found {
                return Ok(fingerprint);
            }
        }
        Err(format!(
            "none of its {} signatures verifies with a trusted key ({})",
            signatures.len(),
            self.fingerprints().join(", ")
        ))
    }
}

fn trust(key: SignedPublicKey) -> TrustedKey {
    let subkeys = key
        .public_subkeys
        .iter()
        .enumerate()
        .filter(|(_, subkey)| {
            subkey.verify(&key.primary_key).is_ok()
                && subkey.signatures.iter().all(|s| {
                    // Subkeys whose binding states key flags must allow signing.
                    let flags = s.key_flags();
                    flags.sign() || !has_key_flags(s)
                })
        })
        .map(|(index, _)| index)
        .collect();
    TrustedKey {
        fingerprint: fingerprint_hex(&key),
        key,
        subkeys,
    }
}

fn has_key_flags(signature: &pgp::packet::Signature) -> bool {
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
