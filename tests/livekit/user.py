"""A LiveKit participant driven by the tests: the official LiveKit Python SDK joins a room,
publishes a WAV file or a tone as its microphone, paced in real time, listens to the agent
participant's audio, and prints one JSON line to stdout when it leaves:

  joined            it connected to the room
  room              the room's name
  agent_joined      a participant with --agent-identity was in the room
  agent_track       it subscribed to an audio track of that participant
  received_ms       audio received from the agent's track (the SDK delivers 10 ms frames
                    from subscription on, silent or not)
  audible_ms        of which frames louder than SILENT_RMS
  received_rms      RMS of all received samples (int16 scale)
  first_audio_ms    from our first published frame (from joining, when publishing nothing)
                    to the agent's first audible frame, or null
  disconnect_reason why the server ended our stay (DisconnectReason name), or null
  errors            what went wrong on the way

Exits 1 with a message on stderr when it cannot connect. The same script plays the agent in the
harness's own test: join with the agent's token and --tone.
"""

import argparse
import asyncio
import json
import math
import sys
import time
import wave

import numpy as np
from livekit import rtc

# A received 10 ms frame at or below this RMS counts as silence.
SILENT_RMS = 200.0
RATE = 48_000
FRAME_MS = 20


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", required=True, help="ws://host:port of livekit-server")
    p.add_argument("--token", required=True, help="access token (JWT) for the room")
    say = p.add_mutually_exclusive_group()
    say.add_argument("--say", metavar="WAV", help="16-bit mono PCM WAV to publish once")
    say.add_argument("--tone", type=float, metavar="HZ", help="publish a sine at HZ")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to stay")
    p.add_argument(
        "--lead-in",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="publish this much silence before --say, as a caller who waits for the agent "
        "(whatever is said before the agent has subscribed never reaches it)",
    )
    p.add_argument(
        "--until-disconnected",
        action="store_true",
        help="stay until the server ends our stay; --seconds is then the longest wait",
    )
    p.add_argument("--agent-identity", default="voice-agent")
    p.add_argument("--record", metavar="WAV", help="write the agent's audio here (48 kHz mono)")
    return p.parse_args()


def load_speech(args):
    """(sample rate, int16 samples as bytes) to publish, or None for no microphone."""
    if args.say:
        with wave.open(args.say, "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                sys.exit(f"{args.say}: want 16-bit mono PCM")
            rate = w.getframerate()
            silence = bytes(int(rate * args.lead_in) * 2)
            return rate, silence + w.readframes(w.getnframes())
    if args.tone:
        t = np.arange(int(RATE * args.seconds)) / RATE
        return RATE, (8000 * np.sin(2 * np.pi * args.tone * t)).astype("<i2").tobytes()
    return None


class Report:
    def __init__(self):
        self.joined = False
        self.room = None
        self.agent_joined = False
        self.agent_track = False
        self.received_samples = 0
        self.audible_samples = 0
        self.sum_squares = 0.0
        self.first_audio_ms = None
        self.disconnect_reason = None
        self.errors = []
        self.started = None  # monotonic time of our first frame (or of joining)

    def json(self):
        ms = lambda n: round(n * 1000 / RATE)  # noqa: E731
        return json.dumps(
            {
                "joined": self.joined,
                "room": self.room,
                "agent_joined": self.agent_joined,
                "agent_track": self.agent_track,
                "received_ms": ms(self.received_samples),
                "audible_ms": ms(self.audible_samples),
                "received_rms": round(math.sqrt(self.sum_squares / self.received_samples), 1)
                if self.received_samples
                else 0.0,
                "first_audio_ms": self.first_audio_ms,
                "disconnect_reason": self.disconnect_reason,
                "errors": self.errors,
            }
        )


async def listen(track, report, recording):
    """Counts (and records) what the agent's track carries until the track ends."""
    stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
    try:
        async for event in stream:
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            squares = float(np.sum(samples.astype(np.float64) ** 2))
            report.received_samples += len(samples)
            report.sum_squares += squares
            if len(samples) and math.sqrt(squares / len(samples)) > SILENT_RMS:
                report.audible_samples += len(samples)
                if report.first_audio_ms is None and report.started is not None:
                    report.first_audio_ms = round((time.monotonic() - report.started) * 1000)
            if recording is not None:
                recording.writeframes(samples.tobytes())
    except Exception as e:  # noqa: BLE001 — reported, not raised
        report.errors.append(f"listening: {e!r}")
    finally:
        await stream.aclose()


async def speak(room, speech, report):
    """Publishes `speech` as the microphone in FRAME_MS frames paced by the clock, then silence."""
    rate, pcm = speech
    source = rtc.AudioSource(rate, 1, queue_size_ms=100)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await room.local_participant.publish_track(track, options)
    per_frame = rate * FRAME_MS // 1000
    silence = bytes(per_frame * 2)
    start = time.monotonic()
    report.started = start
    n = 0
    while True:
        chunk = pcm[n * per_frame * 2 : (n + 1) * per_frame * 2]
        chunk = chunk + silence[len(chunk) :]
        await source.capture_frame(rtc.AudioFrame(chunk, rate, 1, per_frame))
        n += 1
        delay = start + n * FRAME_MS / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def main():
    args = parse_args()
    speech = load_speech(args)
    report = Report()
    room = rtc.Room()
    left = asyncio.Event()
    listeners = []
    recording = None
    if args.record:
        recording = wave.open(args.record, "wb")
        recording.setnchannels(1)
        recording.setsampwidth(2)
        recording.setframerate(RATE)

    def seen(participant):
        if participant.identity == args.agent_identity:
            report.agent_joined = True

    @room.on("participant_connected")
    def _(participant):
        seen(participant)

    @room.on("track_subscribed")
    def _(track, _publication, participant):
        if participant.identity == args.agent_identity and track.kind == rtc.TrackKind.KIND_AUDIO:
            report.agent_track = True
            listeners.append(asyncio.ensure_future(listen(track, report, recording)))

    @room.on("disconnected")
    def _(reason):
        if not left.is_set():
            report.disconnect_reason = rtc.DisconnectReason.Name(reason)
            left.set()

    try:
        await room.connect(args.url, args.token)
    except rtc.ConnectError as e:
        report.errors.append(f"connect: {e.message}")
        print(report.json(), flush=True)
        print(f"cannot join {args.url}: {e.message}", file=sys.stderr)
        sys.exit(1)
    report.joined = True
    report.room = room.name
    for participant in room.remote_participants.values():
        seen(participant)

    speaker = None
    if speech is not None:
        speaker = asyncio.ensure_future(speak(room, speech, report))
    else:
        report.started = time.monotonic()
    try:
        await asyncio.wait_for(left.wait(), args.seconds)
        if not args.until_disconnected:
            report.errors.append("the server ended our stay early")
    except asyncio.TimeoutError:
        if args.until_disconnected:
            report.errors.append(f"still in the room after {args.seconds} s")
    if speaker is not None:
        if speaker.done() and speaker.exception() is not None:
            report.errors.append(f"speaking: {speaker.exception()!r}")
        speaker.cancel()
    if not left.is_set():
        left.set()
        await room.disconnect()
    for listener in listeners:
        listener.cancel()
    await asyncio.gather(*listeners, return_exceptions=True)
    if recording is not None:
        recording.close()
    print(report.json(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
