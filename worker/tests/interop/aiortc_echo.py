"""An independent WebRTC client (aiortc) against the voice worker's echo session.

Posts a WHIP-style offer with the join token, sends a 1 kHz tone for the given seconds,
records what comes back, hangs up with DELETE, and reports as JSON on stdout; the
received audio is written as raw PCM16 LE mono 48 kHz for the Rust test to analyse.

usage: aiortc_echo.py BASE_URL SESSION TOKEN SECONDS OUT_PCM [HOLD_SECONDS]

HOLD_SECONDS (default 1) is how long the call stays up after the tone, listening.
With AIORTC_SPEECH_PCM naming a raw PCM16 LE mono 48 kHz file, that audio is sent in place
of the tone (SECONDS is then its length).
"""

import asyncio
import fractions
import json
import math
import os
import struct
import sys
import time
import urllib.error
import urllib.request

import aioice.ice

# Loopback only: the tests must not send to any other address of this machine.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from av import AudioFrame  # noqa: E402

RATE = 48000
FRAME = 960  # 20 ms


class Tone(MediaStreamTrack):
    """A 1 kHz tone for `seconds`, then silence, paced in real time."""

    kind = "audio"

    def __init__(self, seconds, speech=None):
        super().__init__()
        self.speech = speech
        self.total = len(speech) if speech is not None else int(seconds * RATE)
        self.pts = 0
        self.start = None
        self.first_tone_at = None

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        wait = self.start + self.pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.pts < self.total:
            if self.first_tone_at is None:
                self.first_tone_at = time.monotonic()
            if self.speech is not None:
                samples = list(self.speech[self.pts : self.pts + FRAME])
                samples += [0] * (FRAME - len(samples))
            else:
                samples = [
                    int(10000 * math.sin(2 * math.pi * 1000 * (self.pts + i) / RATE))
                    for i in range(FRAME)
                ]
        else:
            samples = [0] * FRAME
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(struct.pack("<%dh" % FRAME, *samples))
        frame.sample_rate = RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, RATE)
        self.pts += FRAME
        return frame


def http(method, url, token, body=None, content_type=None):
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Authorization", "Bearer " + token)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


async def main(base, session, token, seconds, out_path, hold=1.0):
    pc = RTCPeerConnection()
    speech = None
    if os.environ.get("AIORTC_SPEECH_PCM"):
        with open(os.environ["AIORTC_SPEECH_PCM"], "rb") as f:
            raw = f.read()
        speech = struct.unpack("<%dh" % (len(raw) // 2), raw[: len(raw) // 2 * 2])
        seconds = len(speech) / RATE
    tone = Tone(seconds, speech)
    pc.addTrack(tone)
    events = []
    channel = pc.createDataChannel("events")
    channel.on("message", lambda message: events.append(json.loads(message)))

    received = bytearray()
    first_loud_at = []
    done = asyncio.Event()

    @pc.on("track")
    def on_track(track):
        async def read():
            while not done.is_set():
                try:
                    frame = await asyncio.wait_for(track.recv(), 2)
                except Exception:
                    break
                channels = len(frame.layout.channels)
                # Plane buffers are padded for alignment: keep only the samples.
                pcm = bytes(frame.planes[0])[: frame.samples * channels * 2]
                mono = struct.unpack("<%dh" % (len(pcm) // 2), pcm)[::channels]
                if not first_loud_at and max((abs(s) for s in mono), default=0) > 3000:
                    first_loud_at.append(time.monotonic())
                received.extend(struct.pack("<%dh" % len(mono), *mono))

        asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    started = time.monotonic()
    status, headers, answer = http(
        "POST",
        f"{base}/v1/sessions/{session}/offer",
        token,
        pc.localDescription.sdp.encode(),
        "application/sdp",
    )
    if status != 201:
        print(json.dumps({"error": f"offer refused: {status} {answer}"}))
        await pc.close()
        return 1
    location = headers.get("Location") or headers.get("location")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    while pc.connectionState not in ("connected", "failed", "closed"):
        if time.monotonic() - started > 15:
            break
        await asyncio.sleep(0.01)
    connected_after = time.monotonic() - started
    state = pc.connectionState
    selected_remote = None
    try:
        # aioice's nominated pair: the worker address the media actually flows to.
        ice = pc.getTransceivers()[0].receiver.transport.transport._connection
        pair = next(iter(ice._nominated.values()))
        selected_remote = "%s:%d" % pair.remote_addr
    except Exception:  # noqa: BLE001 - internals of aioice; absent means unknown
        pass
    if state == "connected":
        await asyncio.sleep(seconds + hold)
    done.set()
    delete_status, _, _ = http("DELETE", base + location, token) if location else (0, None, None)
    await asyncio.sleep(0.2)
    await pc.close()
    with open(out_path, "wb") as out:
        out.write(received)
    rtt = (
        (first_loud_at[0] - tone.first_tone_at) * 1000
        if first_loud_at and tone.first_tone_at
        else None
    )
    print(
        json.dumps(
            {
                "state": state,
                "connect_ms": round(connected_after * 1000, 1),
                "received_samples": len(received) // 2,
                "round_trip_ms": None if rtt is None else round(rtt, 1),
                "delete_status": delete_status,
                "answer_candidates": [
                    line[len("a=candidate:"):]
                    for line in answer.splitlines()
                    if line.startswith("a=candidate:")
                ],
                "selected_remote": selected_remote,
                "events": events,
            }
        )
    )
    return 0


if __name__ == "__main__":
    base, session, token, seconds, out_path = sys.argv[1:6]
    hold = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
    sys.exit(asyncio.run(main(base, session, token, float(seconds), out_path, hold)))
