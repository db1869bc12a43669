//! kubectl of the server's version, pointed at the local control plane.

use std::io::Write;
use std::process::{Output, Stdio};

use crate::cluster;

/// Runs kubectl with `args` against the local control plane and returns whatever it did.
pub fn kubectl(args: &[&str]) -> Output {
    cluster()
        .kubectl()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("running kubectl {args:?}: {err}"))
}

/// Runs kubectl and returns its stdout; panics with stdout and stderr when it fails.
pub fn kubectl_ok(args: &[&str]) -> String {
    success_or_panic(args, kubectl(args))
}

/// Runs kubectl with `input` on stdin (for `apply -f -`) and returns its stdout; panics with
/// stdout and stderr when it fails.
pub fn kubectl_stdin(args: &[&str], input: &str) -> String {
    success_or_panic(args, kubectl_with_stdin(args, input))
}

/// Runs kubectl with `input` on stdin and returns whatever it did (for expected failures).
pub fn kubectl_with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = cluster()
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("running kubectl {args:?}: {err}"));
    // Written from a thread: a large manifest could fill the pipe while kubectl fills stdout.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child
        .wait_with_output()
        .unwrap_or_else(|err| panic!("waiting for kubectl {args:?}: {err}"));
    writer
        .join()
        .expect("stdin writer panicked")
        .unwrap_or_else(|err| panic!("writing stdin of kubectl {args:?}: {err}"));
    output
}

fn success_or_panic(args: &[&str], output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        panic!(
            "kubectl {args:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
}
