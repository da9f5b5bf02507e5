"""Turn an ONNX model that export.py wrote (fp32 or int8) back into a checkpoint that `train.py --init` takes, for
fine-tuning a shipped model whose training checkpoint is gone (e.g. models/demo.onnx).

    python tools/onnx_to_checkpoint.py models/demo.onnx -o runs/demo-v1.pt \
        --calibrate data/ru-synth/train/manifest.jsonl

int8 weights are dequantized (their rounding stays). BatchNorm was folded into the convolutions at export; with
--calibrate each BatchNorm gets the statistics of its input on --clips clips of that manifest, so that training
mode (batch statistics) computes about what eval mode does. Without it the BatchNorms are the identity: exact in
eval mode, but training would start from a different function. See proslushka/onnx_import.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("onnx", help="model.onnx written by export.py")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--calibrate", metavar="MANIFEST", help="measure BatchNorm statistics on this manifest's clips")
    p.add_argument("--clips", type=int, default=64, help="clips to calibrate on (default: %(default)s)")
    args = p.parse_args(argv)
    if not 1 <= args.clips <= 10_000:
        p.error("--clips must be in [1, 10000]")

    from proslushka import checkpoint
    from proslushka.audio import AudioError
    from proslushka.cli import fail, os_error
    from proslushka.files import check_not_input, check_writable
    from proslushka.onnx_import import OnnxImportError, calibrate_batchnorm, from_onnx, manifest_clips

    try:  # before the import and the calibration, which take a while on a big model
        check_not_input(args.output, [args.onnx, *([args.calibrate] if args.calibrate else [])])
        check_writable(args.output)
    except ValueError as e:
        return fail(e, 1)
    except OSError as e:
        return fail(os_error(e, args.output), 1)
    try:
        model, feature_config, labels = from_onnx(args.onnx)
    except (OSError, OnnxImportError, ValueError) as e:
        return fail(f"{args.onnx}: {e}", 1)
    if args.calibrate:
        try:
            n = calibrate_batchnorm(model, manifest_clips(args.calibrate, labels, feature_config, args.clips))
        except (OSError, ValueError, AudioError) as e:
            return fail(e, 1)
        print(f"BatchNorm statistics from {n} clips of {args.calibrate}")
    try:
        checkpoint.save(args.output, checkpoint.make(model, feature_config, labels, source=str(args.onnx)))
    except OSError as e:  # the disk filled up meanwhile: atomic, so nothing half-written
        return fail(os_error(e, args.output), 1)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
