"""ONNX models for the transcription tests, written once per test session.

fixture_onnx: the tiny NeMo QuartzNet fixture exported as export.py does (random weights: it says "а" a lot).
energy_onnx: a hand-made "recognizer" with the same inputs, outputs and metadata that says "а" on every loud
frame and a space on every quiet one, so each burst of sound is one word whose times are known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from conftest import NEMO
from onnx import TensorProto, helper

from proslushka.features import FeatureConfig
from proslushka.text import LABELS

_MADE: dict[str, Path] = {}
LOUD = -8.0  # mean log-mel of a frame: digital silence is log(2^-24) ≈ -16.6, noise at 0.1 RMS is about -1


def fixture_onnx(folder: Path, name: str = "quartznet_tiny") -> Path:
    if name not in _MADE:
        from proslushka import onnx_export
        from proslushka.model import QuartzNet
        from proslushka.nemo import load_nemo

        nm = load_nemo(NEMO / name / "model.nemo")
        model = QuartzNet(nm.model_config)
        model.load_state_dict(nm.state_dict)
        path = folder / f"{name}.onnx"
        onnx_export.save(onnx_export.to_onnx(model, nm.feature_config, nm.labels), path)
        _MADE[name] = path
    return _MADE[name]


def energy_onnx(folder: Path) -> Path:
    if "energy" in _MADE:
        return _MADE["energy"]
    v = len(LABELS) + 1
    # per output class: logit = weight * (mean log-mel - LOUD) + bias; "а" for loud, " " for quiet, blank never
    weight = np.zeros((1, v, 1), np.float32)
    bias = np.full((1, v, 1), -100.0, np.float32)
    weight[0, LABELS.index("а")], bias[0, LABELS.index("а")] = 1.0, 0.0
    weight[0, 0], bias[0, 0] = -1.0, 0.0
    consts = {
        "weight": weight, "bias": bias, "start": np.array([0], np.int64),
        "end": np.array([2**62], np.int64), "time_axis": np.array([2], np.int64), "step": np.array([2], np.int64),
        "loud": np.array(LOUD, np.float32),
        "one": np.array(1, np.int64), "two": np.array(2, np.int64),
    }  # fmt: skip
    nodes = [
        helper.make_node("ReduceMean", ["audio_signal"], ["energy"], axes=[1], keepdims=1),  # [B, 1, T]
        helper.make_node("Slice", ["energy", "start", "end", "time_axis", "step"], ["strided"]),  # every 2nd frame
        helper.make_node("Sub", ["strided", "loud"], ["centred"]),
        helper.make_node("Mul", ["centred", "weight"], ["scaled"]),  # [B, V, T']
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        helper.make_node("Transpose", ["logits"], ["btv"], perm=[0, 2, 1]),
        helper.make_node("LogSoftmax", ["btv"], ["logprobs"], axis=2),
        helper.make_node("Add", ["length", "one"], ["plus"]),
        helper.make_node("Div", ["plus", "two"], ["encoded_lengths"]),
    ]
    graph = helper.make_graph(
        nodes,
        "energy",
        [
            helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT, ["B", 64, "T"]),
            helper.make_tensor_value_info("length", TensorProto.INT64, ["B"]),
        ],
        [
            helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["B", "T2", v]),
            helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["B"]),
        ],
        [onnx.numpy_helper.from_array(a, k) for k, a in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"labels": json.dumps(list(LABELS)), "feature_config": json.dumps(FeatureConfig().to_dict()),
            "subsampling_factor": "2"}  # fmt: skip
    for k, val in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, val
    onnx.checker.check_model(model)
    path = folder / "energy.onnx"
    onnx.save(model, path)
    _MADE["energy"] = path
    return path


def bursts(spans: list[tuple[float, float]], total: float, seed: int = 0) -> np.ndarray:
    """`total` seconds of digital silence with white noise (RMS 0.1) on each (start, end) span, 16 kHz float32."""
    rng = np.random.default_rng(seed)
    audio = np.zeros(int(total * 16000), np.float32)
    for a, b in spans:
        audio[int(a * 16000) : int(b * 16000)] = 0.1 * rng.standard_normal(int(b * 16000) - int(a * 16000))
    return audio


def write_wav(path: Path, audio: np.ndarray) -> Path:
    import soundfile as sf

    sf.write(path, audio, 16000, subtype="PCM_16")
    return path
