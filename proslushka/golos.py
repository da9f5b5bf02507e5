"""Sber's Golos: the QuartzNet15x5 checkpoint and the test set, fetched and verified, and Golos's WER table redone.

    python -m proslushka.golos eval --model models/quartznet15x5_golos.onnx [--lm LM] [--test_tar test.tar]

fetches test.tar (1.3 GB, MD5-checked, cached), unpacks its crowd and farfield parts, runs transcribe.py --report on
each manifest (greedy, and with --lm also beam search with that LM) and prints our WER beside the published one.
URLs, checksums and figures: the Golos README (salute-developers/golos, golos/README.md and golos/md5sum.txt); the
checkpoint is also on OpenSLR (resource 114, gzipped), the last mirrors tried.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import lzma
import os
import re
import stat
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from typing import IO

from .cli import fail, os_error
from .fetch import CHUNK, FetchError, Remote, cache_dir, fetch
from .files import atomic_write
from .manifest import one_line

_README_HOSTS = (
    "https://cdn.chatwm.opensmodel.sberdevices.ru/golos/",  # the README since 2025-05 ("to be updated")
    "https://n-ws-3jtx8.s3pd12.sbercloud.ru/b-ws-3jtx8-eir/golos/",  # the README before that
)
# OpenSLR's resource SLR114 holds the checkpoint gzipped, on its main host and mirrors (the names public download
# scripts use); fetch() gunzips it and checks the .nemo's MD5, the one the Golos README publishes
_OPENSLR_HOSTS = ("https://www.openslr.org", "https://us.openslr.org", "https://openslr.trmal.net")
MODEL = Remote(
    "QuartzNet15x5_golos.nemo",
    tuple(h + "QuartzNet15x5_golos.nemo" for h in _README_HOSTS)
    + ("https://sc.link/ZMv",)
    + tuple(f"{h}/resources/114/QuartzNet15x5_golos.nemo.gz" for h in _OPENSLR_HOSTS),
    "5bdf7ce2ba610db4d309413ca3cb4064",
    "68 MB",
)
TEST = Remote(
    "golos_test.tar",
    tuple(h + "test.tar" for h in _README_HOSTS) + ("https://sc.link/Kqr",),
    "284a6e54ca7bf0dd599db1bea030775c",
    "1.3 GB",
)
DOMAINS = ("crowd", "farfield")
# WER % from the Golos README: greedy, and beam search with the Common Crawl + Golos 3-gram KenLM (50/50)
PUBLISHED = {"greedy": {"crowd": 4.389, "farfield": 14.949}, "lm": {"crowd": 3.318, "farfield": 11.488}}
ROOT = Path(__file__).resolve().parent.parent
# the largest member unpacked: Golos's test clips are seconds of 16 kHz 16-bit WAV (32 kB a second) and its manifests
# a few MB, so 32 MB (about 17 minutes of such audio) is far above any, and bounds what a hostile archive makes us write
MAX_MEMBER = 32_000_000
# a member of test.tar that we unpack: DOMAIN/NAME.jsonl or DOMAIN/files/NAME.wav, under any leading folders
_MEMBER = re.compile(r"(?:[\w.-]+/)*?(crowd|farfield)/((?:files/)?[\w.-]+\.(?:jsonl|wav|opus|flac))")


def unpack_test(tar_path: Path, out: Path) -> dict[str, Path]:
    """The crowd and farfield manifests of a Golos test.tar, unpacked into `out` (once: a second call reuses it).

    Members are never written under their own names: only regular files whose names match DOMAIN/NAME.jsonl or
    DOMAIN/files/NAME.wav (word characters, dots and dashes) are copied, in blocks, to paths we build from those
    parts, and none over MAX_MEMBER. An archive that cannot be used raises FetchError (one line), and what was
    unpacked from it is deleted.
    """
    done = out / "unpacked.json"
    if done.is_file():
        return {d: out / p for d, p in json.loads(done.read_text()).items()}
    try:  # a FIFO or a device (/dev/zero) would be read forever
        if not stat.S_ISREG(os.stat(tar_path).st_mode):
            raise FetchError(f"{tar_path}: not a regular file (a device, FIFO or folder); give the test.tar file")
    except OSError as e:
        raise FetchError(f"{tar_path}: {e.strerror}") from None
    written: list[Path] = []
    try:
        manifests = _unpack(tar_path, out, written)
        missing = [d for d in DOMAINS if d not in manifests]
        if missing:
            raise FetchError(f"{tar_path}: no {' or '.join(missing)} manifest (DOMAIN/DOMAIN.jsonl) in the archive")
        atomic_write(done, json.dumps({d: str(p.relative_to(out)) for d, p in manifests.items()}))
    except BaseException:  # without unpacked.json what was unpacked is never used: remove it rather than keep GBs
        _remove(written, out)
        raise
    return manifests


def _remove(written: list[Path], out: Path) -> None:
    """Delete the files an unpack wrote and the folders that leaves empty, and nothing else (`out` may hold the
    test.tar itself)."""
    folders = {out}
    for path in written:
        path.unlink(missing_ok=True)
        folders.update(p for p in path.parents if p.is_relative_to(out))
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty
            folder.rmdir()


def _unpack(tar_path: Path, out: Path, written: list[Path]) -> dict[str, Path]:
    try:
        tar = tarfile.open(tar_path, "r:*")
    except tarfile.ReadError:  # its message lists each compression tried, one line each
        raise FetchError(f"{tar_path}: not a tar archive (plain, gzip, bzip2 or xz)") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise FetchError(f"{tar_path}: not a readable tar ({one_line(e)})") from None
    manifests: dict[str, Path] = {}
    with tar:
        try:
            for member in tar:
                m = _MEMBER.fullmatch(member.name.removeprefix("./"))
                if not (m and member.isfile()) or ".." in m.group(2):
                    continue
                if member.size > MAX_MEMBER:
                    raise FetchError(
                        f"{tar_path}: {one_line(member.name, 100)} is {round(member.size / 1e6, 1):g} MB, over the "
                        f"{round(MAX_MEMBER / 1e6, 1):g} MB a Golos test clip or manifest can be; not Golos's test.tar?"
                    )
                dest = out / m.group(1) / m.group(2)
                written.append(dest)
                _copy(tar.extractfile(member), dest)
                if dest.suffix == ".jsonl" and "/" not in m.group(2):
                    manifests.setdefault(m.group(1), dest)
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
            raise FetchError(f"{tar_path}: not a readable tar ({one_line(e)})") from None
    return manifests


def _copy(src: IO[bytes] | None, dest: Path) -> None:
    """A member's bytes into `dest`, a block at a time (a member is never held whole). A failed write raises
    FetchError naming `dest`, so that a full disk is not reported as a damaged archive."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as f:
            while src is not None and (block := _read(src)):
                f.write(block)
    except OSError as e:
        raise FetchError(f"{e.filename or dest}: cannot unpack the test set ({e.strerror or e})") from None


def _read(src: IO[bytes]) -> bytes:
    try:
        return src.read(CHUNK)
    except OSError as e:  # the archive's side (a gzip stream that breaks off): not a write error
        raise tarfile.ReadError(str(e)) from None


def word_error_rate(report_tsv: Path) -> tuple[float, int]:
    """(WER %, utterances) from a transcribe.py --report file: its word_edits and words columns, summed."""
    edits = words = rows = 0
    with open(report_tsv, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        e_col, w_col = header.index("word_edits"), header.index("words")
        for line in f:
            cols = line.rstrip("\n").split("\t")
            edits, words, rows = edits + int(cols[e_col]), words + int(cols[w_col]), rows + 1
    return 100.0 * edits / max(words, 1), rows


def evaluate(manifest: Path, model: str, report: Path, extra: list[str]) -> tuple[float, int]:
    """Run transcribe.py --manifest ... --report on one test set; (WER %, utterances scored)."""
    cmd = [sys.executable, str(ROOT / "transcribe.py"), "--manifest", str(manifest), "--model", model,
           "--report", str(report), "--batch_size", "8", *extra]  # fmt: skip
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if not report.is_file():
        tail = r.stderr.strip().splitlines()[-1:] or ["no output"]
        raise FetchError(f"{manifest}: transcribe.py failed ({tail[0][:300]})")
    return word_error_rate(report)


def table(results: dict[str, dict[str, tuple[float, int]]]) -> str:
    """Our WER beside Golos's published one, one row per decoder and test set."""
    names = {"greedy": "greedy", "lm": "beam + LM"}
    lines = [f"{'decoder':<10} {'test set':<9} {'files':>6} {'ours WER':>9} {'Golos WER':>10}"]
    for kind, by_domain in results.items():
        for domain, (wer, n) in by_domain.items():
            lines.append(f"{names[kind]:<10} {domain:<9} {n:>6} {wer:>8.3f}% {PUBLISHED[kind][domain]:>9.3f}%")
    if "lm" in results:
        lines.append("(Golos's beam + LM row used their Common Crawl + Golos 3-gram; ours used the --lm given)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m proslushka.golos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="reproduce Golos's WER table with an exported model")
    e.add_argument("--model", required=True, help="the ONNX export of the transferred Golos checkpoint")
    e.add_argument(
        "--lm",
        help="also decode with this KenLM language model, binary or ARPA (transcribe.py --lm; NAME.words is "
        "made from it if missing)",
    )
    e.add_argument("--test_tar", help="a test.tar already on disk (default: download it into the cache)")
    e.add_argument("--url", action="append", help="download test.tar from here instead (repeatable: mirrors)")
    e.add_argument("--cache_dir", help=f"where downloads and the unpacked test set go (default: {cache_dir()})")
    e.add_argument("--out_dir", default="runs/golos-eval", help="reports go here (default: %(default)s)")
    args = p.parse_args(argv)
    cache = Path(args.cache_dir) if args.cache_dir else cache_dir()
    if not Path(args.model).is_file():
        return fail(f"{args.model}: no such model (transfer.py golos, then export.py)", 2)
    try:
        tar_path = Path(args.test_tar) if args.test_tar else fetch(TEST, cache, args.url)
        manifests = unpack_test(tar_path, cache / "golos_test")
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        decoders = {"greedy": ["--lm", "none"]} | ({"lm": ["--lm", args.lm]} if args.lm else {})
        results: dict[str, dict[str, tuple[float, int]]] = {}
        for kind, extra in decoders.items():
            for domain, manifest in manifests.items():
                print(f"{kind}: transcribing {domain} ({manifest})", file=sys.stderr)
                report = out / f"{domain}-{kind}.tsv"
                results.setdefault(kind, {})[domain] = evaluate(manifest, args.model, report, extra)
    except FetchError as e:
        return fail(e, 1)
    except OSError as e:
        return fail(os_error(e, args.out_dir), 1)
    text = table(results)
    atomic_write(out / "table.txt", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
