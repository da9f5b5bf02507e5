"""ONNX (ours, fp32 or int8 dynamic) → trainable QuartzNet weights, so a shipped model can be fine-tuned when its
training checkpoint is gone.

The exporter folds every BatchNorm into the convolution before it, so the ONNX file holds W·s and b only, not the
four BatchNorm tensors. `from_onnx` puts the folded weights back with each BatchNorm as the identity plus the folded
bias; the model then computes exactly what the ONNX file does. `calibrate_batchnorm` then gives each BatchNorm the
statistics of its real input (measured on a few clips) and matching scale and shift: the eval-mode function stays
the same, and a training-mode forward (batch statistics) computes about the same thing, so fine-tuning starts from
the model rather than from a perturbed copy of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .audio import load_audio
from .data import read_manifest
from .features import FeatureConfig, log_mel_numpy
from .infer import read_metadata
from .model import BN_EPS, JasperBlock, ModelConfig, QuartzNet, SubBlock


class OnnxImportError(ValueError):
    """An ONNX file these functions cannot map back onto a QuartzNet; the message says why."""


def _conv_batchnorm_pairs(model: QuartzNet) -> dict[str, str]:
    """Module path of each bias-free convolution that a BatchNorm follows → that BatchNorm's path."""
    pairs = {}
    for name, m in model.named_modules():
        if isinstance(m, SubBlock):
            pairs[f"{name}.conv"] = f"{name}.bn"
        elif isinstance(m, JasperBlock) and m.res_conv is not None:
            pairs[f"{name}.res_conv"] = f"{name}.res_bn"
    return pairs


def _module_path(node: onnx.NodeProto) -> str:
    # The TorchScript exporter names a node after its module: "/blocks.1/subs.0/conv/Conv" (+ "_quant" once
    # onnxruntime has quantized it).
    parts = node.name.strip("/").split("/")
    return ".".join(parts[:-1])


def _constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers, and the outputs of DequantizeLinear nodes over initializers (static int8: per-channel)."""
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or not all(i in consts for i in node.input if i):
            continue
        x = consts[node.input[0]].astype(np.float64)
        scale = consts[node.input[1]].astype(np.float64)
        zero = consts[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
        if np.ndim(scale) == 1:  # per-axis: broadcast along `axis` (default 1)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        consts[node.output[0]] = ((x - zero) * scale).astype(np.float32)
    return consts


def _folded_convs(proto: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Module path → (weight, bias or None) for every Conv / ConvInteger node, int8 weights dequantized."""
    inits = _constants(proto)
    reshapes = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Reshape"}
    convs = {}
    for node in proto.graph.node:
        if node.op_type == "Conv":  # fp32, or static int8 (QDQ): its weight and bias come from DequantizeLinear
            weight = inits.get(node.input[1])
            bias = inits.get(node.input[2]) if len(node.input) > 2 else None
        elif node.op_type == "ConvInteger":
            q = node.input[1]
            base = q.removesuffix("_quantized")
            if q not in inits or f"{base}_scale" not in inits:
                raise OnnxImportError(f"{node.name}: quantized weight without its scale")
            zero = inits[node.input[3]].astype(np.float32) if len(node.input) > 3 and node.input[3] else 0.0
            weight = (inits[q].astype(np.float32) - zero) * inits[f"{base}_scale"].astype(np.float32)
            # onnxruntime adds the float bias after rescaling the int32 output: Reshape(bias) named after the output
            out = node.output[0].removesuffix("_output_quantized")
            bias_name = reshapes.get(f"{out}_bias_reshape_output")
            bias = inits.get(bias_name) if bias_name else None
        else:
            continue
        if weight is None:
            raise OnnxImportError(f"{node.name}: weight is not a constant")
        if weight.ndim == 4 and weight.shape[2] == 1:  # the planar export's 1 x K kernels (onnx_export.planar)
            weight = weight[:, :, 0]
        convs[_module_path(node)] = (weight, bias)
    return convs


def _load(path: str | os.PathLike) -> onnx.ModelProto:
    try:
        return onnx.load(os.fspath(path))
    except OSError:
        raise
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
        raise OnnxImportError(f"not an ONNX model ({type(e).__name__})") from None


def from_onnx(
    proto_or_path: onnx.ModelProto | str | os.PathLike,
) -> tuple[QuartzNet, FeatureConfig, list[str]]:
    """(model computing what the ONNX file computes, feature config, labels) from a model export.py wrote."""
    proto = proto_or_path if isinstance(proto_or_path, onnx.ModelProto) else _load(proto_or_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("producer") != "proslushka" or "model_config" not in meta:
        raise OnnxImportError("not an ONNX model written by export.py (no proslushka model_config in its metadata)")
    cfg = ModelConfig.from_dict(json.loads(meta["model_config"]))
    if any(b.se for b in cfg.blocks):
        raise OnnxImportError("Squeeze-Excite models are not supported here (their layers are not convolutions)")
    model = QuartzNet(cfg)
    state = model.state_dict()
    convs = _folded_convs(proto)
    pairs = _conv_batchnorm_pairs(model)
    new: dict[str, torch.Tensor] = {}
    for path, (weight, bias) in convs.items():
        key = f"{path}.weight"
        if key not in state or tuple(state[key].shape) != weight.shape:
            raise OnnxImportError(f"convolution {path!r} ({weight.shape}) does not fit the model in the metadata")
        new[key] = torch.tensor(weight, dtype=torch.float32)
        if f"{path}.bias" in state:
            new[f"{path}.bias"] = torch.tensor(bias, dtype=torch.float32)
        elif path in pairs:
            bn = pairs[path]
            c = weight.shape[0]
            new[f"{bn}.weight"] = torch.ones(c)
            new[f"{bn}.bias"] = torch.tensor(bias, dtype=torch.float32) if bias is not None else torch.zeros(c)
            new[f"{bn}.running_mean"] = torch.zeros(c)
            new[f"{bn}.running_var"] = torch.full((c,), 1.0 - BN_EPS)  # (x - 0) / sqrt(1 - eps + eps) = x
    missing = [k for k in state if k not in new and not k.endswith("num_batches_tracked")]
    if missing:
        raise OnnxImportError(f"{len(missing)} weights not found in the ONNX graph, e.g. {missing[0]!r}")
    model.load_state_dict(new, strict=False)
    try:
        labels, feature_config, _ = read_metadata(meta)  # the same checks as the transcriber's
    except (ValueError, KeyError, TypeError) as e:
        raise OnnxImportError(f"metadata: {e}") from None
    return model.eval(), feature_config, labels


@torch.no_grad()
def calibrate_batchnorm(model: QuartzNet, clips: Iterable[torch.Tensor], only: set[str] | None = None) -> int:
    """Give every BatchNorm (or those named in `only`) the mean and variance of its input over `clips` (features,
    (feat_in, frames) each, one at a time so no padding counts) and the scale and shift that keep its eval-mode
    output unchanged. Returns the number of clips seen.

    With `only`, the other BatchNorms run as in training (batch statistics; their stored ones are kept), so the
    measured input is what the named ones will see in training mode."""
    all_bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm1d)}
    bns = {n: m for n, m in all_bns.items() if only is None or n in only}
    others = {n: m for n, m in all_bns.items() if n not in bns}
    kept = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in others.items()}
    sums: dict[str, list] = {n: [0.0, 0.0, 0] for n in bns}

    def hook(name: str):
        def collect(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].double().transpose(0, 1).flatten(1)  # [C, every frame of every clip]
            acc = sums[name]
            acc[0] = acc[0] + x.sum(1)
            acc[1] = acc[1] + (x * x).sum(1)
            acc[2] += x.shape[1]

        return collect

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in bns.items()]
    seen = 0
    try:
        model.eval()
        for m in others.values():
            m.train()
        for feats in clips:
            model(feats[None], torch.tensor([feats.shape[-1]]))
            seen += 1
    finally:
        for h in handles:
            h.remove()
        for n, m in others.items():
            m.load_state_dict(kept[n])
        model.eval()
    if not seen:
        raise ValueError("no clips to calibrate on")
    for name, bn in bns.items():
        s, s2, n = sums[name]
        mean = s / n
        var = (s2 / n - mean * mean).clamp_min(0.0)
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() - bn.running_mean.double() * scale  # today: y = x·scale + shift
        # then: gamma·(x - mean)/sqrt(var + eps) + beta, equal to x·scale + shift for every x
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.float())
        bn.weight.copy_((scale * torch.sqrt(var + bn.eps)).float())
        bn.bias.copy_((shift + scale * mean).float())
    return seen


def manifest_clips(
    manifest: str | os.PathLike, labels: list[str], feature_config: FeatureConfig, n: int
) -> Iterator[torch.Tensor]:
    """Features ((feat_in, frames) tensors) of `n` clips spread over a manifest (voices, lengths), for
    `calibrate_batchnorm`. Raises OSError, ValueError or AudioError naming the manifest or clip."""
    rows = read_manifest(manifest, labels)
    step = max(1, len(rows) // n)
    for u in rows[::step][:n]:
        feats, valid = log_mel_numpy(load_audio(u.audio_filepath), feature_config)
        yield torch.from_numpy(np.ascontiguousarray(feats[:, :valid]))
