//! The apply step: one status write when the decision differs from the current status, the
//! validators remembered once the status holds their listing, then the decision's events.

use api::v1alpha1::{DebianRepositorySource, DebianRepositorySourceStatus};
use kube::{Api, ResourceExt};

use super::{Context, Decision, Error, FIELD_MANAGER, Failure};
use crate::debian::SyncOutcome;
use crate::runtime::status::apply_status;

/// What the observe step leaves for the apply step besides the decision.
pub(super) struct Synced<'a> {
    /// The source's uid, the key of its memory.
    pub uid: &'a str,
    /// The memory key of the spec and keys the sync used.
    pub key: Option<String>,
    /// The sync result.
    pub result: &'a Result<SyncOutcome, Failure>,
}

/// Carries out `decision` for `source`, whose status is `current`.
pub(super) async fn apply(
    ctx: &Context,
    source: &DebianRepositorySource,
    current: &DebianRepositorySourceStatus,
    decision: &Decision,
    synced: Synced<'_>,
) -> Result<(), Error> {
    if decision.status != *current {
        let api: Api<DebianRepositorySource> = Api::namespaced(
            ctx.core.client.clone(),
            &source.namespace().unwrap_or_default(),
        );
        if let Err(err) =
            apply_status(&api, &source.name_any(), FIELD_MANAGER, &decision.status).await
        {
            let mut memory = ctx.memory();
            let entry = memory.entry(synced.uid.to_owned()).or_default();
            entry.write_failures = entry.write_failures.saturating_add(1);
            return Err(Error::WriteStatus(err));
        }
    }
    remember_after_write(ctx, synced);
    for note in &decision.notes {
        ctx.core.events.publish(source, note).await;
    }
    Ok(())
}

/// Once the status holds a listing, remembers the validators that belong to it; never before, so
/// that a failed status write cannot turn the next poll into a 304 that keeps stale versions.
fn remember_after_write(ctx: &Context, synced: Synced<'_>) {
    let mut memory = ctx.memory();
    let entry = memory.entry(synced.uid.to_owned()).or_default();
    entry.write_failures = 0;
    if let (Some(key), Ok(SyncOutcome::Fetched(listing))) = (synced.key, synced.result) {
        entry.key = key;
        entry.validators = Some((listing.validators.clone(), listing.index_sha256.clone()));
    }
}
