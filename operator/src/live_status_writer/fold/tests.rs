use k8s_openapi::jiff::Timestamp;
use voice_crds::VoiceSessionSpec;

use super::*;

fn members(participants: &[&str]) -> Members {
    let participants: Vec<_> = participants
        .iter()
        .map(|id| serde_json::json!({ "userID": id }))
        .collect();
    let spec: VoiceSessionSpec = serde_json::from_value(serde_json::json!({
        "backendRef": {"name": "assistant"},
        "user": {"userID": "u-1"},
        "participants": participants,
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Members::of(&spec)
}

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap_or_else(|e| panic!("{e}")))
}

fn connected(participant: &str, id: &str) -> Event {
    Event::Connected(pb::Connected {
        transport: pb::Transport::Webrtc.into(),
        remote_address: "203.0.113.7".into(),
        connection_id: id.into(),
        format: Some(pb::MediaFormat {
            codec: "opus".into(),
            sample_rate: 48_000,
            channels: 1,
            buffer_bytes: 3_840,
        }),
        participant: participant.into(),
    })
}

fn disconnected(participant: &str, id: &str, reason: &str) -> Event {
    Event::Disconnected(pb::Disconnected {
        connection_id: id.into(),
        participant: participant.into(),
        reason: reason.into(),
    })
}

fn user_line(speaker: &str, text: &str) -> Event {
    Event::Transcript(pb::Transcript {
        role: pb::transcript::Role::User.into(),
        text: text.into(),
        turn_id: "t1".into(),
        speaker: speaker.into(),
    })
}

/// Feeds `events` one second apart from t=100, returning what each asked for.
fn feed(live: &mut Live, members: &Members, events: Vec<Event>) -> Vec<Folded> {
    events
        .into_iter()
        .zip(100..)
        .map(|(e, t)| fold(live, members, e, at(t), "team/call-1"))
        .collect()
}

/// (connection's userID, every listed userID) as the status would show them.
fn who(live: &Live) -> (Option<String>, Vec<String>) {
    (
        live.presence
            .connection
            .as_ref()
            .and_then(|c| c.user_id.clone()),
        live.presence
            .connections
            .iter()
            .filter_map(|c| c.user_id.clone())
            .collect(),
    )
}

fn condition(live: &Live, type_: &str) -> Option<(String, String)> {
    live.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[test]
fn participants_joining_are_listed_in_connections_with_an_event_each() {
    let m = members(&["u-2", "u-3"]);
    let mut live = Live::default();
    let folded = feed(
        &mut live,
        &m,
        vec![
            connected("u-2", "c2"),
            connected("", "c1"),
            connected("u-3", "c3"),
        ],
    );
    assert_eq!(
        who(&live),
        (
            Some("u-1".into()),
            vec!["u-2".into(), "u-1".into(), "u-3".into()]
        ),
        "the user (an empty name, an old token) is the connection once connected"
    );
    let notes: Vec<_> = folded.iter().flat_map(|f| f.notices.iter()).collect();
    assert_eq!(notes.len(), 3);
    assert!(
        notes
            .iter()
            .all(|n| n.reason == PARTICIPANT_JOINED && !n.warning)
    );
    assert_eq!(
        notes[0].note,
        "u-2 joined over webrtc from 203.0.113.7 (connection c2); 1 connected"
    );
    assert!(notes[2].note.ends_with("3 connected"), "{}", notes[2].note);
    assert_eq!(
        condition(&live, CONNECTED),
        Some(("True".into(), "ClientConnected".into()))
    );
    let body = serde_json::to_value(&live).unwrap_or_default();
    assert_eq!(
        body["connections"].as_array().map(Vec::len),
        Some(3),
        "the apply body carries connections: {body}"
    );
    assert_eq!(body["connections"][0]["userID"], "u-2");
    assert_eq!(body["connection"]["userID"], "u-1");
}

#[test]
fn a_participant_leaving_is_removed_and_the_session_goes_on() {
    let m = members(&["u-2"]);
    let mut live = Live::default();
    feed(
        &mut live,
        &m,
        vec![connected("u-1", "c1"), connected("u-2", "c2")],
    );
    let active = live.last_activity.clone();
    let left = feed(
        &mut live,
        &m,
        vec![disconnected("u-1", "c1", "ClientHangup")],
    );
    assert_eq!(live.last_activity, active, "leaving is no activity");
    assert_eq!(
        who(&live),
        (Some("u-2".into()), vec!["u-2".into()]),
        "the participant stands in for the user who left"
    );
    assert_eq!(left[0].ended, None, "one leaving does not end the session");
    assert!(left[0].dirty);
    assert_eq!(
        left[0].notices,
        [Notice {
            warning: false,
            reason: PARTICIPANT_LEFT,
            note: "u-1 left (ClientHangup, connection c1); 1 still connected".into(),
        }]
    );
    assert_eq!(
        condition(&live, CONNECTED),
        Some(("True".into(), "ClientConnected".into()))
    );
    let stale = feed(
        &mut live,
        &m,
        vec![disconnected("u-1", "c1", "PongTimeout")],
    );
    assert_eq!(
        stale[0],
        Folded::default(),
        "a second goodbye of the same connection changes nothing"
    );
    let odd = feed(&mut live, &m, vec![connected("u-1", "c1b")]);
    assert_eq!(who(&live).0.as_deref(), Some("u-1"));
    let odd_reason = feed(
        &mut live,
        &m,
        vec![disconnected("u-1", "c1b", "no such reason!")],
    );
    assert!(
        odd_reason[0].notices[0].note.contains("(NoReasonGiven,"),
        "{:?} after {:?}",
        odd_reason[0].notices,
        odd[0].notices
    );
}

#[test]
fn a_ping_refreshes_every_connection_and_the_end_clears_them_all() {
    let m = members(&["u-2"]);
    let mut live = Live::default();
    feed(
        &mut live,
        &m,
        vec![
            connected("u-1", "c1"),
            connected("u-2", "c2"),
            Event::Ping(pb::Ping {
                rtt_ms: None,
                dropped_frames: Some(4),
            }),
        ],
    );
    let pinged = at(102);
    assert!(
        live.presence
            .connection
            .iter()
            .chain(live.presence.connections.iter())
            .all(|c| c.last_ping.as_ref() == Some(&pinged))
    );
    assert_eq!(
        live.audio_buffers.as_ref().map(|b| b.dropped_frames),
        Some(4)
    );
    let end = feed(
        &mut live,
        &m,
        vec![Event::Ended(pb::Ended {
            reason: "ClientHangup".into(),
            message: String::new(),
        })],
    );
    assert_eq!(end[0].ended, Some(("ClientHangup".into(), String::new())));
    assert_eq!(who(&live), (None, vec![]));
    let body = serde_json::to_value(&live).unwrap_or_default();
    assert!(
        body.get("connections").is_none() && body.get("connection").is_none(),
        "left out of the apply, so removed from status: {body}"
    );
    assert!(ended(&live));
}

#[test]
fn a_name_the_session_does_not_list_is_dropped_without_touching_status() {
    let m = members(&["u-2"]);
    let mut live = Live::default();
    feed(&mut live, &m, vec![connected("u-2", "c2")]);
    let before = live.clone();
    let folded = feed(
        &mut live,
        &m,
        vec![
            connected("mallory", "c9"),
            disconnected("mallory", "c2", "ClientHangup"),
        ],
    );
    assert!(
        folded
            .iter()
            .all(|f| f.unknown_participant && !f.dirty && f.notices.is_empty())
    );
    assert_eq!(live, before);
}

#[test]
fn user_lines_carry_the_speaker_in_a_multi_user_session_only() {
    let m = members(&["u-2"]);
    let mut live = Live::default();
    feed(
        &mut live,
        &m,
        vec![
            user_line("u-2", "hello"),
            user_line("mallory", "hi"),
            user_line("", "hm"),
        ],
    );
    let labels: Vec<_> = live
        .context
        .iter()
        .flat_map(|c| c.transcript.iter())
        .map(|e| e.participant.as_deref())
        .collect();
    assert_eq!(labels, [Some("u-2"), None, None]);

    let mut single = Live::default();
    feed(&mut single, &members(&[]), vec![user_line("u-1", "hello")]);
    let entry = &single.context.unwrap_or_default().transcript[0];
    assert_eq!(entry.participant, None);
}

#[test]
fn a_session_of_one_user_keeps_its_status_as_before_participants_existed() {
    let m = members(&[]);
    let mut live = Live::default();
    let folded = feed(
        &mut live,
        &m,
        vec![connected("", "c1"), connected("u-1", "c2")],
    );
    assert!(
        folded.iter().all(|f| f.notices.is_empty()),
        "no participant Events"
    );
    assert_eq!(who(&live), (Some("u-1".into()), vec![]));
    assert_eq!(
        live.presence
            .connection
            .as_ref()
            .map(|c| c.connection_id.as_str()),
        Some("c2")
    );
    let body = serde_json::to_value(&live).unwrap_or_default();
    assert!(body.get("connections").is_none(), "{body}");
    assert_eq!(
        live.audio_buffers
            .and_then(|b| b.format)
            .map(|f| f.buffer_size),
        Some(3_840)
    );
}

#[test]
fn turn_latencies_from_a_worker_are_checked_before_use() {
    assert_eq!(checked_ms(12.4), Some(12));
    assert_eq!(checked_ms(0.0), Some(0));
    assert_eq!(checked_ms(MAX_TURN_LATENCY_MS), Some(86_400_000));
    for hostile in [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.0,
        f64::MAX,
        MAX_TURN_LATENCY_MS + 1.0,
    ] {
        assert_eq!(checked_ms(hostile), None, "{hostile}");
    }
}

#[test]
fn a_workers_media_format_reaches_status_only_when_the_schema_allows_it() {
    let format = |codec: &str, rate, channels, bytes| pb::MediaFormat {
        codec: codec.into(),
        sample_rate: rate,
        channels,
        buffer_bytes: bytes,
    };
    let opus = media_format(&format("opus", 48_000, 1, 3_840)).unwrap_or_else(|| panic!("opus"));
    assert_eq!(
        (opus.codec, opus.sample_rate, opus.buffer_size),
        (Codec::Opus, 48_000, 3_840)
    );
    assert!(media_format(&format("pcm", 8_000, 1, 96_000)).is_some());
    for hostile in [
        format("opus", 16_000, 1, 1),
        format("mp3", 48_000, 1, 1),
        format("pcm", 12_345, 1, 1),
        format("pcm", 16_000, 3, 1),
        format("pcm", 16_000, 1, 0),
        format("pcm", 16_000, 1, u32::MAX),
    ] {
        assert_eq!(media_format(&hostile), None, "{hostile:?}");
    }
}

#[test]
fn end_reasons_from_a_worker_are_condition_reasons_or_ended_on_worker() {
    assert_eq!(end_reason("AgentHangup"), "AgentHangup");
    assert_eq!(end_reason("DrainDeadline"), "DrainDeadline");
    for hostile in ["", "has space", "9Lives", "é", "a-b", &"A".repeat(65)] {
        assert_eq!(end_reason(hostile), "EndedOnWorker", "{hostile:?}");
    }
    assert_eq!(capped("ééé", 3), "é");
    assert_eq!(capped("short", 512), "short");
}

#[test]
fn a_connection_in_a_livekit_room_shows_transport_livekit() {
    let mut live = Live::default();
    let Event::Connected(mut c) = connected("u-1", "c1") else {
        panic!("connected() makes a Connected event");
    };
    c.transport = pb::Transport::Livekit.into();
    // A multi-user session, so the join is also told in an Event.
    let folded = feed(&mut live, &members(&["u-2"]), vec![Event::Connected(c)]);
    let transport = live.presence.connection.as_ref().map(|c| c.transport);
    assert_eq!(transport, Some(Transport::LiveKit));
    let note = &folded[0].notices[0].note;
    assert!(note.starts_with("u-1 joined over livekit from"), "{note}");
    let body = serde_json::to_value(&live).unwrap_or_default();
    assert_eq!(body["connection"]["transport"], "livekit");
}
