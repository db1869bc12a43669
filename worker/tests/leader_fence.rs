//! Leader fencing on a real worker process: once a newer operator leader has listed the
//! worker's sessions, the older one can neither reserve, release, update nor drain there,
//! and the refusal says "stale leader" so the old leader knows to stop.

mod common;

use common::Worker;
use tonic::Code;
use voice_proto::leader_epoch::{LeaderEpoch, STALE_PREFIX};
use voice_proto::worker::v1::{
    DrainRequest, GetStatsRequest, ListSessionsRequest, ReleaseResult, ReleaseSessionRequest,
    ReserveResult, ReserveSessionRequest,
};

fn as_leader<T>(message: T, epoch: u64, leader: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    LeaderEpoch {
        epoch,
        leader: leader.to_owned(),
    }
    .insert(request.metadata_mut());
    request
}

fn reservation(name: &str) -> ReserveSessionRequest {
    ReserveSessionRequest {
        session_id: format!("ns/{name}"),
        uid: format!("uid-{name}"),
        token_key_id: None,
        session_config_json: String::new(),
    }
}

fn release(name: &str) -> ReleaseSessionRequest {
    ReleaseSessionRequest {
        session_id: format!("ns/{name}"),
        uid: format!("uid-{name}"),
        reason: "Deleted".to_owned(),
    }
}

fn assert_stale(status: &tonic::Status) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().starts_with(STALE_PREFIX), "{status:?}");
}

#[tokio::test]
async fn a_newer_leaders_list_fences_the_older_leader_out() {
    let worker = Worker::start(4);
    let mut client = worker.client().await;
    // The old leader (epoch 3) reserves one session.
    let reserved = client
        .reserve_session(as_leader(reservation("a"), 3, "old"))
        .await
        .expect("the current leader reserves")
        .into_inner();
    assert_eq!(reserved.result(), ReserveResult::Reserved);

    // Its successor (epoch 4) lists the worker first, and sees that reservation.
    let listed = client
        .list_sessions(as_leader(ListSessionsRequest {}, 4, "new"))
        .await
        .expect("the new leader lists")
        .into_inner();
    assert_eq!(listed.sessions.len(), 1);
    assert_eq!(listed.sessions[0].session_id, "ns/a");

    // The old leader wakes up: every mutating call and every list is refused, and a call
    // without any epoch too.
    let refused = client
        .reserve_session(as_leader(reservation("b"), 3, "old"))
        .await
        .expect_err("stale reserve");
    assert_stale(&refused);
    assert!(refused.message().contains("epoch 4 of new"), "{refused:?}");
    assert_stale(
        &client
            .release_session(as_leader(release("a"), 3, "old"))
            .await
            .expect_err("stale release"),
    );
    assert_stale(
        &client
            .list_sessions(as_leader(ListSessionsRequest {}, 3, "old"))
            .await
            .expect_err("stale list"),
    );
    assert_stale(
        &client
            .drain(as_leader(
                DrainRequest {
                    deadline_seconds: 1,
                },
                3,
                "old",
            ))
            .await
            .expect_err("stale drain"),
    );
    assert_stale(
        &client
            .reserve_session(reservation("c"))
            .await
            .expect_err("a call without an epoch"),
    );
    // Another process claiming the same epoch is not the leader that spoke first.
    assert_stale(
        &client
            .reserve_session(as_leader(reservation("d"), 4, "impostor"))
            .await
            .expect_err("same epoch, other leader"),
    );

    // Nothing the refused calls asked for happened: one slot, not draining.
    let stats = client
        .get_stats(GetStatsRequest {})
        .await
        .expect("stats need no epoch")
        .into_inner();
    assert_eq!(stats.reserved_sessions, 1, "{stats:?}");
    assert!(!stats.draining, "{stats:?}");

    // The new leader works as usual.
    let freed = client
        .release_session(as_leader(release("a"), 4, "new"))
        .await
        .expect("the new leader releases")
        .into_inner();
    assert_eq!(freed.result(), ReleaseResult::Released);
    let reserved = client
        .reserve_session(as_leader(reservation("e"), 4, "new"))
        .await
        .expect("the new leader reserves")
        .into_inner();
    assert_eq!(reserved.result(), ReserveResult::Reserved);
}

#[tokio::test]
async fn a_garbled_epoch_is_refused_naming_the_metadata_key() {
    let worker = Worker::start(1);
    let mut client = worker.client().await;
    let mut request = tonic::Request::new(reservation("a"));
    request.metadata_mut().insert(
        voice_proto::leader_epoch::EPOCH_KEY,
        "three".parse().expect("ascii"),
    );
    let status = client.reserve_session(request).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("voice-leader-epoch"),
        "{status:?}"
    );
    let stats = client
        .get_stats(GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.reserved_sessions, 0);
}
