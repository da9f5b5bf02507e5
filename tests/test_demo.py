"""The shipped demo model: transcribe.py with no --model uses it, and it gets the bundled samples right."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from proslushka.metrics import cer

DEMO = ROOT / "models" / "demo.onnx"
SAMPLES = ROOT / "samples"


def test_demo_model_is_shipped_small():
    assert DEMO.is_file(), "models/demo.onnx is missing: `make demo` builds it"
    assert DEMO.stat().st_size <= 30 * 2**20


@pytest.mark.parametrize(
    "args, limit",
    [([], 0.05), (["--lm", "none"], 0.10)],  # measured: 0.0% with the shipped LM, 5.3% greedy (v1: 7.9%)
    ids=["default-lm", "greedy"],
)
def test_demo_model_transcribes_the_samples(tmp_path, args, limit):
    rows = [json.loads(line) for line in (SAMPLES / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    clips = [str(SAMPLES / r["audio_filepath"]) for r in rows]
    # run from elsewhere, as a user would: the default model is found beside transcribe.py, not in the cwd
    done = subprocess.run(
        [sys.executable, str(ROOT / "transcribe.py"), *args, *clips],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    named = [line.split("\t", 1) for line in done.stdout.splitlines()]  # several inputs: PATH<tab>TEXT lines
    assert [path for path, _ in named] == clips
    hyps = [text for _, text in named]
    assert cer([r["text"] for r in rows], hyps) <= limit, list(zip([r["text"] for r in rows], hyps, strict=True))
