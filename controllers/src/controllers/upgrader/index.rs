//! Which upgraders are in each namespace, follow each Plan and watch each Cluster, kept from the
//! upgrader cache's events, so that a Plan's, an image's or a Cluster's change finds its upgraders
//! without scanning every upgrader.
//!
//! The index may name an upgrader the store no longer holds (one deleted while the watch was
//! down leaves the store at the relist without a deletion event): lookups drop those.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};

use super::UpgraderKind;

/// What one upgrader names: its Plan and its Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Names {
    plan: String,
    cluster: String,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per (namespace, upgrader): what it names, when it could be read.
    of: HashMap<(String, String), Option<Names>>,
    /// Per namespace: its upgraders.
    in_namespace: HashMap<String, BTreeSet<String>>,
    /// Per (namespace, Plan): the upgraders that follow it.
    by_plan: HashMap<(String, String), BTreeSet<String>>,
    /// Per (namespace, Cluster): the upgraders that upgrade it.
    by_cluster: HashMap<(String, String), BTreeSet<String>>,
}

fn unlink(
    map: &mut HashMap<(String, String), BTreeSet<String>>,
    key: &(String, String),
    name: &str,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(name);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl Inner {
    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(names) = self.of.remove(&(namespace.to_owned(), name.to_owned())) else {
            return;
        };
        if let Some(set) = self.in_namespace.get_mut(namespace) {
            set.remove(name);
            if set.is_empty() {
                self.in_namespace.remove(namespace);
            }
        }
        if let Some(names) = names {
            unlink(&mut self.by_plan, &(namespace.to_owned(), names.plan), name);
            unlink(
                &mut self.by_cluster,
                &(namespace.to_owned(), names.cluster),
                name,
            );
        }
    }

    fn insert(&mut self, namespace: &str, name: &str, names: Option<Names>) {
        let key = (namespace.to_owned(), name.to_owned());
        if self.of.get(&key) == Some(&names) {
            return;
        }
        self.remove(namespace, name);
        self.in_namespace
            .entry(namespace.to_owned())
            .or_default()
            .insert(name.to_owned());
        if let Some(names) = &names {
            self.by_plan
                .entry((namespace.to_owned(), names.plan.clone()))
                .or_default()
                .insert(name.to_owned());
            self.by_cluster
                .entry((namespace.to_owned(), names.cluster.clone()))
                .or_default()
                .insert(name.to_owned());
        }
        self.of.insert(key, names);
    }
}

/// The index of one upgrader kind.
pub struct Index<K: UpgraderKind> {
    inner: Arc<Mutex<Inner>>,
    store: Store<DeserializeGuard<K>>,
}

impl<K: UpgraderKind> Clone for Index<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            store: self.store.clone(),
        }
    }
}

/// Which upgraders a lookup is for.
enum Key<'a> {
    Namespace,
    Plan(&'a str),
    Cluster(&'a str),
}

impl<K: UpgraderKind> Index<K> {
    /// An empty index over the upgraders of `store`.
    pub fn new(store: Store<DeserializeGuard<K>>) -> Self {
        Self {
            inner: Arc::default(),
            store,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the upgrader as it now is (one that cannot be read names nothing).
    pub fn apply(&self, upgrader: &DeserializeGuard<K>) {
        let names = upgrader.0.as_ref().ok().map(|u| {
            let view = u.view();
            Names {
                plan: view.plan_ref.name.clone(),
                cluster: view.cluster_name.to_owned(),
            }
        });
        self.lock().insert(
            &upgrader.namespace().unwrap_or_default(),
            &upgrader.name_any(),
            names,
        );
    }

    /// Forgets a deleted upgrader.
    pub fn delete(&self, upgrader: &DeserializeGuard<K>) {
        self.lock().remove(
            &upgrader.namespace().unwrap_or_default(),
            &upgrader.name_any(),
        );
    }

    /// The upgraders of `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<ObjectRef<DeserializeGuard<K>>> {
        self.lookup(namespace, &Key::Namespace)
    }

    /// The upgraders of `namespace` that follow the Plan `plan`.
    pub fn following(&self, namespace: &str, plan: &str) -> Vec<ObjectRef<DeserializeGuard<K>>> {
        self.lookup(namespace, &Key::Plan(plan))
    }

    /// The upgraders of `namespace` that upgrade the Cluster `cluster`.
    pub fn upgrading(&self, namespace: &str, cluster: &str) -> Vec<ObjectRef<DeserializeGuard<K>>> {
        self.lookup(namespace, &Key::Cluster(cluster))
    }

    fn lookup(&self, namespace: &str, key: &Key<'_>) -> Vec<ObjectRef<DeserializeGuard<K>>> {
        let mut inner = self.lock();
        let names: Vec<String> = match key {
            Key::Namespace => inner.in_namespace.get(namespace),
            Key::Plan(plan) => inner
                .by_plan
                .get(&(namespace.to_owned(), (*plan).to_owned())),
            Key::Cluster(cluster) => inner
                .by_cluster
                .get(&(namespace.to_owned(), (*cluster).to_owned())),
        }
        .map(|set| set.iter().cloned().collect())
        .unwrap_or_default();
        let mut found = Vec::with_capacity(names.len());
        for name in names {
            let reference = ObjectRef::new(&name).within(namespace);
            if self.store.get(&reference).is_some() {
                found.push(reference);
            } else {
                inner.remove(namespace, &name);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::builders::{Build, Fixture};
    use api::v1alpha1::ClusterClassClusterUpgrader;
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    type Guarded = DeserializeGuard<ClusterClassClusterUpgrader>;

    fn upgrader(namespace: &str, name: &str, plan: &str, cluster: &str) -> Guarded {
        DeserializeGuard(Ok(ClusterClassClusterUpgrader::test(name)
            .in_namespace(namespace)
            .with_spec(&json!({"clusterName": cluster, "planRef": {"name": plan}}))))
    }

    fn names(refs: &[ObjectRef<Guarded>]) -> Vec<String> {
        refs.iter()
            .map(|r| format!("{}/{}", r.namespace.clone().unwrap_or_default(), r.name))
            .collect()
    }

    #[test]
    fn lookups_follow_applies_changes_and_deletions() {
        let (store, mut writer) = reflector::store::<Guarded>();
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let index = Index::new(store);
        let objects = [
            upgrader("a", "u1", "p", "c1"),
            upgrader("a", "u2", "p", "c2"),
            upgrader("a", "u3", "q", "c1"),
            upgrader("b", "u1", "p", "c1"),
        ];
        for o in &objects {
            writer.apply_watcher_event(&watcher::Event::Apply(o.clone()));
            index.apply(o);
        }
        assert_eq!(names(&index.in_namespace("a")), ["a/u1", "a/u2", "a/u3"]);
        assert_eq!(names(&index.following("a", "p")), ["a/u1", "a/u2"]);
        assert_eq!(names(&index.following("b", "p")), ["b/u1"]);
        assert_eq!(names(&index.upgrading("a", "c1")), ["a/u1", "a/u3"]);
        assert!(index.following("a", "none").is_empty());

        // u2 moves to Plan q and Cluster c1.
        let moved = upgrader("a", "u2", "q", "c1");
        writer.apply_watcher_event(&watcher::Event::Apply(moved.clone()));
        index.apply(&moved);
        assert_eq!(names(&index.following("a", "p")), ["a/u1"]);
        assert_eq!(names(&index.following("a", "q")), ["a/u2", "a/u3"]);
        assert_eq!(names(&index.upgrading("a", "c2")), Vec::<String>::new());

        // A deletion, and one the index never heard of: gone from the store, gone from lookups.
        writer.apply_watcher_event(&watcher::Event::Delete(objects[0].clone()));
        index.delete(&objects[0]);
        writer.apply_watcher_event(&watcher::Event::Delete(objects[3].clone()));
        assert_eq!(names(&index.upgrading("a", "c1")), ["a/u2", "a/u3"]);
        assert!(index.following("b", "p").is_empty());
        let forgotten = ("b".to_owned(), "u1".to_owned());
        assert!(!index.lock().of.contains_key(&forgotten));
    }

    #[test]
    fn an_unreadable_upgrader_is_in_its_namespace_only() {
        let (store, mut writer) = reflector::store::<Guarded>();
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let index = Index::new(store);
        let bad: Guarded = serde_json::from_value(json!({
            "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
            "kind": "ClusterClassClusterUpgrader",
            "metadata": {"name": "bad", "namespace": "a"},
            "spec": {"clusterName": 3},
        }))
        .unwrap();
        assert!(bad.0.is_err());
        writer.apply_watcher_event(&watcher::Event::Apply(bad.clone()));
        index.apply(&bad);
        assert_eq!(names(&index.in_namespace("a")), ["a/bad"]);
        assert!(index.upgrading("a", "3").is_empty());
    }
}
