//! The voice-operator controllers.
