import base64
import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from conftest import AUDIO, ROOT
from onnx_models import bursts, energy_onnx, write_wav

from proslushka import serverless


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("PROSLUSHKA_MODEL", str(energy_onnx(tmp_path)))
    monkeypatch.setattr(serverless, "_transcriber", None)


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("a") / "two_words.wav", bursts([(0.2, 0.6), (1.0, 1.5)], 2.0)).read_bytes()


def api_gateway(body, b64):
    """A REST API (v1) proxy event as API Gateway sends it, trimmed of the parts the handler does not read."""
    return {
        "resource": "/transcribe", "path": "/transcribe", "httpMethod": "POST",
        "headers": {"Content-Type": "application/octet-stream" if b64 else "application/json"},
        "queryStringParameters": None, "pathParameters": None,
        "requestContext": {"resourcePath": "/transcribe", "httpMethod": "POST", "stage": "prod"},
        "body": body, "isBase64Encoded": b64,
    }  # fmt: skip


def call(event):
    r = serverless.handler(event, None)
    assert r["headers"]["Content-Type"].startswith("application/json") and "Traceback" not in r["body"]
    return r["statusCode"], json.loads(r["body"])


def test_good_requests(model, wav):
    b64 = base64.b64encode(wav).decode()
    for event in (
        api_gateway(b64, True),  # binary body
        api_gateway(json.dumps({"audio_base64": b64}), False),  # JSON body
        api_gateway(base64.b64encode(json.dumps({"audio_base64": b64}).encode()).decode(), True),  # HTTP API v2
        api_gateway(b64, False),  # base64 sent as text
        {"audio_base64": b64[:40] + "\n" + b64[40:]},  # a direct invocation, base64 with a line break
    ):
        status, body = call(event)
        assert status == 200, body
        assert body["text"] == "а а" and body["duration"] == 2.0
        assert [w["word"] for w in body["words"]] == ["а", "а"]
        assert abs(body["words"][0]["start"] - 0.2) <= 0.02 and abs(body["words"][1]["end"] - 1.5) <= 0.03


def test_compressed_audio(model):
    status, body = call(api_gateway(base64.b64encode((AUDIO / "utt2.opus").read_bytes()).decode(), True))
    assert status == 200 and body["text"] and abs(body["duration"] - 3.99) < 0.01


@pytest.mark.parametrize(
    "event, reason",
    [
        (api_gateway("@@@ not base64 @@@", True), "the body is not valid base64"),
        (api_gateway(json.dumps({"audio_base64": "%%%"}), False), "audio_base64 is not valid base64"),
        (api_gateway(base64.b64encode(b"hello, this is not audio at all" * 10).decode(), True), "not readable audio"),
        (api_gateway("", True), "empty body"),
        (api_gateway(None, False), "empty body"),
        ({"audio_base64": ""}, "audio_base64 is empty"),
        ({"audio_base64": 42}, "audio_base64 is not a base64 string"),
        (api_gateway(json.dumps({"audio": "x"}), False), "the JSON body has no audio_base64"),
        (api_gateway("{not json", False), "the body is not valid JSON"),
        ("just a string", "the event is not a JSON object"),
    ],
)
def test_bad_requests_get_400_with_a_reason(model, event, reason):
    status, body = call(event)
    assert status == 400 and reason in body["error"] and "\n" not in body["error"]


def test_a_body_over_the_limit_gets_413(model, wav, monkeypatch):
    monkeypatch.setenv("PROSLUSHKA_MAX_BODY_MB", "0.01")  # the 2 s WAV is 64 kB, 85 kB as base64
    for event in (api_gateway(base64.b64encode(wav).decode(), True), {"audio_base64": base64.b64encode(wav).decode()}):
        status, body = call(event)
        assert status == 413 and "over the limit of 0.01 MB (PROSLUSHKA_MAX_BODY_MB)" in body["error"]


def test_audio_over_the_duration_limit_gets_413_in_bounded_memory(model, wav, monkeypatch, tmp_path):
    monkeypatch.setenv("PROSLUSHKA_MAX_SECONDS", "1.5")
    status, body = call({"audio_base64": base64.b64encode(wav).decode()})
    assert status == 413 and "longer than the limit of 1.5 s (PROSLUSHKA_MAX_SECONDS)" in body["error"]

    with sf.SoundFile(tmp_path / "silence.opus", "w", 16000, 1, format="OGG", subtype="OPUS") as f:
        for _ in range(18):  # 3 minutes of silence: a few kB
            f.write(np.zeros(160000, np.int16))
    monkeypatch.setenv("PROSLUSHKA_MAX_SECONDS", "60")
    tracemalloc.start()
    status, body = call({"audio_base64": base64.b64encode((tmp_path / "silence.opus").read_bytes()).decode()})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert status == 413 and "180 s of audio" in body["error"]
    assert peak < 5e6  # refused from the header: nothing decoded (all of it would be 11.5 MB as float32)


@pytest.mark.parametrize("value", ["0", "-1", "lots"])
def test_a_misconfigured_limit_is_a_500_that_is_logged(model, wav, monkeypatch, caplog, value):
    monkeypatch.setenv("PROSLUSHKA_MAX_SECONDS", value)
    status, body = call({"audio_base64": base64.b64encode(wav).decode()})
    assert status == 500 and "misconfigured" in body["error"] and "PROSLUSHKA_MAX_SECONDS" in caplog.text


def test_the_model_loads_once_per_container(model, wav, monkeypatch):
    made = []
    real = serverless.Transcriber
    monkeypatch.setattr(serverless, "Transcriber", lambda *a, **k: made.append(1) or real(*a, **k))
    event = {"audio_base64": base64.b64encode(wav).decode()}
    assert [call(event)[0] for _ in range(3)] == [200, 200, 200] and len(made) == 1


def test_failures_inside_give_500_without_internals(model, wav, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(serverless.Transcriber, "transcribe_audio", boom)
    status, body = call({"audio_base64": base64.b64encode(wav).decode()})
    assert status == 500 and body == {"error": "internal error"} and "secret internals" in caplog.text
    monkeypatch.setenv("PROSLUSHKA_MODEL", "/nowhere/model.onnx")
    monkeypatch.setattr(serverless, "_transcriber", None)
    status, body = call({"audio_base64": base64.b64encode(wav).decode()})
    assert status == 500 and "could not be loaded" in body["error"]


def test_inference_modules_never_import_torch():
    code = (
        "import sys, transcribe, proslushka.serverless, proslushka.formats, proslushka.segment,"
        " proslushka.manifest, proslushka.infer, proslushka.metrics; print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_the_bundled_lm_goes_with_the_bundled_model_only(tmp_path, monkeypatch, caplog):
    """A bundle carries lm.bin for its model.onnx; PROSLUSHKA_MODEL naming another model drops it (said in the log),
    unless that model is the one the LM was tuned for, or PROSLUSHKA_LM asks for it."""
    import shutil

    from onnx_models import fixture_onnx

    from proslushka.decode import model_identity

    task = tmp_path / "task"
    task.mkdir()
    energy = energy_onnx(tmp_path)
    shutil.copyfile(energy, task / "model.onnx")
    shutil.copyfile(ROOT / "tests" / "data" / "lm" / "tiny.bin", task / "lm.bin")
    (task / "lm.json").write_text(json.dumps({"tuned_on": {"model": "energy.onnx", **model_identity(energy)}}))
    monkeypatch.setattr(serverless, "ROOT", task)
    monkeypatch.delenv("PROSLUSHKA_LM", raising=False)

    def lm_used(model=None, lm=None):
        for name, value in (("PROSLUSHKA_MODEL", model), ("PROSLUSHKA_LM", lm)):
            monkeypatch.setenv(name, str(value)) if value else monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(serverless, "_transcriber", None)
        return serverless.transcriber().decoder is not None

    assert lm_used()  # the bundle's own model
    assert lm_used(model=energy)  # another path, the same content
    other = fixture_onnx(tmp_path)
    assert not caplog.text
    assert not lm_used(model=other)
    assert f"{other}: the bundled lm.bin is tuned for another model; decoding greedily" in caplog.text
    assert lm_used(model=other, lm=task / "lm.bin")  # asked for
