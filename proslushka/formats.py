"""Transcripts as txt, json, srt, vtt or tsv. Subtitle cues are groups of words cut by length, duration and
pauses; json and tsv carry every word's start and end. No torch: inference uses it."""

from __future__ import annotations

import json
import re
from typing import Any

from .infer import Transcript, Word

FORMATS = ("txt", "json", "srt", "vtt", "tsv")
MAX_LINE_CHARS = 42  # the usual subtitle line width
MAX_CUE_SECONDS = 7.0
CUE_PAUSE_SECONDS = 1.0  # a pause this long starts a new cue
_SURROGATE = re.compile("[\ud800-\udfff]")


def cues(words: list[Word], max_words: int | None = None) -> list[tuple[float, float, str]]:
    """(start, end, text) subtitle cues: a new cue after max_words words, past MAX_LINE_CHARS characters or
    MAX_CUE_SECONDS, or at a pause of CUE_PAUSE_SECONDS."""
    groups: list[list[Word]] = []
    for w in words:
        g = groups[-1] if groups else None
        if (
            g is None
            or (max_words is not None and len(g) >= max_words)
            or len(" ".join(x.word for x in g)) + 1 + len(w.word) > MAX_LINE_CHARS
            or w.end - g[0].start > MAX_CUE_SECONDS
            or w.start - g[-1].end >= CUE_PAUSE_SECONDS
        ):
            groups.append([w])
        else:
            g.append(w)
    return [(g[0].start, g[-1].end, " ".join(w.word for w in g)) for g in groups]


def timestamp(seconds: float, decimal: str = ",") -> str:
    """HH:MM:SS,mmm (SubRip) or, with decimal='.', HH:MM:SS.mmm (WebVTT)."""
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def as_dict(t: Transcript) -> dict[str, Any]:
    """The JSON shape: text, duration, and words with start/end in seconds (rounded to ms)."""
    return {
        "text": t.text,
        "duration": round(t.duration, 3),
        "words": [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in t.words],
    }


def to_txt(t: Transcript) -> str:
    return t.text + "\n"


def to_json(t: Transcript, **extra: Any) -> str:
    """One line of JSON (so that several transcripts make a JSON-lines file); `extra` keys come first.

    A file name that is not UTF-8 reaches Python with lone surrogates (b"a\\xff.wav" is "a\\udcff.wav"), which no
    UTF-8 output can hold: they are written as JSON escapes, which json.loads turns back into the same name."""
    text = json.dumps({**extra, **as_dict(t)}, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def to_srt(t: Transcript, max_words: int | None = None) -> str:
    numbered = enumerate(cues(t.words, max_words), start=1)
    return "".join(f"{i}\n{timestamp(a)} --> {timestamp(b)}\n{text}\n\n" for i, (a, b, text) in numbered)


def to_vtt(t: Transcript, max_words: int | None = None) -> str:
    body = (f"{timestamp(a, '.')} --> {timestamp(b, '.')}\n{text}\n\n" for a, b, text in cues(t.words, max_words))
    return "WEBVTT\n\n" + "".join(body)


def to_tsv(t: Transcript) -> str:
    """One word a row: start and end in seconds, then the word."""
    return "start\tend\tword\n" + "".join(f"{w.start:.3f}\t{w.end:.3f}\t{w.word}\n" for w in t.words)


def render(t: Transcript, fmt: str, max_words: int | None = None, **extra: Any) -> str:
    """`t` in format `fmt` (one of FORMATS); `extra` keys go into json only (e.g. the audio path)."""
    if fmt == "txt":
        return to_txt(t)
    if fmt == "json":
        return to_json(t, **extra)
    if fmt == "srt":
        return to_srt(t, max_words)
    if fmt == "vtt":
        return to_vtt(t, max_words)
    if fmt == "tsv":
        return to_tsv(t)
    raise ValueError(f"unknown format {fmt!r} (choose {', '.join(FORMATS)})")
