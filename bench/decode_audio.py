"""Decoding in-process (libsndfile, ffmpeg only for what it does not read) vs one ffmpeg process per file, in one run:

1. decode time per file: a 3 s clip (samples/portret.opus, and the same as 16 kHz wav, mp3, ogg and m4a), median
   of --repeats: the old path (an ffmpeg subprocess), the new one (audio.load_audio), and PyAV if it is installed
   (the other in-process candidate);
2. the whole transcribe path with the demo model (greedy) on the ru-synth valid folder: wall time of transcribe.py at
   one and two threads, the --baseline commit (one ffmpeg per file) vs this tree, and CER of both from the manifest;
3. peak RSS of transcribe.py on a 60-minute file (wav and opus), baseline vs this tree;
4. the Lambda handler on a 3-hour silent Opus (the hardening case): answer, time and peak RSS.
    python bench/decode_audio.py [--repeats 15] [--baseline de3946a]
Run it on a quiet machine: every figure is a wall time or a peak.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from inference import ROOT  # also puts the repository on sys.path, OMP_NUM_THREADS=1

VALID = ROOT / "data/ru-synth/valid"
CLIP = ROOT / "samples/portret.opus"
CODECS = {"wav": "pcm_s16le", "mp3": "libmp3lame", "ogg": "libvorbis", "m4a": "aac"}
RSS = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); " \
      "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"  # fmt: skip

# the 60-minute file is written as bench/transcribe.py writes its long files
_spec = importlib.util.spec_from_file_location("bench_transcribe", Path(__file__).with_name("transcribe.py"))
bench_transcribe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_transcribe)


def ffmpeg(*args) -> bytes:
    from proslushka.audio import ffmpeg_path

    cmd = [ffmpeg_path(), "-nostdin", "-v", "error", "-y", *map(str, args)]
    return subprocess.run(cmd, check=True, capture_output=True).stdout


def old_decode(path: Path) -> np.ndarray:
    """What audio.load_audio did before: one ffmpeg process per file, s16le on a pipe."""
    return np.frombuffer(ffmpeg("-i", path, "-map", "0:a:0", "-f", "s16le", "-ac", "1", "-ar", 16000, "-"), "<i2")


def pyav_decode(path: Path) -> np.ndarray:
    import av

    parts = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        for frame in container.decode(audio=0):
            parts += [f.to_ndarray() for f in resampler.resample(frame)]
        parts += [f.to_ndarray() for f in resampler.resample(None)]
    return np.concatenate(parts, axis=1).reshape(-1)


def median_ms(fn, path: Path, repeats: int) -> float:
    fn(path)  # warm: imports, the page cache
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def decode_times(tmp: Path, repeats: int) -> None:
    from proslushka.audio import load_audio

    decoders = {"old: ffmpeg process": old_decode, "new: load_audio": load_audio}
    if importlib.util.find_spec("av"):
        decoders["PyAV"] = pyav_decode
    files = {"opus": CLIP}
    for ext, codec in CODECS.items():
        files[ext] = tmp / f"clip.{ext}"
        ffmpeg("-i", CLIP, "-ar", 16000, "-ac", 1, "-c:a", codec, files[ext])
    print(f"\n1. decode time per file, ms (median of {repeats}; a 3 s clip; the new path's decoder in brackets)")
    print("   " + f"{'':6}" + "".join(f"{name:>22}" for name in decoders) + f"{'old / new':>12}")
    for ext, path in files.items():
        ms = {name: median_ms(fn, path, repeats) for name, fn in decoders.items()}
        which = "ffmpeg" if ext == "m4a" else "libsndfile"
        cells = "".join(f"{v:22.2f}" for v in ms.values())
        print(f"   {ext:6}{cells}{ms['old: ffmpeg process'] / ms['new: load_audio']:11.1f}x  [{which}]")


def baseline_tree(ref: str, tmp: Path) -> Path:
    """The files of commit `ref` (git archive), to run its transcribe.py beside this tree's."""
    out = tmp / "baseline"
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    tmp.joinpath("baseline.tar").write_bytes(archive)
    with tarfile.open(tmp / "baseline.tar") as tar:
        tar.extractall(out, filter="data")
    return out


def timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}: {r.stderr.strip()[-500:]}")
    return time.perf_counter() - t, r.stderr


def greedy(tree: Path) -> list[str]:
    """--lm none where transcribe.py has a language model: the comparison is of decoding audio, not of search."""
    return ["--lm", "none"] if '"--lm"' in (tree / "transcribe.py").read_text() else []


def whole_path(trees: dict[str, Path], tmp: Path) -> None:
    files = sum(1 for _ in VALID.rglob("*.opus"))
    print(f"\n2. transcribe.py on the ru-synth valid folder ({files} opus files), demo model: wall time, s")
    print(f"   {'':10}{'baseline':>10}{'new':>10}{'speed-up':>10}")
    for threads in (1, 2):
        wall = {}
        for name, tree in trees.items():
            cmd = [sys.executable, str(tree / "transcribe.py"), str(VALID), "--threads", str(threads), *greedy(tree)]
            wall[name], _ = timed([*cmd, "-o", str(tmp / f"{name}{threads}.txt")])
        print(
            f"   {threads} thread{'s' if threads > 1 else ' '}  {wall['baseline']:10.1f}{wall['new']:10.1f}"
            f"{wall['baseline'] / wall['new']:9.2f}x"
        )
    for name, tree in trees.items():
        cmd = [sys.executable, str(tree / "transcribe.py"), "--manifest", str(VALID / "manifest.jsonl"),
               "--report", str(tmp / f"{name}.tsv"), "--threads", "2", *greedy(tree)]  # fmt: skip
        _, err = timed(cmd)
        score = re.search(r"WER[^\n]*", err)
        print(f"   accuracy, {name:8}: {score.group(0) if score else err.strip()[-200:]}")


def peak_rss(trees: dict[str, Path], tmp: Path) -> None:
    speech = bench_transcribe.clips_of(VALID / "manifest.jsonl", 40)
    wav = tmp / "long60.wav"
    bench_transcribe.write_long(wav, 60, speech)
    opus = tmp / "long60.opus"
    ffmpeg("-i", wav, "-c:a", "libopus", "-b:a", "32k", opus)
    print("\n3. peak RSS of transcribe.py on a 60-minute file, MB (one thread), and its wall time")
    for path in (wav, opus):
        cells = []
        for name, tree in trees.items():
            cmd = [sys.executable, str(tree / "transcribe.py"), str(path), "--threads", "1", *greedy(tree)]
            cmd += ["-o", str(tmp / "o.txt")]
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", RSS, *cmd], check=True, capture_output=True, text=True)
            took = time.perf_counter() - t
            code, kb = map(int, out.stdout.split())
            cells.append(f"{name} {int(kb) / 1024:5.0f} MB in {took:4.0f} s" + (f" (exit {code})" if code else ""))
        print(f"   {path.suffix[1:]:5} " + ";  ".join(cells))


LAMBDA = """
import base64, json, resource, sys, time
from proslushka import serverless
data = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
t = time.perf_counter()
r = serverless.handler({"body": data, "isBase64Encoded": True}, None)
took = time.perf_counter() - t
print(r["statusCode"], json.loads(r["body"]).get("error", ""), f"{took:.2f} s,",
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
"""


def lambda_long_silence(tmp: Path) -> None:
    import soundfile as sf

    path = tmp / "silence3h.opus"
    with sf.SoundFile(path, "w", 16000, 1, format="OGG", subtype="OPUS") as f:
        for _ in range(3 * 360):
            f.write(np.zeros(160000, np.int16))
    env = {"PROSLUSHKA_MODEL": str(ROOT / "models/demo.onnx"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", LAMBDA, str(path)], capture_output=True, text=True, cwd=ROOT, env=env)
    print(
        f"\n4. Lambda handler, a 3-hour silent Opus ({path.stat().st_size / 1e6:.1f} MB), default limits: "
        f"{r.stdout.strip() or r.stderr.strip()[-300:]}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument(
        "--baseline",
        default="de3946a",
        help="a commit that decodes with one ffmpeg process per file "
        "(default: %(default)s, the last one before in-process decoding)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        decode_times(tmp, args.repeats)
        if not (VALID / "manifest.jsonl").is_file():
            print(f"\n2-3. pending: no {VALID} (render ru-synth first, see the README)")
        else:
            trees = {"baseline": baseline_tree(args.baseline, tmp), "new": ROOT}
            whole_path(trees, tmp)
            peak_rss(trees, tmp)
        lambda_long_silence(tmp)


if __name__ == "__main__":
    main()
