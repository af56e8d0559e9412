"""Copy a sweep's results to a folder that can be committed: ``python -m runner.export``.

    python -m runner.export --results results --sweep table2 --out docs/reproduction/table2

The copy is itself a results store (``OUT/<run>/...``) that ``paper_figures`` reads like the
original: per run only the small files the table and the figures stand on (``config.json``,
``summary.json``, ``metrics.csv``, ``trajectories.npz``, ``energy.npz``; the arrays
recompressed), never checkpoints, W&B folders, Lightning logs or locks. Machine paths are
removed: a value that is an absolute path becomes ``null``, a path inside a message becomes
``<path>``, and a failed run keeps its error line but not its traceback. Runs that are still
running or were interrupted (they will be resumed) are not copied; finished, diverged and
failed ones are, so the table counts and names what is missing. Exporting again updates the
copy (a run trained again replaces its old files). Imports only the standard library and numpy.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .names import DEFAULT_RESULTS
from .store import (CONFIG, DIVERGED, ENERGY, FAILED, FINISHED, METRICS, SUMMARY, TRAJECTORIES,
                    atomic_write_json, atomic_write_with, check_name, iter_runs, read_json,
                    status_of)

EXPORTED_STATUSES = (FINISHED, DIVERGED, FAILED)
DROPPED_KEYS = ("traceback",)  # full of the machine's paths; the error line stays
# An absolute path inside a longer string: a slash at the start or after a space, quote,
# bracket or '=' followed by at least two path components (so "1/938" is not a path).
_PATH_IN_TEXT = re.compile(r"""(?:(?<=^)|(?<=[\s'"(\[=:]))(?:~|[A-Za-z]:)?/[^\s'"()\[\],:]+"""
                           r"""(?:/[^\s'"()\[\],:]+)+""")


def portable(value: Any) -> Any:
    """``value`` (a JSON document) without machine paths: absolute-path strings -> ``None``,
    paths inside other strings -> ``<path>``; keys in :data:`DROPPED_KEYS` removed."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items() if k not in DROPPED_KEYS}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str):
        if os.path.isabs(value) or value.startswith("~/"):
            return None
        return _PATH_IN_TEXT.sub("<path>", value)
    return value


def _copy_arrays(source: Path, target: Path) -> None:
    with np.load(source, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_with(target, lambda f: f.write(buffer.getvalue()))


def export_run(source: Path, target: Path) -> None:
    """Copy one run's small files from ``source`` to ``target`` (see the module docstring)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, SUMMARY):
        document = read_json(source / name)
        if document is not None:
            atomic_write_json(target / name, portable(document))
    for name in (METRICS, TRAJECTORIES, ENERGY):
        if not (source / name).exists():
            (target / name).unlink(missing_ok=True)
        elif name == METRICS:
            shutil.copyfile(source / name, target / name)
        else:
            _copy_arrays(source / name, target / name)


def export_sweep(results: str | os.PathLike, sweep: str,
                 out: str | os.PathLike) -> dict[str, list[str]]:
    """Export every finished, diverged or failed run of ``results/sweep`` to ``out``; returns
    the run names by status, including those left out (``running``, ``interrupted``, ...)."""
    root = Path(results) / check_name(sweep, "sweep name")
    if not root.is_dir():
        raise FileNotFoundError(f"no sweep {sweep!r} under {results} ({root} is not a directory)")
    out = Path(out)
    if out.resolve() == root.resolve():
        raise ValueError(f"--out {out} is the sweep itself; choose another folder")
    by_status: dict[str, list[str]] = {}
    for directory in iter_runs(results, sweep):
        status = str(status_of(directory))
        by_status.setdefault(status, []).append(directory.name)
        if status in EXPORTED_STATUSES:
            export_run(directory, out / directory.relative_to(root))
    return by_status


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.export",
        description="Copy a sweep's small result files (no checkpoints, no machine paths) to a "
                    "folder meant to be committed; paper_figures reads it as a store.")
    parser.add_argument("--results", default=DEFAULT_RESULTS,
                        help=f"results store (default {DEFAULT_RESULTS}/)")
    parser.add_argument("--sweep", required=True, help="sweep name under --results")
    parser.add_argument("--out", required=True, help="target folder (the exported sweep)")
    args = parser.parse_args(argv)
    try:
        by_status = export_sweep(args.results, args.sweep, args.out)
    except (OSError, ValueError) as err:
        print(f"python -m runner.export: error: {err}", file=sys.stderr)
        return 2
    copied = sum(len(by_status.get(s, ())) for s in EXPORTED_STATUSES)
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_status.items()))
    print(f"exported {copied} runs to {args.out} ({counts or 'no runs'}); "
          f"{_size(Path(args.out)) / 1e6:.1f} MB in {args.out}")
    left = {k: v for k, v in by_status.items() if k not in EXPORTED_STATUSES}
    for status, names in sorted(left.items()):
        print(f"  not exported ({status}): {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
