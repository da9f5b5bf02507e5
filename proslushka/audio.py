"""Any audio file → 16 kHz mono float32 numpy, decoded in-process where libsndfile can. No torch: inference uses it.

Two decoders, picked per file:
- libsndfile (through soundfile), in this process: WAV, FLAC, Ogg Opus/Vorbis, MP3 and its other formats; a
  chained Ogg (files joined with `cat`) link by link, as libsndfile alone stops after the first. It is NeMo's own
  reader, so a PCM WAV gives exactly NeMo's samples (int16 / 32768) and several channels are averaged
  as NeMo averages them. Other sample rates go through soxr (HQ), the resampler librosa (and so NeMo) uses.
- ffmpeg, one process per file, for what libsndfile does not read: m4a/aac, amr, wma, video containers.
No process per file for the common formats: decoding a 3 s Opus takes ~3× less time than starting ffmpeg
(bench/decode_audio.py). Files are read in blocks, so a long one never sits in memory whole (segment.py).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
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
MIN_SAMPLE_RATE = 4000  # Hz: telephone speech is 8 kHz; below 4 kHz no speech fits, and a 1 Hz file resampled to
# 16 kHz turns a few KB into hours of "audio"
WAV_HEADER_MAX = 65536  # bytes searched for a WAV's data chunk (past the fmt, LIST and bext chunks before it)
MP3_SLACK = 2 * 1152  # samples: an encoder may count its own Xing frame in the header's frame count


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
    except ValueError as e:  # a NUL byte or a lone surrogate (e.g. from a manifest's JSON): no file has that name
        raise AudioError(f"{path}: not a usable file name ({getattr(e, 'reason', e)})") from None
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    if size == 0:
        raise AudioError(f"{path}: empty file")
    limit = None if max_seconds is None else round(max_seconds * sample_rate)
    block = max(int(block_seconds * sample_rate), 1)
    sndfile = _open_sndfile(path)
    wav = _wav_data(path) if sndfile is not None and sndfile.format in ("WAV", "WAVEX") else None
    if wav is not None and wav[0] == 0 and wav[1] > 0:
        # a recorder's placeholder size 0 (written before the length is known): libsndfile reads it as no audio at
        # all, ffmpeg reads the data to the end of the file
        sndfile.close()
        sndfile = None
    if sndfile is None:
        blocks = _ffmpeg_blocks(path, sample_rate, block)
    elif sndfile.format == "OGG":
        blocks = _ogg_blocks(sndfile, path, sample_rate, block, limit)
    else:
        blocks = _sndfile_blocks(sndfile, path, sample_rate, block, limit, wav)
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
    try:  # bytes, not str: soundfile encodes a str strictly, and a name that is not UTF-8 (b"a\\xff.wav") would fail
        return soundfile.SoundFile(os.fsencode(path))
    except (soundfile.LibsndfileError, RuntimeError):
        return None


def _sndfile_blocks(
    f: soundfile.SoundFile,
    path: Path,
    sample_rate: int,
    block: int,
    limit: int | None,
    wav: tuple[int, int, int] | None = None,
) -> Iterator[np.ndarray]:
    with f:
        if wav is not None and (why := _wav_truncated(*wav)):
            raise AudioError(f"{path}: {why}")
        if f.samplerate < MIN_SAMPLE_RATE:
            raise AudioError(f"{path}: a sample rate of {f.samplerate} Hz; speech needs at least {MIN_SAMPLE_RATE} Hz")
        exact_mp3 = f.format == "MP3" and _mp3_counted(path)
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
            if not np.isfinite(x).all():  # a float file can hold them; the features would turn all NaN
                at = (read + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])) / f.samplerate
                raise AudioError(f"{path}: NaN or infinite samples (at {at:.2f} s)")
            read, done = read + len(x), len(x) == 0
            x = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1)  # NeMo's downmix: the channels' mean
            if resampler is not None:
                x = resampler.resample_chunk(x, last=done)  # the last call flushes the filter's tail
            if len(x):
                out += len(x)
                yield x
            if done:
                break
        # FLAC's header counts its samples exactly; so does an MP3's Xing/Info frame (with the encoder's delay and
        # padding, from LAME's tag), which libsndfile then reports; without one its count is a guess from the size
        if (f.format == "FLAC" and read < f.frames) or (exact_mp3 and read + MP3_SLACK < f.frames):
            raise AudioError(f"{path}: truncated ({read / f.samplerate:.2f} s of {f.frames / f.samplerate:.2f} s)")
        if resampler is not None and (pad := -(-read * sample_rate // f.samplerate) - out) > 0:
            yield np.zeros(pad, np.float32)  # librosa.resample's length, ceil(n × ratio): soxr rounds instead


def _ogg_blocks(
    f: soundfile.SoundFile, path: Path, sample_rate: int, block: int, limit: int | None
) -> Iterator[np.ndarray]:
    """An Ogg file's blocks, link after link. Files joined with `cat` (voice messages, say) make a chained Ogg:
    streams one after another, each from its beginning-of-stream page to its end-of-stream page. libsndfile plays
    only the first and stops without a word, so each link is opened on its own and their audio concatenated."""
    try:
        links = _ogg_links(path)
    except AudioError:
        f.close()
        raise
    if len(links) == 1:
        yield from _sndfile_blocks(f, path, sample_rate, block, limit)
        return
    f.close()
    with open(path, "rb") as fh:
        for i, (start, end) in enumerate(links):
            try:
                link = soundfile.SoundFile(_ByteRange(fh, start, end))
            except (soundfile.LibsndfileError, RuntimeError) as e:
                why = getattr(e, "error_string", e)  # without soundfile's "Error opening <_ByteRange object ...>"
                raise AudioError(f"{path}: not readable audio (Ogg link {i + 1} of {len(links)}: {why})") from None
            yield from _sndfile_blocks(link, path, sample_rate, block, limit)


def _ogg_links(path: Path) -> list[tuple[int, int]]:
    """The byte ranges of an Ogg file's chained links (one for a plain file), from its page headers: a link ends
    where a beginning-of-stream page follows the end-of-stream pages of all the streams open before it.

    Raises AudioError for a file cut short (partial download, recorder killed mid-write): a last page that is not
    whole, or a stream without its end-of-stream page, at the end of the file or before the next link; libsndfile
    would just stop early without a word, giving half a transcript. A page reads ~27 + 255 bytes: a few ms for an
    hour of Opus."""
    links, start, pos, open_streams, heading = [], 0, 0, set(), True  # heading: only BOS pages in this link so far
    with open(path, "rb", buffering=1 << 16) as fh:  # seeks within the buffer cost no system call
        size = os.fstat(fh.fileno()).st_size
        while pos < size:
            fh.seek(pos)
            head = fh.read(27)
            if len(head) < 27 or head[:4] != b"OggS":
                why = "the Ogg stream ends before its last page" if len(head) < 27 else f"no Ogg page at byte {pos}"
                raise AudioError(f"{path}: truncated or corrupt ({why})")  # a page cut short, then more data
            flags, serial = head[5], head[14:18]
            lacing = fh.read(head[26])
            if flags & 0x02:  # beginning of a stream
                if not open_streams and pos > start:  # every stream before it has ended: a new link
                    links.append((start, pos))
                    start, heading = pos, True
                elif not heading:  # a stream opens after data while another is unfinished: the earlier one was cut
                    raise AudioError(f"{path}: truncated (an Ogg stream ends before its last page, at byte {pos})")
                open_streams.add(serial)
            else:
                heading = False
            if flags & 0x04:  # end of a stream
                open_streams.discard(serial)
            pos += 27 + len(lacing) + sum(lacing)
    if pos > size or open_streams:
        raise AudioError(f"{path}: truncated (the Ogg stream ends before its last page)")
    return [*links, (start, size)]


class _ByteRange:
    """Bytes [start, end) of an open file, seen as a whole file: one link of a chained Ogg, for libsndfile's virtual
    I/O (it asks for seek, tell and read, and reads the length by seeking to the end)."""

    def __init__(self, fh, start: int, end: int):
        self.fh, self.start, self.size, self.pos = fh, start, end - start, 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = min(max(base + offset, 0), self.size)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        self.fh.seek(self.start + self.pos)
        data = self.fh.read(n)
        self.pos += len(data)
        return data


def _wav_data(path: Path) -> tuple[int, int, int] | None:
    """(data size the header declares, data bytes the file holds, bytes per second) of a RIFF WAVE file, or None
    when the data chunk is not found in the first WAV_HEADER_MAX bytes. libsndfile clamps a declared size past the
    end of the file to what is there, so a WAV cut short would otherwise be read as a shorter recording."""
    with open(path, "rb") as fh:
        head = fh.read(WAV_HEADER_MAX)
        size = os.fstat(fh.fileno()).st_size
    if head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order = "<" if head[:4] == b"RIFF" else ">"  # RIFX: the same layout, big-endian
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        tag, (n,) = head[pos : pos + 4], struct.unpack(order + "I", head[pos + 4 : pos + 8])
        if tag == b"fmt " and pos + 20 <= len(head):  # format tag, channels, sample rate, then bytes per second
            (byte_rate,) = struct.unpack(order + "I", head[pos + 16 : pos + 20])
        if tag == b"data":
            return n, size - pos - 8, byte_rate
        pos += 8 + n + (n & 1)  # chunks are padded to an even size
    return None


def _wav_truncated(declared: int, present: int, byte_rate: int) -> str | None:
    """Why a WAV whose data chunk declares `declared` bytes but holds `present` is cut short; None if it is not, or
    if the size is a placeholder: recorders writing to a pipe put 0, 0xFFFFFFFF or about 2^31 there (arecord
    0x7FFFFFFF, sox 0x7FFFF000, ffmpeg 0xFFFFFFFF) and never come back to fix it."""
    placeholder = declared == 0 or 0x7FFF0000 <= declared <= 0x7FFFFFFF or declared >= 0xFFFF0000
    if placeholder or present >= declared or byte_rate == 0:
        return None
    return f"truncated ({present / byte_rate:.2f} s of {declared / byte_rate:.2f} s)"


def _mp3_counted(path: Path) -> bool:
    """Whether an MP3's first frame is a Xing/Info frame with a frame count (LAME writes one, for CBR too): then
    libsndfile's length is exact, and a file that decodes to less was cut short."""
    with open(path, "rb") as fh:
        head = fh.read(10)
        skip = 0
        if head[:3] == b"ID3" and len(head) == 10:  # an ID3v2 tag first: its size is 4 × 7 bits, plus a footer
            skip = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
            skip += 10 if head[5] & 0x10 else 0
        fh.seek(skip)
        frame = fh.read(4096)
    sync = re.search(rb"\xff[\xe0-\xff]", frame)  # the first frame header: 11 bits set
    if sync is None:
        return False
    at = sync.start()
    mpeg1, mono = (frame[at + 1] >> 3) & 3 == 3, (frame[at + 3] >> 6) == 3
    side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)  # the side information before the tag
    tag = frame[at + 4 + side : at + 4 + side + 8]
    return tag[:4] in (b"Xing", b"Info") and len(tag) == 8 and bool(tag[7] & 1)  # flag 1: the frame count is there


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
