"""Hostile input to transcribe.py and the transcriber: bad ONNX metadata, a graph that does not match it and unusable
output paths get one line naming the file and exit 2 before any audio is read; a bad manifest row's audio is reported
with its line; a stdout that stops taking output ends the run without a traceback."""

import json
import os
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
    "n_mels_80": ({"feature_config": {"n_mels": 80}}, "takes 64 mel bands but its feature_config says n_mels 80"),
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


def _transcribe(*args, stdout=subprocess.PIPE, **kwargs):
    cmd = [sys.executable, str(ROOT / "transcribe.py"), *map(str, args)]
    return subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, **kwargs)


def test_inputs_the_transcriber_does_not_feed_are_one_clear_error(tmp_path):
    model = onnx.load(str(energy_onnx(tmp_path)))
    model.graph.input[0].name = "x"  # audio_signal renamed: onnxruntime would say "Required inputs ([x]) are missing"
    for node in model.graph.node:
        node.input[:] = ["x" if name == "audio_signal" else name for name in node.input]
    path = tmp_path / "renamed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as e:
        Transcriber(path)
    want = "the model's inputs are 'x' (tensor(float)), 'length' (tensor(int64)), not 'audio_signal' (tensor(float))"
    assert str(e.value).startswith(f"{path}: unusable ONNX model ({want}") and "\n" not in str(e.value)
    r = _transcribe(AUDIO / "utt1.wav", "--model", path, "--lm", "none")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {e.value}"]


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


def test_outputs_that_are_inputs_are_refused_before_any_work(tmp_path):
    model = energy_onnx(tmp_path)
    (tmp_path / "victim.wav").write_bytes((AUDIO / "utt1.wav").read_bytes())
    (tmp_path / "clip.json").write_bytes((AUDIO / "utt1.wav").read_bytes())  # a WAV by its content
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "victim.wav", "text": "а"}) + "\n")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    cases = [
        (["victim.wav", "-o", "victim.wav"], "victim.wav: is the input victim.wav"),
        (["victim.wav", "-o", tmp_path / "victim.wav"], f"{tmp_path / 'victim.wav'}: is the input victim.wav"),
        (["--manifest", "m.jsonl", "--report", "m.jsonl"], "m.jsonl: is the input m.jsonl"),
        (["victim.wav", "-o", model], f"{model}: is the input {model}"),
        (["clip.json", "--format", "json", "--output_dir", "."], "clip.json: is the input clip.json"),
    ]
    for args, named in cases:
        r = _transcribe(*args, "--model", model, "--lm", "none", cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"error: {named}; writing there would destroy it"
        ]
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def _bursts_wavs(tmp_path, n):
    from onnx_models import bursts, write_wav

    return [write_wav(tmp_path / f"b{i}.wav", bursts([(0.2, 0.6)], 1.0, seed=i)) for i in range(n)]


def test_a_reader_that_goes_away_ends_the_run_quietly(tmp_path):
    read, write = os.pipe()
    os.close(read)  # `| head -c1` once head has exited: the first write finds no reader
    try:
        r = _transcribe(*_bursts_wavs(tmp_path, 3), "--model", energy_onnx(tmp_path), "--lm", "none", stdout=write)
    finally:
        os.close(write)
    assert r.returncode == 141 and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
    assert "error" not in r.stderr, r.stderr


def test_a_full_or_closed_stdout_is_one_line(tmp_path):
    args = [*_bursts_wavs(tmp_path, 2), "--model", energy_onnx(tmp_path), "--lm", "none"]
    with open("/dev/full", "w") as full:
        r = _transcribe(*args, stdout=full)
    errors = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln and "file/s" not in ln]  # not the bar
    assert r.returncode == 1 and errors == ["error: stdout: cannot write (No space left on device)"], r.stderr
    cmd = " ".join(f"'{a}'" for a in [sys.executable, ROOT / "transcribe.py", *args])
    r = subprocess.run(["bash", "-c", f"{cmd} >&-"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip() == "error: stdout is closed; give -o/--output or --output_dir"
