"""What kinds of letter errors a model makes, from a `transcribe.py --report` file: how many CER points are word
boundaries, unstressed vowels, soft and hard signs and voicing — spellings that Russian pronunciation does not
settle, so an acoustic model gets them right only by knowing the words — and how many are other letters.

    python transcribe.py --manifest data/ru-synth/valid/manifest.jsonl --lm none --report runs/valid.tsv
    python bench/error_kinds.py runs/valid.tsv [more.tsv ...]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proslushka.metrics import edit_ops  # noqa: E402

# letters that sound alike when unstressed (akanye, ikanye) or after a consonant pair at a word's end (devoicing)
VOWELS = [set("ао"), set("еиэяё"), set("ыи"), set("ую")]
VOICING = [set("тд"), set("сз"), set("шж"), set("пб"), set("кг"), set("фв")]
KINDS = ("word boundary", "unstressed vowel", "soft/hard sign", "voicing", "other letter")


def kind(ref: str | None, hyp: str | None) -> str:
    pair = {c for c in (ref, hyp) if c}
    if " " in pair:
        return "word boundary"
    if pair & set("ьъ"):
        return "soft/hard sign"
    if ref and hyp and any(pair <= s for s in VOWELS):
        return "unstressed vowel"
    if ref and hyp and any(pair <= s for s in VOICING):
        return "voicing"
    return "other letter"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="TSV files written by transcribe.py --report")
    args = p.parse_args(argv)
    for path in args.reports:
        counts: Counter[str] = Counter()
        chars = 0
        try:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t")
                if not {"reference", "hypothesis"} <= set(reader.fieldnames or ()):
                    raise KeyError("no reference and hypothesis columns")
                for row in reader:
                    ref, hyp = " ".join(row["reference"].split()), " ".join(row["hypothesis"].split())
                    chars += len(ref)
                    counts.update(kind(r, h) for _, r, h in edit_ops(ref, hyp))
        except (OSError, KeyError, csv.Error, UnicodeDecodeError) as e:
            print(f"error: {path}: not a transcribe.py --report file ({type(e).__name__}: {e})", file=sys.stderr)
            return 1
        total = sum(counts.values())
        print(f"== {path}: {chars} reference characters, {total} edits, CER {100 * total / max(chars, 1):.2f}%")
        for k in KINDS:
            points, share = 100 * counts[k] / max(chars, 1), 100 * counts[k] / max(total, 1)
            print(f"  {k:17s} {points:5.2f} CER points  ({share:4.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
