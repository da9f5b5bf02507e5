"""Peak memory of training: each model preset at each batch size, on clips of a fixed length, side by side.

Each measurement is a fresh process running the real training step (features, SpecAugment, forward, CTC, backward,
AdamW; proslushka.trainer's pieces, data loading in-process) for a few optimizer steps on a synthetic manifest of
equal clips (all rows the same WAV, made from the test audio), and reports its peak RSS (and on CUDA
torch.cuda.max_memory_allocated). Peak memory grows with batch size x clip length, so every clip length is measured.
A combination whose RSS, extrapolated from the smaller batches, would pass --limit_gb is skipped; one that passes it
anyway is stopped there (a watchdog reads the child's RSS): this machine is shared.
    python bench/train_memory.py [--presets 15x5 medium small] [--batches 4 8 16 32] [--seconds 10 20] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEXT = "съешь же еще этих мягких французских булок да выпей чаю "  # every letter but ъ; 14 letters a second below
LETTERS_PER_SECOND = 14  # brisk Russian speech; a CTC target of this length fits QuartzNet's 50 frames a second


def write_clip(path: Path, seconds: float) -> None:
    """`seconds` of the test fixtures' speech, repeated, as a 16 kHz 16-bit mono WAV."""
    import numpy as np

    from proslushka.audio import load_audio

    parts = [load_audio(ROOT / "tests/data/nemo/audio" / f"utt{i}.wav") for i in (1, 2, 3)]
    n = int(seconds * 16000)
    speech = np.concatenate(parts * (n // sum(len(p) for p in parts) + 1))[:n]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes())


def write_manifest(folder: Path, seconds: float, rows: int) -> Path:
    clip = folder / f"clip{seconds:g}.wav"
    write_clip(clip, seconds)
    letters = int(seconds * LETTERS_PER_SECOND)
    text = (TEXT * (letters // len(TEXT) + 1))[:letters].strip()
    row = json.dumps({"audio_filepath": clip.name, "text": text, "duration": seconds}, ensure_ascii=False)
    manifest = folder / f"clips{seconds:g}.jsonl"
    manifest.write_text((row + "\n") * rows, encoding="utf-8")
    return manifest


def child(preset: str, batch: int, seconds: float, steps: int, device: str, amp: bool) -> dict:
    """One measurement, in this (fresh) process: `steps` optimizer steps of batch x seconds-long clips."""
    import torch

    from proslushka.model import count_parameters
    from proslushka.settings import TrainConfig
    from proslushka.trainer import Trainer

    folder = Path(tempfile.mkdtemp(prefix="bench_train_memory_"))
    cfg = TrainConfig(
        train_manifest=str(write_manifest(folder, seconds, batch * steps)),
        out_dir=str(folder / "run"),
        model=preset,
        batch_size=batch,
        max_duration=None,
        num_workers=0,  # decoding in this process, so its RSS counts (a batch of decoded audio is small anyway)
        progress=False,
        save_every=10**9,
        device=device,
        amp=amp,
    )
    trainer = Trainer(cfg)
    trainer.model.train()
    cuda = trainer.device.type == "cuda"
    t = time.perf_counter()
    for _, batch_ in zip(range(steps), trainer.loader(), strict=False):
        loss, _, _ = trainer.forward_loss(batch_)
        trainer.scaler.scale(loss).backward()
        trainer.optimizer_step(batch_[0].shape[0])
    if cuda:
        torch.cuda.synchronize()
    return {
        "params": count_parameters(trainer.model),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_mb": torch.cuda.max_memory_allocated(trainer.device) / 2**20 if cuda else None,
        "step_s": (time.perf_counter() - t) / steps,
    }


def rss_mb(pid: int) -> float:
    """The process's resident memory now (0 where /proc cannot tell)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(args: argparse.Namespace, preset: str, batch: int, seconds: float) -> dict | str:
    """A fresh process's figures, or why there are none."""
    cmd = [sys.executable, __file__, "--child", f"{preset},{batch},{seconds:g}", "--steps", str(args.steps)]
    cmd += ["--device", args.device] + (["--amp"] if args.amp else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while proc.poll() is None:
        if rss_mb(proc.pid) > args.limit_gb * 1024:
            proc.kill()
            proc.wait()
            return f"stopped above {args.limit_gb:g} GB"
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return f"failed: {(err.strip().splitlines() or ['exit ' + str(proc.returncode)])[-1]}"
    return json.loads(out.strip().splitlines()[-1])


def predicted_mb(done: dict[int, dict], batch: int) -> float | None:
    """RSS at `batch` on a straight line through the two largest batches measured (None with fewer than two)."""
    if len(done) < 2:
        return None
    (b1, r1), (b2, r2) = sorted((b, d["rss_mb"]) for b, d in done.items())[-2:]
    return r2 + (r2 - r1) / (b2 - b1) * (batch - b2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["15x5", "medium", "small"])
    p.add_argument("--batches", nargs="+", type=int, default=[4, 8, 16, 32])
    p.add_argument("--seconds", nargs="+", type=float, default=[10.0, 20.0], help="clip lengths")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps (the first allocates AdamW's state)")
    p.add_argument("--limit_gb", type=float, default=16.0, help="skip or stop a measurement above this RSS")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 where the device has it)")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for each measurement (0: torch's own)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        preset, batch, seconds = args.child.split(",")
        print(json.dumps(child(preset, int(batch), float(seconds), args.steps, args.device, args.amp)))
        return

    gpu = args.device.startswith("cuda")
    print(
        f"peak memory of training ({args.steps} optimizer steps, {'amp' if args.amp else 'fp32'}, {args.device}; "
        f"load average {os.getloadavg()[0]:.2f})"
    )
    header = f"{'preset':8}{'clip s':>7}{'batch':>7}{'audio s':>9}{'peak RSS MB':>13}"
    print(header + (f"{'GPU MB':>9}" if gpu else "") + f"{'s/step':>8}")
    for preset in args.presets:
        for seconds in args.seconds:
            done: dict[int, dict] = {}
            for batch in sorted(args.batches):
                guess = predicted_mb(done, batch)
                if guess is not None and guess > args.limit_gb * 1024:
                    result: dict | str = f"skipped: ~{guess / 1024:.1f} GB expected, over --limit_gb"
                else:
                    result = measure(args, preset, batch, seconds)
                row = f"{preset:8}{seconds:7g}{batch:7d}{batch * seconds:9g}"
                if isinstance(result, str):
                    print(f"{row}  {result}", flush=True)
                    continue
                done[batch] = result
                gpu_col = f"{result['gpu_mb']:9.0f}" if gpu else ""
                print(f"{row}{result['rss_mb']:13.0f}{gpu_col}{result['step_s']:8.1f}", flush=True)


if __name__ == "__main__":
    main()
