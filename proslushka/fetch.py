"""Downloads that survive real networks: redirects, resume after a cut, a progress bar, an MD5 check, a cache.

A file is downloaded into `NAME.part` beside its final place and renamed only once its MD5 matches, so the cache
never holds a wrong file under the right name. A cut connection resumes where it stopped (an HTTP Range request),
in the same run and in the next one; a checksum mismatch deletes the download and says so in one line. A mirror
whose URL ends in .gz serves the file gzipped (OpenSLR's): it downloads (and resumes) into `NAME.gz.part`, is
gunzipped as a stream into `NAME.part`, and the MD5 checked is the unpacked file's.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

CHUNK = 1 << 20
ATTEMPTS = 5  # connections per URL before trying the next one; each one resumes where the last stopped
TIMEOUT = 60.0  # seconds without a byte before a connection counts as cut


class FetchError(RuntimeError):
    """A download that failed; the message is one line naming the file or URL and the reason."""


@dataclass(frozen=True)
class Remote:
    name: str  # the file's name in the cache
    urls: tuple[str, ...]  # tried in order
    md5: str
    size: str  # for messages, e.g. "68 MB"


def cache_dir() -> Path:
    """$PROSLUSHKA_CACHE, else ~/.cache/proslushka."""
    return Path(os.environ.get("PROSLUSHKA_CACHE") or Path.home() / ".cache" / "proslushka")


def md5_of(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch(remote: Remote, folder: Path | None = None, urls: Sequence[str] | None = None, progress: bool = True) -> Path:
    """The verified file in `folder` (default: the cache), downloading it first if needed."""
    folder = Path(folder) if folder else cache_dir()
    dest = folder / remote.name
    if dest.is_file():
        if md5_of(dest) == remote.md5:
            return dest
        dest.unlink()  # a file that no longer matches (edited, or a different version): fetch it again
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"{folder}: cannot create the download folder ({e.strerror})") from None
    part, packed = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".gz.part")
    errors = []
    for url in urls or remote.urls:
        try:
            if gzipped(url, remote.name):
                download(url, packed, progress=progress, label=remote.name + ".gz")
                gunzip(packed, part, url)
            else:
                download(url, part, progress=progress, label=remote.name)
            break
        except FetchError as e:
            errors.append(str(e))
    else:
        kept = [str(p) for p in (part, packed) if p.is_file() and p.stat().st_size]
        resume = f"; {' and '.join(kept)} {'keeps' if len(kept) == 1 else 'keep'} what arrived, run again to resume"
        raise FetchError(f"{remote.name}: could not download it ({' | '.join(errors)}){resume if kept else ''}")
    got = md5_of(part)
    if got != remote.md5:
        part.unlink()
        raise FetchError(f"{remote.name}: MD5 mismatch (got {got}, expected {remote.md5}); the download was deleted")
    os.replace(part, dest)
    packed.unlink(missing_ok=True)  # a gzipped mirror's partial download, left by an earlier run that used another
    return dest


def gzipped(url: str, name: str) -> bool:
    """Whether `url` serves `name` gzipped: its path ends in .gz and the name does not."""
    return urllib.parse.urlsplit(url).path.endswith(".gz") and not name.endswith(".gz")


def gunzip(packed: Path, out: Path, url: str) -> None:
    """Unpack the complete download `packed` into `out` as a stream, then delete it. A damaged gzip (gzip checks its
    CRC and length at the end) is deleted too and FetchError says so, so that the next mirror is tried."""
    try:
        with gzip.open(packed, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        out.unlink(missing_ok=True)
        packed.unlink()
        raise FetchError(f"{url}: not a valid gzip file ({e}); the download was deleted") from None
    except OSError as e:  # the disk, not the data: the download is kept, and unpacked again by the next run
        out.unlink(missing_ok=True)
        raise FetchError(f"{e.filename or out}: cannot unpack the download ({e.strerror})") from None
    packed.unlink()


def download(url: str, part: Path, progress: bool = True, label: str = "", attempts: int = ATTEMPTS) -> None:
    """Append `url`'s bytes to `part` until it is complete, reconnecting with a Range request after each cut."""
    last = ""
    for attempt in range(attempts):
        try:
            if _download_once(url, part, progress, label or part.name):
                return
            last = "the connection closed early"
        except (urllib.error.URLError, HTTPException, OSError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code not in (408, 429, 500, 502, 503, 504):
                raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
            last = str(getattr(e, "reason", None) or e) or type(e).__name__
        time.sleep(min(2**attempt, 10) * 0.1)
    raise FetchError(f"{url}: {last} (after {attempts} attempts)")


def _download_once(url: str, part: Path, progress: bool, label: str) -> bool:
    """One connection: True when the file is complete, False when the server stopped before its end."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "proslushka", "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)  # follows redirects, 301 to 308
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # asked for bytes past the end: what we have is the whole file
            return True
        raise
    with response:
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        elif have and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            raise FetchError(f"{url}: the server resumed at the wrong place ({response.headers.get('Content-Range')})")
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        bar = _bar(total, have, label) if progress else None
        try:
            with open(part, "ab" if have else "wb") as f:
                while block := response.read(CHUNK):
                    f.write(block)
                    have += len(block)
                    if bar is not None:  # not `if bar`: a tqdm without a total (no Content-Length) has no truth value
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
    return total is None or have >= total


def _bar(total: int | None, initial: int, label: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                file=sys.stderr, leave=False)  # fmt: skip
