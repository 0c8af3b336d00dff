//! Generated OpenPGP keys, and the signatures and keyrings made with them.

use anyhow::{Context as _, anyhow};
use chrono::SubsecRound as _;
use pgp::cleartext::CleartextSignedMessage;
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{SignatureConfig, SignatureType, Subpacket, SubpacketData};
use pgp::ser::Serialize as _;
use pgp::types::{PublicKeyTrait as _, SecretKeyTrait, Tag};
use pgp::{
    ArmorOptions, KeyType, SecretKeyParamsBuilder, SignedPublicKey, SignedSecretKey,
    StandaloneSignature, SubkeyParamsBuilder,
};

use kubernetes_upgrader::debian::Keyring;
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
