use super::*;

/// A `start` as Twilio's Media Streams documentation shows it, with our token parameter.
fn start_message(encoding: &str, rate: u32) -> String {
    serde_json::json!({
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0",
            "callSid": "CAxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": encoding, "sampleRate": rate, "channels": 1},
            "customParameters": {"token": "a.b.c", "caller": "+15550100"}
        },
        "streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0"
    })
    .to_string()
}

#[test]
fn a_documented_start_gives_the_stream_and_the_token() {
    let FromTwilio::Start(start) =
        parse(&start_message(ENCODING, 8_000)).unwrap_or_else(|e| panic!("{e}"))
    else {
        panic!("not a start");
    };
    assert_eq!(start.stream_sid, "MZ18ad3ab5a668481ce02b83e7395059f0");
    assert_eq!(start.call_sid, "CAxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    assert_eq!(start.token(), Some("a.b.c"));
    assert_eq!(
        start.parameters.get("caller").map(String::as_str),
        Some("+15550100")
    );
}

#[test]
fn a_stream_in_another_format_is_refused_naming_it() {
    let error = parse(&start_message("audio/l16", 16_000)).err();
    let text = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        text.contains("start.mediaFormat is audio/l16 at 16000 Hz"),
        "{text}"
    );
}

#[test]
fn inbound_media_is_decoded_and_other_tracks_are_ignored() {
    let payload = base64::engine::general_purpose::STANDARD.encode([0xFFu8, 0x7F, 0x00]);
    let inbound = serde_json::json!({
        "event": "media", "sequenceNumber": "3", "streamSid": "MZ1",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": payload}
    });
    assert_eq!(
        parse(&inbound.to_string()),
        Ok(FromTwilio::Media(Media {
            mulaw: vec![0xFF, 0x7F, 0x00],
            chunk: Some(1),
            timestamp_ms: Some(5)
        }))
    );
    let outbound = serde_json::json!({
        "event": "media", "streamSid": "MZ1", "media": {"track": "outbound", "payload": payload}
    });
    assert_eq!(parse(&outbound.to_string()), Ok(FromTwilio::Ignored));
}

#[test]
fn broken_messages_name_what_is_wrong() {
    let cases = [
        ("not json", "must be a JSON object"),
        (
            r#"{"event":"media","media":{"payload":"@@@"}}"#,
            "media.payload is not base64",
        ),
        (
            r#"{"event":"media","media":{}}"#,
            "media.payload is missing",
        ),
        (r#"{"event":"mark","mark":{}}"#, "mark.name is missing"),
        (r#"{"event":"dtmf"}"#, "dtmf.digit is missing"),
        (r#"{"event":"start"}"#, "start is missing"),
    ];
    for (text, expected) in cases {
        let said = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(said.contains(expected), "{text}: {said}");
    }
}

#[test]
fn marks_dtmf_stop_and_unknown_events_are_read() {
    assert_eq!(
        parse(r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"reply-1"}}"#),
        Ok(FromTwilio::Mark("reply-1".into()))
    );
    assert_eq!(
        parse(r#"{"event":"dtmf","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":"7"}}"#),
        Ok(FromTwilio::Dtmf("7".into()))
    );
    assert_eq!(parse(r#"{"event":"stop","stop":{}}"#), Ok(FromTwilio::Stop));
    assert_eq!(
        parse(r#"{"event":"connected","protocol":"Call"}"#),
        Ok(FromTwilio::Connected)
    );
    assert_eq!(parse(r#"{"event":"someday"}"#), Ok(FromTwilio::Ignored));
}

#[test]
fn what_we_send_has_the_documented_shape() {
    let sent: serde_json::Value =
        serde_json::from_str(&media("MZ1", &[1, 2, 3])).unwrap_or_default();
    assert_eq!(sent["event"], "media");
    assert_eq!(sent["streamSid"], "MZ1");
    assert_eq!(sent["media"]["payload"], "AQID");
    let sent: serde_json::Value = serde_json::from_str(&mark("MZ1", "reply-2")).unwrap_or_default();
    assert_eq!(sent["mark"]["name"], "reply-2");
    let sent: serde_json::Value = serde_json::from_str(&clear("MZ1")).unwrap_or_default();
    assert_eq!(
        sent,
        serde_json::json!({"event": "clear", "streamSid": "MZ1"})
    );
}

#[test]
fn mu_law_keeps_speech_levels_within_its_step() {
    // G.711 μ-law's step grows with the level: under 1/16 of it everywhere.
    for sample in (-32_000i16..32_000).step_by(97) {
        let back = decode(&encode(&[sample]))[0];
        let error = (i32::from(back) - i32::from(sample)).abs();
        assert!(
            error <= i32::from(sample).abs() / 16 + 8,
            "{sample} came back {back}"
        );
    }
    // The code for silence is 0xFF (all bits inverted), which a phone hears as silence.
    assert_eq!(encode(&[0]), vec![0xFF]);
}

#[test]
fn every_mu_law_level_survives_a_second_pass() {
    // What a caller sent and the echo returns is coded twice: levels must not drift.
    let levels = decode(&(0..=255).collect::<Vec<u8>>());
    assert_eq!(decode(&encode(&levels)), levels);
}
