//! The voice pipeline of a session (DESIGN.md §5; the seed's STT/TTS flow steps 1–11 and
//! S2S flow steps 1–7).
//!
//! `decode → [noise suppression, custom processors, VAD, turn detection in processingOrder]
//! → STT → agent → TTS → encode`, or `decode → S2S → encode`. The transports own codecs and
//! clocks and drive a pipeline through [`crate::media::echo::SpeechToSpeech`]: `push` a
//! received frame, `pull` the next frame to send, drain `next_event` for the client.
//!
//! - [`state`]: PipelineState machine; [`turn_detector`]: TurnDetectionState; [`vad`].
//! - [`processors`]: custom processors and noise suppression; [`sentences`]: streaming text.
//! - [`session`]: the per-session STT→agent→TTS core; [`turn`]: one turn's async work.
//! - [`providers`]: one trait per stage, one module per implementation.
//! - [`build`]: from the operator's JSON to a running pipeline; [`metadata`]: what the
//!   application tells the agent, live.

pub mod audio;
pub mod build;
pub mod denoise;
pub mod metadata;
pub mod metrics;
pub mod processors;
pub mod providers;
pub mod room;
pub mod semantic_turn;
pub mod sentences;
pub mod session;
pub mod spec;
pub mod state;
pub mod turn;
pub mod turn_detector;
pub mod vad;
pub mod wiring;

pub use build::{BuildError, build};
pub use metrics::PipelineMetrics;
pub use session::{EventSink, SessionPipeline};
pub use spec::PipelineSpec;
