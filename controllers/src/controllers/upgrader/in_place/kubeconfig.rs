//! The workload cluster's kubeconfig, read from a Secret a tenant may write, accepted only
//! through an allow-list. Nothing in it may make the manager read a file, run a command, use a
//! proxy, skip TLS verification, speak plain http or act as someone else: the client is built
//! from the few inline fields below, never by kube's kubeconfig loader.
//!
//! Accepted, for the selected context only: the cluster's `server` (https),
//! `certificate-authority-data` (required) and `tls-server-name`; the user's
//! `client-certificate-data` with `client-key-data`, or an inline `token`.

use std::time::Duration;

use base64::Engine as _;
use kube::Config;
use kube::config::AuthInfo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value};

/// How long a workload cluster may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a workload cluster may take to answer one request, or to take one.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest kubeconfig read; Cluster API's are about 6 KiB.
pub const MAX_KUBECONFIG_BYTES: usize = 64 * 1024;

/// A kubeconfig refused by the allow-list: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Refused {
    /// The refused field's path, for example `users[admin].user.tokenFile`.
    pub field: String,
    /// Why it is refused.
    pub why: String,
}

impl Refused {
    fn new(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            why: why.into(),
        }
    }
}

/// What the allow-list accepted: everything the client is built from.
#[derive(Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The API server's address, https only.
    pub server: http::Uri,
    /// The CA certificates the server's certificate must chain to (DER).
    pub ca: Vec<Vec<u8>>,
    /// The name to verify the server's certificate for, when not the server's host.
    pub tls_server_name: Option<String>,
    /// The client certificate and key, as written (base64 of PEM).
    pub client_certificate: Option<(String, String)>,
    /// The bearer token.
    pub token: Option<String>,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("server", &self.server)
            .field("tls_server_name", &self.tls_server_name)
            .field("client_certificate", &self.client_certificate.is_some())
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// Cluster fields that are refused, with why.
const REFUSED_CLUSTER: &[(&str, &str)] = &[
    (
        "certificate-authority",
        "a file path; the manager reads no file a kubeconfig names (use certificate-authority-data)",
    ),
    ("proxy-url", "a proxy is never used for a workload cluster"),
];

/// User fields that are refused, with why.
const REFUSED_USER: &[(&str, &str)] = &[
    (
        "exec",
        "the manager runs no command a kubeconfig names (use client-certificate-data and client-key-data, or token)",
    ),
    (
        "auth-provider",
        "auth providers run commands or read files (use client-certificate-data and client-key-data, or token)",
    ),
    (
        "tokenFile",
        "a file path; the manager reads no file a kubeconfig names (use token)",
    ),
    (
        "client-certificate",
        "a file path; the manager reads no file a kubeconfig names (use client-certificate-data)",
    ),
    (
        "client-key",
        "a file path; the manager reads no file a kubeconfig names (use client-key-data)",
    ),
    (
        "username",
        "basic authentication is not accepted (use client-certificate-data and client-key-data, or token)",
    ),
    (
        "password",
        "basic authentication is not accepted (use client-certificate-data and client-key-data, or token)",
    ),
    ("as", "impersonation is not accepted"),
    ("as-uid", "impersonation is not accepted"),
    ("as-groups", "impersonation is not accepted"),
    ("as-user-extra", "impersonation is not accepted"),
];

/// Checks `text` against the allow-list. Pure: nothing is read or sent.
pub fn accept(text: &str) -> Result<Accepted, Refused> {
    if text.len() > MAX_KUBECONFIG_BYTES {
        return Err(Refused::new(
            "value",
            format!(
                "the kubeconfig is {} bytes, over the {MAX_KUBECONFIG_BYTES} accepted",
                text.len()
            ),
        ));
    }
    let yaml: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| Refused::new("value", format!("not a kubeconfig: {e}")))?;
    let doc: Value = serde_json::to_value(yaml)
        .map_err(|e| Refused::new("value", format!("not a kubeconfig: {e}")))?;
    let doc = doc
        .as_object()
        .ok_or_else(|| Refused::new("value", "not a kubeconfig: not a mapping"))?;

    let (context_name, context) = selected_context(doc)?;
    let context_field = format!("contexts[{context_name}].context");
    let cluster_name = string(context, "cluster", &context_field)?
        .ok_or_else(|| Refused::new(format!("{context_field}.cluster"), "is required"))?;
    let user_name = string(context, "user", &context_field)?
        .ok_or_else(|| Refused::new(format!("{context_field}.user"), "is required"))?;
    let cluster = named(doc, "clusters", "cluster", cluster_name)?;
    let user = named(doc, "users", "user", user_name)?;

    let mut accepted = accept_cluster(cluster, &format!("clusters[{cluster_name}].cluster"))?;
    accept_user(user, &format!("users[{user_name}].user"), &mut accepted)?;
    Ok(accepted)
}

/// The context named by `current-context`, or the only one when none is named.
fn selected_context(doc: &Map<String, Value>) -> Result<(&str, &Map<String, Value>), Refused> {
    let current = string(doc, "current-context", "")?.filter(|c| !c.is_empty());
    let contexts = list(doc, "contexts")?;
    let name = match current {
        Some(name) => name,
        None => match contexts {
            [only] => only
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Refused::new("contexts[0].name", "is required"))?,
            _ => {
                return Err(Refused::new(
                    "current-context",
                    "is required when there is not exactly one context",
                ));
            }
        },
    };
    let context = named(doc, "contexts", "context", name)?;
    Ok((name, context))
}

/// The `field` list of `doc` (missing is empty).
fn list<'a>(doc: &'a Map<String, Value>, field: &str) -> Result<&'a [Value], Refused> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(Refused::new(field, "must be a list")),
    }
}

/// The `inner` mapping of the entry of list `field` whose `name` is `name`.
fn named<'a>(
    doc: &'a Map<String, Value>,
    field: &str,
    inner: &str,
    name: &str,
) -> Result<&'a Map<String, Value>, Refused> {
    let entry = list(doc, field)?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| Refused::new(format!("{field}[{name}]"), "is not in the kubeconfig"))?;
    match entry.get(inner) {
        Some(Value::Object(map)) => Ok(map),
        None | Some(Value::Null) => Ok(empty()),
        Some(_) => Err(Refused::new(
            format!("{field}[{name}].{inner}"),
            "must be a mapping",
        )),
    }
}

fn empty() -> &'static Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Map::new)
}

/// A string field, if set; any other type is refused.
fn string<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<&'a str>, Refused> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Refused::new(path(at, key), "must be a string")),
    }
}

fn path(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

/// Refuses the listed fields, then any field outside `allowed`.
fn refuse_others(
    map: &Map<String, Value>,
    at: &str,
    refused: &[(&str, &str)],
    allowed: &[&str],
) -> Result<(), Refused> {
    for (key, why) in refused {
        if map.get(*key).is_some_and(|v| !is_unset(v)) {
            return Err(Refused::new(path(at, key), *why));
        }
    }
    match map
        .iter()
        .find(|(k, v)| !allowed.contains(&k.as_str()) && !is_unset(v))
    {
        Some((key, _)) => Err(Refused::new(
            path(at, key),
            format!("is not accepted (accepted: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Null, an empty string, an empty list or mapping, or `false`: nothing asked for.
fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(true) | Value::Number(_) => false,
    }
}

fn accept_cluster(cluster: &Map<String, Value>, at: &str) -> Result<Accepted, Refused> {
    if cluster
        .get("insecure-skip-tls-verify")
        .is_some_and(|v| !is_unset(v))
    {
        return Err(Refused::new(
            path(at, "insecure-skip-tls-verify"),
            "TLS verification is never skipped (set certificate-authority-data)",
        ));
    }
    refuse_others(
        cluster,
        at,
        REFUSED_CLUSTER,
        &[
            "server",
            "certificate-authority-data",
            "tls-server-name",
            "insecure-skip-tls-verify",
            "disable-compression",
            "extensions",
        ],
    )?;
    let server = string(cluster, "server", at)?
        .ok_or_else(|| Refused::new(path(at, "server"), "is required"))?;
    let server = https_server(server).map_err(|why| Refused::new(path(at, "server"), why))?;
    let ca = string(cluster, "certificate-authority-data", at)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Refused::new(
                path(at, "certificate-authority-data"),
                "is required: the workload cluster's certificate is always verified",
            )
        })?;
    let ca = certificates(ca)
        .map_err(|why| Refused::new(path(at, "certificate-authority-data"), why))?;
    let tls_server_name = match string(cluster, "tls-server-name", at)? {
        Some(name) if !name.is_empty() => {
            if !is_host_name(name) {
                return Err(Refused::new(
                    path(at, "tls-server-name"),
                    "must be a DNS name or an IP address",
                ));
            }
            Some(name.to_owned())
        }
        _ => None,
    };
    Ok(Accepted {
        server,
        ca,
        tls_server_name,
        client_certificate: None,
        token: None,
    })
}

fn accept_user(
    user: &Map<String, Value>,
    at: &str,
    accepted: &mut Accepted,
) -> Result<(), Refused> {
    refuse_others(
        user,
        at,
        REFUSED_USER,
        &[
            "client-certificate-data",
            "client-key-data",
            "token",
            "extensions",
        ],
    )?;
    let certificate = string(user, "client-certificate-data", at)?.filter(|s| !s.is_empty());
    let key = string(user, "client-key-data", at)?.filter(|s| !s.is_empty());
    accepted.client_certificate = match (certificate, key) {
        (Some(certificate), Some(key)) => {
            certificates(certificate)
                .map_err(|why| Refused::new(path(at, "client-certificate-data"), why))?;
            private_key(key).map_err(|why| Refused::new(path(at, "client-key-data"), why))?;
            Some((certificate.to_owned(), key.to_owned()))
        }
        (Some(_), None) => {
            return Err(Refused::new(
                path(at, "client-key-data"),
                "is required with client-certificate-data",
            ));
        }
        (None, Some(_)) => {
            return Err(Refused::new(
                path(at, "client-certificate-data"),
                "is required with client-key-data",
            ));
        }
        (None, None) => None,
    };
    accepted.token = match string(user, "token", at)?.filter(|s| !s.is_empty()) {
        Some(token) if token.bytes().all(|b| b.is_ascii_graphic()) => Some(token.to_owned()),
        Some(_) => {
            return Err(Refused::new(
                path(at, "token"),
                "must be printable ASCII without spaces",
            ));
        }
        None => None,
    };
    if accepted.client_certificate.is_none() && accepted.token.is_none() {
        return Err(Refused::new(
            at,
            "needs client-certificate-data with client-key-data, or token",
        ));
    }
    Ok(())
}

/// `server` as an https URL with a host and no credentials, query or fragment.
fn https_server(server: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = server
        .parse()
        .map_err(|e| format!("{server:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{server:?} must be an https:// URL"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{server:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err("must not carry credentials".to_owned());
    }
    if authority.host().is_empty() {
        return Err(format!("{server:?} has no host"));
    }
    if uri.query().is_some() || server.contains('#') {
        return Err(format!("{server:?} must not have a query or fragment"));
    }
    Ok(uri)
}

fn decode(data: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("is not base64: {e}"))
}

/// The DER certificates in base64-encoded PEM `data`; at least one.
fn certificates(data: &str) -> Result<Vec<Vec<u8>>, String> {
    let pem = decode(data)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    Ok(certificates)
}

/// Checks that base64-encoded PEM `data` holds a private key.
fn private_key(data: &str) -> Result<(), String> {
    let pem = decode(data)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map(|_| ())
        .map_err(|e| format!("holds no PEM private key: {e}"))
}

fn is_host_name(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
        || (name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }))
}

impl Accepted {
    /// The client configuration: only what was accepted, the client's own retries off (a
    /// PodDisruptionBudget's 429 is an answer, asked again next pass) and every request bounded.
    pub fn config(&self) -> Result<Config, Refused> {
        let mut user = Map::new();
        if let Some((certificate, key)) = &self.client_certificate {
            user.insert(
                "client-certificate-data".into(),
                Value::String(certificate.clone()),
            );
            user.insert("client-key-data".into(), Value::String(key.clone()));
        }
        if let Some(token) = &self.token {
            user.insert("token".into(), Value::String(token.clone()));
        }
        let auth_info: AuthInfo = serde_json::from_value(Value::Object(user))
            .map_err(|e| Refused::new("users", e.to_string()))?;
        let mut config = Config::new(self.server.clone());
        config.root_cert = Some(self.ca.clone());
        config.tls_server_name.clone_from(&self.tls_server_name);
        config.auth_info = auth_info;
        config.accept_invalid_certs = false;
        config.proxy_url = None;
        config.default_retry = false;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(REQUEST_TIMEOUT);
        config.write_timeout = Some(REQUEST_TIMEOUT);
        config.reset_reader_on_write = true;
        Ok(config)
    }
}

#[cfg(test)]
#[path = "kubeconfig_tests.rs"]
mod tests;
