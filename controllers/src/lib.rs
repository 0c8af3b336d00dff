//! The kubernetes-upgrader controllers, the runtime they share and the manager that runs them.

pub mod cli;
pub mod controllers;
pub mod crdgen;
pub mod debian;
pub mod describe;
pub mod envtest;
pub mod extension;
pub mod manager;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod text;
