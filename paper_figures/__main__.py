"""Table 2, the claims check, Figures 3 and 4, the energy figure and the training curves in
one go:

    python -m paper_figures [--results results] [--sweep table2] [--wandb E/P/ID]
                            [--out figures] [--prefer ROW]

The runs are read and checked once, before anything is written: a wrong source is one error
line and leaves ``--out`` as it was. From another working directory, run the package by its
path, ``python /path/to/repo/paper_figures ...`` (relative ``--results``/``--out`` are then the
caller's), or ``python -m paper_figures`` with the repository on ``PYTHONPATH``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

if not __package__:  # run by its path (python repo/paper_figures): sys.path[0] is this folder,
    # whose modules would shadow top-level names; import the package from its repository
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    from paper_figures.__main__ import main

    raise SystemExit(main())

from . import claims, curves, energy, table, trajectories  # noqa: E402 - after the path fix
from .cli import SourceError, add_source_args, error, records_for, warn_damaged

EPILOG = f"""\
what it runs (each script also runs alone; --prefer is for the trajectories):
  python -m paper_figures.table
      Table 2, ours beside the paper's: mean (std) over seeds of the iterations to
      converge, speedup, test accuracy and test samples that never converged.
      Writes {table.WRITES}.
  python -m paper_figures.claims
      The papers' four claims (even-odd, Anderson, compounding, equal accuracy), each
      with the numbers it rests on and a verdict by a stated criterion.
      Writes {claims.WRITES}.
  python -m paper_figures.trajectories
      Figures 3 and 4: density of the test set's residual trajectories pooled over
      seeds, a 2 x 2 grid (plain/EO x Picard/DEQ) per model family.
      Writes {trajectories.WRITES}.
  python -m paper_figures.energy
      Beyond the paper: mean Hopfield energy per iteration of each HAM row.
      Writes {energy.WRITES}.
  python -m paper_figures.curves
      Beyond the paper: test accuracy and iterations to converge after each epoch,
      mean and spread over seeds, the published values marked.
      Writes {curves.WRITES}.

Figures are drawn at a paper's text width (6.75 in). Failed, diverged, interrupted,
running and damaged runs are never averaged; the table names them. A missing --results,
an unknown --sweep or no finished run is an error and writes nothing."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paper_figures",
        description="Everything of one sweep in one command: Table 2, the claims check, "
                    "Figures 3-4, the energy figure and the training curves, from the sweep's "
                    "runs in the store (no model is run again), e.g. "
                    "python -m paper_figures --sweep quick",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(parser)
    trajectories.add_figure_args(parser)
    args = parser.parse_args(argv)
    try:
        records = records_for(args)
        # From W&B the figures read the runs' mirrored files; a local store serves both.
        figure_records = records_for(args, files=True) if args.wandb else records
        trajectories.check_panels(figure_records, trajectories.preferred(args))
    except SourceError as err:
        return error(parser.prog, err)
    warn_damaged(records)
    table.report(records, args)
    claims.report(records, args)
    trajectories.report(figure_records, args)
    energy.report(figure_records, args)
    curves.report(figure_records, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
