//! Pieces every controller shares: status writes by server-side apply, events, backoff and
//! jitter.

use std::fmt::Debug;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Writes `status` through the status subresource by a forced server-side apply under
/// `field_manager`, carrying only `apiVersion`, `kind` and the status we own.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    field_manager: &str,
    status: &S,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&body),
    )
    .await
}

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub warning: bool,
    /// PascalCase reason.
    pub reason: &'static str,
    /// Human-readable message; truncated to 1 KiB.
    pub message: String,
}

impl Note {
    /// A Normal event.
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason,
            message: message.into(),
        }
    }

    /// A Warning event.
    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason,
            message: message.into(),
        }
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
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.to_owned(),
            note: Some(truncate(&note.message, 1024)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %err, reason = note.reason, object = %object_name(object), "publishing an event failed");
        }
    }
}

fn object_name<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Exponential backoff after `failures` consecutive failures: `base`, doubling, capped at `cap`.
pub fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(cap)
}

/// `period` stretched by `fraction` (0 to 1) of up to a tenth, so that many objects spread out.
pub fn with_jitter(period: Duration, fraction: f64) -> Duration {
    period + period.mul_f64(fraction.clamp(0.0, 1.0) / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(5);
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(1, base, cap), Duration::from_secs(5));
        assert_eq!(backoff(2, base, cap), Duration::from_secs(10));
        assert_eq!(backoff(4, base, cap), Duration::from_secs(40));
        assert_eq!(backoff(50, base, cap), cap);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("short", 1024), "short");
    }

    proptest! {
        #[test]
        fn jitter_stays_within_a_tenth(secs in 1u64..100_000, fraction in 0.0f64..=1.0) {
            let period = Duration::from_secs(secs);
            let jittered = with_jitter(period, fraction);
            prop_assert!(jittered >= period);
            prop_assert!(jittered <= period + period / 10 + Duration::from_nanos(1));
        }

        #[test]
        fn backoff_is_monotonic_and_bounded(failures in 0u32..100) {
            let base = Duration::from_secs(1);
            let cap = Duration::from_secs(600);
            prop_assert!(backoff(failures, base, cap) <= cap);
            prop_assert!(backoff(failures, base, cap) <= backoff(failures + 1, base, cap));
        }
    }
}
