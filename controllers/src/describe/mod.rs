//! `kubernetes-upgrader status`: the pipeline as a tree, from sources to clusters.

pub mod render;
pub mod tree;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use api::v1alpha1::{
    ClusterClassClusterUpgrader, DebianRepositorySource, InClusterUpgradeAutomation, MachineImage,
    MachineImageSyncer, Plan,
};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::discovery::{Discovery, Scope};
use kube::{Client, Resource};
use serde_json::Value;

use crate::cli::{StatusArgs, StatusOutput};
use render::Style;
use tree::Objects;

/// Cluster API's group.
const CLUSTER_API_GROUP: &str = "cluster.x-k8s.io";

/// Reads the objects, builds the trees and prints them.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration found (set KUBECONFIG)")?;
    let namespace = if args.all_namespaces {
        None
    } else {
        Some(
            args.namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
        )
    };
    let output = match args.output {
        StatusOutput::Json => {
            render::json(&trees(&client, namespace.as_deref()).await?).context("rendering JSON")?
        }
        StatusOutput::Text => {
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            text(
                &client,
                namespace.as_deref(),
                if colour { Style::Colour } else { Style::Plain },
            )
            .await?
        }
    };
    print!("{output}");
    if !output.ends_with('\n') {
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// The trees of `namespace`, or of every namespace with objects.
pub async fn trees(
    client: &Client,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<tree::Namespace>> {
    Ok(fetch(client, namespace)
        .await?
        .iter()
        .map(|(ns, objects)| tree::build(ns, objects))
        .collect())
}

/// The trees of `namespace` (or of every namespace) as text.
pub async fn text(
    client: &Client,
    namespace: Option<&str>,
    style: Style,
) -> anyhow::Result<String> {
    Ok(render::text(&trees(client, namespace).await?, style))
}

/// The objects grouped by namespace, in namespace order. With `namespace`, only that one.
async fn fetch(client: &Client, namespace: Option<&str>) -> anyhow::Result<Vec<(String, Objects)>> {
    let sources = list(client, namespace, &resource::<DebianRepositorySource>()).await?;
    let syncers = list(client, namespace, &resource::<MachineImageSyncer>()).await?;
    let images = list(client, namespace, &resource::<MachineImage>()).await?;
    let plans = list(client, namespace, &resource::<Plan>()).await?;
    let mut upgraders = list(
        client,
        namespace,
        &resource::<ClusterClassClusterUpgrader>(),
    )
    .await?;
    upgraders.extend(list(client, namespace, &resource::<InClusterUpgradeAutomation>()).await?);
    let clusters = match cluster_resource(client).await? {
        Some(resource) => Some(list(client, namespace, &resource).await?),
        None => None,
    };

    let mut names: Vec<String> = [&sources, &syncers, &images, &plans, &upgraders]
        .into_iter()
        .flatten()
        .filter_map(|o| o["metadata"]["namespace"].as_str().map(str::to_owned))
        .collect();
    if let Some(ns) = namespace {
        names.push(ns.to_owned());
    }
    names.sort();
    names.dedup();
    Ok(names
        .into_iter()
        .map(|ns| {
            let pick = |objects: &[Value]| -> Vec<Value> {
                objects
                    .iter()
                    .filter(|o| o["metadata"]["namespace"].as_str() == Some(ns.as_str()))
                    .cloned()
                    .collect()
            };
            let objects = Objects {
                sources: pick(&sources),
                syncers: pick(&syncers),
                images: pick(&images),
                plans: pick(&plans),
                upgraders: pick(&upgraders),
                clusters: clusters.as_deref().map(pick),
            };
            (ns, objects)
        })
        .collect())
}

fn resource<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// Cluster API's `Cluster` in the version the server prefers, or `None` without Cluster API.
async fn cluster_resource(client: &Client) -> anyhow::Result<Option<ApiResource>> {
    let discovery = Discovery::new(client.clone())
        .filter(&[CLUSTER_API_GROUP])
        .run()
        .await
        .context("discovering Cluster API")?;
    Ok(discovery.groups().find_map(|group| {
        group
            .recommended_resources()
            .into_iter()
            .find(|(resource, caps)| resource.kind == "Cluster" && caps.scope == Scope::Namespaced)
            .map(|(resource, _)| resource)
    }))
}

/// Every object of `resource` as JSON, with its `kind` set (list items may omit it).
async fn list(
    client: &Client,
    namespace: Option<&str>,
    resource: &ApiResource,
) -> anyhow::Result<Vec<Value>> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    };
    let list = api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {}", resource.plural))?;
    list.items
        .into_iter()
        .map(|item| {
            let mut value = serde_json::to_value(item)?;
            value["kind"] = Value::String(resource.kind.clone());
            Ok(value)
        })
        .collect::<Result<_, serde_json::Error>>()
        .context("reading the listed objects")
}
