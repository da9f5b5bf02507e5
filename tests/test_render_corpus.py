"""tools/render_corpus.py: the ru-synth recipe in the repository, its plan reader, resampler and renderer.

The real renders call espeak-ng and festival, as a user's machine would; CI installs them (.ci/run), elsewhere those
tests run when the programs are there."""

import hashlib
import json
import lzma
import math
import os
import shutil
import subprocess
import wave

import numpy as np
import pytest
import soundfile as sf

from tools import render_corpus as rc

in_ci = bool(os.environ.get("CI"))
needs_espeak = pytest.mark.skipif(
    not in_ci and shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install -y espeak-ng)"
)
needs_festival = pytest.mark.skipif(
    not in_ci and (shutil.which("festival") is None or not rc.festival_has_voice()),
    reason="needs festival and its Russian voice (apt-get install -y festival festvox-ru)",
)


def row(i: int, split: str = "train", engine: str = "espeak-ng", text: str = "мама мыла раму", **settings) -> dict:
    """A plan row in the recipe's format (its field order too)."""
    if engine == "espeak-ng":
        values = {"voice": "ru+m1", "variant": "m1", "speed": 150, "pitch": 50}
        values.update(duration_stretch=None, pitch_shift_cents=None)
    else:
        values = {"voice": "msu_ru_nsh_clunits", "variant": None, "speed": None, "pitch": None}
        values.update(duration_stretch=1.1, pitch_shift_cents=0)
    values.update(settings)
    folder = "audio" if split == "valid" else "000"
    return {"id": f"{split}_{i:05d}", "split": split, "text": text, "source": "test", "engine": engine, **values,
            "rel": f"{folder}/{split}_{i:05d}.opus"}  # fmt: skip


def write_plan(path, rows: list[dict]) -> str:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_bytes(lzma.compress(text.encode("utf-8")))
    return text


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def decoded(path) -> np.ndarray:
    x, sr = sf.read(str(path))
    assert sr == 16000 and x.ndim == 1, (path, sr, x.shape)
    return x


def own_wav(cmd: list[str], wav) -> tuple[np.ndarray, int]:
    """What the synthesizer itself writes, run here independently of the renderer."""
    subprocess.run(cmd, check=True, capture_output=True)
    with wave.open(str(wav), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768.0, w.getframerate()


def like(clip: np.ndarray, x: np.ndarray, sr: float) -> float:
    """Correlation of a decoded 16 kHz clip with x (at sr) interpolated onto the clip's sample times."""
    return float(np.corrcoef(clip, np.interp(np.arange(len(clip)) * sr / 16000, np.arange(len(x)), x))[0, 1])


# ---- the package check


def test_missing_programs_are_named_in_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    plan, out = tmp_path / "plan.jsonl.xz", tmp_path / "corpus"
    write_plan(plan, [row(0), row(1, engine="festival")])
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no espeak-ng, no festival
    args = ["--plan", str(plan), "--out", str(out), "--splits", "train"]
    assert rc.main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        "render_corpus: missing espeak-ng, festival, festvox-ru: apt-get install -y espeak-ng festival festvox-ru\n"
    )
    assert not out.exists()

    assert rc.main([*args, "--limit", "1"]) == 2  # only the espeak-ng clip is asked for: only espeak-ng is needed
    assert capsys.readouterr().err == "render_corpus: missing espeak-ng: apt-get install -y espeak-ng\n"
    monkeypatch.setattr(rc, "tqdm", None)
    assert rc.main([*args, "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err == "render_corpus: missing espeak-ng, tqdm: apt-get install -y espeak-ng && pip install -U tqdm\n"
    assert not out.exists()


def test_a_rendered_split_needs_no_synthesizer(tmp_path, monkeypatch, capsys):
    plan, out = tmp_path / "plan.jsonl.xz", tmp_path / "corpus"
    rows = [row(0), row(1, engine="festival")]
    write_plan(plan, rows)
    for r, samples in zip(rows, (1600, 9600), strict=True):  # clips already there, as after an earlier run
        (out / "train" / r["rel"]).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(out / "train" / r["rel"]), np.zeros(samples), 16000, format="OGG", subtype="OPUS")
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert rc.main(["--plan", str(plan), "--out", str(out), "--splits", "train"]) == 0
    assert [r["duration"] for r in read_jsonl(out / "train" / "manifest.jsonl")] == [0.1, 0.6]
    assert "train: 0 of 2 clips to render" in capsys.readouterr().out


# ---- real renders


@needs_espeak
def test_espeak_clips_are_the_command_lines_output_at_16k_with_their_manifest_rows(tmp_path, capsys):
    rows = [
        row(0, text="ни одной лошади не имеется"),
        row(1, text="вы можете однако исполнять службу", voice="ru+f2", variant="f2", speed=185, pitch=70),
        row(0, split="valid", text="мама мыла раму", voice="ru+Denis", variant="Denis", speed=120, pitch=30),
    ]
    plan, out = tmp_path / "plan.jsonl.xz", tmp_path / "corpus"
    write_plan(plan, rows)
    assert rc.main(["--plan", str(plan), "--out", str(out), "--splits", "train,valid", "--jobs", "2"]) == 0
    for split in ("train", "valid"):
        plan_rows = [r for r in rows if r["split"] == split]
        manifest, meta = read_jsonl(out / split / "manifest.jsonl"), read_jsonl(out / split / "meta.jsonl")
        assert len(manifest) == len(meta) == len(plan_rows)
        for r, m, me in zip(plan_rows, manifest, meta, strict=True):
            clip = decoded(out / split / r["rel"])
            x, sr = own_wav(
                ["espeak-ng", "-v", r["voice"], "-s", str(r["speed"]), "-p", str(r["pitch"]), "-w",
                 str(tmp_path / "own.wav"), r["text"]],
                tmp_path / "own.wav",
            )  # fmt: skip
            assert sr == 22050 and len(clip) == math.ceil(len(x) * 16000 / 22050)
            assert like(clip, x, sr) > 0.95, r["id"]  # the same speech, through the resampler and Opus
            assert m == {"audio_filepath": r["rel"], "text": r["text"], "duration": round(len(clip) / 16000, 3)}
            assert list(m) == ["audio_filepath", "text", "duration"]
            assert me == {**{k: v for k, v in r.items() if k != "split"}, "duration": m["duration"]}
            assert list(me)[:-1] == [k for k in r if k != "split"]
    assert (out / "valid" / "audio" / "valid_00000.opus").is_file()
    printed = capsys.readouterr().out
    assert "train: 2 of 2 clips to render (2 espeak-ng, 0 festival)" in printed
    assert "train: 2 of 2 clips" in printed and "valid: 1 of 1 clips" in printed


@needs_festival
def test_festival_clips_stretch_then_play_faster_by_the_cents(tmp_path):
    text = "служу брат смирненько"
    rows = [row(0, engine="festival", text=text), row(1, engine="festival", text=text, pitch_shift_cents=1200)]
    plan, out = tmp_path / "plan.jsonl.xz", tmp_path / "corpus"
    write_plan(plan, rows)
    assert rc.main(["--plan", str(plan), "--out", str(out), "--splits", "train", "--jobs", "1"]) == 0
    script = tmp_path / "own.scm"
    script.write_text(
        "(voice_msu_ru_nsh_clunits)\n(Parameter.set 'Duration_Stretch 1.1)\n"
        f'(utt.save.wave (SynthText "{text}") "{tmp_path / "own.wav"}" \'riff)\n',
        encoding="utf-8",
    )
    x, sr = own_wav(["festival", "--batch", str(script)], tmp_path / "own.wav")
    same, octave_up = decoded(out / "train" / rows[0]["rel"]), decoded(out / "train" / rows[1]["rel"])
    assert sr == 16000 and len(same) == len(x) and like(same, x, sr) > 0.95
    assert len(octave_up) == math.ceil(len(x) / 2)  # +1200 cents: twice as fast, half as long
    assert like(octave_up, x, 2 * sr) > 0.9
    durations = [m["duration"] for m in read_jsonl(out / "train" / "manifest.jsonl")]
    assert durations == [round(len(same) / 16000, 3), round(len(octave_up) / 16000, 3)]


@needs_espeak
def test_a_second_run_renders_only_what_is_missing_and_the_same_again(tmp_path, capsys):
    rows = [row(0), row(1, text="и вдруг оставшись один", voice="ru+f3", variant="f3")]
    plan, out = tmp_path / "plan.jsonl.xz", tmp_path / "corpus"
    write_plan(plan, rows)
    args = ["--plan", str(plan), "--out", str(out), "--splits", "train", "--jobs", "1"]
    assert rc.main(args) == 0
    clips = [out / "train" / r["rel"] for r in rows]
    first = [decoded(c) for c in clips]
    stamps = [c.stat().st_mtime_ns for c in clips]
    manifest = (out / "train" / "manifest.jsonl").read_text("utf-8")
    capsys.readouterr()

    assert rc.main(args) == 0
    assert "train: 0 of 2 clips to render" in capsys.readouterr().out
    assert [c.stat().st_mtime_ns for c in clips] == stamps
    assert (out / "train" / "manifest.jsonl").read_text("utf-8") == manifest

    clips[1].unlink()
    stale = clips[1].parent / f".{clips[1].name}.k1ll3d.tmp"  # what a run killed mid-write leaves
    stale.write_bytes(b"half a clip")
    assert rc.main(args) == 0
    assert "train: 1 of 2 clips to render" in capsys.readouterr().out
    assert clips[0].stat().st_mtime_ns == stamps[0] and not stale.exists()
    assert np.array_equal(decoded(clips[1]), first[1])  # a clip depends on its plan row only
    assert (out / "train" / "manifest.jsonl").read_text("utf-8") == manifest


# ---- bad plans


GOOD = row(0)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (json.dumps(GOOD, ensure_ascii=False)[:70], "2: not a JSON row"),  # cut short
        (json.dumps({k: v for k, v in GOOD.items() if k != "rel"}), "2: no field rel"),
        (json.dumps({**GOOD, "id": "train_1", "text": "мама mыла"}, ensure_ascii=False), "2: text 'мама mыла'"),
        (json.dumps({**GOOD, "id": "train_1", "rel": "../../x.opus"}), "2: rel '../../x.opus'"),
        (json.dumps(GOOD, ensure_ascii=False), "2: id 'train_00000' again (line 1 has it)"),
        (json.dumps({**GOOD, "id": "train_1", "engine": "rhvoice"}), "2: engine 'rhvoice'"),
        (json.dumps({**GOOD, "id": "train_1", "speed": "fast"}), "2: speed 'fast'"),
        ("[1, 2]", "2: not a JSON object"),
    ],
)
def test_a_bad_plan_row_is_named_by_file_and_line(tmp_path, capsys, line, why):
    plan, out = tmp_path / "plan.jsonl.xz", tmp_path / "corpus"
    text = json.dumps(GOOD, ensure_ascii=False) + "\n" + line + "\n" + json.dumps(row(5), ensure_ascii=False) + "\n"
    plan.write_bytes(lzma.compress(text.encode("utf-8")))
    assert rc.main(["--plan", str(plan), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"render_corpus: {plan}:{why}") and err.count("\n") == 1, err
    assert not out.exists()


def test_a_cut_or_damaged_recipe_file_is_refused_in_one_line(tmp_path, capsys):
    plan, out = tmp_path / "plan.jsonl.xz", tmp_path / "corpus"
    text = write_plan(plan, [row(i) for i in range(50)])
    data = plan.read_bytes()
    plan.write_bytes(data[: len(data) // 2])
    assert rc.main(["--plan", str(plan), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"render_corpus: {plan}: cannot read it (") and err.count("\n") == 1

    plan.write_bytes(data)  # whole again, but not what SHA256SUMS records
    digest = hashlib.sha256(text.encode()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  plan.jsonl\n", "utf-8")
    assert len(rc.read_plan(plan)) == 50
    (tmp_path / "SHA256SUMS").write_text(f"{digest[::-1]}  plan.jsonl\n", "utf-8")
    assert rc.main(["--plan", str(plan), "--out", str(out)]) == 1
    assert capsys.readouterr().err == (
        f"render_corpus: {plan}: its plan.jsonl does not have the sha256 that SHA256SUMS records: the copy is damaged\n"
    )
    assert not out.exists()


def test_bad_options_exit_2(tmp_path, capsys):
    plan = tmp_path / "plan.jsonl.xz"
    write_plan(plan, [row(0)])
    for args in (["--splits", "more"], ["--jobs", "0"], ["--limit", "-1"]):
        with pytest.raises(SystemExit) as e:
            rc.main(["--plan", str(plan), "--out", str(tmp_path / "corpus"), *args])
        assert e.value.code == 2
    assert "the plan has the splits train" in capsys.readouterr().err
    assert not (tmp_path / "corpus").exists()


# ---- the recipe in the repository


def test_the_repositorys_recipe_is_whole_and_as_its_readme_says():
    plan = rc.read_plan(rc.PLAN)  # checks the decompressed bytes against recipe/ru-synth/SHA256SUMS
    counts = {}
    for r in plan:
        counts[r["split"], r["engine"]] = counts.get((r["split"], r["engine"]), 0) + 1
    assert counts == {
        ("train", "espeak-ng"): 3978,
        ("train", "festival"): 1022,
        ("valid", "espeak-ng"): 241,
        ("valid", "festival"): 59,
        ("more", "espeak-ng"): 19956,
        ("more", "festival"): 5044,
    }
    lm = rc.read_text(rc.RECIPE / "lm.txt.xz").splitlines()
    assert len(lm) == 229_229
    valid = {r["text"] for r in plan if r["split"] == "valid"}
    assert not valid & set(lm)  # an LM built from lm.txt never saw a valid sentence
    assert {r["text"] for r in plan if r["split"] == "more"} <= set(lm)


# ---- the resampler


def direct_resample(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """The definition, a sum per output sample: a Kaiser (beta 5) windowed sinc of 20 * max(up, down) + 1 taps,
    cut off at 1 / max(up, down) of Nyquist, normalized to gain `up`, centred at output i on input i * down / up."""
    m = max(up, down)
    k = np.arange(20 * m + 1) - 10 * m
    h = np.sinc(k / m) / m * np.i0(5.0 * np.sqrt(1 - (k / (10 * m)) ** 2)) / np.i0(5.0)
    h *= up / h.sum()
    n_out = -(-len(x) * up // down)
    y = np.zeros(n_out)
    for i in range(n_out):
        for j in range(len(x)):
            tap = 10 * m + i * down - j * up
            if 0 <= tap < len(h):
                y[i] += h[tap] * x[j]
    return y


@pytest.mark.parametrize(("up", "down", "n"), [(320, 441, 60), (2, 3, 31), (3, 2, 17), (1785, 1501, 9), (5, 7, 1)])
def test_resample_is_the_windowed_sinc_sum(up, down, n):
    x = np.random.default_rng(n).standard_normal(n)
    assert np.allclose(rc.resample(x, up, down), direct_resample(x, up, down), rtol=0, atol=1e-12)


def test_resample_keeps_a_tone_below_the_new_nyquist_and_removes_one_above():
    t = np.arange(22050) / 22050
    for f, amplitude in ((1000, 0.5), (10_000, 0.0)):  # 10 kHz would alias to 6 kHz at 16 kHz without the filter
        y = rc.resample(0.5 * np.sin(2 * np.pi * f * t), 16000, 22050)
        assert len(y) == 16000
        want = amplitude * np.sin(2 * np.pi * f * np.arange(16000) / 16000)
        assert np.abs(y - want)[500:-500].max() < 2e-3, f


def test_to_16k_rounds_to_16_bit_and_clips():
    x = np.concatenate([np.linspace(-2, 2, 16000), 0.3 * np.ones(16000)])
    y = rc.to_16k(x, 16000)
    assert y.dtype == np.float32 and len(y) == len(x)
    assert np.array_equal(y * 32768, np.round(y * 32768)) and y.max() == 32767 / 32768 and y.min() == -32767 / 32768
    assert y[20000] == np.round(0.3 * 32767) / 32768
