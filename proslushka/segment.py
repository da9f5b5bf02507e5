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

__all__ = ["MAX_CHUNK_SECONDS", "pause_cut", "split", "stream_audio"]  # stream_audio: decoded blocks, for infer

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
    if not 0 < max_seconds < 1e9:  # NaN fails this too; int() of NaN or inf below would raise a puzzling error
        raise ValueError(f"max_seconds must be a positive number of seconds, not {max_seconds}")
    frame = align if align > 1 else int(VAD_FRAME_SECONDS * sample_rate)
    limit = max(int(max_seconds * sample_rate) // frame, 1)  # in frames, from here on
    search = max(limit - int(search_seconds * sample_rate) // frame, 1)
    margin = int(MARGIN_SECONDS * sample_rate) // frame
    gap = max(int(GAP_SECONDS * sample_rate) // frame, 2 * margin + 1)
    detector = SpeechDetector(frame / sample_rate) if skip_silence else None
    chunk: list[np.ndarray] = []  # frames of the chunk being built; it starts at sample `start`
    lead: deque[np.ndarray] = deque(maxlen=margin)  # silent frames before any speech: the next chunk's lead-in
    start = pos = quiet = 0  # pos: the next frame's first sample; quiet: silent frames ending the chunk
    for frames, active in _frames(blocks, frame, detector):
        for f, speech in zip(frames, active, strict=True):
            if not chunk and not speech:
                lead.append(f)
            else:
                if not chunk:
                    chunk, start = [*lead, f], pos - len(f) * len(lead)
                    lead.clear()
                else:
                    chunk.append(f)
                quiet = 0 if speech else quiet + 1
                if quiet >= gap:  # a long pause: the chunk ends `margin` frames into it
                    yield start, np.concatenate(chunk[: len(chunk) - quiet + margin])
                    lead.extend(chunk[-margin:] if margin else [])
                    chunk, quiet = [], 0
                elif len(chunk) > limit:
                    cut = max(pause_cut(np.concatenate(chunk[search:limit]), 0, (limit - search) * frame, frame)
                              // frame, 1) + search  # fmt: skip
                    yield start, np.concatenate(chunk[:cut])
                    start += cut * frame
                    chunk = chunk[cut:]
            pos += len(f)
    if chunk:
        yield start, np.concatenate(chunk[: len(chunk) - max(quiet - margin, 0)])


def _frames(blocks: Iterable[np.ndarray], frame: int, detector: SpeechDetector | None):
    """(frames, is-speech flags) per block: the blocks cut into frames of `frame` samples (the last one may be
    shorter); every frame counts as speech without a detector."""
    rest = np.zeros(0, dtype=np.float32)
    for block in blocks:
        x = np.concatenate([rest, block]) if len(rest) else block
        n = len(x) // frame * frame
        frames, rest = np.split(x[:n], n // frame) if n else [], x[n:].copy()
        active = detector.active(frame_energy_db(x[:n], frame)) if detector else [True] * len(frames)
        yield frames, active
    if len(rest):
        yield [rest], [detector is None]
