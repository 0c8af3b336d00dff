//! The pure decision step: from the current status and the sync result to the desired status, the
//! events to publish and when to look again.

use std::time::Duration;

use api::conditions::{self, Desired, Status};
use api::v1alpha1::{
    CONDITION_READY, CONDITION_VERIFIED, DebianRepositorySourceStatus, DebianVersion,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::keys::KeyError;
pub use super::validate::RETRY_BASE;
use super::validate::SpecError;
use crate::debian::versions::highest_debian_versions;
use crate::debian::{Listing, SyncError, SyncOutcome};
use crate::runtime::backoff::with_jitter;
use crate::runtime::{Note, cause_chain};

/// Reason of `Ready=True`.
pub const REASON_SYNCED: &str = "Synced";
/// Reason of `Verified=True`.
pub const REASON_SIGNATURE_VERIFIED: &str = "SignatureVerified";
/// Reason of `Verified=False` without `spec.signedBy`.
pub const REASON_NO_SIGNED_BY: &str = "NoSignedBy";
/// Reason of `Verified=Unknown` before the first verification.
pub const REASON_NOT_YET_VERIFIED: &str = "NotYetVerified";
/// v0.6's Warning event reason for a failed sync.
pub const EVENT_LIST_VERSIONS_FAILED: &str = "ListVersionsFailed";
/// Normal event when the published versions change.
pub const EVENT_VERSIONS_CHANGED: &str = "VersionsChanged";
/// Normal event when a failing source syncs again with unchanged versions.
pub const EVENT_RECOVERED: &str = "Recovered";

/// Most entries `status.versions` and `status.debianVersions` hold (the schema's `maxItems`):
/// beyond it the highest are kept, and the Ready message says so.
pub const MAX_VERSIONS: usize = 4096;
/// Longest string in `status.debianVersions` (the schema's `maxLength`).
pub const MAX_VERSION_TEXT: usize = 256;

/// Why a sync did not happen or did not succeed. Each has its own condition reason.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The spec cannot be acted on; the controller waits for it to change.
    #[error(transparent)]
    Spec(SpecError),
    /// The keys `spec.signedBy` names cannot be read.
    #[error(transparent)]
    Keys(KeyError),
    /// The repository could not be read or verified.
    #[error(transparent)]
    Sync(SyncError),
}

impl Failure {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Spec(err) => err.reason(),
            Self::Keys(err) => err.reason(),
            Self::Sync(err) => err.reason(),
        }
    }

    /// The condition message: the cause chain, cut to 1 KiB.
    pub fn message(&self) -> String {
        match self {
            Self::Spec(err) => cause_chain(err),
            Self::Keys(err) => cause_chain(err),
            Self::Sync(err) => cause_chain(err),
        }
    }

    /// Whether the repository failed verification itself.
    fn unverified(&self) -> bool {
        matches!(self, Self::Sync(err) if err.is_verification_failure())
    }
}

/// What the observe step found.
#[derive(Debug)]
pub struct Observed<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The current status, or the default when there is none.
    pub status: &'a DebianRepositorySourceStatus,
    /// Whether `spec.signedBy` is set.
    pub signed: bool,
    /// The sync result.
    pub result: &'a Result<SyncOutcome, Failure>,
    /// The current time.
    pub now: &'a Time,
    /// `spec.interval`.
    pub interval: Duration,
    /// A number in [0, 1] that spreads requeues.
    pub jitter: f64,
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The desired status; written only when it differs from the current one.
    pub status: DebianRepositorySourceStatus,
    /// Events to publish: transitions only.
    pub notes: Vec<Note>,
    /// When to sync again.
    pub requeue: Duration,
}

/// The retry delay after a failure: as long as the source has been failing (so the delay doubles
/// from one retry to the next), at least [`RETRY_BASE`] and at most the interval. It is read from
/// `Ready`'s `lastTransitionTime`, so it survives a restart or a leader failover.
pub fn retry_after(
    ready: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    now: &Time,
    interval: Duration,
) -> Duration {
    let failing_for = ready
        .filter(|c| c.status == "False")
        .and_then(|c| {
            now.0
                .duration_since(c.last_transition_time.0)
                .try_into()
                .ok()
        })
        .unwrap_or(Duration::ZERO);
    failing_for.clamp(RETRY_BASE, interval.max(RETRY_BASE))
}

/// The status fields this controller owns, carried over from `current`: the applied status is
/// built from these alone, never from a clone of whatever the status holds.
fn owned_fields(current: &DebianRepositorySourceStatus) -> DebianRepositorySourceStatus {
    DebianRepositorySourceStatus {
        versions: current.versions.clone(),
        conditions: None,
        observed_generation: None,
        last_sync_time: current.last_sync_time.clone(),
        last_change_time: current.last_change_time.clone(),
        index_url: current.index_url.clone(),
        index_sha256: current.index_sha256.clone(),
        signing_key_fingerprint: current.signing_key_fingerprint.clone(),
        skipped_versions: current.skipped_versions,
        release_date: current.release_date.clone(),
        release_valid_until: current.release_valid_until.clone(),
        debian_versions: current.debian_versions.clone(),
    }
}

/// Decides the status, the events and the requeue for one sync.
pub fn decide(observed: &Observed<'_>) -> Decision {
    let current = observed.status;
    let mut status = owned_fields(current);
    let mut notes = Vec::new();
    let previous_ready = current
        .conditions
        .as_deref()
        .and_then(|c| conditions::find(c, CONDITION_READY));
    let was_failing = previous_ready.is_some_and(|c| c.status != "True");
    let mut desired = Vec::new();

    let requeue = match observed.result {
        Ok(outcome) => {
            if let SyncOutcome::Fetched(listing) = outcome {
                apply_listing(&mut status, listing, observed.signed, observed.now);
            }
            let versions_changed = status.versions != current.versions;
            if versions_changed {
                notes.push(Note::normal(
                    EVENT_VERSIONS_CHANGED,
                    versions_message(&status),
                ));
            } else if was_failing {
                notes.push(Note::normal(EVENT_RECOVERED, ready_message(&status)));
            }
            desired.push(Desired::new(
                CONDITION_READY,
                true,
                REASON_SYNCED,
                ready_message(&status),
            ));
            desired.push(verified_after_success(&status, observed.signed));
            with_jitter(observed.interval, observed.jitter)
        }
        Err(err) => {
            let reason = err.reason();
            let message = err.message();
            // A spec error is reported once by the controller's failure report instead.
            let announce = !matches!(err, Failure::Spec(_));
            if announce && previous_ready.is_none_or(|c| c.status != "False" || c.reason != reason)
            {
                notes.push(Note::warning(
                    EVENT_LIST_VERSIONS_FAILED,
                    format!("{reason}: {message}"),
                ));
            }
            desired.push(Desired::new(
                CONDITION_READY,
                false,
                reason,
                message.clone(),
            ));
            desired.push(verified_after_failure(current, observed.signed, err));
            retry_after(previous_ready, observed.now, observed.interval)
        }
    };

    let previous_verified = current
        .conditions
        .as_deref()
        .and_then(|c| conditions::find(c, CONDITION_VERIFIED));
    if !observed.signed && previous_verified.is_none_or(|c| c.reason != REASON_NO_SIGNED_BY) {
        notes.push(Note::warning(REASON_NO_SIGNED_BY, no_signed_by_message()));
    }

    // Every message is bounded, printable and redacted, whatever the listing or error held.
    for condition in &mut desired {
        condition.message = crate::text::bounded(&condition.message);
    }
    status.conditions = Some(conditions::merge(
        current.conditions.as_deref().unwrap_or_default(),
        &desired,
        observed.generation,
        observed.now,
    ));
    status.observed_generation = observed.generation;
    Decision {
        status,
        notes,
        requeue,
    }
}

fn apply_listing(
    status: &mut DebianRepositorySourceStatus,
    listing: &Listing,
    signed: bool,
    now: &Time,
) {
    let kept = highest(&listing.versions);
    let published: std::collections::HashSet<&str> = kept.iter().map(String::as_str).collect();
    let debian_versions =
        highest_debian_versions(listing.debian_versions.iter().map(String::as_str))
            .into_iter()
            .filter(|(version, debian)| {
                published.contains(version.as_str())
                    && version.len() <= MAX_VERSION_TEXT
                    && debian.len() <= MAX_VERSION_TEXT
            })
            .map(|(version, debian)| DebianVersion { version, debian })
            .collect();
    let versions = Some(kept.to_vec());
    if status.versions != versions {
        status.last_change_time = Some(now.clone());
    }
    if status.versions != versions
        || status.index_sha256.as_deref() != Some(listing.index_sha256.as_str())
        || status.last_sync_time.is_none()
    {
        status.last_sync_time = Some(now.clone());
    }
    status.versions = versions;
    status.debian_versions = Some(debian_versions);
    status.index_url = Some(crate::text::redact_url(&listing.index_url));
    status.index_sha256 = Some(listing.index_sha256.clone());
    status.signing_key_fingerprint = if signed {
        listing.signing_key_fingerprint.clone()
    } else {
        None
    };
    status.skipped_versions = Some(i64::try_from(listing.skipped).unwrap_or(i64::MAX));
    status.release_date = listing.release_date().map(Time);
    status.release_valid_until = listing.valid_until().map(Time);
}

/// The highest [`MAX_VERSIONS`] of `versions` (sorted ascending).
fn highest(versions: &[String]) -> &[String] {
    &versions[versions.len().saturating_sub(MAX_VERSIONS)..]
}

/// Says how many versions are listed, and where. Read from the status alone, so that a 304 or a
/// recovery words it exactly as the sync that wrote the versions did.
fn ready_message(status: &DebianRepositorySourceStatus) -> String {
    let count = status.versions.as_ref().map_or(0, Vec::len);
    // Before the URL, which may be long enough to be cut off.
    let capped = if count >= MAX_VERSIONS {
        format!(" (status.versions holds at most {MAX_VERSIONS}: only the highest are kept)")
    } else {
        String::new()
    };
    match &status.index_url {
        Some(url) => format!("{count} versions listed{capped} in {url}"),
        None => format!("{count} versions listed{capped}"),
    }
}

fn versions_message(status: &DebianRepositorySourceStatus) -> String {
    let versions = status.versions.as_deref().unwrap_or_default();
    match versions.last() {
        Some(latest) => format!("now lists {} versions, the latest {latest}", versions.len()),
        None => "now lists no versions".to_owned(),
    }
}

fn no_signed_by_message() -> String {
    "spec.signedBy is not set, so the repository's signature and checksums are not verified against a trusted key".to_owned()
}

fn not_verified_unsigned() -> Desired {
    Desired::new(
        CONDITION_VERIFIED,
        false,
        REASON_NO_SIGNED_BY,
        no_signed_by_message(),
    )
}

fn verified_after_success(status: &DebianRepositorySourceStatus, signed: bool) -> Desired {
    if !signed {
        return not_verified_unsigned();
    }
    let by = status
        .signing_key_fingerprint
        .as_deref()
        .unwrap_or("a trusted key");
    Desired::new(
        CONDITION_VERIFIED,
        true,
        REASON_SIGNATURE_VERIFIED,
        format!("the Release is signed by {by} and the index matches its SHA256"),
    )
}

fn verified_after_failure(
    current: &DebianRepositorySourceStatus,
    signed: bool,
    err: &Failure,
) -> Desired {
    if !signed {
        return not_verified_unsigned();
    }
    if err.unverified() {
        return Desired::new(CONDITION_VERIFIED, false, err.reason(), err.message());
    }
    match current
        .conditions
        .as_deref()
        .and_then(|c| conditions::find(c, CONDITION_VERIFIED))
    {
        Some(previous) if previous.reason != REASON_NO_SIGNED_BY => Desired::new(
            CONDITION_VERIFIED,
            status_of(&previous.status),
            previous.reason.clone(),
            previous.message.clone(),
        ),
        _ => Desired::new(
            CONDITION_VERIFIED,
            Status::Unknown,
            REASON_NOT_YET_VERIFIED,
            "no Release has been verified yet",
        ),
    }
}

fn status_of(text: &str) -> Status {
    match text {
        "True" => Status::True,
        "False" => Status::False,
        _ => Status::Unknown,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_accepted_release_times_are_kept_in_status() {
        let date = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let until = k8s_openapi::jiff::Timestamp::from_second(1_700_600_000).unwrap();
        let mut fetched = listing(&["v1.31.1"], "aa");
        fetched.validators.release_date = Some(date);
        fetched.validators.valid_until = Some(until);
        let mut status = DebianRepositorySourceStatus::default();
        apply_listing(&mut status, &fetched, true, &Time(date));
        assert_eq!(status.release_date, Some(Time(date)));
        assert_eq!(status.release_valid_until, Some(Time(until)));
        assert_eq!(owned_fields(&status).release_date, Some(Time(date)));
    }

    #[test]
    fn replayed_expired_and_future_releases_are_unverified() {
        for err in [
            SyncError::ReleaseReplayed("older".into()),
            SyncError::ReleaseExpired("expired".into()),
            SyncError::ReleaseNotYetValid("future".into()),
        ] {
            assert!(Failure::Sync(err).unverified());
        }
        assert!(!Failure::Sync(SyncError::ParseError("x".into())).unverified());
    }

    use super::*;
    use crate::debian::Validators;
    use k8s_openapi::jiff::Timestamp;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    fn listing(versions: &[&str], sha: &str) -> Listing {
        Listing {
            versions: versions.iter().map(|v| (*v).to_owned()).collect(),
            debian_versions: Vec::new(),
            skipped: 2,
            index_url: "http://127.0.0.1/Packages.xz".to_owned(),
            index_sha256: sha.to_owned(),
            signing_key_fingerprint: Some("ABCD".to_owned()),
            validators: Validators::default(),
        }
    }

    struct Run {
        signed: bool,
    }

    impl Run {
        #[allow(clippy::needless_pass_by_value)]
        fn decide(
            &self,
            status: &DebianRepositorySourceStatus,
            result: Result<SyncOutcome, SyncError>,
            now: i64,
        ) -> Decision {
            decide(&Observed {
                generation: Some(3),
                status,
                signed: self.signed,
                result: &result.map_err(Failure::Sync),
                now: &at(now),
                interval: Duration::from_secs(300),
                jitter: 0.0,
            })
        }
    }

    const SIGNED: Run = Run { signed: true };

    impl Run {
        /// A first successful sync of one version.
        fn first_sync(&self) -> Decision {
            self.decide(
                &DebianRepositorySourceStatus::default(),
                Ok(SyncOutcome::Fetched(listing(&["v1.31.1"], "aa"))),
                100,
            )
        }
    }

    fn http_error(status: u16) -> SyncError {
        SyncError::HttpStatus {
            url: "u".into(),
            status,
        }
    }

    fn ready(status: &DebianRepositorySourceStatus) -> (&str, &str) {
        let c = conditions::find(status.conditions.as_deref().unwrap(), CONDITION_READY).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    fn verified(status: &DebianRepositorySourceStatus) -> (&str, &str) {
        let c =
            conditions::find(status.conditions.as_deref().unwrap(), CONDITION_VERIFIED).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    fn reasons(decision: &Decision) -> Vec<&'static str> {
        decision.notes.iter().map(|n| n.reason).collect()
    }

    #[test]
    fn first_signed_sync_publishes_versions_and_verifies() {
        let run = SIGNED;
        let d = run.decide(
            &DebianRepositorySourceStatus::default(),
            Ok(SyncOutcome::Fetched(listing(&["v1.31.1", "v1.31.2"], "aa"))),
            100,
        );
        assert_eq!(
            d.status.versions,
            Some(vec!["v1.31.1".to_owned(), "v1.31.2".to_owned()])
        );
        assert_eq!(ready(&d.status), ("True", REASON_SYNCED));
        assert_eq!(verified(&d.status), ("True", REASON_SIGNATURE_VERIFIED));
        assert_eq!(d.status.signing_key_fingerprint.as_deref(), Some("ABCD"));
        assert_eq!(d.status.index_sha256.as_deref(), Some("aa"));
        assert_eq!(d.status.skipped_versions, Some(2));
        assert_eq!(d.status.observed_generation, Some(3));
        assert_eq!(d.status.last_change_time, Some(at(100)));
        assert_eq!(d.status.last_sync_time, Some(at(100)));
        assert_eq!(reasons(&d), [EVENT_VERSIONS_CHANGED]);
        assert_eq!(d.requeue, Duration::from_secs(300));
    }

    #[test]
    fn steady_state_changes_nothing() {
        let run = SIGNED;
        let first = run.first_sync();
        let not_modified = run.decide(&first.status, Ok(SyncOutcome::NotModified), 400);
        assert_eq!(not_modified.status, first.status);
        assert!(not_modified.notes.is_empty());
        let same_index = run.decide(
            &first.status,
            Ok(SyncOutcome::Fetched(listing(&["v1.31.1"], "aa"))),
            700,
        );
        assert_eq!(same_index.status, first.status);
        assert!(same_index.notes.is_empty());
    }

    #[test]
    fn new_index_with_same_versions_moves_only_the_sync_time() {
        let run = SIGNED;
        let first = run.first_sync();
        let next = run.decide(
            &first.status,
            Ok(SyncOutcome::Fetched(listing(&["v1.31.1"], "bb"))),
            400,
        );
        assert_eq!(next.status.last_sync_time, Some(at(400)));
        assert_eq!(next.status.last_change_time, Some(at(100)));
        assert!(next.notes.is_empty());
    }

    #[test]
    fn every_failure_keeps_versions_and_warns_once_per_reason() {
        let run = SIGNED;
        let good = run.first_sync();
        let failures = sample_errors();
        for err in failures {
            let reason = err.reason();
            let d = run.decide(&good.status, Err(err), 200);
            assert_eq!(d.status.versions, good.status.versions, "{reason}");
            assert_eq!(d.status.index_sha256, good.status.index_sha256, "{reason}");
            assert_eq!(ready(&d.status), ("False", reason));
            assert_eq!(reasons(&d), [EVENT_LIST_VERSIONS_FAILED], "{reason}");
            assert!(d.notes[0].warning);
            assert!(d.notes[0].message.starts_with(reason));
            assert_eq!(d.requeue, RETRY_BASE);
            let again = run.decide(&d.status, Err(clone_error(&d)), 210);
            assert!(
                again.notes.is_empty(),
                "{reason}: a repeated failure must not warn again"
            );
            assert_eq!(
                again.status, d.status,
                "{reason}: a repeated failure must not write"
            );
            assert_eq!(again.requeue, RETRY_BASE * 2);
        }
    }

    /// One error of every kind.
    fn sample_errors() -> Vec<SyncError> {
        vec![
            SyncError::FetchFailed {
                url: "u".into(),
                message: "timed out".into(),
            },
            http_error(500),
            SyncError::SignatureInvalid("bad".into()),
            SyncError::ChecksumMismatch("sha".into()),
            SyncError::IndexTooLarge("big".into()),
            SyncError::ParseError("junk".into()),
            SyncError::NoMatchingPackages {
                package: "kubeadm".into(),
                architecture: "amd64".into(),
                index_url: "u".into(),
            },
        ]
    }

    /// The sample error whose reason the decision's Ready condition carries.
    fn clone_error(d: &Decision) -> SyncError {
        let reason = ready(&d.status).1.to_owned();
        sample_errors()
            .into_iter()
            .find(|e| e.reason() == reason)
            .unwrap()
    }

    #[test]
    fn signature_failures_mark_verified_false_and_other_failures_keep_it() {
        let run = SIGNED;
        let good = run.first_sync();
        let bad = run.decide(
            &good.status,
            Err(SyncError::SignatureInvalid("unknown key".into())),
            200,
        );
        assert_eq!(verified(&bad.status), ("False", "SignatureInvalid"));
        let down = run.decide(&good.status, Err(http_error(503)), 200);
        assert_eq!(verified(&down.status), ("True", REASON_SIGNATURE_VERIFIED));
        let first_down = run.decide(
            &DebianRepositorySourceStatus::default(),
            Err(http_error(503)),
            200,
        );
        assert_eq!(
            verified(&first_down.status),
            ("Unknown", REASON_NOT_YET_VERIFIED)
        );
        assert_eq!(first_down.status.versions, None);
    }

    #[test]
    fn recovery_is_announced_once() {
        let run = SIGNED;
        let good = run.first_sync();
        let bad = run.decide(&good.status, Err(http_error(500)), 200);
        let back = run.decide(&bad.status, Ok(SyncOutcome::NotModified), 300);
        assert_eq!(ready(&back.status), ("True", REASON_SYNCED));
        assert_eq!(reasons(&back), [EVENT_RECOVERED]);
        assert_eq!(back.status.versions, good.status.versions);
    }

    #[test]
    fn unsigned_sources_warn_once_that_they_are_not_verified() {
        let run = Run { signed: false };
        let first = run.decide(
            &DebianRepositorySourceStatus::default(),
            Ok(SyncOutcome::Fetched(listing(&["v1.27.1"], "aa"))),
            100,
        );
        assert_eq!(verified(&first.status), ("False", REASON_NO_SIGNED_BY));
        assert_eq!(first.status.signing_key_fingerprint, None);
        assert_eq!(
            reasons(&first),
            [EVENT_VERSIONS_CHANGED, REASON_NO_SIGNED_BY]
        );
        let later = run.decide(&first.status, Ok(SyncOutcome::NotModified), 400);
        assert!(later.notes.is_empty());
        let failing = run.decide(&first.status, Err(SyncError::ParseError("x".into())), 500);
        assert_eq!(verified(&failing.status), ("False", REASON_NO_SIGNED_BY));
        assert_eq!(reasons(&failing), [EVENT_LIST_VERSIONS_FAILED]);
    }

    #[test]
    fn retries_double_from_the_first_failure_and_stop_at_the_interval() {
        let run = SIGNED;
        let good = run.first_sync();
        let mut status = good.status;
        let mut now = 1_000;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let d = run.decide(&status, Err(http_error(503)), now);
            delays.push(d.requeue.as_secs());
            now += i64::try_from(d.requeue.as_secs()).unwrap();
            status = d.status;
        }
        assert_eq!(delays, [5, 5, 10, 20, 40, 80, 160, 300]);
        // The delay is read from status, so a new process (or leader) continues the sequence.
        let after_failover = run.decide(&status, Err(http_error(503)), now + 7);
        assert_eq!(after_failover.requeue, Duration::from_secs(300));
    }

    #[test]
    fn the_applied_status_holds_only_owned_fields() {
        let run = SIGNED;
        let first = run.first_sync();
        let value = serde_json::to_value(&first.status).unwrap();
        assert_eq!(
            crate::runtime::fixtures::sorted_keys(&value),
            [
                "conditions",
                "debianVersions",
                "indexSHA256",
                "indexURL",
                "lastChangeTime",
                "lastSyncTime",
                "observedGeneration",
                "signingKeyFingerprint",
                "skippedVersions",
                "versions"
            ]
        );
    }

    #[test]
    fn a_spec_error_sets_its_reason_without_a_list_versions_warning() {
        let err = SpecError::InvalidInterval("\"soon\" is not a duration".into());
        let d = decide(&Observed {
            generation: Some(4),
            status: &DebianRepositorySourceStatus::default(),
            signed: true,
            result: &Err(Failure::Spec(err)),
            now: &at(100),
            interval: Duration::from_secs(300),
            jitter: 0.0,
        });
        assert_eq!(ready(&d.status), ("False", "InvalidInterval"));
        assert!(reasons(&d).is_empty(), "{:?}", d.notes);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Step {
            Fetched(Vec<u32>, u8),
            NotModified,
            Failed(usize),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (prop::collection::vec(0u32..5, 1..4), 0u8..3)
                    .prop_map(|(v, sha)| Step::Fetched(v, sha)),
                Just(Step::NotModified),
                (0usize..7).prop_map(Step::Failed),
            ]
        }

        fn outcome(step: &Step) -> Result<SyncOutcome, SyncError> {
            match step {
                Step::Fetched(patches, sha) => {
                    let mut versions: Vec<String> =
                        patches.iter().map(|p| format!("v1.31.{p}")).collect();
                    versions.sort();
                    versions.dedup();
                    let refs: Vec<&str> = versions.iter().map(String::as_str).collect();
                    Ok(SyncOutcome::Fetched(listing(&refs, &format!("sha{sha}"))))
                }
                Step::NotModified => Ok(SyncOutcome::NotModified),
                Step::Failed(i) => Err(sample_errors().swap_remove(*i)),
            }
        }

        proptest! {
            /// Whatever happened before, repeating the last result writes nothing and
            /// announces nothing, and only a fetched index changes the published versions.
            #[test]
            fn repeats_are_silent_and_failures_keep_versions(
                signed in any::<bool>(),
                steps in prop::collection::vec(step(), 1..12),
            ) {
                let mut status = DebianRepositorySourceStatus::default();
                for (i, step) in steps.iter().enumerate() {
                    let now = i64::try_from(i).unwrap() * 60 + 1_000;
                    let run = Run { signed };
                    let d = run.decide(&status, outcome(step), now);
                    if !matches!(step, Step::Fetched(..)) {
                        prop_assert_eq!(&d.status.versions, &status.versions);
                    }
                    let again = run.decide(&d.status, outcome(step), now + 30);
                    prop_assert_eq!(&again.status, &d.status, "a repeat must not write");
                    prop_assert!(again.notes.is_empty(), "a repeat must not announce: {:?}", again.notes);
                    prop_assert!(d.requeue <= Duration::from_secs(330));
                    status = d.status;
                }
            }
        }
    }
}
