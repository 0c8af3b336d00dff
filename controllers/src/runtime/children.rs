//! Owned children (MachineImage's Jobs and later ones): applied by server-side apply with a
//! controller owner reference and the `app.kubernetes.io/*` labels, watched through a
//! label-filtered shared cache (the `owns()` side), and deleted when no longer wanted.

use std::collections::BTreeMap;
use std::fmt::Debug;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::caches::{Cache, Cacheable, Caches};
use super::status::{ApiError, bounded};

/// `app.kubernetes.io/name` of everything we create.
pub const APP_NAME: &str = "kubernetes-upgrader";
/// `app.kubernetes.io/managed-by` of everything we create.
pub const MANAGED_BY: &str = "kubernetes-upgrader";

const LABEL_NAME: &str = "app.kubernetes.io/name";
const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const LABEL_COMPONENT: &str = "app.kubernetes.io/component";

/// Why a child could not be applied or pruned.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The owner has no name, namespace or uid yet (it was never stored).
    #[error("the owner is not stored yet, so it cannot own children")]
    OwnerNotStored,
    /// Applying a child failed.
    #[error("applying {kind} {name}")]
    Apply {
        /// The child's kind.
        kind: String,
        /// The child's name.
        name: String,
        /// Why.
        #[source]
        source: ApiError,
    },
    /// Listing the children failed.
    #[error("listing the {kind} children")]
    List {
        /// The children's kind.
        kind: String,
        /// Why.
        #[source]
        source: ApiError,
    },
    /// Deleting an unwanted child failed.
    #[error("deleting {kind} {name}")]
    Delete {
        /// The child's kind.
        kind: String,
        /// The child's name.
        name: String,
        /// Why.
        #[source]
        source: ApiError,
    },
}

/// The selector that finds every child a controller `component` made.
pub fn component_selector(component: &str) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={component}")
}

/// The label-filtered cache of the `C` children made by `component`: pass its subscription to
/// `owns_shared_stream`, so a controller sees only its own children.
pub fn owned_cache<C: Cacheable>(caches: &Caches, component: &str) -> Cache<C> {
    caches.cache_with(Some(&component_selector(component)))
}

/// The children of one owner, of one controller.
pub struct Children<'a, P> {
    client: &'a Client,
    owner: &'a P,
    field_manager: &'a str,
    component: &'a str,
}

impl<P> Debug for Children<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Children")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl<'a, P> Children<'a, P>
where
    P: Resource<DynamicType = ()>,
{
    /// The children `owner` has through the controller `component`, written as `field_manager`.
    pub fn new(
        client: &'a Client,
        owner: &'a P,
        field_manager: &'a str,
        component: &'a str,
    ) -> Self {
        Self {
            client,
            owner,
            field_manager,
            component,
        }
    }

    /// The labels every child of this owner carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
            (LABEL_INSTANCE.to_owned(), self.owner.name_any()),
            (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
            (LABEL_COMPONENT.to_owned(), self.component.to_owned()),
        ])
    }

    fn api<C>(&self) -> Result<Api<C>, ChildError>
    where
        C: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let namespace = self.owner.namespace().ok_or(ChildError::OwnerNotStored)?;
        Ok(Api::namespaced(self.client.clone(), &namespace))
    }

    /// Applies `child` in the owner's namespace, with the owner as its controller and the labels
    /// added to its own.
    pub async fn apply<C>(&self, mut child: C) -> Result<C, ChildError>
    where
        C: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        let owner_ref = self
            .owner
            .controller_owner_ref(&())
            .ok_or(ChildError::OwnerNotStored)?;
        let api = self.api::<C>()?;
        let name = child.name_any();
        let meta = child.meta_mut();
        meta.namespace = self.owner.namespace();
        meta.owner_references = Some(vec![owner_ref]);
        meta.labels.get_or_insert_default().extend(self.labels());
        meta.resource_version = None;
        meta.managed_fields = None;
        let mut body = serde_json::to_value(&child).map_err(|e| ChildError::Apply {
            kind: C::kind(&()).into_owned(),
            name: name.clone(),
            source: ApiError::Api(kube::Error::SerdeError(e)),
        })?;
        body["apiVersion"] = C::api_version(&()).into();
        body["kind"] = C::kind(&()).into();
        bounded(api.patch(
            &name,
            &PatchParams::apply(self.field_manager).force(),
            &Patch::Apply(&body),
        ))
        .await
        .map_err(|source| ChildError::Apply {
            kind: C::kind(&()).into_owned(),
            name,
            source,
        })
    }

    /// Deletes this owner's children of kind `C` whose names are not in `wanted`; returns the
    /// names deleted. Children of other owners, and objects without our labels, are untouched.
    pub async fn delete_unwanted<C>(&self, wanted: &[&str]) -> Result<Vec<String>, ChildError>
    where
        C: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let kind = C::kind(&()).into_owned();
        let uid = self.owner.uid().ok_or(ChildError::OwnerNotStored)?;
        let api = self.api::<C>()?;
        let selector = format!(
            "{},{LABEL_INSTANCE}={}",
            component_selector(self.component),
            self.owner.name_any()
        );
        let children = bounded(api.list(&ListParams::default().labels(&selector)))
            .await
            .map_err(|source| ChildError::List {
                kind: kind.clone(),
                source,
            })?;
        let mut deleted = Vec::new();
        for child in children {
            let name = child.name_any();
            let owned = child.owner_references().iter().any(|r| r.uid == uid);
            if !owned || wanted.contains(&name.as_str()) {
                continue;
            }
            match bounded(api.delete(&name, &DeleteParams::background())).await {
                Ok(_) => deleted.push(name),
                Err(ApiError::Api(kube::Error::Api(status))) if status.code == 404 => {
                    deleted.push(name);
                }
                Err(source) => {
                    return Err(ChildError::Delete {
                        kind: kind.clone(),
                        name,
                        source,
                    });
                }
            }
        }
        Ok(deleted)
    }
}
