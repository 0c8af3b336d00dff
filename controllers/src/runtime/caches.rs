//! One reflector per watched kind (and label selector), shared by every controller of the
//! manager: the Syncer, Plan and upgraders map events through the same store instead of each
//! opening its own watch.
//!
//! Each store holds the [`Projected`] objects: what the controllers read, no more.
//!
//! Controllers ask for a [`Cache`] while they start, and subscribe to its events; the manager then
//! calls [`Caches::start`], which opens each watch once and drives it until shutdown.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::projection::Projected;
use super::{ControllerError, Running, synced};
use crate::shutdown::Shutdown;

/// Events buffered per subscriber before the watch waits for slow readers.
const BUFFER: usize = 1024;

/// Objects per page of a watch's initial list. A page is parsed whole, managed fields and all,
/// before its objects are projected one by one, so the page size bounds what a list holds in
/// flight: at kube's default of 500, a page of MachineImages parses to about 6 MB.
pub const LIST_PAGE_SIZE: u32 = 100;

/// The configuration every watch of the manager starts from.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// What a shared cache may hold: a kind with a static type, and its [`Projected`] form.
pub trait Watchable:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Projected + Send + Sync + 'static
{
}

impl<K> Watchable for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Projected
        + Send
        + Sync
        + 'static
{
}

/// A namespaced [`Watchable`]: watched only in the manager's namespace when it is confined.
pub trait Cacheable: Watchable + Resource<Scope = k8s_openapi::NamespaceResourceScope> {}

impl<K> Cacheable for K where K: Watchable + Resource<Scope = k8s_openapi::NamespaceResourceScope> {}

/// A shared reflector: its store, and subscriptions to the objects it applies and deletes.
pub struct Cache<K: Watchable> {
    /// The store, filled by the one watch of this kind.
    pub store: Store<K>,
    writer: Arc<Mutex<Option<reflector::store::Writer<K>>>>,
    deleted: tokio::sync::broadcast::Sender<Arc<K>>,
}

impl<K: Watchable> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            writer: Arc::clone(&self.writer),
            deleted: self.deleted.clone(),
        }
    }
}

impl<K: Watchable> Cache<K> {
    /// A stream of the objects the watch applies, for `Controller::for_shared_stream` or
    /// `watches_shared_stream`. `None` once the manager has started the watches.
    pub fn subscribe(&self) -> Option<ReflectHandle<K>> {
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(reflector::store::Writer::subscribe)
    }

    /// A stream of the objects the watch sees deleted (their last state), which
    /// [`Cache::subscribe`] does not pass on; for `watches_shared_stream`. A subscriber that
    /// falls more than [`BUFFER`] deletions behind skips the oldest. Objects deleted while the
    /// watch was down leave the store at its relist without an event here.
    pub fn deleted(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        futures::stream::unfold(self.deleted.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(object) => return Some((object, rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::warn!(skipped, "a deletion subscriber fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

type Starter = Box<dyn FnOnce(&Caches) -> BoxFuture<'static, Result<(), ControllerError>> + Send>;

struct Entry {
    kind: String,
    cache: Box<dyn Any + Send>,
    start: Option<Starter>,
    ready: Option<BoxFuture<'static, ()>>,
}

/// The manager's shared reflectors.
pub struct Caches {
    client: Client,
    namespace: Option<String>,
    shutdown: Shutdown,
    entries: Mutex<HashMap<(TypeId, String), Entry>>,
    /// State several controllers share beyond the watches above, one per type ([`Caches::shared`]).
    shared: Mutex<HashMap<TypeId, Box<dyn Any + Send>>>,
}

impl Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Caches {
    /// No caches yet; watches will be confined to `namespace` when set.
    pub fn new(client: Client, namespace: Option<String>, shutdown: Shutdown) -> Self {
        Self {
            client,
            namespace,
            shutdown,
            entries: Mutex::default(),
            shared: Mutex::default(),
        }
    }

    /// The one `T` of this manager, made by `make` the first time it is asked for: state that
    /// more than one controller shares, such as a watch of a kind discovered at run time.
    pub fn shared<T: Clone + Send + 'static>(&self, make: impl FnOnce() -> T) -> T {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = shared
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
        {
            return value.clone();
        }
        let value = make();
        shared.insert(TypeId::of::<T>(), Box::new(value.clone()));
        value
    }

    /// The cache of every `K`.
    pub fn cache<K: Cacheable>(&self) -> Cache<K> {
        self.cache_with(None)
    }

    /// The cache of the `K` that match `label_selector` (all of them when `None`).
    pub fn cache_with<K: Cacheable>(&self, label_selector: Option<&str>) -> Cache<K> {
        let selector = label_selector.unwrap_or_default().to_owned();
        let labels = selector.clone();
        self.entry(selector, move |caches: &Caches| {
            let api: Api<K> = match &caches.namespace {
                Some(ns) => Api::namespaced(caches.client.clone(), ns),
                None => Api::all(caches.client.clone()),
            };
            let mut config = watch_config();
            if !labels.is_empty() {
                config = config.labels(&labels);
            }
            (api, config)
        })
    }

    /// The cache of every `K`, if a controller asked for it; never opens a watch of its own.
    pub fn existing<K: Cacheable>(&self) -> Option<Cache<K>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&(TypeId::of::<K>(), String::new()))
            .and_then(|e| e.cache.downcast_ref::<Cache<K>>())
            .cloned()
    }

    /// The cache of Namespaces: every one, or only the manager's own when it is confined.
    pub fn namespaces(&self) -> Cache<Namespace> {
        self.entry(String::new(), |caches: &Caches| {
            let mut config = watch_config();
            if let Some(ns) = &caches.namespace {
                config = config.fields(&format!("metadata.name={ns}"));
            }
            (Api::all(caches.client.clone()), config)
        })
    }

    /// The cache of `K` under `selector`, made on first use with the API and watcher
    /// configuration `watch` returns.
    fn entry<K, F>(&self, selector: String, watch: F) -> Cache<K>
    where
        K: Watchable,
        F: FnOnce(&Caches) -> (Api<K>, watcher::Config) + Send + 'static,
    {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (TypeId::of::<K>(), selector);
        if let Some(cache) = entries
            .get(&key)
            .and_then(|e| e.cache.downcast_ref::<Cache<K>>())
        {
            return cache.clone();
        }
        let (store, writer) = reflector::store_shared::<K>(BUFFER);
        let cache = Cache {
            store: store.clone(),
            writer: Arc::new(Mutex::new(Some(writer))),
            deleted: tokio::sync::broadcast::channel(BUFFER).0,
        };
        let writer = Arc::clone(&cache.writer);
        let deleted = cache.deleted.clone();
        let start: Starter = Box::new(move |caches: &Caches| {
            let writer = writer.lock().unwrap_or_else(PoisonError::into_inner).take();
            let (api, config) = watch(caches);
            let shutdown = caches.shutdown.clone();
            async move {
                let kind = K::kind(&()).into_owned();
                let Some(writer) = writer else {
                    return Err(ControllerError::WatchEnded { kind });
                };
                let stopped = shutdown.clone();
                // Projected before the store and the subscribers see it.
                let events = watcher(api, config)
                    .default_backoff()
                    .map_ok(|event| event.modify(K::project))
                    .reflect_shared(writer)
                    .take_until(stopped.wait());
                futures::pin_mut!(events);
                while let Some(event) = events.next().await {
                    match event {
                        Ok(watcher::Event::Delete(object)) => {
                            // No subscriber is not an error.
                            let _ = deleted.send(Arc::new(object));
                        }
                        Ok(_) => {}
                        Err(err) => {
                            tracing::warn!(%kind, error = %super::cause_chain(&err), "watch error; retrying with backoff");
                        }
                    }
                }
                if shutdown.is_requested() {
                    Ok(())
                } else {
                    Err(ControllerError::WatchEnded { kind })
                }
            }
            .boxed()
        });
        entries.insert(
            key,
            Entry {
                kind: K::kind(&()).into_owned(),
                cache: Box::new(cache.clone()),
                start: Some(start),
                ready: Some(synced(store)),
            },
        );
        cache
    }

    /// Opens each watch once. Returns, per watch, its name, the future that drives it (to be
    /// supervised like a controller) and the future that resolves once its store has synced.
    pub fn start(&self) -> Vec<(String, Running)> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut started = Vec::new();
        for ((_, selector), entry) in entries.iter_mut() {
            let (Some(start), Some(ready)) = (entry.start.take(), entry.ready.take()) else {
                continue;
            };
            let run = start(self);
            let name = if selector.is_empty() {
                format!("the watch of {}", entry.kind)
            } else {
                format!("the watch of {} ({selector})", entry.kind)
            };
            started.push((name, Running { ready, run }));
        }
        started
    }
}

/// Passes an object on only when its `metadata.generation` differs from the last one passed (or
/// it has none), so status-only updates, our own included, trigger no reconcile. Entries of
/// objects gone from `store` are dropped as the map grows.
pub fn generation_changed<K>(
    stream: impl Stream<Item = Arc<K>> + Send + 'static,
    store: Store<K>,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    changed_by(stream, store, |_| None)
}

/// As [`generation_changed`], and also when the value of the annotation `key` changes (an
/// operator's request, such as retrying blocked hosts, changes no generation).
pub fn generation_or_annotation_changed<K>(
    stream: impl Stream<Item = Arc<K>> + Send + 'static,
    store: Store<K>,
    key: &'static str,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    changed_by(stream, store, move |object: &K| {
        object.annotations().get(key).cloned()
    })
}

/// Passes an object on when its generation or `extra` differs from the last one passed.
fn changed_by<K, F>(
    stream: impl Stream<Item = Arc<K>> + Send + 'static,
    store: Store<K>,
    extra: F,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    F: Fn(&K) -> Option<String> + Send + 'static,
{
    let mut seen: HashMap<String, (i64, Option<String>)> = HashMap::new();
    stream.filter(move |object| {
        let key = object.uid().unwrap_or_else(|| {
            format!(
                "{}/{}",
                object.namespace().unwrap_or_default(),
                object.name_any()
            )
        });
        let pass = match object.meta().generation {
            Some(generation) => {
                let now = (generation, extra(object));
                seen.insert(key, now.clone()) != Some(now)
            }
            None => true,
        };
        if seen.len() > store.len() * 2 + 64 {
            let live: std::collections::HashSet<String> =
                store.state().iter().filter_map(|o| o.uid()).collect();
            seen.retain(|uid, _| live.contains(uid));
        }
        futures::future::ready(pass)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::builders::{Build, Fixture, SourceBuild};
    use api::v1alpha1::DebianRepositorySource;

    fn source(uid: &str, generation: i64, note: &str) -> Arc<DebianRepositorySource> {
        Arc::new(
            DebianRepositorySource::test(uid)
                .with_uid(uid)
                .with_generation(generation)
                .with_url(&format!("http://127.0.0.1:1/{note}")),
        )
    }

    #[tokio::test]
    async fn shared_state_is_made_once_per_manager() {
        let (client, _verifier) = crate::runtime::fixtures::mock_client();
        let (_trigger, shutdown) = Shutdown::new();
        let caches = Caches::new(client.clone(), None, shutdown.clone());
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = || {
            made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Arc::new(Mutex::new(Vec::<u32>::new()))
        };
        let first = caches.shared(make);
        first.lock().unwrap().push(7);
        let second = caches.shared(make);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(*second.lock().unwrap(), [7]);
        // Another type is its own; another manager has its own.
        assert_eq!(caches.shared(|| 5_u8), 5);
        assert_eq!(caches.shared(|| 6_u8), 5);
        let other = Caches::new(client, None, shutdown);
        assert!(other.shared(make).lock().unwrap().is_empty());
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_watched_annotation_change_passes_too() {
        let (store, _writer) = reflector::store::<DebianRepositorySource>();
        let annotated = |value: Option<&str>| {
            let mut object = (*source("a", 1, "x")).clone();
            object.metadata.annotations =
                value.map(|v| [("retry".to_owned(), v.to_owned())].into_iter().collect());
            Arc::new(object)
        };
        let events = futures::stream::iter([
            annotated(None),
            annotated(None),
            annotated(Some("1")),
            annotated(Some("1")),
            annotated(Some("2")),
        ]);
        let passed: Vec<Option<String>> = generation_or_annotation_changed(events, store, "retry")
            .map(|o| o.annotations().get("retry").cloned())
            .collect()
            .await;
        assert_eq!(passed, [None, Some("1".to_owned()), Some("2".to_owned())]);
    }

    #[tokio::test]
    async fn only_generation_changes_pass() {
        let (store, _writer) = reflector::store::<DebianRepositorySource>();
        let events = futures::stream::iter([
            source("a", 1, "first"),
            source("a", 1, "status write"),
            source("b", 1, "first"),
            source("a", 2, "spec change"),
            source("a", 2, "status write"),
        ]);
        let passed: Vec<(String, i64)> = generation_changed(events, store)
            .map(|o| (o.name_any(), o.metadata.generation.unwrap()))
            .collect()
            .await;
        assert_eq!(
            passed,
            [
                ("a".to_owned(), 1),
                ("b".to_owned(), 1),
                ("a".to_owned(), 2)
            ]
        );
    }
}
