"""Any audio file ffmpeg can read → 16 kHz mono float32 numpy. No torch: inference uses it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """A file that cannot be turned into audio samples; the message names the file."""


def ffmpeg_path() -> str:
    """The ffmpeg to run: $PROSLUSHKA_FFMPEG, else imageio-ffmpeg's static binary, else `ffmpeg` on PATH."""
    env = os.environ.get("PROSLUSHKA_FFMPEG")
    if env:
        return env
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        pass
    found = shutil.which("ffmpeg")
    if found:
        return found
    raise AudioError("no ffmpeg found: pip install imageio-ffmpeg, or set PROSLUSHKA_FFMPEG to an ffmpeg binary")


def _ffmpeg_cmd(source: str, sample_rate: int, start: float | None, duration: float | None) -> list[str]:
    cmd = [ffmpeg_path(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    if start is not None:
        cmd += ["-ss", f"{start:.3f}"]
    if duration is not None:
        cmd += ["-t", f"{duration:.3f}"]
    # s16le, not f32le: PCM16 files then come out exactly as int16/32768, which is what NeMo's reader gives.
    return cmd + ["-i", source, "-map", "0:a:0", "-f", "s16le", "-ac", "1", "-ar", str(sample_rate), "-"]


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    start: float | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Decode `path` (any format ffmpeg reads) to mono float32 in [-1, 1) at `sample_rate`.

    Raises AudioError naming the file when it is missing, empty, corrupt, or holds no audio.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    return _decode(str(path), str(path), sample_rate, start, duration)


def load_audio_bytes(data: bytes, name: str = "<bytes>", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an in-memory audio file (e.g. a request body) through ffmpeg's stdin."""
    if not data:
        raise AudioError(f"{name}: empty audio")
    return _decode("pipe:0", name, sample_rate, None, None, stdin=data)


def _decode(
    source: str,
    name: str,
    sample_rate: int,
    start: float | None,
    duration: float | None,
    stdin: bytes | None = None,
) -> np.ndarray:
    cmd = _ffmpeg_cmd(source, sample_rate, start, duration)
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    except OSError as e:
        raise AudioError(f"{name}: cannot run ffmpeg ({cmd[0]}): {e.strerror}") from None
    if proc.returncode != 0:
        raise AudioError(f"{name}: not readable audio ({_last_line(proc.stderr)})")
    if len(proc.stdout) < 2:
        if start:  # reading past the end of a file is not an error, just nothing
            return np.zeros(0, dtype=np.float32)
        raise AudioError(f"{name}: no audio samples in the file")
    samples = np.frombuffer(proc.stdout[: len(proc.stdout) // 2 * 2], dtype="<i2")
    return samples.astype(np.float32) / 32768.0


def duration_of(path: str | os.PathLike) -> float:
    """Length in seconds, by decoding (exact for every format, unlike container headers)."""
    return len(load_audio(path)) / SAMPLE_RATE


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "ffmpeg failed"
