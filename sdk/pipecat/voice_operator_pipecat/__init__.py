"""Run a Pipecat bot as the pipeline of a voice-operator backend (provider `pipecat`).

The voice-operator worker keeps everything between the caller and the bot: WebRTC and
WebSocket transports, join tokens, admission within every cap, drain, health and metrics.
For each session it opens a WebSocket to this server, on the bot container's own port
(`ws://$VOICE_BOT_HOST:$VOICE_BOT_PORT/session`), and speaks Pipecat's own protobuf frames:

- worker -> bot: one JSON text message describing the session (see `Session`), then the
  caller's audio as `AudioRawFrame`s (16 kHz mono PCM, 20 ms each);
- bot -> worker: `AudioRawFrame`s to play (any rate; the worker resamples), an
  `InterruptionFrame` to drop what is queued (barge-in), and `MessageFrame`s: the RTVI
  messages a `PipelineWorker` sends by default (user and bot speaking, transcripts, spoken
  text), which the worker turns into session state, transcripts and turn latency, and this
  package's own (`save_context`, `hang_up`), labelled `voice-operator`.

A bot written for Pipecat's FastAPI WebSocket transport changes two things to run here: it
takes its transport from `session.transport(...)` and runs under `serve(run_bot)` instead of
its own server (docs/pipecat.md).

On SIGTERM (the pod is being replaced) the server takes no new session and exits once the
running ones have ended, as the worker drains; a second SIGTERM exits at once.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pipecat.frames.protobufs.frames_pb2 as frame_protos
import uvicorn
from fastapi import FastAPI, WebSocket
from loguru import logger
from pipecat.pipeline.worker import PipelineWorker
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

__all__ = ["Session", "serve"]

#: The session description's `protocol` this package speaks.
PROTOCOL = 1

#: How long a new connection may take to describe its session.
HELLO_TIMEOUT_SECONDS = 10.0

#: Longest session description accepted (metadata and persisted context included).
MAX_HELLO_BYTES = 1 << 20


class HelloError(ValueError):
    """The worker's session description is missing or malformed."""


@dataclass
class Session:
    """One caller's session, as the worker describes it when it connects.

    Attributes:
        id: The VoiceSession's name.
        user: The end user's id (`spec.userId`).
        metadata: The session's metadata (`spec.metadata`), string to string.
        context: The conversation state this bot saved earlier in the session (by
            `save_context`), handed back when the session resumes on another worker; None
            on a fresh session.
        history: Earlier turns of a resumed session, `{"role": "user"|"agent", "text"}`.
        sample_rate: Rate of the caller's audio on the socket.
    """

    id: str
    user: str
    metadata: dict[str, str]
    context: Any
    history: list[dict[str, str]]
    sample_rate: int
    _websocket: WebSocket
    _worker: PipelineWorker | None = field(default=None, repr=False)

    @classmethod
    def from_hello(cls, raw: str, websocket: WebSocket) -> Session:
        """Parses the worker's first message; raises HelloError naming the bad field."""
        try:
            hello = json.loads(raw)
        except json.JSONDecodeError as e:
            raise HelloError(f"the session description is not JSON: {e}") from e
        if not isinstance(hello, dict) or hello.get("type") != "session":
            raise HelloError('the first message must be {"type": "session", ...}')
        if hello.get("protocol") != PROTOCOL:
            raise HelloError(
                f"protocol {hello.get('protocol')!r} is not {PROTOCOL}: "
                "use the voice-operator-pipecat release that matches the worker"
            )
        metadata = hello.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise HelloError("metadata must be an object")
        rate = hello.get("sampleRate")
        if not isinstance(rate, int) or rate <= 0:
            raise HelloError("sampleRate must be a positive integer")
        return cls(
            id=str(hello.get("session", "")),
            user=str(hello.get("user", "")),
            metadata={str(k): str(v) for k, v in metadata.items()},
            context=hello.get("context"),
            history=list(hello.get("history") or []),
            sample_rate=rate,
            _websocket=websocket,
        )

    def transport(self, **params: Any) -> FastAPIWebsocketTransport:
        """Pipecat's FastAPI WebSocket transport on this session's socket.

        Audio in and out are on, the serializer is Pipecat's protobuf one and the input rate
        is the worker's; `params` (any `FastAPIWebsocketParams` field) override them.
        """
        settings: dict[str, Any] = {
            "audio_in_enabled": True,
            "audio_out_enabled": True,
            "audio_in_sample_rate": self.sample_rate,
            "add_wav_header": False,
            "serializer": ProtobufFrameSerializer(),
        }
        settings.update(params)
        transport = FastAPIWebsocketTransport(
            websocket=self._websocket, params=FastAPIWebsocketParams(**settings)
        )

        @transport.event_handler("on_client_disconnected")
        async def _ended(_transport, _websocket):
            # The caller left, the session was deleted or the worker is gone.
            if self._worker is not None:
                await self._worker.cancel()

        return transport

    async def save_context(self, context: Any) -> None:
        """Stores conversation state (JSON-serialisable) with the session, so a session that
        moves to another worker starts its bot with it (`Session.context`)."""
        await self._send({"type": "context", "context": context})

    async def hang_up(self, reason: str = "the agent hung up") -> None:
        """Ends the session once the audio already sent has played."""
        await self._send({"type": "hangup", "reason": reason})

    async def run(self, worker: PipelineWorker) -> None:
        """Runs `worker` until its pipeline ends or the caller leaves."""
        self._worker = worker
        # Signals belong to `serve`, which drains instead of cutting calls.
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    async def _send(self, message: dict[str, Any]) -> None:
        message = {"label": "voice-operator", **message}
        frame = frame_protos.Frame(message=frame_protos.MessageFrame(data=json.dumps(message)))
        try:
            await self._websocket.send_bytes(frame.SerializeToString())
        except Exception as e:  # the socket closed under us: the session is over anyway
            logger.debug(f"session {self.id}: not sent ({e})")


class _Server(uvicorn.Server):
    """uvicorn, with the worker's drain rule: on SIGTERM finish the sessions, then exit."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.active = 0
        self.draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.draining:
            logger.warning("second signal: exiting with sessions still running")
            self.force_exit = True
            self.should_exit = True
            return
        self.draining = True
        logger.info(f"signal {sig}: draining {self.active} session(s)")
        self.exit_when_idle()

    def exit_when_idle(self) -> None:
        if self.draining and self.active == 0:
            self.should_exit = True


def app(run_bot: Callable[[Session], Awaitable[None]], server: _Server | None = None) -> FastAPI:
    """The ASGI app that runs `run_bot` once per session (exposed for tests and embedding)."""
    api = FastAPI()

    @api.websocket("/session")
    async def session_endpoint(websocket: WebSocket) -> None:
        if server is not None and server.draining:
            # Refused before the handshake: the worker sees HTTP 403 and fails the session.
            await websocket.close(code=1013, reason="the bot is draining")
            return
        await websocket.accept()
        try:
            raw = await asyncio.wait_for(websocket.receive_text(), HELLO_TIMEOUT_SECONDS)
            if len(raw) > MAX_HELLO_BYTES:
                raise HelloError(f"the session description is over {MAX_HELLO_BYTES} bytes")
            session = Session.from_hello(raw, websocket)
        except (HelloError, asyncio.TimeoutError, KeyError, RuntimeError) as e:
            logger.warning(f"refusing a connection: {e}")
            await websocket.close(code=1002, reason=str(e)[:120])
            return
        if server is not None:
            server.active += 1
        logger.info(f"session {session.id} started")
        try:
            await run_bot(session)
        except Exception:
            logger.exception(f"session {session.id}: the bot failed")
        finally:
            logger.info(f"session {session.id} ended")
            try:
                await websocket.close()
            except Exception:
                pass  # already closed by the transport or the worker
            if server is not None:
                server.active -= 1
                server.exit_when_idle()

    return api


def serve(
    run_bot: Callable[[Session], Awaitable[None]],
    *,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Serves sessions until SIGTERM and the last session's end.

    `host` and `port` default to VOICE_BOT_HOST and VOICE_BOT_PORT, which the operator sets
    in the bot container (the pod's IP and `spec.workers.bot.port`), else 127.0.0.1:8765.
    """
    host = host or os.environ.get("VOICE_BOT_HOST", "127.0.0.1")
    port = port or int(os.environ.get("VOICE_BOT_PORT", "8765"))
    config = uvicorn.Config(None, host=host, port=port, lifespan="off", log_level="warning")
    server = _Server(config)
    config.app = app(run_bot, server)
    logger.info(f"voice-operator-pipecat listening on ws://{host}:{port}/session")
    server.run()
