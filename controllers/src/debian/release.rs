//! Reading and verifying `InRelease` and `Release` + `Release.gpg`.

use std::collections::HashMap;
use std::io::Cursor;

use debian_packaging::repository::release::{ChecksumType, ReleaseFile};
use pgp::cleartext::CleartextSignedMessage;

use super::index::Expected;
use super::keyring::Keyring;
use super::{MAX_CLOCK_SKEW, SyncError, Validators};

/// Largest `InRelease`, `Release` or `Release.gpg` accepted. Ubuntu's biggest are about 300 KiB.
pub const MAX_RELEASE_BYTES: u64 = 16 << 20;

/// A Release that verified (or that was read without a keyring).
pub struct Release {
    file: ReleaseFile<'static>,
    url: String,
    /// Fingerprint of the primary key whose signature verified, when a keyring was given.
    pub fingerprint: Option<String>,
    /// `Date`, when the Release has one.
    pub date: Option<jiff::Timestamp>,
    /// `Valid-Until`, when the Release has one.
    pub valid_until: Option<jiff::Timestamp>,
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Release")
            .field("url", &self.url)
            .field("fingerprint", &self.fingerprint)
            .field("date", &self.date)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

fn is_clearsigned(body: &[u8]) -> bool {
    body.trim_ascii_start()
        .starts_with(b"-----BEGIN PGP SIGNED MESSAGE-----")
}

impl Release {
    /// Reads an `InRelease` body; with a keyring, at least one signature must verify, and the
    /// Release is parsed only after it did.
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
        let message = std::str::from_utf8(body)
            .ok()
            .and_then(|text| CleartextSignedMessage::from_string(text).ok())
            .map(|(message, _headers)| message);
        let Some(message) = message else {
            let text = format!("{url}: not a valid clear-signed message");
            return Err(match keyring {
                Some(_) => SyncError::SignatureInvalid(text),
                None => SyncError::ParseError(text),
            });
        };
        let signed = message.signed_text();
        let fingerprint = match keyring {
            None => None,
            Some(keyring) => {
                let packets: Vec<&pgp::packet::Signature> =
                    message.signatures().iter().map(|s| &s.signature).collect();
                if packets.is_empty() {
                    return Err(SyncError::SignatureInvalid(format!("{url}: no signature")));
                }
                Some(
                    keyring
                        .verify(&packets, signed.as_bytes(), now)
                        .map_err(|e| SyncError::SignatureInvalid(format!("{url}: {e}")))?,
                )
            }
        };
        // The signed text has CRLF line endings; the Release is read with LF.
        let text = signed.replace("\r\n", "\n");
        Self::read(url, text.as_bytes(), fingerprint, keyring.is_some(), now)
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
                    .verify_detached(signature, body, now)
                    .map_err(|e| SyncError::SignatureInvalid(format!("{signature_url}: {e}")))?,
            ),
        };
        Self::read(url, body, fingerprint, keyring.is_some(), now)
    }

    /// Parses the Release text. Errors name the field, never the text: the content may be
    /// unverified and is the mirror's to choose.
    fn read(
        url: &str,
        text: &[u8],
        fingerprint: Option<String>,
        verified: bool,
        now: jiff::Timestamp,
    ) -> Result<Release, SyncError> {
        let file = ReleaseFile::from_reader(Cursor::new(text.to_vec()))
            .map_err(|_| SyncError::ParseError(format!("{url}: not a valid Release file")))?;
        let timestamp = |field: &str,
                         value: Option<
            debian_packaging::error::Result<chrono::DateTime<chrono::Utc>>,
        >| match value {
            None => Ok(None),
            Some(Ok(time)) => jiff::Timestamp::from_second(time.timestamp())
                .map(Some)
                .map_err(|_| SyncError::ParseError(format!("{url}: {field} is out of range"))),
            Some(Err(_)) => Err(SyncError::ParseError(format!(
                "{url}: {field} is not an RFC 2822 date"
            ))),
        };
        let date = timestamp("Date", file.date())?;
        let valid_until = timestamp("Valid-Until", file.valid_until())?;
        let release = Release {
            file,
            url: url.to_owned(),
            fingerprint,
            date,
            valid_until,
        };
        if verified {
            release.check_times(now)?;
        }
        Ok(release)
    }

    /// Refuses a verified Release that has expired or is dated in the future. An unsigned one
    /// proves nothing either way.
    fn check_times(&self, now: jiff::Timestamp) -> Result<(), SyncError> {
        if let Some(until) = self.valid_until
            && until < now
        {
            return Err(SyncError::ReleaseExpired(format!(
                "{}: expired at {until} (Valid-Until); refusing a possibly replayed Release",
                self.url
            )));
        }
        let skew = jiff::SignedDuration::try_from(MAX_CLOCK_SKEW).unwrap_or_default();
        if let Some(date) = self.date
            && now.checked_add(skew).is_ok_and(|latest| date > latest)
        {
            return Err(SyncError::ReleaseNotYetValid(format!(
                "{}: dated {date} (Date), more than {}s ahead of our clock ({now})",
                self.url,
                MAX_CLOCK_SKEW.as_secs()
            )));
        }
        Ok(())
    }

    /// Refuses a Release older (`Date`) than the one accepted last time: a replay that would
    /// roll the listing back. Only verified Releases are remembered, so only they are compared.
    pub fn check_not_replayed(&self, previous: Option<&Validators>) -> Result<(), SyncError> {
        if self.fingerprint.is_none() {
            return Ok(());
        }
        match (self.date, previous.and_then(|p| p.release_date)) {
            (Some(date), Some(accepted)) if date < accepted => {
                Err(SyncError::ReleaseReplayed(format!(
                    "{}: dated {date} (Date), older than the Release accepted before ({accepted}); refusing a replayed Release",
                    self.url
                )))
            }
            (None, Some(accepted)) => Err(SyncError::ReleaseReplayed(format!(
                "{}: has no Date, but the Release accepted before was dated {accepted}",
                self.url
            ))),
            _ => Ok(()),
        }
    }

    /// Whether the Release says `Acquire-By-Hash: yes`.
    pub fn acquire_by_hash(&self) -> bool {
        self.file.acquire_by_hash() == Some(true)
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
                let entry = entry.map_err(|_| {
                    SyncError::ParseError(format!("{}: a SHA256 line is malformed", self.url))
                })?;
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
