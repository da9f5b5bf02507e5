import json

import onnx
import pytest
from conftest import AUDIO, CLIPS, NEMO

import export
from proslushka import checkpoint
from proslushka.infer import Transcriber
from proslushka.model import QuartzNet
from proslushka.nemo import load_nemo


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    nm = load_nemo(NEMO / "quartznet_tiny" / "model.nemo")
    model = QuartzNet(nm.model_config)
    model.load_state_dict(nm.state_dict)
    checkpoint.save(d / "m.pt", checkpoint.make(model, nm.feature_config, nm.labels))
    return d / "m.pt"


def _check_int8(path, fp32_bytes, static=False):
    proto = onnx.load(path)
    made_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type in ("Conv", "ConvInteger")]
    if static:  # QDQ: every Conv's weight comes out of a DequantizeLinear (onnxruntime fuses them to QLinearConv)
        assert convs and all(made_by.get(n.input[1]) == "DequantizeLinear" for n in convs)
    else:
        assert convs and all(n.op_type == "ConvInteger" for n in convs)
    assert path.stat().st_size < fp32_bytes * 0.6  # the tiny model's graph is a large part of its bytes
    tr = Transcriber(path)  # labels and feature settings survived in the metadata
    assert tr.labels == json.loads({p.key: p.value for p in proto.metadata_props}["labels"])
    assert isinstance(tr.transcribe_file(AUDIO / "utt1.wav"), str)


def test_quantize_a_checkpoint_dynamically(ckpt, capsys):
    assert export.main(["--checkpoint", str(ckpt)]) == 0
    fp32 = ckpt.with_suffix(".onnx")
    assert export.main(["--checkpoint", str(ckpt), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "int8 (dynamic)" in out and "greedy ids agree with fp32 on" in out
    _check_int8(ckpt.with_name("m.int8.onnx"), fp32.stat().st_size)


def test_quantize_an_onnx_statically_with_calibration(ckpt, tmp_path, capsys):
    export.main(["--checkpoint", str(ckpt), "-o", str(tmp_path / "m.onnx")])
    manifest = tmp_path / "cal.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": str(AUDIO / f"{c}.wav")}) + "\n" for c in CLIPS))
    args = ["--onnx", str(tmp_path / "m.onnx"), "--quantize", "int8", "--calibration", str(manifest)]
    assert export.main(args + ["-o", str(tmp_path / "s.onnx")]) == 0
    assert "int8 (static, calibrated on 3 clips)" in capsys.readouterr().out
    _check_int8(tmp_path / "s.onnx", (tmp_path / "m.onnx").stat().st_size, static=True)


def test_quantize_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export.main(["--onnx", str(tmp_path / "m.onnx")])  # --onnx only makes sense with --quantize
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert export.main(["--onnx", str(tmp_path / "junk.onnx"), "--quantize", "int8"]) == 2
    assert "junk.onnx: not a readable ONNX model" in capsys.readouterr().err
