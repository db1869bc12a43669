//! The voice-operator data-plane worker.
//!
//! Today the worker is its control plane: a slot ledger ([`capacity`]) behind the
//! `WorkerControl` gRPC service ([`control`]), session events, health, metrics and a
//! draining shutdown. The media side (WebRTC/WebSocket transports and the voice
//! pipeline) is not built yet.

pub mod capacity;
pub mod config;
pub mod control;
pub mod drain;
pub mod error;
pub mod events;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod sessions;

pub use config::Config;
pub use error::Error;
pub use lifecycle::run;
