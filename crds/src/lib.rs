//! The Kubernetes API of voice-operator: group `voicebackends.dev`, version `v1alpha1`,
//! category `voice`.
//!
//! Three resources carry the seed data model (see `docs/api.md` for the entity map):
//! - [`VoiceProvider`] (cluster-scoped, `vp`): a registered backend provider with its
//!   capabilities, session cap, worker image and provider-config schema.
//! - [`VoiceBackend`] (namespaced, `vb`): a voice pipeline served by worker pods.
//! - [`VoiceSession`] (namespaced, `vs`): one conversation, admitted onto a worker.
//!
//! Every rule that can be checked on one object is part of the schema (OpenAPI types, enums,
//! bounds and CEL `x-kubernetes-validations`), so the API server rejects a bad object at
//! `kubectl apply` time with a message naming the field. Rules that need other objects are
//! checked by the operator and reported in status conditions.

// kube's `printcolumn(...)` repeats `type_ = …` per column, which this lint mistakes for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod agent;
pub mod audio;
pub mod backend;
pub mod client_auth;
pub mod conditions;
pub mod manifests;
pub mod pipeline;
pub mod provider;
pub mod session;
pub mod states;

pub use agent::*;
pub use audio::*;
pub use backend::*;
pub use client_auth::*;
pub use pipeline::*;
pub use provider::*;
pub use session::*;
pub use states::*;

/// API group of every voice-operator resource.
pub const GROUP: &str = "voicebackends.dev";
/// API version served and stored.
pub const VERSION: &str = "v1alpha1";
/// `kubectl get voice` lists all three kinds.
pub const CATEGORY: &str = "voice";
/// Prefix of labels and annotations the operator sets.
pub const LABEL_PREFIX: &str = "voicebackends.dev";
