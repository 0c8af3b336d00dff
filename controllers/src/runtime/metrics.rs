//! One Prometheus registry for the manager. The process collector and the shared reconcile
//! families are there from the start; each controller registers its own label values (so its
//! series show at zero before the first reconcile) and its own domain series. Every label set is
//! bounded.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry, Unit};

use super::CATEGORY_WATCH;

/// Prefix of every series of ours (the process series keep their conventional names).
pub const PREFIX: &str = "kubernetes_upgrader";

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller, such as `debianrepositorysource`.
    pub controller: &'static str,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The controller.
    pub controller: &'static str,
    /// The error category.
    pub category: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

type DurationFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

/// A collector that can be replaced while the registry holds it: the series read from the
/// caches of the current leadership term.
#[derive(Clone, Debug, Default)]
struct Slot(Arc<Mutex<Option<Box<dyn Collector>>>>);

impl Collector for Slot {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Some(collector) => collector.encode(encoder),
            None => Ok(()),
        }
    }
}

/// The manager's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    state: Slot,
    runs: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: DurationFamily,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let state = Slot::default();
        registry.register_collector(Box::new(state.clone()));
        let metrics = Self {
            registry: Mutex::new(registry),
            state,
            runs: Family::default(),
            failures: Family::default(),
            duration: DurationFamily::new_with_constructor(duration_histogram),
        };
        metrics.register(
            "reconcile_runs",
            "Reconciles started, by controller",
            metrics.runs.clone(),
        );
        metrics.register(
            "reconcile_failures",
            "Reconciles that ended in an error, by controller and error category",
            metrics.failures.clone(),
        );
        metrics.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconcile, by controller",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        metrics
    }
}

impl Metrics {
    /// Registers `metric` as `kubernetes_upgrader_<name>`.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock()
            .register(format!("{PREFIX}_{name}"), help, metric);
    }

    /// Registers `metric` as `kubernetes_upgrader_<name>_<unit>`.
    pub fn register_with_unit(&self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.lock()
            .register_with_unit(format!("{PREFIX}_{name}"), help, unit, metric);
    }

    /// Replaces the collector of state series (one per leadership term; `None` when the term
    /// ends, so a follower exports none).
    pub fn set_state(&self, collector: Option<Box<dyn Collector>>) {
        *self.state.0.lock().unwrap_or_else(PoisonError::into_inner) = collector;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The series of one controller, created at zero: its runs, its duration and a failure
    /// counter per error category it declares, and for [`CATEGORY_WATCH`].
    pub fn controller(
        self: &Arc<Self>,
        controller: &'static str,
        categories: &[&'static str],
    ) -> ControllerMetrics {
        let labels = ControllerLabels { controller };
        let _ = self.runs.get_or_create(&labels);
        let _ = self.duration.get_or_create(&labels);
        for category in categories.iter().chain(&[CATEGORY_WATCH]) {
            let _ = self.failures.get_or_create(&FailureLabels {
                controller,
                category,
            });
        }
        ControllerMetrics {
            metrics: Arc::clone(self),
            controller,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.lock())?;
        Ok(out)
    }
}

/// The shared reconcile series of one controller.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    metrics: Arc<Metrics>,
    controller: &'static str,
}

impl ControllerMetrics {
    /// The registry, for the controller's own series.
    pub fn registry(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a reconcile and times it until the guard drops, so no return path is missed.
    pub fn reconcile(&self) -> ReconcileTimer {
        let labels = ControllerLabels {
            controller: self.controller,
        };
        self.metrics.runs.get_or_create(&labels).inc();
        ReconcileTimer {
            duration: self.metrics.duration.clone(),
            labels,
            start: Instant::now(),
        }
    }

    /// Counts a reconcile that ended in an error of `category`.
    pub fn failure(&self, category: &'static str) {
        self.metrics
            .failures
            .get_or_create(&FailureLabels {
                controller: self.controller,
                category,
            })
            .inc();
    }
}

/// Observes the reconcile duration when dropped.
pub struct ReconcileTimer {
    duration: DurationFamily,
    labels: ControllerLabels,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.duration
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// The usual `process_*` series, read from `/proc/self` on each scrape. Where `/proc` cannot be
/// read, the series is left out of that scrape.
#[derive(Debug, Default)]
struct ProcessCollector;

/// What one scrape read from `/proc`.
#[derive(Clone, Debug, Default, PartialEq)]
struct ProcessStats {
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

impl ProcessStats {
    fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let boot = std::fs::read_to_string("/proc/stat").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| f64::from(u32::try_from(dir.count()).unwrap_or(u32::MAX)));
        Self {
            open_fds,
            ..Self::parse(
                stat.as_deref(),
                status.as_deref(),
                boot.as_deref(),
                limits.as_deref(),
            )
        }
    }

    /// Parses `/proc/self/stat`, `/proc/self/status`, `/proc/stat` and `/proc/self/limits`.
    fn parse(
        stat: Option<&str>,
        status: Option<&str>,
        boot: Option<&str>,
        limits: Option<&str>,
    ) -> Self {
        let kib = |field: &str| {
            status?
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
                .map(|n| n * 1024.0)
        };
        // Fields after the parenthesised command name, which may itself hold spaces.
        let fields: Vec<&str> = stat
            .and_then(|s| s.rsplit_once(')'))
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // `fields[0]` is field 3 (state): utime is field 14, stime 15, starttime 22.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let cpu_seconds = field(14)
            .zip(field(15))
            .map(|(user, system)| (user + system) / CLOCK_TICKS);
        let boot_time = boot.and_then(|b| {
            b.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        let start_time_seconds = field(22)
            .zip(boot_time)
            .map(|(ticks, boot)| boot + ticks / CLOCK_TICKS);
        let max_fds = limits.and_then(|l| {
            l.lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        });
        Self {
            resident_bytes: kib("VmRSS:"),
            virtual_bytes: kib("VmSize:"),
            cpu_seconds,
            start_time_seconds,
            open_fds: None,
            max_fds,
        }
    }
}

fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: Option<f64>,
    metric: impl Fn(f64) -> Box<dyn EncodeAs>,
) -> Result<(), std::fmt::Error> {
    let Some(value) = value else { return Ok(()) };
    let boxed = metric(value);
    let metric_encoder = encoder.encode_descriptor(name, help, unit, boxed.kind())?;
    boxed.encode_as(metric_encoder)
}

/// A constant gauge or counter.
trait EncodeAs {
    fn kind(&self) -> MetricType;
    fn encode_as(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error>;
}

impl<M: EncodeMetric + TypedMetric> EncodeAs for M {
    fn kind(&self) -> MetricType {
        M::TYPE
    }

    fn encode_as(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        self.encode(encoder)
    }
}

fn gauge(value: f64) -> Box<dyn EncodeAs> {
    Box::new(ConstGauge::new(value))
}

fn counter(value: f64) -> Box<dyn EncodeAs> {
    Box::new(ConstCounter::new(value))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = ProcessStats::read();
        let bytes = Some(&Unit::Bytes);
        let seconds = Some(&Unit::Seconds);
        encode_one(
            &mut encoder,
            "process_resident_memory",
            "Resident memory size",
            bytes,
            stats.resident_bytes,
            gauge,
        )?;
        encode_one(
            &mut encoder,
            "process_virtual_memory",
            "Virtual memory size",
            bytes,
            stats.virtual_bytes,
            gauge,
        )?;
        encode_one(
            &mut encoder,
            "process_cpu",
            "User and system CPU time spent",
            seconds,
            stats.cpu_seconds,
            counter,
        )?;
        encode_one(
            &mut encoder,
            "process_start_time",
            "Start time of the process since the Unix epoch",
            seconds,
            stats.start_time_seconds,
            gauge,
        )?;
        encode_one(
            &mut encoder,
            "process_open_fds",
            "Open file descriptors",
            None,
            stats.open_fds,
            gauge,
        )?;
        encode_one(
            &mut encoder,
            "process_max_fds",
            "Limit on open file descriptors",
            None,
            stats.max_fds,
            gauge,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn every_series_shows_before_the_first_reconcile() {
        let metrics = Arc::new(Metrics::default());
        let _controller =
            metrics.controller("debianrepositorysource", &["WriteStatus", "InvalidSpec"]);
        let text = metrics.encode().unwrap();
        assert_eq!(
            value(
                &text,
                "kubernetes_upgrader_reconcile_runs_total{controller=\"debianrepositorysource\"}"
            ),
            Some(0.0),
            "{text}"
        );
        for category in ["WriteStatus", "InvalidSpec"] {
            let series = format!(
                "kubernetes_upgrader_reconcile_failures_total{{controller=\"debianrepositorysource\",category=\"{category}\"}}"
            );
            assert_eq!(value(&text, &series), Some(0.0), "{series} in {text}");
        }
        assert_eq!(
            value(
                &text,
                "kubernetes_upgrader_reconcile_duration_seconds_count{controller=\"debianrepositorysource\"}"
            ),
            Some(0.0)
        );
        let rss = value(&text, "process_resident_memory_bytes").unwrap();
        assert!(rss > 1024.0 * 1024.0, "{rss}");
        assert!(value(&text, "process_cpu_seconds_total").unwrap() > 0.0);
        assert!(value(&text, "process_open_fds").unwrap() >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value(&text, "process_start_time_seconds").unwrap();
        assert!(
            start <= now + 1.0 && start > now - 24.0 * 3600.0,
            "{start} vs {now}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn runs_failures_and_durations_count() {
        let metrics = Arc::new(Metrics::default());
        let controller = metrics.controller("test", &[]);
        drop(controller.reconcile());
        controller.failure("WriteStatus");
        let text = metrics.encode().unwrap();
        assert_eq!(
            value(
                &text,
                "kubernetes_upgrader_reconcile_runs_total{controller=\"test\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "kubernetes_upgrader_reconcile_failures_total{controller=\"test\",category=\"WriteStatus\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "kubernetes_upgrader_reconcile_duration_seconds_count{controller=\"test\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (kube upgrader) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 8 0 12345 100000000 2000 18446744073709551615";
        let status = "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\n";
        let stats = ProcessStats::parse(Some(stat), Some(status), Some(boot), Some(limits));
        assert_eq!(stats.resident_bytes, Some(1024.0 * 1024.0));
        assert_eq!(stats.virtual_bytes, Some(2048.0 * 1024.0));
        assert_eq!(stats.cpu_seconds, Some(3.0));
        assert_eq!(stats.start_time_seconds, Some(1_700_000_000.0 + 123.45));
        assert_eq!(stats.max_fds, Some(1_048_576.0));
        assert_eq!(
            ProcessStats::parse(None, None, None, None),
            ProcessStats::default()
        );
    }
}
