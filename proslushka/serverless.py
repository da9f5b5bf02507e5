"""AWS Lambda behind API Gateway: audio in, JSON with the text and word times out. No torch.

Handler: proslushka.serverless.handler. The request is the audio itself as a base64 body (API Gateway's binary
media), JSON {"audio_base64": "..."} (as the body, or as the whole event for a direct invocation), or base64 text.
The model loads once per container, during Lambda's init phase, and serves every request after. Bad input gets
a 400 with a one-line reason, a body or audio over the limits a 413 with one; anything else a 500 that says
nothing of the internals (the traceback is logged). Limits: PROSLUSHKA_MAX_BODY_MB (default 6, Lambda's own
payload limit) and PROSLUSHKA_MAX_SECONDS of audio (default 600); decoding stops at the limit, so memory stays
bounded by it whatever the file claims. In the bundle (proslushka.bundle) model.onnx and bin/ffmpeg lie beside this
package, and lm.bin (with lm.words and lm.json) when the bundle carries a language model for beam search;
PROSLUSHKA_MODEL, PROSLUSHKA_LM ("none": greedy) and PROSLUSHKA_FFMPEG override them (with PROSLUSHKA_MODEL alone,
the bundled LM only if it was tuned for that model).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from pathlib import Path
from typing import Any

from .audio import AudioError, AudioTooLongError, load_audio_bytes
from .decode import load_settings, tuned_for
from .formats import as_dict
from .infer import Transcriber

ROOT = Path(__file__).resolve().parent.parent  # the bundle's root
log = logging.getLogger(__name__)
LIMITS = {"PROSLUSHKA_MAX_BODY_MB": 6.0, "PROSLUSHKA_MAX_SECONDS": 600.0}  # the defaults

if (ROOT / "bin" / "ffmpeg").is_file():
    os.environ.setdefault("PROSLUSHKA_FFMPEG", str(ROOT / "bin" / "ffmpeg"))

_transcriber: Transcriber | None = None


class RequestError(ValueError):
    """A request that carries no usable audio; the message says why."""


class BodyTooLargeError(RequestError):
    """A body over PROSLUSHKA_MAX_BODY_MB (HTTP 413)."""


def limit(name: str) -> float:
    """A limit from the environment (read per request, so a changed configuration applies at once)."""
    raw = os.environ.get(name) or str(LIMITS[name])
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{name}={raw!r} is not a positive number")
    return value


def transcriber() -> Transcriber:
    """The container's one Transcriber, loaded on first use."""
    global _transcriber
    if _transcriber is None:
        model = os.environ.get("PROSLUSHKA_MODEL") or ROOT / "model.onnx"
        lm = os.environ.get("PROSLUSHKA_LM") or bundled_lm(model)
        _transcriber = Transcriber(model, lm=None if lm == "none" else lm)
    return _transcriber


def bundled_lm(model: str | Path) -> Path | str:
    """The bundle's lm.bin, which the bundle chose for its model.onnx; with PROSLUSHKA_MODEL naming another model,
    only if it was tuned for that one (as transcribe.py decides without --lm); else "none"."""
    lm = ROOT / "lm.bin"
    if not lm.is_file():
        return "none"
    other = Path(model).resolve() != (ROOT / "model.onnx").resolve()
    if other and not tuned_for(load_settings(lm), model):
        log.warning("%s: the bundled lm.bin is tuned for another model; decoding greedily (PROSLUSHKA_LM=%s to use it)",
                    model, lm)  # fmt: skip
        return "none"
    return lm


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """API Gateway proxy integration (REST or HTTP API) → {"text", "duration", "words": [{word, start, end}]}."""
    try:
        tr = transcriber()
    except Exception:
        log.exception("cannot load the model")
        return response(500, {"error": "the model could not be loaded"})
    try:
        max_bytes, max_seconds = limit("PROSLUSHKA_MAX_BODY_MB") * 1e6, limit("PROSLUSHKA_MAX_SECONDS")
    except ValueError as e:
        log.error("bad configuration: %s", e)
        return response(500, {"error": "the function's limits are misconfigured"})
    try:
        audio = load_audio_bytes(audio_bytes(event, max_bytes), "request", tr.sample_rate, max_seconds)
    except BodyTooLargeError as e:
        return response(413, {"error": str(e)})
    except AudioTooLongError as e:
        return response(413, {"error": f"{e} (PROSLUSHKA_MAX_SECONDS)"})
    except (RequestError, AudioError) as e:
        return response(400, {"error": str(e)})
    try:
        return response(200, as_dict(tr.transcribe_audio(audio)))
    except Exception:
        log.exception("transcription failed")
        return response(500, {"error": "internal error"})


def audio_bytes(event: Any, max_bytes: float = LIMITS["PROSLUSHKA_MAX_BODY_MB"] * 1e6) -> bytes:
    """The audio file carried by an API Gateway event (or by a direct invocation's {"audio_base64"})."""
    if not isinstance(event, dict):
        raise RequestError("the event is not a JSON object")
    body = event["audio_base64"] if "audio_base64" in event else event.get("body")
    if isinstance(body, str) and len(body) > max_bytes:  # checked before anything is decoded or copied
        raise BodyTooLargeError(
            f"the body is {len(body) / 1e6:.1f} MB, over the limit of {max_bytes / 1e6:g} MB (PROSLUSHKA_MAX_BODY_MB)"
        )
    if "audio_base64" in event:
        return _base64(event["audio_base64"], "audio_base64")
    if not body:
        raise RequestError("empty body: send the audio (base64), or JSON with audio_base64")
    if not isinstance(body, str):
        raise RequestError("the body is not text")
    if event.get("isBase64Encoded"):
        raw = _base64(body, "the body")
    elif body.lstrip().startswith("{"):
        raw = body.encode("utf-8", "surrogatepass")  # a lone surrogate (a "\\ud800" in the event) as json.loads lets it
    else:  # a client that sent the base64 of the audio as a text body
        raw = _base64(body, "the body")
    if raw.lstrip()[:1] != b"{":  # no audio format starts with "{"
        return raw
    payload = _json(raw)
    if not isinstance(payload, dict) or "audio_base64" not in payload:
        raise RequestError("the JSON body has no audio_base64")
    return _base64(payload["audio_base64"], "audio_base64")


def _json(raw: bytes) -> Any:
    """The body parsed as JSON, or a RequestError saying why not: each way json.loads fails on hostile input."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        why = f"{e.msg} at line {e.lineno} column {e.colno}"
    except UnicodeDecodeError:
        why = "not UTF-8"
    except RecursionError:  # arrays or objects nested thousands deep
        why = "nested too deeply"
    except ValueError:  # Python's limit on int() of a long digit string (4300 digits by default)
        why = "a number too long"
    raise RequestError(f"the body is not valid JSON ({why})")


def _base64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(f"{what} is not a base64 string")
    try:
        data = base64.b64decode("".join(value.split()), validate=True)  # line breaks are common, tolerate them
    except (binascii.Error, ValueError):
        raise RequestError(f"{what} is not valid base64") from None
    if not data:
        raise RequestError(f"{what} is empty: no audio")
    return data


def response(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json; charset=utf-8"},
        "body": json.dumps(body, ensure_ascii=False),
        "isBase64Encoded": False,
    }


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # in Lambda: load during the init phase, not in the first request
    transcriber()
