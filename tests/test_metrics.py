import math

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
