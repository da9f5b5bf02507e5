"""Checkpoint → ONNX with NeMo's input/output names, dynamic batch and time, and everything inference needs
(labels, feature settings) in the metadata, so model.onnx is the only file a transcriber reads.

The graph is 2-D (planar): [B, C, 1, T] tensors and 1 x K convolutions, the same weights. On a CPU
onnxruntime then runs the convolutions in its blocked-channel layout (NCHWc), where a depthwise convolution is a
vectorised kernel rather than a GEMM per channel: the 15x5's depthwise convolutions took 55% of its time as 1-D
Conv nodes for 9% of its FLOPs (bench/peers.py has the figures).
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from .features import FeatureConfig
from .files import atomic_write
from .manifest import one_line
from .model import QuartzNet

OPSET = 17
INPUTS = ["audio_signal", "length"]
OUTPUTS = ["logprobs", "encoded_lengths"]


def metadata(model: QuartzNet, feature_config: FeatureConfig, labels: list[str]) -> dict[str, str]:
    # vocab_size / subsampling_factor / normalize_type / model_type are the keys sherpa-onnx reads (NEMO.md §6.2).
    return {
        "labels": json.dumps(labels, ensure_ascii=False),
        "feature_config": json.dumps(feature_config.to_dict()),
        "model_config": json.dumps(model.cfg.to_dict()),
        "vocab_size": str(model.cfg.num_classes),
        "subsampling_factor": str(model.cfg.stride),
        "normalize_type": "per_feature" if feature_config.normalize == "per_feature" else "",
        "model_type": "EncDecCTCModel",
        "producer": "proslushka",
    }


def planar(model: QuartzNet) -> QuartzNet:
    """A copy of the model (in eval mode) with every Conv1d a Conv2d of kernel 1 x K holding the same numbers: the
    model runs on [B, C, 1, T] anyway (model.QuartzNet.forward), and real Conv2d modules export as 2-D Conv nodes
    named after their module (onnx_import reads the weights back by those names)."""
    twin = copy.deepcopy(model).eval()
    for name, m in list(twin.named_modules()):
        if not isinstance(m, torch.nn.Conv1d):
            continue
        new = torch.nn.Conv2d(
            m.in_channels,
            m.out_channels,
            (1, m.kernel_size[0]),
            (1, m.stride[0]),
            (0, m.padding[0]),
            (1, m.dilation[0]),
            m.groups,
            m.bias is not None,
        )
        new.weight.data = m.weight.data.unsqueeze(2)
        if m.bias is not None:
            new.bias.data = m.bias.data
        parent, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(parent), leaf, new.eval())
    return twin


class Conv1dForm(torch.nn.Module):
    """The model on [B, C, T] tensors and Conv1d, as NeMo's exporter writes a QuartzNet (a bench's baseline)."""

    def __init__(self, model: QuartzNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.head(*self.model.encode(x, lengths))


def to_onnx(
    model: QuartzNet, feature_config: FeatureConfig, labels: list[str], planar_graph: bool = True
) -> onnx.ModelProto:
    """The model as ONNX; planar_graph=False: the 1-D graph NeMo's exporter writes (for bench/peers.py)."""
    model = model.eval()
    x = torch.randn(2, model.cfg.feat_in, 96)
    lengths = torch.tensor([96, 64])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no extra package and handles this convnet exactly.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            planar(model) if planar_graph else Conv1dForm(model),
            (x, lengths),
            buf,
            input_names=INPUTS,
            output_names=OUTPUTS,
            dynamic_axes={
                "audio_signal": {0: "batch", 2: "time"},
                "length": {0: "batch"},
                "logprobs": {0: "batch", 1: "encoded_time"},
                "encoded_lengths": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    for k, v in metadata(model, feature_config, labels).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    return proto


def foreign(proto: onnx.ModelProto) -> str | None:
    """Why `proto` is not a model this exporter wrote (its metadata, input and output names, a valid graph), or
    None. Checked before quantizing a given ONNX file, so another model fails in one line naming what it lacks,
    rather than deep inside onnxruntime."""
    from .infer import read_metadata

    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("producer") != "proslushka":
        return "no proslushka metadata"
    constants = {i.name for i in proto.graph.initializer}  # older IRs list the weights among the inputs
    inputs = [i.name for i in proto.graph.input if i.name not in constants]
    outputs = [o.name for o in proto.graph.output]
    if inputs != INPUTS or outputs != OUTPUTS:
        return f"inputs {inputs[:4]} and outputs {outputs[:4]}, not {INPUTS} and {OUTPUTS}"
    try:
        read_metadata(meta)
    except (KeyError, ValueError, TypeError) as e:
        return f"metadata: {one_line(e)}"
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # ValidationError, and what the checker's C++ side throws for a malformed graph
        return f"invalid graph: {one_line(e)}"
    return None


def save(proto: onnx.ModelProto, path: str | os.PathLike) -> None:
    atomic_write(path, proto.SerializeToString())


def sherpa_tokens(labels: list[str]) -> str:
    """sherpa-onnx's tokens file: "<symbol> <id>" per label, then the blank (last) as <blk>. The space label's line
    is " 0", which sherpa-onnx reads as the space (a line holding only an id; NEMO.md §6.2)."""
    return "".join(f"{c} {i}\n" for i, c in enumerate(labels)) + f"<blk> {len(labels)}\n"


def tokens_path(onnx_path: str | os.PathLike) -> Path:
    """NAME.tokens.txt beside NAME.onnx (one per model, so two exports in a folder do not overwrite each other)."""
    return Path(onnx_path).with_suffix(".tokens.txt")


def compare(model: QuartzNet, proto_or_path: Any, lengths: tuple[int, ...] = (301, 187), seed: int = 0) -> float:
    """Max abs difference of log-probs (valid frames) between torch and onnxruntime on a padded random batch."""
    import onnxruntime as ort

    data = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    x = torch.randn(len(lengths), model.cfg.feat_in, t, generator=g)
    lens = torch.tensor(lengths)
    with torch.no_grad():
        ref, ref_len = model.eval()(x, lens)
    out, out_len = sess.run(None, {"audio_signal": x.numpy(), "length": lens.numpy()})
    if not np.array_equal(out_len, ref_len.numpy()):
        raise AssertionError(f"encoded lengths differ: onnx {out_len.tolist()}, torch {ref_len.tolist()}")
    return max(float(np.abs(out[i, :n] - ref[i, :n].numpy()).max()) for i, n in enumerate(ref_len.tolist()))


def quantize_int8(
    proto: onnx.ModelProto, calibration: Iterable[dict[str, np.ndarray]] | None = None
) -> onnx.ModelProto:
    """The model with int8 convolution weights (~4× smaller); metadata kept.

    Without calibration: onnxruntime's dynamic quantization (ConvInteger, activations quantized on the fly).
    Weights are uint8 there, because onnxruntime's ConvInteger kernel for int8 weights is a slow fallback (6×
    slower than fp32, measured). With calibration inputs ({"audio_signal", "length"} dicts, e.g. real clips'
    features): static QDQ quantization, per-channel int8 weights and uint8 activations with ranges measured on
    those inputs, which onnxruntime fuses into QLinearConv: about twice as fast again on a QuartzNet15x5.
    QuartzNet has no MatMul: every layer is a Conv, so Conv is what is quantized.
    """
    import logging

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, items: Iterable[dict[str, np.ndarray]]):
            self.items = iter(items)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a "consider pre-processing" warning on the root logger
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(proto, src)
            if calibration is None:
                quantize_dynamic(src, dst, op_types_to_quantize=["Conv"], weight_type=QuantType.QUInt8)
            else:
                quantize_static(
                    src,
                    dst,
                    Reader(calibration),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    op_types_to_quantize=["Conv"],
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
            out = onnx.load(dst)
    finally:
        root.setLevel(level)
    have = {p.key for p in out.metadata_props}
    for p in proto.metadata_props:
        if p.key not in have:
            entry = out.metadata_props.add()
            entry.key, entry.value = p.key, p.value
    return out
