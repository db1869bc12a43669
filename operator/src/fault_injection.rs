//! Test-only ways to make a controller misbehave on purpose (`tests/operator_leader.rs`): a
//! panic, to prove that it makes the operator exit and the standby take over; a shutdown
//! that never finishes, to prove that the operator still exits within its limit.
//!
//! The trigger is an annotation on a VoiceProvider, `voicebackends.dev/test-panic:
//! provider-controller`. Only debug builds act on it: in a release build (the chart's image,
//! `operator/Dockerfile` builds with `--release`) [`panic_if_asked`] compiles to nothing, so a
//! tenant who can write VoiceProviders cannot crash a production operator with it.

use std::collections::BTreeMap;

/// The annotation naming the controller that should panic when it reconciles the object.
pub const PANIC_ANNOTATION: &str = "voicebackends.dev/test-panic";

/// Panics when this is a debug build and `annotations` ask `controller` to.
pub fn panic_if_asked(controller: &str, annotations: &BTreeMap<String, String>) {
    if cfg!(debug_assertions)
        && annotations.get(PANIC_ANNOTATION).map(String::as_str) == Some(controller)
    {
        panic!("{PANIC_ANNOTATION}={controller}: panicking on purpose (debug build, test trigger)");
    }
}

/// Failpoint that makes the allocator never finish stopping after a SIGTERM
/// (`FAILPOINTS=allocator-stop-hangs=return`), to prove that the operator's shutdown limit
/// holds (`tests/operator_leader.rs`); inert without the variable, as every failpoint is.
pub const ALLOCATOR_STOP_HANGS: &str = "allocator-stop-hangs";

/// Never returns when failpoint `point` is set; returns at once otherwise.
pub async fn hang_if_asked(point: &str) {
    if asked(point) {
        std::future::pending::<()>().await;
    }
}

fn asked(point: &str) -> bool {
    fail::fail_point!(point, |_| true);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_controller_is_asked_to_panic() {
        let asked =
            BTreeMap::from([(PANIC_ANNOTATION.to_owned(), "backend-controller".to_owned())]);
        panic_if_asked("provider-controller", &asked);
        panic_if_asked("provider-controller", &BTreeMap::new());
        let panicked = std::panic::catch_unwind(|| panic_if_asked("backend-controller", &asked));
        // Unit tests are debug builds, where the trigger is live.
        assert!(panicked.is_err());
    }
}
