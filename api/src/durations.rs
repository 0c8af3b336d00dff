//! Durations in Go's `time.ParseDuration` form (`90s`, `5m`, `1h30m`), as Kubernetes writes them.

use std::str::FromStr;
use std::time::Duration;

/// RE2 pattern for an unsigned Go duration.
pub const GO_DURATION_PATTERN: &str = "^(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|ms|s|m|h))+$";

/// RE2 pattern for a signed Go duration, including a bare `0`.
pub const SIGNED_GO_DURATION_PATTERN: &str =
    "^[-+]?((([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|ms|s|m|h))+|0)$";

/// Why a duration is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not in Go's duration form.
    #[error("{0:?} is not a duration such as 90s, 5m or 1h30m")]
    Malformed(String),
    /// Zero or negative where a positive duration is needed.
    #[error("{0:?} must be positive")]
    NotPositive(String),
}

/// CEL for a duration string of at least `min`.
pub fn at_least_rule(min: &str) -> String {
    format!("self.matches('{GO_DURATION_PATTERN}') && duration(self) >= duration('{min}')")
}

/// CEL for a duration string between `min` and `max`, inclusive.
pub fn between_rule(min: &str, max: &str) -> String {
    format!(
        "self.matches('{GO_DURATION_PATTERN}') && duration(self) >= duration('{min}') && duration(self) <= duration('{max}')"
    )
}

/// Parses a signed Go duration; `None` for zero or negative values.
pub fn parse_signed(text: &str) -> Result<Option<Duration>, DurationError> {
    let parsed = kube::core::Duration::from_str(text)
        .map_err(|_| DurationError::Malformed(text.to_owned()))?;
    let duration: Duration = parsed.into();
    Ok((!parsed.is_negative() && !duration.is_zero()).then_some(duration))
}

/// Parses a positive Go duration.
pub fn parse_positive(text: &str) -> Result<Duration, DurationError> {
    parse_signed(text)?.ok_or_else(|| DurationError::NotPositive(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        assert_eq!(parse_positive("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_positive("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_positive("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_signed("0"), Ok(None));
        assert_eq!(parse_signed("-5m"), Ok(None));
        assert!(matches!(parse_positive("0s"), Err(DurationError::NotPositive(_))));
        for bad in ["", "5", "five minutes", "1d", "true"] {
            assert!(matches!(parse_signed(bad), Err(DurationError::Malformed(_))), "{bad}");
        }
    }
}
