"""python -m proslushka.serve: live and file transcription over HTTP, in one process on one port. No torch.

- ws://HOST:PORT/ speaks Vosk's WebSocket protocol unchanged, so Vosk's clients work as they are: an optional first
  text message {"config": {"sample_rate": N}}, then binary frames of 16-bit mono PCM, each answered with exactly one
  message, {"partial": "..."} or {"result": [{"word", "start", "end", "conf"}...], "text": "..."}; {"eof" : 1}
  answers the last result and closes, {"reset" : 1} answers it and goes on. Recognition is stream.py's.
- POST /v1/audio/transcriptions is OpenAI's audio API (multipart `file`, `model`, `response_format` json, text, srt,
  vtt or verbose_json), so OpenAI(base_url="http://HOST:PORT/v1").audio.transcriptions.create(...) works; the text
  is transcribe.py's for the same file.
- GET / is the web page (web/index.html); GET /health says the server is up and how busy.

Every model call runs on one worker thread, in turns (one Transcriber: its beam decoder is not thread-safe), a
file's chunks one call each, so a long upload does not hold the live streams up for more than a chunk's time.
Every limit has a default (LIMITS); bad input closes that connection (or answers that request) with a reason, and
the others go on. aiohttp serves it: HTTP, WebSocket and multipart in one well-kept package (README).
"""

from __future__ import annotations

import os

# numpy's OpenBLAS (the features' filterbank product) would run on a thread per core that spins between calls: on 2
# cores the server then burns the second one for nothing and 16 streams lag 3 times longer (bench/stream.py --cores
# 2). The one model worker takes turns anyway, so one BLAS thread; read when numpy is first imported, i.e. here
# under `python -m proslushka.serve`.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import json
import math
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from .audio import AudioError, AudioTooLongError, load_audio_bytes
from .cli import fail
from .decode import DecoderError, demo_lm_for, parse_hotwords
from .formats import cues, to_srt, to_vtt
from .infer import ModelError, Transcriber, Transcript
from .stream import PARTIAL_SECONDS, Segment, Stream, chunk_words

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "demo.onnx"
PAGE = Path(__file__).resolve().parent / "web" / "index.html"
BEHIND_SECONDS = 0.2  # a frame that waited this long for the model's worker gets no new partial decode
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
# first bytes of the containers a client might send instead of raw PCM (all but WAV, whose header is skipped)
CONTAINERS = {b"OggS": "an Ogg", b"fLaC": "a FLAC", b"ID3": "an MP3", b"\x1aE\xdf\xa3": "a WebM/Matroska"}


@dataclass
class Limits:
    """What one client may ask of the server; the defaults are the command line's."""

    max_streams: int = 16  # WebSocket streams at once: about what 2 cores keep up with in real time (demo model)
    max_frame_bytes: int = 1 << 20  # one binary frame: 32 s of 16 kHz PCM (Vosk's clients send 0.1-0.5 s)
    max_stream_seconds: float = 3600.0  # of audio in one WebSocket stream
    idle_seconds: float = 30.0  # a stream that sends nothing this long is closed (a stalled or vanished client)
    max_body_mb: float = 25.0  # one POST's body, as OpenAI's own limit
    max_file_seconds: float = 1800.0  # of audio in one POST (decoded whole: 115 MB of samples at this limit)


class ProtocolError(Exception):
    """Bad input on a WebSocket: the connection closes with this code and reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


class Server:
    """The model, the worker thread that runs it, the limits, and the count of open streams."""

    def __init__(
        self,
        tr: Transcriber,
        limits: Limits,
        partial_seconds: float = PARTIAL_SECONDS,
        name: str = "",
        greedy_partials: bool = False,
    ):
        self.tr, self.limits, self.partial_seconds, self.name = tr, limits, partial_seconds, name
        self.greedy_partials = greedy_partials
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="proslushka-model")
        self.streams = 0

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)


SERVER = web.AppKey("server", Server)


def make_app(
    tr: Transcriber,
    limits: Limits | None = None,
    partial_seconds: float = PARTIAL_SECONDS,
    name: str = "",
    greedy_partials: bool = False,
) -> web.Application:
    """The aiohttp application: routes, limits, and the worker thread (shut down with the app)."""
    limits = limits or Limits()
    server = Server(tr, limits, partial_seconds, name, greedy_partials)
    app = web.Application(client_max_size=int(limits.max_body_mb * 1e6))
    app[SERVER] = server

    async def stop(app: web.Application) -> None:
        server.worker.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(stop)
    app.router.add_get("/", root)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    return app


async def root(request: web.Request) -> web.StreamResponse:
    """The WebSocket at / (where Vosk's clients connect), else the page."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await vosk(request)
    if not PAGE.is_file():
        return web.Response(text="proslushka: the web page is not installed; the WebSocket and the API are here\n")
    return web.FileResponse(PAGE, headers={"Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER]
    busy = {"streams": server.streams, "max_streams": server.limits.max_streams}
    return web.json_response({"status": "ok", "model": server.name, **busy})


# ---- Vosk's WebSocket protocol ----


async def vosk(request: web.Request) -> web.WebSocketResponse:
    server: Server = request.app[SERVER]
    ws = web.WebSocketResponse(max_msg_size=server.limits.max_frame_bytes)
    await ws.prepare(request)
    if server.streams >= server.limits.max_streams:
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=f"busy: {server.limits.max_streams} streams".encode())
        return ws
    server.streams += 1
    try:
        await session(server, ws)
    except ProtocolError as e:
        # a close reason holds at most 123 bytes; cut on a character's edge
        await ws.close(code=e.code, message=str(e).encode()[:120].decode("utf-8", "ignore").encode())
    except (ConnectionError, asyncio.TimeoutError):  # the client went away, or stopped reading what we send
        pass
    finally:
        server.streams -= 1
        if not ws.closed:
            await ws.close()
    return ws


async def session(server: Server, ws: web.WebSocketResponse) -> None:
    """One Vosk stream, message by message, until eof, the client's close, or a ProtocolError."""
    limits = server.limits
    stream: Stream | None = None
    rate: float | None = None  # from the config message, else from a WAV header, else the model's
    words = True
    while True:
        try:
            msg = await ws.receive(timeout=limits.idle_seconds)
        except asyncio.TimeoutError:
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION, f"no message for {limits.idle_seconds:g} s") from None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return
        if msg.type == WSMsgType.ERROR:  # aiohttp's own checks; a frame over max_frame_bytes: it has closed with 1009
            raise ProtocolError(ws.close_code or WSCloseCode.PROTOCOL_ERROR, str(msg.data))
        if msg.type == WSMsgType.TEXT:
            command = text_message(msg.data)
            if "config" in command:
                if stream is not None:
                    raise ProtocolError(WSCloseCode.POLICY_VIOLATION, "config after audio: send it first")
                rate, words = read_config(command["config"], rate, words)
                continue
            finals = await server.run(stream.finish) if stream is not None else []
            await send(ws, result(finals, words), limits)
            if command.get("eof"):
                await ws.close()
                return
            continue
        if msg.type != WSMsgType.BINARY:
            raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA, "not a text or binary message")
        data = msg.data
        if stream is None:
            data, rate = wav_header(data, rate)
            try:
                stream = Stream(server.tr, rate, server.partial_seconds, greedy_partials=server.greedy_partials)
            except ValueError as e:
                raise ProtocolError(WSCloseCode.INVALID_TEXT, str(e)) from None
        if stream.seconds + len(data) / 2 / stream.sample_rate > limits.max_stream_seconds:
            raise ProtocolError(
                WSCloseCode.MESSAGE_TOO_BIG, f"the stream is over the limit of {limits.max_stream_seconds:g} s"
            )
        await send(ws, await server.run(step, stream, data, words, time.monotonic()), limits)


def step(stream: Stream, data: bytes, words: bool, sent: float) -> dict:
    """One binary frame's one answer: the result of the segments it ends, else the partial. A frame that waited
    for the worker longer than BEHIND_SECONDS (sent: when it was queued) gets the last partial as it was: under
    more streams than the cores keep up with, partials thin out and the finals keep coming in time."""
    finals = stream.accept(data)
    fresh = time.monotonic() - sent < BEHIND_SECONDS
    return result(finals, words) if finals else {"partial": stream.partial(decode=fresh)}


async def send(ws: web.WebSocketResponse, message: dict, limits: Limits) -> None:
    # bounded: a client that stops reading would otherwise hold its stream open for ever
    await asyncio.wait_for(ws.send_str(json.dumps(message, ensure_ascii=False)), limits.idle_seconds)


def result(finals: list[Segment], words: bool = True) -> dict:
    """Vosk's result message for the segments a frame ended (one message, however many): {"text": ""} for none."""
    found = [w for f in finals for w in f.words]
    text = " ".join(f.text for f in finals if f.text)
    if not words or not found:
        return {"text": text}
    # conf: the model gives no calibrated word confidence; 1.0, as Vosk reports for words it is sure of
    return {
        "result": [{"conf": 1.0, "end": round(w.end, 3), "start": round(w.start, 3), "word": w.word} for w in found],
        "text": text,
    }


def text_message(data: str) -> dict:
    """A text message as a command: {"config": {...}}, {"eof": 1} or {"reset": 1}; ProtocolError otherwise."""
    try:
        command = json.loads(data)
    except (json.JSONDecodeError, RecursionError, ValueError):
        command = None
    if not isinstance(command, dict) or not (command.keys() & {"config", "eof", "reset"}):
        shown = data[:40].encode("ascii", "backslashreplace").decode()
        raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA, f"a text message must be config, eof or reset, not {shown!r}")
    return command


def read_config(config: Any, rate: float | None, words: bool) -> tuple[float | None, bool]:
    """(sample rate, words) from a config message: sample_rate and words are honoured, Vosk's other keys
    (phrase_list, max_alternatives, model, ...) accepted and ignored."""
    if not isinstance(config, dict):
        raise ProtocolError(WSCloseCode.INVALID_TEXT, "config must be a JSON object")
    if "sample_rate" in config:
        value = config["sample_rate"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProtocolError(
                WSCloseCode.INVALID_TEXT, f"config sample_rate must be a number, not {str(value)[:20]!r}"
            )
        rate = float(value)
    if "words" in config:
        words = bool(config["words"])
    return rate, words


def wav_header(data: bytes, rate: float | None) -> tuple[bytes, float | None]:
    """The first frame without a WAV header, if it starts with one (some clients send a whole .wav file), and the
    stream's rate; ProtocolError for a WAV that is not 16-bit mono PCM, and for other containers."""
    for magic, kind in CONTAINERS.items():
        if data.startswith(magic):
            why = f"not raw PCM but {kind} file: send 16-bit mono PCM, or POST the file to /v1/audio/transcriptions"
            raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA, why)
    if not (data.startswith(b"RIFF") and data[8:12] == b"WAVE"):
        return data, rate
    at, fmt = 12, None
    while at + 8 <= len(data):
        tag, size = data[at : at + 4], struct.unpack("<I", data[at + 4 : at + 8])[0]
        if tag == b"fmt " and size >= 16:
            fmt = struct.unpack("<HHIIHH", data[at + 8 : at + 24])
        if tag == b"data":
            if fmt is None or fmt[0] != 1 or fmt[1] != 1 or fmt[5] != 16:
                raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA, "a WAV that is not 16-bit mono PCM")
            if rate is not None and rate != fmt[2]:
                raise ProtocolError(WSCloseCode.INVALID_TEXT, f"config says {rate:g} Hz, the WAV header {fmt[2]} Hz")
            return data[at + 8 :], float(fmt[2])
        at += 8 + size + size % 2
    raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA, "a WAV header without its data chunk in the first frame")


# ---- OpenAI's audio API ----


def api_error(status: int, message: str, param: str | None = None) -> web.Response:
    """An error as OpenAI's API gives it, which its clients raise as BadRequestError etc. with the message."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return web.json_response(body, status=status)


async def transcriptions(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER]
    limits = server.limits
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        return api_error(413, f"the request is over the limit of {limits.max_body_mb:g} MB")
    except ValueError as e:  # not multipart, or a broken body
        return api_error(400, f"not a multipart/form-data request ({str(e)[:100]})")
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        return api_error(400, "no audio: send it as the multipart field 'file'", "file")
    fmt = form.get("response_format", "json")
    if fmt not in RESPONSE_FORMATS:
        return api_error(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", "response_format")
    temperature = form.get("temperature", "0")
    try:  # accepted and ignored (decoding is deterministic), but checked as OpenAI checks it
        ok = isinstance(temperature, str) and 0 <= float(temperature) <= 1
    except ValueError:
        ok = False
    if not ok:
        return api_error(400, "temperature must be a number from 0 to 1", "temperature")
    # model, language and prompt are accepted and ignored: one Russian model; a prompt is context, not hotwords
    name = Path(upload.filename or "audio").name
    try:
        # reading and decoding up to max_body_mb: off the event loop, and off the model's worker, which the live
        # streams wait on
        audio = await asyncio.get_running_loop().run_in_executor(
            None, decode_upload, upload, name, server.tr.sample_rate, limits.max_file_seconds
        )
    except AudioTooLongError:
        return api_error(413, f"{name}: longer than the limit of {limits.max_file_seconds:g} s", "file")
    except AudioError as e:
        return api_error(400, str(e), "file")
    t = await transcribe(server, audio)
    if fmt == "json":
        return web.json_response({"text": t.text}, dumps=dumps)
    if fmt == "text":
        return web.Response(text=t.text + "\n")
    if fmt == "srt":
        return web.Response(text=to_srt(t))
    if fmt == "vtt":
        return web.Response(text=to_vtt(t), content_type="text/vtt")
    return web.json_response(verbose(t), dumps=dumps)


def decode_upload(upload: web.FileField, name: str, sample_rate: int, max_seconds: float) -> np.ndarray:
    return load_audio_bytes(upload.file.read(), name, sample_rate, max_seconds)


async def transcribe(server: Server, audio: np.ndarray) -> Transcript:
    """transcribe.py's transcript of the samples: split's chunks, each decoded as one call on the worker."""
    tr = server.tr
    chunks = await asyncio.get_running_loop().run_in_executor(None, list, tr.chunks(audio))  # not the model's turn
    words = []
    for start, chunk in chunks:
        words += await server.run(chunk_words, tr, start, chunk)
    return Transcript(" ".join(w.word for w in words), words, len(audio) / tr.sample_rate)


def verbose(t: Transcript) -> dict:
    """OpenAI's verbose_json: segments (subtitle cues here) and words, times in seconds."""
    segments = [
        {
            "id": i,
            "seek": 0,
            "start": round(a, 3),
            "end": round(b, 3),
            "text": text,
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": 0.0,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.0,
        }
        for i, (a, b, text) in enumerate(cues(t.words))
    ]
    words = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in t.words]
    return {
        "task": "transcribe",
        "language": "russian",
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": segments,
        "words": words,
    }


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# ---- the command line ----


def default_lm(model: str | Path) -> str:
    """transcribe.py's choice without --lm: the shipped LM with the model it was tuned for, else none (greedy)."""
    return str(demo_lm_for(model) or "none")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m proslushka.serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="ONNX model from export.py (default: the demo model)")
    p.add_argument(
        "--lm",
        help="KenLM model for beam search, or 'none' for greedy (default: models/demo-lm.bin "
        "with the model it was tuned for, greedy with any other)",
    )
    p.add_argument("--hotwords", help='words to favour, e.g. "прослушка:10,квартц" (needs an LM)')
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=2700, help="port (default: %(default)s, Vosk's)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument(
        "--partial_seconds",
        type=float,
        default=PARTIAL_SECONDS,
        help="decode the partial again after this much new audio (default: %(default)s)",
    )
    p.add_argument(
        "--greedy_partials",
        action="store_true",
        help="decode partials greedily (default: with the LM at a beam of 8; greedy costs 0.038 CPU s per audio s "
        "against 0.049, but a word shows in a partial later)",
    )
    for f in fields(Limits):
        kind = int if f.type == "int" else float  # the annotations are strings here (from __future__)
        p.add_argument(f"--{f.name}", type=kind, default=f.default, help=f"(default: {f.default})")
    args = p.parse_args(argv)
    for name in [f.name for f in fields(Limits)] + ["partial_seconds"]:
        if not (math.isfinite(value := getattr(args, name)) and value > 0):
            p.error(f"--{name} must be a positive number, not {value}")
    if not 0 <= args.port < 65536 or (args.threads is not None and args.threads < 0):
        p.error(f"--port must be from 0 to 65535 and --threads at least 0, not {args.port} and {args.threads}")
    lm = args.lm or default_lm(args.model)
    try:
        tr = Transcriber(args.model, threads=args.threads)
        hotwords = parse_hotwords(args.hotwords, tr.labels) if args.hotwords else None
        if lm != "none" or hotwords:
            tr.use_lm(None if lm == "none" else lm, None, hotwords)
    except (ModelError, DecoderError) as e:
        return fail(e, 2)
    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    app = make_app(tr, limits, args.partial_seconds, Path(args.model).name, args.greedy_partials)
    print(
        f"serve: {args.model} (lm: {lm}) on http://{args.host}:{args.port}/ (WebSocket: ws://{args.host}:{args.port}/)",
        file=sys.stderr,
        flush=True,
    )
    try:
        web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    except OSError as e:  # the port is taken, or the address is not this machine's
        return fail(f"{args.host}:{args.port}: cannot listen ({e.strerror or e})", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
