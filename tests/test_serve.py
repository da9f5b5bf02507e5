"""The server (python -m proslushka.serve) with real clients: the websockets package speaking Vosk's protocol, the
openai package calling the audio API, on 127.0.0.1 at a free port."""

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import openai
import pytest
import soundfile as sf
from aiohttp import web
from conftest import ROOT
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from proslushka.audio import load_audio
from proslushka.formats import to_srt, to_vtt
from proslushka.infer import Transcriber
from proslushka.serve import Limits, make_app

SR = 16000
MODEL = ROOT / "models" / "demo.onnx"
LM = ROOT / "models" / "demo-lm.bin"
LIMITS = Limits(max_streams=2, max_frame_bytes=64000, max_stream_seconds=20, idle_seconds=2, max_body_mb=1,
                max_file_seconds=30)  # fmt: skip
FRAME = 8000  # bytes: 0.25 s, as Vosk's example clients send


@pytest.fixture(scope="module")
def tr() -> Transcriber:
    return Transcriber(MODEL, lm=LM)


@pytest.fixture(scope="module")
def url(tr):
    """The server, on its own thread and event loop, at a port the system picked."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    ready, running = threading.Event(), {}

    async def serve():
        running["loop"], running["stop"] = asyncio.get_running_loop(), asyncio.Event()
        runner = web.AppRunner(make_app(tr, LIMITS, name="demo.onnx"))
        await runner.setup()
        await web.SockSite(runner, sock).start()
        ready.set()
        await running["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    running["loop"].call_soon_threadsafe(running["stop"].set)
    thread.join(10)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Two sample clips with a pause between them and after them, 16-bit."""
    kredit, portret = (load_audio(ROOT / "samples" / f"{n}.opus") for n in ("kredit", "portret"))
    pause = np.zeros(SR, np.float32)
    return np.round(np.concatenate([pause, kredit, pause, portret, pause]) * 32767).astype("<i2")


def wav_bytes(audio: np.ndarray) -> bytes:
    """A whole 16-bit WAV file, header and all."""
    out = io.BytesIO()
    sf.write(out, audio, SR, format="WAV", subtype="PCM_16")
    return out.getvalue()


def health(url: str) -> dict:
    with urllib.request.urlopen(f"http://{url}/health", timeout=10) as r:
        return json.loads(r.read())


def wait_idle(url: str) -> None:
    """Until the server counts no open stream (it notices a closed connection a moment after the client)."""
    for _ in range(100):
        if health(url)["streams"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"streams still open: {health(url)}")


def closed_with(ws) -> tuple[int, str]:
    """(code, reason) the server closed with, reading whatever it still sent first."""
    with pytest.raises(ConnectionClosed) as e:
        while True:
            ws.recv(timeout=10)
    return e.value.rcvd.code, e.value.rcvd.reason


def test_vosk_stream_answers_each_frame_once_and_its_results_are_transcribe_py_s(url, tr, speech):
    want = tr.transcribe_audio(speech.astype(np.float32) / 32768)
    data = speech.tobytes()
    frames = [data[i : i + FRAME] for i in range(0, len(data), FRAME)]
    with connect(f"ws://{url}/") as ws:
        ws.send(json.dumps({"config": {"sample_rate": SR}}))  # not answered, as Vosk's server does
        for frame in frames:  # all sent before any is read: each still gets exactly one answer
            ws.send(frame)
        answers = [json.loads(ws.recv(timeout=30)) for _ in frames]
        ws.send('{"eof" : 1}')
        last = json.loads(ws.recv(timeout=30))
        assert closed_with(ws)[0] == 1000
    assert all(a.keys() == {"partial"} or a.keys() == {"result", "text"} for a in answers)
    results = [a for a in answers if "result" in a] + ([last] if last["text"] else [])
    assert len(results) == 2  # one per clip, the second at its pause (the eof finds nothing left)
    assert last == {"text": ""}
    assert " ".join(r["text"] for r in results) == want.text
    got = [(w["word"], w["start"], w["end"], w["conf"]) for r in results for w in r["result"]]
    assert got == [(w.word, round(w.start, 3), round(w.end, 3), 1.0) for w in want.words]
    first = next(i for i, a in enumerate(answers) if "result" in a)
    assert any(a["partial"].startswith("к чему") for a in answers[:first])  # words showed before their final
    wait_idle(url)


def test_vosk_config_rate_words_and_a_wav_header(url, tr, speech):
    """8 kHz as the config says (resampled), words off; then a whole .wav file as frames, header first."""
    import soxr

    at8k = np.round(soxr.resample(speech.astype(np.float32) / 32768, SR, 8000, "HQ") * 32767).astype("<i2")
    want = tr.transcribe_audio(soxr.resample(at8k.astype(np.float32) / 32768, 8000, SR, "HQ")).text
    results = []
    with connect(f"ws://{url}/") as ws:
        ws.send(json.dumps({"config": {"sample_rate": 8000, "words": 0, "phrase_list": ["ignored"]}}))
        data = at8k.tobytes()
        for i in range(0, len(data), 4000):
            ws.send(data[i : i + 4000])
            results.append(json.loads(ws.recv(timeout=30)))
        ws.send('{"eof": 1}')
        results.append(json.loads(ws.recv(timeout=30)))
    finals = [r for r in results if "text" in r]
    assert all(r.keys() == {"text"} for r in finals)  # words off: no word list
    assert " ".join(r["text"] for r in finals if r["text"]) == want
    data, results = wav_bytes(speech), []
    with connect(f"ws://{url}/") as ws:
        for i in range(0, len(data), FRAME):
            ws.send(data[i : i + FRAME])
            results.append(json.loads(ws.recv(timeout=30)))
        ws.send('{"eof" : 1}')
        results.append(json.loads(ws.recv(timeout=30)))
    offline = tr.transcribe_audio(speech.astype(np.float32) / 32768)
    assert " ".join(r["text"] for r in results if r.get("text")) == offline.text
    wait_idle(url)


@pytest.mark.parametrize(
    "messages, code, reason",
    [
        (["hello"], 1003, "must be config, eof or reset"),
        (['{"config": {"sample_rate": "fast"}}'], 1007, "sample_rate must be a number"),
        (['{"config": {"sample_rate": 100}}', b"\0\0" * 100], 1007, "sample_rate must be from"),
        (['{"config": [16000]}'], 1007, "config must be a JSON object"),
        ([b"\0\0" * 100, '{"config": {"sample_rate": 8000}}'], 1008, "config after audio"),
        ([b"OggS" + bytes(1000)], 1003, "not raw PCM but an Ogg file"),
        ([wav_bytes(np.zeros((100, 2)))], 1003, "not 16-bit mono PCM"),  # stereo
        ([bytes(64001)], 1009, ""),  # over max_frame_bytes: aiohttp's own close, the standard's code for it
        ([bytes(64000)] * 11, 1009, "over the limit of 20 s"),  # 11 × 2 s of audio
        ([b"\0\0" * 100], 1008, "no message for 2 s"),  # and then nothing: a stalled client
    ],
)
def test_bad_input_closes_that_stream_with_a_reason_and_the_server_goes_on(url, messages, code, reason):
    with connect(f"ws://{url}/") as ws:
        for m in messages:
            ws.send(m)
        got = closed_with(ws)
    assert got[0] == code and reason in got[1]
    wait_idle(url)
    assert health(url)["status"] == "ok"


def test_streams_over_the_limit_are_told_to_come_back_and_vanished_clients_are_let_go(url):
    with connect(f"ws://{url}/") as a, connect(f"ws://{url}/") as b:
        a.send(bytes(3200))
        b.send(bytes(3200))
        assert json.loads(a.recv(timeout=10)) == json.loads(b.recv(timeout=10)) == {"partial": ""}
        assert health(url)["streams"] == 2
        with connect(f"ws://{url}/") as c:
            assert closed_with(c) == (1013, "busy: 2 streams")
        b.socket.close()  # gone without a close handshake, mid-stream
        for _ in range(100):
            if health(url)["streams"] == 1:
                break
            time.sleep(0.05)
        assert health(url)["streams"] == 1
        with connect(f"ws://{url}/") as c:  # its place is free again
            c.send(bytes(3200))
            assert json.loads(c.recv(timeout=10)) == {"partial": ""}
    wait_idle(url)


def test_openai_client_gets_transcribe_py_s_transcript_in_every_format(url, tr):
    path = ROOT / "samples" / "portret.opus"
    want = tr.transcribe_path(path)
    client = openai.OpenAI(base_url=f"http://{url}/v1", api_key="none", max_retries=0)

    def ask(fmt: str, **kw):
        with open(path, "rb") as f:
            return client.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt, **kw)

    assert ask("json", language="ru", prompt="портрет", temperature=0.0).text == want.text
    assert ask("text") == want.text + "\n"
    assert ask("srt") == to_srt(want)
    assert ask("vtt") == to_vtt(want)
    verbose = ask("verbose_json", timestamp_granularities=["word", "segment"])
    assert verbose.text == want.text and verbose.duration == pytest.approx(want.duration, abs=1e-3)
    assert [(w.word, w.start, w.end) for w in verbose.words] == [
        (w.word, round(w.start, 3), round(w.end, 3)) for w in want.words
    ]
    assert " ".join(s.text for s in verbose.segments) == want.text


def test_openai_errors_are_openai_s_and_name_the_problem(url, tmp_path):
    client = openai.OpenAI(base_url=f"http://{url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="clip.wav: not readable audio"):
        client.audio.transcriptions.create(model="m", file=("clip.wav", b"not audio at all"))
    with open(ROOT / "samples" / "kredit.opus", "rb") as f:
        with pytest.raises(openai.BadRequestError, match="response_format must be one of"):
            client.audio.transcriptions.create(model="m", file=f, response_format="xml")
    with pytest.raises(openai.APIStatusError, match="over the limit of 1 MB") as e:
        client.audio.transcriptions.create(model="m", file=("big.wav", bytes(1_100_000)))
    assert e.value.status_code == 413
    long = tmp_path / "long.flac"
    sf.write(long, np.zeros(31 * SR, np.float32), SR)  # 31 s of silence: small as FLAC, over max_file_seconds
    with pytest.raises(openai.APIStatusError, match="long.flac: longer than the limit of 30 s") as e:
        client.audio.transcriptions.create(model="m", file=long.open("rb"))
    assert e.value.status_code == 413
    assert health(url)["status"] == "ok"


def test_the_command_line_serves_and_refuses_a_bad_model(tmp_path):
    def refused(*flags: str) -> str:
        """The one line on stderr of a server that refused to start (exit 2)."""
        run = subprocess.run([sys.executable, "-m", "proslushka.serve", *flags], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert run.returncode == 2, run.stderr
        return run.stderr.strip().splitlines()[-1]

    assert refused("--model", str(tmp_path / "none.onnx")).endswith(
        "none.onnx: no such model file (export one with export.py)"
    )
    for flag, value in [
        ("--max_streams", "0"),
        ("--idle_seconds", "nan"),
        ("--max_body_mb", "inf"),
        ("--port", "70000"),
    ]:
        assert refused(flag, value).startswith(f"python -m proslushka.serve: error: {flag} must be")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    command = [sys.executable, "-m", "proslushka.serve", "--port", str(port), "--lm", "none"]
    server = subprocess.Popen(command, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            try:
                assert health(f"127.0.0.1:{port}") == {"status": "ok", "model": "demo.onnx", "streams": 0,
                                                       "max_streams": 16}  # fmt: skip
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the server did not come up")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:  # the page
            page = r.read().decode()
        assert r.status == 200 and "new WebSocket(" in page and '"/v1/audio/transcriptions"' in page
    finally:
        server.terminate()
        server.wait(10)


def test_the_server_and_the_stream_never_import_torch():
    check = "import sys, proslushka.serve, proslushka.stream; print('torch' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: OpenBLAS starts no thread of its own")
def test_the_server_runs_numpy_on_one_blas_thread():
    """numpy's OpenBLAS keeps a spinning thread per core; the server's one model worker needs none (with them, 16
    streams on 2 cores lagged 3 times longer). Counted: the process's threads after importing the server, against
    the same import with one BLAS thread asked for explicitly, and against numpy on its own (which does start them)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}

    def threads(module: str, blas: str | None = None) -> int:
        check = f"import os, {module}; print(len(os.listdir('/proc/self/task')))"
        extra = {"OPENBLAS_NUM_THREADS": blas} if blas else {}
        out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env={**env, **extra}, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        return int(out.stdout)

    assert threads("numpy") > threads("numpy", "1")  # so the count can tell
    assert threads("proslushka.serve") == threads("proslushka.serve", "1")
