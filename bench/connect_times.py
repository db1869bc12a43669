#!/usr/bin/env python3
"""Connect time of a stock headless Chromium to a worker over UDP, ICE-TCP and TURN relay.

Runs the worker's own browser tests several times (`worker/tests/ice_tcp.rs`: UDP open, then
UDP to the worker dropped by iptables; `worker/tests/turn_relay.rs`: relay only, through
coturn) and prints, per path, the median with min and max of the time each test prints from
opening the demo page to the peer connection's `connected` (page load and microphone
included), plus which transport Chromium picked when UDP was open.

    python3 bench/connect_times.py [--runs 5]

Needs what those tests need: Debian's chromium and coturn, and root for iptables.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys

# The lines the tests print: "<label>: connected after <duration>; <page state JSON>".
PATHS = {
    "chromium, UDP open": "UDP direct",
    "chromium, UDP dropped": "ICE-TCP (UDP dropped)",
    "chromium over coturn": "TURN relay (coturn, relay=1)",
}
LINE = re.compile(r"^(?P<label>[^:]+): connected after (?:Some\()?(?P<value>[0-9.]+)(?P<unit>ms|s|µs)\)?; (?P<state>\{.*\})$")


def seconds(value, unit):
    return float(value) * {"s": 1.0, "ms": 1e-3, "µs": 1e-6}[unit]


def one_run():
    """Runs both tests once; returns {path: (seconds, picked protocol)}."""
    out = subprocess.run(
        ["cargo", "test", "-q", "-p", "voice-worker", "--test", "ice_tcp", "--test", "turn_relay",
         "--", "--nocapture", "--test-threads=1"],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        sys.exit(f"the browser tests failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    found = {}
    for line in out.stdout.splitlines():
        match = LINE.match(line.strip())
        if match and match["label"] in PATHS:
            state = json.loads(match["state"])
            found[PATHS[match["label"]]] = (
                seconds(match["value"], match["unit"]),
                f'{state.get("localCandidateProtocol")}/{state.get("localCandidateType")}',
            )
    missing = set(PATHS.values()) - set(found)
    if missing:
        sys.exit(f"no connect time printed for {sorted(missing)}:\n{out.stdout[-4000:]}")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "-q", "-p", "voice-worker", "--tests"], check=True)
    samples = {}
    for run in range(args.runs):
        for path, sample in one_run().items():
            samples.setdefault(path, []).append(sample)
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    print(f"{'path':32} {'median':>8} {'min':>8} {'max':>8}  picked (local candidate)")
    for path in PATHS.values():
        times = [t for t, _ in samples[path]]
        picked = sorted({p for _, p in samples[path]})
        print(
            f"{path:32} {statistics.median(times):7.2f}s {min(times):7.2f}s {max(times):7.2f}s  "
            f"{', '.join(picked)} ({len(times)} runs)"
        )


if __name__ == "__main__":
    main()
