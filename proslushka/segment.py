"""Long audio in bounded pieces: ffmpeg's output read block by block, cut at pauses into chunks of at most ~20 s.

Memory stays flat whatever the file's length: at most one chunk plus one block of samples is held here, and the
model only ever sees a chunk. Cuts fall at the quietest stretch of the last few seconds before the limit, so a
word is not split unless a speaker talks for the whole search window without a pause. No torch: inference uses it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, AudioError, _ffmpeg_cmd, _last_line

MAX_CHUNK_SECONDS = 20.0  # QuartzNet's receptive field is ~1.3 s; longer chunks only cost memory
SEARCH_SECONDS = 5.0  # where to look for a pause: the last 5 s before the limit
FRAME_SECONDS = 0.03  # energy frames
QUIET_DB = 6.0  # frames within this of the quietest one count as pause (a noise floor wobbles by a few dB)
BLOCK_SECONDS = 10.0  # how much of ffmpeg's output to read at a time


def stream_audio(
    path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, block_seconds: float = BLOCK_SECONDS
) -> Iterator[np.ndarray]:
    """Decode `path` with ffmpeg into consecutive float32 blocks; together they equal audio.load_audio(path).

    Raises AudioError naming the file, as load_audio does (possibly after some blocks, for a file corrupt midway).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    cmd = _ffmpeg_cmd(str(path), sample_rate, None, None)
    block = int(block_seconds * sample_rate) * 2  # bytes of s16le
    # stderr goes to a file, not a pipe: a pipe nobody reads can fill up with decode errors and stall ffmpeg
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        except OSError as e:
            raise AudioError(f"{path}: cannot run ffmpeg ({cmd[0]}): {e.strerror}") from None
        total = 0
        try:
            while data := proc.stdout.read(block):
                samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
                total += len(samples)
                if len(samples):
                    yield samples.astype(np.float32) / 32768.0
        except BaseException:  # the consumer stopped early (or failed): do not leave ffmpeg running
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            returncode = proc.wait()
        if returncode != 0:
            err.seek(0)
            raise AudioError(f"{path}: not readable audio ({_last_line(err.read())})")
    if total == 0:
        raise AudioError(f"{path}: no audio samples in the file")


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
