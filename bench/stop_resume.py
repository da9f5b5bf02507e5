"""A stop in the middle of a long accumulated step, measured: how long SIGTERM takes to end a QuartzNet15x5
`--accumulate 16` run, against the time of one batch, and whether `train.py --resume last.pt` alone then ends on
the very weights of the same run never stopped.

    python bench/stop_resume.py [--manifest data/ru-synth/valid/manifest.jsonl] [--model 15x5] [--batch_size 4]

Runs train.py three times in subprocesses: uninterrupted for 2 optimizer steps (2 x accumulate batches), the same
run sent SIGTERM a few batches into step 2, and that run resumed by the command its stop message prints.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def train_cmd(manifest: str, out: Path, a: argparse.Namespace) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--train_manifest", manifest, "--out_dir", str(out),
            "--model", a.model, "--batch_size", str(a.batch_size), "--accumulate", str(a.accumulate),
            "--max_steps", "2", "--num_workers", "1", "--log_every", "1", "--no_progress"]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default=str(ROOT / "data/ru-synth/valid/manifest.jsonl"))
    p.add_argument("--model", default="15x5")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--accumulate", type=int, default=16)
    p.add_argument("--clips", type=int, default=160, help="the first N rows of the manifest (default: %(default)s)")
    a = p.parse_args()
    import torch

    from proslushka import checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="bench_stop_"))
    rows = Path(a.manifest).read_text(encoding="utf-8").splitlines()[: a.clips]
    folder = Path(a.manifest).resolve().parent
    manifest = tmp / "m.jsonl"
    manifest.write_text("".join(json.dumps({**r, "audio_filepath": str(folder / r["audio_filepath"])},
                                           ensure_ascii=False) + "\n" for r in map(json.loads, rows)))  # fmt: skip

    t0 = time.time()
    full = subprocess.run(train_cmd(str(manifest), tmp / "full", a), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    per_batch = (time.time() - t0) / (2 * a.accumulate)  # an upper bound: start-up and the epoch's end included
    print(f"uninterrupted: 2 steps of {a.accumulate} batches of {a.batch_size} ({a.model}) in {time.time() - t0:.0f} s"
          f", <= {per_batch:.2f} s a batch")  # fmt: skip

    run = tmp / "stopped"
    proc = subprocess.Popen(train_cmd(str(manifest), run, a), stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and '"step": 1' in metrics.read_text()):  # step 1 done: step 2 is under way
        time.sleep(0.05)
    time.sleep(3 * per_batch)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    took = time.time() - sent
    redo = re.search(r"the (\d+) batches of the unfinished step are redone", err)
    print(
        f"SIGTERM a few batches into step 2: exited {took:.2f} s later ({took / per_batch:.2f} batches), "
        f"rc {proc.returncode}; {redo.group(1) if redo else 0} batches to redo"
    )
    command = [line for line in err.splitlines() if line.startswith("resume with: ")][-1]
    print(f"  its message: {command}")

    argv = command.removeprefix("resume with: python ").split()
    resumed = subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:]], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    x = checkpoint.load(tmp / "full" / "last.pt")["model"]
    y = checkpoint.load(run / "last.pt")["model"]
    same = all(torch.equal(x[k], y[k]) for k in x)
    worst = max(float((x[k].float() - y[k].float()).abs().max()) for k in x)
    print(f"resumed with that command alone: weights {'bit-identical' if same else 'DIFFER'} to the uninterrupted "
          f"run's ({len(x)} tensors, largest difference {worst:g})")  # fmt: skip
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
