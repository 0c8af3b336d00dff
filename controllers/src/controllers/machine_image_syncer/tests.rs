//! Choreography tests.
