"""Waveform augmentation: noise of several colours at a chosen SNR, gain, leading/trailing silence, joined clips.

One recipe for training (on the fly, seeded per item so a resumed run sees the same audio) and for the noisy and
long-file evaluation sets (tools/make_eval_sets.py). numpy only; every function takes the generator it draws from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

NOISE_KINDS = ("white", "pink", "brown", "babble", "hum")


def coloured_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """n samples of unit-RMS white, pink (1/f power) or brown (1/f²) noise, shaped in the frequency domain."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec *= {"white": 1.0, "pink": f**-0.5, "brown": 1.0 / f}[kind]
    spec[0] = 0.0  # no DC offset
    x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def hum(n: int, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """Unit-RMS mains hum: 50 or 60 Hz with a few decaying harmonics at random phases."""
    t = np.arange(n) / sample_rate
    base = rng.choice([50.0, 60.0])
    x = sum(np.sin(2 * np.pi * base * h * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 6))
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def babble(n: int, rng: np.random.Generator, speech: Callable[[np.random.Generator], np.ndarray], voices: int = 4):
    """Unit-RMS crowd noise: `voices` other clips (from `speech(rng)`), each looped to n samples, summed."""
    x = np.zeros(n, dtype=np.float64)
    for _ in range(voices):
        clip = speech(rng)
        if len(clip) == 0:
            continue
        clip = clip / (np.sqrt(np.mean(clip.astype(np.float64) ** 2)) + 1e-12)
        x += np.resize(np.roll(clip, rng.integers(len(clip))), n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def noise(n: int, kind: str, rng: np.random.Generator, speech=None, sample_rate: int = 16000) -> np.ndarray:
    """Unit-RMS noise of one of NOISE_KINDS (babble needs `speech`, a function rng → other clip)."""
    if kind == "hum":
        return hum(n, rng, sample_rate)
    if kind == "babble":
        if speech is None:
            raise ValueError("babble noise needs other speech clips")
        return babble(n, rng, speech)
    return coloured_noise(n, kind, rng)


def add_at_snr(clean: np.ndarray, noise_unit: np.ndarray, snr_db: float) -> np.ndarray:
    """clean + noise scaled so that the ratio of their mean powers is snr_db (clean's power over its whole length)."""
    power = float(np.mean(clean.astype(np.float64) ** 2))
    if power == 0.0:
        return clean.copy()
    return (clean + noise_unit * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32)


def limit(x: np.ndarray, peak: float = 0.99) -> np.ndarray:
    """Scale down (never up) so that no sample clips when stored as 16-bit audio."""
    m = float(np.max(np.abs(x))) if len(x) else 0.0
    return (x * (peak / m)).astype(np.float32) if m > peak else x.astype(np.float32)


def silence(n: int, rng: np.random.Generator, floor_db: float | None) -> np.ndarray:
    """n samples of digital zeros (floor_db None) or of a low white-noise floor at floor_db dBFS RMS."""
    if floor_db is None or n == 0:
        return np.zeros(n, dtype=np.float32)
    return (coloured_noise(n, "white", rng) * 10 ** (floor_db / 20)).astype(np.float32)


def join(clips: Sequence[np.ndarray], pauses: Sequence[np.ndarray]) -> np.ndarray:
    """clips[0] + pauses[0] + clips[1] + ... (len(pauses) == len(clips) - 1)."""
    parts = [clips[0]]
    for pause, clip in zip(pauses, clips[1:], strict=True):
        parts += [pause, clip]
    return np.concatenate(parts).astype(np.float32)


def join_groups(n: int, join_prob: float, seed: int) -> list[tuple[int, ...]]:
    """Indices 0..n-1 shuffled into groups of 1 to 3, each index exactly once: a share join_prob of the groups
    starts a join with 1 or 2 partners. Fixed for a run (a function of the seed), so that the sampler can bucket
    joined clips by their real length: joined clips drawn per item would pad every batch they land in."""
    rng = np.random.default_rng([seed, 7])
    order, groups, i = rng.permutation(n).tolist(), [], 0
    while i < n:
        size = 1 + int(rng.integers(1, 3)) if rng.random() < join_prob else 1
        groups.append(tuple(order[i : i + size]))
        i += size
    return groups


@dataclass
class AugmentConfig:
    """Training-time waveform augmentation; each probability is per utterance, 0 turns that step off."""

    noise_prob: float = 0.0
    snr_db: tuple[float, float] = (0.0, 30.0)
    noise_kinds: tuple[str, ...] = NOISE_KINDS  # one entry drawn uniformly: a kind listed twice comes twice as often
    gain_prob: float = 0.0
    gain_db: tuple[float, float] = (-12.0, 6.0)
    silence_prob: float = 0.0  # leading and trailing silence, each up to silence_seconds
    silence_seconds: float = 1.0
    floor_db: tuple[float, float] = (-80.0, -50.0)  # a noise floor in this range, or digital zeros half the time
    join_prob: float = 0.0  # share of items that are 2-3 clips joined, pauses of pause_seconds between (join_groups)
    pause_seconds: tuple[float, float] = (0.3, 2.0)

    def __post_init__(self) -> None:
        for name in ("noise_prob", "gain_prob", "silence_prob", "join_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, not {getattr(self, name)}")
        unknown = set(self.noise_kinds) - set(NOISE_KINDS)
        if unknown:
            raise ValueError(f"unknown noise kinds {sorted(unknown)} (choose from {', '.join(NOISE_KINDS)})")

    @property
    def active(self) -> bool:
        return any((self.noise_prob, self.gain_prob, self.silence_prob, self.join_prob))


def augment(wave: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, speech=None, sr: int = 16000):
    """The noise, silence and gain steps of `cfg` on one waveform (joining is the dataset's: it changes the text and
    the length, which the sampler must know)."""
    x = wave.astype(np.float32)
    if rng.random() < cfg.silence_prob:
        floor = None if rng.random() < 0.5 else rng.uniform(*cfg.floor_db)
        lead, trail = (int(rng.uniform(0, cfg.silence_seconds) * sr) for _ in range(2))
        x = np.concatenate([silence(lead, rng, floor), x, silence(trail, rng, floor)])
    if rng.random() < cfg.noise_prob:
        kinds = [k for k in cfg.noise_kinds if k != "babble" or speech is not None]
        kind = kinds[rng.integers(len(kinds))]
        x = add_at_snr(x, noise(len(x), kind, rng, speech, sr), rng.uniform(*cfg.snr_db))
    if rng.random() < cfg.gain_prob:
        x = x * 10 ** (rng.uniform(*cfg.gain_db) / 20)
    return limit(x)
