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
