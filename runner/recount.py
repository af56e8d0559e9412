"""Convert stored runs counted by the first rule to the papers' rule, where the data allow it.

    python -m runner.recount --results results --sweep table2 [--dry-run]

Runs finished before the papers' rule (``runner.store.ITERS_RULE``) counted, per sample, the
map evaluations until ``|f(z_n) - z_n| / |f(z_n)| < tol``, starting from the zero state, and
their ``trajectories.npz`` (format 1) holds the histogram of that residual per iteration. For
a Picard row the papers' rule is a shift of it: Picard's iterates are the map's outputs, so
the papers' ``r_n`` is the old trace's row ``n``, and the old row 0 (the change from the zero
start, 1.0) is dropped. Per sample, a count of ``n + 1`` (first old row below ``tol`` at
``n >= 1``) becomes ``n - 1``, and the never-converged count ``T`` becomes ``T - 1``. The
number of never-converged samples at each tolerance is stored, so the test's mean, the cyan
curve and the heatmap convert exactly; among the samples whose old count was ``T`` (converged
at the last iteration, or never) the per-sample list keeps the right values but not which
sample had which, which nothing reads.

Anderson rows cannot be converted: their old trace is the residual of the mixed points, not
the change between the map's outputs. They stay refused by the table until trained again.
The per-epoch ``val``/``train`` iterations in ``metrics.csv`` keep the first rule (the
summary says so in ``iters_recounted``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from deq_modules.experiments import get_experiment

from .names import DEFAULT_RESULTS
from .result_files import BadResultFile, load_npz, save_npz
from .store import (CONFIG, FINISHED, ITERS_RULE, ITERS_RULE_KEY, SUMMARY, TEST_ITERS,
                    TEST_NOT_CONVERGED, TRAJECTORIES, atomic_write_json, iter_runs, read_json)

RECOUNT_NOTE = ("test/iters_to_converge and trajectories.npz converted from the first rule by "
                "runner.recount; metrics.csv's per-epoch iterations keep the first rule")


class CannotRecount(ValueError):
    """A stored run whose data do not allow the conversion (the message says why)."""


def recount_trajectories(old: dict[str, Any], not_converged_at_tol: int) -> dict[str, Any]:
    """A format-1 ``trajectories.npz`` (as a dict) of a Picard solve, in the papers' rule.

    ``not_converged_at_tol``: the samples that never reached ``old["tol"]`` (summary.json's
    ``test/not_converged``), which the per-sample list cannot tell from those that converged at
    the last iteration."""
    if int(old.get("format_version", 0)) != 1:
        raise CannotRecount(f"trajectories format {old.get('format_version')!r}, not 1")
    counts = np.asarray(old["counts"], dtype=np.int64)
    edges = np.asarray(old["log10_edges"], dtype=np.float64)
    tolerances = np.asarray(old["tolerances"], dtype=np.float64)
    n, T = int(old["n_samples"]), int(old["max_iter"])
    if counts.shape[0] != T or (counts.sum(axis=1) != n).any():
        raise CannotRecount("solves of different lengths (a tolerance stopped them): the "
                            "first rule's counts cannot be shifted")
    # Every sample's first residual must be above every tolerance (from the zero start it is
    # 1.0), so that no old count ended at row 0, which the papers' rule does not have.
    lowest = max(float(tolerances.max()), float(old["tol"]))
    if counts[0][edges[:-1] < np.log10(lowest)].sum() != 0:
        raise CannotRecount("some sample's first residual is below a tolerance")
    not_converged = np.asarray(old["not_converged"], dtype=np.int64)
    sum_iters = np.asarray(old["sum_iters"], dtype=np.int64) - 2 * n + not_converged
    iters = np.asarray(old["iters_at_tol"], dtype=np.int64)
    last = np.flatnonzero(iters == T)  # converged at the last iteration, or never
    if not 0 <= not_converged_at_tol <= last.size:
        raise CannotRecount(f"{not_converged_at_tol} never-converged samples, but only "
                            f"{last.size} have the last count")
    new_iters = iters - 2
    new_iters[last[:not_converged_at_tol]] = T - 1
    return {**old, "counts": counts[1:], "sum_iters": sum_iters, "mean_iters": sum_iters / n,
            "iters_at_tol": new_iters, "max_iter": T - 1, "format_version": 2}


def recount_run(directory: Path, dry_run: bool = False) -> str:
    """Convert one run; returns what was done (``converted``, ``current``, ``skipped: ...``)
    or raises :class:`CannotRecount`."""
    summary, config = read_json(directory / SUMMARY), read_json(directory / CONFIG) or {}
    if not summary or summary.get("status") != FINISHED:
        return "skipped: not finished"
    if summary.get(ITERS_RULE_KEY) == ITERS_RULE:
        return "current"
    try:
        exp = get_experiment(config.get("row"), config.get("depth"))
    except ValueError as err:
        raise CannotRecount(str(err)) from None
    if exp.solver != "picard":
        raise CannotRecount(f"{exp.key} solves with {exp.solver}: its old trace is not the "
                            "change between the map's outputs; train it again")
    try:
        old = load_npz(directory / TRAJECTORIES)
    except (OSError, BadResultFile) as err:
        raise CannotRecount(f"{TRAJECTORIES}: {err}") from None
    never = int(round(float(summary[TEST_NOT_CONVERGED])))
    new = recount_trajectories(old, never)
    at_tol = float(np.mean(new["iters_at_tol"]))
    if dry_run:
        return f"would convert: {summary[TEST_ITERS]:.2f} -> {at_tol:.2f}"
    save_npz(directory / TRAJECTORIES, new)
    before = float(summary[TEST_ITERS])
    atomic_write_json(directory / SUMMARY, {**summary, TEST_ITERS: at_tol,
                                            ITERS_RULE_KEY: ITERS_RULE,
                                            "iters_recounted": RECOUNT_NOTE})
    return f"converted: {before:.2f} -> {at_tol:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=DEFAULT_RESULTS,
                   help=f"results root (default {DEFAULT_RESULTS})")
    p.add_argument("--sweep", required=True, help="sweep name (folder under --results)")
    p.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")
    args = p.parse_args(argv)
    root = Path(args.results) / args.sweep
    if not root.is_dir():
        print(f"recount: no sweep folder {root}", file=sys.stderr)
        return 2
    refused = 0
    for directory in iter_runs(args.results, args.sweep):
        try:
            outcome = recount_run(directory, args.dry_run)
        except CannotRecount as err:
            refused += 1
            outcome = f"cannot convert: {err}"
        print(f"{directory.name}: {outcome}")
    if refused:
        print(f"{refused} run(s) keep the first rule: the table does not count them until they "
              "are trained again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
