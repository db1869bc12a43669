//! The media transports: WebRTC (one UDP port for all peers through [`udp_mux`], and
//! optionally one TCP port through [`tcp_mux`]) and WebSocket PCM.

pub mod candidate_policy;
pub mod mux_runtime;
pub mod peer;
pub mod peers;
pub mod rtcp_reports;
pub mod rtp_media;
pub mod sdp;
pub mod tcp_mux;
pub mod tcp_stream;
pub mod trickle;
pub mod twilio_media;
pub mod twilio_quality;
pub mod twilio_stream;
pub mod udp_mux;
pub mod websocket;
pub mod ws_rules;
