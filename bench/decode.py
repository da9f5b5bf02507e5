"""CTC decoders side by side on ru-synth valid, one CPU thread, in one run:

greedy vs beam search without an LM vs beam search with the LM, at beam 16/32/64/128 — CER, WER, decoder CPU seconds
per audio second and the peak RSS of a process that holds the log-probs and runs that decoder; then the whole
transcribe.py path at its defaults (shipped model + shipped LM): WER, CER and peak RSS. "OOV words right": of the
reference words outside the LM's vocabulary, how many the hypothesis of their utterance has.
    python bench/decode.py [--model models/demo.onnx] [--lm models/demo-lm.bin] [--manifest ...valid...]
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
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

VALID = ROOT / "data/ru-synth/valid/manifest.jsonl"
BEAMS = (16, 32, 64, 128)


def logprobs(model: str, manifest: str, out: Path) -> None:
    """Every utterance's log-probs (its chunks', in order), references and audio seconds into `out` (.npz)."""
    from proslushka.infer import Transcriber
    from proslushka.lm import manifest_rows

    tr = Transcriber(model, threads=1)
    arrays, refs, chunks = [], [], []
    for audio, ref in manifest_rows(manifest):
        parts = list(tr.chunk_logprobs(audio))
        arrays += [lp for _, lp in parts]
        chunks.append(len(parts))
        refs.append(ref)
    np.savez(out, *arrays, chunks=np.array(chunks), refs=np.array(refs), labels=np.array(tr.labels))


def row(npz: str, kind: str, beam: int, lm: str | None, seconds: float) -> dict:
    """One decoder over the saved log-probs (run in its own process, so its peak RSS is its own)."""
    from proslushka.decode import BeamDecoder, load_settings
    from proslushka.metrics import cer, wer
    from proslushka.text import ctc_collapse, decode

    z = np.load(npz)
    labels, refs, chunks = list(z["labels"]), list(z["refs"]), z["chunks"]
    lps = [z[f"arr_{i}"] for i in range(int(chunks.sum()))]
    if kind == "greedy":
        blank = len(labels)
        text = lambda lp: decode(ctc_collapse(lp.argmax(-1), blank), labels)  # noqa: E731
    else:
        settings = {**(load_settings(lm) if lm else {}), "beam_width": beam}
        text = BeamDecoder(labels, lm, settings).text
    t = time.process_time()
    texts = [text(lp) for lp in lps]
    cpu = time.process_time() - t
    hyps, at = [], 0
    for n in chunks:
        hyps.append(" ".join(filter(None, texts[at : at + n])))
        at += n
    return {
        "wer": 100 * wer(refs, hyps),
        "cer": 100 * cer(refs, hyps),
        "cpu_per_s": cpu / seconds,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hyps": hyps,
    }


def oov_kept(refs: list[str], hyps: list[str], vocab: set[str]) -> tuple[int, int]:
    """(reference words outside the LM's vocabulary that the hypothesis of their utterance has, all such words)."""
    kept = total = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        have = Counter(hyp.split())
        for w in ref.split():
            if w not in vocab:
                total += 1
                if have[w] > 0:
                    have[w] -= 1
                    kept += 1
    return kept, total


def child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--row", *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models/demo.onnx"))
    p.add_argument("--lm", default=str(ROOT / "models/demo-lm.bin"))
    p.add_argument("--manifest", default=str(VALID))
    p.add_argument("--row", nargs=5, help=argparse.SUPPRESS)  # npz kind beam lm seconds: one child's row
    args = p.parse_args()
    if args.row:
        npz, kind, beam, lm, seconds = args.row
        print(json.dumps(row(npz, kind, int(beam), None if lm == "none" else lm, float(seconds))))
        return

    from proslushka.decode import vocab_path
    from proslushka.lm import manifest_rows

    seconds = sum(json.loads(line)["duration"] for line in open(args.manifest, encoding="utf-8") if line.strip())
    print(
        f"{len(manifest_rows(args.manifest))} utterances, {seconds / 60:.1f} min of audio; model {args.model}, "
        f"LM {args.lm}; one thread"
    )
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "logprobs.npz"
        logprobs(args.model, args.manifest, npz)
        refs = [ref for _, ref in manifest_rows(args.manifest)]
        vocab = set(vocab_path(args.lm).read_text(encoding="utf-8").split())
        print("| decoder | beam | WER % | CER % | decoder CPU s per audio s | peak RSS MB | OOV words right |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        runs = [("greedy", 1, "none")] + [
            (k, b, lm) for k, lm in (("beam", "none"), ("beam + LM", args.lm)) for b in BEAMS
        ]
        for kind, beam, lm in runs:
            r = child([str(npz), kind, str(beam), lm, str(seconds)])
            kept, total = oov_kept(refs, r["hyps"], vocab)
            print(
                f"| {kind} | {beam if kind != 'greedy' else '-'} | {r['wer']:.2f} | {r['cer']:.2f} | "
                f"{r['cpu_per_s']:.5f} | {r['rss_mb']:.0f} | {kept} of {total} |",
                flush=True,
            )
    # the whole path as a user runs it: transcribe.py at its defaults, in a child whose peak RSS we read
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            str(ROOT / "transcribe.py"),
            "--manifest",
            args.manifest,
            "--model",
            args.model,
            "--lm",
            args.lm,
            "--threads",
            "1",
            "--report",
            str(Path(tmp) / "report.tsv"),
        ]
        t = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        wall = time.time() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"transcribe.py --lm {Path(args.lm).name} (its tuned settings): {done.stderr.strip().splitlines()[-1]}; "
        f"peak RSS {rss:.0f} MB; {wall:.0f} s wall"
    )


if __name__ == "__main__":
    main()
