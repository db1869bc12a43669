//! The voice-operator: controllers for VoiceProviders and VoiceBackends, the pure decision
//! modules they drive (acceptance, scaling, rollout, drain, health), the worker gRPC client,
//! leader election and metrics. `main.rs` wires them together.

pub mod admission_steps;
pub mod allocator;
pub mod backend_acceptance;
pub mod backend_children;
pub mod backend_controller;
pub mod backend_livekit;
pub mod backend_status;
pub mod config;
pub mod context;
pub mod control_ca;
pub mod controller_stop;
pub mod drain;
pub mod error;
pub mod event_source;
pub mod events;
pub mod fault_injection;
pub mod field_managers;
pub mod health;
pub mod heartbeat;
pub mod http;
pub mod leader;
pub mod leader_takeover;
pub mod live_status_writer;
pub mod livekit_credentials;
pub mod metrics;
pub mod pod_network;
pub mod pod_template;
pub mod predicates;
pub mod provider_controller;
pub mod rollout;
pub mod room_claims;
pub mod scaling;
pub mod session_audio;
pub mod session_connections;
pub mod session_counts;
pub mod session_index;
pub mod session_lifecycle;
pub mod session_livekit;
pub mod session_metadata;
pub mod session_participants;
pub mod session_tokens;
pub mod signing_keys;
pub mod status_writer;
pub mod telemetry;
pub mod turn_latency;
pub mod worker_client;
pub mod worker_pod_facts;

pub use error::{Error, Result};

// The decisions live in the core crate, with no I/O; the operator's modules name them as
// before (`crate::ledger`, `crate::admission_plan`, ...).
pub use admission_core::{
    admission_plan, held_fate, ledger, ledger_rebuild, placement, rate_limit, refusal_backoff,
    session_timeouts, worker_repair, world,
};
