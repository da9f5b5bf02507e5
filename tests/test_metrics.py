import math
import random

import pytest

from proslushka.metrics import cer, edit_distance, error_counts, wer


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("abc", "") == 3
    assert edit_distance("abc", "abc") == 0
    assert edit_distance(["a", "b"], ["b", "a"]) == 2
    assert edit_distance("abcdef", "azced") == 3  # b→z, drop d, f→d


def test_substitution():
    assert wer(["привет как дела"], ["привет как дело"]) == pytest.approx(1 / 3)
    assert cer(["привет как дела"], ["привет как дело"]) == pytest.approx(1 / 15)  # spaces count: 15 chars


def test_insertion_and_deletion():
    assert wer(["привет как дела"], ["привет как твои дела"]) == pytest.approx(1 / 3)
    assert cer(["привет как дела"], ["привет как твои дела"]) == pytest.approx(5 / 15)  # "твои" + a space
    assert wer(["привет как дела"], ["привет дела"]) == pytest.approx(1 / 3)
    assert cer(["привет как дела"], ["привет дела"]) == pytest.approx(4 / 15)


def test_empty_hypothesis():
    assert wer(["привет как дела"], [""]) == 1.0
    assert cer(["привет как дела"], [""]) == 1.0


def test_totals_are_pooled_not_averaged():
    refs, hyps = ["да", "привет как дела"], ["нет", "привет как дела"]
    assert wer(refs, hyps) == pytest.approx(1 / 4)
    assert cer(refs, hyps) == pytest.approx(3 / 17)  # да→нет: 2 substitutions + 1 insertion


def test_whitespace_convention():
    assert cer(["привет  как "], [" привет как"]) == 0.0
    assert error_counts("привет как дела", "привет как дело") == (1, 15, 1, 3)


def test_empty_references():
    assert wer([""], [""]) == 0.0
    assert math.isinf(wer([""], ["да"]))
    with pytest.raises(ValueError):
        wer(["a"], [])


def test_edit_ops_is_a_shortest_script_that_turns_ref_into_hyp():
    from proslushka.metrics import edit_ops

    assert edit_ops("кот", "ко т") == [("I", None, " ")]
    assert edit_ops("молоко", "малака") == [("S", "о", "а")] * 3
    assert edit_ops("", "да") == [("I", None, "д"), ("I", None, "а")]
    rng = random.Random(0)
    for _ in range(200):
        ref = "".join(rng.choice("аб в") for _ in range(rng.randint(0, 12)))
        hyp = "".join(rng.choice("аб в") for _ in range(rng.randint(0, 12)))
        ops = edit_ops(ref, hyp)
        assert len(ops) == edit_distance(ref, hyp)
        kinds = [k for k, _, _ in ops]
        # the letters it removes or swaps come from ref in order, those it adds or swaps in from hyp in order,
        # and what is left of each matches up one to one
        assert _subsequence([r for _, r, _ in ops if r is not None], ref)
        assert _subsequence([h for _, _, h in ops if h is not None], hyp)
        assert len(ref) - kinds.count("D") == len(hyp) - kinds.count("I")


def _subsequence(part: list, whole: str) -> bool:
    it = iter(whole)
    return all(c in it for c in part)


def test_error_kinds_splits_cer_into_kinds(tmp_path, capsys):
    from bench import error_kinds

    report = tmp_path / "r.tsv"
    rows = [
        ("reference", "hypothesis"),
        ("молоко есть", "малоко есть"),  # 1 unstressed vowel
        ("как дела", "какдела"),  # 1 word boundary
        ("съел хлеб", "сел хлеп"),  # 1 sign, 1 voicing
        ("нет", "мет"),  # 1 other
    ]
    report.write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")
    assert error_kinds.main([str(report)]) == 0
    out = capsys.readouterr().out
    chars = sum(len(r) for r, _ in rows[1:])  # 11 + 8 + 9 + 3
    assert f"{chars} reference characters, 5 edits" in out
    for k in ("word boundary", "unstressed vowel", "soft/hard sign", "voicing", "other letter"):
        assert f"{k:17s} {100 / chars:5.2f} CER points" in out
    (tmp_path / "bad.tsv").write_text("no\tcolumns\n", encoding="utf-8")
    assert error_kinds.main([str(tmp_path / "bad.tsv")]) == 1
    assert "bad.tsv" in capsys.readouterr().err
