"""The scripts' one-line errors, said the same way everywhere: `error: WHAT` on stderr, and main returns the exit
code (`except ManifestError as e: return fail(e, 2)`; an OSError as `return fail(os_error(e, out), 1)`). Torch-free."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable


def fail(message: object, code: int) -> int:
    """Print `error: MESSAGE` (an exception prints as its text) to stderr; return `code` for main to return."""
    print(f"error: {message}", file=sys.stderr)
    return code


def os_error(e: OSError, path: str | os.PathLike | None = None) -> str:
    """An OSError as `FILE: REASON`: the file it names, else `path` (the one being written); its strerror, else its
    text (an OSError raised with a message only has no strerror)."""
    return f"{e.filename or path}: {e.strerror or e}"


def number(lo: float = -math.inf, hi: float = math.inf, kind: type = float) -> Callable[[str], float]:
    """An argparse type: a finite number of `kind` (float or int) from lo to hi; argparse then names the option in
    one line, exit 2, before any work. float() takes "nan" and "inf", which no size, duration or weight can be."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and lo <= value <= hi):
            integer = kind is int
            if hi < math.inf:
                raise argparse.ArgumentTypeError(
                    f"must be {'an integer' if integer else 'a number'} from {lo:g} to {hi:g}, not {text!r}"
                )
            bound = f" of at least {lo:g}" if lo > -math.inf else ""
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if integer else 'a finite number'}{bound}, not {text!r}"
            )
        return value

    return parse
