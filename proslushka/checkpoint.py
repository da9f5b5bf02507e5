"""The checkpoint format: one dict of tensors and plain data, loadable with torch.load(weights_only=True).

Keys: "format", "model" (state dict), "model_config", "feature_config", "labels", and for training runs
"trainer" (optimizer, scaler, scheduler, step, epoch, sampler, RNG states, metrics). Written atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from .features import FeatureConfig
from .files import atomic_write
from .model import ModelConfig, QuartzNet

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
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a Proslushka checkpoint (no format {FORMAT!r})")
    return ckpt


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[QuartzNet, FeatureConfig, list[str], dict[str, Any]]:
    """(model in eval mode, feature config, labels, the whole checkpoint dict)."""
    ckpt = load(path, map_location)
    model, feat_cfg, labels = unpack(ckpt)
    return model.eval(), feat_cfg, labels, ckpt


def unpack(ckpt: dict[str, Any]) -> tuple[QuartzNet, FeatureConfig, list[str]]:
    """(model with the checkpoint's weights, feature config, labels) from a loaded checkpoint dict."""
    model = QuartzNet(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model, FeatureConfig.from_dict(ckpt["feature_config"]), list(ckpt["labels"])
