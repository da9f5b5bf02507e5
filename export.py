"""Export a Proslushka checkpoint to ONNX (labels and feature settings in the metadata), then check it.

--quantize int8 writes an int8 model instead (from --checkpoint, or from an exported --onnx): dynamic
quantization by default, static (faster, calibrated) with --calibration manifest.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="models/model.pt", help="checkpoint .pt (default: %(default)s)")
    p.add_argument("-o", "--output", help="ONNX file to write (default: the input's path with .onnx / .int8.onnx)")
    p.add_argument("--quantize", choices=["int8"], help="write an int8-quantized model")
    p.add_argument("--onnx", help="with --quantize: quantize this exported model instead of a checkpoint")
    p.add_argument("--calibration", help="with --quantize: static quantization calibrated on this manifest's clips")
    p.add_argument("--calibration_clips", type=int, default=32, help="clips to calibrate on (default: %(default)s)")
    args = p.parse_args(argv)
    if (args.onnx or args.calibration) and not args.quantize:
        p.error("--onnx and --calibration go with --quantize int8")

    import onnx

    from proslushka import checkpoint, onnx_export

    source = Path(args.onnx or args.checkpoint)
    suffix = ".int8.onnx" if args.quantize else ".onnx"
    out = Path(args.output) if args.output else source.with_name(source.name.rsplit(".", 1)[0] + suffix)
    t0 = time.time()
    if args.onnx:
        try:
            proto = onnx.load(args.onnx)
        except Exception as e:  # onnx raises its own types for a missing or foreign file
            print(f"error: {args.onnx}: not a readable ONNX model ({str(e).splitlines()[0][:200]})", file=sys.stderr)
            return 1
    else:
        try:
            model, feat_cfg, labels, _ = checkpoint.load_model(args.checkpoint)
        except checkpoint.CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        proto = onnx_export.to_onnx(model, feat_cfg, labels)
        diff = onnx_export.compare(model, proto)
        if diff > 1e-4:
            print(f"error: onnxruntime differs from torch by {diff:.2e} (> 1e-4); nothing written", file=sys.stderr)
            return 1
        print(f"onnxruntime vs torch on two clips of different length: max abs diff {diff:.2e}")
    if args.quantize:
        calibration = None
        if args.calibration:
            calibration = calibration_inputs(proto, args.calibration, args.calibration_clips)
        int8 = onnx_export.quantize_int8(proto, calibration)
        agree = greedy_agreement(proto, int8, calibration)
        kind = f"static, calibrated on {len(calibration)} clips" if calibration else "dynamic"
        print(f"int8 ({kind}): {int8.ByteSize() / 1e6:.1f} MB, fp32 {proto.ByteSize() / 1e6:.1f} MB; "
              f"greedy ids agree with fp32 on {100 * agree:.1f}% of frames")
        proto = int8
    onnx_export.save(proto, out)
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.1f} MB, opset {onnx_export.OPSET}) in {time.time() - t0:.1f}s")
    return 0


def calibration_inputs(proto, manifest: str, clips: int) -> list[dict]:
    """Model inputs (features of one clip each) from the first `clips` rows of a manifest."""
    import numpy as np

    from proslushka.audio import load_audio
    from proslushka.features import FeatureConfig, log_mel_numpy
    from proslushka.manifest import iter_manifest_rows

    meta = {p.key: p.value for p in proto.metadata_props}
    cfg = FeatureConfig.from_dict(json.loads(meta["feature_config"]))
    folder = Path(manifest).resolve().parent
    inputs = []
    for _, row in iter_manifest_rows(manifest, required=("audio_filepath",)):
        if isinstance(row, dict) and isinstance(row.get("audio_filepath"), str):
            feats, n = log_mel_numpy(load_audio(folder / row["audio_filepath"], cfg.sample_rate), cfg)
            inputs.append({"audio_signal": feats[None], "length": np.array([n], dtype=np.int64)})
        if len(inputs) == clips:
            break
    return inputs


def greedy_agreement(fp32, int8, inputs: list[dict] | None) -> float:
    """Share of valid frames where both models' argmax agree (on `inputs`, else on random features)."""
    import numpy as np
    import onnxruntime as ort

    if not inputs:
        rng = np.random.default_rng(0)
        inputs = [{"audio_signal": rng.standard_normal((1, 64, 400)).astype(np.float32), "length": np.array([400])}]
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (fp32, int8))
    same = total = 0
    for x in inputs:
        (la, n), (lb, _) = a.run(None, x), b.run(None, x)
        same += int((la[0, : n[0]].argmax(-1) == lb[0, : n[0]].argmax(-1)).sum())
        total += int(n[0])
    return same / max(total, 1)


if __name__ == "__main__":
    sys.exit(main())
