"""Pack a few hours of training audio as small Opus files, for a GPU machine that can take only 64 MiB along.

    python tools/make_gpu_pack.py   # --manifest data/ru-synth/train/manifest.jsonl data/ru-synth/more/manifest.jsonl
                                    # --valid data/ru-synth/valid/manifest.jsonl --mib 30 --out data/gpu-pack

- train/: clips drawn at random (fixed --seed) from the manifests until --mib is used up, copied as they are
  (ru-synth's Opus is ~30 kbit/s: 30 MiB hold ~2.5 h), or with --level re-encoded as Ogg Opus at that libsndfile
  compression level (0.97 is ~15 kbit/s, twice the hours; ~25x real time on one core, so ~10 min for 4 h).
- valid/: the validation files copied byte for byte, so its CER is comparable with the CPU runs'.
Each manifest is written last (temp file, then rename): a pack cut short has no manifest, and a rerun starts over.
tools/gpu_demo.sh trains on the pack; docs/runs/README.md says how to send it to a GPU machine.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proslushka.audio import SAMPLE_RATE, load_audio  # noqa: E402
from proslushka.data import Utterance, read_manifest  # noqa: E402
from proslushka.files import atomic_write  # noqa: E402


def opus_bytes(samples: np.ndarray, level: float) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=level)
    return buf.getvalue()


def row(path: str, u: Utterance) -> str:
    return json.dumps({"audio_filepath": path, "text": u.text, "duration": u.duration}, ensure_ascii=False) + "\n"


def clip_bytes(u: Utterance, level: float | None) -> tuple[bytes, str]:
    """The clip's file as it is, or re-encoded as Opus at `level`; and the suffix to save it under."""
    if level is None:
        return Path(u.audio_filepath).read_bytes(), Path(u.audio_filepath).suffix
    return opus_bytes(load_audio(u.audio_filepath), level), ".opus"


def pack_train(utts: list[Utterance], out: Path, budget: int, level: float | None, seed: int) -> tuple[int, float, int]:
    """Random clips into out/ until `budget` bytes; returns (clips, seconds, bytes)."""
    order = np.random.default_rng(seed).permutation(len(utts))
    lines, used, seconds = [], 0, 0.0
    for i in order:
        u = utts[i]
        data, suffix = clip_bytes(u, level)
        if used + len(data) > budget:
            break
        name = f"{len(lines) // 1000:03d}/{len(lines):06d}{suffix}"
        atomic_write(out / name, data)
        lines.append(row(name, u))
        used += len(data)
        seconds += u.duration
        if len(lines) % 1000 == 0:
            print(f"  {len(lines)} clips, {seconds / 3600:.2f} h, {used / 2**20:.1f} MiB", flush=True)
    atomic_write(out / "manifest.jsonl", "".join(lines))
    return len(lines), seconds, used


def copy_valid(utts: list[Utterance], out: Path) -> int:
    """Copy the validation files as they are (same bytes, same suffix); returns bytes copied."""
    lines, used = [], 0
    for n, u in enumerate(utts):
        name = f"{n:05d}{Path(u.audio_filepath).suffix}"
        shutil.copyfile(u.audio_filepath, out / name)
        lines.append(row(name, u))
        used += (out / name).stat().st_size
    atomic_write(out / "manifest.jsonl", "".join(lines))
    return used


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = "data/ru-synth"
    p.add_argument("--manifest", nargs="+", default=[f"{data}/train/manifest.jsonl", f"{data}/more/manifest.jsonl"])
    p.add_argument("--valid", default=f"{data}/valid/manifest.jsonl", help="copied as is ('' for none)")
    p.add_argument("--out", default="data/gpu-pack")
    p.add_argument("--mib", type=float, default=30.0, help="size budget of train/ (MiB)")
    p.add_argument("--level", type=float, help="re-encode as Opus at this libsndfile compression level, 0..1")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if (args.level is not None and not 0.0 <= args.level <= 1.0) or args.mib <= 0:
        p.error("--level must be within 0..1 and --mib above 0")
    try:
        utts = [u for m in args.manifest for u in read_manifest(m, check_audio=False)]
        valid = read_manifest(args.valid, check_audio=False) if args.valid else []
        out = Path(args.out)
        for part in ("train", "valid"):  # a pack is remade whole: a half-written one must not mix with the new one
            shutil.rmtree(out / part, ignore_errors=True)
            (out / part).mkdir(parents=True)
        clips, seconds, used = pack_train(utts, out / "train", round(args.mib * 2**20), args.level, args.seed)
        if not clips:
            sys.exit(f"make_gpu_pack: not one clip fits in --mib {args.mib}")
        kbits = used * 8 / seconds / 1000
        print(f"{out}/train: {clips} clips, {seconds / 3600:.2f} h, {used / 2**20:.1f} MiB ({kbits:.1f} kbit/s)")
        if valid:
            print(f"{out}/valid: {len(valid)} clips, {copy_valid(valid, out / 'valid') / 2**20:.1f} MiB")
    except (OSError, ValueError) as e:  # a manifest or clip that cannot be read (AudioError is a ValueError)
        sys.exit(f"make_gpu_pack: {e}")


if __name__ == "__main__":
    main()
