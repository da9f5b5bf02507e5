"""Checkpoint averaging (proslushka.checkpoint.average, tools/average_checkpoints.py): the mean of the weights."""

import pytest
import torch

from proslushka import checkpoint
from proslushka.features import FeatureConfig
from proslushka.model import QuartzNet, preset
from proslushka.text import LABELS
from tools import average_checkpoints


def ckpt(seed: int, labels=LABELS, steps: int = 7) -> dict:
    torch.manual_seed(seed)
    model = QuartzNet(preset("tiny", num_classes=len(labels) + 1))
    for m in model.modules():  # running statistics that differ between the checkpoints, as after training
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean = torch.randn(m.num_features)
            m.running_var = torch.rand(m.num_features) + 0.5
            m.num_batches_tracked.fill_(steps)
    return checkpoint.make(model, FeatureConfig(), list(labels), trainer={"step": steps})


def test_average_is_the_mean_of_each_weight(tmp_path):
    a, b, c = ckpt(0), ckpt(1), ckpt(2, steps=9)
    paths = []
    for i, x in enumerate((a, b, c)):
        paths.append(str(tmp_path / f"{i}.pt"))
        checkpoint.save(paths[-1], x)
    out = tmp_path / "avg.pt"
    assert average_checkpoints.main([*paths, "-o", str(out)]) == 0

    model, _, labels, got = checkpoint.load_model(out)
    assert labels == list(LABELS) and "trainer" not in got and got["averaged"] == paths
    floats = 0
    for key, value in got["model"].items():
        if value.is_floating_point():
            floats += 1
            expected = (a["model"][key] + b["model"][key] + c["model"][key]) / 3
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
        else:  # BatchNorm's batch count: the last checkpoint's
            assert torch.equal(value, c["model"][key]) and int(value) == 9
    assert floats > 20  # convolution weights and biases, BatchNorm scales, shifts and running statistics
    # eval output of the averaged model is that of a model built from the mean weights
    x = torch.randn(1, 64, 50)
    ref = QuartzNet(preset("tiny", num_classes=len(LABELS) + 1)).eval()
    ref.load_state_dict(
        {
            k: (a["model"][k] + b["model"][k] + c["model"][k]) / 3 if v.is_floating_point() else v
            for k, v in c["model"].items()
        }
    )
    torch.testing.assert_close(model(x, torch.tensor([50]))[0], ref(x, torch.tensor([50]))[0])


def test_one_checkpoint_averages_to_itself():
    a = ckpt(0)
    got = checkpoint.average([a], ["a.pt"])
    assert all(torch.equal(got["model"][k], v) for k, v in a["model"].items())


def test_checkpoints_of_other_models_are_refused_naming_the_file(tmp_path, capsys):
    other_labels = ckpt(1, labels=LABELS[:-1])
    with pytest.raises(checkpoint.CheckpointError, match="b.pt and a.pt have different labels"):
        checkpoint.average([ckpt(0), other_labels], ["a.pt", "b.pt"])
    other_model = ckpt(1)
    other_model["model_config"] = QuartzNet(preset("tiny", num_classes=len(LABELS) + 1, se=True)).cfg.to_dict()
    with pytest.raises(checkpoint.CheckpointError, match="b.pt and a.pt have different model_config"):
        checkpoint.average([ckpt(0), other_model], ["a.pt", "b.pt"])
    other_features = ckpt(1)
    other_features["feature_config"] = {**other_features["feature_config"], "dither": 0.0}
    with pytest.raises(checkpoint.CheckpointError, match="b.pt and a.pt have different feature_config"):
        checkpoint.average([ckpt(0), other_features], ["a.pt", "b.pt"])
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoints"):
        checkpoint.average([], [])

    checkpoint.save(tmp_path / "a.pt", ckpt(0))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "avg.pt"
    assert average_checkpoints.main([str(tmp_path / "a.pt"), str(tmp_path / "junk.pt"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "junk.pt" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def run_tool(capsys, *args) -> tuple[int, str]:
    rc = average_checkpoints.main([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda c: c.pop("model"), "no model weights (no 'model' entry)"),
        (lambda c: c.update(model=5), "its 'model' is 5, not a state dict of weights"),
        (lambda c: c.update(model={k: v.tolist() for k, v in c["model"].items()}), "is a list, not a tensor"),
        (lambda c: c.update(labels=["а", "а"]), "labels"),
    ],
)
def test_odd_checkpoints_are_one_line_naming_the_input(tmp_path, capsys, damage, why):
    good, odd = ckpt(0), ckpt(1)
    damage(odd)
    if why == "labels":  # the same odd labels in every input: the error must still name an input, not -o
        damage(good)
    checkpoint.save(tmp_path / "good.pt", good)
    checkpoint.save(tmp_path / "odd.pt", odd)
    out = tmp_path / "avg.pt"
    rc, err = run_tool(capsys, tmp_path / "good.pt", tmp_path / "odd.pt", "-o", out)
    named = tmp_path / ("good.pt" if why == "labels" else "odd.pt")
    assert rc == 1 and err.startswith(f"error: {named}: ") and why in err and err.count("\n") == 1, err
    assert "avg.pt" not in err and not out.exists()


def test_output_that_is_an_input_or_a_folder_is_refused_before_loading(tmp_path, capsys):
    for name, seed in (("a.pt", 0), ("b.pt", 1)):
        checkpoint.save(tmp_path / name, ckpt(seed))
    before = (tmp_path / "a.pt").read_bytes()
    rc, err = run_tool(capsys, tmp_path / "a.pt", tmp_path / "b.pt", "-o", tmp_path / "a.pt")
    assert rc == 1 and f"{tmp_path / 'a.pt'}: is the input" in err and err.count("\n") == 1
    assert (tmp_path / "a.pt").read_bytes() == before
    (tmp_path / "out").mkdir()
    rc, err = run_tool(capsys, tmp_path / "a.pt", tmp_path / "b.pt", "-o", tmp_path / "out")
    assert rc == 1 and err == f"error: {tmp_path / 'out'}: is a folder, not a file\n"


def test_an_unreadable_checkpoint_error_gives_no_unsafe_advice(tmp_path, capsys):
    # a pickle torch's safe loader refuses: torch's message advises weights_only=False, i.e. running its code
    torch.save({"format": checkpoint.FORMAT, "path": tmp_path}, tmp_path / "pickled.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02garbage" * 20)
    for name, why in [("pickled.pt", "Unsupported global"), ("garbage.pt", "UnpicklingError")]:
        with pytest.raises(checkpoint.CheckpointError) as e:
            checkpoint.load(tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / name}: not a readable checkpoint") and why in msg, msg
        assert "\n" not in msg and "weights_only" not in msg and "safe_globals" not in msg and "trust" not in msg
    rc, err = run_tool(capsys, tmp_path / "pickled.pt", "-o", tmp_path / "avg.pt")
    assert rc == 1 and err.count("\n") == 1 and "weights_only" not in err
