//! Events for people: one [`Events`] publisher per controller, Normal events on transitions,
//! one Warning per failed reconcile (through [`super::Reporter`]). Notes are cut to 1 KiB.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use super::status::API_TIMEOUT;

/// Longest event note, and longest cause chain reported.
pub const MAX_NOTE_BYTES: usize = crate::text::MAX_MESSAGE_BYTES;

/// Publishes events for one controller. Publishing failures are logged, never fatal.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
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
        let reporter = Reporter {
            controller: component.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes `note` about `object`.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, object: &K, note: &Note) {
        self.publish_to(&object.object_ref(&()), note).await;
    }

    /// Publishes `note` about the object `reference` points at. A failure, or no answer within
    /// [`API_TIMEOUT`], is logged, never fatal.
    pub async fn publish_to(&self, reference: &ObjectReference, note: &Note) {
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.to_owned(),
            note: Some(crate::text::bounded(&note.message)),
            action: "Reconcile".to_owned(),
            secondary: note.related.clone(),
        };
        let object = format!(
            "{}/{}",
            reference.namespace.as_deref().unwrap_or_default(),
            reference.name.as_deref().unwrap_or_default()
        );
        match tokio::time::timeout(API_TIMEOUT, self.recorder.publish(&event, reference)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, reason = note.reason, %object, "publishing an event failed");
            }
            Err(_) => {
                tracing::warn!(reason = note.reason, %object, "publishing an event timed out");
            }
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
