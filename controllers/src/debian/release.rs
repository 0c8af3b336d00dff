//! Reading and verifying `InRelease` and `Release` + `Release.gpg`.

use std::collections::HashMap;
use std::io::Cursor;

use debian_packaging::repository::release::{ChecksumType, ReleaseFile};

use super::SyncError;
use super::index::Expected;
use super::keyring::Keyring;

/// Largest `InRelease`, `Release` or `Release.gpg` accepted. Ubuntu's biggest are about 300 KiB.
pub const MAX_RELEASE_BYTES: u64 = 16 << 20;

/// A Release that verified (or that was read without a keyring).
pub struct Release {
    file: ReleaseFile<'static>,
    url: String,
    /// Fingerprint of the primary key whose signature verified, when a keyring was given.
    pub fingerprint: Option<String>,
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Release")
            .field("url", &self.url)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn is_clearsigned(body: &[u8]) -> bool {
    body.trim_ascii_start()
        .starts_with(b"-----BEGIN PGP SIGNED MESSAGE-----")
}

impl Release {
    /// Reads an `InRelease` body; with a keyring, at least one signature must verify.
    pub fn from_inrelease(
        url: &str,
        body: &[u8],
        keyring: Option<&Keyring>,
        now: jiff::Timestamp,
    ) -> Result<Release, SyncError> {
        if !is_clearsigned(body) {
            if keyring.is_some() {
                return Err(SyncError::SignatureInvalid(format!(
                    "{url}: not clear-signed"
                )));
            }
            return Self::from_release(url, body, None, None, now);
        }
        let file =
            ReleaseFile::from_armored_reader(Cursor::new(body)).map_err(|e| match keyring {
                Some(_) => SyncError::SignatureInvalid(format!(
                    "{url}: cannot read the signed Release: {e}"
                )),
                None => SyncError::ParseError(format!("{url}: {e}")),
            })?;
        let fingerprint = match keyring {
            None => None,
            Some(keyring) => {
                let Some(signatures) = file.signatures() else {
                    return Err(SyncError::SignatureInvalid(format!("{url}: no signature")));
                };
                let found = keyring.find_verifying(
                    |key| signatures.verify(key).is_ok(),
                    |key| signatures.verify(key).is_ok(),
                );
                let Some(fingerprint) = found else {
                    return Err(SyncError::SignatureInvalid(format!(
                        "{url}: none of its {} signatures verifies with a trusted key ({})",
                        signatures.iter_signatures().count(),
                        keyring.fingerprints().join(", ")
                    )));
                };
                Some(fingerprint)
            }
        };
        let release = Release {
            file,
            url: url.to_owned(),
            fingerprint,
        };
        release.check_valid_until(keyring.is_some(), now)?;
        Ok(release)
    }

    /// Reads a `Release` body; with a keyring, `signature` (the `Release.gpg` body, fetched from
    /// `signature_url`) must hold a valid signature over it.
    pub fn from_release(
        url: &str,
        body: &[u8],
        keyring: Option<&Keyring>,
        signature: Option<(&str, &[u8])>,
        now: jiff::Timestamp,
    ) -> Result<Release, SyncError> {
        let fingerprint = match (keyring, signature) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(SyncError::SignatureInvalid(format!("{url}: no signature")));
            }
            (Some(keyring), Some((signature_url, signature))) => Some(
                keyring
                    .verify_detached(signature, body)
                    .map_err(|e| SyncError::SignatureInvalid(format!("{signature_url}: {e}")))?,
            ),
        };
        let file = ReleaseFile::from_reader(Cursor::new(body))
            .map_err(|e| SyncError::ParseError(format!("{url}: {e}")))?;
        let release = Release {
            file,
            url: url.to_owned(),
            fingerprint,
        };
        release.check_valid_until(keyring.is_some(), now)?;
        Ok(release)
    }

    /// Refuses an expired Release. Only a verified Release is held to its `Valid-Until`: an
    /// unsigned one proves nothing either way.
    fn check_valid_until(&self, verified: bool, now: jiff::Timestamp) -> Result<(), SyncError> {
        if !verified {
            return Ok(());
        }
        match self.file.valid_until() {
            Some(Err(e)) => Err(SyncError::ParseError(format!(
                "{}: Valid-Until: {e}",
                self.url
            ))),
            Some(Ok(until)) if until.timestamp() < now.as_second() => {
                Err(SyncError::SignatureInvalid(format!(
                    "{}: expired at {} (Valid-Until); refusing a possibly replayed Release",
                    self.url,
                    self.file.valid_until_str().unwrap_or_default()
                )))
            }
            None | Some(Ok(_)) => Ok(()),
        }
    }

    /// The URL the Release was read from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SHA256 entries, by path relative to the Release's directory.
    pub fn sha256_entries(&self) -> Result<HashMap<String, Expected>, SyncError> {
        let mut entries = HashMap::new();
        if let Some(iter) = self.file.iter_index_files(ChecksumType::Sha256) {
            for entry in iter {
                let entry = entry
                    .map_err(|e| SyncError::ParseError(format!("{}: SHA256: {e}", self.url)))?;
                entries.insert(
                    entry.path.to_owned(),
                    Expected {
                        size: entry.size,
                        sha256: entry.digest.digest_hex(),
                    },
                );
            }
        }
        Ok(entries)
    }

    /// Whether the Release lists `architecture` (true when it has no `Architectures` field).
    pub fn lists_architecture(&self, architecture: &str) -> bool {
        match self.file.architectures() {
            None => true,
            Some(mut listed) => listed.any(|a| a == architecture || a == "all"),
        }
    }
}
