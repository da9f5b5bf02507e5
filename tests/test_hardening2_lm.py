"""Hostile LM files and `lm` options (#26 items 1, 5, 6, 7, 16) and decoding as the layer below the transcriber.

Each case is one line naming the file or option and exit 2 (as other unusable LMs are: README "Beam search with a
language model"), with nothing written; none hangs (a deadline turns a hang into a failure) or reads a whole corpus
into memory."""

import ast
import contextlib
import json
import os
import random
import shutil
import signal
import tracemalloc

import pytest
from conftest import ROOT
from test_lm import PORTRET, TINY_ARPA, TINY_BIN, fake_kenlm, lm_cli, run, spell

from proslushka.decode import BeamDecoder, DecoderError, load_settings
from proslushka.lm import build as lm_build
from proslushka.text import LABELS


class HangError(Exception):
    """Not an OSError (as TimeoutError is), which the code under test would catch and report as a read error."""


@contextlib.contextmanager
def deadline(seconds: int):
    """HangError raised where the body is still running after `seconds` (a blocked open() of a FIFO included)."""

    def expired(*_):
        raise HangError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def tiny_lm(folder, name="my.arpa"):
    lm = folder / name
    lm.write_text(TINY_ARPA, encoding="utf-8")
    return lm


def transcribe_refuses(capsys, tmp_path, lm, named, why):
    """transcribe.py --lm `lm`: exit 2, one line naming `named` and saying `why`, no output written."""
    out = tmp_path / "out.txt"
    with deadline(30):
        rc, stdout, err = run(capsys, PORTRET, "--lm", lm, "-o", out, "--threads", "1")
    assert (rc, stdout) == (2, ""), err
    assert err.count("\n") == 1 and err.startswith(f"error: {named}") and why in err, err
    assert not out.exists()


# item 1: NAME.json nested 100,000 deep, a 5,000-digit number, a file far larger than settings ever are


@pytest.mark.parametrize(
    "content, why",
    [
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
        ('{"alpha": ' + "1" * 5000 + "}", "a number too long"),
        ('{"note": "' + "x" * (1 << 20) + '"}', "larger than 1 MiB"),
    ],
    ids=["deep", "digits", "huge"],
)
def test_a_hostile_settings_file_is_one_line_exit_2(capsys, tmp_path, content, why):
    lm = tiny_lm(tmp_path)
    settings = tmp_path / "my.json"
    settings.write_text(content)
    with pytest.raises(DecoderError, match=why):
        load_settings(lm)
    transcribe_refuses(capsys, tmp_path, lm, settings, why)
    rc, out, err = lm_cli(capsys, "tune", "--manifest", tmp_path / "none.jsonl", "--lm", lm)
    assert (rc, out) == (2, "") and err.startswith(f"error: {settings}") and err.count("\n") == 1, err
    assert settings.read_text() == content  # not rewritten


# item 5: a vocabulary that is empty, or in another alphabet


def test_an_empty_vocabulary_is_refused_naming_its_file(capsys, tmp_path):
    lm = tiny_lm(tmp_path)
    words = tmp_path / "my.words"
    words.write_text("\n")
    with pytest.raises(DecoderError, match="no words"):
        BeamDecoder(LABELS, lm)
    transcribe_refuses(capsys, tmp_path, lm, words, "no words")
    # an LM that holds no word itself (only <s>, </s> and <unk>), without a .words: the LM is named
    bare = tmp_path / "bare.arpa"
    bare.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.5\t<unk>\t0\n0\t<s>\t0\n-1.0\t</s>\t0\n\n\\end\\\n")
    transcribe_refuses(capsys, tmp_path, bare, bare, "no words")


def test_a_vocabulary_in_another_alphabet_is_refused(capsys, tmp_path):
    lm = tiny_lm(tmp_path)
    words = tmp_path / "my.words"
    words.write_text("hello\nworld\n<unk>\nthe\n")
    with pytest.raises(DecoderError, match="none of its 3 words"):
        BeamDecoder(LABELS, lm)
    transcribe_refuses(capsys, tmp_path, lm, words, "none of its 3 words is spelled in the model's alphabet")


def test_words_outside_the_alphabet_are_left_out_with_one_line(capsys, tmp_path):
    lm = tiny_lm(tmp_path)
    lp = spell("на стене висел венок", {10: ("е", 0.6)})
    want = BeamDecoder(LABELS, lm, {"alpha": 0.5, "beta": 1.0}).text(lp)
    assert capsys.readouterr().err == ""  # an LM wholly in the alphabet: nothing to say
    (tmp_path / "my.words").write_text("на\nстене\nвисел\nвенок\nквас\nhello\nёлка\n")  # ё is not a label
    for _ in range(3):  # said once, however many decoders are made (as `lm tune` makes one per setting)
        assert BeamDecoder(LABELS, lm, {"alpha": 0.5, "beta": 1.0}).text(lp) == want == "на стене висел венок"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'my.words'}: 2 of its 7 words are outside" in err, err


# item 6: a FIFO, a folder or a device as the LM, its .words or its .json


def test_a_fifo_folder_or_device_as_the_lm_is_refused_without_hanging(capsys, tmp_path):
    fifo = tmp_path / "pipe.bin"
    os.mkfifo(fifo)
    transcribe_refuses(capsys, tmp_path, fifo, fifo, "a FIFO, not")
    folder = tmp_path / "folder.bin"
    folder.mkdir()
    transcribe_refuses(capsys, tmp_path, folder, folder, "a folder, not")
    transcribe_refuses(capsys, tmp_path, "/dev/zero", "/dev/zero", "a device")
    with deadline(30):
        rc, out, err = lm_cli(capsys, "words", fifo)
    assert (rc, out) == (2, "") and err.startswith(f"error: {fifo}: a FIFO") and err.count("\n") == 1, err


def test_a_fifo_or_folder_as_the_settings_is_refused_without_hanging(capsys, tmp_path):
    lm = tiny_lm(tmp_path)
    settings = tmp_path / "my.json"
    os.mkfifo(settings)
    transcribe_refuses(capsys, tmp_path, lm, settings, "a FIFO, not")
    settings.unlink()
    settings.mkdir()  # not silently passed over: the LM's tuned settings would be lost without a word
    transcribe_refuses(capsys, tmp_path, lm, settings, "a folder, not")


def test_a_fifo_where_a_binary_lm_s_words_go_is_neither_read_nor_written(capsys, tmp_path):
    lm = tmp_path / "my.bin"  # a binary's missing NAME.words is written from it: never into a FIFO of that name
    shutil.copyfile(TINY_BIN, lm)
    words = tmp_path / "my.words"
    os.mkfifo(words)
    with deadline(30):
        rc, out, err = run(capsys, PORTRET, "--lm", lm, "--threads", "1")
    assert rc == 0 and out.strip() and err.count("\n") == 1, err
    assert err.startswith(f"lm: {words}: cannot write it (a FIFO); my.bin's words are read from it each time"), err
    assert words.is_fifo()


def test_build_refuses_a_fifo_where_its_words_or_settings_go(capsys, tmp_path):
    kenlm = fake_kenlm(tmp_path / "kenlm")
    (tmp_path / "t.txt").write_text("на стене\n")
    for beside in ("words", "json"):
        fifo = tmp_path / f"lm.{beside}"
        os.mkfifo(fifo)
        with deadline(30):
            rc, out, err = lm_cli(capsys, "build", tmp_path / "t.txt", "-o", tmp_path / "lm.bin", "--kenlm_dir", kenlm)
        assert (rc, out) == (2, "") and err.startswith(f"error: {fifo}: not a regular file") and err.count("\n") == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kenlm", f"lm.{beside}", "t.txt"]
        fifo.unlink()


# item 7: `lm build` streams its texts


def test_build_streams_the_text_a_line_at_a_time(tmp_path, capsys):
    """The Python side of a build holds a line at a time, not the text (a 300 MB text took 7 GB): measured with
    tracemalloc on a 1.3 MB text, whose lines alone take 5 MB as Python strings."""
    kenlm = fake_kenlm(tmp_path / "kenlm")
    r = random.Random(0)
    words = "на стене висел венок из запыленных иммортелей кто то пел песню".split()
    lines = [" ".join(r.choice(words) for _ in range(6)).capitalize() + "." for _ in range(20_000)]
    text = tmp_path / "text.txt"
    text.write_text("\n".join(lines) + "\nhello world\n", encoding="utf-8")
    manifest = tmp_path / "valid.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "a.wav", "text": "Венок из песню!"}) + "\n")
    tracemalloc.start()
    try:
        settings = lm_build([str(text)], tmp_path / "lm.bin", exclude=[str(manifest)], kenlm_dir=str(kenlm))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < text.stat().st_size / 2, peak
    kept = [s.lower()[:-1] for s in lines if "венок из песню" not in s.lower()]
    assert settings["lines"] == len(kept) and 0 < len(kept) < len(lines)
    assert capsys.readouterr().err == f"{len(kept)} lines kept, {len(lines) - len(kept)} dropped for containing an " \
        "--exclude sentence\n"  # fmt: skip


def test_build_gives_lmplz_the_normalized_lines_in_order(tmp_path):
    kenlm = fake_kenlm(tmp_path / "kenlm")
    seen = tmp_path / "corpus-seen.txt"
    lmplz = (kenlm / "lmplz").read_text()  # the fake lmplz, also keeping a copy of the corpus it was given
    (kenlm / "lmplz").write_text(lmplz + f"shutil.copyfile(sys.argv[sys.argv.index('--text') + 1], {str(seen)!r})\n")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Кто-то пел песню.\n\nhello\nНа стене висел венок!\r\n")
    b.write_bytes("ВЕНОК висел\nзаписка \xff\n".encode() + b"\xff\xfe\n")  # \xff: not UTF-8, replaced, dropped
    manifest = tmp_path / "valid.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "a.wav", "text": "Стене висел"}) + "\n")
    settings = lm_build([str(a), str(b)], tmp_path / "lm.bin", exclude=[str(manifest)], kenlm_dir=str(kenlm))
    assert seen.read_text(encoding="utf-8") == "кто то пел песню\nвенок висел\n" and settings["lines"] == 2


# item 16: the numeric options of `lm`


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--threads", "-1"], "--threads"),
        (["--threads", "0"], "--threads"),
        (["--threads", "100000"], "--threads"),
        (["--alpha", "nan"], "--alpha"),
        (["--alpha", "1", "inf"], "--alpha"),
        (["--alpha", "-0.5"], "--alpha"),
        (["--alpha", "11"], "--alpha"),
        (["--beta", "nan"], "--beta"),
        (["--beta", "-21"], "--beta"),
        (["--beam_width", "0"], "--beam_width"),
        (["--beam_width", "64", "2000"], "--beam_width"),
        (["--beam_width", "1.5"], "--beam_width"),
    ],
)
def test_tune_refuses_numbers_out_of_range_at_once(capsys, tmp_path, args, flag):
    lm = tiny_lm(tmp_path)  # a manifest that does not exist: a refused option must be found before it is read
    with pytest.raises(SystemExit) as e:
        lm_cli(capsys, "tune", "--manifest", tmp_path / "absent.jsonl", "--lm", lm, *args)
    last = capsys.readouterr().err.splitlines()[-1]
    assert e.value.code == 2 and f"argument {flag}: must be" in last, last
    assert not (tmp_path / "my.json").exists()


@pytest.mark.parametrize("order", ["1", "7", "nan"])
def test_build_refuses_an_order_out_of_range(capsys, tmp_path, order):
    (tmp_path / "t.txt").write_text("на стене\n")
    with pytest.raises(SystemExit) as e:
        lm_cli(capsys, "build", tmp_path / "t.txt", "-o", tmp_path / "x.bin", "--order", order)
    assert e.value.code == 2 and "--order" in capsys.readouterr().err.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


# layering: decoding is the layer below the transcriber


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_decode_does_not_import_the_transcriber():
    decode = imported_modules(ROOT / "proslushka" / "decode.py")
    assert not decode & {".infer", "proslushka.infer", ".lm", "proslushka.lm"}, decode
    assert ".decode" in imported_modules(ROOT / "proslushka" / "infer.py")
