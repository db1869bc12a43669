//! The voice-operator data-plane worker.
//!
//! The control plane is a slot ledger ([`capacity`]) behind the `WorkerControl` gRPC
//! service ([`control`]) on a mutual-TLS port ([`control_tls`]), session events, health, metrics and a draining shutdown. The
//! data plane takes clients of reserved sessions: WHIP-style WebRTC signaling and a
//! WebSocket endpoint ([`signaling`]), WebRTC over one shared UDP port
//! ([`transport::udp_mux`]) and PCM over WebSocket ([`transport::websocket`]). Each
//! session runs the voice [`pipeline`] its backend's configuration asks for — VAD, turn detection,
//! STT → agent → TTS, or speech-to-speech — or the diagnostic `echo` ([`media`]).

pub mod bot_watch;
pub mod capacity;
pub mod client_auth;
pub mod config;
pub mod connections;
pub mod control;
pub mod control_tls;
pub mod cors;
pub mod demo;
pub mod drain;
pub mod error;
pub mod events;
pub mod http;
pub mod http_tls;
pub mod ice_endpoint;
pub mod ice_servers;
pub mod leader_fence;
pub mod lifecycle;
pub mod livekit;
pub mod media;
pub mod metrics;
pub mod pipeline;
pub mod provider_config;
pub mod server;
pub mod sessions;
pub mod signaling;
pub mod signing_keys;
pub mod telemetry;
pub mod transport;

pub use config::Config;
pub use error::Error;
pub use lifecycle::run;
