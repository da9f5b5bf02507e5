"""How much of each batch is padding: DurationBucketSampler vs random batches of the same size.

python bench/padding.py [--manifest data/ru-synth/train/manifest.jsonl] [--batch_size 32] [--batch_seconds 120]
Frames are 10 ms feature frames (duration × 100); padding fraction = padded frames / all frames in the batches.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from proslushka.data import DurationBucketSampler, read_manifest  # noqa: E402


def padding(batches: list, frames: np.ndarray) -> tuple[float, float]:
    """(padding fraction, padded frames per batch on average)."""
    padded = sum(frames[b].max() * len(b) for b in batches)
    real = sum(frames[b].sum() for b in batches)
    return 1 - real / padded, padded / len(batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default="data/ru-synth/train/manifest.jsonl")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--batch_seconds", type=float, default=None, help="size bucket batches by padded seconds")
    p.add_argument("--epochs", type=int, default=3, help="epochs to average over")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    # only durations matter here: skip the audio checks and any bad rows
    utts = read_manifest(args.manifest, skip_bad=True, check_audio=False)
    frames = np.round(np.array(utts.durations) * 100).astype(np.int64)
    print(utts.summary())

    kwargs = {"batch_seconds": args.batch_seconds} if args.batch_seconds else {"batch_size": args.batch_size}
    sampler = DurationBucketSampler(utts.durations, seed=args.seed, **kwargs)
    rng = np.random.default_rng(args.seed)
    rows = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        bucket = list(sampler)
        size = round(len(frames) / len(bucket))  # random batches with the bucket batches' mean size
        order = rng.permutation(len(frames))
        random = [order[i : i + size] for i in range(0, len(order), size)]
        rows.append((*padding(bucket, frames), *padding(random, frames), len(bucket), size))
    bucket_pad, bucket_frames, random_pad, random_frames, n_batches, size = np.mean(rows, axis=0)

    what = f"batch_seconds {args.batch_seconds:g}" if args.batch_seconds else f"batch_size {args.batch_size}"
    print(f"{len(frames)} clips, {what}, {n_batches:.0f} batches of {size:.0f} clips on average, {args.epochs} epochs")
    print(f"{'':24}{'bucketed':>12}{'random':>12}{'random/bucketed':>18}")
    print(f"{'padding fraction':24}{bucket_pad:12.2%}{random_pad:12.2%}{random_pad / bucket_pad:18.1f}")
    print(f"{'frames per batch':24}{bucket_frames:12.0f}{random_frames:12.0f}{random_frames / bucket_frames:18.2f}")


if __name__ == "__main__":
    main()
