"""The training loop, no framework: CTC, mixed precision, gradient accumulation, checkpoints, resume, DDP.

One `TrainConfig` holds every setting; `train(cfg)` runs it. Under torchrun each process runs the same code on its
share of the batches; only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint
from .audio import AudioError
from .augment import NOISE_KINDS, AugmentConfig, join_groups
from .data import AudioDataset, DurationBucketSampler, Manifest, SpecAugment, collate, read_manifest
from .features import FeatureConfig, LogMel
from .files import check_writable, remove_stale_temps
from .metrics import cer, wer
from .model import QuartzNet, count_parameters, preset
from .text import LABELS, ctc_collapse, decode


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
    warmup_steps: int = 200
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
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "curves.png")  # what a run writes in out_dir
STEP_PREFIX = "step-"  # and with --keep, step-NNNNNNN.pt


def kept_weights(out: Path) -> list[Path]:
    """The step-NNNNNNN.pt files of a run folder, oldest first."""
    return sorted(p for p in out.glob(f"{STEP_PREFIX}*.pt") if p.stem[len(STEP_PREFIX) :].isdigit())


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
    for name in ("num_workers", "warmup_steps", "rect_masks", "rect_freq", "rect_time", "valid_samples", "keep"):
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


# --------------------------------------------------------------------------------------------------- setup


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(rank, world, local)


def pick_device(name: str, d: Dist) -> torch.device:
    if name == "cuda" and d.world > 1:
        name = f"cuda:{d.local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the hardware has it (no loss scaling needed), else fp16 with a GradScaler; None = fp32."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def build_model(cfg: TrainConfig, labels: list[str], log) -> tuple[QuartzNet, FeatureConfig]:
    """A preset from scratch, or the weights of --init (decoder re-initialized when the labels differ)."""
    if not cfg.init:
        return QuartzNet(preset(cfg.model, len(labels) + 1, se=cfg.se)), FeatureConfig(normalize=cfg.normalize)
    try:
        model, feat_cfg, init_labels, _ = checkpoint.load_model(cfg.init)
    except checkpoint.CheckpointError as e:
        raise TrainError(str(e), code=2) from None
    if init_labels != labels:
        model.reset_decoder(len(labels) + 1)
        log(f"init: labels differ from {cfg.init}'s ({len(init_labels)} -> {len(labels)}): decoder re-initialized")
    return model, feat_cfg


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Linear warmup, then cosine decay to min_lr: a multiplier of cfg.lr per optimizer step."""
    floor = cfg.min_lr / cfg.lr

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


# --------------------------------------------------------------------------------------------------- state


def rng_state() -> dict[str, Any]:
    # plain types and tensors only: the checkpoint must load with weights_only=True
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next optimizer step and exits cleanly."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self) -> StopFlag:
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.stop = True
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint and stopping", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _ignore_signals(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: workers must leave the shutdown to the main process, which saves.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------------------------------- the loop


class Trainer:
    def __init__(self, cfg: TrainConfig):
        problem = check_config(cfg)
        if problem:
            raise TrainError(problem, code=2)
        self.cfg = cfg
        device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        self.dist = setup_distributed(device)
        self.device = pick_device(device, self.dist)
        self.out = Path(cfg.out_dir)
        self.labels = list(cfg.labels)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        if self.dist.main:
            self._check_out_dir()  # before anything slow: a run that cannot save is refused at once

        resume_ckpt = self._load_resume() if cfg.resume else None
        if resume_ckpt is not None:
            self.model, self.feat_cfg, self.labels = self._unpack(resume_ckpt)
        else:
            self.model, self.feat_cfg = build_model(cfg, self.labels, self.log)
        # CTC output frames per second of audio: a transcript needing more than its clip gives is a bad row
        fps = self.feat_cfg.sample_rate / self.feat_cfg.hop_length / self.model.cfg.stride
        self.train_set = self._manifest(cfg.train_manifest, cfg.min_duration, cfg.max_duration, fps)
        self.valid_set = self._manifest(cfg.valid_manifest, None, None, fps) if cfg.valid_manifest else None

        self.model.to(self.device)
        self.feat_cfg.dither = cfg.dither
        self.features = LogMel(self.feat_cfg).to(self.device)
        self.augment = SpecAugment(cfg.rect_masks, cfg.rect_freq, cfg.rect_time) if cfg.spec_augment else None
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 1000 * self.dist.rank)
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.world > 1
            else None
        )
        self.amp = amp_dtype(self.device, cfg.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)

        augment = AugmentConfig(cfg.noise_prob, tuple(cfg.snr_db), tuple(cfg.noise_kinds), gain_prob=cfg.gain_prob,
                                silence_prob=cfg.silence_prob, join_prob=cfg.join_prob)  # fmt: skip
        groups = join_groups(len(self.train_set), cfg.join_prob, cfg.seed) if cfg.join_prob else None
        self.dataset = AudioDataset(self.train_set, self.labels, self.feat_cfg.sample_rate, cfg.cache_dir,
                                    cfg.speed_perturb or None, cfg.seed, augment, groups)  # fmt: skip
        self.sampler = DurationBucketSampler(
            self.dataset.durations, cfg.batch_size, cfg.batch_seconds, cfg.seed, self.dist.world, self.dist.rank
        )
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.accumulate)
        total = cfg.max_epochs * self.steps_per_epoch
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        self.total_steps = total
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.step, self.epoch, self.batches_done = 0, 0, 0
        self.best_wer = math.inf
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        # Built after the restore, from this run's settings: a resumed run may change the schedule and the optimizer's
        # settings (RESUME_FIXED). With unchanged settings this is exactly the scheduler the run had at this step.
        for group in self.optimizer.param_groups:
            group.update(initial_lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, total), self.step - 1)
        if self.dist.main:
            self._prepare_out_dir()
        if resume_ckpt is None and self.dist.main:
            self.log(
                f"model: {cfg.model if not cfg.init else cfg.init}, {count_parameters(self.model):,} parameters; "
                f"features normalize={self.feat_cfg.normalize}; device {self.device}"
                f"{', amp ' + str(self.amp).removeprefix('torch.') if self.amp else ''}; world {self.dist.world}"
            )

    # ---- helpers

    def log(self, msg: str) -> None:
        if self.dist.main:
            print(msg, file=sys.stderr, flush=True)

    def _manifest(self, paths: str | list[str], lo: float | None, hi: float | None, fps: float) -> Manifest:
        """The manifest, or several joined into one, each validated (and summarized) on its own."""
        from .data import ManifestError

        parts = []
        for path in [paths] if isinstance(paths, str) else paths:
            try:
                m = read_manifest(path, self.labels, lo, hi, skip_bad=self.cfg.skip_bad, frames_per_second=fps)
            except ManifestError as e:
                raise TrainError(str(e)) from None
            self.log(m.summary())
            for bad in m.skipped[:20]:
                self.log(f"  skipped {bad}")
            if not m:
                raise TrainError(f"{path}: no usable utterances")
            parts.append(m)
        if len(parts) == 1:
            return parts[0]
        return Manifest(", ".join(m.path for m in parts), [u for m in parts for u in m],
                        [b for m in parts for b in m.skipped], sum(m.filtered for m in parts))  # fmt: skip

    def _load_resume(self) -> dict[str, Any]:
        """The checkpoint to resume, refused (exit 2) when it is no training state or its run had other settings."""
        name = self.cfg.resume
        try:
            ckpt = checkpoint.load(name)
        except checkpoint.CheckpointError as e:
            raise TrainError(str(e), code=2) from None
        if not isinstance(ckpt.get("trainer"), dict):
            raise TrainError(f"{name}: not a training checkpoint (no trainer state); use --init", code=2)
        saved, now = ckpt["trainer"].get("config", {}), asdict(self.cfg)
        differ = [f"--{k} {now[k]!r} (saved: {saved[k]!r})" for k in RESUME_FIXED if k in saved and saved[k] != now[k]]
        if differ:
            raise TrainError(f"{name}: the run was trained with other settings: {', '.join(differ)}", code=2)
        return ckpt

    def _unpack(self, ckpt: dict[str, Any]) -> tuple[QuartzNet, FeatureConfig, list[str]]:
        try:
            return checkpoint.unpack(ckpt, self.cfg.resume)
        except checkpoint.CheckpointError as e:
            raise TrainError(str(e), code=2) from None

    def _restore(self, ckpt: dict[str, Any]) -> None:
        t = ckpt["trainer"]  # the model's weights came with it in checkpoint.unpack
        name = self.cfg.resume
        try:
            self.optimizer.load_state_dict(t["optimizer"])
            self.scaler.load_state_dict(t["scaler"])
            self.step, self.epoch, self.batches_done = int(t["step"]), int(t["epoch"]), int(t["batches_done"])
            self.best_wer = float(t["best_wer"])
            self.aug_gen.set_state(t["aug_rng"])
            set_rng_state(t["rng"][self.dist.rank] if self.dist.rank < len(t["rng"]) else t["rng"][0])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise TrainError(f"{name}: damaged training state ({type(e).__name__}: {str(e)[:200]})", code=2) from None
        try:
            self.sampler.load_state_dict({**t["sampler"], "epoch": self.epoch, "position": self.batches_done})
        except ValueError as e:
            raise TrainError(
                f"{name}: stopped at batch {self.batches_done} of epoch {self.epoch}, and resuming there needs the "
                f"run's data and batching: {e} (restore them, or resume from a checkpoint saved at an epoch's end)",
                code=2,
            ) from None
        self.log(f"resumed {name}: step {self.step}, epoch {self.epoch}, batch {self.batches_done}")

    def _check_out_dir(self) -> None:
        """Refuse (exit 2) an out_dir that cannot be written, or that holds another run, before any work."""
        cfg = self.cfg
        try:
            check_writable(self.out / "last.pt")
        except OSError as e:
            raise TrainError(f"{e.filename or self.out}: cannot write there ({e.strerror})", code=2) from None
        previous = [n for n in RUN_FILES if (self.out / n).exists()] + [p.name for p in kept_weights(self.out)][:1]
        if previous and not self._resuming_here() and not cfg.overwrite:
            raise TrainError(
                f"{self.out}: holds a previous run ({', '.join(previous)}): --resume {self.out / 'last.pt'} continues "
                "it, --overwrite replaces it, or choose another --out_dir",
                code=2,
            )

    def _resuming_here(self) -> bool:
        return bool(self.cfg.resume) and Path(self.cfg.resume).resolve().parent == self.out.resolve()

    def _prepare_out_dir(self) -> None:
        """Once everything else checked out: room for the checkpoints, a previous run replaced (--overwrite), the
        temp files of killed saves removed, and a metrics.jsonl cut mid-line by a kill ended with a newline."""
        state_bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        # last.pt and best.pt, each weights + two AdamW moments; the --keep step files (weights); logs
        need = (3 * 2 + self.cfg.keep) * state_bytes + (10 << 20)
        try:
            check_writable(self.out / "last.pt", need_bytes=need)
            if self.cfg.overwrite and not self._resuming_here():
                for path in [self.out / n for n in RUN_FILES] + kept_weights(self.out):
                    path.unlink(missing_ok=True)
            step_temps = remove_stale_temps(self.out / "step.pt", name_glob=f"{STEP_PREFIX}*.pt")
            for tmp in [t for n in RUN_FILES for t in remove_stale_temps(self.out / n)] + step_temps:
                self.log(f"removed {tmp}, left by a save that was killed")
            self.out.mkdir(parents=True, exist_ok=True)
            metrics = self.out / "metrics.jsonl"
            if metrics.exists() and metrics.stat().st_size and not _ends_with_newline(metrics):
                with open(metrics, "a", encoding="utf-8") as f:
                    f.write("\n")
        except OSError as e:
            raise TrainError(f"{e.filename or self.out}: {e.strerror}", code=2) from None

    def state(self) -> dict[str, Any]:
        rngs = [rng_state()]
        if self.dist.world > 1:  # every rank's RNG, so each continues its own stream
            rngs = [None] * self.dist.world
            dist.all_gather_object(rngs, rng_state())
        return checkpoint.make(
            self.model,
            self.feat_cfg,
            self.labels,
            trainer={
                "config": asdict(self.cfg),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step,
                "epoch": self.epoch,
                "batches_done": self.batches_done,
                "best_wer": self.best_wer,
                "sampler": self.sampler.state_dict(),
                "aug_rng": self.aug_gen.get_state(),
                "rng": rngs,
            },
        )

    def save(self, name: str, state: dict[str, Any] | None = None) -> None:
        state = state if state is not None else self.state()  # every rank joins the RNG gather
        if self.dist.main:
            with self._writing(self.out / name):
                checkpoint.save(self.out / name, state)

    def keep_weights(self) -> None:
        """The model's weights alone as step-NNNNNNN.pt, the oldest beyond cfg.keep removed: evenly spaced
        checkpoints of the run's end for tools/average_checkpoints.py (a third of last.pt's size: no optimizer)."""
        if not self.cfg.keep or not self.dist.main:
            return
        name = f"{STEP_PREFIX}{self.step:07d}.pt"
        with self._writing(self.out / name):
            checkpoint.save(self.out / name, checkpoint.make(self.model, self.feat_cfg, self.labels, step=self.step))
            for old in kept_weights(self.out)[: -self.cfg.keep]:
                old.unlink(missing_ok=True)

    def metric(self, **row: Any) -> None:
        if self.dist.main:
            with self._writing(self.out / "metrics.jsonl"):
                with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"time": round(time.time(), 1), **row}, ensure_ascii=False) + "\n")

    @contextlib.contextmanager
    def _writing(self, path: Path):
        """A write that fails mid-run (a full disk) stops the run in one line; the checkpoints are atomic, so
        last.pt still holds the last step saved."""
        try:
            yield
        except OSError as e:
            raise TrainError(f"{path}: cannot write ({e.strerror}); {self._resume_hint()}") from None

    def loader(self) -> torch.utils.data.DataLoader:
        # A private generator: the DataLoader must not draw its worker seeds from the global RNG, or a resumed run
        # (which creates its iterator mid-epoch) would see different dither than an uninterrupted one.
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=collate,
            num_workers=self.cfg.num_workers,
            generator=torch.Generator().manual_seed(self.cfg.seed),
            persistent_workers=False,
            worker_init_fn=_ignore_signals,
            pin_memory=self.device.type == "cuda",
        )

    # ---- one micro-batch

    def forward_loss(self, batch, train: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed CTC loss over the batch, log-probs and their lengths."""
        audio, audio_len, targets, target_len = (t.to(self.device, non_blocking=True) for t in batch)
        self.features.train(train)
        feats, feat_len = self.features(audio, audio_len)
        if train and self.augment is not None:
            self.augment.train()
            feats = self.augment(feats, feat_len, self.aug_gen)
        net = self.ddp if (train and self.ddp is not None) else self.model
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            logp, out_len = net(feats, feat_len)
        loss = F.ctc_loss(
            logp.float().transpose(0, 1),
            targets,
            out_len,
            target_len,
            blank=len(self.labels),
            reduction="none",
            zero_infinity=True,
        )
        return loss.sum(), logp, out_len

    def optimizer_step(self, utterances: int) -> float:
        """Average the accumulated gradient over every utterance of the step (all ranks), clip, step."""
        self.scaler.unscale_(self.optimizer)
        count = torch.tensor(float(utterances), device=self.device)
        if self.dist.world > 1:
            dist.all_reduce(count)  # DDP averaged the gradient over ranks; we want the sum over utterances
        scale = self.dist.world / count.item()
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return float(norm)

    # ---- the loop

    def fit(self) -> QuartzNet:
        try:
            return self._fit()
        except AudioError as e:  # a file that changed or broke after the manifest was checked
            message = _original_message(e)
            # A worker's error comes back in a reference cycle with the DataLoader iterator. Clearing the frames
            # frees the iterator now, which stops its workers; left to the garbage collector, the shutdown fails and
            # the workers (which ignore SIGTERM, see _ignore_signals) block the interpreter's exit.
            traceback.clear_frames(e.__traceback__)
        raise TrainError(f"{message}; {self._resume_hint()} once it is fixed")

    def _resume_hint(self) -> str:
        """How to go on after a failure: resume from last.pt only if it exists (a run that fails before its first
        save has none, and naming a missing file would send the user looking for it)."""
        last = self.out / "last.pt"
        return f"resume from {last}" if last.is_file() else "no checkpoint saved yet: start the run again"

    def _fit(self) -> QuartzNet:
        cfg = self.cfg
        with StopFlag() as flag:
            while self.epoch < cfg.max_epochs and not self._done():
                stopped = self.train_epoch(flag)
                finished = cfg.max_steps is not None and self.step >= cfg.max_steps
                if stopped and not finished:
                    self.save("last.pt")
                    self.log(f"stopped at step {self.step}; resume with --resume {self.out / 'last.pt'}")
                    return self.model
                self.end_epoch()  # also after max_steps mid-epoch: validate and save the final state
        self.log(f"done: {self.step} steps, best valid WER {self.best_wer:.4f}")
        return self.model

    def _done(self) -> bool:
        limits = [x for x in (self.cfg.max_steps, self.cfg.stop_at_step) if x is not None]
        return any(self.step >= x for x in limits)

    def train_epoch(self, flag: StopFlag) -> bool:
        """One epoch from the current position. True when stopped early (signal or max_steps mid-epoch)."""
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch)
        self.dataset.set_epoch(self.epoch)
        self.model.train()
        if cfg.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.eval()
        total = len(self.sampler)
        bar = _progress(total, self.batches_done, f"epoch {self.epoch}", cfg.progress and self.dist.main)
        micro, utts, tokens, loss_sum, seconds, t0 = 0, 0, 0, 0.0, 0.0, time.time()
        for batch in self.loader():
            self.batches_done += 1
            micro += 1
            last_of_step = micro == cfg.accumulate or self.batches_done == total
            sync = contextlib.nullcontext() if (self.ddp is None or last_of_step) else self.ddp.no_sync()
            with sync:
                loss, _, _ = self.forward_loss(batch)
                self.scaler.scale(loss).backward()
            utts += batch[0].shape[0]
            tokens += int(batch[3].sum())
            loss_sum += loss.item()
            seconds += batch[1].sum().item() / self.feat_cfg.sample_rate
            if not last_of_step:
                continue
            norm = self.optimizer_step(utts)
            avg = loss_sum / max(tokens, 1)  # per target token: comparable across clip lengths
            rate = seconds * self.dist.world / max(time.time() - t0, 1e-9)
            lr = self.scheduler.get_last_lr()[0]
            if bar is not None:
                bar.update(micro)
                bar.set_postfix(loss=f"{avg:.3f}", lr=f"{lr:.2e}", audio_s_per_s=f"{rate:.1f}")
            if self.step % cfg.log_every == 0:
                self.metric(step=self.step, epoch=self.epoch, loss=avg, lr=lr, grad_norm=norm, audio_s_per_s=rate)
            micro, utts, tokens, loss_sum, seconds, t0 = 0, 0, 0, 0.0, 0.0, time.time()
            if self.step % cfg.save_every == 0:
                self.save("last.pt")
                self.keep_weights()
            stop = flag.stop or self._done()
            if self.dist.world > 1:  # all ranks stop together, or the others hang in the next all-reduce
                s = torch.tensor(float(stop), device=self.device)
                dist.all_reduce(s)
                stop = s.item() > 0
            if stop:
                if bar is not None:
                    bar.close()
                return True
        if bar is not None:
            bar.close()
        return False

    def end_epoch(self) -> None:
        row: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        if self.valid_set is not None and self.dist.main:  # the other ranks wait for it in the state gather
            row.update(self.validate())
            self.log(
                f"epoch {self.epoch}: valid loss {row['valid_loss']:.3f}, WER {row['valid_wer']:.4f}, "
                f"CER {row['valid_cer']:.4f}"
            )
            for ref, hyp in row.pop("samples"):
                self.log(f"  ref: {ref}\n  hyp: {hyp}")
        self.epoch += 1
        self.batches_done = 0
        improved = "valid_wer" in row and row["valid_wer"] < self.best_wer
        if improved:
            self.best_wer = row["valid_wer"]
        state = self.state()
        self.save("last.pt", state)
        if improved:
            self.save("best.pt", state)
        self.metric(**row)
        if self.dist.main:
            with self._writing(self.out / "curves.png"):
                plot_metrics(self.out / "metrics.jsonl", self.out / "curves.png")

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Greedy WER/CER and loss per target token on the validation manifest (rank 0 runs it)."""
        self.model.eval()
        ds = AudioDataset(self.valid_set, self.labels, self.feat_cfg.sample_rate, self.cfg.cache_dir)
        sampler = DurationBucketSampler(self.valid_set.durations, self.cfg.batch_size or 16, self.cfg.batch_seconds)
        loader = torch.utils.data.DataLoader(
            ds, batch_sampler=sampler, collate_fn=collate, num_workers=self.cfg.num_workers
        )
        refs, hyps, loss_sum, tokens = [], [], 0.0, 0
        blank = len(self.labels)
        for batch_idx in loader:
            loss, logp, out_len = self.forward_loss(batch_idx, train=False)
            loss_sum += loss.item()
            tokens += int(batch_idx[3].sum())
            ids = logp.argmax(-1).cpu()
            for i, n in enumerate(out_len.tolist()):
                hyps.append(decode(ctc_collapse(ids[i, :n].tolist(), blank), self.labels))
                t = batch_idx[2][i, : batch_idx[3][i]].tolist()
                refs.append(decode(t, self.labels))
        self.model.train()
        return {
            "valid_loss": loss_sum / max(tokens, 1),
            "valid_wer": wer(refs, hyps),
            "valid_cer": cer(refs, hyps),
            "samples": list(zip(refs, hyps, strict=True))[: self.cfg.valid_samples],
        }


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, file=sys.stderr)


def plot_metrics(metrics_path: Path, png_path: Path) -> None:
    """Training loss per step and validation WER/CER per epoch, written atomically as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_write

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if _numbers(r, "step", "loss")]
    valid = [(r["step"], r["valid_wer"], r["valid_cer"]) for r in rows if _numbers(r, "step", "valid_wer", "valid_cer")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps, losses = (np.asarray(v) for v in zip(*train, strict=True))
        a.plot(steps, losses, lw=0.5, alpha=0.4, label="per log row")
        k = min(20, len(losses))  # batches differ in duration, and the loss with them: show a running mean too
        a.plot(steps[k - 1 :], np.convolve(losses, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
        a.set_yscale("log")
        a.legend()
    a.set(title="train CTC loss per token", xlabel="optimizer step")
    if valid:
        s, w, c = zip(*valid, strict=True)
        b.plot(s, w, "o-", label="WER")
        b.plot(s, c, "s-", label="CER")
        b.legend()
    b.set(title="validation (greedy)", xlabel="optimizer step", ylim=(0, None))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write(png_path, buf.getvalue())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line that is not a JSON object (cut short by a kill, edited) is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _numbers(row: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(row.get(k), int | float) and not isinstance(row.get(k), bool) for k in keys)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _original_message(e: Exception) -> str:
    """The message of an exception raised in a DataLoader worker, which arrives wrapped with its traceback."""
    line = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    prefix = f"{type(e).__module__}.{type(e).__name__}: "
    return line.removeprefix(prefix)


def train(cfg: TrainConfig) -> QuartzNet:
    """Run a whole training (or resume one); returns the trained model."""
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        if trainer.dist.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
