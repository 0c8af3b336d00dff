//! Durations in Go's `time.ParseDuration` form (`90s`, `5m`, `1h30m`), as Kubernetes writes them.

use std::time::Duration;

/// RE2 pattern for an unsigned Go duration.
pub const GO_DURATION_PATTERN: &str = "^(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|ms|s|m|h))+$";

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
    let malformed = || DurationError::Malformed(text.to_owned());
    let (negative, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if body == "0" {
        return Ok(None);
    }
    if body.is_empty() {
        return Err(malformed());
    }
    let mut total = 0f64;
    let mut rest = body;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(malformed)?;
        let (number, tail) = rest.split_at(number_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(malformed());
        }
        let value: f64 = number.parse().map_err(|_| malformed())?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(malformed()),
        };
        total += value * seconds;
        rest = next;
    }
    let duration = Duration::try_from_secs_f64(total).map_err(|_| malformed())?;
    Ok((!negative && !duration.is_zero()).then_some(duration))
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
        assert!(matches!(
            parse_positive("0s"),
            Err(DurationError::NotPositive(_))
        ));
        assert_eq!(parse_positive("1h0m0s"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_positive("500ms"), Ok(Duration::from_millis(500)));
        for bad in [
            "",
            "5",
            "five minutes",
            "1d",
            "true",
            "1..5s",
            "s",
            "-",
            "1h5",
        ] {
            assert!(
                matches!(parse_signed(bad), Err(DurationError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
