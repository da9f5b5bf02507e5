"""Export a Proslushka checkpoint to ONNX (labels and feature settings in the metadata), then check it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default="models/model.pt", help="checkpoint .pt (default: %(default)s)")
    p.add_argument("-o", "--output", help="ONNX file to write (default: the checkpoint's path with .onnx)")
    args = p.parse_args(argv)

    from proslushka import checkpoint, onnx_export

    out = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(".onnx")
    try:
        model, feat_cfg, labels, _ = checkpoint.load_model(args.checkpoint)
    except checkpoint.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    t0 = time.time()
    proto = onnx_export.to_onnx(model, feat_cfg, labels)
    diff = onnx_export.compare(model, proto)
    if diff > 1e-4:
        print(f"error: onnxruntime differs from torch by {diff:.2e} (> 1e-4); nothing written", file=sys.stderr)
        return 1
    onnx_export.save(proto, out)
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.1f} MB, opset {onnx_export.OPSET}) in {time.time() - t0:.1f}s")
    print(f"onnxruntime vs torch on two clips of different length: max abs diff {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
