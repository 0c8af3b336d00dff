//! The Plan controller: [`observe`] (the MachineImages in the Plan's namespace, from the shared
//! cache) → [`decide()`] (pure: the highest usable image in range, the highest per minor) →
//! [`apply`] (one status write when something changed, then events on transitions).
//! Event-driven: it watches Plans and MachineImages and sets no timer.

mod apply;
pub mod decide;
mod observe;

use std::sync::Arc;

use api::v1alpha1::{
    ClusterClassClusterUpgrader, InClusterUpgradeAutomation, MachineImage, Plan, PlanStatus,
    RESUME_ROLLOUT_ANNOTATION,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};

pub use decide::{Decision, decide};

use crate::runtime::controller::{Core, InvalidObject, Reconciler, Start, Trigger};
use crate::runtime::status::ApiError;
use crate::runtime::{ReconcileError, Registration, Reporter, Running, Shared};

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
    core: Core,
    /// The shared MachineImage store.
    images: Store<GuardedImage>,
    /// The shared upgrader stores: their Clusters are what a rollout admits.
    class_upgraders: Store<DeserializeGuard<ClusterClassClusterUpgrader>>,
    in_cluster_upgraders: Store<DeserializeGuard<InClusterUpgradeAutomation>>,
}

/// Failures of the reconcile itself.
#[derive(
    Debug, thiserror::Error, strum::IntoStaticStr, strum::VariantNames, strum::EnumProperty,
)]
pub enum Error {
    /// The stored object does not match the schema.
    #[error(transparent)]
    InvalidObject(#[from] InvalidObject),
    /// Writing the status failed.
    #[error("writing status")]
    WriteStatus(#[source] ApiError),
}

fn start(shared: &Shared) -> Running {
    let cache = shared.caches.cache::<Guarded>();
    let images = shared.caches.cache::<GuardedImage>();
    let class = shared
        .caches
        .cache::<DeserializeGuard<ClusterClassClusterUpgrader>>();
    let in_cluster = shared
        .caches
        .cache::<DeserializeGuard<InClusterUpgradeAutomation>>();
    let reporter = Reporter::new::<Error>(shared, CONTROLLER, COMPONENT);
    let ctx = Context {
        core: Core::new(
            shared.client.clone(),
            reporter.metrics.clone(),
            shared.instance.clone(),
            COMPONENT,
        ),
        images: images.store.clone(),
        class_upgraders: class.store.clone(),
        in_cluster_upgraders: in_cluster.store.clone(),
    };
    let trigger = Trigger::GenerationOrAnnotation(RESUME_ROLLOUT_ANNOTATION);
    let start = Start::new(shared, &cache, trigger, 8);
    let (plans, plans_of_deleted) = (start.store(), start.store());
    start
        .watches(&images, move |image: Arc<GuardedImage>| {
            plans_in(&plans, image.namespace().as_deref())
        })
        .watches_deleted(&images, move |image: Arc<GuardedImage>| {
            plans_in(&plans_of_deleted, image.namespace().as_deref())
        })
        // An upgrader's status is where its Cluster's progress in a rollout shows.
        .watches(
            &class,
            |u: Arc<DeserializeGuard<ClusterClassClusterUpgrader>>| {
                followed(
                    u.0.as_ref()
                        .ok()
                        .map(|u| (u.namespace(), &u.spec.common().plan_ref.name)),
                )
            },
        )
        .watches(
            &in_cluster,
            |u: Arc<DeserializeGuard<InClusterUpgradeAutomation>>| {
                followed(
                    u.0.as_ref()
                        .ok()
                        .map(|u| (u.namespace(), &u.spec.common().plan_ref.name)),
                )
            },
        )
        .run(ctx, reporter)
}

/// The Plan an upgrader follows.
fn followed(plan: Option<(Option<String>, &String)>) -> Option<ObjectRef<Guarded>> {
    let (namespace, name) = plan?;
    Some(ObjectRef::new(name).within(&namespace?))
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

impl Reconciler<Plan> for Context {
    type Error = Error;

    fn core(&self) -> &Core {
        &self.core
    }

    async fn reconcile(&self, plan: &Plan, now: &Time) -> Result<Action, Error> {
        reconcile_plan(plan, self, now).await
    }

    fn retry(&self, _obj: &Guarded, err: &Error) -> Action {
        match err {
            Error::InvalidObject(_) => Action::await_change(),
            Error::WriteStatus(_) => Action::requeue(std::time::Duration::from_secs(5)),
        }
    }
}

/// The reconcile with the clock injected: observe → decide → apply.
pub async fn reconcile_plan(plan: &Plan, ctx: &Context, now: &Time) -> Result<Action, Error> {
    let images = observe::observe(plan, ctx);
    let default_status = PlanStatus::default();
    let current = plan.status.as_ref().unwrap_or(&default_status);
    let decision = decide(
        &plan.spec,
        plan.metadata.generation,
        &plan.namespace().unwrap_or_default(),
        &images,
        current,
        now,
    );
    let mut decision = decision;
    let requeue = match (&plan.spec.rollout, &decision.status.machine_image_details) {
        (Some(rollout), Some(target)) => {
            let members = observe::members(plan, rollout, target, ctx);
            decide::decide_rollout(
                &plan.spec,
                plan.metadata.generation,
                &mut decision,
                &members,
                current.rollout.as_ref(),
                plan.annotations()
                    .get(RESUME_ROLLOUT_ANNOTATION)
                    .map(String::as_str),
                now,
            )
        }
        _ => decide::decide_rollout(
            &plan.spec,
            plan.metadata.generation,
            &mut decision,
            &[],
            None,
            None,
            now,
        ),
    };
    apply::apply(ctx, plan, current, &decision).await?;
    Ok(requeue.map_or_else(Action::await_change, |wait| {
        Action::requeue(wait.saturating_sub(since(now)))
    }))
}

/// How long ago `now` was: the reconcile's clock is floored to whole seconds, so a wait decided
/// from it is counted from the real clock, not from up to a second before it.
fn since(now: &Time) -> std::time::Duration {
    std::time::Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(now.0))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
