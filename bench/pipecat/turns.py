"""Pipecat side of the pipeline benchmark (`cargo run -p voice-bench --bin pipeline`).

Runs the same pipeline shape as voice-operator's STT_TTS backend, on Pipecat's own parts:
VAD (Silero, Pipecat's default) -> end of turn after 300 ms of silence -> OpenAI STT ->
context aggregator -> OpenAI LLM (streamed) -> OpenAI TTS, against the OpenAI-compatible
loopback servers the Rust benchmark serves. The same WAV is fed turn after turn as 20 ms
frames in real time; for every turn it measures end of speech -> first reply audio frame.

Usage: turns.py BASE_URL WAV TURNS SILENCE_MS GAP_MS
Prints one JSON line: {"version": ..., "reply_ms": [...], "vad_reply_ms": [...], "turns": ...,
"cpu_seconds": ..., "wall_seconds": ...}; vad_reply_ms counts from Silero's own end of speech.
"""

import asyncio
import json
import sys
import time
import wave
from importlib.metadata import version

from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    EndFrame,
    InputAudioRawFrame,
    TTSAudioRawFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.openai.stt import OpenAISTTService
from pipecat.services.openai.tts import OpenAITTSService
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

# Pipecat logs every frame decision at DEBUG by default; production runs log warnings.
logger.remove()
logger.add(sys.stderr, level="WARNING")

RATE = 16_000
FRAME = RATE // 50  # 20 ms
LOUD = 500  # mean absolute sample value of a frame that carries speech


class FirstReplyAudio(FrameProcessor):
    """Timestamps the first TTS audio frame after each end of speech."""

    def __init__(self):
        super().__init__()
        self.armed = False
        self.replies = []

    async def process_frame(self, frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame) and self.armed:
            self.armed = False
            self.replies.append(time.monotonic())
        await self.push_frame(frame, direction)


class VadStops(FrameProcessor):
    """Timestamps every VAD stop (Silero's own end of speech, `stop_secs` later)."""

    def __init__(self):
        super().__init__()
        self.stops = []

    async def process_frame(self, frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            self.stops.append(time.monotonic())
        await self.push_frame(frame, direction)


def frames_of(path):
    with wave.open(path) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1, "16 kHz mono WAV expected"
        pcm = w.readframes(w.getnframes())
    samples = len(pcm) // 2
    out = []
    for start in range(0, samples - FRAME + 1, FRAME):
        chunk = pcm[2 * start : 2 * (start + FRAME)]
        values = memoryview(chunk).cast("h")
        loud = sum(abs(v) for v in values) / FRAME > LOUD
        out.append((bytes(chunk), loud))
    return out


async def main():
    base, wav, turns, silence_ms, gap_ms = sys.argv[1:6]
    turns, silence, gap = int(turns), int(silence_ms) / 1000, int(gap_ms) / 1000
    speech = frames_of(wav)
    last_loud = max(i for i, (_, loud) in enumerate(speech) if loud)
    silent = bytes(2 * FRAME)

    # Pipecat splits the silence before end of turn between the VAD's stop_secs and the
    # turn strategy's user_speech_timeout; STT starts at VAD stop, as Pipecat recommends.
    vad_stop = min(0.2, silence)
    vad = VADProcessor(vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=vad_stop)))
    stt = OpenAISTTService(
        api_key="bench", base_url=base, settings=OpenAISTTService.Settings(model="whisper-1")
    )
    llm = OpenAILLMService(
        api_key="bench", base_url=base, settings=OpenAILLMService.Settings(model="m")
    )
    tts = OpenAITTSService(api_key="bench", base_url=base, sample_rate=24_000)
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            user_turn_strategies=UserTurnStrategies(
                stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=silence - vad_stop)]
            )
        ),
    )
    sink = FirstReplyAudio()
    stops = VadStops()
    pipeline = Pipeline([vad, stops, stt, aggregators.user(), llm, tts, sink, aggregators.assistant()])
    task = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=24_000),
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(task)
    running = asyncio.create_task(runner.run())
    await asyncio.sleep(1.0)  # StartFrame reaches every processor

    ends = []
    cpu0, wall0 = time.process_time(), time.monotonic()
    tick = time.monotonic()
    script = [f for f in speech] + [(silent, False)] * int(gap * 50)
    for _ in range(turns):
        for i, (pcm, _) in enumerate(script):
            tick += 0.02
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            await task.queue_frame(InputAudioRawFrame(audio=pcm, sample_rate=RATE, num_channels=1))
            if i == last_loud:
                ends.append(time.monotonic())
                sink.armed = True
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    await task.queue_frame(EndFrame())
    await asyncio.wait_for(running, 10)

    # Pair each reply with the latest end of speech before it: the end in the audio, and
    # the end Silero judged (its stop event less stop_secs).
    reply_ms, vad_reply_ms = [], []
    for at in sink.replies:
        before = [e for e in ends if e <= at]
        if before:
            reply_ms.append((at - before[-1]) * 1000)
        vad_before = [v - vad_stop for v in stops.stops if v <= at]
        if vad_before:
            vad_reply_ms.append((at - vad_before[-1]) * 1000)
    print(
        json.dumps(
            {
                "version": version("pipecat-ai"),
                "reply_ms": reply_ms,
                "vad_reply_ms": vad_reply_ms,
                "turns": turns,
                "cpu_seconds": cpu,
                "wall_seconds": wall,
            }
        )
    )


asyncio.run(main())
