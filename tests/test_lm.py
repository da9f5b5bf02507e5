"""Beam search with a KenLM language model (decode.py), building/tuning helpers (lm.py) and transcribe.py's --lm.

The LMs here are tiny ARPA files written by the tests (plus tests/data/lm/tiny.bin, the same model as a KenLM
binary), so nothing needs KenLM's build tools or ../shared."""

import json
import os

import numpy as np
import pytest
from conftest import DATA, ROOT

import transcribe
from proslushka.decode import BeamDecoder, DecoderError, arpa_words, load_settings, parse_hotwords
from proslushka.formats import as_dict
from proslushka.infer import Transcriber, ctc_words
from proslushka.lm import KENLM_DIR, clean_lines, excluded
from proslushka.lm import build as lm_build
from proslushka.text import LABELS

BLANK = len(LABELS)
DEMO = ROOT / "models" / "demo.onnx"
PORTRET = ROOT / "samples" / "portret.opus"
TINY_BIN = DATA / "lm" / "tiny.bin"

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
    [("hello:5", "outside the alphabet"), ("кварц:x", "must be a number"), ("кварц:-1", "≥ 0"), (":3", "empty")],
)
def test_bad_hotwords(spec, why):
    with pytest.raises(DecoderError, match=why):
        parse_hotwords(spec, LABELS)


def test_text_for_an_lm_is_normalized_and_evaluation_sentences_are_dropped():
    lines = ["Он, говорят, был здесь!", "hello world", "", "и вот он был здесь вчера", "здесь был он"]
    cleaned = list(clean_lines(lines))
    assert cleaned == ["он говорят был здесь", "и вот он был здесь вчера", "здесь был он"]
    assert list(excluded(cleaned, ["он был здесь"])) == ["он говорят был здесь", "здесь был он"]


@pytest.mark.skipif(
    not os.environ.get("CI") and not (KENLM_DIR / "lmplz").is_file(),
    reason="needs tools/build_kenlm.sh's lmplz (.ci/run builds it)",
)
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
    no_words = folder / "alone.bin"
    no_words.write_bytes(TINY_BIN.read_bytes())
    cases.append((no_words, folder / "alone.words", "missing"))
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
    rc, _, err = run(capsys, PORTRET, "--lm", arpa, "--beam_width", "0", "-o", tmp_path / "out.txt")
    assert rc == 2 and "beam_width" in err and err.count("\n") == 1
    assert not (tmp_path / "out.txt").exists()
