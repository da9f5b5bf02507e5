"""Make the noisy and long-file evaluation sets from ru-synth valid, deterministically (same files every run).

    python tools/make_eval_sets.py   # --valid data/ru-synth/valid/manifest.jsonl --train ... --out data/ru-synth/eval

- noisy/manifest.jsonl: every valid clip at each --snr (default 5, 10, 20 dB), the noise kind cycling through
  white, pink, brown, babble (4 training clips, never valid ones) and mains hum (proslushka.augment's recipe).
- long/manifest.jsonl: the valid clips in order, joined --clips_per_file at a time into files of a few minutes, with
  pauses of 0.4-1.5 s of digital silence or a low noise floor; the reference is the clips' texts joined. Its CER
  against the same clips one by one tells whether long audio is cut and decoded as well as short clips.
Audio is 16 kHz PCM16 WAV (exact samples, no codec in between).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proslushka import augment  # noqa: E402
from proslushka.audio import load_audio  # noqa: E402
from proslushka.cli import fail  # noqa: E402
from proslushka.files import atomic_write  # noqa: E402

SR = 16000


def rows(manifest: Path) -> list[dict]:
    out = []
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                row["audio_filepath"] = str((manifest.parent / row["audio_filepath"]).resolve())
                out.append(row)
    return out


def write_wav(path: Path, samples: np.ndarray) -> None:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1, 32767 / 32768), SR, subtype="PCM_16", format="WAV")
    atomic_write(path, buf.getvalue())


def manifest_line(path: Path, folder: Path, text: str, samples: int) -> str:
    row = {"audio_filepath": str(path.relative_to(folder)), "text": text, "duration": round(samples / SR, 3)}
    return json.dumps(row, ensure_ascii=False) + "\n"


def noisy_set(valid: list[dict], train: list[dict], out: Path, snrs: list[float]) -> int:
    folder = out / "noisy"
    kinds = augment.NOISE_KINDS
    lines = []

    def speech(rng: np.random.Generator) -> np.ndarray:
        return load_audio(train[rng.integers(len(train))]["audio_filepath"], SR)

    for i, row in enumerate(valid):
        clean = load_audio(row["audio_filepath"], SR)
        for j, snr in enumerate(snrs):
            kind = kinds[(i + j) % len(kinds)]
            rng = np.random.default_rng([i, j])
            x = augment.limit(augment.add_at_snr(clean, augment.noise(len(clean), kind, rng, speech, SR), snr))
            path = folder / f"snr{snr:g}" / f"{i:04d}_{kind}.wav"
            write_wav(path, x)
            lines.append(manifest_line(path, folder, row["text"], len(x)))
    atomic_write(folder / "manifest.jsonl", "".join(lines))
    return len(lines)


def long_set(valid: list[dict], out: Path, clips_per_file: int) -> int:
    folder = out / "long"
    lines = []
    for f, start in enumerate(range(0, len(valid), clips_per_file)):
        group = valid[start : start + clips_per_file]
        rng = np.random.default_rng([1000, f])
        clips = [load_audio(r["audio_filepath"], SR) for r in group]
        pauses = []
        for _ in group[1:]:
            floor = None if rng.random() < 0.5 else rng.uniform(-70.0, -50.0)
            pauses.append(augment.silence(int(rng.uniform(0.4, 1.5) * SR), rng, floor))
        x = augment.join(clips, pauses)
        path = folder / f"long_{f:02d}.wav"
        write_wav(path, x)
        lines.append(manifest_line(path, folder, " ".join(r["text"] for r in group), len(x)))
    atomic_write(folder / "manifest.jsonl", "".join(lines))
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--valid", default="data/ru-synth/valid/manifest.jsonl", help="default: %(default)s")
    p.add_argument("--train", default="data/ru-synth/train/manifest.jsonl", help="babble source; default: %(default)s")
    p.add_argument("--out", default="data/ru-synth/eval", help="default: %(default)s")
    p.add_argument("--snr", type=float, nargs="+", default=[5.0, 10.0, 20.0], help="default: %(default)s")
    p.add_argument("--clips_per_file", type=int, default=60, help="default: %(default)s (about 3.5 minutes)")
    args = p.parse_args(argv)
    for m in (args.valid, args.train):
        if not Path(m).is_file():
            return fail(f"{m}: no such manifest (render ru-synth first: python tools/render_corpus.py)", 2)
    valid, train = rows(Path(args.valid)), rows(Path(args.train))
    out = Path(args.out)
    n = noisy_set(valid, train, out, args.snr)
    print(f"{out / 'noisy' / 'manifest.jsonl'}: {n} clips ({len(valid)} x SNR {args.snr} dB)")
    n = long_set(valid, out, args.clips_per_file)
    print(f"{out / 'long' / 'manifest.jsonl'}: {n} files of up to {args.clips_per_file} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
