"""The checkpoint format: one dict of tensors and plain data, loadable with torch.load(weights_only=True).

Keys: "format", "model" (state dict), "model_config", "feature_config", "labels", and for training runs
"trainer" (optimizer, scaler, scheduler, step, epoch, sampler, RNG states, metrics). Written atomically.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .features import FeatureConfig
from .files import atomic_write
from .manifest import one_line, short
from .model import ModelConfig, QuartzNet
from .text import labels_problem

FORMAT = "proslushka-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file."""


def save(path: str | os.PathLike, ckpt: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write(path, buf.getvalue())


def make(model: QuartzNet, feature_config: FeatureConfig, labels: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "model_config": model.cfg.to_dict(),
        "feature_config": feature_config.to_dict(),
        "labels": list(labels),
        **extra,
    }


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():  # a pickle protocol torch does not expect: a multi-line warning, no use here
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {_load_problem(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a Proslushka checkpoint (no format {FORMAT!r})")
    return ckpt


# Sentences of torch's load errors that advise loading anyway (weights_only=False, allow-listing a global): unsafe
# for a file from who knows where, so never passed on.
_UNSAFE_ADVICE = re.compile(r"weights_only|safe_globals|trust|file an issue", re.I)


def _load_problem(e: Exception) -> str:
    """torch.load's error as one short line: the unpickler's own reason, without torch's advice to load the file
    unsafely."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch bolds part of its advice with terminal escapes
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    kept = [s for s in sentences if s and not _UNSAFE_ADVICE.search(s)]
    return kept[0][:200] if kept else "unreadable"


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[QuartzNet, FeatureConfig, list[str], dict[str, Any]]:
    """(model in eval mode, feature config, labels, the whole checkpoint dict)."""
    ckpt = load(path, map_location)
    model, feat_cfg, labels = unpack(ckpt, os.fspath(path))
    return model.eval(), feat_cfg, labels, ckpt


def unpack(ckpt: dict[str, Any], name: str = "checkpoint") -> tuple[QuartzNet, FeatureConfig, list[str]]:
    """(model with the checkpoint's weights, feature config, labels) from a loaded checkpoint dict.

    Raises CheckpointError naming `name` when the dict does not describe a model that can be built and run. The
    model is first built on the meta device (shapes, no memory) and the weights checked against it, so a config
    asking for a huge model cannot allocate more than the file's own tensors.
    """
    _check_weights(ckpt, name)
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        why = _config_problem(cfg, ckpt["labels"])
        if why:
            raise CheckpointError(f"{name}: {why}")
        with torch.device("meta"):
            QuartzNet(cfg).load_state_dict(ckpt["model"], assign=True)  # missing, extra or misshapen weights
        model = QuartzNet(cfg)
        model.load_state_dict(ckpt["model"])
        feat_cfg = FeatureConfig.from_dict(ckpt["feature_config"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        if isinstance(e, CheckpointError):
            raise
        reason = f"{type(e).__name__}: {one_line(e)}" if str(e) else type(e).__name__
        raise CheckpointError(f"{name}: not a usable model ({reason})") from None
    return model, feat_cfg, list(ckpt["labels"])


def _config_problem(cfg: ModelConfig, labels: Any) -> str | None:
    """What makes the model config unusable with these labels, or None (sizes are checked by the weights)."""
    if why := labels_problem(labels):
        return why
    if cfg.num_classes != len(labels) + 1:
        return f"{cfg.num_classes} outputs for {len(labels)} labels (+ blank)"
    if not cfg.blocks or cfg.feat_in < 1:
        return "the model config has no blocks or no input features"
    for i, b in enumerate(cfg.blocks):
        if min(b.filters, b.repeat, b.kernel, b.stride, b.dilation) < 1:
            return f"block {i}: filters, repeat, kernel, stride and dilation must be at least 1"
    return None


def average(ckpts: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One checkpoint whose weights are the mean of the given ones' (the same model, labels and features).

    Checkpoints of one run a few hundred steps apart sit around the same minimum; their mean often lies nearer its
    middle than any of them (valid CER 9.07 -> 8.67% for two of the demo model's, docs/runs/). BatchNorm running
    statistics are averaged like weights; integer buffers (BatchNorm's batch count) come from the last checkpoint,
    as does everything else but the training state, which an average has none of.
    """
    if not ckpts:
        raise CheckpointError("no checkpoints to average")
    first, last = ckpts[0], ckpts[-1]
    for ckpt, name in zip(ckpts, names, strict=True):
        _check_weights(ckpt, name)
        for key in ("labels", "model_config", "feature_config"):
            if ckpt.get(key) != first.get(key):
                raise CheckpointError(
                    f"{name} and {names[0]} have different {key}: only checkpoints of one model average"
                )
        if ckpt["model"].keys() != first["model"].keys():
            raise CheckpointError(f"{name}: its weights are not {names[0]}'s (other names)")
    model = {}
    for key, value in last["model"].items():
        if not value.is_floating_point():
            model[key] = value
            continue
        total = torch.zeros(value.shape, dtype=torch.float64)
        for ckpt, name in zip(ckpts, names, strict=True):
            if ckpt["model"][key].shape != value.shape:
                raise CheckpointError(
                    f"{name}: {key} has shape {tuple(ckpt['model'][key].shape)}, not {tuple(value.shape)}"
                )
            total += ckpt["model"][key].double()
        model[key] = (total / len(ckpts)).to(value.dtype)
    return {**{k: v for k, v in last.items() if k != "trainer"}, "model": model, "averaged": list(names)}


def _check_weights(ckpt: Any, name: str) -> None:
    """Raise CheckpointError naming `name` unless ckpt["model"] is a state dict (names → tensors): the format check
    in `load` does not look inside, and a hand-made or damaged file can hold anything there."""
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{name}: no model weights (no 'model' entry)")
    weights = ckpt["model"]
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{name}: its 'model' is {short(weights)}, not a state dict of weights")
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{name}: weight {str(key)[:80]!r} is a {type(value).__name__}, not a tensor")
