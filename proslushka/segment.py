"""Long audio in bounded pieces: the decoder's blocks (audio.stream_audio) cut at pauses into chunks of at most ~20 s.

Memory stays flat whatever the file's length: at most one chunk plus one block of samples is held here, and the
model only ever sees a chunk. Cuts fall at the quietest stretch of the last few seconds before the limit, so a
word is not split unless a speaker talks for the whole search window without a pause. No torch: inference uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from .audio import SAMPLE_RATE, stream_audio

__all__ = ["MAX_CHUNK_SECONDS", "pause_cut", "split", "stream_audio"]  # stream_audio: decoded blocks, for infer

MAX_CHUNK_SECONDS = 20.0  # QuartzNet's receptive field is ~1.3 s; longer chunks only cost memory
SEARCH_SECONDS = 5.0  # where to look for a pause: the last 5 s before the limit
FRAME_SECONDS = 0.03  # energy frames
QUIET_DB = 6.0  # frames within this of the quietest one count as pause (a noise floor wobbles by a few dB)


def pause_cut(audio: np.ndarray, lo: int, hi: int, frame: int) -> int:
    """A sample index in [lo, hi]: the middle of the longest run of quiet frames (within QUIET_DB of the quietest)."""
    n = (hi - lo) // frame
    if n < 1:
        return hi
    frames = audio[lo : lo + n * frame].astype(np.float64).reshape(n, frame)
    energy = 10 * np.log10((frames**2).mean(axis=1) + 1e-10)
    quiet = np.concatenate([[0], energy <= energy.min() + QUIET_DB, [0]]).astype(np.int8)
    edges = np.diff(quiet)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    k = int(np.argmax(ends - starts))
    return lo + int(starts[k] + ends[k]) * frame // 2


def split(
    blocks: Iterable[np.ndarray],
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float = MAX_CHUNK_SECONDS,
    search_seconds: float = SEARCH_SECONDS,
    align: int = 1,
) -> Iterator[tuple[int, np.ndarray]]:
    """(first sample, chunk) pieces of the concatenated blocks, each at most max_seconds, cut at pauses.

    Cuts fall on multiples of `align` samples: with the model's frame (hop × stride) every chunk's frames lie on
    the whole file's frame grid, so a chunked transcript equals an unchunked one away from the cuts.
    """
    limit = int(max_seconds * sample_rate) // align * align
    lo = max(limit - int(search_seconds * sample_rate), 1)
    frame = int(FRAME_SECONDS * sample_rate)
    buf, start = np.zeros(0, dtype=np.float32), 0
    for block in blocks:
        buf = np.concatenate([buf, block])
        while len(buf) > limit:
            cut = max(pause_cut(buf, lo, limit, frame) // align * align, align)
            yield start, buf[:cut].copy()  # a copy, so the chunk does not pin the whole buffer
            buf, start = buf[cut:], start + cut
    if len(buf):
        yield start, buf
