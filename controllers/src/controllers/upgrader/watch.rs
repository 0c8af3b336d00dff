//! What keeps the upgraders' views of the world current outside the shared caches: the
//! [`index::Index`] of upgraders by Plan and Cluster, kept from the upgrader cache's events, and
//! the one watch of Clusters both kinds share, whose changes reconcile the upgraders that step
//! them.

use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt, TryStreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::{ClusterStore, GuardedCluster, UpgraderKind, cluster, decide, index};
use crate::runtime::Shared;
use crate::runtime::caches::watch_config;
use crate::runtime::projection::Projected;
use crate::shutdown::Shutdown;

/// Keeps `index` up to date with the upgraders the cache applies and deletes, until shutdown.
pub(super) fn keep_index<K: UpgraderKind>(
    index: index::Index<K>,
    applied: impl futures::Stream<Item = Arc<DeserializeGuard<K>>> + Send + 'static,
    deleted: impl futures::Stream<Item = Arc<DeserializeGuard<K>>> + Send + 'static,
    shutdown: &crate::shutdown::Shutdown,
) {
    let changes = futures::stream::select(applied.map(|u| (true, u)), deleted.map(|u| (false, u)))
        .take_until(shutdown.clone().wait());
    tokio::spawn(changes.for_each(move |(live, upgrader)| {
        if live {
            index.apply(&upgrader);
        } else {
            index.delete(&upgrader);
        }
        futures::future::ready(())
    }));
}

/// The one watch of Clusters both upgrader kinds share, opened once Cluster API is discovered
/// (looked for again every minute while it is absent). Its store, in `store` once it runs, holds
/// each Cluster's [`CachedCluster`](crate::runtime::projection::cluster::CachedCluster) view, which reconciles read before they read the Cluster
/// itself; each kind subscribes to the Clusters it applies.
#[derive(Clone)]
pub(super) struct ClusterWatch {
    store: ClusterStore,
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
}

/// Where a subscribed kind takes the namespace and name of each Cluster the watch applies.
type Subscriber = mpsc::Sender<(String, String)>;

impl ClusterWatch {
    /// The manager's Cluster watch, started by the first upgrader kind that asks for it.
    pub(super) fn shared(shared: &Shared) -> Self {
        shared.caches.shared(|| {
            let watch = Self {
                store: ClusterStore::default(),
                subscribers: Arc::default(),
            };
            tokio::spawn(watch.clone().run(
                shared.client.clone(),
                shared.namespace.clone(),
                shared.shutdown.clone(),
            ));
            watch
        })
    }

    /// Where the watch leaves its store.
    pub(super) fn store(&self) -> ClusterStore {
        Arc::clone(&self.store)
    }

    /// The upgraders in `index` of each Cluster the watch applies.
    pub(super) fn events<K: UpgraderKind>(
        &self,
        index: index::Index<K>,
    ) -> impl futures::Stream<Item = ObjectRef<DeserializeGuard<K>>> + Send + 'static {
        let (tx, rx) = mpsc::channel(256);
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx.flat_map(move |(namespace, name)| {
            futures::stream::iter(index.upgrading(&namespace, &name))
        })
    }

    async fn run(self, client: Client, namespace: Option<String>, shutdown: Shutdown) {
        let access = loop {
            if let Ok(Some(access)) = cluster::discover(&client).await {
                break access;
            }
            if tokio::time::timeout(decide::MISSING_POLL, shutdown.clone().wait())
                .await
                .is_ok()
            {
                return;
            }
        };
        let api: Api<GuardedCluster> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &access.resource),
            None => Api::all_with(client.clone(), &access.resource),
        };
        let writer = kube::runtime::reflector::store::Writer::new(access.resource.clone());
        let _ = self.store.set(writer.as_reader());
        let objects = watcher(api, watch_config())
            .default_backoff()
            // What the upgraders read of a Cluster, before the store keeps it.
            .map_ok(|event| event.modify(GuardedCluster::project))
            .reflect(writer)
            .applied_objects()
            .take_until(shutdown.wait());
        futures::pin_mut!(objects);
        while let Some(event) = objects.next().await {
            let Ok(cluster) = event else { continue };
            let key = (cluster.namespace().unwrap_or_default(), cluster.name_any());
            let subscribers = self
                .subscribers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for mut subscriber in subscribers {
                // A kind that stopped no longer listens; the others still do.
                let _ = subscriber.send(key.clone()).await;
            }
        }
    }
}
