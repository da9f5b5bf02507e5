"""grow: a wider and deeper model that computes what the trained smaller one does (eval mode exactly, training mode
on the calibration clip), with copied channels free to drift apart."""

import copy
from dataclasses import replace

import pytest
import torch

from proslushka import checkpoint
from proslushka.features import FeatureConfig
from proslushka.grow import GrowError, calibrate, grow
from proslushka.model import ModelConfig, QuartzNet, preset
from proslushka.text import LABELS
from tests.conftest import ROOT, trained_looking
from tools import grow_checkpoint


def bigger(cfg: ModelConfig, width: list[int], repeat: list[int]) -> ModelConfig:
    blocks = [replace(b, filters=w, repeat=r) for b, w, r in zip(cfg.blocks, width, repeat, strict=True)]
    return replace(cfg, blocks=blocks)


TINY = preset("tiny")  # C1 64, three residual blocks 64x2, C2 64, C3 128
WIDE_DEEP = bigger(TINY, [96, 64, 160, 96, 80, 256], [1, 4, 3, 2, 1, 1])  # copies 1-for-1 and 2-for-1, 0-2 new subs


def features(seed: int, frames: int) -> torch.Tensor:
    return torch.randn(64, frames, generator=torch.Generator().manual_seed(seed))


def run(model: QuartzNet, x: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model(x, torch.tensor(lengths))


def test_the_grown_model_computes_the_same_in_eval_mode():
    src = trained_looking(TINY)
    dst, new_bns = grow(src, WIDE_DEEP)
    assert sum(p.numel() for p in dst.parameters()) > 2 * sum(p.numel() for p in src.parameters())
    assert new_bns == ["blocks.1.subs.1.bn", "blocks.1.subs.2.bn", "blocks.2.subs.1.bn"]
    x = torch.stack([features(1, 300), features(2, 300)])
    x[1, :, 180:] = 0
    (a, la), (b, lb) = run(src, x, [300, 180]), run(dst, x, [300, 180])
    assert torch.equal(la, lb)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    calibrate(dst, new_bns, [features(3, 200), features(4, 120)])  # still the same function in eval mode
    assert torch.allclose(run(dst, x, [300, 180])[0], a, atol=1e-4)


def test_calibration_makes_training_mode_match_and_keeps_the_old_batchnorms():
    src = trained_looking(TINY)
    clip = features(5, 240)  # its batch statistics are far from the stored ones: training mode differs from eval
    dst, new_bns = grow(src, WIDE_DEEP)
    old = {k: v.clone() for k, v in dst.state_dict().items() if not any(k.startswith(n[:-2]) for n in new_bns)}
    assert calibrate(dst, new_bns, [clip]) == 1
    after = dst.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in old.items())
    assert not dst.training
    src.train(), dst.train()
    a, _ = run(src, clip[None], [240])
    b, _ = run(dst, clip[None], [240])
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_copies_split_a_column_with_noise_that_sums_to_zero():
    src = trained_looking(TINY)
    for noise in (0.0, 0.1):
        dst, _ = grow(src, WIDE_DEEP, seed=3, noise=noise)
        w_src, w_dst = src.decoder.weight[:, :, 0], dst.decoder.weight[:, :, 0].detach()
        # C3 grows 128 -> 256: each old channel has two copies, c and one of 128..255
        rows = dst.blocks[-1].subs[0].conv.weight[:, :, 0].detach()
        c = 7
        twin = [j for j in range(128, 256) if torch.equal(rows[j], rows[c])]
        assert len(twin) == 1
        pair = w_dst[:, c] + w_dst[:, twin[0]]
        assert torch.allclose(pair, w_src[:, c], atol=1e-6)
        assert torch.equal(w_dst[:, c], w_dst[:, twin[0]]) == (noise == 0)


def test_the_same_seed_grows_the_same_model():
    src = trained_looking(TINY)
    a, _ = grow(src, WIDE_DEEP, seed=1)
    b, _ = grow(src, WIDE_DEEP, seed=1)
    c, _ = grow(src, WIDE_DEEP, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize(
    "target, why",
    [
        (bigger(TINY, [32, 64, 64, 64, 64, 128], [1, 2, 2, 2, 1, 1]), "fewer filters"),
        (bigger(TINY, [64, 64, 64, 64, 64, 128], [1, 1, 2, 2, 1, 1]), "fewer filters or repeats"),
        (bigger(TINY, [64, 64, 64, 64, 64, 128], [2, 2, 2, 2, 1, 1]), "block 0: new sub-blocks"),
        (replace(TINY, blocks=TINY.blocks[:-1]), "6 blocks in the source, 5"),
        (replace(TINY, blocks=[replace(TINY.blocks[0], kernel=13)] + TINY.blocks[1:]), "block 0: kernel"),
        (replace(TINY, blocks=[replace(b, se=b.residual) for b in TINY.blocks]), "Squeeze-Excite"),
        (replace(TINY, num_classes=40), "34 outputs in the source, 40"),
    ],
)
def test_a_target_that_is_not_a_grown_source_is_refused(target, why):
    with pytest.raises(GrowError, match=why):
        grow(trained_looking(TINY), target)


def test_tool_grows_small_into_medium(tmp_path, capsys):
    small = trained_looking(preset("small"))
    checkpoint.save(tmp_path / "small.pt", checkpoint.make(small, FeatureConfig(), list(LABELS)))
    manifest = str(ROOT / "samples" / "manifest.jsonl")
    argv = [str(tmp_path / "small.pt"), "--model", "medium", "-o", str(tmp_path / "m.pt"), "--calibrate", manifest]
    assert grow_checkpoint.main(argv) == 0
    assert "1,200,098 -> 3,801,250 parameters" in capsys.readouterr().out
    medium, _, labels, ckpt = checkpoint.load_model(tmp_path / "m.pt")
    assert medium.cfg == preset("medium") and labels == list(LABELS) and ckpt["source"].endswith("small.pt")
    x = features(6, 200)[None]
    assert torch.allclose(run(small, x, [200])[0], run(medium, x, [200])[0], atol=1e-4)

    # one-line errors, nothing written: a target it cannot grow into, an unknown preset, a missing manifest
    for args, code, where in [
        (["--model", "tiny"], 2, "8 blocks in the source, 6"),
        (["--model", "huge"], 2, "--model: unknown model preset"),
        (["--model", "medium", "--calibrate", str(tmp_path / "none.jsonl")], 1, "none.jsonl"),
    ]:
        argv = [str(tmp_path / "small.pt"), "-o", str(tmp_path / "x.pt"), "--calibrate", manifest] + args
        assert grow_checkpoint.main(argv) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and where in err[0], err
    assert not (tmp_path / "x.pt").exists()


def test_source_model_is_left_unchanged():
    src = trained_looking(TINY)
    before = copy.deepcopy(src.state_dict())
    dst, new_bns = grow(src, WIDE_DEEP)
    calibrate(dst, new_bns, [features(7, 100)])
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in before.items())
