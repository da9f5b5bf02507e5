"""int8 against fp32: speed of a QuartzNet15x5 and accuracy of a trained model, each export side by side.

Three forms of each model, all from export.py's planar graph (onnx_export.quantize_int8):
    fp32      as export.py writes it
    dynamic   int8 weights (uint8: onnxruntime's ConvInteger has no fast kernel for int8 ones), activations
              quantized on the fly: ~4x smaller
    static    QDQ, int8 per-channel weights (signed, as VNNI's u8 x s8 product wants) and uint8 activations with
              ranges calibrated on --calibration clips: fused into QLinearConv
1. speed: a random-weight 15x5 (needs torch; speed does not depend on the values) on one thread, a 10 s input,
   the three interleaved, medians and ranges, ratio to fp32 (calibrated on real clips' features all the same);
2. accuracy: greedy CER on --clips clips of the ru-synth valid manifest for a trained model (default the demo
   model, read back to fp32 by onnx_import: its int8 weights exactly) in the three forms.
No trained 15x5 is reachable here (the Golos checkpoint is its job), so (2) is the demo model's.

    python bench/int8.py [--model models/demo.onnx] [--manifest data/ru-synth/valid/manifest.jsonl] [--clips 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
from common import load, random_model  # noqa: E402

from export import calibration_inputs  # noqa: E402
from proslushka import onnx_export  # noqa: E402

VALID = ROOT / "data/ru-synth/valid/manifest.jsonl"
FORMS = ("fp32", "dynamic", "static")


def forms(proto, manifest: str, clips: int, folder: Path, name: str) -> dict[str, Path]:
    """The model's fp32, dynamic and static int8 files in `folder`."""
    calibration = calibration_inputs(proto, manifest, clips)
    out = {}
    for form, p in (
        ("fp32", proto),
        ("dynamic", onnx_export.quantize_int8(proto)),
        ("static", onnx_export.quantize_int8(proto, calibration)),
    ):
        out[form] = folder / f"{name}-{form}.onnx"
        onnx_export.save(p, out[form])
    return out


def speed(paths: dict[str, Path], repeats: int) -> None:
    import onnxruntime as ort

    sessions = {}
    for form, path in paths.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sessions[form] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 64, 1001)).astype(np.float32)
    feeds = {"audio_signal": x, "length": np.array([1001], np.int64)}
    times: dict[str, list[float]] = {form: [] for form in sessions}
    for r in range(repeats + 1):  # the first round warms up
        for form, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds)
            if r:
                times[form].append(time.perf_counter() - t)
    base = np.median(times["fp32"])
    print(f"1. speed, 15x5 (random weights), 10 s input, one thread, medians of {repeats}; {load()}")
    for form, t in times.items():
        size = paths[form].stat().st_size / 1e6
        print(f"   {form:8} {np.median(t) * 1e3:7.1f} ms  ({min(t) * 1e3:.1f}-{max(t) * 1e3:.1f})  "
              f"x{np.median(t) / base:.2f} of fp32  {size:5.1f} MB")  # fmt: skip


def accuracy(paths: dict[str, Path], manifest: Path, clips: int) -> None:
    from proslushka.infer import Transcriber
    from proslushka.manifest import iter_manifest_rows
    from proslushka.metrics import cer, wer

    rows = [row for _, row in iter_manifest_rows(manifest) if isinstance(row, dict)][:clips]
    audio = [str(manifest.parent / r["audio_filepath"]) for r in rows]
    refs = [r["text"] for r in rows]
    print(f"2. accuracy, greedy, {len(rows)} clips of {manifest}")
    for form, path in paths.items():
        hyps = [t.text for t in Transcriber(path, threads=1).transcribe_many(audio, batch_size=8)]
        print(f"   {form:8} CER {100 * cer(refs, hyps):.2f}%  WER {100 * wer(refs, hyps):.2f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models/demo.onnx", help="trained model for (2)")
    p.add_argument("--manifest", type=Path, default=VALID, help="clips for calibration and (2)")
    p.add_argument("--clips", type=int, default=300, help="clips for (2) (default: %(default)s)")
    p.add_argument("--calibration", type=int, default=32, help="clips to calibrate on (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--parts", type=int, nargs="+", default=[1, 2], help="which of 1-2 to run")
    args = p.parse_args()
    if not args.manifest.is_file():
        sys.exit(f"{args.manifest}: no such manifest (render it: python tools/render_corpus.py, see README)")
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as tmp:
        if 1 in args.parts:
            import onnx

            proto = onnx.load(random_model(Path(tmp)))
            speed(forms(proto, str(args.manifest), args.calibration, Path(tmp), "15x5"), args.repeats)
        if 2 in args.parts:
            from proslushka.onnx_import import from_onnx

            model, feature_config, labels = from_onnx(args.model)
            proto = onnx_export.to_onnx(model, feature_config, labels)
            accuracy(forms(proto, str(args.manifest), args.calibration, Path(tmp), "model"), args.manifest, args.clips)


if __name__ == "__main__":
    main()
