"""What the scripts share: the source options, reading the runs with checks, errors, warnings.

A wrong source (a missing results directory, a mistyped sweep, no finished run) is a
:class:`SourceError`, found before anything is written and reported as one line on stderr, so a
good ``table2.md`` from an earlier run is never replaced by an empty one. Damaged runs and
unreadable result files are warnings: the script skips them and goes on.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from deq_modules.experiments import CONVERGENCE_TOL
from runner.names import DEFAULT_RESULTS, DEFAULT_TABLE, QUICK_SWEEP
from runner.store import CONFIG, check_name, iter_runs

from .runs import (DAMAGED, WANDB_CACHE, RunRecord, download_wandb_results, local_records,
                   wandb_records)


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """The options every paper_figures script shares: where the runs are, where files go."""
    parser.add_argument("--results", default=DEFAULT_RESULTS,
                        help=f"local results store (default {DEFAULT_RESULTS}/)")
    parser.add_argument("--sweep", default=DEFAULT_TABLE,
                        help=f"sweep name under --results (default {DEFAULT_TABLE}; sweep.py "
                             f"--quick writes '{QUICK_SWEEP}')")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT/SWEEP_ID", default=None,
                        help="read the runs of this W&B sweep instead of the local store "
                             f"(artifacts are cached under {WANDB_CACHE}, or "
                             "$HOPFIELD_FIGURE_CACHE)")
    parser.add_argument("--out", default="figures", help="output directory (default figures/)")


def source_label(args: argparse.Namespace) -> str:
    """Where the numbers came from, for the table's caption and the messages."""
    return f"W&B sweep {args.wandb}" if args.wandb else str(Path(args.results) / args.sweep)


def tol_label(tol: float = CONVERGENCE_TOL) -> str:
    """``1e-4`` rather than ``0.0001``: how the paper writes a tolerance."""
    exponent = math.log10(tol)
    return f"1e{exponent:.0f}" if exponent.is_integer() else f"{tol:g}"


class SourceError(Exception):
    """The runs cannot make a table or a figure: a missing results directory, a sweep that is
    not there, no finished run, or a figure panel none of whose runs can be read. The
    message is one line and names the directory or the runs."""


def check_store(results: str | Path, sweep: str) -> None:
    """Raise :class:`SourceError` unless ``results/sweep`` is a sweep holding runs; a mistyped
    sweep gets the list of the sweeps that do exist under ``results``."""
    results = Path(results)
    if not results.is_dir():
        what = "is not a directory" if results.exists() else "does not exist"
        raise SourceError(f"results directory {results} {what} (see --results)")
    try:
        check_name(sweep, "sweep name")
    except ValueError as err:
        raise SourceError(str(err)) from None
    if not (results / sweep).is_dir():
        sweeps = sorted(p.name for p in results.iterdir()
                        if p.is_dir() and not p.name.startswith(".") and any(iter_runs(p)))
        there = f"sweeps there: {', '.join(sweeps)}" if sweeps else "it holds no sweep"
        raise SourceError(f"no sweep {sweep!r} in {results} ({there})")
    if not any(iter_runs(results, sweep)):
        raise SourceError(f"no run in {results / sweep} (no run directory with a {CONFIG})")


def require_usable(records: Sequence[RunRecord], where: str) -> None:
    """Raise :class:`SourceError` unless at least one run finished soundly."""
    if any(r.usable for r in records):
        return
    if not records:
        raise SourceError(f"no run in {where}")
    counts = Counter(r.status for r in records)
    detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    raise SourceError(f"no finished run in {where} ({len(records)} runs: {detail})")


def records_for(args: argparse.Namespace, files: bool = False) -> list[RunRecord]:
    """The runs named by the source options, or :class:`SourceError` when there is nothing to
    show. With ``files`` (the figures need the runs' result files), a W&B sweep is first
    mirrored into :data:`~paper_figures.runs.WANDB_CACHE` and read from there like a local
    store."""
    if not args.wandb:
        check_store(args.results, args.sweep)
        records = local_records(args.results, args.sweep)
    elif files:
        records = local_records(WANDB_CACHE, download_wandb_results(args.wandb, WANDB_CACHE))
    else:
        records = wandb_records(args.wandb)
    require_usable(records, source_label(args))
    return records


def error(prog: str, err: Exception) -> int:
    """Report a :class:`SourceError` as one line on stderr; the exit status (1)."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 1


def warn(message: str) -> None:
    """One warning line on stderr: something was skipped, the rest goes on."""
    print(f"warning: {message}", file=sys.stderr)


def warn_damaged(records: Sequence[RunRecord]) -> None:
    """A warning per damaged run, naming it and what is wrong with which file."""
    for r in records:
        if r.status == DAMAGED:
            warn(f"{r.name} not counted, damaged: {'; '.join(r.problems)}")


def run_script(parser: argparse.ArgumentParser, argv: Sequence[str] | None, report,
               files: bool = False) -> int:
    """What every script's ``main`` does: parse, read and check the runs, then ``report``
    (``report(records, args)`` writes the outputs); a bad source is one error line."""
    args = parser.parse_args(argv)
    try:
        records = records_for(args, files=files)
        warn_damaged(records)
        report(records, args)  # may refuse too, before it writes (the figures' panels)
    except SourceError as err:
        return error(parser.prog, err)
    return 0
