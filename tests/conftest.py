import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
NEMO = DATA / "nemo"
AUDIO = NEMO / "audio"
MODELS = ["quartznet_tiny", "quartznet_tiny_se"]
CLIPS = ["utt1", "utt2", "utt3"]

sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def reference():
    import numpy as np

    return {m: dict(np.load(NEMO / m / "reference.npz")) for m in MODELS}


def trained_looking(cfg=None, seed: int = 0):
    """A QuartzNet (tiny unless `cfg` says otherwise) whose BatchNorms are far from the identity, as after
    training, so that folding, growing or calibrating them matters. In eval mode."""
    import torch

    from proslushka.model import QuartzNet, preset

    torch.manual_seed(seed)
    model = QuartzNet(cfg or preset("tiny"))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            c = m.num_features
            m.weight.data = torch.rand(c) + 0.5
            m.bias.data = torch.randn(c) * 0.1
            m.running_mean = torch.randn(c) * 0.2
            m.running_var = torch.rand(c) * 2 + 0.1
    return model.eval()
