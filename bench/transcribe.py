"""Transcription for real use, side by side in one run (one CPU thread unless said otherwise):

1. real-time factor of the model on 10 s and 60 s clips: PyTorch eager vs onnxruntime fp32 vs int8 (dynamic, and
   static calibrated on ru-synth train clips), and of the whole path (decode + features + model + CTC);
2. batch throughput: --batch_size 8 vs 1 over ru-synth valid clips;
3. peak RSS of `transcribe.py` on a 10-minute and a 60-minute file;
4. the Lambda bundle: unzipped size and cold start (import + session + first request), fp32 and int8 models;
5. with a trained model (--trained, default models/demo.onnx): CER on ru-synth valid, fp32 vs int8.

QuartzNet --preset (default 15x5) with random weights: speed and memory do not depend on the values.
    python bench/transcribe.py [--preset 15x5] [--ffmpeg build/ffmpeg/ffmpeg] [--trained models/demo.onnx]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
from inference import ROOT, best_of, make_clip  # also puts the repository on sys.path, OMP_NUM_THREADS=1

VALID = ROOT / "data/ru-synth/valid/manifest.jsonl"
TRAIN = ROOT / "data/ru-synth/train/manifest.jsonl"
RSS = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); " \
      "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"  # fmt: skip


def clips_of(manifest: Path, n: int) -> list[Path]:
    from proslushka.manifest import iter_manifest_rows

    rows = [r for _, r in iter_manifest_rows(manifest) if isinstance(r, dict)][:n]
    return [manifest.parent / r["audio_filepath"] for r in rows]


def write_long(path: Path, minutes: float, clips: list[Path]) -> None:
    """Speech clips with 0.3-1.2 s pauses between them, repeated to `minutes`, as a 16-bit WAV written in pieces."""
    from proslushka.audio import load_audio

    rng = np.random.default_rng(0)
    waves = [load_audio(c) for c in clips]
    total, i = int(minutes * 60 * 16000), 0
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        written = 0
        while written < total:
            piece = np.concatenate([waves[i % len(waves)], np.zeros(int(rng.uniform(0.3, 1.2) * 16000), np.float32)])
            piece = piece[: total - written]
            w.writeframes((np.clip(piece, -1, 1) * 32767).astype("<i2").tobytes())
            written, i = written + len(piece), i + 1


def peak_rss_mb(cmd: list[str]) -> float:
    out = subprocess.run([sys.executable, "-c", RSS, *cmd], check=True, capture_output=True, text=True).stdout
    return int(out) / 1024


def variants(fp32) -> dict:
    """The model as fp32, int8 dynamic and int8 static (calibrated on 32 ru-synth train clips)."""
    import export
    from proslushka.onnx_export import quantize_int8

    static = quantize_int8(fp32, export.calibration_inputs(fp32, str(TRAIN), 32))
    return {"fp32": fp32, "int8 dynamic": quantize_int8(fp32), "int8 static": static}


def save_all(protos: dict, folder: Path, prefix: str) -> dict[str, Path]:
    from proslushka.onnx_export import save

    paths = {name: folder / f"{prefix}{name.replace(' ', '_')}.onnx" for name in protos}
    for name, proto in protos.items():
        save(proto, paths[name])
    return paths


def real_time_factors(paths: dict[str, Path], model, tmp: Path, repeats: int) -> None:
    import torch

    from proslushka.audio import load_audio
    from proslushka.infer import Transcriber

    print("\n1. real-time factor (lower is faster), best of", repeats)
    print(f"   {'':40}{'10 s clip':>10}{'60 s clip':>10}")
    rows: dict[str, list[float]] = {}
    for seconds in (10, 60):
        clip = tmp / f"clip{seconds}.wav"
        make_clip(clip, seconds)
        audio = load_audio(clip)
        for name, path in paths.items():
            tr = Transcriber(path, threads=1)
            feats, n = tr.features(audio)
            inputs = {"audio_signal": feats[None], "length": np.array([n])}
            model_s = best_of(lambda tr=tr, inputs=inputs: tr.session.run(None, inputs), repeats)
            whole_s = best_of(lambda tr=tr, clip=clip: tr.transcribe_path(clip), repeats)
            rows.setdefault(f"onnxruntime {name} (model)", []).append(model_s / seconds)
            rows.setdefault(f"onnxruntime {name} (whole path)", []).append(whole_s / seconds)
        x, lens = torch.from_numpy(feats)[None], torch.tensor([n])
        with torch.inference_mode():
            eager_s = best_of(lambda x=x, lens=lens: model(x, lens), repeats)
        rows.setdefault("PyTorch eager (model)", []).append(eager_s / seconds)
    for name in sorted(rows, key=lambda k: ("whole" in k, k)):
        print(f"   {name:40}" + "".join(f"{v:10.4f}" for v in rows[name]))
    base = rows["onnxruntime fp32 (model)"]
    for name in ("PyTorch eager", "onnxruntime int8 dynamic", "onnxruntime int8 static"):
        ratios = ", ".join(f"{b / r:.2f}x" for b, r in zip(base, rows[f"{name} (model)"], strict=True))
        print(f"   speed of {name} relative to onnxruntime fp32 (10 s, 60 s): {ratios}")


def batch_throughput(path: Path) -> None:
    from proslushka.audio import load_audio
    from proslushka.infer import Transcriber

    clips = clips_of(VALID, 64)
    audio_s = sum(len(load_audio(c)) for c in clips) / 16000
    print(f"\n2. batch throughput, seconds of audio per second: {len(clips)} ru-synth valid clips ({audio_s:.0f} s)")
    for threads in (1, 2):
        tr = Transcriber(path, threads=threads)
        speed = {}
        for bs in (1, 8):
            speed[bs] = audio_s / best_of(lambda tr=tr, bs=bs: list(tr.transcribe_many(clips, batch_size=bs)), 2)
        print(
            f"   {threads} thread(s): --batch_size 1 {speed[1]:6.1f}   --batch_size 8 {speed[8]:6.1f}   "
            f"ratio {speed[8] / speed[1]:.2f}x"
        )


def peak_rss(path: Path, tmp: Path) -> None:
    speech = clips_of(VALID, 40)
    print("\n3. peak RSS of transcribe.py (fp32, greedy, one thread; streamed, cut at pauses into chunks of <= 20 s)")
    rss = {}
    for minutes in (10, 60):
        audio = tmp / f"long{minutes}.wav"
        write_long(audio, minutes, speech)
        out = tmp / f"long{minutes}.json"
        cmd = [
            sys.executable,
            str(ROOT / "transcribe.py"),
            str(audio),
            "--model",
            str(path),
            "--threads",
            "1",
            "--format",
            "json",
            "-o",
            str(out),
            "--lm",  # greedy: the memory of streamed decoding, not of the demo LM (used by default when labels match)
            "none",
        ]
        t = time.perf_counter()
        rss[minutes] = peak_rss_mb(cmd)
        took = time.perf_counter() - t
        words = len(json.loads(out.read_text())["words"])
        decoded = minutes * 60 * 16000 * 4 / 2**20
        print(
            f"   {minutes:2d} min: peak RSS {rss[minutes]:5.0f} MB (the decoded audio alone: {decoded:4.0f} MB as "
            f"float32); {took:4.0f} s, RTF {took / (minutes * 60):.4f}, {words} words"
        )
        audio.unlink()
    print(f"   60 min / 10 min peak RSS: {rss[60] / rss[10]:.2f}x")


def lambda_bundle(paths: dict[str, Path], ffmpeg: Path, tmp: Path) -> None:
    from proslushka import bundle

    print(f"\n4. Lambda bundle (numpy + onnxruntime as installed here, ffmpeg {ffmpeg}); cold start best of 3")
    for name in ("fp32", "int8 static"):
        out = tmp / f"lambda_{name.replace(' ', '_')}.zip"
        with tempfile.TemporaryDirectory() as d:
            folder = Path(d) / "task"
            bundle.stage(folder, paths[name], ffmpeg, None, site_packages=True)
            bundle.compile_pyc(folder)
            unzipped = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            bundle.write_zip(folder, out)
            c = min((bundle.smoke_test(folder) for _ in range(3)), key=lambda r: r["process"])
        cold = c["import"] + c["session"] + c["request"]
        print(
            f"   {name:11} model: {unzipped / 1e6:5.1f} MB unzipped, {out.stat().st_size / 1e6:5.1f} MB zipped; cold "
            f"start {cold:.2f} s = import {c['import']:.2f} + session {c['session']:.2f} + first request "
            f"{c['request']:.2f}; whole process {c['process']:.2f} s"
        )


def trained_cer(trained: Path, tmp: Path) -> None:
    import onnx

    from proslushka.infer import Transcriber
    from proslushka.manifest import iter_manifest_rows
    from proslushka.metrics import cer, wer
    from proslushka.text import normalize

    print(f"\n5. CER on ru-synth valid, fp32 vs int8, trained model {trained}")
    if not trained.is_file():
        print("   pending: no trained model there yet")
        return
    rows = [r for _, r in iter_manifest_rows(VALID) if isinstance(r, dict)]
    refs = [normalize(r["text"]) for r in rows]
    for name, path in save_all(variants(onnx.load(trained)), tmp, "trained_").items():
        tr = Transcriber(path, threads=1)
        t = time.perf_counter()
        hyps = [r.text for r in tr.transcribe_many([VALID.parent / r["audio_filepath"] for r in rows], 8)]
        took = time.perf_counter() - t
        print(
            f"   {name:12}: CER {100 * cer(refs, hyps):5.2f}%  WER {100 * wer(refs, hyps):5.2f}%  "
            f"{path.stat().st_size / 1e6:5.1f} MB  {took:5.1f} s"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="15x5")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ffmpeg", default=str(ROOT / "build/ffmpeg/ffmpeg"), help="small ffmpeg for the bundle")
    p.add_argument("--trained", default=str(ROOT / "models/demo.onnx"), help="a trained model for CER")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: rtf,batch,rss,bundle,cer")
    args = p.parse_args()
    skip = set(args.skip.split(","))

    import torch

    from proslushka.features import FeatureConfig
    from proslushka.model import QuartzNet, preset
    from proslushka.onnx_export import to_onnx
    from proslushka.text import LABELS

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_transcribe_"))
    torch.manual_seed(0)
    model = QuartzNet(preset(args.preset)).eval()
    paths = save_all(variants(to_onnx(model, FeatureConfig(), list(LABELS))), tmp, "")
    sizes = ", ".join(f"{k} {v.stat().st_size / 1e6:.1f} MB" for k, v in paths.items())
    print(f"QuartzNet {args.preset} (random weights), one thread unless said; model files: {sizes}")
    if "rtf" not in skip:
        real_time_factors(paths, model, tmp, args.repeats)
    if "batch" not in skip:
        batch_throughput(paths["fp32"])
    if "rss" not in skip:
        peak_rss(paths["fp32"], tmp)
    if "bundle" not in skip:
        lambda_bundle(paths, Path(args.ffmpeg), tmp)
    if "cer" not in skip:
        trained_cer(Path(args.trained), tmp)


if __name__ == "__main__":
    main()
