//! The allocator's decisions with no I/O: what the operator's edges (watches, gRPC to
//! workers, status writes) feed in and carry out. Nothing here reads a clock or reaches the
//! API server or a worker: `tests/no_io.rs` checks the dependencies, `clippy.toml` forbids
//! clock reads, so every decision is a function of its arguments and unit-tested as one.

pub mod admission_plan;
pub mod held_fate;
pub mod ledger;
pub mod ledger_rebuild;
pub mod placement;
pub mod rate_limit;
pub mod reason;
pub mod refusal_backoff;
pub mod session_timeouts;
pub mod worker_repair;
pub mod world;
