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
