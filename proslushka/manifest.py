"""Manifest rows as plain dicts: NeMo JSON lines, or a .csv/.tsv with the same columns. No torch: inference uses it.

Rows are not validated here beyond being readable; data.read_manifest checks them for training, transcribe.py for
transcription.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

FIELDS = ("audio_filepath", "text", "duration")
# A row longer than this is refused unread: a 20 s clip's row is ~500 bytes, an hour's transcript ~100 KB.
MAX_LINE_BYTES = 1 << 20


class ManifestError(ValueError):
    """A manifest that cannot be read at all; the message names the file."""


def iter_manifest_rows(path: str | os.PathLike, required: Sequence[str] = FIELDS) -> Iterator[tuple[int, dict | str]]:
    """(line, row dict) for each row, or (line, reason) for a row that is not a JSON object / a full table row.

    `required` only matters for a CSV/TSV: its header must name these columns (one error for the header beats the
    same complaint on every row). Raises ManifestError at once when the file cannot be read. The file is read a line
    at a time, and a line longer than MAX_LINE_BYTES is a bad row, so no manifest can take unbounded memory.
    """
    name = os.fspath(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - the generator below closes it
        mode = os.fstat(f.fileno()).st_mode
    except OSError as e:
        raise ManifestError(f"{name}: cannot read the manifest ({e.strerror})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):  # a pipe is fine (<(...)); /dev/zero never ends
        f.close()
        raise ManifestError(f"{name}: not a regular file")
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _table_rows(f, name, "\t" if suffix == ".tsv" else ",", required)
    return _jsonl_rows(f)


def _lines(f: BinaryIO) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, None) for each line, or (line number, None, reason) for one that is unusable."""
    with f:
        for number in itertools.count(1):
            data = f.readline(MAX_LINE_BYTES + 1)
            if not data:
                return
            if len(data) > MAX_LINE_BYTES and not data.endswith(b"\n"):
                while data and not data.endswith(b"\n"):  # skip the rest of it without holding it
                    data = f.readline(1 << 16)
                yield number, None, f"line longer than {MAX_LINE_BYTES // (1 << 20)} MiB"
                continue
            if number == 1 and data.startswith(b"\xef\xbb\xbf"):  # editors on Windows add a BOM
                data = data[3:]
            try:
                yield number, data.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield number, None, f"not UTF-8 text (byte {e.start + 1} of the line)"


def _jsonl_rows(f: BinaryIO) -> Iterator[tuple[int, dict | str]]:
    for line, text, why in _lines(f):
        if why:
            yield line, why
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            yield line, f"malformed JSON ({e.msg} at column {e.colno})"
            continue
        except (ValueError, RecursionError) as e:  # an integer of 5000 digits, [[[[... nested too deep
            yield line, f"malformed JSON ({str(e).split(';')[0] or type(e).__name__})"
            continue
        yield line, row if isinstance(row, dict) else f"not a JSON object: {short(text.strip())}"


def _table_rows(f: BinaryIO, name: str, delimiter: str, required: Sequence[str]) -> Iterator[tuple[int, dict | str]]:
    unusable: list[tuple[int, str]] = []  # lines _lines refused, reported in order between the rows

    def texts() -> Iterator[str]:
        for line, text, why in _lines(f):
            if why:
                unusable.append((line, why))
            yield text or "\n"  # an empty line keeps the csv module's line count right; it skips it

    reader = csv.DictReader(texts(), delimiter=delimiter)
    try:
        header = reader.fieldnames or []
    except csv.Error as e:
        raise ManifestError(f"{name}:1: unreadable header ({e})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(f"{name}:1: header lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    while True:
        try:
            row: dict | str | None = next(reader)
        except StopIteration:
            row = None
        except csv.Error as e:  # a field over the csv module's size limit, a stray quote at the end
            row = f"unreadable row ({e})"
        yield from unusable
        unusable.clear()
        if row is None:
            return
        if isinstance(row, dict) and None in row:  # DictReader files extra cells under the key None
            row = f"{len(header) + len(row[None])} cells, the header has {len(header)}"
        elif isinstance(row, dict):
            row = {k: v for k, v in row.items() if v is not None}  # short rows: missing fields
        yield reader.reader.line_num, row  # the csv reader's own count: DictReader's lags after an error


def short(value: object, n: int = 60) -> str:
    """repr(value), cut to n characters for an error message."""
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def one_line(e: object, n: int = 200) -> str:
    """An error's text (or any text) for a one-line message: whitespace runs, newlines too, as one space, cut to n
    characters; an exception without text gives its type's name."""
    text = " ".join(str(e).split())[:n]
    return text or (type(e).__name__ if isinstance(e, BaseException) else "")
