//! Test objects, one fixed clock and one condition lookup, shared by every controller's unit
//! tests. Objects start from the smallest valid spec of their kind ([`Fixture::test`]) and are
//! shaped with builder methods: the generic ones of [`Build`] (metadata, a merged spec, a status)
//! and each kind's own in [`kinds`].
//!
//! ```ignore
//! let image = MachineImage::test("img").with_version("v1.31.1").ready("ami-1");
//! let plan = Plan::test("p").with_range("v1.31.x").found("v1.31.1", "ami-1");
//! ```

pub mod kinds;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use kinds::{ImageBuild, PlanBuild, SourceBuild};

/// The namespace every test object is created in.
pub const NAMESPACE: &str = "team";

/// The fixed instant of every test: a Saturday, 03:00 UTC (inside a `0 2 * * SAT` window of
/// two hours, outside one on Sundays).
pub const NOW_SECOND: i64 = 1_795_834_800;

/// The fixed clock, as the `metav1.Time` a reconcile is given.
pub fn now() -> Time {
    at(0)
}

/// The fixed clock, as a timestamp.
pub fn timestamp() -> Timestamp {
    now().0
}

/// `seconds` after (or, when negative, before) [`now`].
pub fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(NOW_SECOND + seconds).unwrap())
}

/// The status, reason and message of the `type_` condition in `status`: a typed status or the
/// JSON of one (an applied body's `status`). Fails the test when there is no such condition.
pub fn condition(status: &impl Serialize, type_: &str) -> (String, String, String) {
    let status = serde_json::to_value(status).unwrap();
    let found = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"));
    let text = |field: &str| found[field].as_str().unwrap_or_default().to_owned();
    (text("status"), text("reason"), text("message"))
}

/// The status and reason of the `Ready` condition in `status` (see [`condition`]).
pub fn ready(status: &impl Serialize) -> (String, String) {
    let (status, reason, _) = condition(status, "Ready");
    (status, reason)
}

/// A kind whose test objects start from its smallest valid spec.
pub trait Fixture: Resource<DynamicType = ()> + DeserializeOwned {
    /// The smallest spec the API server accepts for this kind.
    fn minimal_spec() -> Value;

    /// An object named `name` in [`NAMESPACE`] with [`Fixture::minimal_spec`] and no status.
    fn test(name: &str) -> Self {
        serde_json::from_value(json!({
            "apiVersion": Self::api_version(&()),
            "kind": Self::kind(&()),
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": Self::minimal_spec(),
        }))
        .unwrap()
    }
}

/// Builder methods every test object has.
pub trait Build: Resource + Serialize + DeserializeOwned {
    /// In `namespace` instead of [`NAMESPACE`].
    #[must_use]
    fn in_namespace(mut self, namespace: &str) -> Self {
        self.meta_mut().namespace = Some(namespace.to_owned());
        self
    }

    /// With `uid`.
    #[must_use]
    fn with_uid(mut self, uid: &str) -> Self {
        self.meta_mut().uid = Some(uid.to_owned());
        self
    }

    /// At `generation`.
    #[must_use]
    fn with_generation(mut self, generation: i64) -> Self {
        self.meta_mut().generation = Some(generation);
        self
    }

    /// With the label `key: value`.
    #[must_use]
    fn with_label(mut self, key: &str, value: &str) -> Self {
        self.meta_mut()
            .labels
            .get_or_insert_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// With the annotation `key: value`.
    #[must_use]
    fn with_annotation(mut self, key: &str, value: &str) -> Self {
        self.meta_mut()
            .annotations
            .get_or_insert_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Created at `time` (RFC 3339).
    #[must_use]
    fn created_at(mut self, time: &str) -> Self {
        self.meta_mut().creation_timestamp = Some(Time(time.parse().unwrap()));
        self
    }

    /// With `fields` (JSON) merged into the spec, field by field at the top level.
    #[must_use]
    fn with_spec(self, fields: &Value) -> Self {
        self.merged("spec", fields)
    }

    /// With `status` (JSON) as the whole status.
    #[must_use]
    fn with_status(self, status: &Value) -> Self {
        let mut object = serde_json::to_value(&self).unwrap();
        object["status"] = status.clone();
        serde_json::from_value(object).unwrap()
    }

    /// With `fields` merged into `part` (`spec` or `status`) at its top level.
    #[must_use]
    fn merged(self, part: &str, fields: &Value) -> Self {
        let mut object = serde_json::to_value(&self).unwrap();
        if !object[part].is_object() {
            object[part] = json!({});
        }
        for (key, value) in fields.as_object().unwrap() {
            object[part][key] = value.clone();
        }
        serde_json::from_value(object).unwrap()
    }
}

impl<K: Resource + Serialize + DeserializeOwned> Build for K {}
