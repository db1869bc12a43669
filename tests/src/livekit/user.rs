//! A LiveKit user nobody here wrote: the official Python SDK, driven by `tests/livekit/user.py`
//! from the venv `voice_cluster::livekit_python` keeps (`cargo xtask test` installs it; a test
//! finding it missing installs it too).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// What the user does; `UserArgs { tone_hz: Some(440.0), ..UserArgs::new(url, token) }`.
#[derive(Debug, Clone)]
pub struct UserArgs {
    /// The server, as [`super::LiveKitServer::url`] gives it.
    pub url: String,
    /// The user's access token (it names the room and the identity).
    pub token: String,
    /// A 16-bit mono PCM WAV to say once (then silence), as the microphone track.
    pub say: Option<PathBuf>,
    /// Silence published before `say`, in seconds: a caller who waits for the agent.
    pub lead_in_s: f64,
    /// A sine to publish instead, for the whole stay.
    pub tone_hz: Option<f64>,
    /// How long to stay; with `until_disconnected`, the longest wait.
    pub seconds: f64,
    /// Stay until the server ends our stay (room deleted, participant removed).
    pub until_disconnected: bool,
    /// The participant whose audio is listened to.
    pub agent_identity: String,
    /// Where to write what the agent said (48 kHz mono WAV).
    pub record: Option<PathBuf>,
}

impl UserArgs {
    /// Joins, publishes nothing, listens to `voice-agent` for 10 s.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> UserArgs {
        UserArgs {
            url: url.into(),
            token: token.into(),
            say: None,
            lead_in_s: 0.0,
            tone_hz: None,
            seconds: 10.0,
            until_disconnected: false,
            agent_identity: "voice-agent".to_owned(),
            record: None,
        }
    }
}

/// What the user saw (the JSON line `user.py` prints; its fields are documented there).
#[derive(Debug, Clone, PartialEq)]
pub struct UserReport {
    /// It connected to the room.
    pub joined: bool,
    /// The room's name, once joined.
    pub room: Option<String>,
    /// The agent identity was in the room.
    pub agent_joined: bool,
    /// It subscribed to an audio track of the agent.
    pub agent_track: bool,
    /// Audio received from the agent's track (10 ms frames from subscription on, silent or not).
    pub received_ms: u64,
    /// Of which frames louder than silence.
    pub audible_ms: u64,
    /// RMS of all received samples, int16 scale.
    pub received_rms: f64,
    /// From our first published frame (from joining, when publishing nothing) to the agent's
    /// first audible frame.
    pub first_audio_ms: Option<u64>,
    /// Why the server ended our stay (a `DisconnectReason` name such as `ROOM_DELETED`).
    pub disconnect_reason: Option<String>,
    /// What went wrong on the way.
    pub errors: Vec<String>,
    /// The SDK's and the script's stderr, for assertion messages.
    pub stderr: String,
}

impl UserReport {
    fn parse(line: &str, stderr: String) -> Result<UserReport, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        let text = |k: &str| v[k].as_str().map(str::to_owned);
        let count = |k: &str| v[k].as_u64();
        Ok(UserReport {
            joined: v["joined"].as_bool().ok_or("no `joined`")?,
            room: text("room"),
            agent_joined: v["agent_joined"].as_bool().unwrap_or(false),
            agent_track: v["agent_track"].as_bool().unwrap_or(false),
            received_ms: count("received_ms").unwrap_or(0),
            audible_ms: count("audible_ms").unwrap_or(0),
            received_rms: v["received_rms"].as_f64().unwrap_or(0.0),
            first_audio_ms: count("first_audio_ms"),
            disconnect_reason: text("disconnect_reason"),
            errors: v["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            stderr,
        })
    }
}

/// Runs the user to the end and returns its report; panics, with its stderr, when it cannot
/// join or prints no report.
pub async fn run_user(args: &UserArgs) -> UserReport {
    try_run_user(args).await.unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_user`], with the failure as a value (for tests that expect one).
pub async fn try_run_user(args: &UserArgs) -> Result<UserReport, String> {
    let python = voice_cluster::livekit_python()
        .map_err(|e| format!("no LiveKit venv ({e}); `cargo xtask test` installs it"))?;
    let script = voice_cluster::layout::workspace_root().join("tests/livekit/user.py");
    let mut command = tokio::process::Command::new(python);
    command
        .arg(&script)
        .args(["--url", &args.url, "--token", &args.token])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--agent-identity", &args.agent_identity])
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    if let Some(wav) = &args.say {
        command.arg("--say").arg(wav);
        command.args(["--lead-in", &args.lead_in_s.to_string()]);
    }
    if let Some(hz) = args.tone_hz {
        command.args(["--tone", &hz.to_string()]);
    }
    if args.until_disconnected {
        command.arg("--until-disconnected");
    }
    if let Some(wav) = &args.record {
        command.arg("--record").arg(wav);
    }
    let limit = Duration::from_secs_f64(args.seconds.clamp(0.0, 3600.0) + 60.0);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .map_err(|_| {
            format!(
                "the LiveKit user ({}) did not end within {limit:?}",
                script.display()
            )
        })?
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(format!(
            "the LiveKit user failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            output.status
        ));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| {
            format!("the LiveKit user printed no report:\n{stdout}\n--- stderr\n{stderr}")
        })?;
    UserReport::parse(line, stderr)
}
