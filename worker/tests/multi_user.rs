//! A multi-user session on the real worker process: each participant connects with its own
//! token, everyone hears the agent's reply to anyone, a token for someone the session does
//! not list is refused, and the session ends only when its last participant leaves (the
//! others leaving are `Disconnected` events).

mod common;

use std::time::Duration;

use common::{PATIENCE, Worker, dominant_frequency, participant_token, sine};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use voice_proto::worker::v1::session_event::Event;
use voice_proto::worker::v1::{ReserveResult, ReserveSessionRequest, SessionEvent};

const ID: &str = "team/meet";
const UID: &str = "uid-meet";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn url(worker: &Worker, user: &str) -> String {
    format!(
        "ws://127.0.0.1:{}/v1/sessions/{ID}/ws?rate=16000&token={}",
        worker.http_port,
        participant_token(ID, UID, user)
    )
}

async fn join(worker: &Worker, user: &str) -> Socket {
    let (ws, _) = tokio_tungstenite::connect_async(url(worker, user))
        .await
        .unwrap_or_else(|e| panic!("{user} could not join: {e}"));
    ws
}

/// The HTTP status a refused upgrade got.
async fn refused(worker: &Worker, user: &str) -> u16 {
    match tokio_tungstenite::connect_async(url(worker, user)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        other => panic!("{user}'s upgrade was not refused: {other:?}"),
    }
}

/// Sends `audio` (16 kHz) in 20 ms messages at real-time pace, then 400 ms of silence,
/// and returns the PCM that came back meanwhile.
async fn talk(ws: Socket, audio: Vec<i16>) -> (Socket, Vec<i16>) {
    let (mut sink, mut stream) = ws.split();
    let mut heard = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let silence = vec![0i16; 320];
    let frames: Vec<&[i16]> = audio
        .chunks(320)
        .chain(std::iter::repeat_n(&silence[..], 20))
        .collect();
    for frame in frames {
        ticks.tick().await;
        let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
        sink.send(Message::Binary(bytes.into()))
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(1), stream.next()).await
        {
            if let Message::Binary(data) = message {
                heard.extend(
                    data.chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]])),
                );
            }
        }
    }
    let ws = sink
        .reunite(stream)
        .unwrap_or_else(|e| panic!("reunite: {e}"));
    (ws, heard)
}

/// The next event of `ID` that `pick` accepts, within [`PATIENCE`].
async fn next_event<T>(
    events: &mut tonic::Streaming<SessionEvent>,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    let wait = async {
        while let Some(Ok(event)) = events.next().await {
            if event.session_id == ID
                && let Some(found) = event.event.and_then(&mut pick)
            {
                return found;
            }
        }
        panic!("the event stream ended");
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("no such event within {PATIENCE:?}"))
}

#[tokio::test]
async fn participants_share_one_conversation_and_the_last_to_leave_ends_it() {
    let worker = Worker::start(2);
    let mut control = worker.client().await;
    let mut events = control
        .watch_events(voice_proto::worker::v1::WatchEventsRequest {})
        .await
        .unwrap_or_else(|e| panic!("WatchEvents: {e}"))
        .into_inner();
    let config = serde_json::json!({"userId": "alice", "participants": ["bob"]});
    let reply = control
        .reserve_session(ReserveSessionRequest {
            session_id: ID.into(),
            uid: UID.into(),
            token_key_id: None,
            session_config_json: config.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("ReserveSession: {e}"))
        .into_inner();
    assert_eq!(reply.result(), ReserveResult::Reserved);

    assert_eq!(
        refused(&worker, "carol").await,
        403,
        "carol is not in the session"
    );
    let alice = join(&worker, "alice").await;
    let bob = join(&worker, "bob").await;
    assert_eq!(
        refused(&worker, "bob").await,
        409,
        "bob is already connected"
    );
    let mut joined = Vec::new();
    for _ in 0..2 {
        joined.push(
            next_event(&mut events, |e| match e {
                Event::Connected(c) => Some(c.participant),
                _ => None,
            })
            .await,
        );
    }
    joined.sort();
    assert_eq!(joined, ["alice", "bob"]);

    // Alice speaks (a 1 kHz tone) while Bob is silent: the diagnostic echo agent answers
    // the room, so both of them hear her tone come back.
    let (alice_side, bob_side) = tokio::join!(
        talk(alice, sine(1_000.0, 16_000, 1.0)),
        talk(bob, vec![0; 16_000]),
    );
    let ((alice, alice_heard), (bob, bob_heard)) = (alice_side, bob_side);
    for (who, heard) in [("alice", &alice_heard), ("bob", &bob_heard)] {
        assert!(
            heard.len() >= 16_000 / 2,
            "{who} heard only {} samples",
            heard.len()
        );
        let (hz, _) = dominant_frequency(heard, 16_000);
        assert!(
            (hz - 1_000.0).abs() < 30.0,
            "{who} heard {hz:.0} Hz, not the 1 kHz reply"
        );
    }

    // Bob leaves: an event, and the session stays, with Alice still in it.
    drop(bob);
    let left = next_event(&mut events, |e| match e {
        Event::Disconnected(d) => Some(d.participant),
        Event::Ended(e) => panic!("the session ended when bob left: {e:?}"),
        _ => None,
    })
    .await;
    assert_eq!(left, "bob");
    let (alice, heard) = talk(alice, sine(1_000.0, 16_000, 0.5)).await;
    assert!(
        !heard.is_empty(),
        "alice is alone in the room but still answered"
    );
    // Alice, the last one, leaves: the session ends.
    drop(alice);
    let ended = next_event(&mut events, |e| match e {
        Event::Ended(e) => Some(e.reason),
        _ => None,
    })
    .await;
    assert!(!ended.is_empty(), "ended without a reason");
}
