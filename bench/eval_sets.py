"""Models side by side on the clean, noisy and long-file evaluation sets: CER/WER and whole-path speed.

    python tools/make_eval_sets.py                       # once: data/ru-synth/eval/{noisy,long}
    python bench/eval_sets.py --model runs/demo-v1.onnx --model models/demo.onnx [--lm models/demo-lm.bin]

For each model (one thread, greedy unless --lm): CER and WER on ru-synth valid, on the noisy set (overall, per
SNR and per noise kind) and on the long files; the long files' CER beside the same clips one by one; the real-time
factor of the whole path (decode, features, model, decoder) over the valid clips as a folder, and over the long
files.

Chunks run in padded batches of 8 (transcribe.py --batch_size 8). An int8 model quantizes its activations with
ranges taken over the whole batch, so a hypothesis can differ slightly from one run alone (transcribe.py's default
--batch_size 1): the stage-4 demo model reads valid at CER 7.82% here and 7.87% one clip at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proslushka.augment import NOISE_KINDS  # noqa: E402
from proslushka.infer import Transcriber  # noqa: E402
from proslushka.metrics import cer, wer  # noqa: E402
from proslushka.text import normalize  # noqa: E402


def rows(manifest: Path) -> list[tuple[str, str, float]]:
    out = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            out.append((str(manifest.parent / r["audio_filepath"]), normalize(r["text"]), float(r["duration"])))
    return out


def run(tr: Transcriber, items: list[tuple[str, str, float]]) -> tuple[list[str], float]:
    """(hypotheses, real-time factor of the whole path)."""
    t = time.perf_counter()
    hyps = [r.text if hasattr(r, "text") else "" for r in tr.transcribe_many([p for p, _, _ in items], batch_size=8)]
    return hyps, (time.perf_counter() - t) / sum(d for _, _, d in items)


def score(items, hyps) -> str:
    refs = [r for _, r, _ in items]
    return f"CER {100 * cer(refs, hyps):5.2f}  WER {100 * wer(refs, hyps):5.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="an ONNX model (repeat to compare)")
    p.add_argument("--data", default="data/ru-synth", help="the rendered corpus with eval/ (default: %(default)s)")
    p.add_argument("--lm", default="none", help="a KenLM for beam search, or none (default: greedy)")
    args = p.parse_args()
    data = Path(args.data)
    sets = {name: rows(data / sub / "manifest.jsonl") for name, sub in
            (("valid", "valid"), ("noisy", "eval/noisy"), ("long", "eval/long"))}  # fmt: skip
    for model in args.model:
        tr = Transcriber(model, threads=1, lm=None if args.lm == "none" else args.lm)
        print(f"== {model} ({'greedy' if args.lm == 'none' else args.lm}, one thread)")
        for name, items in sets.items():
            hyps, rtf = run(tr, items)
            print(f"{name:<6} {score(items, hyps)}  RTF {rtf:.4f}  ({len(items)} files)")
            if name == "noisy":
                breakdown(items, hyps, lambda path: path.parent.name, lambda snr: float(snr[3:]))
                breakdown(items, hyps, lambda path: path.stem.split("_")[-1], NOISE_KINDS.index)
    return 0


def breakdown(items, hyps, group, order) -> None:
    """The scores of each group of files (tools/make_eval_sets.py names them snrN/NNNN_KIND.wav)."""
    for key in sorted({group(Path(p)) for p, _, _ in items}, key=order):
        part = [(it, h) for it, h in zip(items, hyps, strict=True) if group(Path(it[0])) == key]
        print(f"  {key:<6} {score([it for it, _ in part], [h for _, h in part])}")


if __name__ == "__main__":
    sys.exit(main())
