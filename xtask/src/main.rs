//! `cargo xtask …`: developer tasks for voice-operator.
fn main() {}
