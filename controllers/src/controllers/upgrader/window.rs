//! Maintenance windows: each start of a cron schedule, read in an IANA time zone, opens the window
//! for a fixed duration. A step may start at `t` only when some start `s` has `s ≤ t < s + d`.
//!
//! Daylight saving follows croner (OCPS): a fixed start time that falls in a skipped hour opens
//! at the first valid minute after the gap, the same day; in a repeated hour a fixed start opens
//! once, at its first occurrence. The duration counts real time, so a window crossing a change
//! of offset lasts exactly `duration`.

use std::time::Duration;

use api::v1alpha1::MaintenanceWindow;
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

/// A window that parsed: its schedule, zone and length.
#[derive(Clone, Debug)]
pub struct Window {
    schedule: Cron,
    zone: TimeZone,
    duration: Duration,
}

/// Why a window cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The schedule is not a cron pattern croner accepts.
    #[error("spec.maintenanceWindow.schedule {0:?} is not a cron schedule: {1}")]
    Schedule(String, String),
    /// The time zone is unknown.
    #[error("spec.maintenanceWindow.timeZone {0:?} is not a known IANA time zone")]
    TimeZone(String),
    /// The duration does not parse or is not positive.
    #[error("spec.maintenanceWindow.duration: {0}")]
    Duration(String),
}

/// Whether a step may start now, and if not, when it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// Open now; it closes at the given time.
    Open {
        /// When the current window closes.
        closes: Timestamp,
    },
    /// Closed; the next window opens at the given time, if the schedule ever fires again.
    Closed {
        /// The next opening.
        opens: Option<Timestamp>,
    },
}

impl Window {
    /// Parses `spec.maintenanceWindow`.
    pub fn parse(spec: &MaintenanceWindow) -> Result<Self, WindowError> {
        let schedule: Cron = spec
            .schedule
            .parse()
            .map_err(|e: croner::errors::CronError| {
                WindowError::Schedule(spec.schedule.clone(), e.to_string())
            })?;
        let zone_name = spec.time_zone.as_deref().unwrap_or("UTC");
        let zone = TimeZone::get(zone_name).map_err(|_| WindowError::TimeZone(zone_name.into()))?;
        let duration = api::durations::parse_positive(&spec.duration)
            .map_err(|e| WindowError::Duration(e.to_string()))?;
        Ok(Self {
            schedule,
            zone,
            duration,
        })
    }

    /// Whether the window is open at `now`.
    pub fn at(&self, now: Timestamp) -> Opening {
        let here = now.to_zoned(self.zone.clone());
        let length = SignedDuration::try_from(self.duration).unwrap_or(SignedDuration::MAX);
        // The latest start at or before now is enough: an earlier start closes no later.
        if let Ok(start) = self.schedule.find_previous_occurrence(&here, true)
            && let Ok(closes) = start.timestamp().checked_add(length)
            && now < closes
        {
            return Opening::Open { closes };
        }
        let opens = self
            .schedule
            .find_next_occurrence(&here, false)
            .ok()
            .map(|z: Zoned| z.timestamp());
        Opening::Closed { opens }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(schedule: &str, duration: &str, zone: Option<&str>) -> Window {
        Window::parse(&MaintenanceWindow {
            schedule: schedule.into(),
            duration: duration.into(),
            time_zone: zone.map(Into::into),
        })
        .unwrap()
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn open_from_the_start_until_the_duration_ends() {
        // Saturdays 02:00 UTC for 4 hours; 2026-11-28 is a Saturday.
        let w = window("0 2 * * SAT", "4h", None);
        assert_eq!(
            w.at(ts("2026-11-28T02:00:00Z")),
            Opening::Open {
                closes: ts("2026-11-28T06:00:00Z")
            }
        );
        assert!(matches!(
            w.at(ts("2026-11-28T05:59:59Z")),
            Opening::Open { .. }
        ));
        assert_eq!(
            w.at(ts("2026-11-28T06:00:00Z")),
            Opening::Closed {
                opens: Some(ts("2026-12-05T02:00:00Z"))
            }
        );
        assert_eq!(
            w.at(ts("2026-11-28T01:59:59Z")),
            Opening::Closed {
                opens: Some(ts("2026-11-28T02:00:00Z"))
            }
        );
    }

    #[test]
    fn the_schedule_is_read_in_its_time_zone() {
        // 02:00 in Berlin (UTC+1 in winter) is 01:00 UTC.
        let w = window("0 2 * * *", "1h", Some("Europe/Berlin"));
        assert!(matches!(
            w.at(ts("2026-11-28T01:30:00Z")),
            Opening::Open { .. }
        ));
        assert!(matches!(
            w.at(ts("2026-11-28T02:30:00Z")),
            Opening::Closed { .. }
        ));
    }

    #[test]
    fn a_start_in_a_skipped_hour_opens_after_the_gap_and_a_repeated_hour_opens_once() {
        // Berlin skips 02:00-03:00 on 2026-03-29: the 02:30 start opens at 03:00 CEST (01:00Z).
        let w = window("30 2 * * *", "1h", Some("Europe/Berlin"));
        assert_eq!(
            w.at(ts("2026-03-29T00:59:00Z")),
            Opening::Closed {
                opens: Some(ts("2026-03-29T01:00:00Z"))
            }
        );
        // Berlin repeats 02:00-03:00 on 2026-10-25: the 02:30 start opens at the first one
        // (00:30Z) only, so the window closes at 01:30Z and the second 02:30 (01:30Z) is closed.
        assert_eq!(
            w.at(ts("2026-10-25T01:00:00Z")),
            Opening::Open {
                closes: ts("2026-10-25T01:30:00Z")
            }
        );
        assert!(matches!(
            w.at(ts("2026-10-25T01:45:00Z")),
            Opening::Closed { .. }
        ));
    }

    #[test]
    fn bad_windows_name_the_field() {
        let bad = |s: &str, d: &str, z: Option<&str>| {
            Window::parse(&MaintenanceWindow {
                schedule: s.into(),
                duration: d.into(),
                time_zone: z.map(Into::into),
            })
            .unwrap_err()
            .to_string()
        };
        assert!(bad("61 * * * *", "1h", None).starts_with("spec.maintenanceWindow.schedule"));
        assert!(bad("0 2 * * *", "1h", Some("Mars/Olympus")).contains("timeZone"));
        assert!(bad("0 2 * * *", "0s", None).contains("duration"));
    }
}
