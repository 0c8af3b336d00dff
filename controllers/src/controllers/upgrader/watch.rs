//! What keeps the upgraders' views of the world current outside the shared caches: the
//! [`index::Index`] of upgraders by Plan and Cluster, kept from the upgrader cache's events, and
//! the dedicated dynamic watch of Clusters, whose changes reconcile the upgraders that step them.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kube::api::DynamicObject;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::{ClusterStore, UpgraderKind, cluster, decide, index};
use crate::runtime::caches::watch_config;
use crate::runtime::projection::Projected;

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

/// The upgraders of each changed Cluster, from a dedicated dynamic watch of Clusters opened
/// once Cluster API is discovered (looked for again every minute while it is absent). The watch
/// keeps its store in `slot`, which reconciles read before they read the Cluster itself.
pub(super) fn cluster_events<K: UpgraderKind>(
    client: Client,
    namespace: Option<String>,
    index: index::Index<K>,
    slot: ClusterStore,
    shutdown: &crate::shutdown::Shutdown,
) -> impl futures::Stream<Item = ObjectRef<DeserializeGuard<K>>> + Send + 'static {
    let (mut tx, rx) = futures::channel::mpsc::channel(256);
    let stopped = shutdown.clone();
    tokio::spawn(async move {
        let access = loop {
            if let Ok(Some(access)) = cluster::discover(&client).await {
                break access;
            }
            if tokio::time::timeout(decide::MISSING_POLL, stopped.clone().wait())
                .await
                .is_ok()
            {
                return;
            }
        };
        let api: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &access.resource),
            None => Api::all_with(client.clone(), &access.resource),
        };
        let writer = kube::runtime::reflector::store::Writer::new(access.resource.clone());
        let _ = slot.set(writer.as_reader());
        let objects = watcher(api, watch_config())
            .default_backoff()
            // What the upgraders read of a Cluster, before the store keeps it.
            .map_ok(|event| event.modify(DynamicObject::project))
            .reflect(writer)
            .applied_objects()
            .take_until(stopped.wait());
        futures::pin_mut!(objects);
        while let Some(event) = objects.next().await {
            let Ok(cluster) = event else { continue };
            let name = cluster.name_any();
            for upgrader in index.upgrading(&cluster.namespace().unwrap_or_default(), &name) {
                if futures::SinkExt::send(&mut tx, upgrader).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}
