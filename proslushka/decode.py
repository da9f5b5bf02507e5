"""CTC decoding for the torch-free transcriber (infer.py, the layer above): greedy, and beam search with a KenLM word
language model and hotwords.

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
import hashlib
import json
import math
import os
import stat
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
MAX_SETTINGS_BYTES = 1 << 20  # NAME.json holds a few numbers and names: a bound on what is read and parsed
MARKERS = ("<s>", "</s>", "<unk>")  # KenLM's sentence markers and unknown word: in its vocabulary, never spelled


class DecoderError(ValueError):
    """An LM, its settings file or a hotword list that cannot be used; the message names the file or the word."""


@dataclass
class Word:
    word: str
    start: float  # seconds from the start of the audio
    end: float


def ctc_words(
    frame_ids: Sequence[int], blank: int, labels: Sequence[str], frame_seconds: float, offset: float = 0.0
) -> list[Word]:
    """Greedy CTC with times: a word starts at the first frame of its first emitted token and ends after the last
    frame of its last token (repeats of that token included); the space label separates words."""
    words: list[Word] = []
    chars: list[str] = []
    first = last = prev = -1
    for t, i in enumerate([*map(int, frame_ids), -1]):  # -1: the end, which closes the last word
        if i == -1 or (i != blank and labels[i] == " "):
            if chars:
                words.append(Word("".join(chars), offset + first * frame_seconds, offset + (last + 1) * frame_seconds))
                chars = []
        elif i != blank:
            if i != prev:  # a new token (a repeat after a blank is a new one too)
                if not chars:
                    first = t
                chars.append(labels[i])
            last = t
        prev = i
    return words


def open_regular(path: str | os.PathLike, what: str) -> BinaryIO:
    """`path` opened for reading, if it is a regular file; DecoderError naming it otherwise. Opened non-blocking,
    so a FIFO is refused instead of waiting forever for a writer; a device (/dev/zero) would never end, and KenLM
    maps the file into memory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise DecoderError(f"{path}: cannot read {what} ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DecoderError(f"{path}: {special(mode)}, not {what} (a regular file)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def special(mode: int) -> str:
    """What a file that is not a regular one is, by its st_mode."""
    return "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device"


def settings_path(lm: str | os.PathLike) -> Path:
    """NAME.json beside NAME.bin (or NAME.arpa): the tuned decoder settings and what the LM was built from."""
    return Path(lm).with_suffix(".json")


def vocab_path(lm: str | os.PathLike) -> Path:
    """NAME.words beside the LM: its vocabulary, one word a line (made from the LM itself when missing)."""
    return Path(lm).with_suffix(".words")


def model_identity(model: str | os.PathLike) -> dict:
    """What `lm tune` records in NAME.json of the model it tuned for: the ONNX file's size and SHA-256. By content,
    so a copy or a renamed file is the same model and a re-export or another model is not."""
    h, size = hashlib.sha256(), 0
    with open(model, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return {"model_bytes": size, "model_sha256": h.hexdigest()}


def tuned_for(settings: dict, model: str | os.PathLike) -> bool | None:
    """Whether an LM's settings (load_settings) were tuned for `model`: None when they record no model.

    The size is compared first, so another model costs a stat; only a file of the very size is hashed (the
    demo model, 1.4 MB: 1.5 ms; a 100 MB one: 0.07 s)."""
    tuned = settings.get("tuned_on")
    want = (tuned.get("model_bytes"), tuned.get("model_sha256")) if isinstance(tuned, dict) else (None, None)
    if not isinstance(want[0], int) or not isinstance(want[1], str):
        return None
    try:
        if Path(model).stat().st_size != want[0]:
            return False
        return model_identity(model)["model_sha256"] == want[1]
    except OSError:
        return False


# the shipped LM (a word 3-gram of ru-synth's lm.txt), used without being asked for only with the model it was tuned for
DEMO_LM = Path(__file__).resolve().parent.parent / "models" / "demo-lm.bin"


def demo_lm_for(model: str | os.PathLike) -> Path | None:
    """The shipped LM when its NAME.json records `model` (by content), else None: what transcribe.py, the server and
    the Lambda bundle decode with when no LM is named. On another model its weights would make fluent filler of an
    untrained model's letter soup."""
    return DEMO_LM if DEMO_LM.is_file() and tuned_for(load_settings(DEMO_LM), model) else None


def load_settings(lm: str | os.PathLike) -> dict:
    """NAME.json's contents with every setting checked (missing ones take the defaults); the defaults if none."""
    path = settings_path(lm)
    if not path.exists():  # an LM of someone else's: untuned defaults
        return dict(DEFAULTS)
    with open_regular(path, "the LM's settings") as f:
        try:
            raw = f.read(MAX_SETTINGS_BYTES + 1)
        except OSError as e:
            raise DecoderError(f"{path}: cannot read the LM's settings ({e.strerror})") from None
    if len(raw) > MAX_SETTINGS_BYTES:
        raise DecoderError(f"{path}: larger than {MAX_SETTINGS_BYTES >> 20} MiB, not an LM's settings file")
    why = None
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        why = "nested too deeply"
    except ValueError as e:  # bad JSON or UTF-8, or an integer of more digits than Python converts (4300)
        why = str(e) if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)) else "a number too long"
    if why:
        raise DecoderError(f"{path}: not a readable JSON settings file ({why})")
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
    with open_regular(path, "the language model") as f:
        try:
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
                if word not in MARKERS:
                    words.append(word)
    return words


# A KenLM binary (lm/binary_format.cc): a header of test values, then its parameters and n-gram counts, the model,
# and, unless build_binary ran with -v, every vocabulary string NUL-terminated at the end of the file, <unk> first
# (lm/vocab.cc, WriteWordsWrapper), as many as the 1-gram count says (binary_words: one more in a case).
_KENLM_MAGIC = b"mmap lm http://kheafield.com/code format version 5\n\0"
_KENLM_INCOMPLETE = b"mmap lm http://kheafield.com/code incomplete\n"
# the magic (NUL-padded to 56 bytes), floats 0, 1, -0.5, word indices 1 and 2^32-1, padding, the uint64 1
_KENLM_SANITY = _KENLM_MAGIC.ljust(56, b"\0") + struct.pack("<fffIIIQ", 0.0, 1.0, -0.5, 1, 2**32 - 1, 0, 1)
# FixedWidthParameters: order (uchar), probing multiplier (float), model type (enum), has_vocabulary (bool),
# search version (uint), with the C struct's padding
_KENLM_FIXED = struct.Struct("<BxxxfI?xxxI")


def binary_words(path: str | os.PathLike) -> list[str]:
    """The vocabulary stored at the end of a KenLM binary, without <s>, </s> and <unk>; DecoderError naming the
    file for one without it (build_binary -v), an unfinished or truncated one, or one of another format version."""
    try:
        with open_regular(path, "the language model") as f:
            head = f.read(len(_KENLM_SANITY) + _KENLM_FIXED.size)
            if head.startswith(_KENLM_INCOMPLETE):
                raise DecoderError(f"{path}: a KenLM binary that build_binary did not finish")
            if not head.startswith(_KENLM_SANITY):
                raise DecoderError(f"{path}: not a KenLM binary of format version 5 (as this KenLM writes on x86-64)")
            header = head[len(_KENLM_SANITY) :] + f.read(8)  # and the first count, the 1-grams'
            if len(header) < _KENLM_FIXED.size + 8:
                raise DecoderError(f"{path}: a KenLM binary cut short in its header")
            order, _, _, has_vocabulary, _ = _KENLM_FIXED.unpack(header[: _KENLM_FIXED.size])
            if not has_vocabulary:
                raise DecoderError(
                    f"{path}: this KenLM binary holds no vocabulary (built with build_binary -v); give its ARPA file, "
                    "or rebuild the binary without -v"
                )
            (unigrams,) = struct.unpack("<Q", header[_KENLM_FIXED.size :]) if order else (0,)
            # an ARPA without <unk>: KenLM adds it, and counts it among the 1-grams of a trie but not of probing
            words = _last_strings(f, unigrams)
            if words is None:
                words = _last_strings(f, unigrams + 1)
    except OSError as e:
        raise DecoderError(f"{path}: cannot read the language model ({e.strerror})") from None
    if words is None:
        raise DecoderError(f"{path}: the KenLM binary's vocabulary is not at its end (a truncated or damaged file?)")
    return [w for w in words if w not in ("<s>", "</s>")]


def _last_strings(f, count: int) -> list[str] | None:
    """The strings after "<unk>" when the file ends with "<unk>" and count - 1 more, each NUL-terminated; else None.

    The NULs are counted backwards in blocks, so only the vocabulary (a few MB at the end of a file of maybe
    gigabytes) is read into memory."""
    size = pos = f.seek(0, os.SEEK_END)
    found = 0
    while pos > 0 and count > 0:
        n = min(1 << 20, pos)
        pos -= n
        f.seek(pos)
        block = f.read(n)
        if pos + n == size and not block.endswith(b"\0"):
            break
        if found + block.count(b"\0") < count:
            found += block.count(b"\0")
            continue
        at = len(block)
        for _ in range(count - found):  # back to the NUL that ends "<unk>"
            at = block.rindex(b"\0", 0, at)
        if pos + at < 5:
            break
        f.seek(pos + at - 5)
        strings = f.read().split(b"\0")
        if strings[0] == b"<unk>" and len(strings) == count + 1:
            return [w.decode("utf-8", "replace") for w in strings[1:-1]]
        break
    return None


def stored_words(path: Path, kind: str) -> list[str]:
    """The vocabulary an LM file holds itself: an ARPA file's unigram section or the words at a KenLM binary's end."""
    if kind == "binary":
        return binary_words(path)
    try:
        return arpa_words(path)
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise DecoderError(f"{path}: unreadable vocabulary ({e})") from None


def lm_words(path: Path, kind: str) -> tuple[list[str], Path]:
    """(the LM's vocabulary, the file it is from): NAME.words beside it, else the one the LM holds itself. A binary's
    is then written to NAME.words, for the next load (or, where that cannot be written, read from the binary at each
    load: also where something else than a file has that name, a folder or a FIFO, which is never written into)."""
    words_file = vocab_path(path)
    if words_file.is_file():
        with open_regular(words_file, "a vocabulary") as f:
            try:
                return f.read().decode("utf-8").split(), words_file
            except (OSError, UnicodeDecodeError) as e:
                raise DecoderError(f"{words_file}: unreadable vocabulary ({e})") from None
    words = stored_words(path, kind)
    if kind == "binary":
        from .files import atomic_write

        try:
            if words_file.exists():  # atomic_write would write into a FIFO, waiting for a reader
                why = special(words_file.stat().st_mode)
            else:
                atomic_write(words_file, "".join(w + "\n" for w in words))
                why = None
        except OSError as e:
            why = e.strerror
        if why is None:
            note = f"lm: wrote {words_file}: the {len(words)} words stored in {path.name}, the decoder's lexicon"
        else:
            note = f"lm: {words_file}: cannot write it ({why}); {path.name}'s words are read from it each time"
        print(note, file=sys.stderr)
    return words, path


_said: set[str] = set()


def say_once(line: str) -> None:
    """Print a note to stderr once per process: `lm tune` makes a decoder for each setting it tries."""
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr)


def spellable(words: Sequence[str], labels: Sequence[str], source: Path) -> list[str]:
    """The words spelled wholly in `labels`, which the decoder can put in its lexicon. DecoderError naming `source`
    when there are none (an empty vocabulary, or one of another language: the decoder would spell nothing, or only
    unknown words); one line says how many are left out when some are."""
    words = [w for w in words if w not in MARKERS]
    if not words:
        raise DecoderError(f"{source}: no words (an empty vocabulary), so nothing to decode into")
    known = set(labels)
    kept = [w for w in words if known.issuperset(w)]
    outside = [w for w in words if not known.issuperset(w)]
    if not kept:
        raise DecoderError(
            f"{source}: none of its {len(words)} words is spelled in the model's alphabet (e.g. {words[0][:40]!r}): "
            "an LM for another alphabet or language?"
        )
    if outside:
        say_once(
            f"lm: {source}: {len(outside)} of its {len(words)} words are outside the model's alphabet (e.g. "
            f"{outside[0][:40]!r}); the decoder leaves them out"
        )
    return kept


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
            self.lm = None
            return
        # self.lm: a Python-side LM (hotwords) must outlive the decoder, which holds it only on the C++ side; the
        # trie and LM are kept for narrower decoders (_decoder), which share them rather than load them again
        self.lm, self.trie, self.unk = self._lexicon(labels, Path(lm), hotwords or {})
        self.decoder = self._lexicon_decoder(s["beam_width"])
        self.narrower: dict[int, object] = {}

    def _lexicon_decoder(self, beam_width: int):
        from flashlight.lib.text import decoder as fl

        s = self.settings
        opts = fl.LexiconDecoderOptions(
            beam_width,
            len(self.labels) + 1,
            BEAM_THRESHOLD,
            s["alpha"],
            s["beta"],
            s["unk_score"],
            0.0,
            False,
            fl.CriterionType.CTC,
        )
        return fl.LexiconDecoder(opts, self.trie, self.lm, self.labels.index(" "), self.blank, self.unk, [], False)

    def _lexicon(self, labels: Sequence[str], path: Path, hotwords: dict[str, float]):
        """(the LM, the trie of spellings, <unk>'s index): every vocabulary word and hotword spelled in our labels
        and closed by a space, its unigram score kept for look-ahead (smeared up the trie)."""
        from flashlight.lib.text import decoder as fl
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary

        index = {c: i for i, c in enumerate(labels)}
        words, source = lm_words(path, lm_kind(path))
        vocab = spellable(words, labels, source)
        known = set(vocab)
        vocab += [w for w in hotwords if w not in known]
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

    def words(self, logprobs: np.ndarray, beam_width: int | None = None) -> list[tuple[str, int, int]]:
        """(word, first frame, frame after the last) of the best hypothesis of log-probs [T, V]; beam_width: a
        narrower beam than the settings' for this call (quicker, a little less accurate: live partials)."""
        x = np.ascontiguousarray(logprobs, dtype=np.float32)
        if len(x) == 0:
            return []
        best = self._decoder(beam_width).decode(x.ctypes.data, x.shape[0], x.shape[1])[0]
        path = list(best.tokens)[1 : len(x) + 1]  # one token per frame, between a start and an end marker
        return [(w.word, round(w.start), round(w.end)) for w in ctc_words(path, self.blank, self.labels, 1.0)]

    def text(self, logprobs: np.ndarray) -> str:
        return " ".join(w for w, _, _ in self.words(logprobs))

    def _decoder(self, beam_width: int | None):
        """The decoder for a beam no wider than the settings' (made once per width, on the same LM and trie)."""
        if beam_width is None or beam_width >= self.settings["beam_width"] or self.lm is None:
            return self.decoder
        if beam_width < 1:
            raise DecoderError(f"beam_width must be at least 1, not {beam_width}")
        if beam_width not in self.narrower:
            self.narrower[beam_width] = self._lexicon_decoder(beam_width)
        return self.narrower[beam_width]
