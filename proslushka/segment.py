"""Long audio in bounded pieces: the decoder's blocks (audio.stream_audio) cut at pauses into chunks of at most ~20 s.

Memory stays flat whatever the file's length: at most one chunk plus one block of samples is held here, and the
model only ever sees a chunk. Cuts fall at the quietest stretch of the last few seconds before the limit, so a
word is not split unless a speaker talks for the whole search window without a pause. No torch: inference uses it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from .audio import SAMPLE_RATE, stream_audio
from .vad import SpeechDetector, frame_energy_db

__all__ = [
    "MAX_CHUNK_SECONDS",
    "Chunker",
    "pause_cut",
    "split",
    "stream_audio",
]  # stream_audio: decoded blocks, for infer

MAX_CHUNK_SECONDS = 20.0  # QuartzNet's receptive field is ~1.3 s; longer chunks only cost memory
SEARCH_SECONDS = 5.0  # where to look for a pause: the last 5 s before the limit
QUIET_DB = 6.0  # frames within this of the quietest one count as pause (a noise floor wobbles by a few dB)
VAD_FRAME_SECONDS = 0.02  # speech-detector frames when no model frame is given
MARGIN_SECONDS = 0.3  # with skip_silence: audio kept on each side of a stretch of speech
GAP_SECONDS = 0.6  # with skip_silence: a pause this long ends a chunk (and its middle is left out)


def pause_cut(audio: np.ndarray, lo: int, hi: int, frame: int) -> int:
    """A sample index in [lo, hi]: the middle of the longest run of quiet frames (within QUIET_DB of the quietest)."""
    n = (hi - lo) // frame
    if n < 1:
        return hi
    energy = frame_energy_db(audio[lo : lo + n * frame], frame)
    quiet = np.concatenate([[0], energy <= energy.min() + QUIET_DB, [0]]).astype(np.int8)
    edges = np.diff(quiet)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    k = int(np.argmax(ends - starts))
    return lo + int(starts[k] + ends[k]) * frame // 2


class Chunker:
    """split's cutting, fed block by block: push() returns the chunks a block completes, flush() the last one,
    current() the chunk being built (stream.py's live recognizer feeds it as audio comes). The chunks are the same
    whatever the blocks' sizes."""

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        max_seconds: float = MAX_CHUNK_SECONDS,
        search_seconds: float = SEARCH_SECONDS,
        align: int = 1,
        skip_silence: bool = False,
    ):
        if not 0 < max_seconds < 1e9:  # NaN fails this too; int() of NaN or inf below would raise a puzzling error
            raise ValueError(f"max_seconds must be a positive number of seconds, not {max_seconds}")
        self.frame = frame = align if align > 1 else int(VAD_FRAME_SECONDS * sample_rate)
        self.limit = max(int(max_seconds * sample_rate) // frame, 1)  # in frames, from here on
        self.search = max(self.limit - int(search_seconds * sample_rate) // frame, 1)
        self.margin = int(MARGIN_SECONDS * sample_rate) // frame
        self.gap = max(int(GAP_SECONDS * sample_rate) // frame, 2 * self.margin + 1)
        self.detector = SpeechDetector(frame / sample_rate) if skip_silence else None
        self.chunk: list[np.ndarray] = []  # frames of the chunk being built; it starts at sample self.start
        self.lead: deque[np.ndarray] = deque(maxlen=self.margin)  # silent frames before speech: a chunk's lead-in
        self.start = self.pos = self.quiet = 0  # pos: the next frame's first sample; quiet: silent frames at the end
        self.rest = np.zeros(0, np.float32)  # samples short of a whole frame, for the next block

    def push(self, block: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(first sample, samples) of each chunk that this block completes."""
        x = np.concatenate([self.rest, block]) if len(self.rest) else block
        n = len(x) // self.frame * self.frame
        self.rest = x[n:].copy()
        if not n:
            return []
        frames = np.split(x[:n], n // self.frame)
        active = self.detector.active(frame_energy_db(x[:n], self.frame)) if self.detector else [True] * len(frames)
        return [c for f, speech in zip(frames, active, strict=True) if (c := self._step(f, bool(speech)))]

    def flush(self) -> list[tuple[int, np.ndarray]]:
        """The chunks still held, at the end of the audio (a short last frame is speech only without a detector)."""
        out = [c] if len(self.rest) and (c := self._step(self.rest, self.detector is None)) else []
        self.rest = np.zeros(0, np.float32)
        if self.chunk:
            out.append((self.start, np.concatenate(self.chunk[: len(self.chunk) - max(self.quiet - self.margin, 0)])))
            self.chunk, self.quiet = [], 0
        return out

    def current(self) -> tuple[int, np.ndarray] | None:
        """The chunk being built (speech has started and not yet paused long enough), or None."""
        return (self.start, np.concatenate(self.chunk)) if self.chunk else None

    def _step(self, f: np.ndarray, speech: bool) -> tuple[int, np.ndarray] | None:
        """One frame; the chunk it completes, if any."""
        out = None
        if not self.chunk and not speech:
            self.lead.append(f)
        else:
            if not self.chunk:
                self.chunk, self.start = [*self.lead, f], self.pos - len(f) * len(self.lead)
                self.lead.clear()
            else:
                self.chunk.append(f)
            self.quiet = 0 if speech else self.quiet + 1
            if self.quiet >= self.gap:  # a long pause: the chunk ends `margin` frames into it
                out = self.start, np.concatenate(self.chunk[: len(self.chunk) - self.quiet + self.margin])
                self.lead.extend(self.chunk[-self.margin :] if self.margin else [])
                self.chunk, self.quiet = [], 0
            elif len(self.chunk) > self.limit:
                lo, hi = self.search, self.limit
                cut = max(pause_cut(np.concatenate(self.chunk[lo:hi]), 0, (hi - lo) * self.frame, self.frame)
                          // self.frame, 1) + lo  # fmt: skip
                out = self.start, np.concatenate(self.chunk[:cut])
                self.start += cut * self.frame
                self.chunk = self.chunk[cut:]
        self.pos += len(f)
        return out


def split(
    blocks: Iterable[np.ndarray],
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float = MAX_CHUNK_SECONDS,
    search_seconds: float = SEARCH_SECONDS,
    align: int = 1,
    skip_silence: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """(first sample, chunk) pieces of the concatenated blocks, each at most max_seconds, cut at pauses.

    Cuts fall on multiples of `align` samples: with the model's frame (hop × stride) every chunk's frames lie on
    the whole file's frame grid, so a chunked transcript equals an unchunked one away from the cuts.
    skip_silence: a pause of GAP_SECONDS or more (vad.SpeechDetector: energy over an adaptive noise floor) also
    ends a chunk, and all of it but MARGIN_SECONDS at each side is left out; audio without speech gives no chunk.
    Without it the chunks hold every sample, in order.
    """
    chunker = Chunker(sample_rate, max_seconds, search_seconds, align, skip_silence)
    for block in blocks:
        yield from chunker.push(block)
    yield from chunker.flush()
