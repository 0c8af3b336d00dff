//! YAML manifests applied or created through the dynamic API.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{self, Scope};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::Value;

/// The field manager of every write the harness makes.
pub const FIELD_MANAGER: &str = "e2e";

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .map_or_else(|| crate_dir.to_path_buf(), Path::to_path_buf)
}

/// Every `*.yaml`/`*.yml` file of `dir`, sorted by name.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// The non-empty documents of a multi-document YAML text, as JSON.
pub fn parse_yaml_docs(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).context("parsing YAML")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The non-empty documents of a YAML file.
pub fn load_yaml_docs(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_yaml_docs(&text).with_context(|| format!("in {}", path.display()))
}

/// The group/version/kind of a manifest.
pub fn gvk_of(doc: &Value) -> Result<GroupVersionKind> {
    let api_version = doc["apiVersion"]
        .as_str()
        .context("manifest has no apiVersion")?;
    let kind = doc["kind"].as_str().context("manifest has no kind")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    Ok(GroupVersionKind::gvk(group, version, kind))
}

/// A served kind: its resource and whether it is namespaced.
#[derive(Clone, Debug)]
pub struct Served {
    /// The resource.
    pub resource: ApiResource,
    /// Namespaced (true) or cluster-scoped.
    pub namespaced: bool,
}

impl Served {
    /// A dynamic API in `namespace` (ignored for cluster-scoped kinds).
    pub fn api(&self, client: &Client, namespace: &str) -> Api<DynamicObject> {
        if self.namespaced {
            Api::namespaced_with(client.clone(), namespace, &self.resource)
        } else {
            Api::all_with(client.clone(), &self.resource)
        }
    }
}

/// Looks the kind up through discovery; `Ok(None)` when the server does not serve it.
pub async fn served(client: &Client, gvk: &GroupVersionKind) -> Result<Option<Served>> {
    match discovery::pinned_kind(client, gvk).await {
        Ok((resource, caps)) => Ok(Some(Served {
            resource,
            namespaced: caps.scope == Scope::Namespaced,
        })),
        Err(kube::Error::Discovery(_)) => Ok(None),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(e) => Err(e).with_context(|| format!("discovering {gvk:?}")),
    }
}

/// Server-side applies `doc` (field manager `e2e`, forced). Namespaced objects without a
/// namespace go to `default_namespace`.
pub async fn apply(client: &Client, doc: &Value, default_namespace: &str) -> Result<DynamicObject> {
    let gvk = gvk_of(doc)?;
    let Some(served) = served(client, &gvk).await? else {
        bail!("{gvk:?} is not served by the API server");
    };
    let name = doc["metadata"]["name"]
        .as_str()
        .context("manifest has no metadata.name")?;
    let namespace = doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or(default_namespace);
    let api = served.api(client, namespace);
    let obj: DynamicObject = serde_json::from_value(doc.clone())?;
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("applying {} {name}", gvk.kind))
}

/// Options of a raw create.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldValidation=Strict`.
    pub strict: bool,
}

/// `POST`s `doc` into `namespace` (forced onto the object for namespaced kinds), with
/// `fieldManager=e2e` and the given options. Returns the API server's answer; its refusal
/// comes back as `kube::Error::Api` with the server's message.
pub async fn create(
    client: &Client,
    served: &Served,
    doc: &Value,
    namespace: &str,
    options: CreateOptions,
) -> Result<Value, kube::Error> {
    let mut doc = doc.clone();
    if served.namespaced
        && let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.insert("namespace".into(), Value::String(namespace.to_owned()));
    }
    let api = served.api(client, namespace);
    let mut url = format!("{}?fieldManager={FIELD_MANAGER}", api.resource_url());
    if options.dry_run {
        url.push_str("&dryRun=All");
    }
    if options.strict {
        url.push_str("&fieldValidation=Strict");
    }
    let body = serde_json::to_vec(&doc).map_err(kube::Error::SerdeError)?;
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(kube::Error::HttpError)?;
    client.request::<Value>(request).await
}

/// The API server's message for a refused request, or the error text otherwise.
pub fn error_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}
