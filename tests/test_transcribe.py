import json
import shutil

import numpy as np
import pytest
from conftest import AUDIO
from onnx_models import bursts, energy_onnx, fixture_onnx, write_wav
from test_formats import parse_srt, parse_tsv, parse_vtt

import transcribe
from proslushka.audio import load_audio

# (file, burst spans, total seconds): the energy model hears one "а" per burst
CLIPS = {
    "one.wav": ([(0.3, 0.8)], 1.5),
    "sub/two.flac": ([(0.2, 0.6), (1.0, 1.5)], 2.0),
    "sub/deeper/three.wav": ([(0.1, 0.4), (0.8, 1.0), (1.5, 2.5)], 3.0),
}


@pytest.fixture(scope="module")
def energy(tmp_path_factory):
    return energy_onnx(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    for i, (name, (spans, total)) in enumerate(CLIPS.items()):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        write_wav(d / name, bursts(spans, total, seed=i))
    (d / "sub" / "notes.txt").write_text("not audio, and not picked up from a folder")
    return d


def run(capsys, *args):
    rc = transcribe.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("fmt", ["txt", "json", "srt", "vtt", "tsv"])
def test_a_folder_to_output_dir_in_every_format(capsys, energy, folder, tmp_path, fmt):
    rc, out, err = run(capsys, folder, "--model", energy, "--format", fmt, "--output_dir", tmp_path, "--threads", "1")
    assert rc == 0 and out == ""
    assert "3/3" in err  # the progress bar
    for name, (spans, total) in CLIPS.items():
        text = (tmp_path / name).with_suffix("." + fmt).read_text()
        if fmt == "txt":
            assert text == " ".join(["а"] * len(spans)) + "\n"
            continue
        if fmt == "json":
            d = json.loads(text)
            assert d["audio_filepath"] == str(folder / name) and d["duration"] == total
            times = [(w["start"], w["end"]) for w in d["words"]]
        else:
            parse = {"srt": parse_srt, "vtt": parse_vtt, "tsv": parse_tsv}[fmt]
            times = [(a, b) for a, b, _ in parse(text)]
        if fmt in ("srt", "vtt"):  # these short clips make one cue each, from the first word to the last
            spans = [(spans[0][0], spans[-1][1])]
        assert len(times) == len(spans) and np.abs(np.array(times) - np.array(spans)).max() <= 0.03
        assert all(0 <= a < b <= total for a, b in times)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        (tmp_path / n).with_suffix("." + fmt).name for n in CLIPS
    )


def test_mixed_good_and_bad_inputs(capsys, energy, folder, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    missing = tmp_path / "missing.opus"
    inputs = [folder / "one.wav", bad, missing, folder / "sub" / "two.flac"]
    rc, out, err = run(capsys, *inputs, "--model", energy, "--format", "json", "--output_dir", tmp_path / "out")
    assert rc == 1
    assert f"{bad}: not readable audio" in err and f"{missing}: no such file" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.json", "two.json"]
    assert json.loads((tmp_path / "out" / "two.json").read_text())["text"] == "а а"
    rc, out, err = run(capsys, *inputs, "--model", energy)  # stdout: one line per good input, in order, named
    assert rc == 1 and out == f"{inputs[0]}\tа\n{inputs[3]}\tа а\n"
    rc, out, err = run(capsys, *inputs, "--model", energy, "--format", "json", "-o", tmp_path / "all.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert rc == 1 and out == "" and [r["audio_filepath"] for r in rows] == [str(inputs[0]), str(inputs[3])]


def test_txt_lines_from_several_inputs_say_their_file(capsys, energy, folder, tmp_path):
    one, two, three = (folder / name for name in CLIPS)
    rc, out, _ = run(capsys, one, "--model", energy)  # one file: the text alone, as before
    assert rc == 0 and out == "а\n"
    rc, out, _ = run(capsys, one, two, "--model", energy)  # several: PATH<tab>TEXT, as grep names its files
    assert rc == 0 and out == f"{one}\tа\n{two}\tа а\n"
    rc, out, _ = run(capsys, folder, "--model", energy, "-o", tmp_path / "all.txt")  # a folder: its files, in order
    lines = (tmp_path / "all.txt").read_text().splitlines()
    assert rc == 0 and out == "" and lines == [f"{one}\tа", f"{three}\tа а а", f"{two}\tа а"]
    (tmp_path / "only").mkdir()
    shutil.copyfile(one, tmp_path / "only" / "one.wav")  # a folder of one file is named too: the shape stays
    rc, out, _ = run(capsys, tmp_path / "only", "--model", energy)
    assert rc == 0 and out == f"{tmp_path / 'only' / 'one.wav'}\tа\n"
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": "sub/two.flac"}) + "\n")
    shutil.copytree(folder / "sub", tmp_path / "sub")
    rc, out, _ = run(capsys, "--manifest", tmp_path / "m.jsonl", "--model", energy)  # a manifest: its rows' paths
    assert rc == 0 and out == f"{tmp_path / 'sub' / 'two.flac'}\tа а\n"
    rc, _, _ = run(capsys, one, two, "--model", energy, "--output_dir", tmp_path / "each")  # a file each: unchanged
    assert rc == 0 and (tmp_path / "each" / "two.txt").read_text() == "а а\n"


def test_usage_errors(capsys, energy, folder, tmp_path):
    for args in (
        [folder, "--format", "srt"],  # several subtitle files need a folder to go to
        [folder / "one.wav", "--report", tmp_path / "r.tsv"],  # no references without a manifest
        [],
    ):
        with pytest.raises(SystemExit) as e:
            transcribe.main([str(a) for a in args] + ["--model", str(energy)])
        assert e.value.code == 2
    capsys.readouterr()
    same_name = [folder / "one.wav", folder / "sub" / "one.wav"]
    rc, _, err = run(capsys, *same_name, "--model", energy, "--output_dir", tmp_path)
    assert rc == 2 and "several inputs would write" in err
    rc, out, _ = run(capsys, folder / "one.wav", "--model", energy, "--format", "srt")  # one input: srt on stdout
    assert rc == 0 and parse_srt(out)[0][2] == "а"


def test_batches_give_the_same_transcripts(capsys, tmp_path):
    model = fixture_onnx(tmp_path)  # a real QuartzNet: padded batches must not change what it hears
    clips = [AUDIO / f"utt{i}.wav" for i in (1, 2, 3)] + [AUDIO / f"utt{i}.opus" for i in (3, 1)]
    speech = np.concatenate([load_audio(c) for c in clips[:3]] * 4)  # ~38 s: cut into two chunks
    inputs = [*clips, write_wav(tmp_path / "long.wav", speech)]
    results = {}
    for bs in ("1", "8"):
        rc, _, _ = run(capsys, *inputs, "--model", model, "--format", "json", "--batch_size", bs, "-o", tmp_path / bs)
        assert rc == 0
        results[bs] = [json.loads(line) for line in (tmp_path / bs).read_text().splitlines()]
    assert results["1"] == results["8"] and results["1"][-1]["duration"] == pytest.approx(len(speech) / 16000, abs=1e-3)


def test_report_against_hand_computed_rates():
    scored = [
        ("a.wav", "привет как дела", "привет как дело"),  # 1 of 3 words, 1 of 15 characters
        ("b.wav", "да", ""),  # 1 of 1 word, 2 of 2 characters
        ("c.wav", "все верно", "все верно"),  # 0 of 2 words, 0 of 9 characters
    ]
    summary, table = transcribe.report(scored)
    assert summary == f"WER {100 * 2 / 6:.2f}%  CER {100 * 3 / 26:.2f}%  on 3 utterances"
    rows = [line.split("\t") for line in table.splitlines()]
    assert rows[0][:6] == ["wer", "cer", "word_edits", "words", "char_edits", "chars"]
    assert [r[6] for r in rows[1:]] == ["b.wav", "a.wav", "c.wav"]  # the worst first
    assert rows[2][:6] == [f"{1 / 3:.4f}", f"{1 / 15:.4f}", "1", "3", "1", "15"]
    assert rows[2][7:] == ["привет как дела", "привет как дело"]


def test_manifest_with_report(capsys, energy, folder, tmp_path):
    rows = [
        {"audio_filepath": "sub/two.flac", "text": "А, а!"},  # hears "а а": right after normalization
        {"audio_filepath": str(folder / "one.wav"), "text": "а б"},  # hears "а": 1 of 2 words, 2 of 3 chars
        {"audio_filepath": "nowhere.wav", "text": "а"},  # fails: not scored
        {"text": "no audio"},
    ]
    m = folder / "m.jsonl"
    m.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{oops\n")
    report = tmp_path / "errors.tsv"
    rc, out, err = run(capsys, "--manifest", m, "--model", energy, "--report", report, "--output_dir", tmp_path / "o")
    assert rc == 1
    assert f"{m}:4: no audio_filepath" in err and f"{m}:5: malformed JSON" in err
    assert f"{folder / 'nowhere.wav'}: no such file" in err
    assert "WER 25.00%  CER 33.33%  on 2 utterances; 3 inputs failed, not scored" in err
    assert (tmp_path / "o" / "sub" / "two.txt").read_text() == "а а\n" and (tmp_path / "o" / "one.txt").exists()
    lines = report.read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("0.5000\t0.6667\t1\t2\t2\t3\t") and lines[1].endswith("\tа б\tа")


@pytest.mark.parametrize(
    "flag, value",
    [("--max_chunk_seconds", "nan"), ("--max_chunk_seconds", "inf"), ("--max_chunk_seconds", "0.5"),
     ("--lm_alpha", "nan"), ("--lm_beta", "-inf"), ("--max_words_per_line", "0"), ("--max_words_per_line", "-3"),
     ("--batch_size", "0"), ("--beam_width", "1.5")],
)  # fmt: skip
def test_numbers_no_setting_can_take_are_parser_errors(capsys, energy, folder, flag, value):
    with pytest.raises(SystemExit) as e:
        transcribe.main([str(folder / "one.wav"), "--model", str(energy), f"{flag}={value}"])  # = : "-inf" too
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: argument {flag}: must be " in err and f"not '{value}'" in err


def test_hotword_weights_are_bounded(capsys, energy, folder):
    rc, _, err = run(capsys, folder / "one.wav", "--model", energy, "--hotwords", "а:1e308")
    assert rc == 2 and err.strip() == "error: --hotwords: 'а:1e308': the weight must be from 0 to 100"


def test_nothing_to_score_is_said_not_scored_as_zero(capsys, energy, folder, tmp_path):
    report = tmp_path / "r.tsv"
    (tmp_path / "none.jsonl").write_text(json.dumps({"audio_filepath": str(folder / "one.wav")}) + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    for name in ("none.jsonl", "empty.jsonl"):  # refused before any work: the transcripts would go nowhere
        rc, _, err = run(capsys, "--manifest", tmp_path / name, "--model", energy, "--report", report)
        assert rc == 1 and err.strip() == f"error: {tmp_path / name}: no row has a text to score against"
    assert not report.exists()
    (tmp_path / "blank.jsonl").write_text(json.dumps({"audio_filepath": str(folder / "one.wav"), "text": ""}) + "\n")
    rc, _, err = run(capsys, "--manifest", tmp_path / "blank.jsonl", "--model", energy, "--report", report)
    assert rc == 1 and "inf" not in err
    assert (
        err.strip().splitlines()[-1]
        == "error: no reference words to score against: every transcribed row has an empty text"
    )
    assert report.read_text().splitlines()[1].startswith("1.0000\t1.0000\t1\t0\t1\t0\t")  # "а" heard in silence


def test_an_empty_reference_counts_its_insertions_not_inf():
    summary, table = transcribe.report([("a.wav", "", "а б"), ("b.wav", "да нет", "да")])
    assert summary == f"WER {100 * 3 / 2:.2f}%  CER {100 * 7 / 6:.2f}%  on 2 utterances"  # pooled: 3 of 2 words
    assert [r.split("\t")[:6] for r in table.splitlines()[1:]] == [
        ["2.0000", "3.0000", "2", "0", "3", "0"],  # an empty reference: its edits, not inf
        ["0.5000", "0.6667", "1", "2", "4", "6"],
    ]
    assert transcribe.report([("a.wav", "", "")])[0] is None  # no reference words: no rate at all


def test_a_clip_shorter_than_one_frame_gives_no_warnings(capsys, tmp_path):
    import warnings

    from test_hostile_inference import _with_metadata

    model = _with_metadata(tmp_path, "normalized", feature_config={"normalize": "per_feature"})
    write_wav(tmp_path / "one_sample.wav", np.array([0.5], np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" on a clip with no valid frame
        rc, out, _ = run(capsys, tmp_path / "one_sample.wav", "--model", model, "--keep_silence", "--lm", "none")
    assert rc == 0 and out == "\n"


def test_names_that_are_not_utf8_are_transcribed_and_printed(capsys, energy, tmp_path):
    import os

    good, bad = (tmp_path / os.fsdecode(name) for name in (b"good\xff.wav", b"bad\xfe.wav"))
    write_wav(tmp_path / "x.wav", bursts([(0.2, 0.6)], 1.0)).rename(good)  # soundfile cannot write that name
    bad.write_bytes(b"not audio")
    rc, out, err = run(capsys, tmp_path, "--model", energy, "--format", "json")
    assert rc == 1 and [json.loads(line)["audio_filepath"] for line in out.splitlines()] == [str(good)]
    assert f"{tmp_path}/bad\\udcfe.wav: not readable audio" in err  # the byte shown, not a crash
    report = tmp_path / "r.tsv"
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": str(good), "text": "а"}) + "\n")
    rc, _, _ = run(capsys, "--manifest", tmp_path / "m.jsonl", "--model", energy, "--report", report)
    assert rc == 0 and f"\t{tmp_path}/good\\udcff.wav\t" in report.read_text()
