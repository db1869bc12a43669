use k8s_openapi::jiff::Timestamp;
use voice_crds::Transport;

use super::*;

fn members(participants: &[&str]) -> Members {
    Members {
        user: "u-1".into(),
        participants: participants.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap_or_else(|e| panic!("{e}")))
}

fn conn(user: &str, id: &str, seconds: i64) -> UserConnectionStatus {
    UserConnectionStatus {
        user_id: Some(user.into()),
        connection_id: id.into(),
        transport: Transport::WebRtc,
        remote_address: None,
        connected_at: Some(at(seconds)),
        last_ping: Some(at(seconds)),
    }
}

fn who(p: &Presence) -> (Option<&str>, Vec<&str>) {
    (
        p.connection.as_ref().map(|c| c.connection_id.as_str()),
        p.connections
            .iter()
            .map(|c| c.connection_id.as_str())
            .collect(),
    )
}

#[test]
fn a_worker_names_listed_people_only_and_an_empty_name_is_the_user() {
    let m = members(&["u-2"]);
    assert_eq!(m.resolve(""), Some("u-1".into()));
    assert_eq!(m.resolve("u-1"), Some("u-1".into()));
    assert_eq!(m.resolve("u-2"), Some("u-2".into()));
    assert_eq!(m.resolve("mallory"), None);
    assert_eq!(m.speaker("u-2"), Some("u-2".into()));
    assert_eq!(m.speaker(""), None);
    assert_eq!(m.speaker("mallory"), None);
    assert_eq!(
        members(&[]).speaker("u-1"),
        None,
        "a session of one user labels no line"
    );
}

#[test]
fn a_session_of_one_user_keeps_only_its_connection_as_before() {
    let m = members(&[]);
    let mut p = Presence::default();
    assert!(p.connect(&m, conn("u-1", "c1", 10)));
    assert!(p.connect(&m, conn("u-1", "c2", 20)), "a reconnect replaces");
    assert_eq!(who(&p), (Some("c2"), vec![]));
    assert_eq!(
        p.disconnect(&m, "c2"),
        None,
        "its only connection leaving ends the session (Ended), not this"
    );
    assert_eq!(who(&p), (Some("c2"), vec![]));
    p.clear();
    assert_eq!(who(&p), (None, vec![]));
}

#[test]
fn the_user_is_the_connection_while_connected_else_the_longest_connected_participant() {
    let m = members(&["u-2", "u-3"]);
    let mut p = Presence::default();
    assert!(
        p.connect(&m, conn("u-2", "c2", 10)),
        "the first participant stands in"
    );
    assert!(!p.connect(&m, conn("u-3", "c3", 11)));
    assert_eq!(who(&p), (Some("c2"), vec!["c2", "c3"]));
    assert!(p.connect(&m, conn("u-1", "c1", 12)), "the user takes over");
    assert_eq!(who(&p), (Some("c1"), vec!["c2", "c3", "c1"]));
    assert_eq!(p.count(), 3);

    let left = p
        .disconnect(&m, "c1")
        .unwrap_or_else(|| panic!("c1 was listed"));
    assert_eq!(left.user_id.as_deref(), Some("u-1"));
    assert_eq!(who(&p), (Some("c2"), vec!["c2", "c3"]));
}

#[test]
fn a_reconnect_replaces_the_participants_entry_and_its_old_disconnect_is_ignored() {
    let m = members(&["u-2", "u-3"]);
    let mut p = Presence::default();
    p.connect(&m, conn("u-2", "c2", 10));
    p.connect(&m, conn("u-3", "c3", 11));
    p.connect(&m, conn("u-2", "c2b", 12));
    assert_eq!(
        who(&p),
        (Some("c3"), vec!["c3", "c2b"]),
        "one entry per userID, in the order they connected"
    );
    assert_eq!(
        p.disconnect(&m, "c2"),
        None,
        "the old connection's late goodbye"
    );
    assert_eq!(who(&p), (Some("c3"), vec!["c3", "c2b"]));
}

#[test]
fn a_ping_refreshes_every_connection_and_the_end_clears_them() {
    let m = members(&["u-2"]);
    let mut p = Presence::default();
    p.connect(&m, conn("u-1", "c1", 10));
    p.connect(&m, conn("u-2", "c2", 11));
    p.ping(&at(30));
    assert!(
        p.connection
            .iter()
            .chain(p.connections.iter())
            .all(|c| c.last_ping == Some(at(30)))
    );
    p.clear();
    assert_eq!(who(&p), (None, vec![]));
    assert_eq!(p.count(), 0);
}

#[test]
fn only_a_multi_user_session_shows_connections_in_status() {
    let mut single = Presence::default();
    single.connect(&members(&[]), conn("u-1", "c1", 10));
    let json = serde_json::to_value(&single).unwrap_or_default();
    assert!(json.get("connections").is_none(), "{json}");
    assert_eq!(json["connection"]["userID"], "u-1");

    let mut multi = Presence::default();
    multi.connect(&members(&["u-2"]), conn("u-2", "c2", 10));
    let json = serde_json::to_value(&multi).unwrap_or_default();
    assert_eq!(json["connections"][0]["userID"], "u-2");
    multi.clear();
    assert_eq!(
        serde_json::to_value(&multi).unwrap_or_default(),
        serde_json::json!({}),
        "cleared fields are left out of the apply, which removes them"
    );
}
