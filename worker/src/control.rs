//! The `WorkerControl` gRPC service: translates the operator's calls into calls on the
//! shared session state, and keeps `grpc.health.v1` in step with draining.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;
use voice_proto::leader_epoch::LeaderEpoch;
use voice_proto::session_config::SessionConfig;
use voice_proto::worker::v1 as pb;
use voice_proto::worker::v1::worker_control_server::{WorkerControl, WorkerControlServer};

use crate::capacity::{Refusal, Released, Reserved, Session, SessionRequest};
use crate::events::EventStream;
use crate::leader_fence::LeaderFence;
use crate::sessions::Sessions;

/// The gRPC face of one worker.
#[derive(Clone, Debug)]
pub struct ControlService {
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
    /// Shared by every clone: the server clones the service per connection.
    fence: Arc<LeaderFence>,
}

impl ControlService {
    /// A service over the worker's shared session state. Event streams end when
    /// `shutdown` fires, because the server's graceful stop waits for open streams.
    pub fn new(sessions: Arc<Sessions>, shutdown: CancellationToken) -> Self {
        Self {
            sessions,
            shutdown,
            fence: Arc::default(),
        }
    }

    /// Refuses a call from a leader older than one this worker has already followed.
    fn fenced<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let claim =
            LeaderEpoch::from_metadata(request.metadata()).map_err(Status::invalid_argument)?;
        self.fence.admit(claim.as_ref()).map_err(|why| {
            tracing::warn!(%why, "refused a call from a replaced leader");
            Status::failed_precondition(why)
        })
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> WorkerControlServer<Self> {
        WorkerControlServer::new(self)
    }
}

/// Marks the worker SERVING in `grpc.health.v1`, both for the whole server ("") and
/// for WorkerControl; called before the server listens so no probe sees an unknown
/// service.
pub async fn mark_serving(reporter: &HealthReporter) {
    reporter
        .set_serving::<WorkerControlServer<ControlService>>()
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
}

/// Sets `grpc.health.v1` for the whole server and for WorkerControl to `serving`.
pub async fn report_serving(reporter: &HealthReporter, serving: bool) {
    if serving {
        mark_serving(reporter).await;
    } else {
        reporter
            .set_not_serving::<WorkerControlServer<ControlService>>()
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    }
}

/// Turns health NOT_SERVING from the moment the worker drains, so a plain gRPC probe
/// and the operator agree that the worker takes no new sessions.
pub async fn report_draining(reporter: HealthReporter, sessions: Arc<Sessions>) {
    let mut occupancy = sessions.watch();
    if occupancy.wait_for(|o| o.draining()).await.is_ok() {
        report_serving(&reporter, false).await;
    }
}

fn summary(session: &Session) -> pb::SessionSummary {
    let state = if session.is_connected() {
        pb::SessionState::Connected
    } else {
        pb::SessionState::Reserved
    };
    pb::SessionSummary {
        session_id: session.request.session_id.clone(),
        uid: session.request.uid.clone(),
        state: state.into(),
        reserved_at: Some(session.reserved_at.into()),
        connected_at: session.connected_at.map(Into::into),
        token_key_id: session.request.token_key_id.clone(),
    }
}

/// Rejects what no retry can fix: missing identity, or a session configuration that is not
/// a [`SessionConfig`] (e.g. one that tries to set an endpoint), naming the field. Parsed
/// here, once; the pipeline later reads only the typed overrides.
fn validate(request: pb::ReserveSessionRequest) -> Result<SessionRequest, Status> {
    require("session_id", &request.session_id)?;
    require("uid", &request.uid)?;
    let config = SessionConfig::parse(&request.session_config_json)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(SessionRequest {
        session_id: request.session_id,
        uid: request.uid,
        token_key_id: request.token_key_id,
        config,
    })
}

/// `metadata_json` as the JSON object it must be, within the session configuration's size.
fn parse_metadata(json: &str) -> Result<serde_json::Map<String, serde_json::Value>, Status> {
    let max = voice_proto::session_config::MAX_BYTES;
    if json.len() > max {
        return Err(Status::invalid_argument(format!(
            "metadata_json is {} bytes; at most {max} are accepted",
            json.len()
        )));
    }
    match serde_json::from_str(json) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(Status::invalid_argument(
            "metadata_json must be one JSON object, e.g. {\"plan\": \"gold\"}",
        )),
    }
}

fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

#[tonic::async_trait]
impl WorkerControl for ControlService {
    async fn get_stats(
        &self,
        _: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let snapshot = self.sessions.snapshot();
        let connected = snapshot
            .sessions
            .iter()
            .filter(|s| s.is_connected())
            .count();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(pb::GetStatsResponse {
            capacity: snapshot.capacity,
            active_sessions: count(connected),
            reserved_sessions: count(snapshot.sessions.len() - connected),
            draining: snapshot.drain_deadline.is_some(),
            sessions: snapshot.sessions.iter().map(summary).collect(),
            uptime_seconds: self.sessions.uptime().as_secs(),
            drain_deadline: snapshot.drain_deadline.map(Into::into),
        }))
    }

    async fn reserve_session(
        &self,
        request: Request<pb::ReserveSessionRequest>,
    ) -> Result<Response<pb::ReserveSessionResponse>, Status> {
        // Built by hand (not #[instrument]) so it can join the operator's admission trace
        // before it starts; the body has no await, so holding the guard is fine.
        let span = tracing::info_span!("reserve_session", session = %request.get_ref().session_id, uid = %request.get_ref().uid);
        crate::telemetry::join_remote(&span, request.metadata(), &request.get_ref().uid);
        let _entered = span.enter();
        self.fenced(&request)?;
        let request = validate(request.into_inner())?;
        let reply = self.sessions.reserve(request, SystemTime::now());
        let (result, message) = match &reply.outcome {
            Ok(Reserved::New) => (pb::ReserveResult::Reserved, String::new()),
            Ok(Reserved::Existing) => (pb::ReserveResult::AlreadyReserved, String::new()),
            Err(refusal) => {
                let result = match refusal {
                    Refusal::Full { .. } => pb::ReserveResult::Full,
                    Refusal::Draining => pb::ReserveResult::Draining,
                    Refusal::Conflict { .. } => pb::ReserveResult::Conflict,
                };
                (result, refusal.to_string())
            }
        };
        match &reply.outcome {
            Ok(_) => tracing::info!(held = reply.held, ?result, "session reserved"),
            Err(refusal) => {
                tracing::info!(reason = refusal.reason(), %message, "reservation refused")
            }
        }
        Ok(Response::new(pb::ReserveSessionResponse {
            result: result.into(),
            message,
            held_sessions: reply.held,
            capacity: reply.capacity,
        }))
    }

    #[tracing::instrument(skip_all, fields(session = %request.get_ref().session_id, uid = %request.get_ref().uid))]
    async fn release_session(
        &self,
        request: Request<pb::ReleaseSessionRequest>,
    ) -> Result<Response<pb::ReleaseSessionResponse>, Status> {
        self.fenced(&request)?;
        let request = request.into_inner();
        require("session_id", &request.session_id)?;
        require("uid", &request.uid)?;
        let (released, held) = self.sessions.release(
            &request.session_id,
            &request.uid,
            &request.reason,
            SystemTime::now(),
        );
        let result = match released {
            Released::Freed(_) => pb::ReleaseResult::Released,
            Released::NotFound => pb::ReleaseResult::NotFound,
            Released::UidMismatch { .. } => pb::ReleaseResult::UidMismatch,
        };
        crate::telemetry::forget(&request.uid);
        tracing::info!(?result, held, reason = %request.reason, "release");
        Ok(Response::new(pb::ReleaseSessionResponse {
            result: result.into(),
            held_sessions: held,
        }))
    }

    #[tracing::instrument(skip_all, fields(session = %request.get_ref().session_id, uid = %request.get_ref().uid))]
    async fn update_session(
        &self,
        request: Request<pb::UpdateSessionRequest>,
    ) -> Result<Response<pb::UpdateSessionResponse>, Status> {
        self.fenced(&request)?;
        let request = request.into_inner();
        require("session_id", &request.session_id)?;
        require("uid", &request.uid)?;
        let metadata = parse_metadata(&request.metadata_json)?;
        let updated = self
            .sessions
            .update_metadata(&request.session_id, &request.uid, metadata);
        let result = if updated {
            pb::UpdateResult::Updated
        } else {
            pb::UpdateResult::NotFound
        };
        tracing::info!(?result, "metadata update");
        Ok(Response::new(pb::UpdateSessionResponse {
            result: result.into(),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        // A new leader's first list is what fences its predecessor on this worker.
        self.fenced(&request)?;
        let snapshot = self.sessions.snapshot();
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: snapshot.sessions.iter().map(summary).collect(),
            draining: snapshot.drain_deadline.is_some(),
        }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.fenced(&request)?;
        let seconds = request.into_inner().deadline_seconds;
        let timeout = (seconds > 0).then(|| Duration::from_secs(u64::from(seconds)));
        let now = SystemTime::now();
        let (deadline, remaining) = self.sessions.drain(timeout, now);
        let deadline_in_secs = deadline.duration_since(now).unwrap_or_default().as_secs();
        tracing::info!(
            remaining,
            deadline_in_secs,
            "drain requested by the operator"
        );
        Ok(Response::new(pb::DrainResponse {
            deadline: Some(deadline.into()),
            remaining_sessions: remaining,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Ok(Response::new(
            self.sessions.subscribe(self.shutdown.clone()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn service() -> ControlService {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let sessions = Sessions::new(1, Duration::from_secs(60), 16, metrics);
        ControlService::new(Arc::new(sessions), CancellationToken::new())
    }

    fn reserve(uid: &str, session_config_json: &str) -> Request<pb::ReserveSessionRequest> {
        Request::new(pb::ReserveSessionRequest {
            session_id: "ns/a".into(),
            uid: uid.into(),
            token_key_id: None,
            session_config_json: session_config_json.into(),
        })
    }

    #[tokio::test]
    async fn a_reservation_without_uid_is_an_invalid_argument() {
        let status = service()
            .reserve_session(reserve("", ""))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("uid"), "{}", status.message());
    }

    #[tokio::test]
    async fn config_that_is_not_json_is_an_invalid_argument_naming_the_field() {
        let status = service()
            .reserve_session(reserve("u", "{oops"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("session_config_json"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn a_config_that_names_an_endpoint_is_refused_and_takes_no_slot() {
        let service = service();
        let status = service
            .reserve_session(reserve(
                "u",
                r#"{"agent": {"systemPrompt": "hi", "endpoint": "http://attacker.invalid"}}"#,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("session_config_json.agent.endpoint"),
            "{}",
            status.message()
        );
        let reply = service
            .reserve_session(reserve("u", r#"{"agent": {"systemPrompt": "hi"}}"#))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        assert_eq!(
            reply.result(),
            pb::ReserveResult::Reserved,
            "the slot was not leaked"
        );
    }

    #[tokio::test]
    async fn drain_with_zero_seconds_uses_the_configured_timeout() {
        let service = service();
        let before = SystemTime::now();
        let reply = service
            .drain(Request::new(pb::DrainRequest {
                deadline_seconds: 0,
            }))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        let deadline = reply.deadline.map(|t| t.seconds).unwrap_or_default();
        let expected = before
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() + 60)
            .unwrap_or_default();
        assert!(deadline.abs_diff(i64::try_from(expected).unwrap_or_default()) <= 1);
        let refused = service
            .reserve_session(reserve("u", ""))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        assert_eq!(refused.result(), pb::ReserveResult::Draining);
    }
}
