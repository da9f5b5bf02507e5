"""A run's folder (--out_dir): its checks before any work, the checkpoints (atomic), the --keep weight files,
metrics.jsonl and curves.png. Only rank 0 has one that writes; the others' calls do nothing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock, no lock
    fcntl = None

from . import checkpoint
from .files import atomic_write, check_writable, remove_stale_temps
from .settings import TrainError

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "curves.png")  # what a run writes in out_dir
LOCK = ".lock"  # held (flock) by the run writing in the folder; holds its pid
STEP_PREFIX = "step-"  # and with --keep, step-NNNNNNN.pt


def kept_weights(out: Path) -> list[Path]:
    """The step-NNNNNNN.pt files of a run folder, oldest first."""
    return sorted(p for p in out.glob(f"{STEP_PREFIX}*.pt") if p.stem[len(STEP_PREFIX) :].isdigit())


class RunDir:
    def __init__(self, out: str | Path, main: bool = True, keep: int = 0):
        self.path = Path(out)
        self.main = main
        self.keep = keep
        self._lock = None
        self._created = False

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def holds(self, checkpoint_path: str | None) -> bool:
        """Whether a checkpoint lies in this folder (resuming here, not starting from another run)."""
        return bool(checkpoint_path) and Path(checkpoint_path).resolve().parent == self.path.resolve()

    def check(self, resume: str | None, overwrite: bool) -> None:
        """Refuse (exit 2) a folder that cannot be written, or that holds another run, before any work."""
        try:
            check_writable(self.path / "last.pt")
        except OSError as e:
            raise TrainError(f"{e.filename or self.path}: cannot write there ({e.strerror})", code=2) from None
        previous = [n for n in RUN_FILES if (self.path / n).exists()] + [p.name for p in kept_weights(self.path)][:1]
        if previous and not self.holds(resume) and not overwrite:
            raise TrainError(
                f"{self.path}: holds a previous run ({', '.join(previous)}): --resume {self.path / 'last.pt'} "
                "continues it, --overwrite replaces it, or choose another --out_dir",
                code=2,
            )

    def lock(self) -> None:
        """Hold the folder for this run: a second training on it is refused (exit 2) instead of both appending to
        metrics.jsonl and overwriting each other's last.pt. An flock: the kernel drops it when the process ends,
        however it ends, so a killed run never leaves the folder locked (only the file, which the next run takes)."""
        if not self.main or fcntl is None:
            return
        self._created = not self.path.exists()
        path = self.path / LOCK
        while self._lock is None:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                f = open(path, "a+", encoding="utf-8")
            except OSError as e:
                raise TrainError(f"{e.filename or self.path}: cannot write there ({e.strerror})", code=2) from None
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                pid = f.read().strip() or "?"
                f.close()
                raise TrainError(
                    f"{self.path}: another training is writing in this folder (pid {pid}); wait for it to end, stop "
                    "it, or choose another --out_dir",
                    code=2,
                ) from None
            if _same_file(f, path):  # not a lock file its last holder removed between our open and our flock
                self._lock = f
            else:
                f.close()
        self._lock.truncate(0)
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()

    def release(self) -> None:
        """Let the folder go, lock file and all; one this run created and left empty (it failed before writing
        anything) is removed."""
        if self._lock is None:
            return
        (self.path / LOCK).unlink(missing_ok=True)  # while still held: whoever opens it next makes a new one
        self._lock.close()
        self._lock = None
        if self._created and not any(self.path.iterdir()):
            self.path.rmdir()

    def prepare(self, state_bytes: int, resume: str | None, overwrite: bool, log: Callable[[str], None]) -> None:
        """Once everything else checked out: room for the checkpoints, a previous run replaced (--overwrite), the
        temp files of killed saves removed, and a metrics.jsonl cut mid-line by a kill ended with a newline."""
        # last.pt and best.pt, each weights + two AdamW moments; the --keep step files (weights); logs
        need = (3 * 2 + self.keep) * state_bytes + (10 << 20)
        out = self.path
        try:
            check_writable(out / "last.pt", need_bytes=need)
            if overwrite and not self.holds(resume):
                for path in [out / n for n in RUN_FILES] + kept_weights(out):
                    path.unlink(missing_ok=True)
            step_temps = remove_stale_temps(out / "step.pt", name_glob=f"{STEP_PREFIX}*.pt")
            for tmp in [t for n in RUN_FILES for t in remove_stale_temps(out / n)] + step_temps:
                log(f"removed {tmp}, left by a save that was killed")
            out.mkdir(parents=True, exist_ok=True)
            metrics = out / "metrics.jsonl"
            if metrics.exists() and metrics.stat().st_size and not _ends_with_newline(metrics):
                with open(metrics, "a", encoding="utf-8") as f:
                    f.write("\n")
        except OSError as e:
            raise TrainError(f"{e.filename or out}: {e.strerror}", code=2) from None

    def resume_hint(self) -> str:
        """How to go on after a failure: resume from last.pt only if it exists (a run that fails before its first
        save has none, and naming a missing file would send the user looking for it)."""
        last = self.path / "last.pt"
        return f"resume from {last}" if last.is_file() else "no checkpoint saved yet: start the run again"

    @contextlib.contextmanager
    def writing(self, path: Path) -> Iterator[None]:
        """A write that fails mid-run (a full disk) stops the run in one line; the checkpoints are atomic, so
        last.pt still holds the last step saved."""
        try:
            yield
        except OSError as e:
            raise TrainError(f"{path}: cannot write ({e.strerror}); {self.resume_hint()}") from None

    def save(self, name: str, state: dict[str, Any]) -> None:
        if self.main:
            with self.writing(self.path / name):
                checkpoint.save(self.path / name, state)

    def keep_weights(self, step: int, weights: Callable[[], dict[str, Any]]) -> None:
        """The model's weights alone as step-NNNNNNN.pt, the oldest beyond `keep` removed: evenly spaced checkpoints
        of the run's end for tools/average_checkpoints.py (a third of last.pt's size: no optimizer)."""
        if not self.keep or not self.main:
            return
        path = self.path / f"{STEP_PREFIX}{step:07d}.pt"
        with self.writing(path):
            checkpoint.save(path, weights())
            for old in kept_weights(self.path)[: -self.keep]:
                old.unlink(missing_ok=True)

    def metric(self, **row: Any) -> None:
        if self.main:
            path = self.path / "metrics.jsonl"
            with self.writing(path), open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": round(time.time(), 1), **row}, ensure_ascii=False) + "\n")

    def plot(self) -> None:
        if self.main:
            with self.writing(self.path / "curves.png"):
                plot_metrics(self.path / "metrics.jsonl", self.path / "curves.png")


def plot_metrics(metrics_path: Path, png_path: Path) -> None:
    """Training loss per step and validation WER/CER per epoch, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if _numbers(r, "step", "loss")]
    valid = [(r["step"], r["valid_wer"], r["valid_cer"]) for r in rows if _numbers(r, "step", "valid_wer", "valid_cer")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps, losses = (np.asarray(v) for v in zip(*train, strict=True))
        a.plot(steps, losses, lw=0.5, alpha=0.4, label="per log row")
        k = min(20, len(losses))  # batches differ in duration, and the loss with them: show a running mean too
        a.plot(steps[k - 1 :], np.convolve(losses, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
        a.set_yscale("log")
        a.legend()
    a.set(title="train CTC loss per token", xlabel="optimizer step")
    if valid:
        s, w, c = zip(*valid, strict=True)
        b.plot(s, w, "o-", label="WER")
        b.plot(s, c, "s-", label="CER")
        b.legend()
    b.set(title="validation (greedy)", xlabel="optimizer step", ylim=(0, None))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write(png_path, buf.getvalue())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line that is not a JSON object (cut short by a kill, edited) is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _numbers(row: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(row.get(k), int | float) and not isinstance(row.get(k), bool) for k in keys)


def _same_file(f, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except OSError:
        return False


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
