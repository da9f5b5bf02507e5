"""onnx_import: a model exported by export.py (fp32 or int8) comes back as trainable torch weights."""

import copy

import numpy as np
import onnx
import pytest
import torch

from proslushka import checkpoint, onnx_export
from proslushka.features import FeatureConfig
from proslushka.model import QuartzNet
from proslushka.onnx_import import OnnxImportError, calibrate_batchnorm, from_onnx
from proslushka.text import LABELS
from tests.conftest import trained_looking
from tools import onnx_to_checkpoint


def features(seed: int, frames: int) -> torch.Tensor:
    return torch.randn(64, frames, generator=torch.Generator().manual_seed(seed))


def logprobs(model: QuartzNet, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x[None], torch.tensor([x.shape[-1]]))[0][0]


def test_fp32_round_trip_computes_the_same():
    model = trained_looking()
    back, feature_config, labels = from_onnx(onnx_export.to_onnx(model, FeatureConfig(), list(LABELS)))
    assert labels == list(LABELS) and feature_config == FeatureConfig()
    x = features(1, 333)
    assert torch.allclose(logprobs(back, x), logprobs(model, x), atol=1e-4)
    assert onnx_export.compare(back, onnx_export.to_onnx(model, FeatureConfig(), list(LABELS))) < 1e-4


def test_int8_weights_are_the_folded_weights_within_half_a_step():
    model = trained_looking()
    proto = onnx_export.quantize_int8(onnx_export.to_onnx(model, FeatureConfig(), list(LABELS)))
    back, _, _ = from_onnx(proto)
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.name.endswith("_scale")}
    sub = model.blocks[1].subs[0]  # pointwise conv followed by its BatchNorm: W · gamma / sqrt(var + eps)
    with torch.no_grad():
        folded = sub.conv.weight * (sub.bn.weight / torch.sqrt(sub.bn.running_var + sub.bn.eps))[:, None, None]
    step = max(float(v) for v in scales.values())
    got = back.blocks[1].subs[0].conv.weight.detach()
    assert float((got - folded).abs().max()) <= step / 2 + 1e-6
    dw = back.blocks[1].subs[0].dw.weight.detach()  # depthwise: no BatchNorm of its own, so the plain weight
    assert float((dw - sub.dw.weight.detach()).abs().max()) <= step / 2 + 1e-6
    assert not torch.equal(dw, sub.dw.weight.detach())  # it really went through int8


def test_static_int8_comes_back_close():
    model = trained_looking()
    calib = [
        {"audio_signal": features(10 + i, 200)[None].numpy(), "length": np.array([200], dtype=np.int64)}
        for i in range(4)
    ]
    proto = onnx_export.quantize_int8(onnx_export.to_onnx(model, FeatureConfig(), list(LABELS)), calib)
    assert any(n.op_type == "DequantizeLinear" for n in proto.graph.node)
    back, _, _ = from_onnx(proto)
    sub, got = model.blocks[1].subs[0], back.blocks[1].subs[0]
    with torch.no_grad():
        folded = sub.conv.weight * (sub.bn.weight / torch.sqrt(sub.bn.running_var + sub.bn.eps))[:, None, None]
        step = folded.abs().amax((1, 2), keepdim=True) / 127  # per-channel symmetric int8
        assert bool(((got.conv.weight - folded).abs() <= step / 2 + 1e-6).all())
        assert (
            float(
                (
                    got.bn.bias
                    - (sub.bn.bias - sub.bn.running_mean * sub.bn.weight / torch.sqrt(sub.bn.running_var + sub.bn.eps))
                )
                .abs()
                .max()
            )
            < 1e-3
        )


def test_calibration_keeps_eval_output_and_makes_training_mode_agree():
    model = trained_looking()
    back, _, _ = from_onnx(onnx_export.to_onnx(model, FeatureConfig(), list(LABELS)))
    clip = features(2, 400)
    before = logprobs(back, clip)
    assert calibrate_batchnorm(back, [clip]) == 1
    assert torch.allclose(logprobs(back.eval(), clip), before, atol=1e-4)
    # on the clip it was calibrated on, batch statistics are the stored ones, layer after layer
    assert torch.allclose(logprobs(copy.deepcopy(back).train(), clip), before, atol=1e-3)
    # without calibration (identity BatchNorms) training mode is a different function
    raw, _, _ = from_onnx(onnx_export.to_onnx(model, FeatureConfig(), list(LABELS)))
    assert float((logprobs(raw.train(), clip) - before).abs().max()) > 0.1


def test_foreign_onnx_is_refused():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [x])
    with pytest.raises(OnnxImportError, match="export.py"):
        from_onnx(onnx.helper.make_model(graph))


def test_tool_writes_a_checkpoint_that_loads(tmp_path, capsys):
    model = trained_looking()
    onnx_export.save(onnx_export.to_onnx(model, FeatureConfig(), list(LABELS)), tmp_path / "m.onnx")
    assert onnx_to_checkpoint.main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.pt")]) == 0
    loaded, _, labels, _ = checkpoint.load_model(tmp_path / "m.pt")
    x = features(3, 250)
    assert labels == list(LABELS)
    assert torch.allclose(logprobs(loaded, x), logprobs(model, x), atol=1e-4)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert onnx_to_checkpoint.main([str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.onnx" in err[0]
    assert not (tmp_path / "x.pt").exists()


def test_tool_refuses_bad_clips_and_outputs_before_any_work(tmp_path, capsys):
    onnx_export.save(onnx_export.to_onnx(trained_looking(), FeatureConfig(), list(LABELS)), tmp_path / "m.onnx")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    for clips in ("0", "-2"):  # 0 divided by zero when spreading the clips over the manifest
        with pytest.raises(SystemExit) as e:
            onnx_to_checkpoint.main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "x.pt"), "--clips", clips,
                                     "--calibrate", str(manifest)])  # fmt: skip
        assert e.value.code == 2 and "--clips must be in [1, 10000]" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    before = (tmp_path / "m.onnx").read_bytes()
    for out, why in [
        (tmp_path / "folder", f"{tmp_path / 'folder'}: is a folder, not a file"),
        (tmp_path / "m.onnx", f"{tmp_path / 'm.onnx'}: is the input"),
        (manifest, f"{manifest}: is the input"),
    ]:
        args = [str(tmp_path / "m.onnx"), "-o", str(out), "--calibrate", str(manifest)]
        assert onnx_to_checkpoint.main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {why}") and err.count("\n") == 1, err
    assert (tmp_path / "m.onnx").read_bytes() == before and manifest.read_text() == ""
