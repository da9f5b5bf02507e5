"""Live transcription: PCM blocks of any size in, partial text while speech goes on and final segments at pauses.

The method is VAD endpointing with re-decoding. The audio is cut into chunks of speech exactly as segment.split
cuts a file for transcribe.py (split is segment.Chunker, fed block by block here as the audio comes: the same
detector, frame grid, margins, pause length and 20 s limit), and each chunk is decoded whole when it ends, with the
transcriber's own model, LM and hotwords: a final is what transcribe.py gives for that stretch of speech, word
times included. While a chunk grows, it is decoded from its start again at most every `partial_seconds` of new
audio for the partial text, with the transcriber's LM at a beam of PARTIAL_BEAM (8: 0.049 CPU s per audio s against
0.088 at the demo LM's 64; greedy_partials=True decodes them greedily, the cheapest, but greedy spellings join and
split words, so a word shows later: partial p95 1.14 s against 0.43). A chunk ends 0.62 s into a pause
(segment.GAP_SECONDS on the model's 20 ms frame grid).

Numpy and onnxruntime only (no torch). One Transcriber serves any number of streams, but one call at a time: its
beam decoder keeps state inside a decode, so callers on several threads must take turns (serve.py runs every call
on one worker thread).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from .audio import MIN_SAMPLE_RATE
from .features import num_frames
from .infer import Transcriber, Word
from .segment import MAX_CHUNK_SECONDS, Chunker

PARTIAL_SECONDS = 0.4  # a partial is decoded again after this much new audio (the speech so far, from its start)
PARTIAL_BEAM = 8  # LM partials' beam: a partial is redone 0.4 s later anyway; a wider beam costs more than it finds
MAX_SAMPLE_RATE = 384000  # Hz: the highest rate a sound card records; more is a misread config


@dataclass
class Segment:
    """A final: one chunk of speech (start and end in seconds from the start of the stream) and its words."""

    text: str
    start: float
    end: float
    words: list[Word]


class Stream:
    """One live stream: accept() blocks of PCM, partial() for the speech so far, finish() at the end.

    Blocks are float32 in [-1, 1], int16, or bytes of 16-bit little-endian PCM (an odd last byte waits for the next
    block), at `sample_rate` (other rates than the model's are resampled as they come, with soxr as audio.py does).
    """

    def __init__(
        self,
        transcriber: Transcriber,
        sample_rate: int | float | None = None,
        partial_seconds: float = PARTIAL_SECONDS,
        max_seconds: float = MAX_CHUNK_SECONDS,
        greedy_partials: bool = False,
    ):
        self.tr, self.greedy_partials = transcriber, greedy_partials
        rate = transcriber.sample_rate
        self.sample_rate = rate if sample_rate is None else sample_rate
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:  # NaN fails too
            raise ValueError(f"sample_rate must be from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz, not {sample_rate}")
        self.resampler = (
            soxr.ResampleStream(self.sample_rate, rate, 1, dtype="float32", quality="HQ")
            if self.sample_rate != rate
            else None
        )
        self.chunker = Chunker(rate, max_seconds, align=transcriber.frame_samples, skip_silence=True)
        self.partial_every = max(round(partial_seconds * rate), 1)
        self.samples = 0  # at the model's rate, so far
        self.odd = b""  # a byte of a 16-bit sample split between two blocks
        self.partial_text, self.partial_at = "", -1  # the last partial and the chunk length it was decoded at

    def accept(self, block: np.ndarray | bytes | bytearray | memoryview) -> list[Segment]:
        """Take a block of audio; return the finals it completes (mostly none)."""
        x = self._samples(block)
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x)
        self.samples += len(x)
        return self._finals(self.chunker.push(x))

    def partial(self, decode: bool = True) -> str:
        """The text of the speech since the last final: decoded again when the chunk has grown by partial_seconds
        since the last decode (and `decode` allows it: a busy server sheds partials first), else the last one."""
        current = self.chunker.current()
        if current is None:
            self.partial_text, self.partial_at = "", -1
            return ""
        start, audio = current
        if decode and (self.partial_at < 0 or len(audio) - self.partial_at >= self.partial_every):
            words = chunk_words(self.tr, start, audio, greedy=self.greedy_partials, beam_width=PARTIAL_BEAM)
            self.partial_text = " ".join(w.word for w in words)
            self.partial_at = len(audio)
        return self.partial_text

    def finish(self) -> list[Segment]:
        """The end of the stream: the finals of what is still held. More audio may follow (Vosk's reset): it
        continues the stream's clock, as after a long pause."""
        chunks = []
        if self.resampler is not None:
            tail = self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self.resampler.clear()
            self.samples += len(tail)
            chunks = self.chunker.push(tail)
        self.odd = b""
        return self._finals(chunks + self.chunker.flush())

    @property
    def seconds(self) -> float:
        """Audio taken so far, in seconds."""
        return self.samples / self.tr.sample_rate

    def _samples(self, block) -> np.ndarray:
        if isinstance(block, (bytes, bytearray, memoryview)):
            data = self.odd + bytes(block)
            n = len(data) // 2 * 2
            self.odd = data[n:]
            return np.frombuffer(data[:n], dtype="<i2").astype(np.float32) / 32768
        x = np.asarray(block)
        if x.ndim != 1:
            raise ValueError(f"a block must be one channel of samples, not an array of shape {x.shape}")
        if x.dtype == np.int16:
            return x.astype(np.float32) / 32768
        if x.dtype.kind != "f":
            raise ValueError(f"a block must be float32 or int16 samples, not {x.dtype}")
        if not np.isfinite(x).all():
            raise ValueError("a block holds NaN or infinite samples")
        return x.astype(np.float32, copy=False)

    def _finals(self, chunks: list[tuple[int, np.ndarray]]) -> list[Segment]:
        out = []
        for start, audio in chunks:
            self.partial_text, self.partial_at = "", -1
            words = chunk_words(self.tr, start, audio)
            rate = self.tr.sample_rate
            out.append(Segment(" ".join(w.word for w in words), start / rate, (start + len(audio)) / rate, words))
        return out


def chunk_words(
    tr: Transcriber, start: int, audio: np.ndarray, greedy: bool = False, beam_width: int | None = None
) -> list[Word]:
    """The words of one chunk of speech (its first sample `start`), times from the start of the stream, as
    Transcriber.transcribe_many finds them (a chunk with no valid frame is skipped there too); greedy: best label
    per frame, without the transcriber's LM, or beam_width: a narrower beam (both for partials)."""
    if num_frames(len(audio), tr.feature_config) <= 0:  # no valid frame: the model hears nothing
        return []
    rate = tr.sample_rate
    return tr.words_of(tr.logprobs([audio])[0], start / rate, (start + len(audio)) / rate, greedy, beam_width)
