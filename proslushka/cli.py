"""The scripts' one-line errors, said the same way everywhere: `error: WHAT` on stderr, and main returns the exit
code (`except ManifestError as e: return fail(e, 2)`; an OSError as `return fail(os_error(e, out), 1)`). Torch-free."""

from __future__ import annotations

import os
import sys


def fail(message: object, code: int) -> int:
    """Print `error: MESSAGE` (an exception prints as its text) to stderr; return `code` for main to return."""
    print(f"error: {message}", file=sys.stderr)
    return code


def os_error(e: OSError, path: str | os.PathLike | None = None) -> str:
    """An OSError as `FILE: REASON`: the file it names, else `path` (the one being written); its strerror, else its
    text (an OSError raised with a message only has no strerror)."""
    return f"{e.filename or path}: {e.strerror or e}"
