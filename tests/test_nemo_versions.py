"""Every .nemo layout NeMo has written for QuartzNet, rebuilt from the NeMo 3.0.0 fixtures (config rewritten the
way each version wrote it, weights repacked), and the hostile configs a .nemo can carry."""

import gzip
import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import yaml
from conftest import NEMO, ROOT

from proslushka import checkpoint
from proslushka.features import FeatureConfig, LogMel, log_mel_numpy, num_frames
from proslushka.model import QuartzNet
from proslushka.nemo import NemoError, load_nemo


def _fixture(name="quartznet_tiny"):
    with tarfile.open(NEMO / name / "model.nemo") as tar:
        cfg = yaml.safe_load(tar.extractfile("./model_config.yaml").read())
        sd = torch.load(io.BytesIO(tar.extractfile("./model_weights.ckpt").read()), weights_only=True)
    return cfg, sd


def _legacy(cfg):
    """The NeMo 1.0.0b4 layout (examples/asr/conf/quartznet_15x5.yaml at r1.0.0b4): each module is cls + params,
    and no nemo_version."""
    out = {k: v for k, v in cfg.items() if k not in ("nemo_version", "decoding")}
    for module in ("preprocessor", "spec_augment", "encoder", "decoder"):
        params = {k: v for k, v in cfg[module].items() if k != "_target_"}
        out[module] = {"cls": cfg[module]["_target_"], "params": params}
    return out


def _pack(path, cfg, sd, compress=True, prefix="./", zip_format=True):
    """A .nemo as NeMo 1.0.0b4's save_to wrote it: tarfile 'w:gz', arcname './' (a './' folder member first)."""
    buf = io.BytesIO()
    ckpt = io.BytesIO()
    torch.save(sd, ckpt, _use_new_zipfile_serialization=zip_format)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if prefix:
            folder = tarfile.TarInfo(prefix)
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
        for name, data in (("model_config.yaml", yaml.safe_dump(cfg, allow_unicode=True).encode()),
                           ("model_weights.ckpt", ckpt.getvalue())):  # fmt: skip
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue()) if compress else buf.getvalue())
    return path


def _logprobs_from_nemo_features(nm, ref, clip="batch"):
    m = QuartzNet(nm.model_config)
    m.load_state_dict(nm.state_dict)
    with torch.no_grad():
        lp, lens = m.eval()(torch.from_numpy(ref[f"{clip}_features"]), torch.from_numpy(ref[f"{clip}_feature_lengths"]))
    return lp.numpy(), lens.tolist()


@pytest.mark.parametrize("name", ["quartznet_tiny", "quartznet_tiny_se"])
def test_golos_era_file_loads_exactly(tmp_path, reference, name):
    cfg, sd = _fixture(name)
    nm = load_nemo(_pack(tmp_path / "b4.nemo", _legacy(cfg), sd))
    ref = load_nemo(NEMO / name / "model.nemo")
    assert nm.layout == "gzip tar, './' member names"
    assert "1.0.0 beta" in nm.era.name and "cls/params" in nm.era.evidence
    assert (nm.feature_config.pad_mode, nm.feature_config.valid_frames) == ("reflect", "ceil")
    assert nm.labels == ref.labels and nm.model_config == ref.model_config
    assert set(nm.state_dict) == set(ref.state_dict)
    assert all(torch.equal(nm.state_dict[k], v) for k, v in ref.state_dict.items())
    lp, lens = _logprobs_from_nemo_features(nm, reference[name])
    enc = reference[name]["batch_encoded_lengths"].tolist()
    assert lens == enc
    want = reference[name]["batch_logprobs"]
    assert max(float(np.abs(lp[i, :n] - want[i, :n]).max()) for i, n in enumerate(enc)) < 1e-4


@pytest.mark.parametrize(
    "version,compress,pad_mode,frames",
    [(None, True, "reflect", "floor+1"), ("1.7.0", False, "reflect", "floor+1"), ("2.4.1", False, "reflect", "floor+1"),
     ("2.5.0rc0", False, "constant", "floor"), ("3.0.0", False, "constant", "floor")],
)  # fmt: skip
def test_era_from_version_and_packing(tmp_path, version, compress, pad_mode, frames):
    cfg, sd = _fixture()
    cfg = {k: v for k, v in cfg.items() if k != "nemo_version"} | ({"nemo_version": version} if version else {})
    nm = load_nemo(_pack(tmp_path / "m.nemo", cfg, sd, compress=compress, prefix="" if compress else "./"))
    assert (nm.feature_config.pad_mode, nm.feature_config.valid_frames) == (pad_mode, frames)
    assert nm.era.name == (f"NeMo {version}" if version else "NeMo 1.0 to 1.6")


def test_pre_torch_1_6_weights_serialization_loads(tmp_path):
    # torch < 1.6 wrote the legacy (non-zip) format; which one Golos's file uses is not known (NEMO.md §4)
    cfg, sd = _fixture()
    nm = load_nemo(_pack(tmp_path / "m.nemo", _legacy(cfg), sd, zip_format=False))
    ref = load_nemo(NEMO / "quartznet_tiny" / "model.nemo")
    assert all(torch.equal(nm.state_dict[k], v) for k, v in ref.state_dict.items())


def test_conv_mask_false_keys_are_plain_conv1d(tmp_path):
    cfg, sd = _fixture()
    cfg = _legacy(cfg)
    cfg["encoder"]["params"]["conv_mask"] = False
    plain = {k.replace(".conv.weight", ".weight"): v for k, v in sd.items()}  # nn.Conv1d instead of MaskedConv1d
    nm = load_nemo(_pack(tmp_path / "m.nemo", cfg, plain))
    ref = load_nemo(NEMO / "quartznet_tiny" / "model.nemo")
    assert all(torch.equal(nm.state_dict[k], v) for k, v in ref.state_dict.items())
    assert any("conv_mask: false" in n for n in nm.notes)


def test_golos_era_features_numpy_and_torch_agree_on_ceil_frames(reference):
    cfg = FeatureConfig(normalize="per_feature", pad_mode="reflect", valid_frames="ceil")
    wave = reference["quartznet_tiny"]["utt1_waveform"]
    assert num_frames(len(wave), cfg) == -(-len(wave) // 160) == 141  # 22,480 samples: 140.5 frames
    feats, n = log_mel_numpy(wave, cfg)
    t, tn = LogMel(cfg).eval()(torch.from_numpy(wave[None]), torch.tensor([len(wave)]))
    assert n == int(tn[0]) == 141
    assert np.abs(feats[:, :n] - t[0, :, :n].numpy()).max() < 1e-4
    assert not feats[:, n:].any()
    plus1 = FeatureConfig(pad_mode="reflect", valid_frames="floor+1")
    assert num_frames(16000, plus1) == 101 and num_frames(16000, FeatureConfig()) == 100


def test_old_feature_dicts_keep_their_meaning():
    # checkpoints and ONNX files written before valid_frames existed carry only pad_mode
    assert FeatureConfig.from_dict({"pad_mode": "reflect"}).valid_frames == "ceil"
    assert FeatureConfig.from_dict({"pad_mode": "constant"}).valid_frames == "floor"
    with pytest.raises(ValueError):
        FeatureConfig(valid_frames="round")


def _transfer(*args):
    return subprocess.run([sys.executable, str(ROOT / "transfer.py"), *map(str, args)], capture_output=True, text=True)


def test_transfer_says_what_it_detected_and_options_override(tmp_path):
    cfg, sd = _fixture()
    path = _pack(tmp_path / "golos_like.nemo", _legacy(cfg), sd)
    r = _transfer(path, "-o", tmp_path / "a.pt")
    assert r.returncode == 0, r.stderr
    assert "detected NeMo 1.0.0 beta" in r.stdout and "gzip tar" in r.stdout and "valid frames ceil" in r.stdout
    assert checkpoint.load_model(tmp_path / "a.pt")[1].valid_frames == "ceil"
    r = _transfer(path, "-o", tmp_path / "b.pt", "--pad_mode", "constant", "--valid_frames", "floor")
    assert r.returncode == 0, r.stderr
    assert "pad_mode: constant (given) instead of reflect" in r.stdout
    feat = checkpoint.load_model(tmp_path / "b.pt")[1]
    assert (feat.pad_mode, feat.valid_frames) == ("constant", "floor")


def _bad_configs():
    cfg, _ = _fixture()
    legacy = _legacy(cfg)

    def edit(fn):
        c = yaml.safe_load(yaml.safe_dump(legacy, allow_unicode=True))
        fn(c)
        return yaml.safe_dump(c, allow_unicode=True).encode()

    enc = lambda c: c["encoder"]["params"]  # noqa: E731
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"  # "billion laughs": each level quadruples the one before
    for i in range(9):
        prev, cur = chr(97 + i), chr(98 + i)
        bomb += f"{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}]\n"
    return {
        "YAML aliases": bomb.encode(),
        "nested deeper": ("x: " + "[" * 200 + "]" * 200 + "\n").encode(),
        "sample_rate=0 is out of range": edit(lambda c: c["preprocessor"]["params"].update(sample_rate=0)),
        "kernel=0 is out of range": edit(lambda c: enc(c)["jasper"][1].update(kernel=[0])),
        "filters must be an integer": edit(lambda c: enc(c)["jasper"][1].update(filters="many")),
        "parameters (at most": edit(lambda c: [b.update(filters=8000) for b in enc(c)["jasper"]]),
        "repeat=1000 is out of range": edit(lambda c: enc(c)["jasper"][1].update(repeat=1000)),
        "num_classes=7": edit(lambda c: c["decoder"]["params"].update(num_classes=7)),
        "distinct single characters": edit(lambda c: c.update(labels=["ab", "c"])),
        "window_stride": edit(lambda c: c["preprocessor"]["params"].update(window_stride=0.05)),
        "must be true or false": edit(lambda c: enc(c)["jasper"][1].update(residual="yes")),
    }


def test_hostile_configs_get_one_line_errors(tmp_path):
    _, sd = _fixture()
    for i, (reason, data) in enumerate(_bad_configs().items()):
        path = tmp_path / f"bad{i}.nemo"
        buf, ckpt = io.BytesIO(), io.BytesIO()
        torch.save(sd, ckpt)
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, blob in (("./model_config.yaml", data), ("./model_weights.ckpt", ckpt.getvalue())):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        path.write_bytes(buf.getvalue())
        with pytest.raises(NemoError) as e:
            load_nemo(path)
        msg = str(e.value)
        assert msg.startswith(str(path)) and reason in msg and "\n" not in msg, (reason, msg)


def test_transfer_refuses_an_unwritable_output_before_reading(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _transfer(NEMO / "quartznet_tiny" / "model.nemo", "-o", blocker / "m.pt")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and str(blocker) in r.stderr
    r = _transfer(NEMO / "quartznet_tiny" / "model.nemo", "-o", tmp_path)
    assert r.returncode == 2 and "is a folder" in r.stderr


def test_nemo_0_11_archives_are_refused_with_a_reason(tmp_path):
    # NeMo 0.11's NeMoModel.export: a gzip tar of .nemo_tmp/ with one .pt per module (docs/nemo-versions.md)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in (".nemo_tmp/QuartzNet.yaml", ".nemo_tmp/JasperEncoder.pt", ".nemo_tmp/JasperDecoderForCTC.pt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    path = tmp_path / "QuartzNet15x5-En-Base.nemo"
    path.write_bytes(buf.getvalue())
    with pytest.raises(NemoError, match="NeMo 0.x NeMoModel archive"):
        load_nemo(path)
