"""Build the AWS Lambda zip: the handler with the torch-free part of proslushka, model.onnx, numpy, onnxruntime,
soundfile (libsndfile: wav, flac, ogg, opus, mp3) and soxr for Linux x86_64, and a static audio-only ffmpeg for
the other formats (m4a/aac, amr, wma, video). Handler: proslushka.serverless.handler.

    tools/build_ffmpeg.sh && python -m proslushka.bundle -o dist/lambda.zip --model models/demo.onnx

Lambda takes at most 250 MB unzipped; imageio-ffmpeg's ffmpeg alone is 170 MB and PyAV 100 MB, so the formats
libsndfile does not read go through a 3 MB ffmpeg that tools/build_ffmpeg.sh builds at build/ffmpeg/ffmpeg, where
--ffmpeg looks first (--no_ffmpeg: a bundle without it, for libsndfile's formats only). The dependencies are
pip's manylinux wheels for --python (the versions installed here, so the bundle runs what the tests ran), or with
--site_packages the installed files themselves. Tests, headers, type stubs and onnxruntime's tools and C API
library (the Python extension carries its own copy of the runtime) are left out; .pyc files are compiled in,
because Lambda's code folder is read-only. Before writing the zip, a fresh Python runs the bundle alone on one
clip in each of opus, ogg, wav, mp3 and m4a (encoded here with ffmpeg) and times its cold start.
"""

from __future__ import annotations

import argparse
import ast
import compileall
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .cli import fail
from .decode import DEMO_LM  # bundled by default only with the model it was tuned for

PACKAGE = Path(__file__).resolve().parent
# soundfile needs cffi (its _cffi_backend) and typing_extensions at run time; soxr resamples what is not 16 kHz
DEPENDENCIES = ("numpy", "onnxruntime", "soundfile", "cffi", "typing_extensions", "soxr")
LM_DEPENDENCIES = ("flashlight-text",)  # beam search with a KenLM, when the bundle carries one
PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{v}_x86_64" for v in range(24, 35)]  # Amazon Linux 2023: 2.34
DROP = [
    "bin", "**/__pycache__", "**/tests", "**/*.pyi", "**/*.pxd", "**/*.h",
    "numpy/f2py", "numpy/distutils", "numpy/_pyinstaller", "numpy/_core/include", "numpy/_core/lib",
    "numpy/random/_examples", "numpy/random/lib", "numpy/doc",
    "onnxruntime/transformers", "onnxruntime/tools", "onnxruntime/quantization", "onnxruntime/datasets",
    "onnxruntime/capi/libonnxruntime.so*",
    "numpy/_core/_simd.*",  # numpy's SIMD self-test module, 1.5 MB
    # wheels cannot hold symlinks, so flashlight ships each library three times; the extensions load the .so.0
    "flashlight/lib/text/libflashlight-text*.so", "flashlight/lib/text/libflashlight-text*.so.0.*",
]  # fmt: skip
ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed, so that the same inputs give the same zip
LAMBDA_LIMIT = 250_000_000
SMALL_FFMPEG = "build/ffmpeg/ffmpeg"  # where tools/build_ffmpeg.sh puts its audio-only build


def package_modules(entry: str = "serverless") -> list[str]:
    """File names of the proslushka modules that `entry` imports, directly or not (parsed, not imported)."""
    todo, seen = [entry], {"__init__"}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level == 1 or node.module == "proslushka"):
                todo += [node.module] if node.level == 1 and node.module else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("proslushka."):
                todo.append(node.module.split(".")[1])
    return sorted(f"{m}.py" for m in seen)


def stage(
    folder: Path, model: Path, ffmpeg: Path | None, python: str | None, site_packages: bool, lm: Path | None = None
) -> None:
    """Lay out the bundle's files in `folder`: the dependencies, proslushka/, model.onnx, bin/ffmpeg (if given),
    lm.bin with lm.words and lm.json (if given).

    python=None (and no site_packages) leaves the dependencies out: for tests of the layout. An LM binary without
    NAME.words gets lm.words from the vocabulary it stores (DecoderError if it has none).
    """
    from .decode import binary_words, lm_kind

    folder.mkdir(parents=True, exist_ok=True)
    dependencies = DEPENDENCIES + (LM_DEPENDENCIES if lm else ())
    if site_packages:
        copy_installed(folder, dependencies)
    elif python:
        pip_wheels(folder, python, dependencies)
    for pattern in DROP:
        for path in sorted(folder.glob(pattern), reverse=True):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (folder / "proslushka").mkdir()
    for name in package_modules():
        shutil.copy2(PACKAGE / name, folder / "proslushka" / name)
    shutil.copy2(model, folder / "model.onnx")
    if lm is not None:  # serverless.py looks for lm.bin; decode.py finds lm.words and lm.json beside it
        for src in (lm, lm.with_suffix(".words"), lm.with_suffix(".json")):
            if src.is_file():
                shutil.copy2(src, folder / ("lm" + src.suffix if src != lm else "lm.bin"))
        if not lm.with_suffix(".words").is_file() and lm_kind(lm) == "binary":  # Lambda's code folder is read-only
            (folder / "lm.words").write_text("".join(w + "\n" for w in binary_words(lm)), encoding="utf-8")
    if ffmpeg is not None:
        (folder / "bin").mkdir()
        shutil.copy2(ffmpeg, folder / "bin" / "ffmpeg")
        os.chmod(folder / "bin" / "ffmpeg", 0o755)


def pip_wheels(folder: Path, python: str, dependencies: tuple[str, ...] = DEPENDENCIES) -> None:
    """The installed versions of `dependencies` as manylinux x86_64 wheels for CPython `python`, unpacked."""
    pins = [f"{d}=={importlib.metadata.version(d)}" for d in dependencies]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-compile",
        "--only-binary=:all:",
        "--target",
        str(folder),
        "--python-version",
        python,
        "--implementation",
        "cp",
        *pins,
    ]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd, check=True, env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"})


def copy_installed(folder: Path, dependencies: tuple[str, ...] = DEPENDENCIES) -> None:
    """The files of the installed `dependencies` (this Python, this platform), as their RECORDs list them."""
    for dist in dependencies:
        d = importlib.metadata.distribution(dist)
        for f in d.files or []:
            src = Path(d.locate_file(f))
            if src.is_file() and not f.parts[0].startswith(".."):  # skip console scripts outside site-packages
                (folder / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, folder / f)


def compile_pyc(folder: Path) -> None:
    # unchecked-hash .pyc: valid whatever the file times become in the zip, and never re-validated at import
    mode = compileall.py_compile.PycInvalidationMode.UNCHECKED_HASH
    compileall.compile_dir(str(folder), quiet=2, invalidation_mode=mode)


def write_zip(folder: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo.from_file(path, path.relative_to(folder).as_posix())  # keeps the exec bits
            info.date_time = ZIP_DATE
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f:
                z.writestr(info, f.read(), compresslevel=6)
    os.replace(tmp, out)


def sizes(folder: Path) -> dict[str, int]:
    """Unzipped bytes by top-level entry, largest first."""
    out: dict[str, int] = {}
    for p in folder.rglob("*"):
        if p.is_file():
            top = p.relative_to(folder).parts[0]
            out[top] = out.get(top, 0) + p.stat().st_size
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


SMOKE = """
import base64, io, json, os, sys, time, wave
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from proslushka import serverless
t1 = time.perf_counter()
serverless.transcriber()
t2 = time.perf_counter()
def request(data):
    r = serverless.handler({"body": base64.b64encode(data).decode(), "isBase64Encoded": True}, None)
    return r["statusCode"], json.loads(r["body"])
buf = io.BytesIO()
with wave.open(buf, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000); w.writeframes(bytes(32000))
status, body = request(buf.getvalue())
t3 = time.perf_counter()
assert status == 200, body
answers = {}
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        answers[os.path.basename(path)] = request(f.read())
files = {m: sys.modules[m].__file__ for m in ("proslushka.serverless", "numpy", "onnxruntime", "soundfile")}
print(json.dumps({"import": t1 - t0, "session": t2 - t1, "request": t3 - t2, "files": files, "answers": answers,
                  "ffmpeg": os.environ.get("PROSLUSHKA_FFMPEG"), "torch": "torch" in sys.modules,
                  "lm": serverless.transcriber().decoder is not None}))
"""
SMOKE_CLIP = PACKAGE.parent / "samples" / "portret.opus"
SMOKE_CODECS = {"opus": None, "ogg": "libvorbis", "wav": "pcm_s16le", "mp3": "libmp3lame", "m4a": "aac"}


def smoke_clips(folder: Path) -> list[Path]:
    """samples/portret.opus as opus, ogg (Vorbis), wav, mp3 and m4a (48 kHz, as ffmpeg decodes Opus), encoded with
    the ffmpeg that transcription uses here: the bundle must read each."""
    from .audio import ffmpeg_path

    paths = []
    for ext, codec in SMOKE_CODECS.items():
        path = folder / f"portret.{ext}"
        if codec is None:
            shutil.copy2(SMOKE_CLIP, path)
        else:
            cmd = [ffmpeg_path(), "-nostdin", "-v", "error", "-i", str(SMOKE_CLIP), "-c:a", codec, str(path)]
            subprocess.run(cmd, check=True, capture_output=True)
        paths.append(path)
    return paths


def smoke_test(folder: Path, clips: list[Path] = (), isolated: bool = True) -> dict:
    """Run the unzipped bundle in a fresh Python: import, model load, a first request (1 s of silence), then one
    request for each of `clips`.

    isolated: no site-packages, so the dependencies must come from the bundle (then it only works when the
    bundle was built for this Python). Returns the seconds of "import", "session", "request" and the whole
    "process", the files the modules came from, and the (status, body) "answers" by clip name.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROSLUSHKA_")}
    cmd = [sys.executable, *(["-I", "-S"] if isolated else []), "-c", SMOKE, str(folder), *map(str, clips)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"the bundle does not run: {r.stderr.strip().splitlines()[-1] if r.stderr else r.stdout}")
    return {**json.loads(r.stdout), "process": wall}


def check_answers(answers: dict[str, list]) -> list[str]:
    """One line per clip; raises RuntimeError if any was refused or came back empty."""
    lines = []
    for name, (status, body) in answers.items():
        if status != 200 or not body.get("text"):
            raise RuntimeError(f"the bundle failed on {name}: HTTP {status} {body}")
        lines.append(f"  {name}: {body['duration']:.2f} s, {body['text']!r}")
    return lines


def default_lm(model: Path) -> tuple[Path | None, str]:
    """(the LM to bundle without --lm, the line that says so): the demo LM only with the model it was tuned for, as
    transcribe.py decides: on another model its weights would turn letter soup into fluent filler."""
    from .decode import demo_lm_for

    if demo_lm_for(model):
        return DEMO_LM, f"lm: {DEMO_LM.name} (tuned for this model; --lm none for a greedy bundle)"
    return None, f"lm: none (greedy): {DEMO_LM.name} is tuned for the demo model only; --lm PATH to bundle one"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="dist/lambda.zip", help="zip to write (default: %(default)s)")
    p.add_argument("--model", default="models/demo.onnx", help="ONNX model from export.py (default: %(default)s)")
    p.add_argument(
        "--ffmpeg",
        default=SMALL_FFMPEG,
        help="a static Linux x86_64 ffmpeg for the formats libsndfile "
        "does not read (default: %(default)s, as tools/build_ffmpeg.sh makes it)",
    )
    p.add_argument(
        "--no_ffmpeg",
        action="store_true",
        help="leave ffmpeg out: the bundle then reads only wav, flac, ogg, opus and mp3 (libsndfile's formats)",
    )
    p.add_argument(
        "--lm",
        help="a KenLM (with NAME.json beside it, and NAME.words, made from a binary if missing) for beam search in "
        "the handler, or 'none' for greedy (default: models/demo-lm.bin when --model is the model it was tuned for, "
        "the demo model; none with any other)",
    )
    p.add_argument(
        "--python",
        default=f"{sys.version_info.major}.{sys.version_info.minor}",
        help="the Lambda runtime's Python version (default: this one, %(default)s)",
    )
    p.add_argument(
        "--site_packages",
        action="store_true",
        help="copy the installed dependencies instead of "
        "downloading wheels (then --python must be this Python's version)",
    )
    args = p.parse_args(argv)
    from .decode import DecoderError, lm_kind, stored_words, vocab_path

    model = Path(args.model)
    if args.lm is None and model.is_file():
        lm, note = default_lm(model)
        print(note)
    else:
        lm = None if args.lm in ("none", None) else Path(args.lm)
    if lm is not None and not lm.is_file():
        return fail(f"{lm}: no such language model (--lm none for a greedy bundle)", 2)
    try:  # a binary without NAME.words gets its stored words in the bundle: checked now, not after the downloads
        if lm is not None and not vocab_path(lm).is_file():
            stored_words(lm, lm_kind(lm))
    except DecoderError as e:
        return fail(e, 2)
    ffmpeg = None if args.no_ffmpeg else Path(args.ffmpeg)
    this_python = args.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    if not model.is_file():
        return fail(f"{model}: no such model file", 2)
    if ffmpeg and not ffmpeg.is_file():
        return fail(
            f"{ffmpeg}: no such ffmpeg file; build it with tools/build_ffmpeg.sh (or --no_ffmpeg for a "
            "bundle that reads only wav, flac, ogg, opus and mp3)",
            2,
        )
    if ffmpeg and ffmpeg.read_bytes()[:4] != b"\x7fELF":
        return fail(f"{ffmpeg}: not a Linux executable", 2)
    if args.site_packages and not (this_python and sys.platform == "linux"):
        return fail("--site_packages copies this Python's packages: run it on Linux with --python", 2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stage(folder, model, ffmpeg, args.python, args.site_packages, lm)
        if this_python:
            compile_pyc(folder)
        by_entry = sizes(folder)
        total = sum(by_entry.values())
        if this_python and sys.platform == "linux":
            try:
                with tempfile.TemporaryDirectory() as clips:
                    names = [c for c in smoke_clips(Path(clips)) if ffmpeg or c.suffix != ".m4a"]
                    t = smoke_test(folder, names)
                lines = check_answers(t["answers"])
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                return fail(f"smoke test: {e}", 1)
            if t["lm"] != (lm is not None):
                what = "ignores the" if lm else "loads a"
                return fail(f"smoke test: the handler {what} language model", 1)
            print(
                f"smoke test (cold start): import {t['import']:.2f} s, model {'and LM ' if lm else ''}load "
                f"{t['session']:.2f} s, first request {t['request']:.2f} s; the whole process {t['process']:.2f} s",
                *lines,
                sep="\n",
            )
        write_zip(folder, Path(args.output))
    zipped = Path(args.output).stat().st_size
    print(
        f"wrote {args.output}: {zipped / 1e6:.1f} MB zipped, {total / 1e6:.1f} MB unzipped "
        f"(Lambda's limit: {LAMBDA_LIMIT / 1e6:.0f} MB); handler: proslushka.serverless.handler"
    )
    print("  " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in by_entry.items()))
    if total > LAMBDA_LIMIT:
        print("warning: too big for Lambda", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
