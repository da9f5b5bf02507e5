"""A training run's settings: one `TrainConfig`, the checks of its values, and the learning-rate schedule they
define. Nothing here touches data or devices beyond asking whether a CUDA device exists."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .augment import NOISE_KINDS
from .model import preset
from .text import LABELS


@dataclass
class TrainConfig:
    train_manifest: str | list[str] = ""  # several: joined, each row's path relative to its own manifest
    valid_manifest: str | None = None
    out_dir: str = "runs/quartznet"
    # model: a preset (15x5, 5x5, small, tiny) trained from scratch, or --init from a transfer/training checkpoint
    model: str = "small"
    se: bool = False
    init: str | None = None
    resume: str | None = None
    labels: str = "".join(LABELS)
    normalize: str = "none"  # feature normalization for a model from scratch; --init keeps the checkpoint's
    # data
    batch_size: int | None = 32
    batch_seconds: float | None = None
    min_duration: float | None = None
    max_duration: float | None = 20.0  # NeMo's ru recipe trains on clips up to 20 s
    skip_bad: bool = False
    cache_dir: str | None = None
    num_workers: int = 2
    speed_perturb: list[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]
    spec_augment: bool = True
    rect_masks: int = 2
    rect_freq: int = 50
    rect_time: int = 120
    # waveform augmentation (augment.py), each a share of the training clips; off at validation
    noise_prob: float = 0.0
    snr_db: tuple[float, float] = (0.0, 30.0)
    noise_kinds: tuple[str, ...] = NOISE_KINDS  # drawn uniformly from this list: a kind named twice, twice as often
    gain_prob: float = 0.0
    silence_prob: float = 0.0
    join_prob: float = 0.0
    # optimization
    max_epochs: int = 15
    max_steps: int | None = None  # optimizer steps: the schedule's length, and training stops there
    stop_at_step: int | None = None  # stop (saving last.pt) here as if interrupted; the schedule is unchanged
    accumulate: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int | None = None  # None: WARMUP_SHARE of the run's optimizer steps
    grad_clip: float = 1.0
    freeze_bn: bool = False  # BatchNorm statistics stay fixed (eval mode): fine-tuning with small batches
    dither: float = 1e-5  # feature dither in training (NeMo's); 0 makes a CPU run bit-reproducible across batchings
    amp: bool = False
    seed: int = 0
    device: str = "auto"
    # bookkeeping
    save_every: int = 500  # optimizer steps between last.pt saves (and at every epoch end)
    keep: int = 0  # also keep the weights of the last `keep` of those saves, as step-NNNNNNN.pt (for averaging)
    log_every: int = 10
    valid_samples: int = 3
    progress: bool = True
    overwrite: bool = False  # replace a previous run's checkpoints and metrics in out_dir

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class TrainError(RuntimeError):
    """A training that cannot run or go on, said in one line (a manifest: one line per bad row).

    code is the exit status: 2 for bad settings, a bad checkpoint or output folder; 1 for bad data.
    """

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# Settings a resumed run must share with its checkpoint: they define the model, its features and its alphabet, and
# the checkpoint's weights, optimizer and scaler state only fit them. Everything else may change on --resume and
# takes effect from there: the schedule (lr, min_lr, warmup_steps, max_epochs, max_steps), the optimizer's
# weight_decay and betas, augmentation, logging, workers, the validation manifest. The training data and batching
# may change at an epoch boundary; in the middle of an epoch the sampler refuses them (its position would
# point into other batches).
RESUME_FIXED = ("model", "se", "init", "normalize", "labels", "amp")


# Settings of one invocation only, never taken from the checkpoint of the run being resumed.
NOT_RESUMED = ("resume", "overwrite", "stop_at_step")


def resumed_config(resume: str, given: dict[str, Any]) -> TrainConfig:
    """The settings a stopped run continues with: those saved in its checkpoint, then the options given now (which
    Trainer checks against RESUME_FIXED). The run goes on in the checkpoint's folder unless --out_dir says else."""
    from . import checkpoint

    try:
        ckpt = checkpoint.load(resume)
    except checkpoint.CheckpointError as e:
        raise TrainError(str(e), code=2) from None
    saved = ckpt.get("trainer", {}).get("config") if isinstance(ckpt.get("trainer"), dict) else None
    if not isinstance(saved, dict):
        raise TrainError(f"{resume}: not a training checkpoint (no trainer state); use --init", code=2)
    base = {k: v for k, v in saved.items() if k not in NOT_RESUMED}
    base["out_dir"] = str(Path(resume).parent)
    return TrainConfig.from_dict({**base, **given, "resume": resume})


def check_config(cfg: TrainConfig) -> str | None:
    """Every setting out of bounds, as '--name: rule' joined by '; ', or None when all are usable."""
    bad = []

    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            bad.append(f"--{name} {getattr(cfg, name)!r}: {rule}")

    def finite(x: float | None) -> bool:
        return x is not None and math.isfinite(x)

    if cfg.batch_size is None and cfg.batch_seconds is None:
        bad.append("give --batch_size, --batch_seconds or both")
    need(cfg.batch_size is None or cfg.batch_size >= 1, "batch_size", "at least 1")
    need(
        cfg.batch_seconds is None or (finite(cfg.batch_seconds) and cfg.batch_seconds > 0),
        "batch_seconds",
        "a positive number of seconds",
    )
    for name in ("min_duration", "max_duration"):
        value = getattr(cfg, name)
        need(value is None or (finite(value) and value > 0), name, "a positive number of seconds")
    if finite(cfg.min_duration) and finite(cfg.max_duration):
        need(cfg.min_duration <= cfg.max_duration, "min_duration", "not above --max_duration")
    for name in ("accumulate", "max_epochs", "save_every", "log_every"):
        need(getattr(cfg, name) >= 1, name, "at least 1")
    need(cfg.warmup_steps is None or cfg.warmup_steps >= 0, "warmup_steps", "not negative")
    for name in ("num_workers", "rect_masks", "rect_freq", "rect_time", "valid_samples", "keep"):
        need(getattr(cfg, name) >= 0, name, "not negative")
    need(cfg.max_steps is None or cfg.max_steps >= 1, "max_steps", "at least 1")
    need(cfg.stop_at_step is None or cfg.stop_at_step >= 0, "stop_at_step", "not negative")
    need(0 <= cfg.seed < 2**32, "seed", "in [0, 2^32)")
    need(finite(cfg.lr) and 0 < cfg.lr <= 10, "lr", "in (0, 10]")
    need(finite(cfg.min_lr) and 0 <= cfg.min_lr <= cfg.lr, "min_lr", "in [0, --lr]")
    need(finite(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay", "not negative")
    need(len(cfg.betas) == 2 and all(finite(b) and 0 <= b < 1 for b in cfg.betas), "betas", "two numbers in [0, 1)")
    need(finite(cfg.grad_clip) and cfg.grad_clip > 0, "grad_clip", "positive")
    need(finite(cfg.dither) and 0 <= cfg.dither < 1, "dither", "in [0, 1)")
    need(all(finite(r) and 0.5 <= r <= 2 for r in cfg.speed_perturb), "speed_perturb", "rates in [0.5, 2]")
    for name in ("noise_prob", "gain_prob", "silence_prob", "join_prob"):
        need(finite(getattr(cfg, name)) and 0 <= getattr(cfg, name) <= 1, name, "in [0, 1]")
    lo, hi = cfg.snr_db
    need(finite(lo) and finite(hi) and -20 <= lo <= hi <= 100, "snr_db", "two numbers, -20 <= low <= high <= 100")
    need(
        0 < len(cfg.noise_kinds) <= 100 and set(cfg.noise_kinds) <= set(NOISE_KINDS),
        "noise_kinds",
        f"1 to 100 of {', '.join(NOISE_KINDS)} (repeats weight the draw)",
    )
    need(
        0 < len(cfg.labels) <= 1000 and len(set(cfg.labels)) == len(cfg.labels),
        "labels",
        "1 to 1000 characters, none repeated",
    )
    if not cfg.init and not cfg.resume:
        try:
            preset(cfg.model)
        except ValueError as e:
            bad.append(f"--model: {e}")
    need(cfg.normalize in ("none", "per_feature"), "normalize", "none or per_feature")
    try:
        device = torch.device("cpu" if cfg.device == "auto" else cfg.device)
        need(device.type != "cuda" or torch.cuda.is_available(), "device", "no CUDA device here")
    except RuntimeError:
        need(False, "device", "auto, cpu, cuda or cuda:N")
    return "; ".join(bad) or None


WARMUP_SHARE = 0.05  # of the run's optimizer steps, when --warmup_steps is not given
MOST_OF_RUN = 0.5  # a warmup longer than this share of the run is warned about: the peak and the decay barely come


@dataclass
class Schedule:
    """The run's length in optimizer steps, sized from its real batches: accumulation and DDP ranks included."""

    batches_per_epoch: int  # on each rank
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def plan_schedule(cfg: TrainConfig, batches_per_epoch: int) -> Schedule:
    """Steps an epoch (an epoch's last step takes the batches left, so --accumulate above an epoch's batches makes
    one step an epoch), the total (--max_epochs, capped by --max_steps) and the warmup: --warmup_steps, or
    WARMUP_SHARE of the total."""
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accumulate)
    total = cfg.max_epochs * steps_per_epoch
    total = min(total, cfg.max_steps) if cfg.max_steps else total
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, round(WARMUP_SHARE * total))
    return Schedule(batches_per_epoch, steps_per_epoch, total, warmup)


def describe_schedule(cfg: TrainConfig, s: Schedule, world: int) -> list[str]:
    """The schedule in one line, then a warning line for each way it does not fit the run."""
    per_step = f"batch {cfg.batch_size}" if cfg.batch_seconds is None else f"batches of {cfg.batch_seconds:g} s"
    auto = "" if cfg.warmup_steps is not None else f" ({WARMUP_SHARE:.0%} of the run)"
    lines = [
        f"schedule: {s.total_steps} optimizer steps ({s.steps_per_epoch} an epoch: {s.batches_per_epoch} batches "
        f"per rank, {per_step} x --accumulate {cfg.accumulate} x {world} rank{'s' * (world > 1)}), warmup "
        f"{s.warmup_steps}{auto}, peak lr {cfg.lr:g}, cosine to {cfg.min_lr:g}"
    ]
    if cfg.accumulate > s.batches_per_epoch:
        lines.append(
            f"warning: --accumulate {cfg.accumulate} is longer than an epoch ({s.batches_per_epoch} batches): each "
            f"epoch makes one step of {s.batches_per_epoch} batches; a smaller --accumulate gives more steps"
        )
    if s.warmup_steps > MOST_OF_RUN * s.total_steps:
        come = "never come" if s.warmup_steps >= s.total_steps else "barely come"
        lines.append(
            f"warning: the warmup ({s.warmup_steps} steps) covers {min(1, s.warmup_steps / s.total_steps):.0%} of "
            f"the run's {s.total_steps} steps, so the peak lr and the decay {come}: a smaller --warmup_steps "
            f"(or none: {WARMUP_SHARE:.0%} of the run), or a smaller --accumulate"
        )
    return lines


def lr_lambda(cfg: TrainConfig, s: Schedule):
    """Linear warmup, then cosine decay to min_lr: a multiplier of cfg.lr per optimizer step."""
    floor, warmup, total = cfg.min_lr / cfg.lr, s.warmup_steps, s.total_steps

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f
