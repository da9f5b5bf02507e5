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
from typing import TYPE_CHECKING

from proslushka.cli import fail

if TYPE_CHECKING:  # imported where used: --help should not wait for onnx
    import onnx


class ExportError(Exception):
    """An expected failure, said in one line; code 2 for a bad argument, model or output path, 1 for bad inputs."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint .pt: train.py's runs/NAME/best.pt or transfer.py's output")
    p.add_argument("-o", "--output", help="ONNX file to write (default: the input's path with .onnx / .int8.onnx)")
    p.add_argument("--quantize", choices=["int8"], help="write an int8-quantized model")
    p.add_argument("--onnx", help="with --quantize: quantize this exported model instead of a checkpoint")
    p.add_argument("--calibration", help="with --quantize: static quantization calibrated on this manifest's clips")
    p.add_argument("--calibration_clips", type=int, default=32, help="clips to calibrate on (default: %(default)s)")
    args = p.parse_args(argv)
    if (args.onnx or args.calibration) and not args.quantize:
        p.error("--onnx and --calibration go with --quantize int8")
    if not args.checkpoint and not args.onnx:  # no default: no command writes a fixed path to export from
        p.error("--checkpoint is required: a .pt from train.py (runs/NAME/best.pt) or transfer.py (models/NAME.pt)")
    if not 1 <= args.calibration_clips <= 10_000:
        p.error("--calibration_clips must be in [1, 10000]")
    try:
        export(args)
    except ExportError as e:
        return fail(e, e.code)
    return 0


def export(args: argparse.Namespace) -> None:
    from proslushka import checkpoint, onnx_export
    from proslushka.files import atomic_write, check_not_input, check_writable
    from proslushka.manifest import one_line

    source = Path(args.onnx or args.checkpoint)
    suffix = ".int8.onnx" if args.quantize else ".onnx"
    out = Path(args.output) if args.output else source.with_name(source.name.rsplit(".", 1)[0] + suffix)
    t0 = time.time()
    try:  # -o v.pt --checkpoint v.pt would replace the checkpoint with its own export
        check_not_input(out, [source, *([args.calibration] if args.calibration else [])])
    except ValueError as e:
        raise ExportError(str(e), 2) from None
    if args.onnx:
        proto = read_onnx(args.onnx)
        size = proto.ByteSize()
    else:
        try:
            model, feat_cfg, labels, _ = checkpoint.load_model(args.checkpoint)
        except checkpoint.CheckpointError as e:
            raise ExportError(str(e), 2) from None
        size = sum(t.numel() * 4 for t in model.state_dict().values())  # fp32 weights: the bulk of the ONNX file
    try:  # before the export, the check and the quantization, which take a while on a big model
        check_writable(out, need_bytes=2 * size)
    except OSError as e:
        raise ExportError(f"{e.filename or out}: cannot write the model there ({e.strerror})", 2) from None
    if not args.onnx:
        proto = onnx_export.to_onnx(model, feat_cfg, labels)
        diff = onnx_export.compare(model, proto)
        if not diff <= 1e-4:  # NaN weights give a NaN difference
            raise ExportError(
                f"{args.checkpoint}: onnxruntime differs from torch by {diff:.2e} (> 1e-4); nothing written", 1
            )
        print(f"onnxruntime vs torch on two clips of different length: max abs diff {diff:.2e}")
    if args.quantize:
        calibration = None
        if args.calibration:
            calibration = calibration_inputs(proto, args.calibration, args.calibration_clips)
        try:
            int8 = onnx_export.quantize_int8(proto, calibration)
            agree = greedy_agreement(proto, int8, calibration)
        except Exception as e:  # onnxruntime's many types; a given ONNX passed the checks but may still be odd
            if not args.onnx:
                raise
            raise ExportError(f"{args.onnx}: cannot be quantized ({one_line(e)})", 2) from None
        kind = f"static, calibrated on {len(calibration)} clips" if calibration else "dynamic"
        print(
            f"int8 ({kind}): {int8.ByteSize() / 1e6:.1f} MB, fp32 {proto.ByteSize() / 1e6:.1f} MB; "
            f"greedy ids agree with fp32 on {100 * agree:.1f}% of frames"
        )
        proto = int8
    labels = json.loads({p.key: p.value for p in proto.metadata_props}["labels"])
    try:
        onnx_export.save(proto, out)
        if out.is_file():  # not for /dev/stdout and the like
            atomic_write(onnx_export.tokens_path(out), onnx_export.sherpa_tokens(labels))
    except OSError as e:  # the disk filled up meanwhile, or a device that refuses (/dev/full): nothing half-written
        raise ExportError(f"{e.filename or out}: cannot write ({e.strerror})", 1) from None
    if out.is_file():
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {onnx_export.OPSET}) in {time.time() - t0:.1f}s")
        print(f"wrote {onnx_export.tokens_path(out)} (sherpa-onnx's tokens file)")


def read_onnx(path: str) -> onnx.ModelProto:
    """The ONNX model at `path`, checked to be one export.py wrote; ExportError (exit 2) naming it otherwise."""
    import onnx

    from proslushka import onnx_export
    from proslushka.manifest import one_line

    try:
        proto = onnx.load(path)
    except Exception as e:  # onnx raises its own types for a missing or foreign file
        raise ExportError(f"{path}: not a readable ONNX model ({one_line(e)})", 2) from None
    if why := onnx_export.foreign(proto):
        raise ExportError(f"{path}: not an ONNX model written by export.py ({why})", 2)
    return proto


def calibration_inputs(proto, manifest: str, clips: int) -> list[dict]:
    """Model inputs (features of one clip each) from the first `clips` usable rows of a manifest.

    Raises ExportError (exit 1) for a manifest that cannot be read, or a row whose audio cannot be decoded.
    """
    import numpy as np

    from proslushka.audio import AudioError, load_audio
    from proslushka.features import log_mel_numpy
    from proslushka.infer import read_metadata
    from proslushka.manifest import ManifestError, iter_manifest_rows

    try:
        _, cfg, _ = read_metadata({p.key: p.value for p in proto.metadata_props})
    except (KeyError, ValueError, TypeError) as e:
        raise ExportError(f"the model's metadata is unusable ({e})", 2) from None
    folder = Path(manifest).resolve().parent
    inputs = []
    try:
        for line, row in iter_manifest_rows(manifest, required=("audio_filepath",)):
            path = row.get("audio_filepath") if isinstance(row, dict) else None
            if not isinstance(path, str) or not path.strip() or "\0" in path:
                continue
            try:
                wave = load_audio(folder / path, cfg.sample_rate)
            except AudioError as e:
                raise ExportError(f"{manifest}:{line}: {e}", 1) from None
            feats, n = log_mel_numpy(wave, cfg)
            inputs.append({"audio_signal": feats[None], "length": np.array([n], dtype=np.int64)})
            if len(inputs) == clips:
                break
    except ManifestError as e:
        raise ExportError(str(e), 1) from None
    if not inputs:
        raise ExportError(f"{manifest}: no rows with an audio_filepath to calibrate on", 1)
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
