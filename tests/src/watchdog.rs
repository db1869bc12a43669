//! A time limit per test. A test that hangs ends its test binary with a message naming it,
//! so the rest of the suite still runs and CI fails in minutes, saying where, instead of
//! running out its whole time budget without a word.

use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

/// How long one test may run. The slowest whole test binary took under three minutes.
pub const TEST_TIME_LIMIT: Duration = Duration::from_secs(600);

/// Ends the test process unless dropped within [`TEST_TIME_LIMIT`].
pub struct Watchdog {
    _alive: Sender<()>,
}

impl Watchdog {
    /// Starts the clock for the current test (named by its thread, as libtest names it);
    /// `what` says what the test holds, for the message.
    pub fn start(what: String) -> Watchdog {
        let (alive, dropped) = mpsc::channel::<()>();
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        std::thread::Builder::new()
            .name(format!("watchdog {test}"))
            .spawn(move || {
                // Dropping the watchdog disconnects the channel; only the limit times out.
                if dropped.recv_timeout(TEST_TIME_LIMIT) == Err(RecvTimeoutError::Timeout) {
                    eprintln!(
                        "\n{test} ({what}) still runs after {TEST_TIME_LIMIT:?}: it hangs. \
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
