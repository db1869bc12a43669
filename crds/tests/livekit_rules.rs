//! The livekit provider's fields under the schema's CEL rules (client-side, as in
//! `cel_rules.rs`): the examples pass, `room` needs `transport: livekit`, and the server's
//! URLs must be WebSocket or HTTP URLs.

use kube::core::cel::{validate_cel, validate_cel_update};
use voice_crds::{Transport, VoiceBackend, VoiceProvider, VoiceSession};

fn example<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/livekit")
        .join(file);
    serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn errors<T: kube::CustomResourceExt + serde::Serialize>(o: &T) -> String {
    match validate_cel(o) {
        Ok(()) => String::new(),
        Err(e) => format!("{e:?}"),
    }
}

fn session(patch: impl FnOnce(&mut serde_json::Value)) -> VoiceSession {
    let mut v = serde_json::to_value(example::<VoiceSession>("session.yaml")).unwrap();
    patch(&mut v["spec"]);
    serde_json::from_value(v).unwrap()
}

#[test]
fn the_livekit_examples_pass_every_rule() {
    validate_cel(&example::<VoiceProvider>("provider.yaml")).unwrap();
    validate_cel(&example::<VoiceBackend>("backend.yaml")).unwrap();
    let s = example::<VoiceSession>("session.yaml");
    assert_eq!(s.spec.transport, Transport::LiveKit);
    validate_cel(&s).unwrap();
}

#[test]
fn a_room_needs_transport_livekit() {
    assert_eq!(errors(&session(|s| s["room"] = "standup".into())), "");
    let webrtc = session(|s| {
        s["room"] = "standup".into();
        s["transport"] = "webrtc".into();
    });
    assert!(
        errors(&webrtc).contains("room is for transport livekit only"),
        "{}",
        errors(&webrtc)
    );
}

#[test]
fn a_room_cannot_change_after_creation() {
    let old = session(|s| s["room"] = "standup".into());
    let new = session(|s| s["room"] = "retro".into());
    let err = match validate_cel_update(&new, &old) {
        Ok(()) => String::new(),
        Err(e) => format!("{e:?}"),
    };
    assert!(err.contains("room is immutable"), "{err}");
}

#[test]
fn the_servers_urls_are_websocket_or_http_urls() {
    let mut v = serde_json::to_value(example::<VoiceBackend>("backend.yaml")).unwrap();
    v["spec"]["liveKit"]["url"] = "livekit.example:7880".into();
    v["spec"]["liveKit"]["workerURL"] = "tcp://livekit:7880".into();
    let b: VoiceBackend = serde_json::from_value(v).unwrap();
    let err = errors(&b);
    assert!(
        err.contains("liveKit.url must start with ws://")
            && err.contains("liveKit.workerURL must start with ws://"),
        "{err}"
    );
}

#[test]
fn a_transport_is_spelled_as_in_manifests() {
    for t in [Transport::WebRtc, Transport::WebSocket, Transport::LiveKit] {
        assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
    }
}
