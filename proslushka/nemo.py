"""Read a NeMo `.nemo` QuartzNet (tar of model_config.yaml + model_weights.ckpt) and map it onto our model.

The archive is read in memory: no member is ever extracted to disk by its own name. Weights are loaded with
torch.load(weights_only=True). Key layout: ../shared/NEMO.md §3.1.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .features import FeatureConfig, mel_filterbank
from .model import BlockConfig, ModelConfig, QuartzNet

MAX_MEMBER_BYTES = 2 << 30  # a QuartzNet15x5 is ~76 MB; refuse to read absurd members into memory


class NemoError(ValueError):
    """A .nemo file we cannot use; the message names the file and the reason."""


@dataclass
class NemoModel:
    config: dict[str, Any]
    model_config: ModelConfig
    feature_config: FeatureConfig
    labels: list[str]
    state_dict: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)


def read_archive(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(parsed model_config.yaml, NeMo state dict) from a plain or gzip tar, with or without './' prefixes."""
    path = Path(path)
    if not path.is_file():
        raise NemoError(f"{path}: no such file")
    try:
        tar = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, EOFError, OSError):
        raise NemoError(f"{path}: not a .nemo archive (not a plain or compressed tar file)") from None
    with tar:
        members = {}
        try:
            for m in tar.getmembers():
                if m.isfile():
                    members[m.name.lstrip("./") if m.name.startswith("./") else m.name.lstrip("/")] = m
        except (tarfile.TarError, EOFError, OSError) as e:
            raise NemoError(f"{path}: corrupt tar archive ({e})") from None
        cfg_bytes = _member(tar, members, "model_config.yaml", path)
        ckpt_bytes = _member(tar, members, "model_weights.ckpt", path)
    try:
        config = yaml.safe_load(cfg_bytes.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise NemoError(f"{path}: model_config.yaml is not valid YAML ({e})") from None
    if not isinstance(config, dict):
        raise NemoError(f"{path}: model_config.yaml is not a mapping")
    try:
        weights = torch.load(io.BytesIO(ckpt_bytes), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or unsafe pickle
        raise NemoError(f"{path}: model_weights.ckpt cannot be loaded safely ({type(e).__name__})") from None
    if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
        weights = weights["state_dict"]  # a Lightning checkpoint rather than a bare state dict
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise NemoError(f"{path}: model_weights.ckpt is not a state dict of tensors")
    return config, weights


def _member(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, path: Path) -> bytes:
    info = members.get(name)
    if info is None:
        raise NemoError(f"{path}: no {name} in the archive (members: {', '.join(sorted(members)) or 'none'})")
    if info.size > MAX_MEMBER_BYTES:
        raise NemoError(f"{path}: {name} is implausibly large ({info.size} bytes)")
    f = tar.extractfile(info)
    if f is None:
        raise NemoError(f"{path}: cannot read {name}")
    try:
        return f.read()
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise NemoError(f"{path}: {name} is truncated or corrupt ({e})") from None


def _one(v: Any) -> Any:
    return v[0] if isinstance(v, list | tuple) else v


def model_config_from(config: dict[str, Any]) -> tuple[ModelConfig, list[str]]:
    """Our ModelConfig and the labels from a NeMo EncDecCTCModel config; NemoError for anything not a QuartzNet."""
    enc = config.get("encoder")
    if not isinstance(enc, dict) or not isinstance(enc.get("jasper"), list):
        raise NemoError("not a QuartzNet/Jasper model: the config has no encoder.jasper block list")
    target = str(enc.get("_target_", "ConvASREncoder"))
    if not target.endswith("ConvASREncoder"):
        raise NemoError(f"not a QuartzNet/Jasper model: encoder is {target}")
    for key, want in (("activation", "relu"), ("normalization_mode", "batch"), ("residual_mode", "add")):
        if key in enc and enc[key] != want:
            raise NemoError(f"unsupported encoder.{key}={enc[key]!r} (only {want!r})")
    blocks, ratios = [], set()
    for i, b in enumerate(enc["jasper"]):
        for key in ("groups", "se_context_size"):
            if b.get(key, 1 if key == "groups" else -1) != (1 if key == "groups" else -1):
                raise NemoError(f"unsupported jasper[{i}].{key}={b[key]!r}")
        if b.get("residual_dense") or b.get("residual_mode", "add") != "add" or b.get("stride_last"):
            raise NemoError(f"unsupported residual settings in jasper[{i}]")
        blocks.append(
            BlockConfig(
                filters=int(b["filters"]),
                repeat=int(b.get("repeat", 1)),
                kernel=int(_one(b.get("kernel", 1))),
                stride=int(_one(b.get("stride", 1))),
                dilation=int(_one(b.get("dilation", 1))),
                residual=bool(b.get("residual", False)),
                separable=bool(b.get("separable", False)),
                se=bool(b.get("se", False)),
            )
        )
        if b.get("se"):
            ratios.add(int(b.get("se_reduction_ratio", 8)))
    if len(ratios) > 1:
        raise NemoError(f"unsupported: different se_reduction_ratio per block {sorted(ratios)}")
    dec = config.get("decoder", {})
    labels = config.get("labels") or dec.get("vocabulary")
    if not labels:
        raise NemoError("the config has no labels (labels or decoder.vocabulary)")
    labels = [str(c) for c in labels]
    if "num_classes" in dec and int(dec["num_classes"]) != len(labels):
        raise NemoError(f"decoder.num_classes={dec['num_classes']} but {len(labels)} labels")
    cfg = ModelConfig(
        feat_in=int(enc.get("feat_in", 64)),
        num_classes=len(labels) + 1,
        blocks=blocks,
        se_reduction_ratio=ratios.pop() if ratios else 8,
    )
    return cfg, labels


def feature_config_from(config: dict[str, Any]) -> FeatureConfig:
    p = config.get("preprocessor") or {}
    target = str(p.get("_target_", "AudioToMelSpectrogramPreprocessor"))
    if not target.endswith("AudioToMelSpectrogramPreprocessor"):
        raise NemoError(f"unsupported preprocessor {target}")
    checks = {
        "window": "hann",
        "frame_splicing": 1,
        "log": True,
        "mag_power": 2.0,
        "log_zero_guard_type": "add",
        "exact_pad": False,
        "mel_norm": "slaney",
    }
    for key, want in checks.items():
        if key in p and p[key] != want:
            raise NemoError(f"unsupported preprocessor.{key}={p[key]!r} (only {want!r})")
    normalize = p.get("normalize", "per_feature")
    if normalize not in ("per_feature", "none", None, "null"):
        raise NemoError(f"unsupported preprocessor.normalize={normalize!r}")
    sr = int(p.get("sample_rate", 16000))
    ws = float(p.get("window_size", 0.02))
    guard = p.get("log_zero_guard_value", 2.0**-24)
    if not isinstance(guard, int | float):
        raise NemoError(f"unsupported preprocessor.log_zero_guard_value={guard!r}")
    n_fft = p.get("n_fft") or 2 ** int(np.ceil(np.log2(int(ws * sr))))
    return FeatureConfig(
        sample_rate=sr,
        n_fft=int(n_fft),
        window_size=ws,
        window_stride=float(p.get("window_stride", 0.01)),
        n_mels=int(p.get("features", 64)),
        preemph=float(p.get("preemph", 0.97)),
        dither=float(p.get("dither", 1e-5)),
        log_guard=float(guard),
        normalize=normalize if normalize == "per_feature" else "none",
        pad_to=int(p.get("pad_to", 16) or 0),
        lowfreq=float(p.get("lowfreq", 0.0) or 0.0),
        highfreq=None if p.get("highfreq") is None else float(p["highfreq"]),
    )


def nemo_key_map(cfg: ModelConfig) -> dict[str, str]:
    """Our parameter/buffer name prefix → NeMo's, for every module of the model."""
    out: dict[str, str] = {}
    for i, b in enumerate(cfg.blocks):
        nemo, ours = f"encoder.encoder.{i}", f"blocks.{i}"
        step = 5 if b.separable else 4  # [dw,] pw, bn, relu, dropout per sub-block; the last has no relu/dropout
        for r in range(b.repeat):
            s = step * r
            if b.separable:
                out[f"{ours}.subs.{r}.dw.weight"] = f"{nemo}.mconv.{s}.conv.weight"
                s += 1
            out[f"{ours}.subs.{r}.conv.weight"] = f"{nemo}.mconv.{s}.conv.weight"
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"{ours}.subs.{r}.bn.{k}"] = f"{nemo}.mconv.{s + 1}.{k}"
        if b.se:
            se = step * (b.repeat - 1) + (3 if b.separable else 2)
            out[f"{ours}.se.fc1.weight"] = f"{nemo}.mconv.{se}.fc.0.weight"
            out[f"{ours}.se.fc2.weight"] = f"{nemo}.mconv.{se}.fc.2.weight"
        if b.residual:
            out[f"{ours}.res_conv.weight"] = f"{nemo}.res.0.0.conv.weight"
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"{ours}.res_bn.{k}"] = f"{nemo}.res.0.1.{k}"
    out["decoder.weight"] = "decoder.decoder_layers.0.weight"
    out["decoder.bias"] = "decoder.decoder_layers.0.bias"
    return out


def map_state_dict(nemo_sd: dict[str, torch.Tensor], model: QuartzNet) -> dict[str, torch.Tensor]:
    """NeMo's state dict → ours. NemoError on a missing key, an unknown encoder/decoder key or a shape mismatch."""
    key_map = nemo_key_map(model.cfg)
    ours = model.state_dict()
    if set(key_map) != set(ours):  # guards the map itself against drifting from the model
        raise AssertionError(f"key map out of date: {sorted(set(ours) ^ set(key_map))[:5]}")
    out = {}
    for k, nk in key_map.items():
        if nk not in nemo_sd:
            raise NemoError(f"weights lack {nk} (needed for {k}); the config and the weights disagree")
        t = nemo_sd[nk]
        if t.shape != ours[k].shape:
            raise NemoError(f"shape mismatch for {nk}: weights {tuple(t.shape)}, config implies {tuple(ours[k].shape)}")
        out[k] = t.to(ours[k].dtype)
    unknown = sorted(k for k in set(nemo_sd) - set(key_map.values()) if not k.startswith("preprocessor."))
    if unknown:
        raise NemoError(f"weights hold {len(unknown)} keys this QuartzNet does not use, e.g. {unknown[0]}")
    return out


def load_nemo(path: str | os.PathLike) -> NemoModel:
    """Parse and map a .nemo; every error is a NemoError whose message starts with the file name."""
    path = Path(path)
    config, nemo_sd = read_archive(path)
    try:
        model_cfg, labels = model_config_from(config)
        feat_cfg = feature_config_from(config)
        model = QuartzNet(model_cfg)
        state = map_state_dict(nemo_sd, model)
    except NemoError as e:
        raise NemoError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise NemoError(f"{path}: malformed QuartzNet config ({type(e).__name__}: {e})") from None
    notes = []
    fb = nemo_sd.get("preprocessor.featurizer.fb")
    if fb is not None:
        ours = mel_filterbank(feat_cfg)
        if tuple(fb.shape[-2:]) != ours.shape:
            raise NemoError(f"{path}: preprocessor filterbank {tuple(fb.shape)} does not fit the config {ours.shape}")
        diff = float(np.abs(fb.reshape(ours.shape).numpy() - ours).max())
        notes.append(f"mel filterbank: ours matches the .nemo's within {diff:.1e}")
    return NemoModel(config, model_cfg, feat_cfg, labels, state, notes)
