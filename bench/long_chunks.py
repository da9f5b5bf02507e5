"""Model time of a long clip cut at pauses: one pass vs the pieces one by one, as transcribe.py runs them.

transcribe.py cuts a file at pauses (segment.split: a pause of 0.6 s ends a piece, its middle is left out) and runs
and decodes each piece on its own (stream.py's finals are the same pieces, so live and file text agree). A run has
a fixed cost besides its length; this measures whether the pieces cost more than one pass over the whole clip.
For each model, on one thread, interleaved, medians of CPU time (features + session.run, split between the two):
    whole     the whole clip in one pass (pauses included)
    kept      the pieces' samples end to end in one pass (what the model must read at the least)
    pieces    one run per piece (how transcribe.py runs them)
The clip: ru-synth valid clips joined with 0.4-1.5 s pauses as tools/make_eval_sets.py joins them, or --audio.
    python bench/long_chunks.py [models/demo.onnx ...] [--preset 15x5] [--audio long.wav] [--seconds 60]
--preset exports a QuartzNet with random weights (needs torch; speed does not depend on the values) twice: as
export.py writes it (planar: 1 x K Conv2d) and as the 1-D graph NeMo's exporter writes (Conv1d), whose grouped
convolutions have a per-run cost that made the pieces dearer than one pass.
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
# one thread for numpy's BLAS too: on a loaded machine OpenBLAS's threads made the short mel matrix products of the
# pieces 10-60 times slower than one thread (0.69 s against 0.011 s for 60 s in 2 s pieces), which is not the model
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
from common import random_model  # noqa: E402

VALID = ROOT / "data/ru-synth/valid/manifest.jsonl"
CASES = ("whole", "kept", "pieces")


def joined_clips(seconds: float, seed: int = 0) -> np.ndarray:
    """ru-synth valid clips joined with pauses of 0.4-1.5 s (digital silence or a -70..-50 dB floor), `seconds`."""
    from proslushka import augment
    from proslushka.audio import load_audio
    from proslushka.manifest import iter_manifest_rows

    rng = np.random.default_rng(seed)
    clips, pauses, n = [], [], 0
    for _, row in iter_manifest_rows(VALID):
        if clips:
            floor = None if rng.random() < 0.5 else rng.uniform(-70.0, -50.0)
            pauses.append(augment.silence(int(rng.uniform(0.4, 1.5) * 16000), rng, floor))
        clips.append(load_audio(VALID.parent / row["audio_filepath"]))
        n += len(clips[-1]) + len(pauses[-1] if pauses else [])
        if n >= seconds * 16000:
            break
    return augment.join(clips, pauses)[: int(seconds * 16000)]


class Timed:
    """An onnxruntime session that counts its runs and their CPU time."""

    def __init__(self, session):
        self.session, self.calls, self.seconds = session, 0, 0.0

    def run(self, *args, **kwargs):
        t = time.process_time()
        out = self.session.run(*args, **kwargs)
        self.seconds += time.process_time() - t
        self.calls += 1
        return out


def measure(model: Path, audio: np.ndarray, repeats: int) -> None:
    from proslushka.infer import Transcriber

    tr = Transcriber(model, threads=1)
    pieces = list(tr.chunks(audio))
    kept = np.concatenate([a for _, a in pieces])
    runs = {
        "whole": lambda: tr.logprobs([audio]),
        "kept": lambda: tr.logprobs([kept]),
        "pieces": lambda: [tr.logprobs([a]) for _, a in pieces],
    }
    timed = tr.session = Timed(tr.session)
    got = {case: [] for case in CASES}  # (total, model run) seconds per repeat
    calls = {}
    for r in range(repeats + 1):  # the first round warms up
        for case in CASES:
            timed.calls, timed.seconds = 0, 0.0
            t = time.process_time()
            runs[case]()
            if r:
                got[case].append((time.process_time() - t, timed.seconds))
            calls[case] = timed.calls
    lengths = ", ".join(f"{len(a) / 16000:.1f}" for _, a in pieces)
    print(f"\n{model.name}: {len(audio) / 16000:.1f} s clip, {len(pieces)} pieces of {len(kept) / 16000:.1f} s in all "
          f"({lengths}); CPU ms, medians of {repeats}")  # fmt: skip
    whole = np.median([t for t, _ in got["whole"]])
    kept_t = np.median([t for t, _ in got["kept"]])
    print(f"{'':10}{'runs':>6}{'features':>10}{'model':>9}{'total':>9}{'/whole':>8}{'/kept':>8}")
    for case in CASES:
        total, run = np.median(got[case], axis=0)
        feats = np.median([t - m for t, m in got[case]])
        print(f"{case:10}{calls[case]:6d}{feats * 1e3:10.1f}{run * 1e3:9.1f}{total * 1e3:9.1f}"
              f"{total / whole:8.3f}{total / kept_t:8.3f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", type=Path, default=[ROOT / "models/demo.onnx"])
    p.add_argument("--preset", action="append", default=[], help="also a random-weight QuartzNet of this preset")
    p.add_argument("--audio", type=Path, help="the clip: the start of this file (default: joined ru-synth clips)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()

    from proslushka.audio import load_audio

    audio = load_audio(args.audio)[: int(args.seconds * 16000)] if args.audio else joined_clips(args.seconds)
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        presets = [random_model(Path(tmp), name, planar) for name in args.preset for planar in (True, False)]
        for model in [*args.models, *presets]:
            measure(model, audio, args.repeats)


if __name__ == "__main__":
    main()
