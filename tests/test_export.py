"""export.py's input: no default checkpoint path (none that any command writes), one line saying what to pass."""

import pytest
from conftest import NEMO

import export
from proslushka import checkpoint
from proslushka.model import QuartzNet
from proslushka.nemo import load_nemo


def test_no_checkpoint_is_refused_naming_what_to_pass(tmp_path, monkeypatch, capsys):
    # a models/model.pt in the working folder (the old default) must not be picked up silently either
    nm = load_nemo(NEMO / "quartznet_tiny" / "model.nemo")
    model = QuartzNet(nm.model_config)
    (tmp_path / "models").mkdir()
    checkpoint.save(tmp_path / "models/model.pt", checkpoint.make(model, nm.feature_config, nm.labels))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        export.main([])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(
        "error: --checkpoint is required: a .pt from train.py (runs/NAME/best.pt) or transfer.py (models/NAME.pt)"
    )
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt"]  # nothing exported


def test_onnx_alone_needs_no_checkpoint(tmp_path, capsys):
    # --onnx with --quantize quantizes an export: the checkpoint check must not stand in its way
    assert export.main(["--onnx", str(tmp_path / "missing.onnx"), "--quantize", "int8"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing.onnx'}: not a readable ONNX model")
