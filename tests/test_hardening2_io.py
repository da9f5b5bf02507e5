"""Hardening, round 2 (issue 26): hostile request bodies, test archives, mirrors and batch sizes, each met with one
line (or one 400) and bounded memory."""

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from onnx_models import bursts, energy_onnx, write_wav

import transcribe
from proslushka import golos, serverless


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("PROSLUSHKA_MODEL", str(energy_onnx(tmp_path)))
    monkeypatch.setattr(serverless, "_transcriber", None)


def deep(n: int) -> str:
    return '{"audio_base64": "AAAA", "x": ' + "[" * n + "]" * n + "}"


@pytest.mark.parametrize(
    "body, reason",
    [
        (deep(10_000), "the body is not valid JSON (nested too deeply)"),
        (deep(100_000), "the body is not valid JSON (nested too deeply)"),
        ('{"x": ' + "9" * 5000 + ', "audio_base64": "AAAA"}', "the body is not valid JSON (a number too long)"),
        ('{"audio_base64": "\ud800"}', "audio_base64 is not valid base64"),  # a lone surrogate in the event's body
        ('{"audio_base64": "AAAA",}', "the body is not valid JSON (Expecting property name"),
        ('{"audio_base64": ["AAAA"]}', "audio_base64 is not a base64 string"),
        ('{"audio_base64": null}', "audio_base64 is not a base64 string"),
    ],
    ids=["deep-10k", "deep-100k", "5000-digits", "surrogate", "trailing-comma", "list", "null"],
)
def test_malformed_json_bodies_get_400_with_a_reason(model, body, reason):
    as_binary = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode()  # API Gateway's binary media
    for event in ({"body": body, "isBase64Encoded": False}, {"body": as_binary, "isBase64Encoded": True}):
        r = serverless.handler(event, None)
        error = json.loads(r["body"])["error"]
        assert r["statusCode"] == 400 and error.startswith(reason) and "\n" not in error, error


@pytest.mark.parametrize(
    "event, reason",
    [
        ({"body": 42}, "the body is not text"),
        ({"body": ["AAAA"], "isBase64Encoded": True}, "the body is not text"),
        ({"audio_base64": {"nested": "AAAA"}}, "audio_base64 is not a base64 string"),
        ([{"audio_base64": "AAAA"}], "the event is not a JSON object"),
        (None, "the event is not a JSON object"),
    ],
)
def test_events_of_the_wrong_types_get_400(model, event, reason):
    r = serverless.handler(event, None)
    assert r["statusCode"] == 400 and json.loads(r["body"])["error"] == reason


def test_a_binary_body_that_is_not_utf8_json_gets_400(model):
    event = {"body": base64.b64encode(b'{"audio_base64": "\xff\xfe"}').decode(), "isBase64Encoded": True}
    r = serverless.handler(event, None)
    assert r["statusCode"] == 400 and json.loads(r["body"])["error"] == "the body is not valid JSON (not UTF-8)"


def golos_tar(path, members: dict[str, bytes], mode: str = "w") -> Path:
    """A test.tar in Golos's layout (test/DOMAIN/...) holding `members`, written to `path`."""
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"test/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


ROW = b'{"audio_filepath": "files/a.wav", "text": "a", "duration": 1}\n'
MANIFESTS = {f"{d}/{d}.jsonl": ROW for d in golos.DOMAINS}


def golos_eval(tmp_path, test_tar) -> list[str]:
    """`golos eval --test_tar test_tar` in a subprocess (a hang fails the test instead of stopping it): its
    exit status and stderr lines."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not reached")
    cmd = [sys.executable, "-m", "proslushka.golos", "eval", "--model", str(model), "--test_tar", str(test_tar),
           "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out")]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return [r.returncode, *r.stderr.splitlines()]


def test_golos_eval_on_random_bytes_says_one_line_naming_the_file(tmp_path):
    tar = tmp_path / "test.tar"
    tar.write_bytes(np.random.default_rng(0).bytes(100_000))
    assert golos_eval(tmp_path, tar) == [1, f"error: {tar}: not a tar archive (plain, gzip, bzip2 or xz)"]
    assert not (tmp_path / "cache" / "golos_test").exists()


def test_golos_eval_on_a_device_or_a_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "fifo.tar"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo):
        why = "not a regular file (a device, FIFO or folder); give the test.tar file"
        assert golos_eval(tmp_path, path) == [1, f"error: {path}: {why}"]


def test_golos_eval_refuses_a_member_over_the_ceiling_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(golos, "MAX_MEMBER", 100_000)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not reached")
    members = MANIFESTS | {"crowd/files/a.wav": bytes(200_000)}  # after the manifests: those are unpacked first
    why = "is 0.2 MB, over the 0.1 MB a Golos test clip or manifest can be; not Golos's test.tar?"
    for tar in (tmp_path / "test.tar.gz", tmp_path / "c" / "golos_test" / "test.tar.gz"):  # the second in the cache
        tar.parent.mkdir(parents=True, exist_ok=True)
        golos_tar(tar, members, "w:gz")
        assert (
            golos.main(["eval", "--model", str(model), "--test_tar", str(tar), "--cache_dir", str(tmp_path / "c")]) == 1
        )
        assert capsys.readouterr().err.splitlines()[-1] == f"error: {tar}: test/crowd/files/a.wav {why}"
        left = sorted(p.relative_to(tmp_path) for p in (tmp_path / "c").rglob("*"))
        assert left == ([] if tar.parent == tmp_path else [Path("c/golos_test"), Path("c/golos_test/test.tar.gz")])


def test_golos_members_are_unpacked_in_blocks(tmp_path):
    wav = np.random.default_rng(1).bytes(16_000_000)  # 8 minutes of 16 kHz 16-bit audio, under the ceiling
    tar = golos_tar(tmp_path / "test.tar.gz", MANIFESTS | {"farfield/files/a.wav": wav}, "w:gz")
    del wav
    tracemalloc.start()
    try:
        manifests = golos.unpack_test(tar, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4e6, f"{peak / 1e6:.1f} MB"  # a 1 MB block and the gzip reader's buffers, not the member
    assert (tmp_path / "out" / "farfield" / "files" / "a.wav").stat().st_size == 16_000_000
    assert manifests == {d: tmp_path / "out" / d / f"{d}.jsonl" for d in golos.DOMAINS}


@pytest.mark.parametrize(
    "flags, seconds",
    [(["--batch_size", "100000"], "2000000"), (["--batch_size", "33"], "660"),
     (["--batch_size", "2", "--max_chunk_seconds", "500.5"], "1001")],
)  # fmt: skip
def test_batches_over_the_audio_ceiling_are_refused_in_one_line(capsys, tmp_path, flags, seconds):
    with pytest.raises(SystemExit) as e:
        transcribe.main([str(tmp_path / "never-read.wav"), *flags])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and last.endswith(
        f"error: --batch_size times --max_chunk_seconds is {seconds} s of audio a run, over the ceiling of 640 s "
        "(memory grows with it)"
    )


def test_a_batch_at_the_audio_ceiling_is_accepted(capsys, tmp_path):
    wav = write_wav(tmp_path / "a.wav", bursts([(0.2, 0.6)], 1.0))
    for flags in (["--batch_size", "32"], ["--batch_size", "1", "--max_chunk_seconds", "640"]):
        assert transcribe.main([str(wav), "--model", str(energy_onnx(tmp_path)), "--lm", "none", *flags]) == 0
    assert capsys.readouterr().out == "а\nа\n"
