//! The kubernetes-upgrader controllers and the manager that runs them.

pub mod cli;
pub mod crdgen;
pub mod debian;
pub mod debian_source;
pub mod manager;
pub mod metrics;
pub mod reconcile;
pub mod shutdown;
pub mod telemetry;
