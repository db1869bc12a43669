//! The voice-operator controllers.

pub mod admission;
pub mod ledger;
pub mod placement;
