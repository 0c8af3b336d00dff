//! Apply: the Decision carried out, in order. The step first (and the status as the written
//! Cluster will be seen), then the status when it changed, then the host writes the persisted
//! records name, then the events.

use std::time::Duration;

use api::v1alpha1::UpgraderStatus;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};

use super::decide::{self, Decision};
use super::observe::Observation;
use super::{Context, Error, FIELD_MANAGER, UpgraderKind, cluster, gates, in_place};
use crate::runtime::status::{ApiError, apply_status_at};

/// Carries out `decision` and `actions` for `upgrader`, a ClusterClassClusterUpgrader or an
/// InClusterUpgradeAutomation (its status by server-side apply).
pub async fn apply<K: UpgraderKind>(
    ctx: &Context,
    upgrader: &K,
    observed: &Observation,
    mut decision: Decision,
    actions: &[in_place::Action],
    now: Timestamp,
) -> Result<Action, Error> {
    let spec = upgrader.view();
    let reference = upgrader.object_ref(&());
    let default_status = UpgraderStatus::default();
    let current = upgrader.upgrader_status().unwrap_or(&default_status);
    let subject = decide::Subject {
        spec,
        status: current,
        generation: upgrader.meta().generation,
    };
    if let (Some(step), Some(access)) = (decision.write.clone(), observed.access.as_ref())
        && let Some(written) = write_step(
            ctx,
            &reference,
            spec.cluster_name,
            observed.raw.as_ref(),
            access,
            &step,
        )
        .await?
    {
        let post = decide::after_write(subject, observed, &written, access.api, &step, now);
        decide::settle_after_write(&mut decision, &post);
    }
    if decision.status != *current {
        let api: Api<K> = Api::namespaced(ctx.core.client.clone(), &observed.namespace);
        // Host records decided from an older read must not overwrite newer ones: the write
        // carries the resourceVersion it was decided from (unless a step was just written,
        // whose record must not be lost).
        let carries_hosts = decision.status.hosts.is_some() || current.hosts.is_some();
        let version = upgrader.meta().resource_version.as_deref();
        let at = version.filter(|_| carries_hosts && decision.write.is_none());
        match apply_status_at(
            &api,
            &upgrader.name_any(),
            FIELD_MANAGER,
            &decision.status,
            at,
        )
        .await
        {
            Ok(_) => {}
            Err(ApiError::Api(kube::Error::Api(e))) if e.code == 409 => {
                tracing::debug!("status decided from a stale read; observing again");
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Err(e) => return Err(Error::WriteStatus(e)),
        }
    }
    let mut failed = None;
    if let (Some(Ok((Some((_, management)), _, Some(workload)))), Some(access)) =
        (&observed.hosts, &observed.access)
    {
        let settings = Perform {
            owner: super::observe::cordon_owner(upgrader),
            upgrade_recovery: upgrader
                .in_place()
                .and_then(|p| p.upgrade_recovery)
                .unwrap_or(false),
            drain: in_place::drain::Options::from_spec(
                upgrader.in_place().and_then(|p| p.drain.as_ref()),
            ),
            machines: in_place::observe::machine_resource(&access.resource.version),
        };
        // Each host's write on its own: one failing does not stop the others.
        for action in actions {
            let done = Box::pin(perform(
                ctx,
                workload,
                management,
                &observed.namespace,
                action,
                &settings,
            ))
            .await;
            match done {
                Ok(()) => {}
                // The Node, host or Machine is gone: the next pass drops its record.
                Err(ApiError::Api(kube::Error::Api(e))) if e.code == 404 => {
                    tracing::info!(?action, "the object is gone; its host is dropped next pass");
                }
                Err(source) => {
                    tracing::warn!(?action, error = %crate::runtime::cause_chain(&source), "host write failed");
                    failed.get_or_insert(Error::WriteHost(format!("{action:?}"), source));
                }
            }
        }
    }
    for note in &decision.notes {
        ctx.core.events.publish_to(&reference, note).await;
    }
    if let Some(error) = failed {
        return Err(error);
    }
    let requeue = if actions.is_empty() {
        decision.requeue
    } else {
        // Look again soon: the writes just made are observed next.
        Some(Duration::from_secs(1))
    };
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Writes `step` to the Cluster; returns the Cluster as written.
async fn write_step(
    ctx: &Context,
    upgrader: &ObjectReference,
    name: &str,
    raw: Option<&serde_json::Value>,
    access: &cluster::Access,
    step: &gates::Step,
) -> Result<Option<serde_json::Value>, Error> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let namespace = upgrader.namespace.clone().unwrap_or_default();
    cluster::write_step(
        &ctx.core.client,
        access,
        &namespace,
        name,
        raw,
        step,
        FIELD_MANAGER,
    )
    .await
    .map(Some)
    .map_err(|source| {
        Error::WriteCluster(
            format!("writing {} to Cluster {name}", step.version_string()),
            source,
        )
    })
}

/// What the in-place writes take from the upgrader.
struct Perform {
    /// Its `cordoned-by` mark.
    owner: String,
    /// `spec.inPlace.upgradeRecovery`.
    upgrade_recovery: bool,
    /// `spec.inPlace.drain`.
    drain: in_place::drain::Options,
    /// Cluster API's Machine resource in the served version.
    machines: ApiResource,
}

/// Performs one in-place write.
async fn perform(
    ctx: &Context,
    workload: &Client,
    management: &in_place::observe::Management,
    namespace: &str,
    action: &in_place::Action,
    settings: &Perform,
) -> Result<(), ApiError> {
    use in_place::workload as write;
    match action {
        in_place::Action::Cordon { node } => {
            write::cordon(workload, node, &settings.owner, FIELD_MANAGER).await
        }
        in_place::Action::Uncordon { node } => {
            write::uncordon(workload, node, &settings.owner, FIELD_MANAGER).await
        }
        in_place::Action::Adopt { node, mark } => {
            write::uncordon(workload, node, mark, FIELD_MANAGER).await
        }
        in_place::Action::Evict { node } => write::evict(workload, node, settings.drain)
            .await
            .map(|_| ()),
        in_place::Action::LabelPending { host } => {
            write::label_pending(&ctx.core.client, namespace, host, FIELD_MANAGER).await
        }
        in_place::Action::ApplyImage { machine, image } => {
            let Some(infrastructure) = management.infrastructure_of(machine) else {
                return Ok(());
            };
            let Some(uid) = management.elemental_machine_uid(infrastructure) else {
                return Ok(());
            };
            write::apply_image(
                &ctx.core.client,
                namespace,
                (infrastructure, uid),
                image,
                settings.upgrade_recovery,
                FIELD_MANAGER,
            )
            .await
        }
        in_place::Action::SkipRemediation { machine }
        | in_place::Action::AllowRemediation { machine } => {
            let skip = matches!(action, in_place::Action::SkipRemediation { .. });
            write::skip_remediation(
                &ctx.core.client,
                &settings.machines,
                namespace,
                machine,
                skip,
                FIELD_MANAGER,
            )
            .await
        }
    }
}
