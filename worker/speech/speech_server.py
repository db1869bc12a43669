"""The worker's speech process: Whisper STT (faster-whisper / CTranslate2), Piper TTS and
the smart-turn v3.2 end-of-turn model (onnxruntime), each model loaded once and shared by
every session of the worker.

The worker starts one of these (`python -c <this file> <socket>`), waits for `ready` on
stdout and opens one Unix-socket connection per request. Closing the connection cancels
the request (barge-in): the next audio write fails and synthesis stops. The process exits
when its stdin closes, so it never outlives the worker.

Wire format, both directions: frames of a little-endian u32 length and that many bytes.
A request is a JSON frame, then (STT, turn) PCM16LE 16 kHz frames ended by an empty frame.
A reply is a JSON frame (`{"text": ...}`, `{"rate": ...}`, `{"complete": p}`,
`{"loaded": ...}` or `{"error": ...}`), then (TTS) PCM16LE frames at `rate`, ended by an
empty frame.
"""

import json
import os
import socketserver
import struct
import sys
import threading

import numpy as np

# Limits on what a request may carry: a JSON header of 64 KiB, audio frames of 1 MiB and
# two minutes of speech per utterance (the worker caps far below these).
MAX_HEADER = 64 * 1024
MAX_FRAME = 1024 * 1024
MAX_SAMPLES = 16_000 * 120
THREADS = int(os.environ.get("VOICE_SPEECH_THREADS", "1"))
WORKERS = int(os.environ.get("VOICE_SPEECH_WORKERS", "2"))

_models = {}
_models_lock = threading.Lock()


class RequestError(Exception):
    """A request this process refuses; its message goes back to the worker."""


def _load(kind, path):
    key = (kind, path)
    with _models_lock:
        model = _models.get(key)
        if model is not None:
            return model
        if kind == "whisper":
            if not os.path.isfile(os.path.join(path, "model.bin")):
                raise RequestError(f"no CTranslate2 Whisper model at {path} (model.bin missing)")
            from faster_whisper import WhisperModel

            model = WhisperModel(
                path,
                device="cpu",
                compute_type="int8",
                cpu_threads=THREADS,
                num_workers=WORKERS,
            )
        elif kind == "piper":
            if not os.path.isfile(path) or not os.path.isfile(path + ".json"):
                raise RequestError(f"no Piper voice at {path} (needs the .onnx and its .onnx.json)")
            from piper import PiperVoice

            model = PiperVoice.load(path)
        elif kind == "smart-turn":
            if not os.path.isfile(path):
                raise RequestError(f"no smart-turn model at {path}")
            import onnxruntime
            from faster_whisper.feature_extractor import FeatureExtractor

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = THREADS
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(path, sess_options=options)
            # The model hears the last 8 s as Whisper's 80-bin log-mel features.
            model = (session, FeatureExtractor(feature_size=80, chunk_length=8))
        else:
            raise RequestError(f"unknown model kind {kind!r}")
        _models[key] = model
        return model


def _read_exact(stream, n):
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _read_frame(stream, limit):
    (n,) = struct.unpack("<I", _read_exact(stream, 4))
    if n > limit:
        raise RequestError(f"frame of {n} bytes exceeds {limit}")
    return _read_exact(stream, n)


def _write_frame(stream, payload):
    stream.write(struct.pack("<I", len(payload)) + payload)
    stream.flush()


def _read_audio(stream):
    """PCM16LE frames until an empty one, as float32 in [-1, 1)."""
    chunks, total = [], 0
    while True:
        frame = _read_frame(stream, MAX_FRAME)
        if not frame:
            break
        total += len(frame) // 2
        if total > MAX_SAMPLES:
            raise RequestError(f"utterance longer than {MAX_SAMPLES // 16_000} s")
        chunks.append(frame[: len(frame) // 2 * 2])
    return np.frombuffer(b"".join(chunks), dtype=np.int16).astype(np.float32) / 32768.0


# The model's answer depends on how much silence follows the speech (on Piper's voice, an
# unfinished "I want to book a table for" scores 0.15 with 200 ms after it and 0.93 with
# 400 ms), and the worker asks some time after its VAD's last speech frame, which trails the
# sound by a varying hangover. So the model always hears the same 200 ms after the last loud
# 10 ms, as Pipecat's analyzer does after its VAD's 200 ms stop.
TRAILING = 16_000 * 200 // 1_000
LOUD_DB = 30.0


def speech_end(audio):
    """The sample after the last 10 ms within LOUD_DB of the loudest 10 ms."""
    frame = 160
    n = audio.size // frame
    if n == 0:
        return audio.size
    rms = np.sqrt((audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1))
    loud = np.nonzero(rms >= rms.max() * 10 ** (-LOUD_DB / 20))[0]
    return int(loud[-1] + 1) * frame if loud.size and rms.max() > 0 else audio.size


def turn_window(audio):
    """The audio up to TRAILING samples after the speech, padded with silence if short."""
    end = speech_end(audio) + TRAILING
    audio = audio[:end]
    return np.pad(audio, (0, end - audio.size))


def _end_of_turn(request, stream):
    session, features = _load("smart-turn", request["model"])
    audio = turn_window(_read_audio(stream))
    window = 8 * 16_000
    audio = audio[-window:]
    audio = np.pad(audio, (window - audio.size, 0))
    # Zero mean, unit variance over the window, as the model was trained.
    audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    mel = features(audio, padding=0)[np.newaxis].astype(np.float32)
    (probability,) = np.asarray(session.run(None, {"input_features": mel})[0]).reshape(-1)[:1]
    return {"complete": float(probability)}


def _transcribe(request, stream):
    model = _load("whisper", request["model"])
    audio = _read_audio(stream)
    if audio.size == 0:
        return {"text": ""}
    segments, _ = model.transcribe(
        audio,
        language=request.get("language") or None,
        beam_size=int(request.get("beam", 1)),
        condition_on_previous_text=False,
        without_timestamps=True,
        vad_filter=False,
    )
    return {"text": " ".join(s.text.strip() for s in segments).strip()}


def _optional_float(value):
    """`None` (the voice's own setting) or the value as a float."""
    return None if value is None else float(value)


def _synthesize(request, stream):
    from piper import SynthesisConfig

    voice = _load("piper", request["model"])
    config = SynthesisConfig(
        length_scale=float(request.get("lengthScale", 1.0)),
        noise_scale=_optional_float(request.get("noiseScale")),
        noise_w_scale=_optional_float(request.get("noiseWScale")),
    )
    _write_frame(stream, json.dumps({"rate": voice.config.sample_rate}).encode())
    for chunk in voice.synthesize(request["text"], syn_config=config):
        # A closed connection (barge-in) raises here and ends the synthesis.
        _write_frame(stream, chunk.audio_int16_bytes)
    _write_frame(stream, b"")


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        try:
            request = json.loads(_read_frame(self.rfile, MAX_HEADER))
            op = request.get("op")
            if op == "stt":
                _write_frame(self.wfile, json.dumps(_transcribe(request, self.rfile)).encode())
            elif op == "turn":
                _write_frame(self.wfile, json.dumps(_end_of_turn(request, self.rfile)).encode())
            elif op == "tts":
                _synthesize(request, self.wfile)
            elif op == "load":
                _load(request["kind"], request["model"])
                _write_frame(self.wfile, json.dumps({"loaded": request["model"]}).encode())
            else:
                raise RequestError(f"unknown op {op!r}")
        except (BrokenPipeError, ConnectionResetError, EOFError):
            pass  # the worker went away (cancelled turn)
        except Exception as e:  # every other failure goes back as the request's error
            try:
                _write_frame(self.wfile, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
            except OSError:
                pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _exit_with_parent():
    sys.stdin.read()
    os._exit(0)


def main():
    path = sys.argv[1]
    server = Server(path, Handler)
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
