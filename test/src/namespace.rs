//! Fresh namespaces. They are never deleted: without kube-controller-manager a deleted
//! namespace stays `Terminating` forever.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rand::Rng;
use rand::distr::Alphanumeric;

/// A random lower-case alphanumeric suffix of `len` characters.
pub fn random_suffix(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .map(|c| char::from(c).to_ascii_lowercase())
        .take(len)
        .collect()
}

/// Turns `text` into a DNS label fragment: lower case, `[a-z0-9-]`, at most `max` characters.
pub fn dns_fragment(text: &str, max: usize) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let trimmed: String = mapped.trim_matches('-').chars().take(max).collect();
    trimmed.trim_end_matches('-').to_owned()
}

/// Creates the namespace `<prefix>-<random>` and returns its name.
pub async fn create(client: &Client, prefix: &str) -> Result<String> {
    let name = format!("{}-{}", dns_fragment(prefix, 50), random_suffix(6));
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("app.kubernetes.io/created-by".to_owned(), "e2e".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}

/// Creates the namespace `name` unless it exists.
pub async fn ensure(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}
