import gzip
import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import yaml
from conftest import MODELS, NEMO, ROOT

from proslushka import checkpoint
from proslushka.features import LogMel
from proslushka.model import QuartzNet
from proslushka.nemo import NemoError, load_nemo


def _model(name):
    nm = load_nemo(NEMO / name / "model.nemo")
    m = QuartzNet(nm.model_config)
    m.load_state_dict(nm.state_dict)
    return m.eval(), nm


def _valid_diff(a, b, lengths):
    return max(float(np.abs(a[i, :n] - b[i, :n]).max()) for i, n in enumerate(lengths))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("clip", ["utt1", "utt2", "utt3", "batch"])
def test_log_probs_match_nemo(reference, name, clip):
    r = reference[name]
    m, nm = _model(name)
    if clip == "batch":
        wave, wave_len = torch.from_numpy(r["batch_waveform"]), torch.from_numpy(r["batch_waveform_lengths"])
    else:
        wave = torch.from_numpy(r[f"{clip}_waveform"].reshape(1, -1))
        wave_len = torch.tensor([wave.shape[1]])
    with torch.no_grad():
        feats, flen = LogMel(nm.feature_config).eval()(wave, wave_len)
        lp, lens = m(feats, flen)
        lp_nemo_feats, _ = m(torch.from_numpy(r[f"{clip}_features"]), torch.from_numpy(r[f"{clip}_feature_lengths"]))
    enc = r[f"{clip}_encoded_lengths"].tolist()
    assert lens.tolist() == enc
    assert _valid_diff(lp.numpy(), r[f"{clip}_logprobs"], enc) < 1e-4
    assert _valid_diff(lp_nemo_feats.numpy(), r[f"{clip}_logprobs"], enc) < 1e-4
    ids = lp.argmax(-1).numpy()
    for i, n in enumerate(enc):
        assert np.array_equal(ids[i, :n], r[f"{clip}_greedy_ids"][i, :n])


def test_se_fixture_loads_its_se_weights():
    m, nm = _model("quartznet_tiny_se")
    assert [b.se for b in nm.model_config.blocks] == [False, True, True, True, False, False]
    with tarfile.open(NEMO / "quartznet_tiny_se" / "model.nemo") as tar:
        sd = torch.load(io.BytesIO(tar.extractfile("./model_weights.ckpt").read()), weights_only=True)
    assert torch.equal(m.blocks[2].se.fc1.weight, sd["encoder.encoder.2.mconv.8.fc.0.weight"])
    assert torch.equal(m.blocks[3].se.fc2.weight, sd["encoder.encoder.3.mconv.8.fc.2.weight"])


def _members(name="quartznet_tiny"):
    with tarfile.open(NEMO / name / "model.nemo") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _write_tar(path, members, prefix="./", compress=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name.removeprefix("./"))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = gzip.compress(buf.getvalue()) if compress else buf.getvalue()
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("prefix,compress", [("", False), ("./", True), ("", True)])
def test_gzip_and_prefix_variants_load_identically(tmp_path, prefix, compress):
    ref = load_nemo(NEMO / "quartznet_tiny" / "model.nemo")
    nm = load_nemo(_write_tar(tmp_path / "m.nemo", _members(), prefix, compress))
    assert nm.labels == ref.labels
    assert all(torch.equal(nm.state_dict[k], v) for k, v in ref.state_dict.items())


def _run_transfer(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "transfer.py"), *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


def _bad_archives(tmp_path):
    good = _members()
    cfg = yaml.safe_load(good["./model_config.yaml"])
    not_qn = dict(cfg, encoder={"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 64})
    wide = yaml.safe_load(good["./model_config.yaml"])
    wide["encoder"]["jasper"][1]["filters"] = 96
    (tmp_path / "text.nemo").write_text("this is not an archive\n")
    return {
        "not a .nemo archive": tmp_path / "text.nemo",
        "no model_weights.ckpt": _write_tar(tmp_path / "a.nemo", {"./model_config.yaml": good["./model_config.yaml"]}),
        "no model_config.yaml": _write_tar(tmp_path / "b.nemo", {"./model_weights.ckpt": good["./model_weights.ckpt"]}),
        "not a QuartzNet": _write_tar(
            tmp_path / "c.nemo", dict(good, **{"./model_config.yaml": yaml.safe_dump(not_qn).encode()})
        ),
        "shape mismatch": _write_tar(
            tmp_path / "d.nemo", dict(good, **{"./model_config.yaml": yaml.safe_dump(wide).encode()})
        ),
        "cannot be loaded safely": _write_tar(
            tmp_path / "e.nemo", dict(good, **{"./model_weights.ckpt": good["./model_weights.ckpt"][:5000]})
        ),
    }


def test_bad_nemo_files_raise_one_clear_error(tmp_path):
    for reason, path in _bad_archives(tmp_path).items():
        with pytest.raises(NemoError) as e:
            load_nemo(path)
        msg = str(e.value)
        assert msg.startswith(str(path)) and reason in msg and "\n" not in msg


def test_transfer_cli_bad_input_exits_nonzero_and_writes_nothing(tmp_path):
    for reason, path in list(_bad_archives(tmp_path).items())[:4]:
        out = tmp_path / "out" / "m.pt"
        r = _run_transfer(path, "-o", out)
        assert r.returncode == 2
        assert reason in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not out.parent.exists() or not any(out.parent.iterdir())


def test_transfer_cli_writes_a_checkpoint_that_reproduces_nemo(tmp_path, reference):
    out = tmp_path / "tiny.pt"
    r = _run_transfer(NEMO / "quartznet_tiny" / "model.nemo", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "66,978" in r.stdout and "wrote" in r.stdout
    model, feat_cfg, labels, ckpt = checkpoint.load_model(out)
    assert feat_cfg.normalize == "per_feature" and len(labels) == 33
    ref = reference["quartznet_tiny"]
    with torch.no_grad():
        lp, _ = model(torch.from_numpy(ref["utt2_features"]), torch.from_numpy(ref["utt2_feature_lengths"]))
    assert np.abs(lp.numpy() - ref["utt2_logprobs"]).max() < 1e-4


def test_transfer_options_se_labels_normalize(tmp_path):
    out = tmp_path / "x.pt"
    r = _run_transfer(
        NEMO / "quartznet_tiny" / "model.nemo", "-o", out, "--se", "--labels", " abc", "--normalize", "none"
    )
    assert r.returncode == 0, r.stderr
    assert "Squeeze-Excite" in r.stdout and "blocks [1, 2, 3]" in r.stdout and "decoder re-initialized" in r.stdout
    model, feat_cfg, labels, _ = checkpoint.load_model(out)
    assert labels == [" ", "a", "b", "c"] and model.cfg.num_classes == 5 and feat_cfg.normalize == "none"
    nm = load_nemo(NEMO / "quartznet_tiny" / "model.nemo")
    assert torch.equal(model.blocks[1].subs[0].dw.weight, nm.state_dict["blocks.1.subs.0.dw.weight"])
    assert model.blocks[1].se is not None


def test_a_yaml_error_is_one_short_line_with_its_position(tmp_path):
    cfg = _members()["./model_config.yaml"]
    broken = cfg.replace(b"\n", b"\nbad: [1, 2\n", 1)  # an unclosed list on line 2
    path = _write_tar(tmp_path / "m.nemo", dict(_members(), **{"./model_config.yaml": broken}))
    with pytest.raises(NemoError) as e:
        load_nemo(path)
    # PyYAML's own text: "while parsing a flow sequence\n  in "<unicode string>", line 2, ...\n    bad: [1, 2\n ^"
    assert str(e.value).startswith(f"{path}: model_config.yaml is not valid YAML (line 3, column ")
    assert "<unicode string>" not in str(e.value) and "^" not in str(e.value) and len(str(e.value)) < 300
    r = _run_transfer(path, "-o", tmp_path / "m.pt")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "expected ',' or ']'" in r.stderr


def test_a_preprocessor_that_is_not_a_mapping_is_refused(tmp_path):
    cfg = yaml.safe_load(_members()["./model_config.yaml"])
    for i, value in enumerate([[64, 16000], 64, None, "AudioToMelSpectrogramPreprocessor"]):
        cfg["preprocessor"] = value  # its feature settings would otherwise fall back to defaults without a word
        config = yaml.safe_dump(cfg).encode()
        path = _write_tar(tmp_path / f"{i}.nemo", dict(_members(), **{"./model_config.yaml": config}))
        with pytest.raises(NemoError) as e:
            load_nemo(path)
        assert str(e.value) == f"{path}: preprocessor must be a mapping of feature settings, not {str(value)!r}"
    r = _run_transfer(path, "-o", tmp_path / "m.pt")  # the last one
    assert r.returncode == 2 and r.stderr == f"error: {e.value}\n" and not (tmp_path / "m.pt").exists()


def test_transfer_to_a_full_disk_is_one_line_and_leaves_no_file(tmp_path):
    r = _run_transfer(NEMO / "quartznet_tiny" / "model.nemo", "-o", "/dev/full")
    assert r.returncode == 2 and r.stderr.startswith("error: /dev/full: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and "No space left on device" in r.stderr


def test_transfer_refuses_to_write_over_its_input(tmp_path):
    nemo = tmp_path / "v.nemo"
    nemo.write_bytes((NEMO / "quartznet_tiny" / "model.nemo").read_bytes())
    r = _run_transfer(nemo, "-o", nemo)
    assert r.returncode == 2 and r.stderr == f"error: {nemo}: is the input {nemo}; writing there would destroy it\n"
    assert nemo.read_bytes() == (NEMO / "quartznet_tiny" / "model.nemo").read_bytes()
