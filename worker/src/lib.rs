//! The voice-operator data-plane worker.
