//! Events for people: one [`Events`] publisher per controller, Normal events on transitions,
//! one Warning per failed reconcile (through [`super::Reporter`]). Notes are cut to 1 KiB.
//!
//! An event published again for the same object, type, reason and related object within
//! [`SERIES_TTL`] is counted on the first one's series (a patch) instead of created anew, as
//! kube's `Recorder` does. What a publisher remembers for that is bounded: one small entry per
//! such event, dropped after [`SERIES_TTL`], at most [`MAX_SERIES`] of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde_json::json;

use super::status::API_TIMEOUT;

/// Longest event note, and longest cause chain reported.
pub const MAX_NOTE_BYTES: usize = crate::text::MAX_MESSAGE_BYTES;

/// How long a published event is remembered, to count a repeat on its series.
pub const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// Most events a publisher remembers; past it, the least recently published is forgotten (a
/// repeat of it then starts a new event).
pub const MAX_SERIES: usize = 1024;

/// The action every event of ours names.
const ACTION: &str = "Reconcile";

/// Publishes events for one controller. Publishing failures are logged, never fatal.
#[derive(Clone)]
pub struct Events {
    client: Client,
    controller: String,
    instance: Option<String>,
    series: Arc<Mutex<Series>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// The events a publisher published recently, by what makes a repeat the same event.
#[derive(Debug, Default)]
struct Series {
    events: HashMap<Key, Published>,
}

/// What makes two events the same: type, reason, and the identity of the object (and the
/// related object) they are about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    reason: &'static str,
    regarding: Box<str>,
    related: Option<Box<str>>,
}

/// Where a published event is, and its count so far.
#[derive(Clone, Debug, PartialEq)]
struct Published {
    name: Box<str>,
    count: i32,
    last: Timestamp,
}

/// How one publish is carried out.
#[derive(Debug, PartialEq)]
enum Publish {
    /// A new event with this name.
    Create { name: String },
    /// The series of the event `name` now counts `count`.
    Repeat { name: String, count: i32 },
}

/// An object reference's identity: API version, kind, namespace, name and uid.
fn identity(reference: &ObjectReference) -> Box<str> {
    [
        reference.api_version.as_deref(),
        reference.kind.as_deref(),
        reference.namespace.as_deref(),
        reference.name.as_deref(),
        reference.uid.as_deref(),
    ]
    .map(Option::unwrap_or_default)
    .join("/")
    .into_boxed_str()
}

impl Series {
    /// How to publish `key` at `now`: on the series of the same event published within
    /// [`SERIES_TTL`], else as a new event named after `regarding` (or the controller) and the
    /// time. Forgets what has expired.
    fn plan(&mut self, key: &Key, object: &str, now: Timestamp) -> Publish {
        self.events
            .retain(|_, published| published.last + SERIES_TTL > now);
        if self.events.capacity() > 2 * self.events.len() + 64 {
            self.events.shrink_to_fit();
        }
        match self.events.get(key) {
            Some(published) => Publish::Repeat {
                name: published.name.to_string(),
                count: published.count.saturating_add(1),
            },
            None => Publish::Create {
                name: format!("{object}.{:x}", now.as_nanosecond()),
            },
        }
    }

    /// Remembers the event published for `key` at `now`, within [`MAX_SERIES`].
    fn published(&mut self, key: Key, publish: Publish, now: Timestamp) {
        let (name, count) = match publish {
            Publish::Create { name } => (name, 1),
            Publish::Repeat { name, count } => (name, count),
        };
        if !self.events.contains_key(&key) && self.events.len() >= MAX_SERIES {
            let oldest = self
                .events
                .iter()
                .min_by_key(|(_, p)| p.last)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.events.remove(&oldest);
            }
        }
        self.events.insert(
            key,
            Published {
                name: name.into_boxed_str(),
                count,
                last: now,
            },
        );
    }
}

/// An event to publish: type, reason and a note for people.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    /// Normal or Warning.
    pub warning: bool,
    /// PascalCase reason.
    pub reason: &'static str,
    /// Human-readable message; truncated to 1 KiB.
    pub message: String,
    /// A second object the event is about (`related`): events that differ only in it are not
    /// folded into one series.
    pub related: Option<ObjectReference>,
}

impl Note {
    /// A Normal event.
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason,
            message: message.into(),
            related: None,
        }
    }

    /// A Warning event.
    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason,
            message: message.into(),
            related: None,
        }
    }

    /// The same event, also about `related`.
    #[must_use]
    pub fn about(mut self, related: ObjectReference) -> Self {
        self.related = Some(related);
        self
    }
}

impl Events {
    /// Events reported as `component` (the v0.6 source component), from `instance`.
    pub fn new(client: Client, component: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: component.to_owned(),
            instance,
            series: Arc::default(),
        }
    }

    /// Publishes `note` about `object`.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, object: &K, note: &Note) {
        self.publish_to(&object.object_ref(&()), note).await;
    }

    /// Publishes `note` about the object `reference` points at. A failure, or no answer within
    /// [`API_TIMEOUT`], is logged, never fatal.
    pub async fn publish_to(&self, reference: &ObjectReference, note: &Note) {
        let object = format!(
            "{}/{}",
            reference.namespace.as_deref().unwrap_or_default(),
            reference.name.as_deref().unwrap_or_default()
        );
        match tokio::time::timeout(API_TIMEOUT, self.send(reference, note, Timestamp::now())).await
        {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, reason = note.reason, %object, "publishing an event failed");
            }
            Err(_) => {
                tracing::warn!(reason = note.reason, %object, "publishing an event timed out");
            }
        }
    }

    /// Creates the event, or counts it on the series of the same event published recently.
    async fn send(
        &self,
        reference: &ObjectReference,
        note: &Note,
        now: Timestamp,
    ) -> Result<(), kube::Error> {
        let key = Key {
            warning: note.warning,
            reason: note.reason,
            regarding: identity(reference),
            related: note.related.as_ref().map(identity),
        };
        // Cluster-scoped objects' events go to `default`.
        let namespace = reference.namespace.as_deref().unwrap_or("default");
        let object = reference.name.as_deref().unwrap_or(&self.controller);
        let publish = self
            .series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .plan(&key, object, now);
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        match &publish {
            Publish::Create { name } => {
                let event = self.event(name, reference, note, now);
                api.create(&PostParams::default(), &event).await?;
            }
            Publish::Repeat { name, count } => {
                let series = EventSeries {
                    count: *count,
                    last_observed_time: MicroTime(now),
                };
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "series": series })),
                )
                .await?;
            }
        }
        self.series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .published(key, publish, now);
        Ok(())
    }

    /// A new event `name` about `reference`.
    fn event(&self, name: &str, reference: &ObjectReference, note: &Note, now: Timestamp) -> Event {
        Event {
            action: Some(ACTION.to_owned()),
            reason: Some(note.reason.to_owned()),
            event_time: Some(MicroTime(now)),
            regarding: Some(reference.clone()),
            related: note.related.clone(),
            note: Some(crate::text::bounded(&note.message)),
            metadata: ObjectMeta {
                namespace: reference.namespace.clone(),
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(
                self.instance
                    .clone()
                    .unwrap_or_else(|| self.controller.clone()),
            ),
            type_: Some(if note.warning { "Warning" } else { "Normal" }.to_owned()),
            ..Event::default()
        }
    }
}

/// `err` and each of its sources, once each, joined by `: `, then bounded, printable and
/// redacted ([`crate::text::bounded`]).
pub fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        // An error that prints its source itself would repeat it; print each text once.
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    crate::text::bounded(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fixtures::{Verifier, mock_client};
    use http::Method;

    fn upgrader(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("example.com/v1".into()),
            kind: Some("Upgrader".into()),
            namespace: Some("team".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    /// Publishes `note` about `reference` at `now` while the verifier answers its one call;
    /// returns the call's method, path and body.
    async fn publish(
        events: &Events,
        verifier: &mut Verifier,
        reference: &ObjectReference,
        note: &Note,
        now: Timestamp,
    ) -> (Method, String, serde_json::Value) {
        let (sent, seen) = tokio::join!(events.send(reference, note, now), async {
            let call = verifier.next().await;
            let seen = (call.method.clone(), call.uri.clone(), call.body.clone());
            let reply = seen.2.clone();
            call.reply(if seen.0 == Method::POST { 201 } else { 200 }, &reply);
            seen
        });
        sent.unwrap();
        seen
    }

    #[tokio::test]
    async fn a_repeat_within_six_minutes_counts_on_the_first_events_series() {
        let (client, mut verifier) = mock_client();
        let events = Events::new(client, "upgrader", Some("pod-1".into()));
        let note = Note::normal("UpgradeStarted", "stepping to v1.31.2");
        let (method, uri, body) =
            publish(&events, &mut verifier, &upgrader("u"), &note, at(0)).await;
        assert_eq!(method, Method::POST);
        assert!(
            uri.starts_with("/apis/events.k8s.io/v1/namespaces/team/events?"),
            "{uri}"
        );
        let name = body["metadata"]["name"].as_str().unwrap().to_owned();
        assert!(name.starts_with("u."), "{name}");
        assert_eq!(body["reason"], "UpgradeStarted");
        assert_eq!(body["type"], "Normal");
        assert_eq!(body["action"], "Reconcile");
        assert_eq!(body["note"], "stepping to v1.31.2");
        assert_eq!(body["reportingController"], "upgrader");
        assert_eq!(body["reportingInstance"], "pod-1");
        assert_eq!(body["regarding"]["uid"], "uid-u");
        assert!(body.get("series").is_none(), "{body}");
        // The same event again, with another note: counted on the first one's series.
        let again = Note::normal("UpgradeStarted", "another note");
        for (count, seconds) in [(2, 60), (3, 400)] {
            let (method, uri, body) =
                publish(&events, &mut verifier, &upgrader("u"), &again, at(seconds)).await;
            assert_eq!(method, Method::PATCH);
            assert!(
                uri.starts_with(&format!(
                    "/apis/events.k8s.io/v1/namespaces/team/events/{name}?"
                )),
                "{uri}"
            );
            assert_eq!(
                body,
                json!({"series": {"count": count, "lastObservedTime": MicroTime(at(seconds))}})
            );
        }
        // Another type, another object or another related object is another event.
        let warning = Note::warning("UpgradeStarted", "x");
        let related = note.clone().about(upgrader("host"));
        for (reference, note) in [
            (upgrader("u"), &warning),
            (upgrader("v"), &note),
            (upgrader("u"), &related),
        ] {
            let (method, ..) = publish(&events, &mut verifier, &reference, note, at(401)).await;
            assert_eq!(method, Method::POST);
        }
        // More than six minutes after the last repeat: a new event.
        let (method, ..) =
            publish(&events, &mut verifier, &upgrader("u"), &note, at(400 + 361)).await;
        assert_eq!(method, Method::POST);
    }

    #[tokio::test]
    async fn a_failed_create_is_not_remembered() {
        let (client, mut verifier) = mock_client();
        let events = Events::new(client, "upgrader", None);
        let note = Note::warning("WriteStatus", "failed");
        let reference = upgrader("u");
        let (sent, ()) = tokio::join!(events.send(&reference, &note, at(0)), async {
            verifier.next().await.fail(500, "InternalError");
        });
        assert!(sent.is_err());
        let (method, _, body) = publish(&events, &mut verifier, &upgrader("u"), &note, at(1)).await;
        assert_eq!(method, Method::POST);
        assert_eq!(body["reportingInstance"], "upgrader");
    }

    #[test]
    fn what_a_publisher_remembers_is_bounded_and_expires() {
        let mut series = Series::default();
        let key = |i: usize| Key {
            warning: false,
            reason: "Stepped",
            regarding: format!("u-{i}").into_boxed_str(),
            related: None,
        };
        let fleet = MAX_SERIES + 100;
        for i in 0..fleet {
            let now = at(i64::try_from(i).unwrap() / 10);
            let publish = series.plan(&key(i), "u", now);
            assert!(matches!(publish, Publish::Create { .. }));
            series.published(key(i), publish, now);
            assert!(series.events.len() <= MAX_SERIES);
        }
        assert_eq!(series.events.len(), MAX_SERIES);
        // The least recently published went first; the newest are still counted on.
        assert!(!series.events.contains_key(&key(0)));
        assert!(matches!(
            series.plan(&key(fleet - 1), "u", at(200)),
            Publish::Repeat { count: 2, .. }
        ));
        // Six minutes after the last, nothing is left, and the map gave its memory back.
        assert!(matches!(
            series.plan(&key(fleet - 1), "u", at(200 + 360)),
            Publish::Create { .. }
        ));
        assert!(series.events.is_empty());
        assert!(
            series.events.capacity() <= 64,
            "{}",
            series.events.capacity()
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("writing status")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_cause_chain_prints_each_cause_once_within_a_kib() {
        let err = Outer(std::io::Error::other("connection reset"));
        assert_eq!(cause_chain(&err), "writing status: connection reset");
        let long = Outer(std::io::Error::other("é".repeat(2000)));
        let chain = cause_chain(&long);
        assert!(chain.len() <= MAX_NOTE_BYTES && chain.len() > MAX_NOTE_BYTES - 8);
        assert!(chain.starts_with("writing status: é") && chain.ends_with('…'));
        let secret = Outer(std::io::Error::other(
            "GET https://user:pw@mirror/x\nfailed",
        ));
        assert_eq!(
            cause_chain(&secret),
            "writing status: GET https://redacted@mirror/x failed"
        );
    }
}
