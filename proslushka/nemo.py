"""Read a NeMo `.nemo` QuartzNet/Jasper of any NeMo version and map it onto our model.

The archive is read in memory: no member is ever extracted to disk by its own name. Weights are loaded with
torch.load(weights_only=True). The config is size- and depth-limited YAML without aliases, and every value the
model is built from is checked against bounds before anything is allocated. Facts: docs/nemo-facts.md, and
docs/nemo-versions.md for the layouts of each NeMo version and how we tell them apart.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .features import FeatureConfig, mel_filterbank
from .manifest import one_line
from .model import BlockConfig, ModelConfig, QuartzNet
from .text import labels_problem

MAX_MEMBER_BYTES = 2 << 30  # a QuartzNet15x5 is ~76 MB; refuse to read absurd members into memory
MAX_CONFIG_BYTES = 4 << 20  # a QuartzNet15x5 config is ~10 kB
MAX_CONFIG_DEPTH = 32
MAX_PARAMETERS = 500_000_000  # 25x a QuartzNet15x5: anything bigger is not a model this tool serves
CONFIG, WEIGHTS = "model_config.yaml", "model_weights.ckpt"


class NemoError(ValueError):
    """A .nemo file we cannot use; the message names the file and the reason."""


@dataclass
class Era:
    """The NeMo generation that wrote a .nemo, and the feature settings that reproduce it."""

    name: str
    pad_mode: str  # STFT centre padding
    valid_frames: str  # features.VALID_FRAMES
    evidence: str  # what in the file told us
    notes: list[str] = field(default_factory=list)


@dataclass
class NemoModel:
    config: dict[str, Any]  # in the current (`_target_`) layout
    model_config: ModelConfig
    feature_config: FeatureConfig
    labels: list[str]
    state_dict: dict[str, torch.Tensor]
    era: Era
    layout: str  # how the archive was packed, for the summary
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ the archive


def read_archive(path: str | os.PathLike) -> tuple[bytes, bytes, str]:
    """(model_config.yaml bytes, model_weights.ckpt bytes, a description of the packing) from a plain or
    compressed tar whose members are named with or without a './' prefix."""
    path = Path(path)
    if not path.is_file():
        raise NemoError(f"{path}: no such file")
    try:
        tar = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, EOFError, OSError):
        raise NemoError(f"{path}: not a .nemo archive (not a plain or compressed tar file)") from None
    with tar:
        members: dict[str, tarfile.TarInfo] = {}
        try:
            for m in tar.getmembers():
                if m.isfile():
                    members[m.name.removeprefix("./").lstrip("/")] = m
        except (tarfile.TarError, EOFError, OSError) as e:
            raise NemoError(f"{path}: corrupt tar archive ({e})") from None
        if any(name.endswith(("JasperEncoder.pt", "ConvASREncoder.pt")) for name in members):
            raise NemoError(
                f"{path}: a NeMo 0.x NeMoModel archive (one .pt per module): not supported; load it in NeMo 1.x "
                "and save_to() a current .nemo"
            )
        cfg = _member(tar, members, CONFIG, path, MAX_CONFIG_BYTES)
        ckpt = _member(tar, members, WEIGHTS, path, MAX_MEMBER_BYTES)
        names = [m.name for m in tar.getmembers() if m.isfile()]
    with open(path, "rb") as f:
        magic = f.read(2)
    compression = {b"\x1f\x8b": "gzip", b"BZ": "bzip2", b"\xfd7": "xz"}.get(magic, "uncompressed")
    prefix = "'./' member names" if all(n.startswith("./") for n in names) else "bare member names"
    return cfg, ckpt, f"{compression} tar, {prefix}"


def _member(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, path: Path, limit: int) -> bytes:
    info = members.get(name)
    if info is None:
        raise NemoError(f"{path}: no {name} in the archive (members: {', '.join(sorted(members))[:300] or 'none'})")
    if info.size > limit:
        raise NemoError(f"{path}: {name} is implausibly large ({info.size} bytes; at most {limit})")
    f = tar.extractfile(info)
    if f is None:
        raise NemoError(f"{path}: cannot read {name}")
    try:
        return f.read()
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise NemoError(f"{path}: {name} is truncated or corrupt ({e})") from None


def parse_config(data: bytes) -> dict[str, Any]:
    """model_config.yaml → dict. Aliases and deep nesting are refused before anything is built: NeMo (OmegaConf)
    never writes either, and they are how a YAML file blows up memory or recursion."""
    try:
        text = data.decode("utf-8")
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise NemoError(f"{CONFIG} uses YAML aliases (NeMo never writes them)")
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                depth += 1
                if depth > MAX_CONFIG_DEPTH:
                    raise NemoError(f"{CONFIG} is nested deeper than {MAX_CONFIG_DEPTH} levels")
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                depth -= 1
        config = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise NemoError(f"{CONFIG} is not valid YAML ({_yaml_problem(e)})") from None
    if not isinstance(config, dict):
        raise NemoError(f"{CONFIG} is not a mapping")
    return config


def _yaml_problem(e: Exception) -> str:
    """A YAML error in one short line: "line L, column C: problem". PyYAML's own message spans several lines (the
    context, then the offending line with a caret under it)."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if not problem:  # not a MarkedYAMLError: a decoding error, recursion
        return one_line(e)
    context = getattr(e, "context", None)  # "while scanning a quoted scalar": what the parser was in
    problem = one_line(f"{problem}, {context}" if context else problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def load_weights(data: bytes) -> dict[str, torch.Tensor]:
    try:
        weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or unsafe pickle
        raise NemoError(f"{WEIGHTS} cannot be loaded safely ({type(e).__name__})") from None
    if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
        weights = weights["state_dict"]  # a Lightning checkpoint rather than a bare state dict
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise NemoError(f"{WEIGHTS} is not a state dict of tensors")
    return weights


# ------------------------------------------------------------------------------------------------ config layouts


def modernize(config: Any) -> Any:
    """A NeMo 1.0.0-beta (Hydra 0.x) config in today's layout: `cls` becomes `_target_` and the `params` mapping
    moves up into its parent, recursively through mappings (NeMo's own maybe_update_config_version does the same)."""
    if not isinstance(config, dict):
        return config
    out = {k: v for k, v in config.items() if k not in ("cls", "params")}
    if "cls" in config and "_target_" not in config:
        out["_target_"] = config["cls"]
    if isinstance(config.get("params"), dict):
        out.update(config["params"])
    return {k: modernize(v) for k, v in out.items()}


def _legacy_layout(config: dict[str, Any]) -> bool:
    return any(isinstance(config.get(m), dict) and "cls" in config[m] for m in ("encoder", "decoder", "preprocessor"))


def _version(text: str) -> tuple[int, int] | None:
    m = re.match(r"\s*(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def detect_era(raw: dict[str, Any], packing: str) -> Era:
    """Which NeMo wrote the file (docs/nemo-versions.md): `nemo_version` (written since 1.7), else the config
    layout (`cls`/`params`: the 1.0.0 betas, Golos's r1.0.0b4) and the packing (gzip: before 1.7)."""
    version = raw.get("nemo_version")
    if version is not None:
        v = _version(str(version))
        if v is None:
            raise NemoError(f"nemo_version {str(version)[:40]!r} is not a version number")
        if v >= (2, 5):
            return Era(f"NeMo {version}", "constant", "floor", f"nemo_version {version}")
        return Era(f"NeMo {version}", "reflect", "floor+1", f"nemo_version {version}")
    if _legacy_layout(raw):
        return Era(
            "NeMo 1.0.0 beta (r1.0.0b4, the Golos era)",
            "reflect",
            "ceil",
            f"cls/params config, no nemo_version, {packing}",
            ["NeMo 1.0.0b4 also dithered at inference (1e-5, NeMo#1030); we do not, so transcripts are "
             "deterministic (the noise is far below the log guard of 2^-24)"],
        )  # fmt: skip
    return Era("NeMo 1.0 to 1.6", "reflect", "floor+1", f"_target_ config, no nemo_version, {packing}")


# ------------------------------------------------------------------------------------------------ bounded values


def _num(d: dict[str, Any], key: str, where: str, default: Any, lo: float, hi: float, kind: type = int) -> Any:
    """d[key] (or default) as `kind`, within [lo, hi]; NemoError naming `where.key` otherwise."""
    v = d.get(key, default)
    v = v[0] if isinstance(v, list) and len(v) == 1 else v  # NeMo writes kernel/stride/dilation as [k]
    if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and v != int(v)):
        raise NemoError(f"{where}.{key} must be {'an integer' if kind is int else 'a number'}, not {str(v)[:40]!r}")
    if not lo <= v <= hi:
        raise NemoError(f"{where}.{key}={v} is out of range ({lo} to {hi})")
    return kind(v)


def _flag(d: dict[str, Any], key: str, where: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise NemoError(f"{where}.{key} must be true or false, not {str(v)[:40]!r}")
    return v


def _kernel(b: dict[str, Any], where: str) -> int:
    k = _num(b, "kernel", where, 1, 1, 1023)
    factor = _num(b, "kernel_size_factor", where, 1.0, 0.01, 16.0, float)
    if factor != 1.0:  # NeMo's compute_new_kernel_size: scaled, at least 1, and odd
        k = max(int(k * factor), 1)
        k += 1 - k % 2
    return k


def _block(b: Any, i: int, era: Era) -> BlockConfig:
    where = f"encoder.jasper[{i}]"
    if not isinstance(b, dict):
        raise NemoError(f"{where} is not a mapping")
    for key, allowed in (("groups", 1), ("heads", -1), ("se_context_size", -1)):
        if b.get(key, allowed) != allowed:
            raise NemoError(f"unsupported {where}.{key}={str(b[key])[:40]!r} (only {allowed})")
    if b.get("residual_dense") or b.get("residual_mode", "add") != "add" or b.get("stride_last") or b.get("tied"):
        raise NemoError(f"unsupported residual settings in {where}")
    cfg = BlockConfig(
        filters=_num(b, "filters", where, None, 1, 8192),
        repeat=_num(b, "repeat", where, 1, 1, 64),
        kernel=_kernel(b, where),
        stride=_num(b, "stride", where, 1, 1, 16),
        dilation=_num(b, "dilation", where, 1, 1, 64),
        residual=_flag(b, "residual", where, False),
        separable=_flag(b, "separable", where, False),
        se=_flag(b, "se", where, False),
    )
    if cfg.stride > 1 and cfg.dilation > 1:
        raise NemoError(f"{where}: stride and dilation both > 1 (NeMo refuses this too)")
    if cfg.kernel % 2 == 0:
        raise NemoError(f"{where}.kernel={cfg.kernel}: 'same' padding needs an odd kernel")
    d, k = cfg.dilation, cfg.kernel
    if era.valid_frames == "ceil" and d > 1 and (d * k) // 2 - 1 != d * (k - 1) // 2:
        # NeMo ≤ 1.0.0b4 padded dilated convs as (d*k)//2 - 1: today's d*(k-1)//2 except for some d, k
        raise NemoError(f"{where}: kernel {cfg.kernel} with dilation {cfg.dilation} was padded differently by NeMo "
                        "1.0.0b4; not supported")  # fmt: skip
    return cfg


def model_config_from(config: dict[str, Any], era: Era) -> tuple[ModelConfig, list[str]]:
    """Our ModelConfig and the labels from a (modernized) EncDecCTCModel config; NemoError for anything that is
    not a QuartzNet/Jasper of the kind our model reproduces."""
    enc = config.get("encoder")
    if not isinstance(enc, dict) or not isinstance(enc.get("jasper"), list):
        raise NemoError("not a QuartzNet/Jasper model: the config has no encoder.jasper block list")
    target = str(enc.get("_target_", "ConvASREncoder"))
    if not target.endswith("ConvASREncoder"):
        raise NemoError(f"not a QuartzNet/Jasper model: encoder is {target[:80]}")
    for key, want in (("activation", "relu"), ("normalization_mode", "batch"), ("residual_mode", "add")):
        if key in enc and enc[key] != want:
            raise NemoError(f"unsupported encoder.{key}={str(enc[key])[:40]!r} (only {want!r})")
    if _num(enc, "frame_splicing", "encoder", 1, 1, 1) != 1:
        raise NemoError("unsupported encoder.frame_splicing")
    if not 1 <= len(enc["jasper"]) <= 128:
        raise NemoError(f"encoder.jasper has {len(enc['jasper'])} blocks (1 to 128)")
    blocks = [_block(b, i, era) for i, b in enumerate(enc["jasper"])]
    ratios = {_num(b, "se_reduction_ratio", f"encoder.jasper[{i}]", 8, 1, 1024)
              for i, b in enumerate(enc["jasper"]) if b.get("se")}  # fmt: skip
    if len(ratios) > 1:
        raise NemoError(f"unsupported: different se_reduction_ratio per block {sorted(ratios)}")
    dec = config.get("decoder") if isinstance(config.get("decoder"), dict) else {}
    labels = config.get("labels") or dec.get("vocabulary")
    if not isinstance(labels, list) or not 1 <= len(labels) <= 4096:
        raise NemoError("the config has no list of labels (labels or decoder.vocabulary; 1 to 4096 of them)")
    if why := labels_problem(labels):
        raise NemoError(f"the {why}: a character-vocabulary model")
    num_classes = dec.get("num_classes", len(labels))
    if num_classes not in (-1, len(labels)):  # -1: "take the vocabulary's length", as NeMo does
        raise NemoError(f"decoder.num_classes={str(num_classes)[:20]} but {len(labels)} labels")
    cfg = ModelConfig(
        feat_in=_num(enc, "feat_in", "encoder", 64, 1, 1024),
        num_classes=len(labels) + 1,
        blocks=blocks,
        se_reduction_ratio=ratios.pop() if ratios else 8,
    )
    if any(b.filters < cfg.se_reduction_ratio for b in blocks if b.se):
        raise NemoError(f"se_reduction_ratio {cfg.se_reduction_ratio} is larger than a block's filters")
    n = _parameter_estimate(cfg)
    if n > MAX_PARAMETERS:
        raise NemoError(f"the config describes {n:,} parameters (at most {MAX_PARAMETERS:,})")
    return cfg, [str(c) for c in labels]


def _parameter_estimate(cfg: ModelConfig) -> int:
    """Weights the config implies, computed before building anything (a wrong filter count can mean 256 GB)."""
    n, c = 0, cfg.feat_in
    for b in cfg.blocks:
        for _ in range(b.repeat):
            n += (c * b.kernel + c * b.filters) if b.separable else c * b.filters * b.kernel
            n += 2 * b.filters
            c = b.filters
    return n + c * cfg.num_classes


def feature_config_from(config: dict[str, Any], era: Era) -> FeatureConfig:
    p = config.get("preprocessor", {})
    if not isinstance(p, dict):  # defaults in its place would give features the model was never trained on
        raise NemoError(f"preprocessor must be a mapping of feature settings, not {str(p)[:40]!r}")
    target = str(p.get("_target_", "AudioToMelSpectrogramPreprocessor"))
    if not target.endswith("AudioToMelSpectrogramPreprocessor"):
        raise NemoError(f"unsupported preprocessor {target[:80]}")
    checks = {"window": "hann", "frame_splicing": 1, "log": True, "mag_power": 2.0, "log_zero_guard_type": "add",
              "exact_pad": False, "stft_exact_pad": False, "mel_norm": "slaney"}  # fmt: skip
    for key, want in checks.items():
        if key in p and p[key] != want:
            raise NemoError(f"unsupported preprocessor.{key}={str(p[key])[:40]!r} (only {want!r})")
    normalize = p.get("normalize", "per_feature")
    if normalize not in ("per_feature", "none", None, "null"):
        raise NemoError(f"unsupported preprocessor.normalize={str(normalize)[:40]!r}")
    where = "preprocessor"
    sr = _num(p, "sample_rate", where, config.get("sample_rate", 16000), 1000, 192000)
    ws = _num(p, "window_size", where, 0.02, 0.001, 0.2, float)
    stride = _num(p, "window_stride", where, 0.01, 0.001, 0.2, float)
    win = int(ws * sr)
    n_fft = p.get("n_fft") or 2 ** int(np.ceil(np.log2(max(win, 1))))
    n_fft = _num({"n_fft": n_fft}, "n_fft", where, None, max(win, 2), 32768)
    if int(stride * sr) < 1 or int(stride * sr) > win:
        raise NemoError(f"preprocessor.window_stride={stride} does not fit a window of {ws} s at {sr} Hz")
    guard = p.get("log_zero_guard_value", 2.0**-24)
    if isinstance(guard, bool) or not isinstance(guard, int | float) or not 0 < guard < 1:
        raise NemoError(f"unsupported preprocessor.log_zero_guard_value={str(guard)[:40]!r}")
    highfreq = None if p.get("highfreq") is None else _num(p, "highfreq", where, None, 1, sr / 2, float)
    return FeatureConfig(
        sample_rate=sr,
        n_fft=n_fft,
        window_size=ws,
        window_stride=stride,
        n_mels=_num(p, "features", where, 64, 1, 512),
        preemph=_num(p, "preemph", where, 0.97, 0.0, 1.0, float),
        dither=_num(p, "dither", where, 1e-5, 0.0, 0.1, float),
        log_guard=float(guard),
        normalize=normalize if normalize == "per_feature" else "none",
        pad_to=_num(p, "pad_to", where, 16, 0, 1024) if p.get("pad_to") != "max" else 16,
        pad_mode=era.pad_mode,
        valid_frames=era.valid_frames,
        lowfreq=_num(p, "lowfreq", where, 0.0, 0.0, sr / 2, float) if p.get("lowfreq") else 0.0,
        highfreq=highfreq,
    )


# ------------------------------------------------------------------------------------------------ weights


def nemo_key_map(cfg: ModelConfig, masked: bool = True) -> dict[str, str]:
    """Our parameter/buffer name → NeMo's, for every module of the model. masked=False: the encoder was built with
    conv_mask: false, so its convolutions are plain nn.Conv1d (`mconv.N.weight`, not `mconv.N.conv.weight`)."""
    conv = ".conv.weight" if masked else ".weight"
    out: dict[str, str] = {}
    for i, b in enumerate(cfg.blocks):
        nemo, ours = f"encoder.encoder.{i}", f"blocks.{i}"
        step = 5 if b.separable else 4  # [dw,] pw, bn, relu, dropout per sub-block; the last has no relu/dropout
        for r in range(b.repeat):
            s = step * r
            if b.separable:
                out[f"{ours}.subs.{r}.dw.weight"] = f"{nemo}.mconv.{s}{conv}"
                s += 1
            out[f"{ours}.subs.{r}.conv.weight"] = f"{nemo}.mconv.{s}{conv}"
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"{ours}.subs.{r}.bn.{k}"] = f"{nemo}.mconv.{s + 1}.{k}"
        if b.se:
            se = step * (b.repeat - 1) + (3 if b.separable else 2)
            out[f"{ours}.se.fc1.weight"] = f"{nemo}.mconv.{se}.fc.0.weight"
            out[f"{ours}.se.fc2.weight"] = f"{nemo}.mconv.{se}.fc.2.weight"
        if b.residual:
            out[f"{ours}.res_conv.weight"] = f"{nemo}.res.0.0{conv}"
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"{ours}.res_bn.{k}"] = f"{nemo}.res.0.1.{k}"
    out["decoder.weight"] = "decoder.decoder_layers.0.weight"
    out["decoder.bias"] = "decoder.decoder_layers.0.bias"
    return out


def map_state_dict(nemo_sd: dict[str, torch.Tensor], model: QuartzNet, masked: bool) -> dict[str, torch.Tensor]:
    """NeMo's state dict → ours. NemoError on a missing key, an unknown encoder/decoder key or a shape mismatch."""
    if any(re.fullmatch(r"encoder\.encoder\.\d+\.res\.0\.2\.fc\.\d\.weight", k) for k in nemo_sd):
        raise NemoError("Squeeze-Excite on the residual branch (NeMo ≤ 1.0.0b4 placed it there): not supported")
    key_map = nemo_key_map(model.cfg, masked)
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
    cfg_bytes, ckpt_bytes, packing = read_archive(path)
    try:
        raw = parse_config(cfg_bytes)
        era = detect_era(raw, packing)
        config = modernize(raw)
        model_cfg, labels = model_config_from(config, era)
        feat_cfg = feature_config_from(config, era)
        nemo_sd = load_weights(ckpt_bytes)
        masked = config["encoder"].get("conv_mask", True) is not False
        state = map_state_dict(nemo_sd, QuartzNet(model_cfg), masked)
        notes = list(era.notes) + _filterbank_note(nemo_sd, feat_cfg)
    except NemoError as e:
        raise NemoError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise NemoError(f"{path}: malformed QuartzNet config ({type(e).__name__}: {str(e)[:200]})") from None
    if not masked:
        notes.append("conv_mask: false: NeMo did not mask padding inside the encoder; ours does, which changes "
                     "only the last frames of a clip padded into a batch")  # fmt: skip
    return NemoModel(config, model_cfg, feat_cfg, labels, state, era, packing, notes)


def _filterbank_note(nemo_sd: dict[str, torch.Tensor], feat_cfg: FeatureConfig) -> list[str]:
    fb = nemo_sd.get("preprocessor.featurizer.fb")
    if fb is None:
        return []
    ours = mel_filterbank(feat_cfg)
    if tuple(fb.shape[-2:]) != ours.shape:
        raise NemoError(f"preprocessor filterbank {tuple(fb.shape)} does not fit the config {ours.shape}")
    diff = float(np.abs(fb.reshape(ours.shape).float().numpy() - ours).max())
    return [f"mel filterbank: ours matches the .nemo's within {diff:.1e}"]
