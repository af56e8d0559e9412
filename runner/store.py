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
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

# The store's file names, defined in runner.names; imported from here too.
from .names import (CONFIG, ENERGY, LAST_CHECKPOINT, LOCK, METRICS, SUMMARY,  # noqa: F401
                    TRAJECTORIES)

# Run statuses in summary.json. ``running``: started, not ended (or killed -9: the lock tells);
# ``failed``: an error, recorded with its traceback; ``diverged``: loss or state went
# non-finite, recorded with epoch and batch, never averaged; ``interrupted``: SIGTERM/SIGINT,
# resumed by a restart.
FINISHED, FAILED, RUNNING, DIVERGED, INTERRUPTED = (
    "finished", "failed", "running", "diverged", "interrupted")
STATUSES = (FINISHED, FAILED, RUNNING, DIVERGED, INTERRUPTED)
# Shown, never written: a run whose summary says ``running`` while no process holds its lock
# (kill -9, out of memory, the machine went down). A restart resumes it. See live_status.
KILLED = "killed"
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
# How long acquiring a run's lock keeps trying before it concludes that another trainer holds
# it: a reader's look (is_locked) holds it for microseconds, a trainer for hours.
LOCK_TRIES, LOCK_RETRY_S = 5, 0.05


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


def _csv_problem(path: Path, epochs: Any) -> str | None:
    """What is wrong with a finished run's ``metrics.csv``, which holds one row per epoch of
    the ``epochs`` its summary says were trained (not checked when the summary does not say)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        return f"{path.name} unreadable ({err})"
    if not rows or any(None in r or None in r.values() for r in rows):
        return f"{path.name} is empty or truncated"
    if isinstance(epochs, int) and not isinstance(epochs, bool):
        present = {r.get("epoch") for r in rows}
        found = sum(str(e) in present for e in range(epochs))
        if found < epochs:  # rows were lost: the history is not the run's
            return f"{path.name} has {found} epoch rows, but {epochs} epochs were trained"
    return None


def _zip_problem(directory: Path, name: os.PathLike | str, what: str,
                 verify: bool) -> str | None:
    """What is wrong with the zip archive ``directory/name`` (a checkpoint, an ``.npz``):
    ``None`` when it is absent or whole, i.e. its index reads and, with ``verify``, every
    member reads back with its checksum (reading it all: for small files, not checkpoints)."""
    path = directory / name
    if not path.exists():
        return None
    try:
        with zipfile.ZipFile(path) as archive:  # reads the index: a cut-short file has none
            if not verify or archive.testzip() is None:
                return None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        pass
    return f"{Path(name).as_posix()} is truncated or not {what}"


def _metric_problems(summary: dict[str, Any]) -> list[str]:
    """The test metrics a finished summary lacks or holds as no finite number (JSON writes a
    NaN as the string "nan", which must never be averaged)."""
    missing = [k for k in TEST_METRICS if k not in summary]
    problems = [f"{SUMMARY} lacks {', '.join(missing)}"] if missing else []
    for key in TEST_METRICS:
        if key in summary and not is_finite_number(summary[key]):
            problems.append(f"{SUMMARY} {key} is not a finite number ({summary[key]!r})")
    return problems


def is_finite_number(value: Any) -> bool:
    """A metric that can be averaged: an int or float (not a bool, not a string), finite."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def finished_problems(directory: os.PathLike | str) -> list[str]:
    """What is wrong with a run that claims to be finished; ``[]`` when it is sound.

    A finished run needs a readable ``config.json`` naming its row, depth and seed, a summary
    with every test metric as a finite number, and a readable ``metrics.csv`` with one row per
    epoch trained. Its checkpoint and ``trajectories.npz`` may be absent (a store copied
    without checkpoints still makes the table) but present ones must be whole zip archives, as
    torch and numpy write them (an unreadable ``trajectories.npz`` would leave a figure's
    panel empty).
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
    problems += _metric_problems(summary)
    if not (directory / METRICS).exists():
        problems.append(f"{METRICS} missing")
    else:
        problem = _csv_problem(directory / METRICS, summary.get("epochs_trained"))
        if problem:
            problems.append(problem)
    # energy.npz is left out on purpose: it feeds only the energy figure beyond the paper,
    # which skips an unreadable one with a warning; retraining a run for it would cost hours.
    # A checkpoint (20 MB at paper sizes) is checked by its index only: every sweep start and
    # every table reads the whole store.
    for name, what, verify in ((LAST_CHECKPOINT, "a checkpoint", False),
                               (TRAJECTORIES, "an .npz", True)):
        problem = _zip_problem(directory, name, what, verify)
        if problem:
            problems.append(problem)
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
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 < LOCK_TRIES:
                    time.sleep(LOCK_RETRY_S)  # perhaps only a reader looking (is_locked)
                    continue
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
    """Whether a live process trains this run now.

    It looks without writing: a shared lock taken and dropped at once on the lock file opened
    read-only (so a store that is only readable can be looked at). A lock file that cannot be
    opened counts as held: nothing can be said of its holder, so nothing is claimed.
    """
    path = Path(directory) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock, if it was taken
    return False


def live_status(directory: os.PathLike | str, status: str | None = None) -> str | None:
    """The status to show for a run: its summary's (``status``, when the caller has read it
    already), except :data:`KILLED` for a run whose summary says ``running`` while no process
    holds its lock (a trainer killed with ``kill -9`` cannot write its summary; the OS drops
    its lock)."""
    status = status_of(directory) if status is None else status
    if status == RUNNING and not is_locked(directory):
        return KILLED
    return status
