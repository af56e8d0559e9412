"""Table 2 (md, tex, csv) and Figures 3 and 4 in one go:

    python -m paper_figures [--results results] [--sweep table2] [--wandb E/P/ID]
                            [--out figures] [--prefer ROW]
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from . import table, trajectories
from .runs import add_source_args


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paper_figures",
                                     description="Table 2 and Figures 3-4 from a sweep.")
    add_source_args(parser)
    trajectories.add_figure_args(parser)
    args = parser.parse_args(argv)
    # Re-enter each script through its own parser, so both behave exactly as when run alone.
    common = ["--results", args.results, "--sweep", args.sweep, "--out", args.out]
    common += ["--wandb", args.wandb] if args.wandb else []
    figure_only = [x for row in args.prefer or () for x in ("--prefer", row)]
    return table.main(common) or trajectories.main(common + figure_only)


if __name__ == "__main__":
    raise SystemExit(main())
