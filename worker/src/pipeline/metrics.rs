//! The pipeline's metrics: per-stage latency of every turn, turn latency, drops and
//! provider errors. Registered in the worker's one registry (see `crate::metrics`).

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

/// Buckets from 10 ms to 10 s: voice turns live in the hundreds of milliseconds.
const BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

/// Pipeline metrics, cheap to clone.
#[derive(Clone, Debug)]
pub struct PipelineMetrics {
    stage: HistogramVec,
    turn: Histogram,
    dropped: IntCounterVec,
    errors: IntCounterVec,
    barge_ins: IntCounter,
    turns: IntCounterVec,
}

/// The stages of a turn, each timed from the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// VAD's end of speech → the turn detector ends the turn (the silence timeout).
    TurnDetect,
    /// End of turn → STT's final transcript.
    Stt,
    /// Final transcript → the agent's first token.
    AgentFirstToken,
    /// First token → TTS's first audio.
    TtsFirstAudio,
    /// TTS's first audio → first reply frame sent to the client.
    FirstPacket,
}

impl Stage {
    /// The `stage` label.
    pub fn label(self) -> &'static str {
        match self {
            Stage::TurnDetect => "turn_detect",
            Stage::Stt => "stt",
            Stage::AgentFirstToken => "agent_first_token",
            Stage::TtsFirstAudio => "tts_first_audio",
            Stage::FirstPacket => "first_packet",
        }
    }
}

impl PipelineMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let stage = HistogramVec::new(
            HistogramOpts::new(
                "voice_pipeline_stage_duration_seconds",
                "Time each pipeline stage adds to a turn, from the end of the previous stage.",
            )
            .buckets(BUCKETS.to_vec()),
            &["stage"],
        )?;
        let turn = Histogram::with_opts(
            HistogramOpts::new(
                "voice_turn_latency_seconds",
                "End of user speech (VAD) to the first reply frame sent.",
            )
            .buckets(BUCKETS.to_vec()),
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "voice_pipeline_dropped_total",
                "Frames or events the pipeline dropped because a bounded queue was full.",
            ),
            &["reason"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "voice_pipeline_provider_errors_total",
                "Provider failures that put a session into Error.",
            ),
            &["provider", "reason"],
        )?;
        let barge_ins = IntCounter::new(
            "voice_pipeline_barge_ins_total",
            "Replies cut off because the user spoke over them.",
        )?;
        let turns = IntCounterVec::new(
            Opts::new("voice_pipeline_turns_total", "User turns by outcome."),
            &["outcome"],
        )?;
        registry.register(Box::new(stage.clone()))?;
        registry.register(Box::new(turn.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(barge_ins.clone()))?;
        registry.register(Box::new(turns.clone()))?;
        Ok(Self {
            stage,
            turn,
            dropped,
            errors,
            barge_ins,
            turns,
        })
    }

    /// Metrics in a registry nobody scrapes (unit tests, benches).
    pub fn unregistered() -> Self {
        match Self::register(&Registry::new()) {
            Ok(m) => m,
            // Registering into a fresh registry only fails on a bad metric definition,
            // which the unit tests exercise.
            Err(e) => panic!("pipeline metric definitions are invalid: {e}"),
        }
    }

    /// Records one stage of a turn.
    pub fn observe_stage(&self, stage: Stage, took: Duration) {
        self.stage
            .with_label_values(&[stage.label()])
            .observe(took.as_secs_f64());
    }

    /// Records a whole turn's latency.
    pub fn observe_turn(&self, took: Duration) {
        self.turn.observe(took.as_secs_f64());
    }

    /// Counts a drop.
    pub fn count_dropped(&self, reason: &str) {
        self.dropped.with_label_values(&[reason]).inc();
    }

    /// Counts a provider error.
    pub fn count_error(&self, provider: &str, reason: &str) {
        self.errors.with_label_values(&[provider, reason]).inc();
    }

    /// Counts a barge-in.
    pub fn count_barge_in(&self) {
        self.barge_ins.inc();
    }

    /// Counts a turn by outcome (`replied`, `empty`, `failed`, `interrupted`, `discarded`).
    pub fn count_turn(&self, outcome: &str) {
        self.turns.with_label_values(&[outcome]).inc();
    }
}
