//! The skeleton every controller runs on: the handles its context shares ([`Core`]), what it
//! implements ([`Reconciler`]: its reconcile with the object read and the clock taken, and its
//! retry policy), and [`Start`], which subscribes to the shared caches and runs
//! `Controller::for_shared_stream` until shutdown, reporting each result through the
//! [`Reporter`].
//!
//! A controller's `start` is then: its [`Reporter`], its context, and a [`Start`] naming the
//! primary kind's trigger, the related kinds and the concurrency.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use super::caches::{Cacheable, Watchable, generation_changed, generation_or_annotation_changed};
use super::{ControllerMetrics, Events, ReconcileError, Reporter, Running, Shared, drive, synced};

/// What every controller's context holds: the API client, the controller's series and its
/// event publisher.
pub struct Core {
    /// The API client.
    pub client: Client,
    /// The controller's series (`runs`, `failures`, `duration`, and its own).
    pub metrics: ControllerMetrics,
    /// Publishes the controller's Normal events.
    pub events: Events,
}

impl Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

impl Core {
    /// The handles of a controller whose events come from `component` (reported by `instance`).
    pub fn new(
        client: Client,
        metrics: ControllerMetrics,
        instance: Option<String>,
        component: &str,
    ) -> Self {
        Self {
            events: Events::new(client.clone(), component, instance),
            client,
            metrics,
        }
    }
}

/// The stored object does not match its kind's schema: every controller's permanent error for
/// an object it cannot read.
#[derive(Debug, thiserror::Error)]
#[error("the object cannot be read: {0}")]
pub struct InvalidObject(pub String);

/// What a controller of the kind `K` implements; [`reconcile`] and [`error_policy`] wrap it for
/// kube's `Controller::run`.
pub trait Reconciler<K>: Send + Sync + 'static {
    /// The reconcile error: a `thiserror` enum deriving its categories (see [`ReconcileError`]).
    type Error: ReconcileError + From<InvalidObject>;

    /// The context's shared handles.
    fn core(&self) -> &Core;

    /// Reconciles `object`, read and schema-checked, at `now`.
    fn reconcile(
        &self,
        object: &K,
        now: &Time,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send;

    /// When to look at `object` again after `error`.
    fn retry(&self, object: &DeserializeGuard<K>, error: &Self::Error) -> Action;
}

/// One reconcile: timed, the object read (a malformed one is [`InvalidObject`]), the clock
/// taken, then the controller's [`Reconciler::reconcile`].
#[tracing::instrument(skip(obj, ctx), fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
pub async fn reconcile<K, C>(obj: Arc<DeserializeGuard<K>>, ctx: Arc<C>) -> Result<Action, C::Error>
where
    K: Cacheable,
    DeserializeGuard<K>: Cacheable,
    C: Reconciler<K>,
{
    let _timer = ctx.core().metrics.reconcile();
    let object = match &obj.0 {
        Ok(object) => object,
        Err(invalid) => return Err(InvalidObject(invalid.error.clone()).into()),
    };
    ctx.reconcile(object, &super::now()).await
}

/// The signature kube's `Controller::run` expects, over [`Reconciler::retry`].
#[allow(clippy::needless_pass_by_value)] // the signature kube's Controller::run expects
pub fn error_policy<K, C: Reconciler<K>>(
    obj: Arc<DeserializeGuard<K>>,
    err: &C::Error,
    ctx: Arc<C>,
) -> Action {
    ctx.retry(&obj, err)
}

/// Which changes of the primary kind start a reconcile.
#[derive(Clone, Copy, Debug)]
pub enum Trigger {
    /// Every change the watch applies.
    Every,
    /// A changed generation only: status writes, our own included, start none.
    Generation,
    /// A changed generation or value of this annotation.
    GenerationOrAnnotation(&'static str),
}

type Guarded<K> = DeserializeGuard<K>;
type Configure<K> = Box<dyn FnOnce(Controller<Guarded<K>>) -> Controller<Guarded<K>> + Send>;

/// Starts a controller of `K` over the shared caches: the primary kind's store and trigger, the
/// related kinds' streams (each cache also joins the readiness), and the concurrency.
pub struct Start<K>
where
    K: Cacheable,
    Guarded<K>: Cacheable,
{
    shared: Shared,
    cache: super::Cache<Guarded<K>>,
    trigger: Option<BoxStream<'static, Arc<Guarded<K>>>>,
    readiness: Vec<BoxFuture<'static, ()>>,
    related: Vec<Configure<K>>,
    concurrency: u16,
    /// A shared watch was started before a subscription: the controller cannot run.
    ended: bool,
}

impl<K> Start<K>
where
    K: Cacheable,
    Guarded<K>: Cacheable,
{
    /// A controller of the kind `cache` holds, started on changes that pass `trigger`, with at
    /// most `concurrency` reconciles at once.
    pub fn new(
        shared: &Shared,
        cache: &super::Cache<Guarded<K>>,
        trigger: Trigger,
        concurrency: u16,
    ) -> Self {
        let store = cache.store.clone();
        let events = cache.subscribe();
        let ended = events.is_none();
        let trigger = events.map(|events| -> BoxStream<'static, Arc<Guarded<K>>> {
            match trigger {
                Trigger::Every => events.boxed(),
                Trigger::Generation => generation_changed(events, store.clone()).boxed(),
                Trigger::GenerationOrAnnotation(key) => {
                    generation_or_annotation_changed(events, store.clone(), key).boxed()
                }
            }
        });
        Self {
            shared: shared.clone(),
            readiness: vec![synced(store)],
            cache: cache.clone(),
            trigger,
            related: Vec::new(),
            concurrency,
            ended,
        }
    }

    /// The primary kind's store.
    pub fn store(&self) -> Store<Guarded<K>> {
        self.cache.store.clone()
    }

    /// Another subscription to the primary kind's applied objects, for what keeps its own
    /// view of them (an index).
    pub fn subscribe(&mut self) -> Option<impl Stream<Item = Arc<Guarded<K>>> + Send + 'static> {
        let events = self.cache.subscribe();
        self.ended |= events.is_none();
        events
    }

    /// Reconciles the objects `mapper` names for each change of `R` in `cache`.
    #[must_use]
    pub fn watches<R, I>(
        mut self,
        cache: &super::Cache<R>,
        mapper: impl Fn(Arc<R>) -> I + Sync + Send + 'static,
    ) -> Self
    where
        R: Watchable,
        I: IntoIterator<Item = ObjectRef<Guarded<K>>> + 'static,
        I::IntoIter: Send,
    {
        let Some(events) = cache.subscribe() else {
            self.ended = true;
            return self;
        };
        self.readiness.push(synced(cache.store.clone()));
        self.mapped(events, mapper)
    }

    /// Reconciles the objects `mapper` names for each deletion of `R` in `cache`, which
    /// [`Start::watches`] does not see.
    #[must_use]
    pub fn watches_deleted<R, I>(
        self,
        cache: &super::Cache<R>,
        mapper: impl Fn(Arc<R>) -> I + Sync + Send + 'static,
    ) -> Self
    where
        R: Watchable,
        I: IntoIterator<Item = ObjectRef<Guarded<K>>> + 'static,
        I::IntoIter: Send,
    {
        self.mapped(cache.deleted(), mapper)
    }

    /// Reconciles the objects `mapper` names for each object of `stream`.
    fn mapped<R, I>(
        mut self,
        stream: impl Stream<Item = Arc<R>> + Send + 'static,
        mapper: impl Fn(Arc<R>) -> I + Sync + Send + 'static,
    ) -> Self
    where
        R: Watchable,
        I: IntoIterator<Item = ObjectRef<Guarded<K>>> + 'static,
        I::IntoIter: Send,
    {
        self.related.push(Box::new(move |controller| {
            controller.watches_shared_stream(stream, mapper)
        }));
        self
    }

    /// Reconciles the owner of each changed `R` in `cache`.
    #[must_use]
    pub fn owns<R: Watchable>(mut self, cache: &super::Cache<R>) -> Self {
        let Some(events) = cache.subscribe() else {
            self.ended = true;
            return self;
        };
        self.readiness.push(synced(cache.store.clone()));
        self.related.push(Box::new(move |controller| {
            controller.owns_shared_stream(events)
        }));
        self
    }

    /// Also reconciles the objects `requests` names (from a watch outside the shared caches).
    #[must_use]
    pub fn reconcile_on(
        mut self,
        requests: impl Stream<Item = ObjectRef<Guarded<K>>> + Send + 'static,
    ) -> Self {
        self.related.push(Box::new(move |controller| {
            controller.reconcile_on(requests)
        }));
        self
    }

    /// Runs the controller with `ctx` until shutdown, each result reported by `reporter`. No
    /// reconcile starts before every cache it reads has synced: a decision over a store still
    /// filling (a Plan seeing no images yet) would write a state that is not the world's.
    pub fn run<C: Reconciler<K>>(self, ctx: C, reporter: Reporter) -> Running {
        let ready = super::all_ready(self.readiness).shared();
        let Some(trigger) = self.trigger.filter(|_| !self.ended) else {
            return Running::stream_ended(ready.boxed());
        };
        let shutdown = self.shared.shutdown.clone();
        let mut controller = Controller::for_shared_stream(trigger, self.cache.store);
        for configure in self.related {
            controller = configure(controller);
        }
        let results = controller
            .with_config(Config::default().concurrency(self.concurrency))
            .graceful_shutdown_on(shutdown.clone().wait())
            .run(
                {
                    let synced = ready.clone();
                    move |obj, ctx| {
                        let synced = synced.clone();
                        async move {
                            synced.await;
                            reconcile::<K, C>(obj, ctx).await
                        }
                    }
                },
                error_policy::<K, C>,
                Arc::new(ctx),
            );
        Running {
            ready: ready.boxed(),
            run: drive(results, reporter, shutdown).boxed(),
        }
    }
}
