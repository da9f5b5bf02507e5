"""Any audio file → 16 kHz mono float32 numpy, decoded in-process where libsndfile can. No torch: inference uses it.

Two decoders, picked per file:
- libsndfile (through soundfile), in this process: WAV, FLAC, Ogg Opus/Vorbis, MP3 and its other formats. It is
  NeMo's own reader, so a PCM WAV gives exactly NeMo's samples (int16 / 32768) and several channels are averaged
  as NeMo averages them. Other sample rates go through soxr (HQ), the resampler librosa (and so NeMo) uses.
- ffmpeg, one process per file, for what libsndfile does not read: m4a/aac, amr, wma, video containers.
No process per file for the common formats: decoding a 3 s Opus takes ~3× less time than starting ffmpeg
(bench/decode_audio.py). Files are read in blocks, so a long one never sits in memory whole (segment.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16000
BLOCK_SECONDS = 10.0  # how much audio to decode at a time
OGG_MAX_PAGE = 65307  # bytes: a page header, 255 lacing values and 255 × 255 bytes of data


class AudioError(ValueError):
    """A file that cannot be turned into audio samples; the message names the file."""


class AudioTooLongError(AudioError):
    """Audio longer than the caller's max_seconds (raised before more than that much is decoded)."""


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


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    start: float | None = None,
    duration: float | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode `path` to mono float32 in [-1, 1) at `sample_rate`; `start`/`duration` (seconds) select a part.

    Raises AudioError naming the file when it is missing, empty, corrupt, truncated, or holds no audio, and
    AudioTooLongError past `max_seconds`.
    """
    audio = np.concatenate(list(stream_audio(path, sample_rate, max_seconds=max_seconds)))
    first = round(start * sample_rate) if start else 0
    last = first + round(duration * sample_rate) if duration is not None else None
    return audio[first:last] if first or last is not None else audio


def load_audio_bytes(
    data: bytes, name: str = "<bytes>", sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None
) -> np.ndarray:
    """Decode an in-memory audio file (e.g. a request body); errors name it `name`."""
    if not data:
        raise AudioError(f"{name}: empty audio")
    # through a temporary file: both decoders then read it as they read any file (ffmpeg seeks in an m4a)
    with tempfile.NamedTemporaryFile(suffix=".audio") as f:
        f.write(data)
        f.flush()
        try:
            return load_audio(f.name, sample_rate, max_seconds=max_seconds)
        except AudioError as e:
            raise type(e)(str(e).replace(f.name, name, 1)) from None


def stream_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    block_seconds: float = BLOCK_SECONDS,
    max_seconds: float | None = None,
) -> Iterator[np.ndarray]:
    """Decode `path` into consecutive float32 blocks of `block_seconds` (the last one shorter).

    Raises AudioError naming the file, possibly after some blocks (a file corrupt midway), and AudioTooLongError as
    soon as more than `max_seconds` are decoded (or announced by the file's header).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except OSError as e:  # a name too long, a folder we may not enter: this file fails, not the whole batch
        raise AudioError(f"{path}: {e.strerror}") from None
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    if size == 0:
        raise AudioError(f"{path}: empty file")
    limit = None if max_seconds is None else round(max_seconds * sample_rate)
    block = max(int(block_seconds * sample_rate), 1)
    sndfile = _open_sndfile(path)
    if sndfile is None:
        blocks = _ffmpeg_blocks(path, sample_rate, block)
    else:
        blocks = _sndfile_blocks(sndfile, path, sample_rate, block, limit)
    total = 0
    with closing(blocks):  # a consumer that stops early closes the decoder (and ends ffmpeg) at once
        for samples in blocks:
            total += len(samples)
            if limit is not None and total > limit:
                raise AudioTooLongError(f"{path}: longer than the limit of {max_seconds:g} s")
            yield samples
    if total == 0:
        raise AudioError(f"{path}: no audio samples in the file")


def _open_sndfile(path: Path) -> soundfile.SoundFile | None:
    """The file opened by libsndfile, or None when it is not a format libsndfile reads (ffmpeg then tries)."""
    try:
        return soundfile.SoundFile(path)
    except (soundfile.LibsndfileError, RuntimeError):
        return None


def _sndfile_blocks(
    f: soundfile.SoundFile, path: Path, sample_rate: int, block: int, limit: int | None
) -> Iterator[np.ndarray]:
    with f:
        if f.format == "OGG" and not _ogg_complete(path):
            raise AudioError(f"{path}: truncated (the Ogg stream ends before its last page)")
        # refuse at once what the header says is too long; an MP3's count without a Xing header is a guess
        if limit is not None and f.format != "MP3" and f.frames * sample_rate > limit * f.samplerate:
            seconds, most = f.frames / f.samplerate, limit / sample_rate
            raise AudioTooLongError(f"{path}: {seconds:.0f} s of audio, longer than the limit of {most:g} s")
        resampler = None
        if f.samplerate != sample_rate:
            resampler = soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
        frames = max(block * f.samplerate // sample_rate, 1)  # input frames that make one output block
        read = out = 0
        while True:
            try:
                x = f.read(frames, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError) as e:
                raise AudioError(f"{path}: not readable audio ({e})") from None
            read, done = read + len(x), len(x) == 0
            x = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1)  # NeMo's downmix: the channels' mean
            if resampler is not None:
                x = resampler.resample_chunk(x, last=done)  # the last call flushes the filter's tail
            if len(x):
                out += len(x)
                yield x
            if done:
                break
        if f.format == "FLAC" and read < f.frames:  # FLAC's header counts its samples exactly
            raise AudioError(f"{path}: truncated ({read / f.samplerate:.2f} s of {f.frames / f.samplerate:.2f} s)")
        if resampler is not None and (pad := -(-read * sample_rate // f.samplerate) - out) > 0:
            yield np.zeros(pad, np.float32)  # librosa.resample's length, ceil(n × ratio): soxr rounds instead


def _ogg_complete(path: Path) -> bool:
    """Whether an Ogg file ends with the end-of-stream page, whole. One cut short (a partial download, a recorder
    killed mid-write) does not, and libsndfile would just stop early without a word: half a transcript."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - OGG_MAX_PAGE, 0))
        tail = f.read()
    at = tail.rfind(b"OggS")
    if at < 0 or len(tail) < at + 27:
        return False
    segments = tail[at + 27 : at + 27 + tail[at + 26]]  # the lacing values: the page's data size, summed
    end_of_stream = tail[at + 5] & 0x04
    return bool(end_of_stream) and at + 27 + len(segments) + sum(segments) == len(tail)


def _ffmpeg_cmd(path: Path, sample_rate: int) -> list[str]:
    # s16le, not f32le: PCM16 files then come out exactly as int16/32768, which is what NeMo's reader gives.
    # "file:" keeps a name such as "pipe:x.wav" or "http:x.wav" a file name, never a protocol; "-loglevel error"
    # leaves stderr empty unless something is wrong (a partial file exits 0 but says so there).
    cmd = [ffmpeg_path(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", f"file:{path}"]
    return cmd + ["-map", "0:a:0", "-f", "s16le", "-ac", "1", "-ar", str(sample_rate), "-"]


def _ffmpeg_blocks(path: Path, sample_rate: int, block: int) -> Iterator[np.ndarray]:
    cmd = _ffmpeg_cmd(path, sample_rate)
    # stderr goes to a file, not a pipe: a pipe nobody reads can fill up with decode errors and stall ffmpeg
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        except OSError as e:
            raise AudioError(f"{path}: cannot run ffmpeg ({cmd[0]}): {e.strerror}") from None
        try:
            while data := proc.stdout.read(block * 2):
                samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
                if len(samples):
                    yield samples.astype(np.float32) / 32768.0
        except BaseException:  # the consumer stopped early (or failed): do not leave ffmpeg running
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            returncode = proc.wait()
        err.seek(0)
        message = err.read()
        if returncode != 0 or message.strip():
            raise AudioError(f"{path}: not readable audio ({_ffmpeg_reason(message)})")


def duration_of(path: str | os.PathLike) -> float:
    """Length in seconds, by decoding (exact for every format, unlike container headers)."""
    return sum(len(b) for b in stream_audio(path)) / SAMPLE_RATE


def _ffmpeg_reason(stderr: bytes) -> str:
    """ffmpeg's first message (the cause; later ones are consequences), without its "[demuxer @ 0x55d0...]"."""
    lines = [re.sub(r"^(\[[^]]*\] )+", "", ln.strip()) for ln in stderr.decode("utf-8", "replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if any("matches no streams" in ln for ln in lines):
        return "no audio stream"
    return lines[0] if lines else "ffmpeg failed"
