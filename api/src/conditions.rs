//! Status conditions in the metav1.Condition convention: one entry per `type`, and
//! `lastTransitionTime` moves only when `status` flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `status` of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

impl Status {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

/// A condition as a controller decides it, before timestamps are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type, such as `Ready`.
    pub type_: &'static str,
    /// Whether it holds.
    pub status: Status,
    /// PascalCase reason.
    pub reason: String,
    /// Message for people.
    pub message: String,
}

impl Desired {
    /// A condition of `type_` with `status`, `reason` and `message`.
    pub fn new(
        type_: &'static str,
        status: impl Into<Status>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Merges `desired` into `current`, keeping `lastTransitionTime` unless the status flips and
/// leaving other types untouched. The result is sorted by type so that equal inputs give equal
/// outputs.
pub fn merge(
    current: &[Condition],
    desired: &[Desired],
    observed_generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    for d in desired {
        let previous = current.iter().find(|c| c.type_ == d.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == d.status.as_str() => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: d.type_.to_owned(),
            status: d.status.as_str().to_owned(),
            reason: d.reason.clone(),
            message: d.message.clone(),
            observed_generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let first = merge(
            &[],
            &[Desired::new("Ready", true, "Ok", "fine")],
            Some(1),
            &at(10),
        );
        assert_eq!(first[0].last_transition_time, at(10));
        let same = merge(
            &first,
            &[Desired::new("Ready", true, "Ok", "still fine")],
            Some(2),
            &at(20),
        );
        assert_eq!(same[0].last_transition_time, at(10));
        assert_eq!(same[0].message, "still fine");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(
            &same,
            &[Desired::new("Ready", false, "Broken", "no")],
            Some(2),
            &at(30),
        );
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert!(!is_true(&flipped, "Ready"));
    }

    #[test]
    fn other_types_survive_and_order_is_stable() {
        let a = merge(
            &[],
            &[Desired::new("Verified", false, "NoSignedBy", "x")],
            None,
            &at(1),
        );
        let b = merge(
            &a,
            &[Desired::new("Ready", true, "Synced", "y")],
            None,
            &at(2),
        );
        let types: Vec<_> = b.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Verified"]);
        assert!(is_true(&b, "Ready"));
        assert!(find(&b, "Paused").is_none());
    }
}
