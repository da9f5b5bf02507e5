"""The alphabet, text normalization, encoding and CTC greedy collapse. No torch: inference uses it."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

# NeMo's Russian char set (quartznet_15x5_ru.yaml, Golos): space, then а..я without ё. Blank is index len(LABELS).
LABELS: tuple[str, ...] = (" ",) + tuple("абвгдежзийклмнопрстуфхцчшщъыьэюя")

# Combining acute/grave accents are stress marks in Russian texts; drop them before anything else.
_STRESS = re.compile("[\u0300\u0301]")
# Anything that is not a letter, digit or space becomes a space (punctuation, dashes, quotes, symbols).
_NON_WORD = re.compile(r"[^\w\s]|_", re.UNICODE)
_SPACES = re.compile(r"\s+")


class TextError(ValueError):
    """Text that holds characters outside the alphabet after normalization."""


def normalize(text: str) -> str:
    """Lowercase, ё→е, punctuation and dashes → space, collapse spaces (NeMo's RUCharParser conventions)."""
    text = unicodedata.normalize("NFD", text)
    text = _STRESS.sub("", text)
    text = unicodedata.normalize("NFC", text).lower().replace("ё", "е")
    text = text.replace("+", " плюс ")
    text = _NON_WORD.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def check(text: str, labels: Sequence[str] = LABELS) -> str | None:
    """Why `text` (already normalized) cannot be encoded, or None when it can."""
    known = set(labels)
    bad = sorted({c for c in text if c not in known})
    if bad:
        return "characters outside the alphabet: " + " ".join(repr(c) for c in bad)
    if not text:
        return "empty text"
    return None


def labels_problem(labels: object) -> str | None:
    """Why `labels` cannot be a model's alphabet (a list of distinct single characters), or None. One rule for a
    .nemo config, an ONNX model's metadata and a checkpoint."""
    if not isinstance(labels, list | tuple) or not all(isinstance(c, str) and len(c) == 1 for c in labels):
        return "labels must be distinct single characters (not a list of them)"
    if len(set(labels)) != len(labels):
        return "labels must be distinct single characters (some repeat)"
    return None


def encode(text: str, labels: Sequence[str] = LABELS) -> list[int]:
    """Normalized text → label ids. Raises TextError on characters outside `labels`."""
    index = {c: i for i, c in enumerate(labels)}
    try:
        return [index[c] for c in text]
    except KeyError as e:
        raise TextError(f"character {e.args[0]!r} is not in the alphabet") from None


def decode(ids: Sequence[int], labels: Sequence[str] = LABELS) -> str:
    """Label ids (blanks already removed) → text."""
    return "".join(labels[i] for i in ids)


def ctc_collapse(frame_ids: Sequence[int], blank: int) -> list[int]:
    """Greedy CTC: merge repeats, then drop blanks."""
    out: list[int] = []
    prev = -1
    for i in frame_ids:
        i = int(i)
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out
