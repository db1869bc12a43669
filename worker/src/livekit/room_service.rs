//! The one room-service call the worker makes: `DeleteRoom`, which disconnects everyone in a
//! session's own room when the session ends (LiveKit's Twirp API, JSON over HTTP).

use std::time::Duration;

use voice_proto::livekit_token::ApiKey;

/// How long the worker waits for the server to delete a room.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How long the admin token of one call is valid.
const TOKEN_TTL: Duration = Duration::from_secs(60);

/// Deletes `room` on the server at `url`; a room that no longer exists counts as deleted.
pub async fn delete_room(url: &str, key: &ApiKey, room: &str) -> Result<(), String> {
    let endpoint = format!(
        "{}/twirp/livekit.RoomService/DeleteRoom",
        super::signal::http_base(url).map_err(|e| e.to_string())?
    );
    let token = key
        .admin_token(room, TOKEN_TTL)
        .map_err(|e| e.to_string())?;
    let response = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?
        .post(&endpoint)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::json!({ "room": room }).to_string())
        .send()
        .await
        .map_err(|e| format!("POST {endpoint}: {e}"))?;
    let status = response.status();
    if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(format!(
        "POST {endpoint}: HTTP {status}: {}",
        body.chars().take(300).collect::<String>()
    ))
}
