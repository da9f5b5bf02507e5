"""Manifest rows as plain dicts: NeMo JSON lines, or a .csv/.tsv with the same columns. No torch: inference uses it.

Rows are not validated here beyond being readable; data.read_manifest checks them for training, transcribe.py for
transcription.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

FIELDS = ("audio_filepath", "text", "duration")


class ManifestError(ValueError):
    """A manifest that cannot be read at all; the message names the file."""


def iter_manifest_rows(path: str | os.PathLike, required: Sequence[str] = FIELDS) -> Iterator[tuple[int, dict | str]]:
    """(line, row dict) for each row, or (line, reason) for a row that is not a JSON object / a full table row.

    `required` only matters for a CSV/TSV: its header must name these columns (one error for the header beats the
    same complaint on every row). Raises ManifestError when the file cannot be read.
    """
    name = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ManifestError(f"{name}: cannot read the manifest ({e.strerror})") from None
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _table_rows(name, raw, "\t" if suffix == ".tsv" else ",", required)
    return _jsonl_rows(raw)


def _jsonl_rows(raw: bytes) -> Iterator[tuple[int, dict | str]]:
    for line, data in enumerate(raw.split(b"\n"), start=1):
        if line == 1 and data.startswith(b"\xef\xbb\xbf"):  # editors on Windows add a BOM
            data = data[3:]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            yield line, "not UTF-8 text"
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            yield line, f"malformed JSON ({e.msg} at column {e.colno})"
            continue
        yield line, row if isinstance(row, dict) else f"not a JSON object: {short(text.strip())}"


def _table_rows(name: str, raw: bytes, delimiter: str, required: Sequence[str]) -> Iterator[tuple[int, dict | str]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{name}: not UTF-8 text (byte {e.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    missing = [f for f in required if f not in (reader.fieldnames or [])]
    if missing:
        raise ManifestError(f"{name}:1: header lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    for row in reader:
        if None in row:  # DictReader files extra cells under the key None
            width = len(reader.fieldnames)
            yield reader.line_num, f"{width + len(row[None])} cells, the header has {width}"
            continue
        yield reader.line_num, {k: v for k, v in row.items() if v is not None}  # short rows: missing fields


def short(value: object, n: int = 60) -> str:
    """repr(value), cut to n characters for an error message."""
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."
