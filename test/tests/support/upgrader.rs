//! Shared setup of the upgrader suites: static images made Ready as the MachineImage controller
//! would, a Plan, Clusters written and finished the way Cluster API would, and upgraders.
#![allow(dead_code)] // each suite uses a part

use std::time::Duration;

use anyhow::Result;
use api::v1alpha1::{MachineImage, Plan};
use e2e::TestEnv;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

pub const WAIT: Duration = Duration::from_secs(30);

/// The Cluster resource in `version` (`v1beta1` or `v1beta2`).
pub fn clusters(env: &TestEnv, version: &str) -> Api<DynamicObject> {
    e2e::capi::clusters(&env.client, &env.namespace, version)
}

/// A static MachineImage (spec.id set), then Ready as the MachineImage controller makes it.
pub async fn static_image(env: &TestEnv, name: &str, version: &str, id: &str) -> Result<()> {
    let api: Api<MachineImage> = env.api();
    let image: MachineImage = serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "MachineImage",
        "metadata": {"name": name, "labels": {"os": "demo"}},
        "spec": {"version": version, "id": id, "jobTemplate": {"spec": {"containers": [{"name": "b", "image": "busybox"}], "restartPolicy": "Never"}}},
    }))?;
    api.create(&PostParams::default(), &image).await?;
    let status = json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "MachineImage",
        "status": {
            "ready": true,
            "phase": "Created",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Built", "message": "static", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        },
    });
    api.patch_status(
        name,
        &PatchParams::apply("e2e-image-stand-in").force(),
        &Patch::Apply(&status),
    )
    .await?;
    Ok(())
}

/// A Plan over the images labelled `os: demo`.
pub async fn plan(env: &TestEnv, name: &str, range: &str) -> Result<()> {
    let api: Api<Plan> = env.api();
    let plan: Plan = serde_json::from_value(json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": "Plan",
        "metadata": {"name": name},
        "spec": {"versionRange": range, "machineImageSelector": {"matchLabels": {"os": "demo"}}},
    }))?;
    api.create(&PostParams::default(), &plan).await?;
    Ok(())
}

/// A ClusterClass Cluster at `version` with the variables `image` and `other`, created by a
/// plain create (as `kubectl create` would), then finished at `version`.
pub async fn cluster(
    env: &TestEnv,
    api_version: &str,
    name: &str,
    version: &str,
    extra: Value,
) -> Result<DynamicObject> {
    let api = clusters(env, api_version);
    let mut body = json!({
        "apiVersion": format!("cluster.x-k8s.io/{api_version}"),
        "kind": "Cluster",
        "metadata": {"name": name},
        "spec": {"topology": {"class": "quick-start", "version": version, "variables": [
            {"name": "image", "value": "img-old"},
            {"name": "other", "value": {"keep": true}},
        ]}},
    });
    merge(&mut body, &extra);
    let object: DynamicObject = serde_json::from_value(body)?;
    api.create(&PostParams::default(), &object).await?;
    finish(env, api_version, name, version).await
}

/// Merges `from` into `into`: objects key by key, anything else replaced.
pub fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// Writes the Cluster's status as Cluster API reports a finished rollout at `version`.
pub async fn finish(
    env: &TestEnv,
    api_version: &str,
    name: &str,
    version: &str,
) -> Result<DynamicObject> {
    e2e::capi::rollout_finished(&env.client, &env.namespace, api_version, name, version).await
}

/// The upgraders of `kind` in the test's namespace.
pub fn upgraders(env: &TestEnv, kind: &str) -> Api<DynamicObject> {
    let plural = format!("{}s", kind.to_lowercase());
    let gvk = GroupVersionKind::gvk("kubernetesupgraded.dimitrikoshkin.com", "v1alpha1", kind);
    Api::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &ApiResource::from_gvk_with_plural(&gvk, &plural),
    )
}

/// An upgrader of `kind` with `spec` merged over `{clusterName, planRef}`.
pub async fn upgrader(
    env: &TestEnv,
    kind: &str,
    name: &str,
    cluster: &str,
    plan: &str,
    spec: Value,
) -> Result<()> {
    let api = upgraders(env, kind);
    let mut body = json!({
        "apiVersion": "kubernetesupgraded.dimitrikoshkin.com/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"clusterName": cluster, "planRef": {"name": plan}},
    });
    merge(&mut body["spec"], &spec);
    api.create(&PostParams::default(), &serde_json::from_value(body)?)
        .await?;
    Ok(())
}

/// The upgrader as JSON.
pub async fn upgrader_json(env: &TestEnv, kind: &str, name: &str) -> Result<Value> {
    Ok(serde_json::to_value(upgraders(env, kind).get(name).await?)?)
}

/// Waits until the Cluster's `spec.topology.version` is `version`; returns the topology.
pub async fn wait_version(
    env: &TestEnv,
    api_version: &str,
    name: &str,
    version: &str,
) -> Result<Value> {
    e2e::eventually(&format!("Cluster {name} at {version}"), WAIT, || async {
        let t = topology(env, api_version, name).await?;
        Ok((t["version"] == version).then_some(t))
    })
    .await
}

/// Waits until the upgrader's `type_` condition has `reason`.
pub async fn wait_reason(
    env: &TestEnv,
    kind: &str,
    name: &str,
    type_: &str,
    reason: &str,
) -> Result<Value> {
    e2e::eventually(&format!("{kind} {name} {type_}={reason}"), WAIT, || async {
        let u = upgrader_json(env, kind, name).await?;
        Ok((e2e::condition_reason(&u, type_).as_deref() == Some(reason)).then_some(u))
    })
    .await
}

/// The Cluster's `spec.topology`.
pub async fn topology(env: &TestEnv, api_version: &str, name: &str) -> Result<Value> {
    let c = clusters(env, api_version).get(name).await?;
    Ok(c.data["spec"]["topology"].clone())
}

/// The variable `name`'s value in `topology`.
pub fn variable<'a>(topology: &'a Value, name: &str) -> Option<&'a Value> {
    topology["variables"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
        .map(|v| &v["value"])
}

/// The Cluster's resourceVersion.
pub async fn resource_version(env: &TestEnv, api_version: &str, name: &str) -> Result<String> {
    Ok(clusters(env, api_version)
        .get(name)
        .await?
        .resource_version()
        .unwrap_or_default())
}
