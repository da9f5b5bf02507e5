"""Train or fine-tune a QuartzNet CTC model on NeMo-style manifests (single process, or data-parallel via torchrun).

  python train.py --train_manifest data/train/manifest.jsonl --valid_manifest data/valid/manifest.jsonl \\
      --batch_size 32 --max_epochs 15 --accumulate 64 [--init models/quartznet15x5_golos.pt] [--resume runs/x/last.pt]
  torchrun --nproc_per_node 8 train.py ...
  python train.py --resume runs/x/last.pt          # continues a stopped run with its saved settings

With --resume, the checkpoint's settings are the run's; options given beside it change what may change on a resume
(the schedule, augmentation, logging; the data and batching at an epoch's end) and the others are refused.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None):
    from proslushka.settings import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument(
        "--train_manifest",
        nargs="+",
        help="JSONL (or CSV/TSV) with audio_filepath, text, "
        "duration; several are joined (each row's path relative to its own manifest)",
    )
    g.add_argument("--valid_manifest", help="validation manifest: loss, WER, CER and samples after each epoch")
    g.add_argument("--batch_size", type=int, default=d.batch_size, help="clips per batch (default: %(default)s)")
    g.add_argument("--batch_seconds", type=float, help="size batches by padded audio seconds instead")
    g.add_argument("--min_duration", type=float, help="drop training clips shorter than this (s)")
    g.add_argument(
        "--max_duration", type=float, default=d.max_duration, help="drop longer clips (default: %(default)s s)"
    )
    g.add_argument("--skip_bad", action="store_true", help="drop bad manifest rows (listed) instead of stopping")
    g.add_argument("--cache_dir", help="keep decoded audio here (int16) so later epochs skip ffmpeg")
    g.add_argument(
        "--num_workers", type=int, default=d.num_workers, help="data loader processes (default: %(default)s)"
    )
    g.add_argument(
        "--speed_perturb", type=float, nargs="*", default=[], help="speed rates to draw from, e.g. 0.9 1 1.1"
    )
    g.add_argument("--no_spec_augment", dest="spec_augment", action="store_false", help="turn SpecAugment off")
    g.add_argument("--rect_masks", type=int, default=d.rect_masks, help="SpecAugment rectangles (default: %(default)s)")
    g.add_argument(
        "--rect_freq", type=int, default=d.rect_freq, help="max mel bins per rectangle (default: %(default)s)"
    )
    g.add_argument("--rect_time", type=int, default=d.rect_time, help="max frames per rectangle (default: %(default)s)")
    g.add_argument(
        "--noise_prob",
        type=float,
        default=d.noise_prob,
        help="share of clips mixed with noise (white, "
        "pink, brown, babble of other clips, hum) at an SNR drawn from --snr_db (default: %(default)s)",
    )
    g.add_argument("--snr_db", type=float, nargs=2, default=d.snr_db, help="SNR range in dB (default: %(default)s)")
    g.add_argument(
        "--noise_kinds",
        nargs="+",
        default=d.noise_kinds,
        help="noise kinds to draw from, uniformly over the list: name one twice to draw it twice as often, e.g. "
        "white white pink brown babble babble babble hum (default: %(default)s)",
    )
    g.add_argument(
        "--gain_prob",
        type=float,
        default=d.gain_prob,
        help="share of clips at a random gain of -12..+6 dB (default: %(default)s)",
    )
    g.add_argument(
        "--silence_prob",
        type=float,
        default=d.silence_prob,
        help="share of clips given up to 1 s of "
        "silence (zeros or a low noise floor) before and after (default: %(default)s)",
    )
    g.add_argument(
        "--join_prob",
        type=float,
        default=d.join_prob,
        help="share of training items that are 2-3 clips joined with 0.3-2 s pauses between, so that pauses are "
        "learned as blank; the groups are fixed by --seed and bucketed by length (default: %(default)s)",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default=d.model, help="preset from scratch: 15x5, 5x5, medium, small, tiny (default: %(default)s)"
    )
    g.add_argument("--se", action="store_true", help="Squeeze-Excite in every residual block (from scratch)")
    g.add_argument("--init", help="start from this checkpoint (transfer.py output or a training run)")
    g.add_argument("--resume", "--checkpoint_path", dest="resume", help="continue this run's last.pt exactly")
    g.add_argument("--labels", default=d.labels, help="the alphabet as one string (default: space + а..я without ё)")
    g.add_argument("--normalize", choices=["none", "per_feature"], default=d.normalize, help="features, from scratch")
    g = p.add_argument_group("optimization")
    g.add_argument("--max_epochs", type=int, default=d.max_epochs, help="(default: %(default)s)")
    g.add_argument("--max_steps", type=int, help="optimizer steps: the schedule's length; training ends there")
    g.add_argument("--stop_at_step", type=int, help="stop here, saving last.pt, as if interrupted (time-boxed runs)")
    g.add_argument(
        "--accumulate",
        "--accumulate_grad_batches",
        dest="accumulate",
        type=int,
        default=d.accumulate,
        help="batches per optimizer step (default: %(default)s)",
    )
    g.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate (default: %(default)s)")
    g.add_argument("--min_lr", type=float, default=d.min_lr, help="end of the cosine decay (default: %(default)s)")
    g.add_argument("--weight_decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    g.add_argument(
        "--warmup_steps", type=int, help="linear warmup, in optimizer steps (default: 5%% of the run's steps)"
    )
    g.add_argument("--grad_clip", type=float, default=d.grad_clip, help="max gradient norm (default: %(default)s)")
    g.add_argument("--freeze_bn", action="store_true", help="keep BatchNorm statistics fixed")
    g.add_argument("--dither", type=float, default=d.dither, help="feature dither in training (default: %(default)s)")
    g.add_argument("--amp", action="store_true", help="mixed precision: bf16 where supported, else fp16 + GradScaler")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda (default: %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--out_dir", default=d.out_dir, help="checkpoints, metrics.jsonl, curves.png (default: %(default)s)")
    g.add_argument(
        "--save_every", type=int, default=d.save_every, help="steps between last.pt saves (default: %(default)s)"
    )
    g.add_argument(
        "--keep",
        type=int,
        default=d.keep,
        help="also keep the weights of the last N of those saves as step-NNNNNNN.pt, for "
        "tools/average_checkpoints.py (default: %(default)s)",
    )
    g.add_argument(
        "--log_every", type=int, default=d.log_every, help="steps between metric rows (default: %(default)s)"
    )
    g.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument(
        "--overwrite", action="store_true", help="replace the previous run in --out_dir (else refused without --resume)"
    )
    args = p.parse_args(argv)
    if args.resume:
        from proslushka.settings import resumed_config

        return resumed_config(args.resume, given(p, argv))
    if not args.train_manifest:
        p.error("--train_manifest is required (or --resume a run's last.pt)")
    return TrainConfig(**vars(args))


def given(p: argparse.ArgumentParser, argv: list[str] | None) -> dict:
    """The options named on the command line, with their values; the defaults left out."""
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return vars(p.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when done or stopped cleanly; 2 for bad settings, a bad checkpoint or --out_dir; 1 for bad data."""
    from proslushka.cli import fail
    from proslushka.settings import TrainError

    try:
        cfg = parse_args(argv)
        from proslushka.trainer import train

        train(cfg)
    except TrainError as e:
        return fail(e, e.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
