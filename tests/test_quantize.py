import json
import shutil

import onnx
import pytest
from conftest import AUDIO, CLIPS, NEMO
from onnx import TensorProto, helper

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


def _identity_onnx(path, producer=None):
    """A valid ONNX model that is not one of ours: y = x, with our metadata's producer if given."""
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy")
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    if producer:
        entry = model.metadata_props.add()
        entry.key, entry.value = "producer", producer
    onnx.save(model, path)
    return path


def test_foreign_onnx_is_refused_before_quantizing(tmp_path, capsys):
    (tmp_path / "empty.onnx").write_bytes(b"")  # parses as an empty ModelProto
    cases = {
        tmp_path / "empty.onnx": "no proslushka metadata",
        _identity_onnx(tmp_path / "identity.onnx"): "no proslushka metadata",
        _identity_onnx(tmp_path / "named.onnx", "proslushka"): "inputs ['x'] and outputs ['y'], not ['audio_signal'",
    }
    for path, why in cases.items():
        out = tmp_path / "q.onnx"
        assert export.main(["--onnx", str(path), "--quantize", "int8", "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: not an ONNX model written by export.py ({why}") and err.count("\n") == 1
        assert not out.exists()


def test_output_equal_to_the_input_is_refused_before_any_work(ckpt, tmp_path, capsys):
    pt = shutil.copy(ckpt, tmp_path / "v.pt")
    before = (tmp_path / "v.pt").read_bytes()
    assert export.main(["--checkpoint", str(pt), "-o", str(pt)]) == 2
    assert "v.pt: is the input" in capsys.readouterr().err
    assert (tmp_path / "v.pt").read_bytes() == before  # still the checkpoint, not an ONNX file
    assert export.main(["--checkpoint", str(pt), "-o", str(tmp_path / "v.onnx")]) == 0
    onnx_bytes = (tmp_path / "v.onnx").read_bytes()
    capsys.readouterr()
    # -o through another name of the same file (a relative path here would do too)
    (tmp_path / "link.onnx").symlink_to(tmp_path / "v.onnx")
    assert (
        export.main(["--onnx", str(tmp_path / "v.onnx"), "--quantize", "int8", "-o", str(tmp_path / "link.onnx")]) == 2
    )
    err = capsys.readouterr().err
    assert "link.onnx: is the input" in err and err.count("\n") == 1
    assert (tmp_path / "v.onnx").read_bytes() == onnx_bytes
