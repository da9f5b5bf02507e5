"""Word and character error rates. No torch: inference uses it."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterator, Sequence

import numpy as np


def edit_distance(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions, each costing 1) between two sequences."""
    if not ref or not hyp:
        return len(ref) + len(hyp)
    last = deque(_distance_rows(ref, hyp), maxlen=1)[0]  # one row at a time: memory stays O(len(hyp))
    return int(last[-1])


def edit_ops(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> list[tuple[str, Hashable, Hashable]]:
    """One shortest edit script from ref to hyp: ("S", r, h), ("D", r, None) or ("I", None, h), in order; its length
    is edit_distance(ref, hyp). For error analysis (bench/error_kinds.py): keeps the whole table, len(ref)·len(hyp)."""
    d = np.stack(list(_distance_rows(ref, hyp)))
    ops: list[tuple[str, Hashable, Hashable]] = []
    i, j = len(ref), len(hyp)
    while i or j:
        if i and j and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            if ref[i - 1] != hyp[j - 1]:
                ops.append(("S", ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif i and d[i, j] == d[i - 1, j] + 1:
            ops.append(("D", ref[i - 1], None))
            i -= 1
        else:
            ops.append(("I", None, hyp[j - 1]))
            j -= 1
    return ops[::-1]


def _distance_rows(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> Iterator[np.ndarray]:
    """Row i of the Levenshtein table, for i = 0 .. len(ref): the distance from ref[:i] to each prefix of hyp."""
    # map tokens to ints so each DP row is a few numpy operations instead of a Python loop over the row
    ids: dict[Hashable, int] = {}
    r = [ids.setdefault(x, len(ids)) for x in ref]
    h = np.array([ids.setdefault(x, len(ids)) for x in hyp], dtype=np.int64)
    steps = np.arange(len(h) + 1)
    prev = steps.copy()  # distance from ref[:0] to each hyp prefix
    yield prev
    for i, token in enumerate(r, start=1):
        # substitution/match and deletion first; insertions chain along the row: cur[j] = min_k (best[k] + j - k)
        best = np.empty_like(prev)
        best[0] = i
        best[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (h != token))
        prev = np.minimum.accumulate(best - steps) + steps
        yield prev


def error_counts(ref: str, hyp: str) -> tuple[int, int, int, int]:
    """(char_edits, char_total, word_edits, word_total) of one utterance, with cer's and wer's conventions."""
    ref_words, hyp_words = ref.split(), hyp.split()
    ref_chars, hyp_chars = " ".join(ref_words), " ".join(hyp_words)
    return (edit_distance(ref_chars, hyp_chars), len(ref_chars), edit_distance(ref_words, hyp_words), len(ref_words))


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate: word edits summed over utterances / reference words summed (words split on whitespace).

    With no reference words at all: 0.0 when there are no edits either, else inf.
    """
    counts = _totals(refs, hyps)
    return _rate(counts[2], counts[3])


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate: character edits summed / reference characters summed.

    Convention: whitespace runs are collapsed to one space and the ends stripped, then every character counts,
    the spaces between words included (so "привет как дела" is 15 characters), as in NeMo's CER.
    """
    counts = _totals(refs, hyps)
    return _rate(counts[0], counts[1])


def _totals(refs: Sequence[str], hyps: Sequence[str]) -> list[int]:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    totals = [0, 0, 0, 0]
    for ref, hyp in zip(refs, hyps, strict=True):
        for k, n in enumerate(error_counts(ref, hyp)):
            totals[k] += n
    return totals


def _rate(edits: int, total: int) -> float:
    if total == 0:
        return 0.0 if edits == 0 else math.inf
    return edits / total
