"""Beam search with a KenLM language model (decode.py), building/tuning helpers (lm.py) and transcribe.py's --lm.

The LMs here are tiny ARPA files written by the tests (plus tests/data/lm/tiny.bin, the same model as a KenLM
binary, and binaries the tests build with KenLM's build_binary where tools/build_kenlm.sh has built it), so nothing
outside the repository is needed."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA, ROOT

import transcribe
from proslushka import lm as lm_tool
from proslushka.decode import (
    BeamDecoder,
    DecoderError,
    arpa_words,
    binary_words,
    ctc_words,
    load_settings,
    model_identity,
    parse_hotwords,
    tuned_for,
)
from proslushka.formats import as_dict
from proslushka.infer import Transcriber
from proslushka.lm import KENLM_DIR, LMError, clean_line, holds_sentence, sentence_index
from proslushka.lm import build as lm_build
from proslushka.text import LABELS

BLANK = len(LABELS)
DEMO = ROOT / "models" / "demo.onnx"
PORTRET = ROOT / "samples" / "portret.opus"
TINY_BIN = DATA / "lm" / "tiny.bin"
DEMO_LM = ROOT / "models" / "demo-lm.bin"
PORTRET_TEXT = "на угле портрета висел венок из запыленных иммортелей"  # samples/manifest.jsonl
needs_kenlm = pytest.mark.skipif(
    not os.environ.get("CI") and not (KENLM_DIR / "lmplz").is_file(),
    reason="needs tools/build_kenlm.sh's lmplz and build_binary (.ci/run builds them)",
)

# log10 probabilities, as KenLM writes them; "весел" is not a word of this LM, "висел" is
TINY_ARPA = """\\data\\
ngram 1=8
ngram 2=4

\\1-grams:
-1.5\t<unk>\t0
0\t<s>\t-0.5
-1.0\t</s>\t0
-0.8\tна\t-0.3
-0.9\tстене\t-0.3
-1.0\tвисел\t-0.3
-1.0\tвенок\t-0.3
-1.2\tквас\t-0.3

\\2-grams:
-0.2\t<s> на
-0.2\tна стене
-0.3\tстене висел
-0.2\tвисел венок

\\end\\
"""


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "tiny.arpa"
    path.write_text(TINY_ARPA, encoding="utf-8")
    return path


def spell(text: str, doubt: dict[int, tuple[str, float]] | None = None, frames: int = 3) -> np.ndarray:
    """Log-probs [T, 34] that spell `text`: each letter for `frames` frames then a blank; doubt[i] = (letter, p)
    makes the i-th character's frames give `letter` probability p (and the right one the rest)."""
    rows = []
    for i, c in enumerate(text):
        p = np.full(BLANK + 1, 1e-6)
        if doubt and i in doubt:
            other, q = doubt[i]
            p[LABELS.index(other)], p[LABELS.index(c)] = q, 1 - q
        else:
            p[LABELS.index(c)] = 1.0
        rows += [p] * frames
        blank = np.full(BLANK + 1, 1e-6)
        blank[BLANK] = 1.0
        rows.append(blank)
    lp = np.log(np.array(rows))
    return (lp - np.log(np.exp(lp).sum(1, keepdims=True))).astype(np.float32)


def greedy(lp: np.ndarray) -> str:
    return " ".join(w.word for w in ctc_words(lp.argmax(-1), BLANK, LABELS, 0.02))


def test_the_lm_fixes_a_word_that_greedy_misspells(arpa):
    lp = spell("на стене висел венок", {10: ("е", 0.6)})  # the "и" of "висел" sounds more like "е"
    assert greedy(lp) == "на стене весел венок"
    assert "висел" not in BeamDecoder(LABELS, None).text(lp).split()  # beam search alone does not fix it
    assert BeamDecoder(LABELS, arpa, {"alpha": 0.5, "beta": 1.0}).text(lp) == "на стене висел венок"


def test_the_binary_lm_decodes_like_its_arpa(arpa):
    lp = spell("на стене висел венок", {10: ("е", 0.6)})
    words = BeamDecoder(LABELS, arpa).words(lp)
    assert BeamDecoder(LABELS, TINY_BIN).words(lp) == words


def test_a_hotword_turns_a_near_miss_into_the_boosted_word(arpa):
    lp = spell("на стене висел кварц", {18: ("с", 0.7)})  # heard as "квасц", which the LM takes for "квас"
    assert greedy(lp) == "на стене висел квасц"
    assert BeamDecoder(LABELS, arpa).text(lp) == "на стене висел квас"
    hot = parse_hotwords("Кварц:10", LABELS)
    assert hot == {"кварц": 10.0}
    assert BeamDecoder(LABELS, arpa, hotwords=hot).text(lp) == "на стене висел кварц"


def test_a_word_the_lm_has_never_seen_has_a_path(arpa):
    lp = spell("на стен висел венок")  # clear audio of "стен", outside the LM's vocabulary
    assert BeamDecoder(LABELS, arpa, {"unk_score": 0}).text(lp) == "на стен висел венок"
    # with the unknown-word path closed, the decoder can only spell the LM's words
    assert BeamDecoder(LABELS, arpa, {"unk_score": -100}).text(lp) == "на стене висел венок"


def test_word_frames_follow_the_letters(arpa):
    lp = spell("на стене ")  # 4 frames a character (3 + a blank), the last a pause: as greedy CTC times them
    assert BeamDecoder(LABELS, arpa).words(lp) == [("на", 0, 7), ("стене", 12, 31)]
    assert BeamDecoder(LABELS, arpa).words(lp[:0]) == []


@pytest.mark.parametrize(
    "spec, why",
    [
        ("hello:5", "outside the alphabet"),
        ("кварц:x", "must be a number"),
        ("кварц:-1", "from 0 to 100"),
        ("кварц:101", "from 0 to 100"),
        (":3", "empty"),
    ],
)
def test_bad_hotwords(spec, why):
    with pytest.raises(DecoderError, match=why):
        parse_hotwords(spec, LABELS)


def test_text_for_an_lm_is_normalized_and_evaluation_sentences_are_dropped():
    lines = ["Он, говорят, был здесь!", "hello world", "", "и вот он был здесь вчера", "здесь был он"]
    cleaned = [c for c in map(clean_line, lines) if c is not None]
    assert cleaned == ["он говорят был здесь", "и вот он был здесь вчера", "здесь был он"]
    index = sentence_index(["он был здесь"])
    assert [c for c in cleaned if not holds_sentence(c, index)] == ["он говорят был здесь", "здесь был он"]


@needs_kenlm
def test_build_an_lm_without_the_excluded_sentences(tmp_path, arpa):
    (tmp_path / "text.txt").write_text("На стене висел венок.\nВенок висел!\nкто-то пел песню\nhello\n")
    manifest = tmp_path / "valid.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "a.wav", "text": "Кто то пел", "duration": 1.0}) + "\n")
    out = tmp_path / "my.bin"
    settings = lm_build([str(tmp_path / "text.txt")], out, order=2, exclude=[str(manifest)])
    assert settings["lines"] == 2 and load_settings(out)["labels"] == "".join(LABELS)
    assert sorted((tmp_path / "my.words").read_text().split()) == ["венок", "висел", "на", "стене"]
    lp = spell("на стене висел венок", {10: ("е", 0.6)})
    assert BeamDecoder(LABELS, out).text(lp) == "на стене висел венок"


def test_arpa_words(arpa):
    assert arpa_words(arpa) == ["на", "стене", "висел", "венок", "квас"]


# transcribe.py: the demo model with the tiny LM


def run(capsys, *args):
    rc = transcribe.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_lm_none_is_greedy_exactly(capsys):
    rc, out, err = run(capsys, PORTRET, "--lm", "none", "--format", "json", "--threads", "1")
    assert rc == 0, err
    expected = Transcriber(DEMO, threads=1).transcribe_path(PORTRET)
    assert json.loads(out) == {"audio_filepath": str(PORTRET), **as_dict(expected)}


def test_word_times_are_monotonic_and_inside_the_audio(capsys, arpa):
    rc, out, err = run(capsys, PORTRET, "--lm", arpa, "--format", "json", "--beam_width", "16", "--threads", "1")
    assert rc == 0, err
    d = json.loads(out)
    times = [t for w in d["words"] for t in (w["start"], w["end"])]
    assert len(d["words"]) >= 5 and d["text"] == " ".join(w["word"] for w in d["words"])
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= d["duration"]
    assert all(w["end"] > w["start"] for w in d["words"])


def test_the_settings_beside_the_lm_are_used(tmp_path, arpa):
    lm = tmp_path / "my.arpa"
    lm.write_text(TINY_ARPA, encoding="utf-8")
    (tmp_path / "my.json").write_text(json.dumps({"alpha": 0.9, "beta": 2.0, "beam_width": 8, "note": "kept"}))
    s = load_settings(lm)
    assert (s["alpha"], s["beta"], s["beam_width"], s["note"]) == (0.9, 2.0, 8, "kept")
    tr = Transcriber(DEMO, threads=1, lm=lm, lm_settings={"beta": 0.5})
    assert (tr.decoder.settings["alpha"], tr.decoder.settings["beta"]) == (0.9, 0.5)


def bad_lms(folder, arpa):
    """(LM file, the file the error must name, why) for each kind of unusable LM."""
    cases = []
    missing = folder / "missing.bin"
    cases.append((missing, missing, "cannot read"))
    text = folder / "notes.bin"
    text.write_text("just some text\n")
    cases.append((text, text, "not a KenLM language model"))
    cut = folder / "cut.bin"
    cut.write_bytes(TINY_BIN.read_bytes()[:300])
    (folder / "cut.words").write_text("на\n")
    cases.append((cut, cut, "KenLM cannot load it"))
    half = folder / "half.arpa"
    half.write_text(TINY_ARPA[: TINY_ARPA.index("\\2-grams:") + 20], encoding="utf-8")
    cases.append((half, half, "KenLM cannot load it"))
    unfinished = folder / "unfinished.bin"  # what build_binary leaves when it fails midway
    unfinished.write_bytes(b"mmap lm http://kheafield.com/code incomplete\n" + bytes(300))
    cases.append((unfinished, unfinished, "did not finish"))
    for name, settings in [("alpha", {"alpha": "x"}), ("beam", {"beam_width": 0}), ("json", None)]:
        lm = folder / f"{name}.arpa"
        lm.write_text(TINY_ARPA, encoding="utf-8")
        js = folder / f"{name}.json"
        js.write_text(json.dumps(settings) if settings else "{not json")
        cases.append((lm, js, "must be a number" if settings else "not a readable JSON"))
    return cases


def test_bad_lm_input_is_one_line_exit_2_and_nothing_written(capsys, tmp_path, arpa):
    for lm, named, why in bad_lms(tmp_path, arpa):
        out = tmp_path / "out.txt"
        rc, stdout, err = run(capsys, PORTRET, "--lm", lm, "-o", out, "--threads", "1")
        assert (rc, stdout) == (2, ""), (lm, err)
        assert err.count("\n") == 1 and str(named) in err and why in err, (lm, err)
        assert not out.exists()
    rc, _, err = run(capsys, PORTRET, "--lm", arpa, "--hotwords", "rock:3", "-o", tmp_path / "out.txt")
    assert rc == 2 and "--hotwords" in err and "outside the alphabet" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:  # a flag no beam can take is the parser's error, before any work
        run(capsys, PORTRET, "--lm", arpa, "--beam_width", "0", "-o", tmp_path / "out.txt")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--beam_width: must be an integer of at least 1" in err.splitlines()[-1]
    assert not (tmp_path / "out.txt").exists()


# proslushka.lm's command line with hostile input: fake KenLM tools (Python scripts), so no build of KenLM is needed


def fake_kenlm(folder, build_binary_fails=False):
    """A folder with an lmplz that writes TINY_ARPA whatever its text, and a build_binary that copies the ARPA to its
    output, or (build_binary_fails) writes 160 bytes there and exits 1, as KenLM does on a bad model."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.arpa").write_text(TINY_ARPA, encoding="utf-8")
    lmplz = (
        f"import shutil, sys\nshutil.copyfile({str(folder / 'model.arpa')!r}, sys.argv[sys.argv.index('--arpa') + 1])\n"
    )
    if build_binary_fails:
        binary = "import sys\nopen(sys.argv[-1], 'wb').write(bytes(160))\nsys.exit('MissingSentenceMarker in ARPA')\n"
    else:
        binary = "import shutil, sys\nshutil.copyfile(sys.argv[-2], sys.argv[-1])\n"
    for name, code in (("lmplz", lmplz), ("build_binary", binary)):
        (folder / name).write_text(f"#!{sys.executable}\n{code}")
        (folder / name).chmod(0o755)
    return folder


def lm_cli(capsys, *args):
    rc = lm_tool.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def lm_files(out):
    return {p.name: p.read_bytes() for p in (out, out.with_suffix(".words"), out.with_suffix(".json"))}


def test_a_failed_build_leaves_the_old_lm_as_it_was(tmp_path, capsys):
    good, bad = fake_kenlm(tmp_path / "kenlm"), fake_kenlm(tmp_path / "broken", build_binary_fails=True)
    (tmp_path / "ok.txt").write_text("На стене висел венок.\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin.txt").write_text("hello world\n12 345\n")
    lm = tmp_path / "lm" / "ok.bin"
    rc, _, err = lm_cli(capsys, "build", tmp_path / "ok.txt", "-o", lm, "--kenlm_dir", good)
    assert rc == 0, err
    before = lm_files(lm)
    assert before["ok.bin"] == TINY_ARPA.encode() and b"alpha" in before["ok.json"]
    for text, tools, why in [
        ("empty.txt", good, f"{tmp_path / 'empty.txt'}: no usable lines (0 lines"),
        ("latin.txt", good, f"{tmp_path / 'latin.txt'}: no usable lines (2 lines, none wholly in the alphabet"),
        ("ok.txt", bad, "build_binary failed: MissingSentenceMarker in ARPA"),
    ]:
        rc, out, err = lm_cli(capsys, "build", tmp_path / text, "-o", lm, "--kenlm_dir", tools)
        # refused inputs: the error alone; a KenLM failure: after the count of lines kept
        assert rc == 1 and out == "" and err.startswith(f"error: {why}" if tools == good else ""), err
        assert err.splitlines()[-1].startswith(f"error: {why}") and err.count("error") == 1, err
        assert lm_files(lm) == before, text  # not the 160 bytes a failed build_binary leaves
        assert sorted(p.name for p in lm.parent.iterdir()) == ["ok.bin", "ok.json", "ok.words"]  # no temp left


def test_build_refuses_bad_input_in_one_line_naming_it(tmp_path, capsys):
    kenlm = fake_kenlm(tmp_path / "kenlm")
    text = tmp_path / "ok.txt"
    text.write_text("На стене висел венок.\n")
    (tmp_path / "no_text.csv").write_text("audio_filepath,duration\na.wav,1.0\n")
    out = tmp_path / "x.bin"
    cases = [  # (arguments, exit code, the start of the error)
        ([tmp_path / "missing.txt"], 1, f"{tmp_path / 'missing.txt'}: cannot read (No such file or directory)"),
        ([tmp_path], 1, f"{tmp_path}: is a folder, not a text file"),
        ([text, "--exclude", tmp_path / "gone.jsonl"], 1, f"{tmp_path / 'gone.jsonl'}: cannot read the manifest"),
        ([text, "--exclude", tmp_path / "no_text.csv"], 1, f"{tmp_path / 'no_text.csv'}:1: header lacks column text"),
        ([text, "--exclude", text], 1, f"{text}: no rows with a text to exclude"),
    ]
    for args, code, why in cases:
        rc, _, err = lm_cli(capsys, "build", *args, "-o", out, "--kenlm_dir", kenlm)
        assert rc == code and err.startswith(f"error: {why}") and err.count("\n") == 1, (args, err)
        assert not out.exists()
    before = text.read_bytes()
    for output, why in [(text, "is the input"), (tmp_path / "x.json", "must not end in .words or .json")]:
        rc, _, err = lm_cli(capsys, "build", text, "-o", output, "--kenlm_dir", kenlm)
        assert rc == 2 and why in err and err.count("\n") == 1, err
    assert text.read_bytes() == before and not (tmp_path / "x.json").exists()
    # the text as NAME.json of the LM: writing the LM's settings would destroy it
    (tmp_path / "corpus.json").write_text("На стене висел венок.\n")
    rc, _, err = lm_cli(capsys, "build", tmp_path / "corpus.json", "-o", tmp_path / "corpus.bin", "--kenlm_dir", kenlm)
    assert rc == 2 and "is the input" in err and not (tmp_path / "corpus.bin").exists()
    with pytest.raises(LMError, match="no usable lines"):  # the library function too
        lm_build([str(tmp_path / "no_text.csv")], out, kenlm_dir=str(kenlm))


def test_tune_needs_only_audio_and_text_columns_and_records_the_model(tmp_path, capsys):
    lm = tmp_path / "my.arpa"
    lm.write_text(TINY_ARPA, encoding="utf-8")
    manifest = tmp_path / "valid.csv"  # no duration column: tuning does not use it
    manifest.write_text(f"audio_filepath,text\n{PORTRET},{PORTRET_TEXT}\n")
    args = ["tune", "--manifest", manifest, "--lm", lm, "--alpha", "0.5", "--beta", "1", "--beam_width", "8"]
    rc, out, err = lm_cli(capsys, *args, "--threads", "1")
    assert rc == 0, err
    tuned = load_settings(lm)["tuned_on"]
    assert tuned["manifest"] == str(manifest) and "best: beam 8" in out
    # the model it was tuned for, by content: the default model, models/demo.onnx
    assert (tuned["model_bytes"], tuned["model_sha256"]) == (DEMO.stat().st_size, sha256(DEMO))
    assert tuned_for(load_settings(lm), DEMO) is True


def test_tune_refuses_bad_manifests_and_leaves_the_settings(tmp_path, capsys):
    lm = tmp_path / "my.arpa"
    lm.write_text(TINY_ARPA, encoding="utf-8")
    settings = tmp_path / "my.json"
    settings.write_text(json.dumps({"alpha": 0.7, "beta": 1.5}))
    (tmp_path / "no_text.jsonl").write_text(json.dumps({"audio_filepath": str(PORTRET)}) + "\n")
    (tmp_path / "gone.jsonl").write_text(
        json.dumps({"audio_filepath": str(PORTRET), "text": "на угле"}) + "\n"
        + json.dumps({"audio_filepath": "missing.opus", "text": "венок"}) + "\n"
    )  # fmt: skip
    cases = [
        ("no_text.jsonl", "no references to tune on"),
        ("gone.jsonl", f"{tmp_path / 'gone.jsonl'}:2: {tmp_path / 'missing.opus'}"),
        ("absent.jsonl", f"{tmp_path / 'absent.jsonl'}: cannot read the manifest"),
    ]
    for name, why in cases:
        rc, out, err = lm_cli(capsys, "tune", "--manifest", tmp_path / name, "--lm", lm, "--alpha", "1", "--beta",
                              "0", "--beam_width", "4", "--threads", "1")  # fmt: skip
        last = err.strip().splitlines()[-1]  # after "log-probs of N utterances ..." when the audio fails
        assert rc == 1 and last.startswith("error: ") and why in last and err.count("error") == 1, (name, err)
        assert json.loads(settings.read_text()) == {"alpha": 0.7, "beta": 1.5}, name  # not alpha 1.0, wer 0.0


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# the vocabulary of any KenLM model: from its ARPA 1-grams, or the words stored at the end of a KenLM binary


def test_the_words_stored_in_kenlm_binaries():
    assert sorted(binary_words(TINY_BIN)) == sorted(arpa_words_of(TINY_ARPA))
    # a vocabulary of 2.3 MB, read backwards over more than one block: the words `lm build` wrote from the ARPA
    assert sorted(binary_words(DEMO_LM)) == sorted(DEMO_LM.with_suffix(".words").read_text(encoding="utf-8").split())


def arpa_words_of(text: str) -> list[str]:
    return [line.split("\t")[1] for line in text.split("\\1-grams:\n")[1].split("\n\n")[0].splitlines()][3:]


def test_a_damaged_binary_has_no_words_to_read(tmp_path):
    data = TINY_BIN.read_bytes()
    cases = {
        "cut.bin": (data[:-3], "not at its end"),  # cut inside the last word
        "short.bin": (data[: data.rindex(b"\0", 0, len(data) - 1) + 1], "not at its end"),  # a whole word short
        "header.bin": (data[:100], "cut short in its header"),
        "body.bin": (data[:300], "not at its end"),
        "version4.bin": (data.replace(b"format version 5", b"format version 4", 1), "format version 5"),
        "unfinished.bin": (b"mmap lm http://kheafield.com/code incomplete\n" + data[45:], "did not finish"),
    }
    for name, (content, why) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DecoderError, match=why) as e:
            binary_words(tmp_path / name)
        assert str(e.value).startswith(str(tmp_path / name)) and "\n" not in str(e.value), name


def build_binary(tmp_path, *options, arpa=TINY_ARPA, name="lm.bin"):
    (tmp_path / "lm.arpa").write_text(arpa, encoding="utf-8")
    out = tmp_path / name
    done = subprocess.run([str(KENLM_DIR / "build_binary"), *options, str(tmp_path / "lm.arpa"), str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


@needs_kenlm
@pytest.mark.parametrize(
    "options",
    [["probing"], ["trie"], ["-q", "8", "-b", "8", "trie"], ["-a", "64", "-q", "8", "-b", "8", "trie"],
     ["-w", "mmap", "trie"], ["-w", "mmap", "probing"]],
    ids=["probing", "trie", "quantized", "array", "mmap-trie", "mmap-probing"],
)  # fmt: skip
def test_the_words_of_every_binary_build_binary_writes(tmp_path, options):
    want = sorted(arpa_words_of(TINY_ARPA))
    assert sorted(binary_words(build_binary(tmp_path, *options))) == want
    # an ARPA without <unk>: KenLM adds it, and counts it
    no_unk = TINY_ARPA.replace("ngram 1=8", "ngram 1=7").replace("-1.5\t<unk>\t0\n", "")
    assert sorted(binary_words(build_binary(tmp_path, *options, arpa=no_unk))) == want


@needs_kenlm
def test_a_binary_built_without_its_vocabulary_is_one_clear_line(tmp_path, capsys):
    lm = build_binary(tmp_path, "-v", "trie")
    rc, out, err = lm_cli(capsys, "words", lm)
    assert (rc, out) == (2, "") and err.count("\n") == 1
    assert err.startswith(f"error: {lm}: this KenLM binary holds no vocabulary (built with build_binary -v)")
    rc, out, err = run(capsys, PORTRET, "--lm", lm, "-o", tmp_path / "out.txt", "--threads", "1")
    assert (rc, out) == (2, "") and err.count("\n") == 1 and "holds no vocabulary" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.arpa", "lm.bin"]


def test_lm_words_writes_the_vocabulary_of_an_arpa_or_a_binary(tmp_path, capsys, arpa):
    lm = tmp_path / "golos-like.bin"
    shutil.copyfile(TINY_BIN, lm)
    rc, out, err = lm_cli(capsys, "words", lm)
    assert rc == 0 and out == f"wrote {tmp_path / 'golos-like.words'}: 5 words\n", err
    assert sorted((tmp_path / "golos-like.words").read_text(encoding="utf-8").split()) == sorted(arpa_words(arpa))
    rc, out, err = lm_cli(capsys, "words", arpa, "-o", tmp_path / "from-arpa.txt")
    assert rc == 0 and (tmp_path / "from-arpa.txt").read_text(encoding="utf-8").split() == arpa_words(arpa)
    for output, why in [(lm, "is the input"), (tmp_path, "is a folder")]:  # refused, the LM untouched
        rc, out, err = lm_cli(capsys, "words", lm, "-o", output)
        assert (rc, out) == (2, "") and why in err and err.count("\n") == 1, err
    assert lm.read_bytes() == TINY_BIN.read_bytes()
    rc, _, err = lm_cli(capsys, "words", tmp_path / "golos-like.words")  # not an LM at all
    assert rc == 2 and "not a KenLM language model" in err and err.count("\n") == 1


def test_a_binary_lm_without_its_words_file_gets_one(capsys, tmp_path, arpa):
    lm = tmp_path / "alone.bin"
    shutil.copyfile(TINY_BIN, lm)
    args = [PORTRET, "--lm", lm, "--format", "json", "--beam_width", "16", "--threads", "1"]
    rc, out, err = run(capsys, *args)
    assert rc == 0 and err == f"lm: wrote {tmp_path / 'alone.words'}: the 5 words stored in alone.bin, the " \
        "decoder's lexicon\n", err  # fmt: skip
    assert sorted((tmp_path / "alone.words").read_text(encoding="utf-8").split()) == sorted(arpa_words(arpa))
    rc, again, err = run(capsys, *args)
    assert rc == 0 and again == out and err == ""  # the next run reads it
    # where NAME.words cannot be written (here a folder of that name), the words are read from the binary each time
    (tmp_path / "alone.words").unlink()
    (tmp_path / "alone.words").mkdir()
    rc, again, err = run(capsys, *args)
    assert rc == 0 and again == out and err.count("\n") == 1
    assert err.startswith(f"lm: {tmp_path / 'alone.words'}: cannot write it (") and "read from it each time" in err


# the shipped LM is used by default only with the model it was tuned for, known by the model's content


def test_the_shipped_lm_is_tuned_for_the_shipped_model(tmp_path):
    settings = load_settings(DEMO_LM)
    assert tuned_for(settings, DEMO) is True  # fails if models/demo.onnx changes without `lm tune`
    shutil.copyfile(DEMO, tmp_path / "renamed.onnx")
    assert tuned_for(settings, tmp_path / "renamed.onnx") is True
    changed = bytearray(DEMO.read_bytes())
    changed[len(changed) // 2] ^= 1  # the same size, one bit off: the hash decides
    (tmp_path / "changed.onnx").write_bytes(changed)
    assert tuned_for(settings, tmp_path / "changed.onnx") is False
    assert model_identity(tmp_path / "changed.onnx")["model_bytes"] == DEMO.stat().st_size
    assert tuned_for({"tuned_on": {"model": "demo.onnx"}}, DEMO) is None  # an LM that records no model
    assert tuned_for({}, DEMO) is None


@pytest.fixture(scope="module")
def re_exported(tmp_path_factory):
    """The demo model's graph and weights with one more metadata entry: the same alphabet and letters, but another
    file, as a re-export or a fine-tuned model is."""
    import onnx

    model = onnx.load(str(DEMO))
    entry = model.metadata_props.add()
    entry.key, entry.value = "note", "re-exported"
    path = tmp_path_factory.mktemp("other") / "mine.onnx"
    onnx.save(model, str(path))
    return path


def test_without_lm_the_shipped_lm_decodes_only_its_own_model(capsys, tmp_path, re_exported):
    rc, greedy, _ = run(capsys, PORTRET, "--lm", "none", "--threads", "1")
    assert rc == 0 and greedy != PORTRET_TEXT + "\n"  # greedy misspells it: the LM is what gets it right
    rc, out, err = run(capsys, PORTRET, "--threads", "1")
    assert rc == 0 and out == PORTRET_TEXT + "\n"
    assert err == "lm: models/demo-lm.bin (tuned for this model; --lm none for greedy)\n" or err.startswith(
        f"lm: {DEMO_LM} (tuned"
    )  # relative when run from the repository
    shutil.copyfile(DEMO, tmp_path / "copy.onnx")  # the same content under another name: still its model
    rc, out, err = run(capsys, PORTRET, "--model", tmp_path / "copy.onnx", "--threads", "1")
    assert rc == 0 and out == PORTRET_TEXT + "\n" and "(tuned for this model" in err
    # another model with the same alphabet: greedy, and one line that says so and how to change it
    rc, out, err = run(capsys, PORTRET, "--model", re_exported, "--threads", "1")
    assert rc == 0 and out == greedy
    assert err.count("\n") == 1 and err.startswith("lm: none (greedy): ") and "tuned for demo.onnx only" in err
    assert "--lm PATH" in err
    rc, _, err = run(capsys, PORTRET, "--model", re_exported, "--hotwords", "венок", "--threads", "1")
    assert rc == 2 and "--hotwords: needs a language model (--lm)" in err  # not the demo LM behind the user's back


def test_an_explicit_lm_is_used_on_any_model_and_said_when_tuned_for_another(capsys, re_exported, arpa):
    rc, out, err = run(capsys, PORTRET, "--model", re_exported, "--lm", DEMO_LM, "--threads", "1")
    assert rc == 0 and out == PORTRET_TEXT + "\n"  # asked for: used
    assert err.count("\n") == 1 and f"lm: {DEMO_LM} is tuned for demo.onnx, not {re_exported}" in err
    rc, out, err = run(capsys, PORTRET, "--model", re_exported, "--lm", arpa, "--threads", "1")
    assert rc == 0 and err == ""  # an LM that records no model: nothing to say


def test_a_narrower_beam_for_one_call_decodes_as_a_decoder_of_that_width(arpa):
    """words(lp, beam_width) (stream.py's LM partials): what a decoder built with that beam finds, on the same LM
    and trie (no second copy), and the decoder's own width is untouched by it. (The clip ends in a pause: without
    one, flashlight breaks ties between equal paths either way from run to run, even in two fresh decoders.)"""
    lp = spell("на стене висел венок ", {10: ("е", 0.6)})
    settings = {"alpha": 0.5, "beta": 1.0}
    dec = BeamDecoder(LABELS, arpa, settings)
    wide = dec.words(lp)
    assert [w for w, _, _ in wide] == ["на", "стене", "висел", "венок"]
    for width in (2, 3, 4):
        assert dec.words(lp, beam_width=width) == BeamDecoder(LABELS, arpa, {**settings, "beam_width": width}).words(lp)
    # one hypothesis cannot carry "ви..." (the weaker letter) until the LM rewards it: the beam really is narrower
    assert "висел" not in [w for w, _, _ in dec.words(lp, beam_width=1)]
    assert dec.words(lp) == wide and dec.words(lp, beam_width=1000) == wide
    assert set(dec.narrower) == {1, 2, 3, 4}
