"""A stock Pipecat voice bot (OpenAI STT, LLM and TTS, Silero VAD), run by voice-operator.

Compared with the same bot on Pipecat's FastAPI WebSocket transport, two things changed,
marked `voice-operator:` below: the transport comes from `session.transport()` and the
process runs `serve(run_bot)` instead of its own server. The caller's transport, admission,
drain and status are the worker's; docs/pipecat.md.

It reads OPENAI_API_KEY (and OPENAI_BASE_URL for a self-hosted OpenAI-compatible server)
from the bot container's env, e.g. from a Secret:

    env:
      - name: OPENAI_API_KEY
        valueFrom: {secretKeyRef: {name: openai, key: api-key}}
"""

import os

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.openai.stt import OpenAISTTService
from pipecat.services.openai.tts import OpenAITTSService

from voice_operator_pipecat import Session, serve  # voice-operator: the package

SYSTEM = "You are a friendly voice assistant. Answer in one or two short sentences."


async def run_bot(session: Session) -> None:
    transport = session.transport()  # voice-operator: the session's socket, not a server
    base_url = os.environ.get("OPENAI_BASE_URL")
    stt = OpenAISTTService(api_key=os.environ.get("OPENAI_API_KEY"), base_url=base_url)
    llm = OpenAILLMService(api_key=os.environ.get("OPENAI_API_KEY"), base_url=base_url)
    tts = OpenAITTSService(api_key=os.environ.get("OPENAI_API_KEY"), base_url=base_url)
    # The session's own facts (spec.userId, spec.metadata) are the bot's to use.
    context = LLMContext([{"role": "system", "content": f"{SYSTEM} The caller is {session.user}."}])
    aggregators = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    pipeline = Pipeline(
        [
            transport.input(),
            stt,
            aggregators.user(),
            llm,
            tts,
            transport.output(),
            aggregators.assistant(),
        ]
    )
    await session.run(PipelineWorker(pipeline))


if __name__ == "__main__":
    serve(run_bot)  # voice-operator: sessions come from the worker beside this container
