"""The results store: ``results/<sweep>/<run>/{config.json, summary.json, metrics.csv, ...}``.

Every write is atomic (a temporary file in the same directory, then ``os.replace``), so a run
killed at any moment never leaves a half-written file; ``summary.json`` with status
``finished`` is what marks a run as done.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

FINISHED, FAILED, RUNNING = "finished", "failed", "running"


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # tensors and numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def atomic_write_json(path: os.PathLike | str, obj: Dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: os.PathLike | str) -> Optional[Dict[str, Any]]:
    """The JSON object at ``path``, or ``None`` if it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_dir(results: os.PathLike | str, sweep: str, run_name: str) -> Path:
    return Path(results) / sweep / run_name


def summary_of(directory: os.PathLike | str) -> Optional[Dict[str, Any]]:
    return read_json(Path(directory) / "summary.json")


def is_finished(directory: os.PathLike | str) -> bool:
    summary = summary_of(directory)
    return bool(summary) and summary.get("status") == FINISHED


def iter_runs(results: os.PathLike | str, sweep: Optional[str] = None) -> Iterator[Path]:
    """Every run directory (one holding ``config.json``) under ``results[/sweep]``."""
    root = Path(results) / sweep if sweep else Path(results)
    if root.is_dir():
        yield from sorted(p.parent for p in root.rglob("config.json"))
