"""How long the rest of a sweep will take, from the runs of the store that already finished.

Rows differ in cost by more than 10x (a 3-layer HAM epoch against a 7-layer one), so a run is
estimated by the finished runs of its own row and depth in the same sweep (any seed, trained
by any process, in this session or an earlier one); runs of rows with no finished run yet are
estimated at the mean of all finished runs and counted apart, as a rough part. Resumed runs
are left out of the measurements (their time covers only the resumed part). Standard library
only, like the store.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Iterable

from .store import FINISHED, iter_runs, summary_of

WALL_TIME = "wall_time_s"


def duration_text(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def measured_seconds(sweep_dir: Path) -> dict[str, list[float]]:
    """Wall seconds of the finished, not resumed runs under ``sweep_dir``, by row key
    (``HAM-EO-DEQ-L3``, the run name without its seed)."""
    by_key: dict[str, list[float]] = {}
    for directory in iter_runs(sweep_dir):
        summary = summary_of(directory) or {}
        seconds = summary.get(WALL_TIME)
        if summary.get("status") != FINISHED or summary.get("resumed") \
                or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            continue
        key = directory.name.rsplit("-s", 1)[0]
        by_key.setdefault(key, []).append(float(seconds))
    return by_key


@dataclass(frozen=True)
class Estimate:
    measured_s: float  # runs whose row has finished runs: their row's mean
    n_measured: int
    rough_s: float  # the others, at the mean of every finished run
    n_rough: int

    def line(self, workers: int = 1) -> str:
        """The estimate in words; with ``workers`` > 1 also the time if they share the runs
        evenly (``sweep.py --workers``)."""
        n = self.n_measured + self.n_rough
        if n == 0:
            return "nothing left to train"
        if self.n_measured == 0 and self.rough_s == 0:
            return (f"{n} runs left; no estimate yet (none of their rows has a finished run, "
                    "and rows differ in cost by more than 10x)")
        parts = []
        if self.n_measured:
            parts.append(f"{duration_text(self.measured_s)} for {self.n_measured} runs at "
                         "their row's measured time")
        if self.n_rough:
            parts.append(f"roughly {duration_text(self.rough_s)} for {self.n_rough} runs of "
                         "rows not measured yet")
        total = self.measured_s + self.rough_s
        shared = (f"; about {duration_text(total / workers)} with {workers} workers"
                  if workers > 1 else "")
        return (f"{n} runs left, about {duration_text(total)} on one worker: "
                + " + ".join(parts) + shared)


def estimate(pending_names: Iterable[str], measured: dict[str, list[float]]) -> Estimate:
    """The time the runs named ``pending_names`` (``HAM-L5-s2``) will take on one worker."""
    every = [s for times in measured.values() for s in times]
    fallback = fmean(every) if every else 0.0
    measured_s = rough_s = 0.0
    n_measured = n_rough = 0
    for name in pending_names:
        times = measured.get(name.rsplit("-s", 1)[0])
        if times:
            measured_s, n_measured = measured_s + fmean(times), n_measured + 1
        else:
            rough_s, n_rough = rough_s + fallback, n_rough + 1
    return Estimate(measured_s, n_measured, rough_s, n_rough)
