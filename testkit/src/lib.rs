//! Test support for kubernetes-upgrader, kept out of the product binary (`publish = false`):
//!
//! - [`debian`]: generated OpenPGP keys, signed Debian repositories in both layouts, and a
//!   loopback HTTP server with fault injection;
//! - [`fake_api`]: a fake API server on loopback, enough to run the manager without a cluster;
//! - [`http`]: the one raw HTTP GET for probes and metrics;
//! - [`free_port`], [`peak_rss_kib`] and [`rss_kib`] for processes started by tests and benches.

pub mod debian;
pub mod fake_api;
pub mod http;

/// A free loopback port.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Peak resident set size of process `pid`, in KiB (`VmHWM` in `/proc/PID/status`).
pub fn peak_rss_kib(pid: u32) -> std::io::Result<u64> {
    status_kib(pid, "VmHWM")
}

/// Current resident set size of process `pid`, in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    status_kib(pid, "VmRSS")
}

fn status_kib(pid: u32, field: &str) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no {field} in /proc/{pid}/status")))
}
