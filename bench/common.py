"""What several benches share: the load-average line printed beside their figures, and QuartzNet exports with random
weights (speed does not depend on the values; the seed makes every bench's 15x5 the same network)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def random_model(folder: Path, name: str = "15x5", planar: bool = True) -> Path:
    """The preset with random weights (seed 0) exported to folder/NAME.onnx as export.py writes it, or with
    planar=False to folder/NAME-1d.onnx as the 1-D graph NeMo's exporter writes (Conv1d). Needs torch."""
    import torch

    from proslushka.features import FeatureConfig
    from proslushka.model import QuartzNet, preset
    from proslushka.onnx_export import save, to_onnx
    from proslushka.text import LABELS

    torch.manual_seed(0)
    path = folder / f"{name}{'' if planar else '-1d'}.onnx"
    save(to_onnx(QuartzNet(preset(name)).eval(), FeatureConfig(), list(LABELS), planar_graph=planar), path)
    return path
