"""Transcribe audio files with an exported ONNX model: numpy features + onnxruntime + greedy CTC. No torch."""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL = "models/model.onnx"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("audio", nargs="+", help="audio files (any format ffmpeg reads)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="ONNX model from export.py (default: %(default)s)")
    p.add_argument("-o", "--output", help="write the transcripts to this file (default: stdout)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    args = p.parse_args(argv)

    from proslushka.audio import AudioError
    from proslushka.files import atomic_write
    from proslushka.infer import ModelError, Transcriber

    try:
        tr = Transcriber(args.model, threads=args.threads)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lines, failed = [], 0
    for path in args.audio:
        try:
            lines.append(tr.transcribe_file(path))
        except AudioError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    text = "".join(line + "\n" for line in lines)
    if args.output:
        atomic_write(args.output, text)
    else:
        sys.stdout.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
