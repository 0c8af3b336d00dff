//! Each hook's request, from its body to its answer: decode (unknown fields ignored, a bad body
//! answered `Failure` naming the field), find the upgrader that acts on the Cluster, read what
//! the decision needs, decide (pure, [`super::handlers`]) and answer. A Cluster no upgrader
//! names is not ours: its lifecycle hooks pass at once.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::handlers::after::{self, Part};
use super::handlers::{Held, before, plan};
use super::observe::{Observer, ReadError};
use super::wire::{
    AfterRequest, BeforeRequest, GenerateUpgradePlanRequest, GenerateUpgradePlanResponse, Hook,
    HookResponse, RequestCluster,
};
use crate::controllers::upgrader::cluster;
use crate::controllers::upgrader::in_place::observe::Management;
use crate::controllers::upgrader::in_place::{CONTROL_PLANE_POOL, Role, spare};
use crate::runtime::cause_chain;

/// Why a request is answered `Failure` before any decision.
fn decode<T: DeserializeOwned>(hook: Hook, body: &[u8]) -> Result<T, String> {
    let request: T = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not a {}Request: {e}", hook.name()))?;
    Ok(request)
}

/// The Cluster's namespace and name, checked before they go into request paths.
fn identify(cluster: &RequestCluster) -> Result<(&str, &str), String> {
    let meta = &cluster.metadata;
    if !api::names::is_dns_subdomain(&meta.namespace) {
        return Err(format!(
            "cluster.metadata.namespace {:?} is not a namespace name",
            meta.namespace
        ));
    }
    if !api::names::is_dns_subdomain(&meta.name) {
        return Err(format!(
            "cluster.metadata.name {:?} is not a Cluster name",
            meta.name
        ));
    }
    Ok((&meta.namespace, &meta.name))
}

/// The answer to `hook`'s request `body`, as JSON; `observer` is `None` while this replica does
/// not lead or its caches have not synced, which fails every hook (and so holds the upgrade).
pub async fn answer(
    observer: Option<&Observer>,
    hook: Hook,
    body: &[u8],
    now: Timestamp,
) -> serde_json::Value {
    const NOT_READY: &str =
        "this replica does not lead, or its caches have not synced yet; ask again";
    match hook {
        Hook::GenerateUpgradePlan => to_json(match (observer, decode(hook, body)) {
            (_, Err(message)) => GenerateUpgradePlanResponse::failure(message),
            (None, Ok(_)) => GenerateUpgradePlanResponse::failure(NOT_READY),
            (Some(observer), Ok(request)) => generate_upgrade_plan(observer, &request),
        }),
        Hook::BeforeClusterUpgrade
        | Hook::BeforeControlPlaneUpgrade
        | Hook::BeforeWorkersUpgrade => to_json(match (observer, decode(hook, body)) {
            (_, Err(message)) => HookResponse::failure(hook, message),
            (None, Ok(_)) => HookResponse::failure(hook, NOT_READY),
            (Some(observer), Ok(request)) => before_hook(observer, hook, &request, now).await,
        }),
        Hook::AfterControlPlaneUpgrade | Hook::AfterWorkersUpgrade => {
            to_json(match (observer, decode(hook, body)) {
                (_, Err(message)) => HookResponse::failure(hook, message),
                (None, Ok(_)) => HookResponse::failure(hook, NOT_READY),
                (Some(observer), Ok(request)) => after_hook(observer, hook, &request).await,
            })
        }
    }
}

fn to_json(response: impl Serialize) -> serde_json::Value {
    serde_json::to_value(response).unwrap_or_default()
}

fn generate_upgrade_plan(
    observer: &Observer,
    request: &GenerateUpgradePlanRequest,
) -> GenerateUpgradePlanResponse {
    let (namespace, name) = match identify(&request.cluster) {
        Ok(id) => id,
        Err(message) => return GenerateUpgradePlanResponse::failure(message),
    };
    let acting = observer.acting(namespace, name);
    let owner = acting.as_ref().map(super::observe::Acting::owner);
    let images = owner.as_ref().and_then(|o| observer.plan_images(o));
    let mut answer = plan::generate(
        owner.as_ref(),
        images.as_deref(),
        &request.from_control_plane_kubernetes_version,
        &request.to_kubernetes_version,
    );
    if acting.is_none() {
        answer.message = format!("{} (Cluster {namespace}/{name})", answer.message);
    }
    answer
}

fn respond(hook: Hook, held: Option<Held>) -> HookResponse {
    match held {
        Some(held) => HookResponse::success(hook, held.seconds, held.message),
        None => HookResponse::success(hook, 0, ""),
    }
}

async fn before_hook(
    observer: &Observer,
    hook: Hook,
    request: &BeforeRequest,
    now: Timestamp,
) -> HookResponse {
    let (namespace, name) = match identify(&request.cluster) {
        Ok(id) => id,
        Err(message) => return HookResponse::failure(hook, message),
    };
    let Some(acting) = observer.acting(namespace, name) else {
        return HookResponse::success(hook, 0, "");
    };
    match before_inputs(observer, hook, namespace, name).await {
        Ok(None) => HookResponse::success(
            hook,
            super::handlers::HOLD_SECONDS,
            format!(
                "{} holds the upgrade: the Cluster is not found",
                acting.claimant
            ),
        ),
        Ok(Some((mut view, available, spare))) => respond(hook, {
            // A fleet rollout admits this Cluster, or the upgrade waits as the upgrader would.
            view.admission = observer.admission(&acting.owner(), name, &view.labels, now);
            before::hold(&before::Inputs {
                owner: acting.owner(),
                cluster: &view,
                available,
                spare,
                now,
            })
        }),
        Err(err) => HookResponse::failure(hook, cause_chain(&err)),
    }
}

type BeforeRead = (
    crate::controllers::upgrader::gates::ClusterView,
    Result<(), String>,
    Option<Result<(), spare::NoSpareHost>>,
);

async fn before_inputs(
    observer: &Observer,
    hook: Hook,
    namespace: &str,
    name: &str,
) -> Result<Option<BeforeRead>, ReadError> {
    let access = observer.access().await?;
    let Some(raw) = observer.cluster(&access, namespace, name).await? else {
        return Ok(None);
    };
    let view = cluster::view(&raw);
    let available = before::available(access.api, &raw);
    let management = observer.management(&access, namespace, name).await?;
    let spare = management
        .is_elemental()
        .then(|| spare_for(hook, &management));
    Ok(Some((view, available, spare)))
}

/// The spare-host gate over the pools `hook` moves: the control plane's, the workers', or all.
fn spare_for(hook: Hook, management: &Management) -> Result<(), spare::NoSpareHost> {
    let pools = management.pools();
    let moved: Vec<spare::Pool<'_>> = pools
        .iter()
        .filter(|(pool, _)| match hook {
            Hook::BeforeControlPlaneUpgrade => pool == CONTROL_PLANE_POOL,
            Hook::BeforeWorkersUpgrade => pool != CONTROL_PLANE_POOL,
            _ => true,
        })
        .map(|(name, selector)| spare::Pool {
            name,
            selector: selector.as_ref(),
        })
        .collect();
    let labels: Vec<&BTreeMap<String, String>> =
        management.hosts.values().map(|h| &h.labels).collect();
    spare::check(&moved, &labels)
}

async fn after_hook(observer: &Observer, hook: Hook, request: &AfterRequest) -> HookResponse {
    let (namespace, name) = match identify(&request.cluster) {
        Ok(id) => id,
        Err(message) => return HookResponse::failure(hook, message),
    };
    if observer.acting(namespace, name).is_none() {
        return HookResponse::success(hook, 0, "");
    }
    let part = if hook == Hook::AfterControlPlaneUpgrade {
        Part::ControlPlane
    } else {
        Part::Workers
    };
    let read = async {
        let access = observer.access().await?;
        let management = observer.management(&access, namespace, name).await?;
        if !management.is_elemental() {
            return Ok(None);
        }
        let names: Vec<String> = management
            .machines
            .iter()
            .filter(|m| match part {
                Part::ControlPlane => m.role == Role::ControlPlane,
                Part::Workers => m.role != Role::ControlPlane,
            })
            .filter_map(|m| m.node.clone())
            .collect();
        let nodes = if names.is_empty() {
            BTreeMap::new()
        } else {
            observer.nodes(namespace, name, &names).await?
        };
        Ok::<_, ReadError>(Some(management.views(&nodes, &BTreeMap::new(), "", None)))
    };
    match read.await {
        Ok(None) => HookResponse::success(hook, 0, ""),
        Ok(Some(views)) => respond(hook, after::hold(part, &views, &observer.stamps(namespace))),
        Err(err) => HookResponse::failure(hook, cause_chain(&err)),
    }
}
