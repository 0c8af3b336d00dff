//! End-to-end tests of the Debian repository client against generated, signed repositories
//! served on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod freshness;
mod index;
mod layouts;
mod signatures;
mod support;
mod transport;
