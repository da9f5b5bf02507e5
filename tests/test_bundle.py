import os
import stat
import zipfile

from onnx_models import energy_onnx

from proslushka import bundle
from proslushka.audio import ffmpeg_path

INFERENCE = {f"{m}.py" for m in ("__init__", "audio", "features", "formats", "infer", "segment", "serverless", "text")}


def test_the_bundle_takes_only_the_modules_the_handler_imports():
    assert set(bundle.package_modules()) == INFERENCE  # no model, data, trainer, checkpoint, nemo (torch)


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
    assert names == {"model.onnx", "bin/ffmpeg"} | {f"proslushka/{m}" for m in INFERENCE}

    _extract(tmp_path / "lambda.zip", tmp_path / "task")
    assert os.stat(tmp_path / "task" / "bin" / "ffmpeg").st_mode & stat.S_IXUSR
    result = bundle.smoke_test(tmp_path / "task", isolated=False)  # numpy and onnxruntime from this environment
    assert result["files"]["proslushka.serverless"].startswith(str(tmp_path / "task"))
    assert result["ffmpeg"] == str(tmp_path / "task" / "bin" / "ffmpeg") and not result["torch"]
