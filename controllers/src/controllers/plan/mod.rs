//! The Plan controller: observe (the MachineImages in the Plan's namespace, from the shared cache)
//! → decide (pure, [`select::decide`]: the highest usable image in range, the highest per minor)
//! → apply (one status write when something changed, then events on transitions).
//! Event-driven: it watches Plans and MachineImages and sets no timer.

pub mod select;

use std::sync::Arc;

use api::constraint::VersionRange;
use api::v1alpha1::{MachineImage, Plan, PlanStatus};
use futures::FutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

use crate::runtime::caches::generation_changed;
use crate::runtime::status::{WriteError, apply_status};
use crate::runtime::{
    ControllerMetrics, Events, ReconcileError, Registration, Reporter, Running, Shared, all_ready,
    drive, synced,
};

/// Name in logs and metrics.
pub const CONTROLLER: &str = "plan";
/// Field manager of the status writes.
pub const FIELD_MANAGER: &str = "kubernetes-upgrader-plan";
/// Event source component, as in v0.6.
pub const COMPONENT: &str = "plan-reconciler";

/// The manager's handle on this controller.
pub const REGISTRATION: Registration = Registration {
    name: CONTROLLER,
    categories: Error::CATEGORIES,
    start,
};

/// How the store holds Plans.
pub type Guarded = DeserializeGuard<Plan>;
/// How the shared store holds MachineImages.
pub type GuardedImage = DeserializeGuard<MachineImage>;

/// Shared state of the controller.
pub struct Context {
    client: Client,
    metrics: ControllerMetrics,
    events: Events,
    images: Store<GuardedImage>,
}

/// Failures of the reconcile itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error("the object cannot be read: {0}")]
    InvalidObject(String),
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] WriteError),
}

impl ReconcileError for Error {
    const CATEGORIES: &'static [&'static str] = &["InvalidObject", "WriteStatus"];

    fn category(&self) -> &'static str {
        match self {
            Self::InvalidObject(_) => "InvalidObject",
            Self::WriteStatus(_) => "WriteStatus",
        }
    }
}

fn start(shared: &Shared) -> Running {
    let cache = shared.caches.cache::<Guarded>();
    let images = shared.caches.cache::<GuardedImage>();
    let reporter = Reporter::new::<Error>(shared, CONTROLLER, COMPONENT);
    let ctx = Arc::new(Context {
        client: shared.client.clone(),
        metrics: reporter.metrics.clone(),
        events: Events::new(shared.client.clone(), COMPONENT, shared.instance.clone()),
        images: images.store.clone(),
    });
    let ready = all_ready(vec![
        synced(cache.store.clone()),
        synced(images.store.clone()),
    ]);
    let (Some(events), Some(image_events)) = (cache.subscribe(), images.subscribe()) else {
        return Running::stream_ended(ready);
    };
    let shutdown = shared.shutdown.clone();
    let trigger = generation_changed(events, cache.store.clone());
    let plans = cache.store.clone();
    let plans_of_deleted = cache.store.clone();
    let deleted_images = images.deleted();
    let run = async move {
        let results = Controller::for_shared_stream(trigger, cache.store)
            .watches_shared_stream(image_events, move |image: Arc<GuardedImage>| {
                plans_in(&plans, image.namespace().as_deref())
            })
            .watches_shared_stream(deleted_images, move |image: Arc<GuardedImage>| {
                plans_in(&plans_of_deleted, image.namespace().as_deref())
            })
            .with_config(ControllerConfig::default().concurrency(8))
            .graceful_shutdown_on(shutdown.clone().wait())
            .run(reconcile, error_policy, ctx);
        drive(results, reporter, shutdown).await
    }
    .boxed();
    Running { ready, run }
}

/// Every Plan in `namespace`: a MachineImage change may change any of their choices.
fn plans_in(plans: &Store<Guarded>, namespace: Option<&str>) -> Vec<ObjectRef<Guarded>> {
    plans
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == namespace)
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run expects
fn error_policy(_obj: Arc<Guarded>, err: &Error, _ctx: Arc<Context>) -> Action {
    match err {
        Error::InvalidObject(_) => Action::await_change(),
        Error::WriteStatus(_) => Action::requeue(std::time::Duration::from_secs(5)),
    }
}

/// Reconciles one Plan.
#[tracing::instrument(skip(obj, ctx), fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile(obj: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile();
    let plan = match &obj.0 {
        Ok(plan) => plan,
        Err(invalid) => return Err(Error::InvalidObject(invalid.error.clone())),
    };
    let now = crate::runtime::now();
    reconcile_plan(plan, &ctx, &now).await
}

/// The reconcile body with the clock injected.
pub async fn reconcile_plan(plan: &Plan, ctx: &Context, now: &Time) -> Result<Action, Error> {
    let namespace = plan.namespace().unwrap_or_default();
    // One pass over the shared store, keeping only the images the decision can pick.
    let state = ctx.images.state();
    let images = match VersionRange::parse(&plan.spec.version_range) {
        Ok(range) => select::choices(
            state.iter().filter_map(|i| i.0.as_ref().ok()),
            &namespace,
            plan.spec.machine_image_selector.as_ref(),
            &range,
        ),
        // decide reports the invalid range.
        Err(_) => Vec::new(),
    };
    let default_status = PlanStatus::default();
    let current = plan.status.as_ref().unwrap_or(&default_status);
    let decision = select::decide(
        &plan.spec,
        plan.metadata.generation,
        &namespace,
        &images,
        current,
        now,
    );
    if decision.status != *current {
        let api: Api<Plan> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_status(&api, &plan.name_any(), FIELD_MANAGER, &decision.status)
            .await
            .map_err(Error::WriteStatus)?;
    }
    for note in &decision.notes {
        ctx.events.publish(plan, note).await;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests;
