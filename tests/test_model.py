import torch

from proslushka.model import QuartzNet, count_parameters, preset


def test_quartznet15x5_parameter_count():
    # NeMo's QuartzNet15x5 with 33 Russian labels + blank: 18,929,506 (NEMO.md §1.1, NeMo fixtures README)
    assert count_parameters(QuartzNet(preset("15x5"))) == 18_929_506


def test_output_shape_and_lengths():
    m = QuartzNet(preset("tiny")).eval()
    lp, lens = m(torch.randn(2, 64, 160), torch.tensor([160, 75]))
    assert lp.shape == (2, 80, 34)
    assert lens.tolist() == [80, 38]  # ceil(T / 2)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 80), atol=1e-5)


def test_padded_clip_gives_same_log_probs_as_alone():
    torch.manual_seed(0)
    for se in (False, True):
        m = QuartzNet(preset("tiny", se=se)).eval()
        for p in m.parameters():  # non-trivial BN so padding leaks would show
            p.data.add_(0.1 * torch.randn_like(p))
        x = torch.randn(1, 64, 97)
        alone, n = m(x, torch.tensor([97]))
        padded = torch.cat([x, 5 * torch.randn(1, 64, 63)], dim=2)
        other = torch.randn(1, 64, 160)
        batch, bn = m(torch.cat([padded, other]), torch.tensor([97, 160]))
        assert bn[0] == n[0]
        assert (batch[0, : n[0]] - alone[0, : n[0]]).abs().max() < 1e-5


def test_training_masks_every_convolution_input(monkeypatch):
    """As NeMo's MaskedConv1d: in training every convolution, 1x1 ones included, sees zeros past each clip's length
    (BatchNorm's batch statistics cover padded frames too). In eval the 1x1 ones may skip it (no valid frame sees
    padding through them)."""
    from proslushka import model as model_py

    torch.manual_seed(0)
    m = QuartzNet(preset("tiny")).train()
    seen = []
    conv = model_py._conv

    def spy(c, x):
        if c.kernel_size[-1] == 1 and c is not m.decoder:
            seen.append(x.detach())
        return conv(c, x)

    monkeypatch.setattr(model_py, "_conv", spy)
    m(torch.randn(2, 64, 120), torch.tensor([120, 70]))
    assert len(seen) == sum(len(b.subs) for b in m.blocks) + sum(b.res_conv is not None for b in m.blocks)
    for x in seen:  # every 1x1 conv runs after the first block's stride 2: 60 frames, 35 valid in the second clip
        assert x.shape[-1] == 60
        assert x[1, ..., 35:].abs().max() == 0 and x[1, ..., :35].abs().max() > 0


def test_planar_twin_computes_what_the_model_does():
    """onnx_export.planar (the export's copy: Conv2d modules of 1 x K) on a padded batch, SE included."""
    from proslushka.onnx_export import planar

    torch.manual_seed(0)
    for se in (False, True):
        m = QuartzNet(preset("tiny", se=se)).eval()
        for p in m.parameters():
            p.data.add_(0.1 * torch.randn_like(p))
        x, lengths = torch.randn(3, 64, 131), torch.tensor([131, 77, 20])
        want, want_len = m(x, lengths)
        got, got_len = planar(m)(x, lengths)
        assert torch.equal(got_len, want_len)
        for i, n in enumerate(want_len.tolist()):
            assert (got[i, :n] - want[i, :n]).abs().max() < 1e-5


def test_channels_last_form_computes_the_conv1d_form():
    """The model runs [B, C, 1, T] time-major with 1 x K Conv2d (a dilated depthwise conv folded into [T/2, 2]);
    NeMo's form is [B, C, T] and Conv1d (onnx_export.Conv1dForm runs the same modules so). In float64, training mode,
    a padded batch with odd lengths: the same log-probs and the same gradients."""
    from proslushka.onnx_export import Conv1dForm

    torch.manual_seed(0)
    for se in (False, True):
        m = QuartzNet(preset("tiny", se=se)).double().train()
        assert any(b.dilation > 1 for b in m.cfg.blocks)
        x, lengths = torch.randn(3, 64, 151, dtype=torch.float64), torch.tensor([151, 98, 33])
        results = []
        for forward in (m, Conv1dForm(m)):
            m.zero_grad()
            lp, n = forward(x, lengths)
            (lp[:, :, :5].sum() + lp.exp()[:, :, 7].sum()).backward()
            results.append((lp.detach(), n, [p.grad.clone() for p in m.parameters()]))
        (a, na, ga), (b, nb, gb) = results
        assert torch.equal(na, nb)
        assert (a - b).abs().max() < 1e-10
        assert max(float((u - v).abs().max()) for u, v in zip(ga, gb, strict=True)) < 1e-9
