//! The CamelCase reasons of a session's `Admitted` and `Ended` conditions that the core decides.

/// The session holds a slot on a worker.
pub const ADMITTED: &str = "Admitted";
/// The session's worker died; it waits for another.
pub const WORKER_LOST: &str = "WorkerLost";
/// The session waited longer than `spec.pendingTimeout`.
pub const QUEUE_TIMEOUT: &str = "QueueTimeout";
/// The session lasted `spec.maxDuration`.
pub const MAX_DURATION: &str = "MaxDuration";
/// No client activity for `spec.idleTimeout`.
pub const IDLE_TIMEOUT: &str = "IdleTimeout";
/// The session's backend was deleted.
pub const BACKEND_DELETED: &str = "BackendDeleted";
/// The worker no longer held an Active session (it ended there unseen, e.g. while the
/// operator restarted).
pub const ENDED_ON_WORKER: &str = "EndedOnWorker";
/// The worker refused the reservation (full, draining, or a stale session of that name).
pub const WORKER_REFUSED: &str = "WorkerRefused";
/// `spec.audio` does not fit the session's transport, provider or worker.
pub const AUDIO_FORMAT_NOT_SUPPORTED: &str = "AudioFormatNotSupported";
/// `spec.participants` needs a provider with `capabilities.multiUserSupport`.
pub const MULTI_USER_NOT_SUPPORTED: &str = "MultiUserNotSupported";
/// `spec.transport` is not one the session's backend serves (`livekit` needs a backend with
/// `spec.liveKit`, which serves no other transport).
pub const TRANSPORT_NOT_SUPPORTED: &str = "TransportNotSupported";
/// A userID of the session is the identity the agent joins LiveKit rooms with.
pub const USER_ID_RESERVED: &str = "UserIDReserved";
/// The session's default LiveKit room name (`<namespace>-<name>`) is too long.
pub const ROOM_NAME_TOO_LONG: &str = "RoomNameTooLong";
/// Another session meets in the session's LiveKit room.
pub const ROOM_IN_USE: &str = "RoomInUse";
