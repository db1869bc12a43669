//! The venv the `livekit` provider's tests run their LiveKit users in: the official LiveKit
//! Python SDK, pinned in tests/livekit/requirements.txt, installed once into
//! `~/.cache/voice-operator/livekit-venv` from PyPI. The tests install it the same way
//! (`voice_cluster::livekit_python`) when it is missing; doing it here keeps that download out
//! of a test's time limit.

/// Installs the venv unless the same requirements are already in.
pub fn ensure() -> anyhow::Result<()> {
    voice_cluster::livekit_python().map_err(anyhow::Error::msg)?;
    Ok(())
}
