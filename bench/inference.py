"""Inference speed on one CPU thread: the full torch-free transcribe path vs PyTorch eager, and cold start.

QuartzNet15x5 with random weights (speed does not depend on the values) on a 10 s clip made from the test audio.
Prints the real-time factor of each path side by side, their ratio, and process-start-to-first-transcript time.
    python bench/inference.py [--seconds 10] [--repeats 5] [--preset 15x5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_clip(path: Path, seconds: float) -> None:
    import numpy as np

    from proslushka.audio import load_audio

    parts = [load_audio(ROOT / "tests/data/nemo/audio" / f"utt{i}.wav") for i in (1, 2, 3)]
    wave = np.concatenate(parts * 10)[: int(seconds * 16000)]
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    import wave as wavmod

    with wavmod.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--preset", default="15x5")
    args = p.parse_args()

    import torch

    from proslushka import checkpoint, onnx_export
    from proslushka.audio import load_audio
    from proslushka.features import FeatureConfig
    from proslushka.infer import Transcriber
    from proslushka.model import QuartzNet, preset
    from proslushka.text import LABELS

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_"))
    clip = tmp / "clip.wav"
    make_clip(clip, args.seconds)
    torch.manual_seed(0)
    model = QuartzNet(preset(args.preset)).eval()
    feat_cfg = FeatureConfig()
    checkpoint.save(tmp / "m.pt", checkpoint.make(model, feat_cfg, list(LABELS)))
    onnx_path = tmp / "m.onnx"
    onnx_export.save(onnx_export.to_onnx(model, feat_cfg, list(LABELS)), onnx_path)

    tr = Transcriber(onnx_path, threads=1)
    full = best_of(lambda: tr.transcribe_file(clip), args.repeats)
    wave = load_audio(clip)
    feats, n = tr.features(wave)
    x, lens = torch.from_numpy(feats)[None], torch.tensor([n])
    inputs = {"audio_signal": feats[None], "length": lens.numpy()}
    ort_only = best_of(lambda: tr.session.run(None, inputs), args.repeats)
    with torch.inference_mode():
        eager = best_of(lambda: model(x, lens), args.repeats)
    decode = best_of(lambda: load_audio(clip), args.repeats)
    feat_t = best_of(lambda: tr.features(wave), args.repeats)

    # greedy, as the full path above: the demo LM (used by default when the labels match) loads in about a second
    cmd = [sys.executable, str(ROOT / "transcribe.py"), str(clip), "--model", str(onnx_path), "--threads", "1"]
    cmd += ["--lm", "none"]
    colds = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        colds.append(time.perf_counter() - t)

    s = args.seconds
    print(f"QuartzNet {args.preset}, {s:.0f} s clip, 1 thread, best of {args.repeats}")
    print(f"  decode (ffmpeg)          {decode * 1000:8.1f} ms")
    print(f"  features (numpy)         {feat_t * 1000:8.1f} ms")
    print(f"  onnxruntime model        {ort_only * 1000:8.1f} ms   RTF {ort_only / s:.4f}")
    print(f"  PyTorch eager model      {eager * 1000:8.1f} ms   RTF {eager / s:.4f}")
    print(f"  full transcribe path     {full * 1000:8.1f} ms   RTF {full / s:.4f}  (decode+features+onnxruntime+CTC)")
    print(f"ratio eager model / onnxruntime model: {eager / ort_only:.2f}x")
    print(f"ratio eager (features+model) / full onnx path: {(eager + feat_t + decode) / full:.2f}x")
    print(f"cold start (process start to first transcript, greedy): {min(colds):.2f} s (best of 3)")


if __name__ == "__main__":
    main()
