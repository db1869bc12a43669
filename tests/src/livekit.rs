//! LiveKit for the `livekit` provider's tests: a real livekit-server per test and real LiveKit
//! users (the official Python SDK), on a host address both they and a worker on the host reach.
//!
//! ```no_run
//! # async fn demo() {
//! use voice_tests::livekit::{LiveKitServer, UserArgs, run_user};
//! let server = LiveKitServer::start();
//! let token = "…"; // voice_proto::livekit_token::ApiKey { key, secret }.user_token(…)
//! let report = run_user(&UserArgs {
//!     tone_hz: Some(440.0),
//!     ..UserArgs::new(server.url(), token)
//! })
//! .await;
//! assert!(report.joined, "{}", report.stderr);
//! # }
//! ```

mod address;
mod server;
mod user;

pub use address::{ADDRESS, INTERFACE, media_address};
pub use server::LiveKitServer;
pub use user::{UserArgs, UserReport, run_user, try_run_user};
