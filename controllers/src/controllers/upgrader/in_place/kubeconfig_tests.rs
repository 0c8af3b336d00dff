use super::*;

/// A throwaway self-signed P-256 certificate and its key, base64 of PEM, as kubeconfigs carry them.
const CERT: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJlVENDQVIrZ0F3SUJBZ0lVZjFla1ZYb2d5NHV5NnY0RVFjWEtSdmVhcG9nd0NnWUlLb1pJemowRUF3SXcKRWpFUU1BNEdBMVVFQXd3SGRHVnpkQzFqWVRBZUZ3MHlOakV5TURZd05ETTBORFZhRncwek5qRXlNRE13TkRNMApORFZhTUJJeEVEQU9CZ05WQkFNTUIzUmxjM1F0WTJFd1dUQVRCZ2NxaGtqT1BRSUJCZ2dxaGtqT1BRTUJCd05DCkFBUTFvUmhWQTlhUEtFZ0ZHaC8xZS9CYUVyRDdxQlczYXpjQk1qVThoeGxmeFpqa1lGVjREa1dzSi9NOW9Md1MKcG9kOHlaSmY1eUNTV0F3TUhON2RPU1VObzFNd1VUQWRCZ05WSFE0RUZnUVVvNHJFS2hNeHJqTU5hMWJFOGNqbQo2WjVQbWMwd0h3WURWUjBqQkJnd0ZvQVVvNHJFS2hNeHJqTU5hMWJFOGNqbTZaNVBtYzB3RHdZRFZSMFRBUUgvCkJBVXdBd0VCL3pBS0JnZ3Foa2pPUFFRREFnTklBREJGQWlFQXNTNm9VUEFIL1pFYjRoMEtEZFQ4SVp4SUhCM3gKbEpQMCtsc1lzODFtRElFQ0lGd0VhNmVBcEc2TUdvR003aHJBYytTb2ZkUEF3djk3YmRQLzIrVWtlZCtyCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K";
const KEY: &str = "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCk1JR0hBZ0VBTUJNR0J5cUdTTTQ5QWdFR0NDcUdTTTQ5QXdFSEJHMHdhd0lCQVFRZ1FuOWNZNGNJSjl0LzVYcXMKaXMyeEFaWEl3ZTh6WFQyYmRNejhCTGFMKytXaFJBTkNBQVExb1JoVkE5YVBLRWdGR2gvMWUvQmFFckQ3cUJXMwphemNCTWpVOGh4bGZ4WmprWUZWNERrV3NKL005b0x3U3BvZDh5WkpmNXlDU1dBd01ITjdkT1NVTgotLS0tLUVORCBQUklWQVRFIEtFWS0tLS0tCg==";

/// A kubeconfig shaped like Cluster API's, with `cluster` and `user` lines added to its entries.
fn kubeconfig(cluster: &str, user: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: c1
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: {CERT}
{cluster}contexts:
- name: c1-admin@c1
  context:
    cluster: c1
    user: c1-admin
current-context: c1-admin@c1
preferences: {{}}
users:
- name: c1-admin
  user:
{user}"
    )
}

fn client_cert() -> String {
    format!("    client-certificate-data: {CERT}\n    client-key-data: {KEY}\n")
}

fn refused(text: &str) -> Refused {
    match accept(text) {
        Err(refused) => refused,
        Ok(accepted) => panic!("accepted {accepted:?}"),
    }
}

#[test]
fn cluster_api_kubeconfig_is_accepted_and_builds_a_verifying_client_config() {
    let accepted = accept(&kubeconfig("", &client_cert())).expect("accepted");
    assert_eq!(accepted.server, "https://10.0.0.1:6443");
    assert_eq!(accepted.ca.len(), 1);
    assert!(accepted.client_certificate.is_some());
    assert_eq!(accepted.token, None);
    let config = accepted.config().expect("config");
    assert_eq!(config.cluster_url, "https://10.0.0.1:6443");
    assert!(!config.accept_invalid_certs);
    assert!(!config.default_retry);
    assert_eq!(config.proxy_url, None);
    assert_eq!(config.root_cert.as_ref().map(Vec::len), Some(1));
    assert!(config.auth_info.client_certificate_data.is_some());
    assert!(config.auth_info.exec.is_none() && config.auth_info.token_file.is_none());
    assert_eq!(config.read_timeout, Some(REQUEST_TIMEOUT));
    assert_eq!(config.connect_timeout, Some(CONNECT_TIMEOUT));
}

#[test]
fn an_inline_token_and_a_tls_server_name_are_accepted() {
    let accepted = accept(&kubeconfig(
        "    tls-server-name: api.example\n",
        "    token: abc.def\n",
    ))
    .expect("accepted");
    assert_eq!(accepted.token.as_deref(), Some("abc.def"));
    assert_eq!(accepted.tls_server_name.as_deref(), Some("api.example"));
    let config = accepted.config().expect("config");
    assert_eq!(config.tls_server_name.as_deref(), Some("api.example"));
    assert!(config.auth_info.token.is_some());
}

#[test]
fn an_explicit_false_insecure_flag_is_accepted() {
    assert!(
        accept(&kubeconfig(
            "    insecure-skip-tls-verify: false\n",
            &client_cert()
        ))
        .is_ok()
    );
}

#[test]
fn each_refused_user_field_is_named() {
    let cases = [
        (
            "    exec:\n      command: /bin/sh\n      apiVersion: client.authentication.k8s.io/v1\n",
            "exec",
        ),
        (
            "    auth-provider:\n      name: gcp\n      config:\n        cmd-path: /bin/sh\n",
            "auth-provider",
        ),
        (
            "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n",
            "tokenFile",
        ),
        (
            "    client-certificate: /etc/cert.pem\n",
            "client-certificate",
        ),
        ("    client-key: /etc/key.pem\n", "client-key"),
        ("    username: admin\n", "username"),
        ("    password: secret\n", "password"),
        ("    as: system:admin\n", "as"),
        ("    as-uid: \"0\"\n", "as-uid"),
        ("    as-groups: [system:masters]\n", "as-groups"),
        ("    as-user-extra:\n      scopes: [x]\n", "as-user-extra"),
    ];
    for (line, field) in cases {
        // Each refused field is refused even beside a valid credential.
        let r = refused(&kubeconfig("", &format!("{}{line}", client_cert())));
        assert_eq!(r.field, format!("users[c1-admin].user.{field}"), "{line}");
        assert!(!r.why.is_empty());
    }
}

#[test]
fn each_refused_cluster_field_is_named() {
    let cases = [
        (
            "    insecure-skip-tls-verify: true\n",
            "insecure-skip-tls-verify",
        ),
        (
            "    certificate-authority: /etc/ca.pem\n",
            "certificate-authority",
        ),
        ("    proxy-url: http://10.0.0.9:3128\n", "proxy-url"),
        ("    some-future-field: x\n", "some-future-field"),
    ];
    for (line, field) in cases {
        let r = refused(&kubeconfig(line, &client_cert()));
        assert_eq!(r.field, format!("clusters[c1].cluster.{field}"), "{line}");
    }
}

#[test]
fn the_server_must_be_https_with_a_host_and_no_credentials() {
    for server in [
        "http://10.0.0.1:6443",
        "unix:///var/run/x.sock",
        "https://user:pw@10.0.0.1",
        "https://10.0.0.1/?x=1",
        "10.0.0.1:6443",
    ] {
        let text = kubeconfig("", &client_cert()).replace("https://10.0.0.1:6443", server);
        let r = refused(&text);
        assert_eq!(r.field, "clusters[c1].cluster.server", "{server}");
    }
}

#[test]
fn the_ca_is_required_and_must_hold_a_certificate() {
    let text = kubeconfig("", &client_cert());
    let without = text.replace(&format!("    certificate-authority-data: {CERT}\n"), "");
    assert_eq!(
        refused(&without).field,
        "clusters[c1].cluster.certificate-authority-data"
    );
    let garbage = text.replacen(CERT, "bm90IGEgY2VydA==", 1);
    assert_eq!(
        refused(&garbage).field,
        "clusters[c1].cluster.certificate-authority-data"
    );
    let not_base64 = text.replacen(CERT, "!!!", 1);
    assert_eq!(
        refused(&not_base64).field,
        "clusters[c1].cluster.certificate-authority-data"
    );
}

#[test]
fn a_credential_is_required_and_a_certificate_needs_its_key() {
    assert_eq!(refused(&kubeconfig("", "")).field, "users[c1-admin].user");
    let r = refused(&kubeconfig(
        "",
        &format!("    client-certificate-data: {CERT}\n"),
    ));
    assert_eq!(r.field, "users[c1-admin].user.client-key-data");
    let r = refused(&kubeconfig("", &format!("    client-key-data: {KEY}\n")));
    assert_eq!(r.field, "users[c1-admin].user.client-certificate-data");
    // A certificate where the key should be.
    let r = refused(&kubeconfig(
        "",
        &format!("    client-certificate-data: {CERT}\n    client-key-data: {CERT}\n"),
    ));
    assert_eq!(r.field, "users[c1-admin].user.client-key-data");
    let r = refused(&kubeconfig("", "    token: \"a b\r\nX-Evil: 1\"\n"));
    assert_eq!(r.field, "users[c1-admin].user.token");
}

#[test]
fn the_selected_context_must_exist_and_name_existing_entries() {
    let text = kubeconfig("", &client_cert());
    let r = refused(&text.replace("current-context: c1-admin@c1", "current-context: other"));
    assert_eq!(r.field, "contexts[other]");
    let r = refused(&text.replace("    user: c1-admin\n", "    user: nobody\n"));
    assert_eq!(r.field, "users[nobody]");
    // Without current-context, the only context is used.
    assert!(accept(&text.replace("current-context: c1-admin@c1\n", "")).is_ok());
}

#[test]
fn entries_outside_the_selected_context_are_never_used() {
    // A second user with exec that no context selects changes nothing.
    let text = format!(
        "{}- name: other\n  user:\n    exec:\n      command: /bin/sh\n",
        kubeconfig("", &client_cert())
    );
    let accepted = accept(&text).expect("accepted");
    assert!(accepted.config().expect("config").auth_info.exec.is_none());
}

#[test]
fn oversized_and_malformed_kubeconfigs_are_refused() {
    let big = "#".repeat(MAX_KUBECONFIG_BYTES + 1);
    assert_eq!(refused(&big).field, "value");
    assert_eq!(refused("[1, 2").field, "value");
    assert_eq!(refused("just a string").field, "value");
}

#[test]
fn debug_output_hides_credentials() {
    let accepted = accept(&kubeconfig("", "    token: sekret-token\n")).expect("accepted");
    let shown = format!("{accepted:?}");
    assert!(!shown.contains("sekret-token"), "{shown}");
}
