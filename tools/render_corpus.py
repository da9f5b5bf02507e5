"""Render the ru-synth corpus (synthetic Russian read speech) from its plan, recipe/ru-synth/plan.jsonl.xz.

    python tools/render_corpus.py                           # train + valid -> data/ru-synth (~7 min on 2 cores)
    python tools/render_corpus.py --splits more             # 25,000 more training clips (~30 min on 2 cores)
    python tools/render_corpus.py --out /tmp/rs --limit 20  # the first 20 clips of each split, a quick look

Every plan row fixes one clip: sentence, engine, voice and settings, so every machine renders the same corpus.
espeak-ng clips are `espeak-ng -v VOICE -s SPEED -p PITCH` (one process per clip: libespeak-ng keeps state from
one sentence to the next, so a long-lived synthesizer would make a clip depend on the ones before it). Festival clips
are the msu_ru_nsh_clunits voice with Duration_Stretch set, then played 2^(pitch_shift_cents/1200) times faster
(pitch and tempo together) by resampling. Everything is resampled to 16 kHz, rounded to 16 bit and written as mono
Ogg Opus by libsndfile.

Output, per split: OUT/SPLIT/REL for each clip (REL from the plan: NNN/ID.opus, or audio/ID.opus for valid),
OUT/SPLIT/manifest.jsonl (audio_filepath relative to it, text, duration in seconds to 3 decimals, read back from
the opus file) and OUT/SPLIT/meta.jsonl (each clip's plan row without `split`, plus its duration). Resumable:
clips already there are kept, each clip and manifest is written to a temp file and renamed into place.

Needs espeak-ng, festival and festvox-ru (apt-get install -y espeak-ng festival festvox-ru) and the Python packages
of requirements.txt (numpy, soundfile, tqdm); it says in one line what is missing before it writes anything.
Exit status: 0 done, 1 a bad plan, an unwritable output or a synthesizer that failed, 2 bad options or missing
packages.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import json
import lzma
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from fractions import Fraction
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proslushka.files import atomic_write, check_writable, remove_stale_temps  # noqa: E402
from proslushka.manifest import one_line, short  # noqa: E402

try:
    import soundfile as sf
except (ImportError, OSError):  # not installed, or no libsndfile: missing_packages() says so in one line
    sf = None
try:
    from tqdm import tqdm
except ImportError:
    tqdm = None

RECIPE = ROOT / "recipe" / "ru-synth"
PLAN = RECIPE / "plan.jsonl.xz"
SR = 16000
ESPEAK, FESTIVAL = "espeak-ng", "festival"
FESTIVAL_VOICE = "msu_ru_nsh_clunits"
# clips per worker task: festival starts in ~0.4 s, so it gets a batch of sentences per process
BATCH = {ESPEAK: 8, FESTIVAL: 20}
# a plan row's fields, in its order
FIELDS = tuple("id split text source engine voice variant speed pitch duration_stretch pitch_shift_cents rel".split())
# the recipe's normalized text; it also keeps every sentence safe inside a festival string and a command line
ALPHABET = frozenset(" абвгдежзийклмнопрстуфхцчшщъыьэюя")
NAME = re.compile(r"[A-Za-z0-9_]+")
VOICE = re.compile(r"[A-Za-z0-9_+-]+")


class RecipeError(ValueError):
    """A plan or recipe file that cannot be used; the message names the file (and line)."""


class RenderError(RuntimeError):
    """A synthesizer or the output failed; the message names the clip or file."""


# ---- the recipe files


def read_text(path: str | os.PathLike) -> str:
    """A recipe file's text, decompressed if it ends in .xz or .gz, and checked against the SHA256SUMS file beside
    it when that lists the decompressed name (the repository's recipe does: a damaged copy is refused)."""
    path = Path(path)
    if not path.is_file():  # missing, a folder, or a device that never ends
        raise RecipeError(f"{path}: no such file")
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise RecipeError(f"{path}: cannot read it ({one_line(e)})") from None
    name = path.name[: -len(path.suffix)] if opener is not open else path.name
    want = recorded_sha256(path.parent / "SHA256SUMS", name)
    if want and hashlib.sha256(data).hexdigest() != want:
        raise RecipeError(f"{path}: its {name} does not have the sha256 that SHA256SUMS records: the copy is damaged")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def recorded_sha256(sums: Path, name: str) -> str | None:
    if not sums.is_file():
        return None
    for line in sums.read_text("utf-8").splitlines():
        digest, _, file = line.partition("  ")
        if file == name:
            return digest
    return None


def row_problem(row: object) -> str | None:
    """Why a plan row cannot be rendered, or None."""
    if not isinstance(row, dict):
        return "not a JSON object"
    missing = [k for k in FIELDS if k not in row]
    if missing:
        return f"no field {', '.join(missing)}"

    def number(key: str, lo: float, hi: float, whole: bool = True) -> str | None:
        v = row[key]
        kinds = (int,) if whole else (int, float)
        if isinstance(v, bool) or not isinstance(v, kinds) or not lo <= v <= hi:
            return f"{key} {short(v)}: not {'a whole number' if whole else 'a number'} in {lo}..{hi}"
        return None

    if not isinstance(row["id"], str) or not NAME.fullmatch(row["id"]):
        return f"id {short(row['id'])}: use letters, digits and _ only"
    if not isinstance(row["split"], str) or not NAME.fullmatch(row["split"]):
        return f"split {short(row['split'])}: use letters, digits and _ only"
    text = row["text"]
    if not isinstance(text, str) or not text.strip() or not set(text) <= ALPHABET:
        return f"text {short(text)}: lower-case Russian letters and spaces only"
    rel = row["rel"]
    if not isinstance(rel, str) or not rel.endswith(".opus") or rel.startswith("/") or ".." in rel.split("/"):
        return f"rel {short(rel)}: a relative path NNN/NAME.opus inside the split's folder"
    if row["engine"] == ESPEAK:
        if not isinstance(row["voice"], str) or not VOICE.fullmatch(row["voice"]):
            return f"voice {short(row['voice'])}: an espeak-ng voice such as ru+m1"
        return number("speed", 80, 500) or number("pitch", 0, 99)
    if row["engine"] == FESTIVAL:
        if row["voice"] != FESTIVAL_VOICE:
            return f"voice {short(row['voice'])}: festival clips use {FESTIVAL_VOICE}"
        if row["pitch_shift_cents"] is not None and (why := number("pitch_shift_cents", -1200, 1200)):
            return why
        return number("duration_stretch", 0.25, 4.0, whole=False)
    return f"engine {short(row['engine'])}: {ESPEAK} or {FESTIVAL}"


def read_plan(path: str | os.PathLike) -> list[dict]:
    """The plan's rows in order (a .jsonl, or .jsonl.xz / .jsonl.gz read as it is), each checked, ids unique."""
    rows, seen = [], {}
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecipeError(f"{path}:{n}: not a JSON row ({e.msg}); the file is damaged or cut short") from None
        why = row_problem(row)
        for key in (("id", row["id"]), ("rel", row["split"], row["rel"])) if why is None else ():
            if key in seen:  # two rows would write one file
                why = f"{key[0]} {short(key[-1])} again (line {seen[key]} has it)"
                break
            seen[key] = n
        if why:
            raise RecipeError(f"{path}:{n}: {why}")
        rows.append(row)
    return rows


# ---- synthesis, resampling, encoding


@functools.cache
def lowpass(up: int, down: int) -> np.ndarray:
    """The resampler's anti-aliasing filter: a sinc cut off at the lower of the two Nyquist frequencies, Kaiser
    window (beta 5), 20 * max(up, down) + 1 taps, gain `up` (zero-stuffing by `up` divides the level by up)."""
    m = max(up, down)
    n = np.arange(-10 * m, 10 * m + 1)
    h = np.sinc(n / m) * np.kaiser(len(n), 5.0)
    return h * (up / h.sum())


def resample(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """x at up/down times its rate, as a polyphase FIR: ceil(len(x) * up / down) samples, output i centred on input
    position i * down / up, zeros beyond both ends (scipy's resample_poly, whose output the corpus was made with)."""
    g = math.gcd(up, down)
    up, down = up // g, down // g
    if up == down:
        return x.copy()
    h = lowpass(up, down)
    half = (len(h) - 1) // 2
    taps = -(-len(h) // up)
    phases = np.zeros(taps * up)
    phases[: len(h)] = h
    phases = phases.reshape(taps, up).T  # phases[p, q] = h[p + q * up]: the taps that meet input samples
    n_out = -(-len(x) * up // down)
    centre = np.arange(n_out) * down + half  # h's index at input sample 0, for each output sample
    phase, newest = centre % up, taps + centre // up  # newest: the last input sample under the filter, in padded
    padded = np.concatenate([np.zeros(taps), x, np.zeros(max(0, int(newest[-1]) - taps - len(x) + 1))])
    y = np.zeros(n_out)
    for q in range(taps):
        y += phases[phase, q] * padded[newest - q]
    return y


def to_16k(x: np.ndarray, sr: int, speed: float = 1.0) -> np.ndarray:
    """16 kHz, played `speed` times faster, rounded to 16 bit as float32 (what the encoder is given)."""
    r = Fraction(SR / (sr * speed)).limit_denominator(2000)
    y = resample(x, r.numerator, r.denominator)
    return (np.round(np.clip(y, -1.0, 1.0) * 32767.0) / 32768.0).astype(np.float32)


def speed_of(row: dict) -> float:
    return 2 ** ((row["pitch_shift_cents"] or 0) / 1200.0) if row["engine"] == FESTIVAL else 1.0


def read_wav(path: str) -> tuple[np.ndarray, int]:
    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise RenderError(f"{path}: the synthesizer wrote {w.getnchannels()} channels of {w.getsampwidth()} bytes")
        return np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768.0, w.getframerate()


def synth_espeak(rows: list[dict], wavs: list[str], tmp: str) -> None:
    for row, wav in zip(rows, wavs, strict=True):
        cmd = [ESPEAK, "-v", row["voice"], "-s", str(row["speed"]), "-p", str(row["pitch"]), "-w", wav, row["text"]]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not os.path.isfile(wav):
            raise RenderError(f"{row['id']}: {ESPEAK} failed (exit {r.returncode}: {one_line(r.stderr)})")


def synth_festival(rows: list[dict], wavs: list[str], tmp: str) -> None:
    """One festival process for the batch: a Scheme script that saves each sentence as a RIFF wav."""
    lines = [f"(voice_{FESTIVAL_VOICE})"]
    for row, wav in zip(rows, wavs, strict=True):
        lines.append(f"(Parameter.set 'Duration_Stretch {row['duration_stretch']})")
        lines.append(f'(utt.save.wave (SynthText "{row["text"]}") "{wav}" \'riff)')
    script = os.path.join(tmp, "batch.scm")
    with open(script, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    r = subprocess.run([FESTIVAL, "--batch", script], capture_output=True, text=True)
    lost = [row["id"] for row, wav in zip(rows, wavs, strict=True) if not os.path.isfile(wav)]
    if r.returncode != 0 or lost:
        raise RenderError(
            f"{FESTIVAL} failed on {', '.join(lost[:3]) or rows[0]['id']} (exit {r.returncode}: "
            f"{one_line(r.stdout + r.stderr)})"
        )


def write_opus(path: str, y: np.ndarray) -> None:
    buf = io.BytesIO()
    sf.write(buf, y, SR, format="OGG", subtype="OPUS")
    atomic_write(path, buf.getvalue())


def render_batch(batch: tuple[str, list[dict], list[str]]) -> int:
    """Synthesize one batch of one engine's clips into a temp folder, then resample and encode each into place."""
    engine, rows, dsts = batch
    with tempfile.TemporaryDirectory(prefix="ru-synth-") as tmp:
        wavs = [os.path.join(tmp, f"{i}.wav") for i in range(len(rows))]
        (synth_espeak if engine == ESPEAK else synth_festival)(rows, wavs, tmp)
        for row, wav, dst in zip(rows, wavs, dsts, strict=True):
            x, sr = read_wav(wav)
            write_opus(dst, to_16k(x, sr, speed_of(row)))
    return len(rows)


def batches(todo: list[dict], folder: Path, jobs: int) -> list[tuple[str, list[dict], list[str]]]:
    """The clips to render cut into per-engine batches, in plan order, small enough to keep `jobs` processes busy."""
    size = {e: max(1, min(BATCH[e], math.ceil(sum(r["engine"] == e for r in todo) / jobs))) for e in BATCH}
    out, open_ = [], {}
    for row in todo:
        engine = row["engine"]
        rows, dsts = open_.setdefault(engine, ([], []))
        rows.append(row)
        dsts.append(str(folder / row["rel"]))
        if len(rows) == size[engine]:
            out.append((engine, *open_.pop(engine)))
    return out + [(engine, rows, dsts) for engine, (rows, dsts) in open_.items()]


def render_clips(rows: list[dict], folder: Path, jobs: int, label: str) -> int:
    """Render the rows whose clip is not in `folder` yet, over `jobs` processes, with a progress bar; returns how
    many were rendered."""
    todo = [r for r in rows if not (folder / r["rel"]).exists()]
    for sub in {(folder / r["rel"]).parent for r in todo}:  # temps of a run that was killed mid-write
        remove_stale_temps(sub / "clip.opus", name_glob="*.opus")  # every clip's in that folder
    engines = ", ".join(f"{sum(r['engine'] == e for r in todo)} {e}" for e in BATCH)
    print(f"{label}: {len(todo)} of {len(rows)} clips to render ({engines})", flush=True)
    work = batches(todo, folder, jobs)
    with tqdm(total=len(todo), unit="clip", desc=label, disable=not todo) as bar:
        if jobs == 1 or len(work) == 1:
            for b in work:
                bar.update(render_batch(b))
        elif work:
            with Pool(min(jobs, len(work))) as pool:
                for n in pool.imap_unordered(render_batch, work):
                    bar.update(n)
    return len(todo)


def write_manifests(folder: Path, rows: list[dict]) -> tuple[int, float]:
    """manifest.jsonl and meta.jsonl of the rows whose clip exists, in plan order; returns (clips, seconds)."""
    manifest, meta = [], []
    for row in rows:
        path = folder / row["rel"]
        if not path.exists():
            continue
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as e:
            raise RenderError(f"{path}: unreadable ({one_line(e)}); delete it and run again") from None
        duration = round(info.frames / info.samplerate, 3)
        manifest.append({"audio_filepath": row["rel"], "text": row["text"], "duration": duration})
        meta.append({**{k: v for k, v in row.items() if k != "split"}, "duration": duration})
    for name, out in (("manifest.jsonl", manifest), ("meta.jsonl", meta)):
        atomic_write(folder / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    return len(manifest), sum(r["duration"] for r in manifest)


# ---- what the machine lacks


def festival_has_voice() -> bool:
    r = subprocess.run([FESTIVAL, "--batch", f"(voice_{FESTIVAL_VOICE})"], capture_output=True, text=True)
    return r.returncode == 0 and "SIOD ERROR" not in r.stdout + r.stderr


def missing_packages(engines: set[str]) -> str | None:
    """One line naming what rendering these engines' clips needs and this machine lacks, with the install
    commands; None when nothing is missing."""
    apt, pip = [], []
    if ESPEAK in engines and shutil.which(ESPEAK) is None:
        apt.append("espeak-ng")
    if FESTIVAL in engines:
        if shutil.which(FESTIVAL) is None:
            apt += ["festival", "festvox-ru"]
        elif not festival_has_voice():
            apt.append("festvox-ru")
    if sf is None or "OPUS" not in sf.available_subtypes("OGG"):
        pip.append("soundfile")  # 0.13+ wheels carry a libsndfile that writes Opus
    if tqdm is None:
        pip.append("tqdm")
    if not apt and not pip:
        return None
    commands = [f"apt-get install -y {' '.join(apt)}"] if apt else []
    commands += [f"pip install -U {' '.join(pip)}"] if pip else []
    return f"missing {', '.join(apt + pip)}: {' && '.join(commands)}"


# ---- the command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/ru-synth"), help="corpus folder (default: %(default)s)")
    p.add_argument(
        "--splits",
        nargs="+",
        default=["train", "valid"],
        help="splits to render, spaces or commas between: train, valid, more (default: train valid)",
    )
    p.add_argument("--limit", type=int, default=0, help="render only the first N clips of each split")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all cores)")
    p.add_argument("--plan", type=Path, default=PLAN, help="the plan (default: recipe/ru-synth/plan.jsonl.xz)")
    args = p.parse_args(argv)
    splits = [s for arg in args.splits for s in arg.split(",") if s]
    if args.limit < 0 or args.jobs < 1:
        p.error("--limit must be at least 0 and --jobs at least 1")
    try:
        plan = read_plan(args.plan)
    except RecipeError as e:
        print(f"render_corpus: {e}", file=sys.stderr)
        return 1
    have = list(dict.fromkeys(r["split"] for r in plan))
    unknown = [s for s in splits if s not in have]
    if unknown or not splits:
        p.error(f"--splits {' '.join(unknown)}: the plan has the splits {', '.join(have)}")
    chosen = {}
    for split in dict.fromkeys(splits):
        rows = [r for r in plan if r["split"] == split]
        chosen[split] = rows[: args.limit] if args.limit else rows
    todo = [r for split, rows in chosen.items() for r in rows if not (args.out / split / r["rel"]).exists()]
    engines = {r["engine"] for r in todo}
    if missing := missing_packages(engines):
        print(f"render_corpus: {missing}", file=sys.stderr)
        return 2

    t0 = time.time()
    try:
        for split, rows in chosen.items():
            folder = args.out / split
            check_writable(folder / "manifest.jsonl")
            render_clips(rows, folder, args.jobs, split)
            clips, seconds = write_manifests(folder, rows)
            print(f"{split}: {clips} of {len(rows)} clips, {seconds / 3600:.2f} h -> {folder / 'manifest.jsonl'}")
    except (RenderError, OSError) as e:
        print(f"render_corpus: {one_line(e, 300)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("render_corpus: interrupted; the clips written so far are kept: run it again to go on", file=sys.stderr)
        return 130
    print(f"done in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
