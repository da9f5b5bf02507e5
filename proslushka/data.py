"""Training data: manifests, the audio dataset, collate, the duration-bucketing sampler and SpecAugment."""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from proslushka import audio, augment
from proslushka.augment import AugmentConfig
from proslushka.files import atomic_write
from proslushka.manifest import FIELDS, ManifestError, iter_manifest_rows, short
from proslushka.text import LABELS, check, encode, normalize

# -----------------------------------------------------------------------------
# manifests

MAX_LISTED = 1000  # bad rows listed in one error (all are counted): a wrong column makes every row bad
MAX_PATH_CHARS = 4096  # Linux's PATH_MAX; a longer audio_filepath is a bad row, not minutes in resolve()


@dataclass
class Utterance:
    audio_filepath: str  # absolute, resolved against the manifest's folder
    text: str  # normalized, every character in the alphabet
    duration: float  # seconds, as the manifest says (not re-measured)
    line: int  # 1-based line in the manifest, for error messages later on


class Manifest(list[Utterance]):
    """The good utterances of a manifest (a plain list of Utterance) plus what was left out of it.

    skipped: `manifest:line: reason` of each bad row dropped because skip_bad was set.
    filtered: how many good rows fell outside [min_duration, max_duration].
    """

    def __init__(self, path: str, utterances: Sequence[Utterance], skipped: list[str], filtered: int):
        super().__init__(utterances)
        self.path = path
        self.skipped = skipped
        self.filtered = filtered

    @property
    def durations(self) -> list[float]:
        return [u.duration for u in self]

    def summary(self) -> str:
        hours = sum(self.durations) / 3600
        return (
            f"{self.path}: {len(self)} utterances ({hours:.2f} h), {len(self.skipped)} bad rows skipped, "
            f"{self.filtered} outside the duration limits"
        )


def read_manifest(
    path: str | os.PathLike,
    labels: Sequence[str] = LABELS,
    min_duration: float | None = None,
    max_duration: float | None = None,
    skip_bad: bool = False,
    check_audio: bool = True,
    frames_per_second: float | None = None,
) -> Manifest:
    """Read a NeMo JSON-lines manifest (or a .csv/.tsv with the same columns) and validate every row up front.

    Every bad row is collected as `manifest:line: reason`. Unless skip_bad, any bad row raises ManifestError
    listing them (the first MAX_LISTED), so a long run never dies on row 900,000 of a manifest. check_audio opens
    each file and decodes its first moment (in-process for the usual formats, a fraction of a millisecond), so a
    row pointing at a text file or a program is caught here; decoding a whole corpus would take longer than an
    epoch. frames_per_second (the model's CTC output rate) makes a transcript longer than its audio's frames can
    carry a bad row. Rows outside [min_duration, max_duration] are not errors; they are dropped and counted.
    """
    name = os.fspath(path)
    folder = Path(path).resolve().parent
    rows = iter_manifest_rows(path)

    good: list[Utterance] = []
    bad: list[tuple[int, str]] = []
    for line, row in rows:
        utt = _utterance(row, line, folder, labels, frames_per_second) if isinstance(row, dict) else row
        if isinstance(utt, Utterance):
            good.append(utt)
        else:
            bad.append((line, utt))
    if check_audio:
        problems = _audio_problems([u.audio_filepath for u in good])
        bad += [(u.line, problems[u.audio_filepath]) for u in good if problems[u.audio_filepath]]
        good = [u for u in good if not problems[u.audio_filepath]]
    skipped = [f"{name}:{line}: {why}" for line, why in sorted(bad)]
    if skipped and not skip_bad:
        listed = skipped[:MAX_LISTED]
        more = f" (the first {MAX_LISTED} listed)" if len(skipped) > MAX_LISTED else ""
        header = f"{len(skipped)} bad row{'s' if len(skipped) != 1 else ''} in {name}{more} (skip_bad drops them):"
        raise ManifestError("\n".join([header, *listed]))

    keep = [u for u in good if _within(u.duration, min_duration, max_duration)]
    return Manifest(name, keep, skipped, len(good) - len(keep))


def _within(duration: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or duration >= lo) and (hi is None or duration <= hi)


def _utterance(row: dict, line: int, folder: Path, labels: Sequence[str], fps: float | None) -> Utterance | str:
    """The row as an Utterance, or the reasons it is bad joined by '; '. The audio file is checked later."""
    reasons = [f"missing field '{f}'" for f in FIELDS if f not in row]
    if row.get("offset") not in (None, "") and not _is_zero(row["offset"]):
        # NeMo rows with an offset are segments of a longer file; training on the whole file would be wrong silently
        reasons.append("'offset' (a segment of a longer file) is not supported")

    duration = math.nan
    if "duration" in row:
        duration, why = _duration(row["duration"])
        if why:
            reasons.append(why)

    text = ""
    if "text" in row:
        if not isinstance(row["text"], str):
            reasons.append(f"text is not a string: {short(row['text'])}")
        else:
            text = normalize(row["text"])
            why = check(text, labels)
            if why:
                reasons.append(f"{why} in text {short(row['text'])}")
            elif fps is not None and math.isfinite(duration):
                need, have = ctc_frames_needed(text), int(duration * fps)
                if need > have:
                    reasons.append(
                        f"text too long for its audio: {len(text)} characters need {need} CTC frames, "
                        f"{duration:g} s gives {have}"
                    )

    filepath = ""
    if "audio_filepath" in row:
        value = row["audio_filepath"]
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            reasons.append(f"audio_filepath is not a path: {short(value)}")
        elif len(value) > MAX_PATH_CHARS:
            reasons.append(f"audio_filepath longer than {MAX_PATH_CHARS} characters: {short(value)}")
        else:
            filepath = str((folder / Path(value).expanduser()).resolve())

    if reasons:
        return "; ".join(reasons)
    return Utterance(audio_filepath=filepath, text=text, duration=duration, line=line)


def ctc_frames_needed(text: str) -> int:
    """The fewest CTC output frames that can spell `text`: one per character, plus a blank between repeats."""
    return len(text) + sum(a == b for a, b in zip(text, text[1:], strict=False))


def _duration(value: object) -> tuple[float, str | None]:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return math.nan, f"duration is not a number: {short(value)}"
    try:
        d = float(value)
    except (ValueError, OverflowError):
        return math.nan, f"duration is not a number: {short(value)}"
    if not math.isfinite(d) or d <= 0:
        return math.nan, f"duration must be positive, got {short(value)}"
    return d, None


def _audio_problems(paths: Sequence[str]) -> dict[str, str | None]:
    """{path: why it cannot be trained on, or None}, each distinct file checked once, several at a time."""
    unique = list(dict.fromkeys(paths))
    problems: dict[str, str | None] = {}
    # threads, not processes: libsndfile and an ffmpeg child both run outside the GIL. In chunks, so a million rows
    # never become a million pending futures at once.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i in range(0, len(unique), 4096):
            chunk = unique[i : i + 4096]
            problems.update(zip(chunk, pool.map(_audio_problem, chunk), strict=True))
    return problems


def _audio_problem(filepath: str) -> str | None:
    path = Path(filepath)
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"audio file not found: {path}"
    except OSError as e:
        return f"audio file unreadable: {path} ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return f"audio path is not a file: {path}"
    if st.st_size == 0:
        return f"empty audio file: {path}"
    try:  # the first moment of audio: a text file, a program, a cut-off header fail here and not mid-run
        with closing(audio.stream_audio(path, block_seconds=0.1)) as blocks:
            next(blocks)
    except audio.AudioError as e:
        return f"not usable audio: {e}"
    return None


def _is_zero(value: object) -> bool:
    try:
        return float(value) == 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


# -----------------------------------------------------------------------------
# dataset and collate


class AudioDataset(torch.utils.data.Dataset):
    """Items are (waveform float32 [N], token ids int64 [L]) for the utterances of a manifest.

    cache_dir: decoded audio is kept there as int16 .npy, keyed by (path, size, mtime, sample rate), so only the
    first epoch decodes it (int16 costs nothing audible: -96 dB).
    speed_perturb: rates to pick from per item (e.g. (0.9, 1.0, 1.1)). augment: waveform augmentation
    (augment.py: joined clips with pauses, silence, noise at an SNR, gain; babble is made of other training clips).
    Every random pick is a function of (seed, epoch, index) alone, so a resumed run sees the same audio. Call
    set_epoch(epoch) before each epoch;
    DataLoader workers get a copy of the dataset when the epoch's iterator starts, so persistent_workers=True would
    freeze the epoch they see.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        labels: Sequence[str] = LABELS,
        sample_rate: int = audio.SAMPLE_RATE,
        cache_dir: str | os.PathLike | None = None,
        speed_perturb: Sequence[float] | None = None,
        seed: int = 0,
        augment: AugmentConfig | None = None,
        groups: Sequence[Sequence[int]] | None = None,
    ):
        self.utterances = list(utterances)
        self.augment = augment if augment is not None and augment.active else None
        # the items: groups of utterance indices, joined with pauses between (augment.join_groups); default: one each
        self.groups = [tuple(g) for g in groups] if groups is not None else [(i,) for i in range(len(utterances))]
        self.labels = tuple(labels)
        self.sample_rate = sample_rate
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.speed_perturb = tuple(speed_perturb) if speed_perturb else None
        if self.speed_perturb and any(r <= 0 for r in self.speed_perturb):
            raise ValueError(f"speed_perturb rates must be positive, got {self.speed_perturb}")
        self.seed = seed
        self.epoch = 0
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def durations(self) -> list[float]:
        """Seconds of each item (a group's clips plus its pauses at their mean length): what the sampler buckets."""
        pause = float(np.mean(self.augment.pause_seconds)) if self.augment else 0.0
        return [sum(self.utterances[i].duration for i in g) + pause * (len(g) - 1) for g in self.groups]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        group = [self.utterances[i] for i in self.groups[index]]
        wave, text = self.load(group[0]), group[0].text
        if len(group) > 1:  # a pause is learned as blank: clips joined with silence between, their texts too
            wave = self._join([wave] + [self.load(u) for u in group[1:]], index)
            text = " ".join(u.text for u in group)
        if self.speed_perturb:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            wave = change_speed(wave, self.speed_perturb[rng.integers(len(self.speed_perturb))])
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index, 1])
            wave = augment.augment(wave, self.augment, rng, self._other_clip, self.sample_rate)
        ids = encode(text, self.labels)
        return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), torch.tensor(ids, dtype=torch.int64)

    def _join(self, clips: list[np.ndarray], index: int) -> np.ndarray:
        """The clips with pauses of pause_seconds between, each digital silence or a low noise floor."""
        cfg, rng = self.augment or AugmentConfig(), np.random.default_rng([self.seed, self.epoch, index, 2])
        pauses = []
        for _ in clips[1:]:
            floor = None if rng.random() < 0.5 else rng.uniform(*cfg.floor_db)
            pauses.append(augment.silence(int(rng.uniform(*cfg.pause_seconds) * self.sample_rate), rng, floor))
        return augment.join(clips, pauses)

    def _other_clip(self, rng: np.random.Generator) -> np.ndarray:
        """A random training clip: the voices of babble noise."""
        return self.load(self.utterances[rng.integers(len(self.utterances))])

    def load(self, u: Utterance) -> np.ndarray:
        """Decoded float32 audio, from the cache when it holds this version of the file."""
        path = u.audio_filepath
        if self.cache_dir is None:
            return self._decode(u)
        try:
            cached = self.cache_dir / f"{_cache_key(path, self.sample_rate)}.npy"
        except OSError:  # gone since the manifest was read: let load_audio say so, naming the file
            return self._decode(u)
        try:
            pcm = np.load(cached)
        except (OSError, ValueError, EOFError):  # not cached yet, or a damaged file: decode again
            pcm = None
        if pcm is not None:
            _check_length(u, len(pcm) / self.sample_rate)
            return pcm.astype(np.float32) / 32768.0
        wave = self._decode(u)
        pcm = np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)
        _save_atomic(cached, pcm)
        return wave

    def _decode(self, u: Utterance) -> np.ndarray:
        """The clip's samples; decoding stops once it is clearly longer than its manifest says, which the sampler
        and --max_duration trusted (a 10-minute file said to be 2 s would otherwise be loaded whole)."""
        try:
            return audio.load_audio(u.audio_filepath, self.sample_rate, max_seconds=_longest(u.duration))
        except audio.AudioTooLongError:
            _check_length(u, math.inf)
            raise


def _longest(duration: float) -> float:
    # manifests written by other tools measure a little differently (codec delay, rounding): 10% + 0.5 s of slack
    return duration * 1.1 + 0.5


def _check_length(u: Utterance, seconds: float) -> None:
    if seconds > _longest(u.duration):
        raise audio.AudioError(
            f"{u.audio_filepath}: longer than its manifest duration of {u.duration:g} s (manifest line {u.line}); "
            "correct the duration"
        )


def _cache_key(path: str, sample_rate: int) -> str:
    st = os.stat(path)
    return hashlib.sha1(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{sample_rate}".encode()).hexdigest()


def _save_atomic(path: Path, array: np.ndarray) -> None:
    # atomic: a killed worker, or two workers on the same clip, never leave a half-written cache file behind
    buf = io.BytesIO()
    np.save(buf, array)
    try:
        atomic_write(path, buf.getvalue())
    except OSError as e:  # a full disk costs speed, not the run
        warnings.warn(f"audio cache: cannot write {path} ({e.strerror})", stacklevel=2)


def change_speed(wave: np.ndarray, rate: float) -> np.ndarray:
    """Play `wave` `rate` times faster (tempo and pitch, like sox `speed`): round(N / rate) samples.

    Resamples in the frequency domain: band-limited, so speeding up drops what would otherwise alias.
    """
    n = len(wave)
    m = max(1, round(n / rate))
    if m == n or n == 0:
        return wave
    spec = np.fft.rfft(wave.astype(np.float64))
    out = np.zeros(m // 2 + 1, dtype=spec.dtype)
    keep = min(len(out), len(spec))
    out[:keep] = spec[:keep]
    return (np.fft.irfft(out, m) * (m / n)).astype(np.float32)


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """-> audio [B, Nmax] float32 zero-padded, audio_lengths [B] int64, targets [B, Lmax] int64 0-padded,
    target_lengths [B] int64. Padding values never matter: every consumer masks by the lengths."""
    waves, ids = zip(*batch, strict=True)
    audio_lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    target_lengths = torch.tensor([len(t) for t in ids], dtype=torch.int64)
    audio_batch = torch.zeros(len(waves), int(audio_lengths.max()), dtype=torch.float32)
    targets = torch.zeros(len(ids), int(target_lengths.max()), dtype=torch.int64)
    for i, (w, t) in enumerate(zip(waves, ids, strict=True)):
        audio_batch[i, : len(w)] = w
        targets[i, : len(t)] = t
    return audio_batch, audio_lengths, targets, target_lengths


# -----------------------------------------------------------------------------
# duration-bucketing sampler


class DurationBucketSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of clips of similar duration, so little of each batch is padding.

    Each epoch: sort clips by duration with a seeded jitter (±jitter relative, random tie-break) so batch
    membership changes between epochs, cut the order into batches (batch_size clips, or as many as fit
    batch_seconds of padded audio: max duration × count), then shuffle. Everything is a function of
    (seed, epoch), so every rank and a resumed run compute the same batches.

    Every clip appears exactly once per epoch. With num_replicas > 1 the batches are grouped in steps of
    num_replicas neighbours in duration (so ranks wait on each other less), and rank r takes batch r of each step.
    When the batch count does not divide by num_replicas, the last step is padded with repeats of the
    longest batches (the only clips seen twice in an epoch); drop_last instead drops the incomplete step, and a
    partial last batch of batch_size.

    state_dict() holds the epoch and how many batches of it were handed out; after load_state_dict() iteration
    continues with the remaining ones (none once the epoch is spent, until set_epoch moves on). A DataLoader with
    workers takes batches ahead of the training loop; save the position the loop has reached instead:
    `{**sampler.state_dict(), "position": batches_done_this_epoch}`.
    """

    def __init__(
        self,
        durations: Sequence[float],
        batch_size: int | None = None,
        batch_seconds: float | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        jitter: float = 0.02,
    ):
        if batch_size is None and batch_seconds is None:
            raise ValueError("give batch_size, batch_seconds or both")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_seconds is not None and batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be positive, got {batch_seconds}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.jitter = jitter
        self.epoch = 0
        self.position = 0  # batches of this epoch already handed out on this rank
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        # the same epoch keeps its position, so a loop calling set_epoch(e) after load_state_dict() still resumes
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def __len__(self) -> int:
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        for i in range(self.position, len(batches)):
            self.position = i + 1  # before the yield: the consumer holds batch i once it sees it
            yield batches[i]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, **self._config()}

    def load_state_dict(self, state: dict) -> None:
        # a key an older state lacks is not compared (the durations' digest came later)
        changed = [f"{k} {v} (saved: {state[k]})" for k, v in self._config().items() if k in state and state[k] != v]
        if changed and state["position"] > 0:
            # mid-epoch, the position only means something for the very same batches
            raise ValueError(f"a different sampler setup mid-epoch: {', '.join(changed)}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

    def _config(self) -> dict:
        return {
            "seed": self.seed,
            "size": len(self.durations),
            "durations": hashlib.sha1(self.durations.tobytes()).hexdigest()[:12],  # the same size, other clips
            "batch_size": self.batch_size,
            "batch_seconds": self.batch_seconds,
            "num_replicas": self.num_replicas,
            "jitter": self.jitter,
        }

    def _rank_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, [step[self.rank] for step in self._steps(self.epoch)])
        return self._cache[1]

    def _steps(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's batches in steps of num_replicas (one batch per rank), in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.durations)
        perm = rng.permutation(n)  # ties (and near-ties under the jitter) break at random
        keys = self.durations[perm] * (1 + self.jitter * rng.uniform(-1, 1, n))
        order = perm[np.argsort(keys, kind="stable")]
        batches = self._cut(order)
        if self.drop_last and self.batch_seconds is None and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        r = self.num_replicas
        if self.drop_last:
            batches = batches[: len(batches) // r * r]
        elif batches and len(batches) % r:
            batches += [batches[-1 - i % len(batches)] for i in range(-len(batches) % r)]
        steps = [batches[i : i + r] for i in range(0, len(batches), r)]
        return [steps[i] for i in rng.permutation(len(steps))]

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        if self.batch_seconds is None:
            return [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        # padded cost is max duration × count; a clip longer than the budget gets a batch of its own
        batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0.0
        for i in order.tolist():
            d = self.durations[i]
            full = self.batch_size is not None and len(batch) >= self.batch_size
            if batch and (full or max(longest, d) * (len(batch) + 1) > self.batch_seconds):
                batches.append(batch)
                batch, longest = [], 0.0
            batch.append(i)
            longest = max(longest, d)
        if batch:
            batches.append(batch)
        return batches


# -----------------------------------------------------------------------------
# SpecAugment


class SpecAugment(nn.Module):
    """NeMo's spectrogram augmentation on features [B, F, T]: rectangles (SpecCutout) and, optionally,
    whole-band frequency and time masks (SpecAugment proper). Masked values become mask_value.

    The defaults are quartznet_15x5_ru.yaml's: 2 rectangles up to 50 mel bins × 120 frames, no band masks.
    Widths are drawn in [0, max] and starts in [0, size - max], as NeMo does. Unlike NeMo, masks stay inside
    each item's `lengths` frames, so batch padding does not change what a clip sees. time_width may be a
    float: a fraction of each item's length. Active only in training mode. The random draws come from
    `generator` (a CPU torch.Generator) when given, so they are the same on every device.
    """

    def __init__(
        self,
        rect_masks: int = 2,
        rect_freq: int = 50,
        rect_time: int = 120,
        freq_masks: int = 0,
        freq_width: int = 10,
        time_masks: int = 0,
        time_width: int | float = 10,
        mask_value: float = 0.0,
    ):
        super().__init__()
        self.rect_masks, self.rect_freq, self.rect_time = rect_masks, rect_freq, rect_time
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.mask_value = mask_value

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if not self.training or not (self.rect_masks or self.freq_masks or self.time_masks):
            return features
        b, f, t = features.shape
        device = features.device
        lengths = lengths.to(device=device, dtype=torch.int64)

        def uniform(k: int) -> torch.Tensor:  # [B, k] in [0, 1), drawn on the CPU for device-independence
            return torch.rand(b, k, generator=generator).to(device)

        freqs = torch.arange(f, device=device).view(1, 1, f)
        frames = torch.arange(t, device=device).view(1, 1, t)
        length = lengths.view(b, 1)
        mask_ft = torch.zeros(b, f, t, dtype=torch.bool, device=device)

        def interval(k: int, width: int | torch.Tensor, size: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # NeMo: width ~ U{0..width}, start ~ U{0..size - width}; we then clip the end to `size`
            size = torch.as_tensor(size, device=device)
            width = torch.as_tensor(width, device=device)
            room = (size - width).clamp(min=0)
            # float32 u * (n + 1) can round up to n + 1, hence the clamps
            w = torch.minimum((uniform(k) * (width + 1)).long(), width)
            start = torch.minimum((uniform(k) * (room + 1)).long(), room)
            return start, torch.minimum(start + w, size)

        if self.rect_masks:
            f0, f1 = interval(self.rect_masks, min(self.rect_freq, f), f)
            t0, t1 = interval(self.rect_masks, self.rect_time, length)
            in_f = (freqs >= f0.unsqueeze(-1)) & (freqs < f1.unsqueeze(-1))  # [B, k, F]
            in_t = (frames >= t0.unsqueeze(-1)) & (frames < t1.unsqueeze(-1))  # [B, k, T]
            mask_ft |= (in_f.unsqueeze(-1) & in_t.unsqueeze(-2)).any(1)
        if self.freq_masks:
            f0, f1 = interval(self.freq_masks, min(self.freq_width, f), f)
            mask_ft |= ((freqs >= f0.unsqueeze(-1)) & (freqs < f1.unsqueeze(-1))).any(1).unsqueeze(-1)
        if self.time_masks:
            if isinstance(self.time_width, float):
                width = (lengths.view(b, 1) * self.time_width).long().clamp(min=1)
            else:
                width = torch.tensor(self.time_width, device=device)
            t0, t1 = interval(self.time_masks, width, length)
            mask_ft |= ((frames >= t0.unsqueeze(-1)) & (frames < t1.unsqueeze(-1))).any(1).unsqueeze(1)
        valid = frames.view(1, t) < length  # [B, T]
        return features.masked_fill(mask_ft & valid.unsqueeze(1), self.mask_value)
