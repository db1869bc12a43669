//! The LiveKit harness on its own, without our worker: a real livekit-server built from its Go
//! module, and two participants of the official LiveKit Python SDK in one room, one of them
//! joining with the agent's token. What the `livekit` provider's tests rely on is shown here
//! first: users on the host connect, hear the agent participant's audio within seconds, and
//! learn why the server ended their stay.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use voice_proto::livekit_token::{AGENT_IDENTITY, ApiKey};
use voice_tests::Watchdog;
use voice_tests::livekit::{LiveKitServer, UserArgs, UserReport, run_user};

const TTL: Duration = Duration::from_secs(600);

fn key(server: &LiveKitServer) -> ApiKey {
    ApiKey {
        key: server.api_key().to_owned(),
        secret: server.api_secret().to_owned(),
    }
}

fn assert_heard(report: &UserReport, whom: &str, server: &LiveKitServer) {
    let context = || {
        format!(
            "{report:#?}\n--- livekit-server log: {}",
            server.log_path().display()
        )
    };
    assert!(report.joined, "{}", context());
    assert!(report.errors.is_empty(), "{}", context());
    assert!(report.agent_joined, "{whom} never joined: {}", context());
    assert!(
        report.agent_track,
        "no audio track of {whom}: {}",
        context()
    );
    assert!(
        report.audible_ms >= 2_000,
        "{whom} barely heard: {}",
        context()
    );
    assert!(
        report.received_rms > 1_000.0,
        "{whom} too quiet: {}",
        context()
    );
}

#[tokio::test]
async fn a_livekit_user_hears_the_agent_participant_within_seconds() {
    let _watchdog = Watchdog::start("livekit-server and two LiveKit users".into());
    let started = Instant::now();
    let server = LiveKitServer::start();
    eprintln!(
        "livekit-server up at {} in {:?}",
        server.url(),
        started.elapsed()
    );
    let key = key(&server);
    // The agent plays a 440 Hz tone and listens to alice; alice says 1 kHz and listens to it.
    let agent = UserArgs {
        tone_hz: Some(440.0),
        seconds: 8.0,
        agent_identity: "alice".into(),
        ..UserArgs::new(server.url(), key.agent_token("harness", TTL).unwrap())
    };
    let alice = UserArgs {
        tone_hz: Some(1_000.0),
        seconds: 6.0,
        ..UserArgs::new(
            server.url(),
            key.user_token("harness", "alice", TTL).unwrap(),
        )
    };
    let (agent, alice) = tokio::join!(run_user(&agent), async {
        // The agent is in the room first, as a worker is before its user.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        run_user(&alice).await
    });
    eprintln!("agent: {agent:?}\nalice: {alice:?}");
    assert_eq!(alice.room.as_deref(), Some("harness"));
    assert_heard(&alice, AGENT_IDENTITY, &server);
    assert_heard(&agent, "alice", &server);
    let first = alice.first_audio_ms.expect("alice heard the agent");
    assert!(first < 5_000, "the agent's first audio after {first} ms");
    eprintln!("harness test took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_livekit_user_learns_that_the_room_was_deleted() {
    let _watchdog = Watchdog::start("livekit-server and a LiveKit user".into());
    let server = LiveKitServer::start();
    let key = key(&server);
    let bob = UserArgs {
        tone_hz: Some(1_000.0),
        seconds: 30.0,
        until_disconnected: true,
        ..UserArgs::new(server.url(), key.user_token("short", "bob", TTL).unwrap())
    };
    let deleter = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let admin = key.admin_token("short", TTL).unwrap();
        tokio::task::spawn_blocking({
            let address = server.url().trim_start_matches("ws://").to_owned();
            move || delete_room(&address, &admin, "short")
        })
        .await
        .unwrap()
    };
    let (bob, deleted) = tokio::join!(run_user(&bob), deleter);
    assert!(deleted.starts_with("HTTP/1.1 200"), "DeleteRoom: {deleted}");
    assert!(bob.joined, "{bob:#?}");
    assert_eq!(
        bob.disconnect_reason.as_deref(),
        Some("ROOM_DELETED"),
        "{bob:#?}"
    );
    assert!(bob.errors.is_empty(), "{bob:#?}");
}

/// Twirp `RoomService/DeleteRoom` on the server at `address` (`host:port`), in JSON; returns
/// the whole response.
fn delete_room(address: &str, admin_token: &str, room: &str) -> String {
    let body = format!("{{\"room\":\"{room}\"}}");
    let request = format!(
        "POST /twirp/livekit.RoomService/DeleteRoom HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {admin_token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(address).expect("connecting to livekit-server");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
