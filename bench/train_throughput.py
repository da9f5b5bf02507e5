"""Training throughput on this machine: audio seconds per wall second for each model preset, side by side.

Runs a few optimizer steps of the real training loop (features, SpecAugment, forward, CTC, backward, AdamW) on
batches from a manifest, after a warm-up step, and prints audio-s/s and the ratio between presets.
    python bench/train_throughput.py [--manifest data/ru-synth/train/manifest.jsonl] [--presets 15x5 small]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(
    preset: str, manifest: str, batch_size: int, steps: int, cache_dir: str | None, device: str, amp: bool
) -> float:
    import torch

    from proslushka.settings import TrainConfig
    from proslushka.trainer import Trainer

    cfg = TrainConfig(
        train_manifest=manifest,
        out_dir=tempfile.mkdtemp(prefix="bench_train_"),
        model=preset,
        batch_size=batch_size,
        num_workers=1,
        progress=False,
        cache_dir=cache_dir,
        save_every=10**9,
        device=device,
        amp=amp,
    )
    trainer = Trainer(cfg)
    trainer.model.train()
    # decoded up front: this measures the model, not the decoder (a short manifest's batches come round again)
    batches = list(itertools.islice(itertools.cycle(trainer.loader()), steps + 1))
    seconds, elapsed = 0.0, 0.0
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else lambda: None
    for i, batch in enumerate(batches):
        sync()  # a GPU runs behind the Python code: time each step from an idle device to an idle device
        t = time.perf_counter()
        loss, _, _ = trainer.forward_loss(batch)
        loss.backward()
        trainer.optimizer_step(batch[0].shape[0])
        sync()
        if i > 0:  # the first step warms up allocators and kernels
            elapsed += time.perf_counter() - t
            seconds += batch[1].sum().item() / trainer.feat_cfg.sample_rate
    return seconds / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default="data/ru-synth/train/manifest.jsonl")
    p.add_argument("--presets", nargs="+", default=["15x5", "small"])
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--cache_dir", default="data/cache", help="decoded-audio cache ('' for none)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 where the device has it)")
    args = p.parse_args()
    import torch

    from proslushka.data import read_manifest

    hours = sum(read_manifest(args.manifest, check_audio=False).durations) / 3600
    run = (args.manifest, args.batch_size, args.steps, args.cache_dir or None, args.device, args.amp)
    rates = {name: measure(name, *run) for name in args.presets}
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name(args.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"training throughput, batch {args.batch_size}, {'amp' if args.amp else 'fp32'}, {where}:")
    for name, rate in rates.items():
        print(f"  {name:6s} {rate:8.1f} audio-s/s   ({hours * 3600 / rate / 60:6.1f} min per epoch of the manifest)")
    base = args.presets[0]
    for name in args.presets[1:]:
        print(f"ratio {name} / {base}: {rates[name] / rates[base]:.1f}x")


if __name__ == "__main__":
    main()
