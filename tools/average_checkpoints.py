"""Average the weights of several checkpoints of one model (e.g. the last few of a run) into one checkpoint that
export.py and `train.py --init` take.

    python tools/average_checkpoints.py runs/x/snap-*.pt -o runs/x/averaged.pt

Every checkpoint must hold the same model config, labels and feature config. See proslushka.checkpoint.average.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoints (.pt) to average")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt)")
    args = p.parse_args(argv)

    from proslushka import checkpoint
    from proslushka.cli import fail, os_error
    from proslushka.files import check_not_input, check_writable

    try:
        check_not_input(args.output, args.checkpoints)  # before loading: -o a.pt a.pt b.pt would replace an input
        check_writable(args.output)
        ckpts = [checkpoint.load(path) for path in args.checkpoints]
        for ckpt, path in zip(ckpts, args.checkpoints, strict=True):
            # each builds, so an error names the input at fault; the mean of models that build builds too
            checkpoint.unpack(ckpt, path)
        averaged = checkpoint.average(ckpts, args.checkpoints)
        checkpoint.save(args.output, averaged)
    except ValueError as e:  # CheckpointError, and check_not_input's refusal
        return fail(e, 1)
    except OSError as e:
        return fail(os_error(e, args.output), 1)
    print(f"wrote {args.output}: the mean of {len(ckpts)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
