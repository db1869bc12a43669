//! The worker contract: gRPC API between the operator, the workers and external agent services.
//!
//! The `.proto` files beside this crate are the source of truth and carry the
//! documentation of every message; this crate exposes the generated code, the join
//! tokens ([`token`]) the operator mints and the workers verify, the typed session
//! configuration ([`session_config`]), the control channel's certificates ([`control_tls`])
//! and the leader epoch that fences replaced operators ([`leader_epoch`]) and the LiveKit access
//! tokens of sessions served in LiveKit rooms ([`livekit_token`]).

pub mod control_tls;
pub mod leader_epoch;
pub mod livekit_token;
pub mod session_audio;
pub mod session_config;
pub mod token;

/// `voice.worker.*`: how the operator controls a worker pod.
pub mod worker {
    /// Version 1 of the worker control API (`voice.worker.v1`).
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("voice.worker.v1");
    }
}

/// `voice.agent.*`: the agent service users implement in any language.
pub mod agent {
    /// Version 1 of the agent API (`voice.agent.v1`).
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("voice.agent.v1");
    }
}

#[cfg(test)]
mod tests {
    use super::worker::v1::{
        ReserveResult, ReserveSessionResponse, SessionEvent, worker_control_server,
    };

    #[test]
    fn unset_enums_read_as_unspecified_so_old_peers_are_never_misread() {
        assert_eq!(
            ReserveSessionResponse::default().result(),
            ReserveResult::Unspecified
        );
        assert!(SessionEvent::default().event.is_none());
    }

    #[test]
    fn the_service_keeps_its_wire_name() {
        assert_eq!(
            worker_control_server::SERVICE_NAME,
            "voice.worker.v1.WorkerControl"
        );
    }
}
