"""A Pipecat bot that needs no model service: Silero VAD (shipped in the pipecat-ai wheel)
finds where the caller stops speaking, then the bot says how long they spoke and plays
their words back.

It is the bot of the `pipecat` provider's end-to-end test (tests/operator_pipecat.rs) and
the smallest thing to deploy when trying the provider. `bot.py` beside it is the same
wiring with real STT, LLM and TTS services.

Run: VOICE_BOT_HOST=0.0.0.0 python parrot_bot.py   (listens on $VOICE_BOT_PORT, 8765)
"""

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voice_operator_pipecat import Session, serve

#: Audio kept from before the VAD fired (it confirms speech only after `start_secs`).
PREROLL_SECONDS = 0.4

#: Longest utterance played back.
MAX_SECONDS = 15.0


class Parrot(FrameProcessor):
    """Collects each utterance and answers with its length and the utterance itself."""

    def __init__(self) -> None:
        super().__init__()
        self._heard = bytearray()
        self._speaking = False
        self._rate = 16_000

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._rate = frame.sample_rate
            self._heard.extend(frame.audio)
            keep = int((MAX_SECONDS if self._speaking else PREROLL_SECONDS) * self._rate) * 2
            del self._heard[: max(0, len(self._heard) - keep)]
            return  # the caller's audio goes no further
        # No STT here, so the VAD's decisions are the user's turns (RTVI reports them).
        if isinstance(frame, VADUserStartedSpeakingFrame) and not self._speaking:
            self._speaking = True
            await self.broadcast_frame(UserStartedSpeakingFrame)
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and self._speaking:
            self._speaking = False
            await self.broadcast_frame(UserStoppedSpeakingFrame)
            seconds = len(self._heard) / 2 / self._rate
            await self.push_frame(
                TTSTextFrame(text=f"You spoke for {seconds:.1f} seconds.", text_type="sentence")
            )
            await self.push_frame(
                TTSAudioRawFrame(audio=bytes(self._heard), sample_rate=self._rate, num_channels=1)
            )
            self._heard.clear()
        await self.push_frame(frame, direction)


async def run_bot(session: Session) -> None:
    transport = session.transport()
    pipeline = Pipeline(
        [
            transport.input(),
            VADProcessor(vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=0.4))),
            Parrot(),
            transport.output(),
        ]
    )
    await session.run(PipelineWorker(pipeline))


if __name__ == "__main__":
    serve(run_bot)
