"""The results store: ``results/<sweep>/<run>/{config.json, summary.json, metrics.csv, ...}``.

This module is the store's format, shared by the writer (the run layer) and the readers
(``sweep.py``, ``paper_figures``); it imports nothing heavier than the standard library.

Every write is atomic (a temporary file in the same directory, then ``os.replace``), so a run
killed at any moment never leaves a half-written file; ``summary.json`` with status
``finished`` is what marks a run as done, and :func:`finished_problems` checks that the files
a finished run stands on are really there. :class:`RunLock` keeps two processes from training
the same run at once.
"""
from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

# Run statuses in summary.json. ``running``: started, not ended (or killed -9: the lock tells);
# ``failed``: an error, recorded with its traceback; ``diverged``: loss or state went
# non-finite, recorded with epoch and batch, never averaged; ``interrupted``: SIGTERM/SIGINT,
# resumed by a restart.
FINISHED, FAILED, RUNNING, DIVERGED, INTERRUPTED = (
    "finished", "failed", "running", "diverged", "interrupted")
STATUSES = (FINISHED, FAILED, RUNNING, DIVERGED, INTERRUPTED)
# What a finished summary must hold: the Table 2 numbers.
TEST_ACC, TEST_LOSS, TEST_ITERS, TEST_NOT_CONVERGED = (
    "test/acc", "test/loss", "test/iters_to_converge", "test/not_converged")
TEST_METRICS = (TEST_ACC, TEST_LOSS, TEST_ITERS, TEST_NOT_CONVERGED)
# How ``test/iters_to_converge`` was counted: summary.json's ``iters_rule`` is ``papers`` for
# the papers' rule (custom_callbacks.iterations_to_converge: the first position below 1e-4 in
# the changes between consecutive map outputs). Runs without it were counted by this project's
# first rule (map evaluations until |f(z) - z| / |f(z)| < 1e-4, from the zero start) and are
# not comparable: the readers refuse them, ``python -m runner.recount`` converts what it can.
ITERS_RULE_KEY, ITERS_RULE = "iters_rule", "papers"
CONFIG, SUMMARY, METRICS = "config.json", "summary.json", "metrics.csv"
TRAJECTORIES, ENERGY = "trajectories.npz", "energy.npz"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
LOCK = ".lock"


def _atomic_write(path: os.PathLike | str, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; results are for everyone to read
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the new file."""
    _atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_with(path: os.PathLike | str, write: Callable[[Any], None]) -> None:
    """Atomically write a binary file through ``write(file_object)`` (e.g. ``np.savez``)."""
    _atomic_write(path, write, "wb")


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # tensors and numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def atomic_write_json(path: os.PathLike | str, obj: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: os.PathLike | str) -> dict[str, Any] | None:
    """The JSON object at ``path``, or ``None`` if it is missing or unreadable."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def check_name(name: str, what: str = "name") -> str:
    """A sweep or run name is one plain path component (no ``..``, no ``/``, not absolute)."""
    if (not name or name in (".", "..") or name.startswith(".") or os.sep in name
            or (os.altsep and os.altsep in name) or name != name.strip()):
        raise ValueError(f"invalid {what} {name!r}: it must be a plain folder name such as "
                         "'table2' (no '/', no '..', not starting with '.')")
    return name


def run_dir(results: os.PathLike | str, sweep: str, run_name: str) -> Path:
    return Path(results) / check_name(sweep, "sweep name") / check_name(run_name, "run name")


def summary_of(directory: os.PathLike | str) -> dict[str, Any] | None:
    return read_json(Path(directory) / SUMMARY)


def status_of(directory: os.PathLike | str) -> str | None:
    """The status in the run's summary, ``None`` when it has no readable summary."""
    return (summary_of(directory) or {}).get("status")


def iter_runs(results: os.PathLike | str, sweep: str | None = None) -> Iterator[Path]:
    """Every run directory (one holding ``config.json``) under ``results[/sweep]``."""
    root = Path(results) / sweep if sweep else Path(results)
    if root.is_dir():
        yield from sorted(p.parent for p in root.rglob(CONFIG))


def _csv_problem(path: Path) -> str | None:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        return f"{path.name} unreadable ({err})"
    if not rows or any(None in r or None in r.values() for r in rows):
        return f"{path.name} is empty or truncated"
    return None


def finished_problems(directory: os.PathLike | str) -> list[str]:
    """What is wrong with a run that claims to be finished; ``[]`` when it is sound.

    A finished run needs a readable ``config.json`` naming its row, depth and seed, a summary
    with every test metric, and a readable ``metrics.csv`` with one row per epoch. Its
    checkpoint may be absent (a store copied without checkpoints still makes the table) but a
    present one must be a whole zip archive, as torch writes them.
    """
    directory = Path(directory)
    problems = []
    summary = summary_of(directory) or {}
    if summary.get("status") != FINISHED:
        return [f"status is {summary.get('status')!r}, not {FINISHED!r}"]
    config = read_json(directory / CONFIG)
    if config is None:
        problems.append(f"{CONFIG} missing or unreadable")
    elif not all(k in config for k in ("row", "depth", "seed")):
        problems.append(f"{CONFIG} lacks row/depth/seed")
    missing = [k for k in TEST_METRICS if k not in summary]
    if missing:
        problems.append(f"{SUMMARY} lacks {', '.join(missing)}")
    if not (directory / METRICS).exists():
        problems.append(f"{METRICS} missing")
    else:
        problem = _csv_problem(directory / METRICS)
        if problem:
            problems.append(problem)
    checkpoint = directory / LAST_CHECKPOINT
    if checkpoint.exists() and not zipfile.is_zipfile(checkpoint):
        problems.append(f"{LAST_CHECKPOINT} is truncated or not a checkpoint")
    return problems


def is_finished(directory: os.PathLike | str) -> bool:
    """``True`` when the run finished and every file the result stands on is sound."""
    return not finished_problems(directory)


class RunLocked(RuntimeError):
    """Another live process holds the run (a dead one never does: the OS drops its lock)."""


class RunLock:
    """An exclusive ``fcntl`` lock on ``<run>/.lock`` for as long as a process trains the run.

    ``with RunLock(directory):`` raises :class:`RunLocked` at once if another process holds it.
    The lock dies with its process (``kill -9`` included), so a crashed run never blocks a
    restart; the file records the holder's pid and host for the message.
    """

    def __init__(self, directory: os.PathLike | str):
        self.path = Path(directory) / LOCK
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"{self.path.parent.name} is being trained by another process "
                            f"({holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(directory: os.PathLike | str) -> bool:
    """Whether a live process trains this run now (without taking the lock for long)."""
    if not (Path(directory) / LOCK).exists():
        return False
    try:
        RunLock(directory).acquire().release()
    except RunLocked:
        return True
    return False
