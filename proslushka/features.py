"""NeMo-compatible log-mel features: numpy for inference, torch for training. One config, one filterbank.

The algorithm is NeMo's FilterbankFeatures (docs/nemo-facts.md §2): pre-emphasis, centered STFT with a
symmetric Hann window shorter than n_fft, power spectrum, Slaney mel filterbank, log(x + 2^-24), optional
per-feature normalization over the valid frames, zeroed padding frames, time padded to a multiple of 16.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

NORMALIZE_EPS = 1e-5  # NeMo adds this to the std (not the variance)
# valid frames of N samples at hop h: "floor" N // h (NeMo ≥ 2.5), "floor+1" N // h + 1 (NeMo 1.0 to 2.4, every
# STFT frame), "ceil" ceil(N / h) (NeMo ≤ 1.0.0b4, the Golos training era)
VALID_FRAMES = ("floor", "floor+1", "ceil")


@dataclass
class FeatureConfig:
    sample_rate: int = 16000
    n_fft: int = 512
    window_size: float = 0.02  # seconds → 320 samples
    window_stride: float = 0.01  # seconds → 160 samples
    n_mels: int = 64
    preemph: float = 0.97
    dither: float = 1e-5  # training only, as in NeMo ≥ 1.0
    log_guard: float = 2.0**-24
    normalize: str = "none"  # "per_feature" (NeMo) or "none" (our fine-tuning default)
    pad_to: int = 16
    # STFT centre padding: "constant" (zeros, NeMo ≥ 2.5) or "reflect" (NeMo ≤ 2.4, the Golos era included)
    pad_mode: str = "constant"
    lowfreq: float = 0.0
    highfreq: float | None = None
    # how many frames of a clip of N samples count as valid (NEMO.md §2.3), one of VALID_FRAMES;
    # None: "floor" with constant padding, "ceil" with reflect (what a pad_mode-only config always meant)
    valid_frames: str | None = None

    def __post_init__(self) -> None:
        if self.normalize not in ("per_feature", "none"):
            raise ValueError(f"normalize must be 'per_feature' or 'none', not {self.normalize!r}")
        if self.pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', not {self.pad_mode!r}")
        if self.valid_frames is None:
            self.valid_frames = "ceil" if self.pad_mode == "reflect" else "floor"
        if self.valid_frames not in VALID_FRAMES:
            raise ValueError(f"valid_frames must be one of {', '.join(VALID_FRAMES)}, not {self.valid_frames!r}")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Bounds that every use relies on: a sample rate of 0 or a window longer than n_fft gives NaNs or garbage."""
        for name, lo, hi in (("sample_rate", 1000, 192000), ("n_fft", 2, 32768), ("n_mels", 1, 512),
                             ("window_size", 1e-4, 1.0), ("window_stride", 1e-4, 1.0), ("preemph", 0.0, 1.0),
                             ("dither", 0.0, 1.0), ("log_guard", 1e-30, 1.0), ("pad_to", 0, 4096),
                             ("lowfreq", 0.0, 96000.0)):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise ValueError(f"{name} must be a number from {lo:g} to {hi:g}, not {v!r}")
        if not 1 <= self.hop_length <= self.win_length <= self.n_fft:
            raise ValueError(f"need 1 <= hop ({self.hop_length}) <= window ({self.win_length}) <= n_fft ({self.n_fft})")
        if self.highfreq is not None and not self.lowfreq < self.highfreq <= self.sample_rate / 2:
            raise ValueError(f"highfreq must lie between lowfreq and half the sample rate, not {self.highfreq!r}")

    @property
    def win_length(self) -> int:
        return int(self.window_size * self.sample_rate)  # NeMo converts seconds with int(), not round()

    @property
    def hop_length(self) -> int:
        return int(self.window_stride * self.sample_rate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a feature config must be a mapping, not {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def num_frames(num_samples, cfg: FeatureConfig):
    """Valid feature frames for a clip of `num_samples` (an int, or an integer array/tensor; NEMO.md §2.3)."""
    hop = cfg.hop_length
    if cfg.valid_frames == "ceil":
        return (num_samples + hop - 1) // hop
    if cfg.valid_frames == "floor+1":
        return num_samples // hop + 1
    return num_samples // hop


def padded_frames(num_samples: int, cfg: FeatureConfig) -> int:
    """Frames in the output: the STFT's N // hop + 1, rounded up to a multiple of pad_to."""
    t = num_samples // cfg.hop_length + 1
    return -(-t // cfg.pad_to) * cfg.pad_to if cfg.pad_to > 0 else t


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's scale (librosa htk=False): linear below 1 kHz, logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    hz = m * (200.0 / 3)
    log_part = 1000.0 * np.exp((math.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log_part, hz)


def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32 triangular filters, Slaney scale and area normalization (librosa's default)."""
    fmax = cfg.highfreq if cfg.highfreq is not None else cfg.sample_rate / 2
    fft_freqs = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(cfg.lowfreq), _hz_to_mel(fmax), cfg.n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)
    widths = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    fb = np.maximum(0.0, np.minimum(lower, upper))
    fb *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    return fb.astype(np.float32)


def stft_window(cfg: FeatureConfig) -> np.ndarray:
    """Symmetric Hann (torch periodic=False) of win_length, zero-padded on both sides to n_fft as torch.stft does."""
    n = cfg.win_length
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / (n - 1))
    left = (cfg.n_fft - n) // 2
    return np.pad(w, (left, cfg.n_fft - n - left)).astype(np.float32)


# ----------------------------------------------------------------------------------------------- numpy (inference)

_FB_CACHE: dict[tuple, np.ndarray] = {}


def _cached_filterbank(cfg: FeatureConfig) -> np.ndarray:
    key = (cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.lowfreq, cfg.highfreq)
    if key not in _FB_CACHE:
        _FB_CACHE[key] = mel_filterbank(cfg).astype(np.float64)
    return _FB_CACHE[key]


def log_mel_numpy(audio: np.ndarray, cfg: FeatureConfig, block_frames: int = 4096) -> tuple[np.ndarray, int]:
    """One clip [N] → (features [n_mels, T_padded] float32, valid frames). No dither (inference)."""
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("expected a non-empty 1-D waveform")
    x = np.concatenate([x[:1], x[1:] - cfg.preemph * x[:-1]])
    half = cfg.n_fft // 2
    x = np.pad(x, half, mode="reflect" if cfg.pad_mode == "reflect" and len(x) > half else "constant")
    hop = cfg.hop_length
    total = (len(x) - cfg.n_fft) // hop + 1
    valid = num_frames(len(audio), cfg)
    window = stft_window(cfg).astype(np.float64)
    fb = _cached_filterbank(cfg)
    out = np.zeros((cfg.n_mels, padded_frames(len(audio), cfg)), dtype=np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft)[::hop]
    for s in range(0, total, block_frames):  # blocks bound the memory of long audio
        spec = np.fft.rfft(frames[s : s + block_frames] * window, axis=-1)
        power = spec.real**2 + spec.imag**2
        out[:, s : s + len(power)] = np.log(fb @ power.T + cfg.log_guard)
    out[:, valid:] = 0.0
    if cfg.normalize == "per_feature":
        v = out[:, :valid]
        mean = v.mean(axis=1, keepdims=True)
        std = np.sqrt(((v - mean) ** 2).sum(axis=1, keepdims=True) / max(valid - 1, 1)) + NORMALIZE_EPS
        out[:, :valid] = (v - mean) / std
    return out.astype(np.float32), valid


def batch_numpy(feats: list[np.ndarray]) -> np.ndarray:
    """Zero-pad a list of [n_mels, T_i] features to one [B, n_mels, max T] batch (T_i are already multiples of 16)."""
    t = max(f.shape[1] for f in feats)
    out = np.zeros((len(feats), feats[0].shape[0], t), dtype=np.float32)
    for i, f in enumerate(feats):
        out[i, :, : f.shape[1]] = f
    return out


# ----------------------------------------------------------------------------------------------- torch (training)


def _torch_module():
    import torch
    from torch import nn

    class LogMel(nn.Module):
        """Batched log-mel on any device: audio [B, N], lengths [B] → features [B, n_mels, T], frame lengths [B]."""

        def __init__(self, cfg: FeatureConfig):
            super().__init__()
            self.cfg = cfg
            # torch's own Hann (as NeMo builds it) rather than ours: they differ in the last float32 bit.
            window = torch.hann_window(cfg.win_length, periodic=False)
            left = (cfg.n_fft - cfg.win_length) // 2
            window = nn.functional.pad(window, (left, cfg.n_fft - cfg.win_length - left))
            self.register_buffer("window", window, persistent=False)
            self.register_buffer("fb", torch.from_numpy(mel_filterbank(cfg)), persistent=False)

        @torch.no_grad()
        def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            cfg = self.cfg
            with torch.autocast(audio.device.type, enabled=False):
                x = audio.float()
                hop = cfg.hop_length
                frames = num_frames(lengths, cfg)
                if self.training and cfg.dither > 0:
                    x = x + cfg.dither * torch.randn_like(x)
                x = torch.cat([x[:, :1], x[:, 1:] - cfg.preemph * x[:, :-1]], dim=1)
                sample_idx = torch.arange(x.shape[1], device=x.device)
                x = x.masked_fill(sample_idx[None, :] >= lengths[:, None], 0.0)
                spec = torch.stft(
                    x,
                    n_fft=cfg.n_fft,
                    hop_length=hop,
                    win_length=cfg.n_fft,
                    window=self.window,
                    center=True,
                    pad_mode=cfg.pad_mode,
                    return_complex=True,
                )
                # magnitude then square, as NeMo does, so float32 rounding matches theirs
                power = torch.view_as_real(spec).pow(2).sum(-1).sqrt().pow(2)
                x = torch.log(torch.matmul(self.fb, power) + cfg.log_guard)
                valid = torch.arange(x.shape[2], device=x.device)[None, :] < frames[:, None]  # [B, T]
                if cfg.normalize == "per_feature":
                    x = _normalize_per_feature(x, valid, frames)
                x = x.masked_fill(~valid[:, None, :], 0.0)
                if cfg.pad_to > 0 and x.shape[2] % cfg.pad_to:
                    x = nn.functional.pad(x, (0, cfg.pad_to - x.shape[2] % cfg.pad_to))
            return x, frames

    def _normalize_per_feature(x: torch.Tensor, valid: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        n = frames[:, None].to(x.dtype)  # [B, 1]
        mask = valid[:, None, :]
        mean = torch.where(mask, x, 0.0).sum(2) / n
        centered = torch.where(mask, x - mean[:, :, None], 0.0)
        std = torch.sqrt(centered.pow(2).sum(2) / (n - 1).clamp(min=1)) + NORMALIZE_EPS
        return (x - mean[:, :, None]) / std[:, :, None]

    return LogMel


_LOGMEL = None


def LogMel(cfg: FeatureConfig) -> torch.nn.Module:  # noqa: N802 - a class factory; torch is imported lazily
    """The torch feature module (built lazily so `import proslushka.features` never imports torch)."""
    global _LOGMEL
    if _LOGMEL is None:
        _LOGMEL = _torch_module()
    return _LOGMEL(cfg)
