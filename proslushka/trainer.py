"""The training loop, no framework: CTC, mixed precision, gradient accumulation, checkpoints, resume, DDP.

`train(cfg)` runs one `TrainConfig` (settings.py). Under torchrun each process runs the same code on its share of the
batches; only rank 0 writes checkpoints and logs (rundir.py); distributed.py holds the process group, RNG states and
signals.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint
from .audio import AudioError
from .augment import AugmentConfig, join_groups
from .data import AudioDataset, DurationBucketSampler, Manifest, ManifestError, SpecAugment, collate, read_manifest
from .distributed import (
    StopFlag,
    amp_dtype,
    any_rank,
    gather,
    ignore_signals,
    memory_available,
    pick_device,
    rng_state,
    set_rng_state,
    setup_distributed,
    shutdown,
)
from .features import FeatureConfig, LogMel
from .metrics import cer, wer
from .model import QuartzNet, count_parameters, preset, training_bytes
from .rundir import RunDir
from .settings import RESUME_FIXED, TrainConfig, TrainError, check_config, describe_schedule, lr_lambda, plan_schedule
from .text import ctc_collapse, decode


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


def load_resume(cfg: TrainConfig) -> dict[str, Any]:
    """The checkpoint to resume, refused (exit 2) when it is no training state or its run had other settings."""
    name = cfg.resume
    try:
        ckpt = checkpoint.load(name)
    except checkpoint.CheckpointError as e:
        raise TrainError(str(e), code=2) from None
    if not isinstance(ckpt.get("trainer"), dict):
        raise TrainError(f"{name}: not a training checkpoint (no trainer state); use --init", code=2)
    saved, now = ckpt["trainer"].get("config", {}), asdict(cfg)
    differ = [f"--{k} {now[k]!r} (saved: {saved[k]!r})" for k in RESUME_FIXED if k in saved and saved[k] != now[k]]
    if differ:
        raise TrainError(f"{name}: the run was trained with other settings: {', '.join(differ)}", code=2)
    return ckpt


class Trainer:
    def __init__(self, cfg: TrainConfig):
        problem = check_config(cfg)
        if problem:
            raise TrainError(problem, code=2)
        self.cfg = cfg
        device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        self.dist = setup_distributed(device)
        self.device = pick_device(device, self.dist)
        self.run = RunDir(cfg.out_dir, self.dist.main, cfg.keep)
        self.out = self.run.path
        self.labels = list(cfg.labels)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        if self.dist.main:
            self.run.check(cfg.resume, cfg.overwrite)  # before anything slow: a run that cannot save is refused
            self.run.lock()
        try:
            self._setup()
        except BaseException:
            self.run.release()
            raise

    def _setup(self) -> None:
        cfg = self.cfg
        resume_ckpt = load_resume(cfg) if cfg.resume else None
        if resume_ckpt is not None:
            try:
                self.model, self.feat_cfg, self.labels = checkpoint.unpack(resume_ckpt, cfg.resume)
            except checkpoint.CheckpointError as e:
                raise TrainError(str(e), code=2) from None
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
        self._data()
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
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.schedule), self.step - 1)
        if self.dist.main:
            state_bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            self.run.prepare(state_bytes, cfg.resume, cfg.overwrite, self.log)
        if resume_ckpt is None:
            self.log(
                f"model: {cfg.model if not cfg.init else cfg.init}, {count_parameters(self.model):,} parameters; "
                f"features normalize={self.feat_cfg.normalize}; device {self.device}"
                f"{', amp ' + str(self.amp).removeprefix('torch.') if self.amp else ''}; world {self.dist.world}"
            )
        for line in describe_schedule(cfg, self.schedule, self.dist.world):
            self.log(line)
        self.log(self._memory_line())

    # ---- setup

    def log(self, msg: str) -> None:
        if self.dist.main:
            print(msg, file=sys.stderr, flush=True)

    def _manifest(self, paths: str | list[str], lo: float | None, hi: float | None, fps: float) -> Manifest:
        """The manifest, or several joined into one, each validated (and summarized) on its own."""
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

    def _data(self) -> None:
        """The training set with its waveform augmentation, its sampler, and the run's length in optimizer steps."""
        cfg = self.cfg
        augment = AugmentConfig(cfg.noise_prob, tuple(cfg.snr_db), tuple(cfg.noise_kinds), gain_prob=cfg.gain_prob,
                                silence_prob=cfg.silence_prob, join_prob=cfg.join_prob)  # fmt: skip
        groups = join_groups(len(self.train_set), cfg.join_prob, cfg.seed) if cfg.join_prob else None
        self.dataset = AudioDataset(self.train_set, self.labels, self.feat_cfg.sample_rate, cfg.cache_dir,
                                    cfg.speed_perturb or None, cfg.seed, augment, groups)  # fmt: skip
        self.sampler = DurationBucketSampler(
            self.dataset.durations, cfg.batch_size, cfg.batch_seconds, cfg.seed, self.dist.world, self.dist.rank
        )
        self.schedule = plan_schedule(cfg, len(self.sampler))
        self.total_steps = self.schedule.total_steps

    def _memory_line(self) -> str:
        """The largest batch's likely peak memory, and a warning when it would not fit: 15x5 at batch 32 of 20 s
        clips wants ~28 GB on a CPU, and an out-of-memory kill comes with no message at all."""
        cfg, longest = self.cfg, max(self.dataset.durations)
        padded = longest * cfg.batch_size if cfg.batch_size else math.inf
        if cfg.batch_seconds:  # the sampler's budget; a clip longer than it gets a batch of its own
            padded = min(padded, max(cfg.batch_seconds, longest))
        need = training_bytes(self.model, padded)
        if self.device.type == "cpu":  # every rank of a torchrun on this machine holds its own
            need *= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        have = memory_available(self.device)
        line = f"memory: ~{need / 2**30:.1f} GB for the largest batch ({padded:.0f} s of padded audio, fp32)"
        if have is not None and need > 0.9 * have:
            fit = max(1.0, padded * 0.8 * have / need)
            line = (
                f"warning: {line.removeprefix('memory: ')}, and {self.device.type} has {have / 2**30:.1f} GB: it is "
                f"likely not to fit; --batch_seconds {fit:.0f} (or a smaller --batch_size, with --accumulate to keep "
                "the step's size) should fit"
            )
        return line

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
            worker_init_fn=ignore_signals,
            pin_memory=self.device.type == "cuda",
        )

    # ---- checkpoints

    def state(self) -> dict[str, Any]:
        rngs = gather(rng_state(), self.dist)  # every rank's RNG, so each continues its own stream
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
        self.run.save(name, state if state is not None else self.state())  # every rank joins the RNG gather

    def keep_weights(self) -> None:
        self.run.keep_weights(
            self.step, lambda: checkpoint.make(self.model, self.feat_cfg, self.labels, step=self.step)
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
            torch.distributed.all_reduce(count)  # DDP averaged the gradient over ranks; we want the sum over utterances
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
        """Train to the end (or a stop); the run folder is let go when it returns or fails."""
        try:
            return self._fit()
        except AudioError as e:  # a file that changed or broke after the manifest was checked
            message = _original_message(e)
            # A worker's error comes back in a reference cycle with the DataLoader iterator. Clearing the frames
            # frees the iterator now, which stops its workers; left to the garbage collector, the shutdown fails and
            # the workers (which ignore SIGTERM, see distributed.ignore_signals) block the interpreter's exit.
            traceback.clear_frames(e.__traceback__)
        finally:
            self.run.release()
        raise TrainError(f"{message}; {self.run.resume_hint()} once it is fixed")

    def _fit(self) -> QuartzNet:
        cfg = self.cfg
        with StopFlag() as flag:
            while self.epoch < cfg.max_epochs and not self._done():
                stopped = self.train_epoch(flag)
                finished = cfg.max_steps is not None and self.step >= cfg.max_steps
                if stopped and not finished:
                    self.save("last.pt")
                    redo = f"; the {self.redo} batches of the unfinished step are redone" if self.redo else ""
                    self.log(f"stopped at step {self.step} (epoch {self.epoch}, batch {self.batches_done}){redo}")
                    self.log(f"resume with: {resume_command(self.out / 'last.pt', self.dist.world)}")
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
        self.redo, at_step = 0, self._step_start()
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
                if any_rank(flag.stop, self.dist, self.device):  # within one batch, not at the end of a long step
                    self.redo = micro
                    self._back_to(at_step)
                    return _closed(bar, True)
                continue
            norm = self.optimizer_step(utts)
            avg = loss_sum / max(tokens, 1)  # per target token: comparable across clip lengths
            rate = seconds * self.dist.world / max(time.time() - t0, 1e-9)
            lr = self.scheduler.get_last_lr()[0]
            if bar is not None:
                bar.update(micro)
                bar.set_postfix(loss=f"{avg:.3f}", lr=f"{lr:.2e}", audio_s_per_s=f"{rate:.1f}")
            if self.step % cfg.log_every == 0:
                self.run.metric(step=self.step, epoch=self.epoch, loss=avg, lr=lr, grad_norm=norm, audio_s_per_s=rate)
            micro, utts, tokens, loss_sum, seconds, t0 = 0, 0, 0, 0.0, 0.0, time.time()
            if self.step % cfg.save_every == 0:
                self.save("last.pt")
                self.keep_weights()
            if any_rank(flag.stop or self._done(), self.dist, self.device):
                return _closed(bar, True)
            at_step = self._step_start()
        return _closed(bar, False)

    def _step_start(self) -> dict[str, Any]:
        """What a stop in the middle of a step goes back to: the position, the RNG states and the BatchNorm
        statistics as the last optimizer step left them (the weights and the optimizer change only at a step)."""
        return {
            "batches_done": self.batches_done,
            "rng": rng_state(),
            "aug_rng": self.aug_gen.get_state(),
            "buffers": [b.detach().clone() for b in self.model.buffers()],
        }

    def _back_to(self, at: dict[str, Any]) -> None:
        """Drop the unfinished step: a checkpoint saved now resumes exactly, redoing its batches."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, saved in zip(self.model.buffers(), at["buffers"], strict=True):
                b.copy_(saved)
        self.batches_done = at["batches_done"]
        set_rng_state(at["rng"])
        self.aug_gen.set_state(at["aug_rng"])

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
        self.run.metric(**row)
        self.run.plot()

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


def resume_command(last: Path, world: int) -> str:
    """The command that continues a run: its checkpoint holds every setting."""
    launcher = "python" if world == 1 else f"torchrun --nproc_per_node {world}"
    return f"{launcher} train.py --resume {last}"


def _closed(bar, result: bool) -> bool:
    if bar is not None:
        bar.close()
    return result


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, file=sys.stderr)


def _original_message(e: Exception) -> str:
    """The message of an exception raised in a DataLoader worker, which arrives wrapped with its traceback."""
    line = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    prefix = f"{type(e).__module__}.{type(e).__name__}: "
    return line.removeprefix(prefix)


def train(cfg: TrainConfig) -> QuartzNet:
    """Run a whole training (or resume one); returns the trained model."""
    trainer = Trainer(cfg)
    try:
        return trainer.fit()  # which lets the run folder go, however it ends
    finally:
        shutdown(trainer.dist)
