"""tools/make_gpu_pack.py: a random, seeded subset of the training clips within a byte budget, and valid as is."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from proslushka.audio import load_audio
from proslushka.data import read_manifest
from tools import make_gpu_pack

SR = 16000


def name(i: int) -> str:
    return f"клип {'абвгдежзиклмн'[i]}"


def corpus(folder: Path, n: int, seconds: float) -> Path:
    """n WAV clips of tones (each its own length) and their manifest."""
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        t = np.arange(int(SR * seconds * (1 + i / n))) / SR
        sf.write(folder / f"c{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t), SR, subtype="PCM_16")
        rows.append({"audio_filepath": f"c{i}.wav", "text": name(i), "duration": len(t) / SR})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return folder / "manifest.jsonl"


def pack(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["make_gpu_pack.py", *args])
    make_gpu_pack.main()


def test_pack_fills_the_budget_with_a_seeded_draw_and_copies_valid(tmp_path, monkeypatch):
    train, valid = corpus(tmp_path / "train", 12, 0.5), corpus(tmp_path / "valid", 3, 0.3)
    sizes = sorted((tmp_path / "train").glob("*.wav"), key=lambda p: p.stat().st_size)
    budget = sum(p.stat().st_size for p in sizes[:5]) / 2**20  # room for 5 of the smallest, fewer of others
    out = tmp_path / "pack"
    pack(monkeypatch, "--manifest", str(train), "--valid", str(valid), "--out", str(out), "--mib", str(budget))

    packed = read_manifest(out / "train" / "manifest.jsonl")  # checks every file decodes
    source = {u.text: u for u in read_manifest(train)}
    used = sum(Path(u.audio_filepath).stat().st_size for u in packed)
    assert 0 < len(packed) <= 5 and used <= budget * 2**20
    order = np.random.default_rng(0).permutation(12)
    expected = [name(i) for i in order[: len(packed)]]
    assert [u.text for u in packed] == expected  # the seeded draw, in order, until the next clip would not fit
    nxt = Path(source[name(order[len(packed)])].audio_filepath).stat().st_size
    assert used + nxt > budget * 2**20
    for u in packed:  # copied byte for byte, with the durations and texts of the source rows
        s = source[u.text]
        assert Path(u.audio_filepath).read_bytes() == Path(s.audio_filepath).read_bytes()
        assert u.duration == s.duration

    copied = read_manifest(out / "valid" / "manifest.jsonl")
    assert [u.text for u in copied] == [u.text for u in read_manifest(valid)]

    # a second pack into the same folder starts over: nothing of the first is left to mix in
    pack(monkeypatch, "--manifest", str(train), "--valid", "", "--out", str(out), "--mib", str(budget), "--seed", "1")
    files = {p.name for p in (out / "train").rglob("*.wav")}
    assert len(files) == len(read_manifest(out / "train" / "manifest.jsonl"))


def test_pack_reencodes_as_opus_at_a_level(tmp_path, monkeypatch):
    train = corpus(tmp_path / "train", 4, 1.0)
    out = tmp_path / "pack"
    pack(monkeypatch, "--manifest", str(train), "--valid", "", "--out", str(out), "--mib", "10", "--level", "0.97")
    packed = read_manifest(out / "train" / "manifest.jsonl")
    assert len(packed) == 4
    for u in packed:
        assert u.audio_filepath.endswith(".opus") and sf.info(u.audio_filepath).format == "OGG"
        decoded = load_audio(u.audio_filepath)
        assert abs(len(decoded) / SR - u.duration) < 0.03  # same audio, up to the codec's frame rounding
        assert Path(u.audio_filepath).stat().st_size < 0.2 * u.duration * SR * 2  # far below the PCM it came from


def test_a_budget_below_one_clip_and_a_missing_clip_are_one_line_errors(tmp_path, monkeypatch):
    train = corpus(tmp_path / "train", 3, 0.5)
    args = ["--manifest", str(train), "--valid", "", "--out", str(tmp_path / "p")]
    with pytest.raises(SystemExit) as e:
        pack(monkeypatch, *args, "--mib", "0.001")
    assert e.value.code == "make_gpu_pack: not one clip fits in --mib 0.001"
    (tmp_path / "train" / "c1.wav").unlink()
    with pytest.raises(SystemExit) as e:
        pack(monkeypatch, *args, "--mib", "1")
    assert e.value.code.startswith("make_gpu_pack: ") and "c1.wav" in e.value.code and "\n" not in e.value.code
