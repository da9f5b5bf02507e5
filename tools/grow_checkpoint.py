"""Grow a trained checkpoint into a wider and deeper preset that computes the same function, for `train.py --init`:
a bigger model that starts where the smaller one ended instead of in CTC's all-blank stage (proslushka/grow.py).

    python tools/grow_checkpoint.py runs/demo2-stage5/best.pt --model medium -o runs/medium-grown.pt \
        --calibrate data/ru-synth/train/manifest.jsonl

The target preset must have the source's blocks (kernels, strides) with at least as many filters and repeats
(small -> medium: 1.5x the width, 3 -> 5 sub-blocks). --calibrate measures the statistics of the new BatchNorms'
input on --clips clips of that manifest, so that training mode also starts close to the source model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint of train.py, transfer.py or tools/onnx_to_checkpoint.py")
    p.add_argument("--model", required=True, help="the preset to grow into (e.g. medium)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--calibrate", metavar="MANIFEST", required=True, help="measure the new BatchNorms on its clips")
    p.add_argument("--clips", type=int, default=64, help="clips to calibrate on (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="draws the copied channels and the split noise")
    p.add_argument("--noise", type=float, default=0.1, help="split noise, relative (default: %(default)s)")
    args = p.parse_args(argv)
    if not 1 <= args.clips <= 10_000 or not 0 <= args.noise <= 1:
        p.error("--clips must be in [1, 10000] and --noise in [0, 1]")

    from proslushka import checkpoint
    from proslushka.audio import AudioError
    from proslushka.cli import fail, os_error
    from proslushka.grow import GrowError, calibrate, grow
    from proslushka.model import count_parameters, preset
    from proslushka.onnx_import import manifest_clips

    try:
        src, feature_config, labels, _ = checkpoint.load_model(args.checkpoint)
    except checkpoint.CheckpointError as e:
        return fail(e, 2)
    try:
        target = preset(args.model, num_classes=src.cfg.num_classes)
    except ValueError as e:  # an unknown preset
        return fail(f"--model: {e}", 2)
    try:
        model, new_bns = grow(src, target, seed=args.seed, noise=args.noise)
    except GrowError as e:
        return fail(e, 2)
    try:
        n = calibrate(model, new_bns, manifest_clips(args.calibrate, labels, feature_config, args.clips))
    except (OSError, ValueError, AudioError) as e:
        return fail(e, 1)
    print(
        f"grew {count_parameters(src):,} -> {count_parameters(model):,} parameters ({args.model}); "
        f"{len(new_bns)} new sub-blocks calibrated on {n} clips of {args.calibrate}"
    )
    try:
        checkpoint.save(args.output, checkpoint.make(model, feature_config, labels, source=str(args.checkpoint)))
    except OSError as e:
        return fail(os_error(e, args.output), 1)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
