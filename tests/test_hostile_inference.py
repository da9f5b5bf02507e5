"""Hostile input to transcribe.py and the transcriber: bad ONNX metadata and unusable output paths get one line
naming the file and exit 2 before any audio is read; a bad manifest row's audio is reported with its line."""

import json
import subprocess
import sys

import onnx
import pytest
from conftest import AUDIO, ROOT
from onnx_models import energy_onnx

from proslushka.infer import ModelError, Transcriber


def _with_metadata(tmp_path, name, **changes):
    model = onnx.load(str(energy_onnx(tmp_path)))
    meta = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        if key == "feature_config" and isinstance(value, dict):
            value = json.dumps({**json.loads(meta["feature_config"]), **value})
        meta[key] = value
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


BAD_METADATA = {
    "short_labels": ({"labels": json.dumps(list(" абв"))}, "outputs but the metadata 4 labels"),
    "labels_not_strings": ({"labels": json.dumps([1, 2, 3])}, "distinct single characters"),
    "labels_not_json": ({"labels": "абв"}, "unusable ONNX metadata"),
    "sample_rate_0": ({"feature_config": {"sample_rate": 0}}, "sample_rate must be a number from 1000"),
    "window_over_n_fft": ({"feature_config": {"window_size": 0.05}}, "<= n_fft"),
    "feature_config_list": ({"feature_config": "[1, 2]"}, "must be a mapping"),
    "stride_0": ({"subsampling_factor": "0"}, "subsampling_factor must be an integer from 1"),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_bad_metadata_is_one_clear_error(tmp_path, case):
    changes, reason = BAD_METADATA[case]
    path = _with_metadata(tmp_path, case, **changes)
    with pytest.raises(ModelError) as e:
        Transcriber(path)
    assert str(e.value).startswith(str(path)) and reason in str(e.value) and "\n" not in str(e.value)
    r = _transcribe(AUDIO / "utt1.wav", "--model", path, "--lm", "none")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {e.value}"]


def _transcribe(*args):
    return subprocess.run([sys.executable, str(ROOT / "transcribe.py"), *map(str, args)], capture_output=True,
                          text=True)  # fmt: skip


def test_unusable_outputs_are_refused_before_any_work(tmp_path):
    model = energy_onnx(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    blocker = work / "a_file"
    blocker.write_text("x")
    (work / "m.jsonl").write_text(json.dumps({"audio_filepath": str(AUDIO / "utt1.wav"), "text": "а"}) + "\n")
    cases = [
        (["-o", blocker / "out.txt"], str(blocker)),
        (["-o", work], "is a folder"),
        (["--output_dir", blocker], str(blocker)),
        (["--manifest", work / "m.jsonl", "--report", blocker / "r.tsv"], str(blocker)),
    ]
    for extra, named in cases:
        r = _transcribe(AUDIO / "utt1.wav", "--model", model, "--lm", "none", *extra)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and named in lines[0], (extra, r.stderr)
    assert blocker.read_text() == "x" and sorted(p.name for p in work.iterdir()) == ["a_file", "m.jsonl"]


def test_bad_audio_in_a_manifest_names_the_row(tmp_path):
    manifest = tmp_path / "m.jsonl"
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wave file" * 10)
    rows = [{"audio_filepath": str(AUDIO / "utt1.wav"), "text": "а"}, {"audio_filepath": "junk.wav", "text": "б"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = _transcribe("--manifest", manifest, "--model", energy_onnx(tmp_path), "--lm", "none")
    assert r.returncode == 1
    bad = [ln for ln in r.stderr.splitlines() if "junk.wav" in ln]
    assert len(bad) == 1 and bad[0].startswith(f"{manifest}:2: ")


def test_a_name_too_long_fails_only_that_file(tmp_path):
    long_name = tmp_path / ("x" * 300 + ".wav")
    r = _transcribe(long_name, AUDIO / "utt1.wav", "--model", energy_onnx(tmp_path), "--lm", "none")
    assert r.returncode == 1 and r.stdout.count("\n") == 1  # the good file's transcript
    errors = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if "x" * 50 in ln]  # not the progress bar
    assert len(errors) == 1 and errors[0].startswith(str(long_name)) and "name too long" in errors[0]
