//! Build pods and Pod Security (pure). The manager creates each build Job with its own rights,
//! so whoever may create a MachineImage (or a template and a syncer) chooses that pod. Unless
//! its namespace allows more, a build pod must pass the baseline Pod Security profile, stay off
//! `nodeName`, and use no service account but `default`.
//!
//! A namespace allows more with the label [`BUILD_POD_SECURITY_LABEL`]`: privileged` (lifts the
//! profile) and the annotation [`BUILD_SERVICE_ACCOUNTS_ANNOTATION`]`: a,b` (names further
//! service accounts). `decide` refuses an attempt whose pod [`check`] rejects: no Job, the image
//! `Failed` with [`REASON_BUILD_POD_NOT_ALLOWED`]. [`admission_rules`] states the same rules in
//! CEL for the ValidatingAdmissionPolicy on the manager's Job creations.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::{
    Container, EphemeralContainer, LifecycleHandler, Namespace, PodSpec, Probe, SecurityContext,
};
use kube::ResourceExt;

/// The namespace label that lifts the baseline profile for build pods (value [`PRIVILEGED`]).
pub const BUILD_POD_SECURITY_LABEL: &str =
    "kubernetesupgraded.dimitrikoshkin.com/build-pod-security";
/// The value of [`BUILD_POD_SECURITY_LABEL`] that lifts the profile; any other keeps baseline.
pub const PRIVILEGED: &str = "privileged";
/// The namespace annotation listing, comma-separated, the service accounts build pods may use
/// besides `default`.
pub const BUILD_SERVICE_ACCOUNTS_ANNOTATION: &str =
    "kubernetesupgraded.dimitrikoshkin.com/build-service-accounts";
/// Reason: the namespace does not allow the build pod.
pub const REASON_BUILD_POD_NOT_ALLOWED: &str = "BuildPodNotAllowed";

/// Capabilities the baseline profile lets a container add (the container runtime's default set).
pub const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
/// The sysctls the baseline profile counts as safe (namespaced, isolated from other pods).
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
/// SELinux types the baseline profile allows (besides none); user and role must stay unset.
pub const SELINUX_TYPES: &[&str] = &[
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];
/// Seccomp and AppArmor profile types the baseline profile allows: never `Unconfined`.
pub const PROFILE_TYPES: &[&str] = &["RuntimeDefault", "Localhost"];
/// The only `/proc` mount type the baseline profile allows.
pub const PROC_MOUNT: &str = "Default";
/// The service account every build pod may use.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Where the pod spec sits in a MachineImage, for the fields a refusal names.
const FIELD: &str = "spec.jobTemplate.spec";
/// Violations a message lists before it counts the rest.
const LISTED: usize = 4;
/// Longest piece of user input a message quotes, in characters.
const QUOTED: usize = 63;

/// What a namespace allows its build pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildPodPolicy {
    /// [`BUILD_POD_SECURITY_LABEL`] is [`PRIVILEGED`]: the profile is lifted.
    pub privileged: bool,
    /// Service accounts allowed besides `default`.
    pub service_accounts: BTreeSet<String>,
}

impl BuildPodPolicy {
    /// The policy the labels and annotations of `namespace` set; the baseline for a namespace
    /// that says nothing.
    pub fn of(namespace: &Namespace) -> Self {
        Self {
            privileged: namespace
                .labels()
                .get(BUILD_POD_SECURITY_LABEL)
                .is_some_and(|v| v == PRIVILEGED),
            service_accounts: namespace
                .annotations()
                .get(BUILD_SERVICE_ACCOUNTS_ANNOTATION)
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// What would allow a violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedBy {
    /// The label [`BUILD_POD_SECURITY_LABEL`]`: privileged`.
    PrivilegedLabel,
    /// This service account in the annotation [`BUILD_SERVICE_ACCOUNTS_ANNOTATION`].
    ServiceAccount(String),
}

/// One field of the pod spec outside what the namespace allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The field, from the MachineImage: `spec.jobTemplate.spec.hostNetwork`.
    pub field: String,
    /// What it holds, for people: `true`, `"Unconfined"`.
    pub value: String,
    /// What would allow it.
    pub allowed_by: AllowedBy,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is {}", self.field, self.value)
    }
}

/// Why a build pod is refused: every violation, grouped by what would allow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The namespace of the image.
    pub namespace: String,
    /// What the pod asks for beyond the namespace's policy.
    pub violations: Vec<Violation>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let profile: Vec<&Violation> = self
            .violations
            .iter()
            .filter(|v| v.allowed_by == AllowedBy::PrivilegedLabel)
            .collect();
        let accounts: Vec<&Violation> = self
            .violations
            .iter()
            .filter(|v| v.allowed_by != AllowedBy::PrivilegedLabel)
            .collect();
        let ns = &self.namespace;
        if !profile.is_empty() {
            write!(
                f,
                "the baseline Pod Security profile of build pods in namespace {ns} forbids "
            )?;
            list(f, &profile)?;
            write!(
                f,
                "; the namespace label {BUILD_POD_SECURITY_LABEL}={PRIVILEGED} allows {}",
                if profile.len() == 1 { "it" } else { "them" }
            )?;
        }
        if !accounts.is_empty() {
            if !profile.is_empty() {
                f.write_str(". ")?;
            }
            write!(
                f,
                "build pods in namespace {ns} use no service account but {DEFAULT_SERVICE_ACCOUNT} unless the namespace annotation {BUILD_SERVICE_ACCOUNTS_ANNOTATION} lists it: "
            )?;
            list(f, &accounts)?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

fn list(f: &mut fmt::Formatter<'_>, violations: &[&Violation]) -> fmt::Result {
    for (i, v) in violations.iter().take(LISTED).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{v}")?;
    }
    if violations.len() > LISTED {
        write!(f, " and {} more", violations.len() - LISTED)?;
    }
    Ok(())
}

/// `text` quoted for a message, cut to [`QUOTED`] characters.
fn quote(text: &str) -> String {
    let cut: String = text.chars().take(QUOTED).collect();
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// The pod spec of a build, checked against the namespace's policy.
///
/// # Errors
///
/// A [`Refusal`] naming every field outside the policy.
pub fn check(spec: &PodSpec, namespace: &str, policy: &BuildPodPolicy) -> Result<(), Refusal> {
    let mut violations = Vec::new();
    if !policy.privileged {
        baseline(spec, &mut violations);
    }
    service_accounts(spec, policy, &mut violations);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Refusal {
            namespace: namespace.to_owned(),
            violations,
        })
    }
}

/// Collects the violations of one check.
struct Found<'a>(&'a mut Vec<Violation>);

impl Found<'_> {
    fn profile(&mut self, field: String, value: String) {
        self.0.push(Violation {
            field,
            value,
            allowed_by: AllowedBy::PrivilegedLabel,
        });
    }
}

/// The baseline profile, plus `nodeName`.
fn baseline(spec: &PodSpec, violations: &mut Vec<Violation>) {
    let mut found = Found(violations);
    for (name, set) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if set == Some(true) {
            found.profile(format!("{FIELD}.{name}"), "true".to_owned());
        }
    }
    // Not part of the profile, but it bypasses the scheduler: taints, the control plane's too.
    if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        found.profile(format!("{FIELD}.nodeName"), quote(node));
    }
    for (i, volume) in spec.volumes.iter().flatten().enumerate() {
        if let Some(host_path) = &volume.host_path {
            found.profile(
                format!("{FIELD}.volumes[{i}].hostPath"),
                format!(
                    "{} (volume {})",
                    quote(&host_path.path),
                    quote(&volume.name)
                ),
            );
        }
    }
    if let Some(pod) = &spec.security_context {
        for (i, sysctl) in pod.sysctls.iter().flatten().enumerate() {
            if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
                found.profile(
                    format!("{FIELD}.securityContext.sysctls[{i}].name"),
                    format!("{}, not a safe sysctl", quote(&sysctl.name)),
                );
            }
        }
        let at = format!("{FIELD}.securityContext");
        profile_type(
            &mut found,
            &at,
            "seccompProfile",
            pod.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        );
        profile_type(
            &mut found,
            &at,
            "appArmorProfile",
            pod.app_armor_profile.as_ref().map(|p| p.type_.as_str()),
        );
        se_linux(&mut found, &at, pod.se_linux_options.as_ref());
        host_process(
            &mut found,
            &at,
            pod.windows_options.as_ref().and_then(|w| w.host_process),
        );
    }
    for (list, containers) in [
        ("containers", Some(&spec.containers)),
        ("initContainers", spec.init_containers.as_ref()),
    ] {
        for (i, c) in containers.into_iter().flatten().enumerate() {
            container(&mut found, &format!("{FIELD}.{list}[{i}]"), &view(c));
        }
    }
    for (i, c) in spec.ephemeral_containers.iter().flatten().enumerate() {
        container(
            &mut found,
            &format!("{FIELD}.ephemeralContainers[{i}]"),
            &ephemeral_view(c),
        );
    }
}

/// What the baseline checks of a container, ephemeral or not.
struct ContainerView<'a> {
    name: &'a str,
    security: Option<&'a SecurityContext>,
    host_ports: Vec<i32>,
    probes: [(&'static str, Option<&'a Probe>); 3],
    handlers: [(&'static str, Option<&'a LifecycleHandler>); 2],
}

/// The view of a container or an ephemeral container: two types with the same fields.
macro_rules! container_view {
    ($c:expr) => {{
        let c = $c;
        let lifecycle = c.lifecycle.as_ref();
        ContainerView {
            name: &c.name,
            security: c.security_context.as_ref(),
            host_ports: c
                .ports
                .iter()
                .flatten()
                .filter_map(|p| p.host_port)
                .collect(),
            probes: [
                ("livenessProbe", c.liveness_probe.as_ref()),
                ("readinessProbe", c.readiness_probe.as_ref()),
                ("startupProbe", c.startup_probe.as_ref()),
            ],
            handlers: [
                ("postStart", lifecycle.and_then(|l| l.post_start.as_ref())),
                ("preStop", lifecycle.and_then(|l| l.pre_stop.as_ref())),
            ],
        }
    }};
}

fn view(c: &Container) -> ContainerView<'_> {
    container_view!(c)
}

fn ephemeral_view(c: &EphemeralContainer) -> ContainerView<'_> {
    container_view!(c)
}

fn container(found: &mut Found<'_>, at: &str, c: &ContainerView<'_>) {
    let before = found.0.len();
    if let Some(security) = c.security {
        let sc = format!("{at}.securityContext");
        if security.privileged == Some(true) {
            found.profile(format!("{sc}.privileged"), "true".to_owned());
        }
        let added: Vec<String> = security
            .capabilities
            .as_ref()
            .and_then(|caps| caps.add.as_ref())
            .into_iter()
            .flatten()
            .filter(|cap| !BASELINE_CAPABILITIES.contains(&cap.as_str()))
            .map(|cap| quote(cap))
            .collect();
        if !added.is_empty() {
            found.profile(
                format!("{sc}.capabilities.add"),
                format!("[{}]", added.join(", ")),
            );
        }
        if let Some(mount) = security.proc_mount.as_deref().filter(|m| *m != PROC_MOUNT) {
            found.profile(format!("{sc}.procMount"), quote(mount));
        }
        profile_type(
            found,
            &sc,
            "seccompProfile",
            security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        );
        profile_type(
            found,
            &sc,
            "appArmorProfile",
            security
                .app_armor_profile
                .as_ref()
                .map(|p| p.type_.as_str()),
        );
        se_linux(found, &sc, security.se_linux_options.as_ref());
        host_process(
            found,
            &sc,
            security
                .windows_options
                .as_ref()
                .and_then(|w| w.host_process),
        );
    }
    for (i, port) in c.host_ports.iter().enumerate() {
        if *port != 0 {
            found.profile(format!("{at}.ports[{i}].hostPort"), port.to_string());
        }
    }
    // A probe or lifecycle hook with a host makes the kubelet connect there from the node.
    let probes = c.probes.iter().filter_map(|(name, probe)| {
        probe.map(|p| {
            (
                format!("{at}.{name}"),
                p.http_get.as_ref(),
                p.tcp_socket.as_ref(),
            )
        })
    });
    let hooks = c.handlers.iter().filter_map(|(name, hook)| {
        hook.map(|h| {
            (
                format!("{at}.lifecycle.{name}"),
                h.http_get.as_ref(),
                h.tcp_socket.as_ref(),
            )
        })
    });
    for (place, http, tcp) in probes.chain(hooks) {
        for (action, host) in [
            ("httpGet", http.and_then(|a| a.host.as_deref())),
            ("tcpSocket", tcp.and_then(|a| a.host.as_deref())),
        ] {
            if let Some(host) = host.filter(|h| !h.is_empty()) {
                found.profile(format!("{place}.{action}.host"), quote(host));
            }
        }
    }
    let name = quote(c.name);
    for v in &mut found.0[before..] {
        v.value = format!("{} (container {name})", v.value);
    }
}

fn profile_type(found: &mut Found<'_>, at: &str, field: &str, type_: Option<&str>) {
    if let Some(t) = type_.filter(|t| !PROFILE_TYPES.contains(t)) {
        found.profile(format!("{at}.{field}.type"), quote(t));
    }
}

fn se_linux(
    found: &mut Found<'_>,
    at: &str,
    options: Option<&k8s_openapi::api::core::v1::SELinuxOptions>,
) {
    let Some(options) = options else {
        return;
    };
    if let Some(t) = options
        .type_
        .as_deref()
        .filter(|t| !t.is_empty() && !SELINUX_TYPES.contains(t))
    {
        found.profile(format!("{at}.seLinuxOptions.type"), quote(t));
    }
    for (name, value) in [("user", &options.user), ("role", &options.role)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            found.profile(format!("{at}.seLinuxOptions.{name}"), quote(v));
        }
    }
}

fn host_process(found: &mut Found<'_>, at: &str, set: Option<bool>) {
    if set == Some(true) {
        found.profile(
            format!("{at}.windowsOptions.hostProcess"),
            "true".to_owned(),
        );
    }
}

/// `serviceAccountName` (and its deprecated alias `serviceAccount`): empty, `default`, or one
/// the namespace lists.
fn service_accounts(spec: &PodSpec, policy: &BuildPodPolicy, violations: &mut Vec<Violation>) {
    for (field, account) in [
        ("serviceAccountName", &spec.service_account_name),
        ("serviceAccount", &spec.service_account),
    ] {
        let Some(account) = account.as_deref() else {
            continue;
        };
        if account.is_empty()
            || account == DEFAULT_SERVICE_ACCOUNT
            || policy.service_accounts.contains(account)
        {
            continue;
        }
        violations.push(Violation {
            field: format!("{FIELD}.{field}"),
            value: quote(account),
            allowed_by: AllowedBy::ServiceAccount(account.to_owned()),
        });
    }
}

/// One validation of the admission policy: a CEL expression over the Job (`object`) and its
/// namespace (`namespaceObject`), true when allowed, and the message of a refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionRule {
    /// The CEL expression.
    pub expression: String,
    /// The refusal's message: the field and what allows it.
    pub message: String,
}

/// The variables the rules use, in order: the pod spec, its containers and init containers
/// (ephemeral ones are refused in a pod template by the API server itself), whether the
/// namespace lifts the profile, and the service accounts it allows.
pub fn admission_variables() -> Vec<(&'static str, String)> {
    let labels = "namespaceObject.metadata.labels";
    let annotations = "namespaceObject.metadata.annotations";
    vec![
        ("spec", "object.spec.template.spec".to_owned()),
        (
            "containers",
            "variables.spec.containers + (has(variables.spec.initContainers) ? variables.spec.initContainers : [])"
                .to_owned(),
        ),
        (
            "privileged",
            format!(
                "has({labels}) && '{BUILD_POD_SECURITY_LABEL}' in {labels} && {labels}['{BUILD_POD_SECURITY_LABEL}'] == '{PRIVILEGED}'"
            ),
        ),
        (
            "serviceAccounts",
            format!(
                "['', '{DEFAULT_SERVICE_ACCOUNT}'] + (has({annotations}) && '{BUILD_SERVICE_ACCOUNTS_ANNOTATION}' in {annotations} ? {annotations}['{BUILD_SERVICE_ACCOUNTS_ANNOTATION}'].split(',').map(a, a.trim()) : [])"
            ),
        ),
    ]
}

/// `['a', 'b']`.
fn cel_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `field` of `object` is unset or satisfies `then`.
fn unset_or(object: &str, field: &str, then: &str) -> String {
    format!("(!has({object}.{field}) || {then})")
}

/// Every container (variable `c`) satisfies `rule`, given its security context (`sc`).
fn every_security_context(rule: impl Fn(&str) -> String) -> String {
    format!(
        "variables.containers.all(c, {})",
        unset_or("c", "securityContext", &rule("c.securityContext"))
    )
}

/// The pod's security context and every container's satisfy `rule`.
fn pod_and_containers(rule: impl Fn(&str) -> String) -> String {
    format!(
        "{} && {}",
        unset_or(
            "variables.spec",
            "securityContext",
            &rule("variables.spec.securityContext")
        ),
        every_security_context(rule)
    )
}

/// The host of an action of `handler` (a probe or a lifecycle hook) is unset or empty.
fn no_host(handler: &str) -> String {
    let action = |name: &str| {
        let at = format!("{handler}.{name}");
        unset_or(
            handler,
            name,
            &unset_or(&at, "host", &format!("{at}.host == ''")),
        )
    };
    format!("({} && {})", action("httpGet"), action("tcpSocket"))
}

/// The rules of [`check`] in CEL, for a Job's pod template: each profile rule holds unless the
/// namespace lifts the profile; the service-account rule always holds.
pub fn admission_rules() -> Vec<AdmissionRule> {
    let profile = |field: &str, what: &str, expression: String| AdmissionRule {
        expression: format!("variables.privileged || ({expression})"),
        message: format!(
            "spec.template.spec.{field} {what} in a build pod (the baseline Pod Security profile); the namespace label {BUILD_POD_SECURITY_LABEL}={PRIVILEGED} allows more"
        ),
    };
    let profile_types = cel_list(PROFILE_TYPES);
    let mut se_linux_types = vec![""];
    se_linux_types.extend(SELINUX_TYPES);
    let se_linux_types = cel_list(&se_linux_types);
    let spec = "variables.spec";
    vec![
        profile(
            "hostNetwork, hostPID and hostIPC",
            "must be unset or false",
            ["hostNetwork", "hostPID", "hostIPC"]
                .map(|f| unset_or(spec, f, &format!("!{spec}.{f}")))
                .join(" && "),
        ),
        profile(
            "nodeName",
            "must be unset (it bypasses the scheduler)",
            unset_or(spec, "nodeName", &format!("{spec}.nodeName == ''")),
        ),
        profile(
            "volumes[*].hostPath",
            "must be unset",
            unset_or(
                spec,
                "volumes",
                &format!("{spec}.volumes.all(v, !has(v.hostPath))"),
            ),
        ),
        profile(
            "containers[*].securityContext.privileged",
            "must be unset or false",
            every_security_context(|sc| unset_or(sc, "privileged", &format!("!{sc}.privileged"))),
        ),
        profile(
            "containers[*].securityContext.capabilities.add",
            &format!("may hold only {}", BASELINE_CAPABILITIES.join(", ")),
            every_security_context(|sc| {
                let caps = format!("{sc}.capabilities");
                unset_or(
                    sc,
                    "capabilities",
                    &unset_or(
                        &caps,
                        "add",
                        &format!(
                            "{caps}.add.all(a, a in {})",
                            cel_list(BASELINE_CAPABILITIES)
                        ),
                    ),
                )
            }),
        ),
        profile(
            "containers[*].securityContext.procMount",
            "must be unset or Default",
            every_security_context(|sc| {
                unset_or(
                    sc,
                    "procMount",
                    &format!("{sc}.procMount == '{PROC_MOUNT}'"),
                )
            }),
        ),
        profile(
            "securityContext.seccompProfile.type and containers[*].securityContext.seccompProfile.type",
            "must be unset, RuntimeDefault or Localhost",
            pod_and_containers(|sc| {
                unset_or(
                    sc,
                    "seccompProfile",
                    &format!("{sc}.seccompProfile.type in {profile_types}"),
                )
            }),
        ),
        profile(
            "securityContext.appArmorProfile.type and containers[*].securityContext.appArmorProfile.type",
            "must be unset, RuntimeDefault or Localhost",
            pod_and_containers(|sc| {
                unset_or(
                    sc,
                    "appArmorProfile",
                    &format!("{sc}.appArmorProfile.type in {profile_types}"),
                )
            }),
        ),
        profile(
            "securityContext.seLinuxOptions and containers[*].securityContext.seLinuxOptions",
            &format!(
                "may set no user and no role, and only the type {}",
                SELINUX_TYPES.join(", ")
            ),
            pod_and_containers(|sc| {
                let o = format!("{sc}.seLinuxOptions");
                unset_or(
                    sc,
                    "seLinuxOptions",
                    &format!(
                        "({} && {} && {})",
                        unset_or(&o, "type", &format!("{o}.type in {se_linux_types}")),
                        unset_or(&o, "user", &format!("{o}.user == ''")),
                        unset_or(&o, "role", &format!("{o}.role == ''")),
                    ),
                )
            }),
        ),
        profile(
            "securityContext.windowsOptions.hostProcess and containers[*].securityContext.windowsOptions.hostProcess",
            "must be unset or false",
            pod_and_containers(|sc| {
                let w = format!("{sc}.windowsOptions");
                unset_or(
                    sc,
                    "windowsOptions",
                    &unset_or(&w, "hostProcess", &format!("!{w}.hostProcess")),
                )
            }),
        ),
        profile(
            "securityContext.sysctls[*].name",
            &format!("may name only {}", SAFE_SYSCTLS.join(", ")),
            unset_or(
                spec,
                "securityContext",
                &unset_or(
                    &format!("{spec}.securityContext"),
                    "sysctls",
                    &format!(
                        "{spec}.securityContext.sysctls.all(s, s.name in {})",
                        cel_list(SAFE_SYSCTLS)
                    ),
                ),
            ),
        ),
        profile(
            "containers[*].ports[*].hostPort",
            "must be unset or 0",
            format!(
                "variables.containers.all(c, {})",
                unset_or(
                    "c",
                    "ports",
                    "c.ports.all(p, !has(p.hostPort) || p.hostPort == 0)"
                )
            ),
        ),
        profile(
            "containers[*] probe and lifecycle hook hosts",
            "must be unset",
            format!(
                "variables.containers.all(c, {} && {} && {} && {})",
                unset_or("c", "livenessProbe", &no_host("c.livenessProbe")),
                unset_or("c", "readinessProbe", &no_host("c.readinessProbe")),
                unset_or("c", "startupProbe", &no_host("c.startupProbe")),
                unset_or(
                    "c",
                    "lifecycle",
                    &format!(
                        "({} && {})",
                        unset_or(
                            "c.lifecycle",
                            "postStart",
                            &no_host("c.lifecycle.postStart")
                        ),
                        unset_or("c.lifecycle", "preStop", &no_host("c.lifecycle.preStop")),
                    )
                ),
            ),
        ),
        AdmissionRule {
            expression: ["serviceAccountName", "serviceAccount"]
                .map(|f| unset_or(spec, f, &format!("{spec}.{f} in variables.serviceAccounts")))
                .join(" && "),
            message: format!(
                "spec.template.spec.serviceAccountName must be unset or {DEFAULT_SERVICE_ACCOUNT} in a build pod, or listed in the namespace annotation {BUILD_SERVICE_ACCOUNTS_ANNOTATION}"
            ),
        },
    ]
}

#[cfg(test)]
mod tests;
