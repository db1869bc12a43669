//! A time limit per test. A test that hangs ends its test binary with a message naming it,
//! so the rest of the suite still runs and CI fails in minutes, saying where, instead of
//! running out its whole time budget without a word.

use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

/// How long one test may run by default. The slowest whole test binary took under three
/// minutes.
pub const TEST_TIME_LIMIT: Duration = Duration::from_secs(600);

/// Overrides [`TEST_TIME_LIMIT`], in seconds.
pub const TIME_LIMIT_VARIABLE: &str = "VOICE_TEST_TIME_LIMIT_SECONDS";

/// The limit in force: the variable when set to a number, else the default.
fn time_limit() -> Duration {
    std::env::var(TIME_LIMIT_VARIABLE)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(TEST_TIME_LIMIT, Duration::from_secs)
}

/// Ends the test process unless dropped within the time limit.
pub struct Watchdog {
    _alive: Sender<()>,
}

impl Watchdog {
    /// Starts the clock for the current test (named by its thread, as libtest names it);
    /// `what` says what the test holds, for the message.
    pub fn start(what: String) -> Watchdog {
        let (alive, dropped) = mpsc::channel::<()>();
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        let limit = time_limit();
        std::thread::Builder::new()
            .name(format!("watchdog {test}"))
            .spawn(move || {
                // Dropping the watchdog disconnects the channel; only the limit times out.
                if dropped.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
                    eprintln!(
                        "\n{test} ({what}) still runs after {limit:?}: it hangs. \
                         Ending this test binary (and the processes it started) so the rest \
                         of the suite runs."
                    );
                    // Operators and workers the tests started would outlive us otherwise.
                    let _ = Command::new("pkill")
                        .args(["-KILL", "-P", &std::process::id().to_string()])
                        .status();
                    std::process::exit(101);
                }
            })
            .expect("starting a watchdog thread");
        Watchdog { _alive: alive }
    }
}
