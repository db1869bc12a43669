//! Shared helpers for the integration tests: a cluster per test run, a namespace per test.
