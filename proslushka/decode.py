"""CTC beam search with a KenLM word language model and hotwords, for the torch-free transcriber.

Greedy CTC picks each frame's best letter, so one unclear vowel makes a wrong word ("весел" for "висел"); beam
search keeps the best few spellings and lets a word n-gram model choose among them, scoring each hypothesis as
    acoustic log-prob + α · LM log10-prob + β · words (+ unk_score for each word outside the LM's vocabulary),
with α and β tuned on a manifest (python -m proslushka.lm tune) and kept in NAME.json beside the LM NAME.bin.
The search is flashlight-text's lexicon decoder (C++, KenLM inside; what torchaudio's CTC decoder wraps): measured
on the demo model it beat a pyctcdecode-style prefix search (ctc-beam-decoder) by 4 WER points (README).
Hotwords join the vocabulary with a bonus of their weight when they complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Decoder settings and their defaults (the shipped LM's NAME.json holds tuned ones). Each: (default, lowest, highest).
SETTINGS: dict[str, tuple[float, float, float]] = {
    "alpha": (2.0, 0.0, 10.0),  # LM weight (KenLM's scores are log10, the acoustic ones natural logs)
    "beta": (0.0, -20.0, 20.0),  # bonus per word
    "unk_score": (-5.0, -100.0, 0.0),  # penalty for a word outside the LM's vocabulary
    "beam_width": (64, 1, 1024),
}
DEFAULTS = {k: v[0] for k, v in SETTINGS.items()}
HOTWORD_WEIGHT = 10.0  # a hotword without a weight ("имя" rather than "имя:5")
MAX_HOTWORD_WEIGHT = 100.0  # a log-prob bonus per completed word
BEAM_THRESHOLD = 25.0  # hypotheses further than this below the best are dropped (flashlight's usual value)


class DecoderError(ValueError):
    """An LM, its settings file or a hotword list that cannot be used; the message names the file or the word."""


def settings_path(lm: str | os.PathLike) -> Path:
    """NAME.json beside NAME.bin (or NAME.arpa): the tuned decoder settings and what the LM was built from."""
    return Path(lm).with_suffix(".json")


def vocab_path(lm: str | os.PathLike) -> Path:
    """NAME.words beside the LM: its vocabulary, one word a line (a binary KenLM file cannot list it cheaply)."""
    return Path(lm).with_suffix(".words")


def load_settings(lm: str | os.PathLike) -> dict:
    """NAME.json's contents with every setting checked (missing ones take the defaults); the defaults if none."""
    path = settings_path(lm)
    if not path.is_file():  # an LM of someone else's: untuned defaults
        return dict(DEFAULTS)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DecoderError(f"{path}: not a readable JSON settings file ({e})") from None
    if not isinstance(data, dict):
        raise DecoderError(f"{path}: not a JSON object")
    return {**data, **check_settings({**DEFAULTS, **{k: data[k] for k in SETTINGS if k in data}}, path)}


def check_settings(values: dict, where: str | os.PathLike) -> dict:
    """`values` with each setting a finite number in its range (beam_width an integer); DecoderError otherwise."""
    out = {}
    for key, (_, lo, hi) in SETTINGS.items():
        v = values[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
        if key == "beam_width":
            ok = ok and float(v).is_integer()
        if not ok:
            raise DecoderError(f"{where}: {key} must be a number from {lo:g} to {hi:g}, not {v!r}")
        out[key] = int(v) if key == "beam_width" else float(v)
    return out


def parse_hotwords(spec: str, labels: Sequence[str]) -> dict[str, float]:
    """ "слово:вес,другое" → {"слово": вес, "другое": HOTWORD_WEIGHT}; words are normalized like transcripts."""
    from .text import check, normalize

    words: dict[str, float] = {}
    for item in filter(str.strip, spec.split(",")):
        word, _, weight = item.rpartition(":") if ":" in item else (item, "", "")
        text = normalize(word)
        why = check(text, labels)
        if why:
            raise DecoderError(f"--hotwords: {item.strip()!r}: {why}")
        try:
            value = float(weight) if weight.strip() else HOTWORD_WEIGHT
        except ValueError:
            raise DecoderError(f"--hotwords: {item.strip()!r}: the weight must be a number") from None
        if not 0 <= value <= MAX_HOTWORD_WEIGHT:  # NaN fails too; a huge bonus only turns the scores into inf
            raise DecoderError(f"--hotwords: {item.strip()!r}: the weight must be from 0 to {MAX_HOTWORD_WEIGHT:g}")
        words[text] = value
    return words


def write_settings(lm: str | os.PathLike, settings: dict) -> None:
    from .files import atomic_write

    atomic_write(settings_path(lm), json.dumps(settings, ensure_ascii=False, indent=1) + "\n")


def lm_kind(path: Path) -> str:
    """ "binary" or "arpa" by the file's first bytes; DecoderError naming the file for anything else.

    KenLM itself would also refuse a bad file, but a check here gives one clear line instead of its exception text,
    and a truncated binary is caught by KenLM's own size check when the decoder loads it."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise DecoderError(f"{path}: cannot read the language model ({e.strerror})") from None
    if head.startswith(b"mmap lm http://kheafield.com/code"):
        return "binary"
    if head.lstrip().startswith(b"\\data\\"):
        return "arpa"
    raise DecoderError(f"{path}: not a KenLM language model (neither a KenLM binary nor ARPA text)")


def arpa_words(path: str | os.PathLike) -> list[str]:
    """The words of an ARPA file's unigram section, without <s>, </s> and <unk>."""
    words, inside = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if inside:
                    break
                inside = line == "\\1-grams:"
            elif inside and line:
                word = line.split("\t")[1] if "\t" in line else line.split()[1]
                if word not in ("<s>", "</s>", "<unk>"):
                    words.append(word)
    return words


def lm_words(path: Path, kind: str) -> list[str]:
    """The LM's vocabulary: NAME.words beside it, else (for ARPA) its unigram section."""
    words_file = vocab_path(path)
    try:
        if words_file.is_file():
            return words_file.read_text(encoding="utf-8").split()
        if kind == "arpa":
            return arpa_words(path)
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise DecoderError(f"{words_file if words_file.is_file() else path}: unreadable vocabulary ({e})") from None
    raise DecoderError(
        f"{words_file}: missing (a binary LM needs its vocabulary; python -m proslushka.lm build writes it)"
    )


@contextlib.contextmanager
def quiet_stderr():
    """Silence what C++ code writes to file descriptor 2 (Python's sys.stderr is untouched)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def hotword_lm(kenlm, bonus: dict[int, float]):
    """KenLM plus a bonus for each hotword (by word index), as a flashlight LM (start/score/finish).

    The bonus is in the LM's units (log10), so that α × bonus equals the hotword's weight."""
    from flashlight.lib.text.decoder import LM

    class HotwordLM(LM):  # defined here: flashlight is imported only when a decoder is made
        def start(self, start_with_nothing):
            return kenlm.start(start_with_nothing)

        def score(self, state, index):
            out, score = kenlm.score(state, index)
            return out, score + bonus.get(index, 0.0)

        def finish(self, state):
            return kenlm.finish(state)

    return HotwordLM()


class BeamDecoder:
    """flashlight-text's CTC beam search over our labels (blank last, label 0 the space, which separates words).

    With an LM: the lexicon decoder, whose hypotheses spell words of the LM's vocabulary (each followed by a space),
    plus an unknown-word path (unk_score) for spellings that leave it; hotwords join the vocabulary with a bonus.
    Without (lm=None): the lexicon-free decoder and no LM; it keeps each hypothesis's best path (not a sum over
    paths), so it finds what greedy decoding finds, only slower: a baseline for the benchmark."""

    def __init__(
        self,
        labels: Sequence[str],
        lm: str | os.PathLike | None,
        settings: dict | None = None,
        hotwords: dict[str, float] | None = None,
    ):
        from flashlight.lib.text import decoder as fl

        s = self.settings = check_settings({**DEFAULTS, **(settings or {})}, "the decoder settings")
        self.labels, self.blank, space = list(labels), len(labels), labels.index(" ")
        tokens = len(labels) + 1
        if lm is None:
            if hotwords:
                raise DecoderError("--hotwords: needs a language model (--lm), whose vocabulary they join")
            opts = fl.LexiconFreeDecoderOptions(
                s["beam_width"], tokens, BEAM_THRESHOLD, 0.0, 0.0, False, fl.CriterionType.CTC
            )
            self.decoder = fl.LexiconFreeDecoder(opts, fl.ZeroLM(), space, self.blank, [])
            return
        # self.lm: a Python-side LM (hotwords) must outlive the decoder, which holds it only on the C++ side
        self.lm, trie, unk = self._lexicon(labels, Path(lm), hotwords or {})
        opts = fl.LexiconDecoderOptions(
            s["beam_width"],
            tokens,
            BEAM_THRESHOLD,
            s["alpha"],
            s["beta"],
            s["unk_score"],
            0.0,
            False,
            fl.CriterionType.CTC,
        )
        self.decoder = fl.LexiconDecoder(opts, trie, self.lm, space, self.blank, unk, [], False)

    def _lexicon(self, labels: Sequence[str], path: Path, hotwords: dict[str, float]):
        """(the LM, the trie of spellings, <unk>'s index): every vocabulary word and hotword spelled in our labels
        and closed by a space, its unigram score kept for look-ahead (smeared up the trie)."""
        from flashlight.lib.text import decoder as fl
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary

        index = {c: i for i, c in enumerate(labels)}
        words = lm_words(path, lm_kind(path))
        known = set(words)
        vocab = [w for w in words if all(c in index for c in w)] + [w for w in hotwords if w not in known]
        del words, known
        word_dict = Dictionary([*vocab, "<unk>"])
        try:
            with quiet_stderr():  # KenLM prints a progress bar and advice when it reads ARPA
                lm = KenLM(str(path), word_dict)
        except Exception as e:  # KenLM's own exceptions (format, truncation) arrive as RuntimeError
            raise DecoderError(f"{path}: KenLM cannot load it ({str(e).strip().splitlines()[-1][:200]})") from None
        unk = word_dict.get_index("<unk>")
        del word_dict  # KenLM keeps its own index map; freed before the trie grows, for a lower peak of memory
        if hotwords:  # weights are in log-prob units of the acoustic score; the LM's are log10 times alpha
            alpha = max(self.settings["alpha"], 1e-3)
            lm = hotword_lm(lm, {vocab.index(w): weight / alpha for w, weight in hotwords.items()})
        trie = fl.Trie(len(labels) + 1, index[" "])
        for at in range(0, len(vocab), 4096):
            start = lm.start(False)  # a fresh start state per batch: each one caches the states scored from it
            for i in range(at, min(at + 4096, len(vocab))):
                trie.insert([index[c] for c in vocab[i]] + [index[" "]], i, lm.score(start, i)[1])
        trie.smear(fl.SmearingMode.MAX)
        return lm, trie, unk

    def words(self, logprobs: np.ndarray) -> list[tuple[str, int, int]]:
        """(word, first frame, frame after the last) of the best hypothesis of log-probs [T, V]."""
        from .infer import ctc_words

        x = np.ascontiguousarray(logprobs, dtype=np.float32)
        if len(x) == 0:
            return []
        best = self.decoder.decode(x.ctypes.data, x.shape[0], x.shape[1])[0]
        path = list(best.tokens)[1 : len(x) + 1]  # one token per frame, between a start and an end marker
        return [(w.word, round(w.start), round(w.end)) for w in ctc_words(path, self.blank, self.labels, 1.0)]

    def text(self, logprobs: np.ndarray) -> str:
        return " ".join(w for w, _, _ in self.words(logprobs))
