import os
import stat
import zipfile

import pytest
from conftest import ROOT
from onnx_models import energy_onnx

from proslushka import bundle
from proslushka.audio import ffmpeg_path

INFERENCE = {f"{m}.py" for m in ("__init__", "audio", "features", "formats", "infer", "segment", "serverless", "text")}


def test_the_bundle_takes_only_the_modules_the_handler_imports():
    modules = set(bundle.package_modules())
    assert INFERENCE <= modules
    assert not modules & {f"{m}.py" for m in ("model", "data", "trainer", "checkpoint", "nemo", "onnx_export")}  # torch


def _extract(zip_path, folder):
    """As Lambda does: files with their Unix permissions (Python's zipfile alone drops them)."""
    with zipfile.ZipFile(zip_path) as z:
        for info in z.infolist():
            z.extract(info, folder)
            os.chmod(folder / info.filename, info.external_attr >> 16)


def test_a_bundle_without_dependencies_runs_its_handler(tmp_path):
    ffmpeg = tmp_path / "ffmpeg"  # stands in for the static binary: exec bit and PROSLUSHKA_FFMPEG are what count
    ffmpeg.write_text(f'#!/bin/sh\nexec "{ffmpeg_path()}" "$@"\n')
    ffmpeg.chmod(0o755)
    bundle.stage(tmp_path / "stage", energy_onnx(tmp_path), ffmpeg, python=None, site_packages=False)
    bundle.write_zip(tmp_path / "stage", tmp_path / "lambda.zip")
    names = set(zipfile.ZipFile(tmp_path / "lambda.zip").namelist())
    assert names == {"model.onnx", "bin/ffmpeg"} | {f"proslushka/{m}" for m in bundle.package_modules()}

    _extract(tmp_path / "lambda.zip", tmp_path / "task")
    assert os.stat(tmp_path / "task" / "bin" / "ffmpeg").st_mode & stat.S_IXUSR
    result = bundle.smoke_test(tmp_path / "task", isolated=False)  # numpy and onnxruntime from this environment
    assert result["files"]["proslushka.serverless"].startswith(str(tmp_path / "task"))
    assert result["ffmpeg"] == str(tmp_path / "task" / "bin" / "ffmpeg") and not result["torch"]


SMALL_FFMPEG = ROOT / bundle.SMALL_FFMPEG


@pytest.mark.skipif(
    not os.environ.get("CI") and not SMALL_FFMPEG.is_file(),
    reason="needs tools/build_ffmpeg.sh's ffmpeg (.ci/run builds it)",
)
def test_the_real_bundle_fits_lambda_and_answers(tmp_path, capsys):
    out = tmp_path / "lambda.zip"
    args = ["-o", str(out), "--model", str(ROOT / "models" / "demo.onnx"), "--ffmpeg", str(SMALL_FFMPEG),
            "--lm", str(ROOT / "models" / "demo-lm.bin")]  # fmt: skip
    assert bundle.main([*args, "--site_packages"]) == 0  # its smoke test: opus, ogg, wav, mp3 and m4a
    printed = capsys.readouterr().out
    assert all(f"portret.{ext}: 3.0" in printed for ext in ("opus", "ogg", "wav", "mp3", "m4a")), printed

    _extract(out, tmp_path / "task")
    unpacked = sum(p.stat().st_size for p in (tmp_path / "task").rglob("*") if p.is_file())
    assert unpacked <= 120e6, unpacked
    clip = ROOT / "samples" / "portret.opus"
    result = bundle.smoke_test(tmp_path / "task", [clip])  # isolated: only the bundle's own packages
    ((status, body),) = result["answers"].values()
    assert status == 200 and body["text"] and abs(body["duration"] - 3.01) < 0.01
    assert all(f.startswith(str(tmp_path / "task")) for f in result["files"].values()) and not result["torch"]
    assert result["lm"]  # beam search with the demo LM, inside the 120 MB


class _StagedError(Exception):
    """Stops bundle.main where it would start laying out the bundle (downloads, smoke test)."""


def test_the_demo_lm_is_bundled_only_with_its_model_unless_asked(tmp_path, monkeypatch, capsys):
    staged = []

    def stage(folder, model, ffmpeg, python, site_packages, lm=None):
        staged.append(lm)
        raise _StagedError

    monkeypatch.setattr(bundle, "stage", stage)
    demo, mine = ROOT / "models" / "demo.onnx", energy_onnx(tmp_path)
    for args in (["--model", demo], ["--model", mine], ["--model", mine, "--lm", bundle.DEMO_LM]):
        with pytest.raises(_StagedError):
            bundle.main([str(a) for a in [*args, "--no_ffmpeg", "-o", tmp_path / "x.zip"]])
    assert staged == [bundle.DEMO_LM, None, bundle.DEMO_LM]  # the demo's own; none for another; asked for: bundled
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "lm: demo-lm.bin (tuned for this model; --lm none for a greedy bundle)",
        "lm: none (greedy): demo-lm.bin is tuned for the demo model only; --lm PATH to bundle one",
    ]


def test_a_binary_lm_without_its_words_gets_them_in_the_bundle(tmp_path):
    lm = tmp_path / "golos.bin"  # someone else's KenLM: no .words, no .json beside it
    lm.write_bytes((ROOT / "tests" / "data" / "lm" / "tiny.bin").read_bytes())
    bundle.stage(tmp_path / "stage", energy_onnx(tmp_path), None, python=None, site_packages=False, lm=lm)
    words = (tmp_path / "stage" / "lm.words").read_text(encoding="utf-8").split()
    assert sorted(words) == ["венок", "висел", "квас", "на", "стене"]  # tests/test_lm.py's TINY_ARPA
    assert (tmp_path / "stage" / "lm.bin").read_bytes() == lm.read_bytes() and not (tmp_path / "golos.words").exists()
