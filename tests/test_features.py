import numpy as np
import pytest
import torch
from conftest import CLIPS

from proslushka.features import FeatureConfig, LogMel, log_mel_numpy, mel_filterbank, num_frames, padded_frames

NEMO_CFG = FeatureConfig(normalize="per_feature")


@pytest.mark.parametrize("clip", CLIPS)
def test_numpy_and_torch_match_nemo(reference, clip):
    r = reference["quartznet_tiny"]
    wave, ref = r[f"{clip}_waveform"].reshape(-1), r[f"{clip}_features"][0]
    n = int(r[f"{clip}_feature_lengths"][0])
    feats, valid = log_mel_numpy(wave, NEMO_CFG)
    assert valid == n and feats.shape == ref.shape
    assert np.abs(feats[:, :n] - ref[:, :n]).max() < 1e-4
    assert np.all(feats[:, n:] == 0)
    t, tl = LogMel(NEMO_CFG).eval()(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    assert int(tl[0]) == n and t.shape[1:] == ref.shape
    assert np.abs(t[0].numpy() - ref).max() < 1e-4


def test_torch_batch_matches_nemo_batch(reference):
    r = reference["quartznet_tiny"]
    feats, lengths = LogMel(NEMO_CFG).eval()(
        torch.from_numpy(r["batch_waveform"]), torch.from_numpy(r["batch_waveform_lengths"])
    )
    assert lengths.tolist() == r["batch_feature_lengths"].tolist()
    assert feats.shape == r["batch_features"].shape
    for i, n in enumerate(lengths.tolist()):
        assert np.abs(feats[i, :, :n].numpy() - r["batch_features"][i, :, :n]).max() < 1e-4


def test_filterbank_matches_the_one_inside_the_nemo_file():
    import io
    import tarfile

    from conftest import NEMO

    with tarfile.open(NEMO / "quartznet_tiny" / "model.nemo") as tar:
        sd = torch.load(io.BytesIO(tar.extractfile("./model_weights.ckpt").read()), weights_only=True)
    assert np.abs(sd["preprocessor.featurizer.fb"][0].numpy() - mel_filterbank(NEMO_CFG)).max() < 1e-6


@pytest.mark.parametrize("normalize", ["none", "per_feature"])
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_numpy_matches_torch(normalize, pad_mode):
    cfg = FeatureConfig(normalize=normalize, pad_mode=pad_mode)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9999, 4321)]
    batch = np.zeros((3, 16000), np.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    t, tl = LogMel(cfg).eval()(torch.from_numpy(batch), torch.tensor([len(w) for w in waves]))
    for i, w in enumerate(waves):
        f, n = log_mel_numpy(w, cfg)
        assert n == int(tl[i]) == num_frames(len(w), cfg)
        assert f.shape[1] == padded_frames(len(w), cfg)
        if pad_mode == "constant":  # reflect padding reads past a padded clip's end, so only the alone case holds
            assert np.abs(t[i, :, :n].numpy() - f[:, :n]).max() < 1e-4
        assert np.all(t[i, :, n:].numpy() == 0)


def test_frame_counts():
    cfg = FeatureConfig()
    assert [num_frames(n, cfg) for n in (22480, 63842, 66720)] == [140, 399, 417]
    assert [padded_frames(n, cfg) for n in (22480, 63842, 66720)] == [144, 400, 432]
    assert num_frames(16001, FeatureConfig(pad_mode="reflect")) == 101


def test_dither_only_in_training():
    m = LogMel(FeatureConfig(dither=1e-5))
    x = torch.zeros(1, 3200)
    m.eval()
    assert torch.equal(m(x, torch.tensor([3200]))[0], m(x, torch.tensor([3200]))[0])
    m.train()
    assert not torch.equal(m(x, torch.tensor([3200]))[0], m(x, torch.tensor([3200]))[0])
