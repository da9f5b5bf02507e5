"""Atomic file writes: a crash or a full disk leaves the old file or the new one, never half of one. And the files
found in an input folder, with its broken links said out loud."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

# mkstemp creates files readable by the owner only; a written output should get the usual rw-r--r-- (umask) instead
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if path.exists() and not path.is_file():  # /dev/stdout, a FIFO: never rename over a device
        with open(path, "wb") as f:
            f.write(data)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike, need_bytes: int = 0) -> None:
    """Raise OSError (with a filename) now if `path` cannot be written, rather than after the work is done.

    Leaves nothing behind: a temp file is made and removed in the nearest existing folder on the way to `path` (the
    write creates the missing ones). need_bytes: also refuse a file system with less space free than that. A device
    or FIFO (/dev/stdout) is written as it is, so it is not probed.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    if path.exists() and not path.is_file():
        return
    folder = path.parent
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is not a folder", str(folder))
    try:  # the temp name atomic_write will use: a name too long for the file system fails here too
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    os.unlink(tmp)
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise OSError(errno.ENOSPC, f"{free / 1e6:.0f} MB free, about {need_bytes / 1e6:.0f} MB needed", str(folder))


def check_not_input(output: str | os.PathLike, inputs: list[str | os.PathLike]) -> None:
    """Raise ValueError (naming both) if writing `output` would replace one of `inputs`: the same file under
    another name (a link, a relative path) counts too. A device or FIFO (/dev/stdout) is never an input's copy."""
    out = Path(output)
    if not out.is_file():
        return
    for name in inputs:
        try:
            same = Path(name).is_file() and os.path.samefile(out, name)
        except OSError:
            same = False
        if same:
            raise ValueError(f"{output}: is the input {name}; writing there would destroy it")


def remove_stale_temps(path: str | os.PathLike, name_glob: str | None = None) -> list[Path]:
    """Delete the temp files atomic_write left for `path` when its process was killed mid-write; returns them.
    With `name_glob`, those of every file in path's folder whose name matches it instead (e.g. "step-*.pt", which
    also finds the temps of a file that never came to exist).

    Only call it while nothing else writes those files: a live write's temp file looks the same.
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{name_glob or glob.escape(path.name)}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def regular_files(paths: Iterable[str | os.PathLike], problems: list[str]) -> list[Path]:
    """The regular files among `paths` (found in a folder; symbolic links followed), sorted. A link that leads
    nowhere (its target gone, or a loop) or that cannot be followed adds `path: reason` to `problems`, so it counts
    as a failed input instead of vanishing without a word; other non-files (a FIFO, a device) are left out."""
    found = []
    for path in sorted(map(Path, paths)):
        try:
            if stat.S_ISREG(os.stat(path).st_mode):
                found.append(path)
        except OSError as e:
            if not path.is_symlink():
                problems.append(f"{path}: {e.strerror}")  # e.g. gone since the folder was listed
            elif e.errno in (errno.ENOENT, errno.ELOOP):
                problems.append(f"{path}: broken symbolic link" + (" (a loop)" if e.errno == errno.ELOOP else ""))
            else:
                problems.append(f"{path}: symbolic link to {os.readlink(path)}: {e.strerror}")
    return found
